"""SD1.5, SD2.x, SDXL and SDXL-refiner checkpoints that ComfyUI's stock ``CheckpointLoaderSimple`` loads, built with
ComfyUI's own classes and random weights, cached once under the ignored ``.cache/`` folder.

What is real and what is reduced:

* the text encoders are full size and ComfyUI's own: CLIP-L (SD1.5), OpenCLIP-H (SD2.x), CLIP-L + CLIP-G (SDXL),
  CLIP-G (the refiner), with ComfyUI's tokenizers, so CLIPTextEncode gives the 77x768 / 77x1024 / 77x2048 (+1280
  pooled) / 77x1280 (+1280 pooled) conditioning a user's checkpoint gives;
* the VAE is ComfyUI's SD/SDXL AutoencoderKL at full size (ComfyUI's VAE detection fixes its layout);
* the UNet keeps every key ComfyUI's detection matches a family on (``comfy/supported_models.py``: model channels,
  context width, linear or convolutional transformer projections, ADM width, and for SDXL and its refiner the exact
  ``transformer_depth``, [0, 0, 2, 2, 10, 10] and [0, 0, 4, 4, 4, 4, 0, 0]) and is reduced only where detection does
  not look: SD1.5 and SD2.x get two levels of one block each; SDXL and the refiner keep their levels and transformer
  depths but every level at the first level's channels (``channel_mult`` of ones) and a thin decoder. The builder
  checks that ComfyUI detects the saved file as ``SD15`` / ``SD20`` / ``SDXL`` / ``SDXLRefiner``.

The files are written by :func:`main` in a subprocess (ComfyUI's modules read the command line at import and keep
global state), in fp16, keyed by :data:`VERSION`: change anything here and bump it.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Dict

VERSION = "sd-ckpt-v1"
CHECKPOINTS: Dict[str, str] = {"sd15": "safecfg_test_sd15.safetensors", "sdxl": "safecfg_test_sdxl.safetensors",
                               "sd2": "safecfg_test_sd2.safetensors",
                               "sdxl_refiner": "safecfg_test_sdxl_refiner.safetensors"}
"""File name of each family's checkpoint (the name the tests and templates load)."""
COMFY_CLASS = {"sd15": "SD15", "sdxl": "SDXL", "sd2": "SD20", "sdxl_refiner": "SDXLRefiner"}

_COMMON = {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
           "legacy": False, "in_channels": 4, "model_channels": 320, "use_temporal_attention": False,
           "use_temporal_resblock": False}
UNET_CONFIGS = {
    "sd15": {**_COMMON, "adm_in_channels": None, "num_res_blocks": [1, 1], "channel_mult": [1, 1],
             "transformer_depth": [1, 1], "transformer_depth_middle": 1, "transformer_depth_output": [1, 1, 1, 1],
             "use_linear_in_transformer": False, "context_dim": 768, "num_heads": 8},
    "sdxl": {**_COMMON, "num_classes": "sequential", "adm_in_channels": 2816, "num_res_blocks": [2, 2, 2],
             "channel_mult": [1, 1, 1], "transformer_depth": [0, 0, 2, 2, 10, 10], "transformer_depth_middle": 1,
             "transformer_depth_output": [0, 0, 0, 0, 0, 0, 1, 1, 1], "use_linear_in_transformer": True,
             "context_dim": 2048, "num_head_channels": 64},
    "sd2": {**_COMMON, "adm_in_channels": None, "num_res_blocks": [1, 1], "channel_mult": [1, 1],
            "transformer_depth": [1, 1], "transformer_depth_middle": 1, "transformer_depth_output": [1, 1, 1, 1],
            "use_linear_in_transformer": True, "context_dim": 1024, "num_head_channels": 64},
    "sdxl_refiner": {**_COMMON, "model_channels": 384, "num_classes": "sequential", "adm_in_channels": 2560,
                     "num_res_blocks": [2, 2, 2, 2], "channel_mult": [1, 1, 1, 1],
                     "transformer_depth": [0, 0, 4, 4, 4, 4, 0, 0], "transformer_depth_middle": 1,
                     "transformer_depth_output": [0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0],
                     "use_linear_in_transformer": True, "context_dim": 1280, "num_head_channels": 64},
}
VAE_CONFIG = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
              "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}


