"""``python -m safecfg_core train``: train an HGR on a model setup, with progress, checkpoints and resume.

Headless and multi-process: ``--corpus builtin --preset standard`` trains from the prompt corpus with the node's
recipe (robustness augmentation on unless ``--no-augment``, broad calibration, a held-out report beside the file);
``--comfyui PATH --model-checkpoint FILE`` trains for a checkpoint loaded by ComfyUI's own loaders outside the
server; under ``torchrun --nproc_per_node N`` latent sampling is sharded and gradients are summed across the
processes (:mod:`.train.ddp`), and rank 0 alone prints and writes.

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

from .errors import SafeCFGError, TrainingCancelled, TrainingInputError
from .hgr import format_parameter_count
from .train import TrainConfig, TrainProgress, TrainResult, parse_per_category
from .train.presets import DEFAULT_PRESET, PRESETS, check_image_side, get_preset
from .train.progress import RunEstimate

COMMAND = "train"
HELP = "train an HGR for a model (--model analytic: the built-in analytic toy) and save it as .safetensors"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .cli import MODEL_LOADERS

    p.add_argument("--model", default="analytic", choices=sorted(MODEL_LOADERS), help="model setup to train for")
    p.add_argument("--prompts", type=Path, default=None,
                   help="prompt set JSON ({clean: [...], harmful: [{prompt, category, rewrite?}], concepts: {...}}); "
                        "default: the model setup's built-in prompts")
    p.add_argument("--out", type=Path, default=None, help="output HGR file (default: hgr-<model>.safetensors)")
    p.add_argument("--corpus", default=None, metavar="SOURCE",
                   help="train from 'builtin' (the pack's prompt corpus) or a prompt file (.txt, .jsonl, .csv) with "
                        "the Train HGR node's recipe and a held-out report beside --out")
    p.add_argument("--categories", default=None, help="with --corpus: harm categories, comma-separated (default all)")
    p.add_argument("--preset", default=None, choices=sorted(PRESETS),
                   help="steps, batch, lr, gains and prompt counts of a preset (explicit options win); default with "
                        f"--corpus: {DEFAULT_PRESET}")
    p.add_argument("--no-augment", action="store_true",
                   help="turn the robustness recipe off (dressed prompts on both sides, broad calibration); it is on "
                        "by default")
    p.add_argument("--comfyui", type=Path, default=None,
                   help="a ComfyUI checkout (or COMFYUI_PATH): load --model-checkpoint with ComfyUI's own loaders")
    p.add_argument("--model-checkpoint", type=Path, default=None,
                   help="with --comfyui: the model checkpoint (.safetensors) to train an HGR for (prompts: the "
                        "built-in corpus unless --corpus or --prompts says otherwise)")
    p.add_argument("--sample-steps", type=int, default=None,
                   help="with --model-checkpoint: sampler steps of the model's own training latents (default: the "
                        "preset's)")
    p.add_argument("--width", type=int, default=None,
                   help="with --model-checkpoint: image width of the training latents (default: the model family's "
                        "size, which is what the model draws; smaller is faster but less like its pictures)")
    p.add_argument("--height", type=int, default=None,
                   help="with --model-checkpoint: image height of the training latents (default: the family's)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default 400, or the preset's)")
    p.add_argument("--batch-size", type=int, default=None, help="rows per step, global (default 16, or the preset's)")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--clean-penalty", type=float, default=None)
    p.add_argument("--target-gain", type=parse_per_category, default=None,
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


# the trainer's own defaults when neither an option nor a preset says (the command's historical defaults)
_PLAIN_DEFAULTS = {"steps": 400, "batch_size": 16, "lr": 2e-3, "clean_penalty": 0.05, "target_gain": 1.0}


def _setting(args: argparse.Namespace, name: str) -> Any:
    """An explicit option wins, then the preset's value, then the plain default."""
    value = getattr(args, name)
    if value is not None:
        return value
    preset = get_preset(args.preset) if args.preset else None
    return getattr(preset, name) if preset is not None else _PLAIN_DEFAULTS[name]


