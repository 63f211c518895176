"""The harm-head probe tool: the corpus filter keeps the benchmark's synonyms unseen, and the tool runs end to end."""
import re

import pytest
import torch

from experiments import harm_head_probes
from safecfg_core.conditioning import Cond
from safecfg_core.corpus.load import builtin_records


def _count_encode(texts):
    """A stand-in text encoder: one token whose value is the prompt's length, so the rows can be counted."""
    return Cond(torch.tensor([[[float(len(t))]] for t in texts]), None)


def test_corpus_prompts_with_an_unseen_word_are_left_out():
    records = builtin_records("train")
    has_machete = [r for r in records if "machete" in re.findall(r"[a-z]+", r.prompt.lower())]
    assert has_machete, "the corpus' train split no longer uses the word; pick another for this test"
    clean_all, harm_all = harm_head_probes.corpus_features(_count_encode, "train", set(), 10**6)
    clean, harm = harm_head_probes.corpus_features(_count_encode, "train", {"machete"}, 10**6)
    harm_cats = set(harm_head_probes.CORPUS_HARM)
    assert len(clean_all) == sum(r.category is None for r in records)
    assert len(harm_all) == sum(r.category in harm_cats for r in records)
    removed = [r for r in has_machete if r.category is None or r.category in harm_cats]
    assert len(clean_all) + len(harm_all) - len(clean) - len(harm) == len(removed)


@pytest.mark.slow
def test_the_tool_runs_and_prints_every_score(capsys):
    assert harm_head_probes.main(["--clean", "8", "--harmful", "8", "--augment-clean", "8", "--augment-harmful", "8",
                                  "--calibrate-plain", "16", "--calibrate-broad", "8", "--demo-per-kind", "2",
                                  "--corpus-limit", "16", "--head-steps", "5"]) == 0
    out = capsys.readouterr().out
    for name in ("head (demo prompts)", "head (demo + corpus)", "RMS(Delta)", "two stages, product",
                 "two stages, minimum", "two stages, maximum"):
        line = next(x for x in out.splitlines() if x.startswith(name + ":"))
        auc = float(re.search(r"AUC ([0-9.]+)", line).group(1))
        assert 0.0 <= auc <= 1.0, line
        assert "harm_synonym" in line and "clean_near_miss" in line, line
