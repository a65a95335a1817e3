"""ControlNet (Zhang et al. 2023, "Adding Conditional Control to Text-to-Image Diffusion Models") for the
latent-diffusion UNet: a trainable copy of the UNet's encoder (embeddings, input blocks, middle block) that also sees
a hint image through a small convolutional encoder, and returns one residual per UNet skip and one for the middle
block, each through a 1×1 "zero convolution". Keys are the original ``cldm`` ones (``control_model.`` stripped):
``input_hint_block.{0,2,…,14}``, ``zero_convs.N.0``, ``middle_block_out.0`` and the UNet's own encoder names.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .configs import UNetConfig
from .unet import Conv2d, TimestepEmbedSequential, add_encoder, embedding, indexed

HINT_WIDTHS = (16, 32, 96, 256)  # the hint encoder of every published SD 1.x / 2.x / SDXL ControlNet


@dataclass(frozen=True)
class ControlNetConfig:
    unet: UNetConfig  # the UNet whose encoder it copies (the depths may be smaller: SDXL's "small" ControlNets)
    hint_channels: int = 3
    hint_widths: tuple[int, ...] = HINT_WIDTHS  # each width: a 3×3 conv, then a stride-2 conv to the next


class Residuals(NamedTuple):
    """What a ControlNet adds to the UNet: one tensor per skip (input block output) and one for the middle block."""
    skips: list[torch.Tensor]
    middle: torch.Tensor

    def scaled(self, strength: float, pool: bool = False) -> "Residuals":
        """× strength; ``pool`` first averages each over its pixels (the "shuffle" ControlNets' global pooling)."""
        def one(r):
            return (r.mean(dim=(2, 3), keepdim=True).expand_as(r) if pool else r) * strength

        return Residuals([one(r) for r in self.skips], one(self.middle))

    def __add__(self, other: "Residuals") -> "Residuals":
        return Residuals([a + b for a, b in zip(self.skips, other.skips)], self.middle + other.middle)


def hint_encoder(cfg: ControlNetConfig) -> nn.ModuleDict:
    """The hint image (pixels) down to the latent's size and the UNet's first width: 3×3 convs, three of them with
    stride 2 (f = 8), under the original's indices (its SiLUs sit between them)."""
    widths = cfg.hint_widths
    convs = [Conv2d(cfg.hint_channels, widths[0], 3, padding=1)]
    for w_in, w_out in zip(widths, widths[1:]):
        convs += [Conv2d(w_in, w_in, 3, padding=1), Conv2d(w_in, w_out, 3, padding=1, stride=2)]
    convs.append(Conv2d(widths[-1], cfg.unet.model_channels, 3, padding=1))
    return indexed({2 * i: conv for i, conv in enumerate(convs)})


class ControlNetModel(nn.Module):
    def __init__(self, cfg: ControlNetConfig):
        super().__init__()
        self.config = cfg
        skip_chs = add_encoder(self, cfg.unet)
        self.zero_convs = nn.ModuleList(TimestepEmbedSequential(Conv2d(ch, ch, 1)) for ch in skip_chs)
        self.input_hint_block = hint_encoder(cfg)
        self.middle_block_out = TimestepEmbedSequential(Conv2d(skip_chs[-1], skip_chs[-1], 1))

    @property
    def dtype(self) -> torch.dtype:
        return self.middle_block_out[0].weight.dtype

    def forward(self, x: torch.Tensor, hint: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                y: torch.Tensor | None = None) -> Residuals:
        """x, timesteps, context, y as the UNet takes them; hint [B, 3, 8h, 8w] in 0..1 (pixels)."""
        dtype = self.dtype
        emb = embedding(self, self.config.unet, timesteps, y, x.shape[0])
        *convs, last = self.input_hint_block.values()
        guided = hint.to(dtype)
        for conv in convs:
            guided = F.silu(conv(guided))
        guided = last(guided)
        h, context = x.to(dtype), context.to(dtype)
        skips = []
        for i, (block, zero_conv) in enumerate(zip(self.input_blocks, self.zero_convs)):
            h = block(h, emb, context)
            if i == 0:
                h = h + guided
            skips.append(zero_conv(h, emb, context))
        h = self.middle_block(h, emb, context)
        return Residuals(skips, self.middle_block_out(h, emb, context))
