"""SD3 (MMDiT, rectified flow, 16-channel VAE) against independent references, on the tiny random demo models in the
real layouts, fp32, loaded through our loaders from files:

- the MMDiT vs diffusers ``SD3Transformer2DModel``, filled from our single file by diffusers' own original→diffusers
  converter and read by diffusers from our diffusers folder; SD3.5's variants (qk RMSNorm, MMDiT-X blocks) likewise;
- the VAE vs ``AutoencoderKL`` with SD3's latent scale 1.5305 and shift 0.0609 (as diffusers' SD3 pipelines apply
  them);
- rectified-flow sampling: the σ table, ``normal`` against diffusers' ``FlowMatchEulerDiscreteScheduler``, and
  KSampler with every scheduler SD3 workflows use against an Euler loop written here on the diffusers transformer;
- the nodes: the checkpoint loader with and without text encoders, ModelSamplingSD3, EmptySD3LatentImage, previews;
- the whole pipeline through the nodes against diffusers' ``StableDiffusion3Pipeline``;
- make-demo-model's SD3 files in the real layout.
"""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from nodes.checkpoints import load_checkpoint, load_vae
from nodes.families import family_of
from nodes.families.sd3 import TINY_SD3_VAE
from nodes.mmdit.mmdit import MMDiT, mmdit_config
from nodes.node import REGISTRY, Context, load_builtin_nodes
from nodes.sampling.preview import latent_to_rgb
from nodes.sampling.schedules import DiscreteFlow, get_sigmas
from nodes.sdxl.vae import AutoencoderKL, vae_decode, vae_encode
from sdxl_helpers import demo_models_dir, environment
from tests.oracles import demo_models, rel_err, rerandomize

TOL = 1e-4
SCALE, SHIFT_FACTOR = 1.5305, 0.0609
# Tiny diffusers configs stated independently of our presets (nodes.families.sd3.TINY_MMDIT, TINY_SD3_VAE).
MMDIT_KWARGS = dict(sample_size=32, patch_size=2, in_channels=16, out_channels=16, num_layers=2, attention_head_dim=64,
                    num_attention_heads=2, joint_attention_dim=96, caption_projection_dim=128,
                    pooled_projection_dim=64, pos_embed_max_size=32)
VAE_KWARGS = dict(block_out_channels=(32, 64, 64, 64), layers_per_block=2, latent_channels=16,
                  down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                  use_quant_conv=False, use_post_quant_conv=False, scaling_factor=SCALE, shift_factor=SHIFT_FACTOR)
KEYS = Path(__file__).parents[1].parent / "shared" / "reference" / "keys"
load_builtin_nodes()


def diffusers_transformer(path, **config):
    """diffusers' SD3 transformer filled (strictly) from an original-layout single file by diffusers' converter."""
    from diffusers import SD3Transformer2DModel
    from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers

    sd = {k: v for k, v in load_file(str(path)).items() if k.startswith("model.diffusion_model.")}
    model = SD3Transformer2DModel(**{**MMDIT_KWARGS, **config}).eval()
    model.load_state_dict(convert_sd3_transformer_checkpoint_to_diffusers(sd), strict=True)
    return model


def mmdit_inputs(context_dim=96, pooled_dim=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(2, 16, 8, 12, generator=g), torch.tensor([999.0, 301.5]),
            torch.randn(2, 20, context_dim, generator=g), torch.randn(2, pooled_dim, generator=g))


def reference_velocity(model, x, t, context, y):
    with torch.no_grad():
        return model(hidden_states=x, encoder_hidden_states=context, pooled_projections=y, timestep=t).sample


@pytest.fixture(scope="module")
def reference_mmdit():
    return diffusers_transformer(demo_models()["sd3"])


