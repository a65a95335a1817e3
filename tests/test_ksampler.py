"""KSampler / KSamplerAdvanced semantics end to end over an analytic ε-network, inpainting, hand-offs, previews.

The network is exact for Gaussian data whose per-channel mean is read from the conditioning context, so CFG itself
is a Gaussian denoiser with mean μ_neg + cfg·(μ_pos − μ_neg) and the final statistics are known in closed form.
It uses fractional timesteps so it can recover σ from t exactly.
"""
import math

import pytest
import torch

from nodes.node import Interrupted
from nodes.sampling.ksampler import (
    ensemble_of_experts, expert_switch_step, sample, sdedit_sigmas, window_sigmas,
)
from nodes.sampling.noise import prepare_noise
from nodes.sampling.preview import latent_to_rgb
from nodes.sampling.schedules import DiscreteEps, get_sigmas, ksampler_sigmas
from nodes.sdxl.configs import SDXL_LATENT

MS = DiscreteEps(integer_timesteps=False)


class AnalyticEps:
    """ε for data N(μ, s²) with μ = the first 4 context values; records each call."""

    def __init__(self, s=1.0):
        self.s = s
        self.calls = []

    def __call__(self, x_in, t, context, y):
        sigma = MS.sigma(t).view(-1, 1, 1, 1)
        self.calls.append({"x_in": x_in.clone(), "sigma": sigma.flatten().clone()})
        x = x_in * (sigma ** 2 + 1).sqrt()
        mu = context[:, 0, :4].reshape(-1, 4, 1, 1).to(x.dtype)
        denoised = mu + self.s ** 2 / (self.s ** 2 + sigma ** 2) * (x - mu)
        return (x - denoised) / sigma


def cond(*mu, batch=1):
    context = torch.zeros(batch, 77, 8)
    context[:, :, :4] = torch.tensor(mu)
    return [{"context": context, "y": None}]


POS, NEG = cond(1.0, -1.0, 0.5, 0.0), cond(0.0, 0.0, 0.0, 0.0)
ARGS = dict(seed=7, steps=10, cfg=1.0, sampler_name="euler", scheduler="karras")


def latent(batch=2, h=4, w=4, seed=0, **extra):
    return {"samples": torch.randn(batch, 4, h, w, generator=torch.Generator().manual_seed(seed)), **extra}


TOLERANCE = {"euler": 0.035, "dpmpp_2m": 0.015, "heun": 0.015}  # measured 2.6 %, 0.7 %, 1.1 %


@pytest.mark.parametrize("sampler,steps", [("euler", 60), ("dpmpp_2m", 25), ("heun", 20)])
def test_txt2img_with_cfg_reaches_the_guided_distribution(sampler, steps):
    cfg = 3.0
    target = torch.tensor([3.0, -3.0, 1.5, 0.0]).view(1, 4, 1, 1)  # μ_neg + cfg·(μ_pos − μ_neg)
    zeros = torch.zeros(16, 4, 8, 8)
    out = sample(AnalyticEps(), MS, {"samples": zeros}, POS, NEG, seed=1, steps=steps, cfg=cfg,
                 sampler_name=sampler, scheduler="karras")["samples"]
    # The probability-flow ODE maps x − μ ∝ √(s² + σ²), so each image has a known end point (s = 1). These
    # samplers are linear maps here: out − μ = c·(exact − μ), with c → 1 as the steps grow (first order: 1/n).
    x_start = prepare_noise(zeros, 1) * math.sqrt(1 + MS.sigma_max ** 2)
    exact = target + (x_start - target) / math.sqrt(1 + MS.sigma_max ** 2)
    c = ((out - target) * (exact - target)).sum() / ((exact - target) ** 2).sum()
    assert ((out - target) - c * (exact - target)).abs().max() < 1e-4
    assert abs(c - 1) < TOLERANCE[sampler], float(c)
    # ... so the batch has spread s and mean μ·(1 − s/√(s² + σ_max²)): txt2img starts from zero-mean noise, a
    # 6.8 % shortfall real models share. 1024 values per channel: 0.1 ≈ 3 standard errors.
    expected_mean = target.flatten() * (1 - 1 / math.sqrt(1 + MS.sigma_max ** 2))
    assert torch.allclose(out.mean(dim=(0, 2, 3)), expected_mean, atol=0.1)
    assert torch.allclose(out.std(dim=(0, 2, 3)), torch.ones(4), atol=0.1)


