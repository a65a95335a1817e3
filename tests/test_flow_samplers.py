"""The samplers that inject fresh noise are right on rectified flow (SD3) as well as in σ-space, through the model
sampling they are given (the denoiser protocol), with no per-sampler case for flow.

The analytic problem: data x₀ ~ N(μ, s²) per channel, noised as x = α(σ)·x₀ + σ·ε, with α = 1 in σ-space (SDXL's
ε-models) and α = 1 − σ on rectified flow. The exact denoiser is the posterior mean
D(x; σ) = μ + α·s²/(α²s² + σ²)·(x − α·μ), and the noisy marginal is N(α·μ, α²s² + σ²). A sampler started from that
marginal at the schedule's first σ (pure noise for flow: σ = 1, as KSampler starts it) must end on N(μ, s²).

Before this change the samplers assumed x = x₀ + σ·ε whatever the model, and on flow ended far off (μ = 0.5,
s = 1.5, simple, 60 steps, 4 for lcm; mean and std of z = (x − μ)/s, which should be 0 and 1): euler_ancestral
+0.60 / 1.96, dpm_2_ancestral +0.61 / 2.06, dpmpp_2s_ancestral +0.63 / 2.10, dpmpp_sde +0.68 / 2.23, dpmpp_2m_sde
+0.72 / 2.32, dpmpp_2m_sde_heun +0.74 / 2.36, dpmpp_3m_sde +0.71 / 2.28, ddpm +0.60 / 1.96, lcm +2.46 / 5.95,
euler with s_churn = 2 +0.69 / 1.59.
"""
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from nodes.sampling.noise import BrownianTreeNoiseSampler, ancestral_noise_sampler
from nodes.sampling.samplers import ANCESTRAL_SAMPLERS, SAMPLERS, SDE_SAMPLERS
from nodes.sampling.schedules import DiscreteEps, DiscreteFlow, ksampler_sigmas

MU = torch.tensor([0.5, -1.0, 0.25, 1.5]).view(1, 4, 1, 1)
S = torch.tensor([1.0, 1.5, 2.0, 1.2]).view(1, 4, 1, 1)
PARAMETERISATIONS = {"flow": (DiscreteFlow(), lambda sigma: 1 - sigma), "eps": (DiscreteEps(), lambda sigma: 1.0)}

# One name per sampler function that draws noise (the _gpu twins run the same function), with the steps it needs.
# First-order samplers need the most (ddpm and euler_ancestral lose variance at 1/steps: they plug the posterior
# mean into the posterior). Worst measured at these steps: |mean(z)| 0.026, |std(z) − 1| 0.035 (euler_ancestral
# on flow, beta); the tolerance is 0.05.
NOISY = {"euler_ancestral": 120, "dpm_2_ancestral": 40, "dpmpp_2s_ancestral": 40, "dpmpp_sde": 30, "dpmpp_2m_sde": 120,
         "dpmpp_2m_sde_heun": 120, "dpmpp_3m_sde": 120, "ddpm": 120, "lcm": 4}
CHURNING = {"euler": 120, "heun": 40, "dpm_2": 40}  # deterministic samplers that draw noise when s_churn > 0
TOL_MEAN, TOL_STD = 0.05, 0.05


def test_every_noise_drawing_sampler_is_covered():
    drawing = {SAMPLERS[name] for name in ANCESTRAL_SAMPLERS | SDE_SAMPLERS}
    assert drawing == {SAMPLERS[name] for name in NOISY}


def gaussian_denoiser(alpha):
    def model(x, sigma):
        sg = sigma.view(-1, 1, 1, 1)
        a = alpha(sg)
        return MU + a * S ** 2 / (a ** 2 * S ** 2 + sg ** 2) * (x - a * MU)
    return model


