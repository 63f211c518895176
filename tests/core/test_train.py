"""HGR training on the analytic model: it learns the known right answer; checkpoints, resume, cancel, inputs."""
from __future__ import annotations

import json
from typing import Any
from pathlib import Path

import pytest
import torch

from safecfg_core import Cond
from safecfg_core.analytic import AnalyticDenoiser, analytic_prompts, load_analytic_setup
from safecfg_core.errors import CheckpointMismatch, TrainingCancelled, TrainingInputError
from safecfg_core.guidance import GateConfig, SafeGuidance, cfg_combine
from safecfg_core.hgr import HGRBundle, HGRConfig
from safecfg_core.metrics import roc_auc
from safecfg_core.train import (
    HarmfulPrompt,
    PromptSet,
    TrainConfig,
    aim_past,
    calibrate_threshold,
    harm_scores,
    parse_per_category,
    per_category_tensor,
    rewrite_target,
    train_hgr,
)

torch.set_num_threads(1)
W = 5.0  # CFG scale used for the checks


def _prompt_set(setup, n_clean=None, n_harm=None) -> PromptSet:
    harm = setup.harmful_prompts[:n_harm] if n_harm else setup.harmful_prompts
    return PromptSet(list(setup.clean_prompts[:n_clean] if n_clean else setup.clean_prompts),
                     [HarmfulPrompt(p, c) for p, c in harm], dict(setup.concepts))


@pytest.fixture(scope="module")
def trained():
    setup = load_analytic_setup()
    result = train_hgr(setup.text_encoder, setup.denoiser, _prompt_set(setup), TrainConfig(steps=200, seed=0),
                       setup.hgr_config, sample_latents=setup.sample_latents)
    return setup, result


def _outputs(setup, bundle, prompts, concept_texts, gate):
    """CFG, SafeCFG and the concept-negated target ``CFG with negative = concept`` for the model's own samples."""
    enc, den = setup.text_encoder, setup.denoiser
    c = enc(prompts)
    u = enc([""] * len(prompts))
    k = enc(concept_texts)
    res = SafeGuidance(bundle, gate).redirected_negative(c, u)
    x0 = setup.sample_latents(prompts)
    g = torch.Generator().manual_seed(123)
    out = []
    for sigma in (0.5, 2.0, 8.0):
        x = x0 + sigma * torch.randn(x0.shape, generator=g)
        s = torch.full((len(prompts),), sigma)
        d_c = den(x, s, c)
        d_u = den(x, s, u)
        out.append((cfg_combine(d_c, d_u, W), cfg_combine(d_c, den(x, s, res.u_star), W), cfg_combine(d_c, den(x, s, k), W), d_c, d_u))
    return res, out


@pytest.mark.slow
def test_training_learns_the_known_redirection(trained) -> None:
    setup, result = trained
    bundle = result.bundle
    assert result.loss_history[-1] < 0.05 * result.loss_history[0]
    test_clean, test_harm = analytic_prompts("test")  # held-out prompts, never trained on
    assert test_clean and test_harm

    # Detection: prompt scores separate held-out clean and harmful prompts.
    sc = harm_scores(bundle, setup.text_encoder, test_clean)
    sh = harm_scores(bundle, setup.text_encoder, [p for p, _ in test_harm])
    auc = roc_auc(sc.tolist(), sh.tolist())
    print(f"held-out ROC AUC {auc:.4f} (clean max {float(sc.max()):.4g}, harmful min {float(sh.min()):.4g}, "
          f"threshold {bundle.meta.threshold:.4g})")
    assert auc >= 0.99

    # Harmful prompts: SafeCFG moves at least 75% of the way from CFG to the concept-negated target.
    gate = GateConfig()  # smooth, calibrated threshold from the file
    res, outs = _outputs(setup, bundle, [p for p, _ in test_harm], [setup.concepts[c] for _, c in test_harm], gate)
    assert (res.s == 1.0).float().mean() >= 0.9
    for cfg, safe, target, _, _ in outs:
        before = (cfg - target).flatten(1).norm(dim=1)
        after = (safe - target).flatten(1).norm(dim=1)
        print(f"harmful: remaining distance to target {float((after / before).mean()):.3f} of CFG's")
        assert float((after / before).mean()) <= 0.25
        assert float((after / before).max()) <= 0.6

    # Clean prompts: the calibrated gate stays shut (bit-identical CFG) for nearly all ...
    res, outs = _outputs(setup, bundle, test_clean, [setup.concepts["violence"]] * len(test_clean), gate)
    assert float((res.s == 0).float().mean()) >= 0.9
    for cfg, safe, _, _, _ in outs:
        closed = res.s == 0
        assert torch.equal(safe[closed], cfg[closed])
    # ... and even with the gate forced open, the redirection of clean prompts is small.
    res, outs = _outputs(setup, bundle, test_clean, [setup.concepts["violence"]] * len(test_clean), GateConfig(mode="always"))
    for cfg, safe, _, d_c, d_u in outs:
        change = (safe - cfg).flatten(1).norm(dim=1)
        guidance = (W * (d_c - d_u)).flatten(1).norm(dim=1)
        print(f"clean, gate open: change {float((change / guidance).mean()):.4f} of the guidance term")
        assert float((change / guidance).max()) <= 0.05


