// Boot the canvas: node types from /object_info, the litegraph canvas, tabs, the side bars (nodes,
// saved workflows, models; queue, gallery), minimap, shortcuts, drag and drop, settings, and live
// execution feedback over the websocket.
import { LGraph, LGraphCanvas, LGraphGroup, LiteGraph } from "litegraph";
import { Api } from "./api.js";
import {
  applySeedControls, applyTypeColors, growToImage, registerFrontendNodes, registerNodes, registerPrimitiveNode, runtime,
  setComboValue,
} from "./nodes.js";
import { Workspace, graphState } from "./workflows.js";
import { buildLibrary, NODE_MIME } from "./library.js";
import { attachMinimap } from "./minimap.js";
import { Panels, tabbedPanels, toast } from "./panels.js";
import { showProfiles } from "./profile.js";
import { checkedWorkflow } from "./provenance.js";
import { attachTextAreas } from "./textarea.js";
import { NodeSearch, attachSearch } from "./search.js";
import { adjustMenus } from "./menus.js";
import { BYPASSED, MUTED, drawModes, toggleCollapse, toggleMode } from "./modes.js";
import { listenForShortcuts, shortcut, toggleHelp } from "./shortcuts.js";
import { SavedWorkflows } from "./saved.js";
import { MODEL_MIME, ModelLibrary, loaderFor } from "./modellib.js";
import { showTemplates } from "./templates.js";
import { Settings } from "./settings.js";

const api = new Api();
const graph = new LGraph();
const wrap = document.getElementById("canvas-wrap");
const canvas = new LGraphCanvas(document.getElementById("graph-canvas"), graph);
const workspace = new Workspace({
  graph, canvas, toast, api, onShow: showKeptOutputs, onSaved: () => savedList.refresh(),
  check: (wf, record) => checkedWorkflow(api, toast, wf, record),
});
const panels = new Panels(api, { openWorkflow: (name, wf) => workspace.open(name, wf) });
const savedList = new SavedWorkflows(api, workspace, document.getElementById("saved-list"));
const settings = new Settings(api, { canvas, minimap: document.getElementById("minimap") }, toast);
const promptTabs = new Map(); // prompt_id -> tab id it was queued from
const unsettled = new Set(); // prompts queued here whose outcome this page has not seen yet
const early = new Map(); // prompt id → [node, images] that arrived before the POST /prompt answer named it
let executingNode = null;
let objectInfo = {};

// -- editing ----------------------------------------------------------------------------------

let checkpointTimer = null;
let typingTimer = null;
function scheduleCheckpoint() {
  clearTimeout(checkpointTimer);
  // A drag in progress is one edit: record it when the pointer is released.
  checkpointTimer = setTimeout(() => { if (!canvas.pointer.isDown) workspace.history.checkpoint(); }, 0);
}

function addNode(type, pos) {
  const node = LiteGraph.createNode(type);
  if (!node) return toast(`Unknown node type ${type}`, "error");
  node.pos = [Math.round(pos[0]), Math.round(pos[1])];
  graph.add(node);
  canvas.selectNode(node);
  scheduleCheckpoint(); // after the caller's own changes (a value chosen, a link made): one undo step
  return node;
}

/** A loader node for a model file from the model library, with that file chosen. */
function addModelLoader(folder, file, pos) {
  const [type, input] = loaderFor(objectInfo, folder, file) ?? [];
  const node = type && addNode(type, pos);
  if (node) setComboValue(node, input, file);
  return node;
}

function viewCentre() {
  const [x, y, w, h] = canvas.visible_area;
  return [x + w / 2 - 100, y + h / 2 - 50];
}

function groupSelection() {
  const items = [...canvas.selectedItems];
  if (!items.length) return toast("Select nodes to group first", "warn");
  const group = new LGraphGroup("Group");
  graph.add(group);
  group.resizeTo(items);
  workspace.history.checkpoint();
}

function undo() { workspace.history.undo() || toast("Nothing to undo", "info", 1500); }
function redo() { workspace.history.redo() || toast("Nothing to redo", "info", 1500); }

