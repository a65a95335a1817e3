"""Tiny random-weight SDXL base and refiner checkpoints in the real single-file layout (plus a diffusers-layout
copy of the base). They exercise every loading path and the whole pipeline in seconds; their images are noise."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from .checkpoints import (BIGG_PREFIX, CLIP_L_PREFIX, UNET_PREFIX, VAE_PREFIX, unet_diffusers_names,
                          vae_diffusers_names)
from .sdxl.configs import (TINY_BASE_UNET, TINY_BIGG_WIDTH, TINY_CLIP_L_WIDTH, TINY_REFINER_UNET, TINY_VAE,
                           UNetConfig, VAEConfig)
from .sdxl.unet import UNetModel
from .sdxl.vae import AutoencoderKL

DEMO_NOTICE = ("Demo model: tiny random weights that produce noise, not pictures. Put real SDXL checkpoints "
               "(sd_xl_base_1.0.safetensors, sd_xl_refiner_1.0.safetensors) in <models>/checkpoints.")
SEED = 20240101
TEXT_LAYERS, TEXT_HEADS = 3, 4  # tiny towers; H2b's loader reads width 32 as 4 heads
VOCAB, CONTEXT_LENGTH = 49408, 77  # the real tokenizer's ids must stay valid


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
    as the middle (true of SDXL)."""
    attn = [d > 0 for d in cfg.transformer_depth]
    return {
        "_class_name": "UNet2DConditionModel", "sample_size": 128,
        "in_channels": cfg.in_channels, "out_channels": cfg.out_channels, "layers_per_block": cfg.num_res_blocks,
        "block_out_channels": cfg.channels,
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn],
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)],
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "transformer_layers_per_block": [d or 1 for d in cfg.transformer_depth[:-1]]
        + [cfg.transformer_depth_middle],
        "attention_head_dim": [c // cfg.num_head_channels for c in cfg.channels],
        "cross_attention_dim": cfg.context_dim, "use_linear_projection": True,
        "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
        "projection_class_embeddings_input_dim": cfg.adm_in_channels,
        "norm_num_groups": 32, "norm_eps": 1e-5, "flip_sin_to_cos": True, "freq_shift": 0, "act_fn": "silu",
    }


def vae_config_to_diffusers(cfg: VAEConfig) -> dict:
    n = len(cfg.ch_mult)
    return {"_class_name": "AutoencoderKL", "in_channels": cfg.in_channels, "out_channels": cfg.out_channels,
            "block_out_channels": [cfg.ch * m for m in cfg.ch_mult], "layers_per_block": cfg.num_res_blocks,
            "down_block_types": ["DownEncoderBlock2D"] * n, "up_block_types": ["UpDecoderBlock2D"] * n,
            "latent_channels": cfg.z_channels, "norm_num_groups": 32, "act_fn": "silu", "sample_size": 1024,
            "scaling_factor": cfg.scaling_factor, "force_upcast": True}


# ---- tiny text towers, in the checkpoint layouts ---------------------------------------------------------

def _clip_l_config(width: int):
    from transformers import CLIPTextConfig
    return CLIPTextConfig(hidden_size=width, intermediate_size=4 * width, num_attention_heads=TEXT_HEADS,
                          num_hidden_layers=TEXT_LAYERS, vocab_size=VOCAB, max_position_embeddings=CONTEXT_LENGTH,
                          hidden_act="quick_gelu", projection_dim=width)


def tiny_clip_l_state(generator: torch.Generator) -> dict[str, torch.Tensor]:
    """CLIP-L-shaped tower as the single file stores it: ``text_model.*`` plus the int64 ``position_ids``."""
    from transformers import CLIPTextModel
    model = randomize(CLIPTextModel(_clip_l_config(TINY_CLIP_L_WIDTH)), generator)
    sd = {k if k.startswith("text_model.") else "text_model." + k: v for k, v in model.state_dict().items()}
    sd["text_model.embeddings.position_ids"] = torch.arange(CONTEXT_LENGTH)[None]
    return sd


def tiny_bigg_state(generator: torch.Generator) -> dict[str, torch.Tensor]:
    """bigG-shaped OpenCLIP text tower (visual tower removed), open_clip key layout incl. ``logit_scale``."""
    import open_clip
    model = open_clip.model.CLIP(
        embed_dim=TINY_BIGG_WIDTH,
        vision_cfg=dict(image_size=32, layers=1, width=32, patch_size=16, head_width=16),
        text_cfg=dict(context_length=CONTEXT_LENGTH, vocab_size=VOCAB, width=TINY_BIGG_WIDTH, heads=TEXT_HEADS,
                      layers=TEXT_LAYERS))
    del model.visual
    randomize(model, generator)
    with torch.no_grad():
        model.logit_scale.fill_(4.6052)
    return dict(model.state_dict())


