"""Targets of METHOD.md on the analytic model (exact, milliseconds): the HGR's judgement picks the redirected
prompts, plain CFG on the redirect targets *is* SafeCFG, kept prompts keep the model's own prediction, and the ESD
baseline's targets are the paper's formula."""
from __future__ import annotations

import pytest
import torch

from safecfg_core.align.esd import collect_esd_targets
from safecfg_core.align.targets import Teacher, collect_targets
from safecfg_core.analytic import load_analytic_setup
from safecfg_core.conditioning import Cond
from safecfg_core.guidance import GateConfig, SafeGuidance
from safecfg_core.hgr import HGRBundle, HGRMeta
from safecfg_core.sampling import SafeCFGDenoise

PROMPTS = ["a photo of a cat in a garden", "a painting of a knight covered in blood at night"]
W = 5.0


@pytest.fixture(scope="module")
def setup():
    setup = load_analytic_setup()
    bundle = HGRBundle.create(setup.hgr_config, HGRMeta(), seed=1)
    with torch.no_grad():
        torch.manual_seed(3)
        for p in bundle.net.parameters():
            if p.abs().sum() == 0:
                p.normal_(0.0, 0.2)
    scores = SafeGuidance(bundle, GateConfig(mode="always")).redirected_negative(
        setup.text_encoder(PROMPTS), setup.text_encoder([""])).score
    lo, hi = sorted(float(s) for s in scores)
    assert hi - lo > 1e-3
    bundle.meta.threshold = (lo + hi) / 2  # exactly one of the two prompts is judged harmful by its text
    harmful_index = int(torch.argmax(scores))
    teacher = Teacher(setup.denoiser, setup.text_encoder, None, (4, 8, 8), setup.sigma_range)
    guidance = SafeGuidance(bundle, GateConfig(mode="hard"))
    return setup, teacher, guidance, harmful_index


def _pass(den, x, sigma, cond: Cond):
    with torch.no_grad():
        return den(x, sigma, cond.repeat_batch(x.shape[0]) if cond.batch_size == 1 else cond)


def test_cfg_on_the_targets_is_safecfg_and_kept_prompts_keep_their_own(setup):
    setup, teacher, guidance, harmful = setup
    t = collect_targets(teacher, guidance, PROMPTS, cfg_scale=W, seeds=[0, 1], steps=6, image_threshold=0.0)
    assert [v.redirect for v in t.verdicts] == [i == harmful for i in range(2)]
    den, u = setup.denoiser, setup.text_encoder([""])
    for p in range(2):
        rows = torch.nonzero(t.prompt_index == p).flatten()
        x, sigma = t.x[rows], t.sigma[rows]
        c = setup.text_encoder([PROMPTS[p]])
        du = _pass(den, x, sigma, u)
        assert torch.allclose(t.target_u[rows], du, atol=1e-5)
        if p == harmful:
            safe = SafeCFGDenoise(den, c.repeat_batch(len(rows)), u.repeat_batch(len(rows)), W, guidance)(x, sigma)
            assert not torch.allclose(safe, du + W * (_pass(den, x, sigma, c) - du), atol=1e-3)  # SafeCFG moved it
            assert torch.allclose(du + W * (t.target_c[rows] - du), safe, atol=1e-4)
            assert bool(t.redirect_row[rows].all())
        else:
            assert torch.allclose(t.target_c[rows], _pass(den, x, sigma, c), atol=1e-5)
            assert not bool(t.redirect_row[rows].any())


def test_the_image_judgement_can_overrule_the_text(setup):
    _world, teacher, guidance, _harmful = setup
    t = collect_targets(teacher, guidance, PROMPTS, cfg_scale=W, seeds=[0], steps=4, image_threshold=1e9)
    assert not any(v.redirect for v in t.verdicts)
    assert not bool(t.redirect_row.any())


def test_esd_targets_are_the_papers_formula(setup):
    setup, teacher, _guidance, _harmful = setup
    eta = 0.7
    t = collect_esd_targets(teacher, ["blood, gore"], cfg_scale=W, seeds=[0, 1], steps=5, eta=eta)
    den = setup.denoiser
    ce, u = setup.text_encoder(["blood, gore"]), setup.text_encoder([""])
    dce, du = _pass(den, t.x, t.sigma, ce), _pass(den, t.x, t.sigma, u)
    assert torch.allclose(t.target_c, du - eta * (dce - du), atol=1e-5)
    assert t.x.shape[0] == 2 * 5 and bool(t.redirect_row.all())
