"""The default training recipe for any model: which prompts train, calibrate and judge an HGR.

The Train HGR node and ``python -m safecfg_core train --corpus`` both build their job here, so the path a user takes
is one recipe: the corpus (or the user's prompt file) sampled to the preset's counts, the robustness augmentation of
:mod:`.augment` on both sides of the contrast (on unless switched off), a broad calibration set of prompts the HGR
never trained on, and held-out prompts for the report (:mod:`.report`).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

from .augment import augment_prompt_set, broad_calibration
from .config import PerCategory
from .presets import Preset
from .prompts import HarmfulPrompt, PromptSet

AUGMENT_SEED_OFFSET = 101
CALIBRATION_SEED_OFFSET = 107
HELDOUT_FRACTION = 0.15
"""Share of a user file's prompts kept out of training to judge the HGR (the built-in corpus has its own split)."""
CALIBRATION_FRACTION = 0.10
"""Share of a user file's own clean prompts kept out of training to calibrate the threshold on (as the built-in
corpus' calibration split is about a tenth of it)."""


@dataclass
class TrainingJob:
    """Prompts to train on (augmented), prompts to calibrate the threshold on, prompts to judge the result on."""

    prompts: PromptSet
    calibration: List[str]
    heldout_clean: List[str]
    heldout_harmful: List[HarmfulPrompt]
    counts: Dict[str, int]
    notes: List[str] = field(default_factory=list)
    source: str = "builtin"
    # per-category training settings the prompt source declares (``| gain=2.5`` on a concept line), over the preset
    category_settings: Dict[str, Dict[str, float]] = field(default_factory=dict)

    def per_category(self, name: str, default: float) -> PerCategory:
        """The TrainConfig value of ``name`` (``target_gain``, ``rewrite_latent_fraction``): ``default`` for every
        category, except where the source's concept lines set it; one number when no category differs (so a job
        without declared settings trains, and fingerprints, exactly as before)."""
        values = {c: float(self.category_settings.get(c, {}).get(name, default)) for c in sorted(self.prompts.concepts)}
        return values if any(v != default for v in values.values()) else default

    def describe(self) -> str:
        """One line for the log and the report: what trains, what judges."""
        cats = ", ".join(f"{c} {n}" for c, n in self.counts.items() if c != "clean")
        return (f"{len(self.prompts.clean)} clean and {len(self.prompts.harmful)} harmful training prompts "
                f"({self.counts.get('clean', 0)} clean, {cats} before augmentation); {len(self.calibration)} "
                f"calibration prompts; {len(self.heldout_clean)} clean and {len(self.heldout_harmful)} harmful "
                "held-out prompts")


def _split_off(items: List, fraction: float, rng: random.Random) -> Tuple[List, List]:
    """``(kept, held_out)``: a seeded ``fraction`` of ``items`` held out (at least one when there are two or more)."""
    n_out = max(1, int(len(items) * fraction)) if len(items) >= 2 else 0
    out_idx = set(rng.sample(range(len(items)), n_out))
    return ([x for i, x in enumerate(items) if i not in out_idx], [x for i, x in enumerate(items) if i in out_idx])


def _split_file(prompts: PromptSet, seed: int, own_clean: bool
                ) -> Tuple[PromptSet, List[str], List[str], List[HarmfulPrompt]]:
    """A user file has no split: hold out a share of each category's prompts and of its clean prompts to judge on,
    and, when the clean prompts are the file's own, a share of those to calibrate on.

    Returns ``(training set, calibration clean prompts, held-out clean, held-out harmful)``; the calibration list is
    empty when the clean side came from the built-in corpus (which then calibrates with its own split)."""
    rng = random.Random(seed)
    by_cat: Dict[str, List[HarmfulPrompt]] = {}
    for h in prompts.harmful:
        by_cat.setdefault(h.category, []).append(h)
    train_h: List[HarmfulPrompt] = []
    held_h: List[HarmfulPrompt] = []
    for cat in by_cat:
        kept, out = _split_off(by_cat[cat], HELDOUT_FRACTION, rng)
        train_h += kept
        held_h += out
    train_c, held_c = _split_off(list(prompts.clean), HELDOUT_FRACTION, rng)
    calibration: List[str] = []
    if own_clean:
        train_c, calibration = _split_off(train_c, CALIBRATION_FRACTION, rng)
    return PromptSet(train_c, train_h, dict(prompts.concepts)).validate(), calibration, held_c, held_h


def build_job(source: Union[str, Path], preset: Preset, categories: Optional[Sequence[str]] = None,
              augment: bool = True, seed: int = 0) -> TrainingJob:
    """The training job for ``source`` ("builtin" or a prompt file) and the selected harm ``categories``.

    Built-in corpus: the train split (limited to the preset's counts) trains, the calibration split calibrates, the
    held-out split judges. A user file: a seeded 15% of it is held out to judge. When the file has clean prompts of
    its own, a seeded 10% of the rest calibrates: the threshold must sit above the clean prompts of the file's own
    world, and another source's clean prompts can be harm there (the built-in corpus' near-misses, a kitchen knife,
    are harmful in a world whose category is knives). A file without clean prompts trains on the built-in clean
    prompts and calibrates on the built-in calibration split. With ``augment`` the training set gets the preset's
    dressed prompts and the calibration set its dressed clean prompts.
    """
    from ..corpus import BUILTIN, builtin_records, load_prompts  # the corpus imports train: import it late

    builtin = str(source) == BUILTIN
    loaded = load_prompts(BUILTIN if builtin else [source], split="train", categories=categories,
                          max_clean=preset.max_clean, max_per_category=preset.max_per_category, seed=seed)
    prompts, notes = loaded.prompt_set, list(loaded.notes)
    chosen = sorted(prompts.concepts)
    if builtin:
        held = load_prompts(BUILTIN, split="heldout", categories=chosen, seed=seed, max_clean=preset.max_heldout_clean,
                            max_per_category=preset.max_heldout_per_category).prompt_set
        heldout_clean, heldout_harmful = list(held.clean), list(held.harmful)
        calibration = [r.prompt for r in builtin_records("calibration") if not r.categories]
    else:
        prompts, calibration, heldout_clean, heldout_harmful = _split_file(prompts, seed, not loaded.clean_filled)
        if calibration:
            notes.append(f"threshold calibrated on {len(calibration)} of the file's own clean prompts "
                         "(kept out of training)")
        else:
            calibration = [r.prompt for r in builtin_records("calibration") if not r.categories]
    if preset.max_calibration is not None and len(calibration) > preset.max_calibration:
        calibration = sorted(random.Random(seed).sample(calibration, preset.max_calibration), key=calibration.index)
    if augment:
        aug = augment_prompt_set(prompts, preset.augment_clean, preset.augment_harmful, seed + AUGMENT_SEED_OFFSET)
        prompts = aug.prompts
        calibration = broad_calibration(calibration, preset.calibrate_broad, seed + CALIBRATION_SEED_OFFSET)
        notes.append(f"robustness augmentation: {aug.added_clean} dressed clean and {aug.added_harmful} dressed or "
                     f"misspelt harmful prompts; {len(calibration)} calibration prompts (plain and dressed)")
    return TrainingJob(prompts, calibration, heldout_clean, heldout_harmful, dict(loaded.counts), notes,
                       "builtin corpus" if builtin else Path(source).name, dict(loaded.category_settings))


__all__ = ["TrainingJob", "build_job"]
