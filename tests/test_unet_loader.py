"""UNETLoader ("Load Diffusion Model"): a diffusion model alone, from <models>/diffusion_models or the older
<models>/unet, for every family, in the original layout (with or without ``model.diffusion_model.``) and in
diffusers' (a file without its config, a transformer/ or unet/ folder, a pipeline folder holding one).

- the model equals the one the full checkpoint gives (bit for bit) and diffusers' own model read from the demo's
  diffusers folder (SD3Transformer2DModel, UNet2DConditionModel) within the parity tolerance;
- the family (SDXL base / refiner told apart without their text encoders, SD 1.x / 2.x, SD3) from the keys alone,
  also at full size on the meta device; SD 2.x's v-prediction probed from the file as the checkpoint path does;
- weight_dtype fp8: the matrices stored in float8 and upcast on use;
- through the entry points: UNETLoader + TripleCLIPLoader + VAELoader → KSampler → SaveImage for SD3 via
  ``latentgraph run`` and over HTTP, the folders in /object_info and /models/diffusion_models, a wrong file named
  by node and input without losing the prompts queued beside it; provenance hashes of every file it read;
- make-demo-model writes SD3's MMDiT alone into diffusion_models/ and its VAE alone into vae/, in sd3_medium.txt's
  layout.
"""
from __future__ import annotations

import copy
import hashlib
import json
import shutil

import numpy as np
import pytest
import torch
from oracles import demo_models, rel_err
from PIL import Image
from safetensors.torch import load_file, save_file
from sdxl_helpers import cli, demo_models_dir, environment, run_workflow

from nodes.checkpoints import detect_diffusion_model, load_vae
from nodes.demo import make_demo_diffusion_models
from nodes.families import load_builtin_families
from nodes.families.ldm import UNET_PREFIX, infer_unet_config, unet_diffusers_names
from nodes.families.sd3 import VAE_PREFIX, mmdit_to_diffusers
from nodes.mmdit.mmdit import SD3_MEDIUM, MMDiT
from nodes.node import REGISTRY, Context, load_builtin_nodes
from nodes.sdxl.unet import UNetModel
from tests.test_sd3 import KEYS, TOL, block_pattern, mmdit_inputs, reference_velocity
from tests.test_unet import compare
from tests.test_unet import inputs as unet_inputs

load_builtin_nodes()
SD3_FILE = "demo_sd3_medium_mmdit.safetensors"


