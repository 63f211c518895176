"""safecfg_core.judge: the one prompt judgement (most harmful positive decides) and the one image judgement."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from safecfg_core import Cond
from safecfg_core.analytic import AnalyticDenoiser
from safecfg_core.guidance import GateConfig, SafeGuidance, prompt_harm_score
from safecfg_core.hgr import HGRBundle, HGRConfig, HGRMeta
from safecfg_core.judge import IMAGE_SIGMAS, image_sigmas, judge_image, judge_prompt

torch.set_num_threads(1)
D = 8


def _bundle(threshold=None) -> HGRBundle:
    b = HGRBundle.create(HGRConfig(token_dim=D, model_family="test", width=32, depth=1, heads=4),
                         HGRMeta(threshold=threshold), seed=0)
    g = torch.Generator().manual_seed(9)
    with torch.no_grad():
        b.net.out_proj.weight.copy_(0.5 * torch.randn(b.net.out_proj.weight.shape, generator=g))
        b.net.out_proj.bias.copy_(0.5 * torch.randn(b.net.out_proj.bias.shape, generator=g))
    b.net.eval()
    return b


def _prompts(n: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    positives = [Cond(torch.randn(1, 77, D, generator=g) * (1 + i)) for i in range(n)]
    return positives, Cond(torch.randn(1, 77, D, generator=g))


def _scores(bundle: HGRBundle, positives, u):
    with torch.no_grad():
        return [float(prompt_harm_score(bundle.net(c, u))) for c in positives]


def test_most_harmful_positive_decides_in_any_order() -> None:
    bundle = _bundle()
    positives, u = _prompts(3)
    scores = _scores(bundle, positives, u)
    assert len({round(s, 6) for s in scores}) == 3, scores  # the rule is tested on distinct scores
    top = int(np.argmax(scores))
    guidance = SafeGuidance(bundle, GateConfig(mode="always"))
    for order in ([0, 1, 2], [2, 1, 0], [1, 2, 0]):
        verdict = judge_prompt(guidance, [positives[i] for i in order], u)
        assert order[verdict.index] == top
        assert math.isclose(verdict.score, scores[top], rel_tol=1e-6)
        with torch.no_grad():
            expect = u.tokens + bundle.net(positives[top], u).tokens
        assert torch.allclose(verdict.result.u_star.tokens, expect, atol=1e-6)


def test_threshold_verdict_and_gate() -> None:
    bundle = _bundle()
    positives, u = _prompts(2)
    lo, hi = sorted(_scores(bundle, positives, u))
    between = (lo + hi) / 2
    # the gate's threshold wins over the file's; harmful iff score >= threshold; a shut gate leaves u as is
    bundle.meta.threshold = hi * 10
    shut = judge_prompt(SafeGuidance(bundle, GateConfig(mode="hard")), positives, u)
    assert shut.threshold == hi * 10 and not shut.harmful and not shut.redirected
    assert torch.equal(shut.result.u_star.tokens, u.tokens)
    open_ = judge_prompt(SafeGuidance(bundle, GateConfig(mode="hard", threshold=between)), positives, u)
    assert open_.threshold == between and open_.harmful and open_.redirected
    clean_only = judge_prompt(SafeGuidance(bundle, GateConfig(mode="hard", threshold=between)),
                              [positives[int(np.argmin(_scores(bundle, positives, u)))]], u)
    assert not clean_only.harmful and not clean_only.redirected
    with pytest.raises(ValueError, match="at least one positive"):
        judge_prompt(SafeGuidance(bundle), [], u)


def test_image_judgement_is_the_ungated_ratio_at_the_fixed_sigmas() -> None:
    """On the analytic model the score-level ratio is |A dm*| / |A dm_c| at every sigma (see test_guidance), with
    u* = u + Delta whatever the gate does."""
    den = AnalyticDenoiser(token_dim=D, latent_shape=(2, 4, 4), seed=3)
    bundle = _bundle()
    positives, u = _prompts(1)
    c = positives[0]
    with torch.no_grad():
        delta = bundle.net(c, u)
    x0 = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(5))
    got = judge_image(den, x0, c, u, delta)
    A = den.A.double().numpy()
    dm_star = delta.tokens[0].double().mean(0).numpy()
    dm_c = (c.tokens[0].double().mean(0) - u.tokens[0].double().mean(0)).numpy()
    expect = np.linalg.norm(A @ dm_star) / np.linalg.norm(A @ dm_c)
    assert got.shape == (3,)
    for v in got.tolist():
        assert math.isclose(v, expect, rel_tol=1e-3)
    # deterministic (fixed noise seed), and one row per latent is the same as one row for all
    assert torch.equal(got, judge_image(den, x0, c.repeat_batch(3), u.repeat_batch(3), delta.repeat_batch(3)))
    with pytest.raises(ValueError, match="give one row per latent"):
        judge_image(den, x0, c.repeat_batch(2), u, delta)


def test_image_sigmas_policy() -> None:
    assert image_sigmas().tolist() == list(IMAGE_SIGMAS)
    # an SD-style schedule (0.03 .. 14.6) contains them; a narrower one gets them clamped into its range
    assert image_sigmas((0.0292, 14.6146)).tolist() == list(IMAGE_SIGMAS)
    assert image_sigmas((0.002, 1.0)).tolist() == [0.5, 1.0, 1.0]
