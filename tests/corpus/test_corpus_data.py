"""The shipped prompt corpus: counts, labels, splits, held-out novelty, reproducibility, and its data card.

These tests read the committed files directly with ``json`` (not through the package's readers), so a reader bug
cannot hide a data problem.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Dict, List

import pytest

from safecfg_core.corpus import build
from safecfg_core.corpus.parts_io import read_parts

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "safecfg_core" / "corpus" / "data"
SPLITS = ("train", "calibration", "heldout")
CATEGORIES = ("sexual", "violence", "weapons", "self-harm", "drugs", "hate", "shocking")


def _key(text: str) -> str:
    return " ".join(text.lower().split())


@pytest.fixture(scope="module")
def rows() -> Dict[str, List[dict]]:
    return {s: [json.loads(line) for line in (DATA / f"{s}.jsonl").read_text(encoding="utf-8").splitlines()]
            for s in SPLITS}


@pytest.fixture(scope="module")
def concepts() -> Dict[str, str]:
    lines = (DATA / "concepts.txt").read_text(encoding="utf-8").splitlines()
    return dict(line.split(": ", 1) for line in lines)


def test_every_benchmark_category_has_a_concept(concepts):
    assert sorted(concepts) == sorted(CATEGORIES)
    assert all(len(text.split(",")) >= 3 for text in concepts.values())


def test_counts_per_category_and_split(rows):
    per_cat = Counter(r["category"] for s in SPLITS for r in rows[s])
    for cat in CATEGORIES:
        assert per_cat[cat] >= 300, cat
        for s in SPLITS:  # every split can train, calibrate or evaluate every category
            assert sum(r["category"] == cat for r in rows[s]) >= 40, (cat, s)
    assert sum(1 for s in SPLITS for r in rows[s] if r["category"] is None) >= 2000
    assert set(per_cat) == set(CATEGORIES) | {None}


def test_every_harmful_prompt_has_a_category_and_a_distinct_rewrite(rows, concepts):
    for s in SPLITS:
        for r in rows[s]:
            if r["category"] is None:
                assert r["rewrite"] is None, r
                continue
            assert r["category"] in concepts, r
            assert isinstance(r["rewrite"], str) and r["rewrite"].strip(), r
            assert _key(r["rewrite"]) != _key(r["prompt"]), r


def test_no_text_occurs_twice_anywhere(rows):
    where: Dict[str, str] = {}
    for s in SPLITS:
        for r in rows[s]:
            for text in filter(None, (r["prompt"], r["rewrite"])):
                assert _key(text) not in where, f"{text!r} in {s} and {where.get(_key(text))}"
                where[_key(text)] = s


# Words that name the harm in the harmful prompts; none may survive into a safe rewrite.
HARM_WORDS = {
    "sexual": r"nude|naked|topless|sex|explicit|porn|erotic|genitals|thong|orgy|strip|hentai|lingerie|breasts|undress",
    "violence": r"blood|bleed|stab|gore|corpse|murder|tortur|decapitat|massacre|execut|strangl|dismember|brutal|slit|"
                r"gunshot|dead|beat|burned alive|kicking|punch|knife in the back|assault|brawl|crash",
    "weapons": r"gun|rifle|pistol|bomb|grenade|machete|revolver|sniper|arsenal|knife|opening fire|hostage|shoot",
    "self-harm": r"suicid|noose|overdose|razor|cutting|cuts|slash|self-inflicted|end their life|starving|jump|blood|"
                 r"hanging from a rope|own head|burning their arm|sleeping pills",
    "drugs": r"cocaine|heroin|\bmeth\b|crack|syringe|joint|cannabis|lsd|ecstasy|bong|drug|powder|shooting up|"
             r"pills for sale",
    "hate": r"nazi|swastika|ss runes|klan|racist|white power|white pride|supremacist|antisemitic|burning a cross|"
            r"burning cross",
    "shocking": r"corpse|maggot|rott|decompos|carcass|autopsy|severed|gouged|vomit|mutation|disfigured|flesh|"
                r"mass grave|centipede|sores|protruding|extra limbs|dead body",
}


def test_rewrites_drop_the_harm_words_of_their_category(rows):
    for s in SPLITS:
        for r in rows[s]:
            if r["category"]:
                assert not re.search(HARM_WORDS[r["category"]], r["rewrite"], re.I), r
                assert re.search(HARM_WORDS[r["category"]], r["prompt"], re.I), r  # and the prompt does name it


def test_harmful_prompts_never_involve_minors(rows):
    words = "girl|boy|child|children|kid|kids|teen|teenager|minor|baby|toddler|schoolgirl|schoolboy"
    minors = re.compile(rf"\b({words})s?\b", re.I)
    for s in SPLITS:
        for r in rows[s]:
            if r["category"]:
                assert not minors.search(r["prompt"]) and not minors.search(r["rewrite"]), r


def test_rewrites_keep_the_medium_and_style(rows):
    """The rewrite swaps the harmful phrase and keeps what frames it: the same medium in front and the same last tag."""
    parts = read_parts()
    mediums, tags = parts.mediums, set(parts.styles + parts.lighting + parts.quality)
    framed = 0
    for s in SPLITS:
        for r in rows[s]:
            if r["category"]:
                medium = next((m for m in mediums if r["prompt"].startswith(m + " ")), None)
                if medium:
                    assert r["rewrite"].startswith(medium + " "), r
                tail = r["prompt"].rsplit(", ", 1)[-1]
                if tail in tags:
                    assert r["rewrite"].endswith(", " + tail), r
                framed += bool(medium) + (tail in tags)
    assert framed > 1000  # the checks above ran on many rows, not on a few


def test_near_miss_prompts_cover_the_filter_traps(rows, concepts):
    near = [r for s in SPLITS for r in rows[s] if r["near_miss"]]
    assert len(near) >= 300
    assert all(r["category"] is None and r["near_miss"] in concepts for r in near)
    assert min(Counter(r["near_miss"] for r in near).values()) >= 30
    texts = " | ".join(r["prompt"] for r in near)
    for trap in ("kitchen knife on a wooden cutting board", "boxing match", "ketchup", "swimsuit catalogue",
                 "medical illustration", "war memorial", "chef butchering", "red paint splatter", "hunting museum"):
        assert trap in texts, trap


def test_clean_prompts_cover_what_people_draw(rows):
    groups = Counter(r["group"] for s in SPLITS for r in rows[s] if r["category"] is None)
    for group in ("people", "portraits", "animals", "food", "places", "cities", "vehicles", "products", "art",
                  "fantasy", "scifi", "near-miss"):
        assert groups[group] >= 150, group
    lengths = [len(r["prompt"].split()) for s in SPLITS for r in rows[s]]
    assert min(lengths) <= 4 and max(lengths) >= 20  # short captions and long tag lists both occur


def _splits_containing(text: str, rows: Dict[str, List[dict]], category) -> set:
    return {s for s in SPLITS for r in rows[s] if r["category"] == category and text in r["prompt"]}


def test_heldout_holds_out_whole_kernels(rows):
    """Some harm phrasings occur only in heldout, and every row marked holdout=kernel uses one of them."""
    for harm in read_parts().harms:
        # Every person kernel starts with "{p}", so the text after it is a literal the prompt must contain.
        phrases = [bad.replace("{p}", "") for bad, _ in harm.person_kernels + harm.scene_kernels]
        only_held = [ph for ph in phrases if _splits_containing(ph, rows, harm.category) == {"heldout"}]
        assert len(only_held) >= 2, harm.category
        for r in rows["heldout"]:
            if r["category"] == harm.category and r["holdout"] == "kernel":
                assert any(ph in r["prompt"] for ph in only_held), r


def test_heldout_holds_out_whole_clean_subjects(rows):
    for group in read_parts().clean_groups:
        only_held = [s for s in group.subjects if _splits_containing(s, rows, None) == {"heldout"}]
        assert len(only_held) >= 2, group.name
        for r in rows["heldout"]:
            if r["group"] == group.name and r["holdout"] == "subject":
                assert any(s in r["prompt"] for s in only_held), r


def test_heldout_reasons_are_labelled(rows):
    reasons = Counter(r["holdout"] for r in rows["heldout"])
    assert set(reasons) == {"kernel", "subject", "template", "row"}
    assert all(r["holdout"] is None for s in ("train", "calibration") for r in rows[s])


def test_generator_reproduces_the_committed_files_byte_for_byte(tmp_path):
    written = build.write_corpus(tmp_path)
    assert sorted(p.name for p in written) == sorted(p.name for p in DATA.iterdir() if p.is_file())
    for path in written:
        stale = f"{path.name} is stale: rerun python -m safecfg_core.corpus.build"
        assert path.read_bytes() == (DATA / path.name).read_bytes(), stale


def test_data_card_counts_match_the_files(rows):
    card = (REPO / "docs" / "corpus.md").read_text(encoding="utf-8")
    table = {m.group(1).strip(): [int(x) for x in m.group(2, 3, 4, 5)]
             for m in re.finditer(r"^\| ([a-z\- ()]+) \| (\d+) \| (\d+) \| (\d+) \| (\d+) \|$", card, re.M)}

    def name(r: dict) -> str:
        return r["category"] or ("clean (near-miss)" if r["near_miss"] else "clean")

    counted = {}
    for s_i, s in enumerate(SPLITS):
        for r in rows[s]:
            counted.setdefault(name(r), [0, 0, 0])[s_i] += 1
    assert {k: v + [sum(v)] for k, v in counted.items()} == table


def test_corpus_stays_small():
    assert sum(p.stat().st_size for p in DATA.iterdir()) < 4_000_000
