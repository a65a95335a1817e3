"""SD 1.x and SD 2.x against independent references, on the tiny random demo models, fp32, loaded through our loaders
from the single file and from the diffusers folder:

- UNet vs diffusers ``UNet2DConditionModel`` and VAE vs ``AutoencoderKL``, both filled from our single file by
  diffusers' own original→diffusers converters (so the single file is in the layout diffusers knows);
- text: SD 1.x's CLIP-L vs transformers ``CLIPTextModel`` (last layer; clip skip as diffusers' ``clip_skip``); SD 2.x's
  OpenCLIP-H vs open_clip's own ``TextTransformer`` cut to the penultimate block, and vs the ``CLIPTextModel``
  diffusers stores it as;
- the whole pipeline vs diffusers' ``StableDiffusionPipeline`` (SD 1.x ε, SD 2.x v), ours through the nodes
  (CheckpointLoaderSimple, CLIPTextEncode, KSampler dpmpp_2m/karras, VAEDecode) with ComfyUI's conventions:
  DPM-Solver++(2M) on Karras σ, where diffusers rounds t as ComfyUI does and draws the same seeded start (sdxl.md §5;
  test_pipeline_parity);
- v or ε told apart for single files and folders, and ModelSamplingDiscrete's parameterisations (v, LCM) against
  diffusers' schedulers.
"""
from __future__ import annotations

import pytest
import torch

from nodes.checkpoints import load_checkpoint
from nodes.node import REGISTRY, Context, load_builtin_nodes
from sdxl_helpers import demo_models_dir, environment
from tests import pipeline_oracle as oracle
from tests.oracles import demo_models, rel_err

TOL = 1e-4
PROMPT, NEGATIVE = "a photo of a cat sitting on a red chair", "blurry, low quality"
SEED, CFG, STEPS, HEIGHT, WIDTH = 7, 6.0, 6, 64, 96
IMAGE_TOL = 1e-4  # max |Δ| on [0, 1] images: float rounding (measured below 1e-5), as test_pipeline_parity
# Tiny diffusers configs stated independently of our presets (nodes.families.sd1/sd2).
UNET_KWARGS = {
    "sd1": dict(block_out_channels=(32, 64, 64), layers_per_block=2, cross_attention_dim=32, attention_head_dim=8,
                down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), sample_size=32),
    "sd2": dict(block_out_channels=(64, 128, 128), layers_per_block=2, cross_attention_dim=32,
                attention_head_dim=(1, 2, 2), use_linear_projection=True,
                down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), sample_size=32),
}
VAE_KWARGS = dict(block_out_channels=(32, 64, 64, 64), layers_per_block=2, latent_channels=4,
                  down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                  scaling_factor=0.18215)
load_builtin_nodes()


