"""``python -m safecfg_core demo --out DIR``: SafeCFG against plain CFG and the baselines, measured.

Writes ``DIR/grid.png`` (rows: prompts; columns: methods), ``DIR/metrics.json`` and ``DIR/report.md``. Prompts are
fresh (scene seeds never used in training), half in training phrasings and half in held-out phrasings.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace

from .scene_seeds import DEMO_SCENE_SEED, EVAL_KINDS, EVAL_SPLITS, evaluation_seed, fresh_scene_seed_error

COMMAND = "demo"
HELP = "run the embedded demo world: grid.png, metrics.json and report.md for CFG, baselines and SafeCFG"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder (created)")
    parser.add_argument("--prompts", type=int, default=32,
                        help="prompts per kind (clean, gore, weapon) and phrasing split (default 32: 192 prompts)")
    parser.add_argument("--seeds", type=int, default=2, help="seeds per prompt (default 2)")
    parser.add_argument("--cfg", type=float, default=6.0, help="CFG scale (default 6)")
    parser.add_argument("--steps", type=int, default=20, help="Euler steps (default 20)")
    parser.add_argument("--scene-seed", type=int, default=DEMO_SCENE_SEED,
                        help="seed of the evaluation scenes (one that would reuse the shipped weights' training scenes "
                             "is refused)")
    parser.add_argument("--hgr", default=None, help="HGR file (default: the shipped demo HGR)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")


def build_items(per_kind: int, scene_seed: int):
    """Fresh clean, gore and weapon prompts in both phrasing splits, ground truth attached."""
    from .experiment import items_from_samples
    from .prompts import sample_prompts
    from .render import random_scenes

    items = []
    for split_no, split in enumerate(EVAL_SPLITS):
        for kind_no, kind in enumerate(EVAL_KINDS):
            seed = evaluation_seed(scene_seed, split_no, kind_no)
            scenes = random_scenes(per_kind, seed=seed, harm_fraction=0.0)
            if kind != "clean":
                scenes = [replace(s, **{kind: True}) for s in scenes]
            items += items_from_samples(sample_prompts(per_kind, seed=seed, split=split, scenes=scenes))
    return items


def run(args: argparse.Namespace) -> int:
    import torch

    from .experiment import (evaluator_accuracy, load_world_and_hgr, measure, pick_grid_rows, rewrite_reference,
                             run_experiment, vae_roundtrip_content, write_outputs)
    from .render import HARMS

    refused = fresh_scene_seed_error(args.scene_seed)
    if refused:
        print(f"error: {refused}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    try:
        world, bundle, hgr_path = load_world_and_hgr(args.hgr)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"demo world loaded; HGR {hgr_path} ({bundle.net.num_parameters():,} parameters, "
          f"threshold {bundle.meta.threshold})", flush=True)
    acc = evaluator_accuracy(world)
    print("evaluator accuracy on fresh renders: " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in acc.items()),
          flush=True)
    items = build_items(args.prompts, args.scene_seed)
    seeds = list(range(args.seeds))
    print(f"sampling {len(items)} prompts x {len(seeds)} seeds with each method ...", flush=True)
    result = run_experiment(world, bundle, items, seeds, cfg_scale=args.cfg, steps=args.steps,
                            progress=lambda msg: print(msg, flush=True))
    metrics = measure(world, result)
    metrics["gate"]["threshold"] = bundle.meta.threshold
    metrics.update(evaluator_accuracy=acc, vae_roundtrip_content=vae_roundtrip_content(world),
                   vae_roundtrip_content_by_harm={h: vae_roundtrip_content(world, harm=h) for h in HARMS},
                   rewrite_reference=rewrite_reference(world, bundle, items, seeds, cfg_scale=args.cfg, steps=args.steps),
                   cfg_scale=args.cfg, steps=args.steps, seconds=round(time.perf_counter() - t0, 1))
    command = "python -m safecfg_core demo " + " ".join(sys.argv[2:]) if len(sys.argv) > 2 else "python -m safecfg_core demo"
    paths = write_outputs(args.out, result, metrics, pick_grid_rows(result.items), command)
    print(open(paths["report"]).read())
    print(f"wrote {paths['grid']}, {paths['metrics']}, {paths['report']} in {metrics['seconds']:.0f} s")
    return 0
