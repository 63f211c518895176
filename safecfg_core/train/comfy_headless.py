"""Train for a checkpoint with ComfyUI's own loaders, outside the server (``train --comfyui PATH
--model-checkpoint FILE``): for scripts, schedulers and clusters (``torchrun``).

The model is loaded by ComfyUI's ``load_checkpoint_guess_config``, exactly as the Load Checkpoint node does, and
driven by the pack's own ComfyUI adapters (``nodes/comfy_adapters.py``, ``nodes/train_parts.py``: every ComfyUI
import stays there), so a headless HGR equals the node's for the same inputs. This module imports only the pack's
adapter modules, and only when :func:`load_comfy_setup` is called (ComfyUI itself is put on the path by the
benchmark's :func:`~safecfg_core.bench.comfy_unet.import_comfy`, the core's one door to a user-named checkout).
"""
from __future__ import annotations

import importlib
import json
import struct
import sys
import types
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional, Tuple

import torch

from ..errors import TrainingInputError

PACK = "safecfg_pack"
PICKLE_MAGIC = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")  # protocol 2-5 pickles (.ckpt, old .pt)
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's zip archive (.pt, .pth, .bin): pickles inside


def _pack_module(name: str) -> Any:
    """Import ``nodes.<name>`` of this pack with its ``..safecfg_core`` imports resolving to the already imported
    ``safecfg_core`` (one copy of every class, so the trainer's checks recognise the adapters' Cond objects)."""
    import safecfg_core.families  # noqa: F401  (every core module the adapters import, loaded once)
    import safecfg_core.train.presets  # noqa: F401
    import safecfg_core.train.progress  # noqa: F401
    import safecfg_core.train.report  # noqa: F401

    root = Path(__file__).resolve().parents[2]
    if PACK not in sys.modules:  # the pack as a bare package: its __init__ (ComfyUI's entry point) is not run
        pkg = types.ModuleType(PACK)
        pkg.__path__ = [str(root)]
        sys.modules[PACK] = pkg
    for modname, mod in list(sys.modules.items()):
        if modname == "safecfg_core" or modname.startswith("safecfg_core."):
            sys.modules.setdefault(f"{PACK}.{modname}", mod)
    return importlib.import_module(f"{PACK}.nodes.{name}")


def check_comfyui(comfyui: Path, origin: str = "--comfyui") -> Path:
    """The resolved ComfyUI root; a :class:`TrainingInputError` saying what is wrong with ``comfyui`` otherwise.
    Checked before anything is imported, so a typo costs nothing."""
    root = Path(comfyui).expanduser().resolve()
    if not root.is_dir():
        raise TrainingInputError(f"{origin} {comfyui} does not exist or is not a folder; pass the folder of a ComfyUI "
                                 "checkout (the one holding main.py and comfy/).")
    if not (root / "comfy" / "sd.py").is_file():
        raise TrainingInputError(f"{origin} {comfyui} is not a ComfyUI checkout (it has no comfy/sd.py); pass the "
                                 "folder that holds ComfyUI's main.py and comfy/ (a git clone or the portable "
                                 "build's ComfyUI folder).")
    return root


