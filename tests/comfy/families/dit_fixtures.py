"""Fixtures for the DiT-family server tests: the model files, a ComfyUI server that can load them, and HGRs.

Files (``dit_build.py``, built once per :data:`FIXTURE_VERSION` into the ignored cache): each family's diffusion
model built by ComfyUI's own classes from the config ComfyUI's detection gives for its keys, loaded by the stock
``UNETLoader``; the stock ``VAELoader`` reads the VAEs. The text encoders come from the test-only node in
``dit_nodes/`` (ComfyUI's own encoder classes at reduced depth; why: see that module), so the DiT tests run their
own server with that node installed beside the pack; everything else in their graphs is a stock node.
"""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest
import torch

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("_safecfg_dit_comfy_conftest", HERE.parent / "conftest.py")
_comfy = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_comfy)  # type: ignore[union-attr]
CACHE_DIR, REPO_ROOT, ComfyServer = _comfy.CACHE_DIR, _comfy.REPO_ROOT, _comfy.ComfyServer

FIXTURE_VERSION = "v1"  # bump when dit_build.py changes what it writes
FIXTURE_DIR = CACHE_DIR / f"dit-fixtures-{FIXTURE_VERSION}"
SPIECE = "spiece_1000.safetensors"


@dataclass(frozen=True)
class DiTFamily:
    """How one family is loaded and sampled in its ComfyUI example workflows (at test size)."""

    name: str  # the family's row in safecfg_core/families.py
    comfy_class: str  # ComfyUI's supported-model class the file must load as
    vae: str
    latent: Tuple[str, Dict[str, Any]]  # the family's empty-latent node and its inputs
    slow: bool = False  # several hundred million parameters (width fixed by detection), built on first use
    steps: int = 2  # sampler steps in the tests (one for the slow ones: CFG and SafeCFG act from the first step)
    model_node: Optional[str] = None  # a test-only node builds the model where no reduced file loads as the family


_IMAGE = ("EmptySD3LatentImage", {"width": 64, "height": 64, "batch_size": 1})
FAMILIES: Dict[str, DiTFamily] = {f.name: f for f in (
    DiTFamily("sd3", "SD3", "vae_kl16.safetensors", _IMAGE),
    DiTFamily("wan21", "WAN21_T2V", "vae_wan21.safetensors",
              ("EmptyHunyuanLatentVideo", {"width": 64, "height": 64, "length": 5, "batch_size": 1})),
    # the Wan 2.2 5B example's latent node takes the VAE; slow: its VAE is the real one, 0.7 B parameters
    DiTFamily("wan22", "WAN22_T2V", "vae_wan22.safetensors",
              ("Wan22ImageToVideoLatent", {"vae": ["3", 0], "width": 64, "height": 64, "length": 5, "batch_size": 1}),
              slow=True, steps=1),
    DiTFamily("qwen_image", "QwenImage", "vae_wan21.safetensors", _IMAGE, slow=True, steps=1),
    DiTFamily("chroma", "Chroma", "vae_kl16.safetensors", _IMAGE, slow=True, steps=1),
    DiTFamily("lumina2", "Lumina2", "vae_kl16.safetensors", _IMAGE, slow=True, steps=1),
    DiTFamily("hidream", "HiDream", "vae_kl16.safetensors", _IMAGE, model_node="SafeCFGTestReducedHiDream"),
)}


