"""diffusers SDXL pipelines as a test-only oracle, built from the same files our loaders read.

- Base: ``StableDiffusionXLPipeline`` whose components come from the demo's diffusers folder through diffusers' and
  transformers' own ``from_pretrained`` (our side loads the single file, so the two layouts are crossed).
- Refiner: the demo ships it as a single file only; ``refiner_folder`` converts it with diffusers' own
  original→diffusers converters, saves a diffusers folder and the pipeline loads that folder.
- Tokenizers: HF ``CLIPTokenizer`` built offline from open_clip's BPE file (sdxl.md §12), parsed here without our
  tokenizer code; ``tokenizer_2`` pads with ``"!"`` (id 0) as diffusers' SDXL does (sdxl.md §4.4).
- Schedulers configured to ComfyUI's ``karras`` σ list (sdxl.md pitfalls: ``linspace`` spacing keeps σ_min = σ_0).
"""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from tests.oracles import COMMON, UNET_KWARGS, VAE_KWARGS

SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                prediction_type="epsilon", timestep_spacing="linspace", use_karras_sigmas=True,
                final_sigmas_type="zero")
REFINER_BIGG_PREFIX = "conditioner.embedders.0.model."


def euler_karras():
    """Euler on ComfyUI's karras σ; the UNet gets fractional t (log-σ interpolation, ``_sigma_to_t``)."""
    from diffusers import EulerDiscreteScheduler
    return EulerDiscreteScheduler(**SCHEDULE)


def dpmpp_2m_karras():
    """DPM-Solver++(2M) on ComfyUI's karras σ; diffusers rounds its Karras timesteps to integers."""
    from diffusers import DPMSolverMultistepScheduler
    return DPMSolverMultistepScheduler(**SCHEDULE, algorithm_type="dpmsolver++", solver_order=2,
                                       solver_type="midpoint", lower_order_final=True)


def _bytes_to_unicode() -> dict[int, str]:
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in printable]
    return {b: chr(c) for b, c in zip(printable + extra, printable + [256 + n for n in range(len(extra))])}


def hf_tokenizers():
    """(tokenizer, tokenizer_2) as diffusers' SDXL uses them, from open_clip's vocabulary file."""
    import importlib.util

    from transformers import CLIPTokenizer
    path = Path(list(importlib.util.find_spec("open_clip").submodule_search_locations)[0]) / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.open(path).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    merges = [tuple(line.split()) for line in lines]
    chars = list(_bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)
    tok_2 = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77, pad_token="!")
    return tok, tok_2


def _strict(cls, folder: Path, **kwargs):
    """``cls.from_pretrained(folder)``, failing on any missing or unexpected weight (a silent partial load would
    make the oracle wrong)."""
    model, info = cls.from_pretrained(folder, output_loading_info=True, **kwargs)
    bad = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs") and v}
    assert not bad, f"{folder}: {bad}"
    return model.eval()


def base_pipeline(folder: Path, scheduler, dtype: torch.dtype = torch.float32):
    """The base pipeline with every model in `dtype` (transformers 5 would keep the file's own dtype)."""
    from diffusers import AutoencoderKL, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection
    tok, tok_2 = hf_tokenizers()
    return StableDiffusionXLPipeline(
        vae=_strict(AutoencoderKL, folder / "vae", torch_dtype=dtype),
        unet=_strict(UNet2DConditionModel, folder / "unet", torch_dtype=dtype),
        text_encoder=_strict(CLIPTextModel, folder / "text_encoder", dtype=dtype),
        text_encoder_2=_strict(CLIPTextModelWithProjection, folder / "text_encoder_2", dtype=dtype),
        tokenizer=tok, tokenizer_2=tok_2, scheduler=scheduler, force_zeros_for_empty_prompt=True)


def refiner_folder(single_file: Path, out: Path) -> Path:
    """The refiner single file as a diffusers folder, converted by diffusers' own converters (strict loads)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import (convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint,
                                                     convert_open_clip_checkpoint)
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection
    sd = load_file(str(single_file))
    unet = UNet2DConditionModel(**{**COMMON, **UNET_KWARGS["refiner"]})
    unet.load_state_dict(convert_ldm_unet_checkpoint(sd, dict(unet.config)), strict=True)
    vae = AutoencoderKL(**VAE_KWARGS)
    vae.load_state_dict(convert_ldm_vae_checkpoint(sd, dict(vae.config)), strict=True)
    width = sd[REFINER_BIGG_PREFIX + "ln_final.weight"].shape[0]
    blocks = REFINER_BIGG_PREFIX + "transformer.resblocks."
    layers = len({k[len(blocks):].split(".")[0] for k in sd if k.startswith(blocks)})
    text = CLIPTextModelWithProjection(CLIPTextConfig(
        hidden_size=width, intermediate_size=4 * width, num_attention_heads=4, num_hidden_layers=layers,
        vocab_size=49408, max_position_embeddings=77, hidden_act="gelu", projection_dim=width))
    text_sd = convert_open_clip_checkpoint(text, sd, prefix=REFINER_BIGG_PREFIX)
    missing, unexpected = text.load_state_dict(text_sd, strict=False)
    assert not unexpected and not [k for k in missing if not k.endswith("position_ids")], (missing, unexpected)
    for name, model in (("unet", unet), ("vae", vae), ("text_encoder_2", text)):
        model.save_pretrained(out / name)
    (out / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionXLImg2ImgPipeline", "requires_aesthetics_score": True,
        "force_zeros_for_empty_prompt": False}))
    return out


def refiner_pipeline(folder: Path, scheduler):
    from diffusers import AutoencoderKL, StableDiffusionXLImg2ImgPipeline, UNet2DConditionModel
    from transformers import CLIPTextModelWithProjection
    _, tok_2 = hf_tokenizers()
    return StableDiffusionXLImg2ImgPipeline(
        vae=_strict(AutoencoderKL, folder / "vae"), unet=_strict(UNet2DConditionModel, folder / "unet"),
        text_encoder=None, text_encoder_2=_strict(CLIPTextModelWithProjection, folder / "text_encoder_2"),
        tokenizer=None, tokenizer_2=tok_2, scheduler=scheduler, requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=False)


def seeded_noise(shape, seed: int) -> torch.Tensor:
    """diffusers' own initial draw (``randn_tensor`` with a CPU generator), before ``init_noise_sigma``."""
    from diffusers.utils.torch_utils import randn_tensor
    return randn_tensor(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)
