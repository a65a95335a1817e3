"""ComfyUI's custom-sampling nodes on the demo SDXL base: they sample exactly as KSampler does from the same seed,
schedule and sampler; SDTurboScheduler gives SDXL Turbo's timesteps; a split schedule run in two halves (the second
without noise) is the whole run; the denoised output is the last step's estimate."""
import pytest
import torch

from nodes.node import REGISTRY, Context, load_builtin_nodes
from sdxl_helpers import demo_models_dir, environment

load_builtin_nodes()
SEED, STEPS, CFG = 11, 4, 5.0


def call(kind, ctx, **values):
    return REGISTRY[kind].call(ctx, values).outputs


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    return Context("1", environment(demo_models_dir(tmp_path_factory), tmp_path_factory.mktemp("custom")))


@pytest.fixture(scope="module")
def base(ctx):
    model, clip, _ = call("CheckpointLoaderSimple", ctx, ckpt_name="demo_sdxl_base.safetensors")
    (pos,) = call("CLIPTextEncode", ctx, clip=clip, text="a lighthouse")
    (neg,) = call("CLIPTextEncode", ctx, clip=clip, text="blurry")
    return model, pos, neg, {"samples": torch.zeros(1, 4, 8, 8)}


@pytest.mark.parametrize("sampler_name", ["euler", "euler_ancestral", "dpmpp_2m_sde"])
def test_custom_sampling_is_ksampler(ctx, base, sampler_name):
    model, pos, neg, latent = base
    (want,) = call("KSampler", ctx, model=model, seed=SEED, steps=STEPS, cfg=CFG, sampler_name=sampler_name,
                   scheduler="karras", positive=pos, negative=neg, latent_image=latent, denoise=1.0)
    (sampler,) = call("KSamplerSelect", ctx, sampler_name=sampler_name)
    (sigmas,) = call("BasicScheduler", ctx, model=model, scheduler="karras", steps=STEPS, denoise=1.0)
    out, _ = call("SamplerCustom", ctx, model=model, add_noise=True, noise_seed=SEED, cfg=CFG, positive=pos,
                  negative=neg, sampler=sampler, sigmas=sigmas, latent_image=latent)
    assert torch.equal(out["samples"], want["samples"])
    (noise,) = call("RandomNoise", ctx, noise_seed=SEED)
    (guider,) = call("CFGGuider", ctx, model=model, positive=pos, negative=neg, cfg=CFG)
    advanced, _ = call("SamplerCustomAdvanced", ctx, noise=noise, guider=guider, sampler=sampler, sigmas=sigmas,
                       latent_image=latent)
    assert torch.equal(advanced["samples"], want["samples"])


def test_split_sigmas_halves_and_disable_noise_make_the_whole_run(ctx, base):
    model, pos, neg, latent = base
    (sampler,) = call("KSamplerSelect", ctx, sampler_name="euler")
    (sigmas,) = call("BasicScheduler", ctx, model=model, scheduler="normal", steps=STEPS, denoise=1.0)
    high, low = call("SplitSigmas", ctx, sigmas=sigmas, step=2)
    assert torch.equal(high, sigmas[:3]) and torch.equal(low, sigmas[2:])
    (guider,) = call("CFGGuider", ctx, model=model, positive=pos, negative=neg, cfg=CFG)
    (noise,), (none,) = call("RandomNoise", ctx, noise_seed=SEED), call("DisableNoise", ctx)
    whole, denoised = call("SamplerCustomAdvanced", ctx, noise=noise, guider=guider, sampler=sampler, sigmas=sigmas,
                           latent_image=latent)
    first, _ = call("SamplerCustomAdvanced", ctx, noise=noise, guider=guider, sampler=sampler, sigmas=high,
                    latent_image=latent)
    second, _ = call("SamplerCustomAdvanced", ctx, noise=none, guider=guider, sampler=sampler, sigmas=low,
                     latent_image=first)
    assert torch.equal(second["samples"], whole["samples"])
    # euler's last step lands on its estimate: the denoised output is the result, up to rounding
    assert torch.allclose(denoised["samples"], whole["samples"], atol=1e-4)
    assert not torch.equal(first["samples"], whole["samples"])


def test_sdturbo_scheduler_gives_turbo_timesteps(ctx, base):
    model, pos, _, latent = base
    ms = model.sampling
    (one,) = call("SDTurboScheduler", ctx, model=model, steps=1, denoise=1.0)
    assert torch.equal(one, torch.cat([ms.sigma(torch.tensor([999.0])), torch.zeros(1)]))
    (four,) = call("SDTurboScheduler", ctx, model=model, steps=4, denoise=1.0)
    assert ms.timestep(four[:-1]).tolist() == [999, 899, 799, 699]
    (half,) = call("SDTurboScheduler", ctx, model=model, steps=2, denoise=0.5)
    assert ms.timestep(half[:-1]).tolist() == [499, 399] and half[-1] == 0
    # one guidance-free step from timestep 999 with BasicGuider is SamplerCustom at cfg 1
    (sampler,) = call("KSamplerSelect", ctx, sampler_name="euler_ancestral")
    (guider,) = call("BasicGuider", ctx, model=model, conditioning=pos)
    (noise,) = call("RandomNoise", ctx, noise_seed=SEED)
    basic, _ = call("SamplerCustomAdvanced", ctx, noise=noise, guider=guider, sampler=sampler, sigmas=one,
                    latent_image=latent)
    custom, _ = call("SamplerCustom", ctx, model=model, add_noise=True, noise_seed=SEED, cfg=1.0, positive=pos,
                     negative=pos, sampler=sampler, sigmas=one, latent_image=latent)
    assert torch.equal(basic["samples"], custom["samples"]) and basic["samples"].std() > 0
