"""Workflows people share: schema-v1 files with subgraphs (hand-built here), and every template of the MIT
`comfyui-workflow-templates-json` package (installed by the test extra, never copied into the repo)."""
import collections
import json

import pytest
from PIL import Image
from server_helpers import make_config, wait_history
from template_helpers import (SDXL_TEMPLATES, expected_checkpoints, load_template, place_demo_checkpoints,
                              template_names)

from nodes.catalog import input_folder
from server.app import STATE, create_app
from server.cli import main

from server.graph import ui_to_api, validate
from server.limits import TooLarge
from server.subgraphs import SubgraphError, flatten

SUB, INNER = "5a1e0c2d-0000-4000-8000-00000000000a", "5a1e0c2d-0000-4000-8000-00000000000b"


def link(id, origin, oslot, target, tslot, type):
    return {"id": id, "origin_id": origin, "origin_slot": oslot, "target_id": target, "target_slot": tslot, "type": type}


def sock(name, type, link=None, widget=False):
    entry = {"name": name, "type": type, "link": link}
    if widget:
        entry["widget"] = {"name": name}
    return entry


def node(id, type, widgets=None, inputs=(), mode=0, **extra):
    out = {"id": id, "type": type, "pos": [0, 0], "size": [100, 100], "flags": {}, "order": 0, "mode": mode,
           "inputs": list(inputs), "outputs": [], "properties": {}, **extra}
    if widgets is not None:
        out["widgets_values"] = widgets
    return out


def definition(id, name, nodes, links, inputs, outputs):
    """A subgraph definition in the v1 layout: boundary nodes -10 (inputs) and -20 (outputs)."""
    def slots(entries):
        return [{"id": f"{id}-{n}", "name": n, "type": t, "linkIds": ids} for n, t, ids in entries]
    return {"id": id, "version": 1, "name": name, "revision": 0, "config": {}, "extra": {}, "groups": [],
            "state": {"lastGroupId": 0, "lastNodeId": 20, "lastLinkId": 20, "lastRerouteId": 0},
            "inputNode": {"id": -10, "bounding": [0, 0, 10, 10]}, "outputNode": {"id": -20, "bounding": [0, 0, 10, 10]},
            "inputs": slots(inputs), "outputs": slots(outputs), "widgets": [], "nodes": nodes, "links": links}


def v1_workflow(instances, top_links, extra_nodes=()):
    """Image → [instance(s) of SUB] → SaveImage. SUB scales its image input to `width` × its own height 16 and
    hands it to a nested subgraph INNER, which inverts it."""
    inner = definition(INNER, "invert", [node(3, "ImageInvert", [], [sock("image", "IMAGE", 1)])],
                       [link(1, -10, 0, 3, 0, "IMAGE"), link(2, 3, 0, -20, 0, "IMAGE")],
                       [("image", "IMAGE", [1])], [("IMAGE", "IMAGE", [2])])
    sub = definition(SUB, "scale and invert", [
        node(5, "ImageScale", ["nearest-exact", 24, 16, "disabled"],
             [sock("image", "IMAGE", 11), sock("width", "INT", 12, widget=True)]),
        node(6, INNER, None, [sock("image", "IMAGE", 13)]),
    ], [link(11, -10, 0, 5, 0, "IMAGE"), link(12, -10, 1, 5, 1, "INT"), link(13, 5, 0, 6, 0, "IMAGE"),
        link(14, 6, 0, -20, 0, "IMAGE")],
        [("image", "IMAGE", [11]), ("width", "INT", [12])], [("IMAGE", "IMAGE", [14])])
    nodes = [node(1, "EmptyImage", [64, 32, 1, 0]), *instances, *extra_nodes]
    return {"id": "0", "revision": 0, "version": 1, "config": {}, "extra": {}, "groups": [], "reroutes": [],
            "state": {"lastGroupId": 0, "lastNodeId": 40, "lastLinkId": 40, "lastRerouteId": 0},
            "nodes": nodes, "links": top_links, "definitions": {"subgraphs": [sub, inner]}}


def instance(id, image_link, width=None, mode=0, out_links=()):
    return node(id, SUB, [width] if width is not None else [],
                [sock("image", "IMAGE", image_link), sock("width", "INT", widget=True)], mode=mode,
                outputs=[{"name": "IMAGE", "type": "IMAGE", "links": list(out_links)}])


