"""Loading the built-in corpus or users' files into the trainer's PromptSet."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from safecfg_core.corpus import (builtin_categories, list_prompt_files, load_prompt_set, load_prompts)
from safecfg_core.errors import TrainingInputError
from safecfg_core.train import HarmfulPrompt, PromptSet

DATA = Path(__file__).resolve().parents[2] / "safecfg_core" / "corpus" / "data"


def _raw(split: str) -> list:
    return [json.loads(line) for line in (DATA / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]


def test_builtin_split_loads_every_row_into_a_prompt_set():
    loaded = load_prompts("builtin", split="calibration")
    raw = _raw("calibration")
    ps = loaded.prompt_set
    assert isinstance(ps, PromptSet)
    assert ps.clean == [r["prompt"] for r in raw if r["category"] is None]
    assert [(h.prompt, h.category, h.rewrite) for h in ps.harmful] == \
        [(r["prompt"], r["category"], r["rewrite"]) for r in raw if r["category"]]
    assert set(ps.concepts) == set(builtin_categories()) == {r["category"] for r in raw if r["category"]}
    assert loaded.counts["clean"] == len(ps.clean) and loaded.notes == []
    assert ps.sources["harmful:0"].startswith("corpus calibration.jsonl line ")


def test_category_selection_aliases_and_limits_are_seeded():
    a = load_prompts(split="train", categories=["Nudity", "self harm"], max_clean=50, max_per_category=20, seed=3)
    b = load_prompts(split="train", categories=["sexual", "self-harm"], max_clean=50, max_per_category=20, seed=3)
    c = load_prompts(split="train", categories=["sexual", "self-harm"], max_clean=50, max_per_category=20, seed=4)
    assert a.counts == {"clean": 50, "sexual": 20, "self-harm": 20}
    assert a.prompt_set == b.prompt_set != c.prompt_set
    assert set(a.prompt_set.concepts) == {"sexual", "self-harm"}
    assert "left out" in a.notes[0]  # the other five categories' prompts


def test_near_miss_can_be_left_out():
    with_near = load_prompts(split="heldout", categories=["hate"])
    without = load_prompts(split="heldout", categories=["hate"], near_miss=False)
    n_near = sum(1 for r in _raw("heldout") if r["near_miss"])
    assert with_near.counts["clean"] - without.counts["clean"] == n_near > 0


def test_several_splits_at_once():
    both = load_prompts(split=["train", "calibration"], categories=["drugs"])
    assert both.counts["drugs"] == sum(1 for s in ("train", "calibration") for r in _raw(s) if r["category"] == "drugs")


def test_unknown_category_or_split_says_what_exists():
    with pytest.raises(TrainingInputError, match=r"'harassment'.*drugs \(357\)"):
        load_prompts(categories=["harassment"])
    with pytest.raises(TrainingInputError, match="Unknown corpus split 'test'.*train, calibration, heldout"):
        load_prompts(split="test")


I2P_LIKE = '''prompt,categories
"a man bleeding in an alley",violence
"a nude woman, oil painting","sexual, shocking"
"a riot with a burning car",illegal activity
"a man bleeding in an alley",violence
'''


def test_user_csv_fills_clean_from_the_corpus_and_drops_repeats(tmp_path: Path):
    path = tmp_path / "i2p.csv"
    path.write_text(I2P_LIKE, encoding="utf-8")
    loaded = load_prompts([path], categories=["sexual", "violence"])
    ps = loaded.prompt_set
    assert [(h.prompt, h.category, h.rewrite) for h in ps.harmful] == [
        ("a nude woman, oil painting", "sexual", None), ("a man bleeding in an alley", "violence", None)]
    assert len(ps.clean) == sum(1 for r in _raw("train") if r["category"] is None)
    notes = " | ".join(loaded.notes)
    assert "1 repeated prompt(s): i2p.csv line 5" in notes and "built-in corpus' train clean prompts" in notes
    assert ps.sources["harmful:1"] == "i2p.csv line 2"


def test_user_category_needs_a_concept(tmp_path: Path):
    path = tmp_path / "i2p.csv"
    path.write_text(I2P_LIKE, encoding="utf-8")
    with pytest.raises(TrainingInputError, match="'illegal activity' has no concept text"):
        load_prompts([path], categories=["illegal activity"])
    (tmp_path / "concepts.txt").write_text("illegal activity: crime, riots, arson\n", encoding="utf-8")
    ps = load_prompt_set([path], categories=["illegal activity"], concepts=tmp_path / "concepts.txt")
    assert ps.harmful == [HarmfulPrompt("a riot with a burning car", "illegal activity", None)]
    assert ps.concepts == {"illegal activity": "crime, riots, arson"}


def test_user_labeled_file_with_its_own_clean_prompts(tmp_path: Path):
    path = tmp_path / "mine.txt"
    path.write_text("clean: a lighthouse\nclean: a teapot\nweapons: a man aiming a rifle => a man aiming a camera\n",
                    encoding="utf-8")
    loaded = load_prompts([path])
    assert loaded.prompt_set.clean == ["a lighthouse", "a teapot"] and loaded.notes == []
    assert loaded.counts == {"clean": 2, "weapons": 1}


def test_user_text_file_with_own_categories_is_read_as_labeled(tmp_path: Path):
    """A category the user has a concept for marks a .txt file as 'category: prompt' lines without saying so."""
    path = tmp_path / "mine.txt"
    path.write_text("harassment: a man shouting at a coworker\nclean: two coworkers talking\n", encoding="utf-8")
    ps = load_prompt_set([path], concepts={"harassment": "bullying, intimidation"})
    assert ps.clean == ["two coworkers talking"]
    assert ps.harmful == [HarmfulPrompt("a man shouting at a coworker", "harassment", None)]


def test_a_prompt_labeled_clean_and_harmful_is_refused_with_both_lines(tmp_path: Path):
    path = tmp_path / "mine.txt"
    path.write_text("clean: a red room\nviolence: a man bleeding\nviolence: A red  room\n", encoding="utf-8")
    expected = r"mine.txt line 3: 'A red  room' is harmful here but clean at mine.txt line 1"
    with pytest.raises(TrainingInputError, match=expected):
        load_prompts([path])


def test_malformed_user_file_surfaces_every_line(tmp_path: Path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "ok", "category": "hate"}\n{oops\n{"prompt": ""}\n', encoding="utf-8")
    with pytest.raises(TrainingInputError, match=r"(?s)bad.jsonl: 2 malformed lines.*line 2:.*line 3:"):
        load_prompts([path])


def test_list_prompt_files(tmp_path: Path):
    for name in ("b.csv", "a.txt", "concepts.txt", "notes.md", "c.jsonl"):
        (tmp_path / name).write_text("x\n", encoding="utf-8")
    assert [p.name for p in list_prompt_files(tmp_path)] == ["a.txt", "b.csv", "c.jsonl"]
    assert list_prompt_files(tmp_path / "missing") == []


def test_a_prompt_files_own_concept_lines_keep_its_categories_and_settings(tmp_path: Path):
    """``mine.concepts.txt`` beside ``mine.txt`` declares its categories: 'gore' stays 'gore' (without it the name
    means the built-in 'violence'), its concept text replaces the built-in one, and the settings come back."""
    path = tmp_path / "mine.txt"
    path.write_text("clean: a red ball\ngore: a bloody ball => a ball\nweapons: a knife by a ball => a ball\n",
                    encoding="utf-8")
    plain = load_prompts([path])
    assert sorted(plain.prompt_set.concepts) == ["violence", "weapons"] and plain.category_settings == {}
    (tmp_path / "mine.concepts.txt").write_text("gore: blood, gore | gain=2.5 rewrite_latents=1\n", encoding="utf-8")
    declared = load_prompts([path])
    assert declared.prompt_set.concepts["gore"] == "blood, gore" and "violence" not in declared.prompt_set.concepts
    assert [h.category for h in declared.prompt_set.harmful] == ["gore", "weapons"]
    assert declared.category_settings == {"gore": {"target_gain": 2.5, "rewrite_latent_fraction": 1.0}}
    assert declared.notes == ["categories declared in mine.concepts.txt: gore (gain=2.5 rewrite_latents=1)"]
    only = load_prompts([path], categories=["gore"])
    assert [h.category for h in only.prompt_set.harmful] == ["gore"]


def test_a_job_turns_declared_settings_into_training_settings(tmp_path: Path):
    from safecfg_core.train.presets import get_preset
    from safecfg_core.train.recipe import build_job

    path = tmp_path / "mine.txt"
    lines = ["clean: a red ball number %d" % i for i in range(20)]
    lines += ["gore: a bloody ball number %d => a ball number %d" % (i, i) for i in range(20)]
    lines += ["weapons: a knife by ball number %d => ball number %d" % (i, i) for i in range(20)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    job = build_job(path, get_preset("quick"), augment=False)
    assert job.per_category("target_gain", 2.0) == 2.0  # nothing declared: one number, as before
    (tmp_path / "mine.concepts.txt").write_text("gore: blood | gain=3 rewrite_latents=0.5\n", encoding="utf-8")
    job = build_job(path, get_preset("quick"), augment=False)
    assert job.per_category("target_gain", 2.0) == {"gore": 3.0, "weapons": 2.0}
    assert job.per_category("rewrite_latent_fraction", 0.0) == {"gore": 0.5, "weapons": 0.0}


def test_a_file_with_its_own_clean_prompts_calibrates_on_them(tmp_path: Path):
    """The threshold must sit above the clean prompts of the file's own world: a share of them, never trained on nor
    judged on, calibrates. A file without clean prompts calibrates on the built-in calibration split."""
    from safecfg_core.corpus import builtin_records
    from safecfg_core.train.presets import get_preset
    from safecfg_core.train.recipe import build_job

    path = tmp_path / "mine.txt"
    lines = [f"clean: a red ball number {i}" for i in range(100)]
    lines += [f"violence: a bloody ball number {i} => a ball number {i}" for i in range(20)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    job = build_job(path, get_preset("standard"), augment=False)
    assert len(job.calibration) == 8 and len(job.heldout_clean) == 15  # 10% of the 85 left after 15% held out
    own = {line.split(": ", 1)[1] for line in lines[:100]}
    assert set(job.calibration) <= own
    assert not set(job.calibration) & set(job.prompts.clean) and not set(job.calibration) & set(job.heldout_clean)
    assert "threshold calibrated on 8 of the file's own clean prompts (kept out of training)" in job.notes
    harmful_only = tmp_path / "harm.txt"
    harmful_only.write_text("\n".join(lines[100:]) + "\n", encoding="utf-8")
    filled = build_job(harmful_only, get_preset("standard"), augment=False)
    assert filled.calibration == [r.prompt for r in builtin_records("calibration") if not r.categories]
