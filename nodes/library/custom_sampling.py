"""ComfyUI's custom-sampling nodes (category sampling/custom_sampling), what SDXL Turbo and LCM workflows are
built from: pick a sampler (KSamplerSelect), make a σ schedule (BasicScheduler, SDTurboScheduler, SplitSigmas),
choose the initial noise (RandomNoise, DisableNoise) and the guidance (CFGGuider, BasicGuider), and sample with them
(SamplerCustom, SamplerCustomAdvanced). They run on the same function as KSampler (sampling.sample_with_denoised),
so a seed gives the same noise, and the samplers draw the noise they declare.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..node import Input, Output, node
from ..sampling.samplers import SAMPLER_NAMES
from ..sampling.schedules import SCHEDULER_NAMES, ksampler_sigmas
from ..types import CONDITIONING, GUIDER, LATENT, MODEL, NOISE, SAMPLER, SIGMAS
from .sampling import SEED_MAX, STEP_MAX, sample_with_denoised

TURBO_TIMESTEPS = 10  # SDXL Turbo's distilled steps: timesteps 999, 899, …, 99
SAMPLED = [Output(LATENT, "output"), Output(LATENT, "denoised_output", "the last step's denoised estimate")]


@dataclass(frozen=True)
class Sampler:
    """The value on a SAMPLER socket: a sampler by name (nodes.sampling.samplers)."""
    name: str


@dataclass(frozen=True)
class Noise:
    """The value on a NOISE socket: the seed of the initial noise and of the samplers' own noise, and whether the
    initial noise is added at all (DisableNoise: seed 0 still seeds the per-step noise, as in ComfyUI)."""
    seed: int
    add: bool = True


@dataclass(frozen=True, eq=False)
class Guider:
    """The value on a GUIDER socket: a model with its positive and negative conditioning and the guidance scale."""
    model: object
    positive: list
    negative: list
    cfg: float


def _sample(ctx, what: str, model, positive, negative, cfg: float, noise: Noise, sampler: Sampler, sigmas, latent):
    return sample_with_denoised(ctx, model, positive, negative, latent, node=what, seed=noise.seed, cfg=cfg,
                                sampler_name=sampler.name, sigmas=sigmas, add_noise=noise.add)


@node(category="sampling/custom_sampling/samplers", outputs=[Output(SAMPLER)], display_name="KSamplerSelect",
      version="1.0.0")
class KSamplerSelect:
    """A sampler for SamplerCustom / SamplerCustomAdvanced."""
    sampler_name: str = Input(choices=SAMPLER_NAMES)

    def run(self, ctx):
        return (Sampler(self.sampler_name),)


@node(category="sampling/custom_sampling/schedulers", outputs=[Output(SIGMAS)], display_name="BasicScheduler",
      version="1.0.0")
class BasicScheduler:
    """The σ schedule a KSampler with this scheduler, step count and denoise would run."""
    model: MODEL = Input()
    scheduler: str = Input(choices=SCHEDULER_NAMES)
    steps: int = Input(default=20, min=1, max=STEP_MAX)
    denoise: float = Input(default=1.0, min=0.0, max=1.0, step=0.01)

    def run(self, ctx):
        return (ksampler_sigmas(self.model.sampling, self.scheduler, self.steps, self.denoise),)


@node(category="sampling/custom_sampling/schedulers", outputs=[Output(SIGMAS)], display_name="SDTurboScheduler",
      version="1.0.0")
class SDTurboScheduler:
    """SDXL Turbo's schedule (Sauer et al. 2023, adversarial diffusion distillation): up to 10 steps at timesteps
    999, 899, …, 99; denoise < 1 starts further down that list (0.5 → 499), for img2img."""
    model: MODEL = Input()
    steps: int = Input(default=1, min=1, max=TURBO_TIMESTEPS)
    denoise: float = Input(default=1.0, min=0.0, max=1.0, step=0.01)

    def run(self, ctx):
        start = TURBO_TIMESTEPS - int(TURBO_TIMESTEPS * self.denoise)
        timesteps = (torch.arange(TURBO_TIMESTEPS, 0, -1) * 100 - 1)[start:start + self.steps]
        sigmas = self.model.sampling.sigma(timesteps.float())
        return (torch.cat([sigmas, sigmas.new_zeros(1)]),)


@node(category="sampling/custom_sampling/sigmas", outputs=[Output(SIGMAS, "high_sigmas"), Output(SIGMAS, "low_sigmas")],
      display_name="SplitSigmas", version="1.0.0")
class SplitSigmas:
    """Split a schedule at a step: σ₀…σ_step and σ_step…σ_end (the σ at the split is in both), e.g. for a base
    and a refiner."""
    sigmas: SIGMAS = Input()
    step: int = Input(default=0, min=0, max=STEP_MAX)

    def run(self, ctx):
        return self.sigmas[:self.step + 1], self.sigmas[self.step:]


@node(category="sampling/custom_sampling/noise", outputs=[Output(NOISE)], display_name="RandomNoise", version="1.0.0")
class RandomNoise:
    """Initial noise drawn on the CPU from a seed (the same noise KSampler draws)."""
    noise_seed: int = Input(default=0, min=0, max=SEED_MAX, control_after_generate=True)

    def run(self, ctx):
        return (Noise(self.noise_seed),)


@node(category="sampling/custom_sampling/noise", outputs=[Output(NOISE)], display_name="DisableNoise", version="1.0.0")
class DisableNoise:
    """No initial noise: sample the latent as it is (it already carries its noise)."""

    def run(self, ctx):
        return (Noise(0, add=False),)


@node(category="sampling/custom_sampling/guiders", outputs=[Output(GUIDER)], display_name="CFGGuider", version="1.0.0")
class CFGGuider:
    """Classifier-free guidance between the positive and negative conditioning."""
    model: MODEL = Input()
    positive: CONDITIONING = Input()
    negative: CONDITIONING = Input()
    cfg: float = Input(default=8.0, min=0.0, max=100.0, step=0.1, round=0.01)

    def run(self, ctx):
        return (Guider(self.model, self.positive, self.negative, self.cfg),)


@node(category="sampling/custom_sampling/guiders", outputs=[Output(GUIDER)], display_name="BasicGuider",
      version="1.0.0")
class BasicGuider:
    """The model on one conditioning, without guidance (for distilled models such as SDXL Turbo)."""
    model: MODEL = Input()
    conditioning: CONDITIONING = Input()

    def run(self, ctx):
        return (Guider(self.model, self.conditioning, [], 1.0),)


@node(category="sampling/custom_sampling", outputs=SAMPLED, display_name="SamplerCustom", version="1.0.0")
class SamplerCustom:
    """Denoise the latent with a chosen sampler on a given σ schedule, guided by the positive and negative
    conditioning."""
    model: MODEL = Input()
    add_noise: bool = Input(default=True)
    noise_seed: int = Input(default=0, min=0, max=SEED_MAX, control_after_generate=True)
    cfg: float = Input(default=8.0, min=0.0, max=100.0, step=0.1, round=0.01)
    positive: CONDITIONING = Input()
    negative: CONDITIONING = Input()
    sampler: SAMPLER = Input()
    sigmas: SIGMAS = Input()
    latent_image: LATENT = Input()

    def run(self, ctx):
        return _sample(ctx, "SamplerCustom", self.model, self.positive, self.negative, self.cfg,
                       Noise(self.noise_seed, self.add_noise), self.sampler, self.sigmas, self.latent_image)


@node(category="sampling/custom_sampling", outputs=SAMPLED, display_name="SamplerCustomAdvanced", version="1.0.0")
class SamplerCustomAdvanced:
    """SamplerCustom with the noise and the guidance as inputs of their own."""
    noise: NOISE = Input()
    guider: GUIDER = Input()
    sampler: SAMPLER = Input()
    sigmas: SIGMAS = Input()
    latent_image: LATENT = Input()

    def run(self, ctx):
        g = self.guider
        return _sample(ctx, "SamplerCustomAdvanced", g.model, g.positive, g.negative, g.cfg, self.noise, self.sampler,
                       self.sigmas, self.latent_image)