def _unet_only(src, dst, prefix: str) -> None:
    """The checkpoint's diffusion model alone, its keys under ``prefix`` ("" or model.diffusion_model.)."""
    save_file({prefix + k[len(UNET_PREFIX):]: v for k, v in load_file(str(src)).items() if k.startswith(UNET_PREFIX)},
              str(dst))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A models folder: the demo checkpoints and text encoders; the demo diffusion_models/ (the SD3 MMDiT alone)
    plus each layout written here; the legacy unet/ folder; the SD3 checkpoint as a VAE file; the demo LoRAs."""
    demo, shared = demo_models(), demo_models_dir(tmp_path_factory)
    root = tmp_path_factory.mktemp("unet_models")
    (root / "checkpoints").symlink_to(demo["sd3"].parent, target_is_directory=True)
    (root / "text_encoders").symlink_to(f"{shared}/text_encoders", target_is_directory=True)
    (root / "loras").symlink_to(f"{shared}/loras", target_is_directory=True)
    (root / "vae").mkdir()
    (root / "vae" / "sd3_vae.safetensors").symlink_to(demo["sd3"])
    dm, legacy = root / "diffusion_models", root / "unet"
    make_demo_diffusion_models(dm)
    _unet_only(demo["sd3"], dm / "sd3_no_prefix.safetensors", "")
    shutil.copy(demo["sd3_diffusers"] / "transformer" / "diffusion_pytorch_model.safetensors",
                dm / "sd3_diffusers_layout.safetensors")  # without its config.json
    shutil.copytree(demo["sd3_diffusers"] / "transformer", dm / "sd3_transformer")
    (dm / "sd3_pipeline").symlink_to(demo["sd3_diffusers"], target_is_directory=True)
    legacy.mkdir()
    _unet_only(demo["sdxl_base"], legacy / "sdxl_base_unet.safetensors", UNET_PREFIX)
    _unet_only(demo["sdxl_refiner"], dm / "sdxl_refiner_unet.safetensors", "")
    shutil.copy(demo["sdxl_base_diffusers"] / "unet" / "diffusion_pytorch_model.safetensors",
                dm / "sdxl_base_diffusers_layout.safetensors")
    (dm / "sdxl_base_pipeline").symlink_to(demo["sdxl_base_diffusers"], target_is_directory=True)
    _unet_only(demo["sd1"], dm / "sd15_unet.safetensors", UNET_PREFIX)
    _unet_only(demo["sd2"], dm / "sd2_768v_unet.safetensors", "")
    (dm / "sub").mkdir()
    save_file({k: v for k, v in load_file(str(demo["sd3"])).items() if k.startswith("first_stage_model.")},
              str(dm / "sub" / "a_vae.safetensors"))  # not a diffusion model
    return root


@pytest.fixture(scope="module")
def ctx(models, tmp_path_factory):
    return Context("1", environment(str(models), tmp_path_factory.mktemp("unet_run")))


def call(ctx, kind, **values):
    return REGISTRY[kind].call(ctx, values).outputs


def unet_loader(ctx, name, weight_dtype="default"):
    (model,) = call(ctx, "UNETLoader", unet_name=name, weight_dtype=weight_dtype)
    return model


# ---- the models equal the checkpoints' and diffusers' -------------------------------------------------------------

SD3_LAYOUTS = [SD3_FILE, "sd3_no_prefix.safetensors", "sd3_diffusers_layout.safetensors", "sd3_transformer",
               "sd3_pipeline"]


def test_sd3_mmdit_alone_is_the_checkpoints_mmdit_and_diffusers(ctx):
    """Every layout of the MMDiT alone gives the MODEL the full checkpoint gives, bit for bit (the same weights
    through the same network), with SD3's flow sampling; and it matches diffusers' SD3Transformer2DModel read by
    diffusers from the demo's diffusers folder."""
    from diffusers import SD3Transformer2DModel

    (full, _, _) = call(ctx, "CheckpointLoaderSimple", ckpt_name="demo_sd3_medium.safetensors")
    inputs = mmdit_inputs()
    with torch.no_grad():
        want = full.module(*inputs)
    reference = SD3Transformer2DModel.from_pretrained(demo_models()["sd3_diffusers"] / "transformer").eval()
    assert rel_err(want, reference_velocity(reference, *inputs)) <= TOL
    for name in SD3_LAYOUTS:
        model = unet_loader(ctx, name)
        assert model.kind == "sd3" and isinstance(model.module, MMDiT), name
        assert model.latent_format.channels == 16 and model.sampling.shift == 3.0, name
        with torch.no_grad():
            got = model.module(*inputs)
        assert torch.equal(got, want), name
        assert rel_err(got, reference_velocity(reference, *inputs)) <= TOL, name


def test_sdxl_unet_alone_is_the_checkpoints_unet_and_diffusers(ctx):
    """The base UNet from the legacy unet/ folder (with the prefix), as a diffusers-layout file without its config
    and as a diffusers pipeline folder; the refiner's without the prefix: each is its checkpoint's UNet bit for bit,
    base or refiner told from the UNet alone, and the base matches diffusers' UNet2DConditionModel."""
    from diffusers import UNet2DConditionModel

    reference = UNet2DConditionModel.from_pretrained(demo_models()["sdxl_base_diffusers"] / "unet").eval()
    for kind, checkpoint, names in (
            ("sdxl_base", "demo_sdxl_base.safetensors",
             ["sdxl_base_unet.safetensors", "sdxl_base_diffusers_layout.safetensors", "sdxl_base_pipeline"]),
            ("sdxl_refiner", "demo_sdxl_refiner.safetensors", ["sdxl_refiner_unet.safetensors"])):
        (full, _, _) = call(ctx, "CheckpointLoaderSimple", ckpt_name=checkpoint)
        args = unet_inputs(full.module.config)[:4]
        with torch.no_grad():
            want = full.module(*args)
        for name in names:
            model = unet_loader(ctx, name)
            assert model.kind == kind and isinstance(model.module, UNetModel), name
            assert model.module.config == full.module.config, name
            with torch.no_grad():
                assert torch.equal(model.module(*args), want), name
            if kind == "sdxl_base":
                err, *_ = compare(model.module, reference)
                assert err <= TOL, (name, err)


def test_sd1_and_sd2_unets_alone_with_v_prediction_probed_from_the_file(ctx):
    """SD 1.x (conv projections) and SD 2.x (linear) told apart from the UNet alone; the SD 2.x 768-v UNet without
    its prefix is probed to v-prediction as its checkpoint is; the weights are the checkpoints'."""
    for name, checkpoint, kind in (("sd15_unet.safetensors", "demo_sd15.safetensors", "sd1"),
                                   ("sd2_768v_unet.safetensors", "demo_sd2_768v.safetensors", "sd2")):
        (full, _, _) = call(ctx, "CheckpointLoaderSimple", ckpt_name=checkpoint)
        model = unet_loader(ctx, name)
        assert model.kind == kind and type(model.sampling) is type(full.sampling), name
        ours, theirs = model.module.state_dict(), full.module.state_dict()
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours), name
    assert type(unet_loader(ctx, "sd2_768v_unet.safetensors").sampling).__name__ == "DiscreteV"


