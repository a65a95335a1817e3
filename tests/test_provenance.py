"""Provenance: the SHA-256 of every model file a prompt loads (hashed once, cached by path, size and mtime) in the
outputs' `latentgraph` PNG chunk; re-running an image compares it with the local files; `latentgraph inspect`."""
from __future__ import annotations

import hashlib
import json
import os
from importlib.metadata import version

import pytest
from oracles import demo_models
from PIL import Image, PngImagePlugin
from sdxl_helpers import cli
from server_helpers import make_config

from server.app import create_app
from server.provenance import HashCache

DECODE = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "demo_sdxl_base.safetensors"},
                "_meta": {"title": "Load Checkpoint"}},
          "2": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
          "3": {"class_type": "VAEDecode", "inputs": {"samples": ["2", 0], "vae": ["1", 2]}},
          "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "decoded"}}}


def sha256(path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_each_file_is_hashed_once_then_read_from_the_cache(tmp_path):
    model = tmp_path / "model.safetensors"
    model.write_bytes(os.urandom(1 << 20))
    store = str(tmp_path / "data" / "model_hashes.json")
    server = HashCache(store)  # a long-lived process (the HTTP server's) started before anything was hashed
    first = HashCache(store)
    assert first.sha256(str(model)) == sha256(model) and first.bytes_hashed == 1 << 20
    second = HashCache(store)  # another process, or after a restart: the cache file answers
    assert second.sha256(str(model)) == sha256(model) and second.bytes_hashed == 0
    assert server.sha256(str(model)) == sha256(model) and server.bytes_hashed == 0
    os.utime(model, ns=(model.stat().st_atime_ns, model.stat().st_mtime_ns + 10**9))  # touched: hashed again
    assert second.sha256(str(model)) == sha256(model) and second.bytes_hashed == 1 << 20


def test_a_diffusers_folder_hashes_as_its_sorted_sha256sum_lines(tmp_path):
    folder = demo_models()["sdxl_base_diffusers"]
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    lines = "".join(f"{sha256(folder / name)}  {name}\n" for name in files)
    assert HashCache().sha256(str(folder)) == hashlib.sha256(lines.encode()).hexdigest()


@pytest.fixture
def models(tmp_path):
    """A models folder whose base checkpoint is a link to the session's demo file (so the test may swap it)."""
    checkpoints = tmp_path / "models" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "demo_sdxl_base.safetensors").symlink_to(demo_models()["sdxl_base"])
    return tmp_path / "models"


def run(tmp_path, models, workflow, *extra):
    code, out, err = cli("run", str(workflow), "--models", str(models), "--out", str(tmp_path / "out"),
                         "--data", str(tmp_path / "data"), "-q", *extra)
    return code, [line for line in out.splitlines() if line.endswith(".png")], err


def test_png_records_models_and_a_changed_model_refuses_the_rerun(tmp_path, models):
    workflow = tmp_path / "decode.json"
    workflow.write_text(json.dumps(DECODE))
    code, (png,), err = run(tmp_path, models, workflow)
    assert code == 0, err
    base = sha256(demo_models()["sdxl_base"])
    with Image.open(png) as img:
        record = json.loads(img.text["latentgraph"])
    assert record == {"version": version("latentgraph"),
                      "nodes": {"CheckpointLoaderSimple": "1.0.0", "EmptyLatentImage": "1.0.0", "VAEDecode": "1.0.0",
                                "SaveImage": "1.0.0"},
                      "models": [{"node": "1", "class_type": "CheckpointLoaderSimple", "input": "ckpt_name",
                                  "name": "demo_sdxl_base.safetensors", "sha256": base, "autov2": base[:10]}]}

    code, out, _ = cli("inspect", png)
    assert code == 0
    assert out.splitlines() == [
        f"{png}: made by latentgraph {version('latentgraph')}",
        "graph: 4 nodes; outputs: 4 (SaveImage)",
        "",
        "nodes",
        "id  type                    version  title",
        "1   CheckpointLoaderSimple  1.0.0    Load Checkpoint",
        "2   EmptyLatentImage        1.0.0",
        "3   VAEDecode               1.0.0",
        "4   SaveImage               1.0.0",
        "",
        "models",
        "node  type                    input      file                        AutoV2      sha256",
        f"1     CheckpointLoaderSimple  ckpt_name  demo_sdxl_base.safetensors  {base[:10]}  {base}",
        "",
        "seeds",
        "(none)"]

    link = models / "checkpoints" / "demo_sdxl_base.safetensors"
    link.unlink()
    code, saved, err = run(tmp_path, models, png)
    assert code == 1 and not saved  # validation names the missing file before any hash is compared
    assert "node 1 (CheckpointLoaderSimple) input 'ckpt_name': Model file 'demo_sdxl_base.safetensors'" in err
    link.symlink_to(demo_models()["sdxl_refiner"])  # same name, other weights
    refiner = sha256(demo_models()["sdxl_refiner"])
    code, saved, err = run(tmp_path, models, png)
    assert code == 1 and not saved, err
    assert (f"model mismatch: node 1 (CheckpointLoaderSimple) ckpt_name 'demo_sdxl_base.safetensors': the file differs "
            f"here (sha256 {refiner}; the image was made with {base})") in err
    assert "--allow-model-mismatch" in err

    code, (again,), err = run(tmp_path, models, png, "--allow-model-mismatch")
    assert code == 0 and "warning: model mismatch: node 1 (CheckpointLoaderSimple)" in err
    with Image.open(again) as img:
        assert json.loads(img.text["latentgraph"])["models"][0]["sha256"] == refiner