def test_subgraphs_are_inlined_with_path_ids(registry):
    wf = v1_workflow([instance(2, 21, width=48, out_links=[22])],
                     [link(21, 1, 0, 2, 0, "IMAGE"), link(22, 2, 0, 9, 0, "IMAGE")],
                     [node(9, "SaveImage", ["sub"], [sock("images", "IMAGE", 22)])])
    prompt = ui_to_api(wf, registry)
    assert set(prompt) == {"1", "2:5", "2:6:3", "9"}
    assert prompt["2:5"]["inputs"] == {"image": ["1", 0], "width": 48, "height": 16, "upscale_method": "nearest-exact",
                                       "crop": "disabled"}
    assert prompt["2:6:3"]["inputs"] == {"image": ["2:5", 0]}
    assert prompt["9"]["inputs"]["images"] == ["2:6:3", 0]
    assert validate(prompt, registry).ok


def test_inner_widget_value_stands_when_the_instance_keeps_none(registry):
    wf = v1_workflow([instance(2, 21, out_links=[22])],
                     [link(21, 1, 0, 2, 0, "IMAGE"), link(22, 2, 0, 9, 0, "IMAGE")],
                     [node(9, "SaveImage", ["sub"], [sock("images", "IMAGE", 22)])])
    assert ui_to_api(wf, registry)["2:5"]["inputs"]["width"] == 24


def test_linked_instance_widget_input_and_two_instances(registry):
    """A primitive linked to the instance's widget input reaches the inner node; each instance gets its own ids."""
    wf = v1_workflow([instance(2, 21, width=48, out_links=[23]), instance(3, 23, width=40, out_links=[24])],
                     [link(21, 1, 0, 2, 0, "IMAGE"), link(23, 2, 0, 3, 0, "IMAGE"),
                      link(24, 3, 0, 9, 0, "IMAGE"), link(25, 8, 0, 3, 1, "INT")],
                     [node(8, "PrimitiveNode", [56, "fixed"], outputs=[{"name": "INT", "type": "INT", "links": [25]}]),
                      node(9, "SaveImage", ["sub"], [sock("images", "IMAGE", 24)])])
    wf["nodes"][2]["inputs"][1]["link"] = 25
    prompt = ui_to_api(wf, registry)
    assert prompt["3:5"]["inputs"]["image"] == ["2:6:3", 0]
    assert prompt["3:5"]["inputs"]["width"] == 56
    assert prompt["2:5"]["inputs"]["width"] == 48
    assert prompt["9"]["inputs"]["images"] == ["3:6:3", 0]


def test_bypassed_instance_passes_its_input_through_and_muted_one_drops(registry):
    wf = v1_workflow([instance(2, 21, width=48, mode=4, out_links=[22])],
                     [link(21, 1, 0, 2, 0, "IMAGE"), link(22, 2, 0, 9, 0, "IMAGE")],
                     [node(9, "SaveImage", ["sub"], [sock("images", "IMAGE", 22)])])
    prompt = ui_to_api(wf, registry)
    assert set(prompt) == {"1", "9"} and prompt["9"]["inputs"]["images"] == ["1", 0]
    wf["nodes"][1]["mode"] = 2
    prompt = ui_to_api(wf, registry)
    assert "images" not in prompt["9"]["inputs"]
    assert validate(prompt, registry).node_errors["9"]["errors"][0]["type"] == "required_input_missing"


def test_bypassed_inner_node_and_reroute_across_the_boundary(registry):
    """Bypass inside the subgraph passes the boundary's input on; a Reroute outside is walked through."""
    wf = v1_workflow([instance(2, 21, width=48, out_links=[22])],
                     [link(21, 1, 0, 2, 0, "IMAGE"), link(22, 2, 0, 7, 0, "IMAGE"), link(26, 7, 0, 9, 0, "IMAGE")],
                     [node(7, "Reroute", None, [sock("", "*", 22)]),
                      node(9, "SaveImage", ["sub"], [sock("images", "IMAGE", 26)])])
    inner = wf["definitions"]["subgraphs"][1]
    inner["nodes"][0]["mode"] = 4
    prompt = ui_to_api(wf, registry)
    assert "2:6:3" not in prompt and prompt["9"]["inputs"]["images"] == ["2:5", 0]


