"""BatchedRedirector: the uncond rows of a ComfyUI-style batched call get HGR's u*, nothing else changes."""
from __future__ import annotations

import uuid
from types import SimpleNamespace

import pytest
import torch

from safecfg_core.batched import BatchedRedirector
from safecfg_core.conditioning import Cond


class FakeGuidance:
    """u* = u + s * Delta with Delta = mean of c's tokens, s = 1 where mean(c) > threshold (else exactly 0)."""

    def __init__(self, threshold=0.5, pooled=False):
        self.threshold = threshold
        self.calls = 0
        self.pooled = pooled

    def redirected_negative(self, c: Cond, u: Cond):
        self.calls += 1
        score = c.tokens.mean(dim=(1, 2))
        s = (score > self.threshold).float()
        delta = c.tokens.mean(dim=1, keepdim=True).expand_as(u.tokens) + 1.0
        tokens = torch.where(s.view(-1, 1, 1) > 0, u.tokens + s.view(-1, 1, 1) * delta, u.tokens)
        pooled = None
        if u.pooled is not None:
            pooled = torch.where(s.view(-1, 1) > 0, u.pooled + 10.0, u.pooled)
        return SimpleNamespace(u_star=Cond(tokens, pooled), delta=None, score=score, s=s)


def _tok(value, rows=1, T=77, D=8):
    return torch.full((rows, T, D), float(value))


def _opts(sample_sigmas=None, sigma=None, uuids=None):
    d = {}
    if sample_sigmas is not None:
        d["sample_sigmas"] = sample_sigmas
    if sigma is not None:
        d["sigmas"] = sigma
    if uuids is not None:
        d["uuids"] = uuids
    return d


def test_clean_prompt_returns_same_tensors():
    g = FakeGuidance()
    r = BatchedRedirector(g)
    x = torch.cat([_tok(0.1), _tok(0.0)])
    out, pooled = r(x, None, [0, 1])
    assert out is x and pooled is None
    assert g.calls == 1


def test_harmful_uncond_chunk_replaced_cond_untouched():
    g = FakeGuidance()
    r = BatchedRedirector(g)
    c, u = _tok(1.0), _tok(0.0)
    x = torch.cat([u, c])  # ComfyUI often puts the uncond first
    out, _ = r(x, None, [1, 0])
    assert torch.equal(out[1:], c)
    assert torch.equal(out[:1], u + 2.0)  # delta = mean(c) + 1
    assert torch.equal(x[:1], u), "the input tensor must not be modified in place"


def test_batch_rows_paired_row_by_row():
    g = FakeGuidance()
    r = BatchedRedirector(g)
    c = torch.cat([_tok(0.1), _tok(1.0), _tok(2.0)])  # row 0 clean, rows 1,2 harmful
    u = _tok(0.0, rows=3)
    out, _ = r(torch.cat([c, u]), None, [0, 1])
    assert torch.equal(out[3], u[0])
    assert torch.equal(out[4], u[1] + 2.0)
    assert torch.equal(out[5], u[2] + 3.0)
    assert torch.equal(r.last_strengths, torch.tensor([0.0, 1.0, 1.0]))


def test_several_conds_most_harmful_wins():
    g = FakeGuidance()
    r = BatchedRedirector(g)
    out, _ = r(torch.cat([_tok(0.7), _tok(3.0), _tok(0.0)]), None, [0, 0, 1])
    assert torch.equal(out[2:], _tok(4.0))


def test_uuid_cache_runs_hgr_once_and_never_reads_values(monkeypatch):
    g = FakeGuidance()
    r = BatchedRedirector(g)
    sched = torch.linspace(10, 0, 5)
    ids = [uuid.uuid4(), uuid.uuid4()]
    c, u = _tok(1.0), _tok(0.0)
    first, _ = r(torch.cat([c, u]), None, [0, 1], _opts(sched, sched[0:1].clone(), ids))

    def no_sync(*a, **k):  # the uuid path must not compare contents
        raise AssertionError("content comparison on the uuid path")

    monkeypatch.setattr(torch, "equal", no_sync)
    monkeypatch.setattr(torch.Tensor, "item", no_sync)
    for step in range(1, 4):
        x = torch.cat([c, u])
        out, _ = r(x, None, [0, 1], _opts(sched, sched[step:step + 1].clone(), ids))
        assert (out[1] - u[0]).abs().max() == 2.0
    assert g.calls == 1


def test_new_run_new_prompt_recomputes():
    g = FakeGuidance()
    r = BatchedRedirector(g)
    for value in (1.0, 2.0):
        sched = torch.linspace(10, 0, 5)
        ids = [uuid.uuid4(), uuid.uuid4()]
        for step in range(3):
            out, _ = r(torch.cat([_tok(value), _tok(0.0)]), None, [0, 1], _opts(sched, sched[step:step + 1].clone(), ids))
            assert torch.equal(out[1:], _tok(value + 1.0))
    assert g.calls == 2


