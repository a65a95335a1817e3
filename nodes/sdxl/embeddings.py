"""The sinusoidal embedding SDXL uses for the timestep and for every size / crop / aesthetic scalar."""
import math

import torch


def timestep_embedding(values: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """[N] scalars → [N, dim] as ``[cos(v·f_i), sin(v·f_i)]`` with ``f_i = exp(−ln(max_period)·i/half)``.

    Cos first, divisor `half` (sgm ``timestep_embedding``; diffusers ``flip_sin_to_cos=True, shift 0``).
    Computed in fp32 whatever the model dtype; fractional values are fine."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=values.device) / half)
    args = values.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb
