"""The free-u* bound: it starts where the HGR is, measures like the demo command, and its fit really fits."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from experiments.free_negative import FreeNegativeFit, compare, recipe_or_recorded
from safecfg_core.demo.items import build_items
from safecfg_core.demo.measures import measure
from safecfg_core.demo.runs import load_world_and_hgr, run_experiment
from safecfg_core.demo.scene_seeds import DEMO_SCENE_SEED
from safecfg_core.guidance import GateConfig, SafeGuidance

pytestmark = pytest.mark.slow  # runs the demo's experiments and the fit

REPO = Path(__file__).resolve().parents[2]
RECIPE = dict(gain={"gore": 2.5, "weapon": 4.0}, rewrite_latents={"gore": 1.0, "weapon": 0.0})


@pytest.fixture(scope="module")
def small_set():
    torch.set_num_threads(1)
    world, bundle, _ = load_world_and_hgr()
    return world, bundle, build_items(2, DEMO_SCENE_SEED), [0, 1]


def test_the_hgr_row_is_the_demo_commands_safecfg(small_set):
    """Sampling with the HGR's own Delta and gate must reproduce the demo command's SafeCFG measures; with no fit
    steps the free u* is the HGR's, so both rows agree."""
    world, bundle, items, seeds = small_set
    result = compare(world, bundle, items, seeds, steps=0, **RECIPE)
    safecfg = measure(world, run_experiment(world, bundle, items, seeds, methods=("safecfg",)))["methods"]["safecfg"]
    assert result["hgr"]["harmful_rate"] == safecfg["harmful_rate"]
    assert result["hgr"]["kept_content"] == safecfg["kept_content"]
    assert result["hgr"]["kept_content_by_harm_and_size"] == safecfg["kept_content_by_harm_and_size"]
    assert result["free"]["kept_content"] == result["hgr"]["kept_content"]
    assert result["relative_error"]["free"] == pytest.approx(result["relative_error"]["hgr"])


def test_the_fit_lowers_the_trainers_error_on_fresh_noise_and_leaves_the_model_alone(small_set):
    world, bundle, items, _ = small_set
    harmful = [it for it in items if it.harmful]
    with torch.no_grad():
        c = world.text_encoder.encode([it.text for it in harmful])
        delta = SafeGuidance(bundle, GateConfig()).compute_delta(c, world.text_encoder.encode([""]).repeat_batch(len(c.tokens)))
    fit = FreeNegativeFit(world, harmful, delta.tokens, **RECIPE)
    weights = {k: v.clone() for k, v in world.net.state_dict().items()}
    first = next(world.net.parameters())
    first.requires_grad_(True)  # a caller's flag the fit must hand back (the loaded world has them all off)
    flags = [p.requires_grad for p in world.net.parameters()]
    check = fit.batch(torch.Generator().manual_seed(123), 8)  # noise the fit never sees
    before = fit.held_out_error(delta.tokens.float(), check)
    fitted = fit.fit(steps=40, reps=2, lr=3e-3)
    after = fit.held_out_error(fitted, check)
    assert after < 0.9 * before, (before, after)
    assert all(torch.equal(weights[k], v) for k, v in world.net.state_dict().items())
    assert [p.requires_grad for p in world.net.parameters()] == flags
    first.requires_grad_(False)


def test_command_refuses_training_scene_seeds():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "experiments.free_negative", "--scene-seed", "4242"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "4242" in proc.stderr and "Pick another --scene-seed" in proc.stderr


def test_fit_recipe_defaults_to_the_one_the_hgr_file_records(small_set):
    """With no --gain / --rewrite-latents the fit uses the HGR's own recorded recipe (the shipped one's is RECIPE);
    given values win; a file that records none is refused with the flag to pass."""
    from dataclasses import replace

    _, bundle, _, _ = small_set
    assert recipe_or_recorded(bundle, None, None) == (RECIPE["gain"], RECIPE["rewrite_latents"])
    assert recipe_or_recorded(bundle, 2.0, None) == (2.0, RECIPE["rewrite_latents"])
    bare = replace(bundle, meta=replace(bundle.meta, training={}))
    with pytest.raises(ValueError, match="--gain"):
        recipe_or_recorded(bare, None, 0.0)
    assert recipe_or_recorded(bare, 1.0, 0.0) == (1.0, 0.0)
