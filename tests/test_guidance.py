"""Classifier-free guidance: the formula, the skipped negative pass at cfg 1, batching, timestep ranges."""
import pytest
import torch

from nodes.sampling.guidance import cfg_denoiser, conditioning_entries
from nodes.sampling.schedules import DiscreteEps

MS = DiscreteEps()


class CountingEps:
    """An ε-network whose output depends on x, t, context and y; records every call."""

    def __init__(self):
        self.calls = []

    def __call__(self, x_in, t, context, y):
        self.calls.append({"batch": x_in.shape[0], "t": t.clone(), "x_in": x_in.clone(), "context": context.clone(),
                           "y": None if y is None else y.clone()})
        shift = context.mean(dim=(1, 2)) + (0 if y is None else y.mean(dim=1))
        return 0.3 * x_in + shift.view(-1, 1, 1, 1) + 1e-3 * t.view(-1, 1, 1, 1)


def entry(value, tokens=77, dim=8, batch=1, y=None, **extra):
    return {"context": torch.full((batch, tokens, dim), float(value)), "y": y, **extra}


def expected_denoised(x, sigma, ctx_value, y_value=0.0):
    s = sigma.view(-1, 1, 1, 1)
    x_in = x / (s ** 2 + 1).sqrt()
    eps = 0.3 * x_in + ctx_value + y_value + 1e-3 * MS.timestep(sigma).view(-1, 1, 1, 1)
    return x - s * eps


X = torch.randn(2, 4, 5, 5, generator=torch.Generator().manual_seed(0))
SIGMA = torch.full((2,), 3.1686)


def test_cfg_formula_on_the_denoised_output():
    eps = CountingEps()
    d = cfg_denoiser(eps, MS, [entry(1.0)], [entry(-0.5)], cfg=7.5)(X, SIGMA)
    pos, neg = expected_denoised(X, SIGMA, 1.0), expected_denoised(X, SIGMA, -0.5)
    assert torch.allclose(d, neg + 7.5 * (pos - neg), atol=1e-5)
    # One network call holding both branches (same context shape), the negative half first, at ComfyUI's timestep.
    assert len(eps.calls) == 1 and eps.calls[0]["batch"] == 4
    assert eps.calls[0]["context"][:2].eq(-0.5).all() and eps.calls[0]["context"][2:].eq(1.0).all()
    assert eps.calls[0]["t"].tolist() == [687.0] * 4
    assert torch.allclose(eps.calls[0]["x_in"][:2], X / (3.1686 ** 2 + 1) ** 0.5)


def test_cfg_one_skips_the_negative_pass():
    eps = CountingEps()
    d = cfg_denoiser(eps, MS, [entry(1.0)], [entry(-0.5)], cfg=1.0)(X, SIGMA)
    assert len(eps.calls) == 1 and eps.calls[0]["batch"] == 2
    assert torch.allclose(d, expected_denoised(X, SIGMA, 1.0), atol=1e-6)
    # No negative is needed at all then; at any other cfg a missing negative is an error naming the input.
    cfg_denoiser(eps, MS, [entry(1.0)], [], cfg=1.0)(X, SIGMA)
    with pytest.raises(ValueError, match="negative"):
        cfg_denoiser(eps, MS, [entry(1.0)], [], cfg=5.0)
    with pytest.raises(ValueError, match="positive"):
        cfg_denoiser(eps, MS, [], [entry(0.0)], cfg=5.0)


def test_different_context_lengths_run_as_separate_calls():
    eps = CountingEps()
    d = cfg_denoiser(eps, MS, [entry(1.0, tokens=154)], [entry(-0.5, tokens=77)], cfg=4.0)(X, SIGMA)
    assert sorted(c["context"].shape[1] for c in eps.calls) == [77, 154]
    pos, neg = expected_denoised(X, SIGMA, 1.0), expected_denoised(X, SIGMA, -0.5)
    assert torch.allclose(d, neg + 4.0 * (pos - neg), atol=1e-5)


