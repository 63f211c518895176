"""Guidance math: SafeCFG is bit-identical to CFG whenever there is nothing to redirect; gates; scores."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from safecfg_core import Cond
from safecfg_core.analytic import AnalyticDenoiser, ToyTextEncoder
from safecfg_core.errors import HGRMismatchError, NonFiniteInputError
from safecfg_core.guidance import (
    GateConfig,
    SafeGuidance,
    category_attribution,
    cfg_combine,
    check_finite,
    concept_directions,
    gate_strength,
    prompt_harm_score,
    redirect,
    score_level_harm,
    softness_beyond_calibration,
)
from safecfg_core.hgr import HGRBundle, HGRConfig, HGRMeta
from safecfg_core.padding import common_token_length, pad_to_common_length

torch.set_num_threads(1)
D = 16


class TinyCrossAttnDenoiser:
    """A small nonlinear denoiser that attends to every token in the conditioning's own dtype (like a UNet)."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.q = torch.randn(4, D, generator=g)
        self.v = torch.randn(D, 4, generator=g)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: Cond) -> torch.Tensor:
        t = cond.tokens.to(x.dtype)
        feats = x.mean(dim=(2, 3))  # [B, 4]
        att = torch.softmax((feats @ self.q.to(x.dtype))[:, None, :] @ t.transpose(1, 2) / 4.0, dim=-1)
        ctx = (att @ t)[:, 0] @ self.v.to(x.dtype)  # [B, 4]
        scale = (1.0 / (1.0 + sigma.to(x.dtype) ** 2)).view(-1, 1, 1, 1)
        return x * scale + torch.tanh(ctx)[:, :, None, None]


def _bundle(trained: bool, threshold=None, pooled_dim: int = 0) -> HGRBundle:
    b = HGRBundle.create(HGRConfig(token_dim=D, pooled_dim=pooled_dim, model_family="test", width=32, depth=1, heads=4),
                         HGRMeta(threshold=threshold), seed=0)
    if trained:
        g = torch.Generator().manual_seed(9)
        with torch.no_grad():
            b.net.out_proj.weight.copy_(0.5 * torch.randn(b.net.out_proj.weight.shape, generator=g))
            b.net.out_proj.bias.copy_(0.5 * torch.randn(b.net.out_proj.bias.shape, generator=g))
    b.net.eval()
    return b


def _cfg_and_safecfg(guidance: SafeGuidance, c: Cond, u: Cond, w: float = 7.5):
    den = TinyCrossAttnDenoiser()
    g = torch.Generator().manual_seed(1)
    b = max(c.batch_size, u.batch_size)
    x = torch.randn(b, 4, 8, 8, generator=g).to(c.tokens.dtype)
    sigma = torch.full((b,), 3.0)
    c_full = c if c.batch_size == b else c.repeat_batch(b)
    u_full = u if u.batch_size == b else u.repeat_batch(b)
    res = guidance.redirected_negative(c, u)
    d_c = den(x, sigma, c_full)
    cfg = cfg_combine(d_c, den(x, sigma, u_full), w)
    safe = cfg_combine(d_c, den(x, sigma, res.u_star), w)
    return cfg, safe, res, u_full


