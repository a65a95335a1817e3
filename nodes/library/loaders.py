"""Loaders: checkpoints of every supported family (single file or diffusers folder; nodes.checkpoints finds the
family) and standalone VAEs.

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

from ..checkpoints import load_checkpoint, load_vae
from ..families import family_of
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


def resolve(env: Environment, kind: str, name: str, what: str) -> str:
    """The path of `name` inside <models>/<kind> (Environment.model_path); `what` names the node and input for
    messages."""
    try:
        path = env.model_path(kind, name)
    except ValueError as exc:
        raise ValueError(f"{what}: {exc}") from None
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what}: {name!r} not found in {os.path.abspath(model_folder(env, kind))}")
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


def _fingerprint(env: Environment, kind: str, name: str):
    try:
        path = resolve(env, kind, name, "")
    except (OSError, ValueError):
        return None  # run() reports the missing file with the node's name
    return (path, file_fingerprint(path))


# -- loading ------------------------------------------------------------------------------------------------------

class LoadedCheckpoint(nn.Module):
    """One checkpoint's modules in one container, so the residency service can account for and share them."""

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


@node(category="loaders", outputs=[Output(VAE)], display_name="Load VAE", version="1.0.0")
class VAELoader:
    """Load a standalone VAE."""
    vae_name: str = Input(choices=vae_names, model_folder="vae")

    @classmethod
    def fingerprint(cls, values, env):
        return _fingerprint(env, "vae", values["vae_name"])

    def run(self, ctx):
        return (load_vae_file(ctx, self.vae_name),)
