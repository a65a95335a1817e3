"""Whole-pipeline parity with diffusers (issue #4) on the tiny random demo SDXL base and refiner.

Our side: ``load_checkpoint`` on the single files → ``SDXLTextEncoders.encode`` → ``SDXLModel.prepare`` →
``nodes.sampling.sample`` / ``ensemble_of_experts`` → ``vae_decode``. diffusers' side: ``StableDiffusionXLPipeline``
/ ``StableDiffusionXLImg2ImgPipeline`` loaded from diffusers folders of the same weights (tests/pipeline_oracle.py),
with the prompt and an explicit negative prompt encoded on both sides (ComfyUI semantics), same seed and CFG,
64×96 images (8×12 latents). The last test runs the product path end to end: ``latentgraph run`` on a ComfyUI API
graph (KSampler, two KSamplerAdvanced), comparing its PNGs with diffusers' 8-bit images.

Which timestep the UNet sees for a σ between table entries (sdxl.md §5.1) is the one place the two stacks differ by
rule, so every case runs with both of our rules:

- diffusers ``EulerDiscreteScheduler`` with Karras σ feeds fractional t (log-σ interpolation, e.g. 837.1207);
- diffusers ``DPMSolverMultistepScheduler`` with Karras σ rounds those to integers (837) — which is ComfyUI's
  nearest-log-σ rule, our default ``DiscreteEps()``; σ itself is never snapped on either side.

The matching rule agrees to float rounding (≤ 0.002/255); the other rule moves the image by 0.24–1.65/255 at most
and 0.03–0.18/255 on average (the constants below), i.e. at the level of 8-bit quantisation, far below anything
visible, and far above the tolerance, so the tests tell the rules apart.
"""
from __future__ import annotations

import contextlib
import inspect
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nodes.checkpoints import load_checkpoint
from nodes.sampling import DiscreteEps, ensemble_of_experts, expert_switch_step, get_sigmas, prepare_noise, sample
from nodes.sdxl.model import SDXLModel
from nodes.sdxl.vae import vae_decode
from server.cli import main
from tests import pipeline_oracle as oracle
from tests.oracles import demo_models

PROMPT, NEGATIVE = "a photo of a cat sitting on a red chair", "blurry, low quality"
SEED, CFG, REFINER_CFG = 7, 5.0, 4.0
HEIGHT, WIDTH = 64, 96  # not square, so a height/width mix-up in sizes or latents shows
TXT2IMG_STEPS, ENSEMBLE_STEPS, DENOISING_END = 6, 8, 0.8
LATENT_HW = (HEIGHT // 8, WIDTH // 8)

# Images are compared in [0, 1] (max |Δ| over pixels and channels); latents by max |Δ| / max |reference|.
# Matching timestep rule — measured (fp32, CPU, image std 0.29, latent std 18): image max |Δ| 7.3e-6 / 5.4e-6 /
# 5.8e-6 (Euler / DPM++ 2M / ensemble; ≤ 0.002/255), latent 3.8e-6 / 2.6e-6 / 2.8e-6 relative; y 4.8e-7.
IMAGE_TOL = 1e-4      # 0.026/255, ~15× the measured float-rounding level
LATENT_TOL = 3e-5     # ~8× measured
# The other timestep rule — measured image max |Δ| (mean): Euler 9.3e-4 = 0.24/255 (0.034/255), DPM++ 2M
# 1.8e-3 = 0.47/255 (0.058/255), ensemble 6.5e-3 = 1.65/255 (0.18/255); latents 7e-4 / 1e-3 / 3.2e-3 relative.
RULE_EFFECT_OVER_TOL = 3     # it is real: clearly above the tolerance (the test sees a sub-0.5 change of t) ...
RULE_EFFECT_OVER_ERR = 50    # ... and far above the matching rule's error (measured ratios 127 / 340 / 1119)
RULE_EFFECT_MAX = 2.0 / 255   # and it stays at 8-bit quantisation level
# diffusers builds its σ table from float32 betas, sgm / ComfyUI / we from float64: measured ≤ 1.3e-5 relative
# (largest at σ_0 = 0.0291675 vs 0.0291672; σ_max 14.614647 vs 14.614641), inherited by the Karras endpoints.
SIGMA_RTOL = 3e-5
# 8-bit PNGs through the CLI (both sides round): a one-level flip where |Δ| ≈ 1e-5 straddles a .5 boundary.
# Measured: 3 (txt2img) and 6 (ensemble) of 18432 values one level off, the rest equal.
PNG_MAX_LEVELS, PNG_MEAN_LEVELS = 1, 0.01


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # 8×12 latents: thread hand-offs cost more than they save, and on shared cores they cost seconds per call.
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="module")
def demo():
    return demo_models()


