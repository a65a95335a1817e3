// Boot the canvas: node types from /object_info, the litegraph canvas, tabs, library, minimap,
// panels, shortcuts, drag and drop, and live execution feedback over the websocket.
import { LGraph, LGraphCanvas, LGraphGroup, LiteGraph } from "litegraph";
import { Api } from "./api.js";
import {
  applySeedControls, applyTypeColors, registerFrontendNodes, registerNodes, registerPrimitiveNode, runtime, setComboValue,
} from "./nodes.js";
import { Workspace, graphState } from "./workflows.js";
import { buildLibrary, NODE_MIME } from "./library.js";
import { attachMinimap } from "./minimap.js";
import { Panels, toast } from "./panels.js";
import { showProfiles } from "./profile.js";
import { checkedWorkflow } from "./provenance.js";

const api = new Api();
const graph = new LGraph();
const wrap = document.getElementById("canvas-wrap");
const canvas = new LGraphCanvas(document.getElementById("graph-canvas"), graph);
const workspace = new Workspace({ graph, canvas, toast, check: (wf, record) => checkedWorkflow(api, toast, wf, record) });
const panels = new Panels(api, { openWorkflow: (name, wf) => workspace.open(name, wf) });
const promptTabs = new Map(); // prompt_id -> tab id it was queued from
const unsettled = new Set(); // prompts queued here whose outcome this page has not seen yet
const early = new Map(); // prompt id → [node, images] that arrived before the POST /prompt answer named it
let executingNode = null;

// -- editing ----------------------------------------------------------------------------------

let checkpointTimer = null;
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
  workspace.history.checkpoint();
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

async function queuePrompt() {
  workspace.history.checkpoint();
  clearErrors();
  const workflow = JSON.parse(graphState(graph));
  try {
    const res = await api.queuePrompt(workflow);
    promptTabs.set(res.prompt_id, workspace.active);
    for (const [node, images] of early.get(res.prompt_id) ?? []) showOnNode(res.prompt_id, node, images);
    early.clear(); // the rest were other clients' prompts
    unsettled.add(res.prompt_id);
    reconcile(); // a fast prompt may have finished before this response was read
    if (Object.keys(res.node_errors ?? {}).length) showNodeErrors(res.node_errors);
    applySeedControls(graph);
    workspace.history.checkpoint();
    panels.refresh();
    toast(`Queued ${res.prompt_id.slice(0, 8)}`, "info", 2000);
  } catch (err) {
    if (err.data?.node_errors || err.data?.error) showNodeErrors(err.data.node_errors, err.data.error);
    else toast(`Queue failed: ${err.message}`, "error");
  }
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

function image(src) {
  const img = new Image();
  img.onload = () => canvas.setDirty(true, true);
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
  const n = nodeOf(promptId, nodeId);
  if (n) runtime(n).images = images.map((i) => image(api.viewUrl(i)));
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
  const accepts = (e) => [...e.dataTransfer.types].some((t) => t === NODE_MIME || t === "Files");
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
    for (const file of e.dataTransfer.files) await openFile(file, pos);
  });
}

async function setupWorkflowMenu() {
  const button = document.getElementById("workflows-button");
  const list = document.getElementById("workflow-list");
  button.onclick = async () => {
    if (!list.hidden) return void (list.hidden = true);
    let names = [];
    try { names = await api.workflowList(); } catch (err) { toast(`No workflow list: ${err.message}`, "error"); }
    list.replaceChildren(...names.map((name) => {
      const li = Object.assign(document.createElement("li"), { textContent: name.replace(/\.json$/, "") });
      li.onclick = async () => {
        list.hidden = true;
        workspace.open(name.replace(/\.json$/, ""), await api.workflow(name));
      };
      return li;
    }));
    if (!names.length) list.replaceChildren(Object.assign(document.createElement("li"), { textContent: "(none)" }));
    list.hidden = false;
  };
  document.addEventListener("click", (e) => { if (!button.parentElement.contains(e.target)) list.hidden = true; });
}

function setupShortcuts() {
  const fileInput = document.getElementById("file-input");
  fileInput.onchange = async () => {
    for (const f of fileInput.files) await openFile(f);
    fileInput.value = "";
  };
  const click = (id, fn) => { document.getElementById(id).onclick = fn; };
  click("queue-button", queuePrompt);
  click("save-button", () => workspace.save());
  click("open-button", () => fileInput.click());
  click("undo-button", undo);
  click("redo-button", redo);
  click("new-tab", () => workspace.open("Unsaved workflow"));
  // Capture phase: litegraph stops some keys on the canvas; we still want to see them.
  document.addEventListener("keydown", (e) => {
    const mod = e.ctrlKey || e.metaKey;
    const key = e.key.toLowerCase();
    const typing = ["INPUT", "TEXTAREA", "SELECT"].includes(e.target.tagName) || e.target.isContentEditable;
    const handled = () => { e.preventDefault(); e.stopPropagation(); };
    if (key === "escape" && !document.getElementById("lightbox").hidden) {
      handled();
      document.getElementById("lightbox").hidden = true;
      return;
    }
    if (mod && key === "enter") { handled(); queuePrompt(); return; }
    if (mod && key === "s") { handled(); workspace.save(); return; }
    if (mod && key === "o") { handled(); fileInput.click(); return; }
    if (typing) return;
    if (mod && key === "z") { handled(); e.shiftKey ? redo() : undo(); return; }
    if (mod && key === "y") { handled(); redo(); return; }
    if (mod && key === "g") { handled(); groupSelection(); return; }
    if (!mod && key === ".") { handled(); workspace.fitView(); return; }
    scheduleCheckpoint(); // deletes and pastes land after litegraph handled the key
  }, true);
  document.addEventListener("pointerup", scheduleCheckpoint, true);
  setInterval(scheduleCheckpoint, 1000); // catches edits made through litegraph menus and dialogs
  graph.onAfterChange = scheduleCheckpoint;
}

function setupCanvas() {
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
  const objectInfo = await api.objectInfo();
  const hooks = {
    onWidgetChange: (node) => {
      if (runtime(node).errors.length) {
        runtime(node).errors = []; // the user is fixing it: stop shouting
        canvas.setDirty(true, false);
      }
      scheduleCheckpoint();
    },
    upload: async (file) => {
      const up = await api.uploadImage(file);
      return up.subfolder ? `${up.subfolder}/${up.name}` : up.name;
    },
  };
  registerFrontendNodes(hooks);
  registerPrimitiveNode(hooks);
  registerNodes(objectInfo, hooks);
  setupCanvas();
  buildLibrary(objectInfo, { onPick: (type) => addNode(type, viewCentre()) });
  setupDrop();
  setupShortcuts();
  setupWorkflowMenu();
  listen();
  showProfiles({ api, graph, canvas, nodeOf });
  if (!workspace.restore()) await firstWorkflow(listing);
  api.connect(); // app.ready is set once the socket is open (see listen)
}

window.app = { api, graph, canvas, workspace, panels, promptTabs, queuePrompt, addNode, state: () => graphState(graph), ready: false };
boot().catch((err) => {
  console.error(err);
  toast(`Could not start: ${err.message}`, "error", 60000);
});
