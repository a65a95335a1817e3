"""Editing on the canvas as a user does it, with the mouse and keys: prompts typed in place (never lost), the node
search (double-click, or a link dropped on empty canvas), bypass / mute / collapse, the node menu without
"Convert to Subgraph", and older ComfyUI files showing each node's sockets once."""
from __future__ import annotations

from pathlib import Path

import pytest

from canvas_helpers import (click_node, drag_node, empty_spot, mouse_drag, new_tab, node_ids, open_file, open_template,
                            screen, slot, state, title_bar, wait_for_image_on, widget_value)

pytestmark = pytest.mark.browser
WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"

TEXT_BOX_JS = """(id) => {
  // where the node's prompt box is drawn, in page pixels: [left, top, width, height]
  const n = app.graph.getNodeById(id), w = n.widgets.find((x) => x.name === "text");
  const ds = app.canvas.ds, r = app.canvas.canvas.getBoundingClientRect();
  const [x, y] = ds.convertOffsetToCanvas([n.pos[0] + 15, n.pos[1] + w.y]);
  return [r.left + x, r.top + y, (n.size[0] - 30) * ds.scale, (w.computedHeight - 6) * ds.scale];
}"""


def textarea(page, node_id: int):
    return page.locator(f'textarea.node-text[data-node="{node_id}"]')


def assert_box_follows_node(page, node_id: int):
    x, y, w, h = page.evaluate(TEXT_BOX_JS, node_id)
    box = textarea(page, node_id).bounding_box()
    assert box is not None, "the prompt's text box is not shown"
    assert abs(box["x"] - x) < 2 and abs(box["y"] - y) < 2, (box, x, y)
    assert abs(box["width"] - w) < 2 and abs(box["height"] - h) < 2, (box, w, h)


def test_prompt_is_typed_in_place_kept_on_click_away_and_queued_as_typed(page):
    """#16 item 14: no "Value" popup; every keystroke is in the workflow; the box follows zoom and pan."""
    prompt = next(i for i in node_ids(page, "SDXLClipLTextEncode") if "positive" in
                  page.evaluate("(id) => app.graph.getNodeById(id).title", i))
    x, y, w, h = page.evaluate(TEXT_BOX_JS, prompt)
    page.mouse.click(x + w / 2, y + h / 2)  # where the prompt is drawn on the node
    page.keyboard.press("Control+a")
    page.keyboard.type("a red fox in fresh snow")
    assert page.locator(".graphdialog").count() == 0, "typing opened litegraph's Value popup"
    assert widget_value(page, prompt, "text") == "a red fox in fresh snow", "the text is in the workflow at once"
    page.mouse.click(*empty_spot(page))  # clicking elsewhere keeps it
    assert widget_value(page, prompt, "text") == "a red fox in fresh snow"
    page.locator(".tab.active .dirty", has_text="●").wait_for()
    page.shot("typed-in-place")

    # Ctrl+Enter while still typing queues the text as it stands, and leaves nothing open
    page.mouse.click(x + w / 2, y + h / 2)
    page.keyboard.press("Control+End")
    page.keyboard.type(", at dawn")
    with page.expect_request(lambda r: r.url.endswith("/prompt") and r.method == "POST") as sent:
        page.keyboard.press("Control+Enter")
    nodes = {n["id"]: n for n in sent.value.post_data_json["prompt"]["nodes"]}
    assert nodes[prompt]["widgets_values"][0] == "a red fox in fresh snow, at dawn"
    assert page.locator(".graphdialog").count() == 0
    assert page.evaluate("document.activeElement.tagName") == "TEXTAREA", "queueing does not take the text away"
    page.evaluate("app.api.interrupt()")  # only what was sent matters here

    # the box follows the node when the view is zoomed (wheel) and panned (dragging empty canvas)
    assert_box_follows_node(page, prompt)
    scale = page.evaluate("app.canvas.ds.scale")
    page.mouse.move(*empty_spot(page))
    page.mouse.wheel(0, -240)
    page.wait_for_function("(s) => Math.abs(app.canvas.ds.scale - s) > 0.05", arg=scale)
    page.wait_for_timeout(100)
    assert_box_follows_node(page, prompt)
    start = empty_spot(page, 0.5, 0.1)
    mouse_drag(page, start, (start[0] + 80, start[1] + 60))
    page.wait_for_timeout(100)
    assert_box_follows_node(page, prompt)
    page.shot("zoomed-and-panned")

    # a reload restores the typed text into the box
    page.reload()
    page.wait_for_function("window.app && window.app.ready")
    assert widget_value(page, prompt, "text") == "a red fox in fresh snow, at dawn"
    assert textarea(page, prompt).input_value() == "a red fox in fresh snow, at dawn"


