"""The demo HGR's prompt file: what ``python -m safecfg_core.demo.prompt_file`` writes, read by the corpus machinery
a user's own file goes through."""
from __future__ import annotations

from safecfg_core.corpus import concepts_beside, load_prompts
from safecfg_core.demo import prompt_file
from safecfg_core.demo.prompts import CONCEPTS
from safecfg_core.demo.train_hgr import training_prompts


def test_shipped_files_are_what_the_command_writes(tmp_path):
    written = prompt_file.write(tmp_path)
    for path in written:
        shipped = prompt_file.DATA_DIR / path.name
        assert shipped.read_bytes() == path.read_bytes(), \
            f"{shipped} differs: run python -m safecfg_core.demo.prompt_file"


def test_the_corpus_reads_back_the_demo_training_prompts_and_settings():
    loaded = load_prompts([prompt_file.PROMPT_FILE])
    expected = training_prompts(600, 1800, rewrites=True)
    assert loaded.prompt_set.clean == expected.clean
    # (the loader groups harmful prompts by category)
    assert sorted((h.prompt, h.category, h.rewrite) for h in loaded.prompt_set.harmful) == \
        sorted((h.prompt, h.category, h.rewrite) for h in expected.harmful)
    assert loaded.prompt_set.concepts == CONCEPTS  # the demo's own names, not the built-in violence / weapons
    assert loaded.category_settings == {"gore": {"target_gain": 2.5, "rewrite_latent_fraction": 1.0},
                                        "weapon": {"target_gain": 4.0}}
    assert concepts_beside(prompt_file.PROMPT_FILE).name == "hgr_prompts.concepts.txt"


def test_the_demos_own_robustness_prompts_can_be_written_into_the_file(tmp_path):
    """``--augment-clean/--augment-harmful`` add the demo's own variants as ordinary lines (a richer prompt file of
    the kind a user brings); the loader reads them like the rest."""
    assert prompt_file.main(["--out", str(tmp_path), "--augment-clean", "40", "--augment-harmful", "30"]) == 0
    path = tmp_path / prompt_file.PROMPT_FILE.name
    assert "--augment-clean 40 --augment-harmful 30" in path.read_text(encoding="utf-8").splitlines()[1]
    richer = load_prompts([path]).prompt_set
    plain = training_prompts(600, 1800, rewrites=True)
    assert len(richer.clean) >= len(plain.clean) + 40 - 5  # (a drawn variant that repeats a prompt is left out)
    assert len(richer.harmful) >= len(plain.harmful) + 30 - 5
    assert set(plain.clean) <= set(richer.clean)
