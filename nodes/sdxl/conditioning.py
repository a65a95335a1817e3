"""SDXL's vector conditioning ``y``: pooled bigG embedding followed by 256-d Fourier features of sizes.

Base (2816 = 1280 + 6·256): original (h, w), crop (top, left), target (h, w).
Refiner (2560 = 1280 + 5·256): original (h, w), crop (top, left), aesthetic score.
Height before width, top before left — the order sgm, diffusers and ComfyUI all use. Raw pixel values
are embedded (1024.0, not normalised).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from nodes.sdxl.configs import FOURIER_DIM
from nodes.sdxl.embeddings import timestep_embedding

N_SCALARS = {"sdxl_base": 6, "sdxl_refiner": 5}  # Fourier-embedded scalars in y


def fourier(values: torch.Tensor, dim: int = FOURIER_DIM) -> torch.Tensor:
    """[B, k] scalars → [B, k·dim] (sgm ConcatTimestepEmbedderND): each scalar embedded on its own (cos
    first, §3 of the reference), the k embeddings side by side. A 1-D [B] input gives [B, dim]."""
    b = values.shape[0]
    return timestep_embedding(values.reshape(-1), dim).reshape(b, -1)


def _scalars(pooled: torch.Tensor, *groups: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """Stack numbers into [B, k]: a number or tuple applies to every sample, a [B, k] tensor is per sample."""
    cols = []
    for g in groups:
        t = torch.as_tensor(g, dtype=torch.float32, device=pooled.device)
        cols.append(t.reshape(1, -1).expand(pooled.shape[0], -1) if t.ndim <= 1 else t)
    return torch.cat(cols, dim=1)


def base_vector(pooled: torch.Tensor, original_hw, crop_tl, target_hw) -> torch.Tensor:
    """y for the SDXL base UNet: [B, P + 6·256]."""
    sizes = _scalars(pooled, original_hw, crop_tl, target_hw)
    return torch.cat([pooled.float(), fourier(sizes)], dim=1)


def refiner_vector(pooled: torch.Tensor, original_hw, crop_tl, aesthetic) -> torch.Tensor:
    """y for the SDXL refiner UNet: [B, P + 5·256] (aesthetic 6.0 for positive, 2.5 for negative prompts)."""
    sizes = _scalars(pooled, original_hw, crop_tl, aesthetic)
    return torch.cat([pooled.float(), fourier(sizes)], dim=1)
