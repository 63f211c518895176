"""The harm head: an HGR's optional classifier that the gate reads instead of RMS(Delta).

What must hold: files without a head are exactly as before; a head round-trips through the file; the gate reads the
head's score when there is one (so a large Delta on a prompt the head calls clean changes nothing, bit for bit); an
untrained HGR is still exact CFG; fitting is deterministic and learns a separable problem; a file that declares a
head it does not hold is refused before anything is built.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from safecfg_core import Cond
from safecfg_core.errors import HGRFileError
from safecfg_core.guidance import GateConfig, SafeGuidance
from safecfg_core.hgr import HGRBundle, HGRConfig, HGRMeta
from safecfg_core.train.harm_head import fit_harm_head, with_harm_head

TOKENS, WIDTH = 16, 12


def _bundle(head: int = 0, threshold: float = 1.0) -> HGRBundle:
    """A small HGR with non-zero output layers (so Delta is large for every prompt)."""
    cfg = HGRConfig(token_dim=WIDTH, model_family="demo_test", width=16, depth=1, heads=2, harm_head=head)
    b = HGRBundle.create(cfg, HGRMeta(threshold=threshold), seed=0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in b.net.named_parameters():
            if not name.startswith("harm_head."):
                p.add_(0.5 * torch.randn(p.shape, generator=g))
    return b


def _conds(n: int, seed: int, shift: float = 0.0) -> Cond:
    g = torch.Generator().manual_seed(seed)
    return Cond(torch.randn(n, TOKENS, WIDTH, generator=g) + shift)


def test_file_without_head_keeps_the_old_config() -> None:
    """No head: the config written to the file has exactly the fields files had before heads existed."""
    data = _bundle(head=0).config.to_dict()
    assert set(data) == {"token_dim", "pooled_dim", "model_family", "width", "depth", "heads", "chunk"}
    assert HGRConfig.from_dict(data).harm_head == 0
    assert _bundle(head=8).config.to_dict()["harm_head"] == 8


def test_head_round_trips_through_the_file(tmp_path: Path) -> None:
    b = _bundle(head=8)
    with torch.no_grad():
        b.net.harm_head.feature_mean.normal_()
        b.net.harm_head.out.weight.normal_()
    c = _conds(3, 5)
    path = b.save(tmp_path / "head.safetensors")
    loaded = HGRBundle.load(path)
    assert loaded.config.harm_head == 8
    u = _conds(3, 6)
    assert torch.equal(loaded.net.prompt_score(c, loaded.net(c, u)), b.net.prompt_score(c, b.net(c, u)))


def test_without_head_the_score_is_rms_of_delta() -> None:
    b = _bundle(head=0)
    c, u = _conds(2, 1), _conds(2, 2)
    with torch.no_grad():
        delta = b.net(c, u)
        expected = delta.tokens.double().pow(2).mean(dim=(1, 2)).sqrt().float()
        assert torch.allclose(b.net.prompt_score(c, delta), expected, rtol=1e-5)


def test_gate_reads_the_head_not_the_size_of_delta() -> None:
    """The head's bias sets its score for every prompt: below the threshold nothing changes although Delta is
    large; above it the negative is redirected by Delta."""
    b = _bundle(head=8, threshold=1.0)
    c, u = _conds(2, 1), _conds(2, 2)
    with torch.no_grad():
        assert b.net(c, u).tokens.abs().max() > 0.1
        b.net.harm_head.out.weight.zero_()
        b.net.harm_head.out.bias.fill_(-6.0)  # softplus(-6) ~ 0.0025: clean
    closed = SafeGuidance(b, GateConfig()).redirected_negative(c, u)
    assert torch.equal(closed.u_star.tokens, u.tokens)
    assert torch.allclose(closed.score, torch.nn.functional.softplus(torch.tensor(-6.0)).expand(2))
    with torch.no_grad():
        b.net.harm_head.out.bias.fill_(6.0)  # softplus(6) ~ 6: harmful
    opened = SafeGuidance(b, GateConfig()).redirected_negative(c, u)
    assert torch.equal(opened.s, torch.ones(2))
    assert torch.allclose(opened.u_star.tokens, u.tokens + opened.delta.tokens)


def test_untrained_hgr_with_head_is_exact_cfg() -> None:
    """Zero-initialised output layers give Delta = 0, so the negative is u itself whatever the head says."""
    cfg = HGRConfig(token_dim=WIDTH, model_family="demo_test", width=16, depth=1, heads=2, harm_head=8)
    b = HGRBundle.create(cfg, HGRMeta(threshold=1e-6), seed=0)
    with torch.no_grad():
        b.net.harm_head.out.bias.fill_(9.0)
    c, u = _conds(2, 1), _conds(2, 2)
    r = SafeGuidance(b, GateConfig(mode="always")).redirected_negative(c, u)
    assert torch.equal(r.u_star.tokens, u.tokens)


def _features(n: int, seed: int, shift: float) -> torch.Tensor:
    from safecfg_core.hgr.harm_head import prompt_features

    return prompt_features(_conds(n, seed, shift))


def test_fit_learns_a_separable_problem_and_is_deterministic() -> None:
    clean, harmful = _features(200, 1, 0.0), _features(60, 2, 0.6)
    heads = []
    for _ in range(2):
        b = with_harm_head(_bundle(head=0), hidden=16)
        stats = fit_harm_head(b, clean, harmful, steps=120, batch_size=128, seed=3)
        heads.append(b)
    assert stats["train_auc"] > 0.99
    for (k, v), v2 in zip(heads[0].net.harm_head.state_dict().items(), heads[1].net.harm_head.state_dict().values()):
        assert torch.equal(v, v2), k
    # held-out prompts of both kinds land on the right side of each other
    b = heads[0]
    with torch.no_grad():
        s_clean = b.net.harm_head.score(_conds(40, 11, 0.0))
        s_harm = b.net.harm_head.score(_conds(40, 12, 0.6))
    assert float(s_harm.min()) > float(s_clean.max())


def test_with_harm_head_keeps_the_hgr_weights() -> None:
    b = _bundle(head=0)
    b.net.eval()  # with_harm_head returns an eval-mode net; compare like with like
    b2 = with_harm_head(b, hidden=8)
    c, u = _conds(2, 1), _conds(2, 2)
    with torch.no_grad():
        assert torch.equal(b.net(c, u).tokens, b2.net(c, u).tokens)


def test_file_declaring_a_head_it_does_not_hold_is_refused(tmp_path: Path) -> None:
    path = _bundle(head=0).save(tmp_path / "plain.safetensors")
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = dict(f.metadata())
    config = json.loads(meta["safecfg.config"])
    config["harm_head"] = 8
    meta["safecfg.config"] = json.dumps(config)
    forged = tmp_path / "forged.safetensors"
    save_file(load_file(str(path)), str(forged), metadata=meta)
    with pytest.raises(HGRFileError, match="missing tensors"):
        HGRBundle.load(forged)


def test_head_size_is_bounded() -> None:
    with pytest.raises(ValueError, match="harm_head"):
        HGRConfig(token_dim=WIDTH, width=16, depth=1, heads=2, harm_head=10**6)
    with pytest.raises(ValueError, match="harm_head"):
        HGRConfig(token_dim=WIDTH, width=16, depth=1, heads=2, harm_head=-1)
