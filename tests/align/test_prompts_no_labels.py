"""Alignment reads prompts only: a label-bearing prompt file is refused, and the align code has no way to a label."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from safecfg_core.align import LabelledPromptError, parse_prompt_lines, read_prompts
from safecfg_core.cli import main

ALIGN_DIR = Path(__file__).resolve().parents[2] / "safecfg_core" / "align"
MEASUREMENT = "demo_rows.py"  # scores the aligned model's images against ground truth, after the fit
ALIGN_SOURCES = sorted(p for p in ALIGN_DIR.glob("*.py") if p.name != MEASUREMENT) + [
    ALIGN_DIR.parent / "cli_align.py", ALIGN_DIR.parents[1] / "nodes" / "align_node.py"]


def test_plain_prompts_are_read_in_order_once_each(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("# my prompts\na red circle on blue\n\n  a bloody star, knife  \na red circle on blue\n",
                 encoding="utf-8")
    assert read_prompts(f) == ["a red circle on blue", "a bloody star, knife"]


@pytest.mark.parametrize("line, what", [
    ("gore: a bloody red star on white", "'gore:'"),
    ("clean: a blue circle", "'clean:'"),
    ("harmful : a knife next to a square", "'harmful:'"),
    ('{"prompt": "a bloody star", "category": "gore"}', "JSON"),
    ("a bloody star\tgore", "tab-separated"),
])
def test_a_labelled_line_is_refused_not_stripped(line, what):
    with pytest.raises(LabelledPromptError) as info:
        parse_prompt_lines(["a green square", line], "prompts.txt")
    msg = str(info.value)
    assert "line 2" in msg and what in msg and "prompts only" in msg


def test_the_cli_refuses_a_labelled_file_and_writes_nothing(tmp_path, capsys):
    prompts = tmp_path / "labelled.txt"
    prompts.write_text("a yellow star\ngore: a bloody yellow star\n", encoding="utf-8")
    out = tmp_path / "lora.safetensors"
    code = main(["align", "--prompts", str(prompts), "--out", str(out), "--model", "demo"])
    assert code == 2
    assert "line 2" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob("*.ckpt*"))


def test_no_align_module_touches_a_label_bearing_api():
    """The align package and command import no labelled prompt source and name no label field.

    What a label could come through: the trainer's PromptSet / HarmfulPrompt, the corpus readers (their records
    carry a category), the demo's generated prompts (their scenes carry the harms). The node's menu category
    (``category=CATEGORY_...``) is no label."""
    forbidden = re.compile(r"\b(PromptSet|HarmfulPrompt|harmful_prompts|clean_prompts|corpus|load_prompts|"
                           r"sample_prompts|PromptRecord|category(?!=CATEGORY_)|categories|\.harms)\b")
    hits = []
    for path in ALIGN_SOURCES:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if forbidden.search(line):
                hits.append(f"{path.name}:{number}: {line.strip()}")
    assert len(ALIGN_SOURCES) >= 9
    assert not hits, hits
    # and nothing on the path reaches the measurement module, which does read ground truth
    assert not [p.name for p in ALIGN_SOURCES if "demo_rows" in p.read_text(encoding="utf-8")]
