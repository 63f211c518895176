"""Sampling pieces that need no ComfyUI: Euler by hand, batching helpers, CFG/SafeCFG guided denoisers.

(Agreement with ComfyUI itself is in test_sampling_comfy.py.)
"""
from __future__ import annotations

import pytest
import torch

from safecfg_core.conditioning import Cond
from safecfg_core.guidance import GateConfig, SafeGuidance, cfg_combine
from safecfg_core.hgr import HGRBundle, HGRConfig
from safecfg_core.sampling import (
    CFGDenoise,
    DiscreteEpsDenoiser,
    SafeCFGDenoise,
    batch_prompts_seeds,
    expand_cond,
    noise_for_seeds,
    prepare_noise,
    sample,
    sample_euler,
)
from safecfg_core.schedules import DiscreteSchedule, get_sigmas


class RecordingDenoiser:
    """Linear toy: ``D(x, sigma, cond) = x * 0.5 + mean_t(tokens)[:C] * sigma``; records each call's conds."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, sigma, cond):
        self.calls.append(cond)
        m = cond.tokens.mean(1)[:, : x.shape[1]].view(x.shape[0], x.shape[1], 1, 1)
        return x * 0.5 + m * sigma.view(-1, 1, 1, 1)


def test_euler_by_hand():
    # D = 0 everywhere: d = x / sigma, x_{i+1} = x_i + d (s_{i+1} - s_i) = x_i * s_{i+1} / s_i
    sigmas = torch.tensor([4.0, 2.0, 1.0, 0.0])
    seen = []
    out = sample_euler(lambda x, s: torch.zeros_like(x), torch.full((1, 1, 1, 1), 8.0), sigmas,
                       callback=lambda d: seen.append((d["i"], float(d["x"]), float(d["sigma"]))))
    assert seen == [(0, 8.0, 4.0), (1, 4.0, 2.0), (2, 2.0, 1.0)]
    assert float(out) == 0.0
    # D = constant 3: the last step (to sigma 0) lands exactly on D
    out = sample_euler(lambda x, s: torch.full_like(x, 3.0), torch.full((2, 1, 2, 2), 8.0), sigmas)
    assert torch.allclose(out, torch.full((2, 1, 2, 2), 3.0))


def test_sigma_passed_per_row():
    got = []
    sample_euler(lambda x, s: (got.append(s.clone()), x)[1], torch.zeros(3, 1, 1, 1), torch.tensor([2.0, 1.0, 0.0]))
    assert torch.equal(got[0], torch.tensor([2.0, 2.0, 2.0])) and torch.equal(got[1], torch.ones(3))


def test_expand_cond():
    c = Cond(torch.arange(2.0).view(2, 1, 1))
    assert expand_cond(c, 2) is c
    assert expand_cond(c, 6).tokens.flatten().tolist() == [0, 0, 0, 1, 1, 1]  # prompt-major
    assert expand_cond(Cond(torch.ones(1, 3, 1)), 4).batch_size == 4
    with pytest.raises(ValueError, match="cannot be spread"):
        expand_cond(c, 3)


def test_batch_prompts_seeds_rows_match_single_runs():
    c = Cond(torch.randn(2, 77, 8))
    cond, noise = batch_prompts_seeds(c, [5, 9, 11], [4, 8, 8])
    assert cond.batch_size == 6 and noise.shape == (6, 4, 8, 8)
    for p in range(2):
        for s, seed in enumerate([5, 9, 11]):
            row = p * 3 + s
            assert torch.equal(cond.tokens[row], c.tokens[p])
            assert torch.equal(noise[row:row + 1], prepare_noise([1, 4, 8, 8], seed))
    assert torch.equal(noise_for_seeds([1, 4, 8, 8], [5]), prepare_noise([1, 4, 8, 8], 5))


def test_cfg_is_one_batched_call_in_comfy_order():
    den = RecordingDenoiser()
    c = Cond(torch.full((1, 77, 4), 2.0))
    u = Cond(torch.full((1, 154, 4), -1.0))  # different length: padded to the LCM like ComfyUI
    x = torch.ones(3, 4, 2, 2)
    sigma = torch.full((3,), 0.5)
    out = CFGDenoise(den, c, u, 7.0)(x, sigma)
    assert len(den.calls) == 1
    call = den.calls[0]
    assert call.tokens.shape == (6, 154, 4)
    assert torch.all(call.tokens[:3] == -1.0) and torch.all(call.tokens[3:] == 2.0)  # [uncond..., cond...]
    # D(c) = 0.5 + 2 * 0.5 = 1.5; D(u) = 0.5 - 0.5 = 0; CFG = 0 + 7 * 1.5
    assert torch.allclose(out, torch.full_like(x, 10.5))


def test_cfg_scale_one_skips_the_negative_pass():
    den = RecordingDenoiser()
    c = Cond(torch.full((1, 77, 4), 2.0))
    out = CFGDenoise(den, c, Cond(torch.zeros(1, 77, 4)), 1.0)(torch.ones(2, 4, 1, 1), torch.ones(2))
    assert len(den.calls) == 1 and den.calls[0].batch_size == 2
    assert torch.allclose(out, torch.full((2, 4, 1, 1), 2.5))


def _demo_like_setup(seed=0):
    g = torch.Generator().manual_seed(seed)
    schedule = DiscreteSchedule()

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(16, 4)
            self.conv = torch.nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, x, t, context=None):
            return self.conv(x) * 0.1 + self.proj(context.mean(1))[:, :, None, None] + 1e-3 * t[:, None, None, None]

    net = Net()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    den = DiscreteEpsDenoiser(net, schedule)
    c = Cond(torch.randn(2, 77, 16, generator=g))
    u = Cond(torch.zeros(1, 77, 16))
    return schedule, den, c, u


def test_safecfg_with_untrained_hgr_is_cfg_bit_for_bit():
    schedule, den, c, u = _demo_like_setup()
    bundle = HGRBundle.create(HGRConfig(token_dim=16, model_family="demo", width=32, depth=1, heads=4), seed=0)
    guidance = SafeGuidance(bundle, GateConfig(mode="always"))
    cond, noise = batch_prompts_seeds(c, [1, 2], [4, 8, 8])
    kw = dict(noise=noise, steps=5, scheduler="normal")
    ref = sample(CFGDenoise(den, cond, u, 6.0), schedule, **kw)
    safe = SafeCFGDenoise(den, c, u, 6.0, guidance)
    out = sample(safe, schedule, **kw)
    assert torch.equal(out, ref)
    assert float(safe.redirect.score.abs().max()) == 0.0


class FakeGuidance:
    def __init__(self, shift):
        self.shift = shift
        self.calls = 0

    def redirected_negative(self, c, u):
        self.calls += 1

        class R:
            pass

        r = R()
        r.u_star = Cond(u.tokens + self.shift)
        return r


def test_safecfg_redirects_once_per_run_and_equals_cfg_with_u_star():
    schedule, den, c, u = _demo_like_setup(1)
    fake = FakeGuidance(0.3)
    safe = SafeCFGDenoise(den, c, u, 5.0, fake)
    out = sample(safe, schedule, shape=[2, 4, 8, 8], seed=3, steps=4)
    assert fake.calls == 1 and safe.calls == 4
    ref = sample(CFGDenoise(den, c, Cond(u.tokens.expand(2, -1, -1) + 0.3), 5.0), schedule, shape=[2, 4, 8, 8],
                 seed=3, steps=4)
    assert torch.equal(out, ref)
    assert not torch.equal(out, sample(CFGDenoise(den, c, u, 5.0), schedule, shape=[2, 4, 8, 8], seed=3, steps=4))


def test_cfg_combine_is_the_guidance_one():
    a, b = torch.randn(5), torch.randn(5)
    assert torch.equal(cfg_combine(a, b, 3.5), b + 3.5 * (a - b))


def test_schedule_helpers():
    s = DiscreteSchedule()
    sig = get_sigmas(s, "karras", 10)
    assert sig.shape == (11,) and sig[-1] == 0 and torch.all(sig[:-1] > sig[1:])
    assert s.is_max_denoise(get_sigmas(s, "normal", 10)) and not s.is_max_denoise(torch.tensor([3.0, 0.0]))
    x, d = torch.randn(2, 4, 2, 2), torch.randn(2, 4, 2, 2)
    assert torch.allclose(s.eps_from_denoised(x, torch.tensor([2.0, 2.0]), d), (x - d) / 2)
    with pytest.raises(ValueError, match="Unknown scheduler"):
        get_sigmas(s, "linear", 10)


def test_prompts_x_seeds_batch_matches_single_runs():
    """One batch of 2 prompts x 2 seeds equals the four batch-1 runs (up to kernel rounding, not bit for bit)."""
    schedule, den, c, u = _demo_like_setup(2)
    cond, noise = batch_prompts_seeds(c, [7, 8], [4, 8, 8])
    out = sample(CFGDenoise(den, cond, u, 6.0), schedule, noise=noise, steps=5)
    for p in range(2):
        for j, seed in enumerate([7, 8]):
            single = sample(CFGDenoise(den, c.index([p]), u, 6.0), schedule, shape=[1, 4, 8, 8], seed=seed, steps=5)
            assert torch.allclose(out[2 * p + j:2 * p + j + 1], single, atol=1e-4, rtol=0)
