"""Tiny random-weight demo checkpoints, one set per model family (each family module's ``write_demo`` writes its
own in its real layouts, with the helpers here). They exercise every loading path and the whole pipeline in
seconds; their images are noise."""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from .families import load_builtin_families
from .families.ldm import unet_diffusers_names, vae_diffusers_names
from .sdxl.configs import UNetConfig, VAEConfig
from .sdxl.text import open_clip_blocks_to_hf
from .weights import FLOAT8

SEED = 20240101
TEXT_LAYERS, TEXT_HEADS = 3, 4  # tiny towers; H2b's loader reads width 32 as 4 heads
VOCAB, CONTEXT_LENGTH = 49408, 77  # the real tokenizer's ids must stay valid
LORA_RANK = 4


def randomize(module: nn.Module, generator: torch.Generator) -> nn.Module:
    """Redraw every parameter with a seeded generator (deterministic whatever the global RNG did), keeping each
    layer's default scale; norm affine parameters get visible spread so they matter in comparisons."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if isinstance(_owner(module, name), (nn.GroupNorm, nn.LayerNorm)):
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * torch.randn(p.shape, generator=generator))
            elif p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=generator) / p[0].numel() ** 0.5)
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=generator))
    return module


def _owner(module: nn.Module, param_name: str) -> nn.Module:
    return module.get_submodule(param_name.rpartition(".")[0])


def unet_config_to_diffusers(cfg: UNetConfig) -> dict:
    """The ``unet/config.json`` diffusers would write for this UNet. diffusers takes the down blocks' depths from
    this list and the middle block's from its last entry, so the last level must be attention-free or as deep
    as the middle (true of SD 1.x, 2.x and SDXL)."""
    attn = [d > 0 for d in cfg.transformer_depth]
    conf = {
        "_class_name": "UNet2DConditionModel", "sample_size": 128,
        "in_channels": cfg.in_channels, "out_channels": cfg.out_channels, "layers_per_block": cfg.num_res_blocks,
        "block_out_channels": cfg.channels,
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn],
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)],
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "transformer_layers_per_block": [d or 1 for d in cfg.transformer_depth[:-1]]
        + [cfg.transformer_depth_middle],
        "attention_head_dim": cfg.num_heads or [c // cfg.num_head_channels for c in cfg.channels],
        "cross_attention_dim": cfg.context_dim, "use_linear_projection": cfg.use_linear_in_transformer,
        "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
        "projection_class_embeddings_input_dim": cfg.adm_in_channels,
        "norm_num_groups": 32, "norm_eps": 1e-5, "flip_sin_to_cos": True, "freq_shift": 0, "act_fn": "silu",
    }
    if not cfg.adm_in_channels:  # SD 1.x / 2.x: no vector input
        for key in ("addition_embed_type", "addition_time_embed_dim", "projection_class_embeddings_input_dim"):
            del conf[key]
    return conf


def vae_config_to_diffusers(cfg: VAEConfig) -> dict:
    n = len(cfg.ch_mult)
    conf = {"_class_name": "AutoencoderKL", "in_channels": cfg.in_channels, "out_channels": cfg.out_channels,
            "block_out_channels": [cfg.ch * m for m in cfg.ch_mult], "layers_per_block": cfg.num_res_blocks,
            "down_block_types": ["DownEncoderBlock2D"] * n, "up_block_types": ["UpDecoderBlock2D"] * n,
            "latent_channels": cfg.z_channels, "norm_num_groups": 32, "act_fn": "silu", "sample_size": 1024,
            "scaling_factor": cfg.scaling_factor, "force_upcast": True}
    if cfg.shift_factor or not cfg.use_quant_conv:  # SD3's VAE
        conf.update(shift_factor=cfg.shift_factor, use_quant_conv=cfg.use_quant_conv,
                    use_post_quant_conv=cfg.use_quant_conv)
    return conf


# ---- tiny text towers, in the checkpoint layouts ---------------------------------------------------------

def clip_l_config(width: int):
    from transformers import CLIPTextConfig
    return CLIPTextConfig(hidden_size=width, intermediate_size=4 * width, num_attention_heads=TEXT_HEADS,
                          num_hidden_layers=TEXT_LAYERS, vocab_size=VOCAB, max_position_embeddings=CONTEXT_LENGTH,
                          hidden_act="quick_gelu", projection_dim=width)


def tiny_clip_l_state(width: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """CLIP-L-shaped tower as the single file stores it: ``text_model.*`` plus the int64 ``position_ids``."""
    from transformers import CLIPTextModel
    model = randomize(CLIPTextModel(clip_l_config(width)), generator)
    sd = {k if k.startswith("text_model.") else "text_model." + k: v for k, v in model.state_dict().items()}
    sd["text_model.embeddings.position_ids"] = torch.arange(CONTEXT_LENGTH)[None]
    return sd


def tiny_open_clip_state(width: int, generator: torch.Generator, layers: int = TEXT_LAYERS) -> dict[str, torch.Tensor]:
    """A tiny OpenCLIP text tower (bigG's or OpenCLIP-H's shape; visual tower removed), open_clip key layout incl.
    ``logit_scale``."""
    import open_clip
    model = open_clip.model.CLIP(
        embed_dim=width,
        vision_cfg=dict(image_size=32, layers=1, width=32, patch_size=16, head_width=16),
        text_cfg=dict(context_length=CONTEXT_LENGTH, vocab_size=VOCAB, width=width, heads=TEXT_HEADS, layers=layers))
    del model.visual
    randomize(model, generator)
    with torch.no_grad():
        model.logit_scale.fill_(4.6052)
    return dict(model.state_dict())


def open_clip_to_hf(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """open_clip text tower → HF ``CLIPTextModelWithProjection`` keys (sdxl.md §11.1)."""
    out = {"text_model.embeddings.token_embedding.weight": sd["token_embedding.weight"],
           "text_model.embeddings.position_embedding.weight": sd["positional_embedding"],
           "text_model.final_layer_norm.weight": sd["ln_final.weight"],
           "text_model.final_layer_norm.bias": sd["ln_final.bias"],
           "text_projection.weight": sd["text_projection"].T.contiguous()}
    return out | open_clip_blocks_to_hf(sd, "text_model.")


def hf_text_config(width: int, architecture: str = "CLIPTextModel", **changes) -> dict:
    """The config.json transformers writes for a tiny CLIP text model: CLIP-L's settings with ``changes``."""
    conf = clip_l_config(width)
    for key, value in changes.items():
        setattr(conf, key, value)
    return {**conf.to_dict(), "architectures": [architecture]}


