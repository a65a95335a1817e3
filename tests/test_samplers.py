"""Every sampler × every scheduler converges on an analytic problem, and the ODE samplers have their order.

The problem: data x₀ ~ N(μ, s²) per channel. Its exact denoiser is D(x; σ) = μ + s²/(s² + σ²)·(x − μ), the
noisy marginal at σ is N(μ, s² + σ²), and the probability-flow ODE maps x(σ) − μ ∝ √(s² + σ²). A sampler started
from that marginal at σ_max must end on N(μ, s²).

Tolerances (standardised z = (x − μ)/s, 4 channels with s = 1, 1.5, 2, 1.2):
- deterministic samplers: the start noise is standardised exactly, so the output mean is μ exactly (the map is
  affine) and |std(z) − 1| measures discretisation only: < 4 % per channel at the steps in ``STEPS`` (worst
  measured 3.2 %, on simple/sgm_uniform whose final σ is highest; the final jump σ_last → 0 shrinks the std by
  s/√(s² + σ_last²)).
- stochastic samplers: sample noise matters, so the check pools the channels (2048 values for SDE samplers,
  16384 otherwise): |mean(z)| < 0.08 and |std(z) − 1| < 0.08 (worst measured 0.037 and 0.046).
"""
import numpy as np
import pytest
import torch

from nodes.sampling.noise import BrownianTreeNoiseSampler, ancestral_noise_sampler
from nodes.sampling.samplers import (
    ANCESTRAL_SAMPLERS, SAMPLER_NAMES, SAMPLERS, SDE_SAMPLERS, linear_multistep_coeff,
)
from nodes.sampling.schedules import SCHEDULER_NAMES, DiscreteEps, get_sigmas, ksampler_sigmas

MS = DiscreteEps()
MU = torch.tensor([0.5, -1.0, 0.25, 1.5]).view(1, 4, 1, 1)
S = torch.tensor([1.0, 1.5, 2.0, 1.2]).view(1, 4, 1, 1)

# Steps per sampler: enough for its order on every scheduler (first order needs the most). dpmpp_3m_sde needs 120:
# its 2nd-difference term extrapolates across the large last λ step of normal/ddim_uniform (std error 0.20 at 60
# steps on normal, 0.04 at 120; bit-identical to k-diffusion's there, so a trait of the method). The Heun form of
# dpmpp_2m_sde is likewise 0.067 off at 60 steps, 0.027 at 120.
STEPS = {"euler": 60, "ddim": 60, "euler_ancestral": 60, "heun": 25, "dpm_2": 30, "dpm_2_ancestral": 30,
         "lms": 30, "dpmpp_2s_ancestral": 30, "dpmpp_sde": 20, "dpmpp_sde_gpu": 20, "dpmpp_2m": 30,
         "dpmpp_2m_sde": 60, "dpmpp_2m_sde_gpu": 60, "dpmpp_2m_sde_heun": 120, "dpmpp_2m_sde_heun_gpu": 120, "dpmpp_3m_sde": 120, "dpmpp_3m_sde_gpu": 120, "ddpm": 60,
         "lcm": 4, "ipndm": 30, "uni_pc": 30, "uni_pc_bh2": 30}


def gaussian_denoiser(mu, s):
    def model(x, sigma):
        sg = sigma.view(-1, *[1] * (x.ndim - 1))
        return mu + s ** 2 / (s ** 2 + sg ** 2) * (x - mu)
    return model


def consistency_function(mu, s):
    """What an LCM learns: the probability-flow map from (x, σ) to σ = 0. An exact denoiser (the posterior mean)
    would make lcm lose variance at every re-noising (std error 0.32 measured), as LCM-LoRA-less models do."""
    def model(x, sigma):
        sg = sigma.view(-1, *[1] * (x.ndim - 1))
        return mu + s / (s ** 2 + sg ** 2).sqrt() * (x - mu)
    return model


def standard_noise(n, seed=0):
    eps = torch.randn(n, 4, 1, 1, generator=torch.Generator().manual_seed(seed))
    return (eps - eps.mean(dim=0)) / eps.std(dim=0)


