"""ControlNets under ComfyUI's names: load one from <models>/controlnet (a "diff" one onto its model) and apply it
to conditioning with a hint image (nodes.controlnet). A loaded ControlNet is shared like a checkpoint: cached by file
name and fingerprint, and registered with the residency service when there is one."""
from __future__ import annotations

import os

from ..controlnet import SUFFIXES, apply, load_controlnet
from ..node import Input, Output, node
from ..types import CONDITIONING, CONTROL_NET, IMAGE, MODEL, VAE
from .loaders import _fingerprint, _weights_dtype, file_fingerprint, list_models, resolve

FOLDER = "controlnet"


def controlnet_names(env) -> list[str]:
    """ControlNet files, and diffusers ControlNet folders (config.json beside the weights)."""
    return list_models(env, FOLDER, folder_ok=lambda path: os.path.isfile(os.path.join(path, "config.json")),
                       suffixes=SUFFIXES)


def _load(ctx, name: str, what: str, model=None):
    path = resolve(ctx.env, FOLDER, name, what)
    dtype = _weights_dtype(ctx.resources)
    if model is not None:  # a diff ControlNet is its own sum with this model's UNet: cached as the node's output
        return load_controlnet(path, dtype, what, base=model.module)

    def build():
        return load_controlnet(path, dtype, what)

    if ctx.resources is not None:
        return ctx.resources.cached(("controlnet", path, file_fingerprint(path), str(dtype)), build)
    return build()


@node(category="loaders", outputs=[Output(CONTROL_NET)], display_name="Load ControlNet Model", version="1.0.0")
class ControlNetLoader:
    """Load a ControlNet for SD 1.x, SD 2.x or SDXL from <models>/controlnet: the original layout (.safetensors, or
    .pth read without running code) or diffusers' (a weights file or a folder with its config.json)."""
    control_net_name: str = Input(choices=controlnet_names, model_folder=FOLDER,
                                  description="a file or folder in <models>/controlnet")

    @classmethod
    def fingerprint(cls, values, env):
        return _fingerprint(env, FOLDER, values["control_net_name"])

    def run(self, ctx):
        return (_load(ctx, self.control_net_name, "ControlNetLoader: control_net_name"),)


@node(category="loaders", outputs=[Output(CONTROL_NET)], display_name="Load ControlNet Model (diff)", version="1.0.0")
class DiffControlNetLoader:
    """Load a "diff" ControlNet, whose file stores its changes to a base UNet, onto that model's UNet (any other
    ControlNet loads as Load ControlNet Model loads it)."""
    model: MODEL = Input()
    control_net_name: str = Input(choices=controlnet_names, model_folder=FOLDER)

    @classmethod
    def fingerprint(cls, values, env):
        return _fingerprint(env, FOLDER, values["control_net_name"])

    def run(self, ctx):
        return (_load(ctx, self.control_net_name, "DiffControlNetLoader: control_net_name", self.model),)


@node(category="conditioning/controlnet", outputs=[Output(CONDITIONING)], display_name="Apply ControlNet (OLD)",
      version="1.0.0", deprecated=True)
class ControlNetApply:
    """Steer the conditioning with a ControlNet and its hint image over the whole run. The sampler also gives the
    control to a negative conditioning that has none (ComfyUI's rule for this node); Apply ControlNet sets both."""
    conditioning: CONDITIONING = Input()
    control_net: CONTROL_NET = Input()
    image: IMAGE = Input()
    strength: float = Input(default=1.0, min=0.0, max=10.0, step=0.01)

    def run(self, ctx):
        if self.strength == 0:
            return (self.conditioning,)
        return (apply(self.conditioning, self.control_net, self.image, self.strength, to_uncond=True),)


@node(category="conditioning/controlnet", outputs=[Output(CONDITIONING, "positive"), Output(CONDITIONING, "negative")],
      display_name="Apply ControlNet", version="1.0.0")
class ControlNetApplyAdvanced:
    """Steer both conditionings with a ControlNet and its hint image (resized to the latent's picture size): the
    ControlNet's residuals × strength are added to the UNet between start_percent and end_percent of the run.
    Applied again, ControlNets add up. The VAE is for ControlNets that take their hint as latents (SD3, Flux);
    SD 1.x / 2.x / SDXL ControlNets take pixels and do not use it."""
    positive: CONDITIONING = Input()
    negative: CONDITIONING = Input()
    control_net: CONTROL_NET = Input()
    image: IMAGE = Input()
    strength: float = Input(default=1.0, min=0.0, max=10.0, step=0.01)
    start_percent: float = Input(default=0.0, min=0.0, max=1.0, step=0.001)
    end_percent: float = Input(default=1.0, min=0.0, max=1.0, step=0.001)
    vae: VAE = Input(optional=True)

    def run(self, ctx):
        if self.strength == 0:
            return self.positive, self.negative
        applied = {}  # the positive and negative share each new control, so both run in one batch
        return tuple(apply(c, self.control_net, self.image, self.strength, self.start_percent, self.end_percent,
                           applied) for c in (self.positive, self.negative))