LAYOUTS = [  # (c batch, u batch, c tokens, u tokens)
    (1, 1, 77, 77), (3, 1, 154, 77), (2, 2, 77, 231), (4, 4, 231, 154), (1, 3, 154, 154),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_zero_init_hgr_is_bit_identical_to_cfg(layout, dtype) -> None:
    bc, bu, tc, tu = layout
    g = torch.Generator().manual_seed(sum(layout))
    c = Cond((torch.randn(bc, tc, D, generator=g)).to(dtype))
    u = Cond((torch.randn(bu, tu, D, generator=g)).to(dtype))
    for gate in (GateConfig(mode="always"), GateConfig(mode="smooth", threshold=0.0), GateConfig(strength=5.0, mode="always")):
        cfg, safe, res, u_full = _cfg_and_safecfg(SafeGuidance(_bundle(trained=False), gate), c, u)
        assert res.u_star.tokens.dtype == dtype
        assert torch.equal(res.u_star.tokens, u_full.tokens)
        assert torch.equal(safe, cfg)
        assert torch.count_nonzero(res.score) == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_strength_zero_and_closed_gate_are_bit_identical_to_cfg(dtype) -> None:
    g = torch.Generator().manual_seed(2)
    c = Cond(torch.randn(3, 154, D, generator=g).to(dtype))
    u = Cond(torch.randn(3, 77, D, generator=g).to(dtype))
    trained = _bundle(trained=True, threshold=1e6)  # gate threshold far above any score: closed
    for gate in (GateConfig(strength=0.0, mode="always"), GateConfig(mode="off"), GateConfig(mode="smooth"),
                 GateConfig(mode="hard")):
        cfg, safe, res, _ = _cfg_and_safecfg(SafeGuidance(trained, gate), c, u)
        assert torch.count_nonzero(res.score) == 3  # the HGR did propose a change ...
        assert torch.equal(safe, cfg)  # ... but nothing of it reaches the sampler
    # An open gate does change the result (the test above is not vacuous).
    cfg, safe, _, _ = _cfg_and_safecfg(SafeGuidance(trained, GateConfig(mode="always")), c, u)
    assert not torch.equal(safe, cfg)


def test_mixed_batch_only_gated_rows_change() -> None:
    """A batch mixing prompts: rows whose gate is closed stay bit-identical, the others move."""
    b = _bundle(trained=True)
    g = torch.Generator().manual_seed(3)
    c = Cond(torch.randn(4, 77, D, generator=g))
    u = Cond(torch.randn(4, 77, D, generator=g))
    scores = SafeGuidance(b, GateConfig(mode="always")).redirected_negative(c, u).score
    thr = float(scores.sort().values[1:3].mean())  # two rows above, two below
    res = SafeGuidance(b, GateConfig(mode="hard", threshold=thr)).redirected_negative(c, u)
    above = scores >= thr
    assert above.sum() == 2
    for i in range(4):
        same = torch.equal(res.u_star.tokens[i], u.tokens[i])
        assert same == (not bool(above[i]))
    torch.testing.assert_close(res.u_star.tokens[above], (u.tokens + res.delta.tokens)[above])


def _smoothstep(t: float) -> float:
    t = min(max(t, 0.0), 1.0)
    return t * t * (3 - 2 * t)


@settings(max_examples=60, deadline=None)
@given(score=st.floats(0, 10), thr=st.floats(0.01, 5), soft=st.floats(0, 0.9), strength=st.floats(0, 4))
def test_smooth_gate_window(score: float, thr: float, soft: float, strength: float) -> None:
    """0 below the window, ``strength`` above it, smoothstep inside; the scores are float32, so the gate may place a
    score up to a few float32 steps (``d``) differently than exact arithmetic would."""
    s = float(gate_strength(torch.tensor([score]), GateConfig(strength=strength, mode="smooth", softness=soft), thr)[0])
    full = float(np.float32(strength))
    lo, hi = thr * (1 - soft), thr * (1 + soft)
    if soft == 0 or hi <= lo:  # no window (softness 0, or below float64 resolution): the hard rule
        assert s == (full if np.float32(score) >= np.float32(thr) else 0.0)
        return
    d = 4 * float(np.spacing(np.float32(max(score, hi))))
    if score <= lo - d:
        assert s == 0.0
    elif score >= hi + d:
        assert s == full
    else:
        lowest = strength * _smoothstep((score - d - lo) / (hi - lo))
        highest = strength * _smoothstep((score + d - lo) / (hi - lo))
        assert lowest - 1e-5 <= s <= highest + 1e-5, (lowest, s, highest)


def test_gate_modes_and_monotonicity() -> None:
    scores = torch.linspace(0, 3, 301)
    s = gate_strength(scores, GateConfig(strength=2.0, mode="smooth", softness=0.5), 1.0)
    assert (s[1:] >= s[:-1]).all()
    assert s[scores <= 0.5].eq(0).all() and s[scores >= 1.5].eq(2.0).all()
    hard = gate_strength(scores, GateConfig(mode="hard"), 1.0)
    assert torch.equal(hard, (scores >= 1.0).float())
    assert gate_strength(scores, GateConfig(mode="always", strength=0.7), None).eq(torch.tensor(0.7)).all()
    assert gate_strength(scores, GateConfig(mode="off"), 1.0).eq(0).all()
    # The node's threshold wins over the file's.
    assert gate_strength(torch.tensor([0.5]), GateConfig(mode="hard", threshold=0.4), 1.0)[0] == 1.0
    with pytest.raises(ValueError, match="needs a threshold"):
        gate_strength(scores, GateConfig(mode="smooth"), None)
    with pytest.raises(ValueError, match="unknown"):
        GateConfig(mode="sometimes")


dtypes = st.sampled_from([torch.float32, torch.float16, torch.bfloat16])


@settings(max_examples=40, deadline=None)
@given(b=st.integers(1, 4), t=st.sampled_from([1, 77, 154]), dtype=dtypes, pooled=st.booleans(),
       s=st.lists(st.sampled_from([0.0, 0.0, 0.3, 1.0, 2.5]), min_size=4, max_size=4), seed=st.integers(0, 999))
def test_redirect_rows(b, t, dtype, pooled, s, seed) -> None:
    g = torch.Generator().manual_seed(seed)
    u = Cond(torch.randn(b, t, 8, generator=g).to(dtype), torch.randn(b, 3, generator=g).to(dtype) if pooled else None)
    delta = Cond(torch.randn(b, t, 8, generator=g).to(dtype), torch.randn(b, 3, generator=g).to(dtype) if pooled else None)
    sv = torch.tensor(s[:b])
    out = redirect(u, delta, sv)
    assert out.tokens.dtype == dtype and out.tokens.shape == u.tokens.shape
    for i in range(b):
        if sv[i] == 0:
            assert torch.equal(out.tokens[i], u.tokens[i])
            if pooled:
                assert torch.equal(out.pooled[i], u.pooled[i])
        else:
            expect = u.tokens[i].float() + float(sv[i]) * delta.tokens[i].float()
            torch.testing.assert_close(out.tokens[i].float(), expect, rtol=2e-2, atol=2e-2)


def test_redirect_rejects_wrong_shapes() -> None:
    u = Cond(torch.zeros(2, 77, 8))
    with pytest.raises(ValueError, match="do not match"):
        redirect(u, Cond(torch.zeros(2, 154, 8)), torch.ones(2))
    with pytest.raises(ValueError, match="one value per row"):
        redirect(u, Cond(torch.zeros(2, 77, 8)), torch.ones(3))


def test_cfg_combine_formula_and_per_row_scale() -> None:
    g = torch.Generator().manual_seed(4)
    a, b = torch.randn(3, 4, 2, 2, generator=g), torch.randn(3, 4, 2, 2, generator=g)
    assert torch.equal(cfg_combine(a, b, 7.5), b + 7.5 * (a - b))
    w = torch.tensor([1.0, 2.0, 3.0])
    out = cfg_combine(a, b, w)
    for i in range(3):
        assert torch.equal(out[i], b[i] + float(w[i]) * (a[i] - b[i]))
    assert torch.equal(cfg_combine(a, b, 1.0), b + (a - b))


def test_prompt_harm_score_is_rms_and_length_invariant() -> None:
    g = torch.Generator().manual_seed(5)
    tok = torch.randn(2, 77, 6, generator=g)
    expect = [math.sqrt(float((tok[i].double() ** 2).mean())) for i in range(2)]
    got = prompt_harm_score(Cond(tok))
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), expect, rtol=1e-6)
    np.testing.assert_allclose(prompt_harm_score(Cond(tok.repeat(1, 3, 1))).numpy(), expect, rtol=1e-5)
    pooled = torch.randn(2, 4, generator=g)
    expect_p = [math.sqrt((float((tok[i].double() ** 2).sum()) + float((pooled[i].double() ** 2).sum())) / (77 * 6 + 4))
                for i in range(2)]
    np.testing.assert_allclose(prompt_harm_score(Cond(tok, pooled)).numpy(), expect_p, rtol=1e-6)
    assert prompt_harm_score(Cond(tok.half())).dtype == torch.float32


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nonfinite_inputs_are_named(bad: float) -> None:
    guidance = SafeGuidance(_bundle(trained=False), GateConfig(mode="always"))
    good = torch.zeros(1, 77, D)
    poisoned = good.clone()
    poisoned[0, 5, 3] = bad
    with pytest.raises(NonFiniteInputError, match=r"positive conditioning \(c\)"):
        guidance.redirected_negative(Cond(poisoned), Cond(good))
    with pytest.raises(NonFiniteInputError, match=r"negative conditioning \(u\)"):
        guidance.redirected_negative(Cond(good), Cond(poisoned))
    with pytest.raises(NonFiniteInputError, match="latent"):
        check_finite("latent x0", poisoned)
    check_finite("fine", good)  # finite input passes
    # A HGR whose output overflows (fp16) is caught too.
    b = _bundle(trained=True)
    with torch.no_grad():
        b.net.out_proj.bias.fill_(1e6)
    b.net.half()
    with pytest.raises(NonFiniteInputError, match="HGR output"):
        SafeGuidance(b, GateConfig(mode="always")).redirected_negative(Cond(good.half()), Cond(good.half()))


