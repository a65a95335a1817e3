"""UI → API conversion (§9.5/§9.6 of the ComfyUI compatibility reference) and reading workflows from files."""
import dataclasses
import json
import os
import re

import pytest
from PIL import Image, PngImagePlugin

from nodes.node import Input, NodeSpec, Output
from nodes.types import CONDITIONING, FLOAT, INT, LATENT, MODEL, STRING
from server.graph import is_ui_workflow, load_prompt, read_png_workflow, set_ui_widget, ui_to_api, widget_slots

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ui(nodes, links, version=0.4):
    return {"last_node_id": len(nodes), "last_link_id": len(links),
            "nodes": nodes, "links": links, "groups": [], "config": {}, "extra": {}, "version": version}


def node(id, type, widgets=None, inputs=(), mode=0, title=None):
    out = {"id": id, "type": type, "pos": [0, 0], "size": [100, 100], "flags": {}, "order": id, "mode": mode,
           "inputs": [dict(i) for i in inputs], "outputs": [], "properties": {}}
    if widgets is not None:
        out["widgets_values"] = widgets
    if title:
        out["title"] = title
    return out


def sock(name, type, link, widget=False):
    entry = {"name": name, "type": type, "link": link}
    if widget:
        entry["widget"] = {"name": name}
    return entry


def fake_spec(name, inputs, outputs=(Output(LATENT),)):
    """A declaration shaped like a ComfyUI node that this project may not ship (yet)."""
    named = {k: dataclasses.replace(v, name=k) for k, v in inputs.items()}
    return NodeSpec(cls=object, type_name=name, display_name=name, category="test", description="", version="1",
                    inputs=named, outputs=tuple(outputs), output_node=False, hidden={})


KSAMPLER = fake_spec("KSampler", {
    "model": Input(type=MODEL),
    "seed": Input(type=INT, default=0, min=0, max=2**64 - 1, control_after_generate=True),
    "steps": Input(type=INT, default=20, min=1, max=10000),
    "cfg": Input(type=FLOAT, default=8.0),
    "sampler_name": Input(type=STRING, choices=["euler", "dpmpp_2m"]),
    "scheduler": Input(type=STRING, choices=["normal", "karras"]),
    "positive": Input(type=CONDITIONING),
    "negative": Input(type=CONDITIONING),
    "latent_image": Input(type=LATENT),
    "denoise": Input(type=FLOAT, default=1.0, min=0.0, max=1.0),
})
ADVANCED = fake_spec("KSamplerAdvanced", {
    "model": Input(type=MODEL),
    "add_noise": Input(type=STRING, choices=["enable", "disable"]),
    "noise_seed": Input(type=INT, default=0),  # spec silent about the control widget: the name decides
    "steps": Input(type=INT, default=20), "cfg": Input(type=FLOAT, default=8.0),
    "sampler_name": Input(type=STRING, choices=["euler"]), "scheduler": Input(type=STRING, choices=["normal"]),
    "positive": Input(type=CONDITIONING), "negative": Input(type=CONDITIONING), "latent_image": Input(type=LATENT),
    "start_at_step": Input(type=INT, default=0), "end_at_step": Input(type=INT, default=10000),
    "return_with_leftover_noise": Input(type=STRING, choices=["disable", "enable"]),
})


def test_shipped_workflow_converts(registry):
    with open(os.path.join(REPO, "workflows", "image_basic.json")) as f:
        workflow = json.load(f)
    assert is_ui_workflow(workflow)
    prompt = ui_to_api(workflow, registry)
    assert list(prompt) == ["1", "2", "3", "4"]  # the Note is gone
    assert prompt["1"]["inputs"] == {"width": 512, "height": 384, "batch_size": 1, "color": 3368652}
    assert prompt["2"]["inputs"] == {"upscale_method": "bilinear", "width": 768, "height": 0, "crop": "disabled",
                                     "image": ["1", 0]}
    assert prompt["4"] == {"class_type": "SaveImage", "inputs": {"filename_prefix": "latentgraph_basic",
                                                                 "images": ["3", 0]}, "_meta": {"title": "Save Image", "ver": "1.0.0"}}


def test_seed_control_value_is_skipped():
    wf = ui([node(3, "KSampler", [812045847300606, "randomize", 25, 7, "dpmpp_2m", "karras", 1])], [])
    assert ui_to_api(wf, {"KSampler": KSAMPLER})["3"]["inputs"] == {
        "seed": 812045847300606, "steps": 25, "cfg": 7, "sampler_name": "dpmpp_2m", "scheduler": "karras", "denoise": 1}


def test_noise_seed_control_value_is_skipped_by_name():
    wf = ui([node(10, "KSamplerAdvanced", ["enable", 721897303308196, "randomize", 25, 8, "euler", "normal", 0, 20,
                                           "enable"])], [])
    inputs = ui_to_api(wf, {"KSamplerAdvanced": ADVANCED})["10"]["inputs"]
    assert inputs == {"add_noise": "enable", "noise_seed": 721897303308196, "steps": 25, "cfg": 8,
                      "sampler_name": "euler", "scheduler": "normal", "start_at_step": 0, "end_at_step": 20,
                      "return_with_leftover_noise": "enable"}
    assert widget_slots(ADVANCED)["steps"] == 3


