// Node classes built from the server's /object_info schema: sockets, widgets (number, slider,
// combo, text, toggle, seed with "control after generate", upload) and what a node draws on
// top of litegraph: output images, live previews, the progress bar and validation errors.
import { LGraphCanvas, LGraphNode, LiteGraph } from "litegraph";
import { focusTextArea, placeTextArea } from "./textarea.js";

export const TYPE_COLORS = {
  MODEL: "#b39ddb", CLIP: "#ffd54f", VAE: "#ff7070", CONDITIONING: "#ffa94d", LATENT: "#ff9cf9",
  IMAGE: "#64b5f6", MASK: "#81c784", SAMPLER: "#ecb4b4", SIGMAS: "#cdffcd", NOISE: "#b0b0b0",
  INT: "#7ec8e3", FLOAT: "#9ad29a", STRING: "#c8c8c8", BOOLEAN: "#d9d99a",
  CLIP_VISION: "#a8dadc", CLIP_VISION_OUTPUT: "#ad7452", // ComfyUI's default palette
};
export const CONTROL_VALUES = ["fixed", "increment", "decrement", "randomize"];
const PRIMITIVES = new Set(["INT", "FLOAT", "STRING", "BOOLEAN"]);
const IMAGE_AREA = 220; // room reserved on output nodes so results never resize (and so never "edit") the node
const MAX_SAFE_SEED = Number.MAX_SAFE_INTEGER;

export function applyTypeColors(canvas) {
  Object.assign(LGraphCanvas.link_type_colors, TYPE_COLORS);
  canvas.default_connection_color_byType = { ...TYPE_COLORS };
}

/** Per-node runtime state the canvas draws but never serialises. */
export function runtime(node) {
  node.lg ??= { images: [], preview: null, progress: null, executing: false, errors: [] };
  return node.lg;
}

function comboValues(type, opts) {
  if (Array.isArray(type)) return type;
  if (type === "COMBO") return opts.options ?? [];
  return null;
}

function decimals(step) {
  const s = String(step ?? 0.01);
  return s.includes(".") ? s.split(".")[1].length : 0;
}

function addWidgetFor(node, name, type, opts, onChange) {
  const values = comboValues(type, opts);
  const label = { label: name };
  if (values) {
    return node.addWidget("combo", name, opts.default ?? values[0] ?? "", onChange, { ...label, values });
  }
  if (type === "INT" || type === "FLOAT") {
    const isInt = type === "INT";
    const step = opts.step ?? (isInt ? 1 : 0.01);
    const o = { ...label, min: opts.min, max: isInt && opts.max > MAX_SAFE_SEED ? MAX_SAFE_SEED : opts.max,
      step2: step, precision: isInt ? 0 : decimals(opts.round || step) };
    const kind = opts.display === "slider" && o.min != null && o.max != null ? "slider" : "number";
    const fix = (v, ...rest) => {
      const w = node.widgets.find((x) => x.name === name);
      if (isInt && w) w.value = Math.round(v);
      onChange(w?.value ?? v, ...rest);
    };
    return node.addWidget(kind, name, opts.default ?? 0, fix, o);
  }
  if (type === "STRING") {
    const w = node.addWidget("text", name, opts.default ?? "", onChange, { ...label, multiline: !!opts.multiline });
    if (opts.multiline) makeTextArea(w);
    return w;
  }
  if (type === "BOOLEAN") {
    return node.addWidget("toggle", name, opts.default ?? false, onChange,
      { ...label, on: opts.label_on ?? "true", off: opts.label_off ?? "false" });
  }
  return null;
}

/** A multiline text widget: a box that takes the node's free height, edited in place by a textarea
 * laid over it (textarea.js); the canvas draws the text itself only where no textarea is shown. */
function makeTextArea(widget) {
  widget.computeLayoutSize = () => ({ minHeight: 64, maxHeight: 1e6, minWidth: 120, maxWidth: 1e6 });
  widget.onClick = () => focusTextArea(widget);
  widget.drawWidget = function (ctx, { width, showText = true }) {
    const [x, y, w, h] = [15, this.y, width - 30, (this.computedHeight ?? 64) - 6];
    ctx.save();
    ctx.fillStyle = LiteGraph.WIDGET_BGCOLOR;
    ctx.strokeStyle = LiteGraph.WIDGET_OUTLINE_COLOR;
    ctx.beginPath();
    ctx.roundRect(x, y, w, h, 6);
    ctx.fill();
    ctx.stroke();
    if (showText && !this.computedDisabled) placeTextArea(this, ctx, [x, y, w, h]);
    else if (showText) {
      ctx.clip();
      ctx.fillStyle = LiteGraph.WIDGET_SECONDARY_TEXT_COLOR;
      ctx.font = "12px system-ui, sans-serif";
      ctx.textAlign = "left";
      const lines = wrapText(ctx, String(this.value || this.label || this.name), w - 12);
      lines.forEach((line, i) => ctx.fillText(line, x + 6, y + 15 + i * 15));
    }
    ctx.restore();
  };
}