def test_width_mismatch_is_refused_by_guidance() -> None:
    guidance = SafeGuidance(_bundle(trained=False), GateConfig(mode="always"))
    with pytest.raises(HGRMismatchError, match="16-wide"):
        guidance.redirected_negative(Cond(torch.zeros(1, 77, 32)), Cond(torch.zeros(1, 77, 32)))
    with pytest.raises(ValueError, match="same batch size"):
        guidance.redirected_negative(Cond(torch.zeros(2, 77, D)), Cond(torch.zeros(3, 77, D)))


def test_hgr_dtype_and_device_are_kept_apart() -> None:
    """HGR in bf16, conditioning in fp16 (or the reverse): u* comes back in u's dtype and device."""
    for net_dtype, in_dtype in ((torch.bfloat16, torch.float16), (torch.float32, torch.bfloat16), (torch.float16, torch.float32)):
        b = _bundle(trained=True)
        b.net.to(net_dtype)
        g = torch.Generator().manual_seed(6)
        c, u = Cond(torch.randn(2, 77, D, generator=g).to(in_dtype)), Cond(torch.randn(2, 154, D, generator=g).to(in_dtype))
        res = SafeGuidance(b, GateConfig(mode="always")).redirected_negative(c, u)
        assert res.u_star.tokens.dtype == in_dtype and res.delta.tokens.dtype == in_dtype
        assert res.u_star.tokens.shape == u.tokens.shape
        assert res.score.dtype == torch.float32 and res.s.dtype == torch.float32
        assert next(b.net.parameters()).dtype == net_dtype


