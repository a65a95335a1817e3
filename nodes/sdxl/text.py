"""Text towers: CLIP ViT-L/14 through ``transformers.CLIPTextModel`` and OpenCLIP text towers (SDXL's bigG, SD 2.x's
ViT-H) through open_clip's own ``TextTransformer`` modules; open_clip ≥ 3 is batch-first, so nothing is permuted.
``ClipTextEncoder`` is what every CLIP value shares: long prompts are encoded window by window and concatenated
on the token axis; prompt weights act per token as ``z = (z − z_empty)·w + z_empty``.

SDXL's two text encoders (SDXL report §2.1, ``SDXLTextEncoders``): CLIP-L gives its penultimate hidden state (no
final LN); bigG gives the input of its last resblock (no ``ln_final``) plus the pooled projection
``ln_final(last)[argmax id] @ text_projection``.

Towers are built on the meta device and adopt the loaded tensors as they are (``meta.adopt``), so loading never
holds two copies of the weights.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from nodes.sdxl.configs import TINY_BIGG_WIDTH, TINY_CLIP_L_WIDTH
from nodes.sdxl.meta import StateMismatch, adopt, empty_modules
from nodes.sdxl.tokenizer import CONTEXT, EOT, PAD_BIGG, PAD_CLIP_L, SOT, ClipTokenizer, shared_tokenizer, window


@dataclass(frozen=True)
class TextTowerConfig:
    width: int
    layers: int
    heads: int
    mlp_width: int
    context: int = CONTEXT
    vocab: int = 49408
    proj_dim: int = 0  # bigG only: text_projection [width, proj_dim]


CLIP_L = TextTowerConfig(width=768, layers=12, heads=12, mlp_width=3072)
BIGG = TextTowerConfig(width=1280, layers=32, heads=20, mlp_width=5120, proj_dim=1280)

# Head counts are not in the weights. Real towers use 64 channels per head; the tiny demo/test towers
# (width 32) use TINY_TEXT_HEADS heads of 8 channels.
TINY_TEXT_HEADS = 4
HEADS_BY_WIDTH = {768: 12, 1280: 20, TINY_CLIP_L_WIDTH: TINY_TEXT_HEADS, TINY_BIGG_WIDTH: TINY_TEXT_HEADS}

KINDS = {"sdxl_base": ("clip_l", "clip_g"), "sdxl_refiner": ("clip_g",)}
LAYOUT_PREFIXES = {
    "original": {"clip_l": "clip_l.", "clip_g": "clip_g."},
    "diffusers": {"clip_l": "text_encoder.", "clip_g": "text_encoder_2."},
}
SINGLE_FILE_PREFIXES = {
    "sdxl_base": {"clip_l": "conditioner.embedders.0.transformer.", "clip_g": "conditioner.embedders.1.model."},
    "sdxl_refiner": {"clip_g": "conditioner.embedders.0.model."},
}
_UNUSED = ("embeddings.position_ids", "logit_scale")  # in checkpoints, never used for inference


def heads_for(width: int, what: str) -> int:
    if width in HEADS_BY_WIDTH:
        return HEADS_BY_WIDTH[width]
    if width % 64 == 0:
        return width // 64
    raise ValueError(f"{what}: cannot tell the attention head count for width {width} "
                     f"(known widths {sorted(HEADS_BY_WIDTH)}, otherwise 64 channels per head)")


# --- building the towers -------------------------------------------------------------------------------

def build_clip_l(cfg: TextTowerConfig):
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        hidden_size=cfg.width, intermediate_size=cfg.mlp_width, num_attention_heads=cfg.heads,
        num_hidden_layers=cfg.layers, max_position_embeddings=cfg.context, vocab_size=cfg.vocab,
        hidden_act="quick_gelu", layer_norm_eps=1e-5, bos_token_id=SOT, eos_token_id=EOT, pad_token_id=1,
    )
    return CLIPTextModel(config)


def build_open_clip(cfg: TextTowerConfig):
    # open_clip's package import drags in torchvision, so it is imported only when a tower is built.
    from open_clip.transformer import LayerNorm, TextTransformer

    return TextTransformer(
        context_length=cfg.context, vocab_size=cfg.vocab, width=cfg.width, heads=cfg.heads, layers=cfg.layers,
        mlp_ratio=cfg.mlp_width / cfg.width, output_dim=cfg.proj_dim, act_layer=nn.GELU,
        norm_layer=LayerNorm,
    )


def _clip_l_state_names(model) -> bool:
    """True when this transformers version keeps the ``text_model.`` prefix (it was flattened in 5.x)."""
    return hasattr(model, "text_model")


def _layers(sd: dict, pattern: str) -> int:
    return len({int(m.group(1)) for k in sd if (m := re.match(pattern, k))})


def clip_l_config(sd: dict[str, torch.Tensor]) -> TextTowerConfig:
    """Config of a CLIP-L-style tower from its (flattened, HF-named) state dict."""
    tok = _need(sd, "embeddings.token_embedding.weight", "CLIP-L")
    return TextTowerConfig(
        width=tok.shape[1], vocab=tok.shape[0], layers=_layers(sd, r"encoder\.layers\.(\d+)\."),
        heads=heads_for(tok.shape[1], "CLIP-L"), mlp_width=_need(sd, "encoder.layers.0.mlp.fc1.weight", "CLIP-L").shape[0],
        context=_need(sd, "embeddings.position_embedding.weight", "CLIP-L").shape[0],
    )


def open_clip_config(sd: dict[str, torch.Tensor], what: str = "bigG") -> TextTowerConfig:
    """Config of an OpenCLIP tower from its open_clip-named state dict (no ``text_projection``: none, as in the
    HF CLIPTextModel diffusers stores SD 2.x's tower as)."""
    tok = _need(sd, "token_embedding.weight", what)
    return TextTowerConfig(
        width=tok.shape[1], vocab=tok.shape[0], layers=_layers(sd, r"transformer\.resblocks\.(\d+)\."),
        heads=heads_for(tok.shape[1], what),
        mlp_width=_need(sd, "transformer.resblocks.0.mlp.c_fc.weight", what).shape[0],
        context=_need(sd, "positional_embedding", what).shape[0],
        proj_dim=sd["text_projection"].shape[1] if "text_projection" in sd else 0,
    )


def _need(sd: dict, key: str, what: str) -> torch.Tensor:
    if key not in sd:
        raise KeyError(f"{what} text encoder: weight {key!r} is missing ({len(sd)} keys present)")
    return sd[key]


# --- key layouts ---------------------------------------------------------------------------------------

def _strip_text_model(sd: dict) -> dict:
    return {k.removeprefix("text_model."): v for k, v in sd.items()}


_HF_TO_OPEN_CLIP = [
    (r"^embeddings\.token_embedding\.weight$", "token_embedding.weight"),
    (r"^embeddings\.position_embedding\.weight$", "positional_embedding"),
    (r"^final_layer_norm\.", "ln_final."),
    (r"^encoder\.layers\.(\d+)\.layer_norm1\.", r"transformer.resblocks.\1.ln_1."),
    (r"^encoder\.layers\.(\d+)\.layer_norm2\.", r"transformer.resblocks.\1.ln_2."),
    (r"^encoder\.layers\.(\d+)\.self_attn\.out_proj\.", r"transformer.resblocks.\1.attn.out_proj."),
    (r"^encoder\.layers\.(\d+)\.mlp\.fc1\.", r"transformer.resblocks.\1.mlp.c_fc."),
    (r"^encoder\.layers\.(\d+)\.mlp\.fc2\.", r"transformer.resblocks.\1.mlp.c_proj."),
]


def hf_to_open_clip(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF ``CLIPTextModelWithProjection`` keys → open_clip text-tower keys (SDXL report layout, §11.1)."""
    sd = _strip_text_model(sd)
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        if m := re.match(r"^encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)$", key):
            qkv.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = value
            continue
        if key == "text_projection.weight":  # Linear weight [out, in]; open_clip multiplies x @ W
            out["text_projection"] = value.t().contiguous()
            continue
        for pattern, repl in _HF_TO_OPEN_CLIP:
            if re.match(pattern, key):
                key = re.sub(pattern, repl, key)
                break
        out[key] = value
    for (layer, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise KeyError(f"bigG text encoder: layer {layer} has only {sorted(parts)} of its q/k/v {kind}s")
        out[f"transformer.resblocks.{layer}.attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


_OPEN_CLIP_BLOCK_TO_HF = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
                          "attn.out_proj": "self_attn.out_proj"}


def open_clip_blocks_to_hf(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """An open_clip transformer's ``transformer.resblocks.N.*`` tensors → transformers' CLIP encoder names
    ``{prefix}encoder.layers.N.*`` (the fused q/k/v projection split in thirds); other keys are left out. The text
    and the vision towers share the block layout."""
    out = {}
    for key, value in sd.items():
        if not key.startswith("transformer.resblocks."):
            continue
        n, rest = key[len("transformer.resblocks."):].split(".", 1)
        layer = f"{prefix}encoder.layers.{n}."
        module, suffix = rest.rsplit(".", 1)
        if module == "attn" and suffix.startswith("in_proj_"):
            for proj, part in zip("qkv", value.chunk(3, dim=0)):
                out[f"{layer}self_attn.{proj}_proj.{suffix[len('in_proj_'):]}"] = part.contiguous()
        else:
            out[f"{layer}{_OPEN_CLIP_BLOCK_TO_HF[module]}.{suffix}"] = value
    return out


def _split(state_dict: dict, kind: str, layout: str) -> dict[str, dict[str, torch.Tensor]]:
    """Group the flat state dict by tower; every key must belong to a tower this kind has."""
    if kind not in KINDS:
        raise ValueError(f"text encoders: unknown model kind {kind!r} (expected one of {sorted(KINDS)})")
    if layout not in LAYOUT_PREFIXES:
        raise ValueError(f"text encoders: unknown layout {layout!r} (expected one of {sorted(LAYOUT_PREFIXES)})")
    prefixes = {tower: LAYOUT_PREFIXES[layout][tower] for tower in KINDS[kind]}
    parts: dict[str, dict[str, torch.Tensor]] = {tower: {} for tower in prefixes}
    stray = []
    for key, value in state_dict.items():
        tower = next((t for t, p in prefixes.items() if key.startswith(p)), None)
        if tower is None:
            stray.append(key)
        elif not key.endswith(_UNUSED):
            parts[tower][key[len(prefixes[tower]):]] = value
    if stray:
        raise KeyError(f"{kind} text encoders ({layout} layout): {len(stray)} keys belong to no text encoder of this "
                       f"model, e.g. {stray[:3]} (expected prefixes {sorted(prefixes.values())})")
    for tower, sd in parts.items():
        if not sd:
            raise KeyError(f"{kind} text encoders ({layout} layout): no weights with prefix {prefixes[tower]!r}")
    return parts


def _fill(model: nn.Module, sd: dict[str, torch.Tensor], what: str, dtype, device) -> None:
    """Strictly load ``sd`` into a meta-built ``model``; name missing/unexpected keys on failure."""
    try:
        adopt(model, {k: v.to(device=device, dtype=dtype) for k, v in sd.items()})
    except StateMismatch as e:
        raise KeyError(f"{what} text encoder: {e}") from None


def load_clip_l(sd: dict[str, torch.Tensor], dtype, device):
    sd = _strip_text_model(sd)
    with empty_modules():
        model = build_clip_l(clip_l_config(sd))
    if _clip_l_state_names(model):
        sd = {f"text_model.{k}": v for k, v in sd.items()}
    _fill(model, sd, "CLIP-L", dtype, device)
    emb = model.text_model.embeddings if _clip_l_state_names(model) else model.embeddings
    emb.position_ids = torch.arange(emb.position_embedding.weight.shape[0], device=device)[None]  # non-persistent
    return model


def tower_state(state: dict[str, torch.Tensor], prefix: str, what: str) -> dict[str, torch.Tensor]:
    """The one tower's tensors, ``prefix`` stripped, without those inference never uses; any other key is an error."""
    stray = [k for k in state if not k.startswith(prefix)]
    if stray:
        raise KeyError(f"{what} text encoder: {len(stray)} keys outside {prefix!r}, e.g. {stray[:3]}")
    sd = {k[len(prefix):]: v for k, v in state.items() if not k.endswith(_UNUSED)}
    if not sd:
        raise KeyError(f"{what} text encoder: no weights with prefix {prefix!r}")
    return sd


def load_open_clip(sd: dict[str, torch.Tensor], dtype, device, what: str = "bigG"):
    with empty_modules():
        model = build_open_clip(open_clip_config(sd, what))
    _fill(model, sd, what, dtype, device)
    model.attn_mask = model.build_causal_mask().to(device)  # non-persistent
    return model


def build_text_encoders(kind: str, state_dict: dict[str, torch.Tensor], layout: str, dtype=torch.float32,
                        device="cpu") -> "SDXLTextEncoders":
    """Text encoders of an SDXL base ("sdxl_base": CLIP-L + bigG) or refiner ("sdxl_refiner": bigG).

    ``state_dict`` keys: layout "original" → ``clip_l.text_model.…`` and ``clip_g.<open_clip keys>``;
    layout "diffusers" → ``text_encoder.<HF CLIPTextModel keys>`` and ``text_encoder_2.<HF
    CLIPTextModelWithProjection keys>``. ``position_ids`` and ``logit_scale`` are dropped; anything
    else missing or unexpected is an error."""
    parts = _split(state_dict, kind, layout)
    clip_l = load_clip_l(parts["clip_l"], dtype, device) if "clip_l" in parts else None
    g = parts["clip_g"]
    bigg = load_open_clip(hf_to_open_clip(g) if layout == "diffusers" else g, dtype, device)
    return SDXLTextEncoders(clip_l, bigg)


def clip_l_state_shapes(cfg: TextTowerConfig, prefix: str) -> dict[str, tuple[int, ...]]:
    """Key → shape of a CLIP-L tower as single files store it (``text_model.*`` and ``position_ids``), on meta."""
    with torch.device("meta"):
        model = build_clip_l(cfg)
    sd = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if not _clip_l_state_names(model):
        sd = {f"text_model.{k}": v for k, v in sd.items()}
    sd["text_model.embeddings.position_ids"] = (1, cfg.context)
    return {prefix + k: v for k, v in sd.items()}


def open_clip_state_shapes(cfg: TextTowerConfig, prefix: str) -> dict[str, tuple[int, ...]]:
    """Key → shape of an OpenCLIP text tower as single files store it (with ``logit_scale``), on meta."""
    with torch.device("meta"):
        sd = {k: tuple(v.shape) for k, v in build_open_clip(cfg).state_dict().items()}
    return {prefix + k: v for k, v in {**sd, "logit_scale": ()}.items()}


def full_size_state_shapes(kind: str) -> dict[str, tuple[int, ...]]:
    """Key → shape of SDXL's full-size text encoders in the original single-file layout, built on meta."""
    prefixes = SINGLE_FILE_PREFIXES[kind]
    shapes = clip_l_state_shapes(CLIP_L, prefixes["clip_l"]) if "clip_l" in prefixes else {}
    return {**shapes, **open_clip_state_shapes(BIGG, prefixes["clip_g"])}


def lora_weight_names(tower) -> dict[str, tuple[str, tuple[int, int] | None, bool]]:
    """A text tower's linear layers as transformers names them (``text_model.encoder.layers.0.self_attn.q_proj``,
    ``text_projection``: what LoRA files call them) → (our parameter, its rows, stored transposed). CLIP-L is a
    transformers model already (``text_model.`` may be flattened away in ours); an open_clip tower fuses q, k and v
    in ``in_proj_weight`` and multiplies by ``text_projection`` from the right (hf_to_open_clip)."""
    if not hasattr(tower, "ln_final"):  # transformers' CLIPTextModel(WithProjection)
        return {(n if n.startswith(("text_model.", "text_projection")) else "text_model." + n):
                (n + ".weight", None, False) for n, m in tower.named_modules() if isinstance(m, nn.Linear)}
    names = {}
    width = tower.token_embedding.weight.shape[1]
    for i in range(len(tower.transformer.resblocks)):
        ours, theirs = f"transformer.resblocks.{i}.", f"text_model.encoder.layers.{i}."
        for j, proj in enumerate("qkv"):
            rows = (j * width, (j + 1) * width)
            names[f"{theirs}self_attn.{proj}_proj"] = (ours + "attn.in_proj_weight", rows, False)
        names[theirs + "self_attn.out_proj"] = (ours + "attn.out_proj.weight", None, False)
        names[theirs + "mlp.fc1"] = (ours + "mlp.c_fc.weight", None, False)
        names[theirs + "mlp.fc2"] = (ours + "mlp.c_proj.weight", None, False)
    if isinstance(getattr(tower, "text_projection", None), nn.Parameter):
        names["text_projection"] = ("text_projection", None, True)
    return names


# --- encoding ------------------------------------------------------------------------------------------

def open_clip_blocks(tower, x: torch.Tensor, blocks) -> torch.Tensor:
    """Run an open_clip text tower's resblocks ``blocks`` on hidden states x."""
    for block in blocks:
        x = block(x, attn_mask=tower.attn_mask)
    return x


def open_clip_hidden(tower, ids: torch.Tensor, blocks: int) -> torch.Tensor:
    """An open_clip text tower's hidden state after its first ``blocks`` resblocks (no ln_final)."""
    x = tower.token_embedding(ids) + tower.positional_embedding.to(tower.token_embedding.weight.dtype)
    return open_clip_blocks(tower, x, tower.transformer.resblocks[:blocks])


def open_clip_hidden_pooled(tower, ids: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """An open_clip text tower's hidden state at ``layer`` (−2: the input of the last block; no ln_final) and its
    pooled projection ``ln_final(last)[end token] @ text_projection``."""
    keep = len(tower.transformer.resblocks) + 1 + layer
    hidden = open_clip_hidden(tower, ids, keep)
    x = tower.ln_final(open_clip_blocks(tower, hidden, tower.transformer.resblocks[keep:]))
    pooled = x[torch.arange(x.shape[0], device=x.device), ids.argmax(dim=-1)] @ tower.text_projection
    return hidden, pooled


def clip_text_model(model):
    """transformers' CLIPTextModel keeps its embeddings, encoder and final LN under ``text_model`` (before 5.x)."""
    return model.text_model if _clip_l_state_names(model) else model


class ClipTextEncoder:
    """What every CLIP value (nodes.families.TextEncoder) shares: the tokenizer, the towers' device and dtype, and
    weighted 77-token windows encoded in one batch. Outputs are float32. ``layer`` is the hidden layer the towers
    stop at (−1 the last, −2 the penultimate; CLIPSetLastLayer changes it). Subclasses set ``kind`` and give
    ``towers``, ``conditioning`` and ``with_layer``."""
    kind: str
    keep_on_cpu = False  # CLIPLoader's device "cpu": the towers are not moved to the compute device

    def __init__(self, tokenizer: ClipTokenizer | None, layer: int):
        self._tokenizer = tokenizer
        self._empty: dict[str, torch.Tensor] = {}
        self.layer = layer

    def towers(self) -> list[nn.Module]:
        raise NotImplementedError

    @property
    def tokenizer(self) -> ClipTokenizer:
        # Built on first use: loading the weights does not need the 49k-entry vocabulary (0.1 s).
        if self._tokenizer is None:
            self._tokenizer = shared_tokenizer()
        return self._tokenizer

    @property
    def device(self) -> torch.device:
        return next(self.towers()[-1].parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.towers()[-1].parameters()).dtype

    def to(self, device=None, dtype=None) -> "ClipTextEncoder":
        for tower in self.towers():
            tower.to(device=device, dtype=dtype)
        self._empty.clear()
        return self

    def _weighted(self, name: str, windows: list, run, pad_id: int, empty_ids: list[int] | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Encode windows in one batch, apply per-token weights against the empty prompt (``empty_ids``, by default
        a 77-token CLIP window), join windows."""
        ids = torch.tensor([[i for i, _ in w] for w in windows], device=self.device)
        weights = torch.tensor([[x for _, x in w] for w in windows], device=self.device)[..., None]
        hidden, pooled = run(ids)
        hidden = hidden.float()
        if (weights != 1.0).any():
            if name not in self._empty:
                empty_ids = empty_ids or [i for i, _ in window([], pad_id)]
                self._empty[name] = run(torch.tensor([empty_ids], device=self.device))[0].float()
            empty = self._empty[name]
            hidden = torch.where(weights != 1.0, (hidden - empty) * weights + empty, hidden)
        pooled = None if pooled is None else pooled[:1].float()
        return hidden.reshape(1, -1, hidden.shape[-1]), pooled

    def _check_layer(self, layer: int, depth: int) -> None:
        if not -depth <= layer <= -1:
            raise ValueError(f"layer {layer} is outside the text encoders' {depth} layers (-1 … -{depth})")


class SDXLTextEncoders(ClipTextEncoder):
    """SDXL's CLIP value: tokenizer plus the towers a checkpoint has (base: CLIP-L and bigG, refiner: bigG), both
    stopping at ``layer``, −2 (the penultimate) by default."""

    def __init__(self, clip_l: nn.Module | None, bigg: nn.Module | None, tokenizer: ClipTokenizer | None = None,
                 layer: int = -2):
        super().__init__(tokenizer, layer)
        self.clip_l, self.bigg = clip_l, bigg
        self.kind = "sdxl_base" if clip_l is not None else "sdxl_refiner"

    def towers(self) -> list[nn.Module]:
        return [t for t in (self.clip_l, self.bigg) if t is not None]

    def with_layer(self, layer: int) -> "SDXLTextEncoders":
        self._check_layer(layer, min([len(self.bigg.transformer.resblocks)]
                                     + ([self.clip_l.config.num_hidden_layers] if self.has_clip_l else [])))
        return SDXLTextEncoders(self.clip_l, self.bigg, self._tokenizer, layer)

    def with_towers(self, towers: list[nn.Module]) -> "SDXLTextEncoders":
        clip_l, bigg = towers if self.has_clip_l else (None, *towers)
        return SDXLTextEncoders(clip_l, bigg, self._tokenizer, self.layer)

    def conditioning(self, text: str) -> list:
        """Base: CLIP-L ‖ bigG hidden states on the channel axis with bigG's pooled vector; refiner: bigG alone."""
        hidden, pooled = self.encode_bigg(text)
        if self.has_clip_l:
            hidden = torch.cat([self.encode_clip_l(text).cpu(), hidden.cpu()], dim=-1)
        return [[hidden.cpu(), {"pooled_output": pooled.cpu()}]]

    @property
    def has_clip_l(self) -> bool:
        return self.clip_l is not None

    @property
    def has_bigg(self) -> bool:
        return self.bigg is not None

    def tokenize(self, text: str) -> dict[str, list]:
        """Weighted 77-token windows per tower present: {"l": [...], "g": [...]}."""
        out = {}
        if self.has_clip_l:
            out["l"] = self.tokenizer.tokenize_weighted(text, PAD_CLIP_L)
        if self.has_bigg:
            out["g"] = self.tokenizer.tokenize_weighted(text, PAD_BIGG)
        return out

    # Raw tower calls on a batch of windows [n, 77] ------------------------------------------------------
    def _clip_l_hidden(self, ids: torch.Tensor) -> torch.Tensor:
        return self.clip_l(input_ids=ids, output_hidden_states=True).hidden_states[self.layer]

    def _bigg_hidden_pooled(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return open_clip_hidden_pooled(self.bigg, ids, self.layer)

    @torch.no_grad()  # not inference_mode: callers may edit the outputs in place
    def encode_clip_l(self, text: str | list) -> torch.Tensor:
        """CLIP-L penultimate hidden states, [1, 77·n, 768]. ``text`` may be pre-tokenized windows."""
        self._require(self.has_clip_l, "CLIP-L")
        windows = self.tokenizer.tokenize_weighted(text, PAD_CLIP_L) if isinstance(text, str) else text
        return self._weighted("l", windows, lambda ids: (self._clip_l_hidden(ids), None), PAD_CLIP_L)[0]

    @torch.no_grad()
    def encode_bigg(self, text: str | list) -> tuple[torch.Tensor, torch.Tensor]:
        """bigG penultimate hidden states [1, 77·n, 1280] and pooled [1, 1280] (from the first window)."""
        self._require(self.has_bigg, "bigG")
        windows = self.tokenizer.tokenize_weighted(text, PAD_BIGG) if isinstance(text, str) else text
        return self._weighted("g", windows, self._bigg_hidden_pooled, PAD_BIGG)

    def encode(self, text_l: str, text_g: str) -> tuple[torch.Tensor, torch.Tensor]:
        """SDXL base conditioning: context [1, 77·n, 768+1280] (channel concat) and pooled bigG [1, 1280].

        When the two prompts need different numbers of windows the shorter one is padded with empty windows."""
        self._require(self.has_clip_l and self.has_bigg, "CLIP-L and bigG")
        wl = self.tokenizer.tokenize_weighted(text_l, PAD_CLIP_L)
        wg = self.tokenizer.tokenize_weighted(text_g, PAD_BIGG)
        n = max(len(wl), len(wg))
        wl += [window([], PAD_CLIP_L)] * (n - len(wl))
        wg += [window([], PAD_BIGG)] * (n - len(wg))
        hidden_g, pooled = self.encode_bigg(wg)
        return torch.cat([self.encode_clip_l(wl), hidden_g], dim=-1), pooled

    def encode_refiner(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        """SDXL refiner conditioning: bigG context [1, 77·n, 1280] and pooled [1, 1280]."""
        return self.encode_bigg(text)

    def _require(self, ok: bool, what: str) -> None:
        if not ok:
            have = [n for n, t in (("CLIP-L", self.clip_l), ("bigG", self.bigg)) if t is not None]
            raise ValueError(f"CLIP input: this model's text encoders ({', '.join(have)}) do not include {what}")
