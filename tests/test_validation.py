"""Malformed workflows, API and UI formats: each must be reported with ComfyUI's error type at the right node
and input — through the Python API and through `latentgraph validate --json`."""
import json
import os

import pytest
from PIL import Image

from server.cli import main
from server.graph import load_prompt, validate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def api(**nodes):
    """API prompt from keyword pairs: n1=("EmptyImage", {...}) → {"1": {...}}."""
    return {k.removeprefix("n"): {"class_type": t, "inputs": i} for k, (t, i) in nodes.items()}


def ui(nodes, links):
    return {"last_node_id": 9, "last_link_id": len(links), "nodes": nodes, "links": links, "groups": [],
            "config": {}, "extra": {}, "version": 0.4}


def uinode(id, type, widgets, inputs=(), mode=0):
    return {"id": id, "type": type, "pos": [0, 0], "size": [1, 1], "flags": {}, "order": 0, "mode": mode,
            "inputs": [{"name": n, "type": t, "link": link} for n, t, link in inputs], "outputs": [],
            "properties": {}, "widgets_values": widgets}


EMPTY = ("EmptyImage", {"width": 64, "height": 64, "batch_size": 1, "color": 0})
SAVE_1 = ("SaveImage", {"images": ["1", 0], "filename_prefix": "t"})

