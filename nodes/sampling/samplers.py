"""The k-diffusion sampler family as short pure functions (Karras et al. 2022; Lu et al. 2022, DPM-Solver++).

Every sampler is ``fn(model, x, sigmas, *, extra_args=None, callback=None, noise=None, model_sampling=None,
**options) -> x``: ``model(x, sigma_batch, **extra_args)`` returns the denoised estimate D(x; σ); ``x`` starts at
``sigmas[0]``; ``callback({"i", "x", "sigma", "sigma_hat", "denoised"})`` is called once per step; ``noise`` is a
noise sampler (``nodes.sampling.noise``) for the samplers that inject noise: each sampler's declaration at the end
says which source it takes, and a sampler run without one raises on its first draw instead of falling back on the
global RNG. ``model_sampling`` (nodes.sampling.schedules; default σ-space ε) says how fresh noise enters a sample:
x = α(σ)·x₀ + σ·noise, α = 1 in σ-space, 1 − σ on rectified flow. The deterministic samplers never need it: the
probability-flow ODE dx/dσ = (x − D)/σ is the same in both. The update rules are sdxl.md §8, with ComfyUI's choices
where it differs from k-diffusion (x = D on the final step of the ancestral/SDE/LMS samplers, a log-σ midpoint for
dpm_2) and, on flow, for the first step from pure noise, where λ = −∞ (ModelSampling.solver_sigmas and
dpmpp_2s_midpoint). Notation: d = (x − D)/σ, λ = log(α/σ) (−log σ in σ-space), h = λ_next − λ.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .schedules import DiscreteEps, ModelSampling, get_ancestral_step

SIGMA_SPACE = DiscreteEps()  # what a sampler given no model sampling assumes


def to_d(x, sigma, denoised):
    """The probability-flow ODE slope dx/dσ."""
    return (x - denoised) / sigma


def _no_noise(sigma, sigma_next):
    raise RuntimeError("this sampler drew noise but was given no noise source: declare the noise it draws in "
                       "SAMPLER_DECLARATIONS (an unseeded draw would make seeds stop reproducing)")


def _setup(x, extra_args, noise, model_sampling):
    return extra_args or {}, noise or _no_noise, x.new_ones([x.shape[0]]), model_sampling or SIGMA_SPACE


def _report(callback, i, x, sigma, sigma_hat, denoised):
    if callback is not None:
        callback({"i": i, "x": x, "sigma": sigma, "sigma_hat": sigma_hat, "denoised": denoised})


def _churn(ms: ModelSampling, x, sigma, n, noise, s_churn, s_tmin, s_tmax, s_noise):
    """Karras et al.'s stochastic churn: raise σ to σ̂ = σ(1+γ) (at most pure noise) by the forward process, which
    scales the signal by α(σ̂)/α(σ) and adds the missing noise variance (γ = 0 by default: no-op). (ComfyUI adds
    σ-space noise with σ̂ uncapped on flow too, so there churn gives other images than this forward process.)"""
    gamma = min(s_churn / n, 2 ** 0.5 - 1) if s_tmin <= sigma <= s_tmax else 0.0
    sigma_hat = (sigma * (gamma + 1)).clamp(max=ms.sigma_ceiling)
    if sigma_hat > sigma:
        keep = ms.alpha(sigma_hat) / ms.alpha(sigma)
        x = keep * x + noise(sigma, sigma_hat) * s_noise * (sigma_hat ** 2 - (keep * sigma) ** 2) ** 0.5
    return x, sigma_hat


def _renoise(ms: ModelSampling, x, sigma_down, sigma_next, fresh):
    """An ancestral step's second half: x, stepped down to σ_down, brought back to noise level σ_next with
    ``fresh`` noise of std σ_up (``ModelSampling.ancestral_step``)."""
    return ms.alpha(sigma_next) / ms.alpha(sigma_down) * x + fresh


def _sigma_fn(t):
    return t.neg().exp()


def _t_fn(sigma):
    return sigma.log().neg()


@torch.no_grad()
def sample_euler(model, x, sigmas, *, extra_args=None, callback=None, noise=None, model_sampling=None,
                 s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0):
    """Euler (Karras et al. 2022, Algorithm 2) with optional churn; 1 model call per step."""
    extra_args, noise, s_in, ms = _setup(x, extra_args, noise, model_sampling)
    n = len(sigmas) - 1
    for i in range(n):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x, sigma_hat = _churn(ms, x, sigma, n, noise, s_churn, s_tmin, s_tmax, s_noise)
        denoised = model(x, sigma_hat * s_in, **extra_args)
        _report(callback, i, x, sigma, sigma_hat, denoised)
        x = x + to_d(x, sigma_hat, denoised) * (sigma_next - sigma_hat)
    return x


@torch.no_grad()
def sample_euler_ancestral(model, x, sigmas, *, extra_args=None, callback=None, noise=None, model_sampling=None,
                           eta=1.0, s_noise=1.0):
    """Euler to σ_down, then fresh noise of std σ_up."""
    extra_args, noise, s_in, ms = _setup(x, extra_args, noise, model_sampling)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * s_in, **extra_args)
        sigma_down, sigma_up = ms.ancestral_step(sigma, sigma_next, eta)
        _report(callback, i, x, sigma, sigma, denoised)
        if sigma_down == 0:
            x = denoised
        else:
            x = x + to_d(x, sigma, denoised) * (sigma_down - sigma)
            x = _renoise(ms, x, sigma_down, sigma_next, noise(sigma, sigma_next) * s_noise * sigma_up)
    return x


@torch.no_grad()
def sample_heun(model, x, sigmas, *, extra_args=None, callback=None, noise=None, model_sampling=None,
                s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0):
    """Heun's 2nd-order method (Karras et al. 2022, Algorithm 2); the step to σ = 0 is plain Euler."""
    extra_args, noise, s_in, ms = _setup(x, extra_args, noise, model_sampling)
    n = len(sigmas) - 1
    for i in range(n):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x, sigma_hat = _churn(ms, x, sigma, n, noise, s_churn, s_tmin, s_tmax, s_noise)
        denoised = model(x, sigma_hat * s_in, **extra_args)
        d = to_d(x, sigma_hat, denoised)
        _report(callback, i, x, sigma, sigma_hat, denoised)
        dt = sigma_next - sigma_hat
        if sigma_next == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = to_d(x_2, sigma_next, model(x_2, sigma_next * s_in, **extra_args))
            x = x + (d + d_2) / 2 * dt
    return x


