"""What the server asks nodes/ about models, so that it knows nothing of diffusion: the model folders and what is
in them, which folder a loader input reads, which installed file could stand in for a missing one, and the demo
checkpoints, upscale model, ControlNet, LoRAs and CLIP vision model a fresh install runs on.
"""
from __future__ import annotations

import os
from pathlib import Path

from .node import Environment

# The folders /models lists, as ComfyUI names them (folder_paths), so shared workflows and clients map unchanged.
MODEL_FOLDERS = ("checkpoints", "vae", "loras", "embeddings", "vae_approx", "clip", "text_encoders", "unet",
                 "diffusion_models", "controlnet", "upscale_models", "clip_vision")
# A loader input → the folder its files are in.
INPUT_FOLDERS = {
    "ckpt_name": "checkpoints", "vae_name": "vae", "lora_name": "loras", "unet_name": "diffusion_models",
    "clip_name": "text_encoders", "clip_name1": "text_encoders", "clip_name2": "text_encoders",
    "clip_name3": "text_encoders",
    "control_net_name": "controlnet", "style_model_name": "style_models", "upscale_model_name": "upscale_models",
    "model_name": "upscale_models", "embedding_name": "embeddings", "gligen_name": "gligen",
    "hypernetwork_name": "hypernetworks",
}
# Where a node reads another folder than its input's name says (ComfyUI names CLIPVisionLoader's input clip_name too).
NODE_INPUT_FOLDERS = {("CLIPVisionLoader", "clip_name"): "clip_vision"}
MODEL_SUFFIXES = (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin")


def model_names(env: Environment, path: Path, folder: str) -> list[str]:
    """The models in one folder (``path`` is <models>/<folder>), as every listing route answers. Checkpoints, VAEs,
    text encoders and diffusion models are exactly what the loader nodes offer (a diffusers folder is one model;
    text_encoders and diffusion_models include ComfyUI's older clip and unet folders); other folders list their
    weight files."""
    if folder in ("checkpoints", "vae"):
        from .library.loaders import checkpoint_names, vae_names
        return (checkpoint_names if folder == "checkpoints" else vae_names)(env)
    if folder == "text_encoders":  # with the older clip/ folder, as the loaders read them
        from .library.text_encoders import text_encoder_names
        return text_encoder_names(env)
    if folder == "diffusion_models":  # with the older unet/ folder, as UNETLoader reads them
        from .library.loaders import diffusion_model_names
        return diffusion_model_names(env)
    if not path.is_dir():
        return []
    return sorted(p.relative_to(path).as_posix() for p in path.rglob("*")
                  if p.is_file() and p.suffix.lower() in MODEL_SUFFIXES)


def installed_family(path: str) -> str | None:
    """The family of an installed checkpoint (file or diffusers folder), None when it is no model we load."""
    from .checkpoints import detect, detect_folder
    from .weights import read_shapes
    try:
        return detect_folder(Path(path)) if os.path.isdir(path) else detect(read_shapes(Path(path)))
    except (OSError, ValueError):  # unreadable, or no supported family (UnsupportedCheckpoint is a ValueError)
        return None


def input_folder(class_type: str | None, input_name: str | None) -> str | None:
    """The model folder a loader input reads, None for an input that names no model file."""
    return NODE_INPUT_FOLDERS.get((class_type, input_name)) or INPUT_FOLDERS.get(input_name)


def substitute(env: Environment, folder: str, name: str, installed: list[str]) -> tuple[str | None, str]:
    """(installed file that could stand in for the missing `name`, or None; a sentence saying so, or ""). A
    checkpoint stands in when it is the only installed one of the family the missing file's name suggests; another
    file when it is the only one in its folder and its name suggests no other family (the demo SD3 VAE is no
    sdxl_vae)."""
    from .families import family_from_name, family_of
    if folder == "checkpoints":
        family = family_from_name(name)
        root = os.path.join(env.models_dir or "models", folder)
        same = [f for f in installed if family and installed_family(os.path.join(root, f)) == family]
        if family and len(same) == 1:
            return same[0], f"; the only installed {family_of(family).title} checkpoint is {same[0]!r}"
        return None, ""
    wanted = family_from_name(name)
    if len(installed) == 1 and (wanted is None or family_from_name(installed[0]) in (None, wanted)):
        return installed[0], f"; the only file installed there is {installed[0]!r}"
    return None, ""


def ensure_demo_models(checkpoints: Path) -> str | None:
    """Without any checkpoint in ``checkpoints``, write every family's tiny random-weight demo models so every
    shipped workflow can run (as noise). Returns a warning for people while only demo models are there."""
    checkpoints.mkdir(parents=True, exist_ok=True)

    def found():
        return [p.relative_to(checkpoints) for p in checkpoints.rglob("*") if p.suffix in MODEL_SUFFIXES]

    if not found():
        make_demo_models(checkpoints)
    if all(p.parts[0].startswith("demo_") for p in found()):
        make_demo_parts(checkpoints, only_into_empty=True)  # a demo folder made before a part was written apart
        return (f"no real checkpoint found: only the random-weight demo models are in {checkpoints}. They produce "
                "noise, not pictures. Put real checkpoints (e.g. sd_xl_base_1.0.safetensors, "
                "v1-5-pruned-emaonly.safetensors) in that folder.")
    return None


def make_demo_models(folder) -> dict[str, Path]:
    """Every family's demo checkpoints in ``folder`` and, beside it, their parts as separate files."""
    from .demo import make_demo_models as make
    return {**make(folder), **make_demo_parts(folder)}


def make_demo_parts(checkpoints, only_into_empty: bool = False) -> dict[str, Path]:
    """The demo checkpoints' parts as people also download them, in the folders beside ``checkpoints``: standalone
    text encoders in text_encoders/, diffusion models alone in diffusion_models/, VAEs alone in vae/. With
    ``only_into_empty``, folders already holding a model file are left as they are."""
    from .demo import make_demo_diffusion_models, make_demo_text_encoders, make_demo_vaes
    beside, paths = Path(checkpoints).absolute().parent, {}
    for name, write in (("text_encoders", make_demo_text_encoders), ("diffusion_models", make_demo_diffusion_models),
                        ("vae", make_demo_vaes)):
        if not (only_into_empty and _holds_models(beside / name)):
            paths.update(write(beside / name))
    return paths


def _holds_models(folder: Path) -> bool:
    return folder.is_dir() and any(p.suffix in MODEL_SUFFIXES for p in folder.rglob("*"))


def _ensure(folder: Path, write) -> None:
    """Without any model file in ``folder``, ``write`` its tiny random-weight demo model there."""
    if not _holds_models(folder):
        write(folder)


def ensure_demo_upscaler(folder: Path) -> None:
    """Without any upscale model, write the demo one so the shipped upscaling workflow runs."""
    _ensure(folder, write_demo_upscaler)


def ensure_demo_controlnet(folder: Path) -> None:
    """Without any ControlNet, write the demo one so the shipped ControlNet workflow runs."""
    _ensure(folder, write_demo_controlnet)


def ensure_demo_loras(folder: Path) -> None:
    """Without any LoRA, write the demo checkpoints' LoRAs so the shipped LoRA workflows run."""
    _ensure(folder, write_demo_loras)


def ensure_demo_clip_vision(folder: Path) -> None:
    """Without any CLIP vision model, write the demo one so the shipped revision workflow runs."""
    _ensure(folder, write_demo_clip_vision)


def write_demo_upscaler(folder) -> Path:
    from .upscale_models import write_demo_upscaler as write
    return write(folder)


def write_demo_controlnet(folder) -> Path:
    from .controlnet import write_demo_controlnet as write
    return write(folder)


def write_demo_loras(folder) -> dict[str, Path]:
    from .demo import make_demo_loras
    return make_demo_loras(folder)


def write_demo_clip_vision(folder) -> Path:
    from .clip_vision import write_demo_clip_vision as write
    return write(folder)
