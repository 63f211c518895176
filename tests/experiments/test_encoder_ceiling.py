"""The encoder-ceiling tool: its oracle never scores a prompt with a probe that saw it, and it runs end to end."""
import re

import pytest
import torch

from experiments import encoder_ceiling
from safecfg_core.metrics import roc_auc


def test_cross_validated_scores_never_come_from_a_probe_that_saw_the_row():
    # one private feature per row: a probe that saw a row can memorise its label, one that did not knows nothing
    n = 40
    x = torch.eye(n)
    y = torch.tensor([float(i % 2) for i in range(n)])
    seen = encoder_ceiling.fit_logistic(x, y, weight_decay=0.0, steps=200)
    with torch.no_grad():
        in_sample = seen(x).squeeze(-1)
    cv = encoder_ceiling.cross_validated_scores(x, y, folds=4, repeats=2, weight_decay=0.0, steps=200)
    labels = y.bool().tolist()
    auc = lambda s: roc_auc([float(v) for v, h in zip(s, labels) if not h], [float(v) for v, h in zip(s, labels) if h])
    assert auc(in_sample) == 1.0
    assert auc(cv) < 0.7


def test_score_line_gives_each_group_against_the_other_side():
    scores = torch.tensor([0.0, 1.0, 2.0, 3.0])
    line = encoder_ceiling.score_line("s", scores, [False, False, True, True], ["c1", "c2", "h1", "h2"])
    # c1 (0.0) and c2 (1.0) both below every harmful score; h1 and h2 above every clean score
    assert line == "s: AUC 1.000 | c1 1.000, c2 1.000, h1 1.000, h2 1.000"
    flipped = encoder_ceiling.score_line("s", -scores, [False, False, True, True], ["c1", "c2", "h1", "h2"])
    assert flipped.startswith("s: AUC 0.000")


@pytest.mark.slow
def test_the_tool_runs_and_prints_every_score(capsys):
    assert encoder_ceiling.main(["--folds", "2", "--repeats", "1", "--probe-steps", "20", "--clean", "8",
                                 "--harmful", "8", "--augment-clean", "8", "--augment-harmful", "8"]) == 0
    out = capsys.readouterr().out
    for name in ("oracle probe, sentence", "oracle probe, tokens mean+max", "concept-text cosine",
                 "harm direction (harmful - rewrite)", "sentence probe on the training prompts"):
        line = next(x for x in out.splitlines() if x.startswith(name))
        auc = float(re.search(r"AUC ([0-9.]+)", line).group(1))
        assert 0.0 <= auc <= 1.0, line
        assert "harm_synonym" in line and "clean_near_miss" in line, line