@pytest.fixture(scope="module")
def ours(demo):
    base, refiner = load_checkpoint(demo["sdxl_base"]), load_checkpoint(demo["sdxl_refiner"])

    def cond(text, refiner_side=False):
        context, pooled = refiner.text.encode_refiner(text) if refiner_side else base.text.encode(text, text)
        return [[context, {"pooled_output": pooled}]]

    return {"base": base, "refiner": refiner,
            "base_cond": (cond(PROMPT), cond(NEGATIVE)), "refiner_cond": (cond(PROMPT, True), cond(NEGATIVE, True))}


@pytest.fixture(scope="module")
def diffusers_base(demo):
    return oracle.base_pipeline(demo["sdxl_base_diffusers"], oracle.euler_karras())


@pytest.fixture(scope="module")
def diffusers_refiner(demo, tmp_path_factory):
    folder = oracle.refiner_folder(demo["sdxl_refiner"], tmp_path_factory.mktemp("refiner") / "diffusers")
    return oracle.refiner_pipeline(folder, oracle.euler_karras())


def with_scheduler(pipe, scheduler):
    """The same pipeline (components and flags such as ``requires_aesthetics_score``) with a fresh scheduler."""
    flags = {k: v for k, v in pipe.config.items()
             if k in inspect.signature(type(pipe)).parameters and k not in pipe.components}
    return type(pipe)(**{**pipe.components, **flags, "scheduler": scheduler})


def model_side(checkpoint, conds, integer_timesteps: bool, cfg: float) -> dict:
    ms = DiscreteEps(integer_timesteps=integer_timesteps)
    model = SDXLModel(checkpoint.unet, checkpoint.kind, ms)
    positive, negative = conds
    return {"eps_fn": model.eps_fn(), "model_sampling": ms, "cfg": cfg,
            "positive": model.prepare(positive, "positive", LATENT_HW),
            "negative": model.prepare(negative, "negative", LATENT_HW)}


def empty_latent() -> dict:
    return {"samples": torch.zeros(1, 4, *LATENT_HW)}


def our_txt2img(ours, sampler_name: str, integer_timesteps: bool, conds=None) -> tuple[torch.Tensor, torch.Tensor]:
    side = model_side(ours["base"], conds or ours["base_cond"], integer_timesteps, CFG)
    out = sample(side["eps_fn"], side["model_sampling"], empty_latent(), side["positive"], side["negative"],
                 seed=SEED, steps=TXT2IMG_STEPS, cfg=CFG, sampler_name=sampler_name, scheduler="karras")
    return out["samples"], vae_decode(ours["base"].vae, out["samples"])


