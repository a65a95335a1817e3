"""The newer ComfyUI sampler names through KSampler: each stochastic one gets its seeded noise source, and the
_gpu names are their CPU-tree twins (samplers.py says why)."""
import pytest
import torch

from nodes.sampling.ksampler import sample
from nodes.sampling.noise import prepare_noise
from nodes.sampling.samplers import ANCESTRAL_SAMPLERS, SAMPLER_NAMES, SDE_SAMPLERS
from nodes.sampling.schedules import DiscreteEps

MS = DiscreteEps(integer_timesteps=False)
COND = [{"context": torch.zeros(1, 77, 8), "y": None}]
GPU_TWINS = {"dpmpp_sde_gpu": "dpmpp_sde", "dpmpp_2m_sde_gpu": "dpmpp_2m_sde",
             "dpmpp_2m_sde_heun_gpu": "dpmpp_2m_sde_heun", "dpmpp_3m_sde_gpu": "dpmpp_3m_sde"}


def eps_fn(x_in, t, context, y):
    """ε of unit Gaussian data: D(x; σ) = x/(1 + σ²)."""
    sigma = MS.sigma(t).view(-1, 1, 1, 1)
    x = x_in * (sigma ** 2 + 1).sqrt()
    return (x - x / (1 + sigma ** 2)) / sigma


def run(sampler_name, seed=7, device="cpu", steps=8):
    latent = {"samples": torch.zeros(2, 4, 8, 8, device=device)}
    return sample(eps_fn, MS, latent, COND, COND, seed=seed, steps=steps, cfg=1.0, sampler_name=sampler_name,
                  scheduler="karras")["samples"]


def test_the_new_names_follow_comfyui_order():
    new = ["dpmpp_sde_gpu", "dpmpp_2m_sde_gpu", "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde",
           "dpmpp_3m_sde_gpu", "ddpm", "lcm", "ipndm", "uni_pc", "uni_pc_bh2"]
    assert [name for name in SAMPLER_NAMES if name in new] == new
    assert {"ddpm", "lcm"} <= ANCESTRAL_SAMPLERS and set(GPU_TWINS) | set(GPU_TWINS.values()) <= SDE_SAMPLERS


@pytest.mark.parametrize("name", sorted(ANCESTRAL_SAMPLERS | SDE_SAMPLERS))
def test_stochastic_samplers_take_seeded_noise_through_ksampler(name):
    # Unseeded noise (none wired) would make two runs with one seed differ.
    a, b, c = run(name), run(name), run(name, seed=8)
    assert torch.isfinite(a).all()
    assert torch.equal(a, b) and (a - c).abs().max() > 1e-2


@pytest.mark.parametrize("name", sorted(SDE_SAMPLERS))
def test_one_step_sde_run_is_one_denoising_step(name):
    # The only step goes to σ = 0 and draws no noise: the result is D at σ_max of the initial noise.
    sigma_max = MS.sigma_max
    expected = prepare_noise(torch.zeros(2, 4, 8, 8), 7) * (1 + sigma_max ** 2) ** 0.5 / (1 + sigma_max ** 2)
    assert torch.allclose(run(name, steps=1), expected, atol=1e-5)


@pytest.mark.parametrize("name", ["uni_pc", "uni_pc_bh2"])
def test_uni_pc_through_ksampler_follows_the_ode(name):
    # For unit Gaussian data the probability-flow ODE keeps x/√(1 + σ²) fixed: the run ends on its initial noise.
    out = run(name, steps=12)
    assert (out - prepare_noise(out, 7)).abs().max() < 0.02


@pytest.mark.parametrize("gpu,cpu", sorted(GPU_TWINS.items()))
def test_gpu_names_are_their_cpu_tree_twins(gpu, cpu):
    assert torch.equal(run(gpu), run(cpu))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["dpmpp_2m_sde_gpu", "dpmpp_3m_sde_gpu", "ddpm", "lcm", "uni_pc"])
def test_cuda_run_matches_the_cpu_run(name):
    gpu = run(name, device="cuda")
    assert gpu.device.type == "cuda"
    assert torch.allclose(gpu.cpu(), run(name), atol=1e-4)


def test_every_sampler_declares_its_noise_and_never_draws_from_the_global_rng():
    """One declaration per sampler states its noise (samplers.SAMPLER_DECLARATIONS); KSampler wires that seeded
    source, so no sampler touches torch's global generator, and an undeclared draw is an error."""
    from nodes.sampling.samplers import SAMPLER_DECLARATIONS, SAMPLERS, SamplerDeclaration

    assert list(SAMPLER_DECLARATIONS) == SAMPLER_NAMES
    torch.manual_seed(0)
    before = torch.get_rng_state()
    for name in SAMPLER_NAMES:
        run(name, steps=3)
    assert torch.equal(torch.get_rng_state(), before)
    # euler is declared noise-free; churn makes it draw, and without a source that fails instead of going global
    with pytest.raises(RuntimeError, match="declare the noise it draws"):
        SAMPLERS["euler"](lambda x, sigma: x * 0, torch.ones(1, 4, 2, 2), torch.tensor([1.0, 0.5, 0.0]), s_churn=1.0)
    with pytest.raises(ValueError, match="noise must be one of"):
        SamplerDeclaration(SAMPLERS["euler"], "global")
