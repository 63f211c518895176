"""The discrete (Stable Diffusion) noise schedule and sigma schedulers, computed the way ComfyUI computes them.

Our own implementation, checked numerically against ComfyUI (``tests/core/test_sampling_comfy.py``: bit-exact on
CPU fp32 against the vendored March-2024 copy and against the current one when ``COMFYUI_PATH`` points at it).

What is mirrored, and from where:

* :class:`DiscreteSchedule` is ``comfy.model_sampling.ModelSamplingDiscrete`` combined with the ``EPS`` prediction
  type: ``beta_schedule="linear"`` in ComfyUI's (and LDM's) naming is the *scaled-linear* schedule
  ``betas = linspace(sqrt(0.00085), sqrt(0.012), 1000, float64) ** 2``; ``sigmas = sqrt((1 - acp) / acp)``
  computed in float64 and stored as float32, ``log_sigmas = log(sigmas_float64)`` stored as float32.
* ``timestep(sigma)`` is the index of the nearest ``log_sigma`` (an integer tensor, not an interpolation);
  ``sigma(t)`` interpolates ``log_sigmas`` linearly between ``floor(t)`` and ``ceil(t)``.
* Schedulers (``get_sigmas``): ``normal``, ``karras``, ``exponential``, ``simple``, ``sgm_uniform``,
  ``ddim_uniform``; each returns ``steps + 1`` float32 sigmas ending in 0.

ComfyUI 2024 vs. current (Oct 2025), checked by reading both and by the tests:

* ``normal``: the current version adds a branch for zero-terminal-SNR schedules (when ``sigma(end)`` is ~0 it
  takes one more step and does not append a trailing 0) and converts each sigma with ``float()`` before building
  the tensor. For this schedule (``sigma_min`` = 0.0292, never ~0) both versions give identical values; we
  implement the current logic, branch included.
* ``ddim_uniform``: same zsnr-only difference, same handling.
* ``karras``, ``exponential``, ``simple``, ``sgm_uniform``, the schedule itself, ``timestep``/``sigma``,
  ``calculate_input``/``calculate_denoised``/``noise_scaling``: unchanged in value. (The current version reshapes a
  one-element sigma to a 0-d tensor instead of ``[1, 1, 1, 1]``; broadcasting gives the same numbers.)
"""
from __future__ import annotations

import math
from typing import List, Sequence, Union

import torch

SCHEDULER_NAMES = ("normal", "karras", "exponential", "simple", "sgm_uniform", "ddim_uniform")

SigmaLike = Union[torch.Tensor, float]


def _as_tensor(sigma: SigmaLike) -> torch.Tensor:
    return sigma if isinstance(sigma, torch.Tensor) else torch.tensor(float(sigma))


def _reshape_sigma(sigma: torch.Tensor, ndim: int) -> torch.Tensor:
    """One value broadcasts as a scalar; a batch of sigmas as ``[B, 1, ..., 1]``."""
    if sigma.nelement() == 1:
        return sigma.view(())
    return sigma.view(sigma.shape[:1] + (1,) * (ndim - 1))


