"""The workspace as a ComfyUI user expects it, driven with the mouse and keys: workflows saved on the server (save,
rename, reopen after a reload, delete), the tab strip, the templates browser (the SD3 ones run from there), results
that stay visible, the queue panel, the model library and the settings."""
from __future__ import annotations

import json
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from patience import patience

from canvas_helpers import (click_node, click_widget_arrow, drag_node, empty_spot, mouse_drag, new_tab, node_ids,
                            open_template, state, title_bar, wait_for_image_on)

pytestmark = pytest.mark.browser
WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"


def get_json(server: str, path: str):
    with urllib.request.urlopen(server.rstrip("/") + path) as r:
        return json.loads(r.read())


def saved_names(server: str) -> list[str]:
    files = get_json(server, "/userdata?dir=workflows")
    return sorted(f.removesuffix(".json") for f in files)


def reload(page):
    page.reload()
    page.wait_for_function("window.app && window.app.ready")


def tab_in_view(page) -> bool:
    return page.locator(".tab.active").evaluate("""(el) => { const s = el.parentElement.getBoundingClientRect();
      const r = el.getBoundingClientRect(); return r.left >= s.left - 1 && r.right <= s.right + 1; }""")


def active_tab(page) -> str:
    return page.locator(".tab.active .name").inner_text()


def test_save_rename_and_reopen_a_server_workflow_after_a_reload(page, server):
    """#20 item 3: Save asks for a name the first time, tabs rename by double-click, the Workflows sidebar opens,
    renames and deletes, an open workflow switches to its tab, and the tab strip scrolls to the active tab."""
    open_template(page, "image_basic")
    source = node_ids(page, "EmptyImage")[0]
    click_widget_arrow(page, source, "width")
    page.locator(".tab.active .dirty", has_text="●").wait_for()
    page.keyboard.press("Control+s")
    name = page.get_by_role("dialog").locator("input")
    assert name.input_value() == "image_basic"
    name.fill("Blue to orange")
    page.keyboard.press("Enter")
    page.wait_for_function("document.querySelector('.tab.active .name').textContent === 'Blue to orange'")
    assert page.locator(".tab.active .dirty").inner_text() == ""
    saved = get_json(server, "/userdata/" + urllib.parse.quote("workflows/Blue to orange.json", safe=""))
    assert saved == state(page)

    page.locator(".tab.active .name").dblclick()  # rename the tab: the saved file follows
    page.locator(".tab.active input.rename").fill("Orange")
    page.keyboard.press("Enter")
    page.wait_for_function("document.querySelector('.tab.active .name').textContent === 'Orange'")
    assert "Orange" in saved_names(server) and "Blue to orange" not in saved_names(server)
    click_widget_arrow(page, source, "width")  # a second save goes to the same file, without asking
    edited = state(page)
    page.keyboard.press("Control+s")
    page.wait_for_function("document.querySelector('.tab.active .dirty').textContent === ''")
    assert page.get_by_role("dialog").count() == 0
    assert get_json(server, "/userdata/workflows%2FOrange.json") == edited

    reload(page)
    page.locator(".tab.active .close").click()  # closed after a reload, it comes back from the server
    assert "Orange" not in page.locator(".tab .name").all_inner_texts()
    page.click('#library .side-tabs button[data-panel="saved-panel"]')
    page.locator('#saved-list li[data-path="workflows/Orange.json"] .label').click()
    page.wait_for_function("document.querySelector('.tab.active .name').textContent === 'Orange'")
    assert state(page) == edited and page.locator(".tab.active .dirty").inner_text() == ""
    page.shot("reopened-from-sidebar")
    tabs = page.locator(".tab").count()
    new_tab(page)
    page.locator('#saved-list li[data-path="workflows/Orange.json"] .label').click()  # open already: its tab
    page.wait_for_function("document.querySelector('.tab.active .name').textContent === 'Orange'")
    assert page.locator(".tab").count() == tabs + 1
    for _ in range(10):  # many tabs: the strip scrolls, and switching to a tab out of view brings it into view
        page.click("#new-tab")
    assert page.locator("#tabs").evaluate("(el) => el.scrollWidth > el.clientWidth")
    assert tab_in_view(page)
    page.locator('#saved-list li[data-path="workflows/Orange.json"] .label').click()
    page.wait_for_function("document.querySelector('.tab.active .name').textContent === 'Orange'")
    assert tab_in_view(page)
    page.shot("tab-strip")

    row = page.locator('#saved-list li[data-path="workflows/Orange.json"]')
    row.locator("button[title=Rename]").click()
    page.locator("#saved-list input.rename").fill("Sunset")
    page.keyboard.press("Enter")
    page.locator('#saved-list li[data-path="workflows/Sunset.json"]').wait_for()
    assert active_tab(page) == "Sunset", "the open tab follows a rename in the sidebar"
    page.locator('#saved-list li[data-path="workflows/Sunset.json"] button[title=Delete]').click()
    page.get_by_role("dialog").get_by_role("button", name="Delete").click()
    page.wait_for_function("!document.querySelector('#saved-list li[data-path=\"workflows/Sunset.json\"]')")
    assert "Sunset" not in saved_names(server)
    assert page.locator(".tab.active .dirty").inner_text() == "●", "its tab stays open, as unsaved"

    with page.expect_download() as download:  # Export still downloads the JSON
        page.click("#export-button")
    assert json.loads(open(download.value.path()).read()) == state(page)

    page.shot("exported")