def schema_inputs(page, type_name: str) -> list[str]:
    return page.evaluate("""(t) => { const info = app.graph._nodes.find((n) => n.type === t).constructor.nodeData;
      return ["required", "optional"].flatMap((g) => info.input_order?.[g] ?? Object.keys(info.input?.[g] ?? {})); }""",
                         type_name)


def assert_sockets_match_schemas_and_links(page):
    data = state(page)
    for node in data["nodes"]:
        if node["type"] in ("Note", "MarkdownNote", "PrimitiveNode", "Reroute"):
            continue
        names = [i["name"] for i in node["inputs"]]
        assert names == schema_inputs(page, node["type"]), (node["type"], names)
    inputs = {(n["id"], i): inp for n in data["nodes"] for i, inp in enumerate(n.get("inputs", []))}
    for link_id, origin, origin_slot, target, target_slot, _ in data["links"]:
        assert inputs[(target, target_slot)]["link"] == link_id, f"link {link_id} points at the wrong socket"
        origin_node = next(n for n in data["nodes"] if n["id"] == origin)
        assert link_id in origin_node["outputs"][origin_slot]["links"]


def test_older_comfyui_files_show_each_socket_once(page, tmp_path):
    """#16 item 16: 0.4 files from older ComfyUI frontends list only the linked sockets."""
    open_file(page, WORKFLOWS / "sdxl_base_comfy.json")  # written the older way: only linked sockets
    page.wait_for_function("app.workspace.tab.name === 'sdxl_base_comfy'")
    assert_sockets_match_schemas_and_links(page)
    sampler = node_ids(page, "KSampler")[0]
    names = page.evaluate("(id) => app.graph.getNodeById(id).inputs.map((i) => i.name)", sampler)
    assert names.count("positive") == names.count("latent_image") == 1
    page.shot("sdxl-base-comfy-sockets")
    templates = pytest.importorskip("comfyui_workflow_templates_json")
    open_file(page, Path(templates.__file__).parent / "templates" / "image_sdxl_simple.json")
    page.wait_for_function("app.workspace.tab.name === 'image_sdxl_simple'")
    assert_sockets_match_schemas_and_links(page)
    clip = node_ids(page, "CLIPTextEncode")[0]
    assert page.evaluate("(id) => app.graph.getNodeById(id).inputs.map((i) => i.name)", clip) == ["text", "clip"]
    page.shot("image-sdxl-simple-sockets")


def menu_entries(page) -> list[str]:
    menu = page.locator(".litecontextmenu").last
    menu.wait_for()
    return [e.strip() for e in menu.locator(".litemenu-entry").all_inner_texts()]


def close_menus(page):
    page.keyboard.press("Escape")
    page.mouse.click(*empty_spot(page, 0.1, 0.9))
    page.wait_for_function("!document.querySelector('.litecontextmenu')")


