"""Model sampling overrides: which parameterisation a MODEL is sampled with (ComfyUI's "advanced/model" nodes).
The returned MODEL shares the input's weights (nodes.sampling.denoiser ``with_sampling``)."""
from __future__ import annotations

from ..node import Input, Output, node
from ..sampling.schedules import DISCRETE, DiscreteFlow
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


@node(category="advanced/model", outputs=[Output(MODEL)], display_name="ModelSamplingSD3", version="1.0.0")
class ModelSamplingSD3:
    """Sample the model as a rectified-flow model (SD3) whose timesteps are shifted towards noise by `shift`:
    σ = shift·t / (1 + (shift − 1)·t). Larger shifts spend more of the steps at high noise, which large images
    need; SD3 medium was trained with 3.0."""
    model: MODEL = Input()
    shift: float = Input(default=3.0, min=0.0, max=100.0, step=0.01)

    def run(self, ctx):
        return (self.model.with_sampling(DiscreteFlow(self.shift)),)