def test_ancestral_txt2img_with_cfg_converges():
    target = torch.tensor([3.0, -3.0, 1.5, 0.0])
    out = sample(AnalyticEps(), MS, {"samples": torch.zeros(16, 4, 8, 8)}, POS, NEG, seed=1, steps=60, cfg=3.0,
                 sampler_name="euler_ancestral", scheduler="karras")["samples"]
    assert torch.allclose(out.mean(dim=(0, 2, 3)), target, atol=0.3)  # start-mean shortfall + 3 standard errors
    assert torch.allclose(out.std(dim=(0, 2, 3)), torch.ones(4), atol=0.1)


def test_full_denoise_starts_from_scaled_seeded_noise():
    eps = AnalyticEps()
    lat = {"samples": torch.zeros(2, 4, 8, 8)}
    sample(eps, MS, lat, POS, NEG, **ARGS)
    noise = prepare_noise(lat["samples"], 7)
    # x = ε·√(1 + σ₀²) and the network input is x/√(1 + σ₀²) = ε.
    assert torch.allclose(eps.calls[0]["x_in"], noise, atol=1e-6)
    assert float(eps.calls[0]["sigma"][0]) == pytest.approx(MS.sigma_max, rel=1e-5)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_initial_noise_is_the_fp32_draw_in_any_dtype(dtype):
    eps = AnalyticEps()
    sample(eps, MS, {"samples": torch.zeros(1, 4, 8, 8, dtype=dtype)}, POS, NEG, **ARGS)
    noise = prepare_noise(torch.zeros(1, 4, 8, 8), 7)
    tol = 1e-12 if dtype == torch.float64 else 4e-3
    assert eps.calls[0]["x_in"].dtype == dtype
    assert torch.allclose(eps.calls[0]["x_in"].double(), noise.double(), atol=tol, rtol=tol)


def test_denoise_strength_runs_img2img_from_the_latent():
    eps = AnalyticEps()
    lat = latent()
    sample(eps, MS, lat, POS, NEG, **{**ARGS, "steps": 20, "scheduler": "normal"}, denoise=0.3)
    assert len(eps.calls) == 20
    sigma0 = float(eps.calls[0]["sigma"][0])
    assert sigma0 == pytest.approx(0.8098, abs=1e-4)
    noise = prepare_noise(lat["samples"], 7)
    x0 = eps.calls[0]["x_in"] * math.sqrt(sigma0 ** 2 + 1)
    assert torch.allclose(x0, lat["samples"] + noise * sigma0, atol=1e-5)  # partial: latent + ε·σ_start


def test_start_at_or_past_the_end_returns_the_input():
    eps = AnalyticEps()
    lat = latent(noise_mask=torch.ones(4, 4))
    for start in (10, 11, 500):
        out = sample(eps, MS, lat, POS, NEG, **ARGS, start_step=start)
        assert out["samples"] is lat["samples"] and out["noise_mask"] is lat["noise_mask"]
    assert not eps.calls


def test_end_step_without_leftover_noise_finishes_clean():
    eps = AnalyticEps()
    x0s = []
    out = sample(eps, MS, latent(), POS, NEG, **ARGS, end_step=4, callback=lambda i, n, x0: x0s.append((i, n, x0)))
    assert len(eps.calls) == 4 and [(i, n) for i, n, _ in x0s] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert torch.equal(out["samples"], x0s[-1][2])  # the last σ was set to 0: the final Euler step lands on D


def test_window_rules():
    sigmas = get_sigmas(MS, "normal", 10)
    assert torch.equal(window_sigmas(sigmas, 0, 4, True), sigmas[:5])
    clean = window_sigmas(sigmas, 0, 4, False)
    assert torch.equal(clean[:-1], sigmas[:4]) and float(clean[-1]) == 0.0
    assert torch.equal(window_sigmas(sigmas, 3, 10000), sigmas[3:])
    assert torch.equal(window_sigmas(sigmas, 3, 7, True), sigmas[3:8])
    assert len(window_sigmas(sigmas, 10)) == 0
    assert torch.equal(sigmas, get_sigmas(MS, "normal", 10))  # the input schedule is not modified