@torch.no_grad()
def sample_dpm_2(model, x, sigmas, *, extra_args=None, callback=None, noise=None, model_sampling=None,
                 s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0):
    """DPM-Solver-2 in the Karras form: midpoint at the log-σ mean; the step to σ = 0 is plain Euler."""
    extra_args, noise, s_in, ms = _setup(x, extra_args, noise, model_sampling)
    n = len(sigmas) - 1
    for i in range(n):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x, sigma_hat = _churn(ms, x, sigma, n, noise, s_churn, s_tmin, s_tmax, s_noise)
        denoised = model(x, sigma_hat * s_in, **extra_args)
        d = to_d(x, sigma_hat, denoised)
        _report(callback, i, x, sigma, sigma_hat, denoised)
        if sigma_next == 0:
            x = x + d * (sigma_next - sigma_hat)
        else:
            sigma_mid = ((sigma_hat.log() + sigma_next.log()) / 2).exp()
            x_2 = x + d * (sigma_mid - sigma_hat)
            d_2 = to_d(x_2, sigma_mid, model(x_2, sigma_mid * s_in, **extra_args))
            x = x + d_2 * (sigma_next - sigma_hat)
    return x


@torch.no_grad()
def sample_dpm_2_ancestral(model, x, sigmas, *, extra_args=None, callback=None, noise=None, model_sampling=None,
                           eta=1.0, s_noise=1.0):
    """dpm_2 towards σ_down, then fresh noise of std σ_up."""
    extra_args, noise, s_in, ms = _setup(x, extra_args, noise, model_sampling)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * s_in, **extra_args)
        sigma_down, sigma_up = ms.ancestral_step(sigma, sigma_next, eta)
        d = to_d(x, sigma, denoised)
        _report(callback, i, x, sigma, sigma, denoised)
        if sigma_down == 0:
            x = x + d * (sigma_down - sigma)
        else:
            sigma_mid = ((sigma.log() + sigma_down.log()) / 2).exp()
            x_2 = x + d * (sigma_mid - sigma)
            d_2 = to_d(x_2, sigma_mid, model(x_2, sigma_mid * s_in, **extra_args))
            x = x + d_2 * (sigma_down - sigma)
            x = _renoise(ms, x, sigma_down, sigma_next, noise(sigma, sigma_next) * s_noise * sigma_up)
    return x