def test_templates_browser_groups_shipped_workflows_by_family_with_thumbnails(page):
    """#20 item 4."""
    page.click("#templates-button")
    dialog = page.locator("#templates")
    dialog.locator(".template-card img").first.wait_for()
    families = dialog.locator(".template-family").evaluate_all("(s) => s.map((x) => x.dataset.family)")
    assert families == ["Basics", "SD15", "SD2", "SD3", "SDXL"]
    sdxl = dialog.locator('.template-family[data-family="SDXL"] .template-card')
    assert sorted(sdxl.evaluate_all("(c) => c.map((x) => x.dataset.name)")) == sorted(p.stem for p in WORKFLOWS.glob("sdxl_*.json"))
    page.wait_for_function("[...document.querySelectorAll('#templates img')].every((i) => i.complete && i.naturalWidth === 400)")
    page.shot("templates")
    dialog.locator('.template-card[data-name="sdxl_base_refiner"]').click()
    page.wait_for_function("document.querySelector('.tab.active .name').textContent === 'sdxl_base_refiner'")
    assert page.locator("#templates").count() == 0
    assert len(node_ids(page, "KSamplerAdvanced")) == 2


def test_sd3_templates_run_from_the_canvas(page):
    """Both SD3 workflows open from the templates browser with every node known (TripleCLIPLoader offers the demo
    text encoders serve writes) and Queue puts their images on their Save Image nodes."""
    for name in ("sd3_txt2img", "sd3_img2img"):
        open_template(page, name)
        assert page.evaluate("app.graph._nodes.filter((n) => !n.constructor.nodeData && n.type !== 'Note')"
                             ".map((n) => n.type)") == []
        saves = page.evaluate("app.graph._nodes.filter((n) => n.type === 'SaveImage').map((n) => n.id)")
        assert len(saves) == (1 if name == "sd3_txt2img" else 2)
        page.click("#queue-button")
        for node_id in saves:
            wait_for_image_on(page, node_id, seconds=300)
        page.shot(name)


