"""Samplers: the SDXL base sampler and the paper's SDEdit refiner sampler, and ComfyUI's KSampler /
KSamplerAdvanced, all on one function (``run_sampler``) over nodes.sampling.ksampler.sample.

The MODEL value (nodes.sampling.denoiser) turns CONDITIONING entries into its network's inputs (SDXL: the context
and the vector ``y``, sizes defaulting to the latent's size × 8, the refiner's aesthetic score to 6.0 / 2.5 by
role); the sampler knows no family. Progress goes to ``ctx.progress`` with a cheap latent preview in the model's
latent format, which is also where an interruption stops the run.
"""
from __future__ import annotations


import torch

from ..controlnet import with_uncond_controls
from ..node import Input, Output, node
from ..sampling.denoiser import entry_modules
from ..sampling.ksampler import sample, sdedit_sigmas
from ..sampling.preview import latent_to_rgb
from ..sampling.samplers import SAMPLER_NAMES
from ..sampling.schedules import SCHEDULER_NAMES
from ..types import CONDITIONING, LATENT, MODEL
from .loaders import device_of, on_device

SEED_MAX = 0xFFFF_FFFF_FFFF_FFFF
STEP_MAX = 10000
REFINER_TIMESTEPS = 200  # the refiner is trained on the first 200 of the 1000 noise levels (SDXL report §2.5)


# -- shared function ----------------------------------------------------------------------------------------------

def _prepare(model, conditioning, role: str, latent_hw, device, seed: int, what: str) -> list[dict]:
    try:
        return model.prepare(conditioning, role, latent_hw, device=device, seed=seed)
    except ValueError as exc:
        raise ValueError(f"{what}: input '{role}': {exc}") from None


def _fit_channels(model, samples: torch.Tensor, what: str) -> torch.Tensor:
    """The latent in the model's channel count. An empty (all-zero) latent of another count becomes zeros of the
    right one, as in ComfyUI, so Empty Latent Image serves every family; any other mismatch is an error."""
    want = model.latent_format.channels
    if samples.shape[1] == want:
        return samples
    if not samples.any():
        return samples.new_zeros((samples.shape[0], want, *samples.shape[2:]))
    raise ValueError(f"{what}: input 'latent_image' has {samples.shape[1]} channels but this {model.kind} model "
                     f"works on {want}-channel latents; encode the image with this checkpoint's VAE")


def _resident(ctx, modules: list, device, what: str) -> None:
    """Make every module the sampling needs resident on ``device`` (the denoising network last: it matters most)."""
    for module in modules:
        on_device(ctx, module)
    if any(device_of(m) != device for m in modules):
        raise RuntimeError(f"{what}: the device's memory budget cannot hold the model and its ControlNets at once")


def run_sampler(ctx, model, positive, negative, latent: dict, *, node: str, **options) -> dict:
    """Denoise `latent` with `model`; `options` are ksampler.sample's keywords (seed, steps, cfg, sampler_name,
    scheduler, denoise, start_step, end_step, add_noise, return_leftover_noise, sigmas)."""
    return sample_with_denoised(ctx, model, positive, negative, latent, node=node, **options)[0]


def sample_with_denoised(ctx, model, positive, negative, latent: dict, *, node: str, **options) -> tuple[dict, dict]:
    """``run_sampler``'s latent and the last step's denoised estimate x0 as a latent (the input latent when no step
    ran): SamplerCustom's two outputs."""
    module = on_device(ctx, model.module)
    device = device_of(module)
    samples = _fit_channels(model, latent["samples"], node)
    hw = tuple(samples.shape[-2:])
    seed = options.get("seed", 0)
    pos = _prepare(model, positive, "positive", hw, device, seed, node)
    neg = _prepare(model, with_uncond_controls(positive, negative), "negative", hw, device, seed, node)
    _resident(ctx, [*entry_modules(pos + neg), module], device, node)
    work = {**latent, "samples": samples.to(device)}
    if work.get("noise_mask") is not None:
        work["noise_mask"] = work["noise_mask"].to(device)
    last = {}

    def progress(step, total, x0):
        last["x0"] = x0
        ctx.progress(step, total, latent_to_rgb(x0, model.latent_format))

    out = sample(model.eps_fn(module), model.sampling, work, pos, neg, callback=progress, node=node, **options)
    out["samples"] = out["samples"].cpu()
    if out.get("noise_mask") is not None:
        out["noise_mask"] = out["noise_mask"].cpu()
    denoised = {**out, "samples": last["x0"].cpu()} if last else out
    return out, denoised