def linear_multistep_coeff(order: int, t: np.ndarray, i: int, j: int) -> float:
    """∫_{t[i]}^{t[i+1]} ℓ_j(τ) dτ for the Lagrange basis polynomial ℓ_j on the nodes t[i], t[i−1], …, t[i−order+1].

    ℓ_j is a polynomial, so numpy integrates it exactly (no quadrature, no scipy)."""
    if order - 1 > i:
        raise ValueError(f"order {order} too high for step {i}")
    nodes = [t[i - k] for k in range(order)]
    others = [nodes[k] for k in range(order) if k != j]
    basis = np.polynomial.Polynomial([1.0])
    for o in others:
        basis = basis * np.polynomial.Polynomial([-o, 1.0]) / (nodes[j] - o)
    antiderivative = basis.integ()
    return float(antiderivative(t[i + 1]) - antiderivative(t[i]))


@torch.no_grad()
def sample_lms(model, x, sigmas, *, extra_args=None, callback=None, noise=None, model_sampling=None, order=4):
    """Linear multistep in σ on the last ``order`` slopes; x = D on the step to σ = 0."""
    extra_args, noise, s_in, _ = _setup(x, extra_args, noise, model_sampling)
    sigmas_np = sigmas.detach().cpu().double().numpy()
    ds = []
    for i in range(len(sigmas) - 1):
        sigma = sigmas[i]
        denoised = model(x, sigma * s_in, **extra_args)
        ds.append(to_d(x, sigma, denoised))
        ds = ds[-order:]
        _report(callback, i, x, sigma, sigma, denoised)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            cur_order = min(i + 1, order)
            coeffs = [linear_multistep_coeff(cur_order, sigmas_np, i, j) for j in range(cur_order)]
            x = x + sum(c * d for c, d in zip(coeffs, reversed(ds)))
    return x


@torch.no_grad()
def sample_dpmpp_2s_ancestral(model, x, sigmas, *, extra_args=None, callback=None, noise=None, model_sampling=None,
                              eta=1.0, s_noise=1.0):
    """DPM-Solver++(2S) single-step towards σ_down, then fresh noise of std σ_up; 2 model calls per step."""
    extra_args, noise, s_in, ms = _setup(x, extra_args, noise, model_sampling)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * s_in, **extra_args)
        sigma_down, sigma_up = ms.ancestral_step(sigma, sigma_next, eta)
        _report(callback, i, x, sigma, sigma, denoised)
        if sigma_down == 0:
            x = x + to_d(x, sigma, denoised) * (sigma_down - sigma)
        else:
            t, t_next = ms.half_log_snr(sigma), ms.half_log_snr(sigma_down)
            h = t_next - t
            sigma_t = ms.sigma_at(t)
            sigma_s, h_s = ms.dpmpp_2s_midpoint(sigma, t, h)
            x_2 = (sigma_s / sigma_t) * x - ms.alpha(sigma_s) * torch.expm1(-h_s) * denoised
            denoised_2 = model(x_2, sigma_s * s_in, **extra_args)
            x = (ms.sigma_at(t_next) / sigma_t) * x - ms.alpha(sigma_down) * torch.expm1(-h) * denoised_2
        if sigma_next > 0:
            x = _renoise(ms, x, sigma_down, sigma_next, noise(sigma, sigma_next) * s_noise * sigma_up)
    return x