def test_pooled_vector_is_passed_and_batched():
    eps = CountingEps()
    pos = entry(1.0, y=torch.full((1, 6), 0.25))
    neg = entry(-0.5, y=torch.zeros(1, 6))
    d = cfg_denoiser(eps, MS, [pos], [neg], cfg=3.0)(X, SIGMA)
    assert len(eps.calls) == 1 and eps.calls[0]["y"].shape == (4, 6)
    p, n = expected_denoised(X, SIGMA, 1.0, 0.25), expected_denoised(X, SIGMA, -0.5, 0.0)
    assert torch.allclose(d, n + 3.0 * (p - n), atol=1e-5)


def test_combined_entries_are_averaged_by_strength():
    eps = CountingEps()
    positive = [entry(1.0), entry(3.0, strength=3.0)]
    d = cfg_denoiser(eps, MS, positive, [entry(0.0)], cfg=1.0)(X, SIGMA)
    expected = (expected_denoised(X, SIGMA, 1.0) + 3 * expected_denoised(X, SIGMA, 3.0)) / 4
    assert torch.allclose(d, expected, atol=1e-5)
    assert len(eps.calls) == 1 and eps.calls[0]["batch"] == 4  # same shapes: one call


def test_timestep_ranges_select_entries_by_sigma():
    # ConditioningSetTimestepRange: 0 % is the start of sampling (σ_max), 100 % the end.
    early, late = entry(1.0, start_percent=0.0, end_percent=0.5), entry(2.0, start_percent=0.5, end_percent=1.0)
    boundary = MS.percent_to_sigma(0.5)
    for sigma, expected_value in ((8.0, 1.0), (boundary * 1.01, 1.0), (boundary * 0.99, 2.0), (0.1, 2.0)):
        eps = CountingEps()
        s = torch.full((2,), sigma)
        d = cfg_denoiser(eps, MS, [early, late], [entry(0.0)], cfg=1.0)(X, s)
        assert torch.allclose(d, expected_denoised(X, s, expected_value), atol=1e-5), sigma
        assert len(eps.calls) == 1 and eps.calls[0]["batch"] == 2
    gap = [entry(1.0, start_percent=0.0, end_percent=0.3)]
    with pytest.raises(ValueError, match="positive.*timestep range"):
        cfg_denoiser(CountingEps(), MS, gap, [entry(0.0)], cfg=1.0)(X, torch.full((2,), 0.1))


def test_prompt_batch_is_broadcast_to_the_latent_batch():
    eps = CountingEps()
    x = torch.randn(4, 4, 3, 3)
    pos = {"context": torch.stack([torch.full((77, 8), v) for v in (1.0, 2.0)]), "y": None}
    d = cfg_denoiser(eps, MS, [pos], [entry(0.0)], cfg=2.0)(x, torch.full((4,), 1.0))
    assert eps.calls[0]["context"][4:, 0, 0].tolist() == [1.0, 2.0, 1.0, 2.0]  # 2 prompts tiled over 4 latents
    assert d.shape == x.shape
    eps = CountingEps()
    three = {"context": torch.stack([torch.full((77, 8), v) for v in (1.0, 2.0, 3.0)]), "y": None}
    cfg_denoiser(eps, MS, [three], [entry(0.0)], cfg=2.0)(x, torch.full((4,), 1.0))
    assert eps.calls[0]["context"][4:, 0, 0].tolist() == [1.0, 2.0, 3.0, 1.0]  # ComfyUI's tile-and-cut


def test_comfyui_conditioning_becomes_entries():
    context = torch.full((1, 77, 8), 1.0)
    conditioning = [[context, {"pooled_output": torch.full((1, 6), 0.5), "start_percent": 0.2, "strength": 2.0}],
                    [context * 2, {"pooled_output": torch.zeros(1, 6)}]]
    entries = conditioning_entries(conditioning, make_y=lambda extras: extras["pooled_output"] * 2)
    assert entries[0]["context"] is context and entries[0]["y"].eq(1.0).all()
    assert (entries[0]["start_percent"], entries[0]["end_percent"], entries[0]["strength"]) == (0.2, 1.0, 2.0)
    assert (entries[1]["start_percent"], entries[1]["end_percent"], entries[1]["strength"]) == (0.0, 1.0, 1.0)
    assert conditioning_entries(conditioning)[0]["y"] is None