def consistency_function(alpha):
    """What an LCM learns: the probability-flow map from (x, σ) to σ = 0, x − α·μ ∝ √(α²s² + σ²)."""
    def model(x, sigma):
        sg = sigma.view(-1, 1, 1, 1)
        a = alpha(sg)
        return MU + S / (a ** 2 * S ** 2 + sg ** 2).sqrt() * (x - a * MU)
    return model


def standard_noise(n, seed=0):
    eps = torch.randn(n, 4, 1, 1, generator=torch.Generator().manual_seed(seed))
    return (eps - eps.mean(dim=0)) / eps.std(dim=0)


def run(name, parameterisation, scheduler, steps, **options):
    ms, alpha = PARAMETERISATIONS[parameterisation]
    sigmas = ksampler_sigmas(ms, scheduler, steps, sampler_name=name)
    a0 = alpha(sigmas[0])
    if parameterisation == "flow":
        assert float(sigmas[0]) == 1.0  # full denoise on flow starts from pure noise
    x = a0 * MU + standard_noise(1024 if name in SDE_SAMPLERS else 4096) * (a0 ** 2 * S ** 2 + sigmas[0] ** 2).sqrt()
    if name in SDE_SAMPLERS:
        noise = BrownianTreeNoiseSampler(x, float(sigmas[sigmas > 0].min()), float(sigmas.max()), 1)
    else:
        noise = ancestral_noise_sampler(x, 1)
    model = consistency_function(alpha) if name == "lcm" else gaussian_denoiser(alpha)
    out = SAMPLERS[name](model, x, sigmas, noise=noise, model_sampling=ms, **options)
    z = (out - MU) / S
    return abs(z.mean().item()), abs(z.std().item() - 1)


@pytest.mark.parametrize("parameterisation", ["flow", "eps"])
@pytest.mark.parametrize("name", list(NOISY))
def test_noise_injecting_samplers_end_on_the_data_distribution(name, parameterisation):
    """Pooled over 4 channels (4096 values for the SDE samplers, 16384 otherwise) on SD3's scheduler (simple) and
    one more: |mean(z)| < 0.05 and |std(z) − 1| < 0.05."""
    failures = []
    for scheduler in ("simple", "beta"):
        mean_err, std_err = run(name, parameterisation, scheduler, NOISY[name])
        if not (mean_err < TOL_MEAN and std_err < TOL_STD):
            failures.append(f"{scheduler}: mean err {mean_err:.4f}, std err {std_err:.4f}")
    assert not failures, f"{name} on {parameterisation}: {failures}"


@pytest.mark.parametrize("parameterisation", ["flow", "eps"])
@pytest.mark.parametrize("name", list(CHURNING))
def test_churn_raises_the_noise_level_by_the_forward_process(name, parameterisation):
    """Karras churn (s_churn) re-noises to σ̂ > σ; on flow that scales the signal by α(σ̂)/α(σ), capped at σ̂ = 1."""
    mean_err, std_err = run(name, parameterisation, "simple", CHURNING[name], s_churn=2.0)
    assert mean_err < TOL_MEAN and std_err < TOL_STD, (mean_err, std_err)


def test_the_check_catches_sigma_space_noise_on_flow():
    """Guards the tolerance: the flow sampler run as if the model were σ-space (the old behaviour) fails it."""
    ms, alpha = PARAMETERISATIONS["flow"]
    sigmas = ksampler_sigmas(ms, "simple", 60)
    x = standard_noise(4096)
    out = SAMPLERS["euler_ancestral"](gaussian_denoiser(alpha), x, sigmas, noise=ancestral_noise_sampler(x, 1))
    assert abs(((out - MU) / S).std().item() - 1) > 0.5


# --- one step against ComfyUI's rectified-flow formulas, written out from the math -------------------------------

class FixedNoise:
    """A noise source that returns the same tensor every draw and counts the draws."""
    def __init__(self, n):
        self.n, self.calls = n, 0

    def __call__(self, sigma, sigma_next):
        self.calls += 1
        return self.n


