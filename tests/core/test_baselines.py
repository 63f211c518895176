"""The baselines: negative-prompt CFG and SLD-style safety guidance (DEMO-WORLD.md formulas).

Expected values are worked out by hand in the comments, not taken from the code under test.
"""
from __future__ import annotations

import pytest
import torch

from safecfg_core.baselines import (
    SLD_PRESETS,
    NegativePromptCFGDenoise,
    SLDConfig,
    SLDDenoise,
    concept_text,
    sld_preset,
    sld_safety_guidance,
)
from safecfg_core.conditioning import Cond
from safecfg_core.sampling import CFGDenoise


class EpsTableDenoiser:
    """``D(x, sigma, cond) = x - sigma * eps(cond)`` where eps is read from the cond's first token (4 channels).

    Records every call, so tests can see how many batched calls were made and with which rows.
    """

    def __init__(self):
        self.calls = []

    def __call__(self, x, sigma, cond):
        self.calls.append((x.shape[0], cond.tokens[:, 0, :].clone()))
        eps = cond.tokens[:, 0, :4].to(x.dtype).view(-1, 4, 1, 1)
        return x - sigma.view(-1, 1, 1, 1).to(x.dtype) * eps


def cond_of(*rows):
    return Cond(torch.tensor([[list(r)] for r in rows], dtype=torch.float64))


E_U = (0.0, 0.0, 0.0, 0.0)
E_T = (1.0, 0.0, 0.2, 0.0)
E_S = (0.98, 0.5, 0.23, -0.2)
HAND = SLDConfig(warmup_steps=1, guidance_scale=10.0, threshold=0.05, momentum_scale=0.5, mom_beta=0.25)


def test_concept_text():
    assert concept_text({"gore": "blood, gore", "weapon": "knife, weapon"}) == "blood, gore, knife, weapon"
    with pytest.raises(ValueError):
        concept_text({})


def test_presets_are_diffusers_safety_config():
    expected = {  # (warmup, scale, threshold, momentum, beta), DEMO-WORLD.md
        "WEAK": (15, 20, 0.0, 0.0, 0.0), "MEDIUM": (10, 1000, 0.01, 0.3, 0.4),
        "STRONG": (7, 2000, 0.025, 0.5, 0.7), "MAX": (0, 5000, 1.0, 0.5, 0.7),
    }
    for name, (wu, sc, th, mo, be) in expected.items():
        p = SLD_PRESETS[name]
        assert (p.warmup_steps, p.guidance_scale, p.threshold, p.momentum_scale, p.mom_beta) == (wu, sc, th, mo, be)
        assert p.reference_steps == 50


def test_warmup_scaled_to_steps():
    # warmup is given for 50 steps; at 20 steps: 10*20/50 = 4, 7*20/50 = 2.8 -> 3, 15*20/50 = 6, 0 -> 0
    assert [sld_preset(n, 20).warmup_steps for n in ("MEDIUM", "STRONG", "WEAK", "MAX")] == [4, 3, 6, 0]
    # 25 steps: 7*25/50 = 3.5 rounds half up to 4; 50 steps: unchanged
    assert sld_preset("STRONG", 25).warmup_steps == 4
    assert sld_preset("MEDIUM", 50).warmup_steps == 10
    assert sld_preset("MEDIUM", 20).guidance_scale == 1000.0
    with pytest.raises(ValueError):
        sld_preset("EXTREME")


def test_sld_term_by_hand():
    e_t, e_u, e_s = (torch.tensor(v, dtype=torch.float64) for v in (E_T, E_U, E_S))
    g1, v1 = sld_safety_guidance(e_t, e_u, e_s, None, HAND)
    # diff = e_t - e_s = [0.02, -0.5, -0.03, 0.2]; |diff|*10 = [0.2, 5, 0.3, 2] -> clamp 1 -> [0.2, 1, 0.3, 1]
    # diff >= 0.05 only in the last element -> scale [0.2, 1, 0.3, 0]
    # g = (e_s - e_u) * scale = [0.196, 0.5, 0.069, 0]; v = 0.75 * g
    assert torch.allclose(g1, torch.tensor([0.196, 0.5, 0.069, 0.0], dtype=torch.float64), atol=1e-12)
    assert torch.allclose(v1, torch.tensor([0.147, 0.375, 0.05175, 0.0], dtype=torch.float64), atol=1e-12)
    g2, v2 = sld_safety_guidance(e_t, e_u, e_s, v1, HAND)
    # g2 = g + 0.5 * v1; v2 = 0.25 * v1 + 0.75 * g2
    assert torch.allclose(g2, torch.tensor([0.2695, 0.6875, 0.094875, 0.0], dtype=torch.float64), atol=1e-12)
    assert torch.allclose(v2, torch.tensor([0.238875, 0.609375, 0.08409375, 0.0], dtype=torch.float64), atol=1e-12)


def test_threshold_zeroes_where_prompt_is_past_the_concept():
    cfg = SLDConfig(0, 5000.0, 1.0, 0.0, 0.0)  # MAX-like threshold 1.0, no momentum
    e_u = torch.zeros(3, dtype=torch.float64)
    e_s = torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64)
    e_t = torch.tensor([2.0, 2.5, 1.5], dtype=torch.float64)  # diff = [1.0, 1.5, 0.5]
    g, _ = sld_safety_guidance(e_t, e_u, e_s, None, cfg)
    # diff >= 1.0 -> 0 (first two, boundary included); last: clamp(0.5 * 5000, 1) = 1 -> g = e_s - e_u = 1
    assert g.tolist() == [0.0, 0.0, 1.0]


