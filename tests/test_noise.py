"""Seeded noise: the same numbers on any device and dtype, image k of a batch reproducible on its own."""
import pytest
import torch

from nodes.sampling.noise import BrownianTreeNoiseSampler, ancestral_noise_sampler, prepare_noise


def test_matches_the_comfyui_and_diffusers_draw():
    # Both draw the whole batch at once from a CPU generator: torch.randn(shape, generator=cpu).
    for shape in [(1, 4, 128, 128), (3, 4, 16, 24), (2, 4, 9, 12)]:
        reference = torch.randn(shape, generator=torch.Generator().manual_seed(1234))
        assert torch.equal(prepare_noise(torch.zeros(shape), 1234), reference)
    assert torch.equal(prepare_noise(torch.zeros(2, 4, 8, 8), 2 ** 64 - 1),
                       torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2 ** 64 - 1)))


def test_same_numbers_whatever_the_latent_dtype_or_device():
    reference = prepare_noise(torch.zeros(2, 4, 16, 16), 42)
    assert reference.dtype == torch.float32 and reference.device.type == "cpu"
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        assert torch.equal(prepare_noise(torch.zeros(2, 4, 16, 16, dtype=dtype), 42), reference)
    # The draw depends only on the shape: a latent on another device (here the meta device) gets the same noise.
    assert torch.equal(prepare_noise(torch.empty(2, 4, 16, 16, device="meta"), 42), reference)
    # Cast for the model after drawing: the half-precision noise is the rounding of the fp32 numbers.
    half = reference.to(torch.bfloat16).float()
    assert (half - reference).abs().max() <= reference.abs().max() * 2 ** -8


@pytest.mark.parametrize("shape", [(4, 4, 16, 16), (4, 4, 5, 7), (3, 4, 1, 1)])
def test_batch_item_alone_equals_item_of_the_batch(shape):
    batch = prepare_noise(torch.zeros(shape), 7)
    for k in range(shape[0]):
        alone = prepare_noise(torch.zeros((1,) + shape[1:]), 7, batch_index=[k])
        assert torch.equal(alone[0], batch[k])
    picked = prepare_noise(torch.zeros((3,) + shape[1:]), 7, batch_index=[2, 0, 2])
    assert torch.equal(picked, batch[[2, 0, 2]])


def test_different_seeds_differ_and_bad_batch_index_is_named():
    assert not torch.equal(prepare_noise(torch.zeros(1, 4, 8, 8), 1), prepare_noise(torch.zeros(1, 4, 8, 8), 2))
    with pytest.raises(ValueError, match="batch_index"):
        prepare_noise(torch.zeros(2, 4, 8, 8), 0, batch_index=[0])
    with pytest.raises(ValueError, match="batch_index"):
        prepare_noise(torch.zeros(1, 4, 8, 8), 0, batch_index=[-1])


def test_ancestral_noise_is_seeded_on_the_cpu_and_cast():
    x = torch.zeros(2, 4, 8, 8, dtype=torch.float64)
    a, b = ancestral_noise_sampler(x, 5), ancestral_noise_sampler(x, 5)
    first, second = a(1.0, 0.5), a(0.5, 0.1)
    assert first.dtype == torch.float64 and not torch.equal(first, second)
    assert torch.equal(first, b(1.0, 0.5)) and torch.equal(second, b(0.5, 0.1))
    # seed + 1: independent of the initial noise drawn with the seed itself.
    assert torch.equal(first.float(), torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(6)))


def test_brownian_noise_is_unit_gaussian_reproducible_and_consistent():
    x = torch.zeros(4096, 4, 1, 1)
    tree = BrownianTreeNoiseSampler(x, 0.03, 14.6, seed=3)
    a, b, c = 4.0, 2.5, 1.0
    n_ab, n_bc, n_ac = tree(a, b), tree(b, c), tree(a, c)
    assert abs(n_ab.mean().item()) < 0.03 and abs(n_ab.std().item() - 1) < 0.03
    # Increments of one Brownian path add up: W(c) − W(a) = (W(b) − W(a)) + (W(c) − W(b)).
    total = n_ab * (a - b) ** 0.5 + n_bc * (b - c) ** 0.5
    assert torch.allclose(total, n_ac * (a - c) ** 0.5, atol=1e-4)
    assert torch.equal(BrownianTreeNoiseSampler(x, 0.03, 14.6, seed=3)(a, b), n_ab)
    assert not torch.allclose(BrownianTreeNoiseSampler(x, 0.03, 14.6, seed=4)(a, b), n_ab)
