"""SDXL's discrete schedule, the timestep rules and the schedulers, against sdxl.md §5/§7 and diffusers."""
import math

import numpy as np
import pytest
import torch

from nodes.sampling.schedules import (
    SCHEDULER_NAMES, DiscreteEps, beta_quantile, get_sigmas, ksampler_sigmas,
)
from nodes.sampling.ksampler import sdedit_sigmas

MS = DiscreteEps()

# sdxl.md §7, 10 steps, final 0 omitted.
TABLES = {
    "normal": [14.6146, 7.8399, 4.6092, 2.9183, 1.9502, 1.3449, 0.9324, 0.6250, 0.3687, 0.0292],
    "sgm_uniform": [14.6146, 8.3072, 5.0924, 3.3251, 2.2797, 1.6156, 1.1629, 0.8319, 0.5712, 0.3437],
    "karras": [14.6146, 9.1029, 5.4784, 3.1686, 1.7494, 0.9141, 0.4469, 0.2014, 0.0819, 0.0292],
    "exponential": [14.6146, 7.3249, 3.6712, 1.8400, 0.9222, 0.4622, 0.2317, 0.1161, 0.0582, 0.0292],
    "simple": [14.6146, 8.3028, 5.0878, 3.3211, 2.2765, 1.6129, 1.1606, 0.8299, 0.5693, 0.3417],
    "ddim_uniform": [8.3907, 5.1344, 3.3478, 2.2929, 1.6237, 1.1682, 0.8357, 0.5741, 0.3462, 0.0413],
}


def test_sigma_table_matches_reference_values():
    assert len(MS.sigmas) == 1000 and MS.sigmas.dtype == torch.float32
    assert MS.sigma_min == pytest.approx(0.029167, abs=1e-6)
    assert MS.sigma_max == pytest.approx(14.614641, abs=1e-5)
    selected = {0: 0.0292, 1: 0.0413, 24: 0.1515, 49: 0.2230, 74: 0.2843, 99: 0.3417, 124: 0.3977, 176: 0.5154,
                199: 0.5693, 200: 0.5717, 201: 0.5741, 251: 0.6984, 281: 0.7789, 501: 1.6237, 751: 4.1167,
                976: 12.7394, 999: 14.6146}
    for t, sigma in selected.items():
        assert float(MS.sigmas[t]) == pytest.approx(sigma, abs=5e-5), t


@pytest.mark.parametrize("name", list(TABLES))
def test_ten_step_tables(name):
    sigmas = get_sigmas(MS, name, 10)
    assert sigmas.dtype == torch.float32 and float(sigmas[-1]) == 0.0 and len(sigmas) == 11
    assert sigmas[:-1].tolist() == pytest.approx(TABLES[name], abs=5e-5)


@pytest.mark.parametrize("name", SCHEDULER_NAMES)
@pytest.mark.parametrize("steps", [1, 3, 7, 40])
def test_every_scheduler_descends_to_zero(name, steps):
    sigmas = get_sigmas(MS, name, steps)
    assert float(sigmas[-1]) == 0.0
    assert steps + 1 <= len(sigmas) <= steps + 2  # ddim_uniform may give one σ more when steps ∤ 1000
    assert bool((sigmas[1:] < sigmas[:-1]).all())
    assert float(sigmas[0]) <= MS.sigma_max * (1 + 1e-6) and float(sigmas[-2]) >= MS.sigma_min * (1 - 1e-6)


def test_kl_optimal_is_even_in_arctan_sigma():
    angles = torch.atan(get_sigmas(MS, "kl_optimal", 9)[:-1].double())
    assert torch.allclose(angles.diff(), angles.diff()[:1].expand(8), atol=1e-6)
    assert float(angles[0]) == pytest.approx(math.atan(MS.sigma_max), abs=1e-6)