function wrapText(ctx, text, width) {
  const lines = [];
  for (const para of text.split("\n")) {
    let line = "";
    for (const word of para.split(" ")) {
      const next = line ? `${line} ${word}` : word;
      if (line && ctx.measureText(next).width > width) {
        lines.push(line);
        line = word;
      } else line = next;
    }
    lines.push(line);
  }
  return lines;
}

function isSeed(name, type, opts) {
  return type === "INT" && (opts.control_after_generate || name === "seed" || name === "noise_seed");
}

/** Apply each seed widget's control ("after generate") once a prompt was queued. */
export function applySeedControls(graph) {
  for (const node of graph._nodes) {
    for (const w of node.widgets ?? []) {
      const control = w.lgControl;
      if (!control) continue;
      const seed = w;
      const { min = 0, max = MAX_SAFE_SEED } = seed.options;
      const mode = control.value;
      if (mode === "increment") seed.value = Math.min(max, seed.value + 1);
      else if (mode === "decrement") seed.value = Math.max(min, seed.value - 1);
      else if (mode === "randomize") seed.value = min + Math.floor(Math.random() * (Math.min(max, 2 ** 50) - min));
    }
  }
}

function buildNode(node, info, hooks) {
  node.serialize_widgets = true;
  const changed = () => hooks.onWidgetChange(node);
  const order = info.input_order ?? {};
  for (const group of ["required", "optional"]) {
    const specs = info.input?.[group] ?? {};
    const names = order[group] ?? Object.keys(specs);
    let upload = null;
    for (const name of names) {
      const [type, opts = {}] = specs[name];
      const widgetable = (comboValues(type, opts) || PRIMITIVES.has(type)) && !opts.forceInput;
      const slotType = comboValues(type, opts) ? "COMBO" : type;
      if (!widgetable) {
        node.addInput(name, slotType, group === "optional" ? { shape: LiteGraph.SlotShape?.HollowCircle } : {});
        continue;
      }
      const w = addWidgetFor(node, name, type, opts, changed);
      if (w && opts.tooltip) w.tooltip = opts.tooltip;
      // A widget input can also take a link; the server lets the link win.
      node.addInput(name, slotType, { widget: { name } });
      if (isSeed(name, type, opts)) {
        w.lgControl = node.addWidget("combo", "control_after_generate", "randomize", changed,
          { label: "control after generate", values: CONTROL_VALUES });
      }
      if (opts.image_upload) upload = name;
    }
    // after the group's other widgets, where ComfyUI saves its value (LoadImageMask: ["m.png", "red", "image"])
    if (upload) addUploadWidget(node, upload, hooks);
  }
  info.output.forEach((type, i) => node.addOutput(info.output_name?.[i] ?? type, type));
  node.size = node.computeSize();
}

function addUploadWidget(node, target, hooks) {
  node.addWidget("button", "upload", "image", () => {
    const input = Object.assign(document.createElement("input"), { type: "file", accept: "image/*" });
    input.onchange = async () => {
      if (!input.files[0]) return;
      const name = await hooks.upload(input.files[0]);
      setComboValue(node, target, name);
    };
    input.click();
  }, { label: "choose file to upload" });
}

/** Choose `value` in a combo widget (adding it to the choices: a file uploaded or listed since the page loaded). */
export function setComboValue(node, name, value) {
  const w = node.widgets.find((x) => x.name === name);
  if (!w.options.values.includes(value)) w.options.values.push(value);
  w.value = value;
  node.onWidgetChanged?.(name); // LoadImage shows the chosen picture
}

/** Preview the input-folder image a LoadImage-style combo points at. */
function showInputImage(node, name) {
  const value = node.widgets?.find((x) => x.name === name)?.value;
  if (!value) return void (runtime(node).images = []);
  const cut = value.lastIndexOf("/");
  const query = new URLSearchParams({ filename: value.slice(cut + 1), subfolder: cut < 0 ? "" : value.slice(0, cut), type: "input" });
  const img = new Image();
  img.onload = () => node.graph?.setDirtyCanvas(true, true);
  img.src = `/view?${query}`;
  runtime(node).images = [img];
}

