"""Renderer determinism and vocabulary; prompt generator coverage and split disjointness."""
import random

import pytest
import torch

from safecfg_core.demo import prompts as P
from safecfg_core.demo.render import (COLORS, HARMS, POSITIONS, SHAPES, SIZES, Scene, labels_of, random_scenes,
                                      render_scenes)


def test_render_deterministic_and_shape():
    scenes = random_scenes(24, seed=3, harm_fraction=0.5, both_fraction=0.1)
    a = render_scenes(scenes, seed=7)
    b = render_scenes(scenes, seed=7)
    c = render_scenes(scenes, seed=8)
    assert a.shape == (24, 3, 64, 64) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert not torch.equal(a, c)  # jitter follows the seed
    assert a.min() >= 0 and a.max() <= 1


def test_vocabulary_and_harms_visible():
    assert SHAPES == ("circle", "square", "triangle", "star")
    assert set(COLORS) == {"red", "orange", "yellow", "green", "blue", "purple", "white", "black", "gray"}
    assert SIZES == ("small", "large") and HARMS == ("gore", "weapon")
    for p in ("left", "right", "top", "bottom", "center"):
        assert p in POSITIONS
    base = Scene("star", "blue", "yellow", "large", "center")
    img = render_scenes([base, Scene("star", "blue", "yellow", "large", "center", gore=True),
                         Scene("star", "blue", "yellow", "large", "center", weapon=True)], seed=1)
    # background corner is the background color, object centre the object color
    assert torch.allclose(img[0, :, 2, 2], torch.tensor([0.98, 0.90, 0.12]), atol=1e-3)
    assert torch.allclose(img[0, :, 32, 32], torch.tensor([0.12, 0.30, 0.92]), atol=0.05)
    assert (img[1] - img[0]).abs().sum() > 50  # blood drawn
    assert (img[2] - img[0]).abs().sum() > 50  # knife drawn
    # every shape, color, size and position renders something different from the background
    for s in SHAPES:
        for size in SIZES:
            for pos in POSITIONS:
                im = render_scenes([Scene(s, "red", "white", size, pos)], seed=0, jitter=False)[0]
                assert (im - im[:, :1, :1]).abs().sum() > 20


def test_scene_validation():
    with pytest.raises(ValueError):
        Scene("star", "blue", "blue")
    with pytest.raises(ValueError):
        Scene("hexagon", "blue", "red")
    lab = labels_of(random_scenes(10, seed=1))
    assert set(lab) == {"shape", "color", "background", "gore", "weapon"}


GORE_WORDS = ("blood", "gor", "bleeding", "gruesome")
WEAPON_WORDS = ("knife", "blade", "weapon", "dagger")


@pytest.mark.parametrize("split", P.SPLITS)
def test_prompts_name_their_content(split):
    ps = P.sample_prompts(2000, seed=1, split=split, harm_fraction=0.5, both_fraction=0.1)
    seen = set()
    for p in ps:
        t = p.text
        s = p.scene
        assert s.shape in t and s.color in t and s.background in t
        if s.gore:
            assert any(w in t for w in GORE_WORDS), t
        if s.weapon:
            assert any(w in t for w in WEAPON_WORDS), t
        if not s.harmful:
            assert t == p.safe_text
            assert not any(w in t for w in GORE_WORDS + WEAPON_WORDS), t
        else:
            assert s.shape in p.safe_text and not any(w in p.safe_text for w in GORE_WORDS + WEAPON_WORDS), p.safe_text
        seen.update(t.replace(",", " ").split())
    for w in SHAPES + COLORS + SIZES + ("left", "right", "top", "bottom", "center"):
        assert w in seen, w
    assert len({p.text for p in ps}) > 1500  # varied


def test_every_template_keeps_every_harm_phrase():
    """Each template with each harm phrase names the harm; held-out weapon prefixes were once dropped by templates
    that start with the background (``"{bg} backdrop, {objn} {where}"``)."""
    for split in P.SPLITS:
        for family in range(len(P._TEMPLATES[split])):
            for harm, phrases in P._HARM_PHRASES[split].items():
                for phrase in phrases:
                    scene = Scene("star", "blue", "red", "small", "left", **{harm: True})
                    sample = _prompt_with(scene, split, family, phrase)
                    assert phrase[1] in sample.text, (split, family, phrase, sample.text)
                    assert phrase[1] not in sample.safe_text


def _prompt_with(scene, split, family, phrase):
    """``make_prompt`` with its random choices of family and harm phrase pinned (a stub RNG that replays them)."""
    class Pinned(random.Random):
        def randrange(self, n):
            return family

        def choice(self, seq):
            return phrase if phrase in seq else seq[0]

    return P.make_prompt(scene, Pinned(0), split)


def test_training_prompts_never_use_heldout_phrasings():
    """No training prompt could have come from a held-out template or names a held-out harm phrase: the
    held-out split measures phrasings the model never saw."""
    import re

    slots = {
        "a {bg}": "an? (?:" + "|".join(COLORS) + ")",
        "{bg}": "(?:" + "|".join(COLORS) + ")",
        "{obj}": "(?:.* )?(?:" + "|".join(SHAPES) + ")",
        "{objn}": "(?:.* )?(?:" + "|".join(SHAPES) + ")",
        "{where}": "(?:" + "|".join(w for ws in P._WHERE.values() for w in ws) + ")",
    }

    def pattern(template):
        out = re.escape(template)
        for slot, rx in slots.items():
            out = out.replace(re.escape(slot), rx)
        return re.compile("^" + out + "$")

    held_templates = [pattern(t) for t in P._TEMPLATES["heldout"]]
    # the patterns do recognise held-out prompts
    for p in P.sample_prompts(200, seed=12, split="heldout", harm_fraction=0.0):
        assert any(rx.match(p.text) for rx in held_templates), p.text
    held_phrases = [t for phrases in P._HARM_PHRASES["heldout"].values() for _, t in phrases]
    for p in P.sample_prompts(3000, seed=11, split="train", harm_fraction=0.6, both_fraction=0.1):
        for pattern in held_templates:
            assert not pattern.match(p.safe_text), (pattern.pattern, p.text)
        assert not any(phrase in p.text for phrase in held_phrases), p.text


def test_heldout_phrasings_disjoint():
    train = set(P.all_template_strings("train"))
    held = set(P.all_template_strings("heldout"))
    assert not train & held
    ps_h = P.sample_prompts(300, seed=2, split="heldout", harm_fraction=0.5)
    ps_t = P.sample_prompts(300, seed=2, split="train", harm_fraction=0.5)
    assert all(p.split == "heldout" for p in ps_h)
    assert not {p.text for p in ps_h} & {p.text for p in ps_t}
    assert P.CONCEPTS == {"gore": "blood, gore", "weapon": "knife, weapon"}
    with pytest.raises(ValueError):
        P.make_prompt(Scene("star", "blue", "red"), random.Random(0), split="test")
    # reproducible
    assert [p.text for p in P.sample_prompts(20, seed=5)] == [p.text for p in P.sample_prompts(20, seed=5)]
