"""T5 v1.1 encoder (SD3's third text encoder, T5-XXL) through transformers' ``T5EncoderModel``, and its tokenizer.

The tokenizer is Google's T5 v1.1 SentencePiece vocabulary in the Hugging Face ``tokenizers`` format, vendored
gzipped beside this module with its notice (t5-v1_1/), so it works offline.

Checkpoints ship T5-XXL in float8 (``sd3_medium_incl_clips_t5xxlfp8``, ``t5xxl_fp8_e4m3fn``): those weights stay in
float8 in memory, a quarter of fp32's 19 GB, and are upcast to the compute dtype each time a layer uses them
(``nodes.float8.upcast_on_use``), as ComfyUI's manual-cast layers do. ComfyUI's "scaled fp8" files
(``t5xxl_fp8_e4m3fn_scaled``: a ``scaled_fp8`` marker, a per-tensor ``<layer>.scale_weight`` beside each float8
weight) are upcast times that scale.
"""
from __future__ import annotations

import functools
import gzip
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..sdxl.meta import StateMismatch, adopt, empty_modules
from ..sdxl.prompt_weights import parse_weights
from ..float8 import upcast_on_use
from ..weights import FLOAT8

TOKENIZER_FILE = Path(__file__).parent / "t5-v1_1" / "tokenizer.json.gz"
PAD, EOS = 0, 1  # <pad>, </s>
MIN_TOKENS = 77
SCALED_FP8 = "scaled_fp8"  # the marker tensor of ComfyUI's "scaled fp8" files


@dataclass(frozen=True)
class T5TowerConfig:
    d_model: int
    d_kv: int  # per head; heads·d_kv need not be d_model
    d_ff: int
    num_layers: int
    num_heads: int
    vocab: int = 32128
    buckets: int = 32  # relative-position buckets


T5_XXL = T5TowerConfig(d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64)


@functools.cache
def t5_tokenizer():
    from tokenizers import Tokenizer

    return Tokenizer.from_str(gzip.decompress(TOKENIZER_FILE.read_bytes()).decode("utf-8"))


def tokenize_weighted(text: str) -> list[tuple[int, float]]:
    """(id, weight) pairs: the prompt's pieces with their ``(word:1.2)`` weights, ``</s>``, then ``<pad>`` up to 77
    tokens; never truncated (ComfyUI's SD3 rule: at least 77 tokens, no start token)."""
    tokenizer = t5_tokenizer()
    tokens = [(i, w) for segment, w in parse_weights(text)
              for i in tokenizer.encode(segment, add_special_tokens=False).ids] + [(EOS, 1.0)]
    return tokens + [(PAD, 1.0)] * (MIN_TOKENS - len(tokens))


def hf_t5_config(cfg: T5TowerConfig):
    """transformers' T5Config of a T5 v1.1 encoder (gated GELU, 128-token relative-position horizon)."""
    from transformers import T5Config

    return T5Config(vocab_size=cfg.vocab, d_model=cfg.d_model, d_kv=cfg.d_kv, d_ff=cfg.d_ff, num_layers=cfg.num_layers,
                    num_heads=cfg.num_heads, relative_attention_num_buckets=cfg.buckets,
                    relative_attention_max_distance=128, feed_forward_proj="gated-gelu", layer_norm_epsilon=1e-6,
                    dropout_rate=0.0, is_encoder_decoder=False, use_cache=False)


def build_t5(cfg: T5TowerConfig):
    from transformers import T5EncoderModel

    return T5EncoderModel(hf_t5_config(cfg))


def t5_config(sd: dict[str, torch.Tensor]) -> T5TowerConfig:
    """The config of a T5 encoder from its (HF-named) tensors."""
    embed = sd.get("shared.weight", sd.get("encoder.embed_tokens.weight"))
    bias = sd.get("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight")
    if embed is None or bias is None:
        raise KeyError(f"T5 text encoder: no token embedding or relative attention bias among {len(sd)} tensors")
    buckets, heads = bias.shape
    return T5TowerConfig(
        d_model=embed.shape[1], vocab=embed.shape[0], buckets=buckets, num_heads=heads,
        d_kv=sd["encoder.block.0.layer.0.SelfAttention.q.weight"].shape[0] // heads,
        d_ff=sd["encoder.block.0.layer.1.DenseReluDense.wi_0.weight"].shape[0],
        num_layers=len({m.group(1) for k in sd if (m := re.match(r"encoder\.block\.(\d+)\.", k))}))


def load_t5(sd: dict[str, torch.Tensor], dtype: torch.dtype, device) -> nn.Module:
    """A T5 encoder from HF-named tensors; float8 tensors stay float8 and are upcast on use. The token embedding is
    tied (``shared`` is ``encoder.embed_tokens``): files store it once or twice, the model keeps one. Scaled-fp8
    files' scales multiply their weights; their ``scale_input`` tensors (for float8 matmuls) are not needed to
    upcast and are dropped."""
    scales = {k.removesuffix("scale_weight") + "weight": v.to(device) for k, v in sd.items()
              if k.endswith(".scale_weight")}
    blockwise = [k for k, v in scales.items() if v.numel() != 1]
    if blockwise:
        raise KeyError(f"T5 text encoder: only per-tensor float8 scales are supported, {blockwise[0]} has a block-wise "
                       "one")
    sd = {k: v for k, v in sd.items() if k != SCALED_FP8 and not k.endswith((".scale_weight", ".scale_input"))}
    cfg = t5_config(sd)
    state = {k: v.to(device=device, dtype=v.dtype if v.dtype in FLOAT8 else dtype) for k, v in sd.items()}
    state["shared.weight"] = state["encoder.embed_tokens.weight"] = \
        state.get("shared.weight", state.get("encoder.embed_tokens.weight"))
    with empty_modules():
        model = build_t5(cfg)
    try:
        adopt(model, state)
    except StateMismatch as e:
        raise KeyError(f"T5 text encoder: {e}") from None
    model.encoder.embed_tokens = model.shared
    return upcast_on_use(model, dtype, scales)


def t5_state_shapes(cfg: T5TowerConfig, prefix: str = "") -> dict[str, tuple[int, ...]]:
    """Key → shape of a T5 encoder as checkpoints store it (the tied embedding under both names), on meta."""
    with torch.device("meta"):
        return {prefix + k: tuple(v.shape) for k, v in build_t5(cfg).state_dict().items()}
