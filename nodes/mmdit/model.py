"""SD3's MODEL value (nodes.sampling.denoiser's protocol). The MMDiT takes what an SDXL UNet takes, ``(x, t,
context, y)``, so UNetDenoiser's conditioning glue serves it, with the MMDiT as the network (its ``unet``),
rectified-flow sampling and the pooled CLIP-L ‖ CLIP-G vector as ``y``. It takes no ControlNet residuals (SD3's
ControlNets are MMDiT-shaped; not supported yet)."""
from __future__ import annotations

from dataclasses import dataclass

from ..sdxl.model import UNetDenoiser


@dataclass(eq=False)
class MMDiTModel(UNetDenoiser):
    def eps_fn(self, mmdit=None):
        """The MMDiT call the sampler makes: ``eps(x_in, t, context, y)`` in the MMDiT's dtype, answered in fp32."""
        net = mmdit or self.unet
        dtype = next(net.parameters()).dtype

        def eps(x_in, timesteps, context, y):
            return net(x_in.to(dtype), timesteps, context.to(dtype), y.to(dtype)).float()

        return eps

    def vector(self, extras: dict, role: str, latent_hw: tuple[int, int], seed: int) -> dict:
        if extras.get("control") is not None:
            raise ValueError(f"this {self.kind} model takes no ControlNet (the ControlNets here are UNet ones)")
        pooled, want = extras.get("pooled_output"), self.unet.config.pooled_dim
        if pooled is None or pooled.shape[-1] != want:
            found = "none" if pooled is None else f"{pooled.shape[-1]} values"
            raise ValueError(f"this {self.kind} model needs a pooled text vector of {want} values (CLIP-L ‖ CLIP-G), "
                             f"the conditioning has {found}; encode the prompt with an SD3 CLIP")
        return {"y": pooled}