def test_score_level_harm_matches_closed_form() -> None:
    """On the analytic Gaussian model ``D(u*) - D(u)`` and ``D(c) - D(u)`` are the same sigma-factor times
    ``A @ (token-mean difference)``, so the ratio is ``|A dm*| / |A dm_c|`` for every latent and sigma."""
    den = AnalyticDenoiser(token_dim=8, latent_shape=(2, 4, 4), seed=3)
    g = torch.Generator().manual_seed(7)
    c = Cond(torch.randn(3, 77, 8, generator=g))
    u = Cond(torch.randn(3, 154, 8, generator=g))
    u_star = Cond(u.tokens + 0.3 * torch.randn(3, 154, 8, generator=g))
    x0 = torch.randn(3, 2, 4, 4, generator=g)
    got = score_level_harm(den, x0, c, u, u_star, [0.3, 1.0, 4.0], generator=g)
    A = den.A.double().numpy()
    for i in range(3):
        dm_star = (u_star.tokens[i].double().mean(0) - u.tokens[i].double().mean(0)).numpy()
        dm_c = (c.tokens[i].double().mean(0) - u.tokens[i].double().mean(0)).numpy()
        expect = np.linalg.norm(A @ dm_star) / np.linalg.norm(A @ dm_c)
        assert math.isclose(float(got[i]), expect, rel_tol=1e-3)
    # u* == u scores exactly 0; c == u (nothing to guide) stays finite instead of dividing by zero.
    assert torch.equal(score_level_harm(den, x0, c, u, u, [1.0], generator=g), torch.zeros(3))
    same = score_level_harm(den, x0, u, u, u_star, [1.0], generator=g)
    assert torch.isfinite(same).all()
    # Explicit noise, shared by all sigmas, gives a deterministic result.
    n = torch.randn(3, 2, 4, 4, generator=g)
    assert torch.equal(score_level_harm(den, x0, c, u, u_star, [1.0, 2.0], noise=n),
                       score_level_harm(den, x0, c, u, u_star, [1.0, 2.0], noise=n))


