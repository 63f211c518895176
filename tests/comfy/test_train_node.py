"""Train HGR (SafeCFG) in the real server: corpus -> quick preset -> report, on the demo model (issue 26 item 5)."""
from __future__ import annotations

import json
import textwrap
import time

import pytest

from safecfg_core.corpus import builtin_records
from safecfg_core.hgr import HGRBundle

from pack_scripts import PACK_PREAMBLE, run_in_comfyui

from .test_server import run_error

NODE = "SafeCFGTrainHGRPreset"


def _graph(name: str, prompts: str = "built-in corpus (real models)", categories: str = "violence",
           preset: str = "quick") -> dict:
    return {
        "1": {"class_type": "SafeCFGDemoModel", "inputs": {"variant": "demo"}},
        "30": {"class_type": NODE, "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "prompts": prompts, "categories": categories, "preset": preset,
            "name": name, "seed": 0, "retrain": False}},
    }


def _choices(server, node: str, widget: str) -> list:
    spec = server.get(f"/object_info/{node}")[node]["input"]
    spec = {**spec.get("required", {}), **spec.get("optional", {})}[widget]
    return list(spec[0]) if isinstance(spec[0], list) else list(spec[1]["options"])


@pytest.mark.slow
def test_quick_preset_trains_from_the_corpus_and_reports(comfy_server):
    t0 = time.monotonic()
    entry = comfy_server.run(_graph("ci_quick"), timeout=900)  # ~2 min idle; shared CI cores are slower
    wall = time.monotonic() - t0
    assert comfy_server.succeeded(entry), comfy_server.error_message(entry)
    saved = comfy_server.hgr_dir / "ci_quick.safetensors"
    bundle = HGRBundle.load(saved)
    assert sorted(bundle.meta.categories) == ["violence"]
    assert bundle.meta.training["steps"] == 40  # the quick preset reached the trainer
    # the robustness recipe is the default: dressed prompts on both sides, broad calibration (64 plain + dressed)
    assert bundle.meta.training["n_clean"] > 32 and bundle.meta.training["n_harmful"] > 12
    assert bundle.meta.calibration["n_clean"] > 64

    # the report on the node (text preview) and beside the file, judged on the corpus' held-out split
    shown = entry["outputs"]["30"]["text"][0]
    heldout = builtin_records("heldout")  # the quick preset judges on up to 64 clean and 24 per category
    n_clean = min(64, sum(1 for r in heldout if not r.categories))
    n_violence = min(24, sum(1 for r in heldout if r.categories and r.categories[0] == "violence"))
    report = json.loads((comfy_server.hgr_dir / "ci_quick.report.json").read_text())["heldout"]
    assert (report["n_clean"], report["n_harmful"]) == (n_clean, n_violence)
    assert f"of {n_clean} " in shown and f"of {n_violence} " in shown
    assert "left identical" in shown and "redirected" in shown and "ROC AUC" in shown, shown
    for key in ("clean_closed", "harmful_redirected", "roc_auc"):
        assert 0.0 <= report[key] <= 1.0
    assert f"{report['roc_auc']:.3f}" in shown
    assert (comfy_server.hgr_dir / "ci_quick.report.md").read_text().startswith("# HGR ci_quick.safetensors")
    assert entry["outputs"]["30"]["images"], "the loss curve is previewed on the node"

    # Load HGR lists the new file without a restart; the report files are not listed as HGRs
    listed = _choices(comfy_server, "SafeCFGLoadHGR", "hgr_name")
    assert "ci_quick.safetensors" in listed and not any("report" in f for f in listed), listed
    print(f"quick preset on the demo model, whole graph: {wall:.0f} s")


def test_prompt_files_are_listed_and_checked_before_training(comfy_server):
    folder = comfy_server.workdir / "models" / "hgr_prompts"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "mine.txt").write_text("violence: a man stabbing a stranger => a man greeting a stranger\n"
                                     "violence: a bloody street fight => a street dance\n"
                                     "clean: a bowl of ramen\nclean: a cat on a sofa\n", encoding="utf-8")
    assert "mine.txt" in _choices(comfy_server, NODE, "prompts")  # listed without a restart
    msg = run_error(comfy_server, _graph("mine_bad", prompts="mine.txt", categories="sexual"))
    assert "SafeCFG Train HGR:" in msg and "sexual" in msg and "violence" in msg, msg
    assert not (comfy_server.hgr_dir / "mine_bad.safetensors").exists()
    # the concept lines beside the file are read with it (and are not a prompt source of their own): a bad setting
    # there stops the run before anything is encoded, naming the file and the line
    (folder / "mine.concepts.txt").write_text("violence: blood, stabbing | gain=20\n", encoding="utf-8")
    assert "mine.concepts.txt" not in _choices(comfy_server, NODE, "prompts")
    msg = run_error(comfy_server, _graph("mine_gain", prompts="mine.txt", categories="violence"))
    assert "mine.concepts.txt" in msg and "line 1" in msg and "gain must be from 1 to 10" in msg, msg
    assert not (comfy_server.hgr_dir / "mine_gain.safetensors").exists()
    # a training image size the VAE could never make is refused before anything is encoded, saying what to use
    (folder / "mine.concepts.txt").unlink()
    graph = _graph("mine_size", prompts="mine.txt", categories="violence")
    graph["30"]["inputs"]["image_size"] = 60
    msg = run_error(comfy_server, graph)
    assert "training image width 60: use a multiple of 8 of at least 16" in msg, msg
    assert not (comfy_server.hgr_dir / "mine_size.safetensors").exists()


