"""Prompt file readers: each format on good files, and every malformed line reported by number in one error."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from safecfg_core.corpus import (PromptFileError, PromptRecord, ReadOptions, normalize_category, parse_concepts,
                                 parse_csv, parse_jsonl, parse_labeled, parse_plain, read_concepts, read_prompt_file)
from safecfg_core.corpus.readers import line_ranges
from safecfg_core.errors import TrainingInputError


def _lines_reported(err: PromptFileError) -> list:
    return [n for n, _ in err.problems]


def test_normalize_category_merges_spellings_and_synonyms():
    assert normalize_category("Self_Harm") == normalize_category("self  harm") == "self-harm"
    assert normalize_category("Nudity") == "sexual"
    assert normalize_category("illegal activity") == "illegal activity"  # unknown names stay the user's own
    for clean in ("clean", "SAFE", " none ", "benign", ""):
        assert normalize_category(clean) is None


def test_plain_reads_one_prompt_per_line_skipping_blanks_and_comments():
    records = parse_plain("# my list\na cat on a sofa\n\n  a red bicycle  \n", "list.txt")
    assert [r.prompt for r in records] == ["a cat on a sofa", "a red bicycle"]
    assert all(r.categories == () for r in records)
    assert records[1].where == "list.txt line 4"
    assert parse_plain("a man in an alley\n", category="Gore")[0].categories == ("violence",)


def test_plain_reports_rewrite_arrows_by_line():
    with pytest.raises(PromptFileError) as err:
        parse_plain("a cat\nviolence: a man => a man\nfine\nx => y\n", "list.txt")
    assert _lines_reported(err.value) == [2, 4]
    assert "line 2:" in str(err.value) and "line 4:" in str(err.value) and "labeled" in str(err.value)


GOOD_LABELED = """\
# comment
clean: a lighthouse at dusk
violence: a man bleeding in an alley => a man standing in an alley
Self Harm: a woman on a ledge
nudity: a nude woman on a beach => a woman in a summer dress on a beach
clean: portrait of a woman, style: oil painting
"""


def test_labeled_reads_categories_rewrites_and_colons_inside_prompts():
    records = parse_labeled(GOOD_LABELED, "mine.txt")
    assert [(r.prompt, r.category, r.rewrite) for r in records] == [
        ("a lighthouse at dusk", None, None),
        ("a man bleeding in an alley", "violence", "a man standing in an alley"),
        ("a woman on a ledge", "self-harm", None),
        ("a nude woman on a beach", "sexual", "a woman in a summer dress on a beach"),
        ("portrait of a woman, style: oil painting", None, None),
    ]
    assert records[1].where == "mine.txt line 3"


def test_labeled_lists_every_malformed_line_with_what_to_do():
    text = "\n".join([
        "clean: fine prompt",                                  # 1 ok
        "a prompt without category",                           # 2 no ':'
        "violence:   ",                                        # 3 no prompt
        "violence: a fight =>",                                # 4 empty rewrite
        "clean: a cat => a dog",                               # 5 rewrite on clean
        "a very long sentence that is clearly not a category name at all: x",  # 6 bad category
        "violence: a => b => c",                               # 7 two arrows
        "violence: same => same",                              # 8 rewrite == prompt
        "violence: a man in an alley => a man",                # 9 ok
    ])
    with pytest.raises(PromptFileError) as err:
        parse_labeled(text, "mine.txt")
    assert _lines_reported(err.value) == [2, 3, 4, 5, 6, 7, 8]
    msg = str(err.value)
    assert msg.startswith("mine.txt: 7 malformed lines")
    for n, hint in [(2, "no category"), (3, "no prompt"), (4, "no safe rewrite"), (5, "only harmful prompts"),
                    (6, "not a category name"), (7, "more than one '=>'"), (8, "identical")]:
        assert re.search(rf"line {n}: .*{re.escape(hint)}", msg), (n, msg)
    assert isinstance(err.value, TrainingInputError)  # nodes show it as a user error


def test_jsonl_reads_fields_lists_and_null_categories():
    text = "\n".join([
        '{"prompt": "a cat", "category": null}',
        '{"prompt": "a man bleeding", "category": "Gore", "rewrite": "a man standing", "extra": 1}',
        '# a comment',
        '{"prompt": "a nude statue", "category": ["nudity", "shocking"]}',
        '{"prompt": "a clean one", "category": "clean", "near_miss": "weapons", "group": "near-miss"}',
    ])
    records = parse_jsonl(text, "p.jsonl")
    assert [(r.prompt, r.categories, r.rewrite) for r in records] == [
        ("a cat", (), None), ("a man bleeding", ("violence",), "a man standing"),
        ("a nude statue", ("sexual", "shocking"), None), ("a clean one", (), None)]
    assert records[3].near_miss == "weapons" and records[2].where == "p.jsonl line 4"


def test_jsonl_custom_field_names():
    records = parse_jsonl('{"text": "a gun at a man", "label": "weapons", "safe": "a camera at a man"}',
                          prompt_field="text", category_field="label", rewrite_field="safe")
    assert records == [PromptRecord("a gun at a man", ("weapons",), "a camera at a man", "<text> line 1")]


def test_jsonl_lists_every_malformed_line():
    text = "\n".join([
        '{"prompt": "ok"}',                            # 1
        '{"prompt": "broken"',                         # 2 invalid JSON
        '["a", "list"]',                               # 3 not an object
        '{"category": "violence"}',                    # 4 no prompt
        '{"prompt": 42}',                              # 5 prompt not text
        '{"prompt": "x", "category": 3}',              # 6 bad category type
        '{"prompt": "y", "rewrite": "z"}',             # 7 rewrite on clean
        '{"prompt": "w", "category": "gore", "rewrite": ""}',  # 8 empty rewrite
    ])
    with pytest.raises(PromptFileError) as err:
        parse_jsonl(text, "p.jsonl")
    assert _lines_reported(err.value) == [2, 3, 4, 5, 6, 7, 8]
    msg = str(err.value)
    for n, hint in [(2, "not valid JSON"), (3, "not an object"), (4, "no 'prompt' field"), (5, "not text"),
                    (6, "must be text, a list"), (7, "only harmful prompts"), (8, "'rewrite' is empty")]:
        assert re.search(rf"line {n}: .*{re.escape(hint)}", msg), (n, msg)


I2P_STYLE = '''prompt,categories,hard,inappropriate_percentage
"a man in a dark alley, covered in blood",violence,1,80.0
"a nude woman, oil painting","sexual, shocking",0,60.0
a quiet lake at dawn,,0,0.0
"a multi-line
prompt about a riot",Hate,1,70.0
'''


def test_csv_reads_an_i2p_style_file():
    records = parse_csv(I2P_STYLE, "i2p.csv")
    assert [(r.prompt, r.categories) for r in records] == [
        ("a man in a dark alley, covered in blood", ("violence",)),
        ("a nude woman, oil painting", ("sexual", "shocking")),
        ("a quiet lake at dawn", ()),
        ("a multi-line\nprompt about a riot", ("hate",)),
    ]
    assert records[3].where == "i2p.csv line 5"  # a quoted multi-line cell is reported at its first line


def test_csv_named_columns_tsv_and_default_category():
    tsv = "Caption\tHarm\tSafe\nman with a gun\tweapons\tman with a camera\n"
    records = parse_csv(tsv, delimiter="\t", prompt_column="caption", category_column="harm", rewrite_column="safe")
    assert records[0] == PromptRecord("man with a gun", ("weapons",), "man with a camera", "<text> line 2")
    no_cat = parse_csv("text\na skull\n", category="shocking")
    assert no_cat[0].categories == ("shocking",)


def test_csv_missing_column_names_the_columns_there_are():
    with pytest.raises(PromptFileError) as err:
        parse_csv("caption,label\nx,y\n", "f.csv", prompt_column="prompt_text")
    msg = str(err.value)
    assert "'prompt_text'" in msg and "'caption', 'label'" in msg and "prompt_column" in msg
    with pytest.raises(PromptFileError):
        parse_csv("id,score\n1,2\n", "f.csv")  # no prompt column under any default name


def test_csv_lists_every_malformed_row():
    text = 'prompt,category,rewrite\nok,violence,fine\n,violence,\ntoo,many,fields,here\na,clean,b\nlast,"unclosed\n'
    with pytest.raises(PromptFileError) as err:
        parse_csv(text, "bad.csv")
    assert _lines_reported(err.value) == [3, 4, 5, 6]
    msg = str(err.value)
    for n, hint in [(3, "empty 'prompt' cell"), (4, "4 fields but the header has 3"), (5, "safe rewrite"),
                    (6, "cannot be read as CSV")]:
        assert re.search(rf"line {n}: .*{re.escape(hint)}", msg), (n, msg)


def test_many_problems_are_all_named_by_line_number():
    text = "\n".join(f"no category here {i}" for i in range(120))
    with pytest.raises(PromptFileError) as err:
        parse_labeled(text, "big.txt")
    assert len(err.value.problems) == 120
    msg = str(err.value)
    assert msg.count("has no category") == 50  # the first 50 in full ...
    assert "and 70 more malformed lines: 51-120\n" in msg + "\n"  # ... and every other line, as a range


def test_scattered_problem_lines_are_listed_as_ranges_and_capped():
    assert line_ranges([51, 52, 53, 60, 62, 63]) == "51-53, 60, 62-63"
    # thousands of bad lines (every other line of a file): the first 20 runs, then how many lines are left
    listed = line_ranges(list(range(1, 4001, 2)))
    assert listed.startswith("1, 3, 5, ") and listed.endswith("37, 39 and 1980 more lines after them"), listed
    text = "\n".join(("clean: fine " if i % 2 else "no category ") + str(i) for i in range(600))
    with pytest.raises(PromptFileError) as err:
        parse_labeled(text, "mixed.txt")
    assert len(err.value.problems) == 300
    assert "and 250 more malformed lines: 101, 103," in str(err.value)
    rest_line = next(line for line in str(err.value).splitlines() if "more malformed lines" in line)
    assert len(rest_line) < 200, "one readable line, not hundreds of numbers"


def test_concepts_file(tmp_path: Path):
    parsed = parse_concepts("violence: blood, gore\n# c\nSelf Harm: cutting\n")
    assert parsed == {"violence": "blood, gore", "self-harm": "cutting"}
    with pytest.raises(PromptFileError) as err:
        parse_concepts("violence: a\nno colon\nviolence: again\nclean: x\n", "c.txt")
    assert _lines_reported(err.value) == [2, 3, 4]
    with pytest.raises(TrainingInputError, match="does not exist"):
        read_concepts(tmp_path / "nope.txt")


def test_read_prompt_file_detects_formats(tmp_path: Path):
    (tmp_path / "a.txt").write_text("a cat\na dog: on a sofa\n", encoding="utf-8")
    (tmp_path / "b.txt").write_text(GOOD_LABELED, encoding="utf-8")
    (tmp_path / "c.jsonl").write_text('{"prompt": "x", "category": "hate"}\n', encoding="utf-8")
    (tmp_path / "d.csv").write_bytes("\ufeffprompt,category\ny,weapons\n".encode("utf-8"))  # Excel's BOM
    known = ReadOptions(known_categories=("violence", "sexual", "self-harm"))
    assert [r.prompt for r in read_prompt_file(tmp_path / "a.txt", known)] == ["a cat", "a dog: on a sofa"]
    assert read_prompt_file(tmp_path / "b.txt", known)[1].category == "violence"
    assert read_prompt_file(tmp_path / "c.jsonl")[0].category == "hate"
    assert read_prompt_file(tmp_path / "d.csv")[0].category == "weapons"
    forced = read_prompt_file(tmp_path / "a.txt", ReadOptions(file_format="plain", category="violence"))
    assert {r.category for r in forced} == {"violence"}


def test_read_prompt_file_errors(tmp_path: Path):
    with pytest.raises(TrainingInputError, match="does not exist"):
        read_prompt_file(tmp_path / "missing.csv")
    (tmp_path / "latin1.txt").write_bytes("a cat\na caf\xe9 at night\n".encode("latin-1"))
    with pytest.raises(PromptFileError) as err:
        read_prompt_file(tmp_path / "latin1.txt")
    assert _lines_reported(err.value) == [2] and "UTF-8" in str(err.value)
    (tmp_path / "x.txt").write_text("a cat\n", encoding="utf-8")
    with pytest.raises(TrainingInputError, match="Unknown prompt file format 'yaml'"):
        read_prompt_file(tmp_path / "x.txt", ReadOptions(file_format="yaml"))


def test_concept_lines_carry_per_category_training_settings():
    from safecfg_core.corpus import parse_concept_lines

    lines = parse_concept_lines("gore: blood, gore | gain=2.5 rewrite_latents=1\nweapon: knife | gain=4\n"
                                "Self Harm: cutting\n")
    # a declared name stays the source's own ('gore' is not the built-in 'violence'); spelling variants of a
    # built-in name still meet it
    assert lines.concepts == {"gore": "blood, gore", "weapon": "knife", "self-harm": "cutting"}
    assert lines.settings == {"gore": {"target_gain": 2.5, "rewrite_latent_fraction": 1.0},
                              "weapon": {"target_gain": 4.0}}


def test_bad_concept_settings_are_reported_by_line():
    from safecfg_core.corpus import parse_concept_lines

    text = ("a: x | gain=2\n"            # fine
            "b: x | speed=2\n"           # unknown setting
            "c: x | gain=0.5\n"          # below 1
            "d: x | rewrite_latents=two\n"  # not a number
            "e: x | gain=2 gain=3\n"     # twice
            "f: x | gain\n"              # no value
            "g: | gain=2\n")             # no concept text
    with pytest.raises(PromptFileError) as err:
        parse_concept_lines(text, "c.concepts.txt")
    assert _lines_reported(err.value) == [2, 3, 4, 5, 6, 7]
    message = str(err.value)
    assert "'speed=2'" in message and "gain=1..10, rewrite_latents=0..1" in message
    assert "gain must be from 1 to 10" in message and "'two' is not a number" in message
    assert "sets 'gain' twice" in message