X = torch.tensor([0.7, -1.2, 0.3]).view(1, 3, 1, 1)
N = torch.tensor([0.5, 1.0, -2.0]).view(1, 3, 1, 1)


def affine_model(x, sigma):
    """A denoiser that depends on both x and σ, so a wrong evaluation point shows."""
    return 0.4 * x * (1 - sigma.view(-1, 1, 1, 1)) + 0.1


def one_step(name, sigma, sigma_next, **options):
    return SAMPLERS[name](affine_model, X.clone(), torch.tensor([sigma, sigma_next]), noise=FixedNoise(N),
                          model_sampling=DiscreteFlow(), **options)


@pytest.mark.parametrize("eta", [1.0, 0.5])
def test_euler_ancestral_step_is_the_rectified_flow_step(eta):
    """ComfyUI's sample_euler_ancestral_RF (comfy/k_diffusion/sampling.py, taken as facts): σ_down =
    σ_next·(1 + (σ_next/σ − 1)·η); x ← (σ_down/σ)·x + (1 − σ_down/σ)·D; then x ← (α_next/α_down)·x +
    ε·√(σ_next² − σ_down²·α_next²/α_down²) with α = 1 − σ."""
    sigma, sigma_next = 0.8, 0.6
    sigma_down = sigma_next * (1 + (sigma_next / sigma - 1) * eta)
    if eta == 1.0:  # by hand: 0.6·(1 − 0.25) = 0.45 = σ_next²/σ; √(0.36 − 0.45²·0.4²/0.55²) = 0.502885…
        assert sigma_down == pytest.approx(0.45)
        assert math.sqrt(0.36 - 0.45 ** 2 * 0.4 ** 2 / 0.55 ** 2) == pytest.approx(0.5028852, abs=1e-6)
    a_next, a_down = 1 - sigma_next, 1 - sigma_down
    d = 0.4 * X * (1 - sigma) + 0.1
    x = (sigma_down / sigma) * X + (1 - sigma_down / sigma) * d
    expected = a_next / a_down * x + N * math.sqrt(sigma_next ** 2 - sigma_down ** 2 * a_next ** 2 / a_down ** 2)
    assert torch.allclose(one_step("euler_ancestral", sigma, sigma_next, eta=eta), expected, atol=1e-6)


def test_dpmpp_2s_ancestral_step_is_the_rectified_flow_step():
    """ComfyUI's sample_dpmpp_2s_ancestral_RF: the same σ_down and re-noising; in between DPM-Solver++(2S) (Lu et al.
    2022) in λ = log((1 − σ)/σ): midpoint σ_s = 1/(1 + e^((λ(σ) + λ(σ_down))/2)), u = (σ_s/σ)·x + (1 − σ_s/σ)·D,
    x ← (σ_down/σ)·x + (1 − σ_down/σ)·D(u; σ_s). (From σ = 1: the next test.)"""
    sigma, sigma_next = 0.8, 0.6
    sigma_down = sigma_next ** 2 / sigma
    lam = lambda s: math.log((1 - s) / s)  # noqa: E731
    sigma_s = 1 / (1 + math.exp((lam(sigma) + lam(sigma_down)) / 2))
    u = (sigma_s / sigma) * X + (1 - sigma_s / sigma) * (0.4 * X * (1 - sigma) + 0.1)
    d_s = 0.4 * u * (1 - sigma_s) + 0.1
    x = (sigma_down / sigma) * X + (1 - sigma_down / sigma) * d_s
    a_next, a_down = 1 - sigma_next, 1 - sigma_down
    expected = a_next / a_down * x + N * math.sqrt(sigma_next ** 2 - sigma_down ** 2 * a_next ** 2 / a_down ** 2)
    assert torch.allclose(one_step("dpmpp_2s_ancestral", sigma, sigma_next), expected, atol=1e-6)


