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
  by node and input without losing the prompts queued beside it;
- every loader input that names a model file declares ``model_folder`` (what provenance hashes).
"""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from oracles import demo_models, rel_err
from safetensors.torch import load_file, save_file
from sdxl_helpers import cli, demo_models_dir, environment, run_workflow

from nodes.checkpoints import detect_diffusion_model, load_diffusion_model
from nodes.families import load_builtin_families
from nodes.families.ldm import UNET_PREFIX, infer_unet_config, unet_diffusers_names
from nodes.families.sd3 import mmdit_to_diffusers
from nodes.mmdit.mmdit import SD3_MEDIUM, MMDiT
from nodes.node import REGISTRY, Context, load_builtin_nodes
from nodes.sdxl.unet import UNetModel
from nodes.weights import FLOAT8, UnsupportedCheckpoint
from tests.test_sd3 import TOL, mmdit_inputs, reference_velocity
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
    """A models folder: the demo checkpoints and text encoders; make-demo-model's diffusion_models/ (the SD3 MMDiT
    alone) plus each layout written here; the legacy unet/ folder; the SD3 checkpoint as a VAE file."""
    demo, shared = demo_models(), demo_models_dir(tmp_path_factory)
    root = tmp_path_factory.mktemp("unet_models")
    (root / "checkpoints").symlink_to(demo["sd3"].parent, target_is_directory=True)
    (root / "text_encoders").symlink_to(f"{shared}/text_encoders", target_is_directory=True)
    (root / "vae").mkdir()
    (root / "vae" / "sd3_vae.safetensors").symlink_to(demo["sd3"])
    rc, out, err = cli("make-demo-model", str(root / "made" / "checkpoints"))
    assert rc == 0, err
    dm, legacy = root / "diffusion_models", root / "unet"
    shutil.copytree(root / "made" / "diffusion_models", dm)
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