# ---- writing ----------------------------------------------------------------------------------------------

def notice(what: str, folder: str = "checkpoints") -> str:
    """The text every demo file carries in its metadata; ``what`` names the real models to use instead."""
    return f"Demo model: tiny random weights that produce noise, not pictures. Put real {what} in <models>/{folder}."


def save_single_file(path: Path, state: dict[str, torch.Tensor], dtype: torch.dtype, what: str,
                     folder: str = "checkpoints") -> Path:
    """Floating tensors in ``dtype`` (float8 ones, as SD3 files store T5, as they are), the demo notice as the only
    metadata entry (safetensors orders metadata at random, so one entry keeps the file deterministic)."""
    state = {k: (v.to(dtype) if v.is_floating_point() and v.dtype not in FLOAT8 else v).contiguous()
             for k, v in state.items()}
    save_file(state, str(path), metadata={"latentgraph_demo": notice(what, folder)})
    return path


def write_diffusers(folder: Path, unet, vae, text: dict[str, tuple[dict, dict]], model_index: dict,
                    scheduler: dict | None = None) -> Path:
    """A diffusers pipeline folder: unet/, vae/, each ``text[sub] = (HF state dict, HF config)``, model_index.json
    and, when given, scheduler/scheduler_config.json."""
    names = unet_diffusers_names(unet.config)
    parts = {"unet": ({names[k]: v for k, v in unet.state_dict().items()}, unet_config_to_diffusers(unet.config),
                      "diffusion_pytorch_model.safetensors"),
             "vae": vae_diffusers_part(vae)}
    return write_diffusers_parts(folder, parts, text, model_index, scheduler)


def vae_diffusers_part(vae) -> tuple[dict, dict, str]:
    """(state dict, config, file name) of a VAE as a diffusers vae/ folder holds it."""
    names = vae_diffusers_names(vae.config)
    sd = {names[k]: (v[:, :, 0, 0] if ".mid.attn_1." in k and v.ndim == 4 else v) for k, v in vae.state_dict().items()}
    return sd, vae_config_to_diffusers(vae.config), "diffusion_pytorch_model.safetensors"


