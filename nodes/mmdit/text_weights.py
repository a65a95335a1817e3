"""SD3's text encoders as files hold them, and the CLIP value (``text.SD3TextEncoders``) loaded from them.

Every layout keeps each tower in transformers' own names: CLIP-L as ``CLIPTextModel`` (``text_model.*``), CLIP-G as
``CLIPTextModelWithProjection`` (``text_model.*`` and ``text_projection.weight``), T5-XXL as ``T5EncoderModel``
(``shared.weight``, ``encoder.*``; the tied embedding often stored twice). Where the towers sit:

- in a single-file checkpoint (``keys/sd3_medium_incl_clips_t5xxlfp8.txt``): under ``TEXT_PREFIXES``, T5 stored in
  float8_e4m3fn (upcast on use, nodes.mmdit.t5); ``sd3_medium.safetensors`` has none;
- in a diffusers folder: text_encoder/, text_encoder_2/ and text_encoder_3/ (T5 optional, maybe sharded);
- in files of their own (``clip_l.safetensors``, ``clip_g.safetensors``, ``t5xxl_fp16.safetensors``, read by
  CLIPLoader and TripleCLIPLoader from <models>/text_encoders): which tower a file holds is told from its tensors.

CLIP-G runs through open_clip's text tower, as SDXL's bigG does (nodes.sdxl.text), after renaming its tensors.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..sdxl.text import BIGG, CLIP_L, clip_l_state_shapes, hf_to_open_clip, load_clip_l, load_open_clip, tower_state
from ..weights import (FLOAT8, CheckpointError, UnsupportedCheckpoint, read_component, read_shapes,
                       read_tensors_keeping_float8)
from .t5 import T5_XXL, T5TowerConfig, build_t5, hf_t5_config, load_t5, t5_state_shapes
from .text import CONTEXT_WIDTH, SD3TextEncoders

TOWERS = ("clip_l", "clip_g", "t5xxl")
TEXT_PREFIXES = {"clip_l": "text_encoders.clip_l.transformer.", "clip_g": "text_encoders.clip_g.transformer.",
                 "t5xxl": "text_encoders.t5xxl.transformer."}
TEXT_FOLDERS = {"clip_l": "text_encoder", "clip_g": "text_encoder_2", "t5xxl": "text_encoder_3"}

# Tiny demo towers: CLIP-G as deep as the real one (32 layers: how a standalone CLIP-G file is told from CLIP-L), a
# T5 wider than CLIP-L ‖ CLIP-G so the context is zero-padded.
TINY_CLIP_WIDTH, TINY_CLIP_G_LAYERS = 32, 32
TINY_T5 = T5TowerConfig(d_model=96, d_kv=16, d_ff=128, num_layers=2, num_heads=4)


# ---- loading ---------------------------------------------------------------------------------------------------

def sd3_text_encoders(states: dict[str, dict[str, torch.Tensor]], dtype, device,
                      context_width: int = CONTEXT_WIDTH) -> SD3TextEncoders:
    """The CLIP value from each present tower's transformers-named tensors (``states[clip_l | clip_g | t5xxl]``).
    CLIP-L's pooled output is taken unprojected (SAI's reference, ComfyUI), so a text_projection it may carry (the
    identity in diffusers' SD3 folders) is not used. Raises KeyError / ValueError naming the tower at fault."""
    clip_l = clip_g = t5 = None
    if "clip_l" in states:
        sd = {k: v for k, v in tower_state(states["clip_l"], "", "CLIP-L").items() if k != "text_projection.weight"}
        clip_l = load_clip_l(sd, dtype, device)
    if "clip_g" in states:
        clip_g = load_open_clip(hf_to_open_clip(tower_state(states["clip_g"], "", "CLIP-G")), dtype, device, "CLIP-G")
    if "t5xxl" in states:
        t5 = load_t5(states["t5xxl"], dtype, device)
    return SD3TextEncoders(clip_l, clip_g, t5, context_width=context_width)


def _loaded(states: dict, dtype, device, context_width: int, where) -> SD3TextEncoders:
    try:
        return sd3_text_encoders(states, dtype, device, context_width)
    except (KeyError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{where}: text encoders do not load — {e}") from e


def _strip(prefix: str):
    return lambda k: k[len(prefix):] if k.startswith(prefix) else None


def checkpoint_text(path: Path, shapes: dict[str, tuple], dtype, device, context_width: int
                    ) -> SD3TextEncoders | None:
    """The CLIP output of a single-file SD3 checkpoint: its ``text_encoders.*`` towers, None when it has none.
    ``context_width`` is the MMDiT's context width, what CLIP-L ‖ CLIP-G is zero-padded to when there is no T5."""
    states = {tower: read_tensors_keeping_float8(path, _strip(prefix), dtype, device)
              for tower, prefix in TEXT_PREFIXES.items() if any(k.startswith(prefix) for k in shapes)}
    return _loaded(states, dtype, device, context_width, path) if states else None


def folder_text(folder: Path, dtype, device, context_width: int) -> SD3TextEncoders | None:
    """The same for a diffusers folder's text_encoder/, _2/ and _3/."""
    states = {tower: read_component(folder / sub, dtype, device, read_tensors_keeping_float8)
              for tower, sub in TEXT_FOLDERS.items() if (folder / sub).is_dir()}
    return _loaded(states, dtype, device, context_width, folder) if states else None


def text_tower_of(shapes: dict[str, tuple]) -> str | None:
    """Which SD3 text encoder a standalone file (transformers' layout) holds, told as ComfyUI tells them: T5 by its
    blocks, CLIP-G by a 31st layer (CLIP-L has 12, CLIP-G 32), else CLIP-L; None for none of them."""
    if any(k.startswith("encoder.block.") for k in shapes):
        return "t5xxl"
    if "text_model.encoder.layers.30.mlp.fc1.weight" in shapes:
        return "clip_g"
    if "text_model.encoder.layers.0.mlp.fc1.weight" in shapes:
        return "clip_l"
    return None


def standalone_text(files: list[Path], dtype, device) -> SD3TextEncoders:
    """The CLIP value from text-encoder files of their own (CLIPLoader: one, TripleCLIPLoader: three, any order)."""
    states = {}
    for file in files:
        tower = text_tower_of(read_shapes(file))
        if tower is None:
            raise UnsupportedCheckpoint(f"{file.name}: not a CLIP-L, CLIP-G or T5-XXL text encoder (in "
                                        "transformers' layout)")
        if tower in states:
            raise ValueError(f"{file.name}: a second {tower} text encoder; SD3 takes one CLIP-L, one CLIP-G and "
                             "one T5-XXL")
        states[tower] = read_tensors_keeping_float8(file, lambda k: k, dtype, device)
    return _loaded(states, dtype, device, CONTEXT_WIDTH, ", ".join(f.name for f in files))


# ---- the full-size layout, on meta -----------------------------------------------------------------------------

def _hf_clip_g_shapes(prefix: str) -> dict[str, tuple[int, ...]]:
    """CLIP-G as transformers' CLIPTextModelWithProjection stores it, on meta."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    config = CLIPTextConfig(hidden_size=BIGG.width, intermediate_size=BIGG.mlp_width, num_attention_heads=BIGG.heads,
                            num_hidden_layers=BIGG.layers, max_position_embeddings=BIGG.context, vocab_size=BIGG.vocab,
                            hidden_act="gelu", projection_dim=BIGG.proj_dim)
    with torch.device("meta"):
        return {prefix + k: tuple(v.shape) for k, v in CLIPTextModelWithProjection(config).state_dict().items()}


def text_state_shapes() -> dict[str, tuple[int, ...]]:
    """Key → shape of SD3 medium's three text encoders as ``sd3_medium_incl_clips_t5xxlfp8`` stores them."""
    clip_l = clip_l_state_shapes(CLIP_L, TEXT_PREFIXES["clip_l"])
    return {**{k: v for k, v in clip_l.items() if not k.endswith("position_ids")},
            **_hf_clip_g_shapes(TEXT_PREFIXES["clip_g"]), **t5_state_shapes(T5_XXL, TEXT_PREFIXES["t5xxl"])}


# ---- tiny demo towers ------------------------------------------------------------------------------------------

def demo_text_states(generator: torch.Generator) -> dict[str, dict[str, torch.Tensor]]:
    """Tiny random CLIP-L, CLIP-G and T5 (float8, as SD3 files store it) in transformers' names, by tower."""
    from .. import demo

    clip_l = demo.tiny_clip_l_state(TINY_CLIP_WIDTH, generator)
    clip_g = demo.open_clip_to_hf(demo.tiny_open_clip_state(TINY_CLIP_WIDTH, generator, TINY_CLIP_G_LAYERS))
    t5 = demo.randomize(build_t5(TINY_T5), generator).state_dict()
    return {"clip_l": {k: v for k, v in clip_l.items() if not k.endswith("position_ids")}, "clip_g": clip_g,
            "t5xxl": {k: v.to(FLOAT8[0]) for k, v in t5.items()}}


def demo_text_tensors(generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The tiny towers as an incl_clips checkpoint holds them (``text_encoders.*``)."""
    return {TEXT_PREFIXES[tower] + k: v for tower, sd in demo_text_states(generator).items() for k, v in sd.items()}


def demo_diffusers_text(states: dict[str, dict[str, torch.Tensor]]) -> dict[str, tuple[dict, dict]]:
    """``demo_text_states``' towers as a diffusers folder's text_encoder/, _2/, _3/: ``{sub: (state, config)}``.
    CLIP-L becomes a CLIPTextModelWithProjection with the identity projection (as diffusers converts SD3 files),
    T5 float32."""
    from .. import demo

    clip_l = {**states["clip_l"], "text_projection.weight": torch.eye(TINY_CLIP_WIDTH)}
    return {"text_encoder": (clip_l, demo.hf_text_config(TINY_CLIP_WIDTH, "CLIPTextModelWithProjection")),
            "text_encoder_2": (states["clip_g"], demo.hf_text_config(
                TINY_CLIP_WIDTH, "CLIPTextModelWithProjection", hidden_act="gelu",
                num_hidden_layers=TINY_CLIP_G_LAYERS)),
            "text_encoder_3": ({k: v.float() for k, v in states["t5xxl"].items()},
                               {**hf_t5_config(TINY_T5).to_dict(), "architectures": ["T5EncoderModel"]})}