@pytest.mark.slow
def test_training_metadata_and_efficiency(trained) -> None:
    setup, result = trained
    meta = result.bundle.meta
    assert meta.categories == setup.concepts
    assert meta.threshold is not None and meta.threshold > 0
    assert meta.calibration["method"] == "clean-quantile" and meta.calibration["fpr"] == 0.01
    assert meta.training["steps"] == 200 and meta.training["n_clean"] == len(setup.clean_prompts)
    # Exactly two batched denoiser calls per step: one for all targets, one with gradients.
    assert meta.training["denoiser_calls"] == 2 * 200
    assert len(result.loss_history) == 200
    stride = meta.training["loss_history_stride"]
    assert meta.training["loss_history"] == pytest.approx(result.loss_history[::stride], abs=1e-6)


def test_calibration_rule() -> None:
    setup = load_analytic_setup()
    b = HGRBundle.create(setup.hgr_config, seed=0)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        b.net.out_proj.bias.copy_(torch.randn(b.net.out_proj.bias.shape, generator=g))
    clean = setup.clean_prompts[:20]
    cal = calibrate_threshold(b, setup.text_encoder, clean, fpr=0.1, margin=1.2, softness=0.25)
    scores = sorted(harm_scores(b, setup.text_encoder, clean).tolist())
    q = scores[18]  # the 0.9-quantile taken "higher": position 0.9 * (20 - 1) = 17.1, rounded up to index 18
    assert cal["clean_quantile"] == pytest.approx(q)
    assert b.meta.threshold == pytest.approx(q * 1.2 / 0.75)


def _tiny(tmp_path: Path, **kw) -> TrainConfig:
    base = dict(steps=6, batch_size=4, seed=3, checkpoint_path=str(tmp_path / "ckpt.safetensors"), checkpoint_every=2,
                warmup_steps=2)
    base.update(kw)
    return TrainConfig(**base)


def _tiny_world():
    setup = load_analytic_setup()
    setup.hgr_config = HGRConfig(token_dim=32, model_family="analytic", width=32, depth=1, heads=4)
    return setup, _prompt_set(setup, n_clean=8, n_harm=6)


def test_latent_cache_serves_only_the_model_that_drew_it(tmp_path: Path) -> None:
    """Another ``model_id`` (another model, e.g. a second SD1.5 fine-tune) must draw its own latents, and must not
    count as "the same run" for resume or the node's already-trained shortcut."""
    from dataclasses import replace

    from safecfg_core.train import training_fingerprint

    setup, ps = _tiny_world()
    sampled = []

    def sample_latents(prompts):
        sampled.append(len(prompts))
        return setup.sample_latents(prompts)

    cfg_a = replace(_tiny(tmp_path / "a"), model_id="model-A", latent_cache_path=str(tmp_path / "latents.safetensors"))
    train_hgr(setup.text_encoder, setup.denoiser, ps, cfg_a, setup.hgr_config, sample_latents=sample_latents)
    n_prompts = sum(sampled)
    train_hgr(setup.text_encoder, setup.denoiser, ps, replace(cfg_a, checkpoint_path=str(tmp_path / "a2.safetensors")),
              setup.hgr_config, sample_latents=lambda p: pytest.fail("same model: latents come from the cache"))
    cfg_b = replace(cfg_a, model_id="model-B", checkpoint_path=str(tmp_path / "b.safetensors"))
    train_hgr(setup.text_encoder, setup.denoiser, ps, cfg_b, setup.hgr_config, sample_latents=sample_latents)
    assert sum(sampled) == 2 * n_prompts  # model B drew all of its own
    assert training_fingerprint(ps, cfg_a, setup.hgr_config) != training_fingerprint(ps, cfg_b, setup.hgr_config)


