"""Latent operations under ComfyUI's names: paste one latent into another (plainly, feathered or through a mask),
blend two, attach a noise mask, and repeat or slice a batch.

LATENT values are dicts ``{"samples": [B, C, h, w], "noise_mask"?, "batch_index"?}`` (nodes.types). Nothing here
assumes a channel count (SDXL latents have 4, SD3's 16); two latents combined must have the same one. Positions
and sizes on the widgets are in pixels, as in ComfyUI, and become latent cells (÷ 8) here. Every node returns a
new dict and leaves its inputs alone: outputs are cached and shared.
"""
from __future__ import annotations

import torch

from ..node import Input, Output, node
from ..types import LATENT, MASK
from .latent import FACTOR, upscale_latent
from .masks import edge_ramp, paste, repeat_to_batch

MAX_RESOLUTION = 16384


def _matching(node: str, a: tuple[str, dict], b: tuple[str, dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """Both latents' samples, refusing latents of different channel counts (different model families)."""
    (name_a, latent_a), (name_b, latent_b) = a, b
    sa, sb = latent_a["samples"], latent_b["samples"]
    if sa.shape[1] != sb.shape[1]:
        raise ValueError(f"{node}: {name_a} has {sa.shape[1]} latent channels and {name_b} {sb.shape[1]}; both "
                         "must come from the same kind of model")
    return sa, sb.to(sa.dtype)


def composite_feathered(to: torch.Tensor, source: torch.Tensor, x: int, y: int, feather: int) -> torch.Tensor:
    """`source` pasted into a copy of `to` at cell (x, y), clipped to it; with `feather` > 0 the source fades out
    linearly over that many cells along each side that lies inside `to` (sides on `to`'s border stay sharp)."""
    out = to.clone()
    h_to, w_to = out.shape[-2:]
    src = repeat_to_batch(source, out.shape[0])[..., : max(h_to - y, 0), : max(w_to - x, 0)]
    h, w = src.shape[-2:]
    if not (h and w):
        return out
    region = out[..., y:y + h, x:x + w]
    if feather:
        weight = (edge_ramp(h, feather if y else 0, feather if y + h < h_to else 0)[:, None]
                  * edge_ramp(w, feather if x else 0, feather if x + w < w_to else 0)[None, :]).to(out.dtype)
        src = src * weight + region * (1 - weight)
    out[..., y:y + h, x:x + w] = src
    return out


@node(category="latent", outputs=[Output(LATENT)], display_name="Latent Composite", version="1.0.0")
class LatentComposite:
    """Paste samples_from into samples_to with its top-left corner at (x, y) pixels; `feather` pixels of its inner
    edges fade into samples_to."""
    samples_to: LATENT = Input()
    samples_from: LATENT = Input()
    x: int = Input(default=0, min=0, max=MAX_RESOLUTION, step=8)
    y: int = Input(default=0, min=0, max=MAX_RESOLUTION, step=8)
    feather: int = Input(default=0, min=0, max=MAX_RESOLUTION, step=8)

    def run(self, ctx):
        to, source = _matching("LatentComposite", ("samples_to", self.samples_to), ("samples_from", self.samples_from))
        out = composite_feathered(to, source, self.x // FACTOR, self.y // FACTOR, self.feather // FACTOR)
        return ({**self.samples_to, "samples": out},)


@node(category="latent", outputs=[Output(LATENT)], display_name="Latent Composite Masked", version="1.0.0")
class LatentCompositeMasked:
    """Paste source over destination at (x, y) pixels through the mask (any resolution; resized to the source);
    without a mask the whole source is pasted. `resize_source` first resizes the source to the destination."""
    destination: LATENT = Input()
    source: LATENT = Input()
    x: int = Input(default=0, min=0, max=MAX_RESOLUTION, step=8)
    y: int = Input(default=0, min=0, max=MAX_RESOLUTION, step=8)
    resize_source: bool = Input(default=False)
    mask: MASK = Input(optional=True)

    def run(self, ctx):
        dest, source = _matching("LatentCompositeMasked", ("destination", self.destination), ("source", self.source))
        out = paste(dest, source, self.x // FACTOR, self.y // FACTOR, self.mask, self.resize_source)
        return ({**self.destination, "samples": out},)


@node(category="latent/inpaint", outputs=[Output(LATENT)], display_name="Set Latent Noise Mask", version="1.0.0")
class SetLatentNoiseMask:
    """Attach a mask to the latent: the sampler then changes only the masked area (1 = repaint) and keeps the rest
    on the input latent. Unlike VAE Encode (for Inpainting) the masked content stays as a starting point, so
    denoise below 1 edits it rather than replacing it."""
    samples: LATENT = Input()
    mask: MASK = Input()

    def run(self, ctx):
        mask = self.mask.reshape(-1, 1, self.mask.shape[-2], self.mask.shape[-1])
        return ({**self.samples, "noise_mask": mask},)


@node(category="latent/batch", outputs=[Output(LATENT)], display_name="Repeat Latent Batch", version="1.0.0")
class RepeatLatentBatch:
    """The batch repeated `amount` times. Each copy gets its own noise: batch indices continue past the batch."""
    samples: LATENT = Input()
    amount: int = Input(default=1, min=1, max=64)

    def run(self, ctx):
        latent, n = self.samples, self.amount
        samples = latent["samples"]
        out = {**latent, "samples": samples.repeat(n, *[1] * (samples.ndim - 1))}
        mask = latent.get("noise_mask")
        if mask is not None and mask.shape[0] > 1:  # one mask applies to the whole batch as it is
            mask = repeat_to_batch(mask, max(mask.shape[0], samples.shape[0]))
            out["noise_mask"] = mask.repeat(n, *[1] * (mask.ndim - 1))
        if "batch_index" in latent:
            index = list(latent["batch_index"])
            offset = max(index) - min(index) + 1
            out["batch_index"] = index + [i + k * offset for k in range(1, n) for i in index]
        return (out,)


@node(category="latent/batch", outputs=[Output(LATENT)], display_name="Get Latent From Batch", version="1.0.0")
class LatentFromBatch:
    """`length` latents of the batch from `batch_index` on (clipped to the batch). They keep their batch indices,
    so a sampler gives each the noise it had in the whole batch: one image of a batch can be made again alone."""
    samples: LATENT = Input()
    batch_index: int = Input(default=0, min=0, max=63)
    length: int = Input(default=1, min=1, max=64)

    def run(self, ctx):
        latent = self.samples
        samples = latent["samples"]
        start = min(samples.shape[0] - 1, self.batch_index)
        stop = start + min(samples.shape[0] - start, self.length)
        out = {**latent, "samples": samples[start:stop].clone()}
        mask = latent.get("noise_mask")
        if mask is not None:
            out["noise_mask"] = mask.clone() if mask.shape[0] == 1 else \
                repeat_to_batch(mask, max(mask.shape[0], samples.shape[0]))[start:stop].clone()
        out["batch_index"] = list(latent["batch_index"])[start:stop] if "batch_index" in latent \
            else list(range(start, stop))
        return (out,)


@node(category="_for_testing", outputs=[Output(LATENT)], display_name="Latent Blend", version="1.0.0")
class LatentBlend:
    """samples1 × blend_factor + samples2 × (1 − blend_factor); samples2 is resized (centre-cropped, bicubic) to
    samples1's size when they differ."""
    samples1: LATENT = Input()
    samples2: LATENT = Input()
    blend_factor: float = Input(default=0.5, min=0.0, max=1.0, step=0.01)

    def run(self, ctx):
        a, b = _matching("LatentBlend", ("samples1", self.samples1), ("samples2", self.samples2))
        if a.shape[-2:] != b.shape[-2:]:
            b = upscale_latent({"samples": b}, "bicubic", a.shape[-1], a.shape[-2], crop="center")["samples"]
        return ({**self.samples1, "samples": a * self.blend_factor + b * (1 - self.blend_factor)},)