def test_mmdit_matches_diffusers_from_the_single_files_and_the_folder(reference_mmdit):
    from diffusers import SD3Transformer2DModel

    x, t, context, y = inputs = mmdit_inputs()
    want = reference_velocity(reference_mmdit, *inputs)
    assert want.shape == x.shape and want.std() > 0.1
    for layout in ("sd3", "sd3_incl_clips", "sd3_diffusers"):
        ours = load_checkpoint(demo_models()[layout], with_text=False)
        assert ours.kind == "sd3" and isinstance(ours.unet, MMDiT)
        with torch.no_grad():
            assert rel_err(ours.unet(x, t, context, y), want) <= TOL, layout
    # the folder is one diffusers reads as the same model
    folder = SD3Transformer2DModel.from_pretrained(demo_models()["sd3_diffusers"] / "transformer").eval()
    assert rel_err(reference_velocity(folder, *inputs), want) <= TOL


def test_position_table_is_centre_cropped_and_bounded(reference_mmdit):
    """A latent of a patch-size multiple takes the centre of the 32² table (diffusers crops the same way); odd sides
    are padded and cropped back; a latent larger than the table is refused, naming the limit."""
    ours = load_checkpoint(demo_models()["sd3"], with_text=False).unet
    g = torch.Generator().manual_seed(3)
    context, y = torch.randn(1, 5, 96, generator=g), torch.randn(1, 64, generator=g)
    for h, w in ((64, 64), (4, 62), (30, 2)):
        x = torch.randn(1, 16, h, w, generator=g)
        with torch.no_grad():
            got = ours(x, torch.tensor([500.0]), context, y)
        assert rel_err(got, reference_velocity(reference_mmdit, x, torch.tensor([500.0]), context, y)) <= TOL, (h, w)
    with torch.no_grad():
        assert ours(torch.randn(1, 16, 9, 7), torch.tensor([500.0]), context, y).shape == (1, 16, 9, 7)
    with pytest.raises(ValueError, match="66×64 is larger than its position table allows \\(64×64"):
        ours(torch.randn(1, 16, 66, 64), torch.tensor([500.0]), context, y)


SD35_DIFFUSERS = dict(num_layers=3, qk_norm="rms_norm", dual_attention_layers=(0, 1))


def write_sd35_medium_tiny(folder: Path) -> tuple[Path, object]:
    """A random tiny single file with SD3.5 medium's MMDiT changes (SD35_DIFFUSERS in diffusers' terms) and its
    MMDiTConfig."""
    cfg = dataclasses.replace(mmdit_config({k[len("model.diffusion_model."):]: tuple(v.shape) for k, v in
                                            load_file(str(demo_models()["sd3"])).items()
                                            if k.startswith("model.diffusion_model.")}),
                              depth=3, qk_norm=True, x_self_attn_layers=(0, 1))
    mmdit = rerandomize(MMDiT(cfg), seed=5)
    vae = rerandomize(AutoencoderKL(TINY_SD3_VAE), seed=6)
    state = {**{"model.diffusion_model." + k: v for k, v in mmdit.state_dict().items()},
             **{"first_stage_model." + k: v for k, v in vae.state_dict().items()}}
    save_file(state, str(folder / "sd3.5_medium_tiny.safetensors"))
    return folder / "sd3.5_medium_tiny.safetensors", cfg


def test_sd35_variants_load_and_match_diffusers(tmp_path):
    """SD3.5's MMDiT changes: RMSNorm on each head's queries and keys (large and medium) and MMDiT-X blocks whose
    image stream also attends to itself (medium), read from an original-layout file by the same loader."""
    path, cfg = write_sd35_medium_tiny(tmp_path)
    ours = load_checkpoint(path, with_text=False)
    assert ours.unet.config == cfg
    ref = diffusers_transformer(path, **SD35_DIFFUSERS)
    inputs = mmdit_inputs(seed=1)
    with torch.no_grad():
        assert rel_err(ours.unet(*inputs), reference_velocity(ref, *inputs)) <= TOL


def block_pattern(keys) -> set[str]:
    """Key names with the joint block index replaced by what the block is (the last one's context stream is
    pre-only), so a 2-block and a 24-block MMDiT can be compared."""
    last = max(int(m.group(1)) for k in keys if (m := re.search(r"joint_blocks\.(\d+)\.", k)))
    return {re.sub(r"joint_blocks\.(\d+)\.", lambda m: "joint_blocks.LAST." if int(m.group(1)) == last
                   else "joint_blocks.N.", k) for k in keys}


