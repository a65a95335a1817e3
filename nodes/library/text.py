"""Text encoding: SDXL's two text towers as separate nodes, and ComfyUI's text-encode nodes. CLIPTextEncode and
CLIPSetLastLayer take any family's CLIP (nodes.families.TextEncoder); the SDXL nodes need an SDXL CLIP.

The fine-grained nodes show the paper's conditioning (SDXL report §2.1, sdxl.md §4): CLIP ViT-L/14 gives
per-token hidden states (penultimate layer, 768 wide); OpenCLIP ViT-bigG/14 gives per-token hidden states
(penultimate, 1280 wide) plus a pooled vector. They flow on their own socket types so that only the
"SDXL Dual-Encoder Channel Concat" node can join them into the base model's
2048-wide context:

    CLIP_L_EMBEDS   TextEmbeds(hidden [1, 77·n, 768], empty [1, 77, 768], pooled None)
    CLIP_G_EMBEDS   TextEmbeds(hidden [1, 77·n, 1280], empty [1, 77, 1280], pooled [1, 1280])

``empty`` is the tower's encoding of an empty 77-token window: the concat pads the shorter prompt with it, as
CLIPTextEncodeSDXL does. Long prompts are several 77-token windows joined on the token axis (never truncated).
"""
from __future__ import annotations

import weakref
from typing import NamedTuple

import torch

from ..families import family_of
from ..node import Input, Output, node
from ..patching import PatchedTextEncoder
from ..sdxl.text import SDXLTextEncoders
from ..types import CLIP, CONDITIONING, SocketType
from .conditioning import set_aesthetic, set_sizes
from .loaders import on_device

CLIP_L_EMBEDS = SocketType("CLIP_L_EMBEDS", "CLIP ViT-L/14 per-token hidden states [1, 77·n, 768] (no pooled vector)")
CLIP_G_EMBEDS = SocketType("CLIP_G_EMBEDS", "OpenCLIP ViT-bigG/14 per-token hidden states [1, 77·n, 1280] + pooled [1, 1280]")
MAX_RESOLUTION = 16384


class TextEmbeds(NamedTuple):
    """A tuple, so the executor's output cache counts its tensors."""
    hidden: torch.Tensor
    empty: torch.Tensor
    pooled: torch.Tensor | None = None

    @property
    def windows(self) -> int:
        return self.hidden.shape[1] // self.empty.shape[1]


# -- shared functions ---------------------------------------------------------------------------------------------

def ready(ctx, clip):
    """The text encoders with their towers resident on the compute device (a CLIP with LoRAs: its family's encoder
    on the patched towers)."""
    if isinstance(clip, PatchedTextEncoder):
        clip = clip.resolved()
    for tower in clip.towers():
        on_device(ctx, tower)
    return clip


def _require(clip, what: str, need_clip_l: bool) -> None:
    if not isinstance(clip, SDXLTextEncoders):
        raise ValueError(f"{what}: this CLIP is an {family_of(clip.kind).title} checkpoint's; connect an SDXL "
                         "checkpoint's CLIP (CLIP Text Encode takes any)")
    if need_clip_l and not clip.has_clip_l:
        raise ValueError(f"{what}: this CLIP has no CLIP-L text encoder (it is a refiner's, bigG only); "
                         "connect an SDXL base checkpoint's CLIP")
    if not clip.has_bigg:
        raise ValueError(f"{what}: this CLIP has no OpenCLIP bigG text encoder")


_EMPTY: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _empty_window(clip, tower: str) -> torch.Tensor:
    """The tower's hidden states for an empty prompt (one window); computed once per loaded encoder."""
    cache = _EMPTY.setdefault(clip, {})
    if tower not in cache:
        cache[tower] = (clip.encode_clip_l("") if tower == "l" else clip.encode_bigg("")[0]).cpu()
    return cache[tower]


def encode_clip_l(ctx, clip, text: str, what: str) -> TextEmbeds:
    _require(clip := ready(ctx, clip), what, need_clip_l=True)
    return TextEmbeds(clip.encode_clip_l(text).cpu(), _empty_window(clip, "l"))


def encode_bigg(ctx, clip, text: str, what: str) -> TextEmbeds:
    _require(clip := ready(ctx, clip), what, need_clip_l=False)
    hidden, pooled = clip.encode_bigg(text)
    return TextEmbeds(hidden.cpu(), _empty_window(clip, "g"), pooled.cpu())


