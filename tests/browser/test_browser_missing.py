"""A workflow that needs node types we do not have opens, shows those nodes as missing (drawn red, labelled,
named in a toast), saves them unchanged and, when queued, shows the server's missing_node_type error on them."""
import copy
import json
from pathlib import Path

import pytest
from PIL import Image

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"
FANCY = {
    "id": 6, "type": "FancyUpscaler9000", "pos": [660, 460], "size": [300, 150], "flags": {}, "order": 5, "mode": 0,
    "inputs": [{"name": "image", "type": "IMAGE", "link": 3},
               {"name": "scale", "type": "FLOAT", "widget": {"name": "scale"}, "link": None}],
    "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [4], "slot_index": 0}],
    "properties": {"Node name for S&R": "FancyUpscaler9000", "cnr_id": "fancy-pack", "ver": "9.0.0"},
    "widgets_values": [2.5, "lanczos", True, {"tile": 512}],
}


def workflow_with_missing_node() -> dict:
    """workflows/image_basic.json with FancyUpscaler9000 wired between ImageInvert (3) and SaveImage (4)."""
    wf = json.loads((WORKFLOWS / "image_basic.json").read_text())
    invert, save = (next(n for n in wf["nodes"] if n["id"] == i) for i in (3, 4))
    invert["outputs"][0]["links"] = [3]
    save["inputs"][0]["link"] = 4
    wf["nodes"].append(copy.deepcopy(FANCY))
    wf["links"] = [[1, 1, 0, 2, 0, "IMAGE"], [2, 2, 0, 3, 0, "IMAGE"], [3, 3, 0, 6, 0, "IMAGE"],
                   [4, 6, 0, 4, 0, "IMAGE"]]
    wf["last_node_id"], wf["last_link_id"] = 6, 4
    return wf


def saved_node(data: dict, node_id: int) -> dict:
    node = next(n for n in data["nodes"] if n["id"] == node_id)
    return {k: v for k, v in node.items() if k != "order"}  # `order` is recomputed from the links on every save


def screen_box(page, node_id: int) -> list[float]:
    """The node's body (title bar excluded) in page pixels, cut to the visible canvas: [x, y, w, h]."""
    return page.evaluate("""(id) => {
      const n = app.graph.getNodeById(id), ds = app.canvas.ds, r = app.canvas.canvas.getBoundingClientRect();
      const [x, y] = ds.convertOffsetToCanvas(n.pos).map((v, i) => v + [r.left, r.top][i]);
      const x0 = Math.max(x, r.left), y0 = Math.max(y, r.top);
      const x1 = Math.min(x + n.size[0] * ds.scale, r.right), y1 = Math.min(y + n.size[1] * ds.scale, r.bottom);
      return [x0, y0, x1 - x0, y1 - y0];
    }""", node_id)


def redness(shot: Path, box: list[float]) -> float:
    """Share of pixels in the lower half of the box that are clearly red."""
    x, y, w, h = box
    img = Image.open(shot).convert("RGB").crop((int(x + 6), int(y + h / 2), int(x + w - 6), int(y + h - 6)))
    px = list(img.get_flattened_data())
    return sum(r > g + 25 and r > b + 20 for r, g, b in px) / len(px)


@pytest.mark.browser
def test_unknown_node_type_is_shown_missing_and_saved_unchanged(page, tmp_path):
    wf = workflow_with_missing_node()
    path = tmp_path / "fancy.json"
    path.write_text(json.dumps(wf))
    with page.expect_file_chooser() as chooser:
        page.click("#open-button")
    chooser.value.set_files(str(path))
    page.wait_for_function("app.workspace.tab.name === 'fancy'")

    # flagged missing, named in a toast; opening is no edit
    page.locator(".toast.warn", has_text="FancyUpscaler9000").wait_for()
    assert page.evaluate("app.graph._nodes.filter((n) => n.missing).map((n) => [n.id, n.type])") == \
        [[6, "FancyUpscaler9000"]]
    assert page.evaluate("app.workspace.missing") == {"FancyUpscaler9000": [6]}
    assert page.locator(".tab.active .dirty").inner_text() == "", "opening a file is no edit"

    # drawn red (the body, which litegraph draws grey for a known node), and the known nodes are not
    page.evaluate("app.canvas.ds.scale = 1; app.canvas.centerOnNode(app.graph.getNodeById(6))")
    shot = page.shot("missing-node-red")
    assert redness(shot, screen_box(page, 6)) > 0.8
    assert redness(shot, screen_box(page, 4)) < 0.05  # SaveImage, beside it

    # saved unchanged: through app.state() and through Ctrl+S (the downloaded file)
    assert saved_node(json.loads(page.evaluate("app.state()")), 6) == saved_node(wf, 6)
    with page.expect_download() as download:
        page.click("#export-button")
    saved = json.loads(Path(download.value.path()).read_text())
    assert saved_node(saved, 6) == saved_node(wf, 6)
    assert "color" not in saved_node(saved, 6) and "bgcolor" not in saved_node(saved, 6)
    assert [3, 3, 0, 6, 0, "IMAGE"] in saved["links"] and [4, 6, 0, 4, 0, "IMAGE"] in saved["links"]
    assert saved_node(saved, 4)["inputs"][0]["link"] == 4 and saved_node(saved, 3)["outputs"][0]["links"] == [3]

    # it is still a node on the canvas: a move is saved (and only the move), undo brings it back missing
    x, y, w, _ = screen_box(page, 6)
    page.mouse.move(x + w / 2, y - 15)
    page.mouse.down()
    page.mouse.move(x + w / 2 + 60, y + 25, steps=5)
    page.mouse.up()
    page.wait_for_function("app.graph.getNodeById(6).pos[0] !== 660")
    moved = saved_node(json.loads(page.evaluate("app.state()")), 6)
    assert moved["pos"] == [720, 500] and {**moved, "pos": FANCY["pos"]} == saved_node(wf, 6)
    page.wait_for_function("app.workspace.history.undoStack.length === 1")
    page.click("#undo-button")
    assert page.evaluate("[app.graph.getNodeById(6).missing, app.graph.getNodeById(6).pos]") == [True, [660, 460]]
    page.evaluate("app.graph.getNodeById(6).title = 'My upscaler'")
    assert saved_node(json.loads(page.evaluate("app.state()")), 6) == {**saved_node(wf, 6), "title": "My upscaler"}

    # queueing shows the server's missing_node_type error on the node
    page.allow_console_error(r"status of 400 .*/prompt$")
    page.click("#queue-button")
    page.locator(".toast.error", has_text="FancyUpscaler9000").wait_for()
    errors = page.evaluate("app.graph.getNodeById(6).lg.errors")
    assert [e["type"] for e in errors] == ["missing_node_type"] and "FancyUpscaler9000" in errors[0]["message"]
    assert page.evaluate("app.graph._nodes.filter((n) => n.lg?.errors?.length).map((n) => n.id)") == [6]
    page.shot("queued-missing-node-error")

    # a reload restores the tab from local storage: still missing, named again, still saved unchanged
    page.wait_for_function("localStorage.getItem('latentgraph.tabs').includes('My upscaler')")
    page.reload()
    page.wait_for_function("window.app && window.app.ready")
    page.locator(".toast.warn", has_text="FancyUpscaler9000").wait_for()
    assert page.evaluate("app.graph.getNodeById(6).missing") is True
    assert saved_node(json.loads(page.evaluate("app.state()")), 6) == {**saved_node(wf, 6), "title": "My upscaler"}
