"""`latentgraph` end to end: run a shipped workflow, re-run it from its PNG, and fail readably on bad input."""
import json
import os
import subprocess
import sys

import pytest
from patience import patience
from PIL import Image, PngImagePlugin

from nodes.node import load_builtin_nodes
from server.cli import main
from server.graph import ui_to_api

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKFLOW = os.path.join(REPO, "workflows", "image_basic.json")
CONSOLE_SCRIPT = os.path.join(os.path.dirname(sys.executable), "latentgraph")


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def saved(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.endswith(".png")]


def test_run_writes_png_that_reruns_to_the_same_bytes(tmp_path, capsys):
    out_dir = str(tmp_path / "out")
    code, out, err = run(capsys, "run", WORKFLOW, "--out", out_dir, "-q")
    assert code == 0, err
    (first,) = saved(out)
    with open(WORKFLOW) as f:
        workflow = json.load(f)
    with Image.open(first) as img:
        assert img.size == (768, 576)
        assert img.getpixel((0, 0)) == (0xFF - 0x33, 0xFF - 0x66, 0xFF - 0xCC)  # inverted 0x3366CC
        assert json.loads(img.text["workflow"]) == workflow
        assert json.loads(img.text["prompt"]) == ui_to_api(workflow, load_builtin_nodes())

    code, out, _ = run(capsys, "run", first, "--out", out_dir, "-q")  # the PNG's own workflow chunk
    (second,) = saved(out)
    assert code == 0 and second != first
    assert open(first, "rb").read() == open(second, "rb").read()


def test_prompt_only_png_reruns_to_the_same_pixels(tmp_path, capsys):
    out_dir = str(tmp_path / "out")
    (first,) = saved(run(capsys, "run", WORKFLOW, "--out", out_dir, "-q")[1])
    with Image.open(first) as img:
        info = PngImagePlugin.PngInfo()
        info.add_text("prompt", img.text["prompt"])
        img.save(tmp_path / "prompt_only.png", pnginfo=info)
        pixels = (img.mode, img.size, img.tobytes())
    code, out, _ = run(capsys, "run", str(tmp_path / "prompt_only.png"), "--out", out_dir, "-q")
    with Image.open(saved(out)[0]) as img:
        assert code == 0 and (img.mode, img.size, img.tobytes()) == pixels and "workflow" not in img.text


def test_set_changes_an_input_and_the_embedded_workflow(tmp_path, capsys):
    out_dir = str(tmp_path / "out")
    code, out, err = run(capsys, "run", WORKFLOW, "--set", "2.width=256", "--set", "4.filename_prefix=small",
                         "--out", out_dir, "-q")
    assert code == 0, err
    (first,) = saved(out)
    assert os.path.basename(first) == "small_00001_.png"
    with Image.open(first) as img:
        assert img.size == (256, 192)
        nodes = {n["id"]: n for n in json.loads(img.text["workflow"])["nodes"]}
        assert nodes[2]["widgets_values"] == ["bilinear", 256, 0, "disabled"]
    (second,) = saved(run(capsys, "run", first, "--out", out_dir, "-q")[1])
    assert open(first, "rb").read() == open(second, "rb").read()


def test_console_script(tmp_path):
    out_dir = tmp_path / "out"
    done = subprocess.run([CONSOLE_SCRIPT, "run", WORKFLOW, "--out", str(out_dir)], capture_output=True, text=True,
                          cwd=tmp_path, timeout=patience(120))
    assert done.returncode == 0, done.stderr
    assert os.listdir(out_dir) == ["latentgraph_basic_00001_.png"]
    assert "4/4" in done.stderr and "Traceback" not in done.stderr  # the tqdm bar reached the end


def test_validate_prints_readable_errors(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"1": {"class_type": "SaveImage", "inputs": {"filename_prefix": "x"}}}))
    code, _, err = run(capsys, "validate", str(bad))
    assert code == 1
    assert "node 1 (SaveImage) input 'images': Required input is missing: images [required_input_missing]" in err


@pytest.mark.parametrize("content,message", [
    (None, "no such file"),
    ("{not json", "not valid JSON"),
    ("[1, 2]", "not a workflow"),
    (b"\x89PNG\r\n\x1a\nbroken", "not a readable image"),
])
def test_unreadable_files(tmp_path, capsys, content, message):
    path = tmp_path / "wf"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    for command in ("run", "validate"):
        code, _, err = run(capsys, command, str(path), "--input", str(tmp_path))
        assert code == 2 and message in err