def test_dpm_2_ancestral_step_is_the_rectified_flow_step():
    """ComfyUI's sample_dpm_2_ancestral_RF: the same σ_down and re-noising around dpm_2's step to σ_down, whose
    midpoint is the log-σ mean σ_mid = √(σ·σ_down): x₂ = x + d·(σ_mid − σ), x ← x + d(x₂; σ_mid)·(σ_down − σ)."""
    sigma, sigma_next = 0.8, 0.6
    sigma_down = sigma_next ** 2 / sigma
    sigma_mid = math.sqrt(sigma * sigma_down)
    slope = lambda x, s: (x - (0.4 * x * (1 - s) + 0.1)) / s  # noqa: E731
    x_2 = X + slope(X, sigma) * (sigma_mid - sigma)
    x = X + slope(x_2, sigma_mid) * (sigma_down - sigma)
    a_next, a_down = 1 - sigma_next, 1 - sigma_down
    expected = a_next / a_down * x + N * math.sqrt(sigma_next ** 2 - sigma_down ** 2 * a_next ** 2 / a_down ** 2)
    assert torch.allclose(one_step("dpm_2_ancestral", sigma, sigma_next), expected, atol=1e-6)


def test_dpmpp_2m_sde_first_step_is_the_flow_sde_step():
    """DPM-Solver++(2M) SDE's first (1st-order) step for x = α·x₀ + σ·ε (Lu et al. 2022; as ComfyUI with
    λ = log((1 − σ)/σ)): x ← (σ_next/σ)·e^(−ηh)·x + α_next·(1 − e^(−(1+η)h))·D + σ_next·√(1 − e^(−2ηh))·ε."""
    sigma, sigma_next, eta = 0.8, 0.6, 1.0
    h = math.log((1 - sigma_next) / sigma_next) - math.log((1 - sigma) / sigma)
    d = 0.4 * X * (1 - sigma) + 0.1
    expected = (sigma_next / sigma * math.exp(-eta * h) * X + (1 - sigma_next) * (1 - math.exp(-(1 + eta) * h)) * d
                + N * sigma_next * math.sqrt(1 - math.exp(-2 * eta * h)))
    assert torch.allclose(one_step("dpmpp_2m_sde", sigma, sigma_next, eta=eta), expected, atol=1e-6)


def test_lcm_renoises_as_the_model_sampling_noises_a_latent():
    """ComfyUI's sample_lcm re-noises D with the model sampling's noise_scaling: on flow σ_next·ε + (1 − σ_next)·D."""
    expected = 0.6 * N + 0.4 * (0.4 * X * (1 - 0.8) + 0.1)
    assert torch.allclose(one_step("lcm", 0.8, 0.6), expected, atol=1e-6)


def test_ddpm_step_is_the_flow_posterior():
    """q(x_s | x_t, x₀ = D) for x = α·x₀ + σ·ε (Kingma et al. 2021, VDM eqs. 31-33): with α_{t|s} = α_t/α_s and
    σ²_{t|s} = σ_t² − α_{t|s}²·σ_s², mean α_{t|s}·σ_s²/σ_t²·x_t + α_s·σ²_{t|s}/σ_t²·D, variance σ²_{t|s}·σ_s²/σ_t²."""
    t, s = 0.8, 0.6
    a_ts = (1 - t) / (1 - s)
    var_ts = t ** 2 - a_ts ** 2 * s ** 2
    d = 0.4 * X * (1 - t) + 0.1
    expected = a_ts * s ** 2 / t ** 2 * X + (1 - s) * var_ts / t ** 2 * d + N * math.sqrt(var_ts * s ** 2 / t ** 2)
    assert torch.allclose(one_step("ddpm", t, s), expected, atol=1e-6)