/** Tell why a dropped link was refused: litegraph silently ignores mismatched types. */
function watchRefusedLinks() {
  const lc = canvas.linkConnector;
  let created = false;
  lc.events.addEventListener("link-created", () => { created = true; });
  lc.events.addEventListener("after-drop-links", (e) => {
    const { renderLinks, event } = e.detail;
    const made = created;
    created = false;
    if (made || !renderLinks.length) return;
    const pos = [event.canvasX, event.canvasY];
    const node = graph.getNodeOnPos(...pos);
    const from = renderLinks[0];
    if (!node || node === from.node) return;
    const toInput = lc.state.connectingTo === "input";
    const slot = toInput ? node.getInputOnPos(pos) : node.getOutputOnPos(pos);
    const type = from.fromSlot.type;
    const where = slot ? `${node.title}.${slot.name} (${slot.type})` : `${node.title} (no ${type} ${toInput ? "input" : "output"})`;
    toast(`Connection refused: ${type} does not fit ${where}`, "warn");
  });
}

// -- running ----------------------------------------------------------------------------------

function nodeOf(promptId, id) {
  if (id == null || promptTabs.get(promptId) !== workspace.active) return null;
  return graph.getNodeById(Number(id)) ?? graph.getNodeById(id);
}

function clearErrors() {
  for (const n of graph._nodes) runtime(n).errors = [];
}

function showNodeErrors(nodeErrors, error) {
  const lines = error?.message ? [error.message] : [];
  let first = null;
  for (const [id, entry] of Object.entries(nodeErrors ?? {})) {
    const node = graph.getNodeById(Number(id)) ?? graph.getNodeById(id);
    if (!node) continue;
    first ??= node;
    runtime(node).errors = entry.errors ?? [];
    for (const err of entry.errors ?? []) {
      const input = err.extra_info?.input_name ? ` [${err.extra_info.input_name}]` : "";
      lines.push(`${node.title} #${node.id}${input}: ${err.message}${err.details ? ` — ${err.details}` : ""}`);
    }
  }
  if (first && !canvas.isNodeVisible(first)) canvas.centerOnNode(first);
  canvas.setDirty(true, true);
  toast(lines.join("\n") || "The server refused the workflow", "error", 12000);
}

/** Queue the workflow as many times as the batch count says (each with its seeds' "control after
 * generate" applied, as ComfyUI does); `front` puts them at the head of the queue. */
async function queuePrompt({ front = false } = {}) {
  const count = Math.max(1, Math.min(99, Number(document.getElementById("batch-count").value) || 1));
  const tab = workspace.active;
  clearErrors();
  for (let i = 0; i < count && workspace.active === tab; i++) { // switching tabs ends the batch
    workspace.history.checkpoint();
    const workflow = JSON.parse(graphState(graph));
    try {
      const res = await api.queuePrompt(workflow, { name: workspace.tab.name, front });
      promptTabs.set(res.prompt_id, workspace.active);
      for (const [node, images] of early.get(res.prompt_id) ?? []) showOnNode(res.prompt_id, node, images);
      early.clear(); // the rest were other clients' prompts
      unsettled.add(res.prompt_id);
      reconcile(); // a fast prompt may have finished before this response was read
      if (Object.keys(res.node_errors ?? {}).length) showNodeErrors(res.node_errors);
      applySeedControls(graph);
      workspace.history.checkpoint();
      toast(`Queued ${res.prompt_id.slice(0, 8)}${count > 1 ? ` (${i + 1} of ${count})` : ""}`, "info", 2000);
    } catch (err) {
      if (err.data?.node_errors || err.data?.error) showNodeErrors(err.data.node_errors, err.data.error);
      else toast(`Queue failed: ${err.message}`, "error");
      break;
    }
  }
  panels.refresh();
  canvas.setDirty(true, true);
}

function setExecuting(node) {
  if (executingNode) {
    const st = runtime(executingNode);
    Object.assign(st, { executing: false, progress: null, preview: null });
  }
  executingNode = node;
  if (node) runtime(node).executing = true;
  canvas.setDirty(true, true);
}

function image(src, onload = () => {}) {
  const img = new Image();
  img.onload = () => { onload(img); canvas.setDirty(true, true); };
  img.src = src;
  return img;
}

