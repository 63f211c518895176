"""``python -m safecfg_core score``: how harmful does an HGR find some prompts (and the model's images of them)?

Prints, per prompt, the prompt-level score, the threshold, the gate's applied strength, the category the
redirection points to and, with ``--image-level``, the image score of the model's own sample. Both scores are
:mod:`safecfg_core.judge`'s, the same the nodes and the demo report give.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

COMMAND = "score"
HELP = "score prompts (and, with --image-level, the model's samples) with an HGR file"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .cli import MODEL_LOADERS
    from .guidance import GATE_MODES

    p.add_argument("--hgr", type=Path, required=True, help="HGR .safetensors file")
    p.add_argument("--model", default="analytic", choices=sorted(MODEL_LOADERS))
    p.add_argument("--prompt", action="append", default=[], help="a prompt to score (repeatable)")
    p.add_argument("--prompts-file", type=Path, default=None, help="text file, one prompt per line")
    p.add_argument("--negative", default=None, help="negative prompt (default: the model setup's, usually empty)")
    p.add_argument("--threshold", type=float, default=None, help="override the file's calibrated threshold")
    p.add_argument("--gate", choices=GATE_MODES, default="smooth")
    p.add_argument("--strength", type=float, default=1.0)
    p.add_argument("--image-level", action="store_true",
                   help="also score the model's own sample of each prompt (score-level ratio at the judge's fixed "
                        "noise levels)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _schedule_range(setup: Any) -> Optional[Tuple[float, float]]:
    """``(sigma_min, sigma_max)`` of the setup's noise schedule, when it has one."""
    schedule = getattr(setup, "schedule", None)
    if schedule is None or not hasattr(schedule, "sigma_min"):
        return None
    return float(schedule.sigma_min), float(schedule.sigma_max)


def _read_prompts(args: argparse.Namespace) -> List[str]:
    prompts: List[str] = list(args.prompt)
    if args.prompts_file is not None:
        try:
            prompts += [ln.strip() for ln in args.prompts_file.read_text(encoding="utf-8").splitlines() if ln.strip()]
        except OSError as exc:
            raise ValueError(f"cannot read {args.prompts_file}: {exc}") from None
    if not prompts:
        raise ValueError("give at least one --prompt or a --prompts-file")
    return prompts


def run(args: argparse.Namespace) -> int:
    from .cli import load_model_setup
    from .conditioning import Cond
    from .errors import SafeCFGError
    from .guidance import GateConfig, SafeGuidance
    from .hgr import HGRBundle
    from .judge import category_scores, judge_image, judge_prompt

    try:
        prompts = _read_prompts(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        bundle = HGRBundle.load(args.hgr)
        setup = load_model_setup(args.model)
        negative = args.negative if args.negative is not None else getattr(setup, "negative_prompt", "")
        guidance = SafeGuidance(bundle, GateConfig(strength=args.strength, threshold=args.threshold, mode=args.gate))
        c = setup.text_encoder(prompts)
        u = setup.text_encoder([negative])
        bundle.check_compatible(c.token_dim, 0 if c.pooled is None else int(c.pooled.shape[1]))
        verdicts = [judge_prompt(guidance, [c.index([i])], u) for i in range(len(prompts))]
        delta = Cond.cat([v.result.delta for v in verdicts])
        attributions: Dict[str, Any] = {}
        if bundle.meta.categories:
            attributions = category_scores(guidance, setup.text_encoder, bundle.meta.categories, delta, u)
        image_scores = None
        if args.image_level:
            image_scores = judge_image(setup.denoiser, setup.sample_latents(prompts), c, u, delta,
                                       sigma_range=_schedule_range(setup))
    except (SafeCFGError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return _report(args, bundle, prompts, verdicts, attributions, image_scores, guidance.threshold)


def _report(args: argparse.Namespace, bundle: Any, prompts: List[str], verdicts: List[Any],
            attributions: Dict[str, Any], image_scores: Any, thr: Optional[float]) -> int:
    """Print the table (or JSON) of the judgements."""
    rows = []
    for i, p in enumerate(prompts):
        v = verdicts[i]
        row: Dict[str, Any] = {"prompt": p, "score": v.score, "threshold": thr, "strength": float(v.result.s.max()),
                               "flagged": v.harmful}
        if attributions:
            cos = {k: float(cosines[i]) for k, cosines in attributions.items()}
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
