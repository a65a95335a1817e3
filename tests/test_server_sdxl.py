"""Shipped SDXL and SD3 workflows through HTTP and /ws on the demo checkpoints: sampler progress, latent previews
(SD3's from its 16 channels), and checkpoints that stay loaded across workflows until POST /free — with prompts
running in the worker process, as `latentgraph serve` runs them."""
from __future__ import annotations

import asyncio
import hashlib
import io
import json
import struct

import pytest
from aiohttp import WSMsgType
from oracles import demo_models
from patience import async_wait_until, patience
from PIL import Image
from server_helpers import REPO, make_config

from nodes.demo import make_demo_text_encoders
from server.app import STATE, create_app

pytestmark = pytest.mark.slow


@pytest.fixture
async def client(aiohttp_client, tmp_path):
    paths = demo_models()
    cfg = make_config(tmp_path, worker_process=True)
    cfg.models_dir.mkdir(parents=True)
    (cfg.models_dir / "checkpoints").symlink_to(paths["sdxl_base"].parent)
    make_demo_text_encoders(cfg.models_dir / "text_encoders")
    return await aiohttp_client(create_app(cfg))


async def run_workflow(client, ws, name: str, seed: int | None = None) -> tuple[dict, list, list]:
    workflow = json.loads((REPO / "workflows" / name).read_text())
    if seed is not None:
        (sampler,) = [n for n in workflow["nodes"] if n["type"] == "SDXLSampler"]
        sampler["widgets_values"][0] = seed
    resp = await client.post("/prompt", json={"prompt": workflow, "client_id": "sdxl"})
    body = await resp.json()
    assert resp.status == 200, body
    msgs, frames = [], []
    async with asyncio.timeout(patience(300)):
        while True:
            m = await ws.receive()
            if m.type == WSMsgType.BINARY:
                frames.append(m.data)
                continue
            msg = json.loads(m.data)
            msgs.append(msg)
            assert msg["type"] != "execution_error", msg["data"]["exception_message"]
            if msg["type"] == "executing" and msg["data"]["node"] is None:
                break
    entry = (await (await client.get(f"/history/{body['prompt_id']}")).json())[body["prompt_id"]]
    return entry, msgs, frames


async def test_sdxl_workflows_progress_previews_and_resident_checkpoints(client):
    runner = client.app[STATE].workers[0].runner

    def models() -> dict:  # the worker process's model residency, as of its last prompt or /free
        return runner.stats()["models"]

    ws = await client.ws_connect("/ws?clientId=sdxl")
    await ws.receive_json()

    entry, msgs, frames = await run_workflow(client, ws, "sdxl_base.json")
    assert entry["status"]["completed"]
    progress = [m["data"] for m in msgs if m["type"] == "progress"]
    sampler = progress[0]["node"]
    steps = [p for p in progress if p["node"] == sampler]
    assert [p["value"] for p in steps] == list(range(1, steps[0]["max"] + 1))
    assert frames and all(struct.unpack(">II", f[:8]) == (1, 1) for f in frames)  # JPEG latent previews
    (images,) = [o["images"] for o in entry["outputs"].values()]
    view = await client.get("/view", params={"filename": images[0]["filename"], "subfolder": images[0]["subfolder"],
                                             "type": images[0]["type"]})
    assert view.status == 200 and view.content_type == "image/png"
    assert models()["builds"] == 1
    profile = entry["meta"]["profile"]
    assert all(e["why"] == "first run" for e in profile.values())
    (model,) = entry["meta"]["latentgraph"]["models"]  # the history keeps the provenance record the PNG carries
    assert model["sha256"] == hashlib.sha256(demo_models()["sdxl_base"].read_bytes()).hexdigest()

    # the same workflow with another seed: the profile says why each node ran again
    entry, _, _ = await run_workflow(client, ws, "sdxl_base.json", seed=7)
    profile = {e["class_type"]: e for e in entry["meta"]["profile"].values()}
    assert profile["SDXLSampler"]["why"] == "seed changed"
    assert profile["SDXLVAEDecode"]["why"] == "upstream changed: samples"
    assert profile["SDXLCheckpointLoader"]["cached"] and profile["SDXLCheckpointLoader"]["why"] is None

    # another workflow on the same base checkpoint (plus the refiner): the base is not read again
    entry, _, _ = await run_workflow(client, ws, "sdxl_base_refiner.json")
    assert entry["status"]["completed"] and models()["builds"] == 2

    # /free unloads; the next run reads the checkpoint again
    await client.post("/free", json={"unload_models": True, "free_memory": True})
    await async_wait_until(lambda: models()["models"] == 0, what="the worker process unloading its models")
    entry, _, _ = await run_workflow(client, ws, "sdxl_base.json")
    assert entry["status"]["completed"] and models()["builds"] == 3
    await ws.close()


async def test_sd3_workflows_with_previews(client):
    """Both SD3 workflows (the incl_clips checkpoint; sd3_medium with TripleCLIPLoader) complete, with a JPEG
    preview per sampler step at the latent's size (256² images: 32² latents)."""
    ws = await client.ws_connect("/ws?clientId=sdxl")
    await ws.receive_json()
    for name, samplers in (("sd3_txt2img.json", 1), ("sd3_img2img.json", 2)):
        entry, msgs, frames = await run_workflow(client, ws, name)
        assert entry["status"]["completed"]
        ksamplers = {str(n["id"]) for n in json.loads((REPO / "workflows" / name).read_text())["nodes"]
                     if n["type"] == "KSampler"}
        steps = [m["data"] for m in msgs if m["type"] == "progress" and m["data"]["node"] in ksamplers]
        assert len(ksamplers) == samplers and len(frames) == len(steps) == 4 * samplers, name
        previews = [Image.open(io.BytesIO(f[8:])) for f in frames]
        assert {p.size for p in previews} == {(32, 32)} and all(p.getextrema()[0][0] < p.getextrema()[0][1]
                                                                  for p in previews)
        assert len([i for o in entry["outputs"].values() for i in o["images"]]) == samplers
    await ws.close()
