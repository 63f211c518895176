"""Step 1 and 2 of METHOD.md's model-level alignment: sample, let the HGR judge, and compute the targets.

For every prompt and seed the frozen model is sampled along the paths METHOD.md names, and at every visited state
the three teacher predictions ``D(c)``, ``D(u)``, ``D(u*)`` come from one batched call. The HGR's judgement
(:func:`safecfg_core.judge.judge_prompt` on the prompt, :func:`safecfg_core.judge.judge_image` on the model's own
plain-CFG sample) decides per prompt whether its conditional target is SafeCFG's (``T_c = D(u) + (D_safe - D(u)) /
w``) or the model's own ``D(c)``. Nothing here reads a label: the input is prompt texts.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ..conditioning import Cond, Denoiser, TextEncoder
from ..errors import TrainingInputError
from ..guidance import SafeGuidance, cfg_combine
from ..judge import judge_image, judge_prompt
from ..sampling import noise_for_seeds, sample_euler
from ..schedules import DiscreteSchedule, get_sigmas


@dataclass
class Teacher:
    """What sampling needs of the frozen model: the denoiser, its text encoder and schedule, the latent shape of one
    sample (``[C, H, W]``) and the noise levels the image judgement may use."""

    denoiser: Denoiser
    text_encoder: TextEncoder
    schedule: Optional[DiscreteSchedule]
    latent_shape: Tuple[int, ...]
    sigma_range: Optional[Tuple[float, float]] = None

    def sigmas(self, steps: int, scheduler: str = "normal") -> torch.Tensor:
        if self.schedule is not None:
            return get_sigmas(self.schedule, scheduler, steps)
        if self.sigma_range is None:
            raise TrainingInputError("A model without a discrete schedule needs its sigma_range to be sampled.")
        lo, hi = (math.log(float(s)) for s in self.sigma_range)
        return torch.cat([torch.linspace(hi, lo, steps).exp(), torch.zeros(1)])

    def start(self, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
        """The first state, as KSampler makes it from noise and an empty latent."""
        if self.schedule is None:
            return noise * sigmas[0]
        return self.schedule.noise_scaling(sigmas[0], noise, torch.zeros_like(noise),
                                           self.schedule.is_max_denoise(sigmas))


@dataclass
class Verdict:
    """The HGR's judgement of one prompt: prompt score, mean image score of the model's own samples, decision."""

    prompt: str
    prompt_score: float
    image_score: float
    redirect: bool


@dataclass
class AlignTargets:
    """Teacher states and targets. Row ``m``: state ``x[m]`` at ``sigma[m]`` of prompt ``prompt_index[m]``, with
    the conditional target ``target_c[m]`` and the unconditional ``target_u[m]`` (the frozen ``D(x, u)``)."""

    prompts: List[str]
    verdicts: List[Verdict]
    c: Cond
    u: Cond
    x: torch.Tensor
    sigma: torch.Tensor
    prompt_index: torch.Tensor
    target_c: torch.Tensor
    target_u: torch.Tensor
    redirect_row: torch.Tensor
    counts: Dict[str, int] = field(default_factory=dict)

    @property
    def redirected(self) -> List[str]:
        return [v.prompt for v in self.verdicts if v.redirect]


class _Recorder:
    """A guided denoiser that records, at each state, ``x``, ``sigma`` and the teacher's three predictions.

    ``mode``: ``cfg`` (plain CFG at ``w``), ``safe`` (SafeCFG at ``w``), ``target`` (the conditional target
    ``T_c`` alone, per row: SafeCFG's for ``redirect`` rows, ``D(c)`` for the others, i.e. the cfg-1 path).
    """

    def __init__(self, denoiser: Denoiser, c: Cond, u: Cond, u_star: Cond, w: float, mode: str,
                 redirect: torch.Tensor) -> None:
        self.denoiser, self.c, self.u, self.u_star, self.w, self.mode = denoiser, c, u, u_star, float(w), mode
        self.redirect = redirect
        self.records: List[Tuple[torch.Tensor, ...]] = []

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        out = self.denoiser(torch.cat([x, x, x]), torch.cat([sigma, sigma, sigma]),
                            Cond.cat([self.c, self.u, self.u_star])).float()
        dc, du, ds = out[:b], out[b:2 * b], out[2 * b:]
        self.records.append((x.clone(), sigma.clone(), dc, du, ds))
        if self.mode == "cfg":
            return cfg_combine(dc, du, self.w)
        if self.mode == "safe":
            return cfg_combine(dc, ds, self.w)
        return conditional_target(dc, du, ds, self.w, self.redirect)


def conditional_target(dc: torch.Tensor, du: torch.Tensor, ds: torch.Tensor, w: float,
                       redirect: torch.Tensor) -> torch.Tensor:
    """``T_c``: ``D(u) + (D_safe - D(u)) / w`` on ``redirect`` rows (METHOD.md), ``D(c)`` on the others."""
    safe = cfg_combine(dc, ds, w)
    t = du + (safe - du) / w
    keep = redirect.reshape((-1,) + (1,) * (dc.dim() - 1)).to(dc.device)
    return torch.where(keep, t, dc)


def _run_path(teacher: Teacher, rec: _Recorder, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return sample_euler(rec, teacher.start(noise, sigmas), sigmas)


def judge_prompts(teacher: Teacher, guidance: SafeGuidance, prompts: Sequence[str], negative: str,
                  ) -> Tuple[Cond, Cond, Cond, Cond, torch.Tensor, List[float]]:
    """``(c, u, u_star, delta, harmful, score)`` per prompt, each judged on its own by :func:`judge_prompt`."""
    if guidance.threshold is None:
        raise TrainingInputError("The HGR has no calibrated threshold, so it cannot judge which prompts are harmful. "
                                 "Calibrate it (the train command does) or set a threshold.")
    c = teacher.text_encoder(list(prompts))
    u = teacher.text_encoder([negative])
    stars, deltas, harmful, scores = [], [], [], []
    for i in range(c.batch_size):
        verdict = judge_prompt(guidance, [c.index([i])], u)
        stars.append(verdict.result.u_star)
        deltas.append(verdict.result.delta)
        harmful.append(verdict.harmful)
        scores.append(verdict.score)
    return c, u, Cond.cat(stars), Cond.cat(deltas), torch.tensor(harmful, dtype=torch.bool), scores


def _redirect_paths(teacher: Teacher, plain: _Recorder, red_rows: torch.Tensor, cr: Cond, ur: Cond, sr: Cond,
                    w: float, noise: torch.Tensor, sigmas: torch.Tensor
                    ) -> List[Tuple[_Recorder, torch.Tensor, torch.Tensor]]:
    """The recorded paths as ``(recorder, its rows among all, redirect flag per row)``: the plain-CFG path (already
    run), the cfg-1 path of ``T_c`` for every row, and the SafeCFG path for the redirected rows."""
    every = torch.arange(red_rows.numel())
    target = _Recorder(teacher.denoiser, cr, ur, sr, w, "target", red_rows)
    _run_path(teacher, target, noise, sigmas)
    paths = [(plain, every, red_rows), (target, every, red_rows)]
    sel = torch.nonzero(red_rows).flatten()
    if sel.numel():
        flags = torch.ones(sel.numel(), dtype=torch.bool)
        safe = _Recorder(teacher.denoiser, cr.index(sel), ur.index(sel), sr.index(sel), w, "safe", flags)
        _run_path(teacher, safe, noise[sel], sigmas)
        paths.append((safe, sel, flags))
    return paths


def collect_targets(teacher: Teacher, guidance: SafeGuidance, prompts: Sequence[str], *, cfg_scale: float,
                    seeds: Sequence[int], steps: int = 20, scheduler: str = "normal", negative: str = "",
                    image_threshold: float = 0.5,
                    progress: Optional[Callable[[str], None]] = None) -> AlignTargets:
    """Sample, judge and compute the targets of METHOD.md for ``prompts`` x ``seeds`` (rows prompt-major)."""
    if not prompts or not seeds:
        raise TrainingInputError("Alignment needs at least one prompt and one seed.")
    if not cfg_scale > 1.0:
        raise TrainingInputError(f"The training cfg must be above 1 (SafeCFG redirects the negative pass), got "
                                 f"{cfg_scale}.")
    say = progress or (lambda _msg: None)
    c, u, u_star, delta, harmful, scores = judge_prompts(teacher, guidance, prompts, negative)
    n_p, n_s = len(prompts), len(seeds)
    rows = torch.arange(n_p).repeat_interleave(n_s)
    noise = noise_for_seeds(teacher.latent_shape, [int(seeds[r % n_s]) for r in range(n_p * n_s)])
    sigmas = teacher.sigmas(steps, scheduler)
    cr, ur, sr = c.index(rows), u.repeat_batch(rows.numel()), u_star.index(rows)

    plain = _Recorder(teacher.denoiser, cr, ur, sr, cfg_scale, "cfg", torch.zeros(rows.numel(), dtype=torch.bool))
    x0 = _run_path(teacher, plain, noise, sigmas)
    with torch.no_grad():
        img = judge_image(teacher.denoiser, x0, cr, ur, delta.index(rows), sigma_range=teacher.sigma_range)
    img_per_prompt = img.view(n_p, n_s).mean(1)
    redirect = harmful & (img_per_prompt >= float(image_threshold))
    verdicts = [Verdict(p, scores[i], float(img_per_prompt[i]), bool(redirect[i])) for i, p in enumerate(prompts)]
    say(f"judged {n_p} prompts: {int(harmful.sum())} by their text, {int(redirect.sum())} also by their images")

    paths = _redirect_paths(teacher, plain, redirect[rows], cr, ur, sr, cfg_scale, noise, sigmas)
    xs, sig, idx, tc, tu, red = [], [], [], [], [], []
    for rec, row_ids, flags in paths:
        for x, s, dc, du, ds in rec.records:
            xs.append(x)
            sig.append(s)
            idx.append(rows[row_ids])
            tc.append(conditional_target(dc, du, ds, cfg_scale, flags))
            tu.append(du)
            red.append(flags)
    say(f"collected {sum(t.shape[0] for t in xs)} teacher states on {len(paths)} paths")
    return AlignTargets(list(prompts), verdicts, c, u, torch.cat(xs), torch.cat(sig).float(), torch.cat(idx),
                        torch.cat(tc), torch.cat(tu), torch.cat(red),
                        {"prompts": n_p, "seeds": n_s, "redirected": int(redirect.sum()),
                         "judged_harmful_by_text": int(harmful.sum())})


__all__ = ["AlignTargets", "Teacher", "Verdict", "collect_targets", "conditional_target", "judge_prompts"]