def test_resume_equals_uninterrupted_and_cancel_keeps_checkpoint(tmp_path: Path) -> None:
    setup, ps = _tiny_world()
    full = train_hgr(setup.text_encoder, setup.denoiser, ps, _tiny(tmp_path / "a"), setup.hgr_config,
                     sample_latents=setup.sample_latents)

    seen = []

    def stop_at_3(p):
        if p.phase == "train":
            seen.append(p.step)
            return p.step < 3

    cfg_b = _tiny(tmp_path / "b")
    with pytest.raises(TrainingCancelled) as ei:
        train_hgr(setup.text_encoder, setup.denoiser, ps, cfg_b, setup.hgr_config,
                  sample_latents=setup.sample_latents, progress=stop_at_3)
    assert ei.value.step == 3 and ei.value.checkpoint_path == cfg_b.checkpoint_path
    assert "resume" in str(ei.value)
    assert seen == [1, 2, 3]
    ckpt = HGRBundle.load(cfg_b.checkpoint_path)  # a checkpoint is itself a loadable HGR
    assert ckpt.meta.training["checkpoint_step"] == 3

    calls_before = setup.denoiser.calls
    resumed = train_hgr(setup.text_encoder, setup.denoiser, ps, _tiny(tmp_path / "b", resume=True), setup.hgr_config,
                        sample_latents=lambda prompts: pytest.fail("latents must come from the cache on resume"))
    assert setup.denoiser.calls - calls_before == 2 * 3  # only the 3 missing steps ran
    assert resumed.summary["resumed_from"] == 3
    assert resumed.loss_history == full.loss_history
    for (k, a), (_, b) in zip(full.bundle.net.state_dict().items(), resumed.bundle.net.state_dict().items()):
        assert torch.equal(a, b), k
    assert resumed.bundle.meta.threshold == full.bundle.meta.threshold


def test_determinism_and_seed(tmp_path: Path) -> None:
    setup, ps = _tiny_world()
    runs = [train_hgr(setup.text_encoder, setup.denoiser, ps, _tiny(tmp_path / str(i), seed=s), setup.hgr_config,
                      sample_latents=setup.sample_latents) for i, s in enumerate((5, 5, 6))]
    w = [r.bundle.net.out_proj.weight for r in runs]
    assert torch.equal(w[0], w[1]) and runs[0].loss_history == runs[1].loss_history
    assert not torch.equal(w[0], w[2])


def test_cancel_by_exception_without_checkpoint() -> None:
    setup, ps = _tiny_world()

    def cancel(p):
        if p.phase == "train" and p.step == 2:
            raise TrainingCancelled("user pressed stop")

    with pytest.raises(TrainingCancelled) as ei:
        train_hgr(setup.text_encoder, setup.denoiser, ps, TrainConfig(steps=5, batch_size=4), setup.hgr_config,
                  sample_latents=setup.sample_latents, progress=cancel)
    assert ei.value.step == 2 and ei.value.checkpoint_path is None


def test_resume_refuses_other_settings_and_finished_files(tmp_path: Path) -> None:
    setup, ps = _tiny_world()
    train_hgr(setup.text_encoder, setup.denoiser, ps, _tiny(tmp_path, steps=2), setup.hgr_config,
              sample_latents=setup.sample_latents)
    with pytest.raises(CheckpointMismatch, match="different prompts or settings") as ei:
        train_hgr(setup.text_encoder, setup.denoiser, ps, _tiny(tmp_path, steps=2, lr=1e-2, resume=True),
                  setup.hgr_config, sample_latents=setup.sample_latents)
    assert ei.value.checkpoint_path == str(tmp_path / "ckpt.safetensors") and set(ei.value.differences) == {"lr"}
    finished = tmp_path / "final.safetensors"
    HGRBundle.create(setup.hgr_config).save(finished)
    with pytest.raises(TrainingInputError, match="not a training checkpoint"):
        train_hgr(setup.text_encoder, setup.denoiser, ps, _tiny(tmp_path, checkpoint_path=str(finished), resume=True),
                  setup.hgr_config, sample_latents=setup.sample_latents)


