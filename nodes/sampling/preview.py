"""A cheap latent → RGB preview without the VAE: a fixed linear projection of the 4 SDXL latent channels.

The factors are fitted to SDXL's scaled latents (sdxl.md §15), so apply it to the sampler's denoised x0 in
sampling space. One latent pixel becomes one image pixel; the picture is capped at 512 px like ComfyUI previews.
"""
from __future__ import annotations

import torch
from PIL import Image

SDXL_LATENT_RGB_FACTORS = torch.tensor([
    [0.3651, 0.4232, 0.4341],
    [-0.2533, -0.0042, 0.1068],
    [0.1076, 0.1111, -0.0362],
    [-0.3165, -0.2492, -0.2188],
])
SDXL_LATENT_RGB_BIAS = torch.tensor([0.1084, -0.0175, -0.0011])
MAX_PREVIEW_SIZE = 512


def latent_to_rgb(latent: torch.Tensor, max_size: int = MAX_PREVIEW_SIZE) -> Image.Image:
    """The first image of a ``[B, 4, h, w]`` latent batch as an RGB picture, at most ``max_size`` px on a side."""
    if latent.ndim != 4 or latent.shape[1] != SDXL_LATENT_RGB_FACTORS.shape[0]:
        raise ValueError(f"latent_to_rgb: expected a [B, 4, h, w] latent, got shape {tuple(latent.shape)}")
    x0 = latent[0].detach().to("cpu", torch.float32)
    rgb = torch.einsum("chw,cr->hwr", x0, SDXL_LATENT_RGB_FACTORS) + SDXL_LATENT_RGB_BIAS
    pixels = ((rgb + 1) / 2).clamp(0, 1).mul(255).round().to(torch.uint8).numpy()
    image = Image.fromarray(pixels)  # uint8 [h, w, 3] is RGB
    if max(image.size) > max_size:
        image.thumbnail((max_size, max_size), Image.Resampling.BILINEAR)
    return image
