"""Conditioning: SDXL's micro-conditioning (size, crop, target size, aesthetic score) and ComfyUI's operations on
CONDITIONING lists.

CONDITIONING is a list of ``[context [B, T, D], extras]`` entries (nodes.types). The SDXL scalars travel as
ComfyUI's extras keys (``width, height, crop_w, crop_h, target_width, target_height, aesthetic_score``); the
sampler turns them into the UNet's vector input ``y`` with nodes.sdxl.conditioning (pooled bigG ‖ a 256-d
Fourier embedding of each scalar, height before width, top before left). A key left out means the paper's
inference default: original size = target size = the output image's size, crop (0, 0), aesthetic score 6.0
for the positive prompt and 2.5 for the negative one.

Every operation returns new entries and never changes its input: outputs are cached and shared.
"""
from __future__ import annotations

import torch

from ..node import Input, Output, node
from ..types import CONDITIONING, MASK

MAX_RESOLUTION = 16384


# -- shared functions ---------------------------------------------------------------------------------------------

def with_extras(conditioning: list, **extras) -> list:
    """Copies of the entries with `extras` set; a value of None removes the key (back to the default)."""
    out = []
    for context, old in conditioning:
        new = dict(old)
        for key, value in extras.items():
            if value is None:
                new.pop(key, None)
            else:
                new[key] = value
        out.append([context, new])
    return out


def set_sizes(conditioning: list, width=None, height=None, crop_w=None, crop_h=None, target_width=None,
              target_height=None) -> list:
    """Original size, crop (left = crop_w, top = crop_h) and target size; None leaves a key as it is."""
    given = {"width": width, "height": height, "crop_w": crop_w, "crop_h": crop_h,
             "target_width": target_width, "target_height": target_height}
    return with_extras(conditioning, **{k: v for k, v in given.items() if v is not None})


def set_aesthetic(conditioning: list, score: float) -> list:
    return with_extras(conditioning, aesthetic_score=score)


def combine(a: list, b: list) -> list:
    """Both lists' entries: the sampler evaluates each and averages the predictions (ComfyUI's Combine)."""
    return list(a) + list(b)


def concat_tokens(to: list, source: list, what: str = "ConditioningConcat") -> list:
    """Each `to` entry's context followed on the TOKEN axis by the first `source` entry's context; `to`'s pooled
    vector and extras are kept."""
    if not source:
        return list(to)
    extra = source[0][0]
    out = []
    for context, extras in to:
        if context.shape[-1] != extra.shape[-1]:
            raise ValueError(f"{what}: conditioning_to has {context.shape[-1]} channels per token but conditioning_from "
                             f"has {extra.shape[-1]}; both must come from the same kind of text encoder")
        add = extra.to(context.dtype)
        if add.shape[0] != context.shape[0]:
            add = add.expand(context.shape[0], -1, -1)
        out.append([torch.cat([context, add], dim=1), dict(extras)])
    return out


def average(to: list, source: list, to_strength: float) -> list:
    """Each `to` entry's context and pooled vector mixed with the first `source` entry's: to × strength + source ×
    (1 − strength). The source's tokens are cut or zero-padded to the entry's length; `to`'s extras are kept."""
    if not source:
        return list(to)
    context_from = source[0][0]
    pooled_from = source[0][1].get("pooled_output")
    out = []
    for context, extras in to:
        if context.shape[-1] != context_from.shape[-1]:
            raise ValueError(f"ConditioningAverage: conditioning_to has {context.shape[-1]} channels per token but "
                             f"conditioning_from has {context_from.shape[-1]}; both must come from the same kind of "
                             "text encoder")
        tokens = context_from[:, : context.shape[1]].to(context.dtype)
        if tokens.shape[1] < context.shape[1]:
            pad = tokens.new_zeros(tokens.shape[0], context.shape[1] - tokens.shape[1], tokens.shape[2])
            tokens = torch.cat([tokens, pad], dim=1)
        new = dict(extras)
        pooled_to = extras.get("pooled_output")
        if pooled_from is not None:
            new["pooled_output"] = pooled_from if pooled_to is None else \
                pooled_to * to_strength + pooled_from.to(pooled_to.dtype) * (1 - to_strength)
        out.append([context * to_strength + tokens * (1 - to_strength), new])
    return out


def zero_out(conditioning: list) -> list:
    """Zeros in place of the context and the pooled vector (the sgm / diffusers 'zeroed negative')."""
    out = []
    for context, extras in conditioning:
        new = dict(extras)
        if new.get("pooled_output") is not None:
            new["pooled_output"] = torch.zeros_like(new["pooled_output"])
        out.append([torch.zeros_like(context), new])
    return out


