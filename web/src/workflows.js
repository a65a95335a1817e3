// Workflow tabs: each tab holds a UI-format workflow (ComfyUI v0.4 JSON), its undo stacks, the state
// last saved (so the tab bar can mark unsaved changes), its zoom and pan, and the images its output
// nodes showed. Tabs live in localStorage, so a page reload loses nothing. Saving writes the workflow
// to the server through ComfyUI's user-data API (`workflows/<name>.json`), asking for a name the first
// time; Export downloads it. Also: open (file picker / drop) of JSON and PNG, rename, close.
import { LiteGraph } from "litegraph";
import { pngTextChunks } from "./png.js";
import { UndoHistory } from "./history.js";
import { adoptMissingNodes } from "./nodes.js";
import { askText, confirmDialog, editInPlace } from "./dialog.js";

const STORAGE_KEY = "latentgraph.tabs";
const MIN_FIT_SCALE = 0.5; // smaller and text gets too small to read: show part of the graph instead
const SAVED_DIR = "workflows";

/** The user-data path a workflow named `name` is saved at, and back. */
export function savedPath(name) { return `${SAVED_DIR}/${name.replaceAll(/[\\/]/g, "_")}.json`; }
export function savedName(path) { return path.slice(SAVED_DIR.length + 1).replace(/\.json$/i, ""); }

/** The graph's workflow JSON as a canonical string: nodes by id (clicking a node raises it, which
 * is no edit), `order` recomputed from the links, and without the viewport. */
export function graphState(graph) {
  const data = graph.serialize({ sortNodes: true });
  if (data.extra) delete data.extra.ds;
  setExecutionOrder(data);
  return JSON.stringify(data);
}

/** Topological order, ties broken by node id. litegraph only refreshes `order` now and then, so
 * the same graph could otherwise serialise two ways. */
function setExecutionOrder(data) {
  const waiting = new Map(data.nodes.map((n) => [n.id, 0]));
  const next = new Map(data.nodes.map((n) => [n.id, []]));
  for (const [, from, , to] of data.links ?? []) {
    if (!waiting.has(from) || !waiting.has(to)) continue;
    waiting.set(to, waiting.get(to) + 1);
    next.get(from).push(to);
  }
  const ready = data.nodes.filter((n) => waiting.get(n.id) === 0).map((n) => n.id);
  const order = new Map();
  while (ready.length) {
    ready.sort((a, b) => a - b);
    const id = ready.shift();
    order.set(id, order.size);
    for (const to of next.get(id)) {
      waiting.set(to, waiting.get(to) - 1);
      if (waiting.get(to) === 0) ready.push(to);
    }
  }
  for (const n of data.nodes) n.order = order.get(n.id) ?? order.size; // cycles last
}

