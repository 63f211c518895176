"""`python -m safecfg_core bench --quick` completes and prints its tables (numbers are not checked), for the demo
model and for ComfyUI's own DiT-family denoisers (SD3.5, Qwen-Image, Wan 2.1, Chroma, Lumina 2)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
ROWS = ("plain CFG", "SafeCFG (HGR + CFG)", "negative prompt (concepts)", "SLD MEDIUM")


def _bench(tmp_path: Path, *args: str, pythonpath=(), timeout: int = 240):
    out_json = tmp_path / "bench.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(REPO_ROOT), *map(str, pythonpath)]))
    proc = subprocess.run(
        [sys.executable, "-m", "safecfg_core", "bench", "--quick", "--device", "cpu", "--json", str(out_json), *args],
        capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=timeout,
    )
    assert proc.returncode == 0, f"bench failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout, json.loads(out_json.read_text())


@pytest.mark.slow
def test_bench_quick_prints_the_table(tmp_path):
    out, data = _bench(tmp_path)
    assert "| method | passes/step | median |" in out
    for label in ROWS:
        assert f"| {label} |" in out, f"row {label!r} missing from:\n{out}"
    assert "HGR per prompt" in out and "HGR training:" in out
    rows = data["models"][0]["rows"]
    assert [r["method"] for r in rows] == ["cfg", "safecfg", "negprompt", "sld"]
    assert rows[0]["ratio_to_cfg"] == 1.0
    # the presets' projected wall time, from the measured sampling step and training row
    assert "| preset | latent prompts x sampler steps |" in out
    proj = data["models"][0]["preset_projection"]
    assert set(proj["presets"]) == {"quick", "standard", "thorough"}
    quick, thorough = proj["presets"]["quick"], proj["presets"]["thorough"]
    assert 0 < quick["total_s"] < thorough["total_s"]
    assert quick["train_s"] == pytest.approx(quick["steps"] * quick["batch_size"] * proj["train_row_s"])
    assert quick["latents_s"] == pytest.approx(quick["latent_prompts"] * quick["sample_steps"] * proj["sample_step_s"])


DIT_CLASSES = {"sd3": "SD3", "qwen_image": "QwenImage", "wan21": "WAN21_T2V", "wan22": "WAN22_T2V", "chroma": "Chroma",
               "lumina2": "Lumina2", "hidream": "HiDream"}


def _comfy_shims(comfyui_root: Path):
    """The torchvision/torchaudio placeholders the test server uses (tests/comfy/conftest.py)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_safecfg_bench_comfy_conftest",
                                                  REPO_ROOT / "tests" / "comfy" / "conftest.py")
    comfy_conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(comfy_conftest)  # type: ignore[union-attr]
    return comfy_conftest.shim_paths_for(comfyui_root)


# Parameters of the released models (SD3.5 Large 8.1B, Qwen-Image 20B, Wan 2.1 T2V 14B, Wan 2.2 TI2V 5B, Chroma 8.9B,
# Lumina Image 2.0 2.6B, HiDream-I1 17B), in billions, +-3%.
REAL_BILLIONS = {"sd3": 8.1, "qwen_image": 20.4, "wan21": 14.3, "wan22": 5.0, "chroma": 8.9, "lumina2": 2.6,
                 "hidream": 17.1}


@pytest.mark.slow
@pytest.mark.comfyui
def test_full_size_dit_configs_are_the_released_models(comfyui_root):
    """The GPU path's configurations, built on the meta device (no memory): ComfyUI's detection turns the keys into
    the family's class with the released model's size."""
    script = (
        "import sys, torch\n"
        "from safecfg_core.bench.comfy_dit import build_model\n"
        "from safecfg_core.bench.comfy_unet import import_comfy\n"
        "import_comfy(sys.argv[1], torch.device('cpu'))\n"
        "for fam in sys.argv[2:]:\n"
        "    m = build_model(fam, torch.device('meta'), torch.bfloat16, quick=False, init=False)\n"
        "    n = sum(p.numel() for p in m.diffusion_model.parameters())\n"
        "    print(fam, type(m.model_config).__name__, n)\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), *map(str, _comfy_shims(comfyui_root))]))
    proc = subprocess.run([sys.executable, "-c", script, str(comfyui_root), *REAL_BILLIONS], capture_output=True,
                          text=True, env=env, cwd=REPO_ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = {line.split()[0]: line.split()[1:] for line in proc.stdout.splitlines() if line.strip()}
    for family, billions in REAL_BILLIONS.items():
        cls, n = got[family]
        assert cls == DIT_CLASSES[family]
        assert int(n) / 1e9 == pytest.approx(billions, rel=0.03), (family, int(n))


@pytest.mark.slow
@pytest.mark.comfyui
def test_bench_quick_times_comfyui_dit_families(tmp_path, comfyui_root):
    """Each DiT family is built as ComfyUI's own supported-model class (its reduced --quick config), sampled with
    every method and trained through. Chroma in ComfyUI 0.3.64 adds in place inside its blocks, so autograd cannot
    train through it: the bench reports that instead of a figure."""
    out, data = _bench(tmp_path, "--models", ",".join(DIT_CLASSES), "--comfyui", str(comfyui_root), "--reps", "1",
                       "--train-steps", "2", pythonpath=_comfy_shims(comfyui_root), timeout=900)
    models = {m["model"]: m for m in data["models"]}
    assert list(models) == list(DIT_CLASSES)
    for family, comfy_class in DIT_CLASSES.items():
        m = models[family]
        assert f"({comfy_class}: ComfyUI's" in m["description"], m["description"]
        assert [r["method"] for r in m["rows"]] == ["cfg", "safecfg", "negprompt", "sld"]
        assert all(r["median_s"] > 0 for r in m["rows"])
        assert m["hgr_description"].startswith(f"HGR {family}:"), m["hgr_description"]
        training = m["training"]
        if family == "chroma":
            assert "inplace" in training.get("error", ""), training
        else:
            assert training["prompts_per_s"] > 0, training
            assert m["preset_projection"]["presets"]["standard"]["total_s"] > 0
    for label in ROWS:
        assert out.count(f"| {label} |") == len(DIT_CLASSES)


def test_random_init_fills_loaded_buffers_and_keeps_computed_ones():
    """A tensor a checkpoint would load is initialised even when the model keeps it as a buffer made with
    ``torch.empty`` (ComfyUI's MMDiT ``pos_embed``: uninitialised memory, sometimes NaN); a non-persistent buffer (a
    value the model computes itself) is left as it is."""
    from safecfg_core.bench.comfy_unet import random_init

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = torch.nn.Linear(4, 4)
            self.register_buffer("pos_embed", torch.full((1, 6, 4), float("nan")))
            self.register_buffer("freqs", torch.arange(3.0), persistent=False)

    a, b = Net(), Net()
    random_init(a, torch.device("cpu"))
    random_init(b, torch.device("cpu"))
    assert torch.isfinite(a.pos_embed).all() and a.pos_embed.abs().sum() > 0
    assert torch.equal(a.pos_embed, b.pos_embed) and torch.equal(a.proj.weight, b.proj.weight)  # seeded
    assert torch.equal(a.freqs, torch.arange(3.0))
