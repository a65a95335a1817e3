"""Loaders: checkpoints of every supported family (single file or diffusers folder; nodes.checkpoints finds the
family), diffusion models alone (UNETLoader) and standalone VAEs.

A loaded checkpoint is shared: the executor caches the loader's outputs by content key (file name plus the
``fingerprint`` below, so a replaced file reloads), and when a residency service is present (``ctx.resources``,
server.models) the weights are registered there under the same key, so another workflow naming the same file gets
the same modules without reading them again.

The fine-grained SDXL loader (category sdxl/loaders) and ComfyUI's CheckpointLoaderSimple / VAELoader call the same
functions (``load_model`` / ``load_vae_file``).
"""
from __future__ import annotations

import os

import torch
from torch import nn

from ..checkpoints import load_checkpoint, load_diffusion_model, load_vae
from ..families import family_of
from ..float8 import store_as_float8
from ..node import Environment, Input, Output, node
from ..types import CLIP, MODEL, VAE

WEIGHT_SUFFIXES = (".safetensors", ".sft")


# -- finding files ------------------------------------------------------------------------------------------------

def model_folder(env: Environment, kind: str) -> str:
    """<models>/<kind> (kind: "checkpoints", "vae")."""
    return os.path.join(env.models_dir or "models", kind)


def _is_diffusers_folder(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "model_index.json")) or os.path.isdir(os.path.join(path, "unet"))


def _is_vae_folder(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "config.json")) or os.path.isdir(os.path.join(path, "vae"))


def list_models(env: Environment, kind: str, folder_ok=_is_diffusers_folder, suffixes=WEIGHT_SUFFIXES) -> list[str]:
    """Weight files under <models>/<kind> (relative paths, '/'-separated, subfolders included) and model folders
    (diffusers layout) directly recognised by ``folder_ok``; a recognised folder is listed, not walked into."""
    root = model_folder(env, kind)
    if not os.path.isdir(root):
        return []
    found = []
    for here, dirs, files in os.walk(root, followlinks=True):
        rel = os.path.relpath(here, root)
        for d in list(dirs):
            if folder_ok(os.path.join(here, d)):
                found.append(d if rel == "." else f"{rel}/{d}".replace(os.sep, "/"))
                dirs.remove(d)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for f in files:
            if f.lower().endswith(suffixes):
                found.append(f if rel == "." else f"{rel}/{f}".replace(os.sep, "/"))
    return sorted(found)


def checkpoint_names(env: Environment) -> list[str]:
    return list_models(env, "checkpoints")


def vae_names(env: Environment) -> list[str]:
    return list_models(env, "vae", _is_vae_folder)


DIFFUSION_MODEL_FOLDERS = ("diffusion_models", "unet")  # ComfyUI's folder_paths["diffusion_models"], new name first


def _is_diffusion_model_folder(path: str) -> bool:
    """A diffusers unet/ or transformer/ folder, or a pipeline folder holding one."""
    return os.path.isfile(os.path.join(path, "config.json")) or \
        any(os.path.isdir(os.path.join(path, sub)) for sub in ("unet", "transformer"))


def diffusion_model_names(env: Environment) -> list[str]:
    """The diffusion models under <models>/diffusion_models and <models>/unet, by their path inside either."""
    return sorted({name for folder in DIFFUSION_MODEL_FOLDERS
                   for name in list_models(env, folder, _is_diffusion_model_folder)})


def resolve(env: Environment, kind: str | tuple[str, ...], name: str, what: str) -> str:
    """The path of `name` inside <models>/<kind>, or inside the first of several folders that holds it
    (Environment.model_path); `what` names the node and input for messages."""
    try:
        path = env.model_path(kind, name)
    except ValueError as exc:
        raise ValueError(f"{what}: {exc}") from None
    if not os.path.exists(path):
        kinds = (kind,) if isinstance(kind, str) else kind
        where = " or ".join(os.path.abspath(model_folder(env, k)) for k in kinds)
        raise FileNotFoundError(f"{what}: {name!r} not found in {where}")
    return path


def file_fingerprint(path: str) -> tuple:
    """Size and modification time of a file, or of every file in a folder: a replaced model changes it."""
    if os.path.isfile(path):
        st = os.stat(path)
        return (st.st_size, st.st_mtime_ns)
    entries = []
    for here, _, files in os.walk(path):
        for f in sorted(files):
            st = os.stat(os.path.join(here, f))
            entries.append((os.path.relpath(os.path.join(here, f), path), st.st_size, st.st_mtime_ns))
    return tuple(sorted(entries))


