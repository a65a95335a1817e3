"""SD3 (Esser et al. 2024; SD3 medium): the MMDiT (nodes.mmdit), rectified flow with shifted timesteps, text from
CLIP-L, CLIP-G and optionally T5-XXL, and a 16-channel VAE.

- Detection: an MMDiT (``x_embedder``, ``joint_blocks``) at ``model.diffusion_model.`` beside the VAE at
  ``first_stage_model.``: ``keys/sd3_medium.txt`` (no text encoders: CheckpointLoaderSimple then gives no CLIP, and
  TripleCLIPLoader loads them) and ``keys/sd3_medium_incl_clips_t5xxlfp8.txt`` (with ``text_encoders.clip_l``,
  ``.clip_g`` and ``.t5xxl`` ``.transformer.`` in transformers' layouts, T5 stored in float8 and upcast on use).
  Diffusers folders: transformer/ is an ``SD3Transformer2DModel``; text_encoder/, _2/, _3/ (T5 optional, maybe
  sharded); the scheduler config's ``shift``. The MMDiT alone (UNETLoader): those layouts' MMDiT tensors, in a
  file or a transformer/ folder.
- Configs: ``SD3_MEDIUM`` (depth 24, 1536 wide, 24 heads, patch 2, 16 channels, a 192² position table); the VAE is
  the KL-f8 one with 16 latent channels and no quant convs; tiny presets for the demo.
- Latent format: 16 channels, sampling-space latent = (z − 0.0609)·1.5305; preview factors from Stability AI's SD3
  reference code (sd3_impls.SD3LatentFormat).
- Text (nodes.mmdit.text, ComfyUI's conventions): the context [CLIP-L ‖ CLIP-G padded to 4096, then T5's tokens]
  and the pooled CLIP-L ‖ CLIP-G vector, which the MMDiT takes as ``y``.
- Prediction: rectified-flow velocity with shift 3.0 (``DiscreteFlow``; ModelSamplingSD3 changes the shift).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
from pathlib import Path

import torch

from .. import demo
from ..latent_format import LatentFormat
from ..lora import Target
from ..mmdit.mmdit import SD3_MEDIUM, MMDiT, MMDiTConfig, mmdit_config
from ..mmdit.model import MMDiTModel
from ..mmdit.text_weights import (TEXT_PREFIXES, TINY_CLIP_WIDTH, TINY_T5, checkpoint_text, demo_diffusers_text,
                                   demo_text_states, folder_text, standalone_text, text_state_shapes)
from ..sampling.schedules import DiscreteFlow
from ..sdxl.configs import SDXL_VAE, TINY_VAE
from ..sdxl.meta import empty_modules
from ..sdxl.vae import AutoencoderKL
from ..weights import CheckpointError, UnsupportedCheckpoint, build, read_component, read_config, read_tensors
from . import Checkpoint, Family, register
from .ldm import UNET_PREFIX, VAE_PREFIX, infer_vae_config, load_diffusers_vae, strip_prefix, text_lora_keys

MMDIT_PREFIX = UNET_PREFIX  # model.diffusion_model.
SHIFT = 3.0
SD3_LATENT = LatentFormat(
    channels=16, scale_factor=1.5305, shift_factor=0.0609,
    rgb_factors=((-0.0645, 0.0177, 0.1052), (0.0028, 0.0312, 0.0650), (0.1848, 0.0762, 0.0360),
                 (0.0944, 0.0360, 0.0889), (0.0897, 0.0506, -0.0364), (-0.0020, 0.1203, 0.0284),
                 (0.0855, 0.0118, 0.0283), (-0.0539, 0.0658, 0.1047), (-0.0057, 0.0116, 0.0700),
                 (-0.0412, 0.0281, -0.0039), (0.1106, 0.1171, 0.1220), (-0.0248, 0.0682, -0.0481),
                 (0.0815, 0.0846, 0.1207), (-0.0120, -0.0055, -0.0867), (-0.0749, -0.0634, -0.0456),
                 (-0.1418, -0.1457, -0.1259)))
SD3_VAE = dataclasses.replace(SDXL_VAE, z_channels=16, scaling_factor=SD3_LATENT.scale_factor,
                              shift_factor=SD3_LATENT.shift_factor, use_quant_conv=False)
# Tiny presets: the MMDiT takes the tiny text towers' (nodes.mmdit.text_weights) widths.
TINY_MMDIT = MMDiTConfig(depth=2, hidden_size=128, num_heads=2, context_dim=TINY_T5.d_model,
                         pooled_dim=2 * TINY_CLIP_WIDTH, pos_embed_max_size=32)
TINY_SD3_VAE = dataclasses.replace(TINY_VAE, z_channels=16, scaling_factor=SD3_LATENT.scale_factor,
                                   shift_factor=SD3_LATENT.shift_factor, use_quant_conv=False)
SCHEDULER = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": SHIFT}


# ---- the MMDiT in diffusers' layout (SD3Transformer2DModel) -----------------------------------------------

SAME, QKV, SWAP = "same", "qkv", "swap"


def _diffusers_layers(cfg: MMDiTConfig) -> dict[str, tuple[tuple[str, ...], str]]:
    """Original layer → its diffusers layers and how they relate: SAME; QKV (the fused projection is diffusers' q,
    k and v stacked on the output axis); SWAP (diffusers' AdaLayerNormContinuous, in the final layer and the last
    pre-only context block, takes (scale, shift) where the original has (shift, scale))."""
    layers = {"x_embedder.proj": "pos_embed.proj", "t_embedder.mlp.0": "time_text_embed.timestep_embedder.linear_1",
              "t_embedder.mlp.2": "time_text_embed.timestep_embedder.linear_2",
              "y_embedder.mlp.0": "time_text_embed.text_embedder.linear_1",
              "y_embedder.mlp.2": "time_text_embed.text_embedder.linear_2", "context_embedder": "context_embedder",
              "final_layer.linear": "proj_out"}
    out = {k: ((v,), SAME) for k, v in layers.items()}
    out["final_layer.adaLN_modulation.1"] = (("norm_out.linear",), SWAP)
    for i in range(cfg.depth):
        o, d = f"joint_blocks.{i}.", f"transformer_blocks.{i}."
        last = i == cfg.depth - 1
        same = {"x_block.attn.proj": "attn.to_out.0", "x_block.attn.ln_q": "attn.norm_q",
                "x_block.attn.ln_k": "attn.norm_k", "context_block.attn.ln_q": "attn.norm_added_q",
                "context_block.attn.ln_k": "attn.norm_added_k", "x_block.adaLN_modulation.1": "norm1.linear",
                "x_block.mlp.fc1": "ff.net.0.proj", "x_block.mlp.fc2": "ff.net.2",
                "x_block.attn2.proj": "attn2.to_out.0",
                "x_block.attn2.ln_q": "attn2.norm_q", "x_block.attn2.ln_k": "attn2.norm_k",
                "context_block.attn.proj": "attn.to_add_out", "context_block.mlp.fc1": "ff_context.net.0.proj",
                "context_block.mlp.fc2": "ff_context.net.2"}
        out.update({o + k: ((d + v,), SAME) for k, v in same.items()})
        out[o + "context_block.adaLN_modulation.1"] = ((d + "norm1_context.linear",), SWAP if last else SAME)
        for stream, names in (("x_block.attn", ("attn.to_q", "attn.to_k", "attn.to_v")),
                              ("context_block.attn", ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")),
                              ("x_block.attn2", ("attn2.to_q", "attn2.to_k", "attn2.to_v"))):
            out[f"{o}{stream}.qkv"] = (tuple(d + n for n in names), QKV)
    return out


def diffusers_keys(cfg: MMDiTConfig) -> dict[str, tuple[tuple[str, ...], str]]:
    """Every original MMDiT tensor → its diffusers tensors and their relation."""
    with empty_modules():
        keys = MMDiT(cfg).state_dict().keys()
    layers = _diffusers_layers(cfg)
    out = {"pos_embed": (("pos_embed.pos_embed",), SAME)}
    for key in keys:
        if key != "pos_embed":
            layer, _, name = key.rpartition(".")
            targets, how = layers[layer]
            out[key] = (tuple(f"{t}.{name}" for t in targets), how)
    return out


def _swap(t: torch.Tensor) -> torch.Tensor:
    first, second = t.chunk(2)
    return torch.cat([second, first])


def mmdit_from_diffusers(state: dict[str, torch.Tensor], cfg: MMDiTConfig, where: Path) -> dict[str, torch.Tensor]:
    keys = diffusers_keys(cfg)
    stray = sorted(set(state) - {d for targets, _ in keys.values() for d in targets})
    if stray:
        raise CheckpointError(f"{where}: {len(stray)} tensors that are no part of this SD3 transformer, "
                              f"e.g. {stray[:3]}")
    out = {}
    for key, (targets, how) in keys.items():
        missing = [t for t in targets if t not in state]
        if missing:
            raise CheckpointError(f"{where}: the SD3 transformer has no {missing[0]}")
        parts = [state[t] for t in targets]
        out[key] = torch.cat(parts) if how == QKV else _swap(parts[0]) if how == SWAP else parts[0]
    return out


def mmdit_to_diffusers(state: dict[str, torch.Tensor], cfg: MMDiTConfig) -> dict[str, torch.Tensor]:
    out = {}
    for key, (targets, how) in diffusers_keys(cfg).items():
        parts = state[key].chunk(3) if how == QKV else [_swap(state[key]) if how == SWAP else state[key]]
        out.update(zip(targets, parts))
    return out


def mmdit_config_from_diffusers(conf: dict) -> MMDiTConfig:
    heads = conf["num_attention_heads"]
    hidden = heads * conf["attention_head_dim"]
    if conf.get("caption_projection_dim", hidden) != hidden:
        raise UnsupportedCheckpoint(f"an SD3 transformer whose caption projection ({conf['caption_projection_dim']}) "
                                    f"is not its width ({hidden})")
    return MMDiTConfig(
        depth=conf["num_layers"], hidden_size=hidden, num_heads=heads, patch_size=conf.get("patch_size", 2),
        in_channels=conf.get("in_channels", 16), out_channels=conf.get("out_channels") or conf.get("in_channels", 16),
        context_dim=conf["joint_attention_dim"], pooled_dim=conf["pooled_projection_dim"],
        pos_embed_max_size=conf["pos_embed_max_size"], qk_norm=conf.get("qk_norm") == "rms_norm",
        x_self_attn_layers=tuple(conf.get("dual_attention_layers") or ()))


def mmdit_config_to_diffusers(cfg: MMDiTConfig) -> dict:
    return {"_class_name": "SD3Transformer2DModel", "sample_size": cfg.pos_embed_max_size,
            "patch_size": cfg.patch_size, "in_channels": cfg.in_channels, "out_channels": cfg.out_channels,
            "num_layers": cfg.depth, "attention_head_dim": cfg.head_dim, "num_attention_heads": cfg.num_heads,
            "joint_attention_dim": cfg.context_dim, "caption_projection_dim": cfg.hidden_size,
            "pooled_projection_dim": cfg.pooled_dim, "pos_embed_max_size": cfg.pos_embed_max_size,
            "qk_norm": "rms_norm" if cfg.qk_norm else None, "dual_attention_layers": list(cfg.x_self_attn_layers)}


def mmdit_config_from_diffusers_shapes(shapes: dict[str, tuple]) -> MMDiTConfig:
    """The config of a diffusers-layout transformer from its tensor shapes (a ``diffusion_pytorch_model.safetensors``
    without its config.json); heads are 64 channels wide, as ``mmdit_config`` assumes."""
    hidden, in_channels, patch, _ = shapes["pos_embed.proj.weight"]
    blocks = {int(k.split(".")[1]) for k in shapes if k.startswith("transformer_blocks.")}
    return mmdit_config_from_diffusers({
        "num_layers": len(blocks), "num_attention_heads": hidden // 64, "attention_head_dim": 64, "patch_size": patch,
        "in_channels": in_channels, "out_channels": shapes["proj_out.weight"][0] // patch ** 2,
        "joint_attention_dim": shapes["context_embedder.weight"][1],
        "pooled_projection_dim": shapes["time_text_embed.text_embedder.linear_1.weight"][1],
        "pos_embed_max_size": math.isqrt(shapes["pos_embed.pos_embed"][1]),
        "qk_norm": "rms_norm" if "transformer_blocks.0.attn.norm_q.weight" in shapes else None,
        "dual_attention_layers": sorted({int(k.split(".")[1]) for k in shapes if ".attn2." in k})})


def _shift(folder: Path) -> float:
    """The flow shift a diffusers pipeline folder's scheduler config gives (3.0 without one)."""
    scheduler = folder / "scheduler" / "scheduler_config.json"
    return json.loads(scheduler.read_text()).get("shift", SHIFT) if scheduler.is_file() else SHIFT


