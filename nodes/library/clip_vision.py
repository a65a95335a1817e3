"""CLIP vision under ComfyUI's names: load an image tower from <models>/clip_vision (nodes.clip_vision), encode
pictures with it, and condition a model on the pictures' embeddings (unCLIPConditioning; on SDXL that is
"revision", nodes.unclip). A loaded tower is shared like a checkpoint: cached by file name and fingerprint, and
registered with the residency service when there is one."""
from __future__ import annotations

from ..catalog import MODEL_SUFFIXES
from ..clip_vision import encode, load_clip_vision
from ..node import Input, Output, node
from ..types import CLIP_VISION, CLIP_VISION_OUTPUT, CONDITIONING, IMAGE
from ..unclip import add_image
from .loaders import _fingerprint, list_models, load_model_file, on_device

FOLDER = "clip_vision"


def clip_vision_names(env) -> list[str]:
    return list_models(env, FOLDER, folder_ok=lambda path: False, suffixes=MODEL_SUFFIXES)


@node(category="loaders", outputs=[Output(CLIP_VISION)], display_name="Load CLIP Vision", version="1.0.0")
class CLIPVisionLoader:
    """Load a CLIP image encoder from <models>/clip_vision: clip_vision_g (OpenCLIP ViT-bigG/14, for SDXL
    revision), ViT-H/14 or ViT-L/14, in the transformers or the open_clip layout, told apart from the weights."""
    clip_name: str = Input(choices=clip_vision_names, model_folder=FOLDER,
                           description="a file in <models>/clip_vision")

    @classmethod
    def fingerprint(cls, values, env):
        return _fingerprint(env, FOLDER, values["clip_name"])

    def run(self, ctx):
        return (load_model_file(ctx, FOLDER, self.clip_name, "CLIPVisionLoader: clip_name", load_clip_vision),)


@node(category="conditioning", outputs=[Output(CLIP_VISION_OUTPUT)], display_name="CLIP Vision Encode",
      version="1.0.0")
class CLIPVisionEncode:
    """Encode pictures with a CLIP image encoder: each is resized to the encoder's input size (224 px; 336 for
    ViT-L/14-336) — center: the shorter side fits and the middle is kept; none: squashed to a square — and
    normalised as CLIP expects."""
    clip_vision: CLIP_VISION = Input()
    image: IMAGE = Input()
    crop: str = Input(default="center", choices=["center", "none"])

    def run(self, ctx):
        model = on_device(ctx, self.clip_vision)
        return (encode(model, self.image, crop=self.crop == "center"),)


@node(category="conditioning", outputs=[Output(CONDITIONING)], display_name="unCLIPConditioning", version="1.0.0")
class unCLIPConditioning:  # noqa: N801 (ComfyUI's node name)
    """Condition on pictures as well as (SDXL revision: instead of) the prompt's pooled vector: the pictures' CLIP
    image embeddings, times strength, go into the model's vector input. noise_augmentation blurs the embedding
    with noise (0: follow the picture closely, 1: loosely). Chain several to mix pictures (their embeddings add)."""
    conditioning: CONDITIONING = Input()
    clip_vision_output: CLIP_VISION_OUTPUT = Input()
    strength: float = Input(default=1.0, min=-10.0, max=10.0, step=0.01)
    noise_augmentation: float = Input(default=0.0, min=0.0, max=1.0, step=0.01)

    def run(self, ctx):
        return (add_image(self.conditioning, self.clip_vision_output, self.strength, self.noise_augmentation),)