def write_diffusers_parts(folder: Path, parts: dict[str, tuple[dict, dict, str]], text: dict[str, tuple[dict, dict]],
                          model_index: dict, scheduler: dict | None = None) -> Path:
    """A diffusers pipeline folder from its parts ``{sub: (state dict, config, file name)}`` and text encoders
    ``{sub: (HF state dict, HF config)}``."""
    parts = {**parts, **{sub: (sd, conf, "model.safetensors") for sub, (sd, conf) in text.items()}}
    for sub, (sd, conf, filename) in parts.items():
        (folder / sub).mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in sd.items()}, str(folder / sub / filename))
        (folder / sub / "config.json").write_text(json.dumps(conf, indent=2, default=str))
    (folder / "model_index.json").write_text(json.dumps(model_index, indent=2))
    if scheduler is not None:
        (folder / "scheduler").mkdir(exist_ok=True)
        (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler, indent=2))
    return folder


def make_demo_models(out_dir, dtype: torch.dtype = torch.float32) -> dict[str, Path]:
    """Every family's demo checkpoints in ``out_dir`` ({kind or kind_diffusers: path}); the same seed gives the
    same files."""
    return _each_family(out_dir, lambda family, out: family.write_demo(out, dtype))


def make_demo_diffusion_models(out_dir, dtype: torch.dtype = torch.float32) -> dict[str, Path]:
    """Every family's demo diffusion models alone in ``out_dir`` (<models>/diffusion_models)."""
    return _each_family(out_dir, lambda family, out: family.write_demo_diffusion_models(out, dtype))


def make_demo_vaes(out_dir, dtype: torch.dtype = torch.float32) -> dict[str, Path]:
    """Every family's demo VAEs alone in ``out_dir`` (<models>/vae)."""
    return _each_family(out_dir, lambda family, out: family.write_demo_vaes(out, dtype))


def make_demo_text_encoders(out_dir, dtype: torch.dtype = torch.float32) -> dict[str, Path]:
    """Every family's standalone demo text encoders in ``out_dir`` (<models>/text_encoders)."""
    return _each_family(out_dir, lambda family, out: family.write_demo_text_encoders(out, dtype))


def _each_family(out_dir, write) -> dict[str, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for family in load_builtin_families().values():
        paths.update(write(family, out))
    return paths


def save_lora(path: Path, shapes: dict[str, tuple], alpha: bool, generator: torch.Generator, what: str) -> Path:
    """A random LoRA file: for each module name its down [r, in(, kh, kw)] and up [out, r(, 1, 1)] weights of rank
    ``LORA_RANK`` (kohya-ss's ``lora_down``/``lora_up`` with ``alpha`` when ``alpha``, else diffusers/PEFT's
    ``lora_A``/``lora_B``), sized to change the weights visibly."""
    state = {}
    for name, shape in shapes.items():
        kernel = (1, 1) if len(shape) == 4 else ()
        down = torch.randn(LORA_RANK, *shape[1:], generator=generator) / math.prod(shape[1:]) ** 0.5
        up = torch.randn(shape[0], LORA_RANK, *kernel, generator=generator) * 0.5 / LORA_RANK ** 0.5
        if alpha:
            state.update({f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up,
                          f"{name}.alpha": torch.tensor(LORA_RANK / 2)})
        else:
            state.update({f"{name}.lora_A.weight": down, f"{name}.lora_B.weight": up})
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_single_file(path, state, torch.float16, what, "loras")


def meta_tower(kind: str, width: int) -> nn.Module:
    """A tiny demo text tower's structure on the meta device: "clip_l" (transformers) or "open_clip" (with its
    projection), as the demo checkpoints hold them."""
    from .sdxl.text import TextTowerConfig, build_clip_l, build_open_clip
    cfg = TextTowerConfig(width=width, layers=TEXT_LAYERS, heads=TEXT_HEADS, mlp_width=4 * width, vocab=VOCAB,
                          proj_dim=width if kind == "open_clip" else 0)
    with torch.device("meta"):
        return build_clip_l(cfg) if kind == "clip_l" else build_open_clip(cfg)


def make_demo_loras(folder) -> dict[str, Path]:
    """Every family's demo LoRAs in ``folder`` ({name: path})."""
    return _each_family(folder, lambda family, out: family.write_demo_loras(out))
