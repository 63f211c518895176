"""``python -m safecfg_core train``: train an HGR on a model world, with progress, checkpoints and resume.

Ctrl-C stops cleanly: the completed steps are checkpointed and the command says how to resume.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any, Optional

from .errors import SafeCFGError, TrainingCancelled
from .hgr import format_parameter_count
from .train import parse_per_category

COMMAND = "train"
HELP = "train an HGR for a model (--model analytic: the built-in analytic toy) and save it as .safetensors"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .cli import MODEL_LOADERS

    p.add_argument("--model", default="analytic", choices=sorted(MODEL_LOADERS), help="model world to train for")
    p.add_argument("--prompts", type=Path, default=None,
                   help="prompt set JSON ({clean: [...], harmful: [{prompt, category, rewrite?}], concepts: {...}}); "
                        "default: the model world's built-in prompts")
    p.add_argument("--out", type=Path, default=None, help="output HGR file (default: hgr-<model>.safetensors)")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--clean-penalty", type=float, default=0.05)
    p.add_argument("--target-gain", type=parse_per_category, default=1.0,
                   help="multiply harmful targets' offset from D(u), one number or per category (gore=2,weapon=4): "
                        "1 = METHOD.md's target; g aims (g - 1) times the prompt-to-rewrite distance past a safe rewrite")
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="checkpoint file (default: <out>.ckpt.safetensors); latents are cached next to it")
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint if it exists")
    p.add_argument("--device", default="cpu")
    p.add_argument("--autocast", choices=["bf16", "fp16"], default=None, help="mixed precision for the model passes")
    p.add_argument("--fpr", type=float, default=0.01, help="clean false-positive rate for the threshold")
    p.add_argument("--latent-batch", type=int, default=8,
                   help="prompts per call of the model's sampler when generating the training latents")
    p.add_argument("--log-every", type=int, default=25, help="print progress every N steps")
    p.add_argument("--json", action="store_true", help="print the training summary as JSON at the end")


def _fmt_s(s: Optional[float]) -> str:
    if s is None:
        return "?"
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"


def run(args: argparse.Namespace) -> int:
    from .cli import load_model_world
    from .train import HarmfulPrompt, PromptSet, TrainConfig, TrainProgress, train_hgr

    world = load_model_world(args.model)
    out: Path = args.out or Path(f"hgr-{args.model}.safetensors")
    ckpt: Path = args.checkpoint or out.with_name(out.stem + ".ckpt.safetensors")
    try:
        if args.prompts is not None:
            prompts = PromptSet.from_file(args.prompts)
        else:
            prompts = PromptSet(list(world.clean_prompts), [HarmfulPrompt(p, c) for p, c in world.harmful_prompts],
                                dict(world.concepts)).validate()
        config = TrainConfig(
            steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed, clean_penalty=args.clean_penalty,
            target_gain=args.target_gain, negative_prompt=getattr(world, "negative_prompt", ""),
            cfg_scale=getattr(world, "cfg_scale", 7.0),
            checkpoint_path=str(ckpt), checkpoint_every=args.checkpoint_every, resume=args.resume,
            device=args.device, autocast_dtype=args.autocast, calibrate_fpr=args.fpr, latent_batch_size=args.latent_batch,
            model_id=getattr(world, "model_id", ""),
            sigma_min=getattr(world, "sigma_range", (0.05, 20.0))[0], sigma_max=getattr(world, "sigma_range", (0.05, 20.0))[1],
        )
    except SafeCFGError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    stop = {"requested": False}

    def on_sigint(signum: int, frame: Any) -> None:
        if stop["requested"]:
            raise KeyboardInterrupt
        stop["requested"] = True
        print("\nstopping after this step (Ctrl-C again to abort without a checkpoint) ...", file=sys.stderr)

    last_phase = {"name": ""}

    def progress(p: TrainProgress) -> Optional[bool]:
        if p.phase == "latents":
            if sys.stdout.isatty():
                print(f"\rsampling the model's own latents: {p.step}/{p.total}", end="", flush=True)
            elif p.step == p.total or p.step * 10 // p.total != (p.step - args.latent_batch) * 10 // p.total:
                print(f"sampling the model's own latents: {p.step}/{p.total}", flush=True)
        elif p.phase == "train":
            if last_phase["name"] == "latents" and sys.stdout.isatty():
                print()
            if p.step % args.log_every == 0 or p.step == p.total:
                print(f"step {p.step:>5}/{p.total}  loss {p.loss:.4f} (harm {p.harm_loss:.4f}, clean {p.clean_loss:.4f}, "
                      f"penalty {p.penalty:.4f})  lr {p.lr:.1e}  {_fmt_s(p.elapsed_s)} elapsed, eta {_fmt_s(p.eta_s)}",
                      flush=True)
        elif p.phase == "calibrate":
            print("calibrating the threshold on the clean prompts ...", flush=True)
        last_phase["name"] = p.phase
        return not stop["requested"]

    print(f"model: {args.model}; {len(prompts.clean)} clean, {len(prompts.harmful)} harmful prompts; "
          f"categories: {', '.join(sorted(prompts.concepts))}")
    old = signal.signal(signal.SIGINT, on_sigint)
    t0 = time.monotonic()
    try:
        result = train_hgr(world.text_encoder, world.denoiser, prompts, config, world.hgr_config,
                           sample_latents=world.sample_latents, progress=progress)
    except TrainingCancelled as exc:
        print(f"\n{exc}", file=sys.stderr)
        if exc.checkpoint_path:
            print(f"resume with: python -m safecfg_core train --model {args.model} --out {out} --resume "
                  f"(same settings)", file=sys.stderr)
        return 130
    except SafeCFGError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        signal.signal(signal.SIGINT, old)
    result.bundle.save(out)
    cal = result.bundle.meta.calibration
    if result.summary.get("resumed_from"):
        print(f"resumed from the checkpoint at step {result.summary['resumed_from']}")
    print(f"saved {out}: {result.bundle.describe()}")
    print(f"trained {result.summary['steps']} steps in {_fmt_s(time.monotonic() - t0)}; final loss "
          f"{result.summary['final_loss']:.4f}; {result.summary['denoiser_rows']} denoiser rows in "
          f"{result.summary['denoiser_calls']} calls")
    if cal.get("roc_auc") is not None:
        print(f"threshold {result.bundle.meta.threshold:.4g} (clean fpr {cal['fpr']}); training prompts: ROC AUC "
              f"{cal['roc_auc']:.4f}, harmful detected {cal['detection_rate']:.0%}")
    print(f"checkpoint: {ckpt} (delete it once you are happy with {out})")
    print(f"HGR size: {format_parameter_count(result.bundle.num_parameters())} parameters")
    if args.json:
        print(json.dumps(result.summary, indent=2, sort_keys=True, default=str))
    return 0
