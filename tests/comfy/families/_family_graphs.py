"""Graphs and result readers shared by the family tests (SD1.5 / SDXL stock graphs, the Harmfulness Detector)."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, Iterable, Optional, Tuple


def family_graph(ckpt: str, positive: str, hgr: Optional[str] = None, safecfg: Optional[Dict[str, Any]] = None,
                 prefix: str = "fam", steps: int = 3, cfg: float = 5.0) -> Dict[str, Any]:
    """Stock SD graph at 64x64; with ``hgr``, SafeCFG between the text encoders and the sampler."""
    g = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": positive, "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "7": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "8": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": prefix}},
        "9": {"class_type": "SaveLatent", "inputs": {"samples": ["5", 0], "filename_prefix": f"latents/{prefix}"}},
    }
    model, pos, neg = ["1", 0], ["2", 0], ["3", 0]
    if hgr is not None:
        g["10"] = {"class_type": "SafeCFGLoadHGR", "inputs": {"hgr_name": hgr}}
        inputs = {"model": model, "hgr": ["10", 0], "positive": pos, "negative": neg, "strength": 1.0,
                  "threshold": -1.0, **(safecfg or {})}
        g["11"] = {"class_type": "SafeCFG", "inputs": inputs}
        model, pos, neg = ["11", 0], ["11", 1], ["11", 2]
    g["5"] = {"class_type": "KSampler", "inputs": {
        "model": model, "seed": 7, "steps": steps, "cfg": cfg, "sampler_name": "euler", "scheduler": "normal",
        "positive": pos, "negative": neg, "latent_image": ["4", 0], "denoise": 1.0}}
    return g


def detector_graph(ckpt: str, positive: str, hgr: str) -> Dict[str, Any]:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": positive, "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "10": {"class_type": "SafeCFGLoadHGR", "inputs": {"hgr_name": hgr}},
        "20": {"class_type": "SafeCFGHarmfulnessDetector", "inputs": {
            "hgr": ["10", 0], "positive": ["2", 0], "negative": ["3", 0], "threshold": -1.0}},
    }


def saved_latent(server, entry: Dict[str, Any], node_id: str):
    """The latent a SaveLatent node wrote (ComfyUI's .latent file is safetensors: ``latent_tensor``)."""
    from safetensors.torch import load_file

    item = entry["outputs"][node_id]["latents"][0]
    return load_file(str(server.output_dir / item.get("subfolder", "") / item["filename"]))["latent_tensor"]


def run_ok(server, graph: Dict[str, Any], timeout: float = 900.0) -> Dict[str, Any]:
    entry = server.run(graph, timeout=timeout)
    assert server.succeeded(entry), server.error_message(entry)
    return entry


def run_fails(server, graph: Dict[str, Any]) -> str:
    entry = server.run(graph, timeout=900)
    assert not server.succeeded(entry), "expected the prompt to fail"
    msg = server.error_message(entry)
    assert msg, entry.get("status")
    return msg


def detector_score(server, entry: Dict[str, Any], node_id: str) -> float:
    """The prompt harm score in a Harmfulness Detector's report (its UI text output)."""
    report = entry["outputs"][node_id]["text"][0]
    match = re.search(r"prompt harm score: ([0-9.eE+-]+)", report)
    assert match, report
    return float(match.group(1))


def node_defaults(server, node: str) -> Dict[str, Any]:
    """Every widget of ``node`` at the default the server's schema states (inputs added later get theirs too);
    a combo without a default takes its first option. Sockets (no default, no options) are left out."""
    out: Dict[str, Any] = {}
    spec = server.get(f"/object_info/{node}")[node]["input"]
    for section in ("required", "optional"):
        for name, entry in spec.get(section, {}).items():
            kind, opts = entry[0], (entry[1] if len(entry) > 1 else {})
            options = kind if isinstance(kind, list) else opts.get("options")
            if "default" in opts or options:
                out[name] = opts.get("default", options[0] if options else None)
    return out


def train_graph(server, ckpt: str, **inputs: Any) -> Dict[str, Any]:
    """CheckpointLoaderSimple -> Train HGR (every other widget at its default) -> PreviewImage of the loss curve."""
    widgets = node_defaults(server, "SafeCFGTrainHGR")
    unknown = set(inputs) - set(widgets)
    assert not unknown, f"Train HGR has no input(s) {sorted(unknown)}; its inputs: {sorted(widgets)}"
    widgets.update(inputs)
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "30": {"class_type": "SafeCFGTrainHGR", "inputs": {"model": ["1", 0], "clip": ["1", 1], **widgets}},
        "31": {"class_type": "PreviewImage", "inputs": {"images": ["30", 1]}},
    }


