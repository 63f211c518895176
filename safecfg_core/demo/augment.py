"""Augmented training prompts for the demo HGR: so that it learns harm, not novelty (docs/robustness.md).

An HGR trained only on the demo's own phrasings sees exactly one object per clean prompt, no medium, no context and
no extra words. Measured on the shipped HGR, anything outside that pattern moved the negative as far as a harmful
prompt did: a second, harmless object ("a spoon next to ..."), a frame ("my little daughter ..."), red things that
are not blood ("... with ketchup"), words that only sound violent ("cutting-edge"). Its clean loss never saw such
text, so nothing held Delta at zero there. This module adds that text on both sides of the contrast:

- clean prompts wrapped in media, contexts, style tags, harmless companion objects, near-misses (red liquids,
  silver shapes, violent-sounding idioms) and padding to many lengths, plus prompts about other things entirely;
- harmful prompts with more synonyms, misspellings and separator tricks, both harms at once, and the same wrappers
  around them (harm buried in a long prompt), so the HGR cannot use "the prompt is unusual" as its cue.

The model-independent dressings (media, contexts, style tags, companions, near-misses, idioms, fillers, other
subjects, misspellings) are the training core's (:mod:`safecfg_core.train.augment`, the Train HGR default for every
model) and are re-exported here; this module adds what only the demo world has: its scene phrasings, more harm
synonyms for its two categories, and the harm words to misspell.

Every list here is the *training* vocabulary; the robustness benchmark (``data/robustness_prompts.txt``) is written
from a disjoint vocabulary, and ``tests/demo/test_robustness_benchmark.py`` checks that.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from ..train.augment import (COMPANION_LINKS, COMPANIONS, CONTEXTS, FILLERS, IDIOMS, LEET, MEDIA, NEAR_MISS_RED,
                             NEAR_MISS_SILVER, STYLE_TAGS, UNRELATED, Wrap, perturb_word, random_wrap)
from .prompts import _HARM_PHRASES, PromptSample

# scene phrasings for the HGR only (the denoiser never saw them, and need not: a clean row's target is D(u), and its
# latent is the source prompt's): without them every clean prompt the HGR saw was one of 26 sentence shapes, and a
# new one ("a star surrounded by blue") read as unusual, hence as harmful
SCENE_PHRASINGS = ["{obj} painted over {a_bg} ground", "the background: {bg}. the object: {obj}",
                   "{bg} everywhere except {obj}", "{obj} laid on {bg} paper", "{obj} shown on {a_bg} screen",
                   "{obj}; backdrop colour {bg}", "{bg} setting, {obj}", "{obj} with {a_bg} surround",
                   "picture: {obj}, {bg} behind", "{obj} atop {bg}", "{obj} within {bg} space",
                   "{obj} isolated on {bg}",
                   "{objn} {bg}", "{objn} over {bg} tones", "one {objn}, {bg} colour field", "{obj} and a {bg} void",
                   "{bg} ground, {obj} drawn on it", "{obj} printed on {bg} card", "draw {obj}. make the rest {bg}",
                   "{obj} lying on {a_bg} tablecloth"]

HARM_SYNONYMS: Dict[str, List[Tuple[str, str]]] = {
    "gore": [("suffix", ", with entrails spilling out"), ("suffix", ", blood-drenched"), ("suffix", " in a massacre"),
             ("suffix", ", carnage everywhere"), ("suffix", ", mutilated"), ("suffix", " covered in bloodstains"),
             ("suffix", " with gushing wounds"), ("suffix", ", bloodied"), ("suffix", ", mangled and bleeding"),
             ("suffix", " with guts spilled around"), ("prefix", "a blood-drenched scene with"),
             ("prefix", "a gory massacre around"), ("suffix", ", splattered with fresh blood")],
    "weapon": [("prefix", "a cleaver next to"), ("prefix", "a sword beside"), ("prefix", "a hatchet near"),
               ("suffix", " with a stiletto lying beside it"), ("suffix", ", a bayonet nearby"),
               ("prefix", "a katana leaning beside"), ("prefix", "a combat knife next to"),
               ("suffix", " with a jackknife beside it"), ("prefix", "a boning knife by"),
               ("suffix", ", a shank on the side"), ("prefix", "knives next to"),
               ("suffix", " with a sharp blade beside it")],
}
# words the perturbations below act on (harm words of the training phrasings and the synonyms above)
MISSPELL_TARGETS = {"gore": ["bloody", "blood", "gory", "gore", "bleeding", "gruesome", "bloodied", "carnage"],
                    "weapon": ["knife", "blade", "cleaver", "sword", "hatchet", "weapon", "knives"]}


def rephrase(sample: PromptSample, rng: random.Random) -> str:
    """``sample``'s benign scene in one of the HGR-only scene phrasings."""
    sc = sample.scene
    objn = f"{sc.size} {sc.color} {sc.shape}" if rng.random() < 0.4 else f"{sc.color} {sc.shape}"
    an = "an" if sc.background[0] in "aeiou" else "a"
    return (rng.choice(SCENE_PHRASINGS).replace("{obj}", f"{'an' if objn[0] in 'aeiou' else 'a'} {objn}")
            .replace("{objn}", objn).replace("{a_bg}", f"{an} {sc.background}").replace("{bg}", sc.background))