@torch.no_grad()
def sample_dpmpp_sde(model, x, sigmas, *, extra_args=None, callback=None, noise=None, model_sampling=None,
                     eta=1.0, s_noise=1.0, r=0.5):
    """DPM-Solver++ (stochastic): a substep at λ + r·h and the full step, each with Brownian noise; 2 calls/step."""
    extra_args, noise, s_in, ms = _setup(x, extra_args, noise, model_sampling)
    sigmas = ms.solver_sigmas(sigmas)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * s_in, **extra_args)
        _report(callback, i, x, sigma, sigma, denoised)
        if sigma_next == 0:
            x = denoised
            continue
        t, t_next = ms.half_log_snr(sigma), ms.half_log_snr(sigma_next)
        h = t_next - t
        s = t + h * r
        fac = 1 / (2 * r)
        sigma_t, sigma_s = ms.sigma_at(t), ms.sigma_at(s)
        alpha_t, alpha_s, alpha_next = ms.alpha(sigma_t), ms.alpha(sigma_s), ms.alpha(ms.sigma_at(t_next))
        # Both substeps split into DDIM and fresh noise in the σ-space picture x/α at σ/α = e^(−λ), as ComfyUI.
        sd, su = get_ancestral_step(_sigma_fn(t), _sigma_fn(s), eta)
        s_ = _t_fn(sd)
        x_2 = alpha_s / alpha_t * (_sigma_fn(s_) / _sigma_fn(t)) * x - alpha_s * torch.expm1(t - s_) * denoised
        x_2 = x_2 + alpha_s * noise(sigma_t, sigma_s) * s_noise * su
        denoised_2 = model(x_2, sigma_s * s_in, **extra_args)
        sd, su = get_ancestral_step(_sigma_fn(t), _sigma_fn(t_next), eta)
        t_next_ = _t_fn(sd)
        denoised_d = (1 - fac) * denoised + fac * denoised_2
        x = (alpha_next / alpha_t * (_sigma_fn(t_next_) / _sigma_fn(t)) * x
             - alpha_next * torch.expm1(t - t_next_) * denoised_d)
        x = x + alpha_next * noise(sigma_t, ms.sigma_at(t_next)) * s_noise * su
    return x


