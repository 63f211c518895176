"""``python -m safecfg_core score``: how harmful does an HGR find some prompts (and the model's images of them)?

Prints, per prompt, the prompt-level score, the threshold, the gate's applied strength, the category the
redirection points to and, with ``--image-level``, the score-level harm of the model's own sample.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List

COMMAND = "score"
HELP = "score prompts (and, with --image-level, the model's samples) with an HGR file"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .cli import MODEL_LOADERS
    from .guidance import GATE_MODES

    p.add_argument("--hgr", type=Path, required=True, help="HGR .safetensors file")
    p.add_argument("--model", default="analytic", choices=sorted(MODEL_LOADERS))
    p.add_argument("--prompt", action="append", default=[], help="a prompt to score (repeatable)")
    p.add_argument("--prompts-file", type=Path, default=None, help="text file, one prompt per line")
    p.add_argument("--negative", default=None, help="negative prompt (default: the model world's, usually empty)")
    p.add_argument("--threshold", type=float, default=None, help="override the file's calibrated threshold")
    p.add_argument("--gate", choices=GATE_MODES, default="smooth")
    p.add_argument("--strength", type=float, default=1.0)
    p.add_argument("--image-level", action="store_true", help="also score the model's own sample of each prompt")
    p.add_argument("--sigmas", default="0.5,1,2", help="sigmas for --image-level (comma separated)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    import torch

    from .cli import load_model_world
    from .errors import SafeCFGError
    from .guidance import (GateConfig, SafeGuidance, category_attribution, concept_directions, redirect,
                           score_level_harm)
    from .hgr import HGRBundle

    prompts: List[str] = list(args.prompt)
    if args.prompts_file is not None:
        try:
            prompts += [ln.strip() for ln in args.prompts_file.read_text(encoding="utf-8").splitlines() if ln.strip()]
        except OSError as exc:
            print(f"error: cannot read {args.prompts_file}: {exc}", file=sys.stderr)
            return 2
    if not prompts:
        print("error: give at least one --prompt or a --prompts-file", file=sys.stderr)
        return 2
    try:
        bundle = HGRBundle.load(args.hgr)
        world = load_model_world(args.model)
        negative = args.negative if args.negative is not None else getattr(world, "negative_prompt", "")
        gate = GateConfig(strength=args.strength, threshold=args.threshold, mode=args.gate)
        guidance = SafeGuidance(bundle, gate)
        c = world.text_encoder(prompts)
        u = world.text_encoder([negative] * len(prompts))
        bundle.check_compatible(c.token_dim, 0 if c.pooled is None else int(c.pooled.shape[1]))
        res = guidance.redirected_negative(c, u)
        attributions: Dict[str, Any] = {}
        if bundle.meta.categories:
            dirs = concept_directions(world.text_encoder, bundle.meta.categories, u)
            attributions = category_attribution(res.delta, dirs)
        image_scores = None
        if args.image_level:
            x0 = world.sample_latents(prompts)
            sig = [float(s) for s in args.sigmas.split(",") if s.strip()]
            g = torch.Generator().manual_seed(args.seed)
            # The judge uses the full, ungated redirection: the score asks "what would HGR remove here?".
            u_star_full = redirect(u, res.delta, torch.ones(len(prompts)))
            image_scores = score_level_harm(world.denoiser, x0, c, u, u_star_full, sig, generator=g)
    except (SafeCFGError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    thr = guidance.threshold
    rows = []
    for i, p in enumerate(prompts):
        row: Dict[str, Any] = {"prompt": p, "score": float(res.score[i]), "threshold": thr, "strength": float(res.s[i]),
                               "flagged": bool(thr is not None and res.score[i] >= thr)}
        if attributions:
            cos = {k: float(v[i]) for k, v in attributions.items()}
            row["category"] = max(cos, key=cos.get)
            row["category_cosine"] = cos
        if image_scores is not None:
            row["image_score"] = float(image_scores[i])
        rows.append(row)
    if args.json:
        print(json.dumps({"hgr": str(args.hgr), "description": bundle.describe(), "results": rows}, indent=2))
        return 0
    print(bundle.describe())
    thr_s = "none" if thr is None else f"{thr:.4g}"
    for r in rows:
        extra = f"  -> {r['category']} ({r['category_cosine'][r['category']]:+.2f})" if "category" in r else ""
        img = f"  image {r['image_score']:.3f}" if "image_score" in r else ""
        flag = "HARMFUL" if r["flagged"] else "clean  "
        print(f"{flag}  score {r['score']:.4g} (threshold {thr_s})  s={r['strength']:.2f}{img}{extra}  {r['prompt']}")
    return 0