def build_fixture_files(comfyui_root: Path, families: List[str]) -> Path:
    """The fixture folder with the files of ``families`` (built now where missing, in a subprocess)."""
    missing = [f for f in families
               if FAMILIES[f].model_node is None and not (FIXTURE_DIR / f"{f}.safetensors").exists()]
    if missing or not (FIXTURE_DIR / SPIECE).exists():
        env = dict(os.environ)
        shims = [str(p) for p in _comfy.shim_paths_for(comfyui_root)]
        env["PYTHONPATH"] = os.pathsep.join(shims + [env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        proc = subprocess.run([sys.executable, str(HERE / "dit_build.py"), str(comfyui_root), str(FIXTURE_DIR),
                               *missing], capture_output=True, text=True, env=env, timeout=1200)
        if proc.returncode != 0:
            raise RuntimeError(f"building the DiT fixtures failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return FIXTURE_DIR


def _link(target: Path, link: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)


@pytest.fixture(scope="session")
def dit_files(comfyui_root: Path) -> Path:
    """The fixture folder with the fast families' files; a slow family's test builds its own with
    :func:`build_fixture_files` (the server sees files added later: its model folders are links to this one)."""
    return build_fixture_files(comfyui_root, [f.name for f in FAMILIES.values() if not f.slow])


@pytest.fixture(scope="module")
def dit_server(comfyui_root: Path, dit_files: Path, tmp_path_factory) -> Iterator[ComfyServer]:
    """A ComfyUI server with the pack and the test-only reduced text-encoder node; its ``diffusion_models``,
    ``vae`` and ``text_encoders`` folders are the fixture folder. One per test module, stopped after it, so the
    models one module loaded (Chroma alone takes 2 GB in fp32) are freed before the next starts."""
    workdir = Path(tempfile.mkdtemp(prefix="safecfg-dit-", dir=tmp_path_factory.getbasetemp()))
    _link(REPO_ROOT, workdir / "custom_nodes" / _comfy.PACK_LINK_NAME)
    _link(HERE / "dit_nodes", workdir / "custom_nodes" / "safecfg_test_dit_nodes")
    for folder in ("diffusion_models", "vae", "text_encoders"):
        _link(dit_files, workdir / "models" / folder)
    server = ComfyServer(comfyui_root, workdir)
    try:
        server.start()
        yield server
    finally:
        server.stop()


# -- graphs ------------------------------------------------------------------------------------------------------
def loaders(family: str) -> Dict[str, Any]:
    """Nodes 1-3 of every DiT graph: UNETLoader (or the family's test-only model node), the reduced text encoder,
    VAELoader."""
    fam = FAMILIES[family]
    model = ({"class_type": fam.model_node, "inputs": {"seed": 0}} if fam.model_node else
             {"class_type": "UNETLoader", "inputs": {"unet_name": f"{family}.safetensors", "weight_dtype": "default"}})
    return {
        "1": model,
        "2": {"class_type": "SafeCFGTestReducedTextEncoder", "inputs": {"family": family, "tokenizer": SPIECE,
                                                                         "seed": 0}},
        "3": {"class_type": "VAELoader", "inputs": {"vae_name": fam.vae}},
    }


def sampling_graph(family: str, positive: str, negative: str = "", hgr: Optional[str] = None,
                   safecfg: Optional[Dict[str, Any]] = None, prefix: str = "dit", seed: int = 7,
                   steps: Optional[int] = None, cfg: float = 4.0) -> Dict[str, Any]:
    """loaders -> CLIPTextEncode x2 -> (SafeCFG) -> KSampler -> SaveLatent and VAEDecode -> SaveImage."""
    latent_node, latent_inputs = FAMILIES[family].latent
    g = loaders(family)
    g.update({
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": positive, "clip": ["2", 0]}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"text": negative, "clip": ["2", 0]}},
        "6": {"class_type": latent_node, "inputs": dict(latent_inputs)},
    })
    model, pos, neg = ["1", 0], ["4", 0], ["5", 0]
    if hgr is not None:
        g["10"] = {"class_type": "SafeCFGLoadHGR", "inputs": {"hgr_name": hgr}}
        g["11"] = {"class_type": "SafeCFG", "inputs": {"model": model, "hgr": ["10", 0], "positive": pos,
                                                       "negative": neg, "strength": 1.0, "threshold": -1.0,
                                                       **(safecfg or {})}}
        model, pos, neg = ["11", 0], ["11", 1], ["11", 2]
    g["7"] = {"class_type": "KSampler", "inputs": {
        "model": model, "seed": seed, "steps": steps or FAMILIES[family].steps, "cfg": cfg, "sampler_name": "euler",
        "scheduler": "simple",
        "positive": pos, "negative": neg, "latent_image": ["6", 0], "denoise": 1.0}}
    g["8"] = {"class_type": "SaveLatent", "inputs": {"samples": ["7", 0], "filename_prefix": f"latents/{prefix}"}}
    g["9"] = {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["3", 0]}}
    g["12"] = {"class_type": "SaveImage", "inputs": {"images": ["9", 0], "filename_prefix": prefix}}
    return g


def run_ok(server: ComfyServer, graph: Dict[str, Any], timeout: float = 900.0) -> Dict[str, Any]:
    entry = server.run(graph, timeout=timeout)
    assert server.succeeded(entry), server.error_message(entry)
    return entry


def saved_latent(server: ComfyServer, entry: Dict[str, Any], node: str = "8") -> torch.Tensor:
    """The latent SaveLatent wrote (its ``latent_tensor``)."""
    from safetensors.torch import load_file

    item = entry["outputs"][node]["latents"][0]
    return load_file(str(server.output_dir / item.get("subfolder", "") / item["filename"]))["latent_tensor"]


def harm_score(server: ComfyServer, family: str, prompt: str, hgr: str, negative: str = "") -> float:
    """The HGR's prompt harm score as the pack's detector node reports it (the SafeCFG node's own judge)."""
    g = loaders(family)
    g.update({
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": prompt, "clip": ["2", 0]}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"text": negative, "clip": ["2", 0]}},
        "10": {"class_type": "SafeCFGLoadHGR", "inputs": {"hgr_name": hgr}},
        "20": {"class_type": "SafeCFGHarmfulnessDetector", "inputs": {
            "hgr": ["10", 0], "positive": ["4", 0], "negative": ["5", 0], "threshold": 0.5}},
    })
    for key in ("1", "3"):
        del g[key]  # the detector needs only the text encoder
    report = run_ok(server, g)["outputs"]["20"]["text"][0]
    match = re.search(r"prompt harm score: ([-0-9.e+]+)", report)
    assert match, report
    return float(match.group(1))


def write_hgrs(server: ComfyServer, family: str) -> Tuple[str, str]:
    """``(zero, gated)`` HGR file names for ``family``'s preset: an untrained HGR (zero output) and one with
    random non-zero weights (its gate threshold is set by the test from measured scores)."""
    from safecfg_core.hgr import HGRBundle, HGRConfig, HGRMeta

    cfg = HGRConfig.for_family(family)
    zero = HGRBundle.create(cfg, HGRMeta(categories={"gore": "blood, gore"}, threshold=0.5), seed=0)
    gated = HGRBundle.create(cfg, HGRMeta(categories={"gore": "blood, gore"}, threshold=0.5), seed=1)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(3)
        for p in gated.net.parameters():
            if p.abs().sum() == 0:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    names = (f"{family}_zero.safetensors", f"{family}_gated.safetensors")
    zero.save(server.hgr_dir / names[0])
    gated.save(server.hgr_dir / names[1])
    return names