def _config(args: argparse.Namespace, setup: Any, ckpt: Path, job: Any) -> TrainConfig:
    """The run's settings: explicit options, then the prompt source's per-category settings (its concept lines),
    then the preset's, then the plain defaults."""
    sigma_range = getattr(setup, "sigma_range", (0.05, 20.0))
    gain = args.target_gain if args.target_gain is not None else job.per_category(
        "target_gain", _setting(args, "target_gain"))
    return TrainConfig(
        steps=_setting(args, "steps"), batch_size=_setting(args, "batch_size"), lr=_setting(args, "lr"),
        seed=args.seed, clean_penalty=_setting(args, "clean_penalty"), target_gain=gain,
        rewrite_latent_fraction=job.per_category("rewrite_latent_fraction", 0.0),
        negative_prompt=getattr(setup, "negative_prompt", ""), sigma_schedule=getattr(setup, "sigma_schedule", None),
        cfg_scale=getattr(setup, "cfg_scale", 7.0), checkpoint_path=str(ckpt), checkpoint_every=args.checkpoint_every,
        resume=args.resume, device=args.device, autocast_dtype=args.autocast, calibrate_fpr=args.fpr,
        latent_batch_size=args.latent_batch, model_id=getattr(setup, "model_id", ""),
        sampler_id=getattr(setup, "sampler_id", ""),
        sigma_min=sigma_range[0], sigma_max=sigma_range[1],
    )


def _job(args: argparse.Namespace, setup: Any) -> Any:
    """The prompts, calibration prompts and held-out prompts: the corpus recipe with ``--corpus``, else the prompt
    file or the setup's own prompts, augmented by default like the node's."""
    from .train import HarmfulPrompt, PromptSet
    from .train.augment import augment_prompt_set, broad_calibration
    from .train.recipe import TrainingJob, build_job

    if args.corpus:
        args.preset = args.preset or DEFAULT_PRESET
        categories = [c.strip() for c in args.categories.split(",")] if args.categories else None
        return build_job(args.corpus, get_preset(args.preset), categories, augment=not args.no_augment,
                         seed=args.seed)
    if args.prompts is not None:
        prompts = PromptSet.from_file(args.prompts)
    else:
        prompts = PromptSet(list(setup.clean_prompts), [HarmfulPrompt(p, c) for p, c in setup.harmful_prompts],
                            dict(setup.concepts)).validate()
    calibration = None
    if not args.no_augment:  # about as many dressed prompts as plain ones: the demo recipe's proportion
        calibration = broad_calibration(prompts.clean, len(prompts.clean), args.seed + 1)
        prompts = augment_prompt_set(prompts, len(prompts.clean), len(prompts.harmful), args.seed).prompts
    return TrainingJob(prompts, calibration, [], [], {}, source=str(args.prompts or args.model))


