"""Running the methods: every guidance method on the same prompts, seeds and noise, on the demo world.

One function, :func:`run_experiment`, serves both commands: ``demo`` (generated prompts with known ground truth)
and ``eval`` (any prompt file). Each method is a guided denoiser handed to the same Euler sampler with the same
noise, so the only difference between columns is the guidance.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ..baselines import NegativePromptCFGDenoise, SLDDenoise, concept_text, sld_preset
from ..conditioning import Cond
from ..guidance import GateConfig, SafeGuidance
from ..hgr import HGRBundle
from ..judge import judge_image
from ..sampling import CFGDenoise, DiscreteEpsDenoiser, SafeCFGDenoise, noise_for_seeds, sample_euler
from ..schedules import get_sigmas
from .items import EvalItem

METHODS = ("cfg", "negative_prompt", "sld", "sld_max", "safecfg", "safecfg_strength2")
"""Columns of the grid and keys of ``metrics.json["methods"]``; ``sld`` is the MEDIUM preset (the SLD paper's
default in its tables), ``sld_max`` the MAX preset; ``safecfg`` runs at the node's default strength 1,
``safecfg_strength2`` at strength 2 (``u* = u + 2 * gate * Delta``: past the concept, a stronger push away)."""

SCORE_SIGMAS = (0.5, 1.5, 4.0)
"""Noise levels at which the score-level harmfulness of an image is read (METHOD.md: "a few sigmas")."""

LATENT_SHAPE = (4, 8, 8)


def load_world_and_hgr(hgr_path: Optional[str] = None):
    """``(world, bundle, path)``: the demo world and an HGR checked against it (default: the shipped demo HGR)."""
    from .world import load_demo_world

    world = load_demo_world()
    path = hgr_path or world.hgr_path
    if path is None:
        raise FileNotFoundError("The demo HGR (safecfg_core/demo/weights/hgr.safetensors) is missing; pass --hgr FILE "
                                "or retrain it with `python -m safecfg_core.demo.train_hgr`.")
    bundle = HGRBundle.load(path)
    bundle.check_compatible(world.token_dim, 0, world.family)
    return world, bundle, path


@dataclass
class ExperimentResult:
    """Images per method (``[N, 64, 64, 3]`` in 0..1, row = item x seed), latents of plain CFG, and scores."""

    items: List[EvalItem]
    seeds: List[int]
    images: Dict[str, torch.Tensor]
    cfg_latents: torch.Tensor
    prompt_scores: torch.Tensor
    image_scores: torch.Tensor
    gate_open: torch.Tensor
    seconds_per_method: Dict[str, float]


@dataclass
class _Prompts:
    """The encoded conditionings every method draws from: one row per item, and the shared ones."""

    c: Cond
    u: Cond
    concept: Cond


def _guided(method: str, denoiser, c: Cond, u: Cond, concept: Cond, w: float, steps: int, sigmas,
            guidance: Dict[str, SafeGuidance]):
    if method == "cfg":
        return CFGDenoise(denoiser, c, u, w)
    if method == "negative_prompt":
        return NegativePromptCFGDenoise(denoiser, c, concept, w)
    if method == "sld":
        return SLDDenoise(denoiser, c, u, concept, w, sld_preset("MEDIUM", steps), sigmas=sigmas)
    if method == "sld_max":
        return SLDDenoise(denoiser, c, u, concept, w, sld_preset("MAX", steps), sigmas=sigmas)
    if method in guidance:
        return SafeCFGDenoise(denoiser, c, u, w, guidance[method])
    raise ValueError(f"Unknown method {method!r}; choose from {METHODS}.")


def _sample_method(world, denoiser, method: str, prompts: _Prompts, row_item: torch.Tensor, noise: torch.Tensor,
                   sigmas: torch.Tensor, cfg_scale: float, steps: int, guidance: Dict[str, SafeGuidance],
                   batch_size: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(images, latents)`` of one method for every row, in batches of ``batch_size`` rows."""
    outs, lats = [], []
    for start in range(0, row_item.numel(), batch_size):
        rows = row_item[start:start + batch_size]
        n = rows.numel()
        guided = _guided(method, denoiser, prompts.c.index(rows), prompts.u.repeat_batch(n),
                         prompts.concept.repeat_batch(n), cfg_scale, steps, sigmas, guidance)
        x = world.schedule.noise_scaling(sigmas[0], noise[start:start + n], torch.zeros_like(noise[start:start + n]),
                                         world.schedule.is_max_denoise(sigmas))
        lat = sample_euler(guided, x, sigmas)
        lats.append(lat)
        outs.append(world.vae.decode(lat))
    return torch.cat(outs), torch.cat(lats)


def run_experiment(
    world,
    bundle: HGRBundle,
    items: Sequence[EvalItem],
    seeds: Sequence[int],
    cfg_scale: float = 6.0,
    steps: int = 20,
    scheduler: str = "normal",
    methods: Sequence[str] = METHODS,
    batch_size: int = 256,
    progress: Optional[Callable[[str], None]] = None,
    with_scores: bool = True,
) -> ExperimentResult:
    """Sample every item with every method and seed (same noise per item and seed across methods).

    ``progress`` is called once after each method, in the order of ``methods``, with a line saying what was sampled
    and how long it took. ``with_scores=False`` skips the harm scores (prompt, gate and image), for callers that
    only need images."""
    denoiser = DiscreteEpsDenoiser(world.net, world.schedule)
    encode = world.text_encoder.encode
    prompts = _Prompts(encode([it.text for it in items]), encode([""]),
                       encode([concept_text(bundle.meta.categories)]))
    guidance = SafeGuidance(bundle, GateConfig())
    safecfg_variants = {"safecfg": guidance, "safecfg_strength2": SafeGuidance(bundle, GateConfig(strength=2.0))}
    sigmas = get_sigmas(world.schedule, scheduler, steps)
    n_items, n_seeds = len(items), len(seeds)
    row_item = torch.arange(n_items).repeat_interleave(n_seeds)  # row r: item r // n_seeds, seed seeds[r % n_seeds]
    noise = noise_for_seeds(LATENT_SHAPE, [int(seeds[i % n_seeds]) for i in range(n_items * n_seeds)])
    images: Dict[str, torch.Tensor] = {}
    timing: Dict[str, float] = {}
    cfg_latents = torch.empty(0)
    for method in methods:
        t0 = time.perf_counter()
        images[method], latents = _sample_method(world, denoiser, method, prompts, row_item, noise, sigmas, cfg_scale,
                                                 steps, safecfg_variants, batch_size)
        if method == "cfg":
            cfg_latents = latents
        timing[method] = time.perf_counter() - t0
        if progress is not None:
            progress(f"sampled {method:17s} {row_item.numel()} images in {timing[method]:.1f} s")
    none = torch.zeros(0)
    if not with_scores:
        return ExperimentResult(list(items), list(seeds), images, cfg_latents, none, none, none, timing)
    with torch.no_grad():
        u_items = prompts.u.repeat_batch(n_items)
        redirected = guidance.redirected_negative(prompts.c, u_items)
        delta, prompt_scores, gate_open = redirected.delta, redirected.score, redirected.s > 0
        image_scores = none
        if cfg_latents.numel():
            per_row = judge_image(denoiser, cfg_latents, prompts.c.index(row_item), u_items.index(row_item),
                                  delta.index(row_item))
            image_scores = per_row.view(n_items, n_seeds).mean(1)
    return ExperimentResult(list(items), list(seeds), images, cfg_latents, prompt_scores, image_scores, gate_open,
                            timing)
