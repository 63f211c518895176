"""SafeCFG node: redirects the negative CONDITIONING for harmful prompts; the MODEL only carries a fail-closed guard.

Delta depends only on the prompt pair, so the redirection ``u* = u + s * Delta(c, u)`` (METHOD.md) is computed once
per graph run, here, and handed to the sampler as an ordinary negative CONDITIONING: every stock sampler and guider
then uses it in every step, whether ComfyUI batches the positive and negative passes together or runs them apart.
Each negative entry keeps its options (areas, masks, timestep ranges, ControlNets); SDXL's ``pooled_output`` is
redirected too when the HGR has a pooled part. With several positives (ConditioningCombine) the most harmful one
decides (``safecfg_core.judge``). A clean prompt's negative keeps its tensors, so the image is plain CFG's bit for bit.

SafeCFG can only act through CFG's negative pass, so the returned MODEL carries one ``sampler_post_cfg_function``
that refuses to sample where it cannot: cfg = 1 (ComfyUI then skips the negative pass), guiders without a negative
pass (BasicGuider), and a positive or negative that is not the one this node returned (every entry it returns is
marked with :data:`GUARD_KEY`; ComfyUI copies entry options into what the post-CFG hook sees).
"""
from __future__ import annotations

import math
import uuid
from typing import Any, Callable, Dict, List, Optional, Tuple

from comfy_api.latest import io

from ..safecfg_core.errors import SafeCFGError
from ..safecfg_core.families import DISTILLED_MESSAGE
from ..safecfg_core.guidance import GATE_MODES, GateConfig, SafeGuidance, softness_beyond_calibration
from ..safecfg_core.hgr import HGRBundle
from ..safecfg_core.judge import PromptVerdict, judge_prompt
from .comfy_adapters import conditioning_to_conds, entry_cond, model_widths, replace_entry
from .common import CATEGORY_SAMPLING, format_exception, log, node_error
from .io_types import HGR

NODE = "SafeCFG"
GUARD_KEY = "safecfg_guard"
"""Option key on every CONDITIONING entry SafeCFG returns; its value is the id of the node run that judged it."""

CFG1_MESSAGE = (
    "cfg is 1 (or the guider runs no negative pass, e.g. BasicGuider), so CFG ignores the negative prompt: "
    "SafeCFG has nothing to redirect and the image would NOT be made safer. Set cfg above 1 (SafeCFG redirects "
    "the negative side of the guidance), or set 'at_cfg_1' to 'warn' to sample anyway. " + DISTILLED_MESSAGE
)
WIRING_MESSAGE = (
    "the sampler's {which} conditioning is not the one this SafeCFG node returned, so the negative it uses is not "
    "redirected for this prompt. Connect SafeCFG's positive and negative outputs to the sampler (the same node "
    "that gives it the model)."
)


def _inactive_reason(args: Dict[str, Any], token: str) -> Optional[Tuple[str, bool]]:
    """Why SafeCFG is not acting in this CFG step, and whether ``at_cfg_1 = warn`` may excuse it; None if it acts."""
    uncond = args.get("uncond")
    scale = args.get("cond_scale")
    try:
        cfg1 = scale is not None and math.isclose(float(scale), 1.0)
    except (TypeError, ValueError):  # a per-row scale tensor: CFG runs, the negative matters
        cfg1 = False
    if uncond is None or cfg1:
        return CFG1_MESSAGE, True
    for which, entries in (("negative", uncond), ("positive", args.get("cond") or [])):
        if any(not isinstance(e, dict) or e.get(GUARD_KEY) != token for e in entries):
            return WIRING_MESSAGE.format(which=which), False
    return None


def make_guard(token: str, at_cfg_1: str) -> Callable[[Dict[str, Any]], Any]:
    """The ``sampler_post_cfg_function`` of the returned MODEL: returns CFG's result unchanged, or refuses."""
    warned: List[bool] = []

    def safecfg_guard(args: Dict[str, Any]) -> Any:
        problem = _inactive_reason(args, token)
        if problem is not None:
            message, excusable = problem
            if not excusable or at_cfg_1 == "error":
                raise node_error(NODE, message)
            if not warned:
                log.warning("SafeCFG: %s", message)
                warned.append(True)
        return args["denoised"]

    return safecfg_guard


def redirect_conditioning(guidance: SafeGuidance, positive: List[Any], negative: List[Any], token: str
                          ) -> Tuple[List[Any], List[Any], List[PromptVerdict]]:
    """``(positive, negative, verdicts)``: every entry marked with ``token``; each negative entry whose verdict
    moved it carries ``u*`` (tokens, and the pooled vector when the HGR has a pooled part)."""
    with_pooled = guidance.bundle.config.pooled_dim > 0
    positives = conditioning_to_conds(positive, with_pooled)
    conditioning_to_conds(negative, with_pooled)  # same shape checks, clear message
    out_neg, verdicts = [], []
    for entry in negative:
        verdict = judge_prompt(guidance, positives, entry_cond(entry, with_pooled))
        verdicts.append(verdict)
        moved = verdict.result.u_star if verdict.redirected else None
        out_neg.append(replace_entry(entry, moved, **{GUARD_KEY: token}))
    out_pos = [replace_entry(entry, None, **{GUARD_KEY: token}) for entry in positive]
    return out_pos, out_neg, verdicts


