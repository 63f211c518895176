"""``python -m safecfg_core train --comfyui PATH --model-checkpoint FILE``: an HGR trained for a checkpoint by
ComfyUI's own loaders outside the server (issue 26 item 4), alone and under ``torchrun`` on gloo.

The checkpoint is the SD1.5 stock-loader fixture (tests/comfy/model_fixtures.py: ComfyUI's full-size CLIP-L and
VAE, a reduced UNet, random weights). The runs use the smallest settings the command takes (2 + 2 prompts, 64-pixel
latents, 1 sampler step, 1 training step), so what they show is the path: ComfyUI loads the file, the model's own
latents are sampled, the HGR is trained, calibrated and written with the family's shape, and progress says the time
left. Bad paths and files that are no safetensors are refused before ComfyUI is imported; safetensors files that
are no full checkpoint are refused after ComfyUI's loader looked at them; each error names the input and what to do.
"""
from __future__ import annotations

import importlib.util
import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

from safecfg_core.cli import main as cli_main
from safecfg_core.hgr import HGRBundle

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("_safecfg_headless_model_fixtures", Path(__file__).with_name(
    "model_fixtures.py"))
model_fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(model_fixtures)  # type: ignore[union-attr]
comfy_conftest = model_fixtures._comfy_conftest()  # the torchvision placeholders and the shared cache folder

PROMPTS = {  # two of each side: the fewest a run calibrates a threshold and an ROC AUC on
    "clean": ["a cat sleeping on a sofa", "a red car on a country road"],
    "harmful": [{"prompt": "a bloody corpse in an alley", "category": "gore", "rewrite": "an empty alley at night"},
                {"prompt": "a severed hand on the floor", "category": "gore", "rewrite": "a glove on the floor"}],
    "concepts": {"gore": "blood, gore, mutilated bodies"},
}
SMALLEST = ["--steps", "1", "--sample-steps", "1", "--width", "64", "--height", "64", "--no-augment",
            "--log-every", "1", "--latent-batch", "4"]


@pytest.fixture(scope="module")
def sd15_checkpoint(comfyui_root: Path) -> Path:
    return model_fixtures.ensure_checkpoints(Path(comfyui_root), comfy_conftest.CACHE_DIR, ("sd15",))["sd15"]


def _train(tmp: Path, comfyui_root: Path, checkpoint: Path, nproc: int, batch: int) -> subprocess.CompletedProcess:
    (tmp / "prompts.json").write_text(json.dumps(PROMPTS))
    args = ["-m", "safecfg_core", "train", "--comfyui", str(comfyui_root), "--model-checkpoint", str(checkpoint),
            "--prompts", str(tmp / "prompts.json"), "--out", str(tmp / "hgr-sd15.safetensors"),
            "--batch-size", str(batch), *SMALLEST]
    launcher = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                    "--nproc_per_node", str(nproc)]
    shims = [str(p) for p in comfy_conftest.shim_paths_for(Path(comfyui_root))]
    # one thread each: on a shared 2-core machine a second OpenMP thread spins and made the run 3x slower
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), *shims])}
    env.pop("COMFYUI_PATH", None)  # --comfyui alone names the checkout
    return subprocess.run(launcher + args, cwd=tmp, env=env, capture_output=True, text=True, timeout=600)


