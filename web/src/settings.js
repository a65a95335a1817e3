// Settings, kept on the server through ComfyUI's settings API under ComfyUI's own ids, so the official
// frontend and this canvas share them: link style, snap to grid, theme, minimap. A change applies at
// once and is saved; the dialog (⚙) lists them all.
import { LGraphCanvas, LiteGraph } from "litegraph";

const DARK = {}; // litegraph's colours as shipped, recorded before the first theme change
const LIGHT = {
  NODE_TITLE_COLOR: "#333", NODE_SELECTED_TITLE_COLOR: "#000", NODE_TEXT_COLOR: "#444", NODE_DEFAULT_COLOR: "#c9ccd4",
  NODE_DEFAULT_BGCOLOR: "#f1f2f5", NODE_DEFAULT_BOXCOLOR: "#888", NODE_BOX_OUTLINE_COLOR: "#222",
  DEFAULT_SHADOW_COLOR: "rgba(0,0,0,0.15)", WIDGET_BGCOLOR: "#ffffff", WIDGET_OUTLINE_COLOR: "#a9acb4",
  WIDGET_TEXT_COLOR: "#222", WIDGET_SECONDARY_TEXT_COLOR: "#666", LINK_COLOR: "#6a7",
};

function applyTheme(theme, canvas) {
  for (const key of Object.keys(LIGHT)) DARK[key] ??= LiteGraph[key];
  Object.assign(LiteGraph, theme === "light" ? LIGHT : DARK);
  document.body.classList.toggle("light", theme === "light");
  canvas.clear_background_color = theme === "light" ? "#e6e7eb" : "#222";
  canvas.background_image = theme === "light" ? null : LGraphCanvas.DEFAULT_BACKGROUND_IMAGE;
  canvas.node_title_color = LiteGraph.NODE_TITLE_COLOR;
  canvas.default_link_color = LiteGraph.LINK_COLOR;
  canvas.setDirty(true, true);
}

/** Each setting: ComfyUI's id, a label, its kind, default, and how it applies to the canvas. */
export const SETTINGS = [
  { id: "Comfy.LinkRenderMode", label: "Link style", kind: "choice", default: LiteGraph.SPLINE_LINK,
    choices: [["Spline", LiteGraph.SPLINE_LINK], ["Straight", LiteGraph.STRAIGHT_LINK], ["Linear", LiteGraph.LINEAR_LINK], ["Hidden", -1]],
    apply: (v, { canvas }) => { canvas.links_render_mode = v; canvas.render_connections_arrows = false; canvas.setDirty(true, true); } },
  { id: "pysssss.SnapToGrid", label: "Snap to grid", kind: "toggle", default: false,
    apply: (v) => { LiteGraph.alwaysSnapToGrid = v; } },
  { id: "Comfy.SnapToGrid.GridSize", label: "Grid size", kind: "number", default: 10, min: 1, max: 500,
    apply: (v) => { LiteGraph.CANVAS_GRID_SIZE = v; } },
  { id: "Comfy.ColorPalette", label: "Theme", kind: "choice", default: "dark", choices: [["Dark", "dark"], ["Light", "light"]],
    apply: (v, { canvas }) => applyTheme(v, canvas) },
  { id: "Comfy.Minimap.Visible", label: "Show the minimap", kind: "toggle", default: true,
    apply: (v, { minimap }) => { minimap.hidden = !v; } },
];

export class Settings {
  /** `targets`: what settings apply to ({canvas, minimap}). */
  constructor(api, targets, toast) {
    Object.assign(this, { api, targets, toast, values: {} });
  }

  async load() {
    try {
      this.values = (await this.api.settings()) ?? {};
    } catch (err) {
      this.toast(`Settings could not be read: ${err.message}`, "warn");
    }
    for (const s of SETTINGS) s.apply(this.get(s.id), this.targets);
  }

  get(id) {
    const s = SETTINGS.find((x) => x.id === id);
    return this.values[id] ?? s?.default;
  }

  async set(id, value) {
    this.values[id] = value;
    SETTINGS.find((x) => x.id === id)?.apply(value, this.targets);
    try {
      await this.api.setSetting(id, value);
    } catch (err) {
      this.toast(`Could not save the setting: ${err.message}`, "error");
    }
  }

  /** The settings dialog: every setting as a labelled control that applies and saves on change. */
  show() {
    if (document.getElementById("settings")) return;
    const backdrop = Object.assign(document.createElement("div"), { className: "modal-backdrop", id: "settings" });
    const box = Object.assign(document.createElement("div"), { className: "modal" });
    box.setAttribute("role", "dialog");
    box.append(Object.assign(document.createElement("h2"), { textContent: "Settings" }));
    for (const s of SETTINGS) box.append(this.#control(s));
    const done = Object.assign(document.createElement("button"), { className: "primary", textContent: "Close" });
    const close = () => { backdrop.remove(); document.removeEventListener("keydown", onKey, true); };
    const onKey = (e) => { if (e.key === "Escape") { e.stopPropagation(); close(); } };
    done.onclick = close;
    document.addEventListener("keydown", onKey, true);
    backdrop.onpointerdown = (e) => { if (e.target === backdrop) close(); };
    box.append(Object.assign(document.createElement("div"), { className: "modal-buttons" }));
    box.lastChild.append(done);
    backdrop.append(box);
    document.body.append(backdrop);
    done.focus();
  }

  #control(s) {
    const row = Object.assign(document.createElement("label"), { className: "setting" });
    row.dataset.id = s.id;
    row.append(Object.assign(document.createElement("span"), { textContent: s.label }));
    const value = this.get(s.id);
    let input;
    if (s.kind === "choice") {
      input = document.createElement("select");
      for (const [label, v] of s.choices) input.append(new Option(label, JSON.stringify(v), false, v === value));
      input.onchange = () => this.set(s.id, JSON.parse(input.value));
    } else if (s.kind === "toggle") {
      input = Object.assign(document.createElement("input"), { type: "checkbox", checked: !!value });
      input.onchange = () => this.set(s.id, input.checked);
    } else {
      input = Object.assign(document.createElement("input"), { type: "number", value, min: s.min, max: s.max });
      input.onchange = () => this.set(s.id, Math.min(s.max, Math.max(s.min, Number(input.value) || s.default)));
    }
    row.append(input);
    return row;
  }
}
