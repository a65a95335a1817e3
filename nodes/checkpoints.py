"""Find the family a checkpoint belongs to and let it load the file: single ``.safetensors`` files, diffusers
pipeline folders, diffusion models alone (UNETLoader's) and standalone VAEs. The families (nodes.families) know
the layouts; the reading is nodes.weights.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from .families import Checkpoint, family_of, load_builtin_families
# load_diffusers_unet is re-exported: callers load a diffusers unet/ folder on its own with it
from .families.ldm import load_diffusers_unet, load_diffusers_vae, load_vae_file  # noqa: F401
from .latent_format import LatentFormat
from .sdxl.meta import building
from .weights import UnsupportedCheckpoint, default_dtype, read_shapes, weights_file

DIFFUSION_PREFIX = "model.diffusion_model."  # where every single-file layout we know keeps the denoising network


def detect(shapes: dict[str, tuple]) -> str:
    """The family (its name, e.g. "sdxl_base") of a single file from its tensor names and shapes; anything else
    raises UnsupportedCheckpoint saying what was found."""
    for family in load_builtin_families().values():
        if family.claims(shapes):
            return family.name
    raise UnsupportedCheckpoint(_describe_unclaimed(shapes))


def _describe_unclaimed(shapes: dict) -> str:
    keys = list(shapes)
    if any(k.startswith(("encoder.", "decoder.", "first_stage_model.")) for k in keys) and \
            not any(k.startswith(("model.", "conditioner.", "cond_stage_model.")) for k in keys):
        return "found a standalone VAE, not a full checkpoint; load it with the VAE loader"
    if "conv_in.weight" in shapes and any(k.startswith("down_blocks.") for k in keys):
        return "found a diffusers-layout UNet file; point the loader at the diffusers folder instead"
    if any(k.startswith(("lora_", "lora_unet_")) or ".lora_" in k for k in keys[:200]):
        return "found a LoRA, not a checkpoint"
    families = ", ".join(f.title for f in load_builtin_families().values())
    if any(k.startswith(DIFFUSION_PREFIX) for k in keys):
        return (f"found a diffusion model at {DIFFUSION_PREFIX}* but not the text encoders of a supported family "
                f"({families}); checkpoints without text encoders are not supported")
    sample = ", ".join(keys[:3])
    return f"found no diffusion model at {DIFFUSION_PREFIX}* ({len(keys)} tensors, e.g. {sample}); not a checkpoint"


def detect_folder(path: Path) -> str:
    """The family of a diffusers pipeline folder, or UnsupportedCheckpoint saying what the folder is."""
    for family in load_builtin_families().values():
        if family.claims_folder(path):
            return family.name
    if (path / "config.json").exists() and (path / "diffusion_pytorch_model.safetensors").exists():
        raise UnsupportedCheckpoint(f"{path}: a single diffusers component, not a pipeline folder "
                                    "(needs unet/, vae/ and the text encoders' folders)")
    if not (path / "unet").is_dir():
        raise UnsupportedCheckpoint(f"{path}: not a diffusers folder (no unet/ subfolder)")
    families = ", ".join(f.title for f in load_builtin_families().values())
    raise UnsupportedCheckpoint(f"{path}: a diffusers folder of no supported family ({families})")


def load_checkpoint(path, device="cpu", dtype: torch.dtype | None = None, with_text: bool = True) -> Checkpoint:
    """A single-file checkpoint or a diffusers folder of any supported family → Checkpoint (UNet, VAE and, unless
    ``with_text`` is False, the text encoders)."""
    path, dtype = Path(path), dtype or default_dtype(device)
    with building():
        if path.is_dir():
            return family_of(detect_folder(path)).load_folder(path, device, dtype, with_text)
        shapes = _single_file_shapes(path, "checkpoint")
        return family_of(detect(shapes)).load(path, shapes, device, dtype, with_text)


def _single_file_shapes(path: Path, what: str) -> dict[str, tuple]:
    """The tensor shapes of a single weights file; only safetensors are read."""
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}")
    if path.suffix.lower() not in (".safetensors", ".sft"):
        raise UnsupportedCheckpoint(f"{path.name}: only .safetensors files are loaded (pickled .ckpt/.pt files "
                                    "can run arbitrary code)")
    return read_shapes(path)


def detect_diffusion_model(shapes: dict[str, tuple]) -> str:
    """The family of a file holding a diffusion model alone (UNETLoader's), or UnsupportedCheckpoint saying what
    the file is."""
    for family in load_builtin_families().values():
        if family.claims_diffusion_model(shapes):
            return family.name
    keys = list(shapes)
    if any(k.startswith(("encoder.", "decoder.", "first_stage_model.")) for k in keys):
        what = "a standalone VAE; load it with Load VAE"
    elif any(k.startswith(("lora_", "lora_unet_")) or ".lora_" in k for k in keys[:200]):
        what = "a LoRA; load it with Load LoRA"
    elif any(k.startswith(("text_model.", "encoder.block.", "transformer.resblocks.", "text_encoders.")) for k in keys):
        what = "text encoders; load them with Load CLIP / TripleCLIPLoader"
    else:
        what = f"no diffusion model ({len(keys)} tensors, e.g. {', '.join(keys[:3])})"
    families = ", ".join(f.title for f in load_builtin_families().values())
    raise UnsupportedCheckpoint(f"found {what}; a diffusion model file holds the UNet or MMDiT of {families} in the "
                                f"original layout (with or without {DIFFUSION_PREFIX}) or diffusers'")


def load_diffusion_model(path, device="cpu", dtype: torch.dtype | None = None) -> Checkpoint:
    """A diffusion model alone (a Checkpoint without VAE and text encoders): a single file in any layout its family
    reads, a diffusers unet/ or transformer/ folder, or a diffusers pipeline folder holding one."""
    path, dtype = Path(path), dtype or default_dtype(device)
    folder = None
    if path.is_dir():
        folder = next((path / sub for sub in ("unet", "transformer") if (path / sub).is_dir()), path)
        path = weights_file(folder)
    shapes = _single_file_shapes(path, "diffusion model")
    with building():
        return family_of(detect_diffusion_model(shapes)).load_diffusion_model(path, shapes, device, dtype, folder)


def load_vae(path, device="cpu", dtype: torch.dtype | None = None):
    """A VAE from a standalone file (original layout with or without ``first_stage_model.``, or diffusers
    layout), a full checkpoint, a diffusers ``vae/`` folder, or a diffusers pipeline folder."""
    path, dtype = Path(path), dtype or default_dtype(device)
    if path.is_dir():
        return load_diffusers_vae(path / "vae" if (path / "vae").is_dir() else path, dtype, device)
    if not path.exists():
        raise FileNotFoundError(f"VAE not found: {path}")
    shapes = read_shapes(path)
    return load_vae_file(path, shapes, vae_latent_format(path.name, shapes), dtype, device)


def vae_latent_format(name: str, shapes: dict[str, tuple]) -> LatentFormat:
    """The latent space of a VAE file. A full checkpoint's is its family's. A standalone file cannot say: SD 1.x/2.x
    and SDXL VAEs share one layout and differ in their latent scale, so, as InvokeAI does, the name decides among
    the families whose latents have the VAE's channel count (e.g. vae-ft-mse-840000 → SD 1.x, sdxl_vae → SDXL);
    the family matching any name goes last."""
    try:
        return family_of(detect(shapes)).latent_format
    except UnsupportedCheckpoint:
        pass
    z = next((v[1] for k, v in shapes.items() if k.endswith("decoder.conv_in.weight")), None)
    candidates = [f for f in load_builtin_families().values()
                  if f.vae_file_names is not None and f.latent_format.channels == z]
    for family in sorted(candidates, key=lambda f: f.vae_file_names == ""):
        if re.search(family.vae_file_names, name.lower()):
            return family.latent_format
    raise UnsupportedCheckpoint(f"{name}: found no VAE of a supported family (decoder input channels {z})")
