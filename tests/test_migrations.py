"""Versioned node schemas: a fixture node at 1.0.0 and 2.0.0 (an input renamed, one added); workflows saved with
1.0.0, in the UI and the API format, migrate and run through the CLI and HTTP; a newer one is refused."""
from __future__ import annotations

import asyncio
import copy
import json

import numpy as np
import pytest
from PIL import Image
from server_helpers import make_config

from nodes.node import REGISTRY, Input, Migration, Output, load_builtin_nodes, node
from nodes.types import IMAGE
from server.app import create_app
from server.cli import main
from server.graph import load_prompt
from server.migrations import NewerVersion


@node(category="testing", outputs=[Output(IMAGE)], name="TestTint", version="1.0.0")
class TintV1:
    """1.0.0: multiply by `amount`, then add `offset`/255."""
    image: IMAGE = Input()
    amount: float = Input(default=0.5, min=0.0, max=1.0)
    offset: int = Input(default=0, min=0, max=255, control_after_generate=True)

    def run(self, ctx):
        return (self.image * self.amount + self.offset / 255,)


REGISTRY.pop("TestTint")


@node(category="testing", outputs=[Output(IMAGE)], name="TestTint", version="2.0.0",
      migrations=[Migration("2.0.0", renamed={"amount": "strength"}, added={"mode": "multiply"})])
class TintV2:
    """2.0.0: `amount` is called `strength`, and `mode` may add it instead (the new default); workflows saved with
    1.0.0 keep multiplying."""
    image: IMAGE = Input()
    strength: float = Input(default=0.5, min=0.0, max=1.0)
    mode: str = Input(default="add", choices=["add", "multiply"])
    offset: int = Input(default=0, min=0, max=255, control_after_generate=True)

    def run(self, ctx):
        tinted = self.image * self.strength if self.mode == "multiply" else self.image + self.strength
        return ((tinted + self.offset / 255).clamp(0, 1),)


REGISTRY.pop("TestTint")
V1 = {**load_builtin_nodes(), "TestTint": TintV1.spec}
V2 = {**load_builtin_nodes(), "TestTint": TintV2.spec}


def ui_workflow(ver: str | None, values: list) -> dict:
    """EmptyImage (grey 0x808080) → TestTint → SaveImage, as the canvas saves it."""
    tint = {"id": 2, "type": "TestTint", "mode": 0, "widgets_values": values,
            "inputs": [{"name": "image", "type": "IMAGE", "link": 1}, {"name": "amount", "type": "FLOAT", "link": None,
                                                                       "widget": {"name": "amount"}}],
            "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [2]}],
            "properties": {"Node name for S&R": "TestTint", **({"ver": ver} if ver else {})}}
    return {"last_node_id": 3, "last_link_id": 2, "version": 0.4, "nodes": [
        {"id": 1, "type": "EmptyImage", "mode": 0, "widgets_values": [8, 8, 1, 0x808080], "inputs": [],
         "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [1]}], "properties": {"ver": "1.0.0"}},
        tint,
        {"id": 3, "type": "SaveImage", "mode": 0, "widgets_values": ["tinted"], "inputs": [
            {"name": "images", "type": "IMAGE", "link": 2}], "outputs": [], "properties": {"ver": "1.0.0"}},
    ], "links": [[1, 1, 0, 2, 0, "IMAGE"], [2, 2, 0, 3, 0, "IMAGE"]]}


V1_UI = ui_workflow("1.0.0", [0.25, 64, "fixed"])  # amount, offset, offset's control value
V1_API = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0x808080}},
          "2": {"class_type": "TestTint", "inputs": {"image": ["1", 0], "amount": 0.25, "offset": 64},
                "_meta": {"title": "Tint", "ver": "1.0.0"}},
          "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "tinted"}}}
EXPECTED = round((128 / 255 * 0.25 + 64 / 255) * 255)  # what 1.0.0 made of the grey: multiplied, then offset


def test_ui_workflow_migrates_widgets_links_and_version():
    workflow, changes = copy.deepcopy(V1_UI), []
    prompt, migrated = load_prompt(workflow, V2, changes)
    assert changes == ["node 2 (TestTint) 1.0.0 → 2.0.0: input 'amount' renamed to 'strength'; "
                       "input 'mode' added as 'multiply'"]
    tint = migrated["nodes"][1]
    assert tint["widgets_values"] == [0.25, "multiply", 64, "fixed"]  # today's layout, the control value kept
    assert tint["inputs"][1] == {"name": "strength", "type": "FLOAT", "link": None, "widget": {"name": "strength"}}
    assert tint["properties"]["ver"] == "2.0.0"
    assert prompt["2"]["inputs"] == {"image": ["1", 0], "strength": 0.25, "mode": "multiply", "offset": 64}
    assert load_prompt(copy.deepcopy(migrated), V2, again := []) == (prompt, migrated) and again == []


