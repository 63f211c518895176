"""Train HGR node: trains a Harmful Guidance Redirector for the connected MODEL + CLIP inside ComfyUI."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np
import torch

from ..safecfg_core.errors import SafeCFGError, TrainingCancelled, TrainingInputError
from ..safecfg_core.hgr import HGRBundle, HGRConfig, KNOWN_FAMILIES
from ..safecfg_core.train import (PerCategory, PromptSet, TrainConfig, TrainProgress, parse_per_category,
                                  per_category_tensor, train_hgr, training_fingerprint)
from .comfy_adapters import ComfyDenoiser, ComfyTextEncoder, model_identity, model_widths
from .common import CATEGORY, HGR_TYPE, format_exception, hgr_save_path, log, node_error

NODE = "Train HGR"

DEFAULT_CLEAN = "a large blue circle on a yellow background\nsmall red star in the top left, green backdrop"
DEFAULT_HARMFUL = "gore: a bloody blue circle on white\nweapon: a knife next to a purple triangle"
DEFAULT_CONCEPTS = "gore: blood, gore\nweapon: knife, weapon"


def _uninference(module: torch.nn.Module) -> None:
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


def _loss_image(history: List[float], harm: List[float], clean: List[float], title: str) -> torch.Tensor:
    try:
        from ..safecfg_core.plotting import line_plot

        img = line_plot({"loss": history, "harmful": harm, "clean": clean}, title=title, ylabel="relative loss")
        arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    except Exception as exc:  # Pillow missing: a blank image, the report still says what happened
        log.warning("SafeCFG Train HGR: could not draw the loss curve (%s)", exc)
        arr = np.ones((320, 512, 3), dtype=np.float32)
    return torch.from_numpy(arr).unsqueeze(0)


def _per_category_inputs(prompts: PromptSet, target_gain: float, gain_per_category: str,
                         rewrite_latents: str) -> Tuple[PerCategory, PerCategory]:
    """The node's gain and rewrite-latents widgets as trainer settings, checked against the prompts' categories
    before any sampling starts, so a typo costs nothing."""
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


class TrainHGR:
    """Trains an HGR for the connected model and text encoder; saves it to models/hgr."""

    @classmethod
    def INPUT_TYPES(cls) -> Dict[str, Any]:
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The frozen diffusion model the HGR is trained for."}),
                "clip": ("CLIP", {"tooltip": "The model's text encoder."}),
                "clean_prompts": ("STRING", {"multiline": True, "default": DEFAULT_CLEAN,
                                  "tooltip": "One clean prompt per line. The HGR learns to leave these alone."}),
                "harmful_prompts": ("STRING", {"multiline": True, "default": DEFAULT_HARMFUL,
                                    "tooltip": "One harmful prompt per line as 'category: prompt' (optionally "
                                               "'category: prompt => safe rewrite')."}),
                "concepts": ("STRING", {"multiline": True, "default": DEFAULT_CONCEPTS,
                             "tooltip": "One line per category: 'category: concept text' (what to steer away from)."}),
                "steps": ("INT", {"default": 200, "min": 1, "max": 100000,
                          "tooltip": "Optimisation steps."}),
                "lr": ("FLOAT", {"default": 0.002, "min": 1e-6, "max": 1.0, "step": 0.0001,
                       "tooltip": "Learning rate (AdamW)."}),
                "batch_size": ("INT", {"default": 8, "min": 2, "max": 256,
                               "tooltip": "Rows per step, half clean and half harmful."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFF,
                         "tooltip": "Seed for the HGR's initialisation, the training draws and the latent samples."}),
                "name": ("STRING", {"default": "my_hgr",
                         "tooltip": "File name for the trained HGR in models/hgr (letters, digits, '-', '_'; no folders)."}),
            },
            "optional": {
                "sample_steps": ("INT", {"default": 12, "min": 1, "max": 200,
                                 "tooltip": "Sampler steps for the model's own training latents (plain CFG, euler)."}),
                "sample_cfg": ("FLOAT", {"default": 5.0, "min": 1.01, "max": 30.0, "step": 0.1,
                               "tooltip": "CFG scale for the training latents and safe-rewrite targets."}),
                "width": ("INT", {"default": 64, "min": 16, "max": 4096, "step": 8,
                          "tooltip": "Image width of the training latents (the demo model: 64; SD1.5: 512)."}),
                "height": ("INT", {"default": 64, "min": 16, "max": 4096, "step": 8,
                           "tooltip": "Image height of the training latents."}),
                "target_gain": ("FLOAT", {"default": 1.0, "min": 1.0, "max": 10.0, "step": 0.1,
                                "tooltip": "How far past its target a harmful prompt is redirected: 1 is the paper's "
                                           "target; a gain g aims (g - 1) times the prompt-to-rewrite distance past "
                                           "the safe rewrite, away from the harm. With '=> safe rewrite' lines, gain 4 "
                                           "left 5% of the harm on the previous demo model at 1,200 steps, against 50% "
                                           "at gain 1 (see the README); gain_per_category overrides this."}),
                "retrain": ("BOOLEAN", {"default": False,
                            "tooltip": "Train again even if an HGR with the same name, inputs and settings exists."}),
                # new inputs go last: saved UI workflows hold widget values by position
                "gain_per_category": ("STRING", {"default": "",
                                      "tooltip": "Optional: a gain per category instead of target_gain, e.g. "
                                                 "'gore=2.5, weapon=4' (every category named once). The shipped demo "
                                                 "HGR uses exactly that."}),
                "rewrite_latents": ("STRING", {"default": "0",
                                    "tooltip": "Share (0..1) of harmful rows with a safe rewrite that are noised from "
                                               "the rewrite's own samples (where SafeCFG should lead) instead of the "
                                               "prompt's: one number, or per category, e.g. 'gore=1, weapon=0' (the "
                                               "shipped demo HGR)."}),
            },
        }

    RETURN_TYPES = (HGR_TYPE, "IMAGE", "STRING")
    RETURN_NAMES = ("hgr", "loss_curve", "summary")
    OUTPUT_TOOLTIPS = ("The trained HGR (also saved to models/hgr).", "Training loss curve.", "Training summary.")
    FUNCTION = "train"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Trains a Harmful Guidance Redirector for the connected model: clean prompts stay as they are, "
                   "harmful prompts get a negative that steers away from their category's concept (or toward their "
                   "safe rewrite). Cancel keeps the last checkpoint; running again resumes from it.")

    @classmethod
    def IS_CHANGED(cls, retrain=False, **kwargs):
        if retrain:
            return float("nan")  # never equal: train every time
        return hashlib.sha256(json.dumps({k: v for k, v in kwargs.items() if isinstance(v, (str, int, float, bool))},
                                         sort_keys=True).encode()).hexdigest()

    def train(self, model, clip, clean_prompts, harmful_prompts, concepts, steps, lr, batch_size, seed, name,
              sample_steps=12, sample_cfg=5.0, width=64, height=64, target_gain=1.0, retrain=False,
              gain_per_category="", rewrite_latents="0"):
        with torch.inference_mode(False):
            return self._train(model, clip, clean_prompts, harmful_prompts, concepts, steps, lr, batch_size, seed,
                               name, sample_steps, sample_cfg, width, height, target_gain, retrain,
                               gain_per_category, rewrite_latents)

    def _train(self, model, clip, clean_prompts, harmful_prompts, concepts, steps, lr, batch_size, seed, name,
               sample_steps, sample_cfg, width, height, target_gain, retrain, gain_per_category, rewrite_latents):
        import comfy.model_management as mm  # type: ignore
        import comfy.sample  # type: ignore
        import comfy.utils  # type: ignore
        import folder_paths  # type: ignore

        try:
            prompts = PromptSet.from_text(clean_prompts, harmful_prompts, concepts)
        except (TrainingInputError, ValueError) as exc:
            raise format_exception(NODE, exc) from None
        gain, rewrite_fraction = _per_category_inputs(prompts, target_gain, gain_per_category, rewrite_latents)
        out_path = hgr_save_path(name)
        token_dim, pooled_dim, family = model_widths(model)
        text_encoder = ComfyTextEncoder(clip, with_pooled=pooled_dim > 0)
        probe = text_encoder([""])
        if token_dim is not None and probe.token_dim != token_dim:
            raise node_error(NODE, f"the CLIP gives {probe.token_dim}-wide tokens but the model expects {token_dim}; "
                                   "connect the model's own text encoder.")
        pooled = 0 if probe.pooled is None or pooled_dim == 0 else int(probe.pooled.shape[-1])
        if family in KNOWN_FAMILIES and KNOWN_FAMILIES[family][0] == probe.token_dim:
            hgr_config = HGRConfig.for_family(family, pooled_dim=pooled)
        else:
            hgr_config = HGRConfig(token_dim=probe.token_dim, pooled_dim=pooled, model_family="unknown")
        denoiser = ComfyDenoiser(model, pooled_dim=pooled)
        sigmas = [float(s) for s in denoiser.model_sigmas()[::10]]
        ckpt_dir = Path(folder_paths.get_output_directory()) / "safecfg_train"
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        ckpt = ckpt_dir / (out_path.stem + ".checkpoint.safetensors")
        config = TrainConfig(steps=int(steps), lr=float(lr), batch_size=int(batch_size), seed=int(seed),
                             sigma_schedule=sigmas, cfg_scale=float(sample_cfg), target_gain=gain,
                             rewrite_latent_fraction=rewrite_fraction,
                             checkpoint_path=str(ckpt),
                             checkpoint_every=max(1, min(50, int(steps) // 4 or 1)), resume=True,
                             device=str(model.load_device), model_id=model_identity(model),
                             latent_cache_path=str(ckpt_dir / (out_path.stem + f".latents-{width}x{height}-{sample_steps}-{seed}.safetensors")))
        try:
            config.validate()
        except TrainingInputError as exc:
            raise format_exception(NODE, exc) from None
        fingerprint = training_fingerprint(prompts, config, hgr_config)
        if not retrain and out_path.exists():
            try:
                existing = HGRBundle.load(out_path)
                if existing.meta.training.get("fingerprint") == fingerprint:
                    log.info("SafeCFG Train HGR: %s already trained with these inputs; loading it (set retrain to train again).", out_path.name)
                    hist = existing.meta.training.get("loss_history") or []
                    return (existing, _loss_image(hist, [], [], f"{out_path.name} (loaded)"),
                            f"loaded existing {out_path.name}: {existing.describe()}")
            except (SafeCFGError, ValueError):
                pass
        if retrain and ckpt.exists():
            ckpt.unlink()

        _uninference(model.model)
        negative_tokens = probe

        def sample_latents(batch_prompts: List[str]) -> torch.Tensor:
            c = text_encoder(batch_prompts)
            n = len(batch_prompts)
            pos = [[c.tokens, {"pooled_output": c.pooled}]]
            u = negative_tokens.repeat_batch(n)
            neg = [[u.tokens, {"pooled_output": u.pooled}]]
            channels = int(getattr(model.model.latent_format, "latent_channels", 4))
            latent = torch.zeros([n, channels, height // 8, width // 8])
            noise = comfy.sample.prepare_noise(latent, int(seed))
            samples = comfy.sample.sample(model, noise, int(sample_steps), float(sample_cfg), "euler", "normal",
                                          pos, neg, latent, denoise=1.0, disable_pbar=True, seed=int(seed))
            return model.model.process_latent_in(samples.float().cpu())

        pbar = comfy.utils.ProgressBar(int(steps))

        def progress(p: TrainProgress):
            if p.phase == "train":
                pbar.update_absolute(p.step, p.total)
            if mm.processing_interrupted():
                return False
            return True

        def run():
            return train_hgr(text_encoder, denoiser, prompts, config=config, hgr_config=hgr_config,
                             sample_latents=sample_latents, progress=progress)

        try:
            try:
                result = run()
            except TrainingInputError as exc:
                if "Cannot resume" not in str(exc):
                    raise
                log.info("SafeCFG Train HGR: the old checkpoint does not match these inputs; starting over.")
                ckpt.unlink(missing_ok=True)
                result = run()
        except TrainingCancelled as exc:
            log.warning("SafeCFG Train HGR: %s", exc)
            mm.throw_exception_if_processing_interrupted()  # ComfyUI's own "interrupted" (also clears the flag)
            raise node_error(NODE, str(exc)) from None
        except (SafeCFGError, ValueError) as exc:
            raise format_exception(NODE, exc) from None
        bundle = result.bundle
        bundle.meta.training = dict(bundle.meta.training)
        bundle.meta.training["fingerprint"] = fingerprint
        bundle.net.to("cpu").eval()
        for p in bundle.net.parameters():
            p.requires_grad_(False)
        bundle.save(out_path)
        ckpt.unlink(missing_ok=True)
        resumed = result.summary.get("resumed_from")
        summary = (f"saved {out_path.name}: {bundle.describe()}; final loss "
                   f"{result.loss_history[-1] if result.loss_history else float('nan'):.4f}"
                   + (f" (resumed from the checkpoint at step {resumed})" if resumed else ""))
        log.info("SafeCFG Train HGR: %s", summary)
        image = _loss_image(result.loss_history, result.harm_history, result.clean_history, out_path.name)
        return (bundle, image, summary)
