"""SafeCFG nodes in a real ComfyUI server (no mocks): API-format prompts over HTTP, results from /history."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from safecfg_core.demo.text_encoder import DemoTextEncoder
from safecfg_core.guidance import prompt_harm_score
from safecfg_core.hgr import HGRBundle, HGRConfig, HGRMeta

OUR_NODES = ["SafeCFGLoadHGR", "SafeCFG", "SafeCFGHarmfulnessDetector", "SafeCFGTrainHGR", "SafeCFGTrainHGRPreset",
             "SafeCFGDemoModel", "SafeCFGAlignModel"]
A = "a large blue circle on a yellow background"
B = "a bloody red star with a knife on white"


def graph(positive=A, negative="", hgr=None, safecfg=None, sampler="KSampler", seed=7, steps=3, cfg=5.0,
          sampler_name="euler", scheduler="normal", batch=1, rescale=False, prefix="t"):
    """API-format prompt: demo model -> (SafeCFG: model, positive, negative) -> sampler -> decode -> save."""
    g = {
        "1": {"class_type": "SafeCFGDemoModel", "inputs": {"variant": "untrained"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": positive, "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": negative, "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": batch}},
        "7": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "8": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": prefix}},
    }
    model, pos, neg = ["1", 0], ["2", 0], ["3", 0]
    if rescale:
        g["9"] = {"class_type": "RescaleCFG", "inputs": {"model": model, "multiplier": 0.7}}
        model = ["9", 0]
    if hgr is not None:
        g["10"] = {"class_type": "SafeCFGLoadHGR", "inputs": {"hgr_name": hgr}}
        inputs = {"model": model, "hgr": ["10", 0], "positive": pos, "negative": neg, "strength": 1.0,
                  "threshold": -1.0}
        inputs.update(safecfg or {})
        g["11"] = {"class_type": "SafeCFG", "inputs": inputs}
        model, pos, neg = ["11", 0], ["11", 1], ["11", 2]
    if sampler == "KSampler":
        g["5"] = {"class_type": "KSampler", "inputs": {
            "model": model, "seed": seed, "steps": steps, "cfg": cfg, "sampler_name": sampler_name,
            "scheduler": scheduler, "positive": pos, "negative": neg, "latent_image": ["4", 0],
            "denoise": 1.0}}
    elif sampler == "KSamplerAdvanced":
        g["5"] = {"class_type": "KSamplerAdvanced", "inputs": {
            "model": model, "add_noise": "enable", "noise_seed": seed, "steps": steps, "cfg": cfg,
            "sampler_name": sampler_name, "scheduler": scheduler, "positive": pos, "negative": neg,
            "latent_image": ["4", 0], "start_at_step": 0, "end_at_step": 10000,
            "return_with_leftover_noise": "disable"}}
    else:
        g["12"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": sampler_name}}
        g["13"] = {"class_type": "BasicScheduler", "inputs": {"model": model, "scheduler": scheduler,
                                                               "steps": steps, "denoise": 1.0}}
        if sampler == "SamplerCustom":
            g["5"] = {"class_type": "SamplerCustom", "inputs": {
                "model": model, "add_noise": True, "noise_seed": seed, "cfg": cfg, "positive": pos,
                "negative": neg, "sampler": ["12", 0], "sigmas": ["13", 0], "latent_image": ["4", 0]}}
        else:  # SamplerCustomAdvanced with a CFGGuider, or a BasicGuider (no negative pass)
            if sampler == "CFGGuider":
                g["14"] = {"class_type": "CFGGuider", "inputs": {"model": model, "positive": pos,
                                                                 "negative": neg, "cfg": cfg}}
            else:
                assert sampler == "BasicGuider", sampler
                g["14"] = {"class_type": "BasicGuider", "inputs": {"model": model, "conditioning": pos}}
            g["15"] = {"class_type": "RandomNoise", "inputs": {"noise_seed": seed}}
            g["5"] = {"class_type": "SamplerCustomAdvanced", "inputs": {
                "noise": ["15", 0], "guider": ["14", 0], "sampler": ["12", 0], "sigmas": ["13", 0],
                "latent_image": ["4", 0]}}
    return g


def run_images(server, g):
    entry = server.run(g)
    assert server.succeeded(entry), server.error_message(entry)
    return server.output_images(entry, "8")


def run_error(server, g):
    entry = server.run(g)
    assert not server.succeeded(entry), "expected the prompt to fail"
    msg = server.error_message(entry)
    assert msg, entry.get("status")
    return msg


@pytest.fixture(scope="module")
def hgr_files(comfy_server):
    """zero.safetensors (untrained HGR), gated.safetensors (non-zero output; threshold between B and A)."""
    d: Path = comfy_server.hgr_dir
    cfg = HGRConfig.for_family("demo")
    zero = HGRBundle.create(cfg, HGRMeta(categories={"gore": "blood, gore"}, threshold=0.5), seed=0)
    zero.save(d / "zero.safetensors")
    hand = HGRBundle.create(cfg, HGRMeta(categories={"gore": "blood, gore", "weapon": "knife, weapon"}), seed=1)
    with torch.no_grad():
        torch.manual_seed(3)
        for name, p in hand.net.named_parameters():
            if p.abs().sum() == 0 and p.dim() >= 1:
                p.normal_(0.0, 0.2)
    enc = DemoTextEncoder()
    c = enc([A, B])
    thresholds = {}
    order = None
    for negative in ("", "green"):
        u = enc([negative]).repeat_batch(2)
        with torch.no_grad():
            scores = prompt_harm_score(hand.net(c, u))
        sa, sb = float(scores[0]), float(scores[1])
        assert abs(sa - sb) > 1e-3 * max(sa, sb), (sa, sb)
        assert order is None or order == (sb > sa), "the hand-made HGR ranks the prompts differently per negative"
        order = sb > sa
        thresholds[negative] = (sa + sb) / 2  # the one of the two prompts above it is 'harmful'
    harmful, clean = (B, A) if order else (A, B)
    hand.meta.threshold = thresholds[""]
    hand.save(d / "gated.safetensors")
    (d / "damaged.safetensors").write_bytes((d / "gated.safetensors").read_bytes()[:500])
    import pickle

    (d / "pickled.safetensors").write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    wide = HGRBundle.create(HGRConfig.for_family("sd1"), HGRMeta(threshold=0.1), seed=0)
    wide.save(d / "sd1_width.safetensors")
    return {"harmful": harmful, "clean": clean, "thresholds": thresholds}


CATEGORIES = {"SafeCFGLoadHGR": "loaders/safecfg", "SafeCFG": "sampling/safecfg",
              "SafeCFGHarmfulnessDetector": "conditioning/safecfg", "SafeCFGTrainHGR": "training/safecfg",
              "SafeCFGTrainHGRPreset": "training/safecfg",
              "SafeCFGDemoModel": "safecfg/demo", "SafeCFGAlignModel": "training/safecfg"}


def test_object_info_lists_nodes_with_tooltips(comfy_server):
    info = comfy_server.get("/object_info")
    for node in OUR_NODES:
        assert node in info, f"{node} missing from /object_info"
        spec = info[node]
        assert spec["category"] == CATEGORIES[node]
        assert spec["display_name"]
        for section in ("required", "optional"):
            for name, value in spec["input"].get(section, {}).items():
                assert len(value) > 1 and value[1].get("tooltip"), f"{node}.{name} has no tooltip"
    assert info["SafeCFG"]["output"] == ["MODEL", "CONDITIONING", "CONDITIONING"]
    assert info["SafeCFG"]["output_name"] == ["model", "positive", "negative"]
    # the same answer without the /api prefix (2024 ComfyUI has only this one; the current one has both)
    import json as _json
    import urllib.request as _rq

    with _rq.urlopen(comfy_server.base + "/object_info/SafeCFG", timeout=30) as r:
        assert "SafeCFG" in _json.loads(r.read())
    assert info["SafeCFGHarmfulnessDetector"]["output"] == ["FLOAT", "BOOLEAN", "STRING"]
    # outputs are named in the UI by what they are, not by their type
    assert info["SafeCFGHarmfulnessDetector"]["output_name"] == ["score", "harmful", "report"]
    assert info["SafeCFGLoadHGR"]["output_name"] == ["hgr"]
    assert info["SafeCFGTrainHGR"]["output_name"] == ["hgr", "loss_curve", "summary"]


def test_zero_hgr_is_bit_identical_to_cfg(comfy_server, hgr_files):
    plain = run_images(comfy_server, graph(prefix="plain"))
    safe = run_images(comfy_server, graph(hgr="zero.safetensors", prefix="zero"))
    assert np.array_equal(plain[0], safe[0])


@pytest.mark.parametrize("sampler,sampler_name,scheduler,batch,negative,rescale", [
    ("KSampler", "euler", "normal", 1, "", False),
    ("KSamplerAdvanced", "dpmpp_2m", "karras", 2, "", False),
    ("SamplerCustom", "heun", "simple", 1, "green", False),
    ("CFGGuider", "dpmpp_2m", "karras", 2, "green", False),
    ("KSampler", "euler_ancestral", "normal", 1, "", True),
])
def test_gated_hgr_changes_harmful_keeps_clean(comfy_server, hgr_files, sampler, sampler_name, scheduler, batch,
                                               negative, rescale):
    gate = {"gate_mode": "hard"}
    if negative:  # the file's threshold was set for the empty negative; the node's threshold input overrides it
        gate["threshold"] = hgr_files["thresholds"][negative]
    kw = dict(sampler=sampler, sampler_name=sampler_name, scheduler=scheduler, batch=batch, negative=negative,
              rescale=rescale, safecfg=gate)
    for prompt, should_change in ((hgr_files["harmful"], True), (hgr_files["clean"], False)):
        plain = run_images(comfy_server, graph(positive=prompt, prefix="p", **{k: v for k, v in kw.items() if k != "safecfg"}))
        safe = run_images(comfy_server, graph(positive=prompt, hgr="gated.safetensors", prefix="s", **kw))
        assert len(plain) == len(safe) == batch
        for a, b in zip(plain, safe):
            if should_change:
                assert not np.array_equal(a, b), f"SafeCFG did not change the harmful prompt's image ({sampler})"
            else:
                assert np.array_equal(a, b), f"SafeCFG changed the clean prompt's image ({sampler})"


@pytest.mark.parametrize("hgr,expected", [
    ("damaged.safetensors", "SafeCFG Load HGR"),
    ("pickled.safetensors", "SafeCFG Load HGR"),
    ("sd1_width.safetensors", "SafeCFG SafeCFG"),
])
def test_bad_hgr_files_fail_clearly_and_server_keeps_serving(comfy_server, hgr_files, hgr, expected):
    msg = run_error(comfy_server, graph(positive=hgr_files["harmful"], hgr=hgr, prefix="bad"))
    assert expected in msg, msg
    if hgr == "sd1_width.safetensors":
        assert "768" in msg and "384" in msg, msg
    # the next prompt still works
    run_images(comfy_server, graph(prefix="after"))


def test_cfg1_refused_with_message(comfy_server, hgr_files):
    msg = run_error(comfy_server, graph(hgr="gated.safetensors", cfg=1.0, prefix="cfg1"))
    assert "cfg is 1" in msg, msg
    msg = run_error(comfy_server, graph(hgr="gated.safetensors", sampler="BasicGuider", prefix="basic"))
    assert "cfg is 1" in msg and "BasicGuider" in msg, msg
    imgs = run_images(comfy_server, graph(hgr="gated.safetensors", cfg=1.0, prefix="cfg1w",
                                          safecfg={"at_cfg_1": "warn"}))
    plain = run_images(comfy_server, graph(cfg=1.0, prefix="cfg1p"))
    assert np.array_equal(imgs[0], plain[0])


def test_negative_not_from_safecfg_refused(comfy_server, hgr_files):
    """SafeCFG's model with a negative that SafeCFG did not return (here: the prompt's own) cannot be made safe."""
    for which, slot in (("negative", ["3", 0]), ("positive", ["2", 0])):
        g = graph(positive=hgr_files["harmful"], hgr="gated.safetensors", prefix="wiring")
        g["5"]["inputs"][which] = slot
        msg = run_error(comfy_server, g)
        assert f"the sampler's {which} conditioning is not the one this SafeCFG node returned" in msg, msg
    # from a second SafeCFG node (another HGR) it is refused too
    g = graph(positive=hgr_files["harmful"], hgr="gated.safetensors", prefix="wiring2")
    g["16"] = {"class_type": "SafeCFGLoadHGR", "inputs": {"hgr_name": "zero.safetensors"}}
    g["17"] = {"class_type": "SafeCFG", "inputs": dict(g["11"]["inputs"], hgr=["16", 0])}
    g["5"]["inputs"]["negative"] = ["17", 2]
    assert "is not the one this SafeCFG node returned" in run_error(comfy_server, g)


def test_conditioning_nodes_after_safecfg_keep_it_active(comfy_server, hgr_files):
    """Nodes that set options on SafeCFG's negative (here a timestep range over the whole run) keep the redirected
    tensors and SafeCFG's mark: the run succeeds with the same image."""
    g = graph(positive=hgr_files["harmful"], hgr="gated.safetensors", safecfg={"gate_mode": "hard"}, prefix="rng0")
    direct = run_images(comfy_server, g)
    g = graph(positive=hgr_files["harmful"], hgr="gated.safetensors", safecfg={"gate_mode": "hard"}, prefix="rng1")
    g["16"] = {"class_type": "ConditioningSetTimestepRange", "inputs": {"conditioning": ["11", 2], "start": 0.0,
                                                                       "end": 1.0}}
    g["5"]["inputs"]["negative"] = ["16", 0]
    assert np.array_equal(run_images(comfy_server, g)[0], direct[0])