export class Workspace {
  /** `onShow(tab)` runs whenever a tab's graph was (re)loaded onto the canvas; `onSaved()` after the
   * server's saved workflows changed; `check(workflow, record)` is the server's reading of a file about to be
   * opened (null: do not open it). */
  constructor({ graph, canvas, toast, api, onShow = () => {}, onSaved = () => {}, check = async (wf) => wf }) {
    Object.assign(this, { graph, canvas, toast, api, onShow, onSaved, check });
    this.tabs = [];
    this.active = null;
    this.history = new UndoHistory(() => graphState(graph), (s) => { this.#load(s); this.onShow(this.tab); },
      (s) => this.#changed(s));
    this.tabBar = document.getElementById("tabs");
    this.tabBar.addEventListener("wheel", (e) => { this.tabBar.scrollLeft += e.deltaY + e.deltaX; }, { passive: true });
    this.persistTimer = null;
    this.missing = {};
    // zoom and pan are no edits, but each tab keeps its own across switches and reloads
    for (const type of ["wheel", "pointerup"]) canvas.canvas.addEventListener(type, () => this.persist(), { passive: true });
    addEventListener("pagehide", () => { this.history.checkpoint(); this.flush(); }); // text typed a moment ago
  }

  get tab() { return this.tabs.find((t) => t.id === this.active); }

  /** Restore the tabs of the last visit; false when there were none. */
  restore() {
    let saved;
    try { saved = JSON.parse(localStorage.getItem(STORAGE_KEY)); } catch { saved = null; }
    if (!saved?.tabs?.length) return false;
    this.tabs = saved.tabs.map((t) => ({ path: null, outputs: {}, ...t, undo: [], redo: [] }));
    this.switchTo(this.tabs.some((t) => t.id === saved.active) ? saved.active : this.tabs[0].id);
    this.#warnMissing();
    return true;
  }

  /** Open a workflow (object, or null for an empty canvas) in a new tab; `path`: where it is saved. */
  open(name, workflow = null, { path = null } = {}) {
    this.#stash();
    const id = crypto.randomUUID();
    this.#load(workflow ? JSON.stringify(workflow) : null);
    const state = graphState(this.graph);
    this.tabs.push({ id, name, path, state, saved: state, undo: [], redo: [], outputs: {} }); // unchanged until edited
    this.active = id;
    this.history.reset(state);
    if (workflow) this.fitView();
    else Object.assign(this.canvas.ds, { scale: 1, offset: [0, 0] });
    this.onShow(this.tab);
    this.render();
    this.persist();
    this.#warnMissing();
    return id;
  }

  /** Open a workflow saved on the server, or switch to its tab when it is open already. */
  async openSaved(path) {
    const open = this.tabs.find((t) => t.path === path);
    if (open) return this.switchTo(open.id);
    this.open(savedName(path), await this.api.readUserdata(path), { path });
  }

  /** Name the node types of the shown workflow that this server lacks. */
  #warnMissing() {
    const found = Object.entries(this.missing);
    if (!found.length) return;
    const list = found.map(([type, ids]) => `${type} (node${ids.length > 1 ? "s" : ""} ${ids.join(", ")})`);
    this.toast(`Missing node types, shown in red and kept unchanged when saved: ${list.join("; ")}`, "warn", 12000);
  }

  /** Show every node, at most at 100 % and above the minimap; a graph too big to read whole is shown
   * from its top-left corner at a readable zoom instead. */
  fitView() {
    const nodes = this.graph._nodes;
    if (!nodes.length) return;
    const title = LiteGraph.NODE_TITLE_HEIGHT;
    const x0 = Math.min(...nodes.map((n) => n.pos[0])), y0 = Math.min(...nodes.map((n) => n.pos[1] - title));
    const x1 = Math.max(...nodes.map((n) => n.pos[0] + n.size[0])), y1 = Math.max(...nodes.map((n) => n.pos[1] + n.size[1]));
    const el = this.canvas.canvas;
    const minimap = document.getElementById("minimap");
    const [cw, ch] = [el.clientWidth, el.clientHeight - (minimap?.hidden === false ? minimap.offsetHeight + 10 : 0)];
    const ds = this.canvas.ds;
    const fit = Math.min(1, (0.92 * cw) / (x1 - x0), (0.92 * ch) / (y1 - y0));
    ds.scale = Math.max(MIN_FIT_SCALE, fit);
    ds.offset = fit >= MIN_FIT_SCALE
      ? [cw / (2 * ds.scale) - (x0 + x1) / 2, ch / (2 * ds.scale) - (y0 + y1) / 2]
      : [20 / ds.scale - x0, 20 / ds.scale - y0];
    this.canvas.setDirty(true, true);
  }

  switchTo(id) {
    if (id === this.active) return;
    this.#stash();
    this.active = id;
    const tab = this.tab;
    this.#load(tab.state);
    this.history.reset(tab.state, tab.undo, tab.redo);
    if (tab.view) Object.assign(this.canvas.ds, { scale: tab.view.scale, offset: [...tab.view.offset] });
    else this.fitView();
    this.onShow(tab);
    this.render();
    this.persist();
  }

  async close(id) {
    const tab = this.tabs.find((t) => t.id === id);
    if (this.isDirty(tab) && !await confirmDialog(`Close "${tab.name}" without saving?`, "Close")) return;
    const index = this.tabs.indexOf(tab);
    this.tabs.splice(index, 1);
    if (!this.tabs.length) return void this.open("Unsaved workflow");
    if (id === this.active) {
      this.active = null;
      this.switchTo(this.tabs[Math.min(index, this.tabs.length - 1)].id);
    } else this.render();
    this.persist();
  }

  isDirty(tab) { return tab.saved !== tab.state; }

  /** Save the active workflow on the server: where it was saved before, else under a name asked for now. */
  async save() {
    if (this.saving) return false; // Ctrl+S again while the name is being asked for
    this.saving = true;
    try {
      return await this.#save();
    } finally {
      this.saving = false;
    }
  }

  async #save() {
    this.history.checkpoint();
    const tab = this.tab;
    const state = tab.state;
    let path = tab.path;
    if (!path) {
      const name = await askText("Save workflow as", tab.name, "Save");
      if (!name) return false;
      path = savedPath(name);
      if (await this.#exists(path) && !await confirmDialog(`A saved workflow "${name}" exists. Replace it?`, "Replace")) return false;
    }
    try {
      await this.api.writeUserdata(path, JSON.stringify(JSON.parse(state), null, 2));
    } catch (err) {
      this.toast(`Could not save: ${err.message}`, "error");
      return false;
    }
    Object.assign(tab, { path, name: savedName(path), saved: state });
    this.render();
    this.persist();
    this.onSaved();
    this.toast(`Saved ${savedName(path)}`, "info", 2000);
    return true;
  }

  async #exists(path) {
    const dir = path.slice(0, path.lastIndexOf("/"));
    const files = await this.api.listUserdata(dir);
    return files.some((f) => `${dir}/${f.path}` === path);
  }