class _Progress:
    """Prints progress with the time left; Ctrl-C asks the run to stop after the current step."""

    def __init__(self, log_every: int, latent_batch: int, estimate: Optional[RunEstimate] = None) -> None:
        self.log_every, self.latent_batch = log_every, latent_batch
        self.stop_requested = False
        self.last_phase = ""
        self.encode_tenth = -1
        self.estimate = estimate  # the whole run's share done and time left (latents and steps in one unit)

    def _whole(self, p: TrainProgress) -> str:
        if self.estimate is None:
            return ""
        self.estimate.update(p)
        return f"; whole run {self.estimate.fraction:.0%}, {_fmt_s(self.estimate.eta_s)} left"

    def on_sigint(self, signum: int, frame: Any) -> None:
        if self.stop_requested:
            raise KeyboardInterrupt  # the run still checkpoints its completed steps before stopping
        self.stop_requested = True
        print("\nstopping after this step (Ctrl-C again to stop at once) ...", file=sys.stderr)

    def __call__(self, p: TrainProgress) -> Optional[bool]:
        whole = self._whole(p)
        if p.phase == "encode":  # before anything else: a real text encoder takes a while over a whole corpus
            line = f"encoding the prompts: {p.step}/{p.total}, {_fmt_s(p.eta_s)} left"
            if sys.stdout.isatty():
                print("\r" + line, end="" if p.step < p.total else "\n", flush=True)
            elif p.step in (0, p.total) or p.step * 10 // max(1, p.total) != self.encode_tenth:
                print(line, flush=True)
            self.encode_tenth = p.step * 10 // max(1, p.total)
        elif p.phase == "latents":
            line = f"sampling the model's own latents: {p.step}/{p.total}, {_fmt_s(p.eta_s)} left{whole}"
            if sys.stdout.isatty():
                print("\r" + line, end="", flush=True)
            elif p.step == p.total or p.step * 10 // p.total != (p.step - self.latent_batch) * 10 // p.total:
                print(line, flush=True)
        elif p.phase == "train":
            if self.last_phase == "latents" and sys.stdout.isatty():
                print()
            if p.step % self.log_every == 0 or p.step == p.total:
                print(f"step {p.step:>5}/{p.total}  loss {p.loss:.4f} (harm {p.harm_loss:.4f}, clean {p.clean_loss:.4f}, "
                      f"penalty {p.penalty:.4f})  lr {p.lr:.1e}  {_fmt_s(p.elapsed_s)} elapsed, {_fmt_s(p.eta_s)} left"
                      f"{whole}", flush=True)
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
    steps = f"{summary['steps']} step" + ("" if summary["steps"] == 1 else "s")
    print(f"trained {steps} in {_fmt_s(seconds)}; final loss {summary['final_loss']:.4f}; "
          f"{summary['denoiser_rows']} denoiser rows in {summary['denoiser_calls']} calls")
    if cal.get("roc_auc") is not None:
        print(f"threshold {bundle.meta.threshold:.4g} (clean fpr {cal['fpr']}); training prompts: ROC AUC "
              f"{cal['roc_auc']:.4f}, harmful detected {cal['detection_rate']:.0%}")
    print(f"checkpoint: {ckpt} (delete it once you are happy with {out})")
    print(f"HGR size: {format_parameter_count(bundle.num_parameters())} parameters")
    if as_json:
        print(json.dumps(summary, indent=2, sort_keys=True, default=str))


def _sample_steps(args: argparse.Namespace) -> int:
    """Sampler steps of a checkpoint's own latents: the option, else the preset's (the default preset's without one)."""
    return args.sample_steps or get_preset(args.preset or DEFAULT_PRESET).sample_steps


def _load_setup(args: argparse.Namespace) -> Any:
    """The model: ComfyUI's own loaders for ``--model-checkpoint`` (with ``--comfyui`` or COMFYUI_PATH), else the
    ``--model`` setup. Bad paths are a :class:`TrainingInputError` saying which and what to do."""
    import os

    from .cli import load_model_setup

    comfy_only = [f"--{n.replace('_', '-')}" for n in ("sample_steps", "width", "height")
                  if getattr(args, n) is not None]
    if args.model_checkpoint is None:
        if args.comfyui is not None or comfy_only:
            raise TrainingInputError(f"{', '.join(['--comfyui'] if args.comfyui else comfy_only)} needs "
                                     "--model-checkpoint FILE (the checkpoint to train for); without one the "
                                     f"command trains for --model {args.model}.")
        return load_model_setup(args.model)
    from .train.comfy_headless import load_comfy_setup

    env = os.environ.get("COMFYUI_PATH")
    if args.comfyui is None and not env:
        raise TrainingInputError("--model-checkpoint needs --comfyui PATH (or COMFYUI_PATH): ComfyUI's own loaders "
                                 "read the checkpoint; pass the folder of your ComfyUI checkout.")
    root, origin = (args.comfyui, "--comfyui") if args.comfyui is not None else (Path(env), "COMFYUI_PATH")
    if args.sample_steps is not None and args.sample_steps < 1:
        raise TrainingInputError(f"--sample-steps {args.sample_steps}: use 1 or more sampler steps.")
    for name in ("width", "height"):
        size = getattr(args, name)
        if size is not None:
            try:
                check_image_side(f"--{name}", size)
            except ValueError as exc:
                raise TrainingInputError(str(exc)) from None
    return load_comfy_setup(root, args.model_checkpoint, _sample_steps(args), args.device,
                            image_size=(args.width, args.height), origin=origin)