NODE_PARTS_SCRIPT = PACK_PREAMBLE + textwrap.dedent(r'''
    import os
    from pathlib import Path
    import comfy.model_management as mm
    import folder_paths
    from safecfg_pack.nodes.train_parts import NodeProgress, encoder_and_config
    from safecfg_pack.safecfg_core.train import TrainProgress
    from safecfg_pack.safecfg_core.train.progress import RunEstimate
    model, clip, vae = N["SafeCFGDemoModel"].execute("demo").args
    out = {}
    # the encoder the Train HGR nodes build: with the hook, a new prompt checks Cancel before it is encoded
    encoder, _ = encoder_and_config(model, clip)
    shown = []
    progress = NodeProgress(RunEstimate(10, 4, 2), None)
    progress._show = shown.append
    encoder.on_encode = progress.before_encoding
    encoder(["a red star on blue", "a green circle on white"])
    progress(TrainProgress(0, 2, phase="encode"))  # what the trainer reports before its first chunk of prompts
    out["shown"] = shown[:]
    mm.interrupt_current_processing(True)
    try:
        encoder(["a red star on blue"])  # memoised: nothing to encode, nothing to stop
        out["memo_while_cancelled"] = "returned"
        encoder(["a new prompt, never encoded"])
        out["new_while_cancelled"] = "returned"
    except mm.InterruptProcessingException:
        out["new_while_cancelled"] = "interrupted"
    out["flag_cleared"] = not mm.processing_interrupted()
    # the preset node cancelled before its first step: the corpus encoding stops it, nothing is sampled or written
    calls, encoded = [], []
    model.model.diffusion_model.register_forward_hook(lambda *a: calls.append(1))
    encode_from_tokens = clip.encode_from_tokens
    def counting(*a, **k):
        encoded.append(1)
        return encode_from_tokens(*a, **k)
    clip.encode_from_tokens = counting
    mm.interrupt_current_processing(True)
    try:
        N["SafeCFGTrainHGRPreset"].execute(model, clip, "built-in corpus (real models)", "violence", "quick",
                                          "cancel_while_encoding", 0, False)
        out["node"] = "finished"
    except mm.InterruptProcessingException:
        out["node"] = "interrupted"
    out["denoiser_calls"], out["prompts_encoded"] = len(calls), len(encoded)
    hgr_dir = folder_paths.get_folder_paths("hgr")[0]
    out["written"] = sorted(f for f in os.listdir(hgr_dir) if f.startswith("cancel_while_encoding"))
    out["checkpoints"] = sorted(str(p) for p in Path(folder_paths.get_output_directory()).rglob(
        "cancel_while_encoding*"))
    # a pickled checkpoint is refused by name before ComfyUI's loader could unpickle it
    import pickle, tempfile
    from safecfg_pack.nodes.train_parts import load_checkpoint
    from safecfg_pack.safecfg_core.errors import TrainingInputError
    folder = Path(tempfile.mkdtemp())
    marker = folder / "unpickled"
    class Trap:
        def __reduce__(self):
            return (open, (str(marker), "w"))
    (folder / "model.ckpt").write_bytes(pickle.dumps(Trap()))
    try:
        load_checkpoint(folder / "model.ckpt")
        out["pickle"] = "loaded"
    except TrainingInputError as exc:
        out["pickle"] = str(exc)
    out["unpickled"] = marker.exists()
    print("RESULT " + json.dumps(out))
''')


@pytest.fixture(scope="module")
def node_parts_run(comfyui_root):
    """One interpreter running the script above (the demo model loads once for both tests)."""
    return run_in_comfyui(comfyui_root, NODE_PARTS_SCRIPT)


@pytest.mark.slow
def test_cancel_while_the_corpus_is_encoded_stops_before_any_step(node_parts_run):
    res = node_parts_run
    assert res["shown"] == ["encoding the prompts 0/2 (0% of the run)"], res
    assert res["memo_while_cancelled"] == "returned", res
    assert res["new_while_cancelled"] == "interrupted" and res["flag_cleared"], res
    assert res["node"] == "interrupted", res
    # only the empty prompt that probes the encoder's widths; before, all ~180 prompts were encoded first
    assert res["prompts_encoded"] == 1 and res["denoiser_calls"] == 0, res
    assert res["written"] == [] and res["checkpoints"] == [], res


@pytest.mark.slow
def test_the_headless_loader_refuses_a_pickled_checkpoint_unopened(node_parts_run):
    res = node_parts_run
    assert "is not a .safetensors file" in res["pickle"] and not res["unpickled"], res