def _fingerprint(env: Environment, kind: str | tuple[str, ...], name: str):
    try:
        path = resolve(env, kind, name, "")
    except (OSError, ValueError):
        return None  # run() reports the missing file with the node's name
    return (path, file_fingerprint(path))


# -- loading ------------------------------------------------------------------------------------------------------

class LoadedCheckpoint(nn.Module):
    """One checkpoint's modules in one container, so the residency service can account for and share them (a
    diffusion model alone has no VAE and no text encoders)."""

    def __init__(self, ckpt):
        super().__init__()
        self.kind = ckpt.kind
        self.sampling = ckpt.sampling
        self.unet = ckpt.unet
        self.vae = ckpt.vae
        self.towers = nn.ModuleList(ckpt.text.towers() if ckpt.text is not None else [])
        self.text = ckpt.text  # the CLIP value wrapping the towers above (a plain object, not a module); None for a
        # file without text encoders (SD3 medium), as ComfyUI gives


def _weights_dtype(resources) -> torch.dtype:
    return getattr(resources, "dtype", None) or torch.float32


def load_model_file(ctx, folder: str, name: str, what: str, load) -> nn.Module:
    """The file `name` in <models>/<folder> read by ``load(path, dtype, what)`` in the residency service's dtype, and
    shared through that service (keyed by folder, path, fingerprint and dtype) when there is one."""
    path = resolve(ctx.env, folder, name, what)
    dtype = _weights_dtype(ctx.resources)
    if ctx.resources is None:
        return load(path, dtype, what)
    return ctx.resources.cached((folder, path, file_fingerprint(path), str(dtype)), lambda: load(path, dtype, what))


def load_model(ctx, name: str, what: str = "CheckpointLoaderSimple: ckpt_name") -> tuple:
    """(MODEL, CLIP, VAE) of the checkpoint `name` in <models>/checkpoints: its family's denoiser
    (nodes.sampling.denoiser), text encoders (nodes.families.TextEncoder) and AutoencoderKL. Weights are read into
    CPU RAM in the residency service's dtype; samplers and encoders move them to the device when they run."""
    path = resolve(ctx.env, "checkpoints", name, what)
    dtype = _weights_dtype(ctx.resources)

    def build():
        return LoadedCheckpoint(load_checkpoint(path, "cpu", dtype))

    if ctx.resources is not None:
        loaded = ctx.resources.cached(("checkpoint", path, file_fingerprint(path), str(dtype)), build)
    else:
        loaded = build()
    return family_of(loaded.kind).model(loaded, name), loaded.text, loaded.vae


WEIGHT_DTYPES = {"default": None, "fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e4m3fn_fast": torch.float8_e4m3fn,
                 "fp8_e5m2": torch.float8_e5m2}


def load_diffusion_model_file(ctx, name: str, weight_dtype: str, what: str = "UNETLoader: unet_name"):
    """The MODEL of the diffusion model `name` in <models>/diffusion_models (or unet), its weights in the residency
    service's dtype or, for an fp8 ``weight_dtype``, stored in float8 and upcast on use (nodes.float8)."""
    path = resolve(ctx.env, DIFFUSION_MODEL_FOLDERS, name, what)
    dtype, stored = _weights_dtype(ctx.resources), WEIGHT_DTYPES[weight_dtype]

    def build():
        try:
            ckpt = load_diffusion_model(path, "cpu", dtype)
        except ValueError as exc:  # UnsupportedCheckpoint, CheckpointError: say which node and input
            raise ValueError(f"{what}: {name!r}: {exc}") from None
        if stored is not None:
            store_as_float8(ckpt.unet, stored, dtype)
        return LoadedCheckpoint(ckpt)

    key = ("diffusion_model", path, file_fingerprint(path), str(dtype), str(stored))
    loaded = ctx.resources.cached(key, build) if ctx.resources is not None else build()
    return family_of(loaded.kind).model(loaded, name)


def load_vae_file(ctx, name: str, what: str = "VAELoader: vae_name") -> nn.Module:
    path = resolve(ctx.env, "vae", name, what)
    dtype = _weights_dtype(ctx.resources)

    def build():
        return load_vae(path, "cpu", dtype)

    if ctx.resources is not None:
        return ctx.resources.cached(("vae", path, file_fingerprint(path), str(dtype)), build)
    return build()


def on_device(ctx, module: nn.Module) -> nn.Module:
    """Make `module` resident on the compute device the residency service assigns (CPU without one)."""
    return ctx.resources.load(module) if ctx.resources is not None else module


