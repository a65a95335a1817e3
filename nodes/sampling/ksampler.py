"""KSampler / KSamplerAdvanced semantics (comfyui-compat.md §11, sdxl.md §7, §10) over any ε-network.

``sample`` is the whole denoising run a sampler node performs: schedule (with denoise strength and the
start/end-step window), seeded initial noise, guidance, inpainting mask blending, per-step progress, and the
leftover-noise rules that make the base → refiner hand-offs work. It knows no network: ``eps_fn(x_in, t,
**inputs)`` is the call and ``model_sampling`` its parameterisation (nodes.sampling.denoiser). Latents are in
sampling space (nodes.latent_format).

Refiner hand-offs:

- Ensemble of experts (``ensemble_of_experts``): the base runs steps [0, S) of the shared schedule and returns
  its sample still noisy at σ_S (``end_step=S, return_leftover_noise=True``); the refiner runs steps [S, steps)
  on the same schedule without adding noise (``start_step=S, add_noise=False``).
- SDEdit (the paper's refinement): the finished base latent is re-noised to a level within the refiner's first
  ``max_timestep`` noise levels and denoised: ``sample(..., sigmas=sdedit_sigmas(ms, scheduler, steps,
  strength))`` (latent + ε·σ_start, then the schedule from σ_start to 0).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from .guidance import cfg_denoiser
from .noise import BrownianTreeNoiseSampler, ancestral_noise_sampler, prepare_noise
from .samplers import ANCESTRAL, BROWNIAN, SAMPLER_DECLARATIONS, SAMPLER_NAMES
from .schedules import SCHEDULER_NAMES, ModelSampling, get_sigmas, ksampler_sigmas

ProgressFn = Callable[[int, int, torch.Tensor], None]


def window_sigmas(sigmas: torch.Tensor, start_step: int = 0, end_step: int | None = None,
                  return_leftover_noise: bool = False) -> torch.Tensor:
    """KSamplerAdvanced's step window: ``end_step`` below the schedule length keeps ``sigmas[:end_step+1]`` and
    zeroes the last σ unless leftover noise is wanted; then ``start_step`` keeps ``sigmas[start_step:]``. A
    start at or past the last step gives an empty schedule (the node returns its input)."""
    if end_step is not None and end_step < len(sigmas) - 1:
        sigmas = sigmas[: end_step + 1].clone()
        if not return_leftover_noise:
            sigmas[-1] = 0.0
    if start_step:
        sigmas = sigmas[start_step:] if start_step < len(sigmas) - 1 else sigmas[:0]
    return sigmas


def _prepare_mask(mask: torch.Tensor, samples: torch.Tensor, node: str) -> torch.Tensor:
    """A noise_mask ([h, w], [B, h, w] or [B, 1, h, w], any resolution; 1 = repaint) as a latent-shaped weight."""
    if mask.ndim < 2 or mask.ndim > 4 or (mask.ndim == 4 and mask.shape[1] != 1):
        raise ValueError(f"{node}: latent 'noise_mask' must be [h, w], [B, h, w] or [B, 1, h, w], "
                         f"got {tuple(mask.shape)}")
    mask = mask.reshape(-1, 1, mask.shape[-2], mask.shape[-1]).to(samples.device, torch.float32)
    if mask.shape[-2:] != samples.shape[-2:]:
        mask = F.interpolate(mask, size=samples.shape[-2:], mode="bilinear", align_corners=False)
    batch = samples.shape[0]
    if mask.shape[0] != batch:
        mask = mask.repeat(math.ceil(batch / mask.shape[0]), 1, 1, 1)[:batch]
    return mask.clamp(0, 1).expand_as(samples).to(samples.dtype)


def _inpainting(model, model_sampling: ModelSampling, latent, noise, mask):
    """Keep the unmasked area on the input latent: noised to the current σ going in, clean coming out."""
    keep = 1 - mask

    def denoise(x, sigma):
        known = model_sampling.noise_scaling(sigma, noise, latent, max_denoise=False)
        return model(x * mask + known * keep, sigma) * mask + latent * keep

    return denoise


def sample(eps_fn, model_sampling: ModelSampling, latent: dict, positive, negative, *, seed: int, cfg: float,
           sampler_name: str, steps: int = 0, scheduler: str = "", denoise: float = 1.0, start_step: int = 0,
           end_step: int | None = None, add_noise: bool = True, return_leftover_noise: bool = False,
           callback: ProgressFn | None = None, sigmas: torch.Tensor | None = None, node: str = "KSampler") -> dict:
    """Run a sampler node; returns a copy of ``latent`` with new ``samples``.

    KSampler is ``sample(..., denoise=d)``; KSamplerAdvanced is ``sample(..., start_step, end_step, add_noise,
    return_leftover_noise)``; SamplerCustom passes ``sigmas`` directly (``steps`` and ``scheduler`` are then
    unused). ``callback(step, total, x0)`` runs after each step's model evaluation with the denoised estimate (step
    counts 1..total); an exception it raises (an interruption) ends the run and propagates.
    ``latent["batch_index"]`` picks each image's noise.
    """
    if sampler_name not in SAMPLER_DECLARATIONS:
        raise ValueError(f"{node}: input 'sampler_name': {sampler_name!r} is not one of {SAMPLER_NAMES}")
    if sigmas is None:
        if scheduler not in SCHEDULER_NAMES:
            raise ValueError(f"{node}: input 'scheduler': {scheduler!r} is not one of {SCHEDULER_NAMES}")
        if steps < 1:
            raise ValueError(f"{node}: input 'steps' must be at least 1, got {steps}")
        sigmas = ksampler_sigmas(model_sampling, scheduler, steps, denoise, sampler_name)
    sigmas = window_sigmas(torch.as_tensor(sigmas, dtype=torch.float32).reshape(-1), start_step, end_step,
                           return_leftover_noise)
    samples = latent["samples"]
    out = dict(latent)
    if len(sigmas) < 2:
        return out

    if add_noise:
        noise = prepare_noise(samples, seed, latent.get("batch_index")).to(samples.device, samples.dtype)
    else:
        noise = torch.zeros_like(samples)
    sigmas = sigmas.to(samples.device)
    sigma_max = model_sampling.sigma_max
    max_denoise = math.isclose(float(sigmas[0]), sigma_max, rel_tol=1e-5) or float(sigmas[0]) > sigma_max
    x = model_sampling.noise_scaling(sigmas[0], noise, samples, max_denoise)

    model = cfg_denoiser(eps_fn, model_sampling, positive, negative, cfg, node=node)
    mask = latent.get("noise_mask")
    if mask is not None:
        mask = _prepare_mask(mask, samples, node)
        model = _inpainting(model, model_sampling, samples, noise, mask)

    declared = SAMPLER_DECLARATIONS[sampler_name]
    total = len(sigmas) - 1

    def report(info):
        if callback is not None:
            callback(info["i"] + 1, total, info["denoised"])

    x = declared.fn(model, x, sigmas, callback=report, noise=step_noise(declared.noise, x, sigmas, seed),
                    model_sampling=model_sampling)
    x = model_sampling.inverse_noise_scaling(sigmas[-1], x)
    if mask is not None:
        # The unmasked area ends exactly on the input (noised to the final σ when leftover noise is kept).
        known = samples
        if sigmas[-1] > 0:
            known = model_sampling.noise_scaling(sigmas[-1], noise, samples, max_denoise=False)
        x = x * mask + known * (1 - mask)
    out["samples"] = x
    return out


def step_noise(kind: str, x: torch.Tensor, sigmas: torch.Tensor, seed: int):
    """The seeded noise source a sampler declared (samplers.SAMPLER_DECLARATIONS), or None for one that draws none."""
    if kind == ANCESTRAL:
        return ancestral_noise_sampler(x, seed)
    if kind == BROWNIAN and int((sigmas > 0).sum()) > 1:
        # (A single positive σ is one step to 0, which draws no noise and has no interval for a Brownian tree.)
        positive_sigmas = sigmas[sigmas > 0]
        return BrownianTreeNoiseSampler(x, float(positive_sigmas.min()), float(positive_sigmas.max()), seed)
    return None


def sdedit_sigmas(model_sampling: ModelSampling, scheduler: str, steps: int, strength: float,
                  max_timestep: int = 200) -> torch.Tensor:
    """The paper's SDEdit refinement schedule: start at timestep ``round(strength·max_timestep) − 1`` (strength 1
    → t = 199, σ 0.5693, the top of the refiner's specialised range) and run ``scheduler`` over that range only.
    Repeated σ (a short range with many steps) are merged, so every step makes progress."""
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"SDEdit: strength must be in (0, 1], got {strength}")
    t_start = max(int(round(strength * max_timestep)) - 1, 1)
    return torch.unique_consecutive(get_sigmas(model_sampling.truncated(t_start), scheduler, steps))


def expert_switch_step(steps: int, switch: float) -> int:
    """The step at which the base hands over to the refiner for a switch fraction (0.8 of 25 steps → 20)."""
    if not 0.0 <= switch <= 1.0:
        raise ValueError(f"ensemble of experts: switch must be in [0, 1], got {switch}")
    return int(round(steps * switch))


def ensemble_of_experts(base: dict, refiner: dict, latent: dict, *, seed: int, steps: int, sampler_name: str,
                        scheduler: str, switch: float = 0.8, callback: ProgressFn | None = None) -> dict:
    """Base then refiner on one shared schedule (two KSamplerAdvanced nodes with the same steps and scheduler).

    ``base`` / ``refiner`` hold ``eps_fn``, ``model_sampling``, ``positive``, ``negative``, ``cfg``. Progress is
    reported over the whole run (1..steps)."""
    s = expert_switch_step(steps, switch)

    def stage(offset):
        return None if callback is None else (lambda i, n, x0: callback(offset + i, steps, x0))

    common = dict(seed=seed, steps=steps, sampler_name=sampler_name, scheduler=scheduler)
    noisy = sample(base["eps_fn"], base["model_sampling"], latent, base["positive"], base["negative"],
                   cfg=base["cfg"], end_step=s, return_leftover_noise=True, callback=stage(0),
                   node="KSamplerAdvanced (base)", **common)
    return sample(refiner["eps_fn"], refiner["model_sampling"], noisy, refiner["positive"], refiner["negative"],
                  cfg=refiner["cfg"], start_step=s, add_noise=False, callback=stage(s),
                  node="KSamplerAdvanced (refiner)", **common)
