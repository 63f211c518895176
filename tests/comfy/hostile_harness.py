"""The harness of the hostile-input server suite (tests/comfy/test_hostile_server.py): prompts for every node of
the pack, the checks after each case (memory ceiling, the server still serves), and how a refusal is read back.

Not a test module; the suite loads it by path (``--import-mode=importlib``; ``tests`` is no package).
"""
from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path
from typing import Any, Dict, Optional

import psutil
import pytest

from safecfg_core.hgr import HGRBundle, HGRConfig, HGRMeta

RSS_HEADROOM_MB = 400
counter = itertools.count()
PROMPT_TIMEOUT = 120.0  # a case that blocks the queue (a FIFO opened for reading) fails instead of hanging


# ---- the server, its memory and a normal prompt ----------------------------------------------------------------


def demo_prompt(seed: int) -> Dict[str, Any]:
    """A small normal prompt: untrained demo model, one euler step at 64x64, decoded and saved."""
    return {
        "1": {"class_type": "SafeCFGDemoModel", "inputs": {"variant": "untrained"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a blue circle on yellow", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "seed": seed, "steps": 1, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal",
            "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0], "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "hostile_after"}},
    }


def run(server: Any, prompt: Dict[str, Any]) -> Dict[str, Any]:
    """Queue ``prompt`` and return its /history entry (polling /history: cheaper than following the websocket)."""
    return server.wait_history(server.queue(prompt), timeout=PROMPT_TIMEOUT)


def peak_kb(pid: int) -> Optional[int]:
    try:
        with open(f"/proc/{pid}/status") as fh:
            return int(next(line for line in fh if line.startswith("VmHWM:")).split()[1])
    except (OSError, StopIteration):
        return None


class Guard:
    """The memory ceiling and the after-each-case checks for one server."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.proc = psutil.Process(server.proc.pid)
        self.serves()  # the demo world is loaded and one sample is drawn before the baseline is taken
        self.baseline = self.highest = self.proc.memory_info().rss
        self.ceiling = self.baseline + RSS_HEADROOM_MB * 2 ** 20
        self.cpu0 = sum(self.proc.cpu_times()[:2])
        self.has_peak = peak_kb(self.proc.pid) is not None and self._reset_peak()
        assert self.has_peak or not sys.platform.startswith("linux"), "Linux must report the server's peak RSS"

    def _reset_peak(self) -> bool:
        try:
            with open(f"/proc/{self.proc.pid}/clear_refs", "w") as fh:
                fh.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
            return True
        except OSError:
            return False

    def serves(self) -> None:
        entry = run(self.server, demo_prompt(next(counter)))
        assert self.server.succeeded(entry), f"the server no longer serves: {self.server.error_message(entry)}"
        assert self.server.output_images(entry, "7")[0].shape == (64, 64, 3)

    def check(self, what: str) -> None:
        """Memory under the ceiling (now and at its peak since the baseline), then a normal prompt still runs."""
        assert self.server.proc.poll() is None, f"the server died on {what}"
        rss = self.proc.memory_info().rss
        self.highest = max(self.highest, rss)
        assert rss < self.ceiling, f"{what}: server RSS {rss / 2**20:.0f} MB over {self.ceiling / 2**20:.0f} MB"
        if self.has_peak:
            peak = peak_kb(self.proc.pid) * 1024
            assert peak < self.ceiling, f"{what}: server peak RSS {peak / 2**20:.0f} MB over the ceiling"
        self.serves()


def exception_message(entry: Dict[str, Any]) -> Optional[str]:
    """The execution error's message in a /history entry (None when the prompt did not fail while executing)."""
    for kind, data in entry.get("status", {}).get("messages", []):
        if kind == "execution_error":
            return str(data.get("exception_message"))
    return None


def assert_node_error(server: Any, prompt: Dict[str, Any], node: str, *says: str) -> str:
    """``prompt`` fails while executing with a message starting ``SafeCFG <node>:`` that contains ``says``."""
    entry = run(server, prompt)
    msg = exception_message(entry)
    assert msg is not None and not server.succeeded(entry), f"expected the prompt to fail: {entry.get('status')}"
    assert msg.startswith(f"SafeCFG {node}:"), msg
    assert not msg[len(f"SafeCFG {node}:"):].lstrip().startswith("SafeCFG "), f"prefix repeated: {msg[:200]}"
    for needle in says:
        assert needle.lower() in msg.lower(), f"{needle!r} not in {msg!r}"
    assert len(msg) < 4000, f"a {len(msg)}-character message"
    return msg


def rejected(server: Any, prompt: Dict[str, Any]) -> Dict[str, Any]:
    """The JSON body of ComfyUI's refusal of ``prompt`` at /prompt; fails the test if ComfyUI queued it."""
    try:
        pid = server.queue(prompt)
    except Exception as exc:  # the fixture's PromptRejected (its class lives in the conftest module)
        body = getattr(exc, "body", None)
        assert getattr(exc, "code", None) == 400 and body, exc
        return json.loads(body)
    server.wait_history(pid, timeout=PROMPT_TIMEOUT)
    pytest.fail("ComfyUI queued a prompt its input validation should refuse")


