"""``python -m safecfg_core eval --prompts FILE.jsonl --out DIR``: the demo's measures on any prompt file.

Each line: ``{"prompt": "...", "harm": "gore" | "weapon" | null}``. Unknown words are fine (the text encoder is a
real language model). Shape and colors to check are read off the prompt's vocabulary words where present.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

COMMAND = "eval"
HELP = "measure CFG, baselines and SafeCFG on the demo model for the prompts of a JSONL file"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompts", required=True, help='JSONL file: {"prompt": "...", "harm": "gore"|"weapon"|null}')
    parser.add_argument("--out", required=True, help="output folder (created)")
    parser.add_argument("--seeds", type=int, default=2, help="seeds per prompt (default 2)")
    parser.add_argument("--cfg", type=float, default=6.0, help="CFG scale (default 6)")
    parser.add_argument("--steps", type=int, default=20, help="Euler steps (default 20)")
    parser.add_argument("--hgr", default=None, help="HGR file (default: the shipped demo HGR)")


def run(args: argparse.Namespace) -> int:
    from .items import pick_grid_rows, read_prompt_file
    from .measures import measure
    from .report import write_outputs
    from .runs import load_world_and_hgr, run_experiment

    t0 = time.perf_counter()
    try:
        items = read_prompt_file(args.prompts)
        world, bundle, _ = load_world_and_hgr(args.hgr)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result = run_experiment(world, bundle, items, list(range(args.seeds)), cfg_scale=args.cfg, steps=args.steps,
                            progress=lambda msg: print("  " + msg, flush=True))
    metrics = measure(world, result)
    metrics["gate"]["threshold"] = bundle.meta.threshold
    metrics["per_prompt"] = [
        {"prompt": it.text, "harm": list(it.harms) or None, "checked": it.expect,
         "prompt_score": round(float(result.prompt_scores[i]), 5),
         "image_score": round(float(result.image_scores[i]), 5) if result.image_scores.numel() else None,
         "gate_open": bool(result.gate_open[i])}
        for i, it in enumerate(result.items)
    ]
    metrics.update(cfg_scale=args.cfg, steps=args.steps, seconds=round(time.perf_counter() - t0, 1))
    paths = write_outputs(args.out, result, metrics, pick_grid_rows(result.items),
                          "python -m safecfg_core eval " + " ".join(sys.argv[2:]))
    print(Path(paths["report"]).read_text())
    print(f"wrote {paths['grid']}, {paths['metrics']}, {paths['report']}")
    return 0