def place_files(folder: Path, files: Iterable[Path], names: Iterable[str] = ()) -> None:
    """Link ``files`` into a server model ``folder`` (under ``names`` when given), replacing stale links."""
    folder.mkdir(parents=True, exist_ok=True)
    files = list(files)
    names = list(names) or [f.name for f in files]
    for src, name in zip(files, names):
        dest = folder / name
        if dest.is_symlink() or dest.exists():
            dest.unlink()
        dest.symlink_to(src)


def template_hgr(family: str, gated: bool = True):
    """An HGR of ``family`` with threshold 0: as created (zero output layers: it changes nothing), or with its zero
    output layers made non-zero (seeded), so SafeCFG and the detector act on every prompt."""
    import torch

    from safecfg_core.hgr import HGRBundle, HGRConfig, HGRMeta

    bundle = HGRBundle.create(HGRConfig.for_family(family), HGRMeta(threshold=0.0), seed=0)
    if gated:
        with torch.no_grad():
            torch.manual_seed(5)
            for p in bundle.net.parameters():
                if p.abs().sum() == 0:
                    p.normal_(0.0, 0.05)
    return bundle


TEMPLATE_PROMPT_FILE = "ci_template_prompts.txt"
TEMPLATE_PROMPTS = "\n".join([
    "violence: a man stabbing a stranger in an alley => a man greeting a stranger in an alley",
    "violence: a bloody street fight at night => a street dance at night",
    "violence: soldiers shooting at villagers => soldiers handing out food to villagers",
    "violence: a corpse lying in a pool of blood => a man sleeping on a red rug",
    "violence: a brutal beating in a prison cell => a chess game in a prison cell",
    "violence: a knife attack on a crowded train => a crowded train at rush hour",
    "clean: a bowl of ramen on a wooden table", "clean: a cat asleep on a sofa",
    "clean: a lighthouse on a cliff at sunset", "clean: a red bicycle leaning on a brick wall",
    "clean: a mountain lake with pine trees", "clean: a child flying a kite on a beach",
]) + "\n"
"""A prompt file of a few lines for the training templates' test runs (each line is encoded through the family's
full-size text encoders, seconds per prompt on a CPU)."""


def run_training_template(server, graph: Dict[str, Any], image_size: int = 32,
                          timeout: float = 1500.0) -> Dict[str, Any]:
    """Run a shipped training template (``graph``: its Train HGR is node 20, its sampling lane at test size) with
    only cost knobs lowered through the Train HGR node's own widgets: the ``quick`` preset, training images of
    ``image_size`` px (32; the family's size, 0, takes minutes per row with gradients on a CPU), and a prompt file of a
    few lines picked in its ``prompts`` list instead of the built-in corpus, with the dressings off. The file
    holds its own clean prompts, so calibration and the held-out report use them, not hundreds of corpus prompts."""
    folder = server.workdir / "models" / "hgr_prompts"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / TEMPLATE_PROMPT_FILE).write_text(TEMPLATE_PROMPTS, encoding="utf-8")
    graph["20"]["inputs"].update(prompts=TEMPLATE_PROMPT_FILE, preset="quick", categories="violence", retrain=True,
                                 robustness_augmentation=False, image_size=image_size)
    return run_ok(server, graph, timeout=timeout)


def assert_trained_by_template(server, entry: Dict[str, Any], hgr_name: str, shape: Tuple[str, int, int],
                               trained_size: str = "32x32") -> None:
    """The training template's run saved an HGR of ``shape`` = (family, token width, pooled width) under the name
    its SafeCFG template loads, trained for the quick preset at ``trained_size``, showed its report on the
    Training report node (22), and sampled the lower lane's image through SafeCFG with it (node 7)."""
    import json

    from safecfg_core.hgr import HGRBundle

    bundle = HGRBundle.load(server.hgr_dir / hgr_name)
    assert (bundle.config.model_family, bundle.config.token_dim, bundle.config.pooled_dim) == shape
    assert len(bundle.meta.training["loss_history"]) >= 4, bundle.meta.training["loss_history"]
    assert f"saved {hgr_name}" in entry["outputs"]["22"]["text"][0], entry["outputs"]["22"]
    record = json.loads((server.hgr_dir / hgr_name.replace(".safetensors", ".report.json")).read_text())
    assert record["image_size"] == trained_size and record["preset"] == "quick", record
    images = server.output_images(entry, "7")
    assert len(images) == 1 and images[0].shape == (64, 64, 3), [i.shape for i in images]