def test_results_stay_visible_and_each_tab_keeps_its_view(page, server):
    """#20 item 6: an output node grows to fit its image and shows it again after a reload; each tab keeps its zoom
    and pan; the minimap can be hidden. (That the first visit shows the whole default workflow: test_browser_canvas.)"""
    first_view = page.evaluate("[app.canvas.ds.scale, ...app.canvas.ds.offset]")

    open_template(page, "image_basic")
    save = node_ids(page, "SaveImage")[0]
    height = page.evaluate("(id) => app.graph.getNodeById(id).size[1]", save)
    page.click("#queue-button")
    wait_for_image_on(page, save)
    page.wait_for_function("([id, h]) => app.graph.getNodeById(id).size[1] > h", arg=[save, height])
    fits = page.evaluate("""(id) => { const n = app.graph.getNodeById(id), img = n.lg.images.at(-1);
      return n.size[1] >= (n.size[0] - 8) * img.naturalHeight / img.naturalWidth; }""", save)
    assert fits, "the node grew to show its 768×576 image across its width"
    assert page.locator(".tab.active .dirty").inner_text() == "", "a result arriving is no edit"
    page.shot("output-grown")

    page.mouse.move(*empty_spot(page))
    page.mouse.wheel(0, 360)  # zoom out, then pan
    start = empty_spot(page, 0.5, 0.15)
    mouse_drag(page, start, (start[0] + 90, start[1] + 40))
    view = page.evaluate("[app.canvas.ds.scale, ...app.canvas.ds.offset]")
    page.locator(".tab", has_text="sdxl_base").click()
    assert page.evaluate("[app.canvas.ds.scale, ...app.canvas.ds.offset]") == pytest.approx(first_view)
    page.locator(".tab", has_text="image_basic").click()
    assert page.evaluate("[app.canvas.ds.scale, ...app.canvas.ds.offset]") == pytest.approx(view)

    reload(page)
    assert active_tab(page) == "image_basic"
    assert page.evaluate("[app.canvas.ds.scale, ...app.canvas.ds.offset]") == pytest.approx(view)
    wait_for_image_on(page, save, seconds=10)  # the output is shown again
    page.shot("after-reload")

    page.click("#minimap-toggle")
    assert page.locator("#minimap").is_hidden()
    assert get_json(server, "/settings").get("Comfy.Minimap.Visible") is False
    reload(page)
    assert page.locator("#minimap").is_hidden()
    page.click("#minimap-toggle")
    assert page.locator("#minimap").is_visible()


def test_queue_panel_names_times_cancels_batches_and_queues_to_front(page):
    """#20 item 7."""
    # the first visit's sdxl_base, made long (and new to the cache) so that it is still running when cancelled
    sampler = node_ids(page, "SDXLSampler")[0]
    page.evaluate("(id) => { app.graph.getNodeById(id).widgets.find((w) => w.name === 'steps').value = 5000; }", sampler)
    page.click("#queue-button")
    running = page.locator("#queue-running li")
    running.first.wait_for(timeout=patience(60) * 1000)
    assert running.first.inner_text().startswith("sdxl_base · running")
    page.wait_for_function("(id) => app.graph.getNodeById(id).lg.progress > 0", arg=sampler, timeout=patience(60) * 1000)
    running.first.get_by_role("button", name="Cancel").click()
    cancelled = page.locator("#queue-history li.cancelled")
    cancelled.first.wait_for(timeout=patience(60) * 1000)
    assert "sdxl_base · cancelled" in cancelled.first.inner_text()
    assert page.locator("#queue-history li.error").count() == 0, "a cancelled prompt is no error"

    open_template(page, "image_basic")
    page.click("#pause-queue")
    page.wait_for_function("document.querySelector('#pause-queue').textContent === 'Resume'")
    try:
        page.fill("#batch-count", "2")
        page.click("#queue-button")
        page.wait_for_function("document.querySelectorAll('#queue-pending li').length === 2")
        page.fill("#batch-count", "1")
        page.click("#queue-front-button")
        page.wait_for_function("document.querySelectorAll('#queue-pending li').length === 3")
        ids = page.evaluate("[...app.promptTabs.keys()]")[-3:]
        pending = page.locator("#queue-pending li").evaluate_all("(l) => l.map((x) => [x.dataset.promptId, x.textContent])")
        assert pending[0][0] == ids[2], "queued to the front, it runs first"
        assert all(text.startswith("image_basic · pending") for _, text in pending)
        page.shot("batch-and-front")
    finally:
        page.click("#pause-queue")
    page.wait_for_function("(ids) => ids.every((id) => document.querySelector(`#queue-history li[data-prompt-id='${id}']`))",
                           arg=ids, timeout=patience(60) * 1000)
    for prompt_id in ids:
        item = page.locator(f"#queue-history li[data-prompt-id='{prompt_id}']")
        text = item.locator(".label").inner_text()
        assert text.startswith("image_basic · success · ") and text.endswith(" s"), text
        item.locator("img").wait_for()
        assert "/view?" in item.locator("img").get_attribute("src")
    page.shot("history")