# (case id, workflow, expected {(node, error type, input)}, expected top-level error type)
CASES = [
    ("api-unknown-class", api(n1=EMPTY, n2=("Upscaler9000", {"image": ["1", 0]}), n3=("SaveImage", {
        "images": ["2", 0], "filename_prefix": "t"})), {("2", "missing_node_type", None)}, "missing_node_type"),
    ("api-missing-class-type", {"1": {"inputs": {}}, "2": {"class_type": "SaveImage", "inputs": {
        "images": ["1", 0], "filename_prefix": "t"}}}, {("1", "invalid_prompt", None)}, "invalid_prompt"),
    ("api-required-input-missing", api(n1=EMPTY, n2=("SaveImage", {"filename_prefix": "t"})),
     {("2", "required_input_missing", "images")}, "prompt_outputs_failed_validation"),
    ("api-link-to-missing-node", api(n1=EMPTY, n2=("SaveImage", {"images": ["99", 0], "filename_prefix": "t"})),
     {("2", "bad_linked_input", "images")}, "prompt_outputs_failed_validation"),
    ("api-link-to-missing-slot", api(n1=EMPTY, n2=("SaveImage", {"images": ["1", 3], "filename_prefix": "t"})),
     {("2", "bad_linked_input", "images")}, "prompt_outputs_failed_validation"),
    ("api-malformed-link", api(n1=EMPTY, n2=("SaveImage", {"images": ["1", 0, 2], "filename_prefix": "t"})),
     {("2", "bad_linked_input", "images")}, "prompt_outputs_failed_validation"),
    ("api-type-mismatch", api(n1=("LoadImage", {"image": "present.png"}), n2=("ImageInvert", {"image": ["1", 1]}),
                              n3=("SaveImage", {"images": ["2", 0], "filename_prefix": "t"})),
     {("2", "return_type_mismatch", "image")}, "prompt_outputs_failed_validation"),
    ("api-wrong-value-type", api(n1=("EmptyImage", {"width": "wide", "height": 64, "batch_size": 1, "color": 0}),
                                 n2=SAVE_1), {("1", "invalid_input_type", "width")}, "prompt_outputs_failed_validation"),
    ("api-value-below-min", api(n1=("EmptyImage", {"width": 0, "height": 64, "batch_size": 1, "color": 0}), n2=SAVE_1),
     {("1", "value_smaller_than_min", "width")}, "prompt_outputs_failed_validation"),
    ("api-value-above-max", api(n1=("EmptyImage", {"width": 64, "height": 64, "batch_size": 5000, "color": 0}),
                                n2=SAVE_1), {("1", "value_bigger_than_max", "batch_size")}, "prompt_outputs_failed_validation"),
    ("api-choice-not-in-list", api(n1=EMPTY, n2=("ImageScale", {"image": ["1", 0], "upscale_method": "magic", "width": 8,
                                                                "height": 8, "crop": "disabled"}),
                                   n3=("SaveImage", {"images": ["2", 0], "filename_prefix": "t"})),
     {("2", "value_not_in_list", "upscale_method")}, "prompt_outputs_failed_validation"),
    ("api-missing-input-file", api(n1=("LoadImage", {"image": "absent.png"}), n2=SAVE_1),
     {("1", "value_not_in_list", "image")}, "prompt_outputs_failed_validation"),
    ("api-fractional-int", api(n1=("PrimitiveInt", {"value": 1.5}), n2=("EmptyImage", {
        "width": ["1", 0], "height": 8, "batch_size": 1, "color": 0}), n3=("SaveImage", {
            "images": ["2", 0], "filename_prefix": "t"})), {("1", "invalid_input_type", "value")},
     "prompt_outputs_failed_validation"),
    ("api-cycle", api(n1=EMPTY, n2=("ImageInvert", {"image": ["3", 0]}), n3=("ImageInvert", {"image": ["2", 0]}),
                      n4=("SaveImage", {"images": ["3", 0], "filename_prefix": "t"})),
     {("2", "dependency_cycle", "image")}, "prompt_outputs_failed_validation"),
    ("api-no-outputs", api(n1=EMPTY, n2=("ImageInvert", {"image": ["1", 0]})), set(), "prompt_no_outputs"),
    ("api-all-errors-at-once", api(
        n1=("EmptyImage", {"width": -5, "height": "x", "batch_size": 1}),
        n2=("ImageCrop", {"image": ["1", 0], "width": 8, "height": 8, "x": 0, "y": 99999}),
        n3=("SaveImage", {"images": ["2", 0], "filename_prefix": 7})),
     {("1", "value_smaller_than_min", "width"), ("1", "invalid_input_type", "height"),
      ("1", "required_input_missing", "color"), ("2", "value_bigger_than_max", "y"),
      ("3", "invalid_input_type", "filename_prefix")}, "prompt_outputs_failed_validation"),
    ("ui-unknown-node-type", ui([uinode(1, "EmptyImage", [64, 64, 1, 0]), uinode(2, "SuperResolve", [2],
                                                                                  [("image", "IMAGE", 1)]),
                                 uinode(3, "SaveImage", ["t"], [("images", "IMAGE", 2)])],
                                [[1, 1, 0, 2, 0, "IMAGE"], [2, 2, 0, 3, 0, "IMAGE"]]),
     {("2", "missing_node_type", None)}, "missing_node_type"),
    ("ui-muted-source", ui([uinode(1, "EmptyImage", [64, 64, 1, 0], mode=2),
                            uinode(2, "SaveImage", ["t"], [("images", "IMAGE", 1)])], [[1, 1, 0, 2, 0, "IMAGE"]]),
     {("2", "required_input_missing", "images")}, "prompt_outputs_failed_validation"),
    ("ui-widget-above-max", ui([uinode(1, "EmptyImage", [64, 64, 1, 0]),
                                uinode(2, "ImageScale", ["area", 99999, 8, "disabled"], [("image", "IMAGE", 1)]),
                                uinode(3, "SaveImage", ["t"], [("images", "IMAGE", 2)])],
                               [[1, 1, 0, 2, 0, "IMAGE"], [2, 2, 0, 3, 0, "IMAGE"]]),
     {("2", "value_bigger_than_max", "width")}, "prompt_outputs_failed_validation"),
    ("ui-mask-through-reroute", ui([uinode(1, "LoadImage", ["present.png", "image"]),
                                    uinode(5, "Reroute", None, [("", "*", 1)]),
                                    uinode(2, "SaveImage", ["t"], [("images", "IMAGE", 2)])],
                                   [[1, 1, 1, 5, 0, "*"], [2, 5, 0, 2, 0, "MASK"]]),
     {("2", "return_type_mismatch", "images")}, "prompt_outputs_failed_validation"),
    ("ui-primitive-wrong-type", ui([uinode(7, "PrimitiveNode", ["abc"]),
                                    {**uinode(1, "EmptyImage", [64, 64, 1, 0]), "inputs": [
                                        {"name": "width", "type": "INT", "link": 1, "widget": {"name": "width"}}]},
                                    uinode(2, "SaveImage", ["t"], [("images", "IMAGE", 2)])],
                                   [[1, 7, 0, 1, 0, "INT"], [2, 1, 0, 2, 0, "IMAGE"]]),
     {("1", "invalid_input_type", "width")}, "prompt_outputs_failed_validation"),
    ("ui-choice-not-in-list", ui([uinode(1, "EmptyImage", [64, 64, 1, 0]),
                                  uinode(2, "ImageScale", ["bilinear", 8, 8, "edges"], [("image", "IMAGE", 1)]),
                                  uinode(3, "SaveImage", ["t"], [("images", "IMAGE", 2)])],
                                 [[1, 1, 0, 2, 0, "IMAGE"], [2, 2, 0, 3, 0, "IMAGE"]]),
     {("2", "value_not_in_list", "crop")}, "prompt_outputs_failed_validation"),
    ("ui-cycle", ui([uinode(1, "ImageInvert", [], [("image", "IMAGE", 2)]),
                     uinode(2, "ImageInvert", [], [("image", "IMAGE", 1)]),
                     uinode(3, "SaveImage", ["t"], [("images", "IMAGE", 3)])],
                    [[1, 1, 0, 2, 0, "IMAGE"], [2, 2, 0, 1, 0, "IMAGE"], [3, 2, 0, 3, 0, "IMAGE"]]),
     {("1", "dependency_cycle", "image")}, "prompt_outputs_failed_validation"),
]


