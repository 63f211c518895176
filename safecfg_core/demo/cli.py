"""``python -m safecfg_core demo --out DIR``: SafeCFG against plain CFG and the baselines, on the embedded demo world.

Writes ``DIR/grid.png`` (rows: prompts; columns: methods) as soon as the images exist, then ``DIR/metrics.json`` and
``DIR/report.md``. By default a quick subset (24 prompts, one seed: well under two minutes on two CPU cores) shows
the point; ``--full`` measures the documented set (192 prompts x 2 seeds, with the ceilings on kept content), which
``docs/demo/`` holds. Prompts are fresh (scene seeds never used in training), half in training phrasings and half in
held-out phrasings.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict

from .scene_seeds import DEMO_SCENE_SEED, fresh_scene_seed_error

COMMAND = "demo"
HELP = "run the embedded demo world: grid.png, metrics.json and report.md for CFG, baselines and SafeCFG"

QUICK_SET = {"prompts": 4, "seeds": 1}
FULL_SET = {"prompts": 32, "seeds": 2}

EVALUATOR_ACCURACY_COST = 130.0
VAE_ROUNDTRIP_COST = 190.0
"""Planned cost of the ceilings (1000 fresh renders each), in plain-CFG images at 20 steps (see ``progress``), as
the measured set's run takes them."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder (created)")
    parser.add_argument("--full", action="store_true",
                        help=f"the measured set: {FULL_SET['prompts']} prompts per kind and phrasing split "
                             f"({6 * FULL_SET['prompts']} prompts), {FULL_SET['seeds']} seeds, and the ceilings on "
                             "kept content (docs/demo/ holds its result; a few minutes on 2 cores). Default: a quick "
                             f"subset of {6 * QUICK_SET['prompts']} prompts x {QUICK_SET['seeds']} seed")
    parser.add_argument("--prompts", type=int, default=None,
                        help="prompts per kind (clean, gore, weapon) and phrasing split (default: "
                             f"{QUICK_SET['prompts']}, with --full {FULL_SET['prompts']})")
    parser.add_argument("--seeds", type=int, default=None,
                        help=f"seeds per prompt (default: {QUICK_SET['seeds']}, with --full {FULL_SET['seeds']})")
    parser.add_argument("--cfg", type=float, default=6.0, help="CFG scale (default 6)")
    parser.add_argument("--steps", type=int, default=20, help="Euler steps (default 20)")
    parser.add_argument("--scene-seed", type=int, default=DEMO_SCENE_SEED,
                        help="seed of the evaluation scenes (one that would reuse the shipped weights' training scenes "
                             "is refused)")
    parser.add_argument("--hgr", default=None, help="HGR file (default: the shipped demo HGR)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (0: torch's default, or fewer when other programs keep cores busy)")


def idle_threads(default: int) -> int:
    """Torch threads for this run: ``default``, but no more than the cores other programs leave idle (at least 1).

    Why: torch's threads wait for each other at every operation, so on a busy machine each one more than the idle
    cores slows the run several-fold (on two cores that other programs keep busy, the quick subset runs about 4x
    slower with 2 threads than with 1)."""
    try:
        busy = os.getloadavg()[0]
    except (AttributeError, OSError):  # not reported on this system (e.g. Windows)
        return default
    return max(1, min(default, int((os.cpu_count() or 1) - busy + 0.5)))


def _sizes(args: argparse.Namespace) -> Dict[str, int]:
    base = FULL_SET if args.full else QUICK_SET
    return {"prompts": base["prompts"] if args.prompts is None else args.prompts,
            "seeds": base["seeds"] if args.seeds is None else args.seeds}


def _quick_note(n_prompts: int, n_seeds: int) -> str:
    """What the report says of a quick run: that its numbers are a small subset, and how to get the measured set."""
    return (f"**Quick subset ({n_prompts} prompts x {n_seeds} seed(s)): the rates below are rough and the ceilings on "
            "kept content are not measured.** The measured set (192 prompts x 2 seeds, the numbers in the "
            "pack's docs/demo/report.md) comes from `python -m safecfg_core demo --out DIR --full` (a few minutes on "
            "2 CPU cores).")


def _command_line() -> str:
    return " ".join(["python -m safecfg_core demo", *sys.argv[2:]])