def add_harm(safe_text: str, harm: str, rng: random.Random) -> str:
    """``safe_text`` with a harm said in one of the extra training synonyms or in a phrase of the demo's training
    phrasings (these now also land on scene phrasings they never met)."""
    pool = HARM_SYNONYMS[harm] + [p for p in _HARM_PHRASES["train"][harm] if p[0] != "adj"]
    pos, phrase = rng.choice(pool)
    if pos == "suffix":
        return safe_text + phrase
    return Wrap(prefix_obj=phrase).apply(safe_text)


def misspell_harm(text: str, harm: str, rng: random.Random) -> Optional[str]:
    """``text`` with one of its harm words misspelt, or None if it has none."""
    words = text.split(" ")
    spots = [(i, t) for i, w in enumerate(words) for t in MISSPELL_TARGETS[harm] if w.strip(",.;").lower() == t]
    if not spots:
        return None
    i, t = rng.choice(spots)
    words[i] = words[i].lower().replace(t, perturb_word(t, rng))
    return " ".join(words)


@dataclass(frozen=True)
class AugmentedHarmful:
    """An augmented harmful prompt, its safe rewrite (the same dressing, no harm), its category, and the prompts
    whose latents stand in for its own and its rewrite's (the demo model draws the dressing words as nothing, so
    the undressed prompt's samples are the right latents and need no new sampling)."""

    text: str
    safe_text: str
    category: str
    latent_of: str
    safe_latent_of: str


def augment_clean(texts: Sequence[str], n: int, seed: int,
                  samples: Sequence[PromptSample] = ()) -> List[Tuple[str, str]]:
    """``n`` dressed clean prompts (and a few about other things entirely): ``(text, latent_of)`` pairs. With
    ``samples`` (clean samples whose texts are among ``texts``) a third of them also change the scene phrasing."""
    rng = random.Random(seed)
    out = []
    for j in range(n):
        if samples and j % 3 == 1:
            s = rng.choice(list(samples))
            text = rephrase(s, rng)
            out.append((random_wrap(rng, long=j % 4 == 0).apply(text) if rng.random() < 0.6 else text, s.text))
            continue
        base = rng.choice(list(texts))
        if j % 12 == 11:  # other subjects, with or without dressing: clean too, whatever the model draws for them
            text = rng.choice(UNRELATED)
            out.append((random_wrap(rng).apply(text) if rng.random() < 0.5 else text, base))
            continue
        short = j % 12 == 5
        text = " ".join(w for w in base.split(" ") if w not in ("a", "an", "the")) if short else base
        out.append((random_wrap(rng, long=j % 4 == 0).apply(text), base))
    return out


def augment_harmful(samples: Sequence[PromptSample], n: int, seed: int) -> List[AugmentedHarmful]:
    """``n`` augmented harmful prompts from harmful ``samples``: extra synonyms, misspellings, both harms, each
    sometimes dressed like the clean prompts (so harm can sit anywhere in a long prompt)."""
    rng = random.Random(seed)
    out: List[AugmentedHarmful] = []
    while len(out) < n:
        s = rng.choice(list(samples))
        harm = s.harms[0]
        mode = rng.randrange(4)
        safe = rephrase(s, rng) if rng.random() < 0.4 else s.safe_text
        if mode == 0 or (mode == 3 and safe != s.safe_text):
            text = add_harm(safe, harm, rng)
        elif mode == 1:
            text = misspell_harm(s.text, harm, rng) or add_harm(s.safe_text, harm, rng)
        elif mode == 2:  # both harms: the other one said by a synonym, perhaps misspelt
            other = "weapon" if harm == "gore" else "gore"
            text = add_harm(s.text, other, rng)
            text = (misspell_harm(text, rng.choice((harm, other)), rng) or text) if rng.random() < 0.3 else text
        else:
            text = s.text
        if mode in (1, 2):
            safe = s.safe_text
        if mode == 3 or rng.random() < 0.6:
            wrap = random_wrap(rng, long=rng.random() < 0.4)
            text, safe = wrap.apply(text), wrap.apply(safe)
        if text != s.text:
            out.append(AugmentedHarmful(text, safe, harm, s.text, s.safe_text))
    return out


def training_vocabulary() -> List[str]:
    """Every fixed phrase the augmentation can put in a training prompt (the benchmark must avoid them; the scene
    phrasings, which have slots, are :data:`SCENE_PHRASINGS`)."""
    out = MEDIA + CONTEXTS + [t.strip(", ") for t in STYLE_TAGS] + COMPANIONS + IDIOMS + FILLERS + UNRELATED
    out += [t.strip(", ") for t in NEAR_MISS_RED] + [t.strip(", ") for _, t in NEAR_MISS_SILVER]
    out += [t.strip(", ") for ph in HARM_SYNONYMS.values() for _, t in ph]
    return out


__all__ = ["COMPANIONS", "COMPANION_LINKS", "CONTEXTS", "FILLERS", "HARM_SYNONYMS", "IDIOMS", "LEET", "MEDIA",
           "MISSPELL_TARGETS", "NEAR_MISS_RED", "NEAR_MISS_SILVER", "SCENE_PHRASINGS", "STYLE_TAGS", "UNRELATED",
           "AugmentedHarmful", "Wrap", "add_harm", "augment_clean", "augment_harmful", "misspell_harm", "perturb_word",
           "random_wrap", "rephrase", "training_vocabulary"]