class _DenoiserWithParam(AnalyticDenoiser):
    def __init__(self) -> None:
        super().__init__(token_dim=32)
        self.gain = torch.nn.Parameter(torch.tensor(1.0))

    def forward(self, x, sigma, cond):
        self.seen_requires_grad = getattr(self, "seen_requires_grad", set()) | {self.gain.requires_grad}
        self.seen_training = getattr(self, "seen_training", set()) | {self.training}
        return super().forward(x, sigma, cond) * self.gain


def test_denoiser_is_frozen_and_restored(tmp_path: Path) -> None:
    setup, ps = _tiny_world()
    den = _DenoiserWithParam()
    den.center.copy_(setup.denoiser.center)
    den.train()
    train_hgr(setup.text_encoder, den, ps, TrainConfig(steps=2, batch_size=4), setup.hgr_config,
              sample_latents=setup.sample_latents)
    assert den.seen_requires_grad == {False} and den.seen_training == {False}  # frozen, eval mode while training
    assert den.gain.grad is None  # no gradient ever reached the model
    assert den.gain.requires_grad and den.training  # and its state is as it was


def _rewrite_run(fraction: float, sampled: list, target_gain: float = 1.0, **config: Any):
    """Train with a safe rewrite per harmful prompt; ``sampled`` collects every prompt whose latents were drawn.
    Returns the setup, the harmful prompts and the result."""
    setup = load_analytic_setup()
    setup.hgr_config = HGRConfig(token_dim=32, model_family="analytic", width=48, depth=1, heads=4)
    lexicon = set(setup.text_encoder.word_category)
    harm = [HarmfulPrompt(p, c, " ".join(w for w in setup.text_encoder.words(p) if w not in lexicon))
            for p, c in setup.harmful_prompts[:12]]
    ps = PromptSet(setup.clean_prompts[:24], harm, dict(setup.concepts))

    def sample_latents(prompts):
        sampled.extend(prompts)
        return setup.sample_latents(prompts)

    res = train_hgr(setup.text_encoder, setup.denoiser, ps,
                    TrainConfig(steps=150, batch_size=12, cfg_scale=W, rewrite_latent_fraction=fraction,
                                target_gain=target_gain, **config),
                    setup.hgr_config, sample_latents=sample_latents)
    return setup, harm, res


def _remaining_rewrite_distance(setup, harm, bundle, latent_prompts, gain: float = 1.0, sigma: float = 2.0) -> float:
    """How far SafeCFG on the harmful prompts stays from CFG on their rewrites (1 = untrained, 0 = exact), at
    ``sigma`` (default 2) around the samples of ``latent_prompts``. With ``gain`` g the aim is past the rewrite, away from the
    harmful prompt: ``CFG(c_safe) - (g - 1) * (CFG(c) - CFG(c_safe))``."""
    enc, den = setup.text_encoder, setup.denoiser
    prompts = [h.prompt for h in harm]
    c, u, c_safe = enc(prompts), enc([""] * len(prompts)), enc([h.rewrite for h in harm])
    u_star = SafeGuidance(bundle, GateConfig(mode="always")).redirected_negative(c, u).u_star
    x = setup.sample_latents(latent_prompts) + sigma * torch.randn(len(prompts), 4, 8, 8,
                                                                   generator=torch.Generator().manual_seed(1))
    s = torch.full((len(prompts),), sigma)
    d_c, d_u = den(x, s, c), den(x, s, u)
    cfg_safe, cfg_c = cfg_combine(den(x, s, c_safe), d_u, W), cfg_combine(d_c, d_u, W)
    target = cfg_safe - (gain - 1.0) * (cfg_c - cfg_safe)
    before = (cfg_c - target).flatten(1).norm(dim=1)
    after = (cfg_combine(d_c, den(x, s, u_star), W) - target).flatten(1).norm(dim=1)
    return float((after / before).mean())


