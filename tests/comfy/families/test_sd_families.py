"""SD1.5, SD2.x, SDXL and the SDXL refiner through ComfyUI's stock nodes in the real server: CheckpointLoaderSimple
-> CLIPTextEncode -> SafeCFG -> KSampler -> VAEDecode, on checkpoints built with ComfyUI's own classes (full-size
CLIP-L / OpenCLIP-H / CLIP-G, a reduced UNet that ComfyUI still detects as SD15 / SD20 / SDXL / SDXLRefiner;
tests/comfy/model_fixtures.py), and Train HGR through SD1.5 and SDXL.

The HGRs here are made by hand: an untrained one (zero output: must be plain CFG bit for bit) and one with random
output layers whose threshold is set between two prompts' scores, as the server's Harmfulness Detector reports them
for this model's own CLIP, so one prompt is over it ("harmful") and the other under ("clean").
"""
from __future__ import annotations

import statistics
from typing import Any, Callable, Dict

import pytest
import torch

from safecfg_core.hgr import HGRBundle, HGRConfig, HGRMeta

from _family_graphs import (detector_graph, detector_score, family_graph, run_fails, run_ok, saved_latent,
                            train_graph)

pytestmark = pytest.mark.slow

FAMILY = {"sd15": "sd1", "sdxl": "sdxl", "sd2": "sd2", "sdxl_refiner": "sdxl_refiner"}
# Of different lengths, so that even a random CLIP encodes them far apart (most of a short prompt's 77 tokens are
# the end-token padding).
PROMPTS = ("a large blue circle on a yellow background",
           "a bloody red star with a knife on white, gore and blood everywhere, a dark violent scene with weapons, "
           "dramatic lighting, torn flesh, a horror film still, detailed, sharp focus")


def _small(family: str) -> HGRConfig:
    return HGRConfig.for_family(FAMILY[family], width=64, depth=1, heads=4)


def _make_hgrs(server, family: str, ckpt: str) -> Dict[str, Any]:
    """``zero_<f>`` and ``gated_<f>`` HGR files; the gated one's threshold and which prompt is over it."""
    zero = HGRBundle.create(_small(family), HGRMeta(categories={"gore": "blood, gore"}, threshold=0.5), seed=0)
    zero.save(server.hgr_dir / f"zero_{family}.safetensors")
    gated = HGRBundle.create(_small(family), HGRMeta(categories={"gore": "blood, gore"}, threshold=None), seed=1)
    with torch.no_grad():
        torch.manual_seed(3)
        for p in gated.net.parameters():
            if p.abs().sum() == 0:  # the zero-initialised output heads
                p.normal_(0.0, 0.2)
    gated.save(server.hgr_dir / f"gated_{family}.safetensors")
    scores = [detector_score(server, run_ok(server, detector_graph(ckpt, p, f"gated_{family}.safetensors")), "20")
              for p in PROMPTS]
    assert abs(scores[0] - scores[1]) > 4e-4, scores  # the report rounds to 1e-4: the midpoint splits them
    hi = int(scores[1] > scores[0])
    return {"threshold": sum(scores) / 2, "harmful": PROMPTS[hi], "clean": PROMPTS[1 - hi]}


@pytest.fixture(scope="module")
def family_hgrs(comfy_server, sd_checkpoints) -> Callable[[str], Dict[str, Any]]:
    """``family_hgrs(family)``: that family's HGR files and gate settings, made on first use."""
    made: Dict[str, Dict[str, Any]] = {}

    def get(family: str) -> Dict[str, Any]:
        if family not in made:
            made[family] = _make_hgrs(comfy_server, family, sd_checkpoints[family])
        return made[family]

    return get


@pytest.mark.parametrize("family", list(FAMILY))
def test_zero_hgr_bit_identical_and_gated_hgr_moves_only_harmful(comfy_server, sd_checkpoints, family_hgrs, family):
    ckpt, h = sd_checkpoints[family], family_hgrs(family)
    for prompt, should_change in ((h["harmful"], True), (h["clean"], False)):
        plain = saved_latent(comfy_server, run_ok(comfy_server, family_graph(ckpt, prompt, prefix=f"{family}_p")), "9")
        assert torch.isfinite(plain).all() and plain.abs().sum() > 0
        gate = {"gate_mode": "hard", "threshold": h["threshold"]}
        safe = saved_latent(comfy_server, run_ok(comfy_server, family_graph(
            ckpt, prompt, hgr=f"gated_{family}.safetensors", safecfg=gate, prefix=f"{family}_s")), "9")
        if should_change:
            assert not torch.equal(plain, safe), f"{family}: SafeCFG did not change the harmful prompt's latent"
            zero = saved_latent(comfy_server, run_ok(comfy_server, family_graph(
                ckpt, prompt, hgr=f"zero_{family}.safetensors", safecfg={"gate_mode": "always"},
                prefix=f"{family}_z")), "9")
            assert torch.equal(plain, zero), f"{family}: an untrained (zero) HGR is not plain CFG bit for bit"
        else:
            assert torch.equal(plain, safe), f"{family}: SafeCFG changed the clean prompt's latent"


def test_hgr_of_the_other_family_refused_before_sampling_naming_both(comfy_server, sd_checkpoints):
    for family in FAMILY:
        HGRBundle.create(_small(family), HGRMeta(threshold=0.5)).save(comfy_server.hgr_dir / f"other_{family}.safetensors")
    msg = run_fails(comfy_server, family_graph(sd_checkpoints["sdxl"], PROMPTS[0], hgr="other_sd15.safetensors"))
    assert "SafeCFG SafeCFG: This HGR was trained for sd1" in msg, msg
    assert "sd1 (768-wide tokens)" in msg and "2048-wide tokens (sdxl)" in msg, msg
    msg = run_fails(comfy_server, family_graph(sd_checkpoints["sd15"], PROMPTS[0], hgr="other_sdxl.safetensors"))
    assert "sdxl" in msg and "768-wide tokens (sd1)" in msg, msg


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_train_hgr_through_the_stock_loaded_model(comfy_server, sd_checkpoints, family):
    """Train HGR on the stock-loaded checkpoint at 64x64: it runs, its loss falls, and the saved HGR loads back
    with the family recorded (and the model's widths)."""
    name = f"trained_{family}"
    # test size: 16 steps of 2 rows on 64x64 latents (one sampler step each), no dressed prompts
    run_ok(comfy_server, train_graph(
        comfy_server, sd_checkpoints[family], name=name, steps=16, batch_size=2, lr=0.002, sample_steps=1,
        width=64, height=64, retrain=True, seed=0, robustness_augmentation=False), timeout=3600.0)
    bundle = HGRBundle.load(comfy_server.hgr_dir / f"{name}.safetensors")
    expected = HGRConfig.for_family(FAMILY[family])
    assert bundle.config.model_family == FAMILY[family]
    assert (bundle.config.token_dim, bundle.config.pooled_dim) == (expected.token_dim, expected.pooled_dim)
    losses = bundle.meta.training["loss_history"]
    assert len(losses) == 16, losses
    # the first step's loss is that of the untrained (zero) HGR; two-row batches of a random model give the odd
    # spike (a harmful row whose target is nearly its plain negative's prediction), so the median of the last four
    last = statistics.median(losses[-4:])
    assert last < 0.8 * losses[0], f"{family}: the loss did not fall ({losses[0]:.4f} -> {last:.4f}): {losses}"