# ---- LoRA names (nodes.lora) ----------------------------------------------------------------------------------

LORA_TOWERS = {"clip_l": ("lora_te1_", "text_encoder.", None), "clip_g": ("lora_te2_", "text_encoder_2.", None)}


@functools.lru_cache(maxsize=4)
def mmdit_lora_keys(cfg: MMDiTConfig) -> dict[str, Target]:
    """Every name LoRA files give an MMDiT weight → where it is in ours (the original layout):

    - on the original modules (``joint_blocks.0.x_block.attn.qkv``): kohya-ss sd-scripts' ``lora_unet_…`` (dots
      turned into underscores; the fused qkv adapted whole) and the single file's ``diffusion_model.…``;
    - on diffusers' ``SD3Transformer2DModel`` modules (``transformer_blocks.0.attn.to_q``): diffusers/PEFT's dotted
      names, with the ``transformer.`` prefix diffusers saves, PeftModel's ``base_model.model.`` or none, and the
      kohya-style ``lora_transformer_…`` that SD3 trainers on diffusers' model write. diffusers' q, k and v
      (``add_q_proj``… for the text stream) change row blocks of our fused qkv; its ``norm1_context`` of the last
      block and ``norm_out`` change our adaLN layers with their two halves swapped (``_diffusers_layers``)."""
    with empty_modules():
        shapes = {k: v.shape for k, v in MMDiT(cfg).state_dict().items()}
    keys = {}
    for layer, (theirs, how) in _diffusers_layers(cfg).items():
        weight = layer + ".weight"
        if len(shapes.get(weight, ())) < 2:  # norms, and layers this configuration does not have
            continue
        keys[f"lora_unet_{layer.replace('.', '_')}"] = keys[f"diffusion_model.{layer}"] = Target(0, weight)
        rows = shapes[weight][0] // len(theirs)
        for j, name in enumerate(theirs):
            target = Target(0, weight, (j * rows, (j + 1) * rows) if how == QKV else None, halves_swapped=how == SWAP)
            for prefix in ("", "transformer.", "base_model.model."):
                keys[prefix + name] = target
            keys[f"lora_transformer_{name.replace('.', '_')}"] = target
    return keys