function showOutput(promptId, nodeId, output) {
  const images = output?.images ?? [];
  for (const img of images) panels.addImage(img);
  if (images.length) showOnNode(promptId, nodeId, images);
}

function showOnNode(promptId, nodeId, images) {
  if (!promptTabs.has(promptId)) { // maybe ours, named by a POST /prompt answer still on its way
    early.set(promptId, [...(early.get(promptId) ?? []), [nodeId, images]]);
    if (early.size > 50) early.delete(early.keys().next().value); // others' broadcast prompts: keep few
    return;
  }
  workspace.keepOutput(promptTabs.get(promptId), nodeId, images);
  const n = nodeOf(promptId, nodeId);
  if (n) runtime(n).images = images.map((i) => image(api.viewUrl(i), (img) => fitOutput(n, img)));
}

/** An output node grows to show its image across its width; the growth is no edit of the workflow. */
function fitOutput(node, img) {
  if (node.graph !== graph || img !== runtime(node).images.at(-1)) return;
  workspace.history.checkpoint();
  if (growToImage(node, img)) workspace.absorb();
}

/** The images a tab's output nodes showed, shown again when the tab comes back (switch, reload, undo). */
function showKeptOutputs(tab) {
  for (const [id, images] of Object.entries(tab?.outputs ?? {})) {
    const node = graph.getNodeById(Number(id)) ?? graph.getNodeById(id);
    if (node) runtime(node).images = images.map((i) => image(api.viewUrl(i)));
  }
}

// Messages sent while the socket was down (a prompt that finished before it connected, or during a
// server restart) are gone; the history still has the outcome, so fetch it for prompts queued here.
async function reconcile() {
  for (const id of [...unsettled]) {
    const entry = (await api.request(`/history/${id}`).catch(() => null))?.[id];
    if (!entry?.status?.completed && entry?.status?.status_str !== "error") continue;
    if (!unsettled.delete(id)) continue; // a live message got there first
    for (const [node, output] of Object.entries(entry.outputs ?? {})) showOutput(id, node, output);
    canvas.setDirty(true, false);
  }
}

function listen() {
  const on = (type, fn) => api.addEventListener(type, (e) => fn(e.detail ?? {}));
  on("status", () => { panels.refresh(); reconcile(); });
  on("execution_start", () => panels.refresh());
  on("executing", ({ node, prompt_id }) => {
    setExecuting(nodeOf(prompt_id, node));
    if (node == null) panels.refresh();
  });
  on("progress", ({ value, max, node, prompt_id }) => {
    const n = nodeOf(prompt_id, node) ?? executingNode;
    if (n) runtime(n).progress = max ? value / max : null;
    canvas.setDirty(true, false);
  });
  on("preview", (blob) => {
    if (!executingNode) return;
    const st = runtime(executingNode);
    if (st.preview) URL.revokeObjectURL(st.preview.src);
    st.preview = image(URL.createObjectURL(blob));
  });
  on("executed", ({ node, output, prompt_id }) => showOutput(prompt_id, node, output));
  on("execution_error", (d) => {
    unsettled.delete(d.prompt_id);
    const n = nodeOf(d.prompt_id, d.node_id);
    const message = `${d.exception_type ?? "Error"}: ${d.exception_message ?? ""}`;
    if (n) runtime(n).errors = [{ message }];
    toast(`${d.node_type ?? "node"} #${d.node_id} failed — ${message}`, "error", 12000);
    setExecuting(null);
    panels.refresh();
  });
  on("execution_interrupted", ({ prompt_id }) => { unsettled.delete(prompt_id); setExecuting(null); toast("Interrupted", "warn"); panels.refresh(); });
  on("execution_success", ({ prompt_id }) => { unsettled.delete(prompt_id); setExecuting(null); panels.refresh(); });
  const badge = document.getElementById("connection");
  on("online", () => {
    badge.textContent = "online"; badge.className = "badge online"; panels.refresh(); reconcile();
    window.app.ready = true;
  });
  on("offline", () => { badge.textContent = "reconnecting…"; badge.className = "badge offline"; });
}

// -- files, menus, shortcuts ------------------------------------------------------------------

