"""The denoiser protocol: what a MODEL socket carries, and all a sampler node may ask of it.

Sampling is model-agnostic. A sampler node makes ``model.module`` resident on its device, turns CONDITIONING into
condition entries with ``model.prepare``, and hands ``model.eps_fn(module)`` and ``model.sampling`` to
``nodes.sampling.ksampler.sample``, which builds the guided ``D(x; σ)`` the k-diffusion samplers step on (guidance.py).
It never asks which family it runs: a family differs only in what these members do.

- ``sampling`` — the parameterisation (nodes.sampling.schedules.ModelSampling): the σ table or flow schedule the
  schedulers space their steps over, the timestep the network sees at σ, and how its raw output becomes x0
  (ε-, v- or x0-prediction, LCM's boundary condition; rectified flow fits the same methods), and for the samplers
  that inject noise how a sample holds its signal (α, the half-log-SNR, the ancestral split: σ-space by default).
- ``latent_format`` — the latent space it denoises (channels, scale, preview factors).
- ``prepare`` — CONDITIONING entries → condition entries: the network's inputs as tensors batched on dim 0
  (``context``, SDXL's vector ``y``; ``control``, the ControlNets applied, is an object) plus the guidance keys
  ``start_percent``, ``end_percent``, ``strength`` and the region ``area`` / ``mask``
  (``nodes.sampling.guidance.guidance_options`` reads them from CONDITIONING). Guidance batches entries whose inputs
  have equal shapes and passes them to the network by keyword, so a family adds an input without touching the
  sampler.
- ``eps_fn(module)`` — the raw network call ``net(x_in, t, **inputs)``, answered in float32. Its name is
  historical: it returns what the network predicts (ε, v, x0 or a flow velocity); ``sampling.calculate_denoised``
  turns that into x0.
- ``module`` — the nn.Module that must be resident while it samples; a patched copy (LoRA) is its own module
  and its own cached value, and the residency service counts it. Entries may need more (a ControlNet's):
  ``entry_modules`` lists them.
- ``with_sampling`` — the same model under another parameterisation (ModelSamplingDiscrete), sharing weights.
"""
from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from ..latent_format import LatentFormat
from .schedules import ModelSampling


class Network(Protocol):
    def __call__(self, x_in: torch.Tensor, timesteps: torch.Tensor, **inputs) -> torch.Tensor:
        """``x_in`` already scaled by ``sampling.calculate_input``, ``timesteps`` from ``sampling.timestep``, the
        condition entries' inputs batched like x_in; returns the raw prediction in float32."""


class Denoiser(Protocol):
    name: str  # where it came from (a file name), for messages and residency keys
    kind: str  # the family that made it (nodes.families), for messages
    sampling: ModelSampling
    latent_format: LatentFormat

    @property
    def module(self) -> nn.Module: ...

    def eps_fn(self, module: nn.Module | None = None) -> Network: ...

    def prepare(self, conditioning: list, role: str, latent_hw: tuple[int, int], device=None,
                seed: int = 0) -> list[dict]:
        """``role`` is "positive" or "negative"; ``latent_hw`` the latent's (h, w); ``seed`` the sampler's, for
        conditioning drawn at random (unCLIP's noise augmentation). Raises ValueError, saying what is wrong, for
        conditioning this model cannot use (another family's text encoder)."""

    def with_sampling(self, sampling: ModelSampling) -> "Denoiser": ...


def entry_modules(entries: list[dict]) -> list[nn.Module]:
    """The modules besides ``module`` that prepared entries need resident while sampling: an input that is not a
    tensor may name them with a ``modules()`` method (a ControlNet application, nodes.controlnet.Control)."""
    found = {}
    for entry in entries:
        for value in entry.values():
            for module in getattr(value, "modules", lambda: [])():
                found[id(module)] = module
    return list(found.values())
