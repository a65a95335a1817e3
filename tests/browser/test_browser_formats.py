"""Workflow formats in the browser: PNG text chunks of every kind, API-format prompts, and the pinned
canvas library."""
import base64
import io
import json
from pathlib import Path

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from canvas_helpers import drop_file

WEB = Path(__file__).resolve().parents[2] / "web"


def test_litegraph_is_pinned_to_the_mit_release():
    pkg = json.loads((WEB / "package.json").read_text())
    lock = json.loads((WEB / "package-lock.json").read_text())
    assert pkg["dependencies"] == {"@comfyorg/litegraph": "0.17.2"}
    entry = lock["packages"]["node_modules/@comfyorg/litegraph"]
    assert entry["version"] == "0.17.2" and entry["license"] == "MIT"
    assert entry["integrity"] == ("sha512-6O+PSu80Tycj4NkYyLv/r7tS5V1JDVnSZLUglXCwDTPDJbjqyyNWjSUuLTFpvNOMuK+iPYMmuOWazBcYx/"
                                  "Rd6w==")
    importmap = "./node_modules/@comfyorg/litegraph/dist/litegraph.es.js"
    assert importmap in (WEB / "index.html").read_text()


@pytest.mark.browser
def test_png_reader_reads_text_itxt_and_compressed_chunks(page):
    info = PngInfo()
    info.add_text("prompt", json.dumps({"1": {"class_type": "EmptyImage", "inputs": {}}}))
    info.add_itxt("workflow", json.dumps({"nodes": [], "note": "ünïcode"}), zip=True)
    info.add_text("parameters", "a photo of a cat", zip=True)  # zTXt
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, "PNG", pnginfo=info)
    chunks = page.evaluate("""async (b64) => {
      const { pngTextChunks } = await import("./src/png.js");
      const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
      return await pngTextChunks(bytes.buffer);
    }""", base64.b64encode(buf.getvalue()).decode())
    assert json.loads(chunks["workflow"]) == {"nodes": [], "note": "ünïcode"}
    assert json.loads(chunks["prompt"])["1"]["class_type"] == "EmptyImage"
    assert chunks["parameters"] == "a photo of a cat"


@pytest.mark.browser
def test_opening_an_api_prompt_rebuilds_the_graph(page, tmp_path):
    prompt = {"7": {"class_type": "EmptyImage", "inputs": {"width": 96, "height": 64, "batch_size": 1, "color": 255}},
              "9": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": "api"},
                    "_meta": {"title": "Keep it"}}}
    path = tmp_path / "api_prompt.json"
    path.write_text(json.dumps(prompt))
    with page.expect_file_chooser() as chooser:
        page.click("#open-button")
    chooser.value.set_files(str(path))
    page.wait_for_function("app.graph._nodes.length === 2")
    data = json.loads(page.evaluate("app.state()"))
    nodes = {n["id"]: n for n in data["nodes"]}
    assert nodes[7]["widgets_values"][:4] == [96, 64, 1, 255]
    assert nodes[9]["title"] == "Keep it" and nodes[9]["widgets_values"] == ["api"]
    assert [link[1:5] for link in data["links"]] == [[7, 0, 9, 0]]
    page.shot("api-prompt-opened")


@pytest.mark.browser
def test_load_image_mask_saves_its_upload_value_after_its_widgets(page, tmp_path):
    """Where ComfyUI saves it (["m.png", "red", "image"]), so files travel both ways."""
    path = tmp_path / "mask_prompt.json"
    path.write_text(json.dumps({"3": {"class_type": "LoadImageMask", "inputs": {"image": "m.png", "channel": "red"}}}))
    with page.expect_file_chooser() as chooser:
        page.click("#open-button")
    chooser.value.set_files(str(path))
    page.wait_for_function("app.graph._nodes.length === 1")
    node = json.loads(page.evaluate("app.state()"))["nodes"][0]
    assert node["type"] == "LoadImageMask" and node["widgets_values"] == ["m.png", "red", "image"]


@pytest.mark.browser
def test_dropping_a_plain_image_makes_a_load_image_node(page):
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 30, 30)).save(buf, "PNG")
    page.click("#new-tab")
    drop_file(page, buf.getvalue(), "red square.png")
    page.wait_for_function("app.graph._nodes.length === 1")
    node = json.loads(page.evaluate("app.state()"))["nodes"][0]
    assert node["type"] == "LoadImage" and node["widgets_values"][0].endswith(".png")
    page.wait_for_function("app.graph._nodes[0].lg.images[0]?.naturalWidth === 40")
    page.shot("load-image-node")


@pytest.mark.browser
def test_comfyui_template_with_primitive_nodes_opens_clean_and_names_missing_models(page):
    templates = pytest.importorskip("comfyui_workflow_templates_json")
    path = Path(templates.__file__).parent / "templates" / "sdxl_simple_example.json"
    with page.expect_file_chooser() as chooser:
        page.click("#open-button")
    chooser.value.set_files(str(path))
    page.wait_for_function("app.workspace.tab.name === 'sdxl_simple_example'")
    assert page.locator(".tab.active .dirty").inner_text() == "", "opening a file is no edit"
    primitives = page.evaluate("""app.graph._nodes.filter((n) => n.type === 'PrimitiveNode')
      .map((n) => [n.title, n.widgets?.[0]?.value])""")
    assert ["steps", 25] in primitives and ["end_at_step", 20] in primitives
    page.allow_console_error(r"status of 400 .*/prompt$")  # the server refuses it: the models are missing
    page.click("#queue-button")
    page.locator(".toast.error", has_text="sd_xl_base_1.0.safetensors").wait_for()
    flagged = page.evaluate("""app.graph._nodes.filter((n) => n.lg?.errors?.length)
      .map((n) => [n.type, n.lg.errors[0].extra_info?.input_name])""")
    assert flagged and all(f == ["CheckpointLoaderSimple", "ckpt_name"] for f in flagged)
    page.shot("template-missing-models")