def test_full_size_diffusion_models_are_told_apart_from_their_keys():
    """At full size on the meta device: each family's diffusion model alone, with and without the prefix, and in
    diffusers' names, is detected as its family (SDXL base and refiner without their text encoders)."""
    for name, family in load_builtin_families().items():
        shapes = {k: v for k, v in family.full_size_shapes().items() if k.startswith(UNET_PREFIX)}
        bare = {k[len(UNET_PREFIX):]: v for k, v in shapes.items()}
        assert detect_diffusion_model(shapes) == detect_diffusion_model(bare) == name
        if name == "sd3":
            with torch.device("meta"):
                mmdit = MMDiT(SD3_MEDIUM)
                diffusers = mmdit_to_diffusers(mmdit.state_dict(), SD3_MEDIUM)
            theirs = {k: tuple(v.shape) for k, v in diffusers.items()}
        else:
            names = unet_diffusers_names(infer_unet_config(bare))
            theirs = {names[k]: v for k, v in bare.items()}
        assert detect_diffusion_model(theirs) == name


@pytest.mark.skipif(not KEYS.is_dir(), reason=f"reference key lists not found at {KEYS}")
def test_make_demo_model_writes_the_mmdit_and_vae_alone_in_sd3_mediums_layout(tmp_path, monkeypatch):
    """make-demo-model's diffusion_models/ file holds exactly sd3_medium.txt's model.diffusion_model.* tensor names
    (the tiny one has 2 joint blocks where the real one has 24): the demo checkpoint's MMDiT; its vae/ file the
    checkpoint's VAE under sd3_medium.txt's first_stage_model.* names less the prefix."""
    import nodes.demo

    checkpoint = load_file(str(demo_models()["sd3"]))  # before make_demo_models is patched out
    monkeypatch.setattr(nodes.demo, "make_demo_models", lambda folder: {})  # the checkpoints have their own tests
    rc, out, err = cli("make-demo-model", str(tmp_path / "models" / "checkpoints"))
    assert rc == 0, err
    written = tmp_path / "models" / "diffusion_models" / SD3_FILE
    assert str(written) in out.splitlines()
    ref = {line.split("\t")[0] for line in (KEYS / "sd3_medium.txt").read_text().splitlines()
           if not line.startswith("#")}
    alone = load_file(str(written))
    assert block_pattern(alone) == block_pattern({k for k in ref if k.startswith(UNET_PREFIX)})
    assert all(torch.equal(v, checkpoint[k]) for k, v in alone.items())

    # vae/: the checkpoint's VAE alone, without first_stage_model. (sd3_vae.safetensors); the tiny VAE is narrower
    # than the real one, so it lacks two of its channel-changing shortcuts
    vae = tmp_path / "models" / "vae" / "demo_sd3_vae.safetensors"
    assert str(vae) in out.splitlines()
    alone = load_file(str(vae))
    real = {k.removeprefix(VAE_PREFIX) for k in ref if k.startswith(VAE_PREFIX)}
    assert set(alone) <= real and {k.rsplit(".", 1)[0] for k in real - set(alone)} == \
        {"decoder.up.1.block.0.nin_shortcut", "encoder.down.2.block.0.nin_shortcut"}
    assert all(torch.equal(v, checkpoint[VAE_PREFIX + k]) for k, v in alone.items())
    loaded = load_vae(vae)  # as VAELoader reads it: SD3's 16-channel latent space, told from the shapes
    assert loaded.config.z_channels == 16 and loaded.config.shift_factor == 0.0609


# ---- weight_dtype -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("weight_dtype,stored", [("fp8_e4m3fn", torch.float8_e4m3fn),
                                                 ("fp8_e4m3fn_fast", torch.float8_e4m3fn),
                                                 ("fp8_e5m2", torch.float8_e5m2)])