def test_back_to_back_hgrs_do_not_leak(comfy_server, hgr_files):
    harmful = hgr_files["harmful"]
    plain = run_images(comfy_server, graph(positive=harmful, prefix="leak0"))
    gated = run_images(comfy_server, graph(positive=harmful, hgr="gated.safetensors", safecfg={"gate_mode": "hard"}, prefix="leak1"))
    zero = run_images(comfy_server, graph(positive=harmful, hgr="zero.safetensors", prefix="leak2"))
    assert not np.array_equal(plain[0], gated[0])
    assert np.array_equal(plain[0], zero[0])


def test_detector_reports_score_and_category(comfy_server, hgr_files):
    g = {
        "1": {"class_type": "SafeCFGDemoModel", "inputs": {"variant": "untrained"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": hgr_files["harmful"], "clip": ["1", 1]}},
        "10": {"class_type": "SafeCFGLoadHGR", "inputs": {"hgr_name": "gated.safetensors"}},
        "20": {"class_type": "SafeCFGHarmfulnessDetector", "inputs": {
            "hgr": ["10", 0], "positive": ["2", 0], "threshold": -1.0, "clip": ["1", 1]}},
    }
    entry = comfy_server.run(g)
    assert comfy_server.succeeded(entry), comfy_server.error_message(entry)
    report = entry["outputs"]["20"]["text"][0]
    assert "HARMFUL" in report and "category most implicated" in report, report
    g["2"]["inputs"]["text"] = hgr_files["clean"]
    entry = comfy_server.run(g)
    report = entry["outputs"]["20"]["text"][0]
    assert "overall: clean" in report, report


def test_train_hgr_node_trains_saves_and_refuses_bad_input(comfy_server):
    g = _train_graph("trained", 6)
    entry = comfy_server.run(g)
    assert comfy_server.succeeded(entry), comfy_server.error_message(entry)
    saved = comfy_server.hgr_dir / "trained.safetensors"
    assert saved.exists(), list(comfy_server.hgr_dir.iterdir())
    HGRBundle.load(saved)
    bad = copy.deepcopy(g)
    bad["30"]["inputs"]["name"] = "../escape/trained"
    msg = run_error(comfy_server, bad)
    assert "SafeCFG Train HGR" in msg and "use e.g. 'trained'" in msg, msg
    assert not (comfy_server.hgr_dir.parent / "escape").exists()
    bad = copy.deepcopy(g)
    bad["30"]["inputs"]["clean_prompts"] = ""
    msg = run_error(comfy_server, bad)
    assert "SafeCFG Train HGR" in msg, msg
    bad = copy.deepcopy(g)
    bad["30"]["inputs"]["name"] = "../.."
    msg = run_error(comfy_server, bad)
    assert "SafeCFG Train HGR" in msg, msg


WORKFLOWS = Path(__file__).resolve().parents[2] / "example_workflows" / "api"


def _demo_variant() -> str:
    from safecfg_core.demo import world

    files = getattr(world, "WEIGHT_FILES", {})
    return "demo" if files and all(Path(p).exists() for p in files.values()) else "untrained"


def test_workflow_demo_vs_cfg_runs(comfy_server, hgr_files):
    import json

    g = json.loads((WORKFLOWS / "safecfg_demo_vs_cfg.json").read_text())
    from safecfg_core.demo.world import HGR_PATH

    g["1"]["inputs"]["variant"] = _demo_variant()
    if g["1"]["inputs"]["variant"] == "untrained" or not Path(HGR_PATH).exists():
        # the shipped demo HGR belongs to the trained demo model; the untrained one gets the hand-made HGR
        g["1"]["inputs"]["variant"] = "untrained"
        g["10"]["inputs"]["hgr_name"] = "gated.safetensors"
    for k in ("5", "6"):
        g[k]["inputs"]["steps"] = 3
    g["4"]["inputs"]["batch_size"] = 1
    g["2"]["inputs"]["text"] = hgr_files["harmful"]
    entry = comfy_server.run(g)
    assert comfy_server.succeeded(entry), comfy_server.error_message(entry)
    assert len(comfy_server.output_images(entry, "9")) == 1 and len(comfy_server.output_images(entry, "12")) == 1
    report = entry["outputs"]["13"]["text"][0]
    assert "prompt harm score" in report and "image score-level ratio" in report, report
    # the frontend shows the report in the workflow's Preview Any node, fed by the detector's report output
    assert entry["outputs"]["14"]["text"][0] == report


def test_workflow_train_hgr_runs(comfy_server):
    import json

    g = json.loads((WORKFLOWS / "train_hgr_demo.json").read_text())
    g["1"]["inputs"]["variant"] = _demo_variant()
    g["2"]["inputs"].update({"steps": 4, "sample_steps": 2, "batch_size": 4, "name": "workflow_hgr"})
    entry = comfy_server.run(g)
    assert comfy_server.succeeded(entry), comfy_server.error_message(entry)
    saved = HGRBundle.load(comfy_server.hgr_dir / "workflow_hgr.safetensors")
    assert len(comfy_server.output_images(entry, "3")) == 1
    # the workflow's settings reached the trainer: safe rewrites, and the shipped demo HGR's gain and rewrite-latents
    # share per category
    assert saved.meta.training["n_rewrites"] == saved.meta.training["n_harmful"] > 4  # typed rewrites, and the robustness recipe dresses each with its rewrite
    assert saved.meta.training["train_config"]["target_gain"] == {"gore": 2.5, "weapon": 4.0}
    assert saved.meta.training["train_config"]["rewrite_latent_fraction"] == {"gore": 1.0, "weapon": 0.0}
    # ... which are the settings the shipped file records, so the workflow cannot drift from a retrained HGR
    from safecfg_core.demo.world import HGR_PATH
    shipped = HGRBundle.load(HGR_PATH).meta.training["train_config"]
    for key in ("target_gain", "rewrite_latent_fraction"):
        assert saved.meta.training["train_config"][key] == shipped[key], key


def test_conditioning_combine_uses_most_harmful(comfy_server, hgr_files):
    """Two positives (ConditioningCombine): SafeCFG redirects for the most harmful one."""
    def combined(hgr=None):
        g = graph(positive=hgr_files["clean"], hgr=hgr, safecfg={"gate_mode": "hard"}, prefix="comb")
        g["24"] = {"class_type": "CLIPTextEncode", "inputs": {"text": hgr_files["harmful"], "clip": ["1", 1]}}
        g["25"] = {"class_type": "ConditioningCombine", "inputs": {"conditioning_1": ["2", 0], "conditioning_2": ["24", 0]}}
        if hgr is None:
            g["5"]["inputs"]["positive"] = ["25", 0]
        else:
            g["11"]["inputs"]["positive"] = ["25", 0]
        return g

    plain = run_images(comfy_server, combined())
    safe = run_images(comfy_server, combined("gated.safetensors"))
    assert not np.array_equal(plain[0], safe[0])


def _train_graph(name, steps, retrain=False):
    return {
        "1": {"class_type": "SafeCFGDemoModel", "inputs": {"variant": "untrained"}},
        "30": {"class_type": "SafeCFGTrainHGR", "inputs": {
            "model": ["1", 0], "clip": ["1", 1],
            "clean_prompts": "a large blue circle on a yellow background\na small green square on black",
            "harmful_prompts": "gore: a bloody blue circle on white\nweapon: a knife next to a purple triangle",
            "concepts": "gore: blood, gore\nweapon: knife, weapon",
            "steps": steps, "lr": 0.002, "batch_size": 4, "seed": 0, "name": name,
            "sample_steps": 2, "sample_cfg": 5.0, "width": 64, "height": 64, "retrain": retrain}},
        "31": {"class_type": "PreviewImage", "inputs": {"images": ["30", 1]}},
    }


def test_train_hgr_node_takes_settings_per_category(comfy_server):
    """The shipped demo HGR's recipe (a gain and a rewrite-latents share per category) can be trained in ComfyUI,
    and a setting that misses a category or is not a number is refused before anything is sampled."""
    g = _train_graph("per_category", 3)
    g["30"]["inputs"]["harmful_prompts"] = ("gore: a bloody blue circle on white => a blue circle on white\n"
                                            "weapon: a knife next to a purple triangle => a purple triangle")
    g["30"]["inputs"].update({"gain_per_category": "gore=2.5, weapon=4", "rewrite_latents": "gore=1, weapon=0"})
    entry = comfy_server.run(g)
    assert comfy_server.succeeded(entry), comfy_server.error_message(entry)
    config = HGRBundle.load(comfy_server.hgr_dir / "per_category.safetensors").meta.training["train_config"]
    assert config["target_gain"] == {"gore": 2.5, "weapon": 4.0}
    assert config["rewrite_latent_fraction"] == {"gore": 1.0, "weapon": 0.0}
    for key, value, says in (("gain_per_category", "gore=3", "leaves out ['weapon']"),
                             ("rewrite_latents", "lots", "rewrite_latents")):
        bad = copy.deepcopy(g)
        bad["30"]["inputs"].update({key: value, "name": "per_category_bad", "retrain": True})
        msg = run_error(comfy_server, bad)
        assert "SafeCFG Train HGR" in msg and says in msg, msg
    assert not (comfy_server.hgr_dir / "per_category_bad.safetensors").exists()


def test_train_retrain_toggle_and_identical_inputs(comfy_server):
    g = _train_graph("toggle", 3)
    entry = comfy_server.run(g)
    assert comfy_server.succeeded(entry), comfy_server.error_message(entry)
    path = comfy_server.hgr_dir / "toggle.safetensors"
    first = path.stat().st_mtime_ns
    entry = comfy_server.run(g)  # identical inputs: nothing retrains
    assert comfy_server.succeeded(entry)
    assert path.stat().st_mtime_ns == first
    # other inputs under the same name: refused before any work, the user's file kept as it was
    msg = run_error(comfy_server, _train_graph("toggle", 4))
    assert "SafeCFG Train HGR" in msg and "already exists" in msg and "retrain" in msg, msg
    assert path.stat().st_mtime_ns == first
    entry = comfy_server.run(_train_graph("toggle", 4, retrain=True))
    assert comfy_server.succeeded(entry), comfy_server.error_message(entry)
    assert path.stat().st_mtime_ns != first and HGRBundle.load(path).meta.training["steps"] == 4


def test_train_cancel_keeps_checkpoint_and_server_serves(comfy_server):
    import json as _json
    import time

    import websocket

    name = "cancelled"
    g = _train_graph(name, 40)  # periodic checkpoints only every steps//4 = 10 steps
    ws = websocket.WebSocket()
    ws.connect(f"ws://127.0.0.1:{comfy_server.port}/ws?clientId={comfy_server.client_id}", timeout=300)
    try:
        pid = comfy_server.queue(g)
        interrupted = False
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            msg = ws.recv()
            if not isinstance(msg, str):
                continue
            data = _json.loads(msg)
            d = data.get("data", {})
            # the bar covers the whole run (latents and steps) in 1000 units; 400 is well past step 10 here
            if data["type"] == "progress" and str(d.get("node")) == "30" and d.get("value", 0) >= 400 and not interrupted:
                comfy_server.post("/interrupt", {})
                interrupted = True
            if data["type"] in ("execution_interrupted", "execution_error", "execution_success") and d.get("prompt_id") == pid:
                break
            if data["type"] == "executing" and d.get("node") is None and d.get("prompt_id") == pid:
                break
    finally:
        ws.close()
    assert interrupted, "training never reported progress"
    entry = comfy_server.wait_history(pid)
    assert not comfy_server.succeeded(entry)
    kinds = [m[0] for m in entry["status"]["messages"]]
    assert "execution_interrupted" in kinds, kinds
    ckpt = comfy_server.output_dir / "safecfg_train" / f"{name}.checkpoint.safetensors"
    assert ckpt.exists(), list((comfy_server.output_dir / "safecfg_train").iterdir())
    from safecfg_core.hgr import HGRBundle as _B
    step = _B.load(ckpt).meta.training.get("checkpoint_step")
    assert step and step > 10, step  # the cancelled step, past the periodic checkpoint at step 10
    assert not (comfy_server.hgr_dir / f"{name}.safetensors").exists()
    run_images(comfy_server, graph(prefix="after_cancel"))
    # running the same graph again resumes from the checkpoint and finishes
    entry = comfy_server.run(g)
    assert comfy_server.succeeded(entry), comfy_server.error_message(entry)
    meta = _B.load(comfy_server.hgr_dir / f"{name}.safetensors").meta.training
    assert meta.get("resumed_from") == step, meta.get("resumed_from")
    assert not ckpt.exists()


def test_detector_judges_image_with_vae(comfy_server, hgr_files):
    g = graph(positive=hgr_files["harmful"], prefix="det_img")
    g["10"] = {"class_type": "SafeCFGLoadHGR", "inputs": {"hgr_name": "gated.safetensors"}}
    g["20"] = {"class_type": "SafeCFGHarmfulnessDetector", "inputs": {
        "hgr": ["10", 0], "positive": ["2", 0], "threshold": -1.0, "negative": ["3", 0],
        "model": ["1", 0], "image": ["7", 0], "vae": ["1", 2], "image_threshold": 0.5}}
    entry = comfy_server.run(g)
    assert comfy_server.succeeded(entry), comfy_server.error_message(entry)
    report = entry["outputs"]["20"]["text"][0]
    assert "image score-level ratio" in report and "prompt judged: HARMFUL" in report, report


def test_input_model_untouched_by_safecfg(comfy_server, hgr_files):
    """The same MODEL used unpatched next to a SafeCFG node still samples exactly as plain CFG."""
    harmful = hgr_files["harmful"]
    plain = run_images(comfy_server, graph(positive=harmful, prefix="untouched0"))
    g = graph(positive=harmful, hgr="gated.safetensors", safecfg={"gate_mode": "hard"}, prefix="untouched1")
    g["16"] = {"class_type": "KSampler", "inputs": dict(g["5"]["inputs"], model=["1", 0], positive=["2", 0],
                                                        negative=["3", 0])}
    g["17"] = {"class_type": "VAEDecode", "inputs": {"samples": ["16", 0], "vae": ["1", 2]}}
    g["18"] = {"class_type": "SaveImage", "inputs": {"images": ["17", 0], "filename_prefix": "untouched2"}}
    entry = comfy_server.run(g)
    assert comfy_server.succeeded(entry), comfy_server.error_message(entry)
    assert np.array_equal(comfy_server.output_images(entry, "18")[0], plain[0])
    assert not np.array_equal(comfy_server.output_images(entry, "8")[0], plain[0])