def test_ensemble_of_experts_equals_one_uninterrupted_run():
    """Base with leftover noise + refiner without new noise on the same schedule = the whole run (deterministic)."""
    lat = latent(batch=3, h=6, w=6)
    args = {**ARGS, "steps": 25, "scheduler": "normal", "cfg": 4.0}
    whole = sample(AnalyticEps(), MS, lat, POS, NEG, **args)["samples"]
    base = sample(AnalyticEps(), MS, lat, POS, NEG, **args, end_step=20, return_leftover_noise=True)
    assert base["samples"].std() > 0.3  # still noisy at σ_20
    refined = sample(AnalyticEps(), MS, base, POS, NEG, **args, start_step=20, add_noise=False)["samples"]
    assert torch.allclose(refined, whole, atol=1e-5)


def test_ensemble_of_experts_helper_hands_over_at_the_switch():
    base_eps, refiner_eps = AnalyticEps(), AnalyticEps()
    progress = []
    expert = dict(model_sampling=MS, positive=POS, negative=NEG, cfg=4.0)
    out = ensemble_of_experts({**expert, "eps_fn": base_eps}, {**expert, "eps_fn": refiner_eps}, latent(),
                              seed=7, steps=25, sampler_name="euler", scheduler="normal", switch=0.8,
                              callback=lambda i, n, x0: progress.append((i, n)))
    assert expert_switch_step(25, 0.8) == 20
    assert len(base_eps.calls) == 20 and len(refiner_eps.calls) == 5
    assert progress == [(i, 25) for i in range(1, 26)]
    handoff = float(get_sigmas(MS, "normal", 25)[20])
    assert handoff == pytest.approx(0.4936, abs=1e-4)  # sdxl.md §10.1: 25 steps euler/normal, S = 20
    assert float(refiner_eps.calls[0]["sigma"][0]) == pytest.approx(handoff, rel=1e-5)
    whole = sample(AnalyticEps(), MS, latent(), POS, NEG, **{**ARGS, "steps": 25, "scheduler": "normal", "cfg": 4.0})
    assert torch.allclose(out["samples"], whole["samples"], atol=1e-5)


def test_add_noise_disabled_starts_from_the_latent_itself():
    eps = AnalyticEps()
    lat = latent()
    sample(eps, MS, lat, POS, NEG, **ARGS, start_step=3, add_noise=False)
    sigma0 = float(eps.calls[0]["sigma"][0])
    assert torch.allclose(eps.calls[0]["x_in"] * math.sqrt(sigma0 ** 2 + 1), lat["samples"], atol=1e-5)


def test_sdedit_renoises_within_the_refiner_range():
    eps = AnalyticEps()
    lat = latent()
    sigmas = sdedit_sigmas(MS, "normal", 8, strength=1.0)
    out = sample(eps, MS, lat, POS, NEG, **ARGS, sigmas=sigmas)
    assert len(eps.calls) == 8 and max(float(c["sigma"].max()) for c in eps.calls) <= 0.5694
    sigma0 = float(eps.calls[0]["sigma"][0])
    noise = prepare_noise(lat["samples"], 7)
    assert torch.allclose(eps.calls[0]["x_in"] * math.sqrt(sigma0 ** 2 + 1), lat["samples"] + noise * sigma0,
                          atol=1e-5)
    assert not torch.allclose(out["samples"], lat["samples"])


@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m_sde", "euler_ancestral"])
def test_inpainting_keeps_the_unmasked_latent_exactly(sampler):
    lat = latent(batch=2, h=8, w=8)
    mask = torch.zeros(8, 8)
    mask[:, :4] = 1.0  # repaint the left half
    out = sample(AnalyticEps(), MS, {**lat, "noise_mask": mask}, POS, NEG, **{**ARGS, "sampler_name": sampler})
    assert torch.equal(out["samples"][..., 4:], lat["samples"][..., 4:])
    assert not torch.allclose(out["samples"][..., :4], lat["samples"][..., :4], atol=0.1)
    assert "noise_mask" in out


def test_pixel_resolution_mask_is_resized_to_the_latent():
    lat = latent(batch=1, h=8, w=8)
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 32:, :] = 1.0  # repaint the bottom half, given in pixels
    out = sample(AnalyticEps(), MS, {**lat, "noise_mask": mask}, POS, NEG, **ARGS)
    assert torch.equal(out["samples"][..., :4, :], lat["samples"][..., :4, :])
    assert not torch.allclose(out["samples"][..., 4:, :], lat["samples"][..., 4:, :], atol=0.1)


