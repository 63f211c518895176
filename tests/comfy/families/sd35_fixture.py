"""An SD3.5 all-in-one checkpoint that ComfyUI's stock ``CheckpointLoaderSimple`` loads, built with ComfyUI's own
classes and random weights, cached once under the ignored ``.cache/model-fixtures/`` folder.

ComfyUI's SD3.5 example loads one file (``sd3.5_large_fp8_scaled.safetensors``: MMDiT, CLIP-L, CLIP-G, T5-XXL and
the VAE) with ``CheckpointLoaderSimple``. This file has the same layout (``model.diffusion_model.``,
``text_encoders.clip_l.`` / ``text_encoders.clip_g.``, ``first_stage_model.``), and what is real and reduced is:

* the MMDiT is ComfyUI's SD3 class at the config its detection reads from the keys (``dit_build.DETECT_KEYS``:
  one joint block, 64 wide, SD3.5's RMS q/k norms); it takes the real 4096-wide tokens and 2048-wide pooled vector;
* CLIP-L and CLIP-G are full size and ComfyUI's own (SD3's text-encoder classes, its tokenizers);
* the VAE is ComfyUI's 16-channel AutoencoderKL at full size;
* there is **no T5-XXL** (4.7 B parameters, far beyond CI). ComfyUI's SD3 text-encoder target
  (``comfy/supported_models.py`` ``SD3.clip_target``) looks for ``text_encoders.t5xxl.transformer.encoder.
  final_layer_norm.weight`` and, without it, builds ``sd3_clip(t5=False)``: CLIP-L + CLIP-G padded to 4096 wide,
  77 tokens (``comfy/text_encoders/sd3_clip.py``). A user's file adds the T5 tokens after those 77; the graph is
  the same.

The builder checks that ComfyUI detects the saved file as ``SD3`` with the config it was built from and that it has
no T5 keys. Written by :func:`main` in a subprocess (ComfyUI's modules read the command line at import), fp16,
keyed by :data:`VERSION`: change anything here and bump it.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

VERSION = "sd35-ckpt-v1"
CHECKPOINT = "safecfg_test_sd35.safetensors"
T5_KEY = "text_encoders.t5xxl.transformer.encoder.final_layer_norm.weight"  # what SD3.clip_target looks for
HERE = Path(__file__).resolve().parent


def build_checkpoint(path: Path) -> None:
    """Write the checkpoint to ``path`` (ComfyUI importable, in --cpu mode)."""
    import torch
    import comfy.model_detection as md
    import comfy.text_encoders.sd3_clip as sd3_clip
    from safetensors.torch import save_file

    sys.path.insert(0, str(HERE))
    from dit_build import DETECT_KEYS, _meta, build_vae, init_weights  # type: ignore

    config = md.model_config_from_unet(_meta(DETECT_KEYS["sd3"]), "")
    if type(config).__name__ != "SD3":
        raise RuntimeError(f"ComfyUI picks {type(config).__name__} for the SD3 keys")
    model = config.get_model({}, device="cpu")
    init_weights(model.diffusion_model, seed=1)
    # the encoder class SD3.clip_target builds for a file with CLIP-L and CLIP-G and no T5
    text_encoder = sd3_clip.sd3_clip(clip_l=True, clip_g=True, t5=False)(device="cpu", dtype=torch.float16)
    init_weights(text_encoder, seed=2, skip=lambda name: name.endswith(("position_ids", "logit_scale")))
    sd = model.state_dict_for_saving(text_encoder.state_dict(), build_vae("kl16"))
    sd = {k: (v.to(torch.float16) if v.is_floating_point() else v).contiguous() for k, v in sd.items()}
    del model, text_encoder
    again = md.model_config_from_unet(sd, "model.diffusion_model.")
    if type(again).__name__ != "SD3" or again.unet_config != config.unet_config:
        raise RuntimeError(f"the saved file is detected as {type(again).__name__} "
                           f"({getattr(again, 'unet_config', None)} vs {config.unet_config})")
    if T5_KEY in sd or not any(k.startswith("text_encoders.clip_g.") for k in sd):
        raise RuntimeError("the text encoders are not CLIP-L + CLIP-G without T5")
    part = path.with_name(path.name + f".{os.getpid()}.part")
    save_file(sd, str(part), metadata={"safecfg_test_fixture": VERSION, "family": "sd3"})
    part.rename(path)  # atomic: a file at ``path`` is always complete


def main(root: str, out_dir: str) -> None:
    import logging

    logging.getLogger().setLevel(logging.ERROR)  # ComfyUI lists every VAE key it builds without a weight
    sys.path.insert(0, root)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not (out / CHECKPOINT).exists():
        build_checkpoint(out / CHECKPOINT)


def ensure_checkpoint(comfyui_root: Path, cache_dir: Path, shim_paths) -> Path:
    """The cached checkpoint, built (in a subprocess) the first time. ``shim_paths``: the test harness's
    placeholder-module folders (tests/comfy/conftest.py ``shim_paths_for``)."""
    path = cache_dir / "model-fixtures" / VERSION / CHECKPOINT
    if not path.exists():
        env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
        paths = [str(p) for p in shim_paths] + [env.get("PYTHONPATH", "")]
        env["PYTHONPATH"] = os.pathsep.join(paths).rstrip(os.pathsep)
        proc = subprocess.run([sys.executable, __file__, str(comfyui_root), str(path.parent)], cwd=comfyui_root,
                              env=env, capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0 or not path.exists():
            raise RuntimeError(f"building the SD3.5 checkpoint failed:\n{proc.stdout[-3000:]}{proc.stderr[-6000:]}")
    return path


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
