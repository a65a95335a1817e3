"""UNet parity with diffusers' UNet2DConditionModel on tiny random models, weights loaded by our loaders from
files in both layouts."""
import pytest
import torch

from nodes.checkpoints import load_checkpoint, load_diffusers_unet
from nodes.sdxl.embeddings import timestep_embedding
from nodes.sdxl.unet import UNetModel
from tests.oracles import demo_models, diffusers_unet, load_single_file_into_diffusers, rel_err, rerandomize

TOL = 1e-4


@pytest.fixture(scope="module")
def demo():
    return demo_models()


def inputs(unet_cfg, batch=2, size=16, fourier=256, seed=1):
    g = torch.Generator().manual_seed(seed)
    pooled_w = 32
    n_ids = (unet_cfg.adm_in_channels - pooled_w) // fourier
    x = torch.randn(batch, 4, size, size, generator=g)
    t = torch.tensor([999.0, 37.5])[:batch]
    context = torch.randn(batch, 77, unet_cfg.context_dim, generator=g)
    pooled = torch.randn(batch, pooled_w, generator=g)
    time_ids = torch.tensor([[1024.0, 768, 16, 32, 1024, 768, 6.0][:n_ids]] * batch)
    # Our y built here from the shared Fourier embedding; diffusers builds its own from time_ids.
    y = torch.cat([pooled, timestep_embedding(time_ids.flatten(), fourier).reshape(batch, -1)], dim=1)
    return x, t, context, y, {"text_embeds": pooled, "time_ids": time_ids}


def compare(ours: UNetModel, ref, size=16):
    x, t, context, y, added = inputs(ours.config, size=size)
    with torch.no_grad():
        got = ours(x, t, context, y)
        want = ref(x, t, encoder_hidden_states=context, added_cond_kwargs=added).sample
    return rel_err(got, want), got, want, (x, t, context, y)


@pytest.mark.parametrize("kind,name", [("sdxl_base", "base"), ("sdxl_refiner", "refiner")])
def test_single_file_parity(demo, kind, name):
    ours = load_checkpoint(demo[kind], with_text=False).unet
    ref = diffusers_unet(name)
    load_single_file_into_diffusers(demo[kind], unet=ref)
    err, got, _, (x, t, context, y) = compare(ours, ref)
    assert err <= TOL, err
    # the conditioning reaches the output well above the tolerance (a bug there could not hide in it)
    with torch.no_grad():
        assert rel_err(ours(x, t, context, y + 0.5), got) > 100 * TOL
        assert rel_err(ours(x, t, context * 1.1, y), got) > 100 * TOL
        assert rel_err(ours(x, t + 10, context, y), got) > 100 * TOL


@pytest.mark.parametrize("name", ["base", "heads16"])
def test_diffusers_folder_parity(tmp_path, name):
    ref = rerandomize(diffusers_unet(name), seed=3)
    ref.save_pretrained(tmp_path / "unet")
    ours, cfg = load_diffusers_unet(tmp_path / "unet")
    assert cfg.num_head_channels == (16 if name == "heads16" else 64)
    err, *_ = compare(ours, ref)
    assert err <= TOL, err


def test_conditioning_paths_match(demo):
    """emb = time_embed(t) + label_emb(y) and the first cross-attention block, compared directly."""
    ours = load_checkpoint(demo["sdxl_base"], with_text=False).unet
    ref = diffusers_unet("base")
    load_single_file_into_diffusers(demo["sdxl_base"], unet=ref)
    x, t, context, y, added = inputs(ours.config)
    with torch.no_grad():
        emb = ours.time_embed(timestep_embedding(t, 32)) + ours.label_emb(y)
        time_ids = ref.add_time_proj(added["time_ids"].flatten()).reshape(2, -1)
        ref_emb = ref.time_embedding(ref.time_proj(t)) + ref.add_embedding(torch.cat([added["text_embeds"], time_ids], 1))
        assert rel_err(emb, ref_emb) <= TOL
        h = torch.randn(2, 64, 8, 8)
        got = ours.input_blocks[4][1](h, context)
        want = ref.down_blocks[1].attentions[0](h, encoder_hidden_states=context).sample
        assert rel_err(got, want) <= TOL


def test_odd_latent_size(demo):
    """Latents not divisible by 4 (e.g. 1000 px wide → 125) still run: upsamples follow the skips' sizes."""
    ours = load_checkpoint(demo["sdxl_base"], with_text=False).unet
    ref = diffusers_unet("base")
    load_single_file_into_diffusers(demo["sdxl_base"], unet=ref)
    x, t, context, y, added = inputs(ours.config, size=13)
    with torch.no_grad():
        got = ours(x, t, context, y)
        want = ref(x, t, encoder_hidden_states=context, added_cond_kwargs=added).sample
    assert got.shape == x.shape
    assert rel_err(got, want) <= TOL


def test_bfloat16_weights(demo):
    """bf16 weights run with fp32 inputs (norms in fp32), return the input dtype and stay near fp32."""
    fp32 = load_checkpoint(demo["sdxl_base"], with_text=False).unet
    bf16 = load_checkpoint(demo["sdxl_base"], dtype=torch.bfloat16, with_text=False).unet
    x, t, context, y, _ = inputs(fp32.config)
    with torch.no_grad():
        got, want = bf16(x, t, context, y), fp32(x, t, context, y)
    assert bf16.dtype == torch.bfloat16 and got.dtype == torch.float32
    assert rel_err(got, want) < 0.1


@pytest.mark.parametrize("kernel,stride,side", [(3, 1, 8), (3, 2, 16), (1, 1, 8), (3, 1, 9), (3, 1, 17)])
def test_conv_small_maps_as_gemm(kernel, stride, side):
    """Conv2d runs maps of ≤ 64 output pixels as one GEMM over unfolded patches, larger ones directly; both equal
    F.conv2d (odd sides included: the output size is computed, not assumed)."""
    from nodes.sdxl.unet import Conv2d
    torch.manual_seed(0)
    conv = Conv2d(48, 40, kernel, stride=stride, padding=kernel // 2)
    x = torch.randn(2, 48, side, side)
    with torch.no_grad():
        got = conv(x)
        want = torch.nn.functional.conv2d(x, conv.weight, conv.bias, stride=stride, padding=kernel // 2)
    assert got.shape == want.shape and got.is_contiguous()
    assert rel_err(got, want) <= 1e-5


@pytest.mark.parametrize("tokens", [4, 16, 17, 64])
def test_feed_forward_turned_round_for_few_tokens(tokens):
    """FeedForward runs the weight-on-the-left GEMMs when rows (batch × tokens) ≤ features: same result as the
    plain GEGLU → Linear either way."""
    from nodes.sdxl.unet import FeedForward
    torch.manual_seed(0)
    ff = FeedForward(32)
    x = torch.randn(2, tokens, 32)
    proj, out = ff.net["0"].proj, ff.net["2"]
    with torch.no_grad():
        value, gate = proj(x).chunk(2, dim=-1)  # GEGLU as the original writes it: one GEMM, then chunk
        got, want = ff(x), out(value * torch.nn.functional.gelu(gate))
    assert got.shape == x.shape and got.is_contiguous()
    assert rel_err(got, want) <= 1e-5
