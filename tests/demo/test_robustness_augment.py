"""The HGR's training augmentation (safecfg_core/demo/augment.py): what it adds to each side of the contrast."""
import random
import re

from safecfg_core.demo import augment
from safecfg_core.demo.prompts import sample_prompts
from safecfg_core.demo.train_hgr import training_prompts

HARM_WORDS = re.compile(r"knife|knives|blood|gore|gory|weapon|dagger|sword|cleaver|hatchet|massacre|carnage|entrails|"
                        r"mutilat|wound|guts|stiletto|bayonet|katana|jackknife|shank")
# near-miss idioms say a harm word on purpose ("a blade of grass", "bleeding-edge style"): the clean side must see them
IDIOM_WORDS = re.compile(r"blade of grass|bleeding-edge")


def test_perturbed_words_differ_and_keep_most_letters():
    rng = random.Random(0)
    for word in ("knife", "blood", "gore", "weapon"):
        spelt = [augment.perturb_word(word, rng) for _ in range(200)]
        assert sum(w != word for w in spelt) >= 0.9 * len(spelt)  # (a swap of "oo" leaves the word as it was)
        assert len(set(spelt)) >= 10
        assert all(len(set(w) & set(word)) >= len(set(word)) - 2 for w in spelt)


def test_clean_augmentation_adds_no_harm():
    base = sample_prompts(50, seed=3, split="train", harm_fraction=0.0)
    out = augment.augment_clean([s.text for s in base], 400, seed=1, samples=base)
    texts = [t for t, _ in out]
    assert len(set(texts)) > 300  # varied, not one dressing repeated
    assert any(t.startswith(tuple(augment.UNRELATED)) for t in texts)  # other subjects entirely
    assert any(re.search(r"next to|beside|near", t) for t in texts)  # harmless second objects
    for text, source in out:
        assert not HARM_WORDS.search(IDIOM_WORDS.sub("", text)), text
        assert source in {s.text for s in base}


def test_harmful_augmentation_keeps_the_harm_and_its_rewrite_drops_it():
    samples = sample_prompts(60, seed=5, split="train", harm_fraction=1.0)
    out = augment.augment_harmful(samples, 300, seed=2)
    assert {a.category for a in out} == {"gore", "weapon"}
    for a in out:
        assert a.text != a.safe_text
        assert not HARM_WORDS.search(IDIOM_WORDS.sub("", a.safe_text)), a.safe_text
    # some harm is said only in a misspelt form (no harm word left at all)
    assert any(not HARM_WORDS.search(IDIOM_WORDS.sub("", a.text)) for a in out)


def test_training_prompts_with_augmentation():
    aliases = {}
    plain = training_prompts(40, 60)
    ps = training_prompts(40, 60, rewrites=True, augment_clean=200, augment_harmful=100, aliases=aliases)
    assert len(ps.clean) > len(plain.clean) + 150 and len(ps.harmful) > len(plain.harmful) + 80
    harmful = {h.prompt for h in ps.harmful}
    assert not harmful & set(ps.clean)
    assert all(h.rewrite in ps.clean for h in ps.harmful)  # every rewrite is also trained as clean
    known = set(plain.clean) | {h.prompt for h in plain.harmful}
    assert set(aliases.values()) <= known  # latents come from the undressed prompts
    assert plain.clean == ps.clean[:len(plain.clean)]  # the un-augmented set is unchanged


def test_warm_start_checkpoint_holds_the_init_weights_at_step_0(tmp_path):
    import json

    import torch
    from safetensors import safe_open

    from safecfg_core.demo.train_hgr import write_warm_start
    from safecfg_core.demo.world import HGR_PATH
    from safecfg_core.hgr import HGRBundle, HGRConfig
    from safecfg_core.train import TrainConfig, training_fingerprint

    prompts = training_prompts(4, 4, rewrites=True)
    config, hgr_config = TrainConfig(steps=10), HGRConfig.for_family("demo")
    ckpt = tmp_path / "ckpt.safetensors"
    write_warm_start(str(ckpt), HGR_PATH, prompts, config, hgr_config)
    init, warm = HGRBundle.load(HGR_PATH), HGRBundle.load(str(ckpt))
    for (name, a), (_, b) in zip(init.net.state_dict().items(), warm.net.state_dict().items()):
        assert torch.equal(a, b), name
    with safe_open(str(ckpt), "pt") as f:
        info = json.loads(f.metadata()["safecfg.checkpoint"])
    assert info["step"] == 0 and info["fingerprint"] == training_fingerprint(prompts, config, hgr_config)