def timestep_range(conditioning: list, start: float, end: float) -> list:
    return with_extras(conditioning, start_percent=start, end_percent=end)


# -- fine-grained nodes -------------------------------------------------------------------------------------------

@node(category="sdxl/conditioning", outputs=[Output(CONDITIONING)], display_name="SDXL Size & Crop Conditioning",
      version="1.0.0")
class SDXLSizeConditioning:
    """SDXL's micro-conditioning on image size and cropping (SDXL report §2.2): the original image size
    c_size, the crop's top-left corner c_crop and the target size, each embedded as 256 Fourier features and
    added to the UNet's vector input. At inference the paper uses original = target = the output size and crop
    (0, 0): that is what 0 means here (the sampler fills in the latent's size). The refiner uses the original
    size and crop but has no target size."""
    conditioning: CONDITIONING = Input()
    original_width: int = Input(default=0, min=0, max=MAX_RESOLUTION, step=8, description="0 = output width")
    original_height: int = Input(default=0, min=0, max=MAX_RESOLUTION, step=8, description="0 = output height")
    crop_left: int = Input(default=0, min=0, max=MAX_RESOLUTION, step=8)
    crop_top: int = Input(default=0, min=0, max=MAX_RESOLUTION, step=8)
    target_width: int = Input(default=0, min=0, max=MAX_RESOLUTION, step=8, description="0 = output width")
    target_height: int = Input(default=0, min=0, max=MAX_RESOLUTION, step=8, description="0 = output height")

    def run(self, ctx):
        def size(v):
            return v or None  # 0 → key removed → the sampler uses the output size

        cond = with_extras(self.conditioning, width=size(self.original_width), height=size(self.original_height),
                           target_width=size(self.target_width), target_height=size(self.target_height))
        return (with_extras(cond, crop_w=self.crop_left, crop_h=self.crop_top),)


@node(category="sdxl/conditioning", outputs=[Output(CONDITIONING)], display_name="SDXL Aesthetic Score (refiner)",
      version="1.0.0")
class SDXLAestheticScore:
    """The refiner's aesthetic-score conditioning (SDXL report §2.5): a LAION aesthetic score embedded like the
    sizes. Inference uses 6.0 for the positive prompt and 2.5 for the negative one."""
    conditioning: CONDITIONING = Input()
    aesthetic_score: float = Input(default=6.0, min=0.0, max=1000.0, step=0.01,
                                   description="6.0 for the positive prompt, 2.5 for the negative")

    def run(self, ctx):
        return (set_aesthetic(self.conditioning, self.aesthetic_score),)


# -- ComfyUI nodes ------------------------------------------------------------------------------------------------

@node(category="conditioning", outputs=[Output(CONDITIONING)], display_name="Conditioning (Combine)", version="1.0.0")
class ConditioningCombine:
    """Both conditionings' entries in one list; the sampler applies them separately and averages."""
    conditioning_1: CONDITIONING = Input()
    conditioning_2: CONDITIONING = Input()

    def run(self, ctx):
        return (combine(self.conditioning_1, self.conditioning_2),)


@node(category="conditioning", outputs=[Output(CONDITIONING)], display_name="Conditioning (Concat)", version="1.0.0")
class ConditioningConcat:
    """Append conditioning_from's tokens to each conditioning_to entry (TOKEN axis: 77 + 77 → 154 tokens).
    Not SDXL's dual-encoder concat, which is on the channel axis (see SDXL Dual-Encoder Channel Concat)."""
    conditioning_to: CONDITIONING = Input()
    conditioning_from: CONDITIONING = Input()

    def run(self, ctx):
        return (concat_tokens(self.conditioning_to, self.conditioning_from),)


@node(category="conditioning", outputs=[Output(CONDITIONING)], display_name="Conditioning (Average)", version="1.0.0")
class ConditioningAverage:
    """Interpolate between two prompts: conditioning_to × strength + conditioning_from × (1 − strength), for the
    token contexts and the pooled vectors (only conditioning_from's first entry is used)."""
    conditioning_to: CONDITIONING = Input()
    conditioning_from: CONDITIONING = Input()
    conditioning_to_strength: float = Input(default=1.0, min=0.0, max=1.0, step=0.01)

    def run(self, ctx):
        return (average(self.conditioning_to, self.conditioning_from, self.conditioning_to_strength),)


