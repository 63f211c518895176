"""Headless training under torchrun: 2 processes on the gloo backend (CPU) equal 1 process with the same global
batch (issue 26 item 4). The demo model seeds each prompt's latents by its text, so sharded sampling draws the same
latents; what remains is the order of float additions in the summed gradients and losses."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from safecfg_core.demo.train_hgr import training_prompts
from safecfg_core.hgr import HGRBundle

REPO = Path(__file__).resolve().parents[2]
# Stated tolerance: after 4 AdamW steps the weights of the 1- and 2-process runs agree to 1e-5 (absolute, weights
# of order 0.1); Adam divides by the root of the squared-gradient average, which turns float-order noise in the
# gradients into at most ~lr * 1e-3 per step.
WEIGHT_ATOL = 1e-5


def _train(tmp: Path, out: str, nproc: int) -> subprocess.CompletedProcess:
    args = ["-m", "safecfg_core", "train", "--model", "demo", "--prompts", str(tmp / "prompts.json"), "--steps", "4",
            "--batch-size", "8", "--out", str(tmp / out), "--log-every", "1"]
    launcher = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                    "--nproc_per_node", str(nproc)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(launcher + args, cwd=tmp, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_two_gloo_processes_equal_one_with_the_same_global_batch(tmp_path: Path) -> None:
    (tmp_path / "prompts.json").write_text(json.dumps(training_prompts(8, 8, rewrites=True).to_dict()))
    one = _train(tmp_path, "one.safetensors", 1)
    assert one.returncode == 0, one.stdout + one.stderr
    two = _train(tmp_path, "two.safetensors", 2)
    assert two.returncode == 0, two.stdout + two.stderr
    assert "2 processes" in two.stdout and two.stdout.count("saved ") == 1  # rank 0 alone prints and writes
    a, b = HGRBundle.load(tmp_path / "one.safetensors"), HGRBundle.load(tmp_path / "two.safetensors")
    wa, wb = a.net.state_dict(), b.net.state_dict()
    moved = max(float((wa[k] - HGRBundle.create(a.config, a.meta, seed=0).net.state_dict()[k]).abs().max())
                for k in wa)
    assert moved > 1e-4  # training changed the weights, so equal weights say something
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], atol=WEIGHT_ATOL, rtol=0)
    ta, tb = a.meta.training, b.meta.training
    assert ta["fingerprint"] == tb["fingerprint"]  # the process count is not a result setting
    assert ta["denoiser_rows"] == tb["denoiser_rows"]  # every rank's model rows are counted
    assert abs(ta["final_loss"] - tb["final_loss"]) < 1e-5
    assert abs(a.meta.threshold - b.meta.threshold) <= 1e-4 * a.meta.threshold



# One run through the core session, under torchrun or alone: argv = folder, output name, checkpoint name, the
# step after which every rank cancels (0: none; a checkpoint of the same settings is resumed).
SESSION_SCRIPT = """
import json, sys
from pathlib import Path
import torch
torch.set_num_threads(1)
from safecfg_core.demo.train_hgr import load_demo_setup
from safecfg_core.errors import TrainingCancelled
from safecfg_core.train import PromptSet, TrainConfig, TrainingSession
from safecfg_core.train.ddp import DistContext

tmp, out, ckpt, cancel_after = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
setup = load_demo_setup(8, 8)
prompts = PromptSet.from_dict(json.loads((tmp / "prompts.json").read_text()))
config = TrainConfig(steps=4, batch_size=8, cfg_scale=setup.cfg_scale, checkpoint_path=str(tmp / ckpt),
                     checkpoint_every=100, resume=True, model_id=setup.model_id,
                     sigma_min=setup.sigma_range[0], sigma_max=setup.sigma_range[1])
progress = (lambda p: not (p.phase == "train" and p.step >= cancel_after)) if cancel_after else None
session = TrainingSession(setup.text_encoder, setup.denoiser, prompts, config, setup.hgr_config,
                          output_path=tmp / out, sample_latents=setup.sample_latents, progress=progress,
                          dist=DistContext.from_env("gloo"))
try:
    session.run()
    print("finished")
except TrainingCancelled as exc:
    print("cancelled at", exc.step)
"""


def _session(tmp: Path, nproc: int, out: str, ckpt: str, cancel_after: int) -> subprocess.CompletedProcess:
    launcher = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                    "--nproc_per_node", str(nproc)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    (tmp / "session.py").write_text(SESSION_SCRIPT)
    return subprocess.run(launcher + [str(tmp / "session.py"), str(tmp), out, ckpt, str(cancel_after)], cwd=tmp,
                          env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_two_processes_resume_a_cancelled_run_like_one_uninterrupted(tmp_path: Path) -> None:
    (tmp_path / "prompts.json").write_text(json.dumps(training_prompts(8, 8, rewrites=True).to_dict()))
    plain = _session(tmp_path, 1, "plain.safetensors", "plain.ckpt.safetensors", 0)
    assert plain.returncode == 0 and "finished" in plain.stdout, plain.stdout + plain.stderr
    cut = _session(tmp_path, 2, "resumed.safetensors", "resume.ckpt.safetensors", 2)
    assert cut.returncode == 0 and cut.stdout.count("cancelled at 2") == 2, cut.stdout + cut.stderr
    assert HGRBundle.load(tmp_path / "resume.ckpt.safetensors").meta.training["checkpoint_step"] == 2  # rank 0 wrote it
    assert not (tmp_path / "resumed.safetensors").exists()
    rest = _session(tmp_path, 2, "resumed.safetensors", "resume.ckpt.safetensors", 0)
    assert rest.returncode == 0 and "finished" in rest.stdout, rest.stdout + rest.stderr
    a, b = HGRBundle.load(tmp_path / "plain.safetensors"), HGRBundle.load(tmp_path / "resumed.safetensors")
    assert b.meta.training["resumed_from"] == 2
    wa, wb = a.net.state_dict(), b.net.state_dict()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], atol=WEIGHT_ATOL, rtol=0)
