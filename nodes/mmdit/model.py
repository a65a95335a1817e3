"""SD3's MODEL value (nodes.sampling.denoiser's protocol). The MMDiT takes what an SDXL UNet takes, ``(x, t,
context, y)``, so UNetDenoiser's call and conditioning glue serve it unchanged, with the MMDiT as the network
(its ``unet``), rectified-flow sampling and the pooled CLIP-L ‖ CLIP-G vector as ``y``."""
from __future__ import annotations

from dataclasses import dataclass

from ..sdxl.model import UNetDenoiser


@dataclass(eq=False)
class MMDiTModel(UNetDenoiser):
    def vector(self, extras: dict, role: str, latent_hw: tuple[int, int]) -> dict:
        pooled, want = extras.get("pooled_output"), self.unet.config.pooled_dim
        if pooled is None or pooled.shape[-1] != want:
            found = "none" if pooled is None else f"{pooled.shape[-1]} values"
            raise ValueError(f"this {self.kind} model needs a pooled text vector of {want} values (CLIP-L ‖ CLIP-G), "
                             f"the conditioning has {found}; encode the prompt with an SD3 CLIP")
        return {"y": pooled}
