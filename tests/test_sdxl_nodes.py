"""The SDXL nodes on the demo checkpoints: the fine-grained parts and ComfyUI's names compute the same things, the
conditioning carries what the paper's embedders need, latents/buckets/masks have the right shapes, and errors name
the node and input at fault."""
import os
import shutil

import pytest
import torch

from nodes.node import REGISTRY, Context, Interrupted, load_builtin_nodes
from nodes.sdxl.conditioning import base_vector
from sdxl_helpers import demo_models_dir, environment

load_builtin_nodes()
BASE, REFINER = "demo_sdxl_base.safetensors", "demo_sdxl_refiner.safetensors"
LONG = " ".join(["a very long prompt about a lighthouse on a cliff"] * 12)  # > 75 tokens: two windows


def call(kind, ctx, **values):
    return REGISTRY[kind].call(ctx, values).outputs


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return environment(demo_models_dir(tmp_path_factory), tmp_path_factory.mktemp("nodes"))


@pytest.fixture(scope="module")
def ctx(env):
    return Context("1", env)


@pytest.fixture(scope="module")
def base(ctx):
    return call("CheckpointLoaderSimple", ctx, ckpt_name=BASE)


@pytest.fixture(scope="module")
def refiner(ctx):
    return call("CheckpointLoaderSimple", ctx, ckpt_name=REFINER)


# -- text -----------------------------------------------------------------------------------------------------

def test_dual_encoder_channel_concat_is_the_base_context(ctx, base):
    clip = base[1]
    (l,) = call("SDXLClipLTextEncode", ctx, clip=clip, text="a photo of a cat")
    (g,) = call("SDXLBigGTextEncode", ctx, clip=clip, text="a photo of a cat")
    (cond,) = call("SDXLDualEncoderConcat", ctx, clip_l=l, clip_g=g)
    context, pooled = clip.encode("a photo of a cat", "a photo of a cat")
    width_l, width_g = l.hidden.shape[-1], g.hidden.shape[-1]
    assert cond[0][0].shape == (1, 77, width_l + width_g)  # channels, not tokens (real: 768 + 1280 = 2048)
    assert torch.equal(cond[0][0], context) and torch.equal(cond[0][1]["pooled_output"], pooled)
    assert torch.equal(cond[0][0][..., :width_l], l.hidden) and l.pooled is None
    (comfy,) = call("CLIPTextEncode", ctx, clip=clip, text="a photo of a cat")
    assert torch.equal(comfy[0][0], context)


def test_concat_pads_the_shorter_prompt_with_empty_windows(ctx, base):
    clip = base[1]
    (l,) = call("SDXLClipLTextEncode", ctx, clip=clip, text=LONG)
    (g,) = call("SDXLBigGTextEncode", ctx, clip=clip, text="a cat")
    (cond,) = call("SDXLDualEncoderConcat", ctx, clip_l=l, clip_g=g)
    context, pooled = clip.encode(LONG, "a cat")
    assert cond[0][0].shape[1] == 154 == context.shape[1]
    torch.testing.assert_close(cond[0][0], context, rtol=1e-5, atol=1e-5)
    (sdxl,) = call("CLIPTextEncodeSDXL", ctx, clip=clip, width=1024, height=768, crop_w=0, crop_h=0,
                   target_width=1024, target_height=768, text_g="a cat", text_l=LONG)
    torch.testing.assert_close(sdxl[0][0], context, rtol=1e-5, atol=1e-5)


def test_comfy_text_nodes_store_the_sdxl_extras(ctx, base, refiner):
    (cond,) = call("CLIPTextEncodeSDXL", ctx, clip=base[1], width=1024, height=768, crop_w=16, crop_h=32,
                   target_width=2048, target_height=1536, text_g="g", text_l="l")
    assert {k: v for k, v in cond[0][1].items() if k != "pooled_output"} == {
        "width": 1024, "height": 768, "crop_w": 16, "crop_h": 32, "target_width": 2048, "target_height": 1536}
    (ref,) = call("CLIPTextEncodeSDXLRefiner", ctx, ascore=2.5, width=512, height=640, text="x", clip=refiner[1])
    assert {k: v for k, v in ref[0][1].items() if k != "pooled_output"} == {
        "aesthetic_score": 2.5, "width": 512, "height": 640}
    assert ref[0][0].shape[-1] == refiner[0].unet.config.context_dim  # bigG only
    with pytest.raises(ValueError, match="CLIPTextEncodeSDXL: clip.*no CLIP-L"):
        call("CLIPTextEncodeSDXL", ctx, clip=refiner[1], width=1024, height=1024, crop_w=0, crop_h=0,
             target_width=1024, target_height=1024, text_g="g", text_l="l")


