"""``python -m safecfg_core align``: bake SafeCFG into the model as a LoRA ComfyUI loads (docs/METHOD.md,
"Model-level alignment (LoRA)"). Input: a prompt file without labels; the HGR judges which prompts to redirect.

Progress goes to stderr; Ctrl-C (or any interruption) keeps a checkpoint of the completed steps, and running the
same command again resumes it. An existing output file is never replaced unless ``--overwrite`` is given.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

COMMAND = "align"
HELP = "Fit a LoRA so plain CFG (and cfg 1) does what SafeCFG does; prompts only, no labels."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .cli import MODEL_LOADERS

    parser.add_argument("--prompts", required=True, help="text file, one prompt per line, no labels")
    parser.add_argument("--out", required=True, help="the LoRA file to write (.safetensors, ComfyUI's key format)")
    parser.add_argument("--hgr", default=None, help="HGR file that judges (default: the model's shipped HGR)")
    parser.add_argument("--model", default="demo", choices=sorted(MODEL_LOADERS), help="model to align")
    parser.add_argument("--cfg", type=float, default=6.0, help="the cfg scale SafeCFG is baked in at")
    parser.add_argument("--steps", type=int, default=20, help="sampling steps of the teacher's trajectories")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds per prompt, e.g. 0,1")
    parser.add_argument("--fit-steps", type=int, default=300, help="optimisation steps")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--beta", type=float, default=1.0, help="weight of the preservation term")
    parser.add_argument("--gamma", type=float, default=1.0, help="weight of the unconditional term")
    parser.add_argument("--layers", default=None, help="regular expression of the layer names to adapt (all)")
    parser.add_argument("--checkpoint", default=None, help="checkpoint file (default: OUT.ckpt.safetensors)")
    parser.add_argument("--checkpoint-every", type=int, default=50)
    parser.add_argument("--no-resume", action="store_true", help="start over even if a checkpoint exists")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    parser.add_argument("--seed", type=int, default=0, help="seed of the LoRA's initialisation and minibatches")


def _config(args: argparse.Namespace, out: Path):
    from .align import AlignConfig, FitConfig
    from .errors import TrainingInputError

    try:
        seeds = tuple(int(s) for s in str(args.seeds).split(",") if s.strip())
    except ValueError:
        raise TrainingInputError(f"--seeds must be comma-separated integers, got {args.seeds!r}.") from None
    ckpt = args.checkpoint or str(out) + ".ckpt.safetensors"
    fit = FitConfig(steps=args.fit_steps, batch_size=args.batch_size, lr=args.lr, rank=args.rank, beta=args.beta,
                    gamma=args.gamma, seed=args.seed, target_layers=args.layers,
                    checkpoint_every=args.checkpoint_every, checkpoint_path=ckpt, resume=not args.no_resume)
    return AlignConfig(cfg_scale=args.cfg, steps=args.steps, seeds=seeds, fit=fit)


def run(args: argparse.Namespace) -> int:
    from .align import FitProgress, LoRA, adaptable_layers, align_model, read_prompts
    from .align.setups import teacher_from_setup
    from .cli import load_model_setup
    from .errors import SafeCFGError, TrainingCancelled
    from .guidance import GateConfig, SafeGuidance
    from .hgr import HGRBundle

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        print(f"error: {out} exists; choose another --out or pass --overwrite to replace it.", file=sys.stderr)
        return 2
    try:
        prompts = read_prompts(args.prompts)
        config = _config(args, out)
        setup = load_model_setup(args.model)
        teacher, net, default_hgr = teacher_from_setup(setup)
        LoRA(adaptable_layers(net, args.layers), rank=1)  # refuses a network with nothing to adapt, before any work
        hgr_path = args.hgr or default_hgr
        if hgr_path is None:
            print(f"error: model {args.model!r} ships no HGR; pass --hgr FILE.", file=sys.stderr)
            return 2
        bundle = HGRBundle.load(hgr_path)
        guidance = SafeGuidance(bundle, GateConfig())
    except SafeCFGError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    def progress(p: FitProgress) -> None:
        if p.phase == "collect":
            print(p.message, file=sys.stderr)
        elif p.step == p.total or p.step % max(1, p.total // 20) == 0:
            eta = "" if p.eta_s is None else f", {p.eta_s:.0f} s left"
            print(f"step {p.step}/{p.total} loss {p.loss:.5g}{eta}", file=sys.stderr)

    print(f"aligning {args.model} on {len(prompts)} prompts (HGR {hgr_path})", file=sys.stderr)
    try:
        result = align_model(teacher, net, guidance, prompts, config, output_path=out,
                             model_id=getattr(setup, "model_id", "") or args.model, progress=progress)
    except TrainingCancelled as exc:
        print(f"cancelled: {exc}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        ckpt = config.fit.checkpoint_path
        if ckpt and Path(ckpt).exists():
            print(f"interrupted; the completed steps are in {ckpt}: run the same command again to resume.",
                  file=sys.stderr)
        else:
            print("interrupted before the first fit step; nothing to resume.", file=sys.stderr)
        return 130
    except SafeCFGError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(result.report())
    return 0
