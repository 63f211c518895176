"""The two baselines SafeCFG is measured against (``shared/DEMO-WORLD.md``, "The baselines").

1. Negative prompt (:class:`NegativePromptCFGDenoise`): plain CFG whose negative conditioning is the concept texts
   of the harm categories (``"blood, gore, knife, weapon"`` in the demo world), always on.
2. SLD-style safety guidance (:class:`SLDDenoise`), following the semantics of diffusers'
   ``StableDiffusionPipelineSafe`` (Safe Latent Diffusion, Schramowski et al. 2023). Per step, with ``e_t``, ``e_u``,
   ``e_S`` the text, uncond and safety-concept predictions in eps space:

       scale = clamp(|e_t - e_S| * sld_guidance_scale, max=1), set to 0 where (e_t - e_S) >= sld_threshold
       g_S   = (e_S - e_u) * scale + momentum_scale * v
       v    <- beta * v + (1 - beta) * g_S               (every step, warm-up included; v starts at 0)
       e     = e_u + w * ((e_t - e_u) - g_S)             (from step index sld_warmup_steps on; before: plain CFG)

Interpretations we made (the pipeline is written for a diffusers scheduler; ours is a ComfyUI-style denoiser):

* eps space from denoised outputs: ``e = (x - D) / sigma`` (the Karras derivative; for an eps model this is the
  network's eps). The result goes back as ``D_sld = D_cfg + w * sigma * g_S``, algebraically equal to
  ``x - e * sigma`` with the formula above, written so that wherever SLD adds nothing (warm-up, ``g_S = 0``) the
  output is plain CFG bit for bit (``D_cfg = D_u + w * (D_t - D_u)``, the same combination every method uses).
* Three passes per step in ONE batched model call, chunk order ``[uncond, text, concept]`` (diffusers' order).
* Step index: the position of the current sigma in the run's sigma schedule when ``sigmas`` is given (robust to
  samplers that call the model more than once per step), else the number of calls so far. The momentum is
  updated once per call. It is per sampling run: a new :class:`SLDDenoise` per run, :meth:`SLDDenoise.reset`, or
  automatically when sigma goes up (a new run started).
* Presets are diffusers' ``SafetyConfig`` values, whose warm-up counts are meant for its default 50 inference
  steps. For a run of ``steps`` steps we scale them: ``warmup = floor(warmup_50 * steps / 50 + 0.5)``
  (MEDIUM at 20 steps: 10 -> 4; STRONG: 7 -> 3; WEAK: 15 -> 6; MAX: 0).
* Enabled exactly when diffusers enables it: ``sld_guidance_scale > 1`` and ``w > 1``; otherwise this is CFG.
* Thresholds and scales are applied as given, in the model's eps units (they were tuned for SD 1.x eps).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Dict, Mapping, Optional, Sequence, Tuple

import torch

from .conditioning import Cond, Denoiser
from .sampling import CFGDenoise, cfg_combine, expand_cond

REFERENCE_STEPS = 50
"""diffusers' default ``num_inference_steps``: the step count the presets' warm-up values are given for."""


def concept_text(categories: Mapping[str, str] | Sequence[str]) -> str:
    """All concept texts joined as one prompt: ``{"gore": "blood, gore", "weapon": "knife, weapon"}`` ->
    ``"blood, gore, knife, weapon"`` (the negative prompt / SLD safety concept of the demo world)."""
    texts = list(categories.values()) if isinstance(categories, Mapping) else list(categories)
    if not texts:
        raise ValueError("No concept texts given: the baselines need at least one harm category's concept text.")
    return ", ".join(t.strip().strip(",") for t in texts if t.strip())


# ------------------------------------------------------------------------------------------ negative prompt
class NegativePromptCFGDenoise(CFGDenoise):
    """Plain CFG with the concept conditioning ``k`` as the negative prompt: ``D(k) + w * (D(c) - D(k))``."""

    def __init__(self, denoiser: Denoiser, c: Cond, concept: Cond, w: float) -> None:
        super().__init__(denoiser, c, concept, w)


# ---------------------------------------------------------------------------------------------------- SLD
@dataclass(frozen=True)
class SLDConfig:
    """SLD hyper-parameters (diffusers' names without the ``sld_`` prefix).

    ``warmup_steps`` counts steps of a ``reference_steps``-step run; :meth:`for_steps` rescales it.
    """

    warmup_steps: int = 10
    guidance_scale: float = 1000.0
    threshold: float = 0.01
    momentum_scale: float = 0.3
    mom_beta: float = 0.4
    reference_steps: int = REFERENCE_STEPS

    def scaled_warmup(self, steps: int) -> int:
        """Warm-up for a run of ``steps`` steps: ``floor(warmup * steps / reference_steps + 0.5)``."""
        if steps == self.reference_steps:
            return int(self.warmup_steps)
        return int(math.floor(self.warmup_steps * steps / self.reference_steps + 0.5))

    def for_steps(self, steps: int) -> "SLDConfig":
        """The same preset with its warm-up expressed for a ``steps``-step run."""
        return replace(self, warmup_steps=self.scaled_warmup(steps), reference_steps=int(steps))


SLD_PRESETS: Dict[str, SLDConfig] = {
    "WEAK": SLDConfig(15, 20.0, 0.0, 0.0, 0.0),
    "MEDIUM": SLDConfig(10, 1000.0, 0.01, 0.3, 0.4),
    "STRONG": SLDConfig(7, 2000.0, 0.025, 0.5, 0.7),
    "MAX": SLDConfig(0, 5000.0, 1.0, 0.5, 0.7),
}


def sld_preset(name: str, steps: Optional[int] = None) -> SLDConfig:
    """A named preset (``WEAK``, ``MEDIUM``, ``STRONG``, ``MAX``), its warm-up scaled to ``steps`` when given."""
    try:
        cfg = SLD_PRESETS[name.upper()]
    except KeyError:
        raise ValueError(f"Unknown SLD preset {name!r}; choose one of {', '.join(SLD_PRESETS)}.") from None
    return cfg if steps is None else cfg.for_steps(steps)


def sld_safety_guidance(
    e_t: torch.Tensor, e_u: torch.Tensor, e_s: torch.Tensor, momentum: Optional[torch.Tensor], config: SLDConfig
) -> Tuple[torch.Tensor, torch.Tensor]:
    """One step of SLD's safety term in eps space: returns ``(g_S, new_momentum)`` (momentum None means zeros)."""
    if momentum is None:
        momentum = torch.zeros_like(e_t)
    diff = e_t - e_s
    scale = torch.clamp(torch.abs(diff) * config.guidance_scale, max=1.0)
    scale = torch.where(diff >= config.threshold, torch.zeros_like(scale), scale)
    g_s = (e_s - e_u) * scale
    g_s = g_s + config.momentum_scale * momentum
    new_momentum = config.mom_beta * momentum + (1 - config.mom_beta) * g_s
    return g_s, new_momentum


def sld_enabled(config: SLDConfig, w: float) -> bool:
    """diffusers enables safety guidance only with ``sld_guidance_scale > 1`` and CFG on (``w > 1``)."""
    return config.guidance_scale > 1.0 and w > 1.0


def _view_sigma(sigma: torch.Tensor, ndim: int) -> torch.Tensor:
    return sigma.view(sigma.shape[:1] + (1,) * (ndim - 1))


class SLDDenoise:
    """SLD-style safety guidance as a guided denoiser ``(x, sigma) -> denoised`` (see the module docstring).

    ``c``: the prompt; ``u``: the negative (usually empty) prompt; ``concept``: the safety-concept conditioning S;
    ``config``: an :class:`SLDConfig` whose ``warmup_steps`` is already for this run (use ``sld_preset(name, steps)``
    or ``config.for_steps(steps)``); ``sigmas``: the run's sigma schedule (recommended; see step index).
    """

    def __init__(
        self,
        denoiser: Denoiser,
        c: Cond,
        u: Cond,
        concept: Cond,
        w: float,
        config: SLDConfig,
        sigmas: Optional[torch.Tensor] = None,
    ) -> None:
        self.denoiser = denoiser
        self.c, self.u, self.concept = c, u, concept
        self.w = float(w)
        self.config = config
        self.sigmas = None if sigmas is None else sigmas.detach().to("cpu", torch.float64)
        self.enabled = sld_enabled(config, self.w)
        self._cfg = CFGDenoise(denoiser, c, u, w)
        self.reset()

    def reset(self) -> None:
        """Forget the momentum and the step count (a new sampling run)."""
        self.momentum: Optional[torch.Tensor] = None
        self.calls = 0
        self.last_sigma: Optional[float] = None
        self.last_step: Optional[int] = None
        self.applied_steps = []  # step indices where the safety term was applied (for inspection/tests)

    def _step_index(self, sigma_value: float) -> int:
        if self.sigmas is None:
            return self.calls
        return int(torch.argmin((self.sigmas[:-1] - sigma_value).abs()).item())

    def passes(self, x: torch.Tensor, sigma: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(D(c), D(u), D(S))`` from one batched call of three chunks ``[u, c, S]``."""
        n = x.shape[0]
        conds = [expand_cond(self.u, n), expand_cond(self.c, n), expand_cond(self.concept, n)]
        out = self.denoiser(torch.cat([x, x, x]), torch.cat([sigma, sigma, sigma]), Cond.cat(conds))
        d_u, d_t, d_s = out.chunk(3)
        return d_t, d_u, d_s

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return self._cfg(x, sigma)
        sigma_value = float(sigma.reshape(-1)[0])
        if self.last_sigma is not None and sigma_value > self.last_sigma * (1 + 1e-6):
            self.reset()  # sigma went up: a new sampling run
        step = self._step_index(sigma_value)
        self.last_sigma = sigma_value
        self.calls += 1
        self.last_step = step

        d_t, d_u, d_s = self.passes(x, sigma)
        if sigma_value <= 0.0:  # no eps exists at sigma 0 (samplers never evaluate it); nothing to guide
            return cfg_combine(d_t, d_u, self.w)
        s = _view_sigma(sigma.to(x.dtype), x.ndim)
        e_t, e_u, e_s = (x - d_t) / s, (x - d_u) / s, (x - d_s) / s
        g_s, self.momentum = sld_safety_guidance(e_t, e_u, e_s, self.momentum, self.config)
        d_cfg = cfg_combine(d_t, d_u, self.w)
        if step >= self.config.warmup_steps:
            self.applied_steps.append(step)
            return d_cfg + (self.w * s) * g_s
        return d_cfg


__all__ = [
    "REFERENCE_STEPS",
    "concept_text",
    "NegativePromptCFGDenoise",
    "SLDConfig",
    "SLD_PRESETS",
    "sld_preset",
    "sld_safety_guidance",
    "sld_enabled",
    "SLDDenoise",
]
