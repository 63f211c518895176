"""The robustness benchmark file (issue 24): its groups, its ground truth, and that no line reuses a training phrasing.

These checks read files and lists only (no model), so they run in well under a second.
"""
import itertools
import re

import pytest

from safecfg_core.demo import augment, prompts
from safecfg_core.demo.render import COLORS, HARMS, SHAPES
from safecfg_core.demo.robustness import BENCHMARK_PATH, CLEAN_GROUPS, HARM_GROUPS, read_benchmark

BENCH = read_benchmark(BENCHMARK_PATH)
TEXTS = [b.item.text.lower() for b in BENCH]


def test_groups_and_counts():
    counts = {}
    for b in BENCH:
        counts[b.group] = counts.get(b.group, 0) + 1
    assert set(counts) == set(CLEAN_GROUPS) | set(HARM_GROUPS)
    assert all(n >= 15 for n in counts.values()), counts
    assert 150 <= len(BENCH) <= 250
    assert len(set(TEXTS)) == len(TEXTS), "duplicate prompts"
    for b in BENCH:
        if b.group in CLEAN_GROUPS:
            assert b.item.harms == (), b.item.text
        elif b.group == "harm_both":
            assert set(b.item.harms) == set(HARMS), b.item.text
        else:
            assert len(b.item.harms) == 1 and b.item.harms[0] in HARMS, b.item.text


def test_every_line_has_checkable_ground_truth():
    for b in BENCH:
        e = b.item.expect
        assert set(e) == {"shape", "color", "background"}, b.item.text
        assert e["shape"] in SHAPES and e["color"] in COLORS and e["background"] in COLORS
        assert e["color"] != e["background"]
        assert e["shape"] in b.item.text.lower()


def _template_regex(tpl: str) -> "re.Pattern[str]":
    """A training template as a pattern: its literal words verbatim, its slots as what make_prompt puts there."""
    color = "(?:" + "|".join(COLORS) + ")"
    obj_core = rf"(?:[\w-]+ )?(?:small |large )?{color} (?:{'|'.join(SHAPES)})"
    where = "(?:" + "|".join(re.escape(w) for ws in prompts._WHERE.values() for w in ws) + ")"
    parts = re.split(r"(\{obj\}|\{objn\}|\{bg\}|\{where\}|\{a_bg\})", tpl)
    slot = {"{obj}": rf"(?:an? )?{obj_core}", "{objn}": obj_core, "{bg}": color, "{where}": where,
            "{a_bg}": rf"an? {color}"}
    return re.compile("".join(slot.get(p, re.escape(p)) for p in parts))


@pytest.mark.parametrize("split", prompts.SPLITS + ("hgr_augmentation",))
def test_no_line_uses_a_demo_template(split):
    templates = augment.SCENE_PHRASINGS if split == "hgr_augmentation" else prompts._TEMPLATES[split]
    for tpl in templates:
        pat = _template_regex(tpl)
        hits = [t for t in TEXTS if pat.search(t)]
        assert not hits, f"{tpl!r} (a {split} template) is used by: {hits[:3]}"


def _phrases():
    """Every fixed phrase of the demo's phrasings (both splits: harm phrases, style words) and of the HGR's training
    augmentation, lower-case."""
    out = [t for s in prompts.SPLITS for t in prompts.all_template_strings(s) if "{" not in t]
    out += augment.training_vocabulary()
    return sorted({p.strip(" ,;:.").lower() for p in out if p.strip(" ,;:.")})


def test_no_line_contains_a_training_phrase():
    offenders = [(p, t) for p in _phrases() for t in TEXTS if re.search(rf"(?<![\w-]){re.escape(p)}(?![\w-])", t)]
    assert not offenders, offenders[:10]


def _all_perturbations(word: str) -> set:
    """Every spelling augment.perturb_word can make of ``word`` (all its operations at every position)."""
    out = set()
    for i in range(1, len(word) - 1):
        out |= {word[:i] + word[i + 1:], word[:i] + word[i] + word[i:], word[:i] + word[i] * 2 + word[i:]}
        if i + 1 < len(word):
            out.add(word[:i] + word[i + 1] + word[i] + word[i + 2:])
    spots = [j for j, ch in enumerate(word) if ch in augment.LEET]
    for k in range(len(spots) + 1):
        for chosen in itertools.combinations(spots, k):
            out.add("".join(augment.LEET[ch] if j in chosen else ch for j, ch in enumerate(word)))
    out |= {".".join(word), "_".join(word)}
    out.discard(word)
    return out


def test_misspellings_are_not_the_augmentations_spellings():
    trained = set().union(*(_all_perturbations(w) for ws in augment.MISSPELL_TARGETS.values() for w in ws))
    tokens = {tok.strip(",.;:!()") for t in TEXTS for tok in t.split()}
    assert not (tokens & trained), sorted(tokens & trained)
    mis = [b.item.text.lower() for b in BENCH if b.group == "harm_misspelling"]
    plain = {"blood", "bloody", "gore", "gory", "knife", "blade", "weapon"}
    spelt = [t for t in mis if plain & set(re.findall(r"[a-z]+", t))]
    assert not spelt, f"misspelling prompts must not also spell the harm: {spelt}"


def test_synonyms_are_unseen():
    known = {"blood", "bloody", "gore", "gory", "knife", "knives", "blade", "weapon", "dagger", "bleeding"}
    for _, ph in augment.HARM_SYNONYMS.items():
        known |= {w for _, t in ph for w in re.findall(r"[a-z]+", t.lower())} - {"a", "with", "in", "the", "and",
                                                                                   "next", "to", "beside", "near",
                                                                                   "by", "it", "on", "side",
                                                                                   "covered", "fresh", "scene",
                                                                                   "around", "lying", "spilled",
                                                                                   "splattered", "everywhere", "sharp"}
    for b in BENCH:
        if b.group == "harm_synonym":
            words = set(re.findall(r"[a-z]+", b.item.text.lower()))
            assert not (words & known), (b.item.text, words & known)
