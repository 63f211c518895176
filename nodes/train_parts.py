"""What the Train HGR node needs besides its schema: ComfyUI's MODEL/CLIP as a training session, and its outputs.

Everything that decides *how* training runs (skip, resume, checkpoint, cancel, overwrite) is the core's
:class:`~..safecfg_core.train.TrainingSession`; this module only translates ComfyUI's objects and widgets into it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, List, Tuple

import numpy as np
import torch

from ..safecfg_core.errors import TrainingInputError
from ..safecfg_core.hgr import KNOWN_FAMILIES, HGRConfig
from ..safecfg_core.train import PerCategory, PromptSet, parse_per_category, per_category_tensor
from .comfy_adapters import ComfyTextEncoder, model_widths
from .common import format_exception, log, node_error

NODE = "Train HGR"


def uninference(module: torch.nn.Module) -> None:
    """Replace inference-mode parameters/buffers (created while ComfyUI ran a node) by normal tensors, so gradients
    can flow *through* the frozen model into the HGR."""
    with torch.inference_mode(False):
        for mod in module.modules():
            for name, p in list(mod._parameters.items()):
                if p is not None and p.is_inference():
                    mod._parameters[name] = torch.nn.Parameter(p.clone(), requires_grad=False)
            for name, b in list(mod._buffers.items()):
                if b is not None and b.is_inference():
                    mod._buffers[name] = b.clone()


def loss_image(history: List[float], harm: List[float], clean: List[float], title: str) -> torch.Tensor:
    """The loss curves as a ComfyUI IMAGE ``[1, H, W, 3]`` (blank when Pillow is missing)."""
    try:
        from ..safecfg_core.plotting import line_plot

        img = line_plot({"loss": history, "harmful": harm, "clean": clean}, title=title, ylabel="relative loss")
        arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    except Exception as exc:  # Pillow missing: a blank image, the summary still says what happened
        log.warning("SafeCFG Train HGR: could not draw the loss curve (%s)", exc)
        arr = np.ones((320, 512, 3), dtype=np.float32)
    return torch.from_numpy(arr).unsqueeze(0)


def per_category_inputs(prompts: PromptSet, target_gain: float, gain_per_category: str,
                        rewrite_latents: str) -> Tuple[PerCategory, PerCategory]:
    """The gain and rewrite-latents widgets as trainer settings, checked against the prompts' categories before any
    sampling starts, so a typo costs nothing."""
    categories = sorted(prompts.concepts)
    out = []
    for widget, text, fallback in (("gain_per_category", gain_per_category, float(target_gain)),
                                   ("rewrite_latents", rewrite_latents, 0.0)):
        try:
            value = parse_per_category(text) if str(text).strip() else fallback
            per_category_tensor(widget, value, categories)
        except TrainingInputError as exc:  # a mapping that misses or invents a category (says which)
            raise format_exception(NODE, exc) from None
        except ValueError as exc:  # not a number or category=number list
            raise node_error(NODE, f"{widget}: {exc}. Categories here: {categories}.") from None
        out.append(value)
    return out[0], out[1]


def encoder_and_config(model: Any, clip: Any) -> Tuple[ComfyTextEncoder, HGRConfig]:
    """The CLIP as the core's text encoder, and the HGR shape for this model (its family's preset when known)."""
    token_dim, pooled_dim, family = model_widths(model)
    text_encoder = ComfyTextEncoder(clip, with_pooled=pooled_dim > 0)
    probe = text_encoder([""])
    if token_dim is not None and probe.token_dim != token_dim:
        raise node_error(NODE, f"the CLIP gives {probe.token_dim}-wide tokens but the model expects {token_dim}; "
                               "connect the model's own text encoder.")
    pooled = 0 if probe.pooled is None or pooled_dim == 0 else int(probe.pooled.shape[-1])
    if family in KNOWN_FAMILIES and KNOWN_FAMILIES[family][0] == probe.token_dim:
        return text_encoder, HGRConfig.for_family(family, pooled_dim=pooled)
    return text_encoder, HGRConfig(token_dim=probe.token_dim, pooled_dim=pooled, model_family="unknown")


def latent_sampler(model: Any, text_encoder: ComfyTextEncoder, steps: int, cfg: float, width: int, height: int,
                   seed: int) -> Callable[[List[str]], torch.Tensor]:
    """The model's own plain-CFG samples (euler, normal schedule, empty negative) for a list of prompts."""
    import comfy.sample  # type: ignore

    negative = text_encoder([""])

    def sample_latents(prompts: List[str]) -> torch.Tensor:
        c = text_encoder(prompts)
        pos = [[c.tokens, {"pooled_output": c.pooled}]]
        u = negative.repeat_batch(len(prompts))
        neg = [[u.tokens, {"pooled_output": u.pooled}]]
        channels = int(getattr(model.model.latent_format, "latent_channels", 4))
        latent = torch.zeros([len(prompts), channels, height // 8, width // 8])
        noise = comfy.sample.prepare_noise(latent, int(seed))
        samples = comfy.sample.sample(model, noise, int(steps), float(cfg), "euler", "normal", pos, neg, latent,
                                      denoise=1.0, disable_pbar=True, seed=int(seed))
        return model.model.process_latent_in(samples.float().cpu())

    return sample_latents


def checkpoint_paths(output_dir: str, out_path: Path) -> Tuple[Path, Path]:
    """Where a run for ``out_path`` keeps its checkpoint and latent cache (ComfyUI's output/safecfg_train)."""
    folder = Path(output_dir) / "safecfg_train"
    folder.mkdir(parents=True, exist_ok=True)
    return (folder / (out_path.stem + ".checkpoint.safetensors"),
            folder / (out_path.stem + ".latents.safetensors"))