def _init_weights():
    """The DiT fixtures' seeded initialisation (tests/comfy/families/dit_build.py), shared so both fixture sets agree."""
    sys.path.insert(0, str(Path(__file__).resolve().parent / "families"))
    from dit_build import init_weights  # type: ignore

    return init_weights


def build_checkpoint(family: str, path: Path) -> None:
    """Write ``family``'s checkpoint to ``path`` (ComfyUI must be importable, in --cpu mode)."""
    import torch
    import comfy.model_detection as md
    from comfy.ldm.models.autoencoder import AutoencoderKL
    from safetensors.torch import save_file

    init_weights = _init_weights()
    config = md.model_config_from_unet_config(dict(UNET_CONFIGS[family]))
    if type(config).__name__ != COMFY_CLASS[family]:
        raise RuntimeError(f"{family}: ComfyUI picks {type(config).__name__} for the reduced config")
    model = config.get_model({}, device="cpu")
    init_weights(model.diffusion_model, seed=1)
    text_encoder = config.clip_target().clip(device="cpu", dtype=torch.float16)
    # position ids and the logit scale are constants a real file carries; the rest is random
    init_weights(text_encoder, seed=2, skip=lambda name: name.endswith(("position_ids", "logit_scale")))
    vae = AutoencoderKL(ddconfig=dict(VAE_CONFIG), embed_dim=4)
    init_weights(vae, seed=3)
    sd = model.state_dict_for_saving(text_encoder.state_dict(), vae.state_dict())
    sd = {k: (v.to(torch.float16) if v.is_floating_point() else v).contiguous() for k, v in sd.items()}
    del model, text_encoder, vae
    again = md.model_config_from_unet(sd, "model.diffusion_model.")
    if type(again).__name__ != COMFY_CLASS[family]:
        raise RuntimeError(f"{family}: the saved file is detected as {type(again).__name__}")
    part = path.with_name(path.name + f".{os.getpid()}.part")
    save_file(sd, str(part), metadata={"safecfg_test_fixture": VERSION, "family": family})
    part.rename(path)  # atomic: a file at ``path`` is always complete


def main(root: str, out_dir: str, families) -> None:
    sys.path.insert(0, root)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for family in families:
        target = out / CHECKPOINTS[family]
        if not target.exists():
            build_checkpoint(family, target)


def _comfy_conftest():
    import importlib.util

    spec = importlib.util.spec_from_file_location("_safecfg_comfy_conftest_fixtures",
                                                  Path(__file__).with_name("conftest.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def ensure_checkpoints(comfyui_root: Path, cache_dir: Path, families=tuple(CHECKPOINTS)) -> Dict[str, Path]:
    """The cached checkpoint of each family, built (in a subprocess) the first time; ``{family: path}``."""
    out = cache_dir / "model-fixtures" / VERSION
    paths = {f: out / CHECKPOINTS[f] for f in families}
    missing = [f for f, p in paths.items() if not p.exists()]
    if missing:
        env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
        shims = [str(p) for p in _comfy_conftest().shim_paths_for(comfyui_root)]  # torchvision placeholders
        env["PYTHONPATH"] = os.pathsep.join(shims + [env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        proc = subprocess.run([sys.executable, __file__, str(comfyui_root), str(out), *missing], cwd=comfyui_root,
                              env=env, capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0:
            raise RuntimeError(f"building the {missing} checkpoints failed:\n{proc.stdout[-3000:]}{proc.stderr[-6000:]}")
    return paths


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
