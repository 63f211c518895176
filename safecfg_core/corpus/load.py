"""Turns the built-in corpus or users' prompt files into the trainer's :class:`PromptSet`.

``load_prompts("builtin", split="train", categories=["sexual", "violence"])`` gives the shipped training split for
two categories; ``load_prompts(["i2p.csv"], categories=["sexual"])`` reads a user's benchmark file and, since such
files hold no clean prompts, fills the clean side from the built-in split (said in ``notes``). Exact duplicate
prompts (benchmarks have them) are dropped with a note; a prompt labeled both clean and harmful is an error,
because no HGR can learn both answers for it.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

from ..errors import TrainingInputError
from ..train import HarmfulPrompt, PromptSet
from .readers import (CATEGORY_SETTINGS, ConceptLines, PathLike, PromptFileError, PromptRecord, ReadOptions,
                      declared_category, normalize_category, parse_concepts, parse_jsonl, read_concept_lines,
                      read_prompt_file)

DATA_DIR = Path(__file__).resolve().parent / "data"
BUILTIN = "builtin"
SPLITS = ("train", "calibration", "heldout")
PROMPT_FILE_SUFFIXES = (".txt", ".jsonl", ".ndjson", ".csv", ".tsv")
CONCEPTS_SUFFIX = ".concepts.txt"
"""A prompt file's own concept lines sit beside it: ``my_prompts.csv`` -> ``my_prompts.concepts.txt``."""


def concepts_beside(path: PathLike) -> Path:
    """Where the concept lines of the prompt file ``path`` are looked for (whether or not that file exists)."""
    path = Path(path)
    return path.with_name(path.stem + CONCEPTS_SUFFIX)


def builtin_concepts() -> Dict[str, str]:
    """The built-in corpus' concept text per category (``data/concepts.txt``)."""
    path = DATA_DIR / "concepts.txt"
    return parse_concepts(path.read_text(encoding="utf-8"), path.name)


def builtin_categories() -> Tuple[str, ...]:
    """The built-in harm categories, in the corpus' order."""
    return tuple(builtin_concepts())


def builtin_records(split: Union[str, Sequence[str]] = "train") -> List[PromptRecord]:
    """Rows of one or more built-in splits (``train``, ``calibration``, ``heldout``)."""
    names = [split] if isinstance(split, str) else list(split)
    records: List[PromptRecord] = []
    for name in names:
        if name not in SPLITS:
            raise TrainingInputError(f"Unknown corpus split {name!r}; use one of: {', '.join(SPLITS)}.")
        path = DATA_DIR / f"{name}.jsonl"
        records.extend(parse_jsonl(path.read_text(encoding="utf-8"), f"corpus {path.name}"))
    return records


