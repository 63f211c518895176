"""Load HGR, SafeCFG (model patch) and Harmfulness Detector nodes (classic V1 node API)."""
from __future__ import annotations

import math
from typing import Any, Dict, Optional

import torch

from ..safecfg_core.batched import BatchedRedirector
from ..safecfg_core.conditioning import Cond
from ..safecfg_core.errors import SafeCFGError
from ..safecfg_core.guidance import (GATE_MODES, GateConfig, SafeGuidance, category_attribution,
                                     concept_directions, score_level_harm, softness_beyond_calibration)
from ..safecfg_core.hgr import HGRBundle
from .comfy_adapters import ComfyDenoiser, ComfyTextEncoder, conditioning_to_conds, model_widths
from .common import (CATEGORY, HGR_TYPE, format_exception, list_hgr_files, log, node_error, register_hgr_folder,
                     resolve_hgr_path)

CFG1_MESSAGE = (
    "cfg is 1 (or the guider runs no negative pass, e.g. BasicGuider), so CFG ignores the negative prompt: "
    "SafeCFG has nothing to redirect and the image would NOT be made safer. Set cfg above 1 (SafeCFG redirects "
    "the negative side of the guidance), or set 'at_cfg_1' to 'warn' to sample anyway."
)


class LoadHGR:
    """Loads a Harmful Guidance Redirector (.safetensors) from ComfyUI's ``models/hgr`` folder."""

    @classmethod
    def INPUT_TYPES(cls) -> Dict[str, Any]:
        register_hgr_folder()
        return {
            "required": {
                "hgr_name": (list_hgr_files(), {
                    "tooltip": "HGR file (.safetensors) in models/hgr or an 'hgr:' folder of extra_model_paths.yaml. "
                               "Train one with the Train HGR node."}),
            }
        }

    RETURN_TYPES = (HGR_TYPE,)
    RETURN_NAMES = ("hgr",)
    OUTPUT_TOOLTIPS = ("The loaded Harmful Guidance Redirector, for the SafeCFG and Harmfulness Detector nodes.",)
    FUNCTION = "load"
    CATEGORY = CATEGORY
    DESCRIPTION = "Loads a Harmful Guidance Redirector (HGR) file; damaged or wrong files are refused with a clear message."

    def load(self, hgr_name: str):
        path = resolve_hgr_path(hgr_name)
        try:
            bundle = HGRBundle.load(path, device="cpu")
        except (SafeCFGError, ValueError, OSError) as exc:
            raise format_exception("Load HGR", exc) from None
        log.info("SafeCFG: loaded %s: %s", path.name, bundle.describe())
        return (bundle,)