def test_beta_matches_scipy_quantiles():
    stats = pytest.importorskip("scipy.stats")
    q = np.linspace(0, 1, 257)
    for a, b in ((0.6, 0.6), (0.5, 2.0), (2.0, 0.7)):
        assert np.abs(beta_quantile(q, a, b) - stats.beta.ppf(q, a, b)).max() < 1e-7
    for steps in (1, 10, 25, 60):
        ts = np.rint(stats.beta.ppf(1 - np.linspace(0, 1, steps, endpoint=False), 0.6, 0.6) * 999).astype(int)
        ts = [t for i, t in enumerate(ts) if i == 0 or t != ts[i - 1]]
        assert torch.equal(get_sigmas(MS, "beta", steps)[:-1], MS.sigmas[ts])


def test_timestep_rules_integer_and_fractional():
    karras = get_sigmas(MS, "karras", 10)[:-1]
    assert MS.timestep(karras).tolist() == [999, 916, 815, 687, 523, 327, 146, 41, 7, 0]
    fractional = DiscreteEps(integer_timesteps=False)
    expected = [999.000, 916.284, 815.045, 687.153, 523.198, 327.146, 145.938, 40.856, 6.732, 0.000]
    assert fractional.timestep(karras).tolist() == pytest.approx(expected, abs=2e-3)
    # Both rules are exact on table values, and σ(t) inverts the fractional rule.
    assert MS.timestep(MS.sigmas).tolist() == list(range(1000))
    assert torch.allclose(fractional.sigma(fractional.timestep(karras)), karras, rtol=1e-5)


def test_eps_parameterisation():
    x, eps, sigma = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3), torch.tensor([2.0, 0.5])
    s = sigma.view(2, 1, 1, 1)
    assert torch.allclose(MS.calculate_input(sigma, x), x / (s ** 2 + 1).sqrt())
    assert torch.allclose(MS.calculate_denoised(sigma, eps, x), x - s * eps)
    latent = torch.randn(2, 4, 3, 3)
    assert torch.allclose(MS.noise_scaling(sigma, eps, latent, max_denoise=True), latent + eps * (1 + s ** 2).sqrt())
    assert torch.allclose(MS.noise_scaling(sigma, eps, latent, max_denoise=False), latent + eps * s)


def test_percent_to_sigma():
    assert MS.percent_to_sigma(0.0) == math.inf and MS.percent_to_sigma(1.0) == 0.0
    assert MS.percent_to_sigma(0.5) == pytest.approx(float(MS.sigma(torch.tensor(499.5))), rel=1e-6)
    assert MS.percent_to_sigma(0.2) > MS.percent_to_sigma(0.8)


def test_denoise_strength_schedule():
    # sdxl.md §7: 20 steps at denoise 0.3 → the last 21 σ of a 66-step schedule, starting at 0.8098.
    sigmas = ksampler_sigmas(MS, "normal", 20, denoise=0.3)
    assert len(sigmas) == 21
    assert float(sigmas[0]) == pytest.approx(0.8098, abs=5e-5)
    assert torch.equal(sigmas, get_sigmas(MS, "normal", 66)[-21:])
    assert torch.equal(ksampler_sigmas(MS, "karras", 20, denoise=1.0), get_sigmas(MS, "karras", 20))
    assert len(ksampler_sigmas(MS, "normal", 20, denoise=0.0)) == 0


@pytest.mark.parametrize("sampler", ["dpm_2", "dpm_2_ancestral"])
def test_dpm2_drops_the_penultimate_sigma(sampler):
    sigmas = ksampler_sigmas(MS, "karras", 10, sampler_name=sampler)
    longer = get_sigmas(MS, "karras", 11)
    assert len(sigmas) == 11
    assert torch.equal(sigmas, torch.cat([longer[:-2], longer[-1:]]))
    assert float(sigmas[-2]) > MS.sigma_min * 1.5  # its final Euler step now starts above σ_min


