"""Model sampling (how a noise level σ maps to the network's input, timestep and output) and the schedulers.

A ``ModelSampling`` is everything a sampler needs to know about a model's parameterisation, and nothing about
its weights. SD 1.x and SDXL are ``DiscreteEps``: the scaled-linear DDPM schedule over 1000 timesteps with
ε-prediction (sdxl.md §5); SD 2.x 768-v is ``DiscreteV`` on the same schedule; ``DISCRETE`` lists the
parameterisations ComfyUI's ModelSamplingDiscrete picks from. SD3's rectified flow is ``DiscreteFlow``: the same
methods, so the schedulers and samplers run it unchanged. Where a sampler injects fresh noise it also asks how
much signal a sample at σ keeps (``alpha``), its half-log-SNR and the ancestral split of a step: the defaults are
the σ-space form x = x₀ + σ·noise k-diffusion's samplers were written for; flow overrides them.

Schedulers turn (model sampling, steps) into a descending float32 σ list that ends with 0 (sdxl.md §7); the names
and formulas are the ones ComfyUI users know.
"""
from __future__ import annotations

import copy
import functools
import math

import numpy as np
import torch


class ModelSampling:
    """The interface. Subclasses set ``sigmas`` (an ascending float32 table indexed by discrete timestep)."""

    sigmas: torch.Tensor

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """The timestep the network is conditioned on at noise level ``sigma``."""
        raise NotImplementedError

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        """The noise level of a (possibly fractional) timestep."""
        raise NotImplementedError

    def calculate_input(self, sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Scale the noisy sample ``x`` (σ-space) to what the network expects."""
        raise NotImplementedError

    def calculate_denoised(self, sigma: torch.Tensor, model_output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Turn the network's raw output into the denoised estimate D(x; σ)."""
        raise NotImplementedError

    def noise_scaling(self, sigma, noise: torch.Tensor, latent: torch.Tensor, max_denoise: bool) -> torch.Tensor:
        """The starting sample: ``latent`` noised to ``sigma`` with unit-variance ``noise``."""
        raise NotImplementedError

    def inverse_noise_scaling(self, sigma, latent: torch.Tensor) -> torch.Tensor:
        """Map the sampler's final x back to a latent (identity for σ-space models)."""
        return latent

    def truncated(self, max_timestep: int) -> "ModelSampling":
        """The same model restricted to timesteps 0..max_timestep, so schedulers span only that range (SDEdit)."""
        raise NotImplementedError

    def percent_to_sigma(self, percent: float) -> float:
        """ComfyUI's timestep-range percent (0 = start of sampling, 1 = end) as a σ."""
        if percent <= 0.0:
            return math.inf
        if percent >= 1.0:
            return 0.0
        return float(self.sigma(torch.tensor((1.0 - percent) * (len(self.sigmas) - 1))))

    # What the noise-injecting samplers ask. A sample at σ is x = α(σ)·x₀ + σ·noise; the defaults are σ-space
    # (α = 1), the form of every discrete model here (ε, v, x0, LCM all step in σ-space).
    sigma_ceiling = math.inf  # the noise level of pure noise: no sample is noisier

    def alpha(self, sigma):
        """The signal scale α(σ)."""
        return 1.0

    def half_log_snr(self, sigma: torch.Tensor) -> torch.Tensor:
        """λ = log(α/σ), the time variable of DPM-Solver++ (Lu et al. 2022)."""
        return sigma.log().neg()

    def sigma_at(self, half_log_snr: torch.Tensor) -> torch.Tensor:
        """The σ whose half-log-SNR is ``half_log_snr``."""
        return half_log_snr.neg().exp()

    def solver_sigmas(self, sigmas: torch.Tensor) -> torch.Tensor:
        """The σ list the DPM-Solver++ SDE samplers (dpmpp_sde, dpmpp_2m_sde(+heun), dpmpp_3m_sde) step on, model
        calls included: the schedule itself wherever every σ has a finite λ."""
        return sigmas

    def dpmpp_2s_midpoint(self, sigma, t, h):
        """Where DPM-Solver++(2S) evaluates its second model call on a step from σ (λ = t) over λ-length h, as
        (σ_s, λ_s − t): halfway in λ."""
        return self.sigma_at(t + h / 2), h / 2

    def ancestral_step(self, sigma, sigma_next, eta=1.0):
        """Split a step σ → σ_next into a deterministic step down to σ_down and fresh noise of std σ_up, added after
        scaling the sample by α(σ_next)/α(σ_down). σ-space: σ_down² + σ_up² = σ_next², with η = 1 the DDPM posterior
        variance (k-diffusion's ``get_ancestral_step``)."""
        return get_ancestral_step(sigma, sigma_next, eta)


def get_ancestral_step(sigma, sigma_next, eta=1.0):
    """σ-space ancestral split: σ_up = η·σ_next·√(1 − σ_next²/σ²) (capped at σ_next), σ_down = √(σ_next² − σ_up²)."""
    if not eta or sigma_next == 0:
        return sigma_next, sigma_next * 0.0
    sigma_up = min(sigma_next, eta * (sigma_next ** 2 * (sigma ** 2 - sigma_next ** 2) / sigma ** 2) ** 0.5)
    return (sigma_next ** 2 - sigma_up ** 2) ** 0.5, sigma_up


def _bcast(sigma, x: torch.Tensor) -> torch.Tensor:
    """σ as a tensor shaped to broadcast over x's non-batch dims."""
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    return sigma.reshape(sigma.shape + (1,) * (x.ndim - sigma.ndim))


class DiscreteEps(ModelSampling):
    """SDXL's schedule: β scaled-linear from ``linear_start`` to ``linear_end`` over ``num_timesteps``, ε-prediction.

    ``integer_timesteps=True`` (default, ComfyUI's rule): the UNet gets the integer timestep whose table σ is nearest
    in log σ; σ itself is not snapped. ``False``: the fractional timestep by log-σ interpolation between neighbours
    (k-diffusion ``quantize=False``, diffusers with Karras/exponential sigmas). They agree for σ taken from the table.
    """

    def __init__(self, linear_start: float = 0.00085, linear_end: float = 0.012, num_timesteps: int = 1000,
                 integer_timesteps: bool = True, sigmas: torch.Tensor | None = None, zsnr: bool = False):
        if sigmas is None:
            betas = torch.linspace(linear_start ** 0.5, linear_end ** 0.5, num_timesteps, dtype=torch.float64) ** 2
            alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
            if zsnr:
                alphas_cumprod = zero_terminal_snr(alphas_cumprod)
            sigmas = ((1.0 - alphas_cumprod) / alphas_cumprod) ** 0.5
        self.sigmas = sigmas.to(torch.float32)
        self.log_sigmas = self.sigmas.log()
        self.integer_timesteps = integer_timesteps

    def truncated(self, max_timestep: int) -> "DiscreteEps":
        out = copy.copy(self)
        out.sigmas = self.sigmas[: max_timestep + 1]
        out.log_sigmas = out.sigmas.log()
        return out

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=torch.float32)
        log_sigma = sigma.to(self.log_sigmas.device).float().log().reshape(-1)
        dists = log_sigma[None, :] - self.log_sigmas[:, None]  # [T, N]
        if self.integer_timesteps:
            t = dists.abs().argmin(dim=0).float()
        else:
            n = len(self.log_sigmas)
            low = (dists >= 0).sum(dim=0).sub(1).clamp(0, n - 2)
            lo, hi = self.log_sigmas[low], self.log_sigmas[low + 1]
            w = ((log_sigma - lo) / (hi - lo)).clamp(0, 1)
            t = low.float() + w
        return t.reshape(sigma.shape).to(sigma.device)

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.float32)
        tt = t.to(self.log_sigmas.device).float().clamp(0, len(self.sigmas) - 1)
        low, high = tt.floor().long(), tt.ceil().long()
        w = tt - low
        log_sigma = (1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]
        return log_sigma.exp().to(t.device)

    def calculate_input(self, sigma, x):
        return x / (_bcast(sigma, x) ** 2 + 1.0) ** 0.5

    def calculate_denoised(self, sigma, model_output, x):
        return x - model_output * _bcast(sigma, x)

    def noise_scaling(self, sigma, noise, latent, max_denoise):
        # Full txt2img starts from the DDPM prior x_T scaled to σ-space: ε·√(1+σ²); partial runs add ε·σ.
        sigma = _bcast(sigma, noise)
        scale = (1.0 + sigma ** 2) ** 0.5 if max_denoise else sigma
        return latent + noise * scale


