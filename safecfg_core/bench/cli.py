"""The ``bench`` command's options and main loop: build each model, time it, print the report."""
from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from ..errors import INPLACE_AUTOGRAD_HINT, is_inplace_autograd_error
from .measure import count_parameters
from .models import BenchModel, build_demo
from .projection import project_presets
from .report import format_report
from .time_sampling import METHODS, bench_sampling
from .time_training import bench_training

COMMAND = "bench"
HELP = "time CFG, SafeCFG, negative-prompt CFG and SLD sampling, and HGR training"
# comfy_dit.DIT_FAMILIES (that module imports ComfyUI's helpers lazily, so it is not imported here)
DIT_MODELS = ("sd3", "qwen_image", "wan21", "wan22", "chroma", "lumina2", "hidream")
MODELS = ("demo", "sd15", "sdxl") + DIT_MODELS
TRAIN_BATCH = {"demo": 16, "sd15": 8, "sdxl": 4, "sd3": 2, "qwen_image": 2, "wan21": 2, "wan22": 2, "chroma": 2,
               "lumina2": 2, "hidream": 2}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``bench`` command's options (the command registry in ``safecfg_core.cli`` calls this)."""
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few repetitions (CI smoke run)")
    parser.add_argument("--models", default=None,
                        help=f"comma list of {', '.join(MODELS)} (default: sd15,sdxl on CUDA, demo on CPU)")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    parser.add_argument("--dtype", default=None, choices=["fp16", "bf16", "fp32"],
                        help="weights of ComfyUI's models (default on CUDA fp16, bf16 for the DiT families; fp32 on "
                             "CPU)")
    parser.add_argument("--comfyui", default=None,
                        help="ComfyUI checkout for every model but demo ($COMFYUI_PATH)")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default 20; 3 with --quick)")
    parser.add_argument("--reps", type=int, default=None, help="interleaved repetitions (default 7; 2 with --quick)")
    parser.add_argument("--cfg", type=float, default=7.0, help="CFG scale (default 7)")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma list of {', '.join(METHODS)}")
    parser.add_argument("--train-steps", type=int, default=None, help="HGR training steps timed (0: skip)")
    parser.add_argument("--train-batch", type=int, default=None,
                        help="HGR training batch (default 16 demo, 8 sd15, 4 sdxl; 4 with --quick)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", default=None, help="also write the results as JSON here")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _choices(args: argparse.Namespace, device: torch.device) -> Tuple[List[str], List[str]]:
    """The models and methods asked for, checked; plain CFG is always timed (every ratio is relative to it)."""
    default_models = "sd15,sdxl" if device.type == "cuda" and not args.quick else "demo"
    models = [m.strip() for m in (args.models or default_models).split(",") if m.strip()]
    for m in models:
        if m not in MODELS:
            raise SystemExit(f"error: unknown model {m!r}; choose from {', '.join(MODELS)}.")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        if m not in METHODS:
            raise SystemExit(f"error: unknown method {m!r}; choose from {', '.join(METHODS)}.")
    if "cfg" not in methods:
        methods.insert(0, "cfg")
    return models, methods


def _environment(device: torch.device) -> Dict[str, Any]:
    if device.type == "cuda":
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = f"CPU ({platform.processor() or platform.machine()})"
    argv = sys.argv[2:] if sys.argv[1:2] == ["bench"] else sys.argv[1:]
    return {"device": str(device), "device_name": device_name, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "python": platform.python_version(),
            "command": "python -m safecfg_core bench " + " ".join(argv)}


def _build(name: str, args: argparse.Namespace, device: torch.device) -> BenchModel:
    if name == "demo":
        return build_demo(device, bool(args.quick))
    # comfy_unet / comfy_dit import ComfyUI: only when its models are asked for
    cuda_default = "bf16" if name in DIT_MODELS else "fp16"  # Qwen-Image, Chroma, Lumina 2 run in bf16, not fp16
    dtype_name = args.dtype or (cuda_default if device.type == "cuda" else "fp32")
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]
    if name in DIT_MODELS:
        from .comfy_dit import build_comfy_dit

        return build_comfy_dit(name, device, dtype, args.comfyui, bool(args.quick))
    from .comfy_unet import build_comfy_family

    return build_comfy_family(name, device, dtype, args.comfyui, bool(args.quick))


def _training(bm: BenchModel, name: str, args: argparse.Namespace, train_steps: int) -> Dict[str, Any]:
    batch = args.train_batch or (4 if args.quick else TRAIN_BATCH[name])
    _log(f"timing HGR training on {name} ({train_steps} steps, batch {batch}) ...")
    try:
        return bench_training(bm, train_steps, batch, _log)
    except RuntimeError as exc:  # reported in the table: the sampling figures are still worth having
        msg = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
        if is_inplace_autograd_error(exc):
            msg += f" ({INPLACE_AUTOGRAD_HINT})"
        _log(f"  training failed: {msg}")
        return {"error": msg, "steps": train_steps, "batch_size": batch}


def _bench_model(name: str, args: argparse.Namespace, device: torch.device, methods: Sequence[str]) -> Dict[str, Any]:
    steps = args.steps or (3 if args.quick else 20)
    reps = args.reps or (2 if args.quick else 7)
    _log(f"building {name} ...")
    bm = _build(name, args, device)
    _log(f"timing {name}: {bm.description}")
    s = bench_sampling(bm, methods, steps, reps, args.cfg, _log)
    mres = {"model": name, "description": bm.description, "notes": bm.notes, "steps": steps, "reps": reps,
            "cfg_scale": args.cfg, "denoiser_params": count_parameters(bm.net), "hgr_params": bm.hgr_params,
            "hgr_description": bm.hgr_description, **s}
    train_steps = args.train_steps if args.train_steps is not None else (2 if args.quick else 10)
    if train_steps > 0:
        mres["training"] = _training(bm, name, args, train_steps)
        mres["preset_projection"] = project_presets(mres)
    return mres


def run(args: argparse.Namespace) -> int:
    """Run the benchmark, print its report (and write ``--json``); the exit status."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but torch sees no CUDA device.")
    models, methods = _choices(args, device)
    result: Dict[str, Any] = {"environment": _environment(device), "models": []}
    for name in models:
        result["models"].append(_bench_model(name, args, device, methods))
        gc.collect()  # free one model's weights before the next one is built
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(format_report(result), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m safecfg_core bench", description=HELP)
    add_arguments(parser)
    return run(parser.parse_args(argv))
