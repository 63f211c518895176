"""``python -m safecfg_core train``: train an HGR on a model setup, with progress, checkpoints and resume.

The policy is the core's :class:`~.train.TrainingSession` (the same as the Train HGR node's): an output trained from
the same inputs is kept and reported, any other file is never replaced without ``--retrain``, and a checkpoint is
resumed only by the same settings. Ctrl-C stops cleanly: the completed steps are checkpointed and the command says
how to resume.
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
from .train import TrainConfig, TrainProgress, TrainResult, parse_per_category

COMMAND = "train"
HELP = "train an HGR for a model (--model analytic: the built-in analytic toy) and save it as .safetensors"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .cli import MODEL_LOADERS

    p.add_argument("--model", default="analytic", choices=sorted(MODEL_LOADERS), help="model setup to train for")
    p.add_argument("--prompts", type=Path, default=None,
                   help="prompt set JSON ({clean: [...], harmful: [{prompt, category, rewrite?}], concepts: {...}}); "
                        "default: the model setup's built-in prompts")
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
    p.add_argument("--resume", action="store_true",
                   help="continue from the checkpoint if it exists (it must have been written with the same settings)")
    p.add_argument("--retrain", action="store_true",
                   help="train from step 0 and replace --out even if it exists (without it an existing --out trained "
                        "from the same inputs is kept, and one trained from other inputs is refused)")
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


def _config(args: argparse.Namespace, setup: Any, ckpt: Path) -> TrainConfig:
    sigma_range = getattr(setup, "sigma_range", (0.05, 20.0))
    return TrainConfig(
        steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed, clean_penalty=args.clean_penalty,
        target_gain=args.target_gain, negative_prompt=getattr(setup, "negative_prompt", ""),
        cfg_scale=getattr(setup, "cfg_scale", 7.0), checkpoint_path=str(ckpt), checkpoint_every=args.checkpoint_every,
        resume=args.resume, device=args.device, autocast_dtype=args.autocast, calibrate_fpr=args.fpr,
        latent_batch_size=args.latent_batch, model_id=getattr(setup, "model_id", ""),
        sigma_min=sigma_range[0], sigma_max=sigma_range[1],
    )


class _Progress:
    """Prints progress with the time left; Ctrl-C asks the run to stop after the current step."""

    def __init__(self, log_every: int, latent_batch: int) -> None:
        self.log_every, self.latent_batch = log_every, latent_batch
        self.stop_requested = False
        self.last_phase = ""

    def on_sigint(self, signum: int, frame: Any) -> None:
        if self.stop_requested:
            raise KeyboardInterrupt  # the run still checkpoints its completed steps before stopping
        self.stop_requested = True
        print("\nstopping after this step (Ctrl-C again to stop at once) ...", file=sys.stderr)

    def __call__(self, p: TrainProgress) -> Optional[bool]:
        if p.phase == "latents":
            line = f"sampling the model's own latents: {p.step}/{p.total}, {_fmt_s(p.eta_s)} left"
            if sys.stdout.isatty():
                print("\r" + line, end="", flush=True)
            elif p.step == p.total or p.step * 10 // p.total != (p.step - self.latent_batch) * 10 // p.total:
                print(line, flush=True)
        elif p.phase == "train":
            if self.last_phase == "latents" and sys.stdout.isatty():
                print()
            if p.step % self.log_every == 0 or p.step == p.total:
                print(f"step {p.step:>5}/{p.total}  loss {p.loss:.4f} (harm {p.harm_loss:.4f}, clean {p.clean_loss:.4f}, "
                      f"penalty {p.penalty:.4f})  lr {p.lr:.1e}  {_fmt_s(p.elapsed_s)} elapsed, {_fmt_s(p.eta_s)} left",
                      flush=True)
        elif p.phase == "calibrate":
            print("calibrating the threshold on the clean prompts ...", flush=True)
        self.last_phase = p.phase
        return not self.stop_requested


def _report(result: TrainResult, out: Path, ckpt: Path, seconds: float, as_json: bool) -> None:
    bundle, summary = result.bundle, result.summary
    if result.reused:
        print(f"{out} was already trained with these inputs; nothing to do ({bundle.describe()}). "
              "Pass --retrain to train it again.")
        return
    cal = bundle.meta.calibration
    if summary.get("resumed_from"):
        print(f"resumed from the checkpoint at step {summary['resumed_from']}")
    print(f"saved {out}: {bundle.describe()}")
    print(f"trained {summary['steps']} steps in {_fmt_s(seconds)}; final loss {summary['final_loss']:.4f}; "
          f"{summary['denoiser_rows']} denoiser rows in {summary['denoiser_calls']} calls")
    if cal.get("roc_auc") is not None:
        print(f"threshold {bundle.meta.threshold:.4g} (clean fpr {cal['fpr']}); training prompts: ROC AUC "
              f"{cal['roc_auc']:.4f}, harmful detected {cal['detection_rate']:.0%}")
    print(f"checkpoint: {ckpt} (delete it once you are happy with {out})")
    print(f"HGR size: {format_parameter_count(bundle.num_parameters())} parameters")
    if as_json:
        print(json.dumps(summary, indent=2, sort_keys=True, default=str))


def run(args: argparse.Namespace) -> int:
    from .cli import load_model_setup
    from .train import HarmfulPrompt, PromptSet, TrainingSession

    setup = load_model_setup(args.model)
    out: Path = args.out or Path(f"hgr-{args.model}.safetensors")
    ckpt: Path = args.checkpoint or out.with_name(out.stem + ".ckpt.safetensors")
    progress = _Progress(args.log_every, args.latent_batch)
    try:
        if args.prompts is not None:
            prompts = PromptSet.from_file(args.prompts)
        else:
            prompts = PromptSet(list(setup.clean_prompts), [HarmfulPrompt(p, c) for p, c in setup.harmful_prompts],
                                dict(setup.concepts)).validate()
        session = TrainingSession(setup.text_encoder, setup.denoiser, prompts, _config(args, setup, ckpt),
                                  setup.hgr_config, output_path=out, retrain=args.retrain,
                                  sample_latents=setup.sample_latents, progress=progress)
    except SafeCFGError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"model: {args.model}; {len(prompts.clean)} clean, {len(prompts.harmful)} harmful prompts; "
          f"categories: {', '.join(sorted(prompts.concepts))}")
    old = signal.signal(signal.SIGINT, progress.on_sigint)
    t0 = time.monotonic()
    try:
        result = session.run()
    except TrainingCancelled as exc:
        print(f"\n{exc}", file=sys.stderr)
        if exc.checkpoint_path:
            print(f"resume with: python -m safecfg_core train --model {args.model} --out {out} --resume "
                  f"(same settings)", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        if session.checkpoint_step:
            print(f"\nstopped; checkpoint of step {session.checkpoint_step} kept at {ckpt}; resume with --resume "
                  "(same settings)", file=sys.stderr)
        return 130
    except SafeCFGError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        signal.signal(signal.SIGINT, old)
    _report(result, out, ckpt, time.monotonic() - t0, args.json)
    return 0
