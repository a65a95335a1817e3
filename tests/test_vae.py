"""VAE parity with diffusers' AutoencoderKL (tiny, f=8) through our loaders, the image helpers, tiling."""
import pytest
import torch
from safetensors.torch import load_file, save_file

from nodes.checkpoints import load_vae
from nodes.sdxl.vae import upsample_conv, vae_decode, vae_encode
from tests.oracles import demo_models, diffusers_vae, load_single_file_into_diffusers, rel_err, rerandomize

TOL = 1e-4
# Tiled output differs from untiled because the GroupNorm statistics of the full-resolution levels are per tile
# (the mid block's attention runs whole); overlaps are blended linearly. Stated tolerances, measured on the tiny
# random VAE (which leans on GroupNorm statistics harder than a trained one): decode with 16-latent tiles,
# overlap 8: mean |Δ| ≤ 0.02 on [0, 1] images (measured 0.011); encode with 128-px tiles, overlap 64: mean |Δ|
# ≤ 10% of the mean |latent| (measured 6%).
TILED_DECODE_TOL = 0.02
TILED_ENCODE_TOL = 0.10


def pixels(size=64, batch=1, seed=0):
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def check(ours, ref):
    x = pixels()
    with torch.no_grad():
        mean, logvar = ours.encode(x)
        dist = ref.encode(x).latent_dist
        assert rel_err(mean, dist.mean) <= TOL
        assert rel_err(logvar, dist.logvar) <= TOL
        z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
        assert rel_err(ours.decode(z), ref.decode(z).sample) <= TOL


@pytest.fixture(scope="module")
def demo_ref():
    ref = diffusers_vae()
    load_single_file_into_diffusers(demo_models()["sdxl_base"], vae=ref)
    return ref


def test_single_file_parity(demo_ref):
    check(load_vae(demo_models()["sdxl_base"]), demo_ref)


def test_standalone_original_layout(tmp_path, demo_ref):
    sd = {k[len("first_stage_model."):]: v for k, v in load_file(str(demo_models()["sdxl_base"])).items()
          if k.startswith("first_stage_model.")}
    save_file(sd, str(tmp_path / "vae.safetensors"))
    check(load_vae(tmp_path / "vae.safetensors"), demo_ref)


def test_diffusers_folder_and_file(tmp_path):
    ref = rerandomize(diffusers_vae(), seed=5)
    ref.save_pretrained(tmp_path / "vae")
    check(load_vae(tmp_path / "vae"), ref)
    check(load_vae(tmp_path), ref)  # a pipeline folder with vae/
    # a lone diffusers-layout file without config: the config comes from the shapes
    check(load_vae(tmp_path / "vae" / "diffusion_pytorch_model.safetensors"), ref)


def test_image_helpers_scale_and_range(demo_ref):
    vae = load_vae(demo_models()["sdxl_base"])
    image = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        latent = vae_encode(vae, image)
        ref_latent = demo_ref.encode(image.permute(0, 3, 1, 2) * 2 - 1).latent_dist.mean * 0.13025
        assert rel_err(latent, ref_latent) <= TOL
        decoded = vae_decode(vae, latent)
        ref_image = ((demo_ref.decode(latent / 0.13025).sample + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)
    assert decoded.shape == (1, 64, 64, 3)
    assert rel_err(decoded, ref_image) <= TOL


def test_sample_uses_logvar(demo_ref):
    vae = load_vae(demo_models()["sdxl_base"])
    x = pixels(batch=1)
    with torch.no_grad():
        mean, logvar = vae.encode(x)
        a = vae.encode_sample(x, torch.Generator().manual_seed(0))
        b = vae.encode_sample(x, torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    noise = (a - mean) / torch.exp(0.5 * logvar)
    assert torch.allclose(noise, torch.randn(mean.shape, generator=torch.Generator().manual_seed(0)), atol=1e-4)


def test_tiled_matches_untiled():
    vae = load_vae(demo_models()["sdxl_base"])
    g = torch.Generator().manual_seed(3)
    latent = torch.randn(1, 4, 24, 32, generator=g)
    image = torch.rand(1, 192, 256, 3, generator=g)
    with torch.no_grad():
        full, tiled = vae_decode(vae, latent), vae_decode(vae, latent, tiled=True, tile=16, overlap=8)
        assert tiled.shape == full.shape
        dec = (tiled - full).abs().mean().item()
        z_full, z_tiled = vae_encode(vae, image), vae_encode(vae, image, tiled=True, tile=128, overlap=64)
        enc = (z_tiled - z_full).abs().mean().item() / z_full.abs().mean().item()
    print(f"tiled decode mean |Δ| {dec:.4f}, tiled encode relative mean |Δ| {enc:.4f}")
    assert dec <= TILED_DECODE_TOL, dec
    assert enc <= TILED_ENCODE_TOL, enc
    assert dec > 0 and enc > 0  # the tiled path really ran in tiles


def test_fp16_vae_decodes_in_fp32():
    vae = load_vae(demo_models()["sdxl_base"], dtype=torch.float16)
    ref = load_vae(demo_models()["sdxl_base"])
    latent = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        out = vae_decode(vae, latent)
        want = vae_decode(ref, latent)
    assert vae.dtype == torch.float16 and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert (out - want).abs().max() < 0.02  # only the fp16 weight rounding remains


@pytest.mark.parametrize("shape", [(1, 8, 4, 4), (2, 6, 5, 7)])
def test_upsample_conv_equals_nearest_upsampling_then_the_conv(shape):
    """The decoder's upsampling on CPU (four 2×2 phase convs) against torch's plain nearest 2× + 3×3 conv."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(*shape, generator=g)
    weight, bias = torch.randn(5, shape[1], 3, 3, generator=g), torch.randn(5, generator=g)
    want = torch.nn.functional.conv2d(torch.nn.functional.interpolate(x, scale_factor=2.0, mode="nearest"),
                                      weight, bias, padding=1)
    got = upsample_conv(x, weight, bias)
    assert got.shape == want.shape and rel_err(got, want) <= 1e-6