class SafeCFGWrapper:
    """``model_function_wrapper`` that swaps the negative rows for HGR's ``u*``; chains an existing wrapper."""

    def __init__(self, redirector: BatchedRedirector, previous: Any = None, at_cfg_1: str = "error") -> None:
        self.redirector = redirector
        self.previous = previous
        self.at_cfg_1 = at_cfg_1
        self._uncond_step: Any = None
        self._warned_cfg1 = False

    def __call__(self, apply_model, args):
        c = args["c"]
        cond_or_uncond = args["cond_or_uncond"]
        topts = c.get("transformer_options", {}) or {}
        if 1 in cond_or_uncond:
            self._uncond_step = topts.get("sigmas")
        ca = c.get("c_crossattn")
        if ca is not None:
            y = c.get("y") if self.redirector.pooled_dim > 0 else None
            ca2, y2 = self.redirector(ca, y, cond_or_uncond, topts)
            if ca2 is not ca or y2 is not y:
                c = dict(c)
                c["c_crossattn"] = ca2
                if y2 is not None:
                    c["y"] = y2
                args = dict(args)
                args["c"] = c
        if self.previous is not None:
            return self.previous(apply_model, args)
        return apply_model(args["input"], args["timestep"], **args["c"])

    def calc_cond_batch_wrapper(self, executor, model, conds, x_in, timestep, model_options):
        """Current ComfyUI only (``WrappersMP.CALC_COND_BATCH``): announce the step's positive conditionings to the
        redirector before any model call, so a split step whose negative runs first is redirected too."""
        try:
            entries = []
            pooled_dim = self.redirector.pooled_dim
            for entry in (conds[0] if conds else None) or []:
                mc = entry.get("model_conds", {})
                ca = mc.get("c_crossattn")
                if ca is None:
                    continue
                tokens = ca.process_cond(batch_size=x_in.shape[0], device=x_in.device).cond
                pooled = None
                if pooled_dim and mc.get("y") is not None:
                    pooled = mc["y"].process_cond(batch_size=x_in.shape[0], device=x_in.device).cond[:, :pooled_dim]
                entries.append((entry.get("uuid"), tokens, pooled))
            topts = model_options.get("transformer_options", {}) or {}
            self.redirector.prime(entries, topts.get("sample_sigmas"), timestep)
        except Exception as exc:  # priming is an optimisation of the split case; never break sampling
            log.debug("SafeCFG: could not prime the redirector (%s)", exc)
        return executor(model, conds, x_in, timestep, model_options)

    def post_cfg(self, args):
        """``sampler_post_cfg_function``: detects cfg = 1 (no negative pass this step); returns denoised as is."""
        scale = args.get("cond_scale")
        no_uncond = self._uncond_step is None or self._uncond_step is not args.get("sigma")
        if (scale is not None and math.isclose(float(scale), 1.0)) or no_uncond:
            if self.at_cfg_1 == "error":
                raise node_error("SafeCFG", CFG1_MESSAGE)
            if not self._warned_cfg1:
                log.warning("SafeCFG: %s", CFG1_MESSAGE)
                self._warned_cfg1 = True
        return args["denoised"]

    def __deepcopy__(self, memo):
        # ComfyUI (2024) deep-copies model_options on every clone; the wrapper is safe to share (its cache is keyed
        # on the prompt), and copying it would copy the HGR weights each time.
        return self

    def to(self, device):
        # ComfyUI calls this with the load/offload device and with the model's dtype; the HGR follows the device
        # but stays in its own (fp32) precision.
        if isinstance(device, torch.dtype):
            if self.previous is not None and hasattr(self.previous, "to"):
                self.previous = self.previous.to(device)
            return self
        net = self.redirector.guidance.bundle.net
        net.to(device)
        if self.previous is not None and hasattr(self.previous, "to"):
            self.previous = self.previous.to(device)
        return self


class SafeCFG:
    """Patches a MODEL so its classifier-free guidance uses HGR's redirected negative (SafeCFG)."""

    @classmethod
    def INPUT_TYPES(cls) -> Dict[str, Any]:
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The diffusion model to patch (it is cloned; the input stays untouched)."}),
                "hgr": (HGR_TYPE, {"tooltip": "A Harmful Guidance Redirector trained for this model (Load HGR / Train HGR)."}),
                "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.05,
                                       "tooltip": "How far the negative is redirected for harmful prompts (1 = as trained, 0 = plain CFG)."}),
                "threshold": ("FLOAT", {"default": -1.0, "min": -1.0, "max": 100.0, "step": 0.001,
                                        "tooltip": "Harm score above which SafeCFG acts. -1 uses the threshold calibrated in the HGR file."}),
            },
            "optional": {
                "gate_mode": (list(GATE_MODES), {"default": "smooth",
                              "tooltip": "smooth: ramp in around the threshold; hard: on/off at the threshold; always: "
                                         "redirect every prompt; off: plain CFG (for A/B comparisons)."}),
                "softness": ("FLOAT", {"default": 0.25, "min": 0.0, "max": 0.99, "step": 0.01,
                                       "tooltip": "Width of the smooth gate's ramp, as a fraction of the threshold. The HGR file's "
                                                  "threshold is calibrated for one softness (0.25 unless trained otherwise): "
                                                  "a wider ramp lets some clean prompts be redirected a little (a warning "
                                                  "says so)."}),
                "at_cfg_1": (["error", "warn"], {"default": "error",
                             "tooltip": "At cfg = 1 CFG ignores the negative, so SafeCFG cannot act: stop with an error "
                                        "(default) or only log a warning."}),
            },
        }

    RETURN_TYPES = ("MODEL",)
    OUTPUT_TOOLTIPS = ("The model with SafeCFG installed; use it in any sampler with cfg > 1.",)
    FUNCTION = "patch"
    CATEGORY = CATEGORY
    DESCRIPTION = ("SafeCFG: for prompts the HGR finds harmful, the negative conditioning is redirected so guidance "
                   "steers away from the harmful content; clean prompts sample exactly as plain CFG.")

    def patch(self, model, hgr, strength, threshold, gate_mode="smooth", softness=0.25, at_cfg_1="error"):
        if not isinstance(hgr, HGRBundle):
            raise node_error("SafeCFG", "the hgr input is not an HGR (connect a Load HGR or Train HGR node).")
        token_dim, pooled_dim, family = model_widths(model)
        if token_dim is not None:
            try:
                hgr.check_compatible(token_dim, pooled_dim, family)
            except (SafeCFGError, ValueError) as exc:
                raise format_exception("SafeCFG", exc) from None
        else:
            log.warning("SafeCFG: the model does not state its text width; the HGR's widths are checked at the first step.")
        thr: Optional[float] = None if threshold is None or threshold < 0 else float(threshold)
        try:
            gate = GateConfig(strength=float(strength), threshold=thr, mode=gate_mode, softness=float(softness))
            if gate.needs_threshold and thr is None and hgr.meta.threshold is None:
                raise ValueError(
                    "the HGR file has no calibrated threshold; set a threshold on the node or use gate mode 'always'.")
        except ValueError as exc:
            raise format_exception("SafeCFG", exc) from None
        too_soft = softness_beyond_calibration(gate, hgr.meta.threshold, hgr.meta.calibration)
        if too_soft:
            log.warning("SafeCFG: %s", too_soft)
        guidance = SafeGuidance(hgr, gate)
        redirector = BatchedRedirector(guidance, pooled_dim=hgr.config.pooled_dim if pooled_dim else 0)
        m = model.clone()
        previous = m.model_options.get("model_function_wrapper")
        wrapper = SafeCFGWrapper(redirector, previous, at_cfg_1)
        m.set_model_unet_function_wrapper(wrapper)
        m.set_model_sampler_post_cfg_function(wrapper.post_cfg)
        try:  # current ComfyUI: see the step's conditionings before the model calls (split batches)
            import comfy.patcher_extension as pe  # type: ignore

            m.add_wrapper_with_key(pe.WrappersMP.CALC_COND_BATCH, "safecfg", wrapper.calc_cond_batch_wrapper)
        except (ImportError, AttributeError):  # ComfyUI before the wrapper system (e.g. March 2024)
            pass
        return (m,)