/** Register one litegraph node type per server node class. */
export function registerNodes(objectInfo, hooks) {
  for (const [typeName, info] of Object.entries(objectInfo)) {
    const upload = Object.entries(info.input?.required ?? {}).find(([, [, o]]) => o?.image_upload)?.[0];
    const withImages = info.output_node || !!upload;
    class ServerNode extends LGraphNode {
      constructor(title) {
        super(title ?? info.display_name ?? typeName);
        buildNode(this, info, hooks);
        this.properties.ver = info.version; // saved workflows record each node's version (server/migrations.py)
      }
      configure(saved) {
        // litegraph copies saved slots over ours by position; files from older ComfyUI frontends list
        // only the linked sockets, so sockets came out twice. Keep the schema's slots, take the links.
        super.configure({ ...saved, inputs: null, outputs: null });
        adoptSavedSlots(this, saved);
        if (withImages) this.size[1] = Math.max(this.size[1], this.computeSize()[1]); // room for its image
      }
      computeSize(out) {
        const size = super.computeSize(out);
        if (withImages) size[1] += IMAGE_AREA;
        return size;
      }
      onWidgetChanged(name) {
        if (name === upload) showInputImage(this, upload);
        hooks.onWidgetChange(this);
      }
      onConnectionsChange() { if (this.lg) this.lg.errors = []; } // a rewired node is re-checked on the next queue
      onConfigure() { if (upload) showInputImage(this, upload); }
      onAdded() { if (upload) showInputImage(this, upload); }
      onDrawBackground(ctx) { drawImages(this, ctx); }
      onDrawForeground(ctx) { drawState(this, ctx); }
    }
    ServerNode.title = info.display_name || typeName;
    ServerNode.nodeData = info;
    LiteGraph.registerNodeType(typeName, ServerNode);
    ServerNode.category = info.category ?? "";
    ServerNode.description = info.description ?? "";
  }
}

const slotKey = (slot) => slot.widget?.name ?? slot.name;

/** Give the node's own slots the links (and labels) of the saved slots of the same name (outputs: the
 * same position), pointing each link at the slot's index. A linked saved input the schema lacks is
 * kept, so the server can name it rather than the link vanish; an unlinked one is dropped. */
function adoptSavedSlots(node, saved) {
  const links = node.graph?._links;
  const take = (slot, from, index, end) => {
    if (from.label && from.label !== from.name) slot.label = from.label;
    if (end === "target") {
      slot.link = from.link ?? null;
      const link = links?.get(from.link);
      if (link) link.target_slot = index;
    } else {
      slot.links = from.links?.length ? [...from.links] : null;
      for (const id of slot.links ?? []) { const link = links?.get(id); if (link) link.origin_slot = index; }
    }
  };
  for (const from of saved.inputs ?? []) {
    let index = node.inputs.findIndex((s) => slotKey(s) === slotKey(from));
    if (index < 0) {
      if (from.link == null) continue;
      node.addInput(from.name, from.type);
      index = node.inputs.length - 1;
    }
    if (from.link == null && node.inputs[index].link != null) continue; // a duplicate saved by a buggy canvas
    take(node.inputs[index], from, index, "target");
  }
  (saved.outputs ?? []).forEach((from, index) => {
    if (index >= node.outputs.length) {
      if (!from.links?.length) return;
      node.addOutput(from.name, from.type);
    }
    take(node.outputs[index], from, index, "origin");
  });
}

function widgetsBottom(node) {
  let y = 0;
  for (const w of node.widgets ?? []) y = Math.max(y, (w.y ?? 0) + (w.computedHeight ?? LiteGraph.NODE_WIDGET_HEIGHT));
  const slots = Math.max(node.inputs.filter((i) => !i.widget).length, node.outputs.length);
  return Math.max(y, slots * LiteGraph.NODE_SLOT_HEIGHT) + 6;
}

/** Grow an output node so that its image is drawn across its whole width; true when it grew. */
export function growToImage(node, img) {
  const need = Math.ceil(widgetsBottom(node) + ((node.size[0] - 8) * img.naturalHeight) / img.naturalWidth + 4);
  if (!img.naturalWidth || node.size[1] >= need) return false;
  node.setSize([node.size[0], need]);
  return true;
}