def test_png_without_workflow(tmp_path, capsys):
    Image.new("RGB", (2, 2)).save(tmp_path / "plain.png")
    code, _, err = run(capsys, "run", str(tmp_path / "plain.png"))
    assert code == 2 and "no 'workflow' or 'prompt'" in err


@pytest.mark.parametrize("item,message", [
    ("2width=5", "expected NODE_ID.INPUT=VALUE"),
    ("9.width=5", "no node 9"),
    ("2.size=5", "ImageScale has no input 'size'"),
])
def test_bad_set(tmp_path, capsys, item, message):
    code, _, err = run(capsys, "run", WORKFLOW, "--set", item, "--out", str(tmp_path))
    assert code == 2 and message in err


def test_invalid_value_from_set_is_reported_by_node_and_input(tmp_path, capsys):
    code, _, err = run(capsys, "run", WORKFLOW, "--set", "1.width=0", "--out", str(tmp_path))
    assert code == 1 and "node 1 (EmptyImage) input 'width'" in err and "value_smaller_than_min" in err
    assert not os.listdir(tmp_path)


def test_node_failure_names_the_node(tmp_path, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "broken.png").write_bytes(b"not a png")
    wf = {"1": {"class_type": "LoadImage", "inputs": {"image": "broken.png"}},
          "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}}
    (tmp_path / "wf.json").write_text(json.dumps(wf))
    code, _, err = run(capsys, "run", str(tmp_path / "wf.json"), "--input", str(inputs), "--out", str(tmp_path / "o"))
    assert code == 1 and "node 1 (LoadImage) failed" in err


def test_nodes_listing(capsys):
    code, out, _ = run(capsys, "nodes", "--json")
    schemas = json.loads(out)
    assert code == 0 and schemas["SaveImage"]["input"]["hidden"] == {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}
    assert schemas["SaveImage"]["output_node"] is True and schemas["ImageScale"]["input_order"]["required"] == [
        "image", "upscale_method", "width", "height", "crop"]
    code, out, _ = run(capsys, "nodes")
    assert code == 0 and "ImageInvert" in out


def primitive_workflow() -> dict:
    """PrimitiveNode 7 drives EmptyImage 1's converted `width` widget (stale value 999 in its slot)."""
    return {"last_node_id": 7, "last_link_id": 2, "version": 0.4, "groups": [], "config": {}, "extra": {},
            "nodes": [
                {"id": 7, "type": "PrimitiveNode", "mode": 0, "inputs": [], "widgets_values": [24, "fixed"],
                 "outputs": [{"name": "INT", "type": "INT", "links": [1], "widget": {"name": "width"}}]},
                {"id": 1, "type": "EmptyImage", "mode": 0, "widgets_values": [999, 16, 1, 0],
                 "inputs": [{"name": "width", "type": "INT", "link": 1, "widget": {"name": "width"}}], "outputs": []},
                {"id": 2, "type": "SaveImage", "mode": 0, "widgets_values": ["p"],
                 "inputs": [{"name": "images", "type": "IMAGE", "link": 2}], "outputs": []}],
            "links": [[1, 7, 0, 1, 0, "INT"], [2, 1, 0, 2, 0, "IMAGE"]]}


def test_set_a_primitive_node_and_a_linked_widget(tmp_path, capsys):
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(primitive_workflow()))
    out_dir = str(tmp_path / "out")
    code, out, err = run(capsys, "run", str(path), "--set", "7.value=40", "--out", out_dir, "-q")
    assert code == 0, err
    with Image.open(saved(out)[0]) as img:
        assert img.size == (40, 16) and json.loads(img.text["workflow"])["nodes"][0]["widgets_values"] == [40, "fixed"]

    # width is fed by the PrimitiveNode: the change can only go into the prompt, and the PNG says so honestly
    code, out, err = run(capsys, "run", str(path), "--set", "1.width=50", "--out", out_dir, "-q")
    assert code == 0 and "1.width" in err
    with Image.open(saved(out)[0]) as img:
        assert img.size == (50, 16) and "workflow" not in img.text
        assert json.loads(img.text["prompt"])["1"]["inputs"]["width"] == 50

    code, _, err = run(capsys, "run", str(path), "--set", "7.width=3", "--out", out_dir)
    assert code == 2 and "set 7.value" in err
