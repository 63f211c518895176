"""Training presets: what each sets, how they rank, and the settings that follow the model family."""
from __future__ import annotations

import pytest

from safecfg_core.train import TrainConfig
from safecfg_core.train.presets import (PRESETS, family_hgr_config, family_image_size, get_preset,
                                        training_image_size)


def test_every_preset_is_a_valid_training_config():
    for p in PRESETS.values():
        TrainConfig(steps=p.steps, batch_size=p.batch_size, lr=p.lr, clean_penalty=p.clean_penalty,
                    target_gain=p.target_gain).validate()
        assert p.augment_clean > 0 and p.augment_harmful > 0 and p.calibrate_broad > 0  # the recipe is on


def test_presets_grow_from_quick_to_thorough():
    q, s, t = (get_preset(n) for n in ("quick", "standard", "thorough"))
    assert q.steps * q.batch_size < s.steps * s.batch_size < t.steps * t.batch_size
    assert q.sample_steps < s.sample_steps <= t.sample_steps
    assert q.latent_prompts(1) < s.latent_prompts(1) < t.latent_prompts(1)
    assert t.latent_prompts(7) == 1956 + 7 * 357  # thorough takes every prompt of the corpus' train split


def test_projected_seconds_add_sampling_and_training():
    q = get_preset("quick")
    proj = q.projected_seconds(train_row_s=0.5, sample_step_s=0.25, n_categories=2)
    assert proj["train_s"] == q.steps * q.batch_size * 0.5
    assert proj["latents_s"] == (q.max_clean + 2 * q.max_per_category) * q.sample_steps * 0.25
    assert proj["total_s"] == proj["train_s"] + proj["latents_s"]


def test_unknown_preset_names_the_choices():
    with pytest.raises(ValueError, match="quick, standard, thorough"):
        get_preset("fast")


def test_size_and_hgr_follow_the_family():
    assert family_image_size("sd15") == (512, 512)  # SD1.5's native size
    assert family_image_size("sdxl") == (1024, 1024)
    assert family_image_size(None) == (1024, 1024)
    xl = family_hgr_config("sdxl", 2048, 1280)
    assert (xl.model_family, xl.token_dim, xl.pooled_dim) == ("sdxl", 2048, 1280)
    sd1 = family_hgr_config("sd1", 768, 0)
    assert sd1.model_family == "sd1" and sd1.width != xl.width  # a family's own net size
    other = family_hgr_config("sd1", 1024, 0)  # a fine-tune with another text encoder: widths decide
    assert (other.model_family, other.token_dim) == ("unknown", 1024)


def test_training_size_is_the_familys_unless_a_size_is_set():
    assert training_image_size("sdxl") == training_image_size("sdxl", 0, 0) == (1024, 1024)
    assert training_image_size("sdxl", 512, 0) == (512, 1024)  # each side falls back on its own
    assert training_image_size("sd15", 64, 64) == (64, 64)
    for bad in (60, 8):  # the latent is 1/8 of the image: a side the VAE could never make
        with pytest.raises(ValueError, match=f"training image width {bad}: use a multiple of 8 of at least 16"):
            training_image_size("sd15", bad, 64)