def test_unversioned_nodes_are_read_as_first_published_and_foreign_versions_are_not_ours():
    prompt, _ = load_prompt(ui_workflow(None, [0.25, 64, "fixed"]), V2)
    assert prompt["2"]["inputs"]["strength"] == 0.25 and prompt["2"]["inputs"]["mode"] == "multiply"
    comfy = ui_workflow(None, [0.25, 64, "fixed"])
    comfy["nodes"][1]["properties"].update(cnr_id="comfy-core", ver="0.3.40")  # ComfyUI's release, not ours
    prompt, workflow = load_prompt(comfy, V2)
    assert prompt["2"]["inputs"]["strength"] == 0.25
    assert workflow["nodes"][1]["properties"]["ver"] == "0.3.40", "another pack's record stays as the file has it"
    today = {"2": {"class_type": "TestTint", "inputs": {"image": ["1", 0], "strength": 0.1, "mode": "add"}}}
    load_prompt(today, V2)  # an API client writing today's names without a version: nothing to undo
    assert today["2"]["inputs"] == {"image": ["1", 0], "strength": 0.1, "mode": "add"}
    assert today["2"]["_meta"] == {"ver": "2.0.0"}


def test_malformed_subgraph_definitions_do_not_stop_the_migration():
    """Found by the live fuzz run (test_server_live): these were an AttributeError, a 500 over HTTP."""
    for definitions in ([], 1.5, {"subgraphs": 1.5}, {"subgraphs": [{"id": "x", "nodes": 3}, 7]}):
        workflow = ui_workflow("1.0.0", [0.25, 64, "fixed"])
        workflow["definitions"] = definitions
        prompt, _ = load_prompt(workflow, V2)
        assert prompt["2"]["inputs"]["strength"] == 0.25 and prompt["2"]["_meta"]["ver"] == "2.0.0"


def test_newer_than_known_is_refused_by_node_for_both_formats():
    newer_ui = ui_workflow("3.1.0", [0.25, "add", 64, "fixed"])
    with pytest.raises(NewerVersion, match=r"node 2 \(TestTint\) was saved with version 3\.1\.0; this latentgraph has "
                                           r"2\.0\.0"):
        load_prompt(newer_ui, V2)
    newer_api = copy.deepcopy(V1_API)
    newer_api["2"]["_meta"]["ver"] = "2.1.0"
    with pytest.raises(NewerVersion, match=r"node 2 \(TestTint\) was saved with version 2\.1\.0"):
        load_prompt(newer_api, V2)
    bad = copy.deepcopy(V1_API)
    bad["2"]["_meta"]["ver"] = "two"
    with pytest.raises(ValueError, match=r"node 2 \(TestTint\): _meta.ver 'two' is not a version"):
        load_prompt(bad, V2)


def test_a_node_without_a_version_or_with_a_broken_migration_fails_at_import():
    with pytest.raises(TypeError, match=r"@node Unversioned: declare its version"):
        @node(category="testing")
        class Unversioned:
            def run(self, ctx):
                return ()
    with pytest.raises(TypeError, match=r"@node Sloppy: '1\.0' is not a version"):
        @node(category="testing", version="1.0")
        class Sloppy:
            def run(self, ctx):
                return ()
    with pytest.raises(TypeError, match=r"migration to 2\.0\.0 names input 'gain', which it lacks"):
        @node(category="testing", version="2.0.0", migrations=[Migration("2.0.0", renamed={"level": "gain"})])
        class Misnamed:
            level: float = Input(default=1.0)

            def run(self, ctx):
                return ()
    assert not {"Unversioned", "Sloppy", "Misnamed"} & set(REGISTRY)


def test_value_mapping_and_chained_steps_compose():
    @node(category="testing", name="TestChain", version="3.0.0", migrations=[
        Migration("2.0.0", renamed={"method": "kind"}, values={"kind": {"nearest": "nearest-exact"}}),
        Migration("3.0.0", renamed={"kind": "upscale_method"}, added={"scale": 1.0})])
    class Chain:
        upscale_method: str = Input(default="bilinear", choices=["nearest-exact", "bilinear"])
        scale: float = Input(default=2.0)

        def run(self, ctx):
            return ()

    REGISTRY.pop("TestChain")
    registry = {"TestChain": Chain.spec}
    old = {"1": {"class_type": "TestChain", "inputs": {"method": "nearest"}}}
    changes = []
    load_prompt(old, registry, changes)
    assert old["1"]["inputs"] == {"upscale_method": "nearest-exact", "scale": 1.0}
    assert changes == ["node 1 (TestChain) first published → 3.0.0: input 'method' renamed to 'kind'; "
                       "'kind' 'nearest' is now 'nearest-exact'; input 'kind' renamed to 'upscale_method'; "
                       "input 'scale' added as 1.0"]
    ui = {"nodes": [{"id": 1, "type": "TestChain", "widgets_values": ["nearest"], "properties": {"ver": "2.0.0"}}],
          "links": []}
    prompt, _ = load_prompt(ui, registry)  # at 2.0.0 its widget was `kind`, already mapped
    assert prompt["1"]["inputs"] == {"upscale_method": "nearest", "scale": 1.0}


