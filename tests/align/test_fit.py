"""The fit loop: it learns the targets, and cancel / checkpoint / resume give exactly the uninterrupted run.

Runs on a toy denoiser (a torch module with a Linear and a Conv layer taking ``(x, sigma, cond)``), which is also
the "any Denoiser" case: nothing here is specific to the demo model.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from safecfg_core.align import FitConfig, FitProgress, fit_lora
from safecfg_core.align.targets import AlignTargets, Verdict
from safecfg_core.conditioning import Cond
from safecfg_core.errors import CheckpointMismatch, TrainingCancelled


class ToyDenoiser(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.text = nn.Linear(6, 2 * 4 * 4)
        self.conv = nn.Conv2d(2, 2, 3, padding=1)
        self.requires_grad_(False)

    def forward(self, x, sigma, cond: Cond):
        t = self.text(cond.tokens.mean(1)).view(-1, 2, 4, 4)
        s = sigma.view(-1, 1, 1, 1)
        return x / (1 + s ** 2) + self.conv(t) * s ** 2 / (1 + s ** 2)


def _targets(den: ToyDenoiser) -> AlignTargets:
    """Prompt 0 must move its conditional prediction by +0.5; prompt 1 must stay; the unconditional must stay."""
    g = torch.Generator().manual_seed(1)
    c = Cond(torch.randn(2, 3, 6, generator=g))
    u = Cond(torch.zeros(1, 3, 6))
    m = 40
    idx = torch.arange(m) % 2
    x = torch.randn(m, 2, 4, 4, generator=g)
    sigma = torch.rand(m, generator=g) * 3 + 0.5
    with torch.no_grad():
        dc = den(x, sigma, c.index(idx))
        du = den(x, sigma, u.repeat_batch(m))
    red = idx == 0
    tc = torch.where(red.view(-1, 1, 1, 1), dc + 0.5, dc)
    verdicts = [Verdict("p0", 1.0, 1.0, True), Verdict("p1", 0.0, 0.0, False)]
    return AlignTargets(["p0", "p1"], verdicts, c, u, x, sigma, idx, tc, du, red)


def _config(tmp_path=None, **kw) -> FitConfig:
    base = dict(steps=12, batch_size=8, lr=2e-2, rank=2, checkpoint_every=0,
                checkpoint_path=None if tmp_path is None else str(tmp_path / "ck.safetensors"))
    base.update(kw)
    return FitConfig(**base)


def test_fit_learns_the_redirect_and_keeps_the_rest():
    den = ToyDenoiser()
    t = _targets(den)
    res = fit_lora(den, den, t, _config(steps=150), {"test": 1})
    assert res.history[-1] < 0.2 * res.history[0]


def test_cancel_keeps_a_checkpoint_and_resume_gives_the_uninterrupted_run(tmp_path):
    den = ToyDenoiser()
    t = _targets(den)
    whole = fit_lora(den, den, t, _config(), {"test": 1})

    def stop_at_5(p: FitProgress):
        return p.step < 5

    with pytest.raises(TrainingCancelled) as info:
        fit_lora(den, den, t, _config(tmp_path, checkpoint_every=3), {"test": 1}, stop_at_5)
    assert info.value.step == 5 and info.value.checkpoint_path == str(tmp_path / "ck.safetensors")
    resumed = fit_lora(den, den, t, _config(tmp_path, checkpoint_every=3), {"test": 1})
    assert resumed.resumed_from == 5
    assert resumed.history == pytest.approx(whole.history, rel=0, abs=0)
    for name in whole.lora.layer_names:
        assert torch.equal(whole.lora.delta(name), resumed.lora.delta(name))


def test_a_checkpoint_of_other_settings_is_not_resumed(tmp_path):
    den = ToyDenoiser()
    t = _targets(den)
    with pytest.raises(TrainingCancelled):
        fit_lora(den, den, t, _config(tmp_path), {"test": 1}, lambda p: p.step < 3)
    with pytest.raises(CheckpointMismatch, match="lr"):
        fit_lora(den, den, t, _config(tmp_path, lr=1e-3), {"test": 1})
    with pytest.raises(CheckpointMismatch):
        fit_lora(den, den, t, _config(tmp_path), {"test": 2})  # other prompts / model / HGR
    # and without resume the run starts over
    fresh = fit_lora(den, den, t, _config(tmp_path, resume=False), {"test": 1})
    assert fresh.resumed_from is None and len(fresh.history) == 12


def test_the_networks_weights_are_untouched_after_fit_and_cancel():
    den = ToyDenoiser()
    before = {k: v.clone() for k, v in den.state_dict().items()}
    t = _targets(den)
    fit_lora(den, den, t, _config(), {"test": 1})
    with pytest.raises(TrainingCancelled):
        fit_lora(den, den, t, _config(), {"test": 1}, lambda p: False)
    assert den.state_dict().keys() == before.keys()
    assert all(torch.equal(den.state_dict()[k], v) for k, v in before.items())