@torch.no_grad()
def sample_dpmpp_2m(model, x, sigmas, *, extra_args=None, callback=None, noise=None, model_sampling=None):
    """DPM-Solver++(2M): 2nd-order multistep on the data prediction; 1 model call per step."""
    extra_args, noise, s_in, _ = _setup(x, extra_args, noise, model_sampling)
    old_denoised, h_last = None, None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * s_in, **extra_args)
        _report(callback, i, x, sigma, sigma, denoised)
        if sigma_next == 0:
            x = denoised
            continue
        h = _t_fn(sigma_next) - _t_fn(sigma)
        denoised_d = denoised
        if old_denoised is not None:
            r = h_last / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
        x = (sigma_next / sigma) * x - torch.expm1(-h) * denoised_d
        old_denoised, h_last = denoised, h
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde(model, x, sigmas, *, extra_args=None, callback=None, noise=None, model_sampling=None,
                        eta=1.0, s_noise=1.0, solver_type="midpoint"):
    """DPM-Solver++(2M) SDE with Brownian noise; ``solver_type`` "midpoint" (ComfyUI default) or "heun"."""
    if solver_type not in ("midpoint", "heun"):
        raise ValueError(f"solver_type: must be 'midpoint' or 'heun', got {solver_type!r}")
    extra_args, noise, s_in, ms = _setup(x, extra_args, noise, model_sampling)
    sigmas = ms.solver_sigmas(sigmas)
    old_denoised, h_last = None, None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * s_in, **extra_args)
        _report(callback, i, x, sigma, sigma, denoised)
        if sigma_next == 0:
            x = denoised
            continue
        h = ms.half_log_snr(sigma_next) - ms.half_log_snr(sigma)
        eta_h = eta * h
        alpha_next = ms.alpha(sigma_next)
        x = (sigma_next / sigma) * torch.exp(-eta_h) * x - alpha_next * torch.expm1(-h - eta_h) * denoised
        if old_denoised is not None:
            r = h_last / h
            if solver_type == "midpoint":
                x = x - 0.5 * alpha_next * torch.expm1(-h - eta_h) * (1 / r) * (denoised - old_denoised)
            else:
                x = x + alpha_next * (-torch.expm1(-h - eta_h) / (-h - eta_h) + 1) * (1 / r) * (denoised - old_denoised)
        if eta:
            x = x + noise(sigma, sigma_next) * sigma_next * (-torch.expm1(-2 * eta_h)).sqrt() * s_noise
        old_denoised, h_last = denoised, h
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde_heun(model, x, sigmas, **kwargs):
    """dpmpp_2m_sde with the Heun form of the 2nd-order correction."""
    return sample_dpmpp_2m_sde(model, x, sigmas, solver_type="heun", **kwargs)


@torch.no_grad()
def sample_dpmpp_3m_sde(model, x, sigmas, *, extra_args=None, callback=None, noise=None, model_sampling=None,
                        eta=1.0, s_noise=1.0):
    """DPM-Solver++(3M) SDE with Brownian noise: 3rd-order multistep on the data prediction (1st, then 2nd order
    while the history is short); x = D on the step to σ = 0. 1 model call per step. As in k-diffusion, diffusers
    and the DPM-Solver code, the 2nd-difference term has half its Taylor weight, so with η = 0 it converges at
    2nd order in practice; it is kept for parity."""
    extra_args, noise, s_in, ms = _setup(x, extra_args, noise, model_sampling)
    sigmas = ms.solver_sigmas(sigmas)
    denoised_1 = denoised_2 = h_1 = h_2 = None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * s_in, **extra_args)
        _report(callback, i, x, sigma, sigma, denoised)
        if sigma_next == 0:
            x = denoised
            continue
        t = ms.half_log_snr(sigma)
        h = ms.half_log_snr(sigma_next) - t
        h_eta = h * (eta + 1)
        alpha_next = ms.alpha(sigma_next)
        # (σ_next/σ)·e^(−ηh) = (α_next/α)·e^(−h(η+1))
        x = alpha_next / ms.alpha(sigma) * torch.exp(-h_eta) * x - alpha_next * torch.expm1(-h_eta) * denoised
        phi_2 = torch.expm1(-h_eta) / h_eta + 1
        if h_2 is not None:
            # Divided differences of D over the last three λ, for the 1st and 2nd derivative terms.
            r0, r1 = h_1 / h, h_2 / h
            d1_0 = (denoised - denoised_1) / r0
            d1_1 = (denoised_1 - denoised_2) / r1
            d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
            d2 = (d1_0 - d1_1) / (r0 + r1)
            x = x + alpha_next * phi_2 * d1 - alpha_next * (phi_2 / h_eta - 0.5) * d2
        elif h_1 is not None:
            x = x + alpha_next * phi_2 * (denoised - denoised_1) / (h_1 / h)
        if eta:
            x = x + noise(sigma, sigma_next) * sigma_next * (-torch.expm1(-2 * eta * h)).sqrt() * s_noise
        denoised_1, denoised_2, h_1, h_2 = denoised, denoised_1, h, h_1
    return x