# -- conditioning ---------------------------------------------------------------------------------------------

def _cond(tokens=77, width=8, value=1.0, **extras):
    return [[torch.full((1, tokens, width), value), {"pooled_output": torch.full((1, 4), value), **extras}]]


def test_size_conditioning_defaults_to_the_output_size(ctx, base):
    model = base[0]
    (cond,) = call("CLIPTextEncode", ctx, clip=base[1], text="x")
    (sized,) = call("SDXLSizeConditioning", ctx, conditioning=cond, original_width=0, original_height=0,
                    crop_left=0, crop_top=0, target_width=0, target_height=0)
    pooled = cond[0][1]["pooled_output"]
    y = model.prepare(sized, "positive", (32, 48))[0]["y"]  # a 256×384 output
    assert torch.equal(y, base_vector(pooled, (256, 384), (0, 0), (256, 384)))
    (explicit,) = call("SDXLSizeConditioning", ctx, conditioning=cond, original_width=1024, original_height=512,
                       crop_left=8, crop_top=16, target_width=0, target_height=0)
    y = model.prepare(explicit, "positive", (32, 48))[0]["y"]
    assert torch.equal(y, base_vector(pooled, (512, 1024), (16, 8), (256, 384)))
    assert "width" not in cond[0][1]  # the input is not modified


def test_aesthetic_score_reaches_the_refiner_vector(ctx, refiner):
    model = refiner[0]
    (cond,) = call("SDXLBigGTextEncode", ctx, clip=refiner[1], text="x")
    (text,) = call("SDXLRefinerTextConditioning", ctx, clip_g=cond)
    (scored,) = call("SDXLAestheticScore", ctx, conditioning=text, aesthetic_score=2.5)
    as_negative = model.prepare(text, "negative", (16, 16))[0]["y"]  # unset: 2.5 for the negative prompt
    assert torch.equal(model.prepare(scored, "positive", (16, 16))[0]["y"], as_negative)
    assert not torch.equal(model.prepare(text, "positive", (16, 16))[0]["y"], as_negative)


def test_comfy_conditioning_operations(ctx):
    a, b = _cond(value=1.0, width=8), _cond(value=2.0, width=8) + _cond(value=3.0, width=8)
    (cat,) = call("ConditioningConcat", ctx, conditioning_to=a, conditioning_from=b)
    assert cat[0][0].shape == (1, 154, 8)  # token axis; only the first `from` entry is used
    assert torch.equal(cat[0][0][:, 77:], b[0][0]) and torch.equal(cat[0][1]["pooled_output"], a[0][1]["pooled_output"])
    with pytest.raises(ValueError, match="ConditioningConcat"):
        call("ConditioningConcat", ctx, conditioning_to=a, conditioning_from=_cond(width=4))
    (both,) = call("ConditioningCombine", ctx, conditioning_1=a, conditioning_2=b)
    assert len(both) == 3 and both[0] is a[0]
    (zero,) = call("ConditioningZeroOut", ctx, conditioning=_cond(width=8, height=64))
    assert not zero[0][0].any() and not zero[0][1]["pooled_output"].any() and zero[0][1]["height"] == 64
    (ranged,) = call("ConditioningSetTimestepRange", ctx, conditioning=a, start=0.2, end=0.8)
    assert ranged[0][1]["start_percent"] == 0.2 and ranged[0][1]["end_percent"] == 0.8
    assert "start_percent" not in a[0][1] and a[0][0].eq(1).all()


# -- latents --------------------------------------------------------------------------------------------------

def test_aspect_buckets_are_the_papers(ctx):
    from nodes.library.latent import ASPECT_BUCKETS, BUCKET_CHOICES

    assert len(ASPECT_BUCKETS) == 26 and (1024, 1024) in ASPECT_BUCKETS
    for w, h in ASPECT_BUCKETS:
        assert w % 64 == 0 and h % 64 == 0 and 0.85 < w * h / 1024 ** 2 < 1.05
    latent, w, h = call("SDXLEmptyLatent", ctx, resolution=BUCKET_CHOICES[ASPECT_BUCKETS.index((1152, 896))],
                        width=64, height=64, scale=1.0, batch_size=2)
    assert (w, h) == (1152, 896) and latent["samples"].shape == (2, 4, 112, 144) and not latent["samples"].any()
    _, w, h = call("SDXLEmptyLatent", ctx, resolution="1152x896 (1.29)", width=64, height=64, scale=0.25, batch_size=1)
    assert (w, h) == (288, 224)
    _, w, h = call("SDXLEmptyLatent", ctx, resolution="custom", width=200, height=96, scale=1.0, batch_size=1)
    assert (w, h) == (200, 96)
    (empty,) = call("EmptyLatentImage", ctx, width=200, height=96, batch_size=3)
    assert empty["samples"].shape == (3, 4, 12, 25)


