"""unCLIP image conditioning: what ComfyUI's unCLIPConditioning puts on CONDITIONING entries, and the vector a model
gets from it. SDXL "revision" uses it on the base (and refiner): the pooled text vector in the UNet's vector input
is replaced by CLIP image embeddings (bigG's, 1280 wide).

unCLIPConditioning appends ``{"clip_vision_output", "strength", "noise_augmentation"}`` to the entry's
``unclip_conditioning`` list. At sampling time each image's embedding is noise-augmented — diffused to noise level
``round(999 · noise_augmentation)`` of a 1000-step cosine schedule (``squaredcos_cap_v2``): √ᾱ·e + √(1 − ᾱ)·ε —
and multiplied by its strength; several images (across entries, and within a batch) are summed and the sum is
augmented once more at level 0. As in ComfyUI the noise ε is drawn on the CPU from the sampler's seed − 10, so a
seed gives the same picture, and level 0 still adds a trace of noise (√(1 − ᾱ₀) ≈ 0.0064). ComfyUI draws the
merge step's noise unseeded; here it comes from the same seed, so every run is reproducible.
"""
from __future__ import annotations

import functools
import math

import torch

NOISE_LEVELS = 1000
SEED_OFFSET = -10  # ComfyUI seeds the augmentation noise with the sampler's seed − 10


@functools.cache
def _schedule() -> tuple[torch.Tensor, torch.Tensor]:
    """√ᾱ_t and √(1 − ᾱ_t) of the cosine schedule (betas capped at 0.999), computed in float64, kept in float32."""
    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = torch.tensor([min(1 - alpha_bar((i + 1) / NOISE_LEVELS) / alpha_bar(i / NOISE_LEVELS), 0.999)
                          for i in range(NOISE_LEVELS)], dtype=torch.float64)
    alphas_cumprod = torch.cumprod(1 - betas, 0)
    return alphas_cumprod.sqrt().float(), (1 - alphas_cumprod).sqrt().float()


def noise_augment(embed: torch.Tensor, level: float, seed: int) -> torch.Tensor:
    """One embedding [D] or [1, D] → [1, D] diffused to noise level ``round(999 · level)``."""
    t = round((NOISE_LEVELS - 1) * level)
    signal, noise_scale = (s[t] for s in _schedule())
    x = embed.float().reshape(1, -1).cpu()
    generator = torch.Generator().manual_seed((seed + SEED_OFFSET) & 0xFFFF_FFFF_FFFF_FFFF)
    return signal * x + noise_scale * torch.randn(x.shape, generator=generator)


def add_image(conditioning: list, clip_vision_output, strength: float, noise_augmentation: float) -> list:
    """unCLIPConditioning: each entry gets the image appended to its ``unclip_conditioning`` list (new entries; the
    input is shared and never changed). Strength 0 leaves the conditioning as it is."""
    if strength == 0:
        return conditioning
    item = {"clip_vision_output": clip_vision_output, "strength": strength, "noise_augmentation": noise_augmentation}
    return [[context, {**extras, "unclip_conditioning": [*extras.get("unclip_conditioning", ()), item]}]
            for context, extras in conditioning]


def image_vector(unclip: list, seed: int, width: int) -> torch.Tensor:
    """The [1, width] vector that stands for the text's pooled output: every image's embedding, augmented and
    weighted, summed. Raises ValueError when the embeddings are not `width` wide (another CLIP vision tower)."""
    parts = []
    for item in unclip:
        embeds = item["clip_vision_output"].image_embeds
        if embeds.shape[-1] != width:
            raise ValueError(f"the CLIP vision output's image embeddings are {embeds.shape[-1]} wide but this model's "
                             f"pooled input is {width} wide; use the CLIP vision model made for it (SDXL: "
                             "clip_vision_g, OpenCLIP ViT-bigG)")
        parts += [noise_augment(embed, item["noise_augmentation"], seed) * item["strength"] for embed in embeds]
    if len(parts) == 1:
        return parts[0]
    return noise_augment(torch.stack(parts).sum(0), 0.0, seed)
