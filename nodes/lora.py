"""LoRA files: their key layouts, the weight change each adapter stands for, and matching them to a model.

A LoRA file holds, for each module it adapts, a few small tensors named ``<module name>.<suffix>``:

- kohya-ss ``sd-scripts`` (and LyCORIS's LoCon): ``lora_unet_…`` / ``lora_te_…`` / ``lora_te1_…`` / ``lora_te2_…``
  module names (dots turned into underscores) with ``lora_down.weight`` [r, in(, kh, kw)], ``lora_up.weight``
  [out, r(, 1, 1)] and ``alpha``; the change is ``up · down · alpha / r`` (Hu et al. 2021, with kohya's alpha);
- diffusers / PEFT: ``unet.…`` / ``transformer.…`` / ``text_encoder.…`` / ``text_encoder_2.…`` dotted names with
  ``lora_A.weight`` (down) and ``lora_B.weight`` (up), no alpha (scale 1), unless the file's header carries each
  part's peft ``LoraConfig`` (diffusers' ``lora_adapter_metadata``): then peft's ``lora_alpha / r`` (its
  ``alpha_pattern`` / ``rank_pattern`` per module, ``/ √r`` with rsLoRA);
- diffusers' older exports: ``lora.down.weight`` / ``lora.up.weight`` (``lora_linear_layer.…`` in text encoders,
  ``to_q_lora.down.weight`` on attention processors), with ``alpha`` beside them in single-file exports;
- LyCORIS LoHa (``hada_w1_a``, ``hada_w1_b``, ``hada_w2_a``, ``hada_w2_b``, optional Tucker cores ``hada_t1`` /
  ``hada_t2``): ``(w1_a · w1_b) ⊙ (w2_a · w2_b) · alpha / r``; LoKr (``lokr_w1`` or ``lokr_w1_a · lokr_w1_b``,
  ``lokr_w2`` or ``lokr_w2_a · lokr_w2_b``, optional ``lokr_t2``): ``w1 ⊗ w2 · alpha / r``, scale 1 when neither
  factor is decomposed.

Which names a model's weights go by is its family's business (``Family.lora_model_keys`` / ``lora_clip_keys``
give {module name: ``Target``}); this module only parses files and computes changes. Applying them without touching
the base weights is nodes.patching.
"""
from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger("latentgraph.lora")