def pad_windows(embeds: TextEmbeds, windows: int) -> torch.Tensor:
    """`embeds.hidden` extended with empty windows up to `windows` windows."""
    extra = windows - embeds.windows
    return torch.cat([embeds.hidden] + [embeds.empty] * extra, dim=1) if extra > 0 else embeds.hidden


def channel_concat(clip_l: TextEmbeds, clip_g: TextEmbeds) -> list:
    """SDXL base context: CLIP-L ‖ bigG on the channel axis ([1, 77·n, 768 + 1280]) with bigG's pooled vector."""
    n = max(clip_l.windows, clip_g.windows)
    context = torch.cat([pad_windows(clip_l, n), pad_windows(clip_g, n)], dim=-1)
    return [[context, {"pooled_output": clip_g.pooled}]]


def bigg_conditioning(clip_g: TextEmbeds) -> list:
    """SDXL refiner context: bigG alone ([1, 77·n, 1280]) with its pooled vector."""
    return [[clip_g.hidden, {"pooled_output": clip_g.pooled}]]


def encode_sdxl(ctx, clip, text_l: str, text_g: str, what: str) -> list:
    """SDXL CONDITIONING with a prompt per tower: base → both towers (channel concat); refiner → bigG."""
    if clip.has_clip_l:
        return channel_concat(encode_clip_l(ctx, clip, text_l, what), encode_bigg(ctx, clip, text_g, what))
    return bigg_conditioning(encode_bigg(ctx, clip, text_g, what))


# -- fine-grained nodes -------------------------------------------------------------------------------------------

@node(category="sdxl/text", outputs=[Output(CLIP_L_EMBEDS, "CLIP_L_EMBEDS", "penultimate hidden states, 768 per token")],
      display_name="CLIP-L Text Encode", version="1.0.0")
class SDXLClipLTextEncode:
    """Encode a prompt with CLIP ViT-L/14 (SDXL base only): the penultimate layer's per-token hidden states, without
    the final layer norm; its pooled output is not used by SDXL. Prompt weights (word:1.2) apply per token."""
    clip: CLIP = Input(description="an SDXL base checkpoint's CLIP")
    text: str = Input(default="", multiline=True, dynamic_prompts=True)

    def run(self, ctx):
        return (encode_clip_l(ctx, self.clip, self.text, "SDXLClipLTextEncode: clip"),)


@node(category="sdxl/text", outputs=[Output(CLIP_G_EMBEDS, "CLIP_G_EMBEDS", "penultimate hidden states, 1280 per token, and pooled vector")],
      display_name="OpenCLIP bigG Text Encode", version="1.0.0")
class SDXLBigGTextEncode:
    """Encode a prompt with OpenCLIP ViT-bigG/14: the penultimate layer's per-token hidden states, and the pooled
    vector (final layer norm at the end-of-text token, times the text projection) that SDXL adds to its vector input."""
    clip: CLIP = Input(description="an SDXL base or refiner checkpoint's CLIP")
    text: str = Input(default="", multiline=True, dynamic_prompts=True)

    def run(self, ctx):
        return (encode_bigg(ctx, self.clip, self.text, "SDXLBigGTextEncode: clip"),)


@node(category="sdxl/text", outputs=[Output(CONDITIONING, "CONDITIONING", "[1, 77·n, 768 + 1280] context + pooled bigG")],
      display_name="SDXL Dual-Encoder Channel Concat", version="1.0.0")
class SDXLDualEncoderConcat:
    """The SDXL base's text context: CLIP-L and bigG hidden states side by side on the CHANNEL axis (768 + 1280 =
    2048 per token), with bigG's pooled vector. Not ComfyUI's ConditioningConcat, which joins on the token axis.
    A prompt that needs fewer 77-token windows than the other is padded with empty-prompt windows."""
    clip_l: CLIP_L_EMBEDS = Input(description="from CLIP-L Text Encode")
    clip_g: CLIP_G_EMBEDS = Input(description="from OpenCLIP bigG Text Encode")

    def run(self, ctx):
        return (channel_concat(self.clip_l, self.clip_g),)


@node(category="sdxl/text", outputs=[Output(CONDITIONING, "CONDITIONING", "[1, 77·n, 1280] context + pooled bigG")],
      display_name="SDXL Refiner Text Conditioning (bigG only)", version="1.0.0")
