"""ComfyUI's own SD1.5 and SDXL UNets for the benchmark (``--models sd15,sdxl``), and its ComfyUI import.

This is the only place in ``safecfg_core`` that imports ComfyUI (``comfy_dit`` asks :func:`comfy_module`): only
when ComfyUI's models are asked for, and only from a checkout the user names (``--comfyui PATH`` or
``$COMFYUI_PATH``). The weights are random (a standard fan-in initialisation): sampling time depends on the
architecture, not on what it learned.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable, Optional, Tuple

import torch

from .models import BenchModel, make_guidance, random_cond, text_encoder_for

# The real UNet configurations (the values ComfyUI's model detection produces for SD1.5 and SDXL checkpoints).
SD15_UNET = {
    "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True, "legacy": False,
    "adm_in_channels": None, "in_channels": 4, "model_channels": 320, "num_res_blocks": [2, 2, 2, 2],
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "channel_mult": [1, 2, 4, 4], "transformer_depth_middle": 1,
    "use_linear_in_transformer": False, "context_dim": 768, "num_heads": 8,
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    "use_temporal_attention": False, "use_temporal_resblock": False,
}
SDXL_UNET = {
    "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True, "legacy": False,
    "num_classes": "sequential", "adm_in_channels": 2816, "in_channels": 4, "model_channels": 320,
    "num_res_blocks": [2, 2, 2], "transformer_depth": [0, 0, 2, 2, 10, 10], "channel_mult": [1, 2, 4],
    "transformer_depth_middle": 10, "use_linear_in_transformer": True, "context_dim": 2048, "num_head_channels": 64,
    "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
    "use_temporal_attention": False, "use_temporal_resblock": False,
}
FAMILY_SHAPES = {  # family: (unet config, latent H=W at the native resolution, token dim, pooled dim)
    "sd15": (SD15_UNET, 64, 768, 0),
    "sdxl": (SDXL_UNET, 128, 2048, 1280),
}


def import_comfy(comfyui: Optional[str], device: torch.device) -> str:
    """Put the ComfyUI checkout at ``comfyui`` (or $COMFYUI_PATH) on ``sys.path``, CPU mode on a CPU; its root."""
    import importlib

    root = comfyui or os.environ.get("COMFYUI_PATH")
    if not root:
        raise SystemExit("error: the sd15/sdxl and DiT-family benchmarks build ComfyUI's own models: "
                         "pass --comfyui PATH or set COMFYUI_PATH.")
    root = str(Path(root).resolve())
    if not (Path(root) / "comfy").is_dir():
        raise SystemExit(f"error: {root} is not a ComfyUI checkout (no comfy/ folder).")
    if root not in sys.path:
        sys.path.insert(0, root)
    cli_args = importlib.import_module("comfy.cli_args")  # parses no argv unless ComfyUI's main enabled it
    if device.type == "cpu":
        cli_args.args.cpu = True
    return root


def comfy_module(name: str) -> Any:
    """A module of the ComfyUI checkout that :func:`import_comfy` put on the path. Every ComfyUI import of the
    benchmark (``comfy_dit`` too) goes through this file, the one place in ``safecfg_core`` allowed to make one."""
    import importlib

    if name.split(".")[0] != "comfy":
        raise ValueError(f"not a ComfyUI module: {name!r}")
    return importlib.import_module(name)


def import_comfy_unet(comfyui: Optional[str], device: torch.device) -> Tuple[Any, Any, str]:
    """ComfyUI's UNetModel and ops, imported from the ComfyUI checkout at ``comfyui`` (or $COMFYUI_PATH)."""
    import importlib

    root = import_comfy(comfyui, device)
    openaimodel = importlib.import_module("comfy.ldm.modules.diffusionmodules.openaimodel")
    ops = importlib.import_module("comfy.ops")
    return openaimodel.UNetModel, ops.disable_weight_init, root


def random_init(net: torch.nn.Module, device: torch.device) -> None:
    """A standard fan-in initialisation of every tensor a checkpoint would load: the parameters and the persistent
    floating-point buffers. ComfyUI's ops leave weights uninitialised, and some models keep loaded tensors as
    buffers made with ``torch.empty`` (MMDiT's ``pos_embed``): left alone, those hold whatever memory was there,
    NaN at times."""
    gen = torch.Generator(device=device).manual_seed(0)
    params = dict(net.named_parameters())
    loaded_buffers = {name: b for name, b in net.state_dict(keep_vars=True).items()
                      if name not in params and torch.is_floating_point(b)}
    with torch.no_grad():
        for pname, p in list(params.items()) + list(loaded_buffers.items()):
            if p.dim() >= 2:
                fan_in = p[0].numel()
                w = torch.randn(p.shape, generator=gen, device=p.device, dtype=torch.float32) / fan_in ** 0.5
                p.copy_(w.to(p.dtype))
            elif pname.endswith(("weight", "scale")):
                p.fill_(1.0)  # norm scales
            else:
                p.zero_()


def build_comfy_family(family: str, device: torch.device, dtype: torch.dtype, comfyui: Optional[str],
                       quick: bool) -> BenchModel:
    """ComfyUI's UNet of ``family`` (``sd15`` or ``sdxl``) at its native resolution (8x8 latents with ``quick``)."""
    from ..sampling import DiscreteEpsDenoiser
    from ..schedules import DiscreteSchedule

    UNetModel, ops, root = import_comfy_unet(comfyui, device)
    unet_cfg, size, token_dim, pooled_dim = FAMILY_SHAPES[family]
    if quick:
        size = 8
    net = UNetModel(**unet_cfg, dtype=dtype, device=device, operations=ops)
    random_init(net, device)
    net.eval()
    schedule = DiscreteSchedule().to(device)
    c = random_cond(1, 77, token_dim, pooled_dim, device, 1)
    u = random_cond(1, 77, token_dim, pooled_dim, device, 2)
    k = random_cond(1, 77, token_dim, pooled_dim, device, 3)
    adm: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
    if unet_cfg.get("adm_in_channels"):
        extra = int(unet_cfg["adm_in_channels"]) - pooled_dim

        def sdxl_adm(pooled: torch.Tensor, _extra: int = extra) -> torch.Tensor:
            return torch.cat([pooled, pooled.new_zeros(pooled.shape[0], _extra)], dim=1)

        adm = sdxl_adm

    denoiser = DiscreteEpsDenoiser(net, schedule, dtype=dtype, adm=adm)
    guidance, hgr_params, hgr_desc = make_guidance(family, token_dim, pooled_dim, device)
    px = size * 8
    desc = (f"{family.upper()} UNet (ComfyUI's UNetModel, real config, random init, {str(dtype)[6:]}), "
            f"{px}x{px} px ({size}x{size} latents); ComfyUI from {root}")
    return BenchModel(family, desc, net, denoiser, schedule, [1, 4, size, size], c, u, k, guidance, hgr_params,
                      hgr_desc, text_encoder_for(token_dim, pooled_dim), device, dtype)

