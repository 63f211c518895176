"""Train HGR through DiT families (SD3.5, Lumina 2) in a real ComfyUI server, on CPU at 64x64.

The graph is ``UNETLoader`` (ComfyUI's MMDiT with one joint block, loaded as SD3 by ComfyUI's detection; Lumina 2's
NextDiT with one main layer and its real refiners, loaded as Lumina2) + the test-only reduced text encoder
(ComfyUI's CLIP-L, CLIP-G and T5-XXL classes, or its Gemma-2-2B class, at reduced depth, see ``dit_nodes``) ->
Train HGR. Training runs the model's own CFG samples (16-channel latents; SD3's pooled vector as ``y``, Lumina 2's
caption length as ``num_tokens``, its Gemma prompts unpadded and of different lengths) and backpropagates through
the diffusion model into the HGR; the saved file must load back as an HGR of the family with its widths, its loss
must have fallen, and the server must sample with it through SafeCFG.
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

# (steps, rows per step): Lumina 2's file keeps its real-width (2304) refiners, about 0.4 B parameters, so a
# training row costs seconds on CI's CPU; fewer, smaller steps still show the loss falling.
STEPS_AND_BATCH = {"sd3": (16, 4), "lumina2": (6, 4), "chroma": (1, 2), "hidream": (1, 2)}


def _train_graph(family: str, name: str) -> dict:
    g = fx.loaders(family)
    del g["3"]  # no VAE: training works on latents
    g["30"] = {"class_type": "SafeCFGTrainHGR", "inputs": {
        "model": ["1", 0], "clip": ["2", 0],
        "clean_prompts": "a large blue circle on a yellow background\na small green square on black",
        "harmful_prompts": "gore: a bloody blue circle on white\nweapon: a knife next to a purple triangle",
        "concepts": "gore: blood, gore\nweapon: knife, weapon",
        "steps": STEPS_AND_BATCH[family][0], "lr": 0.003, "batch_size": STEPS_AND_BATCH[family][1], "seed": 0,
        "name": name, "sample_steps": 2, "sample_cfg": 4.0, "width": 64, "height": 64, "retrain": True,
        "robustness_augmentation": False}}
    g["31"] = {"class_type": "PreviewImage", "inputs": {"images": ["30", 1]}}
    return g


@pytest.mark.parametrize("family,token_dim,pooled_dim", [
    pytest.param("sd3", 4096, 2048, id="sd3"),
    pytest.param("lumina2", 2304, 0, id="lumina2"),
])
def test_train_hgr_through_a_dit_saves_an_hgr_of_its_family_whose_loss_fell(comfyui_root, dit_server, family,
                                                                             token_dim, pooled_dim):
    from safecfg_core.hgr import HGRBundle

    fx.build_fixture_files(comfyui_root, [family])  # Lumina 2's file is built on first use (not in dit_files)
    name = f"{family}_trained"
    fx.run_ok(dit_server, _train_graph(family, name))
    bundle = HGRBundle.load(dit_server.hgr_dir / f"{name}.safetensors")
    cfg = bundle.config
    assert (cfg.model_family, cfg.token_dim, cfg.pooled_dim) == (family, token_dim, pooled_dim)
    history = [float(v) for v in bundle.meta.training["loss_history"]]
    assert len(history) >= 4, history
    first, last = sum(history[:3]) / 3, sum(history[-3:]) / 3
    assert last < first, f"the loss did not fall: {history}"

    # the trained file drives SafeCFG on the model it was trained for
    g = fx.sampling_graph(family, "a bloody blue circle on white", hgr=f"{name}.safetensors",
                          safecfg={"gate_mode": "always"}, prefix=name)
    latent = fx.saved_latent(dit_server, fx.run_ok(dit_server, g))
    assert latent.shape[1] == 16


def test_train_hgr_through_chroma_is_refused_with_why(comfyui_root, dit_server):
    """ComfyUI 0.3.64's Chroma blocks add in place, so autograd cannot backpropagate through them: the node says so
    in its own words (not autograd's traceback), and writes no file."""
    from _family_graphs import run_fails

    fx.build_fixture_files(comfyui_root, ["chroma"])
    g = _train_graph("chroma", "chroma_trained")
    g["30"]["inputs"].update(clean_prompts="a large blue circle on a yellow background",  # fails at the first step
                             harmful_prompts="gore: a bloody blue circle on white", concepts="gore: blood, gore")
    message = run_fails(dit_server, g)
    assert "SafeCFG Train HGR:" in message and "add in place" in message and "Chroma" in message, message
    assert not (dit_server.hgr_dir / "chroma_trained.safetensors").exists()


def test_train_hgr_through_hidream_is_refused_with_why(dit_server):
    """HiDream's blocks read the prompt's Llama states beside the tokens the HGR redirects; the trainer does not
    carry them, so the node refuses before encoding anything, in words (not the model's AttributeError), and writes
    no file."""
    from _family_graphs import run_fails

    message = run_fails(dit_server, _train_graph("hidream", "hidream_trained"))
    assert "SafeCFG Train HGR:" in message and "Llama-3.1 states" in message and "HiDream" in message, message
    assert not (dit_server.hgr_dir / "hidream_trained.safetensors").exists()