class SDXLRefinerTextConditioning:
    """The SDXL refiner's text context: bigG's hidden states alone (the refiner has no CLIP-L) with its pooled vector."""
    clip_g: CLIP_G_EMBEDS = Input(description="from OpenCLIP bigG Text Encode")

    def run(self, ctx):
        return (bigg_conditioning(self.clip_g),)


# -- ComfyUI nodes ------------------------------------------------------------------------------------------------

@node(category="conditioning", outputs=[Output(CONDITIONING)], display_name="CLIP Text Encode (Prompt)",
      version="1.0.0")
class CLIPTextEncode:
    """Encode a prompt for the model whose CLIP this is, as its family does (SDXL base: both towers; refiner:
    bigG; SD 1.x: CLIP-L; SD 2.x: OpenCLIP-H). SDXL's size conditioning then comes from the latent's size."""
    text: str = Input(multiline=True, dynamic_prompts=True, description="The text to be encoded.")
    clip: CLIP = Input(description="The CLIP model used for encoding the text.")

    def run(self, ctx):
        return (ready(ctx, self.clip).conditioning(self.text),)


@node(category="conditioning", outputs=[Output(CLIP)], display_name="CLIP Set Last Layer", version="1.0.0")
class CLIPSetLastLayer:
    """Stop the text encoders at an earlier layer ("clip skip"): −1 is the last layer, −2 the one before. Each
    family starts from its own (SD 1.x: −1; SD 2.x and SDXL: −2, the penultimate)."""
    clip: CLIP = Input()
    stop_at_clip_layer: int = Input(default=-1, min=-24, max=-1, step=1)

    def run(self, ctx):
        try:
            return (self.clip.with_layer(self.stop_at_clip_layer),)
        except ValueError as exc:
            raise ValueError(f"CLIPSetLastLayer: stop_at_clip_layer: {exc}") from None


@node(category="advanced/conditioning", outputs=[Output(CONDITIONING)], display_name="CLIPTextEncodeSDXL",
      version="1.0.0")
class CLIPTextEncodeSDXL:
    """SDXL base prompt with its size conditioning: text_g goes to bigG, text_l to CLIP-L (the shorter one is
    padded with empty windows); original size, crop and target size are stored in the conditioning."""
    clip: CLIP = Input()
    width: int = Input(default=1024, min=0, max=MAX_RESOLUTION)
    height: int = Input(default=1024, min=0, max=MAX_RESOLUTION)
    crop_w: int = Input(default=0, min=0, max=MAX_RESOLUTION)
    crop_h: int = Input(default=0, min=0, max=MAX_RESOLUTION)
    target_width: int = Input(default=1024, min=0, max=MAX_RESOLUTION)
    target_height: int = Input(default=1024, min=0, max=MAX_RESOLUTION)
    text_g: str = Input(multiline=True, dynamic_prompts=True)
    text_l: str = Input(multiline=True, dynamic_prompts=True)

    def run(self, ctx):
        what = "CLIPTextEncodeSDXL: clip"
        _require(clip := ready(ctx, self.clip), what, need_clip_l=True)
        cond = encode_sdxl(ctx, clip, self.text_l, self.text_g, what)
        return (set_sizes(cond, self.width, self.height, self.crop_w, self.crop_h,
                          self.target_width, self.target_height),)


@node(category="advanced/conditioning", outputs=[Output(CONDITIONING)], display_name="CLIPTextEncodeSDXLRefiner",
      version="1.0.0")
class CLIPTextEncodeSDXLRefiner:
    """SDXL refiner prompt (bigG) with its aesthetic score and original size."""
    ascore: float = Input(default=6.0, min=0.0, max=1000.0, step=0.01)
    width: int = Input(default=1024, min=0, max=MAX_RESOLUTION)
    height: int = Input(default=1024, min=0, max=MAX_RESOLUTION)
    text: str = Input(multiline=True, dynamic_prompts=True)
    clip: CLIP = Input()

    def run(self, ctx):
        cond = bigg_conditioning(encode_bigg(ctx, self.clip, self.text, "CLIPTextEncodeSDXLRefiner: clip"))
        return (set_aesthetic(set_sizes(cond, self.width, self.height), self.ascore),)
