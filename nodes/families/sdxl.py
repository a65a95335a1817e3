"""SDXL base and refiner (and what shares the base's layout: SDXL Turbo, Lightning, most fine-tunes).

- Detection: the UNet has SDXL's vector input (``label_emb``); the base carries CLIP-L and OpenCLIP bigG
  (``conditioner.embedders.0.transformer`` / ``.1.model``), the refiner bigG alone (``conditioner.embedders.0.model``);
  the vector input must be bigG's projection plus 6 (base) or 5 (refiner) 256-d Fourier features. Diffusers folders:
  text_encoder/ + text_encoder_2/ (base) or text_encoder_2/ (refiner), checked the same way. A UNet alone
  (UNETLoader): the widths of its context and vector input tell (``sdxl_unet_kind``).
- Configs: nodes.sdxl.configs (full size: paper Table 1; tiny: the demo). Modules: nodes.sdxl.
- Latent format: 4 channels × 0.13025. Text: CLIP-L and bigG penultimate states joined on channels, bigG's pooled
  vector (nodes.sdxl.text). Extra conditioning: the vector ``y`` of sizes and aesthetic score (nodes.sdxl.model).
- Prediction: ε on the scaled-linear DDPM schedule.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .. import demo
from ..sdxl.conditioning import N_SCALARS
from ..sdxl.configs import (FOURIER_DIM, SDXL_BASE_UNET, SDXL_LATENT, SDXL_REFINER_UNET, SDXL_VAE, TINY_BASE_UNET,
                            TINY_BIGG_WIDTH, TINY_CLIP_L_WIDTH, TINY_REFINER_UNET, TINY_VAE)
from ..sdxl.model import SDXLModel
from ..sdxl.text import SINGLE_FILE_PREFIXES, build_text_encoders, full_size_state_shapes
from ..sdxl.unet import UNetModel
from ..sdxl.vae import AutoencoderKL
from ..weights import UnsupportedCheckpoint, read_config
from . import register
from .ldm import UNET_PREFIX, LDMFamily, require_plain_unet

CLIP_L_PREFIX = SINGLE_FILE_PREFIXES["sdxl_base"]["clip_l"]
BIGG_PREFIX = {kind: prefixes["clip_g"] for kind, prefixes in SINGLE_FILE_PREFIXES.items()}


def sdxl_kind(shapes: dict[str, tuple]) -> str | None:
    """"sdxl_base" / "sdxl_refiner" for a single file with SDXL's UNet, None for another UNet; an SDXL UNet whose
    text encoders or vector input do not fit either raises UnsupportedCheckpoint saying what was found."""
    label = shapes.get(UNET_PREFIX + "label_emb.0.0.weight")
    if label is None or any(k.startswith("cond_stage_model.") for k in shapes):
        return None
    require_plain_unet(shapes, "SDXL")
    has_clip_l = CLIP_L_PREFIX + "text_model.embeddings.token_embedding.weight" in shapes
    base_proj = shapes.get(BIGG_PREFIX["sdxl_base"] + "text_projection")
    refiner_proj = shapes.get(BIGG_PREFIX["sdxl_refiner"] + "text_projection")
    if has_clip_l and base_proj is not None:
        kind, pooled = "sdxl_base", base_proj[1]
    elif refiner_proj is not None and not has_clip_l:
        kind, pooled = "sdxl_refiner", refiner_proj[1]
    else:
        raise UnsupportedCheckpoint(
            f"found an SDXL-like UNet (adm {label[1]}) but not the text encoders of the SDXL base (CLIP-L at "
            f"{CLIP_L_PREFIX} + OpenCLIP bigG at {BIGG_PREFIX['sdxl_base']}) or refiner (bigG at "
            f"{BIGG_PREFIX['sdxl_refiner']}); checkpoints without text encoders are not supported")
    if label[1] != pooled + N_SCALARS[kind] * FOURIER_DIM:
        raise UnsupportedCheckpoint(f"found {kind} text encoders but a UNet vector input of {label[1]} "
                                    f"(expected {pooled} pooled + {N_SCALARS[kind]}×{FOURIER_DIM})")
    return kind


def sdxl_unet_kind(unet: dict[str, tuple]) -> str | None:
    """"sdxl_base" / "sdxl_refiner" for an SDXL UNet alone (original-layout shapes, no prefix), None for another
    UNet. Without the text encoders the widths tell: the base's context is CLIP-L ‖ bigG and its vector input bigG's
    pooled width plus 6 Fourier features, a pooled width below the context's; the refiner's context is bigG alone
    and its vector input that width plus 5."""
    label = unet.get("label_emb.0.0.weight")
    if label is None:
        return None
    require_plain_unet(unet, "SDXL", prefix="")
    context = next((v[1] for k, v in unet.items() if k.endswith("attn2.to_k.weight")), 0)
    if label[1] == context + N_SCALARS["sdxl_refiner"] * FOURIER_DIM:
        return "sdxl_refiner"
    if 0 < label[1] - N_SCALARS["sdxl_base"] * FOURIER_DIM < context:
        return "sdxl_base"
    raise UnsupportedCheckpoint(f"found an SDXL-like UNet (vector input {label[1]}, context {context}) that is neither "
                                f"the base (pooled + {N_SCALARS['sdxl_base']}×{FOURIER_DIM}, a wider context) nor "
                                f"the refiner (context + {N_SCALARS['sdxl_refiner']}×{FOURIER_DIM})")


def sdxl_folder_kind(path: Path) -> str | None:
    """Base has text_encoder/ (CLIP-L) and text_encoder_2/ (bigG), the refiner only text_encoder_2/; the UNet's
    vector input must be bigG's projection plus 6 (base) or 5 (refiner) Fourier features."""
    if not (path / "text_encoder_2").is_dir():
        return None
    kind = "sdxl_base" if (path / "text_encoder").is_dir() else "sdxl_refiner"
    pooled = read_config(path / "text_encoder_2").get("projection_dim")
    adm = read_config(path / "unet").get("projection_class_embeddings_input_dim")
    if pooled is None or adm != pooled + N_SCALARS[kind] * FOURIER_DIM:
        found = "text_encoder/ and text_encoder_2/" if kind == "sdxl_base" else "only text_encoder_2/"
        raise UnsupportedCheckpoint(f"{path}: found {found} but a UNet vector input of {adm}, which is not "
                                    f"{pooled} pooled + {N_SCALARS[kind]}×{FOURIER_DIM}; not an SDXL {kind[5:]}")
    return kind


