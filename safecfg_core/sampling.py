"""Sampling the way ComfyUI's KSampler does it (Euler, discrete eps models), and the guided denoisers.

Our own implementation of what ComfyUI computes, checked numerically against it
(``tests/core/test_sampling_comfy.py``: bit-exact on CPU fp32, 2024 vendored copy and, with ``COMFYUI_PATH``, the
current one):

* :func:`prepare_noise` is ``comfy.sample.prepare_noise``: one CPU generator seeded with ``seed``; the whole latent
  batch is drawn in one ``randn`` (so row ``i`` of a batch differs from a batch-1 run with the same seed, exactly as
  in ComfyUI), or per ``batch_index`` with ``noise_inds``. Unlike ComfyUI we seed a private generator instead of
  ``torch.manual_seed`` (same numbers, no global side effect).
* :class:`DiscreteEpsDenoiser` is ``comfy.model_base.BaseModel.apply_model`` for an eps model:
  ``x_in = calculate_input(sigma, x)`` in x's dtype, then cast to the network dtype; ``t = timestep(sigma).float()``;
  context (and ``y``) cast to the network dtype; network output ``.float()``; ``denoised = x - eps * sigma``.
* :func:`sample_euler` is ``comfy.k_diffusion.sampling.sample_euler`` with default arguments (no churn).
* :class:`CFGDenoise` is ComfyUI's ``sampling_function`` for one positive and one negative conditioning: one batched
  model call with the chunks in ComfyUI's order (uncond first, then cond), ``uncond + (cond - uncond) * w``; at
  ``w == 1`` only the cond pass runs (ComfyUI's cfg1 optimisation) and its output is returned as is.
* :func:`sample` is ``KSampler`` with ``denoise=1``: ``latent`` (zeros by default) ``* scale_factor``, noise scaled
  (with ``max_denoise`` when the run starts at sigma_max), Euler, result ``/ scale_factor``.

Batch layout used by the helpers: ``P`` prompts x ``S`` seeds run as ``N = P * S`` rows, prompt-major
(``[p0 s0, p0 s1, ..., p1 s0, ...]``); a conditioning of 1, ``P`` or ``N`` rows is expanded to ``N``. Each row
starts from exactly the noise of a batch-1 ComfyUI run with its seed; its result equals that run up to float
rounding only, because the network's kernels are not batch-invariant (measured: 2.5e-5 max abs difference after
10 steps with the demo DiT on CPU). ComfyUI batches the same way, so this is no deviation from it.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from .conditioning import Cond, Denoiser
from .guidance import cfg_combine  # the one CFG formula: SafeCFG with u* == u is CFG bit for bit
from .schedules import DiscreteSchedule, get_sigmas

GuidedDenoise = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``guided(x [B,C,H,W], sigma [B]) -> denoised [B,C,H,W]``: what a sampler calls each step."""


