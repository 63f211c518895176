"""Train HGR through a DiT family (SD3.5) in a real ComfyUI server, on CPU at 64x64.

The graph is ``UNETLoader`` (ComfyUI's MMDiT with one joint block, loaded as SD3 by ComfyUI's detection) + the
test-only reduced SD3 text encoder (ComfyUI's CLIP-L, CLIP-G and T5-XXL classes at reduced depth, see
``dit_nodes``) -> Train HGR. Training runs the model's own CFG samples (16-channel latents, SD3's pooled vector
as ``y``) and backpropagates through the MMDiT into the HGR; the saved file must load back as an SD3 HGR with
both widths, its loss must have fallen, and the server must sample with it through SafeCFG.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

if "_safecfg_dit_fixtures" not in sys.modules:  # --import-mode=importlib: the helper module is loaded by path, once
    _spec = importlib.util.spec_from_file_location("_safecfg_dit_fixtures", Path(__file__).with_name("dit_fixtures.py"))
    sys.modules["_safecfg_dit_fixtures"] = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(sys.modules["_safecfg_dit_fixtures"])  # type: ignore[union-attr]
fx = sys.modules["_safecfg_dit_fixtures"]
dit_files, dit_server = fx.dit_files, fx.dit_server  # fixtures

pytestmark = [pytest.mark.comfyui, pytest.mark.slow]

STEPS = 16


def _train_graph(name: str) -> dict:
    g = fx.loaders("sd3")
    del g["3"]  # no VAE: training works on latents
    g["30"] = {"class_type": "SafeCFGTrainHGR", "inputs": {
        "model": ["1", 0], "clip": ["2", 0],
        "clean_prompts": "a large blue circle on a yellow background\na small green square on black",
        "harmful_prompts": "gore: a bloody blue circle on white\nweapon: a knife next to a purple triangle",
        "concepts": "gore: blood, gore\nweapon: knife, weapon",
        "steps": STEPS, "lr": 0.003, "batch_size": 4, "seed": 0, "name": name,
        "sample_steps": 2, "sample_cfg": 4.0, "width": 64, "height": 64, "retrain": True,
        "robustness_augmentation": False}}
    g["31"] = {"class_type": "PreviewImage", "inputs": {"images": ["30", 1]}}
    return g


def test_train_hgr_through_sd3_saves_an_sd3_hgr_whose_loss_fell(dit_server):
    from safecfg_core.hgr import HGRBundle

    fx.run_ok(dit_server, _train_graph("sd3_trained"))
    bundle = HGRBundle.load(dit_server.hgr_dir / "sd3_trained.safetensors")
    cfg = bundle.config
    assert (cfg.model_family, cfg.token_dim, cfg.pooled_dim) == ("sd3", 4096, 2048)
    history = [float(v) for v in bundle.meta.training["loss_history"]]
    assert len(history) >= 4, history
    first, last = sum(history[:3]) / 3, sum(history[-3:]) / 3
    assert last < first, f"the loss did not fall: {history}"

    # the trained file drives SafeCFG on the model it was trained for
    g = fx.sampling_graph("sd3", "a bloody blue circle on white", hgr="sd3_trained.safetensors",
                          safecfg={"gate_mode": "always"}, prefix="sd3_trained")
    latent = fx.saved_latent(dit_server, fx.run_ok(dit_server, g))
    assert latent.shape[1] == 16
