"""The k-diffusion sampler family as short pure functions (Karras et al. 2022; Lu et al. 2022, DPM-Solver++).

Every sampler is ``fn(model, x, sigmas, *, extra_args=None, callback=None, noise=None, **options) -> x``:
``model(x, sigma_batch, **extra_args)`` returns the denoised estimate D(x; σ); ``x`` starts at ``sigmas[0]``;
``callback({"i", "x", "sigma", "sigma_hat", "denoised"})`` is called once per step; ``noise`` is a noise sampler
(``nodes.sampling.noise``) for the samplers that inject noise. The update rules are sdxl.md §8, with ComfyUI's
choices where it differs from k-diffusion (x = D on the final step of the ancestral/SDE/LMS samplers, a log-σ
midpoint for dpm_2). Notation: d = (x − D)/σ, λ = −log σ, h = λ_next − λ.
"""
from __future__ import annotations

import numpy as np
import torch


def to_d(x, sigma, denoised):
    """The probability-flow ODE slope dx/dσ."""
    return (x - denoised) / sigma


def get_ancestral_step(sigma, sigma_next, eta=1.0):
    """Split a step into a deterministic part down to σ_down and fresh noise of std σ_up."""
    if not eta or sigma_next == 0:
        return sigma_next, sigma_next * 0.0
    sigma_up = min(sigma_next, eta * (sigma_next ** 2 * (sigma ** 2 - sigma_next ** 2) / sigma ** 2) ** 0.5)
    return (sigma_next ** 2 - sigma_up ** 2) ** 0.5, sigma_up


def _default_noise(x):
    return lambda sigma, sigma_next: torch.randn_like(x)


def _setup(x, extra_args, noise):
    return extra_args or {}, noise or _default_noise(x), x.new_ones([x.shape[0]])


def _report(callback, i, x, sigma, sigma_hat, denoised):
    if callback is not None:
        callback({"i": i, "x": x, "sigma": sigma, "sigma_hat": sigma_hat, "denoised": denoised})


def _churn(x, sigma, n, noise, s_churn, s_tmin, s_tmax, s_noise):
    """Karras et al.'s stochastic churn: raise σ to σ̂ = σ(1+γ) by adding noise (γ = 0 by default: no-op)."""
    gamma = min(s_churn / n, 2 ** 0.5 - 1) if s_tmin <= sigma <= s_tmax else 0.0
    sigma_hat = sigma * (gamma + 1)
    if gamma > 0:
        x = x + noise(sigma, sigma_hat) * s_noise * (sigma_hat ** 2 - sigma ** 2) ** 0.5
    return x, sigma_hat


def _sigma_fn(t):
    return t.neg().exp()


def _t_fn(sigma):
    return sigma.log().neg()


@torch.no_grad()
def sample_euler(model, x, sigmas, *, extra_args=None, callback=None, noise=None,
                 s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0):
    """Euler (Karras et al. 2022, Algorithm 2) with optional churn; 1 model call per step."""
    extra_args, noise, s_in = _setup(x, extra_args, noise)
    n = len(sigmas) - 1
    for i in range(n):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x, sigma_hat = _churn(x, sigma, n, noise, s_churn, s_tmin, s_tmax, s_noise)
        denoised = model(x, sigma_hat * s_in, **extra_args)
        _report(callback, i, x, sigma, sigma_hat, denoised)
        x = x + to_d(x, sigma_hat, denoised) * (sigma_next - sigma_hat)
    return x


