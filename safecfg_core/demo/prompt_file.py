"""The demo world's HGR training prompts as a prompt file: ``python -m safecfg_core.demo.prompt_file``.

With it, the demo model trains the way a user trains an HGR for their own model: from a prompt file read by the
corpus machinery (:mod:`safecfg_core.corpus`) with a Train HGR preset, ``python -m safecfg_core train --model demo
--corpus safecfg_core/demo/data/hgr_prompts.txt --preset thorough`` (docs/experiments.md, "The user's path on the
demo"). This module writes that file, ``data/hgr_prompts.txt`` (``clean: ...`` and ``gore: prompt => safe rewrite``
lines), and its concept lines, ``data/hgr_prompts.concepts.txt``, which name the demo's two categories and carry the
per-category settings the demo measured it needs (docs/experiments.md, "Gains and rewrite latents"): gore is a
texture on the object, so its rows start from the safe rewrite's own pictures and aim 2.5 times as far; a knife is
a separate object, which takes a gain of 4 to be left out of the picture.

The prompts are the demo's training phrasings (scene seed ``HGR_SCENE_SEED``); each harmful prompt's safe rewrite
is also a clean line, so the HGR learns "the same scene with and without the harm". A test checks that the shipped
files are exactly what this module writes.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from .prompts import CONCEPTS
from .train_hgr import DEFAULT_CLEAN_PROMPTS, DEFAULT_HARMFUL_PROMPTS, training_prompts

DATA_DIR = Path(__file__).resolve().parent / "data"
PROMPT_FILE = DATA_DIR / "hgr_prompts.txt"
CATEGORY_SETTINGS: Dict[str, Dict[str, float]] = {"gore": {"gain": 2.5, "rewrite_latents": 1.0},
                                                  "weapon": {"gain": 4.0}}
"""The demo's per-category training settings, in the concept lines' names (``| gain=2.5 rewrite_latents=1``)."""


def prompt_lines(n_clean: int = DEFAULT_CLEAN_PROMPTS, n_harmful: int = DEFAULT_HARMFUL_PROMPTS,
                 augment_clean: int = 0, augment_harmful: int = 0) -> List[str]:
    """The prompt file's lines: a header, every clean prompt, then every harmful prompt with its rewrite.

    ``augment_clean`` / ``augment_harmful`` add the demo's own robustness prompts (:mod:`.augment`: its scene
    rephrasings, more harm synonyms, both harms at once, misspelt harm words, dressed prompts) as ordinary lines,
    the way a user brings a richer prompt file; the shipped file has none (the Train HGR recipe dresses prompts
    itself)."""
    prompts = training_prompts(n_clean, n_harmful, rewrites=True, augment_clean=augment_clean,
                               augment_harmful=augment_harmful)
    made_by = "python -m safecfg_core.demo.prompt_file" + (
        f" --augment-clean {augment_clean} --augment-harmful {augment_harmful}" if augment_clean or augment_harmful
        else "")
    return ([f"# The demo world's HGR training prompts ({len(prompts.clean)} clean, {len(prompts.harmful)} harmful)",
             f"# written by: {made_by} (do not edit by hand; a test compares)"]
            + [f"clean: {p}" for p in prompts.clean]
            + [f"{h.category}: {h.prompt} => {h.rewrite}" for h in prompts.harmful])


def concept_lines() -> List[str]:
    """The concept file's lines: each demo category's concept text and its training settings."""
    lines = ["# The demo's harm categories: concept text | training settings over the preset's (docs/corpus.md)"]
    for category, concept in CONCEPTS.items():
        settings = " ".join(f"{k}={v:g}" for k, v in CATEGORY_SETTINGS.get(category, {}).items())
        lines.append(f"{category}: {concept}" + (f" | {settings}" if settings else ""))
    return lines


def write(folder: Path = DATA_DIR, augment_clean: int = 0, augment_harmful: int = 0) -> List[Path]:
    """Write both files into ``folder``; returns their paths."""
    from ..corpus import concepts_beside

    folder.mkdir(parents=True, exist_ok=True)
    prompts_path = folder / PROMPT_FILE.name
    lines = prompt_lines(augment_clean=augment_clean, augment_harmful=augment_harmful)
    prompts_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    concepts_path = concepts_beside(prompts_path)
    concepts_path.write_text("\n".join(concept_lines()) + "\n", encoding="utf-8")
    return [prompts_path, concepts_path]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DATA_DIR, help=f"folder to write into (default {DATA_DIR})")
    parser.add_argument("--augment-clean", type=int, default=0,
                        help="add this many of the demo's own dressed and rephrased clean prompts (default 0)")
    parser.add_argument("--augment-harmful", type=int, default=0,
                        help="add this many of the demo's own harmful variants: synonyms, both harms, misspellings, "
                             "buried harm (default 0)")
    args = parser.parse_args(argv)
    for path in write(args.out, args.augment_clean, args.augment_harmful):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
