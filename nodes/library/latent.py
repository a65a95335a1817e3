"""Latents: empty latents (with the paper's aspect-ratio buckets), latent upscaling, and the VAE's encode /
decode / encode-for-inpainting, as fine-grained nodes and under ComfyUI's names on the same functions.

LATENT values are dicts ``{"samples": [B, C, H/8, W/8], "noise_mask"?: [B, 1, H, W], "batch_index"?}``
(nodes.types) in the sampling space of a family's latent format (nodes.latent_format); every function returns a
new dict and leaves its input alone (outputs are cached and shared). Empty Latent Image makes ComfyUI's 4 channels;
the sampler turns an empty latent into its model's channel count, as ComfyUI's does.
"""
from __future__ import annotations


import torch
import torch.nn.functional as F

from ..images import CROP_METHODS, center_crop_to_aspect, target_size
from ..node import Input, Output, node
from ..sdxl.configs import SDXL_LATENT
from ..sdxl.vae import vae_decode, vae_encode
from ..types import IMAGE, INT, LATENT, MASK, VAE
from .loaders import device_of, on_device

MAX_RESOLUTION = 16384
FACTOR = 8  # pixels per latent cell

# SDXL's multi-aspect training buckets (SDXL report Appendix I; sgm demo SD_XL_BASE_RATIOS), width x height:
# about 1024² pixels each, both sides multiples of 64.
ASPECT_BUCKETS = [(704, 1408), (704, 1344), (768, 1344), (768, 1280), (832, 1216), (832, 1152), (896, 1152),
                  (896, 1088), (960, 1088), (960, 1024), (1024, 1024), (1024, 960), (1088, 960), (1088, 896),
                  (1152, 896), (1152, 832), (1216, 832), (1280, 768), (1344, 768), (1344, 704), (1408, 704),
                  (1472, 704), (1536, 640), (1600, 640), (1664, 576), (1728, 576)]
CUSTOM = "custom"  # width × height from the inputs


def bucket_label(width: int, height: int) -> str:
    return f"{width}x{height} ({width / height:.2f})"


BUCKET_CHOICES = [bucket_label(w, h) for w, h in ASPECT_BUCKETS] + [CUSTOM]
UPSCALE_METHODS = ["nearest-exact", "bilinear", "area", "bicubic", "bislerp"]


# -- shared functions ---------------------------------------------------------------------------------------------