@torch.no_grad()
def sample_euler_ancestral(model, x, sigmas, *, extra_args=None, callback=None, noise=None, eta=1.0, s_noise=1.0):
    """Euler to σ_down, then fresh noise of std σ_up."""
    extra_args, noise, s_in = _setup(x, extra_args, noise)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * s_in, **extra_args)
        sigma_down, sigma_up = get_ancestral_step(sigma, sigma_next, eta)
        _report(callback, i, x, sigma, sigma, denoised)
        if sigma_down == 0:
            x = denoised
        else:
            x = x + to_d(x, sigma, denoised) * (sigma_down - sigma)
            x = x + noise(sigma, sigma_next) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_heun(model, x, sigmas, *, extra_args=None, callback=None, noise=None,
                s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0):
    """Heun's 2nd-order method (Karras et al. 2022, Algorithm 2); the step to σ = 0 is plain Euler."""
    extra_args, noise, s_in = _setup(x, extra_args, noise)
    n = len(sigmas) - 1
    for i in range(n):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x, sigma_hat = _churn(x, sigma, n, noise, s_churn, s_tmin, s_tmax, s_noise)
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
def sample_dpm_2(model, x, sigmas, *, extra_args=None, callback=None, noise=None,
                 s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0):
    """DPM-Solver-2 in the Karras form: midpoint at the log-σ mean; the step to σ = 0 is plain Euler."""
    extra_args, noise, s_in = _setup(x, extra_args, noise)
    n = len(sigmas) - 1
    for i in range(n):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x, sigma_hat = _churn(x, sigma, n, noise, s_churn, s_tmin, s_tmax, s_noise)
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
def sample_dpm_2_ancestral(model, x, sigmas, *, extra_args=None, callback=None, noise=None, eta=1.0, s_noise=1.0):
    """dpm_2 towards σ_down, then fresh noise of std σ_up."""
    extra_args, noise, s_in = _setup(x, extra_args, noise)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * s_in, **extra_args)
        sigma_down, sigma_up = get_ancestral_step(sigma, sigma_next, eta)
        d = to_d(x, sigma, denoised)
        _report(callback, i, x, sigma, sigma, denoised)
        if sigma_down == 0:
            x = x + d * (sigma_down - sigma)
        else:
            sigma_mid = ((sigma.log() + sigma_down.log()) / 2).exp()
            x_2 = x + d * (sigma_mid - sigma)
            d_2 = to_d(x_2, sigma_mid, model(x_2, sigma_mid * s_in, **extra_args))
            x = x + d_2 * (sigma_down - sigma)
            x = x + noise(sigma, sigma_next) * s_noise * sigma_up
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
def sample_lms(model, x, sigmas, *, extra_args=None, callback=None, noise=None, order=4):
    """Linear multistep in σ on the last ``order`` slopes; x = D on the step to σ = 0."""
    extra_args, noise, s_in = _setup(x, extra_args, noise)
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
def sample_dpmpp_2s_ancestral(model, x, sigmas, *, extra_args=None, callback=None, noise=None, eta=1.0, s_noise=1.0):
    """DPM-Solver++(2S) single-step towards σ_down, then fresh noise of std σ_up; 2 model calls per step."""
    extra_args, noise, s_in = _setup(x, extra_args, noise)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * s_in, **extra_args)
        sigma_down, sigma_up = get_ancestral_step(sigma, sigma_next, eta)
        _report(callback, i, x, sigma, sigma, denoised)
        if sigma_down == 0:
            x = x + to_d(x, sigma, denoised) * (sigma_down - sigma)
        else:
            t, t_next = _t_fn(sigma), _t_fn(sigma_down)
            h = t_next - t
            s = t + h / 2
            x_2 = (_sigma_fn(s) / _sigma_fn(t)) * x - torch.expm1(-h / 2) * denoised
            denoised_2 = model(x_2, _sigma_fn(s) * s_in, **extra_args)
            x = (_sigma_fn(t_next) / _sigma_fn(t)) * x - torch.expm1(-h) * denoised_2
        if sigma_next > 0:
            x = x + noise(sigma, sigma_next) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_dpmpp_sde(model, x, sigmas, *, extra_args=None, callback=None, noise=None, eta=1.0, s_noise=1.0, r=0.5):
    """DPM-Solver++ (stochastic): a substep at λ + r·h and the full step, each with Brownian noise; 2 calls/step."""
    extra_args, noise, s_in = _setup(x, extra_args, noise)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * s_in, **extra_args)
        _report(callback, i, x, sigma, sigma, denoised)
        if sigma_next == 0:
            x = denoised
            continue
        t, t_next = _t_fn(sigma), _t_fn(sigma_next)
        h = t_next - t
        s = t + h * r
        fac = 1 / (2 * r)
        sd, su = get_ancestral_step(_sigma_fn(t), _sigma_fn(s), eta)
        s_ = _t_fn(sd)
        x_2 = (_sigma_fn(s_) / _sigma_fn(t)) * x - torch.expm1(t - s_) * denoised
        x_2 = x_2 + noise(_sigma_fn(t), _sigma_fn(s)) * s_noise * su
        denoised_2 = model(x_2, _sigma_fn(s) * s_in, **extra_args)
        sd, su = get_ancestral_step(_sigma_fn(t), _sigma_fn(t_next), eta)
        t_next_ = _t_fn(sd)
        denoised_d = (1 - fac) * denoised + fac * denoised_2
        x = (_sigma_fn(t_next_) / _sigma_fn(t)) * x - torch.expm1(t - t_next_) * denoised_d
        x = x + noise(_sigma_fn(t), _sigma_fn(t_next)) * s_noise * su
    return x


