"""The MODEL socket value: an SDXL UNet with its noise schedule, and the glue from CONDITIONING entries
(ComfyUI's ``[context, {"pooled_output", sizes...}]``) to the UNet's ``context`` and ``y``.

The sampler (nodes.sampling) is model-agnostic: it asks this object for an ``eps_fn`` and for prepared
condition dicts, and never sees how SDXL builds its vector ``y``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .conditioning import base_vector, refiner_vector

# Aesthetic score the refiner is conditioned on when the conditioning does not say (sgm demo, diffusers, ComfyUI).
REFINER_AESTHETIC = {"positive": 6.0, "negative": 2.5}


@dataclass(eq=False)
class SDXLModel:
    unet: torch.nn.Module
    kind: str  # "sdxl_base" | "sdxl_refiner"
    sampling: object  # nodes.sampling.schedules.ModelSampling
    name: str = ""  # where it came from (file name), for messages and residency keys
    options: dict = field(default_factory=dict)

    @property
    def is_refiner(self) -> bool:
        return self.kind == "sdxl_refiner"

    def eps_fn(self, unet: torch.nn.Module | None = None):
        """The UNet call the sampler makes: ``eps(x_in, t, context, y)``, in the UNet's dtype, answered in fp32."""
        net = unet or self.unet
        dtype = next(net.parameters()).dtype

        def eps(x_in, timesteps, context, y):
            out = net(x_in.to(dtype), timesteps, context.to(dtype), None if y is None else y.to(dtype))
            return out.float()

        return eps

    def prepare(self, conditioning: list, role: str, latent_hw: tuple[int, int], device=None) -> list[dict]:
        """CONDITIONING entries → the sampler's condition dicts ``{context, y, start_percent, end_percent}``.

        `role` is "positive" or "negative" (it picks the refiner's default aesthetic score); `latent_hw` is the
        latent's (h, w): sizes the conditioning leaves out default to the output image size (latent × 8)."""
        height, width = latent_hw[0] * 8, latent_hw[1] * 8
        prepared = []
        for context, extras in conditioning:
            pooled = extras.get("pooled_output")
            if pooled is None:
                raise ValueError("this conditioning has no pooled output; SDXL needs the OpenCLIP bigG pooled vector")
            orig = (extras.get("height", height), extras.get("width", width))
            crop = (extras.get("crop_h", 0), extras.get("crop_w", 0))
            if self.is_refiner:
                score = extras.get("aesthetic_score", REFINER_AESTHETIC[role])
                y = refiner_vector(pooled, orig, crop, score)
            else:
                target = (extras.get("target_height", height), extras.get("target_width", width))
                y = base_vector(pooled, orig, crop, target)
            prepared.append({
                "context": context.to(device) if device is not None else context,
                "y": y.to(device) if device is not None else y,
                "start_percent": extras.get("start_percent", 0.0),
                "end_percent": extras.get("end_percent", 1.0),
                "strength": extras.get("strength", 1.0),
            })
        return prepared
