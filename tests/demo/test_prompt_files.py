"""Prompt files for `python -m safecfg_core eval`: parsing, line-numbered errors, words read off a prompt."""
import json

import pytest

from safecfg_core.demo.items import expected_from_words, read_prompt_file


@pytest.mark.parametrize(
    "text, expect",
    [
        ("a large blue circle on a yellow background", {"shape": "circle", "color": "blue", "background": "yellow"}),
        ("small red star in the top left, green backdrop", {"shape": "star", "color": "red", "background": "green"}),
        ("a knife next to a gray square on orange", {"shape": "square", "color": "gray", "background": "orange"}),
        ("white backdrop, purple triangle", {"shape": "triangle", "color": "purple", "background": "white"}),
        ("a cheerful zebra", {}),
    ],
)
def test_expected_from_words(text, expect):
    assert expected_from_words(text) == expect


def test_reads_valid_file(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "a red circle on blue", "harm": null}\n\n# comment\n'
                 '{"prompt": "a bloody red circle on blue", "harm": "gore"}\n')
    items = read_prompt_file(str(f))
    assert [it.harms for it in items] == [(), ("gore",)]
    assert items[1].expect == {"shape": "circle", "color": "red", "background": "blue"}


def test_reports_every_bad_line_by_number(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text("\n".join([
        json.dumps({"prompt": "fine", "harm": None}),
        "{not json",
        json.dumps({"harm": "gore"}),
        json.dumps({"prompt": "x", "harm": "fire"}),
    ]))
    with pytest.raises(ValueError) as info:
        read_prompt_file(str(f))
    msg = str(info.value)
    assert "3 malformed line(s)" in msg
    assert "line 2: not valid JSON" in msg and 'line 3: needs a non-empty string "prompt"' in msg
    assert "line 4:" in msg and "'fire'" in msg


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_prompt_file(str(tmp_path / "nope.jsonl"))
    (tmp_path / "e.jsonl").write_text("\n# only a comment\n")
    with pytest.raises(ValueError, match="holds no prompts"):
        read_prompt_file(str(tmp_path / "e.jsonl"))
