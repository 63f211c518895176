"""The trained demo world: weights present and small, loads fast, VAE/evaluator quality, denoiser contract."""
import dataclasses
import os

import pytest
import torch

from safecfg_core.demo.render import labels_of, random_scenes, render_scenes
from safecfg_core.demo.world import DEMO_FAMILY, TOKEN_DIM, WEIGHT_FILES, WEIGHTS_DIR, load_demo_world, read_metadata

# Floors below what the committed weights measure (``experiments/train_world.py`` logs): VAE mean PSNR 27.5 dB on 1000 fresh renders
# (floor 25.0 for these 200); evaluator accuracy on 2000 fresh renders: shape 0.991, color, background, gore and
# weapon 1.000 (DEMO-WORLD.md's target is 0.98); the floors leave a margin for this 400-image sample.
VAE_PSNR_FLOOR = float(os.environ.get("SAFECFG_DEMO_VAE_PSNR_FLOOR", "25.0"))
EVAL_ACC_FLOOR = {"shape": 0.97, "color": 0.98, "background": 0.98, "gore": 0.98, "weapon": 0.98}


@pytest.fixture(scope="module")
def world():
    torch.set_num_threads(1)
    return load_demo_world()


def test_weights_small_and_safetensors():
    for name, path in WEIGHT_FILES.items():
        assert os.path.isfile(path), path
        assert path.endswith(".safetensors")
        meta = read_metadata(path)
        assert "seed" in meta and "steps" in meta and "config" in meta, name
        # every file says which command made it, so the demo world can be rebuilt from the repository (the script
        # is experiments/train_world.py; the shipped files name the place it had when they were made)
        assert str(meta.get("command", "")).startswith(("python -m safecfg_core.demo.train_world",
                                                        "python -m experiments.train_world")), name
    assert sum(os.path.getsize(os.path.join(WEIGHTS_DIR, f)) for f in os.listdir(WEIGHTS_DIR)) < 25e6


def test_load_and_api():
    # how long loading takes is a benchmark's business (a timed assert fails on a busy machine, not on slow code)
    w = load_demo_world()
    assert DEMO_FAMILY == "demo" and TOKEN_DIM == 384 and w.token_dim == 384
    c = w.text_encoder(["a large blue circle on a yellow background", ""])
    assert c.tokens.shape == (2, 77, 384)
    ids, mask = w.text_encoder.tokenize(["a red star"])
    assert ids.shape == (1, 77) and torch.equal(w.text_encoder.encode_ids(ids, mask), w.text_encoder(["a red star"]).tokens)


def test_denoiser_contract(world):
    net = world.net
    x = torch.randn(3, 4, 8, 8)
    t = torch.tensor([999.0, 500.0, 0.0])
    ctx = torch.randn(3, 77, 384)
    eps = net(x, t, context=ctx, control=None, transformer_options={}, y=None, extra="ignored")
    assert eps.shape == x.shape and eps.dtype == torch.float32 and torch.isfinite(eps).all()
    # batched rows are independent and ComfyUI's concatenated (repeated-to-LCM) contexts work
    eps0 = net(x[:1], t[:1], context=ctx[:1])
    assert torch.allclose(eps0, eps[:1], atol=1e-5)
    assert net(x, t, context=torch.cat([ctx, ctx], 1)).shape == x.shape
    # a 512x512-style latent of another size still runs
    assert net(torch.randn(1, 4, 16, 16), t[:1], context=ctx[:1]).shape == (1, 4, 16, 16)
    meta = world.net.metadata
    assert meta["prediction"] == "eps" and meta["schedule"]["linear_start"] == 0.00085


@pytest.mark.slow
def test_vae_reconstruction(world):
    scenes = random_scenes(200, seed=12345, harm_fraction=0.4)
    imgs = render_scenes(scenes, seed=54321)
    comfy = imgs.permute(0, 2, 3, 1)  # ComfyUI IMAGE layout
    z = world.vae.encode(comfy)
    assert z.shape == (200, 4, 8, 8)
    assert 0.5 < z.std().item() < 2.0 and abs(z.mean().item()) < 0.5  # roughly unit scale
    rec = world.vae.decode(z)
    assert rec.shape == comfy.shape and rec.min() >= 0 and rec.max() <= 1
    mse = (rec - comfy).pow(2).flatten(1).mean(1)
    psnr = (-10 * torch.log10(mse)).mean().item()
    assert psnr > VAE_PSNR_FLOOR, psnr


