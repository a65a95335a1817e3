"""LoRA loaders under ComfyUI's names: apply a LoRA from <models>/loras to a MODEL and its CLIP.

The file is matched against the names the model's family gives its weights (nodes.families ``lora_model_keys`` /
``lora_clip_keys``: kohya-ss, diffusers/PEFT, LyCORIS and single-file layouts, nodes.lora). The outputs are patched
handles (nodes.patching): nothing is computed and no weight is copied until a sampler or text encoder uses them, and
the base model stays as it was for every other graph. Loaders chain: each adds its LoRA to the handle it is given.
"""
from __future__ import annotations

import logging
from pathlib import Path

from ..families import family_of
from ..float8 import stored_name
from ..lora import Lora, LoraError, match, read_lora
from ..node import Input, Output, node
from ..patching import Patch, PatchedModel, PatchedTextEncoder, stacked, unpatched
from ..types import CLIP, MODEL
from .loaders import _fingerprint, file_fingerprint, list_models, resolve

FOLDER = "loras"
STRENGTH = dict(default=1.0, min=-100.0, max=100.0, step=0.01)
log = logging.getLogger("latentgraph.lora")


def lora_names(env) -> list[str]:
    return list_models(env, FOLDER, folder_ok=lambda path: False)


def load_lora(ctx, name: str, what: str) -> Lora:
    path = resolve(ctx.env, FOLDER, name, what)
    try:
        return Lora(name, (path, file_fingerprint(path)), read_lora(Path(path)))
    except LoraError as exc:
        raise ValueError(f"{what}: {exc}") from None


def _examples(keys) -> list[str]:
    """A few of a family's LoRA names, one per layout, for messages."""
    return [k for k in keys if k.endswith(("attn1_to_q", "attn1.to_q", "self_attn_q_proj", "self_attn.q_proj",
                                           "x_block_attn_qkv", "attn.to_q", "attn_to_q"))][:5]


def _keys(method, value, what: str) -> dict:
    try:
        return method(value)
    except NotImplementedError as exc:
        raise ValueError(f"{what}: {exc}") from None


def apply_lora(ctx, name: str, model, clip, strength_model: float, strength_clip: float, what: str):
    """(MODEL, CLIP) with the LoRA ``name`` at these strengths (a CLIP of None: the model alone). A LoRA none of whose
    modules this model has is an error; modules it lacks besides are counted in a warning."""
    lora = load_lora(ctx, name, what)
    base_model = unpatched(model)
    family = family_of(base_model.kind)
    params = dict(base_model.module.named_parameters())
    model_keys = _keys(family.lora_model_keys, base_model, what)
    found_model = match(lora, model_keys, lambda t: params[stored_name(base_model.module, t.weight)].shape, what)
    clip_keys, found_clip = {}, {}
    if clip is not None:
        base_clip = unpatched(clip)
        clip_keys = _keys(family_of(base_clip.kind).lora_clip_keys, base_clip, what)
        towers = [dict(t.named_parameters()) for t in base_clip.towers()]
        found_clip = match(lora, clip_keys, lambda t: towers[t.module][t.weight].shape, what)
    if not found_model and not found_clip:
        sample = list(lora.adapters)[:3]
        raise ValueError(f"{what}: {name!r} changes no weight of this {family.title} model"
                         f"{' or its CLIP' if clip is not None else ''}: its {len(lora.adapters)} modules are named "
                         f"like {sample}, this model's LoRAs name them like {_examples({**model_keys, **clip_keys})}; "
                         "is it a LoRA for another model family?")
    text_only = clip is None and family.lora_text_prefixes
    unmatched = [n for n in lora.adapters if n not in model_keys and n not in clip_keys
                 and not (text_only and n.startswith(family.lora_text_prefixes))]
    if unmatched:
        log.warning("%s: %d of the %d modules of %r match no weight of this %s model and are not applied, e.g. %s",
                    what, len(unmatched), len(lora.adapters), name, family.title, unmatched[:3])
    if strength_model and found_model:
        model = stacked(PatchedModel, model, Patch((lora.key, strength_model), strength_model, found_model),
                        ctx.resources)
    if strength_clip and found_clip:
        clip = stacked(PatchedTextEncoder, clip, Patch((lora.key, strength_clip), strength_clip, found_clip),
                       ctx.resources)
    return model, clip


@node(category="loaders", outputs=[Output(MODEL, "MODEL", "the diffusion model with the LoRA"),
                                   Output(CLIP, "CLIP", "the text encoders with the LoRA")],
      display_name="Load LoRA (Model and CLIP)", version="1.0.0")
class LoraLoader:
    """Apply a LoRA to a diffusion model and its text encoders, e.g. for a style or a subject. Chain several to stack
    them. kohya-ss, diffusers/PEFT, LyCORIS (LoHa, LoKr) and single-file layouts; the base model is not changed."""
    model: MODEL = Input(description="the diffusion model to apply the LoRA to")
    clip: CLIP = Input(description="the text encoders to apply the LoRA to")
    lora_name: str = Input(choices=lora_names, model_folder=FOLDER, description="a LoRA file in <models>/loras")
    strength_model: float = Input(**STRENGTH, description="how much the LoRA changes the model; negative reverses it")
    strength_clip: float = Input(**STRENGTH, description="how much the LoRA changes the text encoders; may be negative")

    @classmethod
    def fingerprint(cls, values, env):
        return _fingerprint(env, FOLDER, values["lora_name"])

    def run(self, ctx):
        if self.strength_model == 0 and self.strength_clip == 0:
            return self.model, self.clip
        return apply_lora(ctx, self.lora_name, self.model, self.clip, self.strength_model, self.strength_clip,
                          "LoraLoader: lora_name")


@node(category="loaders", outputs=[Output(MODEL, "MODEL", "the diffusion model with the LoRA")],
      display_name="Load LoRA", version="1.0.0")
class LoraLoaderModelOnly:
    """Apply a LoRA to a diffusion model alone (its text-encoder weights, if any, are left out): e.g. LCM-LoRA, or a
    LoRA for a model whose prompt is encoded elsewhere. Chain several to stack them."""
    model: MODEL = Input(description="the diffusion model to apply the LoRA to")
    lora_name: str = Input(choices=lora_names, model_folder=FOLDER, description="a LoRA file in <models>/loras")
    strength_model: float = Input(**STRENGTH, description="how much the LoRA changes the model; negative reverses it")

    @classmethod
    def fingerprint(cls, values, env):
        return _fingerprint(env, FOLDER, values["lora_name"])

    def run(self, ctx):
        if self.strength_model == 0:
            return (self.model,)
        return (apply_lora(ctx, self.lora_name, self.model, None, self.strength_model, 0.0,
                           "LoraLoaderModelOnly: lora_name")[0],)