# suffix → (adapter kind, slot); longest first so ".lokr_w1_a" is not read as ".lokr_w1"
_SUFFIXES = sorted([
    (".lora_down.weight", "lora", "down"), (".lora_up.weight", "lora", "up"), (".lora_mid.weight", "lora", "mid"),
    (".lora_A.weight", "lora", "down"), (".lora_B.weight", "lora", "up"),
    (".lora.down.weight", "lora", "down"), (".lora.up.weight", "lora", "up"),
    ("_lora.down.weight", "lora", "down"), ("_lora.up.weight", "lora", "up"),
    (".lora_linear_layer.down.weight", "lora", "down"), (".lora_linear_layer.up.weight", "lora", "up"),
    (".hada_w1_a", "loha", "w1_a"), (".hada_w1_b", "loha", "w1_b"), (".hada_w2_a", "loha", "w2_a"),
    (".hada_w2_b", "loha", "w2_b"), (".hada_t1", "loha", "t1"), (".hada_t2", "loha", "t2"),
    (".lokr_w1", "lokr", "w1"), (".lokr_w1_a", "lokr", "w1_a"), (".lokr_w1_b", "lokr", "w1_b"),
    (".lokr_w2", "lokr", "w2"), (".lokr_w2_a", "lokr", "w2_a"), (".lokr_w2_b", "lokr", "w2_b"),
    (".lokr_t2", "lokr", "t2"),
    (".alpha", None, "alpha"), (".dora_scale", None, "dora_scale"),
], key=lambda s: -len(s[0]))
# diffusers' attention-processor names (``attn1.processor.to_q_lora``) → the layers they adapt
_PROCESSOR_NAMES = {"to_q": "to_q", "to_k": "to_k", "to_v": "to_v", "to_out": "to_out.0"}
_TEXT_PROCESSOR_NAMES = {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out": "out_proj"}


@dataclass(frozen=True)
class Target:
    """Where a LoRA module name lands: a weight of one of the modules a LoRA patches (the MODEL's network is
    module 0; a CLIP's towers are numbered in ``towers()`` order)."""
    module: int
    weight: str  # the parameter's name in that module
    rows: tuple[int, int] | None = None  # a block of rows: q, k or v inside a fused in_proj_weight or qkv
    transposed: bool = False  # the module stores it as x @ W (open_clip's text_projection)
    halves_swapped: bool = False  # the weight holds the LoRA's two output halves in the other order (an SD3
    # AdaLayerNormContinuous in diffusers' names: (scale, shift) where the original has (shift, scale))

    def shape(self, weight_shape: torch.Size) -> tuple[int, ...]:
        """The shape of the part of a weight of ``weight_shape`` this target changes, as the LoRA sees it."""
        shape = list(weight_shape)
        if self.rows is not None:
            shape[0] = self.rows[1] - self.rows[0]
        return tuple(reversed(shape)) if self.transposed else tuple(shape)

    def stored(self, delta: torch.Tensor) -> torch.Tensor:
        """A change of ``shape()``, laid out as the weight (or its rows) stores it."""
        if self.halves_swapped:
            delta = torch.cat(delta.chunk(2)[::-1])
        return delta.T if self.transposed else delta


class LoraError(ValueError):
    """A LoRA file that cannot be applied (the message names the file and what is wrong)."""


@dataclass(eq=False)
class Adapter:
    """One module's change in a LoRA file: its kind ("lora", "loha", "lokr") and tensors by slot."""
    name: str
    kind: str
    tensors: dict[str, torch.Tensor]
    alpha: float | None

    def delta(self, shape: tuple[int, ...], device, dtype=torch.float32) -> torch.Tensor:
        """The change to a weight of ``shape``, at strength 1, computed in ``dtype`` on ``device``."""
        t = {k: v.to(device=device, dtype=dtype) for k, v in self.tensors.items()}
        if self.kind == "lora":
            up, down = t["up"].flatten(1), t["down"].flatten(1)
            change, rank = up @ down, down.shape[0]
        elif self.kind == "loha":
            change, rank = _loha_factor(t, "1") * _loha_factor(t, "2"), t["w1_b"].shape[0]
        else:
            w1, w2 = _lokr_factor(t, "1"), _lokr_factor(t, "2")
            if w2.ndim == 4:
                w1 = w1[:, :, None, None]
            change = torch.kron(w1, w2)
            decomposed = "w1_b" if "w1_b" in t else "w2_b" if "w2_b" in t else None
            rank = t[decomposed].shape[0] if decomposed else None
        scale = self.alpha / rank if self.alpha is not None and rank else 1.0
        return (change * scale).reshape(shape)

    def numel(self) -> int:
        """The number of values of the change (what it must share with the weight it patches)."""
        t = {k: v.shape for k, v in self.tensors.items()}
        if self.kind == "lora":
            return t["up"][0] * math.prod(t["down"][1:])
        if self.kind == "loha":
            return _factor_numel(t, "1")
        return _factor_numel(t, "1") * _factor_numel(t, "2")


def _factor_numel(shapes: dict, i: str) -> int:
    """Values of factor ``i``: a full ``w{i}``, ``w{i}_a`` [out, r] · ``w{i}_b`` [r, in], or with a Tucker core
    ``t{i}`` [r, r, kh, kw] ``w{i}_a`` [r, out] and ``w{i}_b`` [r, in] (LyCORIS's layouts)."""
    if f"w{i}" in shapes:
        return math.prod(shapes[f"w{i}"])
    if f"t{i}" in shapes:
        return shapes[f"w{i}_a"][1] * shapes[f"w{i}_b"][1] * math.prod(shapes[f"t{i}"][2:])
    return shapes[f"w{i}_a"][0] * shapes[f"w{i}_b"][1]


def _loha_factor(t: dict, i: str) -> torch.Tensor:
    a, b = t[f"w{i}_a"], t[f"w{i}_b"]
    if f"t{i}" in t:  # Tucker core [r, r, kh, kw]: out × in × kh × kw
        return torch.einsum("ijkl,jr,ip->prkl", t[f"t{i}"], b, a)
    return a @ b


def _lokr_factor(t: dict, i: str) -> torch.Tensor:
    if f"w{i}" in t:
        return t[f"w{i}"]
    if f"t{i}" in t:
        return torch.einsum("ijkl,jr,ip->prkl", t[f"t{i}"], t[f"w{i}_b"], t[f"w{i}_a"])
    return t[f"w{i}_a"] @ t[f"w{i}_b"]


_REQUIRED = {"lora": {"down", "up"}, "loha": {"w1_a", "w1_b", "w2_a", "w2_b"}}


def _complete(kind: str, slots: set[str]) -> bool:
    if kind == "lokr":
        return all(f"w{i}" in slots or {f"w{i}_a", f"w{i}_b"} <= slots for i in "12")
    return _REQUIRED[kind] <= slots


def _normalise(name: str, suffix: str) -> str:
    """diffusers' attention-processor names → the module they adapt."""
    if ".processor." in name or suffix.startswith("_lora."):
        head, _, last = name.replace(".processor.", ".").rpartition(".")
        table = _TEXT_PROCESSOR_NAMES if ".self_attn" in name else _PROCESSOR_NAMES
        return f"{head}.{table.get(last, last)}"
    return name


def _peft_configs(header: dict[str, str]) -> dict[str, dict]:
    """{name prefix: peft LoraConfig as a dict} from diffusers' ``lora_adapter_metadata`` header entry: a pipeline's
    files key each part's config fields by the part ("transformer.lora_alpha" → prefix "transformer."), a model's
    own ``save_lora_adapter`` writes one config for all ("lora_alpha" → prefix "")."""
    fields = json.loads(header.get("lora_adapter_metadata") or "{}")
    configs: dict[str, dict] = {}
    for key, value in fields.items():
        part, _, field = key.rpartition(".")
        configs.setdefault(part + "." if part else "", {})[field] = value
    return {prefix: c for prefix, c in configs.items() if "lora_alpha" in c and "r" in c}


def _peft_alpha(config: dict, module: str, rank: int) -> float:
    """The alpha that gives ``module`` (its name inside the adapted model) peft's scale under ours (alpha / rank):
    lora_alpha / r, or / √r with rsLoRA, each taken from the config's per-module patterns where one matches (peft
    matches a pattern against the end of the name, after a dot)."""
    def pick(patterns, default):
        return next((v for k, v in (patterns or {}).items() if re.match(rf"(.*\.)?({k})$", module)), default)

    alpha, r = pick(config.get("alpha_pattern"), config["lora_alpha"]), pick(config.get("rank_pattern"), config["r"])
    return alpha / (math.sqrt(r) if config.get("use_rslora") else r) * rank


def read_lora(path: Path) -> dict[str, Adapter]:
    """Every adapter in a LoRA safetensors file, by module name. Raises LoraError for a file that is not one."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
        with safe_open(str(path), "pt") as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError) as exc:
        raise LoraError(f"{path.name}: not a readable safetensors file ({exc})") from None
    try:
        configs = _peft_configs(header)
    except (ValueError, AttributeError) as exc:
        raise LoraError(f"{path.name}: its lora_adapter_metadata header is not a peft LoraConfig ({exc})") from None
    groups: dict[str, tuple[str | None, dict[str, torch.Tensor]]] = {}
    for key, value in tensors.items():
        for suffix, kind, slot in _SUFFIXES:
            if key.endswith(suffix):
                name = _normalise(key[:-len(suffix)], suffix)
                old_kind, slots = groups.setdefault(name, (kind, {}))
                groups[name] = (old_kind or kind, slots)
                slots[slot] = value
                break
    adapters = {}
    for name, (kind, slots) in groups.items():
        if kind is None:  # only an alpha (or a DoRA scale) under this name
            continue
        if "dora_scale" in slots:
            raise LoraError(f"{path.name}: {name} is a DoRA module (dora_scale), which latentgraph does not apply")
        if "mid" in slots:
            raise LoraError(f"{path.name}: {name} is a Tucker-decomposed LoCon module (lora_mid), which latentgraph "
                            "does not apply")
        if not _complete(kind, set(slots)):
            raise LoraError(f"{path.name}: {name} has only {sorted(slots)} of its {kind} tensors")
        alpha = slots.pop("alpha", None)
        prefix = next((p for p in configs if name.startswith(p)), None) if alpha is None and kind == "lora" else None
        if prefix is not None:
            alpha = _peft_alpha(configs[prefix], name[len(prefix):], slots["down"].shape[0])
        adapters[name] = Adapter(name, kind, slots, None if alpha is None else float(alpha))
    if not adapters:
        raise LoraError(f"{path.name}: no LoRA weights in it (expected names ending in lora_down/lora_up, lora_A/"
                        f"lora_B, lora.down/lora.up, hada_* or lokr_*; found e.g. {list(tensors)[:3]})")
    return adapters


@dataclass(eq=False)
class Lora:
    """A LoRA file's adapters; ``key`` identifies the file's contents (path, size, mtime) for cache keys."""
    name: str
    key: tuple
    adapters: dict[str, Adapter]


def match(lora: Lora, keys: dict[str, Target], weight_shape, what: str) -> dict[Target, list[Adapter]]:
    """The adapters of ``lora`` that ``keys`` (a family's LoRA names) know, by target. An adapter whose change does
    not fit its weight (``weight_shape(target)``) is an error: the file is for another model."""
    found: dict[Target, list[Adapter]] = {}
    for name, adapter in lora.adapters.items():
        target = keys.get(name)
        if target is None:
            continue
        shape = target.shape(weight_shape(target))
        if adapter.numel() != math.prod(shape):
            raise LoraError(f"{what}: {lora.name!r} changes {name} by {adapter.numel()} values but this "
                            f"{target.weight} has {list(shape)} ({math.prod(shape)}); the LoRA is for another model")
        found.setdefault(target, []).append(adapter)
    return found