def test_latent_upscale(ctx):
    samples = torch.randn(1, 4, 16, 24)
    (up,) = call("LatentUpscale", ctx, samples={"samples": samples}, upscale_method="bilinear", width=384, height=0,
                 crop="disabled")
    assert up["samples"].shape == (1, 4, 32, 48)  # height 0 keeps the aspect ratio
    (same,) = call("LatentUpscale", ctx, samples={"samples": samples}, upscale_method="bislerp", width=192,
                   height=128, crop="disabled")
    torch.testing.assert_close(same["samples"], samples)
    (cropped,) = call("LatentUpscale", ctx, samples={"samples": samples}, upscale_method="nearest-exact", width=128,
                      height=128, crop="center")
    assert torch.equal(cropped["samples"], samples[:, :, :, 4:20])
    (by,) = call("LatentUpscaleBy", ctx, samples={"samples": samples}, upscale_method="area", scale_by=1.5)
    assert by["samples"].shape == (1, 4, 24, 36)


def test_bislerp_keeps_the_length_of_latent_vectors(ctx):
    x = torch.zeros(1, 4, 1, 2)
    x[0, 0, 0, 0], x[0, 1, 0, 1] = 1.0, 1.0  # two orthogonal unit vectors side by side
    (up,) = call("LatentUpscale", ctx, samples={"samples": x}, upscale_method="bislerp", width=32, height=8,
                 crop="disabled")
    norms = up["samples"].norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms))  # bilinear dips (0.79 here)
    (lin,) = call("LatentUpscale", ctx, samples={"samples": x}, upscale_method="bilinear", width=32, height=8,
                  crop="disabled")
    assert lin["samples"].norm(dim=1).min() < 0.8


def test_vae_encode_for_inpaint_greys_the_mask_and_grows_it(ctx, base):
    vae = base[2]
    image = torch.rand(1, 68, 64, 3)  # 68 is cropped to 64 around the centre
    mask = torch.zeros(1, 68, 64)
    mask[:, 22:34, 20:30] = 1.0
    (latent,) = call("VAEEncodeForInpaint", ctx, pixels=image, vae=vae, mask=mask, grow_mask_by=6)
    grown = latent["noise_mask"][0, 0]
    assert grown.shape == (64, 64)
    rows, cols = grown.nonzero(as_tuple=True)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (20 - 3, 31 + 3, 20 - 3, 29 + 3)
    grey = image[:, 2:66].clone()
    grey[:, 20:32, 20:30] = 0.5
    (plain,) = call("VAEEncode", ctx, pixels=grey, vae=vae)
    assert torch.equal(latent["samples"], plain["samples"])


def test_vae_decode_tiled_and_plain_nodes(ctx, base):
    latent = {"samples": torch.randn(1, 4, 24, 24)}
    (plain,) = call("VAEDecode", ctx, samples=latent, vae=base[2])
    (fine,) = call("SDXLVAEDecode", ctx, samples=latent, vae=base[2], tiled=False, tile_size=512, overlap=64)
    (tiled,) = call("SDXLVAEDecode", ctx, samples=latent, vae=base[2], tiled=True, tile_size=128, overlap=32)
    assert plain.shape == tiled.shape == (1, 192, 192, 3) and torch.equal(plain, fine)
    assert (plain - tiled).abs().mean() < 0.1  # blended tiles approximate the whole decode


# -- sampling -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def conds(ctx, base, refiner):
    (pos,) = call("CLIPTextEncode", ctx, clip=base[1], text="a cat")
    (neg,) = call("CLIPTextEncode", ctx, clip=base[1], text="")
    (rpos,) = call("CLIPTextEncode", ctx, clip=refiner[1], text="a cat")
    (rneg,) = call("CLIPTextEncode", ctx, clip=refiner[1], text="")
    return pos, neg, rpos, rneg


