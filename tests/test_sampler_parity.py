"""Step-for-step parity with diffusers' schedulers (test-only oracle) on the same ε-network and Karras sigmas.

The network is any deterministic function of (x_in, t); both sides feed it what they would feed a UNet. Where the
timestep rule differs it is chosen to match: diffusers' Euler/Heun/LMS feed fractional t for Karras sigmas
(our ``integer_timesteps=False``); its DPM-Solver++ rounds t to integers (our default, ComfyUI's rule). With the
rule matched, the results agree to float32 rounding (≤ 1e−5); the integer-vs-fractional choice itself moves an
8-step DPM++ 2M result by 1.6e−3 here (measured; 2e−4 at 20 steps), the size of that documented difference.
"""
import math

import pytest
import torch

from nodes.sampling.samplers import SAMPLERS
from nodes.sampling.schedules import DiscreteEps, get_sigmas

diffusers = pytest.importorskip("diffusers")

FRACTIONAL, INTEGER = DiscreteEps(integer_timesteps=False), DiscreteEps()
KARRAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", use_karras_sigmas=True,
              timestep_spacing="linspace")
X0 = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0))


def eps_fn(x_in, t):
    """ε of Gaussian data N(0.3, 1.2²), reading σ from t (exact for fractional t)."""
    sigma = FRACTIONAL.sigma(t.float()).view(-1, 1, 1, 1).double()
    x = x_in.double() * (sigma ** 2 + 1).sqrt()
    denoised = 0.3 + 1.44 / (1.44 + sigma ** 2) * (x - 0.3)
    return ((x - denoised) / sigma).to(x_in.dtype)


def ours(ms, name, x, sigmas):
    def model(x, sigma):
        return ms.calculate_denoised(sigma, eps_fn(ms.calculate_input(sigma, x), ms.timestep(sigma)), x)
    return SAMPLERS[name](model, x, sigmas)


def theirs(scheduler, x, steps=None):
    for t in scheduler.timesteps[:steps]:
        eps = eps_fn(scheduler.scale_model_input(x, t), t.reshape(1).expand(x.shape[0]))
        x = scheduler.step(eps, t, x).prev_sample
    return x


@pytest.mark.parametrize("name,cls", [("euler", "EulerDiscreteScheduler"), ("heun", "HeunDiscreteScheduler")])
@pytest.mark.parametrize("steps", [6, 12])
def test_euler_and_heun_match_diffusers(name, cls, steps):
    scheduler = getattr(diffusers, cls)(**KARRAS)
    scheduler.set_timesteps(steps)
    sigmas = get_sigmas(FRACTIONAL, "karras", steps)
    # Same schedule up to diffusers' float32 σ table (1.3e−5 at σ_min, see test_schedules).
    assert torch.allclose(sigmas, scheduler.sigmas.unique_consecutive().float(), rtol=5e-5)
    x = X0 * sigmas[0]  # diffusers' linspace spacing starts at σ_max, not √(1 + σ_max²)
    assert torch.allclose(ours(FRACTIONAL, name, x, sigmas), theirs(scheduler, x), atol=1e-5)


def test_lms_matches_diffusers_down_to_sigma_min():
    # ComfyUI (and we) take x = D on the final step to σ = 0; diffusers integrates it, so compare before it.
    scheduler = diffusers.LMSDiscreteScheduler(**KARRAS)
    scheduler.set_timesteps(12)
    sigmas = get_sigmas(FRACTIONAL, "karras", 12)
    x = X0 * sigmas[0]
    assert torch.allclose(ours(FRACTIONAL, "lms", x, sigmas[:-1]), theirs(scheduler, x, steps=11), atol=1e-5)


@pytest.mark.parametrize("steps", [8, 20])
def test_dpmpp_2m_matches_diffusers_dpmsolver(steps):
    scheduler = diffusers.DPMSolverMultistepScheduler(**KARRAS, algorithm_type="dpmsolver++", solver_order=2,
                                                      final_sigmas_type="zero")
    scheduler.set_timesteps(steps)
    sigmas = get_sigmas(INTEGER, "karras", steps)
    assert INTEGER.timestep(sigmas[:-1]).tolist() == scheduler.timesteps.tolist()
    # diffusers' DPM-Solver works on VP latents x/√(1 + σ²), starting from unit noise.
    start = X0 * math.sqrt(1 + float(sigmas[0]) ** 2)
    reference = theirs(scheduler, X0.clone())
    assert torch.allclose(ours(INTEGER, "dpmpp_2m", start, sigmas), reference, atol=5e-5)
    # The timestep rule is the only difference left: fractional t moves the result by far more than the tolerance.
    if steps == 8:
        assert (ours(FRACTIONAL, "dpmpp_2m", start, sigmas) - reference).abs().max() > 5e-4
