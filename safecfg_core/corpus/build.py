"""Generates the shipped prompt corpus (``data/``) from the hand-written parts in ``parts/``.

Run ``python -m safecfg_core.corpus.build`` to rewrite ``data/`` and ``--check`` to verify that the committed files
are exactly what the parts produce (same command -> same bytes: every random choice comes from a
``random.Random`` seeded with a fixed string, and nothing iterates a ``set``).

Split design. Each unit (a harm category, a clean group, the near-miss scenes) gets a fixed number of rows. About
15% of them are *novel*: they use a kernel/subject or a template that never occurs in train or calibration, chosen
by hash rather than by hand so the choice is not cherry-picked; those rows all go to ``heldout``, so a held-out score
measures generalisation to unseen phrasings, not only to unseen rows. The other rows are shuffled and dealt to
calibration (10%), heldout (6%, in-distribution) and train (the rest).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from .parts_io import Parts, read_parts

DATA_DIR = Path(__file__).resolve().parent / "data"
SEED = "safecfg-corpus-v1"
SPLITS = ("train", "calibration", "heldout")
NEAR_MISS_GROUP = "near-miss"

# (name, format). "{xs}" is the subject/kernel with its setting attached, "{x}" the bare subject/kernel.
TEMPLATES: Tuple[Tuple[str, str], ...] = (
    ("bare", "{x}"),
    ("setting", "{xs}"),
    ("style", "{xs}, {style}"),
    ("medium", "{medium} {xs}"),
    ("medium-tags", "{medium} {x}, {style}, {quality}"),
    ("tag-list", "{xs}, {lighting}, {style}, {quality}, {quality2}"),
    ("medium-light", "{medium} {xs}, {lighting}"),
)
HELDOUT_TEMPLATES = ("medium-light",)  # structural novelty: this shape never occurs in train/calibration

HARM_ROWS = 500  # per harm category
NEAR_MISS_ROWS = 500
CLEAN_ROWS = {"people": 260, "portraits": 220, "animals": 260, "food": 220, "places": 220, "cities": 220,
              "vehicles": 160, "products": 160, "art": 160, "fantasy": 200, "scifi": 160}
NOVEL_FRACTION = 0.15
CALIBRATION_FRACTION = 0.10
HELDOUT_ROW_FRACTION = 0.06
HELDOUT_PART_DIVISOR = 7  # ceil(n / 7) kernels or subjects of each unit are held out


@dataclass(frozen=True)
class Row:
    """One corpus row; ``category`` is None for clean prompts, ``near_miss`` the harm a clean prompt resembles."""

    prompt: str
    category: Optional[str]
    rewrite: Optional[str]
    group: str
    near_miss: Optional[str] = None
    holdout: Optional[str] = None  # why a heldout row is held out: "kernel", "subject", "template" or "row"

    def to_json(self) -> str:
        data = {"prompt": self.prompt, "category": self.category, "rewrite": self.rewrite, "group": self.group,
                "near_miss": self.near_miss, "holdout": self.holdout}
        return json.dumps(data, ensure_ascii=False)


def _hash(text: str) -> str:
    return hashlib.sha256(f"{SEED}:{text}".encode("utf-8")).hexdigest()


def held_out_parts(items: Sequence[str]) -> Tuple[str, ...]:
    """The ceil(n/7) items with the smallest seeded hash: a fixed, not hand-picked, held-out share."""
    k = math.ceil(len(items) / HELDOUT_PART_DIVISOR)
    return tuple(sorted(items, key=_hash)[:k])


def norm(text: str) -> str:
    """Comparison key for duplicates: case and whitespace do not make a prompt new."""
    return " ".join(text.lower().split())


def attach(x: str, setting: str) -> str:
    if not setting:
        return x
    return x + setting if setting.startswith(",") else f"{x} {setting}"


def render(template: str, x: str, setting: str, slots: Dict[str, str]) -> str:
    return template.format(x=x, xs=attach(x, setting), **slots)


def _slots(rng: random.Random, parts: Parts, mediums: Sequence[str]) -> Dict[str, str]:
    quality, quality2 = rng.sample(parts.quality, 2)
    return {"medium": rng.choice(mediums), "style": rng.choice(parts.styles), "lighting": rng.choice(parts.lighting),
            "quality": quality, "quality2": quality2}


# One drawn row: (prompt, rewrite or None, holdout reason or None). A drawer draws one random combination.
Drawn = Tuple[str, Optional[str], Optional[str]]
Drawer = Callable[[random.Random, bool], Drawn]


def _pick_template(rng: random.Random, novel: bool, part_held: bool) -> Tuple[str, Optional[str]]:
    """In-distribution rows never use a held-out template; novel rows use one when their part is not held out."""
    open_templates = [t for name, t in TEMPLATES if name not in HELDOUT_TEMPLATES]
    if novel and not part_held:
        return dict(TEMPLATES)[rng.choice(HELDOUT_TEMPLATES)], "template"
    return rng.choice(open_templates), None


def _unit_rows(drawer: Drawer, n_rows: int, seen: Dict[str, str], unit: str) -> List[Drawn]:
    """Draw ``n_rows`` rows (``NOVEL_FRACTION`` of them novel) whose prompt and rewrite are new to ``seen``, which holds
    every prompt and rewrite drawn so far: no text occurs twice anywhere in the corpus, so none crosses splits."""
    rng = random.Random(f"{SEED}:{unit}")
    n_novel = round(n_rows * NOVEL_FRACTION)
    rows = []
    for novel, target in ((True, n_novel), (False, n_rows - n_novel)):
        made, attempts = 0, 0
        while made < target:
            attempts += 1
            if attempts > 200 * target:
                raise RuntimeError(f"unit {unit!r}: cannot draw {target} unique rows; add parts or lower its count.")
            prompt, rewrite, reason = drawer(rng, novel)
            texts = [norm(prompt)] + ([norm(rewrite)] if rewrite else [])
            if any(t in seen for t in texts) or len(set(texts)) < len(texts):
                continue
            seen.update((t, unit) for t in texts)
            rows.append((prompt, rewrite, reason))
            made += 1
    return rows


def harm_drawer(parts: Parts, cat: str) -> Drawer:
    """Combine one category's kernels with its adult subjects, its settings and the shared styles."""
    harm = next(h for h in parts.harms if h.category == cat)
    kernels = [(k, "person") for k in harm.person_kernels] + [(k, "scene") for k in harm.scene_kernels]
    held = set(held_out_parts([k[0][0] for k in kernels]))
    novel_kernels = [k for k in kernels if k[0][0] in held]
    open_kernels = [k for k in kernels if k[0][0] not in held]

    def draw(rng: random.Random, novel: bool) -> Drawn:
        use_held = novel and rng.random() < 0.6
        (bad, good), kind = rng.choice(novel_kernels if use_held else open_kernels)
        template, reason = _pick_template(rng, novel, use_held)
        slots = _slots(rng, parts, parts.mediums)
        setting = ""
        if kind == "person":
            subject = rng.choice(harm.subjects)
            bad, good = bad.replace("{p}", subject), good.replace("{p}", subject)
            setting = rng.choice(harm.settings)
        reason = reason or ("kernel" if use_held else None)
        return render(template, bad, setting, slots), render(template, good, setting, slots), reason

    return draw


