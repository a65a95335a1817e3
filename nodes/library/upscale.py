"""Upscale models under ComfyUI's names: load one from <models>/upscale_models and upscale pictures with it
(nodes.upscale_models: spandrel, tiled). A loaded model is shared like a checkpoint: cached by file name and
fingerprint, and registered with the residency service when there is one."""
from __future__ import annotations

from ..node import Input, Output, node
from ..types import IMAGE, UPSCALE_MODEL
from ..upscale_models import UPSCALE_SUFFIXES, load_upscale_model, upscale
from .loaders import _fingerprint, list_models, load_model_file, on_device

FOLDER = "upscale_models"


def upscale_model_names(env) -> list[str]:
    return list_models(env, FOLDER, folder_ok=lambda path: False, suffixes=UPSCALE_SUFFIXES)


@node(category="loaders", outputs=[Output(UPSCALE_MODEL)], display_name="Load Upscale Model", version="1.0.0")
class UpscaleModelLoader:
    """Load an image upscale model from <models>/upscale_models: ESRGAN, Real-ESRGAN, SwinIR, HAT, DAT and the
    other architectures spandrel knows, told apart from the weights (.safetensors, or .pth read without running
    code)."""
    model_name: str = Input(choices=upscale_model_names, model_folder=FOLDER,
                            description="a file in <models>/upscale_models")

    @classmethod
    def fingerprint(cls, values, env):
        return _fingerprint(env, FOLDER, values["model_name"])

    def run(self, ctx):
        return (load_model_file(ctx, FOLDER, self.model_name, "UpscaleModelLoader: model_name", load_upscale_model),)


@node(category="image/upscaling", outputs=[Output(IMAGE)], display_name="Upscale Image (using Model)",
      version="1.0.0")
class ImageUpscaleWithModel:
    """Upscale pictures with the model (by its own factor, e.g. 4×), in tiles of at most 512 pixels that overlap by
    32 and are blended, so large pictures fit in memory. Follow with Upscale Image By to reach another size."""
    upscale_model: UPSCALE_MODEL = Input()
    image: IMAGE = Input()

    def run(self, ctx):
        model = on_device(ctx, self.upscale_model)
        return (upscale(model, self.image, progress=ctx.progress),)