def test_dpmpp_2s_ancestral_first_step_from_pure_noise_is_comfyuis():
    """ComfyUI's sample_dpmpp_2s_ancestral_RF at σ = 1 exactly: the midpoint is the constant σ_s = 0.9999, so
    u = 0.9999·x + 0.0001·D(x; 1) and x ← σ_down·x + (1 − σ_down)·D(u; 0.9999), then the same re-noising."""
    sigma_next = 0.6
    sigma_down = sigma_next ** 2
    u = 0.9999 * X + 0.0001 * 0.1  # D(x; 1) = 0.1 for affine_model
    x = sigma_down * X + (1 - sigma_down) * (0.4 * u * (1 - 0.9999) + 0.1)
    a_next, a_down = 1 - sigma_next, 1 - sigma_down
    expected = a_next / a_down * x + N * math.sqrt(sigma_next ** 2 - sigma_down ** 2 * a_next ** 2 / a_down ** 2)
    assert torch.allclose(one_step("dpmpp_2s_ancestral", 1.0, sigma_next), expected, atol=1e-6)


@pytest.mark.parametrize("eta", [1.0, 0.0])
def test_dpmpp_2m_sde_first_step_from_pure_noise_is_comfyuis(eta):
    """ComfyUI's SDE samplers on flow replace a first σ = 1 by σ(t = 0.9999) = 3·0.9999/(1 + 2·0.9999) at shift 3
    for the whole step, so it is the flow SDE step of the test above from that σ. (With η = 0 the x term is
    σ_next/σ·x: taking σ = 1 there instead is off by 1.4e-5.)"""
    sigma, sigma_next = 3 * 0.9999 / (1 + 2 * 0.9999), 0.6
    h = math.log((1 - sigma_next) / sigma_next) - math.log((1 - sigma) / sigma)
    d = 0.4 * X * (1 - sigma) + 0.1
    expected = (sigma_next / sigma * math.exp(-eta * h) * X + (1 - sigma_next) * (1 - math.exp(-(1 + eta) * h)) * d
                + N * sigma_next * math.sqrt(1 - math.exp(-2 * eta * h)))
    assert torch.allclose(one_step("dpmpp_2m_sde", 1.0, sigma_next, eta=eta), expected, atol=1e-6)


def model_sigmas(name, parameterisation, sigmas):
    """The σ of every model call ``name`` makes on ``sigmas``."""
    ms, alpha = PARAMETERISATIONS[parameterisation]
    seen = []

    def model(x, sigma):
        seen.append(sigma[0])
        return gaussian_denoiser(alpha)(x, sigma)
    x = standard_noise(8)
    noise = (BrownianTreeNoiseSampler(x, float(sigmas[sigmas > 0].min()), float(sigmas.max()), 1)
             if name in SDE_SAMPLERS else ancestral_noise_sampler(x, 1))
    SAMPLERS[name](model, x, sigmas, noise=noise, model_sampling=ms)
    return torch.stack(seen)


# ComfyUI's σ at t = 0.9999 (its percent_to_sigma(1e-4), a Python float) at SD3's shift 3, as float32.
OFFSET_SIGMA = torch.tensor(3 * 0.9999 / (1 + 2 * 0.9999), dtype=torch.float32)
SDE_NAMES = ["dpmpp_sde", "dpmpp_2m_sde", "dpmpp_2m_sde_heun", "dpmpp_3m_sde"]


@pytest.mark.parametrize("name", SDE_NAMES)
def test_sde_samplers_hand_the_model_comfyuis_first_sigma_on_flow(name):
    """ComfyUI's SDE samplers on flow run their first step from σ(t = 0.9999), not 1, model call included; the later
    steps are the schedule's own σ. (dpmpp_sde's substep: halfway in λ from that σ.)"""
    sigmas = ksampler_sigmas(DiscreteFlow(), "simple", 4)
    assert float(sigmas[0]) == 1.0
    seen = model_sigmas(name, "flow", sigmas)
    assert seen[0] == OFFSET_SIGMA
    if name == "dpmpp_sde":
        lam = lambda s: math.log((1 - s) / s)  # noqa: E731
        midpoint = 1 / (1 + math.exp((lam(float(OFFSET_SIGMA)) + lam(float(sigmas[1]))) / 2))
        assert float(seen[1]) == pytest.approx(midpoint, rel=1e-6)
        assert torch.equal(seen[2::2], sigmas[1:-1])
    else:
        assert torch.equal(seen[1:], sigmas[1:-1])


