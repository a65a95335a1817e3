"""diffusers as a test-only oracle for the image models: tiny diffusers configs that mirror the tiny presets
(sdxl.md §13.1, §13.3), diffusers' own original→diffusers converters, re-randomisation and error measures."""
from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file

# Tiny diffusers UNets matching nodes.sdxl.configs.TINY_BASE_UNET / TINY_REFINER_UNET; attention_head_dim is
# the head count per level (64 channels per head). HEADS16 has 16-channel heads, which only a diffusers
# folder (config.json) can state.
UNET_KWARGS = {
    "base": dict(block_out_channels=(32, 64, 128), layers_per_block=2,
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                 transformer_layers_per_block=(1, 1, 2), attention_head_dim=(1, 1, 2), cross_attention_dim=64,
                 projection_class_embeddings_input_dim=32 + 6 * 256),
    "refiner": dict(block_out_channels=(32, 64, 128, 128), layers_per_block=2,
                    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                    transformer_layers_per_block=1, attention_head_dim=(1, 1, 2, 2), cross_attention_dim=32,
                    projection_class_embeddings_input_dim=32 + 5 * 256),
    "heads16": dict(block_out_channels=(32, 64), layers_per_block=2,
                    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), transformer_layers_per_block=(1, 2),
                    attention_head_dim=(2, 4), cross_attention_dim=64, projection_class_embeddings_input_dim=32 + 6 * 256),
}
COMMON = dict(use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
              sample_size=32)
VAE_KWARGS = dict(block_out_channels=(32, 64, 64, 64), layers_per_block=2, latent_channels=4,
                  down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                  scaling_factor=0.13025)


@functools.cache
def demo_models() -> dict[str, Path]:
    """The demo checkpoints, written once per test session (read-only use) and removed when it ends (~370 MB)."""
    from nodes.demo import make_demo_models
    folder = tempfile.mkdtemp(prefix="latentgraph-demo-")
    atexit.register(shutil.rmtree, folder, True)
    return make_demo_models(folder)


def diffusers_unet(name: str):
    from diffusers import UNet2DConditionModel
    return UNet2DConditionModel(**{**COMMON, **UNET_KWARGS[name]}).eval()


def diffusers_vae():
    from diffusers import AutoencoderKL
    return AutoencoderKL(**VAE_KWARGS).eval()


def rerandomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Redraw everything (zero-initialised outputs, unit norms) so no part of the net hides (sdxl.md §13.2)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5)
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return module


def load_single_file_into_diffusers(path, unet=None, vae=None):
    """Fill diffusers models from an original-layout single file with diffusers' own converters (strict)."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint
    sd = {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(path)).items()}
    if unet is not None:
        unet.load_state_dict(convert_ldm_unet_checkpoint(sd, dict(unet.config)), strict=True)
    if vae is not None:
        vae.load_state_dict(convert_ldm_vae_checkpoint(sd, dict(vae.config)), strict=True)


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """max |ours − ref| / max |ref|."""
    return ((ours.float() - ref.float()).abs().max() / ref.float().abs().max()).item()