@pytest.mark.slow
def test_vae_round_trip_keeps_content_readable(world):
    """The VAE is the ceiling on kept content: a round trip must leave nearly every object readable, and it is
    the small objects it loses (a VAE that blurred everything would fail both)."""
    from safecfg_core.demo.measures import vae_roundtrip_content

    ceiling = vae_roundtrip_content(world, n=400)
    assert ceiling["large"] >= 0.97 and ceiling["all"] >= 0.93, ceiling
    # an all-gray "decoder" keeps nothing: the measure can tell
    class FlatVAE:
        def encode(self, images):
            return images

        def decode(self, latents):
            return torch.full_like(latents, 0.5)
    assert vae_roundtrip_content(dataclasses.replace(world, vae=FlatVAE()), n=100)["all"] < 0.5


@pytest.mark.slow
def test_vae_round_trip_under_harm_draws_the_harm(world, monkeypatch):
    """The "under harm" ceiling really draws the harm over every scene (and only the one asked for): the
    evaluator must find it in the round-tripped images."""
    from safecfg_core.demo import measures

    seen = {}
    real_predict = world.evaluator.predict

    def spy(images):
        seen["pred"] = real_predict(images)
        return seen["pred"]

    monkeypatch.setattr(world.evaluator, "predict", spy)
    for harm, other in (("gore", "weapon"), ("weapon", "gore")):
        out = measures.vae_roundtrip_content(world, n=200, harm=harm)
        assert set(out) == {"large", "small", "all"}
        assert seen["pred"][harm].float().mean() > 0.95 and seen["pred"][other].float().mean() < 0.05, harm
    with pytest.raises(ValueError, match="harm must be one of"):
        measures.vae_roundtrip_content(world, n=10, harm="blood")


@pytest.mark.slow
def test_evaluator_accuracy(world):
    scenes = random_scenes(400, seed=999, harm_fraction=0.5, both_fraction=0.1)
    imgs = render_scenes(scenes, seed=998)
    pred = world.evaluator.predict(imgs)
    lab = labels_of(scenes)
    accs = {
        "shape": sum(p == s.shape for p, s in zip(pred["shape"], scenes)) / 400,
        "color": sum(p == s.color for p, s in zip(pred["color"], scenes)) / 400,
        "background": sum(p == s.background for p, s in zip(pred["background"], scenes)) / 400,
        "gore": (pred["gore"].float() == lab["gore"]).float().mean().item(),
        "weapon": (pred["weapon"].float() == lab["weapon"]).float().mean().item(),
    }
    for k, v in accs.items():
        assert v >= EVAL_ACC_FLOOR[k], (k, v, accs)
    # ComfyUI IMAGE layout gives the same answer
    pred2 = world.evaluator.predict(imgs[:16].permute(0, 2, 3, 1))
    assert pred2["shape"] == pred["shape"][:16]


@pytest.mark.slow
def test_rewrite_reference_draws_each_safe_rewrite_with_plain_cfgs_noise(world, monkeypatch):
    """The reference ceiling is plain CFG on the safe rewrite with the very noise the harmful prompt's row gets: its
    images must equal plain CFG's images of the same text sampled as clean prompts, and its rate must be theirs."""
    from safecfg_core.demo.items import build_items
    from safecfg_core.demo.measures import rewrite_reference
    from safecfg_core.demo.runs import load_world_and_hgr, run_experiment

    clean = [it for it in build_items(3, scene_seed=31337) if not it.harmful and it.split == "train"]
    harmful = [dataclasses.replace(it, text="bloody " + it.text, harms=("gore",), safe_text=it.text) for it in clean]
    seeds = [0, 1]
    bundle = load_world_and_hgr(None)[1]
    direct = run_experiment(world, bundle, clean, seeds, steps=6, methods=("cfg",))
    seen = {}
    real_predict = world.evaluator.predict

    def spy(images):
        seen["images"] = images
        return real_predict(images)

    monkeypatch.setattr(world.evaluator, "predict", spy)
    ref = rewrite_reference(world, bundle, harmful + clean, seeds, steps=6)
    assert torch.equal(seen["images"], direct.images["cfg"])
    pred = real_predict(direct.images["cfg"])
    expected = [all(pred[k][r] == v for k, v in it.expect.items()) for i, it in enumerate(clean) for r in (2 * i, 2 * i + 1)]
    assert ref["kept_content"] == sum(expected) / len(expected)
    assert set(ref["kept_content_by_size"]) <= {"small", "large"}
    # every rewritten prompt here is a gore prompt: per harm, gore alone, with the same rates as in all
    assert ref["kept_content_by_harm_and_size"] == {"gore": ref["kept_content_by_size"]}
    # prompt files carry no rewrite: nothing to measure, and nothing is made up
    assert rewrite_reference(world, bundle, [dataclasses.replace(h, safe_text=None) for h in harmful], seeds) == {}