def reference_unet_and_vae(kind: str):
    """diffusers modules filled from our single file by diffusers' converters, strictly."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint
    from safetensors.torch import load_file

    sd = load_file(str(demo_models()[kind]))
    unet = UNet2DConditionModel(**UNET_KWARGS[kind]).eval()
    unet.load_state_dict(convert_ldm_unet_checkpoint(sd, dict(unet.config)), strict=True)
    vae = AutoencoderKL(**VAE_KWARGS).eval()
    vae.load_state_dict(convert_ldm_vae_checkpoint(sd, dict(vae.config)), strict=True)
    return unet, vae


@pytest.mark.parametrize("kind", ["sd1", "sd2"])
def test_unet_and_vae_match_diffusers_from_both_layouts(kind):
    ref_unet, ref_vae = reference_unet_and_vae(kind)
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 4, 8, 12, generator=g), torch.tensor([999.0, 301.5])
    context = torch.randn(2, 77, ref_unet.config.cross_attention_dim, generator=g)
    pixels = torch.rand(1, 3, 64, 64, generator=g) * 2 - 1
    z = torch.randn(1, 4, 8, 8, generator=g)
    with torch.no_grad():
        want_eps = ref_unet(x, t, encoder_hidden_states=context).sample
        posterior = ref_vae.encode(pixels).latent_dist
        want_image = ref_vae.decode(z).sample
        for layout in (kind, f"{kind}_diffusers"):
            ours = load_checkpoint(demo_models()[layout], with_text=False)
            assert ours.kind == kind and ours.vae.config.scaling_factor == VAE_KWARGS["scaling_factor"]
            assert rel_err(ours.unet(x, t, context), want_eps) <= TOL, layout
            mean, logvar = ours.vae.encode(pixels)
            assert rel_err(mean, posterior.mean) <= TOL and rel_err(logvar, posterior.logvar) <= TOL, layout
            assert rel_err(ours.vae.decode(z), want_image) <= TOL, layout


def _hf_clip(kind: str):
    from transformers import CLIPTextModel

    model, info = CLIPTextModel.from_pretrained(demo_models()[f"{kind}_diffusers"] / "text_encoder",
                                                output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    return model.eval()


def test_sd1_clip_l_matches_transformers_with_and_without_clip_skip():
    """The last layer through the final LayerNorm, and clip skip the way diffusers' ``clip_skip=1`` takes it."""
    ref = _hf_clip("sd1")
    ids = oracle.hf_tokenizers()[0]([PROMPT], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        out = ref(ids, output_hidden_states=True)
        skip = getattr(ref, "text_model", ref).final_layer_norm(out.hidden_states[-2])  # flattened in transformers 5
        for layout in ("sd1", "sd1_diffusers"):
            clip = load_checkpoint(demo_models()[layout]).text
            assert rel_err(clip.conditioning(PROMPT)[0][0], out.last_hidden_state) <= TOL, layout
            assert rel_err(clip.with_layer(-2).conditioning(PROMPT)[0][0], skip) <= TOL, layout
    with pytest.raises(ValueError, match="outside the text encoders' 3 layers"):
        clip.with_layer(-4)


def test_sd2_text_matches_open_clip_cut_at_the_penultimate_block_and_diffusers_clip():
    """LatentDiffusion's "penultimate" OpenCLIP layer: open_clip's own forward over all blocks but the last, then
    ln_final, on open_clip's own tokens (padded with 0); and diffusers' CLIPTextModel (23 of 24 blocks)."""
    import open_clip
    from safetensors.torch import load_file
    from torch import nn

    state = {k[len("cond_stage_model.model."):]: v for k, v in load_file(str(demo_models()["sd2"])).items()
             if k.startswith("cond_stage_model.model.")}
    width = state["ln_final.weight"].shape[0]
    layers = len({k.split(".")[2] for k in state if k.startswith("transformer.resblocks.")})
    ref = open_clip.transformer.TextTransformer(width=width, heads=4, layers=layers, output_dim=width,
                                                act_layer=nn.GELU, output_tokens=True).eval()
    ref.load_state_dict({k: v for k, v in state.items() if k != "logit_scale"}, strict=True)
    ref.transformer.resblocks = ref.transformer.resblocks[:-1]
    hf = _hf_clip("sd2")
    hf_ids = oracle.hf_tokenizers()[1]([PROMPT], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        want = ref(open_clip.tokenize([PROMPT]))[1]
        assert rel_err(hf(hf_ids).last_hidden_state, want) <= TOL  # the two references agree
        for layout in ("sd2", "sd2_diffusers"):
            clip = load_checkpoint(demo_models()[layout]).text
            assert rel_err(clip.conditioning(PROMPT)[0][0], want) <= TOL, layout
    with pytest.raises(ValueError, match="diffusers layout leaves out"):
        clip.with_layer(-1)


def test_v_or_eps_is_told_for_single_files_and_folders(tmp_path):
    """The demo 768-v file has v-trained-looking LayerNorm biases (the probe); a file whose probed biases are flat is
    ε, unless its model spec or its yaml config says v; a diffusers folder says it in its scheduler config."""
    from safetensors.torch import load_file, save_file

    from nodes.sampling.schedules import DiscreteEps, DiscreteV

    assert type(load_checkpoint(demo_models()["sd2"], with_text=False).sampling) is DiscreteV
    assert type(load_checkpoint(demo_models()["sd2_diffusers"], with_text=False).sampling) is DiscreteV
    sd = load_file(str(demo_models()["sd2"]))
    probe = max((k for k in sd if k.endswith(".1.transformer_blocks.0.norm1.bias") and ".output_blocks." in k),
                key=lambda k: int(k.split(".")[3]))
    sd[probe] = torch.zeros_like(sd[probe])
    save_file(sd, str(tmp_path / "base.safetensors"))
    assert type(load_checkpoint(tmp_path / "base.safetensors", with_text=False).sampling) is DiscreteEps
    (tmp_path / "base.yaml").write_text('model:\n  params:\n    parameterization: "v"\n')
    assert type(load_checkpoint(tmp_path / "base.safetensors", with_text=False).sampling) is DiscreteV
    save_file(sd, str(tmp_path / "spec.safetensors"), metadata={"modelspec.prediction_type": "v"})
    assert type(load_checkpoint(tmp_path / "spec.safetensors", with_text=False).sampling) is DiscreteV


def test_model_sampling_discrete_parameterisations_match_diffusers():
    """v: x0 from a v output is diffusers' DDIM conversion; lcm: the 50 distilled timesteps, its sgm_uniform steps and
    boundary scalings are LCMScheduler's; zsnr: the rescaled schedule ends at SNR ≈ 0 (ComfyUI's floor)."""
    from diffusers import LCMScheduler

    from nodes.sampling.schedules import DISCRETE, get_sigmas

    assert list(DISCRETE) == ["eps", "v_prediction", "lcm", "x0"]
    v, lcm = DISCRETE["v_prediction"](), DISCRETE["lcm"]()
    g = torch.Generator().manual_seed(0)
    x0, eps, t = torch.randn(1, 4, 2, 2, generator=g), torch.randn(1, 4, 2, 2, generator=g), 400
    alpha = v.sigmas.new_tensor(1 / (1 + v.sigmas[t] ** 2)).sqrt()
    z = alpha * x0 + (1 - alpha ** 2).sqrt() * eps  # VP sample; v target = α·ε − s·x0
    target = alpha * eps - (1 - alpha ** 2).sqrt() * x0
    assert torch.allclose(v.calculate_denoised(v.sigmas[t], target, z / alpha), x0, atol=1e-5)
    scheduler = LCMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    scheduler.set_timesteps(4)
    sigmas = get_sigmas(lcm, "sgm_uniform", 4)
    assert lcm.timestep(sigmas[:-1]).tolist() == scheduler.timesteps.tolist() == [999, 759, 499, 259]
    c_skip, c_out = scheduler.get_scalings_for_boundary_condition_discrete(259)
    x = torch.ones(1, 1, 1, 1)
    sigma = sigmas[3:4]
    got = lcm.calculate_denoised(sigma, torch.zeros_like(x), x)  # ε = 0: x̂0 = x, so D = c_out·x + c_skip·z
    assert torch.allclose(got, torch.tensor(c_out + c_skip / float(1 + sigma ** 2) ** 0.5).reshape(x.shape))
    zsnr = DISCRETE["eps"](zsnr=True)
    assert 4500 < zsnr.sigma_max < 4530 and abs(zsnr.sigma_min - DISCRETE["eps"]().sigma_min) < 1e-3


# ---- the whole pipeline, ours through the nodes -----------------------------------------------------------------

def diffusers_pipeline(kind: str, prediction_type: str):
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, StableDiffusionPipeline, UNet2DConditionModel

    folder = demo_models()[f"{kind}_diffusers"]
    scheduler = DPMSolverMultistepScheduler(**{**oracle.SCHEDULE, "prediction_type": prediction_type},
                                            algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint",
                                            lower_order_final=True)
    tokenizer = oracle.hf_tokenizers()[0 if kind == "sd1" else 1]  # SD 2.x pads with "!" (id 0), like open_clip
    return StableDiffusionPipeline(
        vae=oracle._strict(AutoencoderKL, folder / "vae"), unet=oracle._strict(UNet2DConditionModel, folder / "unet"),
        text_encoder=_hf_clip(kind), tokenizer=tokenizer, scheduler=scheduler, safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)


def nodes_txt2img(ctx, ckpt_name: str) -> torch.Tensor:
    def call(kind, **values):
        return REGISTRY[kind].call(ctx, values).outputs

    model, clip, vae = call("CheckpointLoaderSimple", ckpt_name=ckpt_name)
    (pos,), (neg,) = call("CLIPTextEncode", clip=clip, text=PROMPT), call("CLIPTextEncode", clip=clip, text=NEGATIVE)
    (latent,) = call("EmptyLatentImage", width=WIDTH, height=HEIGHT, batch_size=1)
    (latent,) = call("KSampler", model=model, seed=SEED, steps=STEPS, cfg=CFG, sampler_name="dpmpp_2m",
                     scheduler="karras", positive=pos, negative=neg, latent_image=latent, denoise=1.0)
    return call("VAEDecode", samples=latent, vae=vae)[0]


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    return Context("1", environment(demo_models_dir(tmp_path_factory), tmp_path_factory.mktemp("sd")))


@pytest.mark.parametrize("kind, ckpt_name, prediction_type", [("sd1", "demo_sd15.safetensors", "epsilon"),
                                                              ("sd2", "demo_sd2_768v.safetensors", "v_prediction")])
def test_txt2img_matches_stable_diffusion_pipeline(ctx, kind, ckpt_name, prediction_type):
    pipe = diffusers_pipeline(kind, prediction_type)
    with torch.no_grad():
        want = pipe(prompt=PROMPT, negative_prompt=NEGATIVE, num_inference_steps=STEPS, guidance_scale=CFG,
                    height=HEIGHT, width=WIDTH, generator=torch.Generator().manual_seed(SEED),
                    output_type="pt").images.permute(0, 2, 3, 1)
    got = nodes_txt2img(ctx, ckpt_name)
    assert got.shape == want.shape == (1, HEIGHT, WIDTH, 3) and want.std() > 0.05
    err = (got - want).abs().max().item()
    assert err <= IMAGE_TOL, err
    # the comparison sees a wrong prediction type far above its tolerance
    other = "v_prediction" if prediction_type == "epsilon" else "epsilon"
    pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, prediction_type=other)
    with torch.no_grad():
        wrong = pipe(prompt=PROMPT, negative_prompt=NEGATIVE, num_inference_steps=STEPS, guidance_scale=CFG,
                     height=HEIGHT, width=WIDTH, generator=torch.Generator().manual_seed(SEED),
                     output_type="pt").images.permute(0, 2, 3, 1)
    assert (got - wrong).abs().max() > 100 * IMAGE_TOL