@torch.no_grad()
def sample_ddpm(model, x, sigmas, *, extra_args=None, callback=None, noise=None, model_sampling=None):
    """Ancestral DDPM (Ho et al. 2020): draw from the posterior q(x_σnext | x_σ, x₀ = D) with its variance β̃,
    between any two noise levels. For x = α·x₀ + σ·noise (Kingma et al. 2021, VDM eq. 31-33, with a = α/α_next) it
    is N(α_next·D + a·(σ_next/σ)²·(x − α·D), σ_next²·(1 − a²·(σ_next/σ)²)); in σ-space (a = 1) the law of
    euler_ancestral's step. The last step gives D. 1 model call per step. (ComfyUI's ddpm takes the σ-space form
    whatever the model, so on flow its images differ from these, which are the true posterior.)"""
    extra_args, noise, s_in, ms = _setup(x, extra_args, noise, model_sampling)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * s_in, **extra_args)
        _report(callback, i, x, sigma, sigma, denoised)
        alpha, alpha_next = ms.alpha(sigma), ms.alpha(sigma_next)
        keep = (sigma_next / sigma) ** 2 * (alpha / alpha_next)
        x = alpha_next * denoised + keep * (x - alpha * denoised)
        if sigma_next > 0:
            x = x + noise(sigma, sigma_next) * sigma_next * (1 - keep * (alpha / alpha_next)).sqrt()
    return x


@torch.no_grad()
def sample_lcm(model, x, sigmas, *, extra_args=None, callback=None, noise=None, model_sampling=None):
    """Latent Consistency Model sampling (Luo et al. 2023): take the model's denoised estimate, then noise it to
    σ_next with fresh noise as the model sampling noises a latent. 1 model call per step."""
    extra_args, noise, s_in, ms = _setup(x, extra_args, noise, model_sampling)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * s_in, **extra_args)
        _report(callback, i, x, sigma, sigma, denoised)
        x = denoised
        if sigma_next > 0:
            x = ms.noise_scaling(sigma_next, noise(sigma, sigma_next), denoised, max_denoise=False)
    return x


# Adams–Bashforth weights for orders 1-4, newest slope first (they assume equal steps; iPNDM uses them anyway).
_ADAMS_BASHFORTH = ((1.0,), (3 / 2, -1 / 2), (23 / 12, -16 / 12, 5 / 12), (55 / 24, -59 / 24, 37 / 24, -9 / 24))


@torch.no_grad()
def sample_ipndm(model, x, sigmas, *, extra_args=None, callback=None, noise=None, model_sampling=None, max_order=4):
    """Improved PNDM (Zhang & Chen 2023; Liu et al. 2022): Adams–Bashforth in σ on the last ``max_order`` slopes
    with the fixed equal-step weights, the order ramping up from 1; x = D on the step to σ = 0. 1 model call per
    step."""
    if not 1 <= max_order <= len(_ADAMS_BASHFORTH):
        raise ValueError(f"max_order: must be 1 to {len(_ADAMS_BASHFORTH)}, got {max_order}")
    extra_args, noise, s_in, _ = _setup(x, extra_args, noise, model_sampling)
    ds = []  # slopes, newest first
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * s_in, **extra_args)
        _report(callback, i, x, sigma, sigma, denoised)
        ds = [to_d(x, sigma, denoised)] + ds[:max_order - 1]
        if sigma_next == 0:
            x = denoised
        else:
            x = x + (sigma_next - sigma) * sum(w * d for w, d in zip(_ADAMS_BASHFORTH[len(ds) - 1], ds))
    return x


@torch.no_grad()
def sample_ddim(model, x, sigmas, **kwargs):
    """DDIM (η = 0) is Euler on the probability-flow ODE in σ-space; pair it with ddim_uniform for DDIM's steps."""
    return sample_euler(model, x, sigmas, **kwargs)


