"""Timing complete sampling runs of every method, interleaved so that drift in clock speed or load hits all alike."""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

from .measure import PeakMemory, fmt_seconds, quantiles, sync
from .models import BenchModel

METHODS = ("cfg", "safecfg", "negprompt", "sld")
METHOD_LABELS = {
    "cfg": "plain CFG",
    "safecfg": "SafeCFG (HGR + CFG)",
    "negprompt": "negative prompt (concepts)",
    "sld": "SLD MEDIUM",
}
PASSES_PER_STEP = {"cfg": 2, "safecfg": 2, "negprompt": 2, "sld": 3}


def make_guided(method: str, bm: BenchModel, cfg_scale: float, steps: int, sigmas: torch.Tensor) -> Any:
    """The guided denoiser of ``method``; built inside the timed region, so SafeCFG's HGR run is timed too."""
    from ..baselines import NegativePromptCFGDenoise, SLDDenoise, sld_preset
    from ..sampling import CFGDenoise, SafeCFGDenoise

    if method == "cfg":
        return CFGDenoise(bm.denoiser, bm.c, bm.u, cfg_scale)
    if method == "safecfg":
        return SafeCFGDenoise(bm.denoiser, bm.c, bm.u, cfg_scale, bm.guidance)
    if method == "negprompt":
        return NegativePromptCFGDenoise(bm.denoiser, bm.c, bm.concept, cfg_scale)
    if method == "sld":
        return SLDDenoise(bm.denoiser, bm.c, bm.u, bm.concept, cfg_scale, sld_preset("MEDIUM", steps), sigmas=sigmas)
    raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")


def _timed(device: torch.device, fn: Callable[[], Any]) -> float:
    """Wall-clock seconds of ``fn`` with the device's queued work included."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def _interleaved_times(bm: BenchModel, methods: Sequence[str], reps: int, run_once: Callable[[str], None],
                       log: Callable[[str], None]) -> Dict[str, List[float]]:
    """Every repetition runs every method once, in an order rotated by one per repetition."""
    for m in methods:  # warm-up (kernels, allocator, caches)
        run_once(m)
    times: Dict[str, List[float]] = {m: [] for m in methods}
    for r in range(reps):
        order = list(methods[r % len(methods):]) + list(methods[:r % len(methods)])
        for m in order:
            times[m].append(_timed(bm.device, lambda: run_once(m)))
        log(f"  rep {r + 1}/{reps}: " + ", ".join(f"{m} {fmt_seconds(times[m][-1])}" for m in methods))
    return times


def _rows(methods: Sequence[str], times: Dict[str, List[float]], memory: Dict[str, PeakMemory]) -> List[Dict[str, Any]]:
    stats = {m: quantiles(times[m]) for m in methods}
    base = stats["cfg"]["median"] if "cfg" in stats else None
    rows = []
    for m in methods:
        s = stats[m]
        paired: Optional[float] = None
        if "cfg" in times:  # the ratio within each repetition, robust to drift between repetitions
            paired = statistics.median(t / c for t, c in zip(times[m], times["cfg"]))
        rows.append({
            "method": m, "label": METHOD_LABELS[m], "passes_per_step": PASSES_PER_STEP[m],
            "median_s": s["median"], "q1_s": s["q1"], "q3_s": s["q3"], "min_s": s["min"], "max_s": s["max"],
            "ratio_to_cfg": (s["median"] / base) if base else None, "ratio_to_cfg_per_rep_median": paired,
            "peak_memory_bytes": memory[m].peak, "peak_increase_bytes": memory[m].increase, "times_s": times[m],
        })
    return rows


def bench_sampling(bm: BenchModel, methods: Sequence[str], steps: int, reps: int, cfg_scale: float,
                   log: Callable[[str], None]) -> Dict[str, Any]:
    """Times, the HGR's own time per prompt and peak memory of each method; the rows of the report's table."""
    from ..sampling import prepare_noise, sample
    from ..schedules import get_sigmas

    sigmas = get_sigmas(bm.schedule, "normal", steps)
    noise = prepare_noise(bm.latent_shape, 0).to(bm.device)

    def run_once(method: str) -> None:
        with torch.no_grad():
            guided = make_guided(method, bm, cfg_scale, steps, sigmas)
            sample(guided, bm.schedule, noise=noise, sigmas=sigmas, device=bm.device)

    times = _interleaved_times(bm, methods, reps, run_once, log)
    # HGR alone, once per prompt (what SafeCFG adds before the loop)
    with torch.no_grad():
        hgr_times = [_timed(bm.device, lambda: bm.guidance.redirected_negative(bm.c, bm.u))
                     for _ in range(max(3, reps))]
    memory: Dict[str, PeakMemory] = {}
    for m in methods:  # separate runs: the memory probes must not disturb the timed ones
        with PeakMemory(bm.device) as memory[m]:
            run_once(m)
    mem_kind = memory[methods[-1]].kind if methods else None
    return {"rows": _rows(methods, times, memory), "hgr_per_prompt": quantiles(hgr_times), "memory_kind": mem_kind}