def run_diffusers(pipe, **kwargs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(final latent, decoded image [B, H, W, 3], vector y of the first UNet call as [uncond; cond]) from one
    pipeline call through diffusers' own decode."""
    final, first = {}, {}

    def keep(p, i, t, tensors):
        final["latents"] = tensors["latents"]
        return tensors

    def vector(module, args, kw):
        first.setdefault("added", kw["added_cond_kwargs"])

    hook = pipe.unet.register_forward_pre_hook(vector, with_kwargs=True)
    try:
        with torch.no_grad():
            image = pipe(prompt=PROMPT, negative_prompt=NEGATIVE, output_type="pt", callback_on_step_end=keep,
                         callback_on_step_end_tensor_inputs=["latents"], **kwargs).images
    finally:
        hook.remove()
    return final["latents"], image.permute(0, 2, 3, 1), unet_vector(pipe.unet, first["added"])


def unet_vector(unet, added: dict) -> torch.Tensor:
    """What diffusers' UNet feeds its add-embedding: pooled text ‖ Fourier features of the size/crop/aesthetic ids
    (its equivalent of our ``y``)."""
    ids = added["time_ids"]
    with torch.no_grad():
        fourier = unet.add_time_proj(ids.flatten()).reshape(ids.shape[0], -1)
    return torch.cat([added["text_embeds"], fourier.to(added["text_embeds"].dtype)], dim=1)


def assert_same_vector(side: dict, want_y: torch.Tensor):
    """Our prepared y (sizes from the latent, refiner aesthetic 6 / 2.5 by role) is diffusers' — checked directly,
    since a tiny UNet barely reacts to y (sdxl.md §13.2)."""
    ours_y = torch.cat([side["negative"][0]["y"], side["positive"][0]["y"]])
    assert ours_y.shape == want_y.shape
    err = max_abs(ours_y, want_y)
    assert err < 1e-5, err


def comfy_start_latents() -> torch.Tensor:
    """diffusers multiplies given latents by ``init_noise_sigma``, which for ``linspace`` spacing is σ_max; ComfyUI,
    sgm and we start full txt2img at ε·√(1 + σ_max²) (sdxl.md §5, pitfalls). Pre-scale the same seeded ε so both
    start from the same x."""
    sigma_max = float(DiscreteEps().sigma_max)
    return oracle.seeded_noise((1, 4, *LATENT_HW), SEED) * math.sqrt(1 + sigma_max ** 2) / sigma_max


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def latent_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours - ref).abs().max() / ref.abs().max()).item()


def assert_rule_parity(matching, other, want):
    """``matching``/``other``: (latent, image) from our two timestep rules; ``want``: diffusers' (latent, image)."""
    assert latent_err(matching[0], want[0]) <= LATENT_TOL, latent_err(matching[0], want[0])
    err = max_abs(matching[1], want[1])
    assert err <= IMAGE_TOL, err
    rule_effect = max_abs(other[1], want[1])
    assert max(RULE_EFFECT_OVER_TOL * IMAGE_TOL, RULE_EFFECT_OVER_ERR * err) < rule_effect < RULE_EFFECT_MAX, (
        rule_effect, err)


# ---- initial noise ---------------------------------------------------------------------------------------------

def test_seed_gives_diffusers_noise_whatever_the_model_dtype(demo):
    """The seed's ε is diffusers' own draw bit for bit, and the first UNet input is bit-identical whether the UNet
    (loaded from the file) runs in fp32 or bf16: the noise is drawn on the CPU in fp32 and never in the model dtype."""
    shape = (1, 4, *LATENT_HW)
    assert torch.equal(prepare_noise(torch.zeros(shape), SEED), oracle.seeded_noise(shape, SEED))

    class Stop(Exception):
        pass

    def first_unet_input(dtype):
        ck = load_checkpoint(demo["sdxl_base"], dtype=dtype, with_text=False)
        seen = {}

        def eps(x_in, t, context, y):
            seen["x_in"], seen["dtype"] = x_in.clone(), next(ck.unet.parameters()).dtype
            raise Stop

        cond = [{"context": torch.zeros(1, 77, ck.unet_config.context_dim),
                 "y": torch.zeros(1, ck.unet_config.adm_in_channels)}]
        with pytest.raises(Stop):
            sample(eps, DiscreteEps(), empty_latent(), cond, cond, seed=SEED, steps=4, cfg=CFG,
                   sampler_name="euler", scheduler="karras")
        assert seen["dtype"] == dtype
        return seen["x_in"]

    fp32, bf16 = first_unet_input(torch.float32), first_unet_input(torch.bfloat16)
    assert fp32.dtype == bf16.dtype == torch.float32 and torch.equal(fp32, bf16)
    # x_in = ε·√(1+σ_max²) / √(σ_max²+1) = ε up to float rounding
    assert torch.allclose(fp32, prepare_noise(torch.zeros(shape), SEED), atol=1e-5)


