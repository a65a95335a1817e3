"""Masks under ComfyUI's names: solid masks, masks loaded from or turned into pictures, inverting, growing,
feathering and thresholding them, mask compositing, and pasting an image through a mask (the last step of an
inpainting workflow: only the masked area takes the new pixels).

MASK values are float tensors [B, H, W] in 0..1, 1 = masked (nodes.types)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from ..images import pil_to_tensor
from ..node import Input, Output, node
from ..types import IMAGE, MASK
from .image import annotated_image_exists, existing_image, file_digest, input_images, preview

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


def repeat_to_batch(t: torch.Tensor, batch: int) -> torch.Tensor:
    """ComfyUI's rule for a batch of another size: repeat it and cut it to `batch`."""
    if t.shape[0] == batch:
        return t
    return t.repeat(math.ceil(batch / t.shape[0]), *[1] * (t.ndim - 1))[:batch]


def paste(destination: torch.Tensor, source: torch.Tensor, x: int, y: int, mask: torch.Tensor | None = None,
          resize_source: bool = False) -> torch.Tensor:
    """`source` [B, C, h, w] over a copy of `destination` [B, C, H, W], its top-left corner at (x, y), clipped to
    the destination and weighted by `mask` (any size, resized to the source's; all of the source without one).
    Where the weight is 0 the destination keeps its values exactly. With `resize_source` the source is first
    resized to the destination's size. Shared by the image and the latent composite nodes."""
    dest = destination.clone()
    src = source.to(dest.dtype)
    if resize_source:
        src = F.interpolate(src, size=dest.shape[-2:], mode="bilinear", align_corners=False)
    src = repeat_to_batch(src, dest.shape[0])[:, : dest.shape[1]]
    h, w = dest.shape[-2:]
    x, y = min(x, w), min(y, h)
    sh, sw = min(src.shape[-2], h - y), min(src.shape[-1], w - x)
    region, pasted = dest[..., y:y + sh, x:x + sw], src[..., :sh, :sw]
    if mask is None:
        dest[..., y:y + sh, x:x + sw] = pasted
        return dest
    m = _batched(mask).float()[:, None]
    if m.shape[-2:] != src.shape[-2:]:
        m = F.interpolate(m, size=src.shape[-2:], mode="bilinear", align_corners=False)
    m = repeat_to_batch(m, src.shape[0])[..., :sh, :sw].to(dest.dtype)
    dest[..., y:y + sh, x:x + sw] = torch.where(m > 0, region * (1 - m) + pasted * m, region)
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
        out = paste(self.destination.movedim(-1, 1), self.source.movedim(-1, 1), self.x, self.y, self.mask,
                    self.resize_source)
        return (out.movedim(1, -1),)


# -- masks from and to pictures, and edits ------------------------------------------------------------------------

CHANNELS = ["red", "green", "blue", "alpha"]


def mask_to_image(mask: torch.Tensor) -> torch.Tensor:
    return _batched(mask).float()[..., None].expand(-1, -1, -1, 3).clone()


def grow(mask: torch.Tensor, expand: int, tapered_corners: bool) -> torch.Tensor:
    """Dilate (expand > 0) or erode (< 0) by |expand| pixels, one pixel per step: a 3×3 cross per step with tapered
    corners (so corners round off), a 3×3 square without. Outside the mask counts as neither (grey morphology)."""
    sign = 1.0 if expand >= 0 else -1.0
    x = _batched(mask).float()[:, None] * sign  # erosion is dilation of the negative
    for _ in range(abs(expand)):
        if tapered_corners:
            p = F.pad(x, (1, 1, 1, 1), value=-math.inf)
            x = torch.stack([x, p[..., :-2, 1:-1], p[..., 2:, 1:-1], p[..., 1:-1, :-2], p[..., 1:-1, 2:]]).amax(0)
        else:
            x = F.max_pool2d(x, 3, stride=1, padding=1)
    return x[:, 0] * sign


def edge_ramp(size: int, start: int, end: int) -> torch.Tensor:
    """Weights along one axis: (d + 1) / n for the n pixels nearest a feathered edge, d being the distance to it."""
    r = torch.ones(size)
    n = min(start, size)
    if n:
        r[:n] *= (torch.arange(n) + 1) / n
    n = min(end, size)
    if n:
        r[size - n:] *= ((torch.arange(n) + 1) / n).flip(0)
    return r


