"""Seeded noise: the initial latent noise and the per-step noise of ancestral and SDE samplers.

Everything is drawn on the CPU in float32 and cast afterwards, so a seed gives the same numbers on any device and
for any model dtype (ComfyUI and diffusers draw initial noise the same way: ``torch.randn(shape, generator=cpu)``).
A noise sampler is a callable ``noise(sigma, sigma_next) -> Tensor`` shaped like the sample (k-diffusion's
convention): ancestral samplers ignore the σ arguments, SDE samplers need them for the Brownian increment.
"""
from __future__ import annotations

import warnings
from typing import Callable, Sequence

import torch

NoiseSampler = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def prepare_noise(samples: torch.Tensor, seed: int, batch_index: Sequence[int] | None = None) -> torch.Tensor:
    """Unit Gaussian noise shaped like ``samples`` (float32, CPU) from one CPU generator seeded with ``seed``.

    Images are drawn one after another, so image k is the (k+1)-th draw of the generator: ``batch_index=[k]``
    re-makes image k of a batch on its own. For every latent whose image has a multiple of 16 values (4·h·w with
    h·w divisible by 4 — every SDXL size in practice) this is bit-identical to a single whole-batch
    ``torch.randn(shape, generator=...)``, the ComfyUI/diffusers draw; torch's vectorised normal sampler only
    groups values across images when that count is not a multiple of 16.
    """
    shape = tuple(samples.shape)
    indices = list(range(shape[0])) if batch_index is None else [int(i) for i in batch_index]
    if len(indices) != shape[0]:
        raise ValueError(f"batch_index: has {len(indices)} entries for a batch of {shape[0]} latents")
    if any(i < 0 for i in indices):
        raise ValueError(f"batch_index: entries must be >= 0, got {indices}")
    generator = torch.Generator(device="cpu").manual_seed(int(seed) & 0xFFFF_FFFF_FFFF_FFFF)
    draws: dict[int, torch.Tensor] = {}
    wanted = set(indices)
    for i in range(max(indices) + 1):
        noise = torch.randn((1,) + shape[1:], dtype=torch.float32, generator=generator)
        if i in wanted:
            draws[i] = noise
    return torch.cat([draws[i] for i in indices], dim=0)


def ancestral_noise_sampler(x: torch.Tensor, seed: int) -> NoiseSampler:
    """Fresh Gaussian noise per step from a CPU generator seeded with ``seed + 1`` (ComfyUI's CPU choice, which
    keeps it independent of the initial noise drawn with ``seed``), cast to x's device and dtype."""
    generator = torch.Generator(device="cpu").manual_seed((int(seed) + 1) & 0xFFFF_FFFF_FFFF_FFFF)

    def noise(sigma, sigma_next):
        return torch.randn(x.shape, dtype=torch.float32, generator=generator).to(x.device, x.dtype)

    return noise


class BrownianTreeNoiseSampler:
    """Noise for SDE samplers from one Brownian motion W(σ) per run (torchsde ``BrownianTree``, on the CPU).

    ``noise(σ, σ_next) = (W(σ_next) − W(σ)) / √|σ_next − σ|`` is unit Gaussian, and the increments over any
    sub-intervals the sampler visits are consistent, so the result converges as steps are refined. The tree is
    seeded with ``seed`` over [σ_min, σ_max] of the schedule, as ComfyUI does for its CPU variant.
    """

    def __init__(self, x: torch.Tensor, sigma_min: float, sigma_max: float, seed: int):
        import torchsde  # only the SDE samplers need it

        self.t0, self.t1 = float(sigma_min), float(sigma_max)
        if not self.t0 < self.t1:
            raise ValueError(f"sigmas: an SDE sampler needs σ_min < σ_max, got {self.t0} and {self.t1}")
        self.device, self.dtype = x.device, x.dtype
        w0 = torch.zeros(x.shape, dtype=torch.float32)
        self.tree = torchsde.BrownianTree(torch.tensor(self.t0), w0, torch.tensor(self.t1),
                                          entropy=int(seed) & 0xFFFF_FFFF_FFFF_FFFF)

    def __call__(self, sigma, sigma_next) -> torch.Tensor:
        a, b = float(sigma), float(sigma_next)
        with warnings.catch_warnings():
            # torchsde rounds the tree's ends and warns when a σ recomputed as exp(log σ) falls a rounding error
            # outside them; it clamps to the end, which is what we want.
            warnings.filterwarnings("ignore", message="Should have t", category=UserWarning)
            w = self.tree(min(a, b), max(a, b)) * (1.0 if b >= a else -1.0)
        return (w / abs(b - a) ** 0.5).to(self.device, self.dtype)