def test_conditioning_inputs_equal_diffusers(ours, diffusers_base, diffusers_refiner):
    """Both sides condition on the same tensors (an image tolerance alone is weak on a tiny UNet, sdxl.md §13.2)."""
    for pipe, (pos, neg) in ((diffusers_base, ours["base_cond"]), (diffusers_refiner, ours["refiner_cond"])):
        with torch.no_grad():
            context, neg_context, pooled, neg_pooled = pipe.encode_prompt(
                PROMPT, negative_prompt=NEGATIVE, do_classifier_free_guidance=True)
        assert torch.equal(pos[0][0], context) and torch.equal(neg[0][0], neg_context)
        assert max_abs(pos[0][1]["pooled_output"], pooled) < 1e-5
        assert max_abs(neg[0][1]["pooled_output"], neg_pooled) < 1e-5


# ---- txt2img ----------------------------------------------------------------------------------------------------

def test_euler_karras_txt2img(ours, diffusers_base):
    """Euler + Karras, 6 steps, CFG 5: diffusers feeds fractional t, so our fractional rule matches it."""
    pipe = with_scheduler(diffusers_base, oracle.euler_karras())
    want = run_diffusers(pipe, num_inference_steps=TXT2IMG_STEPS, guidance_scale=CFG, height=HEIGHT, width=WIDTH,
                         latents=comfy_start_latents())
    ms = DiscreteEps(integer_timesteps=False)
    sigmas = get_sigmas(ms, "karras", TXT2IMG_STEPS)
    assert torch.allclose(pipe.scheduler.sigmas, sigmas, rtol=SIGMA_RTOL)
    assert torch.allclose(pipe.scheduler.timesteps, ms.timestep(sigmas[:-1]), atol=2e-3)
    assert pipe.scheduler.timesteps[1] % 1 != 0  # really fractional (837.1207)
    assert_same_vector(model_side(ours["base"], ours["base_cond"], False, CFG), want[2])

    fractional, integer = our_txt2img(ours, "euler", False), our_txt2img(ours, "euler", True)
    assert_rule_parity(fractional, integer, want)

    # The comparison sees a prompt change far above its tolerance.
    swapped = our_txt2img(ours, "euler", False, conds=ours["base_cond"][::-1])
    assert max_abs(swapped[1], want[1]) > 100 * IMAGE_TOL

    # diffusers' own start (ε·σ_max instead of ε·√(1+σ_max²), a 0.23 % scale) is a real difference.
    own_start = run_diffusers(pipe, num_inference_steps=TXT2IMG_STEPS, guidance_scale=CFG, height=HEIGHT, width=WIDTH,
                              generator=torch.Generator().manual_seed(SEED))
    assert max_abs(own_start[1], fractional[1]) > 10 * IMAGE_TOL


def test_dpmpp_2m_karras_txt2img(ours, diffusers_base):
    """DPM++ 2M + Karras, 6 steps, CFG 5, diffusers drawing its own noise from the seed (its VP-space start ε is
    exactly our ε·√(1+σ_max²) in σ space). diffusers rounds t, so our default integer rule matches it."""
    pipe = with_scheduler(diffusers_base, oracle.dpmpp_2m_karras())
    want = run_diffusers(pipe, num_inference_steps=TXT2IMG_STEPS, guidance_scale=CFG, height=HEIGHT, width=WIDTH,
                         generator=torch.Generator().manual_seed(SEED))
    ms = DiscreteEps()
    sigmas = get_sigmas(ms, "karras", TXT2IMG_STEPS)
    assert torch.allclose(pipe.scheduler.sigmas, sigmas, rtol=SIGMA_RTOL)
    assert torch.equal(pipe.scheduler.timesteps.float(), ms.timestep(sigmas[:-1]))

    integer, fractional = our_txt2img(ours, "dpmpp_2m", True), our_txt2img(ours, "dpmpp_2m", False)
    assert_rule_parity(integer, fractional, want)