@torch.no_grad()
def sample_dpmpp_2m(model, x, sigmas, *, extra_args=None, callback=None, noise=None):
    """DPM-Solver++(2M): 2nd-order multistep on the data prediction; 1 model call per step."""
    extra_args, noise, s_in = _setup(x, extra_args, noise)
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
def sample_dpmpp_2m_sde(model, x, sigmas, *, extra_args=None, callback=None, noise=None,
                        eta=1.0, s_noise=1.0, solver_type="midpoint"):
    """DPM-Solver++(2M) SDE with Brownian noise; ``solver_type`` "midpoint" (ComfyUI default) or "heun"."""
    if solver_type not in ("midpoint", "heun"):
        raise ValueError(f"solver_type: must be 'midpoint' or 'heun', got {solver_type!r}")
    extra_args, noise, s_in = _setup(x, extra_args, noise)
    old_denoised, h_last = None, None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * s_in, **extra_args)
        _report(callback, i, x, sigma, sigma, denoised)
        if sigma_next == 0:
            x = denoised
            continue
        h = _t_fn(sigma_next) - _t_fn(sigma)
        eta_h = eta * h
        x = (sigma_next / sigma) * torch.exp(-eta_h) * x - torch.expm1(-h - eta_h) * denoised
        if old_denoised is not None:
            r = h_last / h
            if solver_type == "midpoint":
                x = x - 0.5 * torch.expm1(-h - eta_h) * (1 / r) * (denoised - old_denoised)
            else:
                x = x + (-torch.expm1(-h - eta_h) / (-h - eta_h) + 1) * (1 / r) * (denoised - old_denoised)
        if eta:
            x = x + noise(sigma, sigma_next) * sigma_next * (-torch.expm1(-2 * eta_h)).sqrt() * s_noise
        old_denoised, h_last = denoised, h
    return x


@torch.no_grad()
def sample_ddim(model, x, sigmas, **kwargs):
    """DDIM (η = 0) is Euler on the probability-flow ODE in σ-space; pair it with ddim_uniform for DDIM's steps."""
    return sample_euler(model, x, sigmas, **kwargs)


SAMPLERS = {
    "euler": sample_euler,
    "euler_ancestral": sample_euler_ancestral,
    "heun": sample_heun,
    "dpm_2": sample_dpm_2,
    "dpm_2_ancestral": sample_dpm_2_ancestral,
    "lms": sample_lms,
    "dpmpp_2s_ancestral": sample_dpmpp_2s_ancestral,
    "dpmpp_sde": sample_dpmpp_sde,
    "dpmpp_2m": sample_dpmpp_2m,
    "dpmpp_2m_sde": sample_dpmpp_2m_sde,
    "ddim": sample_ddim,
}
SAMPLER_NAMES = list(SAMPLERS)  # ComfyUI's order

# Which noise source each stochastic sampler takes (the rest are deterministic unless churn is on).
ANCESTRAL_SAMPLERS = frozenset({"euler_ancestral", "dpm_2_ancestral", "dpmpp_2s_ancestral"})
SDE_SAMPLERS = frozenset({"dpmpp_sde", "dpmpp_2m_sde"})
