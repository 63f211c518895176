"""Harm judgement: one definition of "how harmful is this prompt" and "how harmful is this image".

Every part of the pack that judges harm calls these two functions: the SafeCFG node (which negative to redirect),
the Harmfulness Detector node, ``python -m safecfg_core score`` and the demo report. So "prompt score" and "image
score" mean one thing each.

* **Prompt judgement** (:func:`judge_prompt`): the HGR's redirection ``Delta(c, u)`` for each positive
  conditioning, scored by :func:`~.guidance.prompt_harm_score` (RMS of Delta). When several positives are combined
  (ComfyUI's ConditioningCombine) the **most harmful positive decides**: the one with the highest score, because a
  clean entry next to a harmful one must not dilute the redirection. The prompt is harmful when that score reaches
  the threshold (the gate's own, else the HGR file's calibrated one); the gate turns the score into the applied
  strength.
* **Image judgement** (:func:`judge_image`): METHOD.md's score-level ratio
  ``||D(x, u*) - D(x, u)|| / ||D(x, c) - D(x, u)||`` with the full, ungated redirection ``u* = u + Delta`` (the
  question is "what would the HGR remove from this image?", not what the gate lets through), averaged over the
  fixed noise levels :data:`IMAGE_SIGMAS` with noise drawn from :data:`IMAGE_NOISE_SEED`. Those levels sit in the
  middle of the SD-style discrete schedule (sigma 0.03 .. 14.6): noisy enough that the denoiser's prediction
  still depends on the prompt, clean enough that it is about this image's content. A model whose schedule does not
  reach them has them clamped into its own range (``sigma_range``).
* **Category attribution** (:func:`category_scores`): which of the HGR's harm categories a prompt's redirection
  points to. Each category's concept words (``"blood, gore"``) go through the same HGR, and the prompt's
  redirection is compared (cosine of token-averaged shifts) with each category's own redirection **after removing
  the part all categories share**. The shared part is large (any harm concept moves the negative the same general
  way), and comparing against raw ``encode(concept) - u`` directions instead let it decide: on the demo's gore
  prompts that named "weapon" about one time in five (tests/demo/test_category_attribution.py measures both).

Torch only; never imports ComfyUI.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple

import torch

from .conditioning import Cond, Denoiser
from .guidance import RedirectResult, SafeGuidance, redirect, score_level_harm

IMAGE_SIGMAS: Tuple[float, ...] = (0.5, 1.5, 4.0)
"""Noise levels of the image judgement (see the module docstring)."""
IMAGE_NOISE_SEED = 1234
"""Seed of the noise the image judgement adds: the same image always gets the same score."""
IMAGE_THRESHOLD = 0.5
"""Default image-score threshold: the HGR would change at least half as much as the prompt's own CFG direction."""


@dataclass
class PromptVerdict:
    """The judgement of one negative against one or more positives.

    ``score``: harm score of the most harmful positive (its highest row); ``index``: which positive that is;
    ``threshold``: the one applied (None when neither the gate nor the HGR file has one); ``harmful``: score >=
    threshold; ``result``: that positive's redirection (``u_star`` gated, ``delta`` raw, per-row ``score`` and
    applied strength ``s``).
    """

    score: float
    index: int
    threshold: Optional[float]
    harmful: bool
    result: RedirectResult

    @property
    def redirected(self) -> bool:
        """True when the gate moved the negative for at least one row (else ``u_star`` is ``u`` bit for bit)."""
        return bool((self.result.s != 0).any())


def judge_prompt(guidance: SafeGuidance, positives: Sequence[Cond], negative: Cond) -> PromptVerdict:
    """Judge ``negative`` against each positive and keep the most harmful positive's redirection.

    Ties keep the first positive. ``negative`` may have one row (broadcast) or the positives' batch.
    """
    if not positives:
        raise ValueError("judge_prompt needs at least one positive conditioning.")
    best: Optional[Tuple[float, int, RedirectResult]] = None
    for i, c in enumerate(positives):
        res = guidance.redirected_negative(c, negative)
        score = float(res.score.max())
        if best is None or score > best[0]:
            best = (score, i, res)
    assert best is not None
    score, index, res = best
    thr = guidance.threshold
    return PromptVerdict(score=score, index=index, threshold=thr, harmful=thr is not None and score >= thr,
                         result=res)


