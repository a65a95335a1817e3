"""SD 2.x (2.0, 2.1; 768-v and 512-base): SD 1.x's UNet with 64-channel heads, linear projections and a 1024-wide
context from OpenCLIP ViT-H/14, and v-prediction for the 768 models.

- Detection: a UNet without a vector input and an open_clip text tower at ``cond_stage_model.model``
  (v2-inference-v.yaml's layout, ``keys/v2-1_768-ema-pruned.txt``); diffusers folders with a single text_encoder/
  that is OpenCLIP-H as transformers stores it (gelu). A UNet alone (UNETLoader): no vector input and linear
  projections.
- Configs: ``SD21_UNET`` and ``OPENCLIP_H`` (24 blocks, 1024 wide); the VAE and latent format are SD 1.x's.
- Text: the penultimate block's output through ln_final (LatentDiffusion's FrozenOpenCLIPEmbedder, layer
  "penultimate"), prompts padded with 0 (open_clip's rule), not with the end token as CLIP-L is. diffusers stores
  the tower as a CLIPTextModel cut after its 23rd block, whose last hidden state is that same output.
- Prediction: v for the 768 models, ε for 512-base; the files look alike. A single file says v through the SAI
  model spec (``modelspec.prediction_type``), through its sgm/ldm config beside it (``<name>.yaml``,
  ``parameterization: "v"``), or, failing both, as ComfyUI probes it: v-trained weights have LayerNorm biases in the
  last output block's first transformer block with a standard deviation above 0.09. A diffusers folder says it in
  scheduler/scheduler_config.json. ModelSamplingDiscrete overrides any of these.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .. import demo
from ..sampling.schedules import DiscreteEps, DiscreteV
from ..sdxl.configs import UNetConfig
from ..sdxl.model import UNetDenoiser
from ..sdxl.text import (ClipTextEncoder, TextTowerConfig, hf_to_open_clip, load_open_clip, open_clip_hidden,
                         open_clip_state_shapes, tower_state)
from ..sdxl.tokenizer import PAD_BIGG
from ..sdxl.unet import UNetModel
from ..sdxl.vae import AutoencoderKL
from ..weights import read_metadata, read_tensors
from . import register
from .ldm import UNET_PREFIX, LDMFamily, is_sd_unet, ldm_extras, require_plain_unet
from .sd1 import SD_LATENT, SD_VAE, TINY_SD_VAE, TINY_TEXT_WIDTH, pipeline_index, single_text_encoder_act

SD21_UNET = UNetConfig(320, (1, 2, 4, 4), (1, 1, 1, 0), 1, context_dim=1024, adm_in_channels=0)
OPENCLIP_H = TextTowerConfig(width=1024, layers=24, heads=16, mlp_width=4096, proj_dim=1024)
# Tiny presets: SD 2.1's structure with 64-channel heads (what single files assume), so 64 base channels.
TINY_SD2_UNET = UNetConfig(64, (1, 2, 2), (1, 1, 0), 1, context_dim=TINY_TEXT_WIDTH, adm_in_channels=0)
TEXT_PREFIX = "cond_stage_model.model."
V_PROBE_STD = 0.09  # ComfyUI's threshold
SCHEDULER = {"_class_name": "DDIMScheduler", "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
             "beta_schedule": "scaled_linear", "prediction_type": "v_prediction", "clip_sample": False,
             "set_alpha_to_one": False, "steps_offset": 1}


class SD2TextEncoder(ClipTextEncoder):
    """SD 2.x's CLIP value: OpenCLIP-H stopping at ``layer`` of the full 24-block tower (−2 by default), through
    ln_final. ``missing`` counts the top blocks the loaded tower lacks (1 in the diffusers layout)."""
    kind = "sd2"

    def __init__(self, tower: torch.nn.Module, missing: int = 0, tokenizer=None, layer: int = -2):
        super().__init__(tokenizer, layer)
        self.tower, self.missing = tower, missing

    def towers(self):
        return [self.tower]

    def with_layer(self, layer: int) -> "SD2TextEncoder":
        self._check_layer(layer, len(self.tower.transformer.resblocks) + self.missing)
        if layer + self.missing > -1:
            raise ValueError(f"layer {layer} needs the text tower's last block, which the diffusers layout leaves out "
                             "(it stores the tower cut at the penultimate layer); load the single file for it")
        return SD2TextEncoder(self.tower, self.missing, self._tokenizer, layer)

    def with_towers(self, towers):
        return SD2TextEncoder(towers[0], self.missing, self._tokenizer, self.layer)

    def _hidden(self, ids: torch.Tensor):
        blocks = len(self.tower.transformer.resblocks) + self.missing + 1 + self.layer
        return self.tower.ln_final(open_clip_hidden(self.tower, ids, blocks)), None

    @torch.no_grad()
    def conditioning(self, text: str) -> list:
        windows = self.tokenizer.tokenize_weighted(text, PAD_BIGG)  # open_clip pads with 0, ViT-H as bigG
        hidden, _ = self._weighted("h", windows, self._hidden, PAD_BIGG)
        return [[hidden.cpu(), {}]]


def is_v_prediction(path: Path, unet: dict, rename) -> bool:
    """Whether a single SD 2.x file is v-prediction (the module docstring says how it is told); ``unet``: its UNet's
    shapes in the original layout without prefix, which ``rename`` gives the file's names (whole checkpoints,
    UNet-only files in either layout)."""
    declared = read_metadata(path).get("modelspec.prediction_type")
    if declared:
        return declared.lower().startswith("v")
    config = path.with_suffix(".yaml")
    if config.is_file():
        import yaml

        params = ((yaml.safe_load(config.read_text()) or {}).get("model") or {}).get("params") or {}
        return params.get("parameterization", "eps") == "v"
    last = max(int(k.split(".")[1]) for k in unet if k.startswith("output_blocks."))
    key = f"output_blocks.{last}.1.transformer_blocks.0.norm1.bias"
    if key not in unet:  # no attention in the last output block: nothing to probe
        return False
    bias = read_tensors(path, lambda k: key if rename(k) == key else None, torch.float32, "cpu")[key]
    return bool(bias.std(unbiased=False) > V_PROBE_STD)


class SD2(LDMFamily):
    name, title = "sd2", "SD 2.x"
    latent_format = SD_LATENT
    file_names = r"v2-[01]|sd[-_ ]?(v?2[-_.]?[01]|2[01])(?![0-9])|768-v|512-base"  # v2-1_768-ema-pruned, sd21_…
    text_prefixes = {TEXT_PREFIX: "clip_h."}
    text_folders = ("text_encoder",)
    lora_towers = (("lora_te_", "text_encoder.", TEXT_PREFIX),)
    extra_tensors = frozenset(ldm_extras())

    def claims(self, shapes):
        if UNET_PREFIX + "label_emb.0.0.weight" in shapes or not any(k.startswith(TEXT_PREFIX) for k in shapes):
            return False
        require_plain_unet(shapes, self.title)
        return True

    def claims_folder(self, folder):
        return single_text_encoder_act(folder) == "gelu"

    def claims_unet(self, unet):  # SD 1.x's UNet with linear projections (and a 1024-wide context)
        return is_sd_unet(unet, self.title, linear=True)

    def sampling_for(self, path, unet, rename):
        return DiscreteV() if is_v_prediction(path, unet, rename) else DiscreteEps()

    def sampling_for_folder(self, folder):
        config = folder / "scheduler" / "scheduler_config.json"
        v = config.is_file() and json.loads(config.read_text()).get("prediction_type") == "v_prediction"
        return DiscreteV() if v else DiscreteEps()

    def text_encoders(self, state, layout, dtype, device):
        if layout == "original":
            return SD2TextEncoder(load_open_clip(tower_state(state, "clip_h.", "OpenCLIP-H"), dtype, device,
                                                 "OpenCLIP-H"))
        hf = hf_to_open_clip(tower_state(state, "text_encoder.", "OpenCLIP-H"))
        return SD2TextEncoder(load_open_clip(hf, dtype, device, "OpenCLIP-H"), missing=1)

    def model(self, checkpoint, name):
        return UNetDenoiser(checkpoint.unet, self.name, checkpoint.sampling, SD_LATENT, name)

    def full_size_shapes(self):
        return self.full_size_layout(SD21_UNET, SD_VAE, open_clip_state_shapes(OPENCLIP_H, TEXT_PREFIX))

    def write_demo(self, folder, dtype):
        """``demo_sd2_768v.safetensors`` (v-prediction, as the probe tells) and ``demo_sd2_768v_diffusers/``."""
        g = torch.Generator().manual_seed(demo.SEED + 3)
        unet = demo.randomize(UNetModel(TINY_SD2_UNET), g)
        vae = demo.randomize(AutoencoderKL(TINY_SD_VAE), g)
        tower = demo.tiny_open_clip_state(TINY_TEXT_WIDTH, g)
        path = demo.save_single_file(folder / "demo_sd2_768v.safetensors",
                                     self.single_file_state(unet, vae, {TEXT_PREFIX: tower}), dtype,
                                     "SD 2.x checkpoints (v2-1_768-ema-pruned.safetensors)")
        # diffusers' SD 2.x text encoder: a CLIPTextModel without the projection, cut after the penultimate block
        last = f"text_model.encoder.layers.{demo.TEXT_LAYERS - 1}."
        hf = {k: v for k, v in demo.open_clip_to_hf(tower).items() if not k.startswith((last, "text_projection"))}
        config = demo.hf_text_config(TINY_TEXT_WIDTH, hidden_act="gelu", num_hidden_layers=demo.TEXT_LAYERS - 1)
        folder = demo.write_diffusers(folder / "demo_sd2_768v_diffusers", unet, vae, {"text_encoder": (hf, config)},
                                      pipeline_index(SCHEDULER), SCHEDULER)
        return {"sd2": path, "sd2_diffusers": folder}


register(SD2())