def empty_latent(width: int, height: int, batch_size: int, channels: int = 4) -> dict:
    return {"samples": torch.zeros(batch_size, channels, height // FACTOR, width // FACTOR)}


def bucket_size(choice: str, width: int, height: int, scale: float = 1.0) -> tuple[int, int]:
    """The bucket's (width, height), or the custom size, times `scale` rounded to multiples of 8."""
    if choice != CUSTOM:
        width, height = ASPECT_BUCKETS[BUCKET_CHOICES.index(choice)]
    if scale == 1.0:
        return width, height
    return max(FACTOR, round(width * scale / FACTOR) * FACTOR), max(FACTOR, round(height * scale / FACTOR) * FACTOR)


def _slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation of channel vectors (last axis); the length is interpolated linearly."""
    na, nb = a.norm(dim=-1, keepdim=True), b.norm(dim=-1, keepdim=True)
    ua, ub = a / na.clamp_min(1e-8), b / nb.clamp_min(1e-8)
    omega = (ua * ub).sum(-1, keepdim=True).clamp(-1.0, 1.0).acos()
    so = omega.sin()
    safe = so.abs() > 1e-4
    wa = torch.where(safe, ((1 - t) * omega).sin() / so.where(safe, torch.ones_like(so)), 1 - t)
    wb = torch.where(safe, (t * omega).sin() / so.where(safe, torch.ones_like(so)), t)
    return (wa * ua + wb * ub) * (na + (nb - na) * t)


def _bislerp_axis(x: torch.Tensor, size: int, axis: int) -> torch.Tensor:
    """Resize [B, H, W, C] along `axis` (1 or 2) with slerp between the two nearest cells (half-pixel centres)."""
    n = x.shape[axis]
    pos = ((torch.arange(size, dtype=torch.float32) + 0.5) * n / size - 0.5).clamp(0, n - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=n - 1)
    shape = [1, 1, 1, 1]
    shape[axis] = size
    t = (pos - lo).reshape(shape)
    return _slerp(x.index_select(axis, lo), x.index_select(axis, hi), t)


def bislerp(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Latent [B, C, h, w] → [B, C, height, width], slerping channel vectors instead of averaging them (keeps
    the latent's per-cell norm, which plain bilinear shrinks)."""
    x = samples.float().movedim(1, -1)
    x = _bislerp_axis(_bislerp_axis(x, width, 2), height, 1)
    return x.movedim(-1, 1).to(samples.dtype)


def upscale_latent(latent: dict, method: str, width: int, height: int, crop: str = "disabled") -> dict:
    """Resize the latent to `width`×`height` latent cells (crop 'center' trims to the new aspect first)."""
    samples = latent["samples"]
    if crop == "center":
        samples = center_crop_to_aspect(samples.movedim(1, -1), width, height).movedim(-1, 1)
    if method == "bislerp":
        out = bislerp(samples, width, height)
    else:
        kwargs = {"align_corners": False} if method in ("bilinear", "bicubic") else {}
        out = F.interpolate(samples, size=(height, width), mode=method, **kwargs)
    return {**latent, "samples": out}


def upscale_to_pixels(latent: dict, method: str, width: int, height: int, crop: str) -> dict:
    """ComfyUI's LatentUpscale sizes: pixels, multiples of 8; 0 keeps the aspect ratio from the other side."""
    _, _, h, w = latent["samples"].shape
    if width == 0 and height == 0:
        return dict(latent)
    new_w, new_h = target_size(h * FACTOR, w * FACTOR, width, height)
    return upscale_latent(latent, method, max(1, new_w // FACTOR), max(1, new_h // FACTOR), crop)


def decode(ctx, vae, latent: dict, tiled: bool = False, tile_size: int = 512, overlap: int = 64,
           what: str = "VAEDecode") -> torch.Tensor:
    if latent["samples"].shape[1] != vae.config.z_channels:
        raise ValueError(f"{what}: samples: a {latent['samples'].shape[1]}-channel latent, but this VAE decodes "
                         f"{vae.config.z_channels}-channel latents; decode with the VAE of the model that made it")
    vae = on_device(ctx, vae)
    samples = latent["samples"].to(device_of(vae))
    image = vae_decode(vae, samples, tiled=tiled, tile=max(tile_size // FACTOR, 1), overlap=overlap // FACTOR)
    return image.cpu()


def encode(ctx, vae, pixels: torch.Tensor, tiled: bool = False, tile_size: int = 512, overlap: int = 64) -> dict:
    vae = on_device(ctx, vae)
    z = vae_encode(vae, pixels[..., :3].to(device_of(vae)), tiled=tiled, tile=tile_size, overlap=overlap)
    return {"samples": z.cpu()}


def _mask_4d(mask: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """MASK [B, H, W] or [H, W] → [B, 1, height, width] (bilinear when the sizes differ)."""
    m = mask.float().reshape(-1, 1, mask.shape[-2], mask.shape[-1])
    if m.shape[-2:] != (height, width):
        m = F.interpolate(m, size=(height, width), mode="bilinear", align_corners=False)
    return m


def encode_for_inpaint(ctx, vae, pixels: torch.Tensor, mask: torch.Tensor, grow_mask_by: int) -> dict:
    """Latent of `pixels` with the masked area set to mid-grey first (so the original content there cannot leak
    into the inpainting), cropped to multiples of 8 around the centre, and a `noise_mask` (the mask rounded to
    0/1 and grown by `grow_mask_by`//2 pixels on every side, so the new content blends past the edge)."""
    _, h, w, _ = pixels.shape
    m = _mask_4d(mask, h, w)
    nh, nw = h // FACTOR * FACTOR, w // FACTOR * FACTOR
    if (nh, nw) != (h, w):
        y0, x0 = (h % FACTOR) // 2, (w % FACTOR) // 2
        pixels, m = pixels[:, y0:y0 + nh, x0:x0 + nw], m[:, :, y0:y0 + nh, x0:x0 + nw]
    hard = m.round()
    radius = grow_mask_by // 2
    grown = F.max_pool2d(hard, 2 * radius + 1, stride=1, padding=radius) if radius else hard
    keep = (1.0 - hard).movedim(1, -1)
    grey = (pixels[..., :3] - 0.5) * keep + 0.5
    return {**encode(ctx, vae, grey), "noise_mask": grown}


# -- fine-grained nodes -------------------------------------------------------------------------------------------

@node(category="sdxl/latent", outputs=[Output(LATENT), Output(INT, "width"), Output(INT, "height")],
      display_name="SDXL Empty Latent (aspect buckets)", version="1.0.0")
class SDXLEmptyLatent:
    """The starting latent for text-to-image at one of SDXL's training aspect-ratio buckets (about 1024² pixels,
    sides multiples of 64: the sizes the base model was fine-tuned on), or at a custom size. Also gives the pixel
    width and height, to wire into the size conditioning. `scale` shrinks the size for quick drafts (keeping the
    bucket's aspect ratio); the model was trained at scale 1."""
    resolution: str = Input(default=bucket_label(1024, 1024), choices=BUCKET_CHOICES)
    width: int = Input(default=1024, min=64, max=MAX_RESOLUTION, step=8, description="used when resolution is custom")
    height: int = Input(default=1024, min=64, max=MAX_RESOLUTION, step=8, description="used when resolution is custom")
    scale: float = Input(default=1.0, min=0.125, max=4.0, step=0.125, description="size multiplier (multiples of 8 kept)")
    batch_size: int = Input(default=1, min=1, max=4096)

    def run(self, ctx):
        width, height = bucket_size(self.resolution, self.width, self.height, self.scale)
        return empty_latent(width, height, self.batch_size, SDXL_LATENT.channels), width, height


@node(category="sdxl/vae", outputs=[Output(IMAGE)], display_name="SDXL VAE Decode", version="1.0.0")
class SDXLVAEDecode:
    """Latent → pixels with the VAE decoder (latent ÷ 0.13025 first). Tiled decoding bounds memory at large sizes:
    overlapping tiles are decoded one by one and blended linearly over the overlaps."""
    samples: LATENT = Input()
    vae: VAE = Input()
    tiled: bool = Input(default=False)
    tile_size: int = Input(default=512, min=64, max=4096, step=64, description="pixels")
    overlap: int = Input(default=64, min=0, max=4096, step=32, description="pixels")

    def run(self, ctx):
        return (decode(ctx, self.vae, self.samples, self.tiled, self.tile_size, self.overlap, "SDXLVAEDecode"),)


@node(category="sdxl/vae", outputs=[Output(LATENT)], display_name="SDXL VAE Encode", version="1.0.0")
class SDXLVAEEncode:
    """Pixels → latent with the VAE encoder (posterior mean × 0.13025); sizes are cropped to multiples of 8."""
    pixels: IMAGE = Input()
    vae: VAE = Input()
    tiled: bool = Input(default=False)
    tile_size: int = Input(default=512, min=64, max=4096, step=64, description="pixels")
    overlap: int = Input(default=64, min=0, max=4096, step=32, description="pixels")

    def run(self, ctx):
        return (encode(ctx, self.vae, self.pixels, self.tiled, self.tile_size, self.overlap),)


# -- ComfyUI nodes ------------------------------------------------------------------------------------------------

@node(category="latent", outputs=[Output(LATENT)], display_name="Empty Latent Image", version="1.0.0")
class EmptyLatentImage:
    """A batch of all-zero latents: the starting point for text-to-image."""
    width: int = Input(default=512, min=16, max=MAX_RESOLUTION, step=8, description="The width of the latent images in pixels.")
    height: int = Input(default=512, min=16, max=MAX_RESOLUTION, step=8, description="The height of the latent images in pixels.")
    batch_size: int = Input(default=1, min=1, max=4096, description="The number of latent images in the batch.")

    def run(self, ctx):
        return (empty_latent(self.width, self.height, self.batch_size),)


@node(category="latent", outputs=[Output(IMAGE)], display_name="VAE Decode", version="1.0.0")
class VAEDecode:
    """Decode latents into images."""
    samples: LATENT = Input(description="The latent to be decoded.")
    vae: VAE = Input(description="The VAE model used for decoding the latent.")

    def run(self, ctx):
        return (decode(ctx, self.vae, self.samples),)


@node(category="latent", outputs=[Output(LATENT)], display_name="VAE Encode", version="1.0.0")
class VAEEncode:
    """Encode images into latents (RGB; alpha is ignored)."""
    pixels: IMAGE = Input()
    vae: VAE = Input()

    def run(self, ctx):
        return (encode(ctx, self.vae, self.pixels),)


@node(category="latent/inpaint", outputs=[Output(LATENT)], display_name="VAE Encode (for Inpainting)", version="1.0.0")
class VAEEncodeForInpaint:
    """Encode an image for inpainting: masked pixels become grey before encoding, and the latent carries the
    (grown) mask so the sampler only changes the masked area."""
    pixels: IMAGE = Input()
    vae: VAE = Input()
    mask: MASK = Input()
    grow_mask_by: int = Input(default=6, min=0, max=64, step=1)

    def run(self, ctx):
        return (encode_for_inpaint(ctx, self.vae, self.pixels, self.mask, self.grow_mask_by),)


@node(category="latent", outputs=[Output(LATENT)], display_name="Upscale Latent", version="1.0.0")
class LatentUpscale:
    """Resize latents to a pixel size (multiples of 8; 0 keeps the aspect ratio from the other side)."""
    samples: LATENT = Input()
    upscale_method: str = Input(default="nearest-exact", choices=UPSCALE_METHODS)
    width: int = Input(default=512, min=0, max=MAX_RESOLUTION, step=8)
    height: int = Input(default=512, min=0, max=MAX_RESOLUTION, step=8)
    crop: str = Input(default="disabled", choices=CROP_METHODS)

    def run(self, ctx):
        return (upscale_to_pixels(self.samples, self.upscale_method, self.width, self.height, self.crop),)


@node(category="latent", outputs=[Output(LATENT)], display_name="Upscale Latent By", version="1.0.0")
class LatentUpscaleBy:
    """Resize latents by a factor."""
    samples: LATENT = Input()
    upscale_method: str = Input(default="nearest-exact", choices=UPSCALE_METHODS)
    scale_by: float = Input(default=1.5, min=0.01, max=8.0, step=0.01)

    def run(self, ctx):
        _, _, h, w = self.samples["samples"].shape
        width, height = max(1, round(w * self.scale_by)), max(1, round(h * self.scale_by))
        return (upscale_latent(self.samples, self.upscale_method, width, height),)
