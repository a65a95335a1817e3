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

Regions (ComfyUI ConditioningSetArea / ConditioningSetMask): an entry may cover part of the latent. An ``area``
(h, w, y, x in latent cells) runs the network on that crop alone, weighted by its strength with edges that fade in
over up to 8 cells where they lie inside the latent; a ``mask`` [B, h, w] weights the entry's prediction cell by
cell. Each branch's D is then, per cell, Σ weight·D / Σ weight over its entries (cells no entry covers come out 0),
ComfyUI's combination. As in ComfyUI, an area entry with no entry of the same area in the other branch gets one
there: the other branch's smallest entry containing the area, run on the same crop with the same weights.

Batching: every active entry of both branches whose inputs have the same per-item shapes goes through the
network in one call (negative first, as sgm's VanillaCFG). Entries with different context lengths (e.g. a
154-token prompt against a 77-token one) run as separate calls rather than being repeated to a common length;
the results are the same, only the batching differs.
"""
from __future__ import annotations

import copy
import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from .denoiser import Network
from .schedules import ModelSampling

GUIDANCE_KEYS = ("start_percent", "end_percent", "strength", "area", "mask")
FEATHER = 8  # latent cells over which an area's inner edges fade in (ComfyUI's)
MIN_BOUNDS = 8  # the smallest area a mask's bounds give, each way (ComfyUI's)


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


def guidance_options(extras: dict, latent_hw: tuple[int, int], device=None) -> dict:
    """The guidance keys of a CONDITIONING entry, from its extras (ComfyUI's keys): timestep range, strength, and its
    region resolved for a latent of ``latent_hw`` cells — ``area`` (h, w, y, x) from ConditioningSetArea (latent
    cells), ConditioningSetAreaPercentage (fractions) or a mask's bounds, and ``mask`` (ConditioningSetMask) resized
    to the latent and scaled by its strength. Raises ValueError for an area outside the latent."""
    out = {"start_percent": extras.get("start_percent", 0.0), "end_percent": extras.get("end_percent", 1.0),
           "strength": extras.get("strength", 1.0)}
    height, width = latent_hw
    area = extras.get("area")
    if area is not None and area[0] == "percentage":
        h, w, y, x = area[1:]
        area = (max(1, round(h * height)), max(1, round(w * width)), round(y * height), round(x * width))
    mask = extras.get("mask")
    if mask is not None:
        mask = mask.to(device=device, dtype=torch.float32)
        mask = mask.reshape(-1, *mask.shape[-2:])
        if tuple(mask.shape[-2:]) != (height, width):
            mask = F.interpolate(mask[:, None], size=(height, width), mode="bilinear", align_corners=False)[:, 0]
        if extras.get("set_area_to_bounds"):
            area = _bounds(mask)
        out["mask"] = mask * float(extras.get("mask_strength", 1.0))
    if area is not None:
        h, w, y, x = (int(v) for v in area)
        h, w = min(h, height - y), min(w, width - x)
        if h <= 0 or w <= 0 or y < 0 or x < 0:
            raise ValueError(f"its area (x {area[3]}, y {area[2]}, {area[1]}×{area[0]} latent cells) lies outside the "
                             f"{width}×{height}-cell latent")
        out["area"] = (h, w, y, x)
    return out


def _bounds(mask: torch.Tensor) -> tuple[int, int, int, int]:
    """The box (h, w, y, x) round every non-zero cell of any mask in the batch, at least MIN_BOUNDS each way."""
    rows, cols = mask.abs().amax(dim=0).nonzero(as_tuple=True)
    if not len(rows):
        return MIN_BOUNDS, MIN_BOUNDS, 0, 0  # an empty mask: the entry weighs nothing anywhere
    y, x = int(rows.min()), int(cols.min())
    return max(MIN_BOUNDS, int(rows.max()) - y + 1), max(MIN_BOUNDS, int(cols.max()) - x + 1), y, x


def _fade(size: int, offset: int, full: int) -> list[torch.Tensor]:
    """Per-row factors fading an area's edges in where they lie inside the latent: the start edge's, then the end
    edge's (ComfyUI applies them one after the other; keeping the order keeps its rounding)."""
    steps = min(FEATHER, size // 4)
    ramps = []
    if offset != 0:
        ramps.append(torch.tensor([(1.0 / steps) * (t + 1) for t in range(steps)] + [1.0] * (size - steps)))
    if offset + size < full:
        ramps.append(torch.tensor([1.0] * (size - steps) + [(1.0 / steps) * (t + 1) for t in reversed(range(steps))]))
    return [r for r in ramps if steps]


class _Entry:
    def __init__(self, entry: dict, branch: int, model_sampling: ModelSampling, what: str):
        if "context" not in entry:
            raise ValueError(f"{what}: a conditioning entry has no 'context'")
        self.inputs = {k: v for k, v in entry.items() if k not in GUIDANCE_KEYS}
        if self.inputs["context"].ndim == 2:
            self.inputs["context"] = self.inputs["context"][None]
        self.branch = branch
        self.strength = float(entry.get("strength", 1.0))
        self.area = entry.get("area")  # (h, w, y, x) latent cells, or None: the whole latent
        self.mask = entry.get("mask")  # [B, H, W] at the latent's size, or None
        self.sigma_start = model_sampling.percent_to_sigma(float(entry.get("start_percent", 0.0)))
        self.sigma_end = model_sampling.percent_to_sigma(float(entry.get("end_percent", 1.0)))

    def active(self, sigma: float) -> bool:
        return self.sigma_end <= sigma <= self.sigma_start

    @property
    def regional(self) -> bool:
        return self.area is not None or self.mask is not None

    def group_key(self):
        """Entries with equal keys go through the network together: per-item shapes of tensors, else the object,
        and the size of the crop they run on."""
        return tuple((k, tuple(v.shape[1:]) if isinstance(v, torch.Tensor) else id(v))
                     for k, v in sorted(self.inputs.items())) + ((self.area or (None,))[:2],)

    def crop(self, t: torch.Tensor) -> torch.Tensor:
        """The part of a latent-shaped tensor this entry covers (a view)."""
        if self.area is None:
            return t
        h, w, y, x = self.area
        return t[..., y:y + h, x:x + w]

    def weights(self, shape: torch.Size, like: torch.Tensor) -> torch.Tensor:
        """This entry's weight over its crop, for a latent of ``shape``: strength × mask, or strength with an
        area's inner edges faded in."""
        batch, channels = shape[:2]
        if self.mask is not None:
            mask = self.crop(_fit_batch(self.mask, batch))[:, None].to(like)
            return (mask * self.strength).expand(batch, channels, *mask.shape[-2:])
        h, w, y, x = self.area or (*shape[-2:], 0, 0)
        weight = torch.full((h, w), self.strength)
        for ramp in _fade(h, y, shape[-2]):
            weight *= ramp[:, None]
        for ramp in _fade(w, x, shape[-1]):
            weight *= ramp[None, :]
        return weight.to(like).expand(batch, channels, h, w)

    def counterpart(self, other: "_Entry") -> "_Entry":
        """This entry's region, range and weights in ``other``'s branch with ``other``'s network inputs."""
        twin = copy.copy(self)
        twin.inputs, twin.branch = other.inputs, other.branch
        return twin


def _inside(area, outer) -> bool:
    h, w, y, x = area
    oh, ow, oy, ox = outer
    return y >= oy and x >= ox and y + h <= oy + oh and x + w <= ox + ow


def _pair_areas(entries: list[_Entry]) -> list[_Entry]:
    """ComfyUI's rule for area entries: one whose area no entry of the other branch has exactly gets a counterpart
    there, made from the other branch's smallest entry containing the area (an entry without area contains all)."""
    for branch in (0, 1):
        for entry in [e for e in entries if e.branch == branch and e.area is not None]:
            others = [e for e in entries if e.branch != branch]
            around = [e for e in others if e.area is not None and _inside(entry.area, e.area)]
            smallest = min(around, key=lambda e: e.area[0] * e.area[1], default=None) or \
                next((e for e in others if e.area is None), None)
            if smallest is not None and smallest.area != entry.area:
                entries.append(entry.counterpart(smallest))
    return entries


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
        entries = _pair_areas(entries + [_Entry(e, 1, model_sampling, f"{node}: input 'negative'") for e in negative])

    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        level = float(sigma.reshape(-1)[0])  # every sampler here steps the whole batch at one σ
        active = [e for e in entries if e.active(level)]
        for branch, name in ((0, "positive"), (1, "negative")):
            if not (branch == 1 and skip_uncond) and not any(e.branch == branch for e in active):
                raise ValueError(f"{node}: input '{name}' has no entry whose timestep range covers σ={level:.4f}")
        outputs = _predict(eps_fn, model_sampling, x, sigma, sorted(active, key=lambda e: -e.branch), node)
        branches = []
        for branch in (0, 1):
            pairs = [(e, d) for e, d in outputs if e.branch == branch]
            if pairs:
                branches.append(_average(pairs, x))
        if skip_uncond:
            return branches[0]
        cond, uncond = branches
        return uncond + (cond - uncond) * cfg

    return denoise


def _average(pairs: list, x: torch.Tensor) -> torch.Tensor:
    """One branch's D: its entries' predictions averaged, weighted by strength — per cell where entries cover
    regions, Σ weight·D / Σ weight (+1e-37, so that a cell no entry covers comes out 0, as in ComfyUI)."""
    if not any(e.regional for e, _ in pairs):
        total = sum(e.strength for e, _ in pairs)
        return sum(e.strength * d for e, d in pairs) / total if total else pairs[0][1] * 0
    num, den = torch.zeros_like(x), torch.full_like(x, 1e-37)
    for e, d in pairs:
        weight = e.weights(x.shape, x)
        e.crop(num).add_(weight * d)
        e.crop(den).add_(weight)
    return num / den


def _predict(eps_fn, model_sampling, x, sigma, active, node):
    """D for each active entry (over its crop), with one network call per group of same-shaped entries."""
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
        eps = eps_fn(torch.cat([e.crop(x_in) for e in group]), t.repeat(n), **inputs)
        if eps.shape[0] != n * batch:
            raise ValueError(f"{node}: the model returned batch {eps.shape[0]}, expected {n * batch}")
        for e, chunk in zip(group, eps.chunk(n)):
            results[id(e)] = model_sampling.calculate_denoised(sigma, chunk, e.crop(x))
    return [(e, results[id(e)]) for e in active]