def check_checkpoint(checkpoint: Path) -> Path:
    """The resolved checkpoint path after a look at its first bytes; a :class:`TrainingInputError` naming the file
    and what to do when it is missing, not ``.safetensors`` or not a safetensors file inside. ComfyUI's loader
    unpickles any file not named ``.safetensors``, and a pickle can run code: the pack loads weights through
    safetensors only."""
    path = Path(checkpoint).expanduser()
    if not path.exists():
        raise TrainingInputError(f"--model-checkpoint {checkpoint} does not exist; pass the path of the model's "
                                 ".safetensors file (such as ComfyUI/models/checkpoints/<name>.safetensors).")
    if not path.is_file():
        raise TrainingInputError(f"--model-checkpoint {checkpoint} is not a file; pass the model's .safetensors "
                                 "file itself.")
    with open(path, "rb") as fh:
        head = fh.read(9)
    if head[:2] in PICKLE_MAGIC or head[:4] == ZIP_MAGIC or path.suffix.lower() != ".safetensors":
        raise TrainingInputError(
            f"--model-checkpoint {checkpoint} is not a .safetensors file (a .ckpt, .pt or .bin file is a pickle, "
            "which can run code when loaded; SafeCFG never unpickles). Use the model's .safetensors release, or "
            "convert the file once in a trusted environment with safetensors.torch.save_file.")
    size = path.stat().st_size
    header_len = struct.unpack("<Q", head[:8])[0] if len(head) >= 8 else 0
    if len(head) < 9 or not 0 < header_len <= size - 8 or head[8:9] != b"{":
        raise TrainingInputError(f"--model-checkpoint {checkpoint} is named .safetensors but is not a safetensors "
                                 f"file ({size} bytes; no valid header): it is truncated or damaged; download or "
                                 "copy it again.")
    with open(path, "rb") as fh:
        fh.seek(8)
        try:
            json.loads(fh.read(header_len).decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise TrainingInputError(f"--model-checkpoint {checkpoint} is named .safetensors but its header is "
                                     "not valid JSON: it is truncated or damaged; download or copy it again.") from None
    return path.resolve()


def load_comfy_setup(comfyui: Path, checkpoint: Path, sample_steps: int, device: str = "cpu", cfg: float = 6.0,
                     image_size: Optional[Tuple[Optional[int], Optional[int]]] = None,
                     origin: str = "--comfyui") -> SimpleNamespace:
    """What the ``train`` command needs for a ComfyUI checkpoint: text encoder, denoiser, HGR shape (the family's),
    the model's own latent sampler (at the family's image size unless ``image_size`` = (width, height) says
    otherwise; None in either keeps the family's), and the model's identity."""
    root, checkpoint = check_comfyui(comfyui, origin), check_checkpoint(checkpoint)
    from ..bench.comfy_unet import import_comfy
    from .presets import training_image_size

    # ComfyUI picks its device when first imported: CPU mode has to be set before (a CPU-only torch fails
    # otherwise, asking CUDA for its device)
    import_comfy(str(root), torch.device(device))
    adapters, parts = _pack_module("comfy_adapters"), _pack_module("train_parts")
    node_error = _pack_module("common").SafeCFGNodeError
    try:
        model, clip = parts.load_checkpoint(checkpoint)  # all ComfyUI contact stays in the pack's adapter layer
    except RuntimeError as exc:
        if "Could not detect model type" not in str(exc):
            raise
        raise TrainingInputError(f"ComfyUI does not recognise --model-checkpoint {checkpoint} as a model it "
                                 "supports (no known diffusion model inside: a LoRA, VAE or text-encoder file, or a "
                                 "model newer than this ComfyUI); pass a checkpoint ComfyUI's Load Checkpoint node "
                                 "loads, or update ComfyUI.") from None
    if clip is None:
        raise TrainingInputError(f"--model-checkpoint {checkpoint} holds no text encoder; SafeCFG trains on the "
                                 "model's own text encoder, so use a full checkpoint (model, CLIP and VAE).")
    try:
        text_encoder, hgr_config = parts.encoder_and_config(model, clip)  # refuses unsupported families
    except node_error as exc:  # the node's "SafeCFG Train HGR: ..." says what and why; here it is the command's
        raise TrainingInputError(f"{checkpoint.name}: {str(exc).split(': ', 1)[-1]}") from None
    denoiser = adapters.ComfyDenoiser(model, pooled_dim=hgr_config.pooled_dim)
    width, height = training_image_size(adapters.model_widths(model)[2], *(image_size or (None, None)))
    return SimpleNamespace(
        text_encoder=text_encoder, denoiser=denoiser, hgr_config=hgr_config, cfg_scale=cfg, negative_prompt="",
        sample_latents=parts.latent_sampler(model, text_encoder, sample_steps, cfg, width, height, 0),
        sigma_schedule=[float(s) for s in denoiser.model_sigmas()[::10]], model_id=adapters.model_identity(model),
        sampler_id=f"euler/normal, {sample_steps} steps, {width}x{height}", clean_prompts=[], harmful_prompts=[],
        concepts={}, device=device)


__all__ = ["check_checkpoint", "check_comfyui", "load_comfy_setup"]