async function openFile(file, pos) {
  try {
    if (await workspace.openFile(file)) return;
    if (!file.type.startsWith("image/")) return toast(`${file.name}: no workflow found`, "warn");
    // An image without a workflow becomes a LoadImage node, as users expect from ComfyUI.
    const up = await api.uploadImage(file);
    const node = addNode("LoadImage", pos ?? viewCentre());
    if (!node) return;
    setComboValue(node, "image", up.subfolder ? `${up.subfolder}/${up.name}` : up.name);
    workspace.history.checkpoint();
  } catch (err) {
    toast(`Could not open ${file.name}: ${err.message}`, "error");
  }
}

function setupDrop() {
  const kinds = [NODE_MIME, MODEL_MIME, "Files"];
  const accepts = (e) => [...e.dataTransfer.types].some((t) => kinds.includes(t));
  wrap.addEventListener("dragover", (e) => {
    if (!accepts(e)) return;
    e.preventDefault();
    e.dataTransfer.dropEffect = "copy";
    wrap.classList.add("drop-target");
  });
  wrap.addEventListener("dragleave", () => wrap.classList.remove("drop-target"));
  wrap.addEventListener("drop", async (e) => {
    wrap.classList.remove("drop-target");
    if (!accepts(e)) return;
    e.preventDefault();
    const pos = canvas.convertEventToCanvasOffset(e);
    const type = e.dataTransfer.getData(NODE_MIME);
    if (type) return void addNode(type, pos);
    const model = e.dataTransfer.getData(MODEL_MIME);
    if (model) {
      const { folder, file } = JSON.parse(model);
      return void addModelLoader(folder, file, pos);
    }
    for (const file of e.dataTransfer.files) await openFile(file, pos);
  });
}

function setupSideBars() {
  const models = new ModelLibrary(api, objectInfo, document.getElementById("model-tree"),
    (folder, file) => addModelLoader(folder, file, viewCentre()));
  tabbedPanels(document.querySelector("#library .side-tabs"), (id) => {
    if (id === "saved-panel") savedList.refresh();
    if (id === "models-panel") models.refresh().catch((err) => toast(`No model list: ${err.message}`, "error"));
  });
}

function setupShortcuts() {
  const fileInput = document.getElementById("file-input");
  fileInput.onchange = async () => {
    for (const f of fileInput.files) await openFile(f);
    fileInput.value = "";
  };
  const openTemplates = () => showTemplates(api, (name, wf) => workspace.open(name, wf), toast);
  const click = (id, fn) => { document.getElementById(id).onclick = fn; };
  click("queue-button", () => queuePrompt());
  click("queue-front-button", () => queuePrompt({ front: true }));
  click("save-button", () => workspace.save());
  click("export-button", () => workspace.export());
  click("open-button", () => fileInput.click());
  click("templates-button", openTemplates);
  click("undo-button", undo);
  click("redo-button", redo);
  click("settings-button", () => settings.show());
  click("help-button", toggleHelp);
  click("new-tab", () => workspace.open("Unsaved workflow"));
  click("minimap-toggle", () => settings.set("Comfy.Minimap.Visible", !settings.get("Comfy.Minimap.Visible")));
  const typing = { typing: true };
  shortcut("Ctrl+Enter", "Queue the workflow (as many times as the batch count)", () => { queuePrompt(); }, typing);
  shortcut("Ctrl+Shift+Enter", "Queue it at the front of the queue", () => { queuePrompt({ front: true }); }, typing);
  shortcut("Ctrl+S", "Save the workflow on the server (asks for a name the first time)", () => { workspace.save(); }, typing);
  shortcut("Ctrl+O", "Open a .json or .png workflow file", () => fileInput.click(), typing);
  shortcut("Ctrl+Z", "Undo", undo);
  shortcut("Ctrl+Shift+Z", "Redo", redo);
  shortcut("Ctrl+Y", "Redo", redo);
  shortcut("Ctrl+G", "Group the selected nodes", groupSelection);
  shortcut("Ctrl+B", "Bypass the selected nodes (or stop bypassing them)", () => { if (toggleMode(canvas, BYPASSED)) scheduleCheckpoint(); });
  shortcut("Ctrl+M", "Mute the selected nodes (or unmute them)", () => { if (toggleMode(canvas, MUTED)) scheduleCheckpoint(); });
  shortcut("Alt+C", "Collapse the selected nodes (or expand them)", () => { if (toggleCollapse(canvas)) scheduleCheckpoint(); });
  shortcut(".", "Fit the whole workflow in view", () => workspace.fitView());
  shortcut("?", "Show or hide this help", toggleHelp);
  shortcut("Escape", "Close the full-size image or this help", () => {
    const open = [document.getElementById("shortcut-help"), document.querySelector("#lightbox:not([hidden])")].filter(Boolean);
    if (!open.length) return false;
    document.getElementById("shortcut-help")?.remove();
    document.getElementById("lightbox").hidden = true;
  });
  listenForShortcuts(scheduleCheckpoint); // deletes and pastes land after litegraph handled the key
  document.addEventListener("pointerup", scheduleCheckpoint, true);
  setInterval(scheduleCheckpoint, 1000); // catches edits made through litegraph menus and dialogs
  graph.onAfterChange = scheduleCheckpoint;
}

