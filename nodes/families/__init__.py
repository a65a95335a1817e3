"""Model families: one module per family (sdxl.py, sd1.py, sd2.py …) declares everything particular to it, and
nothing outside those modules asks which family it is handling.

A family module subclasses ``Family`` and registers an instance at import, as node modules register nodes;
``load_builtin_families`` imports them all. What a family declares:

- detection: ``claims`` (a single file's tensor names and shapes) and ``claims_folder`` (a diffusers folder);
  ``claims_diffusion_model`` for a file holding its diffusion model alone (UNETLoader's, any layout);
- loading: ``load`` / ``load_folder`` build its UNet, VAE and text encoders (full-size and tiny configs live with
  it) and pick its prediction type (``Checkpoint.sampling``: eps, v, and flow for later families);
  ``load_diffusion_model`` the diffusion model alone;
- its latent format (``latent_format``: channels, scale, shift, preview factors);
- the values its checkpoints put on the sockets: ``model`` the MODEL (nodes.sampling.denoiser.Denoiser, which
  knows the extra conditioning its network takes) and the checkpoint's text encoders the CLIP (``TextEncoder``:
  what its text encoding produces);
- its demo writers (``write_demo``; ``write_demo_diffusion_models`` for its diffusion model alone,
  ``write_demo_vaes`` for its VAE alone), its full-size key layout on the meta device (``full_size_shapes``) and the
  names people give its files (``file_names``, for hints about missing models);
- optionally, text encoders in files of their own (``clip_type``, ComfyUI's CLIPLoader type naming them;
  ``load_text_encoders``; ``write_demo_text_encoders``);
- the names LoRA files give its weights (``lora_model_keys`` / ``lora_clip_keys``: nodes.lora) and its demo LoRAs.
"""
from __future__ import annotations

import functools
import importlib
import pkgutil
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from ..latent_format import LatentFormat


class TextEncoder(Protocol):
    """The value on a CLIP socket: a checkpoint's text encoders, tokenizer included."""
    kind: str  # the family that made it
    keep_on_cpu: bool  # CLIPLoader's device "cpu": encode where the towers are, never on the compute device

    def towers(self) -> list[nn.Module]:
        """The modules that must be resident on the device to encode."""

    def conditioning(self, text: str) -> list:
        """CONDITIONING (``[[context, extras]]``, tensors on the CPU) for its family's MODEL: what CLIPTextEncode
        gives, with the family's layer, padding, pooled output and prompt weights."""

    def with_layer(self, layer: int) -> "TextEncoder":
        """The same towers stopping at hidden layer ``layer`` (−1 = last, −2 = penultimate: ComfyUI's
        CLIPSetLastLayer). Raises ValueError for a layer the towers do not have."""

    def with_towers(self, towers: list[nn.Module]) -> "TextEncoder":
        """The same encoder on other copies of its towers, given in ``towers()`` order (LoRA-patched ones)."""


@dataclass
class Checkpoint:
    """What a family's loader returns."""
    kind: str  # the family's name
    unet: nn.Module  # the denoising network
    unet_config: object
    vae: nn.Module | None  # None for a diffusion model alone (load_diffusion_model)
    text: TextEncoder | None  # None when loaded with_text=False or without text encoders
    path: Path
    dtype: torch.dtype
    sampling: object  # nodes.sampling.schedules.ModelSampling: the prediction type the file calls for


