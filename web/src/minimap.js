// Minimap (litegraph has none): every node and group as a rectangle, the visible area as a frame.
// Clicking or dragging on it centres the main view there.

const PAD = 40;

export function attachMinimap(element, canvas) {
  const ctx = element.getContext("2d");
  let frame = null; // graph-space bounds and scale of the last drawing

  function bounds() {
    const graph = canvas.graph;
    const va = canvas.visible_area;
    let [x0, y0, x1, y1] = [va[0], va[1], va[0] + va[2], va[1] + va[3]];
    for (const n of graph._nodes) {
      x0 = Math.min(x0, n.pos[0]); y0 = Math.min(y0, n.pos[1] - 30);
      x1 = Math.max(x1, n.pos[0] + n.size[0]); y1 = Math.max(y1, n.pos[1] + n.size[1]);
    }
    return [x0 - PAD, y0 - PAD, x1 + PAD, y1 + PAD];
  }

  function draw() {
    const { width, height } = element;
    const [x0, y0, x1, y1] = bounds();
    const scale = Math.min(width / (x1 - x0), height / (y1 - y0));
    frame = { x0, y0, scale };
    const tx = (x) => (x - x0) * scale, ty = (y) => (y - y0) * scale;
    ctx.clearRect(0, 0, width, height);
    for (const g of canvas.graph._groups) {
      const [gx, gy, gw, gh] = g._bounding ?? g.bounding;
      ctx.fillStyle = "rgba(120,120,160,0.25)";
      ctx.fillRect(tx(gx), ty(gy), gw * scale, gh * scale);
    }
    for (const n of canvas.graph._nodes) {
      ctx.fillStyle = n.lg?.errors?.length || n.missing ? "#e5484d" : n.lg?.executing ? "#3fbf6a" : n.color ?? "#7a7f8a";
      ctx.fillRect(tx(n.pos[0]), ty(n.pos[1] - 20), Math.max(2, n.size[0] * scale), Math.max(2, (n.size[1] + 20) * scale));
    }
    const va = canvas.visible_area;
    ctx.strokeStyle = "#4f8cff";
    ctx.lineWidth = 1.5;
    ctx.strokeRect(tx(va[0]), ty(va[1]), va[2] * scale, va[3] * scale);
  }

  function centreOn(e) {
    if (!frame) return;
    const r = element.getBoundingClientRect();
    const gx = frame.x0 + (e.clientX - r.left) * (element.width / r.width) / frame.scale;
    const gy = frame.y0 + (e.clientY - r.top) * (element.height / r.height) / frame.scale;
    const ds = canvas.ds;
    const el = canvas.canvas;
    ds.offset = [el.clientWidth / (2 * ds.scale) - gx, el.clientHeight / (2 * ds.scale) - gy];
    canvas.setDirty(true, true);
  }

  element.addEventListener("pointerdown", (e) => {
    element.setPointerCapture(e.pointerId);
    centreOn(e);
  });
  element.addEventListener("pointermove", (e) => { if (e.buttons) centreOn(e); });
  setInterval(draw, 200);
  return { draw };
}