def test_content_fallback_without_uuids():
    g = FakeGuidance()
    r = BatchedRedirector(g)
    for step in range(3):
        sig = torch.tensor([10.0 - step])
        out, _ = r(torch.cat([_tok(1.0), _tok(0.0)]), None, [0, 1], _opts(sigma=sig))
        assert torch.equal(out[1:], _tok(2.0))
    assert g.calls == 1
    out, _ = r(torch.cat([_tok(2.0), _tok(0.0)]), None, [0, 1], _opts(sigma=torch.tensor([7.0])))
    assert torch.equal(out[1:], _tok(3.0))
    assert g.calls == 2


def test_split_calls_use_recent_cond_of_the_run():
    """ComfyUI runs the uncond first when it splits: step 0 has no cond yet, later steps use the previous one."""
    g = FakeGuidance()
    r = BatchedRedirector(g)
    sched = torch.linspace(10, 0, 4)
    uc, uu = uuid.uuid4(), uuid.uuid4()
    c, u = _tok(1.0), _tok(0.0)
    s0 = sched[0:1].clone()
    out, _ = r(u.clone(), None, [1], _opts(sched, s0, [uu]))
    assert torch.equal(out, u)  # nothing known about the prompt yet
    out, _ = r(c.clone(), None, [0], _opts(sched, s0, [uc]))
    assert torch.equal(out, c)
    s1 = sched[1:2].clone()
    out, _ = r(u.clone(), None, [1], _opts(sched, s1, [uu]))
    assert torch.equal(out, u + 2.0)
    # cond first, then uncond, in the same step
    s2 = sched[2:3].clone()
    r(c.clone(), None, [0], _opts(sched, s2, [uc]))
    out, _ = r(u.clone(), None, [1], _opts(sched, s2, [uu]))
    assert torch.equal(out, u + 2.0)
    # a new run with a clean prompt does not inherit the old harmful cond
    sched2 = torch.linspace(10, 0, 4)
    out, _ = r(u.clone(), None, [1], _opts(sched2, sched2[0:1].clone(), [uuid.uuid4()]))
    assert torch.equal(out, u)


def test_pooled_first_dims_replaced_rest_kept():
    g = FakeGuidance(pooled=True)
    r = BatchedRedirector(g, pooled_dim=4)
    x = torch.cat([_tok(1.0), _tok(0.0)])
    y = torch.arange(2 * 6, dtype=torch.float32).view(2, 6)
    out, y2 = r(x, y, [0, 1])
    assert torch.equal(y2[0], y[0])
    assert torch.equal(y2[1, :4], y[1, :4] + 10.0)
    assert torch.equal(y2[1, 4:], y[1, 4:])
    assert torch.equal(y[1], torch.arange(6, 12, dtype=torch.float32)), "input y modified in place"


def test_different_token_lengths_pad_by_repetition():
    g = FakeGuidance()
    r = BatchedRedirector(g)
    sched = torch.linspace(10, 0, 4)
    uc, uu = uuid.uuid4(), uuid.uuid4()
    r(_tok(1.0, T=154), None, [0], _opts(sched, sched[0:1].clone(), [uc]))
    out, _ = r(_tok(0.0, T=77), None, [1], _opts(sched, sched[0:1].clone(), [uu]))
    assert out.shape == (1, 154, 8)
    assert torch.equal(out, _tok(2.0, T=154))


def test_dtype_kept_and_clean_rows_bit_exact():
    g = FakeGuidance()
    r = BatchedRedirector(g)
    c = torch.cat([_tok(0.1), _tok(1.0)]).half()
    u = torch.randn(2, 77, 8).half()
    out, _ = r(torch.cat([c, u]), None, [0, 1])
    assert out.dtype == torch.float16
    assert torch.equal(out[2], u[0])
    assert not torch.equal(out[3], u[1])


def test_other_guider_indices_left_alone():
    g = FakeGuidance()
    r = BatchedRedirector(g)
    x = torch.cat([_tok(1.0), _tok(0.0), _tok(5.0)])
    out, _ = r(x, None, [0, 1, 2])
    assert torch.equal(out[2:], _tok(5.0))
    assert torch.equal(out[1:2], _tok(2.0))


def test_non_finite_hgr_output_refused():
    class Bad(FakeGuidance):
        def redirected_negative(self, c, u):
            res = super().redirected_negative(c, u)
            return SimpleNamespace(u_star=Cond(res.u_star.tokens * float("nan")), delta=None, score=res.score, s=res.s)

    r = BatchedRedirector(Bad())
    with pytest.raises(ValueError, match="non-finite"):
        r(torch.cat([_tok(1.0), _tok(0.0)]), None, [0, 1])


def test_prime_makes_first_split_step_redirected():
    """With the step's conds announced up front, an uncond-first split step is redirected even at step 0."""
    g = FakeGuidance()
    r = BatchedRedirector(g)
    sched = torch.linspace(10, 0, 4)
    uc, uu = uuid.uuid4(), uuid.uuid4()
    c, u = _tok(1.0), _tok(0.0)
    s0 = sched[0:1].clone()
    r.prime([(uc, c, None)], sched, s0)
    out, _ = r(u.clone(), None, [1], _opts(sched, s0, [uu]))
    assert torch.equal(out, u + 2.0)
    out, _ = r(c.clone(), None, [0], _opts(sched, s0, [uc]))
    assert torch.equal(out, c)
    assert g.calls == 1