def zero_terminal_snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Lin et al. 2023, Algorithm 1: shift and scale √ᾱ so the last timestep is pure noise (SNR 0), keeping the
    first. ᾱ at the last step is then floored at 4.897e-8 as ComfyUI does, so σ_max stays finite (≈ 4519)."""
    root = alphas_cumprod.sqrt()
    first, last = root[0].clone(), root[-1].clone()
    out = ((root - last) * first / (first - last)) ** 2
    out[-1] = 4.8973451890853435e-08
    return out


class DiscreteV(DiscreteEps):
    """v-prediction (Salimans & Ho 2022; SD 2.x 768-v): the network predicts v = α·ε − s·x₀ of the VP sample
    z = α·x₀ + s·ε (α = 1/√(1+σ²), s = σ/√(1+σ²)), so x₀ = α·z − s·v, and with z = α·x in σ space
    D = x/(1+σ²) − v·σ/√(1+σ²)."""

    def calculate_denoised(self, sigma, model_output, x):
        sigma = _bcast(sigma, x)
        return x / (sigma ** 2 + 1.0) - model_output * sigma / (sigma ** 2 + 1.0) ** 0.5


class DiscreteX0(DiscreteEps):
    """x₀-prediction: the network's output is the denoised sample itself."""

    def calculate_denoised(self, sigma, model_output, x):
        return model_output