def found(node_errors: dict) -> set:
    return {(node_id, e["type"], e["extra_info"].get("input_name"))
            for node_id, entry in node_errors.items() for e in entry["errors"]}


@pytest.fixture
def image_env(env):
    Image.new("RGBA", (8, 8)).save(f"{env.input_dir}/present.png")
    return env


def test_table_is_large_enough():
    assert len(CASES) >= 15
    assert sum(1 for _, wf, _, _ in CASES if "nodes" in wf) >= 5


@pytest.mark.parametrize("case,workflow,expected,top", CASES, ids=[c[0] for c in CASES])
def test_python_api(case, workflow, expected, top, registry, image_env):
    prompt, _ = load_prompt(json.loads(json.dumps(workflow)), registry)
    report = validate(prompt, registry, image_env)
    assert not report.ok and report.outputs == []
    assert report.error["type"] == top
    assert found(report.node_errors) == expected
    for node_id, entry in report.node_errors.items():
        assert entry["class_type"] == (prompt[node_id].get("class_type"))
        for err in entry["errors"]:
            assert err["message"] and node_id in err["details"]  # every error names its node


@pytest.mark.parametrize("case,workflow,expected,top", CASES, ids=[c[0] for c in CASES])
def test_cli(case, workflow, expected, top, image_env, tmp_path, capsys):
    path = tmp_path / f"{case}.json"
    path.write_text(json.dumps(workflow))
    assert main(["validate", str(path), "--json", "--input", image_env.input_dir]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["error"]["type"] == top
    assert found(report["node_errors"]) == expected


def test_cycle_names_its_nodes(registry, env):
    prompt, _ = load_prompt(CASES[[c[0] for c in CASES].index("api-cycle")][1], registry)
    err = validate(prompt, registry, env).node_errors["2"]["errors"][0]
    assert err["extra_info"]["cycle"] == ["2", "3"] and "2, 3" in err["message"]


def test_dependent_outputs_and_partial_success(registry, env):
    """A broken branch drops only its own output; the other still runs (ComfyUI's behaviour)."""
    prompt = api(n1=EMPTY, n2=SAVE_1, n3=("ImageInvert", {"image": ["1", 0]}),
                 n4=("SaveImage", {"images": ["3", 0], "filename_prefix": 5}),
                 n5=("SaveImage", {"images": ["3", 0], "filename_prefix": "ok"}))
    report = validate(prompt, registry, env)
    assert report.ok and report.error is None
    assert report.outputs == ["2", "5"]
    assert report.node_errors["4"]["dependent_outputs"] == ["4"]
    assert set(report.values) == {"1", "2", "3", "5"}
    assert report.values["1"] == {"width": 64, "height": 64, "batch_size": 1, "color": 0}


def test_errors_off_the_requested_outputs_are_ignored(registry, env):
    prompt = api(n1=EMPTY, n2=SAVE_1, n3=("ImageInvert", {"image": ["9", 0]}))
    assert validate(prompt, registry, env).node_errors == {}
    report = validate(prompt, registry, env, outputs=["3"])
    assert found(report.node_errors) == {("3", "bad_linked_input", "image")}
    assert validate(prompt, registry, env, outputs=["8"]).error["type"] == "invalid_prompt"


def test_valid_workflow_passes_cli(tmp_path, capsys):
    assert main(["validate", f"{REPO}/workflows/image_basic.json"]) == 0
    assert "ok" in capsys.readouterr().out