def test_legacy_values_and_missing_trailing_values():
    # `true` in the control slot (old files), a trailing "" (old hires-fix); a short list falls back to defaults
    wf = ui([node(1, "KSampler", [5, True, 30, 6.5, "euler", "normal", 0.5, ""]),
             node(2, "KSampler", [7, "fixed", 12, 4.0, "euler", "normal"])], [])
    prompt = ui_to_api(wf, {"KSampler": KSAMPLER})
    assert prompt["1"]["inputs"]["seed"] == 5 and prompt["1"]["inputs"]["denoise"] == 0.5
    assert prompt["2"]["inputs"]["denoise"] == 1.0


def test_load_image_upload_value_is_skipped(registry):
    wf = ui([node(1, "LoadImage", ["example.png", "image", ""]), node(2, "SaveImage", ["x"], [sock("images", "IMAGE", 1)])],
            [[1, 1, 0, 2, 0, "IMAGE"]])
    prompt = ui_to_api(wf, registry)
    assert prompt["1"]["inputs"] == {"image": "example.png"}
    assert prompt["2"]["inputs"] == {"filename_prefix": "x", "images": ["1", 0]}


def test_muted_node_is_dropped_with_its_links(registry):
    wf = ui([node(1, "EmptyImage", [8, 8, 1, 0], mode=2), node(2, "ImageInvert", [], [sock("image", "IMAGE", 1)])],
            [[1, 1, 0, 2, 0, "IMAGE"]])
    assert ui_to_api(wf, registry) == {"2": {"class_type": "ImageInvert", "inputs": {}, "_meta": {"title": "Invert Image"}}}


def test_bypassed_nodes_pass_their_input_through(registry):
    # 1 → 2 (bypassed) → 3 (bypassed) → 4: the consumer reads 1 directly
    wf = ui([node(1, "EmptyImage", [8, 8, 1, 0]),
             node(2, "ImageInvert", [], [sock("image", "IMAGE", 1)], mode=4),
             node(3, "ImageScale", ["area", 4, 4, "disabled"], [sock("image", "IMAGE", 2)], mode=4),
             node(4, "SaveImage", ["x"], [sock("images", "IMAGE", 3)])],
            [[1, 1, 0, 2, 0, "IMAGE"], [2, 2, 0, 3, 0, "IMAGE"], [3, 3, 0, 4, 0, "IMAGE"]])
    prompt = ui_to_api(wf, registry)
    assert sorted(prompt) == ["1", "4"]
    assert prompt["4"]["inputs"]["images"] == ["1", 0]


def test_bypass_picks_first_input_of_the_consumers_type(registry):
    # output 0 of the bypassed node is IMAGE, but its input 0 is MASK: the first IMAGE input is used instead
    wf = ui([node(1, "LoadImage", ["a.png", "image"]),
             node(2, "FakeComposite", [], [sock("mask", "MASK", 1), sock("image", "IMAGE", 2)], mode=4),
             node(3, "SaveImage", ["x"], [sock("images", "IMAGE", 3)])],
            [[1, 1, 1, 2, 0, "MASK"], [2, 1, 0, 2, 1, "IMAGE"], [3, 2, 0, 3, 0, "IMAGE"]])
    assert ui_to_api(wf, registry)["3"]["inputs"]["images"] == ["1", 0]


def test_reroute_chains_are_followed(registry):
    wf = ui([node(1, "EmptyImage", [8, 8, 1, 0]), node(5, "Reroute", None, [sock("", "*", 1)]),
             node(6, "Reroute", None, [sock("", "*", 2)]), node(2, "ImageInvert", [], [sock("image", "IMAGE", 3)])],
            [[1, 1, 0, 5, 0, "*"], [2, 5, 0, 6, 0, "*"], [3, 6, 0, 2, 0, "IMAGE"]])
    prompt = ui_to_api(wf, registry)
    assert sorted(prompt) == ["1", "2"] and prompt["2"]["inputs"]["image"] == ["1", 0]


def test_primitive_node_value_replaces_the_stale_widget(registry):
    # width was converted to a socket: its slot keeps a stale 999; the PrimitiveNode's 64 wins
    wf = ui([node(7, "PrimitiveNode", [64, "fixed"]),
             node(1, "EmptyImage", [999, 32, 1, 0], [sock("width", "INT", 1, widget=True)])],
            [[1, 7, 0, 1, 0, "INT"]])
    prompt = ui_to_api(wf, registry)
    assert sorted(prompt) == ["1"]
    assert prompt["1"]["inputs"] == {"width": 64, "height": 32, "batch_size": 1, "color": 0}


def test_converted_widget_link_wins(registry):
    wf = ui([node(7, "PrimitiveInt", [64, "fixed"], title="size"),
             node(1, "EmptyImage", [999, 32, 1, 0], [sock("width", "INT", 1, widget=True)])],
            [[1, 7, 0, 1, 0, "INT"]])
    prompt = ui_to_api(wf, registry)
    assert prompt["7"] == {"class_type": "PrimitiveInt", "inputs": {"value": 64}, "_meta": {"title": "size"}}
    assert prompt["1"]["inputs"]["width"] == ["7", 0]