class DiscreteLCM(DiscreteEps):
    """A latent consistency model (Luo et al. 2023), e.g. SDXL with an LCM LoRA: distilled on 50 of the 1000
    timesteps (t = 19, 39, …, 999: diffusers LCMScheduler's ``original_inference_steps``), so its σ table holds
    those 50 and the network sees their timesteps. The ε-prediction goes through LCM's boundary condition
    D = c_out·x̂₀ + c_skip·z with c_skip = σ_d²/(τ² + σ_d²), c_out = τ/√(τ² + σ_d²), τ = 10·t, σ_d = 0.5 (the paper's
    and diffusers' scalings, on the VP sample z = x/√(1+σ²))."""
    ORIGINAL_STEPS = 50

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.skip = len(self.sigmas) // self.ORIGINAL_STEPS
        self.sigmas = self.sigmas[self.skip - 1::self.skip]
        self.log_sigmas = self.sigmas.log()

    def timestep(self, sigma):
        return super().timestep(sigma) * self.skip + (self.skip - 1)

    def sigma(self, t):
        return super().sigma((torch.as_tensor(t, dtype=torch.float32) - (self.skip - 1)) / self.skip)

    def truncated(self, max_timestep: int) -> "DiscreteLCM":
        return super().truncated(max(max_timestep - (self.skip - 1), 0) // self.skip)

    def percent_to_sigma(self, percent: float) -> float:
        if 0.0 < percent < 1.0:
            return float(self.sigma(torch.tensor((1.0 - percent) * (len(self.sigmas) * self.skip - 1))))
        return super().percent_to_sigma(percent)

    def calculate_denoised(self, sigma, model_output, x):
        x0 = super().calculate_denoised(sigma, model_output, x)
        tau = _bcast(self.timestep(sigma).to(x.device, x.dtype), x) * 10.0
        sigma = _bcast(sigma, x)
        c_skip, c_out = 0.25 / (tau ** 2 + 0.25), tau / (tau ** 2 + 0.25) ** 0.5
        return c_out * x0 + c_skip * x / (sigma ** 2 + 1.0) ** 0.5


# ComfyUI's ModelSamplingDiscrete choices.
DISCRETE = {"eps": DiscreteEps, "v_prediction": DiscreteV, "lcm": DiscreteLCM, "x0": DiscreteX0}


def _shift_time(shift, t):
    """SD3's timestep shift σ(t) = shift·t / (1 + (shift − 1)·t), for floats and tensors alike."""
    return shift * t / (1 + (shift - 1) * t)


class DiscreteFlow(ModelSampling):
    """Rectified flow (Esser et al. 2024, SD3): the noisy sample is x_σ = (1 − σ)·x₀ + σ·ε and the network predicts
    the velocity v = ε − x₀, so x₀ = x − σ·v; it sees the timestep σ·1000. Training shifted the timesteps towards
    more noise: σ(t) = shift·t / (1 + (shift − 1)·t), t in [0, 1] (§5.3.2; SD3 uses shift 3). As ComfyUI, the
    σ table the schedulers read is σ(i/1000) for i = 1…1000, a timestep-range percent p is σ(1 − p), and a sample is
    a latent noised as σ·noise + (1 − σ)·latent (img2img too), turned back by 1/(1 − σ)."""
    MULTIPLIER = 1000

    def __init__(self, shift: float = 3.0, num_timesteps: int = 1000):
        self.shift = shift
        self.sigmas = self.sigma(torch.arange(1, num_timesteps + 1, dtype=torch.float32) / num_timesteps
                                 * self.MULTIPLIER)

    def timestep(self, sigma):
        return torch.as_tensor(sigma, dtype=torch.float32) * self.MULTIPLIER

    def sigma(self, t):
        return _shift_time(self.shift, torch.as_tensor(t, dtype=torch.float32) / self.MULTIPLIER)

    def calculate_input(self, sigma, x):
        return x

    def calculate_denoised(self, sigma, model_output, x):
        return x - model_output * _bcast(sigma, x)

    def noise_scaling(self, sigma, noise, latent, max_denoise):
        sigma = _bcast(sigma, noise)
        return sigma * noise + (1.0 - sigma) * latent

    def inverse_noise_scaling(self, sigma, latent):
        return latent / (1.0 - _bcast(sigma, latent))

    def truncated(self, max_timestep: int) -> "DiscreteFlow":
        out = copy.copy(self)
        out.sigmas = self.sigmas[: max_timestep + 1]
        return out

    def percent_to_sigma(self, percent: float) -> float:
        if percent <= 0.0:
            return 1.0
        if percent >= 1.0:
            return 0.0
        # In double precision, as ComfyUI's (a Python float): it is also the first σ of solver_sigmas.
        return _shift_time(self.shift, 1.0 - percent)

    # Noise injection on the flow x = (1 − σ)·x₀ + σ·noise (ComfyUI's choices for its "CONST" models).
    sigma_ceiling = 1.0

    def alpha(self, sigma):
        return 1.0 - sigma

    def half_log_snr(self, sigma):
        """log((1 − σ)/σ): −∞ at σ = 1 (pure noise), which solver_sigmas and dpmpp_2s_midpoint keep out of the
        solvers' steps as ComfyUI does."""
        return sigma.logit().neg()

    def sigma_at(self, half_log_snr):
        return half_log_snr.neg().sigmoid()

    def solver_sigmas(self, sigmas):
        """ComfyUI's SDE samplers on flow ("offset first sigma for SNR", in dpmpp_sde, dpmpp_2m_sde(+heun),
        dpmpp_3m_sde and their _gpu forms) replace a first σ ≥ 1 by percent_to_sigma(1e-4) = σ(t = 0.9999)
        (0.99996667 at shift 3) for the whole first step, the model call included, so that λ is finite. (The
        Brownian noise is still built over the schedule's own range, as there.)"""
        if len(sigmas) < 2 or sigmas[0] < 1:
            return sigmas
        sigmas = sigmas.clone()
        sigmas[0] = self.percent_to_sigma(1e-4)
        return sigmas

    def dpmpp_2s_midpoint(self, sigma, t, h):
        """ComfyUI's dpmpp_2s_ancestral on flow (sample_dpmpp_2s_ancestral_RF) takes σ_s = 0.9999 as the midpoint
        of a step from σ = 1 exactly (λ = −∞ there), so that first step is Euler-like: with λ_s − t = ∞ the
        substep is x_s = 0.9999·x + 0.0001·D and the step x = σ_down·x + (1 − σ_down)·D(x_s; σ_s)."""
        if sigma != 1:
            return super().dpmpp_2s_midpoint(sigma, t, h)
        sigma_s = torch.full_like(sigma, 0.9999)
        return sigma_s, self.half_log_snr(sigma_s) - t

    def ancestral_step(self, sigma, sigma_next, eta=1.0):
        """The rectified-flow ancestral step (ComfyUI's *_RF samplers): σ_down = σ_next·(1 + (σ_next/σ − 1)·η), which
        is linear in η and equals the σ-space σ_next²/σ at η = 1, and σ_up the std that brings the rescaled
        sample back to noise level σ_next: σ_up² = σ_next² − (σ_down·α(σ_next)/α(σ_down))²."""
        if not eta or sigma_next == 0:
            return sigma_next, sigma_next * 0.0
        sigma_down = sigma_next * (1 + (sigma_next / sigma - 1) * eta)
        scaled = sigma_down * self.alpha(sigma_next) / self.alpha(sigma_down)
        return sigma_down, (sigma_next ** 2 - scaled ** 2) ** 0.5


# --- schedulers ---------------------------------------------------------------------------------------------------

def _append_zero(sigmas) -> torch.Tensor:
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64).reshape(-1)
    return torch.cat([sigmas, sigmas.new_zeros(1)]).to(torch.float32)