@pytest.mark.skipif(not KEYS.is_dir(), reason=f"reference key lists not found at {KEYS}")
def test_demo_checkpoints_are_in_the_real_layout():
    """make-demo-model's SD3 files have sd3_medium.txt's MMDiT tensor names (blocks aside) and its VAE prefix
    without quant convs (the tiny VAE is narrower, so its shortcuts differ), and the incl_clips one also has the three
    text encoders' prefixes with T5 stored in float8."""
    ref = {line.split("\t")[0] for line in (KEYS / "sd3_medium.txt").read_text().splitlines()
           if not line.startswith("#")}
    demo = load_file(str(demo_models()["sd3"]))
    assert block_pattern({k for k in demo if k.startswith("model.")}) == block_pattern({k for k in ref
                                                                                       if k.startswith("model.")})
    assert {k.split(".")[0] for k in demo} == {k.split(".")[0] for k in ref} == {"model", "first_stage_model"}
    assert not any("quant_conv" in k for k in demo)
    incl = load_file(str(demo_models()["sd3_incl_clips"]))
    text = {k for k in incl if k not in demo}
    assert set(demo) <= set(incl) and {k.split(".transformer.")[0] for k in text} == \
        {"text_encoders.clip_l", "text_encoders.clip_g", "text_encoders.t5xxl"}
    assert {incl[k].dtype for k in text if k.startswith("text_encoders.t5xxl.") and incl[k].ndim == 2} == \
        {torch.float8_e4m3fn}
    meta = json.loads(Path(demo_models()["sd3_diffusers"], "model_index.json").read_text())
    assert meta["_class_name"] == "StableDiffusion3Pipeline"


# ---- the 16-channel VAE -------------------------------------------------------------------------------------------

def test_vae_matches_autoencoderkl_with_sd3_scale_and_shift(tmp_path):
    from diffusers import AutoencoderKL as DiffusersVAE
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    ref = DiffusersVAE(**VAE_KWARGS).eval()
    ref.load_state_dict(convert_ldm_vae_checkpoint(load_file(str(demo_models()["sd3"])), dict(ref.config)),
                        strict=True)
    g = torch.Generator().manual_seed(0)
    image = torch.rand(1, 64, 48, 3, generator=g)
    z = torch.randn(1, 16, 8, 6, generator=g)
    with torch.no_grad():
        # as diffusers' SD3 pipelines: latents = (mean − shift)·scale; decode(latents / scale + shift)
        want_latent = (ref.encode(image.permute(0, 3, 1, 2) * 2 - 1).latent_dist.mean - SHIFT_FACTOR) * SCALE
        want_image = (ref.decode(z / SCALE + SHIFT_FACTOR).sample / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1)
    vaes = {layout: load_checkpoint(demo_models()[layout], with_text=False).vae
            for layout in ("sd3", "sd3_incl_clips", "sd3_diffusers")}
    vaes["checkpoint as VAE file"] = load_vae(demo_models()["sd3"])  # a full checkpoint: its family's latents
    # a standalone VAE without prefix cannot say its family; 16 latent channels are SD3's whatever its name
    save_file({k[len("first_stage_model."):]: v for k, v in load_file(str(demo_models()["sd3"])).items()
               if k.startswith("first_stage_model.")}, str(tmp_path / "ae.safetensors"))
    vaes["standalone"] = load_vae(tmp_path / "ae.safetensors")
    for layout, vae in vaes.items():
        assert (vae.config.z_channels, vae.config.scaling_factor, vae.config.shift_factor) == (16, SCALE, SHIFT_FACTOR)
        assert rel_err(vae_encode(vae, image), want_latent) <= TOL, layout
        assert rel_err(vae_decode(vae, z), want_image) <= TOL, layout


# ---- rectified-flow sampling --------------------------------------------------------------------------------------

def shifted(t, shift=3.0):
    t = np.asarray(t, dtype=np.float64)
    return shift * t / (1 + (shift - 1) * t)