def _resume_hint(args: argparse.Namespace, out: Path) -> str:
    """The command line that resumes this run (same settings)."""
    if args.model_checkpoint is None:
        return f"python -m safecfg_core train --model {args.model} --out {out} --resume (same settings)"
    return "the same command with --resume (same checkpoint and settings)"


def _heldout_report(result: TrainResult, job: Any, setup: Any, out: Path) -> None:
    """Judge the HGR on the job's held-out prompts and save the report beside it (corpus runs)."""
    from .train.report import evaluate_heldout, report_lines, write_report

    # encoding and judging the held-out prompts takes a while on a real model: say what is happening
    print(f"judging the HGR on {len(job.heldout_clean)} clean and {len(job.heldout_harmful)} harmful held-out "
          "prompts ...", flush=True)
    evaluation = evaluate_heldout(result.bundle, setup.text_encoder, job.heldout_clean, job.heldout_harmful,
                                  getattr(setup, "negative_prompt", ""))
    evaluation["judged_on"] = f"{len(job.heldout_clean)} clean and {len(job.heldout_harmful)} harmful held-out prompts"
    _, md = write_report(out, evaluation, result.summary, {"prompts": job.source, "prompt_set": job.describe(),
                                                           "notes": job.notes})
    print("\n".join(report_lines(evaluation, result.summary, out.name)) + f"\nreport: {md}")


def run(args: argparse.Namespace) -> int:
    from .train import TrainingSession
    from .train.ddp import DistContext

    dist = DistContext.from_env()
    main = dist is None or dist.is_main
    name = args.model if args.model_checkpoint is None else args.model_checkpoint.stem
    out: Path = args.out or Path(f"hgr-{name}.safetensors")
    ckpt: Path = args.checkpoint or out.with_name(out.stem + ".ckpt.safetensors")
    if args.model_checkpoint is not None and args.corpus is None and args.prompts is None:
        args.corpus = "builtin"  # a user's checkpoint has no built-in prompts: the pack's corpus is the default
    try:
        setup = _load_setup(args)
        job = _job(args, setup)  # (sets the default preset of a corpus run, which the estimate below reads)
        sample_steps = _sample_steps(args) if args.model_checkpoint else 20
        estimate = RunEstimate(_setting(args, "steps"), _setting(args, "batch_size"), sample_steps)
        progress = _Progress(args.log_every, args.latent_batch, estimate) if main else None
        prompts = job.prompts
        session = TrainingSession(setup.text_encoder, setup.denoiser, prompts, _config(args, setup, ckpt, job),
                                  setup.hgr_config, output_path=out, retrain=args.retrain,
                                  sample_latents=setup.sample_latents, progress=progress,
                                  calibration_prompts=job.calibration, dist=dist,
                                  record={"command": getattr(args, "command_line", "")})
    except SafeCFGError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if main:
        print(f"model: {name}; {len(prompts.clean)} clean, {len(prompts.harmful)} harmful prompts; "
              f"categories: {', '.join(sorted(prompts.concepts))}"
              + (f"; {dist.world} processes" if dist is not None else ""))
        for note in job.notes:  # what loading did: declared categories and their settings, fills, augmentation
            print(f"  {note}")
    # under torchrun, Ctrl-C reaches every process: each stops where it is (rank 0 checkpoints the completed steps)
    old = signal.signal(signal.SIGINT, progress.on_sigint) if progress is not None and dist is None else None
    t0 = time.monotonic()
    try:
        result = session.run()
    except TrainingCancelled as exc:
        print(f"\n{exc}", file=sys.stderr)
        if exc.checkpoint_path:
            print(f"resume with: {_resume_hint(args, out)}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        if session.checkpoint_step and main:
            print(f"\nstopped; checkpoint of step {session.checkpoint_step} kept at {ckpt}; resume with --resume "
                  "(same settings)", file=sys.stderr)
        return 130
    except SafeCFGError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        if old is not None:
            signal.signal(signal.SIGINT, old)
    if main:
        _report(result, out, ckpt, time.monotonic() - t0, args.json)
        if job.heldout_clean and job.heldout_harmful:
            _heldout_report(result, job, setup, out)
    return 0