# ------------------------------------------------------------------------------------------------- noise
def prepare_noise(
    shape: Sequence[int],
    seed: int,
    noise_inds: Optional[Sequence[int]] = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """ComfyUI's initial noise for a latent of ``shape`` (``[B, C, H, W]``), always drawn on the CPU.

    ``noise_inds`` (ComfyUI's latent ``batch_index``) draws one ``[1, C, H, W]`` noise per index up to the largest
    and picks rows by index; without it the whole batch comes from one ``randn`` call.
    """
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    shape = list(shape)
    if noise_inds is None:
        return torch.randn(shape, dtype=dtype, generator=generator, device="cpu")
    unique_inds, inverse = np.unique(np.asarray(noise_inds), return_inverse=True)
    noises = []
    for i in range(int(unique_inds[-1]) + 1):
        noise = torch.randn([1] + shape[1:], dtype=dtype, generator=generator, device="cpu")
        if i in unique_inds:
            noises.append(noise)
    return torch.cat([noises[int(i)] for i in np.asarray(inverse).reshape(-1)], dim=0)


def noise_for_seeds(item_shape: Sequence[int], seeds: Sequence[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``[len(seeds), C, H, W]``: row i is exactly the noise of a batch-1 ComfyUI run with ``seeds[i]``."""
    item_shape = list(item_shape)
    if len(item_shape) == 4:
        if item_shape[0] != 1:
            raise ValueError(f"noise_for_seeds takes the shape of ONE latent ([C,H,W] or [1,C,H,W]), got {item_shape}.")
        item_shape = item_shape[1:]
    return torch.cat([prepare_noise([1] + item_shape, s, dtype=dtype) for s in seeds], dim=0)


# ------------------------------------------------------------------------------------------- batching
def expand_cond(cond: Cond, n: int) -> Cond:
    """Expand a conditioning of 1, ``P`` (``n % P == 0``, prompt-major) or ``n`` rows to ``n`` rows."""
    b = cond.batch_size
    if b == n:
        return cond
    if b == 1:
        return Cond(
            cond.tokens.expand(n, -1, -1),
            None if cond.pooled is None else cond.pooled.expand(n, -1),
        )
    if n % b == 0:
        return cond.repeat_batch(n // b)
    raise ValueError(
        f"A conditioning with {b} rows cannot be spread over a batch of {n}: give 1 row, one per prompt "
        f"(batch = prompts x seeds, prompt-major) or one per batch row."
    )


def batch_prompts_seeds(
    cond: Cond, seeds: Sequence[int], item_shape: Sequence[int], dtype: torch.dtype = torch.float32
) -> Tuple[Cond, torch.Tensor]:
    """``P`` prompts x ``S`` seeds as one batch: ``(cond [P*S], noise [P*S, C, H, W])``, prompt-major.

    Row ``p * S + s`` gets prompt ``p`` and the noise a batch-1 ComfyUI run with ``seeds[s]`` would use.
    """
    p, s = cond.batch_size, len(seeds)
    noise = noise_for_seeds(item_shape, seeds, dtype=dtype).repeat(p, 1, 1, 1)
    return cond.repeat_batch(s), noise


# ------------------------------------------------------------------------------------------- denoiser
def _network_dtype(net) -> torch.dtype:
    dt = getattr(net, "dtype", None)
    if isinstance(dt, torch.dtype):
        return dt
    for p in getattr(net, "parameters", lambda: iter(()))():
        return p.dtype
    return torch.float32


class DiscreteEpsDenoiser:
    """A raw eps network ``net(x_in, t, context=tokens[, y=adm]) -> eps`` as a :class:`Denoiser`.

    Mirrors ``BaseModel.apply_model``: input scaling in x's dtype, then cast to ``dtype`` (default: the network's
    ``dtype`` attribute or first parameter's dtype, like ``diffusion_model.dtype``); ``t`` is the nearest table index
    as float32; the context (and ``y``) cast to ``dtype``; the output cast to float32 before
    ``denoised = x - eps * sigma``. ``y``: when the conditioning has a pooled vector, ``adm(pooled)`` (default: the
    pooled vector itself) is passed as ``y`` (SDXL-style ADM input).
    """

    def __init__(
        self,
        net: Callable[..., torch.Tensor],
        schedule: DiscreteSchedule,
        dtype: Optional[torch.dtype] = None,
        adm: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
        net_kwargs: Optional[Dict[str, object]] = None,
    ) -> None:
        self.net = net
        self.schedule = schedule
        self.dtype = dtype
        self.adm = adm
        self.net_kwargs = dict(net_kwargs or {})

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: Cond) -> torch.Tensor:
        dtype = self.dtype if self.dtype is not None else _network_dtype(self.net)
        xc = self.schedule.calculate_input(sigma, x)
        xc = xc.to(dtype)
        t = self.schedule.timestep(sigma).float()
        context = cond.tokens.to(dtype)
        kwargs = dict(self.net_kwargs)
        if cond.pooled is not None:
            y = self.adm(cond.pooled) if self.adm is not None else cond.pooled
            if y.dtype not in (torch.int, torch.long):
                y = y.to(dtype)
            kwargs["y"] = y
        out = self.net(xc, t, context=context, **kwargs).float()
        return self.schedule.calculate_denoised(sigma, out, x)


# -------------------------------------------------------------------------------------------- sampler
def _append_dims(x: torch.Tensor, target_dims: int) -> torch.Tensor:
    dims_to_append = target_dims - x.ndim
    if dims_to_append < 0:
        raise ValueError(f"sigma has {x.ndim} dims, more than the {target_dims} of the sample.")
    return x[(...,) + (None,) * dims_to_append]


@torch.no_grad()
def sample_euler(
    guided_denoise: GuidedDenoise,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    callback: Optional[Callable[[dict], None]] = None,
) -> torch.Tensor:
    """Euler steps (Karras et al. 2022, Algorithm 2, no churn) exactly as ComfyUI's ``sample_euler`` defaults.

    ``callback`` receives ``{'x', 'i', 'sigma', 'sigma_hat', 'denoised'}`` each step, like k-diffusion's.
    """
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        sigma_hat = sigmas[i]
        denoised = guided_denoise(x, sigma_hat * s_in)
        d = (x - denoised) / _append_dims(sigma_hat, x.ndim)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigma_hat, "denoised": denoised})
        dt = sigmas[i + 1] - sigma_hat
        x = x + d * dt
    return x


@torch.no_grad()
def sample(
    guided_denoise: GuidedDenoise,
    schedule: DiscreteSchedule,
    *,
    noise: Optional[torch.Tensor] = None,
    shape: Optional[Sequence[int]] = None,
    seed: int = 0,
    steps: int = 20,
    scheduler: str = "normal",
    sigmas: Optional[torch.Tensor] = None,
    latent: Optional[torch.Tensor] = None,
    scale_factor: float = 1.0,
    device: Optional[torch.device] = None,
    callback: Optional[Callable[[dict], None]] = None,
) -> torch.Tensor:
    """KSampler (sampler ``euler``, ``denoise=1``) around any guided denoiser; returns the LATENT ComfyUI returns.

    ``noise`` defaults to :func:`prepare_noise` (``shape``, ``seed``); ``latent`` to zeros (EmptyLatentImage).
    ``scale_factor`` is the model's latent format scale (``process_latent_in``/``out``; 0.18215 for SD1.x, 1.0 for
    the demo world): it only matters for a non-zero input latent and for the returned tensor.
    """
    if noise is None:
        if shape is None:
            raise ValueError("sample() needs either noise or a latent shape to draw noise for.")
        noise = prepare_noise(shape, seed)
    if device is None:
        device = schedule.device
    if latent is None:
        latent = torch.zeros_like(noise)
    if sigmas is None:
        sigmas = get_sigmas(schedule, scheduler, steps)
    sigmas = sigmas.to(device)
    noise = noise.to(device)
    latent = latent.to(device) * scale_factor
    x = schedule.noise_scaling(sigmas[0], noise, latent, schedule.is_max_denoise(sigmas))
    out = sample_euler(guided_denoise, x, sigmas, callback=callback)
    out = schedule.inverse_noise_scaling(sigmas[-1], out)
    return out.to(torch.float32) / scale_factor


# --------------------------------------------------------------------------------------- guided denoise
class CFGDenoise:
    """Classifier-free guidance with ONE batched model call: ``D(u) + w * (D(c) - D(u))``.

    ``c`` and ``u`` may have 1, ``P`` or ``N`` rows (see :func:`expand_cond`); they are expanded to the batch of
    ``x`` at call time. Chunk order in the batched call is ComfyUI's: ``[uncond rows, cond rows]``.
    At ``w == 1`` only the cond pass runs and its output is returned (ComfyUI's cfg1 shortcut).
    """

    def __init__(self, denoiser: Denoiser, c: Cond, u: Cond, w: float) -> None:
        self.denoiser = denoiser
        self.c = c
        self.u = u
        self.w = float(w)
        self.calls = 0

    def passes(self, x: torch.Tensor, sigma: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(D(x, sigma, c), D(x, sigma, u))`` from one batched call."""
        n = x.shape[0]
        c = expand_cond(self.c, n)
        u = expand_cond(self.u, n)
        out = self.denoiser(torch.cat([x, x]), torch.cat([sigma, sigma]), Cond.cat([u, c]))
        d_uncond, d_cond = out.chunk(2)
        return d_cond, d_uncond

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if math.isclose(self.w, 1.0):
            return self.denoiser(x, sigma, expand_cond(self.c, x.shape[0]))
        d_cond, d_uncond = self.passes(x, sigma)
        return cfg_combine(d_cond, d_uncond, self.w)


class SafeCFGDenoise(CFGDenoise):
    """SafeCFG: CFG with the redirected negative ``u* = u + s * Delta(c, u)`` (METHOD.md).

    ``u*`` is computed ONCE here, before sampling, by ``safe_guidance.redirected_negative(c, u)`` (a
    :class:`~safecfg_core.guidance.SafeGuidance`, or anything with that method returning an object with
    ``u_star``); each step then costs exactly what :class:`CFGDenoise` costs. ``self.redirect`` keeps the whole
    result (``delta``, ``score``, ``s``) for reporting. At ``w == 1`` there is no negative pass, hence nothing to
    redirect: the output equals plain CFG (the cond prediction).
    """

    def __init__(self, denoiser: Denoiser, c: Cond, u: Cond, w: float, safe_guidance) -> None:
        u_full = expand_cond(u, c.batch_size)
        with torch.no_grad():
            self.redirect = safe_guidance.redirected_negative(c, u_full)
        u_star = self.redirect.u_star
        u_star = Cond(
            u_star.tokens.to(u_full.tokens.dtype),
            None if u_star.pooled is None else u_star.pooled.to(u_full.pooled.dtype if u_full.pooled is not None
                                                                   else u_star.pooled.dtype),
        )
        super().__init__(denoiser, c, u_star, w)
        self.u_original = u


__all__ = [
    "GuidedDenoise",
    "prepare_noise",
    "noise_for_seeds",
    "expand_cond",
    "batch_prompts_seeds",
    "DiscreteEpsDenoiser",
    "sample_euler",
    "sample",
    "CFGDenoise",
    "SafeCFGDenoise",
    "cfg_combine",
]