def test_dangling_subgraph_output_drops_the_consumer_input(registry):
    """Real files have instance outputs whose inner link is gone; the consumer then has no input (as the canvas)."""
    wf = v1_workflow([instance(2, 21, width=48, out_links=[22])],
                     [link(21, 1, 0, 2, 0, "IMAGE"), link(22, 2, 0, 9, 0, "IMAGE")],
                     [node(9, "SaveImage", ["sub"], [sock("images", "IMAGE", 22)])])
    sub = wf["definitions"]["subgraphs"][0]
    sub["links"] = [x for x in sub["links"] if x["target_id"] != -20]
    assert "images" not in ui_to_api(wf, registry)["9"]["inputs"]


def test_recursive_definition_is_an_error(registry):
    wf = v1_workflow([instance(2, 21, width=48)], [link(21, 1, 0, 2, 0, "IMAGE")])
    wf["definitions"]["subgraphs"][1]["nodes"].append(node(4, SUB, []))
    with pytest.raises(SubgraphError, match="contains itself"):
        flatten(wf)


def test_exploding_nesting_is_refused(registry):
    """Ten instances per level, six levels deep, would be a million nodes: a clear error, not a hung server."""
    defs = [definition(f"5a1e0c2d-0000-4000-8000-0000000001{i:02d}", f"level {i}",
                       [node(k, f"5a1e0c2d-0000-4000-8000-0000000001{i + 1:02d}" if i < 5 else "EmptyImage", [])
                        for k in range(10)], [], [], []) for i in range(6)]
    wf = {"nodes": [node(1, defs[0]["id"], [])], "links": [], "version": 0.4, "definitions": {"subgraphs": defs}}
    with pytest.raises(TooLarge, match="more than"):
        ui_to_api(wf, registry)


def test_malformed_subgraph_data_is_a_clear_error(registry):
    wf = v1_workflow([instance(2, 21, width=48)], [link(21, 1, 0, 2, 0, "IMAGE")])
    del wf["definitions"]["subgraphs"][0]["links"][0]["origin_slot"]
    with pytest.raises(SubgraphError, match="malformed subgraph data"):
        ui_to_api(wf, registry)
    wf["definitions"] = "not an object"  # no definitions at all: the instance is an unknown node type
    assert ui_to_api(wf, registry)["2"]["class_type"] == SUB


def test_workflow_without_subgraphs_is_returned_unchanged():
    wf = {"nodes": [node(1, "EmptyImage", [8, 8, 1, 0])], "links": [], "version": 0.4}
    assert flatten(wf) is wf


# -- every ComfyUI template -------------------------------------------------------------------------------------

def test_every_template_converts_and_is_classified(registry, env):
    names = template_names()
    assert len(names) >= 600
    runnable, missing_by_template, other_family, uses = [], {}, {}, collections.Counter()
    for name in names:
        prompt = ui_to_api(load_template(name), registry)  # must not raise
        assert prompt, name
        for node_id, entry in prompt.items():
            for value in entry["inputs"].values():  # every link points at a node that is in the prompt
                if isinstance(value, list):
                    assert str(value[0]) in prompt, (name, node_id, value)
        missing = sorted({e["class_type"] for e in prompt.values() if e["class_type"] not in registry})
        report = validate(prompt, registry, env)
        if missing:
            missing_by_template[name] = missing
            uses.update(missing)
            assert report.error["type"] == "missing_node_type", name
            assert sorted(report.error["extra_info"]["missing_node_types"]) == missing, name
        else:
            # with our node set the only things such a template may lack are its model files and its input pictures,
            # or, for a model family we do not have (UNETLoader + CLIPLoader of another type), an option of ours it
            # does not name (the CLIPLoader type, a sampler we lack)
            options = []
            for entry in report.node_errors.values():
                for e in entry["errors"]:
                    picture = e["type"] == "value_not_in_list" and e["extra_info"]["input_name"] == "image" \
                        and entry["class_type"] in ("LoadImage", "LoadImageMask")
                    option = e["type"] == "value_not_in_list" and not picture and \
                        input_folder(entry["class_type"], e["extra_info"]["input_name"]) is None
                    assert e["type"] == "missing_model" or picture or option, (name, report.node_errors)
                    options += [f"{entry['class_type']}.{e['extra_info']['input_name']}"] if option else []
            if options:
                other_family[name] = options
            else:
                runnable.append(name)
    print(f"\ntemplates: {len(names)} converted, {len(runnable)} valid with our node set (model files aside), "
          f"{len(other_family)} with all their node types but options of families we lack, "
          f"{len(missing_by_template)} need missing node types ({len(uses)} distinct)")
    print("options of other families:", ", ".join(f"{n} ({', '.join(sorted(set(o)))})"
                                                   for n, o in sorted(other_family.items())))
    print("top missing classes (templates needing each):",
          ", ".join(f"{c} {n}" for c, n in uses.most_common(15)))
    print("runnable:", ", ".join(sorted(runnable)))
    assert set(SDXL_TEMPLATES) <= set(runnable), "the SDXL templates need only the ComfyUI SDXL node set"


