"""What a family's latents look like: channel count, the map from the VAE's latents into the space the sampler
works in, and the linear projection a live preview uses instead of the VAE.

LATENT values hold latents in sampling space, ``(vae_latent − shift_factor) · scale_factor``: the VAE applies the
map when it encodes and undoes it when it decodes, the sampler never sees it. Each family module declares its
format; the sampler node previews with its MODEL's, the latent nodes ask a format for the channel count.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LatentFormat:
    channels: int
    scale_factor: float
    rgb_factors: tuple[tuple[float, float, float], ...]  # one (R, G, B) row per channel, for sampling-space latents
    rgb_bias: tuple[float, float, float] = (0.0, 0.0, 0.0)
    shift_factor: float = 0.0
    downscale: int = 8  # image pixels per latent cell, each way

    def __post_init__(self):
        if len(self.rgb_factors) != self.channels or any(len(row) != 3 for row in self.rgb_factors):
            raise ValueError(f"LatentFormat: rgb_factors needs {self.channels} rows of 3, got {self.rgb_factors}")