def noise_for(name, x, sigmas, seed=1):
    if name in ANCESTRAL_SAMPLERS:
        return ancestral_noise_sampler(x, seed)
    if name in SDE_SAMPLERS:
        return BrownianTreeNoiseSampler(x, float(sigmas[sigmas > 0].min()), float(sigmas.max()), seed)
    return None


def test_every_sampler_is_covered():
    assert set(STEPS) == set(SAMPLER_NAMES)
    assert SAMPLER_NAMES[:6] == ["euler", "euler_ancestral", "heun", "dpm_2", "dpm_2_ancestral", "lms"]


@pytest.mark.parametrize("name", SAMPLER_NAMES)
def test_converges_to_the_data_distribution_on_every_scheduler(name):
    stochastic = name in ANCESTRAL_SAMPLERS or name in SDE_SAMPLERS
    eps = standard_noise(512 if name in SDE_SAMPLERS else 4096)
    model = consistency_function(MU, S) if name == "lcm" else gaussian_denoiser(MU, S)
    failures = []
    for scheduler in SCHEDULER_NAMES:
        sigmas = ksampler_sigmas(MS, scheduler, STEPS[name], sampler_name=name)
        x = MU + eps * (S ** 2 + sigmas[0] ** 2).sqrt()
        out = SAMPLERS[name](model, x, sigmas, noise=noise_for(name, x, sigmas))
        z = (out - MU) / S
        if stochastic:
            mean_err, std_err, tol_mean, tol_std = abs(z.mean().item()), abs(z.std().item() - 1), 0.08, 0.08
        else:
            mean_err = z.mean(dim=(0, 2, 3)).abs().max().item()
            std_err = (z.std(dim=(0, 2, 3)) - 1).abs().max().item()
            tol_mean, tol_std = 1e-3, 0.04
        if not (mean_err < tol_mean and std_err < tol_std):
            failures.append(f"{scheduler}: mean err {mean_err:.4f}, std err {std_err:.4f}")
    assert not failures, f"{name} at {STEPS[name]} steps: {failures}"


def test_a_wrong_noise_level_is_caught():
    """The same check fails for a sampler that injects too little noise (guards the tolerance itself)."""
    eps = standard_noise(4096)
    sigmas = get_sigmas(MS, "karras", 60)
    x = MU + eps * (S ** 2 + sigmas[0] ** 2).sqrt()
    noise = noise_for("euler_ancestral", x, sigmas)
    out = SAMPLERS["euler_ancestral"](gaussian_denoiser(MU, S), x, sigmas, noise=noise, s_noise=0.7)
    assert abs(((out - MU) / S).std().item() - 1) > 0.08


# Order of accuracy: error against the exact ODE solution at σ_min, halving the step each time.
# UniPC-3 with its corrector is 3rd order or better (measured 11.7, 10.4 at 20→40→80 steps); iPNDM's equal-step
# weights make it 2nd order on Karras steps (4.5, 4.4).
ORDERS = {"euler": 1.8, "ddim": 1.8, "heun": 3.5, "dpm_2": 3.5, "dpmpp_2m": 3.5, "lms": 6.0, "ipndm": 3.5,
          "uni_pc": 7.0, "uni_pc_bh2": 7.0}


@pytest.mark.parametrize("name", list(ORDERS))
def test_ode_samplers_have_their_order(name):
    mu, s, x0 = 0.5, 1.3, torch.full((1, 1, 1, 1), 2.0, dtype=torch.float64)
    errors = []
    for steps in (10, 20, 40):
        sigmas = get_sigmas(MS, "karras", steps).double()[:-1]  # stop at σ_min: the exact answer is known there
        out = SAMPLERS[name](gaussian_denoiser(mu, s), x0.clone(), sigmas)
        exact = mu + (x0 - mu) * ((s ** 2 + sigmas[-1] ** 2) / (s ** 2 + sigmas[0] ** 2)) ** 0.5
        errors.append(abs(float(out - exact)))
    assert errors[0] / errors[1] > ORDERS[name] and errors[1] / errors[2] > ORDERS[name], errors


