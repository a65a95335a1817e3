"""A cheap latent → RGB preview without the VAE: a fixed linear projection of the latent channels, the factors
the latent's format declares (nodes.latent_format), fitted to latents in sampling space, so it applies to the
sampler's denoised x0. One latent pixel becomes one image pixel; the picture is capped at 512 px like ComfyUI's
previews.
"""
from __future__ import annotations

import torch
from PIL import Image

from ..latent_format import LatentFormat

MAX_PREVIEW_SIZE = 512


def latent_to_rgb(latent: torch.Tensor, latent_format: LatentFormat, max_size: int = MAX_PREVIEW_SIZE) -> Image.Image:
    """The first image of a ``[B, C, h, w]`` latent batch as an RGB picture, at most ``max_size`` px on a side."""
    if latent.ndim != 4 or latent.shape[1] != latent_format.channels:
        raise ValueError(f"latent_to_rgb: expected a [B, {latent_format.channels}, h, w] latent, "
                         f"got shape {tuple(latent.shape)}")
    x0 = latent[0].detach().to("cpu", torch.float32)
    factors, bias = torch.tensor(latent_format.rgb_factors), torch.tensor(latent_format.rgb_bias)
    rgb = torch.einsum("chw,cr->hwr", x0, factors) + bias
    pixels = ((rgb + 1) / 2).clamp(0, 1).mul(255).round().to(torch.uint8).numpy()
    image = Image.fromarray(pixels)  # uint8 [h, w, 3] is RGB
    if max(image.size) > max_size:
        image.thumbnail((max_size, max_size), Image.Resampling.BILINEAR)
    return image