function fit(img, x, y, w, h) {
  const s = Math.min(w / img.naturalWidth, h / img.naturalHeight);
  const dw = img.naturalWidth * s, dh = img.naturalHeight * s;
  return [x + (w - dw) / 2, y + (h - dh) / 2, dw, dh];
}

function drawImages(node, ctx) {
  const st = runtime(node);
  const img = st.preview ?? st.images.at(-1);
  if (!img?.complete || !img.naturalWidth) return;
  const top = widgetsBottom(node);
  const h = node.size[1] - top - 4;
  if (h > 24) {
    ctx.drawImage(img, ...fit(img, 4, top, node.size[0] - 8, h));
  } else {
    // Nodes without room (e.g. the sampler's live preview) show it just below themselves.
    ctx.drawImage(img, ...fit(img, 0, node.size[1] + 6, node.size[0], 256));
  }
}

function drawState(node, ctx, textTop = 16) {
  const st = runtime(node);
  const titleH = LiteGraph.NODE_TITLE_HEIGHT;
  const [w, h] = node.size;
  if (st.executing) {
    ctx.strokeStyle = "#3fbf6a";
    ctx.lineWidth = 3;
    ctx.strokeRect(-3, -titleH - 3, w + 6, h + titleH + 6);
  }
  if (st.progress != null) {
    ctx.fillStyle = "#1a1a1a";
    ctx.fillRect(0, h - 5, w, 5);
    ctx.fillStyle = "#3fbf6a";
    ctx.fillRect(0, h - 5, w * st.progress, 5);
  }
  if (!st.errors.length) return;
  ctx.strokeStyle = "#e5484d";
  ctx.lineWidth = 3;
  ctx.strokeRect(-3, -titleH - 3, w + 6, h + titleH + 6);
  ctx.font = "12px system-ui, sans-serif";
  st.errors.forEach((err, i) => {
    const name = err.extra_info?.input_name;
    markInput(node, ctx, name);
    ctx.fillStyle = "#ff8a8d";
    ctx.fillText(`⚠ ${err.message}`, 0, h + textTop + i * 15);
  });
}

// -- node types this server does not have ------------------------------------------------------

const MISSING_COLOR = "#8f1d21";
const MISSING_BGCOLOR = "#4a1d20";

/** litegraph loads a node of an unknown type as a bare LGraphNode that keeps its saved JSON
 * (`last_serialization`). Such a node draws red with a label, and saves the JSON it came with,
 * changed only where the user changed it on the canvas (move, resize, collapse, mode, title, links).
 * The red is drawn, never stored: `color`/`bgcolor` stay as the file had them. */
class MissingNode extends LGraphNode {
  static title_text_color = "#ffd7d7";
  get missing() { return true; }
  get renderingColor() { return MISSING_COLOR; }
  get renderingBgColor() { return MISSING_BGCOLOR; }

  serialize() {
    const o = structuredClone(this.last_serialization);
    Object.assign(o, { id: this.id, pos: [...this.pos], size: [...this.size] });
    if (this.mode !== (o.mode ?? LiteGraph.ALWAYS)) o.mode = this.mode;
    if (Object.keys(this.flags).length || o.flags) o.flags = structuredClone(this.flags);
    if (this.title !== (o.title || this.type)) o.title = this.title;
    o.inputs?.forEach((slot, i) => {
      const link = this.inputs[i]?.link ?? null;
      if (link !== (slot.link ?? null)) slot.link = link;
    });
    o.outputs?.forEach((slot, i) => {
      const links = this.outputs[i]?.links ?? [];
      if (!sameItems(links, slot.links ?? [])) slot.links = [...links];
    });
    return o;
  }

  onDrawForeground(ctx) {
    drawMissing(this, ctx);
    drawState(this, ctx, 32); // below litegraph's thick has_errors outline
  }
}

function sameItems(a, b) {
  return a.length === b.length && a.every((x) => b.includes(x));
}

