"""Socket types: the names on node inputs and outputs, and what flows along each.

Names follow ComfyUI so its workflows and clients work unchanged. The values are plain Python/torch
objects in ComfyUI's shapes:

    IMAGE         float tensor [B, H, W, C], 0..1
    MASK          float tensor [B, H, W], 1 = masked
    LATENT        dict {"samples": [B, C, H/8, W/8], optional "noise_mask", "batch_index"}, in the sampling space
                  of a family's latent format (nodes.latent_format)
    CONDITIONING  list of [context [B, T, D], {"pooled_output": [B, P], ...extras}] entries
    MODEL         a denoiser (the protocol in nodes.sampling.denoiser)
    CLIP          a checkpoint's text encoders (the protocol nodes.families.TextEncoder)
    VAE           an AutoencoderKL (nodes.sdxl.vae) whose config holds its latent scale
    UPSCALE_MODEL nodes.upscale_models.UpscaleModel
    CONTROL_NET   nodes.controlnet.ControlNet (applied, it travels in CONDITIONING extras as ``control``)
    CLIP_VISION   nodes.clip_vision.ClipVision (a CLIP image tower)
    CLIP_VISION_OUTPUT  nodes.clip_vision.ClipVisionOutput (image_embeds, last_hidden_state, …)
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SocketType:
    name: str
    description: str = ""

    @property
    def is_primitive(self) -> bool:
        return self.name in _PRIMITIVES

    def __str__(self) -> str:
        return self.name


INT = SocketType("INT", "whole number")
FLOAT = SocketType("FLOAT", "real number")
STRING = SocketType("STRING", "text")
BOOLEAN = SocketType("BOOLEAN", "on/off")
_PRIMITIVES = {"INT", "FLOAT", "STRING", "BOOLEAN"}

IMAGE = SocketType("IMAGE", "pictures, float [B, H, W, C] in 0..1")
MASK = SocketType("MASK", "masks, float [B, H, W], 1 = masked")
LATENT = SocketType("LATENT", "latents {'samples': [B, C, H/8, W/8]}")
CONDITIONING = SocketType("CONDITIONING", "text conditioning entries [context, {pooled_output, ...}]")
MODEL = SocketType("MODEL", "a denoising network with its noise schedule and latent format")
CLIP = SocketType("CLIP", "text encoders and tokenizers")
VAE = SocketType("VAE", "the latent autoencoder")
SAMPLER = SocketType("SAMPLER", "a sampling algorithm")
SIGMAS = SocketType("SIGMAS", "a noise-level schedule, 1-D tensor")
NOISE = SocketType("NOISE", "an initial-noise source")
GUIDER = SocketType("GUIDER", "a model with its conditioning and guidance scale")
UPSCALE_MODEL = SocketType("UPSCALE_MODEL", "an image-to-image upscale model (ESRGAN, SwinIR, …)")
CONTROL_NET = SocketType("CONTROL_NET", "a ControlNet: steers a UNet with a hint image (edges, depth, pose …)")
CLIP_VISION = SocketType("CLIP_VISION", "a CLIP image encoder")
CLIP_VISION_OUTPUT = SocketType("CLIP_VISION_OUTPUT", "CLIP image embeddings and hidden states")
ANY = SocketType("*", "any type")

_BY_PYTHON = {int: INT, float: FLOAT, str: STRING, bool: BOOLEAN}


def socket_type_of(annotation) -> SocketType:
    """Map an input annotation (int/float/str/bool or a SocketType) to its socket type."""
    if isinstance(annotation, SocketType):
        return annotation
    if annotation in _BY_PYTHON:
        return _BY_PYTHON[annotation]
    raise TypeError(f"input annotation must be int, float, str, bool or a SocketType, not {annotation!r}")


def compatible(output_type: str, input_type: str) -> bool:
    """ComfyUI's rule: '*' matches anything, otherwise the comma-separated type sets must overlap."""
    if output_type == "*" or input_type == "*":
        return True
    return bool(set(output_type.split(",")) & set(input_type.split(",")))