# ---- the family ----------------------------------------------------------------------------------------------

class SD3(Family):
    name, title = "sd3", "SD3"
    latent_format = SD3_LATENT
    file_names = r"sd3|sd_3|stable[-_ ]?diffusion[-_ ]?3"  # sd3_medium_incl_clips_t5xxlfp8, sd3.5_large
    vae_file_names = ""  # the only 16-channel VAE family: any name
    clip_type = "sd3"

    def claims(self, shapes):
        return MMDIT_PREFIX + "x_embedder.proj.weight" in shapes and \
            MMDIT_PREFIX + "joint_blocks.0.x_block.attn.qkv.weight" in shapes

    def claims_folder(self, folder):
        config = folder / "transformer" / "config.json"
        return config.is_file() and json.loads(config.read_text()).get("_class_name") == "SD3Transformer2DModel"

    def load(self, path, shapes, device, dtype, with_text):
        unknown = [k for k in shapes if not k.startswith((MMDIT_PREFIX, VAE_PREFIX, *TEXT_PREFIXES.values()))]
        if unknown:
            raise CheckpointError(f"{path}: {len(unknown)} tensors outside the SD3 components, e.g. {unknown[:3]}")
        vae_shapes = {k[len(VAE_PREFIX):]: v for k, v in shapes.items() if k.startswith(VAE_PREFIX)}
        if not vae_shapes:
            raise CheckpointError(f"{path}: an SD3 MMDiT without its VAE ({VAE_PREFIX}*); not a full checkpoint")
        cfg = mmdit_config({k[len(MMDIT_PREFIX):]: v for k, v in shapes.items() if k.startswith(MMDIT_PREFIX)})
        mmdit = build(MMDiT, cfg, read_tensors(path, strip_prefix(MMDIT_PREFIX), dtype, device), "MMDiT", path)
        vae = build(AutoencoderKL, infer_vae_config(vae_shapes, SD3_LATENT),
                    read_tensors(path, strip_prefix(VAE_PREFIX), dtype, device), "VAE", path)
        text = checkpoint_text(path, shapes, dtype, device, cfg.context_dim) if with_text else None
        return Checkpoint(self.name, mmdit, cfg, vae, text, path, dtype, DiscreteFlow(SHIFT))

    def load_folder(self, folder, device, dtype, with_text):
        cfg = mmdit_config_from_diffusers(read_config(folder / "transformer"))
        state = mmdit_from_diffusers(read_component(folder / "transformer", dtype, device), cfg, folder / "transformer")
        mmdit = build(MMDiT, cfg, state, "MMDiT", folder / "transformer")
        vae = load_diffusers_vae(folder / "vae", dtype, device)
        text = folder_text(folder, dtype, device, cfg.context_dim) if with_text else None
        return Checkpoint(self.name, mmdit, cfg, vae, text, folder, dtype, DiscreteFlow(_shift(folder)))

    def claims_diffusion_model(self, shapes):
        return any(prefix + "x_embedder.proj.weight" in shapes and prefix + "joint_blocks.0.x_block.attn.qkv.weight"
                   in shapes for prefix in (MMDIT_PREFIX, "")) or \
            "pos_embed.proj.weight" in shapes and "transformer_blocks.0.attn.to_q.weight" in shapes

    def load_diffusion_model(self, path, shapes, device, dtype, folder=None):
        """The original layout with or without ``model.diffusion_model.``, or diffusers' (with the config.json of its
        transformer/ folder, or read from the shapes); a pipeline's transformer/ folder takes the scheduler's shift."""
        if "pos_embed.proj.weight" in shapes:
            cfg = mmdit_config_from_diffusers(read_config(folder)) if folder is not None else \
                mmdit_config_from_diffusers_shapes(shapes)
            state = mmdit_from_diffusers(read_tensors(path, lambda k: k, dtype, device), cfg, path)
        else:
            prefix = MMDIT_PREFIX if MMDIT_PREFIX + "x_embedder.proj.weight" in shapes else ""
            cfg = mmdit_config({k[len(prefix):]: v for k, v in shapes.items() if k.startswith(prefix)})
            state = read_tensors(path, strip_prefix(prefix), dtype, device)
        mmdit = build(MMDiT, cfg, state, "MMDiT", path)
        shift = _shift(folder.parent) if folder is not None else SHIFT
        return Checkpoint(self.name, mmdit, cfg, None, None, path, dtype, DiscreteFlow(shift))

    def load_text_encoders(self, files, device, dtype):
        return standalone_text(files, dtype, device)

    # CLIP-L and CLIP-G take LoRAs (kohya-ss lora_te1_/lora_te2_, diffusers text_encoder./text_encoder_2.); T5-XXL's
    # (lora_te3_, text_encoder_3.) are known, so the model-only loader passes over them, but not applied: its
    # weights are often float8, upcast on use (nodes.mmdit.t5), which a patched copy would have to keep.
    lora_text_prefixes = ("lora_te1_", "lora_te2_", "lora_te3_", "text_encoder.", "text_encoder_2.",
                          "text_encoder_3.")

    def lora_model_keys(self, model):
        return mmdit_lora_keys(model.module.config)

    def lora_clip_keys(self, clip):
        present = [LORA_TOWERS[t] for t in ("clip_l", "clip_g") if getattr(clip, t) is not None]
        return text_lora_keys(clip.towers(), present)

    def model(self, checkpoint, name):
        return MMDiTModel(checkpoint.unet, self.name, checkpoint.sampling, SD3_LATENT, name)

    def full_size_shapes(self, with_text: bool = True):
        """``keys/sd3_medium_incl_clips_t5xxlfp8.txt``'s layout, or without text ``keys/sd3_medium.txt``'s."""
        with torch.device("meta"):
            parts = ((MMDIT_PREFIX, MMDiT(SD3_MEDIUM)), (VAE_PREFIX, AutoencoderKL(SD3_VAE)))
            shapes = {prefix + k: tuple(v.shape) for prefix, module in parts for k, v in module.state_dict().items()}
        return {**shapes, **text_state_shapes()} if with_text else shapes

    def write_demo(self, folder, dtype):
        """``demo_sd3_medium.safetensors`` (MMDiT and VAE), ``demo_sd3_medium_incl_clips_t5xxlfp8.safetensors`` (and
        the text encoders, T5 in float8) and ``demo_sd3_medium_diffusers/``."""
        mmdit, vae, towers = self._demo_weights()
        state = {MMDIT_PREFIX + k: v for k, v in mmdit.state_dict().items()}
        state.update({VAE_PREFIX + k: v for k, v in vae.state_dict().items()})
        what = "SD3 checkpoints (sd3_medium_incl_clips_t5xxlfp8.safetensors)"
        paths = {"sd3": demo.save_single_file(folder / "demo_sd3_medium.safetensors", state, dtype, what)}
        state.update({TEXT_PREFIXES[tower] + k: v for tower, sd in towers.items() for k, v in sd.items()})
        paths["sd3_incl_clips"] = demo.save_single_file(folder / "demo_sd3_medium_incl_clips_t5xxlfp8.safetensors",
                                                        state, dtype, what)
        paths["sd3_diffusers"] = self._write_demo_folder(folder / "demo_sd3_medium_diffusers", mmdit, vae, towers)
        return paths

    def write_demo_diffusion_models(self, folder, dtype):
        """``demo_sd3_medium_mmdit.safetensors``: the demo checkpoint's MMDiT alone, under ``model.diffusion_model.``
        as in ``keys/sd3_medium.txt`` (what UNETLoader reads)."""
        state = {MMDIT_PREFIX + k: v for k, v in self._demo_weights()[0].state_dict().items()}
        what = "SD3 diffusion models (sd3_medium.safetensors)"
        return {"sd3_mmdit": demo.save_single_file(folder / "demo_sd3_medium_mmdit.safetensors", state, dtype, what,
                                                   "diffusion_models")}

    def write_demo_vaes(self, folder, dtype):
        """``demo_sd3_vae.safetensors``: the demo checkpoint's VAE alone, without ``first_stage_model.``, as
        ``keys/sd3_medium.txt`` holds it (what ComfyUI users' sd3_vae.safetensors is; VAELoader reads it)."""
        what = "SD3 VAEs (sd3_vae.safetensors)"
        return {"sd3_vae": demo.save_single_file(folder / "demo_sd3_vae.safetensors",
                                                 self._demo_weights()[1].state_dict(), dtype, what, "vae")}

    def write_demo_text_encoders(self, folder, dtype):
        """``demo_clip_l.safetensors``, ``demo_clip_g.safetensors`` and ``demo_t5xxl_fp8_e4m3fn.safetensors``, the
        demo checkpoint's text encoders as standalone files (what TripleCLIPLoader reads)."""
        what = "SD3 text encoders (clip_l.safetensors, clip_g.safetensors, t5xxl_fp16.safetensors) in <models>/clip"
        names = {"clip_l": "demo_clip_l", "clip_g": "demo_clip_g", "t5xxl": "demo_t5xxl_fp8_e4m3fn"}
        return {f"sd3_{tower}": demo.save_single_file(folder / f"{names[tower]}.safetensors", sd, dtype, what)
                for tower, sd in self._demo_weights()[2].items()}

    def write_demo_loras(self, folder):
        """``demo_sd3_lora``: diffusers/PEFT names as diffusers' SD3 DreamBooth LoRA script saves them, on the layers
        it adapts by default (both streams' attention projections: to_q/k/v, add_q/k/v_proj, to_out.0, to_add_out)
        and, as with its text-encoder option, CLIP-L's and CLIP-G's attention projections."""
        with empty_modules():
            shapes = {k: v.shape for k, v in MMDiT(TINY_MMDIT).state_dict().items()}
        chosen = {}
        for layer, (theirs, _) in _diffusers_layers(TINY_MMDIT).items():
            if layer.endswith((".attn.qkv", ".attn.proj")) and layer + ".weight" in shapes:
                out, width = shapes[layer + ".weight"]
                chosen.update({f"transformer.{name}": (out // len(theirs), width) for name in theirs})
        towers = self._demo_weights()[2]
        for tower, (_, prefix, _) in LORA_TOWERS.items():
            chosen.update({prefix + k[:-len(".weight")]: tuple(v.shape) for k, v in towers[tower].items()
                           if ".self_attn." in k and k.endswith("_proj.weight")})
        return {"sd3_lora": demo.save_lora(folder / "demo_sd3_lora.safetensors", chosen, False,
                                           torch.Generator().manual_seed(demo.SEED + 12),
                                           "SD3 medium LoRAs")}

    def _demo_weights(self):
        """The tiny MMDiT, VAE and text towers (transformers' layouts, T5 in float8), from one seed."""
        g = torch.Generator().manual_seed(demo.SEED + 4)
        mmdit = demo.randomize(MMDiT(TINY_MMDIT), g)
        mmdit.pos_embed.copy_(torch.randn(mmdit.pos_embed.shape, generator=g))
        vae = demo.randomize(AutoencoderKL(TINY_SD3_VAE), g)
        return mmdit, vae, demo_text_states(g)

    def _write_demo_folder(self, folder: Path, mmdit: MMDiT, vae, towers: dict) -> Path:
        """The diffusers layout of the same weights."""
        text = demo_diffusers_text(towers)
        parts = {"transformer": (mmdit_to_diffusers(mmdit.state_dict(), mmdit.config),
                                 mmdit_config_to_diffusers(mmdit.config), "diffusion_pytorch_model.safetensors"),
                 "vae": demo.vae_diffusers_part(vae)}
        index = {"_class_name": "StableDiffusion3Pipeline", "transformer": ["diffusers", "SD3Transformer2DModel"],
                 "vae": ["diffusers", "AutoencoderKL"], "text_encoder": ["transformers", "CLIPTextModelWithProjection"],
                 "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
                 "text_encoder_3": ["transformers", "T5EncoderModel"],
                 "scheduler": ["diffusers", SCHEDULER["_class_name"]]}
        return demo.write_diffusers_parts(folder, parts, text, index, SCHEDULER)


register(SD3())