def test_bypass_mute_collapse_by_keys_and_menu_and_no_convert_to_subgraph(page):
    """#20 item 2 and #16 item 15: Ctrl+B / Ctrl+M / Alt+C and the node menu; the server runs a bypassed node as a
    pass-through; "Convert to Subgraph" (which deleted the selection) is not offered."""
    open_template(page, "image_basic")
    invert, save, scale = node_ids(page, "ImageInvert")[0], node_ids(page, "SaveImage")[0], node_ids(page, "ImageScale")[0]
    click_node(page, invert)
    page.keyboard.press("Control+b")
    assert {n["id"]: n["mode"] for n in state(page)["nodes"]}[invert] == 4
    page.shot("bypassed")
    r, g, b = page.evaluate("""(id) => {  // the node's body is drawn under a purple veil
      const n = app.graph.getNodeById(id), ds = app.canvas.ds;
      const [x, y] = ds.convertOffsetToCanvas([n.pos[0] + n.size[0] / 2, n.pos[1] + n.size[1] / 2]);
      return [...app.canvas.ctx.getImageData(x, y, 1, 1).data].slice(0, 3); }""", invert)
    assert r > g + 15 and b > g + 15, (r, g, b)

    page.click("#queue-button")  # the server runs it as if ImageInvert passed its input through: blue, not orange
    wait_for_image_on(page, save)
    pixel = page.evaluate("""(id) => { const img = app.graph.getNodeById(id).lg.images.at(-1);
      const c = Object.assign(document.createElement("canvas"), { width: 4, height: 4 }).getContext("2d");
      c.drawImage(img, 0, 0, 4, 4); return [...c.getImageData(1, 1, 1, 1).data].slice(0, 3); }""", save)
    assert [abs(v - w) < 8 for v, w in zip(pixel, (0x33, 0x66, 0xCC))] == [True] * 3, pixel

    page.keyboard.press("Control+b")
    assert {n["id"]: n["mode"] for n in state(page)["nodes"]}[invert] == 0
    page.keyboard.press("Control+m")
    assert {n["id"]: n["mode"] for n in state(page)["nodes"]}[invert] == 2
    page.keyboard.press("Alt+c")
    assert {n["id"]: n["flags"] for n in state(page)["nodes"]}[invert] == {"collapsed": True}
    page.keyboard.press("Alt+c")
    page.keyboard.press("Control+m")
    assert {n["id"]: (n["mode"], n["flags"].get("collapsed", False)) for n in state(page)["nodes"]}[invert] == (0, False)

    # the node menu: bypass from there, and no Convert to Subgraph with one node or several selected
    page.keyboard.down("Shift")  # two nodes selected
    click_node(page, scale)
    page.keyboard.up("Shift")
    page.mouse.click(*title_bar(page, scale), button="right")
    entries = menu_entries(page)
    assert "Bypass (Ctrl+B)" in entries and "Mute (Ctrl+M)" in entries and "Collapse (Alt+C)" in entries
    assert not any("Subgraph" in e for e in entries), entries
    page.shot("node-menu")
    page.locator(".litecontextmenu .litemenu-entry", has_text="Bypass (Ctrl+B)").click()
    assert {n["id"]: n["mode"] for n in state(page)["nodes"] if n["id"] in (invert, scale)} == {invert: 4, scale: 4}
    close_menus(page)
    page.mouse.click(*empty_spot(page), button="right")
    assert not any("Subgraph" in e for e in menu_entries(page))
    close_menus(page)
    assert len(state(page)["nodes"]) == 5, "nothing was deleted"


def search_rows(page) -> list[dict]:
    page.locator(".node-search li").first.wait_for()
    return page.evaluate("""[...document.querySelectorAll('.node-search li[data-type]')].map((li) => ({
      type: li.dataset.type, title: li.querySelector('.title').textContent,
      category: li.querySelector('.category').textContent, io: li.querySelector('.io').textContent }))""")