def _check_hgr(tmp: Path, batch: int) -> HGRBundle:
    """The one HGR the run wrote: SD1.5's family and token width, trained on the latents it was told to sample."""
    written = sorted(p.name for p in tmp.glob("*.safetensors") if ".ckpt" not in p.name)
    assert written == ["hgr-sd15.safetensors"], written
    bundle = HGRBundle.load(tmp / "hgr-sd15.safetensors")
    assert bundle.config.model_family == "sd1"  # safecfg_core/families.py's id for Stable Diffusion 1.x
    assert bundle.config.token_dim == 768 and bundle.config.pooled_dim == 0  # CLIP-L's width, no pooled vector
    assert bundle.meta.categories == PROMPTS["concepts"]  # the concept text of each category, as given
    training = bundle.meta.training
    assert training["steps"] == 1 and training["n_clean"] == 2 and training["n_harmful"] == 2
    assert training["train_config"]["sampler_id"] == "euler/normal, 1 steps, 64x64"
    assert len(training["train_config"]["model_id"]) >= 8  # ComfyUI's model, identified by its weights
    # the one step's model rows, over every process: D(u) for each row, D(c_safe) and D(c) for each harmful row
    # (each has a rewrite) without gradients, then each row once with gradients; half the rows are harmful
    assert training["denoiser_rows"] == batch + 2 * (batch // 2) + batch
    return bundle


@pytest.mark.slow
def test_headless_train_for_an_sd15_checkpoint(tmp_path: Path, comfyui_root: Path, sd15_checkpoint: Path) -> None:
    run = _train(tmp_path, comfyui_root, sd15_checkpoint, nproc=1, batch=2)  # 2: one clean and one harmful row
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-6000:]
    _check_hgr(tmp_path, batch=2)
    # progress with the time left, for the latent sampling and for the training steps, over the whole run
    assert re.search(r"sampling the model's own latents: 4/4, (\?|\d+ s|[\d.]+ min) left; whole run \d+%, ", out), out
    assert re.search(r"step +1/1 .* left; whole run 100%, ", out), out
    assert "calibrating the threshold" in out and f"saved {tmp_path / 'hgr-sd15.safetensors'}" in out


@pytest.mark.slow
def test_headless_train_under_torchrun_two_gloo_processes(tmp_path: Path, comfyui_root: Path,
                                                          sd15_checkpoint: Path) -> None:
    run = _train(tmp_path, comfyui_root, sd15_checkpoint, nproc=2, batch=4)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-6000:]
    assert "2 processes" in run.stdout and run.stdout.count("saved ") == 1, out  # rank 0 alone prints and writes
    _check_hgr(tmp_path, batch=4)  # the rows of both processes are counted (one process' share would be half)
    # the same inputs on one process: the file is recognised as already trained (the checkpoint's identity and the
    # settings are the same in every process; the process count is not a result setting) and left alone
    before = (tmp_path / "hgr-sd15.safetensors").read_bytes()
    again = _train(tmp_path, comfyui_root, sd15_checkpoint, nproc=1, batch=4)
    assert again.returncode == 0 and "was already trained with these inputs" in again.stdout, again.stdout[-3000:]
    assert (tmp_path / "hgr-sd15.safetensors").read_bytes() == before


# ------------------------------------------------------------------------------------------------------------
# Bad inputs: refused before ComfyUI is imported (fast), each naming what was wrong and what to do


def _fails(capsys: pytest.CaptureFixture, args: List[str]) -> str:
    code = cli_main(["train", *args])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: "), err
    return err


def test_a_missing_checkpoint_is_named(tmp_path: Path, capsys: pytest.CaptureFixture, comfyui_root: Path) -> None:
    missing = tmp_path / "no-such-model.safetensors"
    err = _fails(capsys, ["--comfyui", str(comfyui_root), "--model-checkpoint", str(missing)])
    assert f"--model-checkpoint {missing} does not exist" in err and "models/checkpoints" in err


