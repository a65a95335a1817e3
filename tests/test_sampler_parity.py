"""Step-for-step parity with diffusers' schedulers (test-only oracle) on the same ε-network and Karras sigmas (DDPM
and LCM: on their own timesteps, both sides drawing the per-step noise from one seeded generator).

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
BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
KARRAS = dict(**BETAS, use_karras_sigmas=True, timestep_spacing="linspace")
X0 = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0))


def eps_fn(x_in, t):
    """ε of Gaussian data N(0.3, 1.2²), reading σ from t (exact for fractional t)."""
    sigma = FRACTIONAL.sigma(t.float()).view(-1, 1, 1, 1).double()
    x = x_in.double() * (sigma ** 2 + 1).sqrt()
    denoised = 0.3 + 1.44 / (1.44 + sigma ** 2) * (x - 0.3)
    return ((x - denoised) / sigma).to(x_in.dtype)


def model_of(ms):
    def model(x, sigma):
        return ms.calculate_denoised(sigma, eps_fn(ms.calculate_input(sigma, x), ms.timestep(sigma)), x)
    return model


def ours(ms, name, x, sigmas):
    return SAMPLERS[name](model_of(ms), x, sigmas)


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


@pytest.mark.parametrize("steps", [20, 30])
def test_dpmpp_3m_sde_without_noise_matches_diffusers_third_order(steps):
    # diffusers' 3rd-order SDE update is not k-diffusion's: its ½·D2 term has the opposite sign, an O(1) weight on
    # an O(h²) term (0.45 apart on shared noise at 20 steps), so test_sampler_kdiffusion is the SDE reference. Its
    # deterministic update is ours at η = 0. At ≥ 15 steps diffusers lowers the order on the last step only, as we do.
    scheduler = diffusers.DPMSolverMultistepScheduler(**KARRAS, algorithm_type="dpmsolver++", solver_order=3,
                                                      final_sigmas_type="zero")
    scheduler.set_timesteps(steps)
    sigmas = get_sigmas(INTEGER, "karras", steps)
    start = X0 * math.sqrt(1 + float(sigmas[0]) ** 2)
    reference = theirs(scheduler, X0.clone())
    ours_3m = SAMPLERS["dpmpp_3m_sde"](model_of(INTEGER), start, sigmas, eta=0.0)
    # diffusers computes (e^−h − 1 + h)/h² in float32 (we use expm1): 3.3e−5 at 20 steps, 1.1e−4 at 15 (measured).
    assert torch.allclose(ours_3m, reference, atol=5e-5)
    assert (SAMPLERS["dpmpp_2m"](model_of(INTEGER), start, sigmas) - reference).abs().max() > 1e-2


@pytest.mark.parametrize("steps", [8, 20])
def test_dpmpp_2m_sde_matches_diffusers_sde_dpmsolver_on_shared_noise(steps):
    scheduler = diffusers.DPMSolverMultistepScheduler(**KARRAS, algorithm_type="sde-dpmsolver++", solver_order=2,
                                                      final_sigmas_type="zero")
    scheduler.set_timesteps(steps)
    noise = torch.randn(steps, *X0.shape, generator=torch.Generator().manual_seed(1))
    x = X0.clone()
    for i, t in enumerate(scheduler.timesteps):
        eps = eps_fn(scheduler.scale_model_input(x, t), t.reshape(1).expand(x.shape[0]))
        x = scheduler.step(eps, t, x, variance_noise=noise[i]).prev_sample
    sigmas = get_sigmas(INTEGER, "karras", steps)
    for name in ("dpmpp_2m_sde", "dpmpp_2m_sde_gpu"):
        draws = iter(noise)
        result = SAMPLERS[name](model_of(INTEGER), X0 * math.sqrt(1 + float(sigmas[0]) ** 2), sigmas,
                                noise=lambda sigma, sigma_next: next(draws))
        assert torch.allclose(result, x, atol=5e-5)  # measured 1.1e−5 at 20 steps


@pytest.mark.parametrize("name,solver_type", [("uni_pc", "bh1"), ("uni_pc_bh2", "bh2")])
@pytest.mark.parametrize("steps", [3, 5, 10, 20])
def test_uni_pc_matches_diffusers_unipc(name, solver_type, steps):
    # ComfyUI's UniPC: order 3, lower order on the last steps, and a final σ of 0.001 in place of 0; diffusers is
    # given that final σ too (in its own σ table) and its VP result is mapped back to σ-space.
    scheduler = diffusers.UniPCMultistepScheduler(**KARRAS, solver_order=3, solver_type=solver_type,
                                                  final_sigmas_type="zero")
    scheduler.set_timesteps(steps)
    scheduler.sigmas[-1] = 1e-3
    sigmas = get_sigmas(INTEGER, "karras", steps)
    assert INTEGER.timestep(sigmas[:-1]).tolist() == scheduler.timesteps.tolist()
    start = X0 * math.sqrt(1 + float(sigmas[0]) ** 2)
    reference = theirs(scheduler, X0.clone()) * math.sqrt(1 + 1e-6)
    assert torch.allclose(ours(INTEGER, name, start, sigmas), reference, atol=2e-5)  # measured ≤ 1.3e−5


def ours_seeded(name, timesteps, seed):
    """Our sampler on diffusers' integer timesteps, with per-step noise drawn as diffusers draws it."""
    sigmas = torch.cat([INTEGER.sigma(timesteps.float()), torch.zeros(1)])
    generator = torch.Generator().manual_seed(seed)
    noise = lambda sigma, sigma_next: torch.randn(X0.shape, generator=generator)  # noqa: E731
    return SAMPLERS[name](model_of(INTEGER), X0 * (1 + sigmas[0] ** 2).sqrt(), sigmas, noise=noise)


