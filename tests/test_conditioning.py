"""The vector y checked against diffusers' own construction: `_get_add_time_ids` + the UNet's add-embedding input."""
from types import SimpleNamespace

import pytest
import torch

from nodes.sdxl.conditioning import base_vector, fourier, refiner_vector

POOLED = 32


def tiny_unet(n_ids: int):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4), cross_attention_dim=64,
        addition_embed_type="text_time", addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=POOLED + 256 * n_ids, sample_size=8,
    ).eval()


def add_embedding_input(unet, pooled, time_ids):
    """What diffusers' UNet feeds its add_embedding MLP (= sgm's y) for these pooled embeds and time ids."""
    seen = []
    handle = unet.add_embedding.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    with torch.no_grad():
        unet.get_aug_embed(torch.zeros(pooled.shape[0], 128), None, {"text_embeds": pooled, "time_ids": time_ids})
    handle.remove()
    return seen[0]


@pytest.fixture(scope="module")
def pooled():
    return torch.randn(2, POOLED, generator=torch.Generator().manual_seed(0))


def test_base_vector_matches_diffusers(pooled):
    from diffusers import StableDiffusionXLPipeline

    unet = tiny_unet(6)
    fake_pipe = SimpleNamespace(unet=unet)
    orig, crop, target = (1152, 896), (48, 16), (1024, 768)  # (h, w), (top, left), (h, w): all distinct
    ids = StableDiffusionXLPipeline._get_add_time_ids(fake_pipe, orig, crop, target, torch.float32, POOLED)
    ref = add_embedding_input(unet, pooled, ids.repeat(2, 1))
    ours = base_vector(pooled, orig, crop, target)
    assert ours.shape == (2, POOLED + 6 * 256) == ref.shape
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)
    # a swapped h/w order must be visible to this test
    assert (base_vector(pooled, orig[::-1], crop, target) - ref).abs().max() > 0.1


def test_refiner_vector_matches_diffusers(pooled):
    from diffusers import StableDiffusionXLImg2ImgPipeline

    unet = tiny_unet(5)
    fake_pipe = SimpleNamespace(unet=unet, config=SimpleNamespace(requires_aesthetics_score=True))
    orig, crop = (896, 1152), (0, 32)
    pos, neg = StableDiffusionXLImg2ImgPipeline._get_add_time_ids(
        fake_pipe, orig, crop, orig, 6.0, 2.5, orig, crop, orig, torch.float32, POOLED)
    for score, ids in ((6.0, pos), (2.5, neg)):
        ref = add_embedding_input(unet, pooled, ids.repeat(2, 1))
        ours = refiner_vector(pooled, orig, crop, score)
        assert ours.shape == (2, POOLED + 5 * 256) == ref.shape
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)


def test_fourier_matches_diffusers_timesteps():
    from diffusers.models.embeddings import Timesteps

    values = torch.tensor([[1024.0, 0.0, 6.5], [768.0, 13.0, 2.5]])
    ref = Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0)(values.flatten()).reshape(2, -1)
    torch.testing.assert_close(fourier(values), ref, rtol=0, atol=1e-6)


def test_per_sample_sizes(pooled):
    per_sample = base_vector(pooled, torch.tensor([[1024, 1024], [512, 768]]), (0, 0), (1024, 1024))
    assert torch.equal(per_sample[0], base_vector(pooled[:1], (1024, 1024), (0, 0), (1024, 1024))[0])
    assert torch.equal(per_sample[1], base_vector(pooled[1:], (512, 768), (0, 0), (1024, 1024))[0])