@pytest.fixture(scope="module")
def rewrite_run_gain_1():
    """The default run toward safe rewrites (gain 1, no rewrite latents) and the prompts its latents were drawn for."""
    sampled: list = []
    setup, harm, res = _rewrite_run(0.0, sampled)
    return setup, harm, res, sampled


@pytest.mark.slow
def test_safe_rewrites_are_learned(rewrite_run_gain_1) -> None:
    """With a safe rewrite, SafeCFG on the harmful prompt should equal CFG on the rewrite (at the training w)."""
    setup, harm, res, sampled = rewrite_run_gain_1
    assert not {h.rewrite for h in harm} & set(sampled)  # off by default: no extra sampling
    remaining = _remaining_rewrite_distance(setup, harm, res.bundle, [h.prompt for h in harm])
    print(f"rewrite: remaining distance {remaining:.3f}")
    assert remaining <= 0.3


@pytest.mark.slow
def test_target_gain_aims_past_the_rewrite(rewrite_run_gain_1) -> None:
    """``target_gain`` 2: SafeCFG on the harmful prompt lands as far again past CFG on the rewrite, away from CFG on
    the prompt, and the default-gain HGR does not (so the check can tell the two apart)."""
    setup, harm, res = _rewrite_run(0.0, [], target_gain=2.0)
    prompts = [h.prompt for h in harm]
    remaining = _remaining_rewrite_distance(setup, harm, res.bundle, prompts, gain=2.0)
    print(f"gain 2: remaining distance to the overshooting target {remaining:.3f}")
    assert remaining <= 0.3
    plain = rewrite_run_gain_1[2]
    assert _remaining_rewrite_distance(setup, harm, plain.bundle, prompts, gain=2.0) >= 0.4
    assert res.bundle.meta.training["train_config"]["target_gain"] == 2.0


@pytest.mark.slow
def test_target_gain_per_category_aims_each_category_at_its_own_target(rewrite_run_gain_1) -> None:
    """A ``{category: gain}`` mapping: violence prompts land past the rewrite (gain 2), nudity prompts on it (gain 1),
    in one HGR; each category is told apart from the other's target, so a mix-up of categories fails."""
    setup, harm, res = _rewrite_run(0.0, [], target_gain={"violence": 2.0, "nudity": 1.0})
    for category, gain, other in (("violence", 2.0, 1.0), ("nudity", 1.0, 2.0)):
        mine = [h for h in harm if h.category == category]
        prompts = [h.prompt for h in mine]
        own = _remaining_rewrite_distance(setup, mine, res.bundle, prompts, gain=gain)
        print(f"{category}: remaining distance to its gain-{gain:g} target {own:.3f}")
        assert own <= 0.3, category
        if gain == 2.0:  # the gain-1 target is a third of the way back from the gain-2 one: clearly missed
            assert _remaining_rewrite_distance(setup, mine, res.bundle, prompts, gain=other) >= 0.4, category
    assert res.bundle.meta.training["train_config"]["target_gain"] == {"violence": 2.0, "nudity": 1.0}


def test_per_category_settings_are_checked_and_parsed() -> None:
    assert parse_per_category("4") == 4.0 and parse_per_category(" gore=2, weapon=4 ") == {"gore": 2.0, "weapon": 4.0}
    for bad in ("gore=2,gore=3", "=2", "gore"):
        with pytest.raises(ValueError):
            parse_per_category(bad)
    with pytest.raises(TrainingInputError, match=r"target_gain must be in \[1, 10\]"):
        TrainConfig(target_gain={"gore": 0.5}).validate()
    with pytest.raises(TrainingInputError, match=r"rewrite_latent_fraction must be in \[0, 1\]"):
        TrainConfig(rewrite_latent_fraction={"gore": 1.5}).validate()
    assert torch.equal(per_category_tensor("target_gain", 3.0, ["a", "b"]), torch.tensor([3.0, 3.0]))
    assert torch.equal(per_category_tensor("target_gain", {"b": 2.0, "a": 1.0}, ["a", "b"]), torch.tensor([1.0, 2.0]))
    with pytest.raises(TrainingInputError, match=r"leaves out \['b'\].*names unknown \['c'\]"):
        per_category_tensor("target_gain", {"a": 1.0, "c": 2.0}, ["a", "b"])


