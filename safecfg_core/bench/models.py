"""The models the benchmark times: the demo world (or its architecture) with an HGR of the shipped size.

Each model comes as a :class:`BenchModel`: the denoiser, its schedule, one harmful-looking conditioning ``c``, the
empty prompt ``u``, the concept text ``concept`` (the negative-prompt and SLD baselines use it) and a SafeCFG
guidance whose gate always fires, so the timed SafeCFG runs do the most work SafeCFG ever does per prompt.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Tuple

import torch

HGR_FAMILY = {"sd15": "sd1", "sdxl": "sdxl", "demo": "demo"}
CONCEPTS = {"gore": "blood, gore", "weapon": "knife, weapon"}


@dataclass
class BenchModel:
    name: str
    description: str
    net: Any
    denoiser: Any
    schedule: Any
    latent_shape: List[int]
    c: Any
    u: Any
    concept: Any
    guidance: Any
    hgr_params: int
    hgr_description: str
    text_encoder: Callable[[Sequence[str]], Any]
    device: torch.device
    dtype: torch.dtype
    notes: List[str] = field(default_factory=list)


def random_cond(n: int, tokens: int, dim: int, pooled: int, device: torch.device, seed: int) -> Any:
    """A seeded random conditioning of the family's shapes: sampling time does not depend on what the text says."""
    from ..conditioning import Cond

    g = torch.Generator().manual_seed(seed)
    t = torch.randn(n, tokens, dim, generator=g)
    p = torch.randn(n, pooled, generator=g) if pooled else None
    return Cond(t.to(device), None if p is None else p.to(device))


def make_guidance(family: str, token_dim: int, pooled_dim: int, device: torch.device, bundle: Any = None,
                  how: str = "trained (demo world file)") -> Tuple[Any, int, str]:
    """SafeCFG guidance for ``family`` (a new HGR of the shipped size unless ``bundle`` is given), its HGR's
    parameter count and a one-line description for the report."""
    from ..guidance import GateConfig, SafeGuidance
    from ..hgr import HGRBundle, HGRConfig, HGRMeta

    if bundle is None:
        cfg = HGRConfig.for_family(HGR_FAMILY.get(family, family))
        if cfg.token_dim != token_dim or cfg.pooled_dim != pooled_dim:
            cfg = HGRConfig.for_family(HGR_FAMILY.get(family, family), token_dim=token_dim, pooled_dim=pooled_dim)
        bundle = HGRBundle.create(cfg, HGRMeta(categories=dict(CONCEPTS)), seed=0)
        how = "untrained (zero output; same compute as a trained one)"
    bundle.net.to(device).eval()
    # gate "always": the redirect runs for every prompt, the most work SafeCFG ever does per prompt
    guidance = SafeGuidance(bundle, GateConfig(mode="always"))
    c = bundle.config
    desc = f"HGR {c.model_family}: width {c.width}, depth {c.depth}, heads {c.heads}, {how}"
    return guidance, bundle.num_parameters(), desc


def text_encoder_for(token_dim: int, pooled_dim: int) -> Any:
    """A text encoder of the right shapes for the training benchmark of models whose own encoder is not loaded."""
    from ..analytic import ToyTextEncoder

    return ToyTextEncoder(token_dim=token_dim, pooled_dim=pooled_dim)


def _load_world(device: torch.device, notes: List[str]) -> Any:
    """The demo world, or None (with a note for the report) when it cannot be loaded."""
    try:
        from ..demo.world import load_demo_world

        return load_demo_world(device=str(device))
    except Exception as exc:  # the demo world is optional for benchmarking
        notes.append(f"demo world not loadable ({type(exc).__name__}: {exc}); used its architecture, random init")
        return None


def _demo_from_world(world: Any, device: torch.device, notes: List[str]) -> BenchModel:
    from ..sampling import DiscreteEpsDenoiser
    from ..schedules import DiscreteSchedule

    net = world.denoiser_net
    schedule = getattr(world, "schedule", None) or DiscreteSchedule()
    te = world.text_encoder
    encode = te.encode if hasattr(te, "encode") and not callable(te) else te
    c = encode(["a bloody blue circle on a white background"]).to(device)
    u = encode([""]).to(device)
    k = encode([", ".join(CONCEPTS.values())]).to(device)
    bundle = None
    hgr_path: Optional[str] = getattr(world, "hgr_path", None)
    if hgr_path and Path(hgr_path).exists():
        from ..hgr import HGRBundle

        bundle = HGRBundle.load(hgr_path, device=str(device))
    guidance, hgr_params, hgr_desc = make_guidance("demo", c.token_dim, 0, device, bundle)
    return BenchModel("demo", "demo world (trained weights), 4x8x8 latents (64x64 px)", net,
                      DiscreteEpsDenoiser(net, schedule), schedule, [1, 4, 8, 8], c, u, k, guidance, hgr_params,
                      hgr_desc, encode, device, getattr(net, "dtype", torch.float32), notes)


def _demo_architecture(device: torch.device, quick: bool, notes: List[str]) -> BenchModel:
    """The demo world's DiT with random weights (tiny with ``quick``): same compute, no weights needed."""
    from ..demo.denoiser import DEFAULT_CONFIG, DemoDiT
    from ..sampling import DiscreteEpsDenoiser
    from ..schedules import DiscreteSchedule

    cfg = dict(DEFAULT_CONFIG)
    if quick:
        cfg.update(width=32, depth=1, heads=2)
    torch.manual_seed(0)
    net = DemoDiT(**cfg)
    with torch.no_grad():  # the zero-initialised output layers would make every method trivially equal
        for m in (net.out, net.out_ada):
            m.weight.normal_(0, 0.02)
    net = net.to(device).eval()
    schedule = DiscreteSchedule().to(device)
    d = cfg["context_dim"]
    c, u, k = (random_cond(1, 77, d, 0, device, seed) for seed in (1, 2, 3))
    if quick:
        from ..hgr import HGRBundle, HGRConfig, HGRMeta

        bundle = HGRBundle.create(HGRConfig(token_dim=d, model_family="demo", width=32, depth=1, heads=2),
                                  HGRMeta(categories=dict(CONCEPTS)), seed=0)
        guidance, hgr_params, hgr_desc = make_guidance("demo", d, 0, device, bundle, how="tiny (--quick)")
        desc = "tiny demo-architecture DiT (--quick), random init, 4x8x8 latents"
    else:
        guidance, hgr_params, hgr_desc = make_guidance("demo", d, 0, device)
        desc = "demo-world architecture (DemoDiT, random init), 4x8x8 latents (64x64 px)"
    latent = [1, cfg["in_channels"], cfg["size"], cfg["size"]]
    return BenchModel("demo", desc, net, DiscreteEpsDenoiser(net, schedule), schedule, latent, c, u, k, guidance,
                      hgr_params, hgr_desc, text_encoder_for(d, 0), device, getattr(net, "dtype", torch.float32),
                      notes)


def build_demo(device: torch.device, quick: bool) -> BenchModel:
    """The demo model: the trained demo world, or (``quick``, or when it cannot load) its architecture."""
    notes: List[str] = []
    world = None if quick else _load_world(device, notes)
    if world is not None:
        return _demo_from_world(world, device, notes)
    return _demo_architecture(device, quick, notes)