class HarmfulnessDetector:
    """Scores a prompt (and optionally an image/latent) for harm with an HGR."""

    @classmethod
    def INPUT_TYPES(cls) -> Dict[str, Any]:
        return {
            "required": {
                "hgr": (HGR_TYPE, {"tooltip": "The Harmful Guidance Redirector that judges the prompt."}),
                "positive": ("CONDITIONING", {"tooltip": "The prompt to judge (CLIP Text Encode output)."}),
                "threshold": ("FLOAT", {"default": -1.0, "min": -1.0, "max": 100.0, "step": 0.001,
                                        "tooltip": "Harm score threshold; -1 uses the one calibrated in the HGR file."}),
            },
            "optional": {
                "negative": ("CONDITIONING", {"tooltip": "The negative prompt (usually empty). If absent, the empty "
                                                         "prompt is encoded with the CLIP input."}),
                "clip": ("CLIP", {"tooltip": "Text encoder: names the harm category most implicated and encodes the "
                                             "empty negative when none is connected."}),
                "model": ("MODEL", {"tooltip": "With a LATENT (or IMAGE + VAE): also judge the image at score level."}),
                "latent": ("LATENT", {"tooltip": "Latent to judge at score level (needs MODEL)."}),
                "image": ("IMAGE", {"tooltip": "Image to judge at score level (needs MODEL and VAE)."}),
                "vae": ("VAE", {"tooltip": "VAE to encode the IMAGE input."}),
                "image_threshold": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 100.0, "step": 0.01,
                                              "tooltip": "Score-level ratio above which the image counts as harmful."}),
            },
        }

    RETURN_TYPES = ("FLOAT", "BOOLEAN", "STRING")
    RETURN_NAMES = ("score", "harmful", "report")
    OUTPUT_NODE = True  # shows its report in the UI (and runs on its own)
    OUTPUT_TOOLTIPS = ("Prompt-level harm score (RMS of the HGR's redirection).",
                       "True when the prompt (or the image, if given) is judged harmful.",
                       "A readable report: score, threshold, category most implicated, image judgement.")
    FUNCTION = "detect"
    CATEGORY = CATEGORY
    DESCRIPTION = "Judges how harmful a prompt (and optionally a generated image) is, using an HGR."

    def detect(self, hgr, positive, threshold, negative=None, clip=None, model=None, latent=None, image=None,
               vae=None, image_threshold=0.5):
        name = "Harmfulness Detector"
        if not isinstance(hgr, HGRBundle):
            raise node_error(name, "the hgr input is not an HGR (connect a Load HGR or Train HGR node).")
        try:
            conds = conditioning_to_conds(positive)
        except ValueError as exc:
            raise node_error(name, f"positive: {exc}") from None
        use_pooled = hgr.config.pooled_dim > 0
        if negative is not None:
            u = conditioning_to_conds(negative)[0]
        elif clip is not None:
            u = ComfyTextEncoder(clip, with_pooled=use_pooled)([""])
        else:
            raise node_error(name, "connect the negative conditioning (usually the empty prompt) or a CLIP to encode it.")
        if not use_pooled:
            conds = [Cond(c.tokens) for c in conds]
            u = Cond(u.tokens)
        thr = None if threshold is None or threshold < 0 else float(threshold)
        thr = thr if thr is not None else hgr.meta.threshold
        try:
            hgr.check_compatible(conds[0].token_dim, 0 if conds[0].pooled is None else conds[0].pooled.shape[-1])
            guidance = SafeGuidance(hgr, GateConfig(mode="hard" if thr is not None else "always", threshold=thr))
            best = None
            for c in conds:
                res = guidance.redirected_negative(c, u.index(slice(0, 1)) if u.batch_size != c.batch_size else u)
                score = float(res.score.max())
                if best is None or score > best[0]:
                    best = (score, c, res)
        except (SafeCFGError, ValueError) as exc:
            raise format_exception(name, exc) from None
        score, c, res = best
        harmful = thr is not None and score >= thr
        lines = [f"prompt harm score: {score:.4f}",
                 f"threshold: {'not calibrated' if thr is None else f'{thr:.4f}'}",
                 f"prompt judged: {'HARMFUL' if harmful else 'clean'}"]
        if hgr.meta.categories:
            if clip is not None and score > 0:
                enc = ComfyTextEncoder(clip, with_pooled=use_pooled)
                dirs = concept_directions(enc, hgr.meta.categories, u.index(slice(0, 1)))
                att = category_attribution(res.delta.index(slice(0, 1)), dirs)
                ranked = sorted(((float(v[0]), k) for k, v in att.items()), reverse=True)
                lines.append(f"category most implicated: {ranked[0][1]} (cosine {ranked[0][0]:.3f}); " +
                             ", ".join(f"{k} {v:.3f}" for v, k in ranked))
            elif score > 0:
                lines.append(f"categories: {', '.join(sorted(hgr.meta.categories))} (connect CLIP to name the one implicated)")
            else:
                lines.append("category most implicated: none (the HGR leaves this prompt alone)")
        image_note = None
        if model is not None and (latent is not None or image is not None):
            if latent is not None:
                x0 = latent["samples"].float()
            else:
                if vae is None:
                    raise node_error(name, "the IMAGE input needs a VAE to be judged.")
                x0 = vae.encode(image[:, :, :, :3]).float()
            x0 = model.model.process_latent_in(x0)
            denoiser = ComfyDenoiser(model, pooled_dim=hgr.config.pooled_dim)
            all_sigmas = denoiser.model_sigmas()
            picks = [all_sigmas[int(q * (len(all_sigmas) - 1))] for q in (0.3, 0.5, 0.7)]
            b = x0.shape[0]
            gen = torch.Generator().manual_seed(0)
            # score level: u* with full strength (the question is what HGR would redirect, not the gate)
            full = SafeGuidance(hgr, GateConfig(mode="always", strength=1.0)).redirected_negative(c.index(slice(0, 1)), u.index(slice(0, 1)))
            try:
                ratio = score_level_harm(denoiser, x0, c.index(slice(0, 1)).repeat_batch(b), u.index(slice(0, 1)).repeat_batch(b),
                                         full.u_star.repeat_batch(b), torch.stack(picks), generator=gen)
            except (SafeCFGError, ValueError) as exc:
                raise format_exception(name, exc) from None
            img_score = float(ratio.max())
            image_harmful = img_score >= image_threshold
            harmful = harmful or image_harmful
            image_note = (f"image score-level ratio: {img_score:.4f} (threshold {image_threshold:.3f}) -> "
                          f"{'HARMFUL' if image_harmful else 'clean'}")
            lines.append(image_note)
        lines.append(f"overall: {'HARMFUL' if harmful else 'clean'}")
        report = "\n".join(lines)
        log.info("SafeCFG detector: %s", report.replace("\n", "; "))
        return {"ui": {"text": [report]}, "result": (score, bool(harmful), report)}