def test_fine_grained_and_comfy_samplers_are_one_implementation(ctx, base, conds):
    pos, neg, _, _ = conds
    latent = {"samples": torch.zeros(1, 4, 16, 16)}
    common = dict(model=base[0], positive=pos, negative=neg, latent_image=latent, steps=3, cfg=5.0,
                  sampler_name="euler", scheduler="normal")
    (k,) = call("KSampler", ctx, seed=5, denoise=1.0, **common)
    (adv,) = call("KSamplerAdvanced", ctx, add_noise="enable", noise_seed=5, start_at_step=0, end_at_step=10000,
                  return_with_leftover_noise="disable", **common)
    (fine,) = call("SDXLSampler", ctx, seed=5, denoise=1.0, start_step=0, end_step=10000, add_noise=True,
                   return_leftover_noise=False, **common)
    assert torch.equal(k["samples"], adv["samples"]) and torch.equal(k["samples"], fine["samples"])
    (other,) = call("KSampler", ctx, seed=6, denoise=1.0, **common)
    assert not torch.equal(k["samples"], other["samples"])


def test_refiner_sampler_modes(ctx, base, refiner, conds):
    pos, neg, rpos, rneg = conds
    latent = {"samples": torch.zeros(1, 4, 16, 16)}
    common = dict(steps=6, cfg=5.0, sampler_name="euler", scheduler="normal")
    (noisy,) = call("KSamplerAdvanced", ctx, model=base[0], add_noise="enable", noise_seed=1, positive=pos,
                    negative=neg, latent_image=latent, start_at_step=0, end_at_step=4,
                    return_with_leftover_noise="enable", **common)
    (adv,) = call("KSamplerAdvanced", ctx, model=refiner[0], add_noise="disable", noise_seed=1, positive=rpos,
                  negative=rneg, latent_image=noisy, start_at_step=4, end_at_step=10000,
                  return_with_leftover_noise="disable", **common)
    (cont,) = call("SDXLRefinerSampler", ctx, model=refiner[0], positive=rpos, negative=rneg, latent_image=noisy,
                   seed=1, mode="continue", strength=0.3, start_step=4, **common)
    assert torch.equal(adv["samples"], cont["samples"])
    (weak,) = call("SDXLRefinerSampler", ctx, model=refiner[0], positive=rpos, negative=rneg, latent_image=cont,
                   seed=1, mode="sdedit", strength=0.05, start_step=0, **common)
    (strong,) = call("SDXLRefinerSampler", ctx, model=refiner[0], positive=rpos, negative=rneg, latent_image=cont,
                     seed=1, mode="sdedit", strength=1.0, start_step=0, **common)
    change = lambda out: (out["samples"] - cont["samples"]).abs().mean()  # noqa: E731
    assert 0 < change(weak) < change(strong)


def test_sampler_names_the_input_whose_conditioning_does_not_fit(ctx, base, conds):
    pos, _, _, rneg = conds
    with pytest.raises(ValueError, match=r"KSampler: input 'negative': the conditioning has \d+ channels per token "
                                         r".* sdxl_base"):
        call("KSampler", ctx, model=base[0], seed=0, steps=1, cfg=5.0, sampler_name="euler", scheduler="normal",
             positive=pos, negative=rneg, latent_image={"samples": torch.zeros(1, 4, 8, 8)}, denoise=1.0)


def test_sampler_reports_progress_with_previews_and_stops_when_interrupted(env, base, conds):
    pos, neg, _, _ = conds
    seen = []
    ctx = Context("3", env, progress=lambda node, i, n, preview: seen.append((node, i, n, preview.size)))
    values = dict(model=base[0], seed=0, steps=2, cfg=5.0, sampler_name="euler", scheduler="normal", positive=pos,
                  negative=neg, latent_image={"samples": torch.zeros(1, 4, 8, 8)}, denoise=1.0)
    call("KSampler", ctx, **values)
    assert seen == [("3", 1, 2, (8, 8)), ("3", 2, 2, (8, 8))]
    with pytest.raises(Interrupted):
        call("KSampler", Context("3", env, interrupted=lambda: True), **values)


# -- loaders --------------------------------------------------------------------------------------------------

def test_diffusers_folder_loads_the_same_weights(ctx, base):
    model, clip, vae = call("SDXLCheckpointLoader", ctx, ckpt_name="demo_sdxl_base_diffusers")
    assert model.kind == "sdxl_base" and clip.has_clip_l
    for a, b in ((model.unet, base[0].unet), (vae, base[2])):
        for (name, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items()):
            assert torch.equal(p, q), name