def clean_drawer(parts: Parts, subjects: Sequence[str], settings: Sequence[str]) -> Drawer:
    """Combine clean subjects with their group's settings (or none) and the shared styles."""
    held = set(held_out_parts(subjects))
    novel_subjects = [s for s in subjects if s in held]
    open_subjects = [s for s in subjects if s not in held]

    def draw(rng: random.Random, novel: bool) -> Drawn:
        use_held = novel and rng.random() < 0.6
        subject = rng.choice(novel_subjects if use_held else open_subjects)
        template, reason = _pick_template(rng, novel, use_held)
        setting = rng.choice(settings) if settings and rng.random() < 0.85 else ""
        prompt = render(template, subject, setting, _slots(rng, parts, parts.mediums))
        return prompt, None, reason or ("subject" if use_held else None)

    return draw


def _deal(unit_rows: List[Drawn], make: Callable[..., Row], unit: str) -> Dict[str, List[Row]]:
    """Novel rows -> heldout; the rest shuffled and dealt to calibration, heldout ("row") and train."""
    out: Dict[str, List[Row]] = {s: [] for s in SPLITS}
    regular = []
    for prompt, rewrite, reason in unit_rows:
        if reason:
            out["heldout"].append(make(prompt, rewrite, reason))
        else:
            regular.append((prompt, rewrite))
    random.Random(f"{SEED}:deal:{unit}").shuffle(regular)
    n_cal = round(len(regular) * CALIBRATION_FRACTION)
    n_held = round(len(regular) * HELDOUT_ROW_FRACTION)
    for i, (prompt, rewrite) in enumerate(regular):
        split = "calibration" if i < n_cal else "heldout" if i < n_cal + n_held else "train"
        out[split].append(make(prompt, rewrite, "row" if split == "heldout" else None))
    return out