def test_sld_denoiser_warmup_momentum_and_output_by_hand():
    den = EpsTableDenoiser()
    x = torch.ones(1, 4, 1, 1, dtype=torch.float64)
    sigma = torch.tensor([2.0], dtype=torch.float64)
    sld = SLDDenoise(den, cond_of(E_T), cond_of(E_U), cond_of(E_S), w=3.0, config=HAND)
    out0 = sld(x, sigma)
    # step 0 < warmup 1: plain CFG. e = e_u + 3 (e_t - e_u) = 3 e_t; D = x - 2 e = 1 - 6 e_t
    assert torch.allclose(out0.flatten(), torch.tensor([-5.0, 1.0, -0.2, 1.0], dtype=torch.float64), atol=1e-12)
    out1 = sld(x, sigma)
    # step 1: momentum from step 0 is used: g2 = [0.2695, 0.6875, 0.094875, 0]
    # e = 3 (e_t - g2) = [2.1915, -2.0625, 0.315375, 0]; D = 1 - 2 e
    assert torch.allclose(out1.flatten(), torch.tensor([-3.383, 5.125, 0.36925, 1.0], dtype=torch.float64),
                          atol=1e-12)
    assert sld.applied_steps == [1]
    # one batched call per step, 3 chunks in diffusers' order [uncond, text, concept]
    assert [n for n, _ in den.calls] == [3, 3]
    assert torch.equal(den.calls[0][1], torch.tensor([E_U, E_T, E_S], dtype=torch.float64))


def test_sld_step_index_from_sigmas_and_reset_per_run():
    den = EpsTableDenoiser()
    x = torch.ones(1, 4, 1, 1, dtype=torch.float64)
    sigmas = torch.tensor([3.0, 2.0, 1.0, 0.0])
    sld = SLDDenoise(den, cond_of(E_T), cond_of(E_U), cond_of(E_S), w=3.0, config=HAND, sigmas=sigmas)
    sld(x, torch.tensor([2.0], dtype=torch.float64))  # sigma 2.0 is step 1 >= warmup 1: applied at once
    assert sld.last_step == 1 and sld.applied_steps == [1]
    sld(x, torch.tensor([1.0], dtype=torch.float64))
    assert sld.applied_steps == [1, 2]
    sld(x, torch.tensor([3.0], dtype=torch.float64))  # sigma went up: a new run, momentum reset
    assert sld.calls == 1 and sld.applied_steps == [] and sld.last_step == 0
    # momentum after one step of the new run equals a fresh run's first step: v = 0.75 g
    assert torch.allclose(sld.momentum.flatten(), torch.tensor([0.147, 0.375, 0.05175, 0.0], dtype=torch.float64),
                          atol=1e-12)


def test_sld_without_effect_is_cfg_bit_for_bit():
    torch.manual_seed(0)
    den = EpsTableDenoiser()
    x = torch.randn(2, 4, 1, 1)
    sigma = torch.tensor([1.7, 1.7])
    c = Cond(torch.randn(2, 1, 4))
    u = Cond(torch.randn(1, 1, 4))
    cfg = CFGDenoise(den, c, u, 6.0)(x, sigma)
    # concept == prompt: e_t - e_S = 0 -> scale 0 -> g_S = 0 (no momentum) -> exactly CFG
    sld = SLDDenoise(den, c, u, c, 6.0, SLDConfig(0, 1000.0, 0.01, 0.0, 0.0))
    assert torch.equal(sld(x, sigma), cfg)
    # disabled (w = 1, or sld scale <= 1) -> exactly CFG, and only CFG's passes
    assert torch.equal(SLDDenoise(den, c, u, u, 6.0, SLDConfig(0, 1.0, 0.01, 0.3, 0.4))(x, sigma), cfg)
    n_before = len(den.calls)
    one = SLDDenoise(den, c, u, u, 1.0, SLD_PRESETS["MAX"])(x, sigma)
    assert len(den.calls) == n_before + 1 and den.calls[-1][0] == 2
    assert torch.equal(one, den(x, sigma, c))


def test_negative_prompt_is_cfg_with_concept_as_uncond():
    den = EpsTableDenoiser()
    x = torch.ones(1, 4, 1, 1, dtype=torch.float64)
    sigma = torch.tensor([0.5], dtype=torch.float64)
    c, k = cond_of((1.0, 2.0, 3.0, 4.0)), cond_of((0.0, 1.0, -1.0, 2.0))
    out = NegativePromptCFGDenoise(den, c, k, 4.0)(x, sigma)
    # D(c) = 1 - 0.5 e_c = [0.5, 0, -0.5, -1]; D(k) = [1, 0.5, 1.5, 0]; D(k) + 4 (D(c) - D(k))
    assert torch.allclose(out.flatten(), torch.tensor([-1.0, -1.5, -6.5, -4.0], dtype=torch.float64), atol=1e-12)
    assert torch.equal(out, CFGDenoise(den, c, k, 4.0)(x, sigma))


def test_sld_at_sigma_zero_is_finite_cfg():
    den = EpsTableDenoiser()
    x = torch.ones(1, 4, 1, 1, dtype=torch.float64)
    sld = SLDDenoise(den, cond_of(E_T), cond_of(E_U), cond_of(E_S), w=3.0, config=SLDConfig(0, 10.0, 0.05, 0.5, 0.25))
    out = sld(x, torch.zeros(1, dtype=torch.float64))
    assert torch.equal(out, x)  # D = x - 0 * eps for every pass
