"""The MODEL socket value for the UNet families (nodes.sampling.denoiser's protocol): a UNet with its noise schedule
and latent format, and the glue from CONDITIONING entries (ComfyUI's ``[context, {"pooled_output", sizes...}]``)
to the UNet's inputs. SD 1.x and 2.x give the UNet the text context alone; SDXL adds its vector ``y``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ..latent_format import LatentFormat
from ..sampling.guidance import guidance_options
from ..unclip import image_vector
from .conditioning import N_SCALARS, base_vector, refiner_vector
from .configs import FOURIER_DIM, SDXL_LATENT

# Aesthetic score the refiner is conditioned on when the conditioning does not say (sgm demo, diffusers, ComfyUI).
REFINER_AESTHETIC = {"positive": 6.0, "negative": 2.5}


@dataclass(eq=False)
class UNetDenoiser:
    unet: torch.nn.Module
    kind: str  # the family (nodes.families), e.g. "sd1"
    sampling: object  # nodes.sampling.schedules.ModelSampling
    latent_format: LatentFormat
    name: str = ""  # where it came from (file name), for messages and residency keys

    @property
    def module(self) -> torch.nn.Module:
        return self.unet

    def with_sampling(self, sampling) -> "UNetDenoiser":
        return dataclasses.replace(self, sampling=sampling)

    def eps_fn(self, unet: torch.nn.Module | None = None):
        """The UNet call the sampler makes: ``eps(x_in, t, context, y, control)``, in the UNet's dtype, answered in
        fp32. ``control`` (nodes.controlnet.Control) adds its ControlNets' residuals."""
        net = unet or self.unet
        dtype = next(net.parameters()).dtype

        def eps(x_in, timesteps, context, y=None, control=None):
            x_in, context, y = x_in.to(dtype), context.to(dtype), None if y is None else y.to(dtype)
            residuals = None if control is None else control.residuals(x_in, timesteps, context, y, self.sampling)
            return net(x_in, timesteps, context, y, residuals).float()

        return eps

    def prepare(self, conditioning: list, role: str, latent_hw: tuple[int, int], device=None,
                seed: int = 0) -> list[dict]:
        """CONDITIONING entries → the sampler's condition dicts: ``context`` (and SDXL's ``y``) plus the guidance keys
        (timestep range, strength, area / mask). `role` is "positive" or "negative"; `latent_hw` is the latent's
        (h, w); `seed` the sampler's (unCLIP image embeddings are noise-augmented with it)."""
        want = self.unet.config.context_dim
        prepared = []
        for context, extras in conditioning:
            if context.shape[-1] != want:
                raise ValueError(f"the conditioning has {context.shape[-1]} channels per token but this {self.kind} "
                                 f"model expects {want}; encode the prompt with this checkpoint's CLIP")
            inputs = {"context": context, **self.vector(extras, role, latent_hw, seed)}
            inputs = {k: v.to(device) if device is not None else v for k, v in inputs.items()}
            if extras.get("control") is not None:
                extras["control"].check(self.unet.config, self.kind)
                inputs["control"] = extras["control"]
            prepared.append({**inputs, **guidance_options(extras, latent_hw, device)})
        return prepared

    def vector(self, extras: dict, role: str, latent_hw: tuple[int, int], seed: int) -> dict:
        """Inputs besides the context that an entry gives the UNet; none for SD 1.x / 2.x (which, as in ComfyUI,
        ignore unCLIP image conditioning)."""
        return {}


@dataclass(eq=False)
class SDXLModel(UNetDenoiser):
    """SDXL's UNet also takes the vector ``y``: bigG's pooled embedding and Fourier features of the sizes (base) or
    of the sizes and the aesthetic score (refiner)."""
    latent_format: LatentFormat = SDXL_LATENT

    @property
    def is_refiner(self) -> bool:
        return self.kind == "sdxl_refiner"

    def vector(self, extras: dict, role: str, latent_hw: tuple[int, int], seed: int) -> dict:
        """Sizes the conditioning leaves out default to the output image size (latent × 8). With unCLIP image
        conditioning (SDXL "revision") the images' embeddings take the place of the text's pooled vector."""
        height, width = latent_hw[0] * 8, latent_hw[1] * 8
        pooled = extras.get("pooled_output")
        if extras.get("unclip_conditioning"):
            pooled = image_vector(extras["unclip_conditioning"], seed,
                                  self.unet.config.adm_in_channels - N_SCALARS[self.kind] * FOURIER_DIM)
        if pooled is None:
            raise ValueError("this conditioning has no pooled output; SDXL needs the OpenCLIP bigG pooled vector")
        orig = (extras.get("height", height), extras.get("width", width))
        crop = (extras.get("crop_h", 0), extras.get("crop_w", 0))
        if self.is_refiner:
            score = extras.get("aesthetic_score", REFINER_AESTHETIC[role])
            return {"y": refiner_vector(pooled, orig, crop, score)}
        target = (extras.get("target_height", height), extras.get("target_width", width))
        return {"y": base_vector(pooled, orig, crop, target)}