def feather(mask: torch.Tensor, left: int, top: int, right: int, bottom: int) -> torch.Tensor:
    m = _batched(mask).float()
    h, w = m.shape[-2:]
    return m * edge_ramp(h, top, bottom)[:, None] * edge_ramp(w, left, right)[None, :]


@node(category="mask", outputs=[Output(MASK)], display_name="Load Image (as Mask)", version="1.0.0")
class LoadImageMask:
    """One channel of a picture in the input folder (or an annotated name, as Load Image) as a mask; for alpha the
    mask is 1 − alpha (transparent = masked), like Load Image's."""
    image: str = Input(choices=input_images, also_accepts=annotated_image_exists, image_upload=True,
                       description="a file in the input folder")
    channel: str = Input(choices=["alpha", "red", "green", "blue"])

    @classmethod
    def fingerprint(cls, values, env):
        return file_digest(env, values["image"])

    def run(self, ctx):
        with Image.open(existing_image(ctx.env, self.image, "LoadImageMask")) as img:
            img = ImageOps.exif_transpose(img)
            if img.mode == "I":  # 16-bit greyscale
                img = img.point(lambda v: v * (1 / 255))
            band = pil_to_tensor(img.convert("RGBA").getchannel(self.channel[0].upper()))
        return ((1.0 - band if self.channel == "alpha" else band)[None],)


@node(category="mask", outputs=[Output(MASK)], display_name="Convert Image to Mask", version="1.0.0")
class ImageToMask:
    """One channel of the images as masks."""
    image: IMAGE = Input()
    channel: str = Input(choices=CHANNELS)

    def run(self, ctx):
        index = CHANNELS.index(self.channel)
        if index >= self.image.shape[-1]:
            raise ValueError(f"ImageToMask: channel {self.channel!r}: the image has only "
                             f"{self.image.shape[-1]} channels")
        return (self.image[..., index].clone(),)


@node(category="mask", outputs=[Output(IMAGE)], display_name="Convert Mask to Image", version="1.0.0")
class MaskToImage:
    """Masks as grey pictures (the value in all three channels)."""
    mask: MASK = Input()

    def run(self, ctx):
        return (mask_to_image(self.mask),)


@node(category="mask", output_node=True, display_name="Preview Mask", hidden={"prompt": "PROMPT",
      "extra_pnginfo": "EXTRA_PNGINFO"}, version="1.0.0")
class MaskPreview:
    """Show the masks as grey pictures without keeping them: they go to the temporary folder."""
    mask: MASK = Input()

    def run(self, ctx):
        return preview(ctx, mask_to_image(self.mask))


@node(category="mask", outputs=[Output(MASK)], display_name="Invert Mask", version="1.0.0")
class InvertMask:
    """1 − mask."""
    mask: MASK = Input()

    def run(self, ctx):
        return (1.0 - _batched(self.mask).float(),)


@node(category="mask", outputs=[Output(MASK)], display_name="Grow Mask", version="1.0.0")
class GrowMask:
    """Grow the masked area by `expand` pixels (shrink it when negative)."""
    mask: MASK = Input()
    expand: int = Input(default=0, min=-MAX_RESOLUTION, max=MAX_RESOLUTION, step=1)
    tapered_corners: bool = Input(default=True, description="round the corners off (a cross per pixel step)")

    def run(self, ctx):
        return (grow(self.mask, self.expand, self.tapered_corners),)


@node(category="mask", outputs=[Output(MASK)], display_name="Feather Mask", version="1.0.0")
class FeatherMask:
    """Fade the mask out towards the chosen edges of the picture: the n pixels nearest an edge with n = that
    side's value are multiplied by 1/n, 2/n, … from the edge inwards."""
    mask: MASK = Input()
    left: int = Input(default=0, min=0, max=MAX_RESOLUTION, step=1)
    top: int = Input(default=0, min=0, max=MAX_RESOLUTION, step=1)
    right: int = Input(default=0, min=0, max=MAX_RESOLUTION, step=1)
    bottom: int = Input(default=0, min=0, max=MAX_RESOLUTION, step=1)

    def run(self, ctx):
        return (feather(self.mask, self.left, self.top, self.right, self.bottom),)


@node(category="mask", outputs=[Output(MASK)], display_name="Threshold Mask", version="1.0.0")
class ThresholdMask:
    """1 where the mask is above `value`, else 0."""
    mask: MASK = Input()
    value: float = Input(default=0.5, min=0.0, max=1.0, step=0.01)

    def run(self, ctx):
        return ((_batched(self.mask) > self.value).float(),)