  /** Download the active workflow as a JSON file. */
  export() {
    this.history.checkpoint();
    const tab = this.tab;
    const blob = new Blob([JSON.stringify(JSON.parse(tab.state), null, 2)], { type: "application/json" });
    const a = Object.assign(document.createElement("a"), {
      href: URL.createObjectURL(blob), download: tab.name.endsWith(".json") ? tab.name : `${tab.name}.json`,
    });
    a.click();
    setTimeout(() => URL.revokeObjectURL(a.href), 1000);
  }

  /** Rename a tab; a workflow saved on the server is renamed there too. */
  async rename(id, name) {
    const tab = this.tabs.find((t) => t.id === id);
    if (!tab) return;
    if (tab.path) return this.renameSaved(tab.path, name);
    tab.name = name;
    this.render();
    this.persist();
  }

  /** Rename a saved workflow on the server, and the tab that shows it. */
  async renameSaved(path, name) {
    const to = savedPath(name);
    if (to === path) return;
    try {
      if (await this.#exists(to)) throw new Error(`a saved workflow "${name}" exists already`);
      await this.api.moveUserdata(path, to);
    } catch (err) {
      return void this.toast(`Could not rename: ${err.message}`, "error");
    }
    for (const tab of this.tabs.filter((t) => t.path === path)) Object.assign(tab, { path: to, name: savedName(to) });
    this.render();
    this.persist();
    this.onSaved();
  }

  /** Delete a saved workflow on the server; a tab showing it stays open, as unsaved. */
  async deleteSaved(path) {
    if (!await confirmDialog(`Delete the saved workflow "${savedName(path)}"?`, "Delete")) return;
    try {
      await this.api.deleteUserdata(path);
    } catch (err) {
      return void this.toast(`Could not delete: ${err.message}`, "error");
    }
    for (const tab of this.tabs.filter((t) => t.path === path)) Object.assign(tab, { path: null, saved: null });
    this.render();
    this.persist();
    this.onSaved();
  }

  /** Keep a change that is no edit (an output node grown to fit its image): no undo step, and a tab without
   * unsaved changes keeps having none. Edits made before it must have been checkpointed. */
  absorb() {
    const tab = this.tab;
    const clean = !this.isDirty(tab);
    tab.state = this.history.absorb();
    if (clean) tab.saved = tab.state;
    this.persist();
  }

  /** Remember images an output node of tab `id` showed, so they are shown again after a reload. */
  keepOutput(id, nodeId, images) {
    const tab = this.tabs.find((t) => t.id === id);
    if (!tab) return;
    tab.outputs[nodeId] = images.filter((i) => i.type !== "temp"); // previews go with the server's session
    this.persist();
  }

  /** Open a .json workflow or a .png carrying one, as the server reads it (`check`); returns false when
   * the file holds none. */
  async openFile(file) {
    const name = file.name.replace(/\.(json|png)$/i, "");
    let data, record = null;
    if (file.type === "image/png" || /\.png$/i.test(file.name)) {
      const chunks = await pngTextChunks(await file.arrayBuffer());
      if (!chunks.workflow && !chunks.prompt) return false;
      data = JSON.parse(chunks.workflow ?? chunks.prompt);
      if (chunks.latentgraph) record = JSON.parse(chunks.latentgraph); // provenance: the models it was made with
    } else {
      data = JSON.parse(await file.text());
      if (!Array.isArray(data.nodes) && data.prompt && typeof data.prompt === "object") data = data.prompt;
    }
    const ui = Array.isArray(data.nodes);
    if (!ui && !Object.values(data).every((n) => n?.class_type)) {
      throw new Error(`${file.name} is neither a UI workflow nor an API prompt`);
    }
    data = await this.check(data, record);
    if (!data) return true; // the user chose not to open it
    return ui ? this.open(name, data) : this.#openApiPrompt(name, data);
  }

  /** Rebuild a graph from an API-format prompt (a PNG with only `prompt`), laid out by depth. */
  #openApiPrompt(name, prompt) {
    this.open(name);
    const nodes = {};
    const missing = [];
    for (const [id, spec] of Object.entries(prompt)) {
      const node = LiteGraph.createNode(spec.class_type);
      if (!node) { missing.push(spec.class_type); continue; }
      if (/^\d+$/.test(id)) node.id = Number(id);
      if (spec._meta?.title) node.title = spec._meta.title;
      this.graph.add(node);
      nodes[id] = node;
    }
    const depth = {};
    const depthOf = (id, seen = new Set()) => {
      if (depth[id] !== undefined || seen.has(id)) return depth[id] ?? 0;
      seen.add(id);
      const links = Object.values(prompt[id]?.inputs ?? {}).filter(Array.isArray);
      depth[id] = links.length ? 1 + Math.max(...links.map(([src]) => depthOf(String(src), seen))) : 0;
      return depth[id];
    };
    const columns = {};
    for (const [id, node] of Object.entries(nodes)) {
      for (const [input, value] of Object.entries(prompt[id].inputs ?? {})) {
        const src = Array.isArray(value) ? nodes[String(value[0])] : null;
        if (src) src.connect(value[1], node, node.inputs.findIndex((i) => i.name === input));
        else {
          const w = node.widgets?.find((x) => x.name === input);
          if (w) w.value = value?.__value__ ?? value;
        }
      }
      const d = depthOf(id);
      columns[d] = (columns[d] ?? 0);
      node.pos = [40 + d * 340, 40 + columns[d]];
      columns[d] += node.size[1] + 60;
    }
    if (missing.length) this.toast(`Unknown node types skipped: ${missing.join(", ")}`, "warn");
    this.canvas.draw(true, true);
    this.fitView();
    this.history.reset();
    this.#changed(graphState(this.graph));
    return this.active;
  }