def test_fp8_weight_dtype_stores_float8_and_upcasts_on_use(ctx, weight_dtype, stored):
    """The matrices are held in float8 (under a quarter of the bytes in all) and each use computes with them upcast:
    the output is the default model's with its matrices rounded to float8 and back, computed independently here.
    The default model, loaded beside it, keeps its float32 weights."""
    default, model = unet_loader(ctx, SD3_FILE), unet_loader(ctx, SD3_FILE, weight_dtype)
    assert model.module is not default.module

    def matrices(m):  # what the model holds of its learned matrices and kernels
        return [v for k, v in m.state_dict().items() if v.ndim >= 2 and k != "pos_embed"]

    assert {v.dtype for v in matrices(model.module)} == {stored}
    assert sum(v.nbytes for v in matrices(model.module)) * 4 == sum(v.nbytes for v in matrices(default.module))
    assert {p.dtype for p in default.module.parameters()} == {torch.float32}
    rounded = copy.deepcopy(default.module)
    for p in rounded.parameters():
        if p.ndim >= 2:
            p.data = p.data.to(stored).float()
    inputs = mmdit_inputs()
    with torch.no_grad():
        got, want, exact = model.module(*inputs), rounded(*inputs), default.module(*inputs)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)
    assert 1e-3 < rel_err(got, exact) < 0.5  # float8 rounding, not another model


def test_fp8_unet_samples_through_ksampler(ctx):
    """An SDXL UNet stored in float8 runs a sampler (its convolutions and norms read upcast weights)."""
    model = unet_loader(ctx, "sdxl_base_unet.safetensors", "fp8_e4m3fn")
    (clip_model, clip, _) = call(ctx, "CheckpointLoaderSimple", ckpt_name="demo_sdxl_base.safetensors")
    (cond,) = call(ctx, "CLIPTextEncode", clip=clip, text="a cat")
    (latent,) = call(ctx, "EmptyLatentImage", width=64, height=64, batch_size=1)
    outs = [call(ctx, "KSampler", model=m, seed=1, steps=2, cfg=5.0, sampler_name="euler", scheduler="normal",
                 positive=cond, negative=cond, latent_image=latent, denoise=1.0)[0]["samples"]
            for m in (model, clip_model)]
    assert outs[0].isfinite().all() and 1e-3 < rel_err(outs[0], outs[1]) < 0.5


def test_a_lora_patches_the_float8_stored_unet(ctx):
    """LoraLoaderModelOnly on a float8-stored UNet: the patched weights are stored in float8 too, the LoRA changes
    the output as it does on the default model, and the base model keeps its weights."""
    args = unet_inputs(unet_loader(ctx, "sdxl_base_unet.safetensors").module.config)[:4]
    out = {}
    for weight_dtype in ("default", "fp8_e4m3fn"):
        base = unet_loader(ctx, "sdxl_base_unet.safetensors", weight_dtype)
        (patched,) = call(ctx, "LoraLoaderModelOnly", model=base, lora_name="demo_sdxl_lora.safetensors",
                          strength_model=1.0)
        with torch.no_grad():
            out[weight_dtype] = (base.module(*args), patched.module(*args))
        if weight_dtype != "default":
            held = [v.dtype for k, v in patched.module.state_dict().items() if v.ndim >= 2]
            assert set(held) == {torch.float8_e4m3fn}
    (plain, lora), (plain8, lora8) = out["default"], out["fp8_e4m3fn"]
    assert rel_err(lora, plain) > 1e-2  # the LoRA does something
    assert rel_err(lora8 - plain8, lora - plain) < 0.5  # and the same on float8 weights, up to their rounding


# ---- errors ---------------------------------------------------------------------------------------------------------

def test_a_file_that_is_no_diffusion_model_is_named_with_node_and_input(ctx):
    with pytest.raises(ValueError, match=r"UNETLoader: unet_name: 'sub/a_vae.safetensors': found a standalone VAE"):
        unet_loader(ctx, "sub/a_vae.safetensors")
    with pytest.raises(FileNotFoundError, match=r"UNETLoader: unet_name: 'nope.safetensors' not found in "
                                                r"\S+/diffusion_models or \S+/unet"):
        unet_loader(ctx, "nope.safetensors")
    with pytest.raises(ValueError, match=r"UNETLoader: unet_name: .*points outside"):
        unet_loader(ctx, "../checkpoints/demo_sd3_medium.safetensors")


# ---- through the entry points ---------------------------------------------------------------------------------------