@node(category="advanced/conditioning", outputs=[Output(CONDITIONING)], display_name="ConditioningZeroOut",
      version="1.0.0")
class ConditioningZeroOut:
    """Zero the context and the pooled vector (keeps the size extras)."""
    conditioning: CONDITIONING = Input()

    def run(self, ctx):
        return (zero_out(self.conditioning),)


@node(category="advanced/conditioning", outputs=[Output(CONDITIONING)], display_name="ConditioningSetTimestepRange",
      version="1.0.0")
class ConditioningSetTimestepRange:
    """Apply the conditioning only between start and end (fractions of the sampling run)."""
    conditioning: CONDITIONING = Input()
    start: float = Input(default=0.0, min=0.0, max=1.0, step=0.001)
    end: float = Input(default=1.0, min=0.0, max=1.0, step=0.001)

    def run(self, ctx):
        return (timestep_range(self.conditioning, self.start, self.end),)


# -- regions: where on the picture an entry applies (the sampler's per-region combination, nodes.sampling.guidance) --

@node(category="conditioning", outputs=[Output(CONDITIONING)], display_name="Conditioning (Set Area)", version="1.0.0")
class ConditioningSetArea:
    """Apply the conditioning to a rectangle of the picture only (pixels, in steps of 8): the sampler runs it on that
    crop of the latent and blends it in with the given strength, edges fading in over up to 64 pixels. Combine it
    with a conditioning for the whole picture."""
    conditioning: CONDITIONING = Input()
    width: int = Input(default=64, min=64, max=MAX_RESOLUTION, step=8)
    height: int = Input(default=64, min=64, max=MAX_RESOLUTION, step=8)
    x: int = Input(default=0, min=0, max=MAX_RESOLUTION, step=8)
    y: int = Input(default=0, min=0, max=MAX_RESOLUTION, step=8)
    strength: float = Input(default=1.0, min=0.0, max=10.0, step=0.01)

    def run(self, ctx):
        area = (self.height // 8, self.width // 8, self.y // 8, self.x // 8)  # latent cells, as ComfyUI stores it
        return (with_extras(self.conditioning, area=area, strength=self.strength, set_area_to_bounds=False),)


@node(category="conditioning", outputs=[Output(CONDITIONING)], display_name="Conditioning (Set Area with Percentage)",
      version="1.0.0")
class ConditioningSetAreaPercentage:
    """Conditioning (Set Area) with the rectangle as fractions of the picture's width and height."""
    conditioning: CONDITIONING = Input()
    width: float = Input(default=1.0, min=0.0, max=1.0, step=0.01)
    height: float = Input(default=1.0, min=0.0, max=1.0, step=0.01)
    x: float = Input(default=0.0, min=0.0, max=1.0, step=0.01)
    y: float = Input(default=0.0, min=0.0, max=1.0, step=0.01)
    strength: float = Input(default=1.0, min=0.0, max=10.0, step=0.01)

    def run(self, ctx):
        area = ("percentage", self.height, self.width, self.y, self.x)
        return (with_extras(self.conditioning, area=area, strength=self.strength, set_area_to_bounds=False),)


@node(category="conditioning", outputs=[Output(CONDITIONING)], display_name="Conditioning (Set Area Strength)",
      version="1.0.0")
class ConditioningSetAreaStrength:
    """The weight of the conditioning where the sampler averages it with others (see Conditioning (Set Area))."""
    conditioning: CONDITIONING = Input()
    strength: float = Input(default=1.0, min=0.0, max=10.0, step=0.01)

    def run(self, ctx):
        return (with_extras(self.conditioning, strength=self.strength),)


@node(category="conditioning", outputs=[Output(CONDITIONING)], display_name="Conditioning (Set Mask)", version="1.0.0")
class ConditioningSetMask:
    """Apply the conditioning where the mask is (its values weight the prediction cell by cell, times strength).
    'mask bounds' also runs it on the mask's bounding box alone, as Set Area does."""
    conditioning: CONDITIONING = Input()
    mask: MASK = Input()
    strength: float = Input(default=1.0, min=0.0, max=10.0, step=0.01)
    set_cond_area: str = Input(default="default", choices=["default", "mask bounds"])

    def run(self, ctx):
        mask = self.mask if self.mask.ndim >= 3 else self.mask[None]
        return (with_extras(self.conditioning, mask=mask, mask_strength=self.strength,
                            set_area_to_bounds=self.set_cond_area != "default"),)