  #stash() {
    const tab = this.tab;
    if (!tab) return;
    this.history.checkpoint();
    tab.state = this.history.current;
    tab.undo = this.history.undoStack;
    tab.redo = this.history.redoStack;
    tab.view = { scale: this.canvas.ds.scale, offset: [...this.canvas.ds.offset] };
  }

  #load(state) {
    this.canvas.deselectAll?.();
    if (state) this.graph.configure(JSON.parse(state));
    else this.graph.clear();
    this.missing = adoptMissingNodes(this.graph); // {type: [ids]} of node types the server lacks
    for (const node of this.graph._nodes) node.afterGraphLoaded?.();
    // Drawing lays nodes out (litegraph grows nodes too small for their widgets): do it now, so
    // that the state recorded for a freshly opened file is the one the user sees.
    this.canvas.draw(true, true);
  }

  #changed(state) {
    const tab = this.tab;
    if (!tab) return;
    tab.state = state;
    this.render();
    this.persist();
  }

  /** Keep the tabs in local storage soon (edits come in bursts). */
  persist() {
    clearTimeout(this.persistTimer);
    this.persistTimer = setTimeout(() => this.flush(), 100);
  }

  flush() {
    clearTimeout(this.persistTimer);
    if (this.tab) this.tab.view = { scale: this.canvas.ds.scale, offset: [...this.canvas.ds.offset] };
    const tabs = this.tabs.map(({ id, name, path, state, saved, view, outputs }) => ({ id, name, path, state, saved, view, outputs }));
    try {
      localStorage.setItem(STORAGE_KEY, JSON.stringify({ tabs, active: this.active }));
    } catch (err) {
      this.toast(`Could not keep tabs in local storage: ${err.message}`, "warn");
    }
  }

  render() {
    this.tabBar.replaceChildren(...this.tabs.map((tab) => {
      const el = document.createElement("div");
      el.className = `tab${tab.id === this.active ? " active" : ""}`;
      el.dataset.id = tab.id;
      el.title = tab.path ? `${tab.name} (saved on the server; double-click to rename)` : `${tab.name} (double-click to rename)`;
      const label = Object.assign(document.createElement("span"), { className: "name", textContent: tab.name });
      const dirty = Object.assign(document.createElement("span"), {
        className: "dirty", textContent: this.isDirty(tab) ? "●" : "", title: "unsaved changes",
      });
      const close = Object.assign(document.createElement("button"), { className: "close", textContent: "×" });
      close.title = "Close tab";
      close.onclick = (e) => { e.stopPropagation(); this.close(tab.id); };
      el.onclick = () => this.switchTo(tab.id);
      label.ondblclick = (e) => { e.stopPropagation(); editInPlace(label, tab.name, (name) => this.rename(tab.id, name)); };
      el.append(label, dirty, close);
      return el;
    }));
    this.tabBar.querySelector(".tab.active")?.scrollIntoView({ block: "nearest", inline: "nearest" });
  }
}