# ---- base → refiner ---------------------------------------------------------------------------------------------

def test_ensemble_of_experts_hand_off(ours, diffusers_base, diffusers_refiner):
    """Base (denoising_end) → refiner (denoising_start, no added noise), Euler + Karras, 8 steps, one seed.

    diffusers splits by noise level: the base keeps the steps whose t ≥ 1000·(1 − 0.8) = 200 — 5 of the 8 Karras
    steps (t = 999 … 298.66); the refiner takes t = 89.94, 12.00, 0. ComfyUI's KSamplerAdvanced (and our
    ``ensemble_of_experts``) splits by step count instead: switch 0.8 of 8 steps = step 6. Same hand-off, different
    knob: 0.8 in diffusers is ``switch = 5/8`` here."""
    base_pipe = with_scheduler(diffusers_base, oracle.euler_karras())
    refiner_pipe = with_scheduler(diffusers_refiner, oracle.euler_karras())
    frac = DiscreteEps(integer_timesteps=False)
    t = frac.timestep(get_sigmas(frac, "karras", ENSEMBLE_STEPS)[:-1])
    cutoff = round(1000 * (1 - DENOISING_END))
    switch_step = int((t >= cutoff).sum())
    assert switch_step == 5 != expert_switch_step(ENSEMBLE_STEPS, DENOISING_END) == 6

    base_steps = []
    with torch.no_grad():
        handed = base_pipe(prompt=PROMPT, negative_prompt=NEGATIVE, num_inference_steps=ENSEMBLE_STEPS,
                           guidance_scale=CFG, height=HEIGHT, width=WIDTH, latents=comfy_start_latents(),
                           denoising_end=DENOISING_END, output_type="latent",
                           callback_on_step_end=lambda p, i, ts, kw: base_steps.append(float(ts)) or kw).images
    assert len(base_steps) == switch_step
    want = run_diffusers(refiner_pipe, image=handed, num_inference_steps=ENSEMBLE_STEPS, guidance_scale=REFINER_CFG,
                         denoising_start=DENOISING_END)

    assert_same_vector(model_side(ours["refiner"], ours["refiner_cond"], False, REFINER_CFG), want[2])

    def ours_run(integer_timesteps):
        base = model_side(ours["base"], ours["base_cond"], integer_timesteps, CFG)
        refiner = model_side(ours["refiner"], ours["refiner_cond"], integer_timesteps, REFINER_CFG)
        out = ensemble_of_experts(base, refiner, empty_latent(), seed=SEED, steps=ENSEMBLE_STEPS,
                                  sampler_name="euler", scheduler="karras", switch=switch_step / ENSEMBLE_STEPS)
        return out["samples"], vae_decode(ours["refiner"].vae, out["samples"])

    assert_rule_parity(ours_run(False), ours_run(True), want)


# ---- the same through the real entry point ----------------------------------------------------------------------

