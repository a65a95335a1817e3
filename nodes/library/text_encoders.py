"""Text encoders in files of their own, as ComfyUI loads them: CLIPLoader (one file, with a ``type`` naming the
family it encodes for), DualCLIPLoader (two, e.g. SD3 without T5) and TripleCLIPLoader (SD3's CLIP-L, CLIP-G and
T5-XXL). Files are read from <models>/text_encoders and, as ComfyUI still does, the older <models>/clip; which
tower a file holds is told from its tensors, not its name or slot. The family (nodes.families, ``clip_type``)
builds the CLIP value.
"""
from __future__ import annotations

import copy
from pathlib import Path

from torch import nn

from ..families import load_builtin_families
from ..node import Environment, Input, Output, node
from ..types import CLIP
from .loaders import file_fingerprint, list_models, resolve, _weights_dtype

FOLDERS = ("text_encoders", "clip")  # ComfyUI's folder_paths["text_encoders"], the new name first


def text_encoder_names(env: Environment) -> list[str]:
    """The weight files under <models>/text_encoders and <models>/clip, by their path inside either."""
    return sorted({name for folder in FOLDERS for name in list_models(env, folder, lambda path: False)})


def clip_types(env: Environment | None = None) -> list[str]:
    return [f.clip_type for f in load_builtin_families().values() if f.clip_type]


def _path(env: Environment, name: str, what: str) -> str:
    return resolve(env, FOLDERS, name, what)


def _fingerprint(env: Environment, names: list[str]):
    try:
        return [(path, file_fingerprint(path)) for path in (_path(env, n, "") for n in names)]
    except (OSError, ValueError):
        return None  # run() reports the missing file with the node's name


class LoadedTextEncoders(nn.Module):
    """The towers of one CLIP value in one container, so the residency service can account for and share them."""

    def __init__(self, text):
        super().__init__()
        self.towers = nn.ModuleList(text.towers())
        self.text = text  # the CLIP value wrapping the towers above (a plain object, not a module)


def load_text_encoders(ctx, names: list[str], clip_type: str, what: str):
    """The CLIP value of ``clip_type``'s family from the named files, shared through the residency service."""
    family = next((f for f in load_builtin_families().values() if f.clip_type == clip_type), None)
    if family is None:
        raise ValueError(f"{what}: type {clip_type!r} is not one of {clip_types()}")
    paths = [Path(_path(ctx.env, n, f"{what}: {n!r}")) for n in names]
    dtype = _weights_dtype(ctx.resources)

    def build():
        try:
            return LoadedTextEncoders(family.load_text_encoders(paths, "cpu", dtype))
        except ValueError as exc:
            raise ValueError(f"{what}: {exc}") from None

    if ctx.resources is None:
        return build().text
    key = ("text_encoders", clip_type, tuple((str(p), file_fingerprint(str(p))) for p in paths), str(dtype))
    return ctx.resources.cached(key, build).text


@node(category="advanced/loaders", outputs=[Output(CLIP)], display_name="Load CLIP", version="1.0.0")
class CLIPLoader:
    """Load a text encoder from its own file for the model family ``type`` names (sd3: CLIP-L, CLIP-G or T5-XXL;
    the SD3 CLIP then has only that tower)."""
    clip_name: str = Input(choices=text_encoder_names, model_folder=FOLDERS,
                           description="a file in <models>/text_encoders or <models>/clip")
    type: str = Input(choices=clip_types)
    device: str = Input(default="default", choices=["default", "cpu"], optional=True,
                        description="cpu keeps the text encoder off the GPU")

    @classmethod
    def fingerprint(cls, values, env):
        return _fingerprint(env, [values["clip_name"]])

    def run(self, ctx):
        return (with_device(load_text_encoders(ctx, [self.clip_name], self.type, "CLIPLoader: clip_name"),
                            self.device),)


@node(category="advanced/loaders", outputs=[Output(CLIP)], display_name="DualCLIPLoader", version="1.0.0")
class DualCLIPLoader:
    """[Recipes]

    sd3: clip-l, clip-g / clip-l, t5 / clip-g, t5"""
    clip_name1: str = Input(choices=text_encoder_names, model_folder=FOLDERS)
    clip_name2: str = Input(choices=text_encoder_names, model_folder=FOLDERS)
    type: str = Input(choices=clip_types)
    device: str = Input(default="default", choices=["default", "cpu"], optional=True,
                        description="cpu keeps the text encoders off the GPU")

    @classmethod
    def fingerprint(cls, values, env):
        return _fingerprint(env, [values["clip_name1"], values["clip_name2"]])

    def run(self, ctx):
        clip = load_text_encoders(ctx, [self.clip_name1, self.clip_name2], self.type, "DualCLIPLoader")
        return (with_device(clip, self.device),)


def with_device(clip, device: str):
    """The CLIP value as the loaders' ``device`` input asks: "cpu" encodes where the towers are, never moving them
    to the compute device (a copy, so the shared cached value keeps its own setting)."""
    if device != "cpu":
        return clip
    clip = copy.copy(clip)
    clip.keep_on_cpu = True
    return clip


@node(category="advanced/loaders", outputs=[Output(CLIP)], display_name="TripleCLIPLoader", version="1.0.0")
class TripleCLIPLoader:
    """[Recipes]

    sd3: clip-l, clip-g, t5"""
    clip_name1: str = Input(choices=text_encoder_names, model_folder=FOLDERS)
    clip_name2: str = Input(choices=text_encoder_names, model_folder=FOLDERS)
    clip_name3: str = Input(choices=text_encoder_names, model_folder=FOLDERS)

    @classmethod
    def fingerprint(cls, values, env):
        return _fingerprint(env, [values["clip_name1"], values["clip_name2"], values["clip_name3"]])

    def run(self, ctx):
        names = [self.clip_name1, self.clip_name2, self.clip_name3]
        return (load_text_encoders(ctx, names, "sd3", "TripleCLIPLoader"),)