def test_flow_sigma_table_timesteps_and_parameterisation():
    ms = DiscreteFlow()
    assert len(ms.sigmas) == 1000 and ms.sigma_max == 1.0
    assert np.allclose(ms.sigmas.numpy(), shifted(np.arange(1, 1001) / 1000), rtol=1e-6)
    sigma = torch.tensor([0.9, 0.25])
    assert torch.equal(ms.timestep(sigma), sigma * 1000)
    g = torch.Generator().manual_seed(0)
    x, v, x0, noise = (torch.randn(2, 16, 4, 4, generator=g) for _ in range(4))
    assert torch.allclose(ms.calculate_denoised(sigma, v, x), x - sigma[:, None, None, None] * v)
    assert torch.equal(ms.calculate_input(sigma, x), x)
    s = sigma[:, None, None, None]
    assert torch.allclose(ms.noise_scaling(sigma, noise, x0, False), s * noise + (1 - s) * x0)
    assert torch.equal(ms.noise_scaling(torch.tensor(1.0), noise, x0, True), noise)  # txt2img: pure noise
    assert ms.percent_to_sigma(0.0) == 1.0 and ms.percent_to_sigma(1.0) == 0.0
    assert ms.percent_to_sigma(0.1) == pytest.approx(float(shifted(0.9)), rel=1e-6)
    assert DiscreteFlow(1.0).sigmas[499] == pytest.approx(0.5)


@pytest.mark.parametrize("steps", [4, 10, 28])
def test_normal_is_diffusers_flow_match_euler_schedule(steps):
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    sched.set_timesteps(steps)
    assert torch.allclose(get_sigmas(DiscreteFlow(3.0), "normal", steps), sched.sigmas.float(), rtol=1e-5, atol=1e-7)


def scheduler_sigmas(name: str, steps: int) -> np.ndarray:
    """The four schedulers' σ for a flow model, written out here from ComfyUI's definitions on σ(t) = 3t/(1+2t)
    and its table σ(i/1000), i = 1…1000."""
    from scipy.stats import beta

    table = shifted(np.arange(1, 1001) / 1000)
    if name == "simple":  # evenly spaced table entries from the top
        out = [table[-(1 + int(i * 1000 / steps))] for i in range(steps)]
    elif name == "normal":  # timesteps σ·1000 evenly from the table's top to its bottom, inclusive
        out = shifted(np.linspace(1.0, table[0], steps))
    elif name == "sgm_uniform":  # the same over steps + 1 points, the last left out
        out = shifted(np.linspace(1.0, table[0], steps + 1)[:-1])
    else:  # beta(0.6, 0.6) quantiles as table positions
        out = table[np.rint(beta.ppf(1 - np.linspace(0, 1, steps, endpoint=False), 0.6, 0.6) * 999).astype(int)]
    return np.append(out, 0.0)


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    return Context("1", environment(demo_models_dir(tmp_path_factory), tmp_path_factory.mktemp("sd3")))


def call(ctx, kind, **values):
    return REGISTRY[kind].call(ctx, values).outputs


@pytest.mark.parametrize("scheduler", ["simple", "sgm_uniform", "normal", "beta"])
def test_ksampler_on_flow_is_an_euler_loop_on_diffusers(ctx, reference_mmdit, scheduler):
    """KSampler (euler, cfg 1) on the SD3 MODEL through the denoiser protocol equals an Euler flow loop on the
    diffusers transformer: x ← x + (σ' − σ)·v(x, σ·1000), from pure noise drawn on the CPU generator."""
    steps, seed = 5, 11
    sigmas = scheduler_sigmas(scheduler, steps)
    assert np.allclose(get_sigmas(DiscreteFlow(), scheduler, steps).numpy(), sigmas, rtol=1e-5, atol=1e-7)
    g = torch.Generator().manual_seed(2)
    context, pooled = torch.randn(1, 10, 96, generator=g), torch.randn(1, 64, generator=g)
    (model, _, _) = call(ctx, "CheckpointLoaderSimple", ckpt_name="demo_sd3_medium.safetensors")
    (latent,) = call(ctx, "EmptySD3LatentImage", width=48, height=32, batch_size=1)
    cond = [[context, {"pooled_output": pooled}]]
    (out,) = call(ctx, "KSampler", model=model, seed=seed, steps=steps, cfg=1.0, sampler_name="euler",
                  scheduler=scheduler, positive=cond, negative=cond, latent_image=latent, denoise=1.0)
    x = torch.randn(1, 16, 4, 6, generator=torch.Generator().manual_seed(seed))
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        v = reference_velocity(reference_mmdit, x, torch.tensor([s * 1000], dtype=torch.float32), context, pooled)
        x = x + float(s_next - s) * v
    assert rel_err(out["samples"], x) <= TOL