def test_bad_names_and_steps_are_named():
    with pytest.raises(ValueError, match="scheduler"):
        get_sigmas(MS, "linear_quadratic", 10)
    with pytest.raises(ValueError, match="steps"):
        get_sigmas(MS, "karras", 0)


def test_sdedit_sigmas_stay_in_the_refiner_range():
    full = sdedit_sigmas(MS, "normal", 10, strength=1.0)
    assert float(full[0]) == pytest.approx(0.5693, abs=5e-5)  # t = 199, the top of the first 200 noise levels
    assert float(full[-1]) == 0.0 and len(full) == 11
    half = sdedit_sigmas(MS, "karras", 5, strength=0.5)
    assert float(half[0]) == pytest.approx(0.3417, abs=5e-5)  # t = 99
    assert float(half[-2]) == pytest.approx(MS.sigma_min, rel=1e-5)
    many = sdedit_sigmas(MS, "simple", 50, strength=0.05)  # 10 table entries, 50 steps: repeats merged
    assert bool((many[1:] < many[:-1]).all())
    with pytest.raises(ValueError, match="strength"):
        sdedit_sigmas(MS, "normal", 10, strength=0.0)


# --- diffusers as an independent oracle ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def euler_scheduler():
    diffusers = pytest.importorskip("diffusers")

    def make(**kw):
        return diffusers.EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                                num_train_timesteps=1000, **kw)
    return make


def test_sigma_table_matches_diffusers(euler_scheduler):
    # diffusers works in float32 (1 − ᾱ loses digits near t = 0: 1.3e−5 relative at t = 0); we compute in float64.
    ac = euler_scheduler().alphas_cumprod
    assert torch.allclose(MS.sigmas, ((1 - ac) / ac) ** 0.5, rtol=3e-5)


@pytest.mark.parametrize("steps", [6, 10, 25])
def test_karras_matches_diffusers_linspace(euler_scheduler, steps):
    sched = euler_scheduler(use_karras_sigmas=True, timestep_spacing="linspace")
    sched.set_timesteps(steps)
    ours = get_sigmas(MS, "karras", steps)
    assert torch.allclose(ours, sched.sigmas.float(), rtol=1e-5, atol=1e-7)
    # diffusers feeds fractional timesteps for Karras sigmas: our fractional rule gives the same numbers.
    frac = DiscreteEps(integer_timesteps=False).timestep(ours[:-1])
    assert torch.allclose(frac, sched.timesteps.float(), atol=2e-3)


def test_exponential_matches_diffusers(euler_scheduler):
    sched = euler_scheduler(use_exponential_sigmas=True, timestep_spacing="linspace")
    sched.set_timesteps(12)
    assert torch.allclose(get_sigmas(MS, "exponential", 12), sched.sigmas.float(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("steps", [10, 28, 38])  # (steps − 1) divides 999: linspace lands on whole timesteps
def test_normal_matches_diffusers_linspace(euler_scheduler, steps):
    sched = euler_scheduler(timestep_spacing="linspace")
    sched.set_timesteps(steps)
    assert torch.allclose(get_sigmas(MS, "normal", steps), sched.sigmas.float(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("steps", [4, 10, 40])
def test_simple_matches_diffusers_trailing(euler_scheduler, steps):
    sched = euler_scheduler(timestep_spacing="trailing")
    sched.set_timesteps(steps)
    assert torch.allclose(get_sigmas(MS, "simple", steps), sched.sigmas.float(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("steps", [10, 20, 50])  # steps dividing 1000
def test_ddim_uniform_matches_diffusers_leading(euler_scheduler, steps):
    sched = euler_scheduler(timestep_spacing="leading", steps_offset=1)
    sched.set_timesteps(steps)
    assert torch.allclose(get_sigmas(MS, "ddim_uniform", steps), sched.sigmas.float(), rtol=1e-5, atol=1e-7)
    assert MS.timestep(get_sigmas(MS, "ddim_uniform", steps)[:-1]).tolist() == sched.timesteps.tolist()