def _timestep_spaced(ms: ModelSampling, steps: int, drop_last: bool) -> torch.Tensor:
    start, end = float(ms.timestep(torch.tensor(ms.sigma_max))), float(ms.timestep(torch.tensor(ms.sigma_min)))
    ts = torch.linspace(start, end, steps + 1 if drop_last else steps, dtype=torch.float64)
    if drop_last:
        ts = ts[:-1]
    return _append_zero(ms.sigma(ts.float()))


def normal_scheduler(ms: ModelSampling, steps: int) -> torch.Tensor:
    """σ at evenly spaced timesteps from t(σ_max) to t(σ_min) inclusive."""
    return _timestep_spaced(ms, steps, drop_last=False)


def sgm_uniform_scheduler(ms: ModelSampling, steps: int) -> torch.Tensor:
    """Like normal, but spaced over steps+1 points with the last (σ_min) left out, as sgm's discretisation."""
    return _timestep_spaced(ms, steps, drop_last=True)


def karras_scheduler(ms: ModelSampling, steps: int, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. 2022 (eq. 5): evenly spaced in σ^(1/ρ) between σ_max and σ_min."""
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    lo, hi = ms.sigma_min ** (1 / rho), ms.sigma_max ** (1 / rho)
    return _append_zero((hi + ramp * (lo - hi)) ** rho)


def exponential_scheduler(ms: ModelSampling, steps: int) -> torch.Tensor:
    """Evenly spaced in log σ between σ_max and σ_min."""
    log_sigmas = torch.linspace(math.log(ms.sigma_max), math.log(ms.sigma_min), steps, dtype=torch.float64)
    return _append_zero(log_sigmas.exp())


def simple_scheduler(ms: ModelSampling, steps: int) -> torch.Tensor:
    """Table σ at evenly spaced table positions counted from the top (999, 899, … for 10 steps)."""
    n = len(ms.sigmas)
    return _append_zero(torch.stack([ms.sigmas[-(1 + int(i * n / steps))] for i in range(steps)]))


def ddim_uniform_scheduler(ms: ModelSampling, steps: int) -> torch.Tensor:
    """DDIM's uniform timesteps 1, 1+s, 1+2s, … (s = T // steps), reversed; may give one more σ than steps."""
    n = len(ms.sigmas)
    stride = max(n // steps, 1)
    return _append_zero(ms.sigmas[1:n:stride].flip(0))


@functools.cache
def _gauss_legendre_64():
    return np.polynomial.legendre.leggauss(64)


def _beta_cdf(x: np.ndarray, a: float, b: float) -> np.ndarray:
    """Regularised incomplete beta I_x(a, b) for x ≤ 1/2 (64-point Gauss–Legendre after t = u^(1/a), which
    removes the t^(a−1) singularity; (1 − t)^(b−1) is smooth there)."""
    nodes, weights = _gauss_legendre_64()
    upper = x ** a  # integrate (1/a)·(1 − u^(1/a))^(b−1) over [0, x^a]
    u = (nodes[None, :] + 1) / 2 * upper[:, None]
    integral = (weights[None, :] * (1 - u ** (1 / a)) ** (b - 1)).sum(axis=1) * upper / 2 / a
    return integral / math.exp(math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b))


def beta_quantile(q: np.ndarray, a: float, b: float) -> np.ndarray:
    """The Beta(a, b) quantile function by bisection on the CDF (no scipy at run time)."""
    def cdf(x):
        low = x <= 0.5
        out = np.empty_like(x)
        out[low] = _beta_cdf(x[low], a, b)
        out[~low] = 1 - _beta_cdf(1 - x[~low], b, a)
        return out

    lo, hi = np.zeros_like(q), np.ones_like(q)
    for _ in range(60):
        mid = (lo + hi) / 2
        below = cdf(mid) < q
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    return (lo + hi) / 2


def beta_scheduler(ms: ModelSampling, steps: int, alpha: float = 0.6, beta: float = 0.6) -> torch.Tensor:
    """'Beta Sampling is All You Need' (Lee et al. 2024): table timesteps at Beta(0.6, 0.6) quantiles of evenly
    spaced levels, so steps crowd at both ends; repeated timesteps are dropped."""
    last = len(ms.sigmas) - 1
    levels = 1 - np.linspace(0, 1, steps, endpoint=False)
    ts = np.rint(beta_quantile(levels, alpha, beta) * last).astype(int)
    ts = [t for i, t in enumerate(ts) if i == 0 or t != ts[i - 1]]
    return _append_zero(ms.sigmas[ts])


def kl_optimal_scheduler(ms: ModelSampling, steps: int) -> torch.Tensor:
    """'Align Your Steps' (Sabour et al. 2024) KL-optimal schedule: evenly spaced in arctan σ."""
    w = torch.linspace(0, 1, steps, dtype=torch.float64)
    return _append_zero(torch.tan(w * math.atan(ms.sigma_min) + (1 - w) * math.atan(ms.sigma_max)))


SCHEDULERS = {
    "simple": simple_scheduler,
    "sgm_uniform": sgm_uniform_scheduler,
    "karras": karras_scheduler,
    "exponential": exponential_scheduler,
    "ddim_uniform": ddim_uniform_scheduler,
    "beta": beta_scheduler,
    "normal": normal_scheduler,
    "kl_optimal": kl_optimal_scheduler,
}
SCHEDULER_NAMES = list(SCHEDULERS)  # ComfyUI's order, leaving out linear_quadratic (a flow-model schedule)

# ComfyUI computes these samplers' schedules for steps+1 and drops the penultimate σ.
DISCARD_PENULTIMATE_SIGMA_SAMPLERS = frozenset({"dpm_2", "dpm_2_ancestral", "uni_pc", "uni_pc_bh2"})


def get_sigmas(model_sampling: ModelSampling, scheduler: str, steps: int) -> torch.Tensor:
    """The σ list (float32, descending, ending with 0) of ``scheduler`` for ``steps`` steps."""
    if scheduler not in SCHEDULERS:
        raise ValueError(f"scheduler: {scheduler!r} is not one of {SCHEDULER_NAMES}")
    if steps < 1:
        raise ValueError(f"steps: must be at least 1, got {steps}")
    return SCHEDULERS[scheduler](model_sampling, steps)


def ksampler_sigmas(model_sampling: ModelSampling, scheduler: str, steps: int, denoise: float = 1.0,
                    sampler_name: str = "euler") -> torch.Tensor:
    """The schedule ComfyUI's KSampler runs.

    ``denoise < 1`` computes ``int(steps / denoise)`` steps and keeps the last ``steps + 1`` σ (so img2img runs
    ``steps`` steps from a lower start); ``denoise <= 0`` gives an empty schedule (nothing to do). dpm_2-type
    samplers compute one step more and drop the penultimate σ so their final Euler step starts from σ_min.
    """
    if denoise <= 0.0:
        return torch.zeros(0, dtype=torch.float32)
    full = denoise > 0.9999
    n = steps if full else int(steps / denoise)
    if sampler_name in DISCARD_PENULTIMATE_SIGMA_SAMPLERS:
        sigmas = get_sigmas(model_sampling, scheduler, n + 1)
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    else:
        sigmas = get_sigmas(model_sampling, scheduler, n)
    return sigmas if full else sigmas[-(steps + 1):]
