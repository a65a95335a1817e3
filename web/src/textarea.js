// Multiline text edited in place: a <textarea> laid over each multiline widget that follows its node
// through zoom and pan. Every keystroke sets the widget's value, so nothing typed waits in a dialog
// (litegraph's own editor is a "Value" popup that drops the text on a stray click).
//
// The canvas decides where a box goes: the widget's drawWidget calls `placeTextArea` with the 2D
// context, whose transform maps node space to canvas pixels. A box its widget did not draw in the
// last frame (node off screen, collapsed, removed, input linked, zoomed out too far) is hidden.

const boxes = new Map(); // widget -> { el, frame }
let frame = 0;
let layer = null;
let lgCanvas = null;
let onEdit = () => {};

/** Wrap the canvas's front drawing to count frames and hide the boxes a frame did not draw. */
export function attachTextAreas(canvas, { onInput }) {
  lgCanvas = canvas;
  onEdit = onInput;
  layer = Object.assign(document.createElement("div"), { className: "text-layer" });
  canvas.canvas.after(layer);
  const draw = canvas.drawFrontCanvas.bind(canvas);
  canvas.drawFrontCanvas = (...args) => {
    frame++;
    draw(...args);
    sweep();
  };
}

function sweep() {
  for (const [widget, box] of boxes) {
    if (box.frame === frame) continue;
    box.el.hidden = true;
    const node = widget.node;
    if (!node?.graph || node.graph.getNodeById(node.id) !== node) { // removed, or its graph was reloaded
      box.el.remove();
      boxes.delete(widget);
    }
  }
}

function boxFor(widget) {
  let box = boxes.get(widget);
  if (box) return box;
  const el = Object.assign(document.createElement("textarea"), {
    className: "node-text", spellcheck: false, placeholder: widget.label ?? widget.name, value: widget.value ?? "",
  });
  el.dataset.node = widget.node?.id;
  el.dataset.widget = widget.name;
  el.addEventListener("input", () => {
    widget.value = el.value;
    onEdit(widget.node, widget);
  });
  el.addEventListener("pointerdown", () => {
    if (widget.node && !widget.node.is_selected) lgCanvas.selectNode(widget.node);
  });
  // The wheel zooms the canvas unless the text itself can scroll (as over any other part of a node).
  el.addEventListener("wheel", (e) => {
    if (el.scrollHeight > el.clientHeight && !e.ctrlKey) return;
    e.preventDefault();
    lgCanvas.canvas.dispatchEvent(new WheelEvent("wheel", e));
  }, { passive: false });
  layer.append(el);
  box = { el, frame: -1 };
  boxes.set(widget, box);
  return box;
}

/** Put the widget's box over the rectangle (x, y, w, h) in node space, as the context maps it. */
export function placeTextArea(widget, ctx, [x, y, w, h]) {
  if (!layer || widget.computedDisabled) return; // a linked input takes its text from the link
  const { el } = boxFor(widget);
  const m = ctx.getTransform();
  const css = lgCanvas.canvas.clientWidth / lgCanvas.canvas.width; // backing-store pixels to CSS pixels
  const left = (m.a * x + m.c * y + m.e) * css, top = (m.b * x + m.d * y + m.f) * css;
  el.style.transform = `translate(${left}px, ${top}px) scale(${m.a * css})`;
  el.style.width = `${w}px`;
  el.style.height = `${h}px`;
  if (document.activeElement !== el && el.value !== String(widget.value ?? "")) el.value = widget.value ?? "";
  el.hidden = false;
  boxes.get(widget).frame = frame;
}

/** Focus a widget's box; bring its node into view at a readable zoom first when it is not shown. */
export function focusTextArea(widget) {
  const box = boxes.get(widget);
  if (box && !box.el.hidden) return box.el.focus();
  lgCanvas.ds.scale = 1;
  lgCanvas.centerOnNode(widget.node);
  lgCanvas.setDirty(true, true);
  requestAnimationFrame(() => requestAnimationFrame(() => boxes.get(widget)?.el.focus()));
}