def theirs_seeded(scheduler, seed):
    generator = torch.Generator().manual_seed(seed)
    x = X0.clone()
    for t in scheduler.timesteps:
        eps = eps_fn(scheduler.scale_model_input(x, t), t.reshape(1).expand(x.shape[0]))
        x = scheduler.step(eps, t, x, generator=generator).prev_sample
    return x


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("steps", [4, 25])
def test_ddpm_matches_diffusers_ddpm(spacing, steps):
    scheduler = diffusers.DDPMScheduler(**BETAS, clip_sample=False, timestep_spacing=spacing)
    scheduler.set_timesteps(steps)
    reference = theirs_seeded(scheduler, 5)
    assert torch.allclose(ours_seeded("ddpm", scheduler.timesteps, 5), reference, atol=1e-5)  # measured ≤ 3.6e−6
    assert (ours_seeded("ddpm", scheduler.timesteps, 6) - reference).abs().max() > 0.1  # the noise matters


@pytest.mark.parametrize("steps", [1, 4, 8])
def test_lcm_matches_diffusers_lcm(steps):
    # diffusers' LCM applies the consistency boundary condition c_skip·x + c_out·x̂₀ in the scheduler (ComfyUI in
    # the model sampling); at LCM's timesteps (t ≥ 139) it is within 1e−6 of x̂₀, so the default config compares.
    scheduler = diffusers.LCMScheduler(**BETAS)
    scheduler.set_timesteps(steps)
    reference = theirs_seeded(scheduler, 5)
    assert torch.allclose(ours_seeded("lcm", scheduler.timesteps, 5), reference, atol=1e-5)  # measured ≤ 3.1e−6
    if steps > 1:
        assert (ours_seeded("lcm", scheduler.timesteps, 6) - reference).abs().max() > 0.1


def bent_denoiser(x, sigma):
    """D(x; σ) for Gaussian data plus a bend, so slopes at different σ differ non-trivially."""
    sg = sigma.reshape(-1, 1, 1, 1).double()
    return (0.3 + 1.44 / (1.44 + sg ** 2) * (x.double() - 0.3) + 0.1 * torch.sin(x.double())).to(x.dtype)


def v_network(x_vp, t):
    """The same denoiser as diffusers' IPNDM sees it: a v-prediction on x_vp = x/√(1 + σ²), σ = tan(t·π/2)."""
    sigma = torch.tan(t.double() * math.pi / 2).view(-1, 1, 1, 1)
    alpha, beta = 1 / (1 + sigma ** 2).sqrt(), sigma / (1 + sigma ** 2).sqrt()
    x = x_vp.double() / alpha
    denoised = bent_denoiser(x, sigma)
    return (alpha * (x - denoised) / sigma - beta * denoised).to(x_vp.dtype)


@pytest.mark.parametrize("steps", [6, 12, 25])
def test_ipndm_matches_diffusers_ipndm(steps):
    # diffusers' IPNDM runs DDIM with the Adams–Bashforth mix of ε on its own angle schedule, which starts at σ = ∞;
    # both start one point later, and stop before the last step (ComfyUI, like us, takes x = D there instead).
    scheduler = diffusers.IPNDMScheduler()
    scheduler.set_timesteps(steps)
    scheduler.set_begin_index(1)
    sigmas = scheduler.betas / scheduler.alphas
    x = X0 * scheduler.alphas[1]
    for t in scheduler.timesteps[1:-1]:
        x = scheduler.step(v_network(x, t.reshape(1).expand(x.shape[0])), t, x).prev_sample
    reference = x / scheduler.alphas[-2]
    assert torch.allclose(SAMPLERS["ipndm"](bent_denoiser, X0.clone(), sigmas[1:-1]), reference, atol=1e-5)  # ≤ 5e−7
    # 4th-order weights matter: plain Euler on the same points is far off.
    assert (SAMPLERS["euler"](bent_denoiser, X0.clone(), sigmas[1:-1]) - reference).abs().max() > 1e-3