# -- fine-grained nodes -------------------------------------------------------------------------------------------

@node(category="sdxl/sampling", outputs=[Output(LATENT)], display_name="SDXL UNet Sampler", version="1.0.0")
class SDXLSampler:
    """Denoise a latent with the SDXL UNet and classifier-free guidance. Full text-to-image by default; denoise < 1
    for image-to-image; a start/end step window with leftover noise for the base → refiner ensemble of experts
    (the base stops at end_step keeping its noise, the refiner continues from there without adding any).
    Defaults are the SDXL reference demo's: 40 steps, guidance 5.0, Euler."""
    model: MODEL = Input()
    positive: CONDITIONING = Input()
    negative: CONDITIONING = Input()
    latent_image: LATENT = Input()
    seed: int = Input(default=0, min=0, max=SEED_MAX, control_after_generate=True,
                      description="the initial noise is drawn on the CPU from this seed: same seed, same image on any device")
    steps: int = Input(default=40, min=1, max=STEP_MAX)
    cfg: float = Input(default=5.0, min=0.0, max=100.0, step=0.1, round=0.01, description="guidance scale")
    sampler_name: str = Input(default="euler", choices=SAMPLER_NAMES)
    scheduler: str = Input(default="normal", choices=SCHEDULER_NAMES)
    denoise: float = Input(default=1.0, min=0.0, max=1.0, step=0.01)
    start_step: int = Input(default=0, min=0, max=STEP_MAX)
    end_step: int = Input(default=STEP_MAX, min=0, max=STEP_MAX)
    add_noise: bool = Input(default=True)
    return_leftover_noise: bool = Input(default=False)

    def run(self, ctx):
        return (run_sampler(ctx, self.model, self.positive, self.negative, self.latent_image, node="SDXLSampler",
                            seed=self.seed, steps=self.steps, cfg=self.cfg, sampler_name=self.sampler_name,
                            scheduler=self.scheduler, denoise=self.denoise, start_step=self.start_step,
                            end_step=self.end_step, add_noise=self.add_noise,
                            return_leftover_noise=self.return_leftover_noise),)


@node(category="sdxl/sampling", outputs=[Output(LATENT)], display_name="SDXL Refiner Sampler (SDEdit)", version="1.0.0")
class SDXLRefinerSampler:
    """Refine a latent with the SDXL refiner. mode 'sdedit' (the paper's refinement): the finished base latent is
    noised again to a level inside the refiner's specialised range — strength 1.0 is the top of its first 200
    noise levels (t = 199, σ ≈ 0.57), 0.3 is t = 59 — and denoised from there over `steps` steps.
    mode 'continue': the latent still carries the base's leftover noise (base sampler with end_step and
    return_leftover_noise); the refiner runs steps [start_step, steps) of the same schedule without adding noise."""
    model: MODEL = Input(description="the refiner's MODEL")
    positive: CONDITIONING = Input()
    negative: CONDITIONING = Input()
    latent_image: LATENT = Input()
    seed: int = Input(default=0, min=0, max=SEED_MAX, control_after_generate=True)
    steps: int = Input(default=10, min=1, max=STEP_MAX)
    cfg: float = Input(default=5.0, min=0.0, max=100.0, step=0.1, round=0.01)
    sampler_name: str = Input(default="euler", choices=SAMPLER_NAMES)
    scheduler: str = Input(default="normal", choices=SCHEDULER_NAMES)
    mode: str = Input(default="sdedit", choices=["sdedit", "continue"])
    strength: float = Input(default=0.3, min=0.01, max=1.0, step=0.01,
                            description="sdedit: how far into the refiner's 200 noise levels to re-noise")
    start_step: int = Input(default=0, min=0, max=STEP_MAX, description="continue: the base's end_step")

    def run(self, ctx):
        common = dict(seed=self.seed, cfg=self.cfg, sampler_name=self.sampler_name, scheduler=self.scheduler)
        if self.mode == "sdedit":
            sigmas = sdedit_sigmas(self.model.sampling, self.scheduler, self.steps, self.strength, REFINER_TIMESTEPS)
            out = run_sampler(ctx, self.model, self.positive, self.negative, self.latent_image,
                              node="SDXLRefinerSampler", steps=self.steps, sigmas=sigmas, **common)
        else:
            out = run_sampler(ctx, self.model, self.positive, self.negative, self.latent_image,
                              node="SDXLRefinerSampler", steps=self.steps, start_step=self.start_step,
                              add_noise=False, **common)
        return (out,)