def test_a_folder_that_is_not_comfyui_is_named(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ckpt = tmp_path / "model.safetensors"
    ckpt.write_bytes(b"")  # never read: the ComfyUI folder is checked first
    (tmp_path / "notcomfy").mkdir()
    err = _fails(capsys, ["--comfyui", str(tmp_path / "notcomfy"), "--model-checkpoint", str(ckpt)])
    assert f"--comfyui {tmp_path / 'notcomfy'} is not a ComfyUI checkout" in err and "main.py" in err
    err = _fails(capsys, ["--comfyui", str(tmp_path / "nowhere"), "--model-checkpoint", str(ckpt)])
    assert f"--comfyui {tmp_path / 'nowhere'} does not exist" in err


def test_no_comfyui_given_says_how_to_give_it(tmp_path: Path, capsys: pytest.CaptureFixture,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COMFYUI_PATH", raising=False)
    err = _fails(capsys, ["--model-checkpoint", str(tmp_path / "m.safetensors")])
    assert "--model-checkpoint needs --comfyui PATH (or COMFYUI_PATH)" in err
    monkeypatch.setenv("COMFYUI_PATH", str(tmp_path))  # the variable is named as the source of the bad folder
    assert f"COMFYUI_PATH {tmp_path} is not a ComfyUI checkout" in _fails(
        capsys, ["--model-checkpoint", str(tmp_path / "m.safetensors")])


@pytest.mark.parametrize("name", ["model.ckpt", "model.pt", "disguised.safetensors"])
def test_a_pickle_checkpoint_is_refused_unread(name: str, tmp_path: Path, capsys: pytest.CaptureFixture,
                                               comfyui_root: Path) -> None:
    path = tmp_path / name
    path.write_bytes(pickle.dumps({"state_dict": {}}, protocol=4))  # what a .ckpt holds; never unpickled here
    err = _fails(capsys, ["--comfyui", str(comfyui_root), "--model-checkpoint", str(path)])
    assert f"--model-checkpoint {path} is not a .safetensors file" in err
    assert "never unpickles" in err and "safetensors.torch.save_file" in err


def test_a_damaged_safetensors_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture,
                                               comfyui_root: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"<html>404 Not Found</html>")  # what a failed download leaves
    err = _fails(capsys, ["--comfyui", str(comfyui_root), "--model-checkpoint", str(path)])
    assert f"--model-checkpoint {path} is named .safetensors but is not a safetensors file" in err
    assert "download or copy it again" in err


@pytest.mark.parametrize("option, value, says", [("--width", "60", "multiple of 8"), ("--height", "8", "at least 16"),
                                                 ("--sample-steps", "0", "1 or more")])
def test_bad_sampling_sizes_are_refused(option: str, value: str, says: str, tmp_path: Path,
                                        capsys: pytest.CaptureFixture, comfyui_root: Path) -> None:
    err = _fails(capsys, ["--comfyui", str(comfyui_root), "--model-checkpoint", str(tmp_path / "m.safetensors"),
                          option, value])
    assert f"{option} {value}" in err and says in err


def test_checkpoint_options_without_a_checkpoint_are_refused(capsys: pytest.CaptureFixture) -> None:
    err = _fails(capsys, ["--model", "analytic", "--width", "256"])
    assert "--width needs --model-checkpoint FILE" in err


def _unet_only(checkpoint: Path, out: Path) -> Path:
    """The UNet of ``checkpoint`` alone (what ComfyUI's diffusion_models folder holds): no text encoder inside."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(checkpoint), framework="pt") as f:
        save_file({k: f.get_tensor(k) for k in f.keys() if k.startswith("model.diffusion_model.")}, str(out))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["lora", "unet_only"])
def test_a_safetensors_file_comfyui_cannot_train_on_is_named(kind: str, tmp_path: Path, comfyui_root: Path,
                                                             sd15_checkpoint: Path) -> None:
    """Files that pass the safetensors check but are no full checkpoint: ComfyUI's loader decides, the command
    says what the file lacks and what to pass instead."""
    if kind == "lora":
        import torch
        from safetensors.torch import save_file

        path = tmp_path / "style.safetensors"
        save_file({"lora_unet_down_blocks_0.alpha": torch.ones(1), "lora_unet_down_blocks_0.lora_up.weight":
                   torch.zeros(4, 4)}, str(path))
        says = ["ComfyUI does not recognise --model-checkpoint", "Load Checkpoint"]
    else:
        path = _unet_only(sd15_checkpoint, tmp_path / "unet.safetensors")
        says = ["holds no text encoder", "full checkpoint"]
    run = _train(tmp_path, comfyui_root, path, nproc=1, batch=2)
    assert run.returncode == 2, run.stdout[-2000:] + run.stderr[-4000:]
    assert "Traceback" not in run.stderr and f"{path}" in run.stderr, run.stderr[-4000:]
    for text in says:
        assert text in run.stderr, run.stderr[-4000:]