def test_img2img_noises_the_source_as_flow_does(ctx, reference_mmdit):
    """denoise 0.5 with euler: the first sample is σ·noise + (1 − σ)·latent at the schedule's σ, then Euler."""
    g = torch.Generator().manual_seed(4)
    source = torch.randn(1, 16, 4, 4, generator=g)
    context, pooled = torch.randn(1, 10, 96, generator=g), torch.randn(1, 64, generator=g)
    (model, _, _) = call(ctx, "CheckpointLoaderSimple", ckpt_name="demo_sd3_medium.safetensors")
    cond = [[context, {"pooled_output": pooled}]]
    (out,) = call(ctx, "KSampler", model=model, seed=3, steps=2, cfg=1.0, sampler_name="euler", scheduler="simple",
                  positive=cond, negative=cond, latent_image={"samples": source}, denoise=0.5)
    sigmas = scheduler_sigmas("simple", 4)[-3:]  # int(2 / 0.5) = 4 steps, the last 2 run
    x = sigmas[0] * torch.randn(1, 16, 4, 4, generator=torch.Generator().manual_seed(3)) + (1 - sigmas[0]) * source
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        x = x + float(s_next - s) * reference_velocity(reference_mmdit, x.float(), torch.tensor([s * 1000]).float(),
                                                       context, pooled)
    assert rel_err(out["samples"], x) <= TOL


# ---- the nodes ---------------------------------------------------------------------------------------------------

def test_sd3_nodes(ctx):
    (model, clip, vae) = call(ctx, "CheckpointLoaderSimple", ckpt_name="demo_sd3_medium.safetensors")
    assert model.kind == "sd3" and clip is None and model.latent_format.channels == 16
    with pytest.raises(ValueError, match="CLIPTextEncode: clip: the checkpoint has no text encoders .*TripleCLIP"):
        call(ctx, "CLIPTextEncode", clip=clip, text="a cat")
    (shifted_model,) = call(ctx, "ModelSamplingSD3", model=model, shift=6.0)
    assert shifted_model.sampling.shift == 6.0 and model.sampling.shift == 3.0
    assert shifted_model.module is model.module  # the weights are shared
    (_, clip, _) = call(ctx, "CheckpointLoaderSimple", ckpt_name="demo_sd3_medium_incl_clips_t5xxlfp8.safetensors")
    assert clip is not None and clip.kind == "sd3"
    (latent,) = call(ctx, "EmptySD3LatentImage", width=1024, height=768, batch_size=2)
    assert latent["samples"].shape == (2, 16, 96, 128) and not latent["samples"].any()
    spec = REGISTRY["EmptySD3LatentImage"]
    assert (spec.inputs["width"].default, spec.inputs["height"].default) == (1024, 1024)


def test_previews_project_the_16_channels():
    fmt = family_of("sd3").latent_format
    latent = torch.zeros(1, 16, 8, 12)
    latent[:, 10] = 1.0  # channel 10's row is (0.1106, 0.1171, 0.1220)
    image = latent_to_rgb(latent, fmt)
    assert image.size == (12, 8)
    assert np.asarray(image)[0, 0].tolist() == [round((1 + c) / 2 * 255) for c in (0.1106, 0.1171, 0.1220)]


# ---- the whole pipeline --------------------------------------------------------------------------------------------

PROMPT, NEGATIVE = "a photo of a cat sitting on a red chair", "blurry, low quality"
SEED, CFG, STEPS, HEIGHT, WIDTH = 7, 4.5, 5, 64, 96


