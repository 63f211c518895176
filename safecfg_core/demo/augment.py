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

Every list here is the *training* vocabulary; the robustness benchmark (``data/robustness_prompts.txt``) is written
from a disjoint vocabulary, and ``tests/demo/test_robustness_benchmark.py`` checks that.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from .prompts import _HARM_PHRASES, PromptSample

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