function setupCanvas(hooks) {
  applyTypeColors(canvas);
  canvas.show_info = false;
  canvas.render_canvas_border = false;
  canvas.low_quality_zoom_threshold = 0.5;
  const fit = () => canvas.resize(wrap.clientWidth, wrap.clientHeight);
  new ResizeObserver(fit).observe(wrap);
  fit();
  canvas.canvas.addEventListener("pointerdown", () => canvas.canvas.focus());
  const status = document.getElementById("status-line");
  canvas.onRender = () => {
    const text = `${graph._nodes.length} node${graph._nodes.length === 1 ? "" : "s"} · ${Math.round(canvas.ds.scale * 100)}%`;
    if (status.textContent !== text) status.textContent = text;
  };
  watchRefusedLinks();
  attachMinimap(document.getElementById("minimap"), canvas);
  attachTextAreas(canvas, { onInput: hooks.onTyping });
  attachSearch(canvas, new NodeSearch(objectInfo, canvas, addNode));
  adjustMenus(canvas);
  drawModes(canvas);
}

async function firstWorkflow(listing) {
  const names = await listing;
  const name = names.includes("sdxl_base.json") ? "sdxl_base.json" : names[0];
  if (!name) return workspace.open("Unsaved workflow");
  try {
    workspace.open(name.replace(/\.json$/, ""), await api.workflow(name));
  } catch (err) {
    toast(`Could not open ${name}: ${err.message}`, "error");
    workspace.open("Unsaved workflow");
  }
}

async function boot() {
  const listing = api.workflowList().catch(() => []); // no list: start empty
  objectInfo = await api.objectInfo();
  const hooks = {
    onWidgetChange: (node) => {
      if (runtime(node).errors.length) {
        runtime(node).errors = []; // the user is fixing it: stop shouting
        canvas.setDirty(true, false);
      }
      scheduleCheckpoint();
    },
    // Text typed in place is in the widget at once; its undo step waits for a pause in the typing.
    onTyping: (node) => {
      hooks.onWidgetChange(node);
      clearTimeout(checkpointTimer);
      clearTimeout(typingTimer);
      typingTimer = setTimeout(scheduleCheckpoint, 600);
    },
    upload: async (file) => {
      const up = await api.uploadImage(file);
      return up.subfolder ? `${up.subfolder}/${up.name}` : up.name;
    },
  };
  registerFrontendNodes(hooks);
  registerPrimitiveNode(hooks);
  registerNodes(objectInfo, hooks);
  setupCanvas(hooks);
  await settings.load();
  buildLibrary(objectInfo, { onPick: (type) => addNode(type, viewCentre()) });
  setupSideBars();
  setupDrop();
  setupShortcuts();
  listen();
  showProfiles({ api, graph, canvas, nodeOf });
  if (!workspace.restore()) await firstWorkflow(listing);
  api.connect(); // app.ready is set once the socket is open (see listen)
}

window.app = {
  api, graph, canvas, workspace, panels, settings, promptTabs, queuePrompt, addNode, state: () => graphState(graph), ready: false,
};
boot().catch((err) => {
  console.error(err);
  toast(`Could not start: ${err.message}`, "error", 60000);
});
