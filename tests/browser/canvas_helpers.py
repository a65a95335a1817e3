"""What the browser tests do as a user: find where things are drawn on the canvas (in page pixels) and act there
with the mouse and keys. Reading positions out of the page is how a test "sees"; every action is a real event."""
from __future__ import annotations

import base64
import json

from patience import patience

TO_SCREEN_JS = """([gx, gy]) => {
  const [x, y] = app.canvas.ds.convertOffsetToCanvas([gx, gy]);
  const r = app.canvas.canvas.getBoundingClientRect();
  return [r.left + x, r.top + y];
}"""

SLOT_JS = """([id, kind, name]) => {
  const n = app.graph.getNodeById(id);
  const slots = kind === "out" ? n.outputs : n.inputs;
  const i = typeof name === "number" ? name : slots.findIndex((s) => s.name === name);
  if (i < 0) throw new Error(`node ${id} has no ${kind} slot ${name}`);
  const p = kind === "out" ? n.getOutputPos(i) : n.getInputPos(i);
  const [x, y] = app.canvas.ds.convertOffsetToCanvas(p);
  const r = app.canvas.canvas.getBoundingClientRect();
  return [r.left + x, r.top + y];
}"""

EMPTY_SPOT_JS = """([fx, fy]) => {
  // a point of the visible canvas with no node (title bars included) within 40 px, nearest to (fx, fy) of its size
  const r = app.canvas.canvas.getBoundingClientRect(), ds = app.canvas.ds;
  const clear = (x, y) => !app.graph._nodes.some((n) => {
    const [nx, ny] = ds.convertOffsetToCanvas([n.pos[0], n.pos[1] - 30]);
    const w = n.size[0] * ds.scale, h = (n.size[1] + 30) * ds.scale;
    return x > nx - 40 && x < nx + w + 40 && y > ny - 40 && y < ny + h + 40;
  });
  const spots = [];
  for (let y = 30; y < r.height - 160; y += 20) for (let x = 30; x < r.width - 230; x += 20) if (clear(x, y)) spots.push([x, y]);
  if (!spots.length) throw new Error("no empty spot on the canvas");
  const [tx, ty] = [fx * r.width, fy * r.height];
  spots.sort((a, b) => Math.hypot(a[0] - tx, a[1] - ty) - Math.hypot(b[0] - tx, b[1] - ty));
  return [r.left + spots[0][0], r.top + spots[0][1]];
}"""


def state(page) -> dict:
    return json.loads(page.evaluate("app.state()"))


def screen(page, gx: float, gy: float) -> list[float]:
    return page.evaluate(TO_SCREEN_JS, [gx, gy])


def slot(page, node_id: int, kind: str, name) -> list[float]:
    return page.evaluate(SLOT_JS, [node_id, kind, name])


def empty_spot(page, fx: float = 0.5, fy: float = 0.5) -> list[float]:
    """An empty place on the canvas, near the fraction (fx, fy) of its width and height."""
    return page.evaluate(EMPTY_SPOT_JS, [fx, fy])


def title_bar(page, node_id: int) -> list[float]:
    """The middle of a node's title bar, where a click selects it and a drag moves it."""
    x, y = page.evaluate("(id) => { const n = app.graph.getNodeById(id); return [n.pos[0] + n.size[0] / 2, n.pos[1] - 15]; }",
                         node_id)
    return screen(page, x, y)


def click_node(page, node_id: int, **kw):
    page.mouse.click(*title_bar(page, node_id), **kw)  # selects it (Shift held: adds it to the selection)


def mouse_drag(page, start, end, steps: int = 12):
    page.mouse.move(*start)
    page.mouse.down()
    page.mouse.move(*end, steps=steps)
    page.mouse.up()
    page.wait_for_timeout(50)


def node_ids(page, type_name: str) -> list[int]:
    return page.evaluate("(t) => app.graph._nodes.filter((n) => n.type === t).map((n) => n.id)", type_name)


def widget_value(page, node_id: int, widget: str):
    return page.evaluate("([id, name]) => app.graph.getNodeById(id).widgets.find((w) => w.name === name).value",
                         [node_id, widget])


DROP_FILE_JS = """async ([b64, name, type]) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const dt = new DataTransfer();
  dt.items.add(new File([bytes], name, { type }));
  const wrap = document.getElementById("canvas-wrap");
  for (const kind of ["dragenter", "dragover", "drop"]) {
    wrap.dispatchEvent(new DragEvent(kind, { dataTransfer: dt, bubbles: true, cancelable: true,
                                             clientX: 500, clientY: 300 }));
  }
}"""


def drop_file(page, data: bytes, name: str, type_: str = "image/png"):
    """Drop a file with these bytes on the canvas, as from the desktop."""
    page.evaluate(DROP_FILE_JS, [base64.b64encode(data).decode(), name, type_])


def open_file(page, path):
    with page.expect_file_chooser() as chooser:
        page.click("#open-button")
    chooser.value.set_files(str(path))


def new_tab(page):
    page.click("#new-tab")
    page.wait_for_function("app.graph._nodes.length === 0")


def drag_node(page, type_name: str, x: int, y: int) -> int:
    """Drag a node type from the library onto the canvas at (x, y) canvas pixels; returns its id."""
    before = page.evaluate("app.graph._nodes.length")
    page.locator(f'.lib-node[data-type="{type_name}"]').drag_to(
        page.locator("#graph-canvas"), target_position={"x": x, "y": y})
    page.wait_for_function(f"app.graph._nodes.length === {before + 1}")
    node = page.evaluate("(() => { const n = app.graph._nodes.at(-1); return [n.id, n.type]; })()")
    assert node[1] == type_name
    return node[0]


def open_template(page, name: str):
    """Open a shipped workflow from the Templates browser in a new tab."""
    page.click("#templates-button")
    page.locator(f'.template-card[data-name="{name}"]').click()
    page.wait_for_function("(name) => document.querySelector('.tab.active .name').textContent === name", arg=name)


def wait_for_image_on(page, node_id: int, seconds: float = 60):
    page.wait_for_function(
        """(id) => { const img = app.graph.getNodeById(id).lg?.images?.at(-1);
                     return img && img.complete && img.naturalWidth > 0; }""", arg=node_id,
        timeout=patience(seconds) * 1000)


def click_widget_arrow(page, node_id: int, widget: str, side: str = "right"):
    """Click the increment (right) or decrement (left) arrow of a number widget."""
    point = page.evaluate("""([id, name, side]) => {
      const n = app.graph.getNodeById(id);
      const w = n.widgets.find((x) => x.name === name);
      const x = side === "right" ? n.pos[0] + n.size[0] - 22 : n.pos[0] + 22;
      return [x, n.pos[1] + w.y + 10];
    }""", [node_id, widget, side])
    page.mouse.click(*screen(page, *point))


def inside_canvas(page, node_id: int) -> bool:
    """Whether the whole node, title bar included, is drawn inside the visible canvas."""
    return page.evaluate("""(id) => { const n = app.graph.getNodeById(id), ds = app.canvas.ds;
      const [x0, y0] = ds.convertOffsetToCanvas([n.pos[0], n.pos[1] - 30]);
      const [x1, y1] = ds.convertOffsetToCanvas([n.pos[0] + n.size[0], n.pos[1] + n.size[1]]);
      const c = app.canvas.canvas; return x0 >= 0 && y0 >= 0 && x1 <= c.clientWidth && y1 <= c.clientHeight; }""", node_id)
