"""Pixel operations under ComfyUI's names: blend two pictures, pad one for outpainting, join two into a batch.

IMAGE values are float [B, H, W, C] in 0..1 (nodes.types); every node returns new tensors."""
from __future__ import annotations

import torch

from ..images import resize
from ..node import Input, Output, node
from ..types import IMAGE, MASK

MAX_RESOLUTION = 16384


def _soft_light(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The W3C compositing spec's soft light (b lights or darkens a)."""
    d = torch.where(a <= 0.25, ((16 * a - 12) * a + 4) * a, a.sqrt())
    return torch.where(b <= 0.5, a - (1 - 2 * b) * a * (1 - a), a + (2 * b - 1) * (d - a))


# ComfyUI's modes; its "difference" is image1 − image2 (clipped at 0 in the end), not |image1 − image2|
BLEND_MODES = {
    "normal": lambda a, b: b,
    "multiply": lambda a, b: a * b,
    "screen": lambda a, b: 1 - (1 - a) * (1 - b),
    "overlay": lambda a, b: torch.where(a <= 0.5, 2 * a * b, 1 - 2 * (1 - a) * (1 - b)),
    "soft_light": _soft_light,
    "difference": lambda a, b: a - b,
}


def fit_to(images: torch.Tensor, like: torch.Tensor, method: str) -> torch.Tensor:
    """`images` resized to `like`'s height and width (centre-cropped to its aspect first), unless they match."""
    if images.shape[1:3] == like.shape[1:3]:
        return images
    return resize(images, like.shape[2], like.shape[1], method, crop="center")


def blend(image1: torch.Tensor, image2: torch.Tensor, factor: float, mode: str) -> torch.Tensor:
    """image1 mixed with `mode`(image1, image2) by `factor` (0 = image1 unchanged); image2 is fitted to image1."""
    image2 = fit_to(image2, image1, "bicubic").to(image1.dtype)
    channels = min(image1.shape[-1], image2.shape[-1])
    a, b = image1[..., :channels], image2[..., :channels]
    return (a * (1 - factor) + BLEND_MODES[mode](a, b) * factor).clamp(0, 1)


def outpaint_mask(h: int, w: int, left: int, top: int, right: int, bottom: int, feathering: int) -> torch.Tensor:
    """[1, H', W'] mask for a picture padded by the given amounts: 1 on the padding, and inside the picture
    ((f − d) / f)² within `feathering` pixels of a padded side, d being the distance to that side (ComfyUI
    measures it from 0 on the top and left edges and from 1 on the bottom and right ones)."""
    mask = torch.ones(h + top + bottom, w + left + right)
    inner = torch.zeros(h, w)
    if feathering > 0 and feathering * 2 < h and feathering * 2 < w:
        rows, cols = torch.arange(h, dtype=torch.float32)[:, None], torch.arange(w, dtype=torch.float32)[None, :]
        far_h, far_w = torch.full_like(rows, h), torch.full_like(cols, w)
        distance = torch.minimum(
            torch.minimum(rows if top else far_h, h - rows if bottom else far_h),
            torch.minimum(cols if left else far_w, w - cols if right else far_w))
        ramp = ((feathering - distance) / feathering).clamp_min(0)
        inner = torch.where(distance < feathering, ramp * ramp, inner)
    mask[top:top + h, left:left + w] = inner
    return mask[None]


@node(category="image/postprocessing", outputs=[Output(IMAGE)], display_name="Blend Images", version="1.0.0")
class ImageBlend:
    """Mix image1 with a blend of both: image1 × (1 − blend_factor) + mode(image1, image2) × blend_factor. image2 is
    resized (centre-cropped, bicubic) to image1's size when they differ."""
    image1: IMAGE = Input()
    image2: IMAGE = Input()
    blend_factor: float = Input(default=0.5, min=0.0, max=1.0, step=0.01)
    blend_mode: str = Input(default="normal", choices=list(BLEND_MODES))

    def run(self, ctx):
        return (blend(self.image1, self.image2, self.blend_factor, self.blend_mode),)


@node(category="image", outputs=[Output(IMAGE), Output(MASK)], display_name="Pad Image for Outpainting",
      version="1.0.0")
class ImagePadForOutpaint:
    """Grow the canvas by the given pixels on each side, filled with mid-grey, and give the mask to repaint: the new
    area, fading into the picture over `feathering` pixels so the new content blends in. Feed both to VAE Encode
    (for Inpainting)."""
    image: IMAGE = Input()
    left: int = Input(default=0, min=0, max=MAX_RESOLUTION, step=8)
    top: int = Input(default=0, min=0, max=MAX_RESOLUTION, step=8)
    right: int = Input(default=0, min=0, max=MAX_RESOLUTION, step=8)
    bottom: int = Input(default=0, min=0, max=MAX_RESOLUTION, step=8)
    feathering: int = Input(default=40, min=0, max=MAX_RESOLUTION, step=1)

    def run(self, ctx):
        b, h, w, c = self.image.shape
        padded = torch.full((b, h + self.top + self.bottom, w + self.left + self.right, c), 0.5,
                            dtype=self.image.dtype)
        padded[:, self.top:self.top + h, self.left:self.left + w] = self.image
        return padded, outpaint_mask(h, w, self.left, self.top, self.right, self.bottom, self.feathering)


@node(category="image", outputs=[Output(IMAGE)], display_name="Batch Images", version="1.0.0")
class ImageBatch:
    """image1's pictures followed by image2's, in one batch; image2 is resized (centre-cropped, bilinear) to image1's
    size when they differ."""
    image1: IMAGE = Input()
    image2: IMAGE = Input()

    def run(self, ctx):
        if self.image1.shape[-1] != self.image2.shape[-1]:
            raise ValueError(f"ImageBatch: image1 has {self.image1.shape[-1]} channels and image2 "
                             f"{self.image2.shape[-1]}; both must be RGB (or both RGBA)")
        return (torch.cat([self.image1, fit_to(self.image2, self.image1, "bilinear").to(self.image1.dtype)]),)
