"""Guidance math: redirect the negative conditioning, gate it by harmfulness, combine CFG, score harm.

Everything here is written so that "nothing to redirect" is *exactly* plain CFG, not approximately: the gate
is exactly zero below its window, :func:`redirect` keeps ``u`` rows bit-identical where the applied strength is
zero (``torch.where``, not arithmetic), and :func:`cfg_combine` is the one CFG formula used for both CFG and
SafeCFG (same operation order, so ``u* == u`` gives the same bits).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Union

import torch

from .conditioning import Cond, Denoiser
from .errors import NonFiniteInputError
from .hgr import HGRBundle
from .hgr.net import rms_score
from .padding import pad_to_common_length

GATE_MODES = ("smooth", "hard", "always", "off")


def check_finite(name: str, value: Union[torch.Tensor, Cond, None]) -> None:
    """Raise :class:`NonFiniteInputError` naming ``name`` if ``value`` holds any NaN or inf.

    One reduction per prompt (not per step), so it costs nothing measurable and NaN never passes silently.
    """
    if value is None:
        return
    if isinstance(value, Cond):
        check_finite(f"{name} tokens", value.tokens)
        check_finite(f"{name} pooled vector", value.pooled)
        return
    if not value.is_floating_point() or bool(torch.isfinite(value).all()):
        return
    n_nan = int(torch.isnan(value).sum())
    n_inf = int(torch.isinf(value).sum())
    raise NonFiniteInputError(
        f"{name} contains {n_nan} NaN and {n_inf} inf value(s) out of {value.numel()}. Something upstream "
        "produced invalid numbers (often a model or text encoder run in fp16 that overflowed): run it in fp32 "
        "or bf16, or check the node that feeds this input."
    )


def prompt_harm_score(delta: Cond) -> torch.Tensor:
    """Prompt-level harm score of an HGR without a harm head, per row: RMS of ``Delta`` over all its tokens (and
    pooled part), in fp32. Zero for prompts the HGR leaves alone, large for those it redirects (METHOD.md, "Harmful
    Euclidean Distance" at the prompt level). :meth:`HarmfulGuidanceRedirector.prompt_score` is the gate's score
    for any HGR (the harm head's where there is one)."""
    return rms_score(delta)


@dataclass
class GateConfig:
    """How the harm score turns into applied strength ``s``.

    ``smooth``: 0 up to ``threshold*(1-softness)``, ``strength`` from ``threshold*(1+softness)``, smoothstep
    between (no visible jump for prompts near the threshold). ``hard``: ``strength`` iff score >= threshold.
    ``always``: ``strength`` regardless (the redirection alone decides). ``off``: 0 (plain CFG, for A/B).
    ``threshold=None`` means: use the one calibrated in the HGR file.
    """

    strength: float = 1.0
    threshold: Optional[float] = None
    mode: str = "smooth"
    softness: float = 0.25

    def __post_init__(self) -> None:
        if self.mode not in GATE_MODES:
            raise ValueError(f"Gate mode {self.mode!r} is unknown; use one of {', '.join(GATE_MODES)}.")
        if not (0.0 <= float(self.softness) < 1.0):
            raise ValueError(f"Gate softness must be in [0, 1), got {self.softness}.")
        if not torch.isfinite(torch.tensor(float(self.strength))):
            raise ValueError(f"Gate strength must be a finite number, got {self.strength}.")
        if self.threshold is not None and not (float(self.threshold) >= 0.0):
            raise ValueError(f"Gate threshold must be >= 0 (or None to use the HGR file's), got {self.threshold}.")

    @property
    def needs_threshold(self) -> bool:
        return self.mode in ("smooth", "hard")


def gate_strength(score: torch.Tensor, gate: GateConfig, threshold: Optional[float] = None) -> torch.Tensor:
    """Applied strength ``s [B]`` (fp32, on score's device) for harm scores ``score [B]``.

    ``gate.threshold`` wins over ``threshold`` (the file's calibrated value).
    """
    score = score.float()
    strength = torch.full_like(score, float(gate.strength))
    zero = torch.zeros_like(score)
    if gate.mode == "off":
        return zero
    if gate.mode == "always":
        return strength
    thr = gate.threshold if gate.threshold is not None else threshold
    if thr is None:
        raise ValueError(
            f"The '{gate.mode}' gate needs a threshold, but none was given and the HGR file has no calibrated "
            "one. Set a threshold on the node, use gate mode 'always', or calibrate the HGR."
        )
    thr = float(thr)
    lo, hi = thr * (1.0 - gate.softness), thr * (1.0 + gate.softness)
    if gate.mode == "hard" or hi <= lo:
        return torch.where(score >= thr, strength, zero)
    t = ((score - lo) / (hi - lo)).clamp(0.0, 1.0)
    smooth = strength * (t * t * (3.0 - 2.0 * t))
    return torch.where(score <= lo, zero, torch.where(score >= hi, strength, smooth))


def softness_beyond_calibration(gate: GateConfig, threshold: Optional[float],
                                calibration: Mapping[str, Any]) -> Optional[str]:
    """Why a smooth gate wider than the one the HGR file was calibrated for lets clean prompts through, or None.

    The calibrated threshold is ``q * margin / (1 - softness_cal)`` (``q``: the clean scores' ``1 - fpr``
    quantile), so the ramp's lower edge sits above ``q``. A wider ramp on the same threshold moves that edge down,
    possibly below ``q``: then more than ``fpr`` of clean prompts are redirected a little, and their images are no
    longer plain CFG's. ``threshold`` and ``calibration`` are the file's; only that threshold is checked (one set on
    the gate by hand is the user's choice).
    """
    calibrated = calibration.get("softness")
    if (gate.mode != "smooth" or gate.threshold is not None or threshold is None
            or not isinstance(calibrated, (int, float)) or float(gate.softness) <= float(calibrated) + 1e-9):
        return None
    calibrated, softness = float(calibrated), float(gate.softness)
    calibrated_edge, lower_edge = float(threshold) * (1.0 - calibrated), float(threshold) * (1.0 - softness)
    where = f" The ramp now starts at score {lower_edge:.4g} (calibrated: {calibrated_edge:.4g})"
    quantile, fpr = calibration.get("clean_quantile"), calibration.get("fpr")
    if isinstance(quantile, (int, float)) and isinstance(fpr, (int, float)):
        where += f"; {100 * (1 - fpr):g}% of the clean calibration prompts score up to {quantile:.4g}"
    return (f"softness {softness:g} is wider than the {calibrated:g} this HGR's threshold was calibrated for, so some "
            f"clean prompts may be redirected a little and no longer match plain CFG.{where}. Use softness "
            f"{calibrated:g} or lower, or set a higher threshold.")


def _row_view(s: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return s.reshape((-1,) + (1,) * (like.dim() - 1))


def redirect(u: Cond, delta: Cond, s: torch.Tensor) -> Cond:
    """``u* = u + s * Delta`` per row, in u's dtype/device; rows with ``s == 0`` are ``u`` bit for bit.

    ``delta`` must have u's token shape (the HGR guarantees it). A Delta without a pooled part leaves u's pooled
    vector unchanged.
    """
    if tuple(delta.tokens.shape) != tuple(u.tokens.shape):
        raise ValueError(
            f"Delta tokens {tuple(delta.tokens.shape)} do not match the negative conditioning "
            f"{tuple(u.tokens.shape)}; compute Delta for exactly this negative."
        )
    s = s.to(device=u.tokens.device)
    if s.shape != (u.batch_size,):
        raise ValueError(f"Strength must have one value per row ({u.batch_size}), got shape {tuple(s.shape)}.")
    keep = s == 0

    def _one(x: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        d = d.to(device=x.device, dtype=x.dtype)
        moved = x + _row_view(s.to(x.dtype), x) * d
        return torch.where(_row_view(keep, x), x, moved)

    tokens = _one(u.tokens, delta.tokens)
    pooled = u.pooled
    if delta.pooled is not None and u.pooled is not None:
        pooled = _one(u.pooled, delta.pooled)
    return Cond(tokens, pooled)


def cfg_combine(d_cond: torch.Tensor, d_uncond: torch.Tensor, w: Union[float, torch.Tensor]) -> torch.Tensor:
    """``d_uncond + w * (d_cond - d_uncond)``: CFG, and SafeCFG when ``d_uncond`` is ``D(u*)``.

    The single implementation used everywhere, so SafeCFG with ``u* == u`` is bit-identical to CFG. ``w`` may
    be a float or a per-row tensor ``[B]``.
    """
    if isinstance(w, torch.Tensor) and w.dim() == 1:
        w = _row_view(w.to(device=d_cond.device, dtype=d_cond.dtype), d_cond)
    return d_uncond + w * (d_cond - d_uncond)


def score_level_harm(
    denoiser: Denoiser,
    x0: torch.Tensor,
    c: Cond,
    u: Cond,
    u_star: Cond,
    sigmas: Union[Sequence[float], torch.Tensor],
    noise: Optional[torch.Tensor] = None,
    generator: Optional[torch.Generator] = None,
    eps: float = 1e-12,
) -> torch.Tensor:
    """Score-level harm of latents ``x0 [B, ...]`` for their prompts (METHOD.md): per row, averaged over sigmas,
    ``||D(x, s, u*) - D(x, s, u)|| / ||D(x, s, c) - D(x, s, u)||`` with ``x = x0 + s * noise``.

    One batched denoiser call (c, u, u* rows together) per sigma. ``noise`` is ``[B, ...]`` (shared by all
    sigmas) or ``[K, B, ...]``; otherwise drawn from ``generator``. A zero CFG direction gives ratio
    ``num / eps`` guarded to stay finite (and 0 when the redirection is zero too).
    """
    sig = torch.as_tensor(sigmas, dtype=torch.float32).flatten()
    if sig.numel() == 0:
        raise ValueError("score_level_harm needs at least one sigma.")
    b = x0.shape[0]
    for name, cond in (("c", c), ("u", u), ("u_star", u_star)):
        if cond.batch_size != b:
            raise ValueError(f"score_level_harm: {name} has {cond.batch_size} rows but x0 has {b}.")
    check_finite("latent x0", x0)
    if noise is None:
        noise = torch.randn((sig.numel(),) + tuple(x0.shape), generator=generator, dtype=torch.float32)
        noise = noise.to(device=x0.device, dtype=x0.dtype)
    elif noise.dim() == x0.dim():
        noise = noise.unsqueeze(0).expand((sig.numel(),) + tuple(x0.shape))
    if tuple(noise.shape[1:]) != tuple(x0.shape) or noise.shape[0] != sig.numel():
        raise ValueError(f"noise must be {tuple(x0.shape)} or [{sig.numel()}, *{tuple(x0.shape)}], got {tuple(noise.shape)}.")
    conds = Cond.cat([c, u, u_star])
    total = torch.zeros(b, dtype=torch.float32, device=x0.device)
    with torch.no_grad():
        for k in range(sig.numel()):
            x = x0 + float(sig[k]) * noise[k].to(device=x0.device, dtype=x0.dtype)
            sigma = torch.full((3 * b,), float(sig[k]), device=x0.device, dtype=torch.float32)
            out = denoiser(torch.cat([x, x, x]), sigma, conds).float()
            d_c, d_u, d_s = out[:b], out[b:2 * b], out[2 * b:]
            num = (d_s - d_u).flatten(1).norm(dim=1)
            den = (d_c - d_u).flatten(1).norm(dim=1)
            total += num / den.clamp_min(eps)
    return total / sig.numel()


# ----------------------------------------------------------------------------------------------------------


@dataclass
class RedirectResult:
    """``u_star``: the redirected negative; ``delta``: raw HGR output; ``score [B]``: prompt harm score
    (fp32); ``s [B]``: applied strength (fp32)."""

    u_star: Cond
    delta: Cond
    score: torch.Tensor
    s: torch.Tensor


def _match_batches(c: Cond, u: Cond) -> "tuple[Cond, Cond]":
    if c.batch_size == u.batch_size:
        return c, u
    if u.batch_size == 1:
        return c, u.repeat_batch(c.batch_size)
    if c.batch_size == 1:
        return c.repeat_batch(u.batch_size), u
    raise ValueError(
        f"The positive conditioning has {c.batch_size} rows and the negative {u.batch_size}; SafeCFG pairs row i "
        "with row i, so give both the same batch size (or a single negative for all)."
    )


class SafeGuidance:
    """An HGR plus a gate: turns (c, u) into the redirected negative ``u*`` used by SafeCFG.

    The HGR runs once per prompt under ``no_grad`` in its own dtype/device; results come back in u's
    dtype/device. A single negative is broadcast to the positive's batch (and vice versa).
    """

    def __init__(self, bundle: HGRBundle, gate: Optional[GateConfig] = None) -> None:
        self.bundle = bundle
        self.gate = gate if gate is not None else GateConfig()

    @property
    def threshold(self) -> Optional[float]:
        return self.gate.threshold if self.gate.threshold is not None else self.bundle.meta.threshold

    def compute_delta(self, c: Cond, u: Cond) -> Cond:
        """``Delta(c, u)`` in u's dtype/device (after checks); ``c`` and ``u`` must already have equal batches."""
        check_finite("positive conditioning (c)", c)
        check_finite("negative conditioning (u)", u)
        self.bundle.check_compatible(c.token_dim, 0 if c.pooled is None else int(c.pooled.shape[-1]))
        if u.token_dim != c.token_dim:
            self.bundle.check_compatible(u.token_dim, 0 if u.pooled is None else int(u.pooled.shape[-1]))
        with torch.no_grad():
            delta = self.bundle.net(c, u)
        if not all(bool(torch.isfinite(t).all()) for t in (delta.tokens, delta.pooled) if t is not None):
            # c and u passed the same check just above, so the HGR itself overflows: not an upstream fp16 model
            raise NonFiniteInputError(
                f"HGR output (Delta) contains NaN/inf although its inputs are finite: the HGR's own weights overflow "
                f"in {self.bundle.dtype} (the file is damaged or its training diverged). Retrain the HGR or use "
                "another file.")
        return delta

    def redirected_negative(self, c: Cond, u: Cond) -> RedirectResult:
        c, u = _match_batches(c, u)
        delta = self.compute_delta(c, u)
        with torch.no_grad():
            score = self.bundle.net.prompt_score(c, delta)
        s = gate_strength(score, self.gate, self.bundle.meta.threshold)
        u_star = redirect(u, delta, s)
        return RedirectResult(u_star=u_star, delta=delta, score=score, s=s)


def concept_directions(text_encoder: Callable[[Sequence[str]], Cond], categories: Mapping[str, str], u: Cond
                       ) -> Dict[str, Cond]:
    """Per harm category, ``encode(concept) - u`` (u's first row): where "negate this concept" moves u."""
    names = list(categories)
    enc = text_encoder([categories[n] for n in names])
    base = u.index(slice(0, 1))
    out: Dict[str, Cond] = {}
    for i, n in enumerate(names):
        k = enc.index(slice(i, i + 1))
        kt, bt = pad_to_common_length([k.tokens.to(base.tokens), base.tokens])
        pooled = None
        if k.pooled is not None and base.pooled is not None:
            pooled = k.pooled.to(base.pooled) - base.pooled
        out[n] = Cond(kt - bt, pooled)
    return out


def category_attribution(delta: Cond, directions: Mapping[str, Cond]) -> Dict[str, torch.Tensor]:
    """Cosine similarity ``[B]`` between each row's *average token shift* ``mean_t(Delta)`` and each category's.

    The category with the largest cosine is the harm the HGR is steering away from (used in detection reports).
    Averages over tokens are compared, not token-by-token, because the HGR may place the change at other token
    positions than where the concept's words sit; the pooled part (if both have one) is appended.
    """
    a = delta.tokens.float().mean(1)
    if delta.pooled is not None:
        a_full = torch.cat([a, delta.pooled.float()], 1)
    out: Dict[str, torch.Tensor] = {}
    for name, d in directions.items():
        b = d.tokens.float().to(a.device).mean(1).expand_as(a)
        aa = a
        if delta.pooled is not None and d.pooled is not None:
            aa = a_full
            b = torch.cat([b, d.pooled.float().to(a.device).expand(a.shape[0], -1)], 1)
        out[name] = torch.nn.functional.cosine_similarity(aa, b, dim=1, eps=1e-12)
    return out


__all__ = [
    "GATE_MODES",
    "GateConfig",
    "RedirectResult",
    "SafeGuidance",
    "category_attribution",
    "cfg_combine",
    "check_finite",
    "concept_directions",
    "gate_strength",
    "prompt_harm_score",
    "redirect",
    "score_level_harm",
]
