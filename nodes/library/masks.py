"""Masks for inpainting under ComfyUI's names: a solid mask, mask compositing, and pasting an image through a mask
(the last step of an inpainting workflow: only the masked area takes the new pixels).

MASK values are float tensors [B, H, W] in 0..1, 1 = masked (nodes.types)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..node import Input, Output, node
from ..types import IMAGE, MASK

MAX_RESOLUTION = 16384
MASK_OPERATIONS = {
    "multiply": lambda a, b: a * b,
    "add": lambda a, b: a + b,
    "subtract": lambda a, b: a - b,
    "and": lambda a, b: torch.logical_and(a.round().bool(), b.round().bool()).float(),
    "or": lambda a, b: torch.logical_or(a.round().bool(), b.round().bool()).float(),
    "xor": lambda a, b: torch.logical_xor(a.round().bool(), b.round().bool()).float(),
}


def _batched(mask: torch.Tensor) -> torch.Tensor:
    return mask.reshape(-1, mask.shape[-2], mask.shape[-1])


def composite_mask(destination: torch.Tensor, source: torch.Tensor, x: int, y: int, operation: str) -> torch.Tensor:
    """`source` combined into `destination` at (x, y) with `operation`, clipped to the destination and to 0..1."""
    dest = _batched(destination).clone().float()
    src = _batched(source).float()
    h, w = dest.shape[-2:]
    x, y = min(x, w), min(y, h)
    sh, sw = min(src.shape[-2], h - y), min(src.shape[-1], w - x)
    region = dest[:, y:y + sh, x:x + sw]
    dest[:, y:y + sh, x:x + sw] = MASK_OPERATIONS[operation](region, src[:, :sh, :sw]).clamp(0, 1)
    return dest


def composite_image(destination: torch.Tensor, source: torch.Tensor, x: int, y: int, resize_source: bool,
                    mask: torch.Tensor | None) -> torch.Tensor:
    """`source` pasted over `destination` at (x, y), weighted by `mask` (all of it without one); pixels where the
    mask is 0 keep the destination's values exactly."""
    dest = destination.clone()
    src = source
    if resize_source:
        src = F.interpolate(src.movedim(-1, 1), size=dest.shape[1:3], mode="bilinear",
                            align_corners=False).movedim(1, -1)
    _, h, w, _ = dest.shape
    x, y = min(x, w), min(y, h)
    sh, sw = min(src.shape[1], h - y), min(src.shape[2], w - x)
    if mask is None:
        m = torch.ones(1, sh, sw, 1)
    else:
        m = _batched(mask).float()[:, None]
        m = F.interpolate(m, size=src.shape[1:3], mode="bilinear", align_corners=False) \
            if m.shape[-2:] != src.shape[1:3] else m
        m = m[:, :, :sh, :sw].movedim(1, -1)
    region = dest[:, y:y + sh, x:x + sw]
    pasted = src[:, :sh, :sw, : region.shape[-1]]
    dest[:, y:y + sh, x:x + sw] = torch.where(m > 0, region * (1 - m) + pasted * m, region)
    return dest


@node(category="mask", outputs=[Output(MASK)], display_name="SolidMask", version="1.0.0")
class SolidMask:
    """A mask of one value."""
    value: float = Input(default=1.0, min=0.0, max=1.0, step=0.01)
    width: int = Input(default=512, min=1, max=MAX_RESOLUTION, step=1)
    height: int = Input(default=512, min=1, max=MAX_RESOLUTION, step=1)

    def run(self, ctx):
        return (torch.full((1, self.height, self.width), self.value, dtype=torch.float32),)


@node(category="mask", outputs=[Output(MASK)], display_name="MaskComposite", version="1.0.0")
class MaskComposite:
    """Combine a source mask into a destination mask at (x, y)."""
    destination: MASK = Input()
    source: MASK = Input()
    x: int = Input(default=0, min=0, max=MAX_RESOLUTION, step=1)
    y: int = Input(default=0, min=0, max=MAX_RESOLUTION, step=1)
    operation: str = Input(choices=list(MASK_OPERATIONS))

    def run(self, ctx):
        return (composite_mask(self.destination, self.source, self.x, self.y, self.operation),)


@node(category="image", outputs=[Output(IMAGE)], display_name="ImageCompositeMasked", version="1.0.0")
class ImageCompositeMasked:
    """Paste the source image over the destination at (x, y) through the mask: after inpainting, only the masked
    area changes."""
    destination: IMAGE = Input()
    source: IMAGE = Input()
    x: int = Input(default=0, min=0, max=MAX_RESOLUTION, step=8)
    y: int = Input(default=0, min=0, max=MAX_RESOLUTION, step=8)
    resize_source: bool = Input(default=False)
    mask: MASK = Input(optional=True)

    def run(self, ctx):
        return (composite_image(self.destination, self.source, self.x, self.y, self.resize_source, self.mask),)
