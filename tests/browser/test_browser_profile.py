"""Profiles and provenance on the canvas: a badge over each node after a run (its time; memory and why it ran on
hover), the queue panel's per-prompt breakdown, and the question an image made with other model files asks."""
from __future__ import annotations

import io
import json
import random
import re
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin
from canvas_helpers import TO_SCREEN_JS, drop_file, open_template, state, wait_for_image_on

pytestmark = pytest.mark.browser
REPO = Path(__file__).resolve().parents[2]
TIME = re.compile(r"^\d+(\.\d)? ms$|^\d+\.\d\d s$")


def test_badges_after_a_run_with_memory_on_hover_and_the_breakdown(page):
    open_template(page, "image_basic")
    ids = page.evaluate("Object.fromEntries(app.graph._nodes.map((n) => [n.type, n.id]))")
    color = random.randrange(1 << 24)  # a colour no earlier test ran: every node runs
    page.evaluate("([id, c]) => { app.graph.getNodeById(id).widgets.find((w) => w.name === 'color').value = c; }",
                  [ids["EmptyImage"], color])
    page.keyboard.press("Control+Enter")
    wait_for_image_on(page, ids["SaveImage"])
    page.wait_for_function("app.graph._nodes.filter((n) => n.lg?.profileBadge?.rect && n.lg.profile).length === 4")
    badges = page.evaluate("Object.fromEntries(app.graph._nodes.filter((n) => n.lg?.profile)"
                           ".map((n) => [n.type, n.lg.profileBadge.text]))")
    assert set(badges) == {"EmptyImage", "ImageScale", "ImageInvert", "SaveImage"}
    assert all(TIME.match(text) for text in badges.values()), badges
    page.shot("badges")

    centre = page.evaluate("""(id) => { const n = app.graph.getNodeById(id), r = n.lg.profileBadge.rect;
                                        return [n.pos[0] + r[0] + r[2] / 2, n.pos[1] + r[1] + r[3] / 2]; }""",
                           ids["ImageScale"])
    page.mouse.move(*page.evaluate(TO_SCREEN_JS, centre))
    tip = page.locator("#profile-tip")
    tip.wait_for(state="visible")
    assert re.match(rf"Upscale Image #{ids['ImageScale']}: \d.* · peak memory (\+[\d.]+ [KMG]?B resident set|"
                    r"not measured \(under 0\.1 ms\)) · ran because: \w", tip.inner_text()), tip.inner_text()
    page.shot("badge-hover")
    page.mouse.move(5, 5)
    tip.wait_for(state="hidden")

    breakdown = page.locator("#queue-history li details.profile").first
    breakdown.locator("summary").click()
    assert re.match(r"4 ran in [\d.]+ m?s, 0 cached", breakdown.locator("summary").inner_text())
    rows = breakdown.locator("tr")
    assert rows.count() == 4 and "#4 SaveImage" in breakdown.inner_text()
    page.shot("queue-breakdown")


def png_with_record(sha256: str) -> bytes:
    """An image carrying the image_basic workflow and a record saying node 1 loaded a checkpoint by that hash."""
    record = {"version": "0.1.0", "nodes": {}, "models": [
        {"node": "1", "class_type": "CheckpointLoaderSimple", "input": "ckpt_name",
         "name": "demo_sdxl_base.safetensors", "sha256": sha256, "autov2": sha256[:10]}]}
    info = PngImagePlugin.PngInfo()
    info.add_text("workflow", (REPO / "workflows" / "image_basic.json").read_text())
    info.add_text("latentgraph", json.dumps(record))
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def test_an_image_made_with_other_model_files_asks_before_it_opens(page):
    image = png_with_record("0" * 64)
    tabs = page.locator(".tab").count()
    drop_file(page, image, "elsewhere.png")
    question = page.locator(".modal p")
    question.wait_for()
    assert ("node 1 (CheckpointLoaderSimple) ckpt_name 'demo_sdxl_base.safetensors': the file differs here"
            in question.inner_text())
    page.shot("asked")
    page.locator(".modal button", has_text="Cancel").click()
    question.wait_for(state="detached")
    page.wait_for_timeout(200)
    assert page.locator(".tab").count() == tabs, "declined: nothing opened"

    drop_file(page, image, "elsewhere.png")
    page.locator(".modal button", has_text="Open anyway").click()
    page.wait_for_function("(n) => document.querySelectorAll('.tab').length === n + 1", arg=tabs)
    assert page.locator(".tab.active .name").inner_text() == "elsewhere"
    assert [n["type"] for n in state(page)["nodes"]][:4] == ["EmptyImage", "ImageScale", "ImageInvert", "SaveImage"]
    page.shot("opened-anyway")