@pytest.mark.slow
def test_rewrite_latents_train_the_redirection_where_safecfg_goes(tmp_path: Path) -> None:
    """``rewrite_latent_fraction``: the rewrites' own samples are drawn (once) and the target is met around them."""
    sampled: list = []
    setup, harm, res = _rewrite_run(0.5, sampled)
    rewrites = [h.rewrite for h in harm]
    assert set(rewrites) <= set(sampled) and len(sampled) == len(set(sampled))
    remaining = _remaining_rewrite_distance(setup, harm, res.bundle, rewrites)
    print(f"rewrite latents: remaining distance around the rewrites' samples {remaining:.3f}")
    assert remaining <= 0.3

    # and the denoiser really is fed those samples: mark the rewrites' latents (+1000) and watch its inputs
    marked = set(rewrites)
    largest_input = []

    def recording_denoiser(x, sigma, cond):
        largest_input.append(float(x.abs().max()))
        return setup.denoiser(x, sigma, cond)

    def marked_latents(prompts):
        x = setup.sample_latents(prompts)
        return x + 1000.0 * torch.tensor([p in marked for p in prompts], dtype=x.dtype).view(-1, 1, 1, 1)

    ps = PromptSet(setup.clean_prompts[:24], harm, dict(setup.concepts))
    for fraction, expect_marked in ((1.0, True), (0.0, False)):
        largest_input.clear()
        train_hgr(setup.text_encoder, recording_denoiser, ps,
                  TrainConfig(steps=3, batch_size=12, cfg_scale=W, rewrite_latent_fraction=fraction),
                  setup.hgr_config, sample_latents=marked_latents)
        assert (max(largest_input) > 500) == expect_marked, (fraction, max(largest_input))


@pytest.mark.slow
def test_pooled_model_trains(tmp_path: Path) -> None:
    setup = load_analytic_setup(pooled_dim=8)
    setup.hgr_config = HGRConfig(token_dim=32, pooled_dim=8, model_family="analytic", width=32, depth=1, heads=4)
    ps = _prompt_set(setup, n_clean=16, n_harm=8)
    res = train_hgr(setup.text_encoder, setup.denoiser, ps, TrainConfig(steps=40, batch_size=8), setup.hgr_config,
                    sample_latents=setup.sample_latents)
    assert res.harm_history[-1] < 0.5 * res.harm_history[0]
    assert res.bundle.net.pooled_out_proj.weight.abs().sum() > 0  # the pooled head learned something
    d = res.bundle.net(setup.text_encoder(["a cat covered in blood"]), setup.text_encoder([""]))
    assert d.pooled is not None and d.pooled.shape == (1, 8)


# ---- input validation -------------------------------------------------------------------------------------


def _parse(clean="a cat\na dog", harmful="violence: a bloody cat", concepts="violence: blood, gore"):
    return PromptSet.from_text(clean, harmful, concepts)


def test_prompt_text_format() -> None:
    ps = _parse(clean="# comment\na cat\n\na dog\n", harmful="violence: a bloody cat => a red cat\nnudity: a nude dog",
                concepts="violence: blood, gore\nnudity: nude")
    assert ps.clean == ["a cat", "a dog"]
    assert ps.harmful[0] == HarmfulPrompt("a bloody cat", "violence", "a red cat")
    assert ps.harmful[1] == HarmfulPrompt("a nude dog", "nudity", None)
    assert PromptSet.from_dict(json.loads(json.dumps(ps.to_dict()))).fingerprint() == ps.fingerprint()