# -- the SDXL templates run end to end on the demo checkpoints ---------------------------------------------------

def shrunk(workflow: dict) -> dict:
    """The template with a 64×64 latent and 3 steps (switching to the refiner at 2), so tiny models run in seconds;
    every node, link and widget otherwise as shipped."""
    workflow = json.loads(json.dumps(workflow))
    for n in workflow["nodes"]:
        values = n.get("widgets_values")
        if n["type"] == "EmptyLatentImage":
            values[:2] = [64, 64]
        elif n["type"] == "PrimitiveNode" and values and values[0] in (25, 20):  # total steps / switch step
            values[0] = {25: 3, 20: 2}[values[0]]
        elif n["type"] == "KSampler":
            values[2] = 3
    return workflow


def saved_pngs(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.endswith(".png")]


@pytest.mark.slow
@pytest.mark.parametrize("name", SDXL_TEMPLATES)
def test_sdxl_template_runs_headless(name, tmp_path, capsys):
    workflow = shrunk(load_template(name))
    place_demo_checkpoints(tmp_path / "models", expected_checkpoints(workflow))
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(workflow))
    code = main(["run", str(path), "--models", str(tmp_path / "models"), "--out", str(tmp_path / "out"), "-q"])
    out, err = capsys.readouterr()
    assert code == 0, err
    (png,) = saved_pngs(out)
    with Image.open(png) as img:
        assert img.size == (64, 64)
        embedded = json.loads(img.text["workflow"])["nodes"]
        prompt = json.loads(img.text["prompt"])
    # the shared file, embedded unchanged but for the node versions recorded where it had none (issue #21)
    stamped = {n["properties"].pop("ver") for n, saved in zip(embedded, workflow["nodes"])
               if "ver" not in saved.get("properties", {}) and "ver" in n.get("properties", {})}
    assert embedded == workflow["nodes"] and stamped <= {"1.0.0"}
    assert {e["class_type"] for e in prompt.values()} >= {"CheckpointLoaderSimple", "VAEDecode", "SaveImage"}


@pytest.mark.slow
async def test_sdxl_templates_run_through_the_server(aiohttp_client, tmp_path):
    """POST /prompt with each template as shared (UI JSON) and as the canvas would send it (API + workflow)."""
    client = await aiohttp_client(create_app(make_config(tmp_path)))
    names = set().union(*(expected_checkpoints(load_template(n)) for n in SDXL_TEMPLATES))
    place_demo_checkpoints(tmp_path / "models", names)
    registry = client.app[STATE].registry
    for name in SDXL_TEMPLATES:
        workflow = shrunk(load_template(name))
        for body in ({"prompt": workflow},
                     {"prompt": ui_to_api(workflow, registry), "extra_data": {"extra_pnginfo": {"workflow": workflow}}}):
            resp = await client.post("/api/prompt", json=body)
            data = await resp.json()
            assert resp.status == 200 and data["node_errors"] == {}, (name, data)
            entry = await wait_history(client, data["prompt_id"])
            assert entry["status"]["status_str"] == "success", (name, entry["status"])
            (image,) = [i for ui in entry["outputs"].values() for i in ui["images"]]
            resp = await client.get("/api/view", params=image)
            assert resp.status == 200 and (await resp.read()).startswith(b"\x89PNG")
