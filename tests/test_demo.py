"""The demo models: deterministic, real single-file layout, a diffusers copy that diffusers itself loads, and
weights that give non-constant outputs."""
import hashlib
import os

import torch
from safetensors.torch import load_file

from nodes.catalog import ensure_demo_models
from nodes.checkpoints import load_checkpoint
from nodes.demo import make_demo_models, notice
from nodes.sdxl.vae import vae_decode
from tests.oracles import demo_models, rel_err


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_deterministic(tmp_path):
    again = make_demo_models(tmp_path)
    for kind in ("sdxl_base", "sdxl_refiner"):
        assert digest(again[kind]) == digest(demo_models()[kind])
    unet = "unet/diffusion_pytorch_model.safetensors"
    assert digest(again["sdxl_base_diffusers"] / unet) == digest(demo_models()["sdxl_base_diffusers"] / unet)


def test_real_layout_markers():
    sd = load_file(str(demo_models()["sdxl_base"]))
    assert sd["conditioner.embedders.0.transformer.text_model.embeddings.position_ids"].dtype == torch.int64
    assert sd["conditioner.embedders.1.model.logit_scale"].shape == ()
    assert "conditioner.embedders.0.model.text_projection" in load_file(str(demo_models()["sdxl_refiner"]))
    assert "produce noise" in notice("SDXL checkpoints") and "checkpoints" in notice("SDXL checkpoints")


def test_outputs_are_not_constant():
    ck = load_checkpoint(demo_models()["sdxl_base"])
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        context, pooled = ck.text.encode("a cat", "a cat")
        y = torch.cat([pooled, torch.randn(1, 6 * 256, generator=g)], 1)
        eps = ck.unet(torch.randn(1, 4, 8, 8, generator=g), torch.tensor([500.0]), context, y)
        image = vae_decode(ck.vae, torch.randn(1, 4, 8, 8, generator=g))
    assert eps.std() > 0.05 and torch.isfinite(eps).all()
    assert image.std() > 0.01


def test_diffusers_loads_the_diffusers_copy():
    """diffusers' own from_pretrained reads our diffusers-layout copy (config and names) with nothing missing,
    and computes what our loader computes from the single file."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    folder = demo_models()["sdxl_base_diffusers"]
    unet, info = UNet2DConditionModel.from_pretrained(folder / "unet", output_loading_info=True)
    vae, vae_info = AutoencoderKL.from_pretrained(folder / "vae", output_loading_info=True)
    for i in (info, vae_info):
        assert not i["missing_keys"] and not i["unexpected_keys"] and not i["mismatched_keys"]
    ours = load_checkpoint(demo_models()["sdxl_base"], with_text=False)
    g = torch.Generator().manual_seed(1)
    x, ctx = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 77, 64, generator=g)
    pooled, ids = torch.randn(1, 32, generator=g), torch.tensor([[64.0, 64, 0, 0, 64, 64]])
    from nodes.sdxl.embeddings import timestep_embedding
    y = torch.cat([pooled, timestep_embedding(ids.flatten(), 256).reshape(1, -1)], 1)
    with torch.no_grad():
        want = unet(x, torch.tensor([300.0]), encoder_hidden_states=ctx,
                    added_cond_kwargs={"text_embeds": pooled, "time_ids": ids}).sample
        assert rel_err(ours.unet(x, torch.tensor([300.0]), ctx, y), want) <= 1e-4
        z = torch.randn(1, 4, 8, 8, generator=g)
        assert rel_err(ours.vae.decode(z), vae.decode(z).sample) <= 1e-4


def test_a_demo_folder_made_before_the_separate_parts_gets_them_and_real_models_are_left_alone(tmp_path):
    """What serve runs at start (catalog.ensure_demo_models): a models folder holding only demo checkpoints, made
    before make-demo-model wrote the SD3 VAE alone into vae/, gets each part whose folder is empty (so shipped
    sd3_unet_only runs); a folder holding the user's own file, or a models folder with a real checkpoint, is not
    touched."""
    old = tmp_path / "old"
    (old / "checkpoints").mkdir(parents=True)
    os.link(demo_models()["sd3"], old / "checkpoints" / "demo_sd3_medium.safetensors")
    (old / "text_encoders").mkdir()
    (old / "text_encoders" / "mine.safetensors").write_bytes(b"")
    assert "only the random-weight demo models" in ensure_demo_models(old / "checkpoints")
    assert sorted(p.name for p in (old / "vae").iterdir()) == ["demo_sd3_vae.safetensors"]
    assert sorted(p.name for p in (old / "diffusion_models").iterdir()) == ["demo_sd3_medium_mmdit.safetensors"]
    assert sorted(p.name for p in (old / "text_encoders").iterdir()) == ["mine.safetensors"]
    assert len(list((old / "checkpoints").iterdir())) == 1  # the checkpoints are not rewritten

    real = tmp_path / "real"
    (real / "checkpoints").mkdir(parents=True)
    os.link(demo_models()["sd3"], real / "checkpoints" / "sd3_medium.safetensors")
    assert ensure_demo_models(real / "checkpoints") is None
    assert sorted(p.name for p in real.iterdir()) == ["checkpoints"]