class Family:
    """The declaration a family module fills in (see the module docstring)."""
    name: str  # the kind its checkpoints report ("sd1", "sdxl_base")
    title: str  # for people ("SD 1.x", "SDXL base")
    latent_format: LatentFormat
    file_names: str  # regex on the lower-cased name: checkpoint file names typical of the family
    # regex: names of standalone VAE files in its latent space, for the VAE layouts that cannot say ("" = any name,
    # tried last); None: its VAEs are told apart otherwise (nodes.checkpoints.vae_latent_format)
    vae_file_names: str | None = None

    def claims(self, shapes: dict[str, tuple]) -> bool:
        """Whether a single file with these tensors is this family's. May raise UnsupportedCheckpoint for a file
        that is almost one (say, the family's UNet without its text encoders), saying what is wrong."""
        raise NotImplementedError

    def claims_folder(self, folder: Path) -> bool:
        """Whether a diffusers pipeline folder is this family's (may raise like ``claims``)."""
        raise NotImplementedError

    def load(self, path: Path, shapes: dict[str, tuple], device, dtype, with_text: bool) -> Checkpoint:
        raise NotImplementedError

    def load_folder(self, folder: Path, device, dtype, with_text: bool) -> Checkpoint:
        raise NotImplementedError

    def claims_diffusion_model(self, shapes: dict[str, tuple]) -> bool:
        """Whether a file holding only a diffusion model, with these tensors, is this family's: the original layout
        with or without ``model.diffusion_model.`` (a whole checkpoint's model counts too), or diffusers' layout. May
        raise like ``claims``."""
        return False

    def load_diffusion_model(self, path: Path, shapes: dict[str, tuple], device, dtype,
                             folder: Path | None = None) -> Checkpoint:
        """The diffusion model of the file ``path`` alone (a Checkpoint without VAE and text). ``folder``: the
        diffusers component folder (unet/, transformer/) holding the file, whose config.json describes it."""
        raise NotImplementedError

    def model(self, checkpoint, name: str):
        """The MODEL value (a Denoiser) of a loaded checkpoint (``Checkpoint`` or the loaders' container)."""
        raise NotImplementedError

    def write_demo(self, folder: Path, dtype: torch.dtype) -> dict[str, Path]:
        """Tiny random-weight checkpoints in the real layouts: {kind or kind_diffusers: path}."""
        raise NotImplementedError

    def full_size_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tensor name and shape of the full-size single file, built on the meta device."""
        raise NotImplementedError

    clip_type: str | None = None  # ComfyUI's CLIPLoader `type` for this family's standalone text encoders

    def load_text_encoders(self, files: list[Path], device, dtype: torch.dtype) -> TextEncoder:
        """The CLIP value from standalone text-encoder files (CLIPLoader, TripleCLIPLoader), told apart by their
        tensors."""
        raise NotImplementedError

    def write_demo_diffusion_models(self, folder: Path, dtype: torch.dtype) -> dict[str, Path]:
        """Tiny random-weight diffusion models alone (for <models>/diffusion_models, UNETLoader's), if the family's
        are shared so."""
        return {}

    def write_demo_vaes(self, folder: Path, dtype: torch.dtype) -> dict[str, Path]:
        """Tiny random-weight VAEs alone (for <models>/vae, VAELoader's), if workflows for the family load theirs
        so."""
        return {}

    def write_demo_text_encoders(self, folder: Path, dtype: torch.dtype) -> dict[str, Path]:
        """Tiny random-weight standalone text encoders (for <models>/text_encoders), if the family has such files."""
        return {}

    # -- LoRA (nodes.lora) --
    lora_text_prefixes: tuple[str, ...] = ()  # how the names LoRA files give its text encoders' weights begin

    def lora_model_keys(self, model) -> dict:
        """{module name as LoRA files write it: nodes.lora.Target} for the weights of its MODEL's network."""
        raise NotImplementedError(f"LoRAs for {self.title} models are not supported")

    def lora_clip_keys(self, clip) -> dict:
        """The same for its CLIP's towers (Target.module: the index in ``towers()``)."""
        raise NotImplementedError(f"LoRAs for the {self.title} text encoders are not supported")

    def write_demo_loras(self, folder: Path) -> dict[str, Path]:
        """Tiny random LoRAs for its demo checkpoints, in the layouts people download: {name: path}."""
        return {}


FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    if family.name in FAMILIES and type(FAMILIES[family.name]) is not type(family):
        raise ValueError(f"model family {family.name!r} registered twice")
    FAMILIES[family.name] = family
    return family


@functools.cache
def load_builtin_families() -> dict[str, Family]:
    """Import the family modules (registration happens at import), in name order, and return the registry."""
    for mod in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        importlib.import_module(f"{__name__}.{mod.name}")
    return FAMILIES


def family_of(kind: str) -> Family:
    return load_builtin_families()[kind]


def family_from_name(file_name: str) -> str | None:
    """The family a checkpoint's file name suggests (all a shared workflow tells of a file we do not have)."""
    low = Path(file_name).name.lower()
    return next((f.name for f in load_builtin_families().values() if re.search(f.file_names, low)), None)