class SDXL(LDMFamily):
    latent_format = SDXL_LATENT
    vae_file_names = ""  # a standalone VAE named for no family: SDXL's latent space, as before other families

    def __init__(self, kind: str):
        self.name = kind
        self.title = "SDXL base" if kind == "sdxl_base" else "SDXL refiner"
        # sd_xl_base_1.0, sdxl-turbo, juggernautXL_v9; refiner names say so
        self.file_names = r"refiner" if kind == "sdxl_refiner" else \
            r"^(?!.*refiner).*(sd[_-]?xl|(^|[^a-z])xl|xl([^a-z]|$))"
        self.text_prefixes = {prefix: f"{tower}." for tower, prefix in SINGLE_FILE_PREFIXES[kind].items()}
        self.text_folders = ("text_encoder", "text_encoder_2") if kind == "sdxl_base" else ("text_encoder_2",)
        self.lora_towers = ((("lora_te1_", "text_encoder.", CLIP_L_PREFIX),) if kind == "sdxl_base" else ()) + \
            (("lora_te2_", "text_encoder_2.", BIGG_PREFIX[kind]),)

    def claims(self, shapes):
        return sdxl_kind(shapes) == self.name

    def claims_folder(self, folder):
        return sdxl_folder_kind(folder) == self.name

    def claims_unet(self, unet):
        return sdxl_unet_kind(unet) == self.name

    def text_encoders(self, state, layout, dtype, device):
        return build_text_encoders(self.name, state, layout, dtype, device)

    def model(self, checkpoint, name):
        return SDXLModel(checkpoint.unet, self.name, checkpoint.sampling, name=name)

    def full_size_shapes(self):
        unet = SDXL_BASE_UNET if self.name == "sdxl_base" else SDXL_REFINER_UNET
        return self.full_size_layout(unet, SDXL_VAE, full_size_state_shapes(self.name))

    def write_demo(self, folder, dtype):
        """``demo_<kind>.safetensors``, and for the base a diffusers-layout copy ``demo_sdxl_base_diffusers/``."""
        base = self.name == "sdxl_base"
        g = torch.Generator().manual_seed(demo.SEED + (0 if base else 1))
        unet = demo.randomize(UNetModel(TINY_BASE_UNET if base else TINY_REFINER_UNET), g)
        vae = demo.randomize(AutoencoderKL(TINY_VAE), g)
        clip_g = demo.tiny_open_clip_state(TINY_BIGG_WIDTH, g)
        clip_l = demo.tiny_clip_l_state(TINY_CLIP_L_WIDTH, g) if base else {}
        state = self.single_file_state(unet, vae, {CLIP_L_PREFIX: clip_l, BIGG_PREFIX[self.name]: clip_g})
        what = "SDXL checkpoints (sd_xl_base_1.0.safetensors, sd_xl_refiner_1.0.safetensors)"
        paths = {self.name: demo.save_single_file(folder / f"demo_{self.name}.safetensors", state, dtype, what)}
        if base:
            text = {"text_encoder": ({k: v for k, v in clip_l.items() if not k.endswith("position_ids")},
                                     demo.hf_text_config(TINY_CLIP_L_WIDTH)),
                    "text_encoder_2": (demo.open_clip_to_hf(clip_g),
                                       demo.hf_text_config(TINY_BIGG_WIDTH, "CLIPTextModelWithProjection",
                                                           hidden_act="gelu"))}
            index = {"_class_name": "StableDiffusionXLPipeline", "force_zeros_for_empty_prompt": True,
                     "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
                     "text_encoder": ["transformers", "CLIPTextModel"],
                     "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"]}
            paths["sdxl_base_diffusers"] = demo.write_diffusers(folder / "demo_sdxl_base_diffusers", unet, vae, text,
                                                                index)
        return paths

    def write_demo_loras(self, folder):
        """For the base: ``demo_sdxl_lora`` (kohya-ss names on the sgm UNet, both text encoders) and
        ``demo_lcm_lora_sdxl`` (UNet only, kohya-ss names on diffusers' UNet blocks, the layout LCM-LoRA uses)."""
        if self.name != "sdxl_base":
            return {}
        towers = [demo.meta_tower("clip_l", TINY_CLIP_L_WIDTH), demo.meta_tower("open_clip", TINY_BIGG_WIDTH)]
        return {"sdxl_lora": self.demo_lora(folder / "demo_sdxl_lora.safetensors", TINY_BASE_UNET, towers,
                                            "kohya-sgm", demo.SEED + 10, "SDXL LoRAs"),
                "sdxl_lcm_lora": self.demo_lora(folder / "demo_lcm_lora_sdxl.safetensors", TINY_BASE_UNET, [],
                                                "kohya-diffusers", demo.SEED + 11, "LCM-LoRAs (lcm-lora-sdxl)")}


for _kind in ("sdxl_base", "sdxl_refiner"):
    register(SDXL(_kind))