def test_category_attribution_picks_the_concept() -> None:
    enc = ToyTextEncoder(token_dim=16, seed=1)
    u = enc([""])
    dirs = concept_directions(enc, {"violence": "blood, gore", "nudity": "nude, naked"}, u)
    for name in ("violence", "nudity"):
        delta = Cond(dirs[name].tokens * 0.7)
        cos = category_attribution(delta, dirs)
        assert math.isclose(float(cos[name][0]), 1.0, rel_tol=1e-5)
        other = "nudity" if name == "violence" else "violence"
        assert float(cos[other][0]) < 0.9


@settings(max_examples=40, deadline=None)
@given(lengths=st.lists(st.sampled_from([1, 2, 3, 77, 154, 231]), min_size=1, max_size=4))
def test_padding_rule(lengths) -> None:
    n = common_token_length(lengths)
    assert all(n % t == 0 for t in lengths)
    assert all(any((n // k) % t != 0 for t in lengths) for k in range(2, 8) if n % k == 0) or n == 1
    tensors = [torch.arange(t, dtype=torch.float32).view(1, t, 1).expand(2, t, 3) for t in lengths]
    padded = pad_to_common_length(tensors)
    for t, p in zip(lengths, padded):
        assert p.shape == (2, n, 3)
        assert torch.equal(p[:, :, 0], (torch.arange(n) % t).float().expand(2, n))
    with pytest.raises(ValueError):
        common_token_length([77, 0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_hgr_with_cpu_conditioning_and_back() -> None:
    b = _bundle(trained=True).to("cuda", torch.float16)
    assert b.device.type == "cuda" and b.dtype == torch.float16
    g = torch.Generator().manual_seed(8)
    c, u = Cond(torch.randn(2, 77, D, generator=g)), Cond(torch.randn(2, 154, D, generator=g))
    res = SafeGuidance(b, GateConfig(mode="always")).redirected_negative(c, u)
    assert res.u_star.tokens.device.type == "cpu" and res.u_star.tokens.dtype == torch.float32
    ref = SafeGuidance(_bundle(trained=True), GateConfig(mode="always")).redirected_negative(c, u)
    torch.testing.assert_close(res.u_star.tokens, ref.u_star.tokens, rtol=2e-2, atol=2e-2)
    res_gpu = SafeGuidance(b, GateConfig(mode="always")).redirected_negative(c.to("cuda"), u.to("cuda", torch.bfloat16))
    assert res_gpu.u_star.tokens.device.type == "cuda" and res_gpu.u_star.tokens.dtype == torch.bfloat16


def test_a_wider_gate_than_calibrated_is_explained() -> None:
    """The lower edge the warning names is where the gate really starts to open; the calibrated softness, a hand-set
    threshold, the hard gate and files without a threshold or calibration get no warning."""
    calibration = {"clean_quantile": 0.02, "margin": 1.1, "fpr": 0.01, "softness": 0.25}
    threshold = 0.02 * 1.1 / 0.75  # the calibration rule's threshold for these numbers

    def note(gate, thr=threshold, cal=calibration):
        return softness_beyond_calibration(gate, thr, cal)

    assert note(GateConfig(softness=0.25)) is None and note(GateConfig(softness=0.1)) is None
    assert note(GateConfig(softness=0.5, threshold=threshold)) is None
    assert note(GateConfig(softness=0.5, mode="hard")) is None
    assert note(GateConfig(softness=0.5), cal={}) is None and note(GateConfig(softness=0.5), thr=None) is None
    text = note(GateConfig(softness=0.5))
    assert text is not None and "softness 0.5 is wider than the 0.25" in text and "Use softness 0.25 or lower" in text
    assert "99% of the clean calibration prompts score up to 0.02" in text
    edge = float(text.split("starts at score ")[1].split(" ")[0])
    assert edge < 0.02  # below the clean prompts' 99% quantile: the calibration's promise no longer holds
    opened = gate_strength(torch.tensor([edge * 0.999, edge * 1.001]), GateConfig(softness=0.5), threshold)
    assert opened[0] == 0 and 0 < opened[1] < 1e-3