def _unipc_step(x, lam, lam_next, denoised, nodes, variant):
    """One UniPC update of x from λ to λ_next: the 1st-order DPM-Solver++ step, minus B(h)·Σ ρ_k·(D_k − D)/r_k over
    ``nodes`` [(λ_k, D_k)] with r_k = (λ_k − λ)/h. The predictor UniP passes earlier points; the corrector UniC
    also the point just reached. ρ solves the order conditions Σ_k ρ_k·r_k^(i−1) = b_i, i = 1..K (ρ = ½ when
    K = 1, as in the reference code); bh1 takes B(h) = −h, bh2 B(h) = e^(−h) − 1. λ are float64 CPU scalars."""
    h = lam_next - lam
    h_phi_1 = torch.expm1(-h)
    x_next = float(torch.exp(-h)) * x - float(h_phi_1) * denoised  # e^(−h) = σ_next/σ
    if not nodes:
        return x_next
    b_h = -h if variant == "bh1" else h_phi_1
    rks = torch.stack([(lam_k - lam) / h for lam_k, _ in nodes])
    if len(nodes) == 1:
        rhos = torch.tensor([0.5], dtype=torch.float64)
    else:
        b, h_phi_k, factorial = [], h_phi_1 / -h - 1, 1
        for k in range(1, len(nodes) + 1):
            b.append(h_phi_k * factorial / b_h)
            factorial *= k + 1
            h_phi_k = h_phi_k / -h - 1 / factorial
        rhos = torch.linalg.solve(torch.stack([rks ** k for k in range(len(nodes))]), torch.stack(b))
    correction = sum(float(rho / r) * (d - denoised) for rho, r, (_, d) in zip(rhos, rks, nodes))
    return x_next - float(b_h) * correction


@torch.no_grad()
def sample_uni_pc(model, x, sigmas, *, extra_args=None, callback=None, noise=None, model_sampling=None,
                  order=3, variant="bh1"):
    """UniPC (Zhao et al. 2023): the multistep predictor UniP-p on the data prediction, then the corrector UniC-p,
    which reuses the model call at the point reached (order p + 1 at no extra cost). p ramps up from 1 and falls
    to 1 on the last step; variant "bh1" or "bh2" picks B(h). 1 model call per step."""
    if variant not in ("bh1", "bh2"):
        raise ValueError(f"variant: must be 'bh1' or 'bh2', got {variant!r}")
    extra_args, noise, s_in, _ = _setup(x, extra_args, noise, model_sampling)
    # As ComfyUI, the last step lands on σ = 0.001 rather than 0, where λ = −log σ would be infinite.
    sigmas_cpu = sigmas.detach().cpu().double()
    lambdas = _t_fn(torch.where(sigmas_cpu == 0, 1e-3, sigmas_cpu))
    n = len(sigmas) - 1
    history, x_last, p_last = [], None, 0  # history: (λ, D) of the points visited, newest first
    for i in range(n):
        sigma = sigmas[i]
        denoised = model(x, sigma * s_in, **extra_args)
        _report(callback, i, x, sigma, sigma, denoised)
        if history:
            x = _unipc_step(x_last, history[0][0], lambdas[i], history[0][1],
                            history[1:p_last] + [(lambdas[i], denoised)], variant)
        history = [(lambdas[i], denoised)] + history[:order - 1]
        p = min(order, i + 1, n - i)
        x_last = x
        x = _unipc_step(x, lambdas[i], lambdas[i + 1], denoised, history[1:p], variant)
        p_last = p
    return x


@torch.no_grad()
def sample_uni_pc_bh2(model, x, sigmas, **kwargs):
    """UniPC with B(h) = e^(−h) − 1 (the paper's bh2, recommended for guided sampling)."""
    return sample_uni_pc(model, x, sigmas, variant="bh2", **kwargs)