def sd3_pipeline():
    """diffusers' StableDiffusion3Pipeline from the demo's diffusers folder (diffusers' and transformers' own
    from_pretrained), with the CLIP tokenizers diffusers' SD3 uses (CLIP-L pads with its end token, CLIP-G with "!")
    and T5's vocabulary in transformers' T5TokenizerFast."""
    from diffusers import AutoencoderKL as DiffusersVAE
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection, T5EncoderModel, T5TokenizerFast

    from nodes.mmdit.t5 import t5_tokenizer
    from tests.pipeline_oracle import _strict, hf_tokenizers

    folder = demo_models()["sd3_diffusers"]
    tok, tok_2 = hf_tokenizers()
    return StableDiffusion3Pipeline(
        transformer=_strict(SD3Transformer2DModel, folder / "transformer"), vae=_strict(DiffusersVAE, folder / "vae"),
        text_encoder=_strict(CLIPTextModelWithProjection, folder / "text_encoder"),
        text_encoder_2=_strict(CLIPTextModelWithProjection, folder / "text_encoder_2"),
        text_encoder_3=_strict(T5EncoderModel, folder / "text_encoder_3"), tokenizer=tok, tokenizer_2=tok_2,
        tokenizer_3=T5TokenizerFast(tokenizer_object=t5_tokenizer(), eos_token="</s>", pad_token="<pad>",
                                    unk_token="<unk>", extra_ids=0),
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0))


def test_txt2img_matches_stable_diffusion_3_pipeline(ctx):
    """Ours through the nodes (CheckpointLoaderSimple on the incl_clips single file, CLIPTextEncode, KSampler euler
    on `normal`, VAEDecode) against diffusers' pipeline on the same weights from the diffusers folder. Lined up:
    - σ: diffusers' FlowMatchEulerDiscreteScheduler with shift 3 steps through shift(linspace(1, σ_table_min)), which
      is ComfyUI's `normal` on the flow table (test_normal_is_diffusers_flow_match_euler_schedule); both give the
      transformer σ·1000 and step x + (σ' − σ)·v; the start is the same CPU-seeded draw, unscaled;
    - tokens: max_sequence_length 77, so diffusers' T5 gets the prompt, </s> and pads to 77 without a mask, which is
      ComfyUI's T5 rule for prompts under 77 tokens; CLIP gets one 77-token window each;
    - guidance: diffusers mixes velocities, ComfyUI denoised x0 = x − σ·v; at equal σ the two are the same."""
    pipe = sd3_pipeline()
    with torch.no_grad():
        want = pipe(prompt=PROMPT, negative_prompt=NEGATIVE, num_inference_steps=STEPS, guidance_scale=CFG,
                    height=HEIGHT, width=WIDTH, max_sequence_length=77, generator=torch.Generator().manual_seed(SEED),
                    output_type="pt").images.permute(0, 2, 3, 1)
    (model, clip, vae) = call(ctx, "CheckpointLoaderSimple",
                              ckpt_name="demo_sd3_medium_incl_clips_t5xxlfp8.safetensors")
    (pos,), (neg,) = call(ctx, "CLIPTextEncode", clip=clip, text=PROMPT), call(ctx, "CLIPTextEncode", clip=clip,
                                                                                text=NEGATIVE)
    (latent,) = call(ctx, "EmptySD3LatentImage", width=WIDTH, height=HEIGHT, batch_size=1)
    (latent,) = call(ctx, "KSampler", model=model, seed=SEED, steps=STEPS, cfg=CFG, sampler_name="euler",
                     scheduler="normal", positive=pos, negative=neg, latent_image=latent, denoise=1.0)
    got = call(ctx, "VAEDecode", samples=latent, vae=vae)[0]
    assert got.shape == want.shape == (1, HEIGHT, WIDTH, 3) and want.std() > 0.05
    assert (got - want).abs().max().item() <= TOL
    # the comparison sees another shift far above its tolerance
    (other,) = call(ctx, "ModelSamplingSD3", model=model, shift=1.0)
    (latent,) = call(ctx, "EmptySD3LatentImage", width=WIDTH, height=HEIGHT, batch_size=1)
    (latent,) = call(ctx, "KSampler", model=other, seed=SEED, steps=STEPS, cfg=CFG, sampler_name="euler",
                     scheduler="normal", positive=pos, negative=neg, latent_image=latent, denoise=1.0)
    assert (call(ctx, "VAEDecode", samples=latent, vae=vae)[0] - want).abs().max() > 100 * TOL