def pixel(path) -> int:
    with Image.open(path) as img:
        return np.asarray(img)[0, 0, 0]


@pytest.mark.parametrize("saved", [V1_UI, V1_API], ids=["ui", "api"])
def test_old_workflow_runs_from_the_cli_as_it_did(saved, tmp_path, capsys, monkeypatch):
    path = tmp_path / "old.json"
    path.write_text(json.dumps(saved))
    monkeypatch.setitem(REGISTRY, "TestTint", TintV2.spec)
    code = main(["run", str(path), "--out", str(tmp_path / "out"), "--data", str(tmp_path / "data"), "-q"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "migrated: node 2 (TestTint) 1.0.0 → 2.0.0: input 'amount' renamed to 'strength'" in err
    (png,) = [line for line in out.splitlines() if line.endswith(".png")]
    assert pixel(png) == EXPECTED

    monkeypatch.setitem(REGISTRY, "TestTint", TintV1.spec)  # the same file on the release that saved it
    assert main(["run", str(path), "--out", str(tmp_path / "v1"), "--data", str(tmp_path / "data"), "-q"]) == 0
    (png,) = [line for line in capsys.readouterr().out.splitlines() if line.endswith(".png")]
    assert pixel(png) == EXPECTED


def test_newer_workflow_is_refused_by_the_cli(tmp_path, capsys, monkeypatch):
    path = tmp_path / "newer.json"
    path.write_text(json.dumps(ui_workflow("3.0.0", [0.25, "add", 64, "fixed"])))
    monkeypatch.setitem(REGISTRY, "TestTint", TintV2.spec)
    code = main(["run", str(path), "--out", str(tmp_path / "out"), "--data", str(tmp_path / "data"), "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "node 2 (TestTint) was saved with version 3.0.0; this latentgraph has 2.0.0" in err


async def test_old_workflows_migrate_and_run_over_http(aiohttp_client, tmp_path):
    client = await aiohttp_client(create_app(make_config(tmp_path), V2))
    for body in ({"prompt": copy.deepcopy(V1_UI), "extra_data": {"extra_pnginfo": {"workflow": V1_UI}}},
                 {"prompt": copy.deepcopy(V1_API)}):
        resp = await client.post("/prompt", json=body)
        answer = await resp.json()
        assert resp.status == 200, answer
        assert answer["migrated"] == ["node 2 (TestTint) 1.0.0 → 2.0.0: input 'amount' renamed to 'strength'; "
                                      "input 'mode' added as 'multiply'"]
        entry = await wait_history(client, answer["prompt_id"])
        assert entry["status"]["status_str"] == "success", entry["status"]
        image = entry["outputs"]["3"]["images"][0]
        assert pixel(tmp_path / "output" / image["filename"]) == EXPECTED
        if "extra_data" in body:  # the outputs embed the workflow that ran: migrated
            with Image.open(tmp_path / "output" / image["filename"]) as img:
                embedded = json.loads(img.text["workflow"])
            assert embedded["nodes"][1]["properties"]["ver"] == "2.0.0"
            assert embedded["nodes"][1]["widgets_values"] == [0.25, "multiply", 64, "fixed"]

    resp = await client.post("/prompt", json={"prompt": ui_workflow("3.0.0", [0.25, "add", 64, "fixed"])})
    error = (await resp.json())["error"]
    assert resp.status == 400 and error["type"] == "newer_node_version"
    assert "node 2 (TestTint) was saved with version 3.0.0; this latentgraph has 2.0.0" in error["message"]


async def wait_history(client, prompt_id):
    for _ in range(400):
        data = await (await client.get(f"/history/{prompt_id}")).json()
        if prompt_id in data:
            return data[prompt_id]
        await asyncio.sleep(0.05)
    raise AssertionError(f"prompt {prompt_id} did not finish")


def test_values_that_belong_to_no_input_move_with_the_layout():
    @node(category="testing", name="TestMaskFile", version="2.0.0",
          migrations=[Migration("2.0.0", renamed={"chan": "channel"}, added={"invert": False})])
    class MaskFile:
        image: str = Input(choices=["m.png"], image_upload=True)
        channel: str = Input(default="alpha", choices=["alpha", "red"])
        invert: bool = Input(default=True)
        seed: int = Input(default=0)

        def run(self, ctx):
            return ()

    REGISTRY.pop("TestMaskFile")
    saved = {"nodes": [{"id": 1, "type": "TestMaskFile", "properties": {"ver": "1.0.0"},
                        "widgets_values": ["m.png", "red", 5, "increment", "image"]}], "links": []}
    prompt, workflow = load_prompt(saved, {"TestMaskFile": MaskFile.spec})
    # 1.0.0: image, chan, seed + its control, then the upload button's value after the group's last widget
    assert workflow["nodes"][0]["widgets_values"] == ["m.png", "red", False, 5, "increment", "image"]
    assert prompt["1"]["inputs"] == {"image": "m.png", "channel": "red", "invert": False, "seed": 5}
