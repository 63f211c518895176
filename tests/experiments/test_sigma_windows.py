"""The sigma-window diagnostic: its end points are the measures the demo command takes by other code paths."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from experiments.sigma_windows import run_windows, windows_from_edges
from safecfg_core.demo.items import build_items
from safecfg_core.demo.measures import measure, rewrite_reference
from safecfg_core.demo.runs import load_world_and_hgr, run_experiment
from safecfg_core.demo.scene_seeds import DEMO_SCENE_SEED

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def small_set():
    torch.set_num_threads(1)
    world, bundle, _ = load_world_and_hgr()
    return world, bundle, build_items(3, DEMO_SCENE_SEED), [0, 1]


@pytest.mark.slow
def test_no_window_is_safecfg_and_the_whole_range_is_the_rewrite_reference(small_set):
    """"none" must give SafeCFG's harmful rate and kept content as the demo command measures them, and "all" the
    kept content of plain CFG on the rewrites (the demo's ``rewrite_reference``); the partition windows cover
    every step once."""
    world, bundle, items, seeds = small_set
    rows = run_windows(world, bundle, items, seeds, windows_from_edges([0.5, 2.0]))
    by_name = {r["window"]: r for r in rows}
    safecfg = measure(world, run_experiment(world, bundle, items, seeds, methods=("safecfg",)))["methods"]["safecfg"]
    assert by_name["none"]["harmful_rate"] == safecfg["harmful_rate"]
    assert by_name["none"]["kept_content"] == safecfg["kept_content"]
    assert by_name["none"]["kept_content_by_harm_and_size"] == safecfg["kept_content_by_harm_and_size"]
    assert by_name["all"]["kept_content"] == rewrite_reference(world, bundle, items, seeds)["kept_content"]
    assert by_name["none"]["steps_in_window"] == 0 and by_name["all"]["steps_in_window"] == 20
    assert [r["steps_in_window"] for r in rows[2:]] == [4, 7, 9]  # the 20 "normal" steps below 0.5, 0.5-2, above 2


def test_window_edges_are_checked():
    for bad in ([0.0], [-1.0], [1.0, 1.0]):
        with pytest.raises(ValueError, match="distinct positive"):
            windows_from_edges(bad)


@pytest.mark.slow
def test_command_refuses_training_scene_seeds():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "experiments.sigma_windows", "--scene-seed", "4242"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "4242" in proc.stderr and "Pick another --scene-seed" in proc.stderr
