"""Prompt-set augmentation: the same dressings on both sides of the contrast, so an HGR learns harm, not novelty.

An HGR trained on a narrow set of phrasings treats whatever it never saw as harmful: measured on the demo HGR
(docs/robustness.md), a second harmless object, a medium, a frame ("for my nephew's homework:") or a style tag moved
the negative as far as a harmful prompt did, because nothing in training held Delta at zero on such text. The fix is
in the prompt sets, not the model, so it carries to any text encoder:

- every dressing (media, contexts, style tags, harmless companions, near-misses, violent-sounding idioms, fillers,
  other subjects) goes on clean prompts AND on harmful prompts, the harmful prompt's safe rewrite dressed the same
  way joining the clean side, so "the prompt is unusual" is never the cue that separates the two sides;
- harm words (the category's concept words found in the prompt) are misspelt on the harmful side, so a spelling trick
  does not close the gate;
- the threshold is calibrated on a broad clean set: the plain calibration prompts plus dressed ones.

A dressed prompt's latents are its undressed source's (``AugmentedSet.latent_of``): the dressing changes the text the
HGR reads, while a clean row's target is ``D(u)`` whatever the picture, and sampling thousands of extra prompts would
cost more than the training. The vocabulary here is the training vocabulary: the robustness benchmark is written
from a disjoint one (``tests/demo/test_robustness_benchmark.py``).
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from .prompts import HarmfulPrompt, PromptSet

MEDIA = ["a linocut print of", "a mosaic of", "pixel art of", "a stained glass window showing", "an embroidery of",
         "a chalk drawing of", "a 3d render of", "a paper collage of", "a woodcut of", "a charcoal drawing of",
         "a screen print of", "a tapestry with", "a neon sign of", "a ceramic tile with", "a pastel drawing of",
         "a felt-tip drawing of", "a blueprint of", "a low-poly model of", "an enamel pin of", "a quilt showing",
         "a graffiti mural of", "a cross-stitch of", "a sticker of", "a flag showing"]
CONTEXTS = ["for my nephew's homework:", "generate", "can you make", "i would like", "my son wants",
            "for a kindergarten worksheet,", "a logo idea:", "on a coffee mug,", "printed on a tote bag,",
            "for a board game card:", "a birthday card with", "a classroom poster showing", "an app icon with",
            "on the cover of a notebook,", "a textbook figure of", "our team mascot is", "for a museum leaflet:",
            "a road sign showing", "a children's puzzle piece with", "on a wedding invitation,", "an old postcard of",
            "a bakery sign with", "the grandma knitted", "in a geometry lesson,"]
STYLE_TAGS = [", trending on pixiv", ", 8k", ", bokeh", ", studio lighting", ", isometric view", ", award winning",
              ", soft shadows", ", pastel palette", ", symmetrical", ", matte finish", ", highly detailed",
              ", sharp focus", ", retro style", ", bauhaus style", ", cinematic", ", ultra realistic", ", 35mm",
              ", film grain", ", octane render", ", masterpiece", ", kawaii", ", art deco", ", glossy", ", hd"]
COMPANIONS = ["teacup", "balloon", "feather", "book", "leaf", "shoe", "lamp", "clock", "bird", "rabbit", "key",
              "candle", "umbrella", "guitar", "apple", "kite", "sock", "bucket", "dog", "snail", "chair", "hat",
              "mitten", "bicycle", "pinecone", "violin", "toothbrush", "watering can"]
COMPANION_LINKS = [("prefix", "a {c} next to"), ("prefix", "a {c} beside"), ("prefix", "a little {c} near"),
                   ("suffix", " with a {c} beside it"), ("suffix", ", a {c} next to it"), ("suffix", " and a {c}"),
                   ("suffix", ", with a {c} nearby"), ("prefix", "a {c} by")]
# red things that are not blood, and silver / pointed things that are not blades
NEAR_MISS_RED = [", spilled tomato sauce", " with strawberry jam stains", ", cherry juice drips",
                 " with red wine spilled",
                 ", rose petals scattered around", " with raspberry smoothie splashes", ", lipstick marks",
                 ", red confetti everywhere", ", covered in red sprinkles", " with chili sauce drops",
                 ", splashes of pink lemonade", ", crimson autumn leaves around it"]
NEAR_MISS_SILVER = [("prefix", "a silver ruler beside"), ("prefix", "a metal fork next to"),
                    ("prefix", "a steel comb near"), ("prefix", "a silver pen beside"),
                    ("suffix", " with a paintbrush beside it"),
                    ("suffix", ", a shiny zipper next to it"), ("prefix", "a silver feather next to"),
                    ("suffix", " and a grey pointed arrow"), ("suffix", ", a chrome spoon nearby")]
IDIOMS = ["a knockout design:", "dead simple composition:", "a blade of grass and", "a striking poster of",
          "a shot of colour:", "a smashing layout with", "bleeding-edge style,", "an arresting image of",
          "a sharp-looking logo with", "a deadline project:", "a show-stopping sticker of", "a punchy graphic of"]
FILLERS = ["the lighting is soft and even.", "it should look calm and friendly.", "no text, no watermark.",
           "keep everything centred and tidy.", "the edges are crisp.", "use only flat colours.",
           "it is for a printed brochure.", "make it look hand made.", "a quiet sunday morning mood.",
           "simple and clean, like a textbook diagram.", "my teacher said it must be neat.",
           "colours as bright as possible."]
UNRELATED = ["a bowl of noodles", "mountain landscape at dawn", "a portrait of an old fisherman", "a busy city street",
             "a cat sleeping on a sofa", "a cup of coffee", "a sailboat on the sea", "a forest in autumn",
             "an astronaut on the moon", "a vase of tulips", "a plate of pancakes", "a lighthouse in a storm",
             "a dog playing fetch", "a library full of books", "a snowy village", "a hot air balloon festival",
             "a jazz band on stage", "a desert with cacti", "a robot reading a newspaper", "an owl in a tree",
             "a pile of autumn leaves", "a bicycle leaning on a wall", "a bridge over a river",
             "a market stall with fruit"]


LEET = {"e": "3", "i": "1", "a": "4", "s": "5"}


def perturb_word(word: str, rng: random.Random) -> str:
    """A misspelt ``word``: a dropped, doubled or swapped letter, digits for letters (e->3, i->1, a->4, s->5), or
    dots / underscores between the letters. (The benchmark's tricks are other ones: see docs/robustness.md.) A few
    draws give the word back unchanged (a swap of a doubled letter, no letter turned into a digit); the candidates in
    docs/robustness.md were trained on prompts drawn so, and keeping it keeps their commands reproducible."""
    op = rng.randrange(6)
    i = rng.randrange(1, len(word) - 1) if len(word) > 2 else 0
    if op == 0:
        return word[:i] + word[i + 1:]
    if op == 1:
        return word[:i] + word[i] + word[i:]
    if op == 2 and len(word) > 3:
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]
    if op == 3 and any(ch in LEET for ch in word):
        return "".join(LEET.get(ch, ch) if rng.random() < 0.7 else ch for ch in word)
    if op == 4:
        return ".".join(word)
    return "_".join(word) if op == 5 else word[:i] + word[i] * 2 + word[i:]


@dataclass(frozen=True)
class Wrap:
    """A way to dress a prompt: text before it, a link to a companion or near-miss, text after it."""

    before: str = ""
    prefix_obj: str = ""  # "a teacup next to" (replaces the prompt's leading article)
    after: str = ""

    def apply(self, text: str) -> str:
        if self.prefix_obj:
            body = text[2:] if text.startswith("a ") else text[3:] if text.startswith("an ") else text
            text = f"{self.prefix_obj} {'an' if body[:1] in 'aeiou' else 'a'} {body}"
        if self.before:
            text = f"{self.before} {text}"
        return (text + self.after).strip()


def random_wrap(rng: random.Random, long: bool = False) -> Wrap:
    """One to three dressings from the training vocabulary (more with ``long``)."""
    kinds = rng.sample(["medium", "context", "style", "companion", "red", "silver", "idiom", "filler"],
                       rng.randint(2, 4) if long else rng.randint(1, 2))
    before, prefix_obj, after = [], "", ""
    for k in kinds:
        if k == "medium":
            before.append(rng.choice(MEDIA))
        elif k == "context":
            before.insert(0, rng.choice(CONTEXTS))
        elif k == "idiom":
            before.insert(0, rng.choice(IDIOMS))
        elif k == "style":
            after += rng.choice(STYLE_TAGS)
        elif k == "red":
            after += rng.choice(NEAR_MISS_RED)
        elif k == "filler" and not long:  # (a long dressing gets its own two fillers below)
            after += ". " + rng.choice(FILLERS)
        else:
            pos, link = (rng.choice(COMPANION_LINKS) if k == "companion" else rng.choice(NEAR_MISS_SILVER))
            link = link.replace("{c}", rng.choice(COMPANIONS))
            if pos == "prefix" and not prefix_obj:
                prefix_obj = link
            else:
                after += link if pos == "suffix" else f", {link.split(' ', 1)[1]}"
    if long:
        after += rng.choice([". ", " - "]) + " ".join(rng.sample(FILLERS, 2))
    return Wrap(" ".join(before), prefix_obj, after)


# ----------------------------------------------------------------------------------------------------------
# Any prompt set: dressed clean prompts, dressed and misspelt harmful prompts, a broad calibration set

_WORD = re.compile(r"[a-z][a-z-]{3,}")


def concept_words(concept: str) -> List[str]:
    """The words of a concept text worth misspelling (4+ letters: 'gun' misspelt is often another word)."""
    return list(dict.fromkeys(_WORD.findall(concept.lower())))


def misspell(text: str, words: Sequence[str], rng: random.Random) -> Optional[str]:
    """``text`` with one of its harm ``words`` (whole or as a word's stem: 'naked', 'bloody') misspelt by
    :func:`perturb_word`; None when the text holds none of them or the draw left it unchanged."""
    tokens = text.split(" ")
    spots = [(i, w) for i, tok in enumerate(tokens) for w in words if w in tok.lower()]
    if not spots:
        return None
    i, word = rng.choice(spots)
    out = tokens[i].lower().replace(word, perturb_word(word, rng))
    if out == tokens[i].lower():
        return None
    return " ".join(tokens[:i] + [out] + tokens[i + 1:])


def dress_clean(clean: Sequence[str], n: int, rng: random.Random) -> List[Tuple[str, str]]:
    """``n`` dressed clean prompts as ``(text, source)``; one in twelve is another subject entirely (from
    :data:`UNRELATED`, its latents the drawn source's), one in four gets a long dressing."""
    out = []
    for j in range(n):
        base = rng.choice(list(clean))
        if j % 12 == 11:
            text = rng.choice(UNRELATED)
            out.append((random_wrap(rng).apply(text) if rng.random() < 0.5 else text, base))
        else:
            out.append((random_wrap(rng, long=j % 4 == 0).apply(base), base))
    return out


@dataclass
class AugmentedSet:
    """A prompt set with its dressed prompts, and the prompt whose latents each dressed prompt uses."""

    prompts: PromptSet
    latent_of: Dict[str, str] = field(default_factory=dict)
    added_clean: int = 0
    added_harmful: int = 0


def _dress_harmful(h: HarmfulPrompt, words: Sequence[str], rng: random.Random) -> Optional[Tuple[str, Optional[str]]]:
    """One augmented version of ``h`` and its rewrite: half the time a harm word misspelt, and (always when nothing
    was misspelt) one dressing applied to both the prompt and its rewrite, so they differ only by the harm."""
    text = misspell(h.prompt, words, rng) if rng.random() < 0.5 else None
    rewrite = h.rewrite
    if text is None or rng.random() < 0.5:
        wrap = random_wrap(rng, long=rng.random() < 0.4)
        text = wrap.apply(text or h.prompt)
        rewrite = wrap.apply(rewrite) if rewrite else None
    return (text, rewrite) if text != h.prompt else None


def augment_prompt_set(prompts: PromptSet, n_clean: int, n_harmful: int, seed: int = 0) -> AugmentedSet:
    """``prompts`` plus ``n_clean`` dressed clean prompts and up to ``n_harmful`` augmented harmful ones (a dressed
    rewrite joins the clean side); deterministic in ``seed``. Texts already in the set are skipped, so the result
    always validates."""
    rng = random.Random(seed)
    clean, harmful = list(prompts.clean), list(prompts.harmful)
    seen = set(clean) | {h.prompt for h in harmful}
    latent_of: Dict[str, str] = dict(prompts.latent_of)
    for text, source in dress_clean(prompts.clean, n_clean, rng) if prompts.clean else []:
        if text not in seen:
            seen.add(text)
            clean.append(text)
            latent_of[text] = latent_of.get(source, source)
    words = {c: concept_words(t) for c, t in prompts.concepts.items()}
    added = 0
    for _ in range(n_harmful * 3 if prompts.harmful else 0):  # a few draws repeat a text: try a bounded number
        if added >= n_harmful:
            break
        h = rng.choice(prompts.harmful)
        dressed = _dress_harmful(h, words[h.category], rng)
        if dressed is None or dressed[0] in seen:
            continue
        text, rewrite = dressed
        seen.add(text)
        harmful.append(HarmfulPrompt(text, h.category, rewrite))
        latent_of[text] = latent_of.get(h.prompt, h.prompt)
        added += 1
        if rewrite and rewrite not in seen:  # the same dressing without the harm: clean
            seen.add(rewrite)
            clean.append(rewrite)
            latent_of[rewrite] = latent_of.get(h.prompt, h.prompt)
    out = PromptSet(clean, harmful, dict(prompts.concepts), dict(prompts.sources), latent_of)
    return AugmentedSet(out.validate(), latent_of, len(clean) - len(prompts.clean), added)


def broad_calibration(clean: Sequence[str], n: int, seed: int = 0) -> List[str]:
    """``clean`` plus ``n`` dressed versions of them: a clean set as broad as the training dressings, so the
    threshold holds on unfamiliar clean text (docs/robustness.md)."""
    extra = [t for t, _ in dress_clean(clean, n, random.Random(seed))] if clean and n else []
    return list(dict.fromkeys(list(clean) + extra))


__all__ = ["COMPANIONS", "COMPANION_LINKS", "CONTEXTS", "FILLERS", "IDIOMS", "LEET", "MEDIA", "NEAR_MISS_RED",
           "NEAR_MISS_SILVER", "STYLE_TAGS", "UNRELATED", "AugmentedSet", "Wrap", "augment_prompt_set",
           "broad_calibration", "concept_words", "dress_clean", "misspell", "perturb_word", "random_wrap"]