def test_loader_errors_and_fingerprint(env, tmp_path):
    spec = REGISTRY["CheckpointLoaderSimple"]
    ctx = Context("4", env)
    with pytest.raises(ValueError, match="CheckpointLoaderSimple: ckpt_name: '../x' points outside"):
        spec.call(ctx, {"ckpt_name": "../x"})
    with pytest.raises(FileNotFoundError, match="SDXLCheckpointLoader: ckpt_name: 'gone.safetensors' not found"):
        REGISTRY["SDXLCheckpointLoader"].call(ctx, {"ckpt_name": "gone.safetensors"})
    copy = tmp_path / "checkpoints"
    copy.mkdir()
    shutil.copy(os.path.join(env.models_dir, "checkpoints", BASE), copy / "mine.safetensors")
    mine = environment(str(tmp_path), tmp_path)
    before = spec.fingerprint({"ckpt_name": "mine.safetensors"}, mine)
    os.utime(copy / "mine.safetensors", ns=(1, 1))
    assert spec.fingerprint({"ckpt_name": "mine.safetensors"}, mine) != before  # a replaced file reloads


def test_residency_shares_a_checkpoint_between_loaders(env):
    from server.models import ModelResidency

    resources = ModelResidency("cpu")
    ctx = Context("1", env, resources=resources)
    a = call("CheckpointLoaderSimple", ctx, ckpt_name=BASE)
    b = call("SDXLCheckpointLoader", Context("9", env, resources=resources), ckpt_name=BASE)
    assert a[0].unet is b[0].unet and a[1] is b[1] and a[2] is b[2]
    assert resources.builds == 1
    # the nodes that use the modules make them resident through the same service
    (pos,) = call("CLIPTextEncode", ctx, clip=a[1], text="x")
    (latent,) = call("KSampler", ctx, model=a[0], seed=0, steps=1, cfg=1.0, sampler_name="euler", scheduler="normal",
                     positive=pos, negative=pos, latent_image={"samples": torch.zeros(1, 4, 8, 8)}, denoise=1.0)
    (image,) = call("VAEDecode", ctx, samples=latent, vae=a[2])
    assert image.shape == (1, 64, 64, 3) and resources.stats()["models"] >= 1


def test_standalone_vae_loads_from_the_vae_folder(base, tmp_path):
    from safetensors.torch import save_file

    (tmp_path / "vae").mkdir()
    save_file({k: v.contiguous() for k, v in base[2].state_dict().items()}, str(tmp_path / "vae" / "mine.safetensors"))
    env = environment(str(tmp_path), tmp_path)
    ctx = Context("2", env)
    assert REGISTRY["VAELoader"].inputs["vae_name"].options(env) == ["mine.safetensors"]
    (vae,) = call("VAELoader", ctx, vae_name="mine.safetensors")
    (same,) = call("SDXLVAELoader", ctx, vae_name="mine.safetensors")
    latent = {"samples": torch.randn(1, 4, 8, 8)}
    expected = call("VAEDecode", ctx, samples=latent, vae=base[2])[0]
    assert torch.equal(call("VAEDecode", ctx, samples=latent, vae=vae)[0], expected)
    assert torch.equal(call("VAEDecode", ctx, samples=latent, vae=same)[0], expected)


def test_symlinked_checkpoint_outside_models_folder_resolves(tmp_path):
    """Users link their model files in from other disks; a name that climbs out with '..' is still refused."""
    import pytest as _pytest

    from nodes.library.loaders import resolve
    from nodes.node import Environment

    elsewhere = tmp_path / "big_disk" / "sd_xl_base_1.0.safetensors"
    elsewhere.parent.mkdir()
    elsewhere.write_bytes(b"x")
    (tmp_path / "models" / "checkpoints").mkdir(parents=True)
    (tmp_path / "models" / "checkpoints" / "linked.safetensors").symlink_to(elsewhere)
    env = Environment(models_dir=str(tmp_path / "models"))
    assert open(resolve(env, "checkpoints", "linked.safetensors", "node 4 ckpt_name"), "rb").read() == b"x"
    with _pytest.raises(ValueError, match="outside"):
        resolve(env, "checkpoints", "../../big_disk/sd_xl_base_1.0.safetensors", "node 4 ckpt_name")
    with _pytest.raises(ValueError, match="outside"):
        resolve(env, "checkpoints", str(elsewhere), "node 4 ckpt_name")