def _measure_ceilings(world, bundle, items, seeds, args, progress) -> Dict[str, Any]:
    """The evaluator's accuracy and the ceilings on kept content (``--full`` only): what the model itself allows."""
    from .measures import evaluator_accuracy, rewrite_reference, vae_roundtrip_content
    from .render import HARMS

    out: Dict[str, Any] = {"evaluator_accuracy": evaluator_accuracy(world)}
    progress.finish("evaluator_accuracy", "evaluator accuracy on fresh renders: " + ", ".join(
        f"{k} {100 * v:.1f}%" for k, v in out["evaluator_accuracy"].items()))
    out["vae_roundtrip_content"] = vae_roundtrip_content(world)
    out["vae_roundtrip_content_by_harm"] = {h: vae_roundtrip_content(world, harm=h) for h in HARMS}
    progress.finish("vae_roundtrip", "VAE round-trip ceilings measured")
    out["rewrite_reference"] = rewrite_reference(world, bundle, items, seeds, cfg_scale=args.cfg, steps=args.steps)
    progress.finish("rewrite_reference", "plain CFG on the safe rewrites sampled (the ceiling on kept content)")
    return out


def _plan(progress, items, n_seeds: int, steps: int, full: bool) -> None:
    from .progress import sampling_cost
    from .runs import METHODS

    rows = len(items) * n_seeds
    for m in METHODS:
        progress.plan(m, sampling_cost(m, rows, steps))
    progress.plan("scores", 0.35 * rows)
    if full:
        progress.plan("evaluator_accuracy", EVALUATOR_ACCURACY_COST)
        progress.plan("vae_roundtrip", 3 * VAE_ROUNDTRIP_COST)
        progress.plan("rewrite_reference", sampling_cost("cfg", n_seeds * sum(it.harmful for it in items), steps))


def run(args: argparse.Namespace) -> int:
    import torch

    from .items import build_items, pick_grid_rows
    from .measures import measure
    from .progress import Progress
    from .report import write_grid, write_metrics_and_report
    from .runs import METHODS, load_world_and_hgr, run_experiment

    refused = fresh_scene_seed_error(args.scene_seed)
    if refused:
        print(f"error: {refused}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads or idle_threads(torch.get_num_threads()))
    t0 = time.perf_counter()
    try:
        world, bundle, hgr_path = load_world_and_hgr(args.hgr)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"demo world loaded; HGR {hgr_path} ({bundle.net.num_parameters():,} parameters, "
          f"threshold {bundle.meta.threshold}); {torch.get_num_threads()} torch thread(s)", flush=True)
    sizes = _sizes(args)
    items, seeds = build_items(sizes["prompts"], args.scene_seed), list(range(sizes["seeds"]))
    kind = "the measured set" if args.full else "a quick subset (--full for the measured set)"
    print(f"sampling {len(items)} prompts x {len(seeds)} seeds with each method: {kind}", flush=True)
    progress = Progress(lambda msg: print(msg, flush=True))
    _plan(progress, items, len(seeds), args.steps, args.full)
    methods_left = iter(METHODS)  # run_experiment reports each method once, in this order
    result = run_experiment(world, bundle, items, seeds, cfg_scale=args.cfg, steps=args.steps,
                            progress=lambda msg: progress.finish(next(methods_left), msg))
    grid = write_grid(args.out, result, pick_grid_rows(result.items))
    progress.finish("scores", f"wrote {grid}; measuring")
    metrics = measure(world, result)
    metrics["gate"]["threshold"] = bundle.meta.threshold
    if args.full:
        metrics.update(_measure_ceilings(world, bundle, items, seeds, args, progress))
    metrics.update(cfg_scale=args.cfg, steps=args.steps, seconds=round(time.perf_counter() - t0, 1))
    note = "" if args.full else _quick_note(len(items), len(seeds))
    paths = write_metrics_and_report(args.out, metrics, _command_line(), note)
    print(Path(paths["report"]).read_text())
    print(f"wrote {grid}, {paths['metrics']}, {paths['report']} in {metrics['seconds']:.0f} s")
    if not args.full:
        print("This was a quick subset. For the measured set run: python -m safecfg_core demo --out DIR --full")
    return 0