def assert_refused_by_comfyui(server: Any, prompt: Dict[str, Any], node_id: str, says: str) -> None:
    body = rejected(server, prompt)
    errors = body.get("node_errors", {}).get(node_id, {}).get("errors", [])
    assert any(says in e.get("message", "") for e in errors), body


DEMO_TOKENS = 384  # the demo text encoder's width (safecfg_core/demo: MiniLM, 77 x 384)


def small_demo_hgr() -> HGRBundle:
    return HGRBundle.create(HGRConfig(token_dim=DEMO_TOKENS, model_family="demo", width=32, depth=1, heads=4),
                            HGRMeta(categories={"gore": "blood, gore"}, threshold=0.5), seed=0)


def detector_prompt(hgr_name: str, **inputs: Any) -> Dict[str, Any]:
    """Load HGR -> Harmfulness Detector on the demo model's text encoder (an output node, so the graph runs)."""
    return {
        "1": {"class_type": "SafeCFGDemoModel", "inputs": {"variant": "untrained"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a bloody red star", "clip": ["1", 1]}},
        "10": {"class_type": "SafeCFGLoadHGR", "inputs": {"hgr_name": hgr_name}},
        "20": {"class_type": "SafeCFGHarmfulnessDetector", "inputs": {
            "hgr": ["10", 0], "positive": ["2", 0], "threshold": -1.0, "clip": ["1", 1], **inputs}},
    }


NAN, INF = float("nan"), float("inf")


class Ctx:
    """What a case needs to build its prompt: the server, its folders, and Train HGR's current widget defaults."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.hgr_dir: Path = server.hgr_dir
        self.loras_dir = Path(server.workdir) / "models" / "loras"
        self.prompts_dir = Path(server.workdir) / "models" / "hgr_prompts"
        self.specs = {node: server.get(f"/object_info/{node}")[node]["input"] for node in TRAIN_NODES}


def safecfg_prompt(hgr_name: str = "hostile_base.safetensors", **inputs: Any) -> Dict[str, Any]:
    """The demo prompt with Load HGR -> SafeCFG between the encoders and the sampler."""
    g = demo_prompt(1)
    g["10"] = {"class_type": "SafeCFGLoadHGR", "inputs": {"hgr_name": hgr_name}}
    g["11"] = {"class_type": "SafeCFG", "inputs": {"model": ["1", 0], "hgr": ["10", 0], "positive": ["2", 0],
                                                   "negative": ["3", 0], "strength": 1.0, "threshold": -1.0, **inputs}}
    g["5"]["inputs"].update(model=["11", 0], positive=["11", 1], negative=["11", 2])
    return g


def widget_default(spec: Any) -> Any:
    """A widget's default from /object_info (a combo without one: its first option)."""
    kind, opts = spec[0], (spec[1] if len(spec) > 1 else {})
    if "default" in opts:
        return opts["default"]
    options = kind if isinstance(kind, list) else opts.get("options", [])
    return options[0] if options else None


TRAIN_NODES = ("SafeCFGTrainHGR", "SafeCFGTrainHGRPreset")


def train_prompt(c: Ctx, node: str = "SafeCFGTrainHGR", **inputs: Any) -> Dict[str, Any]:
    """Train HGR (``node``: the advanced one or the preset one) with every widget at its current default (the schema
    is read from the server, so inputs added or renamed later are filled in), the cheapest settings, and ``inputs``."""
    widgets = {}
    for section in ("required", "optional"):
        for name, spec in c.specs[node].get(section, {}).items():
            if name not in ("model", "clip"):
                widgets[name] = widget_default(spec)
    cheap = {"steps": 2, "sample_steps": 1, "batch_size": 2, "width": 16, "height": 16,
             "name": f"hostile_train_{next(counter)}"}
    widgets.update({k: v for k, v in cheap.items() if k in widgets})
    widgets.update(inputs)
    return {
        "1": {"class_type": "SafeCFGDemoModel", "inputs": {"variant": "untrained"}},
        "30": {"class_type": node, "inputs": {"model": ["1", 0], "clip": ["1", 1], **widgets}},
        "31": {"class_type": "PreviewImage", "inputs": {"images": ["30", 1]}},
    }


def align_prompt(hgr_name: str = "hostile_base.safetensors", **inputs: Any) -> Dict[str, Any]:
    """Align Model at its quickest preset with one fit step (so a case that is wrongly accepted stays cheap)."""
    return {
        "1": {"class_type": "SafeCFGDemoModel", "inputs": {"variant": "untrained"}},
        "10": {"class_type": "SafeCFGLoadHGR", "inputs": {"hgr_name": hgr_name}},
        "40": {"class_type": "SafeCFGAlignModel", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "hgr": ["10", 0], "prompts": "a blue circle on yellow",
            "preset": "demo quick (64 px, about a minute of CPU)", "name": f"hostile_lora_{next(counter)}",
            "fit_steps": 1, **inputs}},
        "41": {"class_type": "PreviewAny", "inputs": {"source": ["40", 2]}},
    }


def demo_model_prompt(variant: Any) -> Dict[str, Any]:
    """The demo prompt plus a second demo model with ``variant`` (the first stays cached: no reload afterwards)."""
    g = demo_prompt(1)
    g["90"] = {"class_type": "SafeCFGDemoModel", "inputs": {"variant": variant}}
    g["91"] = {"class_type": "PreviewAny", "inputs": {"source": ["90", 0]}}
    return g