function drawMissing(node, ctx) {
  if (node.flags.collapsed) return;
  const [w, h] = node.size;
  const slots = Math.max(node.inputs?.length ?? 0, node.outputs?.length ?? 0);
  const top = slots * LiteGraph.NODE_SLOT_HEIGHT + 8;
  ctx.save();
  ctx.beginPath();
  ctx.rect(0, top, w, Math.max(0, h - top));
  ctx.clip();
  ctx.fillStyle = "#ffb3b5";
  ctx.font = "bold 12px system-ui, sans-serif";
  ctx.textAlign = "left";
  const lines = wrapText(ctx, `Missing node type: ${node.type}`, w - 16);
  lines.forEach((line, i) => ctx.fillText(line, 8, top + 12 + i * 15));
  ctx.font = "11px system-ui, sans-serif";
  ctx.fillStyle = "#d9a0a2";
  const values = (node.last_serialization.widgets_values ?? []).map((v) => (typeof v === "string" ? v : JSON.stringify(v)));
  const notes = ["kept unchanged when saved", ...(values.length ? wrapText(ctx, `values: ${values.join(" · ")}`, w - 16) : [])];
  notes.forEach((line, i) => ctx.fillText(line, 8, top + 14 + (lines.length + i) * 15));
  ctx.restore();
}

/** Turn the placeholders litegraph made for unknown node types into MissingNodes; returns
 * {type: [node ids]} for the types missing. */
export function adoptMissingNodes(graph) {
  const missing = {};
  for (const node of graph._nodes) {
    if (node.constructor !== LGraphNode || !node.last_serialization) continue;
    Object.setPrototypeOf(node, MissingNode.prototype); // the instance litegraph built keeps its slots
    node.title ||= node.type; // shown; saved only if the user renames it
    (missing[node.type] ??= []).push(node.id);
  }
  return missing;
}

function markInput(node, ctx, name) {
  if (!name) return;
  ctx.strokeStyle = "#e5484d";
  ctx.lineWidth = 2;
  const w = node.widgets?.find((x) => x.name === name);
  if (w) {
    ctx.strokeRect(10, w.y, node.size[0] - 20, w.computedHeight ?? LiteGraph.NODE_WIDGET_HEIGHT);
    return;
  }
  const index = node.inputs.findIndex((i) => i.name === name);
  if (index < 0) return;
  const [x, y] = node.getInputPos(index);
  ctx.beginPath();
  ctx.arc(x - node.pos[0], y - node.pos[1], 8, 0, Math.PI * 2);
  ctx.stroke();
}

/** Frontend-only node types found in ComfyUI-style workflows; the server drops them when converting. */
export function registerFrontendNodes(hooks) {
  for (const type of ["Note", "MarkdownNote"]) {
    class NoteNode extends LGraphNode {
      constructor(title) {
        super(title ?? type);
        this.serialize_widgets = true;
        this.color = "#432";
        this.bgcolor = "#653";
        makeTextArea(this.addWidget("text", "text", "", () => hooks.onWidgetChange(this), { multiline: true }));
        this.size = [320, 120];
      }
    }
    NoteNode.title = type;
    LiteGraph.registerNodeType(type, NoteNode);
    NoteNode.category = "utils";
  }
}

/** ComfyUI's PrimitiveNode: one value wired into widget inputs of other nodes. It takes the
 * widget (kind, limits, choices) of the first input it feeds; the server pushes its value there. */
export function registerPrimitiveNode(hooks) {
  class PrimitiveNode extends LGraphNode {
    constructor(title) {
      super(title ?? "Primitive");
      this.serialize_widgets = true;
      this.addOutput("connect to widget input", "*");
    }

    onConfigure(info) { this.savedValues = info.widgets_values; }

    onConnectionsChange(kind, _slot, connected) {
      if (kind === LiteGraph.OUTPUT && connected) queueMicrotask(() => this.afterGraphLoaded());
    }

    /** Called once the whole graph is loaded (targets exist) and after each new connection. */
    afterGraphLoaded() {
      if (this.widgets?.length || !this.graph) return;
      const linkId = this.outputs[0].links?.[0];
      const link = linkId == null ? null : this.graph.getLink(linkId);
      const target = link && this.graph.getNodeById(link.target_id);
      const input = target?.inputs[link.target_slot];
      const source = target?.widgets?.find((w) => w.name === input?.widget?.name);
      if (!source) return;
      const [value = source.value, control] = this.savedValues ?? [];
      const changed = () => hooks.onWidgetChange(this);
      const w = this.addWidget(source.type, source.name, value, changed, { ...source.options });
      if (source.options?.multiline) makeTextArea(w);
      if (source.lgControl) {
        w.lgControl = this.addWidget("combo", "control_after_generate", control ?? "fixed", changed,
          { label: "control after generate", values: CONTROL_VALUES });
      }
      this.outputs[0].type = input.type;
      if (!this.savedValues) this.size = this.computeSize();
    }
  }
  PrimitiveNode.title = "Primitive";
  LiteGraph.registerNodeType("PrimitiveNode", PrimitiveNode);
  PrimitiveNode.category = "utils";
}