def test_inpainting_with_leftover_noise_keeps_the_noised_latent():
    lat = latent(batch=1, h=8, w=8)
    mask = torch.zeros(8, 8)
    mask[:4] = 1.0
    out = sample(AnalyticEps(), MS, {**lat, "noise_mask": mask}, POS, NEG, **ARGS, end_step=6,
                 return_leftover_noise=True)
    sigma_end = float(ksampler_sigmas(MS, "karras", 10)[6])
    expected = lat["samples"] + prepare_noise(lat["samples"], 7) * sigma_end
    assert torch.allclose(out["samples"][..., 4:, :], expected[..., 4:, :], atol=1e-6)


def test_batch_index_remakes_one_image_of_a_batch():
    batch = sample(AnalyticEps(), MS, {"samples": torch.zeros(3, 4, 8, 8)}, POS, NEG, **ARGS)["samples"]
    alone = sample(AnalyticEps(), MS, {"samples": torch.zeros(1, 4, 8, 8), "batch_index": [2]}, POS, NEG, **ARGS)
    assert torch.allclose(alone["samples"][0], batch[2], atol=1e-6)
    assert alone["batch_index"] == [2]


def test_interrupting_from_the_callback_stops_the_run():
    eps = AnalyticEps()

    def stop_at_three(step, total, x0):
        if step == 3:
            raise Interrupted()

    with pytest.raises(Interrupted):
        sample(eps, MS, latent(), POS, NEG, **ARGS, callback=stop_at_three)
    assert len(eps.calls) == 3


def test_same_seed_same_image_and_different_seed_differs():
    args = {**ARGS, "sampler_name": "dpmpp_2s_ancestral", "cfg": 2.0}
    a = sample(AnalyticEps(), MS, {"samples": torch.zeros(1, 4, 8, 8)}, POS, NEG, **args)["samples"]
    b = sample(AnalyticEps(), MS, {"samples": torch.zeros(1, 4, 8, 8)}, POS, NEG, **args)["samples"]
    c = sample(AnalyticEps(), MS, {"samples": torch.zeros(1, 4, 8, 8)}, POS, NEG, **{**args, "seed": 8})["samples"]
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_bad_inputs_name_the_node_and_input():
    with pytest.raises(ValueError, match="KSampler: input 'sampler_name'"):
        sample(AnalyticEps(), MS, latent(), POS, NEG, **{**ARGS, "sampler_name": "magic"})
    with pytest.raises(ValueError, match="input 'scheduler'"):
        sample(AnalyticEps(), MS, latent(), POS, NEG, **{**ARGS, "scheduler": "linear_quadratic"})
    with pytest.raises(ValueError, match="KSamplerAdvanced: input 'negative'"):
        sample(AnalyticEps(), MS, latent(), POS, [], **{**ARGS, "cfg": 5.0}, node="KSamplerAdvanced")
    with pytest.raises(ValueError, match="noise_mask"):
        sample(AnalyticEps(), MS, {**latent(), "noise_mask": torch.ones(2, 3, 4, 4)}, POS, NEG, **ARGS)


def test_preview_projects_latent_channels_to_rgb():
    lat = torch.zeros(2, 4, 3, 5)
    lat[0, 0] = 1.0
    image = latent_to_rgb(lat, SDXL_LATENT)
    assert image.size == (5, 3) and image.mode == "RGB"
    expected = [round((v + 1) / 2 * 255) for v in (0.3651 + 0.1084, 0.4232 - 0.0175, 0.4341 - 0.0011)]
    assert list(image.getpixel((0, 0))) == expected
    big = latent_to_rgb(torch.randn(1, 4, 128, 1024), SDXL_LATENT)
    assert big.size == (512, 64)
    with pytest.raises(ValueError, match="latent"):
        latent_to_rgb(torch.zeros(1, 3, 8, 8), SDXL_LATENT)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m_sde", "euler_ancestral"])
def test_cuda_run_matches_the_cpu_run(sampler):
    args = {**ARGS, "sampler_name": sampler, "cfg": 3.0}
    cpu = sample(AnalyticEps(), MS, {"samples": torch.zeros(2, 4, 8, 8)}, POS, NEG, **args)["samples"]
    eps = AnalyticEps()
    gpu = sample(eps, MS, {"samples": torch.zeros(2, 4, 8, 8, device="cuda")}, POS, NEG, **args)["samples"]
    assert gpu.device.type == "cuda"
    # The same seeded CPU draw starts both runs (x_in at σ_max is the unit noise itself).
    assert torch.allclose(eps.calls[0]["x_in"].cpu(), prepare_noise(torch.zeros(2, 4, 8, 8), 7), atol=1e-6)
    assert torch.allclose(gpu.cpu(), cpu, atol=1e-4)
