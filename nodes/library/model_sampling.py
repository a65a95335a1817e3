"""Model sampling overrides: which parameterisation a MODEL is sampled with (ComfyUI's "advanced/model" nodes).
The returned MODEL shares the input's weights (nodes.sampling.denoiser ``with_sampling``)."""
from __future__ import annotations

from ..node import Input, Output, node
from ..sampling.schedules import DISCRETE
from ..types import MODEL


@node(category="advanced/model", outputs=[Output(MODEL)], display_name="ModelSamplingDiscrete", version="1.0.0")
class ModelSamplingDiscrete:
    """Sample the model as an ε-, v- or x0-prediction model, or as a latent consistency model (LCM: 50 distilled
    timesteps and its boundary condition, for LCM LoRAs), on the scaled-linear schedule; zsnr rescales that schedule
    to zero terminal SNR (Lin et al. 2023) for models trained so."""
    model: MODEL = Input()
    sampling: str = Input(default="eps", choices=list(DISCRETE))
    zsnr: bool = Input(default=False)

    def run(self, ctx):
        return (self.model.with_sampling(DISCRETE[self.sampling](zsnr=self.zsnr)),)
