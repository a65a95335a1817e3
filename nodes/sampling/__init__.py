"""Sampling: noise schedules behind a model-sampling interface, k-diffusion samplers as pure functions, CFG,
KSampler semantics, seeded noise and latent previews. Model-agnostic: the network is a callable, and a MODEL is
anything that keeps the denoiser protocol (denoiser.py).

The API the node library calls:

    ms = model.sampling                                    # e.g. DiscreteEps() for SDXL
    sigmas = ksampler_sigmas(ms, "karras", 25, denoise=1.0, sampler_name="dpmpp_2m")
    out = sample(model.eps_fn(), ms, {"samples": z}, positive, negative, seed=0, steps=25, cfg=7.0,
                 sampler_name="dpmpp_2m", scheduler="karras", callback=on_step)
    image = latent_to_rgb(x0, model.latent_format)         # preview inside on_step
"""
from .guidance import cfg_denoiser, conditioning_entries
from .ksampler import ensemble_of_experts, expert_switch_step, sample, sdedit_sigmas, window_sigmas
from .noise import BrownianTreeNoiseSampler, ancestral_noise_sampler, prepare_noise
from .preview import latent_to_rgb
from .samplers import SAMPLER_NAMES, SAMPLERS
from .schedules import SCHEDULER_NAMES, DiscreteEps, ModelSampling, get_sigmas, ksampler_sigmas

__all__ = [
    "BrownianTreeNoiseSampler", "DiscreteEps", "ModelSampling", "SAMPLERS", "SAMPLER_NAMES", "SCHEDULER_NAMES",
    "ancestral_noise_sampler", "cfg_denoiser", "conditioning_entries", "ensemble_of_experts", "expert_switch_step",
    "get_sigmas",
    "ksampler_sigmas", "latent_to_rgb", "prepare_noise", "sample", "sdedit_sigmas", "window_sigmas",
]
