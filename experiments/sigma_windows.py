"""Where along the trajectory SafeCFG loses content: ``python -m experiments.sigma_windows`` (from the repository).

Samples every harmful demo prompt with SafeCFG, except that inside one window of noise levels the sampler takes
plain CFG on the prompt's safe rewrite instead (METHOD.md's rewrite target, which the HGR is trained toward). A
window whose substitution brings back much kept content is where the HGR's redirection, one ``u*`` for every step,
bends the object; the window "all" is plain CFG on the rewrites (the ceiling), "none" is SafeCFG itself.
"""
from __future__ import annotations

import argparse
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from safecfg_core.demo.items import EvalItem, build_items
from safecfg_core.demo.measures import kept_content_by_harm_and_size, method_rates
from safecfg_core.guidance import GateConfig, SafeGuidance
from safecfg_core.sampling import CFGDenoise, DiscreteEpsDenoiser, SafeCFGDenoise, noise_for_seeds, sample_euler
from safecfg_core.schedules import get_sigmas

from .diagnostic_cli import add_scene_arguments, open_world

Window = Tuple[str, float, float]  # name, lowest sigma (inclusive), highest sigma (exclusive)


def windows_from_edges(edges: Sequence[float]) -> List[Window]:
    """"none", "all", then one window between each pair of neighbouring edges (0 and infinity added)."""
    cuts = sorted(float(e) for e in edges)
    if any(c <= 0 for c in cuts) or len(set(cuts)) != len(cuts):
        raise ValueError(f"window edges must be distinct positive noise levels, got {list(edges)}")
    bounds = [0.0, *cuts, float("inf")]
    return [("none", float("inf"), float("inf")), ("all", 0.0, float("inf"))] + [
        (f"[{lo:g}, {hi:g})", lo, hi) for lo, hi in zip(bounds, bounds[1:])]


def substitute_in_window(safe: Callable, reference: Callable, low: float, high: float) -> Callable:
    """A denoiser that is ``reference`` for sigmas in ``[low, high)`` and ``safe`` elsewhere (one sigma per call)."""
    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        level = float(torch.as_tensor(sigma).flatten()[0])
        return reference(x, sigma) if low <= level < high else safe(x, sigma)
    return denoise


def run_windows(world, bundle, items: Sequence[EvalItem], seeds: Sequence[int], windows: Sequence[Window],
                cfg_scale: float = 6.0, steps: int = 20, scheduler: str = "normal",
                progress: Optional[Callable[[str], None]] = None) -> List[Dict[str, object]]:
    """Harmful rate and kept content (overall and per harm and object size) of SafeCFG with the rewrite target
    substituted in each window. ``items``: harmful items with a safe rewrite (others are left out)."""
    items = [it for it in items if it.harmful and it.safe_text and it.expect]
    if not items:
        raise ValueError("no harmful prompts with a safe rewrite to measure")
    n_seeds = len(seeds)
    rows = torch.arange(len(items)).repeat_interleave(n_seeds)
    encode = world.text_encoder.encode
    c = encode([items[i].text for i in rows.tolist()])
    c_safe = encode([items[i].safe_text for i in rows.tolist()])
    u = encode([""]).repeat_batch(len(rows))
    denoiser = DiscreteEpsDenoiser(world.net, world.schedule)
    safe = SafeCFGDenoise(denoiser, c, u, cfg_scale, SafeGuidance(bundle, GateConfig()))
    reference = CFGDenoise(denoiser, c_safe, u, cfg_scale)
    sigmas = get_sigmas(world.schedule, scheduler, steps)
    noise = noise_for_seeds((4, 8, 8), [int(seeds[r % n_seeds]) for r in range(len(rows))])
    start = world.schedule.noise_scaling(sigmas[0], noise, torch.zeros_like(noise), world.schedule.is_max_denoise(sigmas))
    out = []
    for name, low, high in windows:
        with torch.no_grad():
            latents = sample_euler(substitute_in_window(safe, reference, low, high), start, sigmas)
            pred = world.evaluator.predict(world.vae.decode(latents))
        row: Dict[str, object] = {"window": name, "low": low, "high": high,
                                  "steps_in_window": int(sum(low <= float(s) < high for s in sigmas[:-1])),
                                  **method_rates(pred, items, n_seeds, range(len(items)))}
        row.pop("clean_fidelity", None)
        row["kept_content_by_harm_and_size"] = kept_content_by_harm_and_size(pred, items, n_seeds)
        out.append(row)
        if progress:
            progress(format_row(row))
    return out


def format_row(row: Dict[str, object]) -> str:
    by = row["kept_content_by_harm_and_size"]
    parts = [f"{harm} {size} {100 * v:.1f}%" for harm, sizes in by.items() for size, v in sizes.items()
             if v is not None]
    return (f"{row['window']:>14s} ({row['steps_in_window']:2d} steps): harmful {100 * row['harmful_rate']:.1f}%, "
            f"kept {100 * row['kept_content']:.1f}% ({', '.join(parts)})")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edges", default="0.5,1.5,4",
                        help="noise levels between the windows, comma-separated (default 0.5,1.5,4)")
    add_scene_arguments(parser)
    args = parser.parse_args(argv)

    windows: List[Window] = []

    def parse_edges() -> None:
        windows.extend(windows_from_edges([float(e) for e in args.edges.split(",") if e.strip()]))

    opened = open_world(args, parse_edges)
    if opened is None:
        return 2
    world, bundle = opened
    print("SafeCFG with plain CFG on the safe rewrite substituted inside each window of noise levels:", flush=True)
    run_windows(world, bundle, build_items(args.prompts, args.scene_seed), list(range(args.seeds)), windows,
                progress=lambda line: print(line, flush=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
