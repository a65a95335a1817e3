"""SD3's text conditioning from CLIP-L, CLIP-G and T5-XXL (SD3 report §2.1), with ComfyUI's conventions, so that a
shared SD3 workflow gives the same image here as there:

- CLIP-L and CLIP-G give the hidden states of their penultimate layer (CLIPSetLastLayer moves it) without the final
  LayerNorm. Prompts are 77-token windows padded with the end token 49407 (CLIP-L) and with 0 (CLIP-G); a long
  prompt is several windows joined on the token axis.
- The two are joined on the channel axis (768 + 1280 = 2048) and zero-padded to 4096 wide, T5-XXL's width (the
  MMDiT's context width; a tiny demo model's is smaller).
- T5-XXL gives its final output for the prompt's tokens and ``</s>``, padded with ``<pad>`` to at least 77 tokens,
  never truncated, and encoded without an attention mask (the pads are attended to).
- The context is the CLIP tokens followed on the token axis by T5's: [1, 77·n + max(77, T5 tokens), 4096]. Without
  T5 it is the 77·n CLIP tokens alone; diffusers appends zero T5 tokens instead, which gives a different image.
- The pooled vector is CLIP-L's pooled output, unprojected, followed by CLIP-G's projected one: [1, 768 + 1280].
- Any of the three towers may be missing (a checkpoint without T5, CLIPLoader with one file): a missing CLIP tower
  gives zeros in its channels and in its part of the pooled vector; with neither CLIP tower the context is T5's
  tokens alone and the pooled vector zero.
- Prompt weights ``(word:1.2)`` act per token on each tower's states as for SDXL, against that tower's encoding of
  the empty prompt (for T5: ``</s>`` and pads, as long as the prompt).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..sdxl.text import ClipTextEncoder, open_clip_hidden_pooled
from ..sdxl.tokenizer import PAD_BIGG, PAD_CLIP_L, window
from . import t5 as t5_text

CONTEXT_WIDTH = 4096  # what L ‖ G is padded to: T5-XXL's and SD3's context width
L_WIDTH, G_WIDTH = 768, 1280  # the zeros standing in for a missing CLIP tower


class SD3TextEncoders(ClipTextEncoder):
    """SD3's CLIP value (the module docstring says what it encodes). ``layer``: the CLIP towers' hidden layer;
    ``context_width``: what CLIP-L ‖ CLIP-G is zero-padded to (T5's width when there is a T5)."""
    kind = "sd3"

    def __init__(self, clip_l: nn.Module | None, clip_g: nn.Module | None, t5: nn.Module | None,
                 tokenizer=None, layer: int = -2, context_width: int = CONTEXT_WIDTH):
        super().__init__(tokenizer, layer)
        self.clip_l, self.clip_g, self.t5 = clip_l, clip_g, t5
        if not self.towers():
            raise ValueError("SD3 text encoders: none of CLIP-L, CLIP-G and T5-XXL was given")
        self.context_width = t5.config.d_model if t5 is not None else context_width

    def towers(self) -> list[nn.Module]:
        return [t for t in (self.clip_l, self.clip_g, self.t5) if t is not None]

    def with_towers(self, towers: list[nn.Module]) -> "SD3TextEncoders":
        """The same encoder on other copies of its present towers, in ``towers()`` order (LoRA-patched ones)."""
        given = iter(towers)
        clip_l, clip_g, t5 = (None if t is None else next(given) for t in (self.clip_l, self.clip_g, self.t5))
        out = SD3TextEncoders(clip_l, clip_g, t5, self._tokenizer, self.layer, self.context_width)
        out.keep_on_cpu = self.keep_on_cpu
        return out

    def with_layer(self, layer: int) -> "SD3TextEncoders":
        depths = ([self.clip_l.config.num_hidden_layers] if self.clip_l is not None else []) + \
                 ([len(self.clip_g.transformer.resblocks)] if self.clip_g is not None else [])
        if not depths:
            raise ValueError("these SD3 text encoders are T5-XXL alone, which has no CLIP layer to choose")
        self._check_layer(layer, min(depths))
        return SD3TextEncoders(self.clip_l, self.clip_g, self.t5, self._tokenizer, layer, self.context_width)

    def tokenize(self, text: str) -> dict[str, list]:
        """{"l": CLIP-L windows, "g": CLIP-G windows, "t5": T5 tokens}, all with weights."""
        return {"l": self.tokenizer.tokenize_weighted(text, PAD_CLIP_L),
                "g": self.tokenizer.tokenize_weighted(text, PAD_BIGG), "t5": t5_text.tokenize_weighted(text)}

    def conditioning(self, text: str) -> list:
        return self.encode(self.tokenize(text))

    def empty_windows(self, tower: str, n: int) -> list:
        return [window([], PAD_CLIP_L if tower == "l" else PAD_BIGG)] * n

    @torch.no_grad()
    def encode(self, tokens: dict[str, list]) -> list:
        """CONDITIONING from ``tokenize``'s tokens. "l" and "g" need as many windows each; both empty, or no CLIP
        tower at all (CLIPLoader with T5 alone), leave the CLIP part out and the pooled vector zero; an empty "t5"
        makes T5 encode ``</s>`` alone."""
        if len(tokens["l"]) != len(tokens["g"]):
            raise ValueError(f"SD3 text encoders: {len(tokens['l'])} CLIP-L windows but {len(tokens['g'])} CLIP-G")
        width = self.context_width
        parts, pooled = [], torch.zeros(1, self._pooled_width())
        if tokens["l"] and (self.clip_l is not None or self.clip_g is not None):
            n = 77 * len(tokens["l"])
            l_hidden, l_pooled = self._clip("l", tokens["l"], n, L_WIDTH)
            g_hidden, g_pooled = self._clip("g", tokens["g"], n, G_WIDTH)
            lg = torch.cat([l_hidden, g_hidden], dim=-1)
            if lg.shape[-1] > width:  # only towers of mismatched sizes (a tiny one beside a missing real one)
                raise ValueError(f"SD3 text encoders: CLIP-L ‖ CLIP-G is {lg.shape[-1]} wide, wider than the "
                                 f"{width}-wide context")
            parts.append(F.pad(lg, (0, width - lg.shape[-1])))
            pooled = torch.cat([l_pooled, g_pooled], dim=-1)
        if self.t5 is not None:
            parts.append(self._t5(tokens["t5"] or [(t5_text.EOS, 1.0)]))
        context = torch.cat(parts, dim=1) if parts else torch.zeros(1, 77, width)
        return [[context.cpu(), {"pooled_output": pooled.cpu()}]]

    def _pooled_width(self) -> int:
        """CLIP-L's width plus CLIP-G's projection width (the real towers' for a missing one)."""
        return (self.clip_l.config.hidden_size if self.clip_l is not None else L_WIDTH) + \
            (self.clip_g.text_projection.shape[1] if self.clip_g is not None else G_WIDTH)

    def _clip(self, tower: str, windows: list, n: int, zero_width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One CLIP tower's hidden states [1, n, width] and pooled vector [1, width]; zeros without the tower."""
        if tower == "l" and self.clip_l is not None:
            return self._weighted("l", windows, self._clip_l_run, PAD_CLIP_L)
        if tower == "g" and self.clip_g is not None:
            return self._weighted("g", windows, lambda ids: open_clip_hidden_pooled(self.clip_g, ids, self.layer),
                                  PAD_BIGG)
        return torch.zeros(1, n, zero_width, device=self.device), torch.zeros(1, zero_width, device=self.device)

    def _clip_l_run(self, ids: torch.Tensor):
        out = self.clip_l(input_ids=ids, output_hidden_states=True)
        return out.hidden_states[self.layer], out.pooler_output

    def _t5(self, tokens: list) -> torch.Tensor:
        n = len(tokens)
        empty = [t5_text.EOS] + [t5_text.PAD] * (n - 1)
        return self._weighted(f"t5:{n}", [tokens], lambda ids: (self.t5(input_ids=ids).last_hidden_state, None),
                              t5_text.PAD, empty)[0]