def list_prompt_files(folder: PathLike) -> List[Path]:
    """Prompt files in ``folder`` (not recursive), sorted by name; concept files (``*concepts*``) are left out."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in PROMPT_FILE_SUFFIXES and "concepts" not in p.stem.lower())


@dataclass
class LoadedPrompts:
    """The prompt set plus what loading did to get it (shown to the user beside the training report)."""

    prompt_set: PromptSet
    counts: Dict[str, int]  # "clean" and each category -> prompts kept
    notes: List[str] = field(default_factory=list)
    # training settings the sources' concept lines carry for the selected categories: {category: {field: value}}
    category_settings: Dict[str, Dict[str, float]] = field(default_factory=dict)
    clean_filled: bool = False  # the sources held no clean prompts: the clean side is the built-in corpus'


def _source_items(sources: Union[str, PathLike, Sequence[Union[str, PathLike]]]) -> List[Union[str, PathLike]]:
    return [sources] if isinstance(sources, (str, Path)) else list(sources)


def _read_sources(items: Sequence[Union[str, PathLike]], split: Union[str, Sequence[str]],
                  options: ReadOptions) -> Tuple[List[PromptRecord], bool]:
    records: List[PromptRecord] = []
    for item in items:
        records.extend(builtin_records(split) if str(item) == BUILTIN else read_prompt_file(item, options))
    return records, any(str(item) == BUILTIN for item in items)


def setting_text(settings: Mapping[str, float]) -> str:
    """``{"target_gain": 2.5}`` as a concept line writes it: ``gain=2.5``."""
    names = {spec[0]: key for key, spec in CATEGORY_SETTINGS.items()}
    return " ".join(f"{names.get(k, k)}={v:g}" for k, v in settings.items())


def _declared_lines(items: Sequence[Union[str, PathLike]], concepts: Union[None, PathLike, Mapping[str, str]]
                    ) -> Tuple[ConceptLines, List[str]]:
    """The concept lines the user declares: each prompt file's own (``concepts_beside``), then ``concepts``
    (a file or a mapping), later ones winning; and a note per file read."""
    merged = ConceptLines({}, {})
    notes: List[str] = []
    files = [concepts_beside(i) for i in items if str(i) != BUILTIN and concepts_beside(i).is_file()]
    found: List[ConceptLines] = []
    for path in files:
        found.append(read_concept_lines(path))
        notes.append(f"categories declared in {path.name}: " + ", ".join(
            name + (f" ({setting_text(found[-1].settings[name])})" if name in found[-1].settings else "")
            for name in found[-1].concepts))
    if isinstance(concepts, (str, Path)):
        found.append(read_concept_lines(concepts))
    elif concepts is not None:
        found.append(ConceptLines({declared_category(k) or k: str(v).strip() for k, v in concepts.items()}))
    for lines in found:
        merged.concepts.update(lines.concepts)
        merged.settings.update(lines.settings)
    return merged, notes


def _select_categories(records: Sequence[PromptRecord], categories: Optional[Sequence[str]],
                       keep: Sequence[str] = ()) -> List[str]:
    present: Dict[str, int] = {}
    for r in records:
        for c in r.categories:
            present[c] = present.get(c, 0) + 1
    if categories is None:
        return list(present)
    wanted = [normalize_category(c, keep) for c in categories]
    missing = [c for c, w in zip(categories, wanted) if w is None or w not in present]
    if missing:
        have = ", ".join(f"{c} ({n})" for c, n in present.items()) or "none: every prompt is clean"
        raise TrainingInputError(f"No harmful prompts for categor{'y' if len(missing) == 1 else 'ies'} "
                                 f"{', '.join(map(repr, missing))}; the prompts hold: {have}. Pick from those.")
    return [w for w in wanted if w is not None]


def _dedupe(records: Sequence[PromptRecord], notes: List[str]) -> List[PromptRecord]:
    """Drop exact repeats (same text and label); a text labeled clean in one place and harmful in another is an
    error."""
    first: Dict[str, PromptRecord] = {}
    kept, dropped, conflicts = [], [], []
    for r in records:
        key = " ".join(r.prompt.lower().split())
        prev = first.get(key)
        if prev is None:
            first[key] = r
            kept.append(r)
        elif bool(prev.categories) != bool(r.categories):
            conflicts.append(f"{r.where}: {r.prompt[:60]!r} is {'harmful' if r.categories else 'clean'} here but "
                             f"{'harmful' if prev.categories else 'clean'} at {prev.where}")
        else:
            dropped.append(r.where)
    if conflicts:
        raise TrainingInputError("Prompts labeled both clean and harmful; give each one label:\n  "
                                 + "\n  ".join(conflicts))
    if dropped:
        more = ", ..." if len(dropped) > 5 else ""
        notes.append(f"dropped {len(dropped)} repeated prompt(s): {', '.join(dropped[:5])}{more}")
    return kept


def _limit(items: List, limit: Optional[int], rng: random.Random) -> List:
    """A seeded sample of at most ``limit`` items that keeps their file order."""
    if limit is None or len(items) <= limit:
        return items
    keep = sorted(rng.sample(range(len(items)), limit))
    return [items[i] for i in keep]


def load_prompts(sources: Union[str, PathLike, Sequence[Union[str, PathLike]]] = BUILTIN, *,
                 split: Union[str, Sequence[str]] = "train", categories: Optional[Sequence[str]] = None,
                 concepts: Union[None, PathLike, Mapping[str, str]] = None, max_clean: Optional[int] = None,
                 max_per_category: Optional[int] = None, near_miss: bool = True, fill_clean: bool = True,
                 seed: int = 0, options: Optional[ReadOptions] = None) -> LoadedPrompts:
    """Load prompts from ``"builtin"`` (the shipped corpus, ``split``) and/or user files into a validated PromptSet.

    ``categories`` selects harm categories (default: every category present); a prompt labeled with several keeps
    the first selected one, and harmful prompts of unselected categories are left out. ``concepts`` adds or
    replaces concept texts (a mapping or a ``category: text`` file) over the built-in ones, and so does a prompt
    file's own concepts file beside it (:func:`concepts_beside`). A category declared there keeps its name (a file
    that declares ``gore`` trains ``gore``, not the built-in ``violence``), and the settings its line carries
    (``| gain=2.5``) come back in ``category_settings``. ``near_miss=False`` drops the corpus' near-miss clean
    prompts. ``max_clean`` / ``max_per_category`` take a ``seed``-ed sample.
    """
    items = _source_items(sources)
    declared, notes = _declared_lines(items, concepts)
    concept_map = {**builtin_concepts(), **declared.concepts}
    opts = options or ReadOptions()
    # A text file counts as 'category: prompt' lines when its lines start with a category the user has a concept for.
    opts = replace(opts, known_categories=tuple(opts.known_categories) + tuple(concept_map),
                   keep_categories=tuple(opts.keep_categories) + tuple(declared.concepts))
    records, used_builtin = _read_sources(items, split, opts)
    records = _dedupe(records, notes)
    selected = _select_categories(records, categories, opts.keep_categories)
    lacking = [c for c in selected if c not in concept_map]
    if lacking:
        one = len(lacking) == 1
        raise TrainingInputError(
            f"Categor{'y' if one else 'ies'} {', '.join(map(repr, lacking))} ha{'s' if one else 've'} no concept text;"
            " add a line 'name: words that describe the harm' per category to a concepts file "
            "(or pass concepts={...}), or leave the category out.")
    clean = [r for r in records if not r.categories and (near_miss or not r.near_miss)]
    filled = not clean and fill_clean and not used_builtin
    if filled:
        clean = [r for r in builtin_records(split) if not r.categories and (near_miss or not r.near_miss)]
        notes.append(f"the files hold no clean prompts; using the built-in corpus' {split} clean prompts "
                     f"({len(clean)})")
    rng = random.Random(seed)
    clean = _limit(clean, max_clean, rng)
    by_cat: Dict[str, List[Tuple[PromptRecord, str]]] = {c: [] for c in selected}
    skipped = 0
    for r in records:
        chosen = next((c for c in r.categories if c in by_cat), None)
        if chosen is not None:
            by_cat[chosen].append((r, chosen))
        elif r.categories:
            skipped += 1
    if skipped:
        notes.append(f"left out {skipped} harmful prompt(s) of unselected categories")
    harmful = [pair for c in selected for pair in _limit(by_cat[c], max_per_category, rng)]
    sources_map = {f"clean:{i}": r.where for i, r in enumerate(clean)}
    sources_map.update({f"harmful:{i}": r.where for i, (r, _) in enumerate(harmful)})
    prompt_set = PromptSet([r.prompt for r in clean], [HarmfulPrompt(r.prompt, c, r.rewrite) for r, c in harmful],
                           {c: concept_map[c] for c in selected}, sources_map).validate()
    counts = {"clean": len(clean), **{c: sum(1 for _, cc in harmful if cc == c) for c in selected}}
    settings = {c: dict(declared.settings[c]) for c in selected if c in declared.settings}
    return LoadedPrompts(prompt_set, counts, notes, settings, filled)


def load_prompt_set(sources: Union[str, PathLike, Sequence[Union[str, PathLike]]] = BUILTIN, **kwargs) -> PromptSet:
    """:func:`load_prompts` without the counts and notes."""
    return load_prompts(sources, **kwargs).prompt_set


__all__ = ["BUILTIN", "CONCEPTS_SUFFIX", "SPLITS", "LoadedPrompts", "PromptFileError", "builtin_categories",
           "builtin_concepts", "builtin_records", "concepts_beside", "list_prompt_files", "load_prompts",
           "load_prompt_set", "setting_text"]
