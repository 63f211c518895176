"""Reads the hand-written prompt parts in ``parts/`` that the corpus generator combines.

The parts are plain text so that a reviewer can read (and a contributor extend) every phrase the corpus is made
of without reading code: ``[section]`` starts a list, one item per line, ``#`` starts a comment line, and a harm
kernel is written ``harmful => safe rewrite``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Tuple

PARTS_DIR = Path(__file__).resolve().parent / "parts"


def read_sections(path: Path) -> Dict[str, List[str]]:
    """``{section: [items]}`` in file order; raises ``ValueError`` naming the line for items outside a section."""
    sections: Dict[str, List[str]] = {}
    current = None
    for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1].strip()
            if current in sections:
                raise ValueError(f"{path.name} line {n}: section [{current}] appears twice; merge them.")
            sections[current] = []
        elif current is None:
            raise ValueError(f"{path.name} line {n}: item before any [section] header.")
        else:
            sections[current].append(line)
    return sections


def split_pair(item: str, where: str) -> Tuple[str, str]:
    """``"harmful => safe"`` -> ``(harmful, safe)``; both sides must be present and differ."""
    if item.count("=>") != 1:
        raise ValueError(f"{where}: {item!r} must be written 'harmful => safe rewrite' (exactly one '=>').")
    harm, safe = (s.strip() for s in item.split("=>"))
    if not harm or not safe or harm == safe:
        raise ValueError(f"{where}: {item!r} needs a harmful side and a different safe side.")
    return harm, safe


@dataclass(frozen=True)
class HarmParts:
    """One harm category's parts: its concept text, adult subjects, settings and harm => safe kernels."""

    category: str
    concept: str
    subjects: Tuple[str, ...]
    settings: Tuple[str, ...]
    person_kernels: Tuple[Tuple[str, str], ...]  # contain "{p}"; a setting is appended
    scene_kernels: Tuple[Tuple[str, str], ...]  # complete scenes; no subject or setting added


@dataclass(frozen=True)
class CleanGroup:
    """One clean group (people, food, ...): subjects and the settings that fit them."""

    name: str
    subjects: Tuple[str, ...]
    settings: Tuple[str, ...]


@dataclass(frozen=True)
class Parts:
    """Everything the generator combines, read from ``parts/``."""

    mediums: Tuple[str, ...]
    styles: Tuple[str, ...]
    lighting: Tuple[str, ...]
    quality: Tuple[str, ...]
    clean_groups: Tuple[CleanGroup, ...]
    near_miss: Tuple[Tuple[str, str], ...]  # (nearest harm category, scene)
    harms: Tuple[HarmParts, ...]


def _harm_parts(sections: Dict[str, List[str]]) -> Tuple[HarmParts, ...]:
    categories = [name[: -len(".concept")] for name in sections if name.endswith(".concept")]
    harms = []
    for cat in categories:
        concept = sections[f"{cat}.concept"]
        if len(concept) != 1:
            raise ValueError(f"harm.txt: [{cat}.concept] must hold exactly one line.")
        pairs = {kind: tuple(split_pair(item, f"harm.txt [{cat}.{kind}]") for item in sections.get(f"{cat}.{kind}", []))
                 for kind in ("person", "scene")}
        for harm, safe in pairs["person"]:
            if "{p}" not in harm or "{p}" not in safe:
                raise ValueError(f"harm.txt [{cat}.person]: {harm!r} => {safe!r} must use {{p}} on both sides.")
        harms.append(HarmParts(cat, concept[0], tuple(sections[f"{cat}.subjects"]), tuple(sections[f"{cat}.settings"]),
                               pairs["person"], pairs["scene"]))
    return tuple(harms)


def read_parts(parts_dir: Path = PARTS_DIR) -> Parts:
    """Read ``common.txt``, ``clean.txt``, ``near_miss.txt`` and ``harm.txt`` from ``parts_dir``."""
    common = read_sections(parts_dir / "common.txt")
    clean = read_sections(parts_dir / "clean.txt")
    names = [name[: -len(".subjects")] for name in clean if name.endswith(".subjects")]
    groups = tuple(CleanGroup(n, tuple(clean[f"{n}.subjects"]), tuple(clean.get(f"{n}.settings", []))) for n in names)
    near = []
    for item in read_sections(parts_dir / "near_miss.txt")["near_miss"]:
        cat, _, scene = item.partition(":")
        if not scene.strip():
            raise ValueError(f"near_miss.txt: {item!r} must be written 'category: scene'.")
        near.append((cat.strip(), scene.strip()))
    return Parts(tuple(common["mediums"]), tuple(common["styles"]), tuple(common["lighting"]), tuple(common["quality"]),
                 groups, tuple(near), _harm_parts(read_sections(parts_dir / "harm.txt")))


__all__ = ["PARTS_DIR", "Parts", "HarmParts", "CleanGroup", "read_parts", "read_sections", "split_pair"]