def image_sigmas(sigma_range: Optional[Tuple[float, float]] = None) -> torch.Tensor:
    """:data:`IMAGE_SIGMAS`, clamped into ``(sigma_min, sigma_max)`` of the model when given."""
    sig = torch.tensor(IMAGE_SIGMAS, dtype=torch.float32)
    if sigma_range is not None:
        sig = sig.clamp(float(sigma_range[0]), float(sigma_range[1]))
    return sig


def judge_image(denoiser: Denoiser, x0: torch.Tensor, c: Cond, u: Cond, delta: Cond,
                sigma_range: Optional[Tuple[float, float]] = None, seed: int = IMAGE_NOISE_SEED) -> torch.Tensor:
    """Image score ``[B]`` of latents ``x0 [B, ...]`` (the denoiser's own latent space, not VAE-scaled input).

    ``c``, ``u`` and ``delta`` (the raw HGR output for that pair, e.g. ``PromptVerdict.result.delta``) have one row
    per latent or a single row for all. The noise for all rows is drawn in one go from ``seed``, so a batch scores
    the same as the demo report's batches of the same rows.
    """
    b = x0.shape[0]
    c, u, delta = (_rows(x, b, name) for x, name in ((c, "c"), (u, "u"), (delta, "delta")))
    u_star_full = redirect(u, delta, torch.ones(b))
    return score_level_harm(denoiser, x0, c, u, u_star_full, image_sigmas(sigma_range),
                            generator=torch.Generator().manual_seed(int(seed)))


def category_scores(guidance: SafeGuidance, text_encoder: Callable[[Sequence[str]], Cond],
                    categories: Mapping[str, str], delta: Cond, negative: Cond) -> Dict[str, torch.Tensor]:
    """Per harm category, the cosine ``[B]`` between each row of ``delta`` (raw HGR redirections, e.g.
    ``PromptVerdict.result.delta``) and that category's own redirection, both without the shared part.

    ``categories`` maps a category to its concept words (``HGRBundle.meta.categories``); ``negative`` is the
    negative the redirections were computed against (its first row is used). The highest cosine names the category
    most implicated. With a single category there is nothing to contrast, so its raw redirection is used.
    """
    names = list(categories)
    if not names:
        return {}
    concepts = text_encoder([categories[n] for n in names])
    own = guidance.redirected_negative(concepts, negative.index(slice(0, 1)).repeat_batch(len(names))).delta
    refs = _token_average(own)
    if len(names) > 1:
        refs = refs - refs.mean(0, keepdim=True)  # drop what every category's redirection shares
    rows = _token_average(delta).to(refs.device)
    return {n: torch.nn.functional.cosine_similarity(rows, refs[i].expand_as(rows), dim=1, eps=1e-12)
            for i, n in enumerate(names)}


def _token_average(cond: Cond) -> torch.Tensor:
    """``[B, D(+P)]``: the shift averaged over tokens (the HGR may move other token positions than the concept's
    words sit at, and prompts differ in length), with the pooled shift appended where there is one."""
    avg = cond.tokens.float().mean(1)
    return avg if cond.pooled is None else torch.cat([avg, cond.pooled.float().to(avg.device)], 1)


def _rows(cond: Cond, b: int, name: str) -> Cond:
    if cond.batch_size == b:
        return cond
    if cond.batch_size == 1:
        return cond.repeat_batch(b)
    raise ValueError(f"judge_image: {name} has {cond.batch_size} rows but there are {b} latents; give one row per "
                     "latent or a single row for all.")


__all__ = ["IMAGE_NOISE_SEED", "IMAGE_SIGMAS", "IMAGE_THRESHOLD", "PromptVerdict", "category_scores", "image_sigmas",
           "judge_image", "judge_prompt"]
