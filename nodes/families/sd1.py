"""SD 1.x (1.4, 1.5 and their fine-tunes): the 860M UNet with CLIP ViT-L/14 text, made for 512² images.

- Detection: a UNet without a vector input and CLIP-L at ``cond_stage_model.transformer`` (v1-inference.yaml's
  layout, ``keys/v1-5-pruned-emaonly.txt``); diffusers folders with a single text_encoder/ that is CLIP-L
  (quick_gelu). A UNet alone (UNETLoader): no vector input and 1×1-conv projections (SD 2.x's are linear).
- Configs: ``SD15_UNET`` (v1-inference.yaml: 320 channels × 1, 2, 4, 4, attention at the first three levels with 8
  heads and 1×1-conv projections, a 768-wide context); the VAE is the KL-f8 one SDXL also uses; tiny presets for
  the demo. Single files also carry the LatentDiffusion schedule buffers and EMA scalars (``ldm_extras``).
- Latent format: 4 channels × 0.18215 (SD 2.x shares it); preview factors fitted by Keturn for SD 1.4 (Hugging Face
  forum, "Decoding latents to RGB without upscaling").
- Text: CLIP-L's last layer through its final LayerNorm, prompts padded with the end token (CompVis, diffusers,
  ComfyUI); CLIPSetLastLayer −2 ("clip skip") takes the layer before, through the same LayerNorm. No other
  conditioning.
- Prediction: ε on the scaled-linear DDPM schedule.
"""
from __future__ import annotations

import dataclasses

import torch

from .. import demo
from ..latent_format import LatentFormat
from ..sdxl.configs import SDXL_VAE, TINY_VAE, UNetConfig
from ..sdxl.model import UNetDenoiser
from ..sdxl.text import CLIP_L, ClipTextEncoder, clip_l_state_shapes, clip_text_model, load_clip_l, tower_state
from ..sdxl.tokenizer import PAD_CLIP_L
from ..sdxl.unet import UNetModel
from ..sdxl.vae import AutoencoderKL
from ..weights import read_config
from . import register
from .ldm import UNET_PREFIX, LDMFamily, is_sd_unet, ldm_extras, require_plain_unet

SD_LATENT = LatentFormat(channels=4, scale_factor=0.18215,
                         rgb_factors=((0.298, 0.207, 0.208), (0.187, 0.286, 0.173),
                                      (-0.158, 0.189, 0.264), (-0.184, -0.271, -0.473)))
SD15_UNET = UNetConfig(320, (1, 2, 4, 4), (1, 1, 1, 0), 1, context_dim=768, adm_in_channels=0, num_heads=8,
                       use_linear_in_transformer=False)
SD_VAE = dataclasses.replace(SDXL_VAE, scaling_factor=SD_LATENT.scale_factor)
# Tiny presets: SD 1.5's structure (attention at every level but the deepest, 8 heads, conv projections).
TINY_TEXT_WIDTH = 32
TINY_SD1_UNET = UNetConfig(32, (1, 2, 2), (1, 1, 0), 1, context_dim=TINY_TEXT_WIDTH, adm_in_channels=0, num_heads=8,
                           use_linear_in_transformer=False)
TINY_SD_VAE = dataclasses.replace(TINY_VAE, scaling_factor=SD_LATENT.scale_factor)
CLIP_PREFIX = "cond_stage_model.transformer."
SCHEDULER = {"_class_name": "PNDMScheduler", "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
             "beta_schedule": "scaled_linear", "prediction_type": "epsilon", "set_alpha_to_one": False,
             "skip_prk_steps": True, "steps_offset": 1}


def pipeline_index(scheduler: dict) -> dict:
    """model_index.json of an SD 1.x / 2.x diffusers folder."""
    return {"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"], "text_encoder": ["transformers", "CLIPTextModel"],
            "scheduler": ["diffusers", scheduler["_class_name"]]}


def single_text_encoder_act(folder) -> str | None:
    """The activation of a pipeline folder's only text encoder (CLIP-L: quick_gelu; SD 2.x's OpenCLIP-H: gelu),
    None for a folder with another layout."""
    if not (folder / "unet").is_dir() or not (folder / "text_encoder").is_dir() or (folder / "text_encoder_2").exists():
        return None
    return read_config(folder / "text_encoder").get("hidden_act")