def test_dropping_a_link_on_empty_canvas_searches_nodes_of_its_type_and_links_the_choice(page):
    """#20 item 1, from an output and from an input."""
    new_tab(page)
    latent = drag_node(page, "EmptyLatentImage", 120, 200)
    spot = screen(page, *page.evaluate("(id) => { const n = app.graph.getNodeById(id); return [n.pos[0] + n.size[0] + 220, n.pos[1] + 40]; }", latent))
    mouse_drag(page, slot(page, latent, "out", "LATENT"), spot)
    page.locator(".node-search[data-filter='input:LATENT']").wait_for()
    rows = search_rows(page)
    types = {r["type"] for r in rows}
    assert {"KSampler", "VAEDecode", "LatentUpscale"} <= types and not {"SaveImage", "EmptyImage"} & types, types
    page.shot("link-dropped-search")
    page.keyboard.type("vae dec")
    assert search_rows(page)[0]["type"] == "VAEDecode"
    page.keyboard.press("Enter")
    page.wait_for_function("app.graph._nodes.length === 2")
    decode = node_ids(page, "VAEDecode")[0]
    assert [link[1:5] for link in state(page)["links"]] == [[latent, 0, decode, 0]]
    placed = page.evaluate("(id) => app.graph.getNodeById(id).pos", decode)
    dropped = page.evaluate("([x, y]) => app.canvas.convertEventToCanvasOffset({ clientX: x, clientY: y })", spot)
    assert abs(placed[0] - dropped[0]) < 2 and abs(placed[1] - dropped[1]) < 2, "the node arrives where the link was dropped"

    # from an input: nodes that give that type; the chosen one feeds it
    target = empty_spot(page, 0.15, 0.8)
    mouse_drag(page, slot(page, decode, "in", "vae"), target)
    page.locator(".node-search[data-filter='output:VAE']").wait_for()
    rows = search_rows(page)
    assert {"CheckpointLoaderSimple", "VAELoader"} <= {r["type"] for r in rows}
    assert all("VAE" in r["io"].split("→")[1] for r in rows), rows
    page.keyboard.type("load checkpoint")
    page.locator(".node-search li[data-type='CheckpointLoaderSimple']").click()
    page.wait_for_function("app.graph._nodes.length === 3")
    ckpt = node_ids(page, "CheckpointLoaderSimple")[0]
    assert sorted(link[1:5] for link in state(page)["links"]) == sorted([[latent, 0, decode, 0], [ckpt, 2, decode, 1]])
    page.shot("linked-from-search")
    page.keyboard.press("Control+z")  # the node and its link are one undo step
    assert [link[1:5] for link in state(page)["links"]] == [[latent, 0, decode, 0]]
    assert len(state(page)["nodes"]) == 2


def test_double_click_search_is_fuzzy_and_shows_categories_and_types(page):
    """#20 item 5."""
    new_tab(page)
    spot = empty_spot(page, 0.4, 0.4)
    page.mouse.dblclick(*spot)
    search = page.locator(".node-search input")
    search.wait_for()
    for query, expected in (("save img", "SaveImage"), ("latent empty", "EmptyLatentImage"), ("ksamp adv", "KSamplerAdvanced"),
                            ("vae enc", "VAEEncode")):
        search.fill(query)
        assert search_rows(page)[0]["type"] == expected, (query, search_rows(page)[:3])
    search.fill("save img")
    first = search_rows(page)[0]
    assert first["category"] == "image" and first["io"] == "IMAGE → —", first
    search.fill("empty latent")
    assert search_rows(page)[0]["io"] == "— → LATENT"
    page.shot("fuzzy-search")
    page.keyboard.press("Enter")
    page.wait_for_function("app.graph._nodes.length === 1")
    node = state(page)["nodes"][0]
    dropped = page.evaluate("([x, y]) => app.canvas.convertEventToCanvasOffset({ clientX: x, clientY: y })", spot)
    assert node["type"] == "EmptyLatentImage" and abs(node["pos"][0] - dropped[0]) < 2
    page.mouse.dblclick(*empty_spot(page, 0.8, 0.8))
    search.wait_for()
    page.keyboard.press("Escape")
    page.wait_for_function("!document.querySelector('.node-search')")
    assert len(state(page)["nodes"]) == 1