def test_model_library_lists_models_and_drops_a_loader(page):
    """#20 item 8."""
    new_tab(page)
    page.click('#library .side-tabs button[data-panel="models-panel"]')
    refiner = page.locator('#model-tree [data-model="checkpoints/demo_sdxl_refiner.safetensors"]')
    refiner.wait_for()
    assert page.locator('#model-tree details[data-folder="checkpoints"] .lib-node').count() >= 2
    refiner.drag_to(page.locator("#graph-canvas"), target_position={"x": 200, "y": 200})
    page.wait_for_function("app.graph._nodes.length === 1")
    node = state(page)["nodes"][0]
    assert node["type"] == "CheckpointLoaderSimple" and node["widgets_values"] == ["demo_sdxl_refiner.safetensors"]
    page.locator('#model-tree [data-model="checkpoints/demo_sdxl_base.safetensors"]').click()
    page.wait_for_function("app.graph._nodes.length === 2")
    assert state(page)["nodes"][1]["widgets_values"] == ["demo_sdxl_base.safetensors"]
    page.shot("model-library")


def test_settings_are_kept_by_the_server_and_the_help_lists_the_shortcuts(page, server):
    """#20 item 9: link style, snap to grid, theme, in ComfyUI's settings API; `?` shows the shortcuts."""
    defaults = get_json(server, "/settings")
    try:
        page.click("#settings-button")
        dialog = page.locator("#settings")
        dialog.locator('[data-id="Comfy.LinkRenderMode"] select').select_option(label="Straight")
        dialog.locator('[data-id="pysssss.SnapToGrid"] input').check()
        dialog.locator('[data-id="Comfy.ColorPalette"] select').select_option(label="Light")
        page.shot("settings")
        dialog.get_by_role("button", name="Close").click()
        assert page.evaluate("[app.canvas.links_render_mode, document.body.classList.contains('light')]") == [0, True]
        stored = get_json(server, "/settings")
        assert (stored["Comfy.LinkRenderMode"], stored["pysssss.SnapToGrid"], stored["Comfy.ColorPalette"]) == (0, True, "light")

        new_tab(page)
        node = drag_node(page, "EmptyImage", 123, 157)
        start = title_bar(page, node)
        mouse_drag(page, start, (start[0] + 37, start[1] + 23))
        x, y = page.evaluate("(id) => app.graph.getNodeById(id).pos", node)
        assert x % 10 == 0 and y % 10 == 0, (x, y)
        page.shot("light-straight-snapped")

        reload(page)
        assert page.evaluate("[app.canvas.links_render_mode, document.body.classList.contains('light')]") == [0, True]

        click_node(page, node)
        page.keyboard.press("?")
        help_ = page.locator("#shortcut-help")
        help_.wait_for()
        text = help_.inner_text()
        for keys in ("Ctrl+B", "Ctrl+M", "Alt+C", "Ctrl+Enter", "Ctrl+Shift+Enter", "Ctrl+S", "?"):
            assert keys in text, keys
        page.shot("shortcut-help")
        page.keyboard.press("Escape")
        help_.wait_for(state="detached")
    finally:
        body = json.dumps({**defaults, "Comfy.LinkRenderMode": 2, "pysssss.SnapToGrid": False,
                           "Comfy.ColorPalette": "dark"}).encode()
        urllib.request.urlopen(urllib.request.Request(server.rstrip("/") + "/settings", data=body, method="POST"))