def bigg_to_hf(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """open_clip text tower → HF ``CLIPTextModelWithProjection`` keys (sdxl.md §11.1)."""
    out = {"text_model.embeddings.token_embedding.weight": sd["token_embedding.weight"],
           "text_model.embeddings.position_embedding.weight": sd["positional_embedding"],
           "text_model.final_layer_norm.weight": sd["ln_final.weight"],
           "text_model.final_layer_norm.bias": sd["ln_final.bias"],
           "text_projection.weight": sd["text_projection"].T.contiguous()}
    names = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
             "attn.out_proj": "self_attn.out_proj"}
    for k, v in sd.items():
        if not k.startswith("transformer.resblocks."):
            continue
        n, rest = k[len("transformer.resblocks."):].split(".", 1)
        layer = f"text_model.encoder.layers.{n}."
        if rest.startswith("attn.in_proj_"):
            suffix = "weight" if rest.endswith("weight") else "bias"
            for proj, part in zip("qkv", v.chunk(3, dim=0)):
                out[f"{layer}self_attn.{proj}_proj.{suffix}"] = part.contiguous()
            continue
        module, suffix = rest.rsplit(".", 1)
        out[f"{layer}{names[module]}.{suffix}"] = v
    return out


def _bigg_hf_config(width: int) -> dict:
    conf = _clip_l_config(width)
    conf.hidden_act = "gelu"
    return {**conf.to_dict(), "architectures": ["CLIPTextModelWithProjection"]}


# ---- writing ----------------------------------------------------------------------------------------------

def _single_file(kind: str, unet: UNetModel, vae: AutoencoderKL, text: dict[str, dict], dtype) -> dict:
    sd = {UNET_PREFIX + k: v for k, v in unet.state_dict().items()}
    sd.update({VAE_PREFIX + k: v for k, v in vae.state_dict().items()})
    if kind == "sdxl_base":
        sd.update({CLIP_L_PREFIX + k: v for k, v in text["clip_l"].items()})
    sd.update({BIGG_PREFIX[kind] + k: v for k, v in text["clip_g"].items()})
    return {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in sd.items()}


def _write_diffusers(folder: Path, unet: UNetModel, vae: AutoencoderKL, text: dict[str, dict]) -> None:
    """The base as a diffusers pipeline folder (unet/, vae/, text_encoder/, text_encoder_2/)."""
    parts = {}
    names = unet_diffusers_names(unet.config)
    parts["unet"] = ({names[k]: v for k, v in unet.state_dict().items()}, unet_config_to_diffusers(unet.config),
                     "diffusion_pytorch_model.safetensors")
    names = vae_diffusers_names(vae.config)
    vae_sd = {names[k]: (v[:, :, 0, 0] if ".mid.attn_1." in k and v.ndim == 4 else v) for k, v in vae.state_dict().items()}
    parts["vae"] = (vae_sd, vae_config_to_diffusers(vae.config), "diffusion_pytorch_model.safetensors")
    clip_l = {k: v for k, v in text["clip_l"].items() if not k.endswith("position_ids")}
    parts["text_encoder"] = (clip_l, {**_clip_l_config(TINY_CLIP_L_WIDTH).to_dict(),
                                      "architectures": ["CLIPTextModel"]}, "model.safetensors")
    parts["text_encoder_2"] = (bigg_to_hf(text["clip_g"]), _bigg_hf_config(TINY_BIGG_WIDTH), "model.safetensors")
    for sub, (sd, conf, filename) in parts.items():
        (folder / sub).mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in sd.items()}, str(folder / sub / filename))
        (folder / sub / "config.json").write_text(json.dumps(conf, indent=2, default=str))
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionXLPipeline", "force_zeros_for_empty_prompt": True,
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"]}, indent=2))


def build_demo_parts(kind: str, seed: int = SEED):
    """Seeded tiny (UNet, VAE, text state dicts) for ``kind``."""
    g = torch.Generator().manual_seed(seed + (0 if kind == "sdxl_base" else 1))
    unet = randomize(UNetModel(TINY_BASE_UNET if kind == "sdxl_base" else TINY_REFINER_UNET), g)
    vae = randomize(AutoencoderKL(TINY_VAE), g)
    text = {"clip_g": tiny_bigg_state(g)}
    if kind == "sdxl_base":
        text["clip_l"] = tiny_clip_l_state(g)
    return unet, vae, text


def make_demo_models(out_dir, dtype: torch.dtype = torch.float32) -> dict[str, Path]:
    """Write ``demo_sdxl_base.safetensors``, ``demo_sdxl_refiner.safetensors`` and ``demo_sdxl_base_diffusers/``
    into ``out_dir``; the same seed gives the same files."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for kind in ("sdxl_base", "sdxl_refiner"):
        unet, vae, text = build_demo_parts(kind)
        path = out / f"demo_{kind}.safetensors"
        save_file(_single_file(kind, unet, vae, text, dtype), str(path),
                  metadata={"latentgraph_demo": DEMO_NOTICE})  # one entry: safetensors orders metadata at random
        paths[kind] = path
        if kind == "sdxl_base":
            paths["sdxl_base_diffusers"] = out / "demo_sdxl_base_diffusers"
            _write_diffusers(paths["sdxl_base_diffusers"], unet, vae, text)
    return paths