def build_rows(parts: Optional[Parts] = None) -> Dict[str, List[Row]]:
    """All rows by split. Harmful units draw first so a clean prompt can never repeat a harmful one."""
    parts = parts or read_parts()
    seen: Dict[str, str] = {}
    splits: Dict[str, List[Row]] = {s: [] for s in SPLITS}

    def add(dealt: Dict[str, List[Row]]) -> None:
        for s in SPLITS:
            splits[s].extend(dealt[s])

    for harm in parts.harms:
        rows = _unit_rows(harm_drawer(parts, harm.category), HARM_ROWS, seen, harm.category)
        add(_deal(rows, lambda p, r, h, c=harm.category: Row(p, c, r, c, None, h), harm.category))
    for group in parts.clean_groups:
        rows = _unit_rows(clean_drawer(parts, group.subjects, group.settings), CLEAN_ROWS[group.name], seen, group.name)
        add(_deal(rows, lambda p, r, h, g=group.name: Row(p, None, None, g, None, h), group.name))
    nearest = dict((scene, cat) for cat, scene in parts.near_miss)
    rows = _unit_rows(clean_drawer(parts, [s for _, s in parts.near_miss], ()), NEAR_MISS_ROWS, seen, NEAR_MISS_GROUP)
    scenes = sorted(nearest, key=len, reverse=True)  # longest first: a scene may contain a shorter one

    def near_row(p: str, r: Optional[str], h: Optional[str]) -> Row:
        return Row(p, None, None, NEAR_MISS_GROUP, nearest[next(s for s in scenes if s in p)], h)

    add(_deal(rows, near_row, NEAR_MISS_GROUP))
    for s in SPLITS:
        splits[s].sort(key=lambda r: (r.category or "", r.group, r.prompt))
    return splits


def write_corpus(out_dir: Path = DATA_DIR, parts: Optional[Parts] = None) -> List[Path]:
    """Write ``<split>.jsonl`` and ``concepts.txt`` to ``out_dir``; returns the paths written."""
    parts = parts or read_parts()
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for split, rows in build_rows(parts).items():
        path = out_dir / f"{split}.jsonl"
        path.write_bytes("".join(r.to_json() + "\n" for r in rows).encode("utf-8"))
        written.append(path)
    concepts = out_dir / "concepts.txt"
    concepts.write_bytes("".join(f"{h.category}: {h.concept}\n" for h in parts.harms).encode("utf-8"))
    return written + [concepts]


def counts_table(splits: Dict[str, List[Row]]) -> str:
    """Markdown table of rows per category (clean, near-miss, each harm) and split, as docs/corpus.md shows it."""
    def key(r: Row) -> str:
        return r.category or ("clean (near-miss)" if r.near_miss else "clean")

    names: List[str] = []
    for s in SPLITS:
        for r in splits[s]:
            if key(r) not in names:
                names.append(key(r))
    names.sort(key=lambda n: (not n.startswith("clean"), n))
    lines = ["| category | " + " | ".join(SPLITS) + " | total |", "|---" * (len(SPLITS) + 2) + "|"]
    for name in names:
        c = [sum(1 for r in splits[s] if key(r) == name) for s in SPLITS]
        lines.append(f"| {name} | " + " | ".join(map(str, c)) + f" | {sum(c)} |")
    return "\n".join(lines)


def check(out_dir: Path = DATA_DIR) -> List[str]:
    """Names of files in ``out_dir`` that differ from a fresh build (empty list: the committed corpus is current)."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = write_corpus(Path(tmp))
        return [p.name for p in fresh
                if not (out_dir / p.name).is_file() or (out_dir / p.name).read_bytes() != p.read_bytes()]


def main(argv: Optional[Iterable[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m safecfg_core.corpus.build", description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DATA_DIR, help="output folder (default: the shipped data/ folder)")
    ap.add_argument("--check", action="store_true", help="verify --out holds exactly a fresh build; write nothing")
    args = ap.parse_args(list(argv) if argv is not None else None)
    if args.check:
        stale = check(args.out)
        if stale:
            print(f"corpus in {args.out} is stale ({', '.join(stale)}); rerun: python -m safecfg_core.corpus.build")
            return 1
        print(f"corpus in {args.out} is current")
        return 0
    for path in write_corpus(args.out):
        print(f"wrote {path}")
    print(counts_table(build_rows()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