NO_NOISE, ANCESTRAL, BROWNIAN = "none", "ancestral", "brownian"


@dataclass(frozen=True)
class SamplerDeclaration:
    """A sampler and the noise it draws: NO_NOISE (deterministic; euler/heun/dpm_2 churn stays off), ANCESTRAL
    (fresh Gaussian noise per step) or BROWNIAN (increments of one Brownian motion over the run). ksampler.sample
    gives it exactly that source, seeded from the run's seed."""
    fn: Callable
    noise: str

    def __post_init__(self):
        if self.noise not in (NO_NOISE, ANCESTRAL, BROWNIAN):
            raise ValueError(f"sampler {self.fn.__name__}: noise must be one of none/ancestral/brownian, "
                             f"got {self.noise!r}")


SAMPLER_DECLARATIONS = {
    "euler": SamplerDeclaration(sample_euler, NO_NOISE),
    "euler_ancestral": SamplerDeclaration(sample_euler_ancestral, ANCESTRAL),
    "heun": SamplerDeclaration(sample_heun, NO_NOISE),
    "dpm_2": SamplerDeclaration(sample_dpm_2, NO_NOISE),
    "dpm_2_ancestral": SamplerDeclaration(sample_dpm_2_ancestral, ANCESTRAL),
    "lms": SamplerDeclaration(sample_lms, NO_NOISE),
    "dpmpp_2s_ancestral": SamplerDeclaration(sample_dpmpp_2s_ancestral, ANCESTRAL),
    "dpmpp_sde": SamplerDeclaration(sample_dpmpp_sde, BROWNIAN),
    # ComfyUI's _gpu variants differ only in building the Brownian tree on the sampling device. Here every noise
    # source is drawn on the CPU so that a seed gives the same image on any device (noise.py), so they run the
    # same sampler with the same CPU tree: identical to ComfyUI's _gpu on a CPU, another noise draw on a GPU.
    "dpmpp_sde_gpu": SamplerDeclaration(sample_dpmpp_sde, BROWNIAN),
    "dpmpp_2m": SamplerDeclaration(sample_dpmpp_2m, NO_NOISE),
    "dpmpp_2m_sde": SamplerDeclaration(sample_dpmpp_2m_sde, BROWNIAN),
    "dpmpp_2m_sde_gpu": SamplerDeclaration(sample_dpmpp_2m_sde, BROWNIAN),
    "dpmpp_2m_sde_heun": SamplerDeclaration(sample_dpmpp_2m_sde_heun, BROWNIAN),
    "dpmpp_2m_sde_heun_gpu": SamplerDeclaration(sample_dpmpp_2m_sde_heun, BROWNIAN),
    "dpmpp_3m_sde": SamplerDeclaration(sample_dpmpp_3m_sde, BROWNIAN),
    "dpmpp_3m_sde_gpu": SamplerDeclaration(sample_dpmpp_3m_sde, BROWNIAN),
    "ddpm": SamplerDeclaration(sample_ddpm, ANCESTRAL),
    "lcm": SamplerDeclaration(sample_lcm, ANCESTRAL),
    "ipndm": SamplerDeclaration(sample_ipndm, NO_NOISE),
    "ddim": SamplerDeclaration(sample_ddim, NO_NOISE),
    "uni_pc": SamplerDeclaration(sample_uni_pc, NO_NOISE),
    "uni_pc_bh2": SamplerDeclaration(sample_uni_pc_bh2, NO_NOISE),
}
SAMPLERS = {name: d.fn for name, d in SAMPLER_DECLARATIONS.items()}
SAMPLER_NAMES = list(SAMPLERS)  # ComfyUI's order
ANCESTRAL_SAMPLERS = frozenset(n for n, d in SAMPLER_DECLARATIONS.items() if d.noise == ANCESTRAL)
SDE_SAMPLERS = frozenset(n for n, d in SAMPLER_DECLARATIONS.items() if d.noise == BROWNIAN)
