"""Harmfulness Detector: the core's prompt (and image) judgement as a node, with a readable report in the UI."""
from __future__ import annotations

import math
from typing import Any, List, Optional

import torch
from comfy_api.latest import io, ui

from ..safecfg_core.conditioning import Cond
from ..safecfg_core.errors import SafeCFGError
from ..safecfg_core.guidance import GateConfig, SafeGuidance
from ..safecfg_core.hgr import HGRBundle
from ..safecfg_core.judge import (IMAGE_SIGMAS, IMAGE_THRESHOLD, PromptVerdict, category_scores, judge_image,
                                  judge_prompt)
from .comfy_adapters import ComfyDenoiser, ComfyTextEncoder, conditioning_to_conds
from .common import CATEGORY_CONDITIONING, SafeCFGNodeError, format_exception, log, node_error
from .io_types import HGR

NODE = "Harmfulness Detector"


def _verdict_word(harmful: bool) -> str:
    return "HARMFUL" if harmful else "clean"


def _category_line(guidance: SafeGuidance, verdict: PromptVerdict, u: Cond, clip: Any) -> Optional[str]:
    """The harm category the redirection points to (needs CLIP to encode the concepts), or None without categories."""
    hgr = guidance.bundle
    if not hgr.meta.categories:
        return None
    if verdict.score <= 0:
        return "category most implicated: none (the HGR leaves this prompt alone)"
    if clip is None:
        return f"categories: {', '.join(sorted(hgr.meta.categories))} (connect CLIP to name the one implicated)"
    enc = ComfyTextEncoder(clip, with_pooled=hgr.config.pooled_dim > 0)
    att = category_scores(guidance, enc, hgr.meta.categories, verdict.result.delta.index(slice(0, 1)), u)
    ranked = sorted(((float(v[0]), k) for k, v in att.items()), reverse=True)
    return (f"category most implicated: {ranked[0][1]} (cosine {ranked[0][0]:.3f}); "
            + ", ".join(f"{k} {v:.3f}" for v, k in ranked))


def _image_score(hgr: HGRBundle, model: Any, latent: Any, image: Any, vae: Any, c: Cond, u: Cond,
                 verdict: PromptVerdict) -> float:
    """The core's image judgement (highest over the batch) of a LATENT, or of an IMAGE encoded with the VAE."""
    if latent is not None:
        x0 = latent["samples"].float()
    else:
        if vae is None:
            raise node_error(NODE, "the IMAGE input needs a VAE to be judged.")
        x0 = vae.encode(image[:, :, :, :3]).float()
    x0 = model.model.process_latent_in(x0)
    denoiser = ComfyDenoiser(model, pooled_dim=hgr.config.pooled_dim)
    sig = denoiser.model_sigmas()
    delta = verdict.result.delta.index(slice(0, 1))
    scores = judge_image(denoiser, x0, c.index(slice(0, 1)), u.index(slice(0, 1)), delta,
                         sigma_range=(float(sig.min()), float(sig.max())))
    return float(scores.max())