# -- ComfyUI nodes ------------------------------------------------------------------------------------------------

@node(category="sampling", outputs=[Output(LATENT)], display_name="KSampler", version="1.0.0")
class KSampler:
    """Denoise the latent with the model, guided by the positive and negative conditioning."""
    model: MODEL = Input(description="The model used for denoising the input latent.")
    seed: int = Input(default=0, min=0, max=SEED_MAX, control_after_generate=True,
                      description="The random seed used for creating the noise.")
    steps: int = Input(default=20, min=1, max=STEP_MAX, description="The number of steps used in the denoising process.")
    cfg: float = Input(default=8.0, min=0.0, max=100.0, step=0.1, round=0.01,
                       description="The Classifier-Free Guidance scale.")
    sampler_name: str = Input(choices=SAMPLER_NAMES, description="The algorithm used when sampling.")
    scheduler: str = Input(choices=SCHEDULER_NAMES, description="The scheduler controls how noise is removed.")
    positive: CONDITIONING = Input(description="What to include in the image.")
    negative: CONDITIONING = Input(description="What to exclude from the image.")
    latent_image: LATENT = Input(description="The latent image to denoise.")
    denoise: float = Input(default=1.0, min=0.0, max=1.0, step=0.01, description="The amount of denoising applied.")

    def run(self, ctx):
        return (run_sampler(ctx, self.model, self.positive, self.negative, self.latent_image, node="KSampler",
                            seed=self.seed, steps=self.steps, cfg=self.cfg, sampler_name=self.sampler_name,
                            scheduler=self.scheduler, denoise=self.denoise),)


@node(category="sampling", outputs=[Output(LATENT)], display_name="KSampler (Advanced)", version="1.0.0")
class KSamplerAdvanced:
    """KSampler with a step window, optional initial noise and leftover noise (base → refiner hand-offs)."""
    model: MODEL = Input()
    add_noise: str = Input(default="enable", choices=["enable", "disable"])
    noise_seed: int = Input(default=0, min=0, max=SEED_MAX, control_after_generate=True)
    steps: int = Input(default=20, min=1, max=STEP_MAX)
    cfg: float = Input(default=8.0, min=0.0, max=100.0, step=0.1, round=0.01)
    sampler_name: str = Input(choices=SAMPLER_NAMES)
    scheduler: str = Input(choices=SCHEDULER_NAMES)
    positive: CONDITIONING = Input()
    negative: CONDITIONING = Input()
    latent_image: LATENT = Input()
    start_at_step: int = Input(default=0, min=0, max=STEP_MAX)
    end_at_step: int = Input(default=STEP_MAX, min=0, max=STEP_MAX)
    return_with_leftover_noise: str = Input(default="disable", choices=["disable", "enable"])

    def run(self, ctx):
        return (run_sampler(ctx, self.model, self.positive, self.negative, self.latent_image,
                            node="KSamplerAdvanced", seed=self.noise_seed, steps=self.steps, cfg=self.cfg,
                            sampler_name=self.sampler_name, scheduler=self.scheduler, start_step=self.start_at_step,
                            end_step=self.end_at_step, add_noise=self.add_noise == "enable",
                            return_leftover_noise=self.return_with_leftover_noise == "enable"),)