@pytest.mark.parametrize("kwargs, needles", [
    (dict(clean=""), ["No clean prompts"]),
    (dict(harmful="\n# only a comment\n"), ["No harmful prompts"]),
    (dict(concepts=""), ["No harm categories"]),
    (dict(concepts="nudity: nude", harmful="nudity: a nude cat\nviolence: x"), ["unknown category", "harmful line 2"]),
    (dict(harmful="violence: a bloody cat\ngore: a gory cat"), ["harmful line 2", "unknown category 'gore'", "violence"]),
    (dict(clean="a cat\na dog\na cat"), ["clean line 3", "duplicate", "clean line 1"]),
    (dict(harmful="violence: a cat"), ["harmful line 1", "duplicate of clean line 1"]),
    (dict(harmful="a bloody cat"), ["harmful line 1", "no category"]),
    (dict(harmful="violence: "), ["harmful line 1", "empty prompt"]),
    (dict(harmful="violence: a bloody cat =>  "), ["empty safe rewrite"]),
    (dict(concepts="violence: blood\nnudity: nude"), ["'nudity'", "no harmful prompts"]),
    (dict(concepts="violence blood"), ["concept line 1", "no ':'"]),
    (dict(concepts="violence: blood\nviolence: gore"), ["concept line 2", "defined twice"]),
])
def test_prompt_set_errors_name_the_line(kwargs, needles) -> None:
    with pytest.raises(TrainingInputError) as ei:
        _parse(**kwargs)
    for n in needles:
        assert n in str(ei.value), (n, str(ei.value))