def device_of(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


# -- fine-grained nodes -------------------------------------------------------------------------------------------

@node(category="sdxl/loaders", outputs=[Output(MODEL, "MODEL", "the UNet (base or refiner) with its noise schedule"),
                                        Output(CLIP, "CLIP", "the text encoders: CLIP-L + OpenCLIP bigG (base) or bigG (refiner)"),
                                        Output(VAE, "VAE", "the latent autoencoder")],
      display_name="Load SDXL Checkpoint", version="1.0.0")
class SDXLCheckpointLoader:
    """Load an SDXL base or refiner checkpoint from <models>/checkpoints: an original single .safetensors file or a
    diffusers folder. Base or refiner is told from the tensors' names and shapes."""
    ckpt_name: str = Input(choices=checkpoint_names, model_folder="checkpoints",
                           description="a file or diffusers folder in <models>/checkpoints")

    @classmethod
    def fingerprint(cls, values, env):
        return _fingerprint(env, "checkpoints", values["ckpt_name"])

    def run(self, ctx):
        what = "SDXLCheckpointLoader: ckpt_name"
        model, clip, vae = load_model(ctx, self.ckpt_name, what)
        if not model.kind.startswith("sdxl"):
            raise ValueError(f"{what}: {self.ckpt_name!r} is an {family_of(model.kind).title} checkpoint, not SDXL; "
                             "load it with Load Checkpoint")
        return model, clip, vae


@node(category="sdxl/loaders", outputs=[Output(VAE)], display_name="Load SDXL VAE", version="1.0.0")
class SDXLVAELoader:
    """Load a standalone VAE from <models>/vae (original or diffusers layout, single file or folder)."""
    vae_name: str = Input(choices=vae_names, model_folder="vae",
                          description="a file or diffusers folder in <models>/vae")

    @classmethod
    def fingerprint(cls, values, env):
        return _fingerprint(env, "vae", values["vae_name"])

    def run(self, ctx):
        return (load_vae_file(ctx, self.vae_name, "SDXLVAELoader: vae_name"),)


# -- ComfyUI nodes ------------------------------------------------------------------------------------------------

@node(category="loaders", outputs=[Output(MODEL, "MODEL"), Output(CLIP, "CLIP"), Output(VAE, "VAE")],
      display_name="Load Checkpoint", version="1.0.0")
class CheckpointLoaderSimple:
    """Load a diffusion model checkpoint (any supported family; single file or diffusers folder)."""
    ckpt_name: str = Input(choices=checkpoint_names, model_folder="checkpoints",
                           description="The name of the checkpoint (model) to load.")

    @classmethod
    def fingerprint(cls, values, env):
        return _fingerprint(env, "checkpoints", values["ckpt_name"])

    def run(self, ctx):
        return load_model(ctx, self.ckpt_name)


@node(category="advanced/loaders", outputs=[Output(MODEL)], display_name="Load Diffusion Model", version="1.0.0")
class UNETLoader:
    """Load a diffusion model alone (the UNet of SD 1.x, 2.x or SDXL base/refiner, or SD3's MMDiT), in the original
    layout with or without model.diffusion_model., or diffusers' (a file, or a unet/ or transformer/ folder); its
    text encoders and VAE come from their own loaders."""
    unet_name: str = Input(choices=diffusion_model_names, model_folder=DIFFUSION_MODEL_FOLDERS,
                           description="a file or diffusers folder in <models>/diffusion_models or <models>/unet")
    weight_dtype: str = Input(choices=list(WEIGHT_DTYPES), description=(
        "default: as Load Checkpoint stores weights; fp8: stored in float8 (a quarter of fp32's memory) and upcast "
        "when used (the _fast variant is the same here)"))

    @classmethod
    def fingerprint(cls, values, env):
        return _fingerprint(env, DIFFUSION_MODEL_FOLDERS, values["unet_name"])

    def run(self, ctx):
        return (load_diffusion_model_file(ctx, self.unet_name, self.weight_dtype),)


@node(category="loaders", outputs=[Output(VAE)], display_name="Load VAE", version="1.0.0")
class VAELoader:
    """Load a standalone VAE."""
    vae_name: str = Input(choices=vae_names, model_folder="vae")

    @classmethod
    def fingerprint(cls, values, env):
        return _fingerprint(env, "vae", values["vae_name"])

    def run(self, ctx):
        return (load_vae_file(ctx, self.vae_name),)