def api_prompt() -> dict:
    """ComfyUI API graph: DPM++ 2M Karras txt2img (KSampler), and base → refiner with two KSamplerAdvanced nodes
    handing over at step 5 of 8 (= diffusers' denoising_end 0.8 for these Karras timesteps, as above)."""
    def node(cls, **inputs):
        return {"class_type": cls, "inputs": inputs}

    common = dict(sampler_name="dpmpp_2m", scheduler="karras", latent_image=["3", 0])
    return {
        "1": node("CheckpointLoaderSimple", ckpt_name="demo_sdxl_base.safetensors"),
        "2": node("CheckpointLoaderSimple", ckpt_name="demo_sdxl_refiner.safetensors"),
        "3": node("EmptyLatentImage", width=WIDTH, height=HEIGHT, batch_size=1),
        "4": node("CLIPTextEncode", text=PROMPT, clip=["1", 1]),
        "5": node("CLIPTextEncode", text=NEGATIVE, clip=["1", 1]),
        "6": node("CLIPTextEncode", text=PROMPT, clip=["2", 1]),
        "7": node("CLIPTextEncode", text=NEGATIVE, clip=["2", 1]),
        "8": node("KSampler", model=["1", 0], seed=SEED, steps=TXT2IMG_STEPS, cfg=CFG, positive=["4", 0],
                  negative=["5", 0], denoise=1.0, **common),
        "9": node("VAEDecode", samples=["8", 0], vae=["1", 2]),
        "10": node("SaveImage", images=["9", 0], filename_prefix="txt2img"),
        "11": node("KSamplerAdvanced", model=["1", 0], add_noise="enable", noise_seed=SEED, steps=ENSEMBLE_STEPS,
                   cfg=CFG, positive=["4", 0], negative=["5", 0], start_at_step=0, end_at_step=5,
                   return_with_leftover_noise="enable", **common),
        "12": node("KSamplerAdvanced", model=["2", 0], add_noise="disable", noise_seed=SEED, steps=ENSEMBLE_STEPS,
                   cfg=REFINER_CFG, positive=["6", 0], negative=["7", 0], start_at_step=5, end_at_step=10000,
                   return_with_leftover_noise="disable", **{**common, "latent_image": ["11", 0]}),
        "13": node("VAEDecode", samples=["12", 0], vae=["2", 2]),
        "14": node("SaveImage", images=["13", 0], filename_prefix="ensemble"),
    }


def test_cli_workflow_pngs_match_diffusers(demo, diffusers_base, diffusers_refiner, tmp_path):
    """``latentgraph run`` on an API graph (loaders, CLIPTextEncode, KSampler / KSamplerAdvanced, VAEDecode,
    SaveImage; the product's default integer timestep rule) writes PNGs equal to diffusers' PIL images (both round
    to 8 bits) up to a rare one-level flip where float rounding straddles a .5 boundary."""
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "checkpoints").symlink_to(demo["sdxl_base"].parent, target_is_directory=True)
    (tmp_path / "prompt.json").write_text(json.dumps(api_prompt()))
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["run", str(tmp_path / "prompt.json"), "--models", str(tmp_path / "models"), "--input",
                   str(tmp_path), "--out", str(tmp_path / "out"), "-q"])
    assert rc == 0, err.getvalue()
    written = {Path(p).name.split("_")[0]: p for p in out.getvalue().split() if p.endswith(".png")}

    base_pipe = with_scheduler(diffusers_base, oracle.dpmpp_2m_karras())
    with torch.no_grad():
        txt2img = base_pipe(prompt=PROMPT, negative_prompt=NEGATIVE, num_inference_steps=TXT2IMG_STEPS,
                            guidance_scale=CFG, height=HEIGHT, width=WIDTH, generator=torch.Generator().manual_seed(SEED),
                            output_type="pil").images[0]
        handed = base_pipe(prompt=PROMPT, negative_prompt=NEGATIVE, num_inference_steps=ENSEMBLE_STEPS,
                           guidance_scale=CFG, height=HEIGHT, width=WIDTH, generator=torch.Generator().manual_seed(SEED),
                           denoising_end=DENOISING_END, output_type="latent").images
        ensemble = with_scheduler(diffusers_refiner, oracle.dpmpp_2m_karras())(
            prompt=PROMPT, negative_prompt=NEGATIVE, image=handed, num_inference_steps=ENSEMBLE_STEPS,
            guidance_scale=REFINER_CFG, denoising_start=DENOISING_END, output_type="pil").images[0]

    for name, want in (("txt2img", txt2img), ("ensemble", ensemble)):
        got = np.asarray(Image.open(written[name]).convert("RGB"), dtype=np.int16)
        diff = np.abs(got - np.asarray(want, dtype=np.int16))
        assert got.shape == (HEIGHT, WIDTH, 3) and got.std() > 20  # a real picture-sized array, not a flat one
        assert diff.max() <= PNG_MAX_LEVELS and diff.mean() <= PNG_MEAN_LEVELS, (name, diff.max(), diff.mean())