def test_prompt_file_and_dict_errors(tmp_path: Path) -> None:
    with pytest.raises(TrainingInputError, match="does not exist"):
        PromptSet.from_file(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{\n  'clean': [}")
    with pytest.raises(TrainingInputError, match="not valid JSON"):
        PromptSet.from_file(bad)
    with pytest.raises(TrainingInputError, match="malformed"):
        PromptSet.from_dict({"clean": ["a"], "harmful": [{"prompt": "b"}], "concepts": {"x": "y"}})
    with pytest.raises(TrainingInputError, match="empty"):
        PromptSet.from_dict({"clean": ["a", "  "], "harmful": [["b", "x"]], "concepts": {"x": "y"}})


@pytest.mark.parametrize("kwargs, needle", [
    (dict(steps=0), "steps"), (dict(batch_size=1), "batch_size"), (dict(lr=-1.0), "lr"),
    (dict(sigma_min=2.0, sigma_max=1.0), "sigma_min"), (dict(sigma_schedule=[]), "sigma_schedule"),
    (dict(autocast_dtype="fp8"), "autocast_dtype"), (dict(cfg_scale=1.0), "cfg_scale"),
    (dict(target_gain=0.5), "target_gain"), (dict(cfg_scale=float("nan")), "cfg_scale"),
    (dict(clean_penalty=float("inf")), "clean_penalty"), (dict(latent_batch_size=0), "latent_batch_size"),
])
def test_train_config_errors(kwargs, needle) -> None:
    with pytest.raises(TrainingInputError, match=needle):
        TrainConfig(**kwargs).validate()


def test_missing_latents_and_bad_encoder_output() -> None:
    setup, ps = _tiny_world()
    with pytest.raises(TrainingInputError, match="No latents"):
        train_hgr(setup.text_encoder, setup.denoiser, ps, TrainConfig(steps=1, batch_size=4), setup.hgr_config)
    from safecfg_core.errors import NonFiniteInputError

    def nan_encoder(prompts):
        out = setup.text_encoder(prompts)
        return Cond(out.tokens * float("nan"))

    with pytest.raises(NonFiniteInputError, match="encodings"):
        train_hgr(nan_encoder, setup.denoiser, ps, TrainConfig(steps=1, batch_size=4), setup.hgr_config,
                  sample_latents=setup.sample_latents)


def test_mixed_precision_training_runs() -> None:
    setup, ps = _tiny_world()
    res = train_hgr(setup.text_encoder, setup.denoiser, ps, TrainConfig(steps=4, batch_size=4, autocast_dtype="bf16"),
                    setup.hgr_config, sample_latents=setup.sample_latents)
    assert all(torch.isfinite(torch.tensor(res.loss_history)))
    assert res.bundle.dtype == torch.float32  # master weights stay fp32
    assert res.bundle.net.out_proj.weight.abs().sum() > 0


class _WrapperDenoiser:
    """A non-Module denoiser holding a module (like a ComfyUI model wrapper)."""

    def __init__(self, inner: AnalyticDenoiser) -> None:
        self.inner = inner

    def __call__(self, x, sigma, cond):
        return self.inner(x, sigma, cond)


def test_wrapped_denoiser_is_frozen_too() -> None:
    setup, ps = _tiny_world()
    inner = _DenoiserWithParam()
    inner.center.copy_(setup.denoiser.center)
    train_hgr(setup.text_encoder, _WrapperDenoiser(inner), ps, TrainConfig(steps=2, batch_size=4), setup.hgr_config,
              sample_latents=setup.sample_latents)
    assert inner.seen_requires_grad == {False} and inner.seen_training == {False}
    assert inner.gain.grad is None and inner.gain.requires_grad


def test_rewrite_target_makes_safecfg_draw_the_rewrite_and_aim_past_scales_its_offset() -> None:
    """The algebra every harmful target rests on, checked against CFG itself: SafeCFG with ``D(u*)`` set to
    ``rewrite_target`` gives exactly plain CFG on the safe rewrite; ``aim_past`` multiplies the offset from D(u)."""
    gen = torch.Generator().manual_seed(3)
    d_u, d_safe, d_c = (torch.randn(4, 4, 8, 8, generator=gen) for _ in range(3))
    for w in (2.0, 6.0, 7.5):
        target = rewrite_target(d_u, d_safe, d_c, w)
        torch.testing.assert_close(cfg_combine(d_c, target, w), cfg_combine(d_safe, d_u, w), rtol=1e-5, atol=1e-5)
    target = rewrite_target(d_u, d_safe, d_c, 6.0)
    torch.testing.assert_close(aim_past(d_u, target, 1.0), target)
    torch.testing.assert_close(aim_past(d_u, target, 3.0) - d_u, 3.0 * (target - d_u))


def test_encoding_is_reported_in_chunks_and_can_be_cancelled() -> None:
    """A corpus run encodes thousands of prompts before its first step (seconds each through a real text encoder on
    a CPU): the run reports how far the encoding is, chunk by chunk, and stops there when asked."""
    from safecfg_core.train.batch import ENCODE_CHUNK

    setup, ps = _tiny_world()
    clean = [f"{p} number {i}" for i in range(2 * ENCODE_CHUNK + 5) for p in ps.clean[:1]]
    big = PromptSet(clean, ps.harmful, dict(ps.concepts))
    calls: list = []

    def encoder(texts):
        calls.append(len(texts))
        return setup.text_encoder(texts)

    seen: list = []
    result = train_hgr(encoder, setup.denoiser, big, TrainConfig(steps=2, batch_size=4), setup.hgr_config,
                       sample_latents=setup.sample_latents, progress=lambda p: seen.append((p.phase, p.step, p.total)))
    encode = [(step, total) for phase, step, total in seen if phase == "encode"]
    total = len(clean) + len(ps.harmful) + len(ps.concepts) + 1  # clean, harmful, concepts, the negative prompt
    assert encode[0] == (0, total) and encode[-1] == (total, total), encode
    assert [s for s, _ in encode] == sorted(s for s, _ in encode) and len(encode) >= 4, encode
    assert max(calls) <= ENCODE_CHUNK  # no call encodes more than a chunk, so progress and Cancel come between them
    assert [phase for phase, _, _ in seen].index("latents") > max(i for i, s in enumerate(seen) if s[0] == "encode")
    # the same HGR as encoding in one call: only the calls were split
    whole = train_hgr(setup.text_encoder, setup.denoiser, big, TrainConfig(steps=2, batch_size=4), setup.hgr_config,
                      sample_latents=setup.sample_latents)
    for a, b in zip(result.bundle.net.state_dict().values(), whole.bundle.net.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6)

    def cancel_after_first_chunk(p):
        return not (p.phase == "encode" and p.step >= ENCODE_CHUNK)

    calls.clear()
    with pytest.raises(TrainingCancelled) as ei:
        train_hgr(encoder, setup.denoiser, big, TrainConfig(steps=2, batch_size=4), setup.hgr_config,
                  sample_latents=setup.sample_latents, progress=cancel_after_first_chunk)
    assert ei.value.step == 0 and ei.value.checkpoint_path is None
    assert calls == [ENCODE_CHUNK], calls  # stopped after the first chunk, before any latent was sampled