def test_dpmpp_2s_ancestral_hands_the_model_comfyuis_first_midpoint_on_flow():
    """ComfyUI's dpmpp_2s_ancestral on flow calls the model at σ = 1, then at the constant midpoint 0.9999."""
    sigmas = ksampler_sigmas(DiscreteFlow(), "simple", 4)
    seen = model_sigmas("dpmpp_2s_ancestral", "flow", sigmas)
    assert seen[0] == 1.0 and seen[1] == torch.tensor(0.9999, dtype=torch.float32)
    lam = lambda s: math.log((1 - s) / s)  # noqa: E731
    sigma, sigma_down = float(sigmas[1]), float(sigmas[2]) ** 2 / float(sigmas[1])
    assert float(seen[3]) == pytest.approx(1 / (1 + math.exp((lam(sigma) + lam(sigma_down)) / 2)), rel=1e-6)


@pytest.mark.parametrize("name", SDE_NAMES + ["dpmpp_2s_ancestral"])
def test_sigma_space_samplers_start_at_the_schedules_first_sigma(name):
    """σ-space has a finite λ everywhere: the model sees the schedule's first σ and 2S's λ-midpoint √(σ·σ_down)."""
    sigmas = ksampler_sigmas(PARAMETERISATIONS["eps"][0], "karras", 4)
    seen = model_sigmas(name, "eps", sigmas)
    assert seen[0] == sigmas[0]
    if name == "dpmpp_2s_ancestral":
        sigma, sigma_next = float(sigmas[0]), float(sigmas[1])
        sigma_down = math.sqrt(sigma_next ** 2 - sigma_next ** 2 * (sigma ** 2 - sigma_next ** 2) / sigma ** 2)
        assert float(seen[1]) == pytest.approx(math.sqrt(sigma * sigma_down), rel=1e-5)


@pytest.mark.parametrize("name", ["dpmpp_sde", "dpmpp_2m_sde", "dpmpp_3m_sde", "dpmpp_2s_ancestral"])
def test_log_snr_samplers_start_finite_from_pure_noise(name):
    """At σ = 1 flow's half-log-SNR is −∞; the solvers step from ComfyUI's first σ (above) and stay finite."""
    ms = DiscreteFlow()
    sigmas = ksampler_sigmas(ms, "simple", 6)
    x = standard_noise(64)
    noise = (BrownianTreeNoiseSampler(x, float(sigmas[sigmas > 0].min()), 1.0, 1) if name in SDE_SAMPLERS
             else ancestral_noise_sampler(x, 1))
    out = SAMPLERS[name](gaussian_denoiser(PARAMETERISATIONS["flow"][1]), x, sigmas, noise=noise, model_sampling=ms)
    assert torch.isfinite(out).all()


# --- through KSampler: the model sampling reaches the sampler -----------------------------------------------------

class FlowVelocity:
    """A rectified-flow network, exact for data N(μ, s²) with μ = the first 4 context values: it sees x and the
    timestep σ·1000 and predicts v = (x − D)/σ."""

    def __call__(self, x_in, t, context, y):
        sigma = (t / 1000).view(-1, 1, 1, 1)
        mu = context[:, 0, :4].reshape(-1, 4, 1, 1).to(x_in.dtype)
        a = 1 - sigma
        denoised = mu + a * S ** 2 / (a ** 2 * S ** 2 + sigma ** 2) * (x_in - a * mu)
        return (x_in - denoised) / sigma