class HarmfulnessDetector(io.ComfyNode):
    """Judges how harmful a prompt (and optionally a generated image) is, using an HGR."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SafeCFGHarmfulnessDetector",
            display_name="Harmfulness Detector (SafeCFG)",
            category=CATEGORY_CONDITIONING,
            description="Judges how harmful a prompt (and optionally a generated image) is, using an HGR. The "
                        "report is shown on the node.",
            is_output_node=True,
            inputs=[
                HGR.Input("hgr", tooltip="The Harmful Guidance Redirector that judges the prompt."),
                io.Conditioning.Input("positive", tooltip="The prompt to judge (CLIP Text Encode output); with "
                                                          "several combined prompts the most harmful one counts."),
                io.Float.Input("threshold", default=-1.0, min=-1.0, max=100.0, step=0.001,
                               tooltip="Harm score threshold; -1 uses the one calibrated in the HGR file."),
                io.Conditioning.Input("negative", optional=True,
                                      tooltip="The negative prompt (usually empty). If absent, the empty prompt is "
                                              "encoded with the CLIP input."),
                io.Clip.Input("clip", optional=True,
                              tooltip="Text encoder: names the harm category most implicated and encodes the empty "
                                      "negative when none is connected."),
                io.Model.Input("model", optional=True,
                               tooltip="With a LATENT (or IMAGE + VAE): also judge the image at score level."),
                io.Latent.Input("latent", optional=True, tooltip="Latent to judge at score level (needs MODEL)."),
                io.Image.Input("image", optional=True, tooltip="Image to judge at score level (needs MODEL and VAE)."),
                io.Vae.Input("vae", optional=True, tooltip="VAE to encode the IMAGE input."),
                io.Float.Input("image_threshold", default=IMAGE_THRESHOLD, min=0.0, max=100.0, step=0.01,
                               optional=True,
                               tooltip="Image score above which the image counts as harmful: how much the HGR would "
                                       "change the denoiser's prediction, relative to the prompt's own CFG direction "
                                       f"(noise levels {', '.join(str(s) for s in IMAGE_SIGMAS)})."),
            ],
            outputs=[
                io.Float.Output("score", display_name="score",
                                tooltip="Prompt-level harm score (RMS of the HGR's redirection)."),
                io.Boolean.Output("harmful", display_name="harmful",
                                  tooltip="True when the prompt (or the image, if given) is judged harmful."),
                io.String.Output("report", display_name="report",
                                 tooltip="A readable report: score, threshold, category most implicated, image "
                                         "judgement. Connect a Preview Any node to read it in the UI."),
            ],
        )

    @classmethod
    def execute(cls, hgr: Any, positive: Any, threshold: float, negative: Any = None, clip: Any = None,
                model: Any = None, latent: Any = None, image: Any = None, vae: Any = None,
                image_threshold: float = IMAGE_THRESHOLD) -> io.NodeOutput:
        if not isinstance(hgr, HGRBundle):
            raise node_error(NODE, "the hgr input is not an HGR (connect a Load HGR or Train HGR node).")
        with_pooled = hgr.config.pooled_dim > 0
        try:
            conds = conditioning_to_conds(positive, with_pooled)
        except ValueError as exc:
            raise node_error(NODE, f"positive: {exc}") from None
        if negative is not None:
            u = conditioning_to_conds(negative, with_pooled)[0]
        elif clip is not None:
            u = ComfyTextEncoder(clip, with_pooled=with_pooled)([""])
        else:
            raise node_error(NODE, "connect the negative conditioning (usually the empty prompt) or a CLIP to "
                                   "encode it.")
        thr = None if threshold is None or threshold < 0 else float(threshold)
        if not math.isfinite(float(image_threshold)):
            raise node_error(NODE, f"image_threshold is {image_threshold}; it must be a finite number >= 0 (NaN "
                                   f"would judge every image clean). Use e.g. the default {IMAGE_THRESHOLD}.")
        try:
            gate = GateConfig(mode="hard" if (thr if thr is not None else hgr.meta.threshold) is not None
                              else "always", threshold=thr)
            guidance = SafeGuidance(hgr, gate)
            verdict = judge_prompt(guidance, conds, u.index(slice(0, 1)))
            lines: List[str] = [f"prompt harm score: {verdict.score:.4f}",
                                "threshold: " + ("not calibrated" if verdict.threshold is None
                                                 else f"{verdict.threshold:.4f}"),
                                f"prompt judged: {_verdict_word(verdict.harmful)}"]
            category = _category_line(guidance, verdict, u, clip)
            harmful = verdict.harmful
            if category:
                lines.append(category)
            if model is not None and (latent is not None or image is not None):
                img = _image_score(hgr, model, latent, image, vae, conds[verdict.index], u, verdict)
                harmful = harmful or img >= image_threshold
                lines.append(f"image score-level ratio: {img:.4f} (threshold {image_threshold:.3f}) -> "
                             f"{_verdict_word(img >= image_threshold)}")
        except SafeCFGNodeError:
            raise
        except (SafeCFGError, ValueError) as exc:
            raise format_exception(NODE, exc) from None
        lines.append(f"overall: {_verdict_word(harmful)}")
        report = "\n".join(lines)
        log.info("SafeCFG detector: %s", report.replace("\n", "; "))
        return io.NodeOutput(verdict.score, bool(harmful), report, ui=ui.PreviewText(report))
