"""Classifier-free guidance: turns an ε-network and positive/negative conditioning into the ``model(x, σ) -> D``
that the samplers call.

A conditioning entry is a dict prepared for the network by the model (nodes.sampling.denoiser)::

    {"context": Tensor [b, T, D], "y": Tensor [b, P] | None, ...,
     "start_percent": 0.0, "end_percent": 1.0, "strength": 1.0}

Every key but the three guidance keys is a network input, passed by keyword (``context`` is required; SDXL adds
``y``). b prompts are tiled over the latent batch as ComfyUI does, so b = 1 serves every latent.

Several entries in one list (ComfyUI ConditioningCombine) are each predicted and averaged, weighted by strength.
An entry only takes part while σ lies in its range (ComfyUI ConditioningSetTimestepRange; percent → σ through the
model sampling, 0 % = the start of sampling). The result is ``D = D_neg + cfg·(D_pos − D_neg)`` (sdxl.md §9; for
ε-models identical to guidance on ε); the negative pass is skipped when cfg == 1.

Batching: every active entry of both branches whose inputs have the same per-item shapes goes through the
network in one call (negative first, as sgm's VanillaCFG). Entries with different context lengths (e.g. a
154-token prompt against a 77-token one) run as separate calls rather than being repeated to a common length;
the results are the same, only the batching differs.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from .denoiser import Network
from .schedules import ModelSampling

GUIDANCE_KEYS = ("start_percent", "end_percent", "strength")


def _fit_batch(t: torch.Tensor | None, batch: int) -> torch.Tensor | None:
    """Fit a per-prompt tensor to the latent batch as ComfyUI does: tile it (1, 2, 1, 2, …), cut what is left over."""
    if t is None or t.shape[0] == batch:
        return t
    return t.repeat(-(-batch // t.shape[0]), *[1] * (t.ndim - 1))[:batch]


def conditioning_entries(conditioning, make_y: Callable[[dict], torch.Tensor | None] = lambda extras: None
                         ) -> list[dict]:
    """ComfyUI-shaped CONDITIONING (``[[context, extras], ...]``) as entries for ``cfg_denoiser``.

    ``make_y(extras)`` builds the network's vector input from an entry's extras (for SDXL: the pooled text
    embedding and the size/crop/aesthetic embeddings); the timestep range and strength are read from the extras."""
    return [{"context": context, "y": make_y(extras),
             "start_percent": float(extras.get("start_percent", 0.0)),
             "end_percent": float(extras.get("end_percent", 1.0)),
             "strength": float(extras.get("strength", 1.0))}
            for context, extras in conditioning]


class _Entry:
    def __init__(self, entry: dict, branch: int, model_sampling: ModelSampling, what: str):
        if "context" not in entry:
            raise ValueError(f"{what}: a conditioning entry has no 'context'")
        self.inputs = {k: v for k, v in entry.items() if k not in GUIDANCE_KEYS}
        if self.inputs["context"].ndim == 2:
            self.inputs["context"] = self.inputs["context"][None]
        self.branch = branch
        self.strength = float(entry.get("strength", 1.0))
        self.sigma_start = model_sampling.percent_to_sigma(float(entry.get("start_percent", 0.0)))
        self.sigma_end = model_sampling.percent_to_sigma(float(entry.get("end_percent", 1.0)))

    def active(self, sigma: float) -> bool:
        return self.sigma_end <= sigma <= self.sigma_start

    def group_key(self):
        """Entries with equal keys go through the network together: per-item shapes of tensors, else the object."""
        return tuple((k, tuple(v.shape[1:]) if isinstance(v, torch.Tensor) else id(v))
                     for k, v in sorted(self.inputs.items()))


def cfg_denoiser(eps_fn: Network, model_sampling: ModelSampling, positive: Sequence[dict], negative: Sequence[dict],
                 cfg: float, node: str = "KSampler") -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The guided denoiser ``model(x, sigma_batch) -> D`` for the samplers.

    ``eps_fn(x_in, timesteps, **inputs)`` is one network call (nodes.sampling.denoiser.Network); x_in is already
    scaled by ``model_sampling.calculate_input`` and ``timesteps`` comes from ``model_sampling.timestep``."""
    skip_uncond = math.isclose(cfg, 1.0)
    if not positive:
        raise ValueError(f"{node}: input 'positive' has no conditioning entries")
    if not negative and not skip_uncond:
        raise ValueError(f"{node}: input 'negative' has no conditioning entries (needed for cfg {cfg})")
    entries = [_Entry(e, 0, model_sampling, f"{node}: input 'positive'") for e in positive]
    if not skip_uncond:
        entries += [_Entry(e, 1, model_sampling, f"{node}: input 'negative'") for e in negative]

    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        level = float(sigma.reshape(-1)[0])  # every sampler here steps the whole batch at one σ
        active = [e for e in entries if e.active(level)]
        for branch, name in ((0, "positive"), (1, "negative")):
            if not (branch == 1 and skip_uncond) and not any(e.branch == branch for e in active):
                raise ValueError(f"{node}: input '{name}' has no entry whose timestep range covers σ={level:.4f}")
        outputs = _predict(eps_fn, model_sampling, x, sigma, sorted(active, key=lambda e: -e.branch), node)
        branches = []
        for branch in (0, 1):
            pairs = [(e.strength, d) for e, d in outputs if e.branch == branch]
            if pairs:
                total = sum(w for w, _ in pairs)
                branches.append(sum(w * d for w, d in pairs) / total if total else pairs[0][1] * 0)
        if skip_uncond:
            return branches[0]
        cond, uncond = branches
        return uncond + (cond - uncond) * cfg

    return denoise


def _predict(eps_fn, model_sampling, x, sigma, active, node):
    """D for each active entry, with one network call per group of same-shaped entries."""
    batch = x.shape[0]
    x_in = model_sampling.calculate_input(sigma, x)
    t = model_sampling.timestep(sigma).to(x.device)
    groups: dict[tuple, list] = {}
    for e in active:
        groups.setdefault(e.group_key(), []).append(e)
    results = {}
    for group in groups.values():
        n = len(group)
        inputs = {}
        for key, value in group[0].inputs.items():
            if isinstance(value, torch.Tensor):
                value = torch.cat([_fit_batch(e.inputs[key], batch) for e in group]).to(x.device, x.dtype)
            inputs[key] = value
        eps = eps_fn(x_in.repeat(n, *[1] * (x.ndim - 1)), t.repeat(n), **inputs)
        if eps.shape[0] != n * batch:
            raise ValueError(f"{node}: the model returned batch {eps.shape[0]}, expected {n * batch}")
        for e, chunk in zip(group, eps.chunk(n)):
            results[id(e)] = model_sampling.calculate_denoised(sigma, chunk, x)
    return [(e, results[id(e)]) for e in active]