def test_dpmpp_2m_sde_without_noise_is_dpmpp_2m():
    x = torch.randn(3, 4, 2, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    sigmas = get_sigmas(MS, "karras", 12).double()
    model = gaussian_denoiser(0.2, 0.9)
    assert torch.allclose(SAMPLERS["dpmpp_2m_sde"](model, x, sigmas, eta=0.0),
                          SAMPLERS["dpmpp_2m"](model, x, sigmas), rtol=1e-12, atol=1e-12)


def test_euler_step_by_hand():
    x = torch.tensor([[[[3.0]]]])
    sigmas = torch.tensor([2.0, 0.5, 0.0])
    model = lambda x, sigma: x * 0 + 1.0  # noqa: E731 — D = 1 everywhere
    # step 1: d = (3 − 1)/2 = 1 → x = 3 + 1·(0.5 − 2) = 1.5; step 2: d = (1.5 − 1)/0.5 = 1 → x = 1.5 − 0.5 = 1.
    assert SAMPLERS["euler"](model, x, sigmas).item() == pytest.approx(1.0)


def test_lms_coefficients_are_exact_integrals():
    integrate = pytest.importorskip("scipy.integrate")
    t = get_sigmas(MS, "karras", 8).double().numpy()
    for order in (1, 2, 3, 4):
        i = 5
        for j in range(order):
            def basis(tau):
                return np.prod([(tau - t[i - k]) / (t[i - j] - t[i - k]) for k in range(order) if k != j])
            expected = integrate.quad(basis, t[i], t[i + 1], epsrel=1e-10)[0]
            assert linear_multistep_coeff(order, t, i, j) == pytest.approx(expected, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("name", SAMPLER_NAMES)
def test_callback_every_step(name):
    sigmas = get_sigmas(MS, "karras", 5)
    x = torch.randn(2, 4, 3, 3) * sigmas[0]
    seen = []
    SAMPLERS[name](gaussian_denoiser(0.0, 1.0), x, sigmas, noise=noise_for(name, x, sigmas),
                   callback=lambda info: seen.append(info))
    assert [info["i"] for info in seen] == list(range(5))
    assert all(set(info) == {"i", "x", "sigma", "sigma_hat", "denoised"} for info in seen)
    assert all(info["denoised"].shape == x.shape for info in seen)
    assert [float(info["sigma"]) for info in seen] == pytest.approx(sigmas[:-1].tolist())


@pytest.mark.parametrize("name", sorted(ANCESTRAL_SAMPLERS | SDE_SAMPLERS))
def test_stochastic_samplers_are_reproducible_by_seed(name):
    sigmas = get_sigmas(MS, "karras", 6)
    x = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(0)) * sigmas[0]
    model = gaussian_denoiser(0.0, 1.0)

    def run(seed):
        return SAMPLERS[name](model, x, sigmas, noise=noise_for(name, x, sigmas, seed))
    assert torch.equal(run(5), run(5))
    assert not torch.allclose(run(5), run(6))


def test_euler_churn_adds_noise_and_still_converges():
    eps = standard_noise(4096)
    sigmas = get_sigmas(MS, "karras", 60)
    x = MU + eps * (S ** 2 + sigmas[0] ** 2).sqrt()
    g = torch.Generator().manual_seed(9)
    noise = lambda a, b: torch.randn(x.shape, generator=g)  # noqa: E731
    out = SAMPLERS["euler"](gaussian_denoiser(MU, S), x, sigmas, noise=noise, s_churn=2.0)
    z = (out - MU) / S
    assert abs(z.mean().item()) < 0.05 and abs(z.std().item() - 1) < 0.05
    assert not torch.allclose(out, SAMPLERS["euler"](gaussian_denoiser(MU, S), x, sigmas))


def test_dpmpp_2m_sde_heun_correction_converges():
    eps = standard_noise(512)
    sigmas = get_sigmas(MS, "karras", 60)
    x = MU + eps * (S ** 2 + sigmas[0] ** 2).sqrt()
    out = SAMPLERS["dpmpp_2m_sde"](gaussian_denoiser(MU, S), x, sigmas, noise=noise_for("dpmpp_2m_sde", x, sigmas),
                                   solver_type="heun")
    z = (out - MU) / S
    assert abs(z.mean().item()) < 0.08 and abs(z.std().item() - 1) < 0.08
    with pytest.raises(ValueError, match="solver_type"):
        SAMPLERS["dpmpp_2m_sde"](gaussian_denoiser(MU, S), x, sigmas, solver_type="rk4")
