"""Train for a checkpoint with ComfyUI's own loaders, outside the server (``train --comfyui PATH
--model-checkpoint FILE``): for scripts, schedulers and clusters (``torchrun``).

The model is loaded by ComfyUI's ``load_checkpoint_guess_config``, exactly as the Load Checkpoint node does, and
driven by the pack's own ComfyUI adapters (``nodes/comfy_adapters.py``, ``nodes/train_parts.py``: every ComfyUI
import stays there), so a headless HGR equals the node's for the same inputs. This module imports only the pack's
adapter modules, and only when :func:`load_comfy_setup` is called.
"""
from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path
from types import SimpleNamespace
from typing import Any

PACK = "safecfg_pack"


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


def load_comfy_setup(comfyui: Path, checkpoint: Path, sample_steps: int, device: str = "cpu",
                     cfg: float = 6.0) -> SimpleNamespace:
    """What the ``train`` command needs for a ComfyUI checkpoint: text encoder, denoiser, HGR shape (the family's),
    the model's own latent sampler at the family's image size, and the model's identity."""
    comfyui = Path(comfyui).resolve()
    if not (comfyui / "comfy" / "sd.py").is_file():
        raise SystemExit(f"error: {comfyui} is not a ComfyUI checkout (no comfy/sd.py)")
    if not Path(checkpoint).is_file():
        raise SystemExit(f"error: checkpoint {checkpoint} does not exist")
    sys.path.insert(0, str(comfyui))
    adapters, parts = _pack_module("comfy_adapters"), _pack_module("train_parts")
    model, clip = parts.load_checkpoint(checkpoint)  # all ComfyUI contact stays in the pack's adapter layer
    if clip is None:
        raise SystemExit(f"error: {checkpoint} holds no text encoder; SafeCFG trains on the model's own CLIP")
    from .presets import family_image_size

    text_encoder, hgr_config = parts.encoder_and_config(model, clip)
    denoiser = adapters.ComfyDenoiser(model, pooled_dim=hgr_config.pooled_dim)
    width, height = family_image_size(adapters.model_widths(model)[2])
    return SimpleNamespace(
        text_encoder=text_encoder, denoiser=denoiser, hgr_config=hgr_config, cfg_scale=cfg, negative_prompt="",
        sample_latents=parts.latent_sampler(model, text_encoder, sample_steps, cfg, width, height, 0),
        sigma_schedule=[float(s) for s in denoiser.model_sigmas()[::10]], model_id=adapters.model_identity(model),
        sampler_id=f"euler/normal, {sample_steps} steps, {width}x{height}", clean_prompts=[], harmful_prompts=[],
        concepts={}, device=device)


__all__ = ["load_comfy_setup"]