async def test_the_canvas_asks_the_server_about_a_dropped_images_models(aiohttp_client, tmp_path, models):
    client = await aiohttp_client(create_app(make_config(tmp_path, models_dir=models)))
    base = sha256(demo_models()["sdxl_base"])
    record = {"version": "0.1.0", "nodes": {}, "models": [
        {"node": "1", "class_type": "CheckpointLoaderSimple", "input": "ckpt_name",
         "name": "demo_sdxl_base.safetensors", "sha256": base, "autov2": base[:10]},
        {"node": "5", "class_type": "VAELoader", "input": "vae_name", "name": "gone.safetensors", "sha256": "ab" * 32},
        {"node": "6", "class_type": "VAELoader", "input": "vae_name", "name": "broken", "sha256": "cd" * 32},
        {"node": "7", "class_type": "ControlNetLoader", "input": "control_net_name", "name": "cn.safetensors",
         "sha256": "ef" * 32}]}
    (models / "vae" / "broken").mkdir(parents=True)  # a diffusers folder with a dangling link: stat fails
    (models / "vae" / "broken" / "config.json").symlink_to(models / "nowhere")
    (models / "controlnet").mkdir()
    (models / "controlnet" / "cn.safetensors").write_bytes(b"other weights")
    resp = await client.post("/workflow/open", json={"workflow": json.loads(json.dumps(DECODE)), "latentgraph": record})
    body = await resp.json()
    assert resp.status == 200, body
    assert body["migrated"] == [] and body["workflow"]["1"]["_meta"] == {"title": "Load Checkpoint", "ver": "1.0.0"}
    assert body["mismatches"][0] == (f"node 5 (VAELoader) vae_name 'gone.safetensors': the file is missing here "
                                     f"(the image was made with sha256 {'ab' * 32})")
    assert body["mismatches"][1].startswith("node 6 (VAELoader) vae_name 'broken': the file cannot be read here (")
    assert body["mismatches"][2] == (f"node 7 (ControlNetLoader) control_net_name 'cn.safetensors': the file differs "
                                     f"here (sha256 {hashlib.sha256(b'other weights').hexdigest()}; the image was "
                                     f"made with {'ef' * 32})")
    assert len(body["mismatches"]) == 3
    resp = await client.post("/workflow/open", json={"workflow": DECODE, "latentgraph": "yes"})
    assert resp.status == 400 and (await resp.json())["error"]["type"] == "invalid_provenance"


def test_inspect_reads_what_it_can_of_an_odd_image(tmp_path):
    info = PngImagePlugin.PngInfo()
    info.add_text("prompt", json.dumps({"1": {"class_type": "KSampler", "inputs": {"seed": 7, "steps": 3}},
                                        "2": {"class_type": ["not", "a", "name"]}, "3": "junk"}))
    info.add_text("latentgraph", json.dumps("not a record"))
    Image.new("RGB", (4, 4)).save(tmp_path / "odd.png", pnginfo=info)
    code, out, err = cli("inspect", str(tmp_path / "odd.png"))
    assert code == 0 and "Traceback" not in err
    assert "no provenance record" in out and "1     KSampler  seed   7" in out


def test_every_loader_input_that_names_a_model_file_declares_its_folder(tmp_path):
    """Provenance hashes the files of inputs declared with model_folder: a loader input that lists model files
    without declaring it would silently go unhashed. With a file in every model folder, each combo that offers it
    declares a folder that holds it, and the folder the missing-model hints use is among them."""
    from nodes.catalog import INPUT_FOLDERS, MODEL_FOLDERS, input_folder
    from nodes.node import Environment, load_builtin_nodes

    for folder in {*MODEL_FOLDERS, *INPUT_FOLDERS.values()}:
        (tmp_path / folder).mkdir(exist_ok=True)
        (tmp_path / folder / f"probe_{folder}.safetensors").write_bytes(b"")
    env = Environment(models_dir=str(tmp_path))
    offered = []
    for class_type, spec in load_builtin_nodes().items():
        for name, inp in spec.inputs.items():
            probes = [o for o in inp.options(env) if o.startswith("probe_")] if inp.is_combo else []
            if not probes:
                continue
            offered.append((class_type, name))
            assert inp.model_folder, f"{class_type}.{name} lists model files but declares no model_folder"
            assert all(os.path.isfile(env.model_path(inp.model_folder, p)) for p in probes), (class_type, name)
            folders = (inp.model_folder,) if isinstance(inp.model_folder, str) else inp.model_folder
            assert input_folder(class_type, name) in folders, (class_type, name)
    assert {("CheckpointLoaderSimple", "ckpt_name"), ("UNETLoader", "unet_name"), ("TripleCLIPLoader", "clip_name3"),
            ("LoraLoader", "lora_name"), ("CLIPVisionLoader", "clip_name")} <= set(offered)