def sd3_prompt(model_loader: dict, vae: list, prefix: str) -> dict:
    """A shared SD3 workflow's shape: the diffusion model, TripleCLIPLoader's text encoders and a VAE from their own
    loaders → KSampler → SaveImage (API format)."""
    return {
        "1": model_loader,
        "2": {"class_type": "TripleCLIPLoader", "inputs": {"clip_name1": "demo_clip_l.safetensors",
                                                           "clip_name2": "demo_clip_g.safetensors",
                                                           "clip_name3": "demo_t5xxl_fp8_e4m3fn.safetensors"}},
        "3": {"class_type": "VAELoader", "inputs": {"vae_name": "sd3_vae.safetensors"}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "a lighthouse at dusk", "clip": ["2", 0]}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["2", 0]}},
        "6": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "7": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "seed": 3, "steps": 3, "cfg": 4.5, "sampler_name": "euler", "scheduler": "sgm_uniform",
            "positive": ["4", 0], "negative": ["5", 0], "latent_image": ["6", 0], "denoise": 1.0}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": vae}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": prefix}},
    }


UNET_ONLY = {"class_type": "UNETLoader", "inputs": {"unet_name": SD3_FILE, "weight_dtype": "default"}}


def test_sd3_unet_only_workflow_runs_through_the_cli_as_the_checkpoint_does(models, tmp_path):
    """latentgraph run: UNETLoader + TripleCLIPLoader + VAELoader gives the picture the same graph gives with the
    checkpoint's MODEL and VAE, pixel for pixel, and records each file's SHA-256."""
    env = environment(str(models), tmp_path)
    checkpoint = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "demo_sd3_medium.safetensors"}}
    pictures, records = {}, {}
    for name, prompt in (("unet", sd3_prompt(UNET_ONLY, ["3", 0], "sd3_unet_only")),
                         ("checkpoint", sd3_prompt(checkpoint, ["1", 2], "sd3_checkpoint"))):
        (tmp_path / f"{name}.json").write_text(json.dumps(prompt))
        (path,) = run_workflow(str(tmp_path / f"{name}.json"), env).values()
        with Image.open(path) as image:
            pictures[name] = np.asarray(image.convert("RGB"))
            records[name] = json.loads(image.text["latentgraph"])["models"]
    assert pictures["unet"].shape == (64, 64, 3) and pictures["unet"].std() > 1
    assert np.array_equal(pictures["unet"], pictures["checkpoint"])
    # provenance names every model file the graph read, the diffusion model and text encoders included
    hashed = {(m["class_type"], m["input"]): m["sha256"] for m in records["unet"]}
    assert set(hashed) == {("UNETLoader", "unet_name"), ("VAELoader", "vae_name")} | {
        ("TripleCLIPLoader", f"clip_name{i}") for i in (1, 2, 3)}
    assert hashed["UNETLoader", "unet_name"] == hashlib.sha256(
        (models / "diffusion_models" / SD3_FILE).read_bytes()).hexdigest()


async def test_http_lists_the_folders_runs_the_workflow_and_keeps_the_queue_on_a_wrong_file(aiohttp_client, models,
                                                                                            tmp_path):
    """/object_info and /models/diffusion_models list diffusion_models/ and the older unet/ merged (files and
    diffusers folders); a prompt whose UNETLoader names a VAE fails naming node and input, and the prompts queued
    before and after it complete."""
    from server_helpers import make_config, wait_history

    from server.app import create_app

    cfg = make_config(tmp_path, models_dir=models)
    client = await aiohttp_client(create_app(cfg))
    listed = (await (await client.get("/object_info/UNETLoader")).json())["UNETLoader"]["input"]["required"]
    files = await (await client.get("/models/diffusion_models")).json()
    assert listed["unet_name"][0] == files
    assert {SD3_FILE, "sd3_transformer", "sd3_pipeline", "sdxl_base_unet.safetensors", "sub/a_vae.safetensors"} <= \
        set(files)
    assert listed["weight_dtype"][0] == ["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"]
    assert await (await client.get("/models/unet")).json() == ["sdxl_base_unet.safetensors"]
    wrong = {**UNET_ONLY, "inputs": {**UNET_ONLY["inputs"], "unet_name": "sub/a_vae.safetensors"}}
    ids = []
    for loader, prefix in ((UNET_ONLY, "first"), (wrong, "wrong"), (UNET_ONLY, "last")):
        resp = await client.post("/prompt", json={"prompt": sd3_prompt(loader, ["3", 0], prefix)})
        assert resp.status == 200, await resp.text()
        ids.append((await resp.json())["prompt_id"])
    first, bad, last = [await wait_history(client, i, 300) for i in ids]
    for entry in (first, last):
        assert entry["status"]["completed"] and entry["outputs"]["9"]["images"]
    assert not bad["status"]["completed"]
    (error,) = [m[1] for m in bad["status"]["messages"] if m[0] == "execution_error"]
    assert error["node_id"] == "1" and error["node_type"] == "UNETLoader"
    assert "UNETLoader: unet_name: 'sub/a_vae.safetensors': found a standalone VAE" in error["exception_message"]