class DiscreteSchedule:
    """The SD-style discrete schedule of an eps-prediction model (ComfyUI's ``ModelSamplingDiscrete`` + ``EPS``).

    ``sigmas`` (float32, ascending, ``num_timesteps`` values) and ``log_sigmas`` live on ``device`` (CPU unless
    moved with :meth:`to`).
    """

    sigma_data = 1.0

    def __init__(
        self,
        linear_start: float = 0.00085,
        linear_end: float = 0.012,
        num_timesteps: int = 1000,
        beta_schedule: str = "linear",
    ) -> None:
        if beta_schedule == "linear":  # LDM/ComfyUI name for "scaled linear"
            betas = torch.linspace(linear_start ** 0.5, linear_end ** 0.5, num_timesteps, dtype=torch.float64) ** 2
        elif beta_schedule == "sqrt_linear":
            betas = torch.linspace(linear_start, linear_end, num_timesteps, dtype=torch.float64)
        else:
            raise ValueError(
                f"Unknown beta_schedule {beta_schedule!r}: this schedule supports 'linear' (SD's scaled-linear) "
                "and 'sqrt_linear'."
            )
        self.beta_schedule = beta_schedule
        self.linear_start = float(linear_start)
        self.linear_end = float(linear_end)
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        sigmas64 = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
        self.num_timesteps = int(betas.shape[0])
        self.sigmas = sigmas64.float()
        self.log_sigmas = sigmas64.log().float()

    # ------------------------------------------------------------------ device
    @property
    def device(self) -> torch.device:
        return self.sigmas.device

    def to(self, device) -> "DiscreteSchedule":
        self.sigmas = self.sigmas.to(device)
        self.log_sigmas = self.log_sigmas.to(device)
        return self

    # ------------------------------------------------------------- sigma <-> t
    @property
    def sigma_min(self) -> torch.Tensor:
        return self.sigmas[0]

    @property
    def sigma_max(self) -> torch.Tensor:
        return self.sigmas[-1]

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """Index (int64, same shape and device as ``sigma``) of the table entry nearest in log-sigma."""
        log_sigma = sigma.log()
        dists = log_sigma.to(self.log_sigmas.device) - self.log_sigmas[:, None]
        return dists.abs().argmin(dim=0).view(sigma.shape).to(sigma.device)

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        """Sigma at a (possibly fractional) timestep: linear interpolation of log-sigma."""
        t = torch.clamp(timestep.float().to(self.log_sigmas.device), min=0, max=(len(self.sigmas) - 1))
        low_idx = t.floor().long()
        high_idx = t.ceil().long()
        w = t.frac()
        log_sigma = (1 - w) * self.log_sigmas[low_idx] + w * self.log_sigmas[high_idx]
        return log_sigma.exp().to(timestep.device)

    # ------------------------------------------------------------ eps algebra
    def calculate_input(self, sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """What an eps network sees: ``x / sqrt(sigma^2 + 1)``."""
        sigma = _reshape_sigma(sigma, x.ndim)
        return x / (sigma ** 2 + self.sigma_data ** 2) ** 0.5

    def calculate_denoised(self, sigma: torch.Tensor, eps: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Denoised prediction from the network output: ``x - eps * sigma``."""
        sigma = _reshape_sigma(sigma, eps.ndim)
        return x - eps * sigma

    def noise_scaling(
        self, sigma: torch.Tensor, noise: torch.Tensor, latent_image: torch.Tensor, max_denoise: bool = False
    ) -> torch.Tensor:
        """The starting point of sampling: ``latent + noise * sigma`` (``* sqrt(1 + sigma^2)`` at full denoise)."""
        sigma = _reshape_sigma(_as_tensor(sigma), noise.ndim)
        if max_denoise:
            noise = noise * torch.sqrt(1.0 + sigma ** 2.0)
        else:
            noise = noise * sigma
        noise += latent_image
        return noise

    def inverse_noise_scaling(self, sigma: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        return latent

    def is_max_denoise(self, sigmas: torch.Tensor) -> bool:
        """ComfyUI's ``KSAMPLER.max_denoise``: the run starts at (or above) the schedule's largest sigma."""
        max_sigma = float(self.sigma_max)
        sigma = float(sigmas[0])
        return math.isclose(max_sigma, sigma, rel_tol=1e-05) or sigma > max_sigma

    def eps_from_denoised(self, x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
        """``(x - denoised) / sigma``: the eps (Karras derivative) a denoised prediction implies."""
        return (x - denoised) / _reshape_sigma(_as_tensor(sigma).to(x.device), x.ndim)


# --------------------------------------------------------------------------------------------- schedulers
def _append_zero(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, x.new_zeros([1])])


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022): interpolate ``sigma^(1/rho)`` linearly; float32, ``n + 1`` values ending in 0."""
    ramp = torch.linspace(0, 1, n)
    min_inv_rho = sigma_min ** (1 / rho)
    max_inv_rho = sigma_max ** (1 / rho)
    sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    return _append_zero(sigmas)


def exponential_sigmas(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Evenly spaced in log-sigma; float32, ``n + 1`` values ending in 0."""
    sigmas = torch.linspace(math.log(sigma_max), math.log(sigma_min), n).exp()
    return _append_zero(sigmas)


def normal_sigmas(schedule: DiscreteSchedule, steps: int, sgm: bool = False) -> torch.Tensor:
    """ComfyUI's ``normal`` (``sgm=False``) and ``sgm_uniform`` (``sgm=True``) schedulers.

    Timesteps evenly spaced from ``timestep(sigma_max)`` to ``timestep(sigma_min)`` (sgm: ``steps + 1`` points,
    last dropped), each mapped through :meth:`DiscreteSchedule.sigma` one at a time (as ComfyUI does; a
    vectorised ``exp`` may round differently), then a trailing 0.
    """
    s = schedule
    start = s.timestep(s.sigma_max)
    end = s.timestep(s.sigma_min)
    append_zero = True
    if sgm:
        timesteps = torch.linspace(start, end, steps + 1)[:-1]
    else:
        if math.isclose(float(s.sigma(end)), 0, abs_tol=0.00001):  # zero-terminal-SNR schedules only
            steps += 1
            append_zero = False
        timesteps = torch.linspace(start, end, steps)
    sigs: List[float] = [float(s.sigma(timesteps[i])) for i in range(len(timesteps))]
    if append_zero:
        sigs.append(0.0)
    return torch.tensor(sigs, dtype=torch.float32)


def simple_sigmas(schedule: DiscreteSchedule, steps: int) -> torch.Tensor:
    """Every ``len(sigmas)/steps``-th table entry from the top, then 0."""
    s = schedule
    ss = len(s.sigmas) / steps
    sigs = [float(s.sigmas[-(1 + int(x * ss))]) for x in range(steps)]
    sigs.append(0.0)
    return torch.tensor(sigs, dtype=torch.float32)


def ddim_uniform_sigmas(schedule: DiscreteSchedule, steps: int) -> torch.Tensor:
    """Every ``len(sigmas)//steps``-th table entry from index 1 upwards, reversed, ending in 0."""
    s = schedule
    x = 1
    if math.isclose(float(s.sigmas[x]), 0, abs_tol=0.00001):
        steps += 1
        sigs: List[float] = []
    else:
        sigs = [0.0]
    ss = max(len(s.sigmas) // steps, 1)
    while x < len(s.sigmas):
        sigs.append(float(s.sigmas[x]))
        x += ss
    return torch.tensor(sigs[::-1], dtype=torch.float32)


def get_sigmas(schedule: DiscreteSchedule, scheduler: str, steps: int) -> torch.Tensor:
    """The sigmas ComfyUI's KSampler uses for ``scheduler`` and ``steps`` (denoise = 1): float32 on CPU."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}.")
    if scheduler == "normal":
        return normal_sigmas(schedule, steps)
    if scheduler == "sgm_uniform":
        return normal_sigmas(schedule, steps, sgm=True)
    if scheduler == "simple":
        return simple_sigmas(schedule, steps)
    if scheduler == "ddim_uniform":
        return ddim_uniform_sigmas(schedule, steps)
    if scheduler == "karras":
        return karras_sigmas(steps, float(schedule.sigma_min), float(schedule.sigma_max))
    if scheduler == "exponential":
        return exponential_sigmas(steps, float(schedule.sigma_min), float(schedule.sigma_max))
    raise ValueError(f"Unknown scheduler {scheduler!r}; choose one of {', '.join(SCHEDULER_NAMES)}.")


def get_sigmas_denoise(schedule: DiscreteSchedule, scheduler: str, steps: int, denoise: float = 1.0) -> torch.Tensor:
    """KSampler's ``set_steps``: with ``denoise < 1`` the tail of a longer schedule (``int(steps / denoise)``)."""
    if denoise is None or denoise > 0.9999:
        return get_sigmas(schedule, scheduler, steps)
    if denoise <= 0.0:
        return torch.zeros([0])
    new_steps = int(steps / denoise)
    return get_sigmas(schedule, scheduler, new_steps)[-(steps + 1):]


__all__: Sequence[str] = [
    "DiscreteSchedule",
    "SCHEDULER_NAMES",
    "get_sigmas",
    "get_sigmas_denoise",
    "normal_sigmas",
    "simple_sigmas",
    "karras_sigmas",
    "exponential_sigmas",
    "ddim_uniform_sigmas",
]