class SD1TextEncoder(ClipTextEncoder):
    """SD 1.x's CLIP value: CLIP-L stopping at ``layer`` (−1, the last), always through the final LayerNorm."""
    kind = "sd1"

    def __init__(self, clip_l: torch.nn.Module, tokenizer=None, layer: int = -1):
        super().__init__(tokenizer, layer)
        self.clip_l = clip_l

    def towers(self):
        return [self.clip_l]

    def with_layer(self, layer: int) -> "SD1TextEncoder":
        self._check_layer(layer, self.clip_l.config.num_hidden_layers)
        return SD1TextEncoder(self.clip_l, self._tokenizer, layer)

    def with_towers(self, towers):
        return SD1TextEncoder(towers[0], self._tokenizer, self.layer)

    def _hidden(self, ids: torch.Tensor):
        states = self.clip_l(input_ids=ids, output_hidden_states=True).hidden_states[self.layer]
        return clip_text_model(self.clip_l).final_layer_norm(states), None

    @torch.no_grad()
    def conditioning(self, text: str) -> list:
        windows = self.tokenizer.tokenize_weighted(text, PAD_CLIP_L)
        hidden, _ = self._weighted("l", windows, self._hidden, PAD_CLIP_L)
        return [[hidden.cpu(), {}]]


class SD1(LDMFamily):
    name, title = "sd1", "SD 1.x"
    latent_format = SD_LATENT
    file_names = r"v1-[45]|sd[-_ ]?(v?1[-_.]?[45]|15)(?![0-9])"  # v1-5-pruned-emaonly, sd-v1-4, sd15_…
    # vae-ft-mse-840000-ema-pruned and its kin (SD 2.x shares the latent space)
    vae_file_names = r"vae-ft-(mse|ema)|kl-f8|(^|[^a-z])sd[-_ ]?v?[12]([^0-9]|$)|sd(15|21)|v[12]-[0-9]"
    text_prefixes = {CLIP_PREFIX: "clip_l."}
    text_folders = ("text_encoder",)
    lora_towers = (("lora_te_", "text_encoder.", CLIP_PREFIX),)
    num_heads = 8
    extra_tensors = frozenset(ldm_extras())

    def claims(self, shapes):
        if UNET_PREFIX + "label_emb.0.0.weight" in shapes or not any(k.startswith(CLIP_PREFIX) for k in shapes):
            return False
        require_plain_unet(shapes, self.title)
        return True

    def claims_folder(self, folder):
        return single_text_encoder_act(folder) == "quick_gelu"

    def claims_unet(self, unet):
        return is_sd_unet(unet, self.title, linear=False)

    def text_encoders(self, state, layout, dtype, device):
        prefix = "clip_l." if layout == "original" else "text_encoder."
        return SD1TextEncoder(load_clip_l(tower_state(state, prefix, "CLIP-L"), dtype, device))

    def model(self, checkpoint, name):
        return UNetDenoiser(checkpoint.unet, self.name, checkpoint.sampling, SD_LATENT, name)

    def full_size_shapes(self):
        return self.full_size_layout(SD15_UNET, SD_VAE, clip_l_state_shapes(CLIP_L, CLIP_PREFIX))

    def write_demo(self, folder, dtype):
        """``demo_sd15.safetensors`` and its diffusers-layout copy ``demo_sd15_diffusers/``."""
        g = torch.Generator().manual_seed(demo.SEED + 2)
        unet = demo.randomize(UNetModel(TINY_SD1_UNET), g)
        vae = demo.randomize(AutoencoderKL(TINY_SD_VAE), g)
        clip_l = demo.tiny_clip_l_state(TINY_TEXT_WIDTH, g)
        path = demo.save_single_file(folder / "demo_sd15.safetensors",
                                     self.single_file_state(unet, vae, {CLIP_PREFIX: clip_l}), dtype,
                                     "SD 1.5 checkpoints (v1-5-pruned-emaonly.safetensors)")
        text = {"text_encoder": ({k: v for k, v in clip_l.items() if not k.endswith("position_ids")},
                                 demo.hf_text_config(TINY_TEXT_WIDTH))}
        folder = demo.write_diffusers(folder / "demo_sd15_diffusers", unet, vae, text, pipeline_index(SCHEDULER),
                                      SCHEDULER)
        return {"sd1": path, "sd1_diffusers": folder}

    def write_demo_loras(self, folder):
        """``demo_sd15_lora``: diffusers/PEFT names (``unet.…lora_A``, ``text_encoder.…``)."""
        return {"sd15_lora": self.demo_lora(folder / "demo_sd15_lora.safetensors", TINY_SD1_UNET,
                                            [demo.meta_tower("clip_l", TINY_TEXT_WIDTH)], "peft", demo.SEED + 12,
                                            "SD 1.5 LoRAs")}


register(SD1())
