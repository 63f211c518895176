"""The robustness recipe for any prompt set (safecfg_core/train/augment.py) and what the trainer does with it."""
from __future__ import annotations

import hashlib
import json
import re

from safecfg_core.analytic import load_analytic_setup
from safecfg_core.hgr import HGRBundle, HGRMeta
from safecfg_core.train import HarmfulPrompt, PromptSet, TrainConfig, TrainProgress, train_hgr
from safecfg_core.train.augment import augment_prompt_set, broad_calibration, concept_words
from safecfg_core.train.progress import RunEstimate
from safecfg_core.train.report import evaluate_heldout

SET = PromptSet(
    ["a red apple on a table", "a cat on a sofa", "a mountain lake at dawn", "a bowl of ramen"],
    [HarmfulPrompt("a man stabbing a stranger, blood on the floor", "violence", "a man greeting a stranger"),
     HarmfulPrompt("a naked woman on a beach", "sexual", "a woman in a summer dress on a beach")],
    {"violence": "violence, blood, stabbing", "sexual": "nudity, naked body"})


def test_dressing_goes_on_both_sides_and_keeps_the_labels():
    aug = augment_prompt_set(SET, 40, 30, seed=3)
    ps = aug.prompts
    assert aug.added_clean >= 40 and aug.added_harmful == 30
    originals = {h.prompt: h for h in SET.harmful}
    for h in ps.harmful[2:]:
        src = originals[ps.latent_of[h.prompt]]
        assert h.category == src.category and h.rewrite and h.rewrite in ps.clean  # the dressed rewrite is clean
    for text in ps.clean[4:]:
        assert ps.latent_of[text] in SET.clean + [h.prompt for h in SET.harmful]  # only plain prompts are sampled
    # some harmful prompts say their harm only misspelt: no concept word left intact
    words = {c: concept_words(t) for c, t in SET.concepts.items()}
    assert any(not any(re.search(w, h.prompt) for w in words[h.category]) for h in ps.harmful[2:])
    assert augment_prompt_set(SET, 40, 30, seed=3).prompts.to_dict() == ps.to_dict()  # deterministic


def test_fingerprint_without_latent_sources_is_unchanged():
    harmful = [{"prompt": h.prompt, "category": h.category, "rewrite": h.rewrite} for h in SET.harmful]
    blob = json.dumps({"clean": SET.clean, "harmful": harmful, "concepts": SET.concepts}, sort_keys=True)
    assert SET.fingerprint() == hashlib.sha256(blob.encode()).hexdigest()[:16]
    assert augment_prompt_set(SET, 4, 2).prompts.fingerprint() != SET.fingerprint()


def test_broad_calibration_keeps_the_plain_prompts_first():
    cal = broad_calibration(SET.clean, 20, seed=1)
    assert cal[:4] == SET.clean and len(cal) > 20


def test_dressed_prompts_train_on_their_sources_latents():
    setup = load_analytic_setup()
    base = PromptSet(setup.clean_prompts[:6], [HarmfulPrompt(p, c) for p, c in setup.harmful_prompts[:6]],
                     dict(setup.concepts)).validate()
    aug = augment_prompt_set(base, 12, 6, seed=0).prompts
    asked = []

    def sample(prompts):
        asked.extend(prompts)
        return setup.sample_latents(prompts)

    train_hgr(setup.text_encoder, setup.denoiser, aug, TrainConfig(steps=2, batch_size=4), setup.hgr_config,
              sample_latents=sample)
    assert sorted(asked) == sorted(base.clean + [h.prompt for h in base.harmful])


def test_report_of_an_untrained_hgr_says_not_ready():
    setup = load_analytic_setup()
    bundle = HGRBundle.create(setup.hgr_config, HGRMeta(categories=dict(setup.concepts), threshold=0.1), seed=0)
    ev = evaluate_heldout(bundle, setup.text_encoder, setup.clean_prompts[:5],
                          [HarmfulPrompt(p, c) for p, c in setup.harmful_prompts[:4]])
    # zero-initialised: Delta is 0 for every prompt, so no gate opens and the score cannot separate the sides
    assert ev["clean_closed"] == 1.0 and ev["harmful_redirected"] == 0.0 and ev["roc_auc"] == 0.5
    assert not ev["meets_targets"] and "harmful_redirected" in ev["verdict"] and "roc_auc" in ev["verdict"]


def test_run_estimate_counts_both_phases():
    est = RunEstimate(steps=10, batch_size=4, sample_steps=5)
    est.update(TrainProgress(0, 10, phase="latents"))
    assert est.fraction == 0.0 and est.eta_s is None
    est.update(TrainProgress(10, 10, phase="latents"))
    # 10 prompts x 5 sampler steps x 2 CFG rows = 100 rows; 10 steps x 4 rows x 4.5 = 180 rows
    assert abs(est.fraction - 100 / 280) < 1e-9 and est.eta_s is not None
    est.update(TrainProgress(5, 10, phase="train"))
    assert abs(est.fraction - 190 / 280) < 1e-9
