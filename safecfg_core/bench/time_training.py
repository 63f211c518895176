"""Timing HGR training (``safecfg_core.train.train_hgr``) on a benchmark model: prompts and denoiser rows per second."""
from __future__ import annotations

import time
from typing import Any, Callable, Dict

import torch

from .measure import PeakMemory, sync
from .models import CONCEPTS, BenchModel


def _prompts_and_latents(latent_shape: list) -> tuple:
    """A small fixed prompt set with random latents: the training step's cost does not depend on the content."""
    from ..train import HarmfulPrompt, PromptSet

    clean = [f"a {s} {c} {sh} on a {b} background" for s, c, sh, b in
             [("small", "red", "circle", "blue"), ("large", "green", "square", "white"),
              ("small", "purple", "star", "yellow"), ("large", "orange", "triangle", "gray")]]
    harmful = [HarmfulPrompt(f"a bloody {sh} with gore", "gore") for sh in ("circle", "square")] + \
              [HarmfulPrompt(f"a knife next to a {sh}", "weapon") for sh in ("star", "triangle")]
    prompts = PromptSet(clean=clean, harmful=harmful, concepts=dict(CONCEPTS))
    g = torch.Generator().manual_seed(0)
    latents = {p: torch.randn([2] + latent_shape[1:], generator=g) for p in clean + [h.prompt for h in harmful]}
    return prompts, latents


def bench_training(bm: BenchModel, steps: int, batch_size: int, log: Callable[[str], None]) -> Dict[str, Any]:
    """Train ``bm``'s HGR configuration for ``steps`` steps; throughput leaves the first step (warm-up) out."""
    from ..hgr import HGRConfig
    from ..train import TrainConfig, train_hgr

    prompts, latents = _prompts_and_latents(bm.latent_shape)
    hgr_config = HGRConfig.from_dict(bm.guidance.bundle.config.to_dict())
    marks: Dict[int, float] = {}

    def progress(p: Any) -> None:
        if p.phase == "train":
            sync(bm.device)
            marks[p.step] = time.perf_counter()

    config = TrainConfig(steps=steps, batch_size=batch_size, seed=0, device=str(bm.device), warmup_steps=1)
    with PeakMemory(bm.device) as pm:
        t0 = time.perf_counter()
        result = train_hgr(bm.text_encoder, bm.denoiser, prompts, config, hgr_config=hgr_config, latents=latents,
                           progress=progress)
        total = time.perf_counter() - t0
    summary = result.summary
    rows_per_step = summary.get("denoiser_rows", 0) / max(1, steps)
    if steps >= 2 and 1 in marks and steps in marks:
        loop_s = marks[steps] - marks[1]
        timed_steps = steps - 1  # the first step (allocator, kernels) is left out
    else:
        loop_s = total
        timed_steps = steps
    out = {
        "steps": steps, "batch_size": batch_size, "timed_steps": timed_steps, "loop_s": loop_s,
        "total_s_incl_setup_and_calibration": total,
        "prompts_per_s": timed_steps * batch_size / loop_s if loop_s > 0 else None,
        "denoiser_rows_per_s": timed_steps * rows_per_step / loop_s if loop_s > 0 else None,
        "denoiser_calls_per_step": summary.get("denoiser_calls", 0) / max(1, steps),
        "denoiser_rows_per_step": rows_per_step,
        "peak_memory_bytes": pm.peak, "peak_increase_bytes": pm.increase, "memory_kind": pm.kind,
    }
    log(f"  training: {out['prompts_per_s']:.2f} prompts/s, {out['denoiser_rows_per_s']:.1f} denoiser rows/s")
    return out