def test_unknown_types_are_kept_for_validation_to_report(registry):
    wf = ui([node(1, "EmptyImage", [8, 8, 1, 0]), node(2, "FancyUpscaler", [3], [sock("image", "IMAGE", 1)])],
            [[1, 1, 0, 2, 0, "IMAGE"]])
    assert ui_to_api(wf, registry)["2"] == {"class_type": "FancyUpscaler", "inputs": {"image": ["1", 0]},
                                            "_meta": {"title": "FancyUpscaler"}}


def test_version_1_link_objects_and_list_literals(registry):
    spec = fake_spec("TakesList", {"items": Input(type=STRING, default="")})
    wf = ui([node(1, "EmptyImage", [8, 8, 1, 0]), node(2, "ImageInvert", [], [sock("image", "IMAGE", 4)]),
             node(3, "TakesList", [["a", "b", "c"]])],
            [{"id": 4, "origin_id": 1, "origin_slot": 0, "target_id": 2, "target_slot": 0, "type": "IMAGE"}],
            version=1)
    prompt = ui_to_api(wf, {**registry, "TakesList": spec})
    assert prompt["2"]["inputs"]["image"] == ["1", 0]
    assert prompt["3"]["inputs"]["items"] == {"__value__": ["a", "b", "c"]}


def test_set_ui_widget(registry):
    wf = ui([node(3, "KSampler", [1, "fixed", 20, 7, "euler", "normal", 1])], [])
    assert set_ui_widget(wf, "3", "steps", 30, {"KSampler": KSAMPLER})
    assert wf["nodes"][0]["widgets_values"][2] == 30
    assert not set_ui_widget(wf, "3", "model", 1, {"KSampler": KSAMPLER})  # a socket, not a widget
    assert not set_ui_widget(wf, "9", "steps", 1, {"KSampler": KSAMPLER})


def test_load_prompt_accepts_every_shape(registry):
    api = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8}}}
    workflow = ui([node(1, "EmptyImage", [8, 8, 1, 0])], [])
    assert load_prompt(api, registry) == (api, None)
    assert api["1"]["_meta"] == {"ver": "1.0.0"}  # loading records each node's version (server/migrations.py)
    assert load_prompt(workflow, registry) == ({"1": {"class_type": "EmptyImage", "inputs": {
        "width": 8, "height": 8, "batch_size": 1, "color": 0}, "_meta": {"title": "EmptyImage", "ver": "1.0.0"}}},
        workflow)
    body = {"prompt": api, "extra_data": {"extra_pnginfo": {"workflow": workflow}}}
    assert load_prompt(body, registry) == (api, workflow)
    with pytest.raises(ValueError, match="JSON object"):
        load_prompt([1, 2], registry)


def _png(path, chunks, itxt=False):
    info = PngImagePlugin.PngInfo()
    for key, value in chunks.items():
        if itxt:
            info.add_itxt(key, value, zip=True)
        else:
            info.add_text(key, value)
    Image.new("RGB", (4, 4)).save(path, pnginfo=info)
    return str(path)


def test_read_png_prefers_workflow_then_prompt(tmp_path):
    both = _png(tmp_path / "both.png", {"prompt": '{"1": {}}', "workflow": '{"nodes": [], "links": []}'})
    assert read_png_workflow(both) == {"nodes": [], "links": []}
    only_prompt = _png(tmp_path / "p.png", {"prompt": '{"1": {"class_type": "X"}}'})
    assert read_png_workflow(only_prompt) == {"1": {"class_type": "X"}}
    compressed = _png(tmp_path / "i.png", {"workflow": '{"nodes": [1]}'}, itxt=True)
    assert read_png_workflow(compressed) == {"nodes": [1]}
    with pytest.raises(ValueError, match="no 'workflow' or 'prompt'"):
        read_png_workflow(_png(tmp_path / "none.png", {"parameters": "a cat"}))
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="not a readable image"):
        read_png_workflow(str(tmp_path / "bad.png"))


@pytest.mark.parametrize("workflow,message", [
    (ui([{"type": "EmptyImage"}], []), "node #0 needs an 'id'"),
    (ui([node(1, "EmptyImage", 5)], []), "'widgets_values' must be a list"),
    (ui([{**node(1, "EmptyImage"), "inputs": {"image": 1}}], []), "'inputs' must be a list of objects"),
    (ui([node(1, "EmptyImage", [], [sock("image", "IMAGE", [1])])], []), "'link' must be a link id"),
    (ui([node(1, "EmptyImage")], [[1, 1, "0", 2, 0, "IMAGE"]]), "is not [id, origin_id"),
    (ui([node(1, "EmptyImage")], [{"id": 1, "origin_id": 1}]), "is not [id, origin_id"),
])
def test_malformed_ui_is_refused_with_a_reason(registry, workflow, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        load_prompt(workflow, registry)