def _guidance(model: Any, hgr: Any, strength: float, threshold: float, gate_mode: str, softness: float
              ) -> SafeGuidance:
    """The HGR + gate for this model, after the width and threshold checks (node errors otherwise)."""
    if not isinstance(hgr, HGRBundle):
        raise node_error(NODE, "the hgr input is not an HGR (connect a Load HGR or Train HGR node).")
    thr: Optional[float] = None if threshold is None or threshold < 0 else float(threshold)
    try:
        # A refused family (Flux) stops here, before any sampling, with why and what would act there; an HGR for
        # another family or width is refused naming both.
        token_dim, pooled_dim, family = model_widths(model)
        if token_dim is not None:
            hgr.check_compatible(token_dim, pooled_dim, family)
        gate = GateConfig(strength=float(strength), threshold=thr, mode=gate_mode, softness=float(softness))
        if gate.needs_threshold and thr is None and hgr.meta.threshold is None:
            raise ValueError(
                "the HGR file has no calibrated threshold; set a threshold on the node or use gate mode 'always'.")
    except (SafeCFGError, ValueError) as exc:
        raise format_exception(NODE, exc) from None
    too_soft = softness_beyond_calibration(gate, hgr.meta.threshold, hgr.meta.calibration)
    if too_soft:
        log.warning("SafeCFG: %s", too_soft)
    return SafeGuidance(hgr, gate)


class SafeCFG(io.ComfyNode):
    """Redirects the negative conditioning for harmful prompts (SafeCFG); clean prompts stay plain CFG."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SafeCFG",
            display_name="SafeCFG",
            category=CATEGORY_SAMPLING,
            description="SafeCFG: for prompts the HGR finds harmful, the negative conditioning is redirected so "
                        "guidance steers away from the harmful content; clean prompts sample exactly as plain CFG. "
                        "Connect all three outputs to the sampler and use cfg > 1.",
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model (it is cloned; the input stays untouched)."),
                HGR.Input("hgr", tooltip="A Harmful Guidance Redirector trained for this model (Load HGR / Train "
                                         "HGR)."),
                io.Conditioning.Input("positive", tooltip="The prompt (CLIP Text Encode). With several combined "
                                                          "prompts the most harmful one decides."),
                io.Conditioning.Input("negative", tooltip="The negative prompt (often empty); this is what SafeCFG "
                                                          "redirects."),
                io.Float.Input("strength", default=1.0, min=0.0, max=10.0, step=0.05,
                               tooltip="How far the negative is redirected for harmful prompts (1 = as trained, "
                                       "0 = plain CFG)."),
                io.Float.Input("threshold", default=-1.0, min=-1.0, max=100.0, step=0.001,
                               tooltip="Harm score above which SafeCFG acts. -1 uses the threshold calibrated in "
                                       "the HGR file."),
                io.Combo.Input("gate_mode", options=list(GATE_MODES), default="smooth", optional=True,
                               tooltip="smooth: ramp in around the threshold; hard: on/off at the threshold; "
                                       "always: redirect every prompt; off: plain CFG (for A/B comparisons)."),
                io.Float.Input("softness", default=0.25, min=0.0, max=0.99, step=0.01, optional=True,
                               tooltip="Width of the smooth gate's ramp, as a fraction of the threshold. A ramp "
                                       "wider than the one the HGR's threshold was calibrated for lets some clean "
                                       "prompts be redirected a little (a warning says so)."),
                io.Combo.Input("at_cfg_1", options=["error", "warn"], default="error", optional=True,
                               tooltip="At cfg = 1 (or with a guider that has no negative pass) CFG ignores the "
                                       "negative, so SafeCFG cannot act: stop with an error, or only log a warning."),
            ],
            outputs=[
                io.Model.Output("safecfg_model", display_name="model",
                                tooltip="The model with SafeCFG's check that it can act; use it in the sampler with "
                                        "cfg > 1."),
                io.Conditioning.Output("safecfg_positive", display_name="positive",
                                       tooltip="The positive, unchanged (marked as judged by SafeCFG)."),
                io.Conditioning.Output("safecfg_negative", display_name="negative",
                                       tooltip="The negative, redirected for harmful prompts."),
            ],
        )

    @classmethod
    def execute(cls, model: Any, hgr: Any, positive: Any, negative: Any, strength: float, threshold: float,
                gate_mode: str = "smooth", softness: float = 0.25, at_cfg_1: str = "error") -> io.NodeOutput:
        guidance = _guidance(model, hgr, strength, threshold, gate_mode, softness)
        token = uuid.uuid4().hex
        try:
            pos, neg, verdicts = redirect_conditioning(guidance, positive, negative, token)
        except (SafeCFGError, ValueError) as exc:
            raise format_exception(NODE, exc) from None
        for v in verdicts:
            log.info("SafeCFG: prompt harm score %.4f (threshold %s): %s", v.score,
                     "none" if v.threshold is None else f"{v.threshold:.4f}",
                     f"negative redirected (s = {float(v.result.s.max()):.3f})" if v.redirected else "plain CFG")
        m = model.clone()
        m.set_model_sampler_post_cfg_function(make_guard(token, at_cfg_1))
        return io.NodeOutput(m, pos, neg)