@pytest.mark.parametrize("sampler_name,steps", [("euler_ancestral", 120), ("dpmpp_2m_sde", 60)])
def test_ksampler_gives_noise_injecting_samplers_the_flow(sampler_name, steps):
    """KSampler on DiscreteFlow (SD3's model sampling) from its seeded pure noise: the result is N(μ, s²), pooled
    over the 4 channels within 0.05 in mean and std(z). Before, the samplers never learnt the model was flow."""
    from nodes.sampling.ksampler import sample

    context = torch.zeros(1, 77, 8)
    context[:, :, :4] = MU.flatten()
    positive, negative = [{"context": context, "y": None}], [{"context": torch.zeros(1, 77, 8), "y": None}]
    out = sample(FlowVelocity(), DiscreteFlow(), {"samples": torch.zeros(1, 4, 64, 64)}, positive, negative,
                 seed=3, cfg=1.0, sampler_name=sampler_name, steps=steps, scheduler="simple")["samples"]
    z = (out - MU) / S
    assert abs(z.mean().item()) < TOL_MEAN and abs(z.std().item() - 1) < TOL_STD, (z.mean(), z.std())


@pytest.mark.parametrize("sampler_name,first_timesteps", [
    ("dpmpp_2m_sde", [OFFSET_SIGMA * 1000]), ("dpmpp_3m_sde_gpu", [OFFSET_SIGMA * 1000]),
    ("dpmpp_sde", [OFFSET_SIGMA * 1000]), ("dpmpp_2s_ancestral", [1000.0, torch.tensor(0.9999) * 1000]),
    ("euler_ancestral", [1000.0])])
def test_ksampler_hands_the_flow_network_comfyuis_first_timesteps(sampler_name, first_timesteps):
    """Through KSampler on SD3's model sampling (shift 3) the network's first timesteps are ComfyUI's: σ(0.9999)·1000
    for the SDE samplers, 1000 then 999.9 for dpmpp_2s_ancestral, 1000 for the others."""
    from nodes.sampling.ksampler import sample

    seen = []

    class Recording(FlowVelocity):
        def __call__(self, x_in, t, context, y):
            seen.append(t[0])
            return super().__call__(x_in, t, context, y)
    context = torch.zeros(1, 77, 8)
    cond = [{"context": context, "y": None}]
    sample(Recording(), DiscreteFlow(), {"samples": torch.zeros(1, 4, 8, 8)}, cond, cond, seed=3, cfg=1.0,
           sampler_name=sampler_name, steps=3, scheduler="simple")
    assert seen[:len(first_timesteps)] == [torch.as_tensor(t, dtype=torch.float32) for t in first_timesteps]


# --- the shipped SD3 workflow through `latentgraph run` -----------------------------------------------------------

@pytest.mark.parametrize("sampler_name", ["euler_ancestral", "dpmpp_2m_sde", "dpmpp_2s_ancestral"])
def test_sd3_workflow_runs_noise_injecting_samplers(tmp_path_factory, sampler_name):
    """workflows/sd3_txt2img.json (demo SD3, 4 steps) with its KSampler switched to a noise-injecting sampler writes
    a full, non-degenerate image, unlike the shipped deterministic dpmpp_2m's (the fresh noise reached it)."""
    from PIL import Image

    from sdxl_helpers import demo_models_dir, environment, run_workflow

    env = environment(demo_models_dir(tmp_path_factory), tmp_path_factory.mktemp("flow"))
    workflow = str(Path(__file__).parent.parent / "workflows" / "sd3_txt2img.json")

    def image(*sets):
        (path,) = run_workflow(workflow, env, *sets).values()
        return np.asarray(Image.open(path).convert("RGB")).astype(np.int16)

    noisy, shipped = image(f"10.sampler_name={sampler_name}"), image()
    assert noisy.shape == (256, 256, 3) and noisy.std() > 5
    assert np.abs(noisy - shipped).mean() > 5  # measured 40.5 (euler_ancestral), 33.8 (dpmpp_2m_sde)
