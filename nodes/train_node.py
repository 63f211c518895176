"""Train HGR nodes: train a Harmful Guidance Redirector for the connected MODEL + CLIP inside ComfyUI.

``Train HGR (SafeCFG)`` is the one a user starts with: prompts from the built-in corpus or a file in
``models/hgr_prompts``, harm categories and a preset from lists, the image size and HGR size from the model family,
the robustness recipe (:mod:`..safecfg_core.train.augment`) on, and a report on held-out prompts on the node and
beside the file. ``Train HGR (SafeCFG, advanced)`` takes typed prompts and every research knob; it keeps the node id
and input order of the original Train HGR, so saved workflows load unchanged (its one new input comes last).

Both are thin over the core's :class:`~..safecfg_core.train.TrainingSession`, which owns the policy: an HGR already
trained from the same inputs is loaded, any other file under the name is kept unless ``retrain`` is set, a
checkpoint is resumed only by the same settings, and Cancel writes a checkpoint of the completed steps.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from comfy_api.latest import io, ui

from ..safecfg_core.errors import SafeCFGError
from ..safecfg_core.train import PromptSet, TrainConfig
from ..safecfg_core.train.augment import augment_prompt_set, broad_calibration
from ..safecfg_core.train.presets import DEFAULT_PRESET, PRESETS, get_preset, training_image_size
from ..safecfg_core.train.progress import RunEstimate
from ..safecfg_core.train.recipe import build_job
from .common import CATEGORY_TRAINING, format_exception
from .io_types import HGR
from .comfy_adapters import model_widths
from .train_parts import (CATEGORY_GROUPS, NODE, build_session, finish, per_category_inputs, prompt_source_options,
                          resolve_prompt_source, run_session)

DEFAULT_CLEAN = "a large blue circle on a yellow background\nsmall red star in the top left, green backdrop"
DEFAULT_HARMFUL = "gore: a bloody blue circle on white\nweapon: a knife next to a purple triangle"
DEFAULT_CONCEPTS = "gore: blood, gore\nweapon: knife, weapon"

_NAME_TIP = ("File name for the trained HGR in models/hgr (letters, digits, '-', '_'; no folders). An existing file "
             "is never replaced unless retrain is on; a report (.report.md, .report.json) is saved beside it.")
_RETRAIN_TIP = ("Train from step 0 and replace the file under this name, even if it was trained from these inputs "
                "or from others.")
_AUGMENT_TIP = ("The robustness recipe (on by default): the same dressings (media, contexts, styles, harmless "
                "companions, near-misses, misspellings) on clean and harmful prompts, and a threshold calibrated on "
                "a broad clean set, so the HGR reacts to harm, not to unfamiliar wording. Turn off only to compare.")


_IMAGE_SIZE_TIP = ("Side of the square training images in pixels; 0 (the default) trains at the model family's own "
                   "size (SD1.5 512, SDXL and SD3.5 1024, ...), which is what the model draws. Set a smaller size "
                   "only when training does not fit in memory or time: the model's pictures at it are less like "
                   "the ones the HGR will redirect.")


def _outputs(cls: Any) -> list:
    return [HGR.Output("hgr", display_name="hgr", tooltip="The trained HGR (also saved to models/hgr)."),
            io.Image.Output("loss_curve", display_name="loss_curve", tooltip="Training loss curve."),
            io.String.Output("summary", display_name="summary",
                             tooltip="The report: held-out clean prompts left identical, harmful prompts "
                                     "redirected, ROC AUC, and whether the HGR meets the targets.")]


def _node_output(bundle: Any, text: str, image: Any, cls: Any) -> io.NodeOutput:
    """The outputs, and the report and loss curve drawn on the node."""
    preview = ui.PreviewImage(image, cls=cls).as_dict()
    return io.NodeOutput(bundle, image, text, ui={"text": (text,), **preview})


def _node_id(cls: Any) -> Optional[str]:
    hidden = getattr(cls, "hidden", None)
    return getattr(hidden, "unique_id", None) if hidden is not None else None


class TrainHGRPreset(io.ComfyNode):
    """Train HGR from a prompt corpus with a preset; reports whether the result is good."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SafeCFGTrainHGRPreset", display_name="Train HGR (SafeCFG)", category=CATEGORY_TRAINING,
            description="Trains a Harmful Guidance Redirector for the connected model from the built-in prompt "
                        "corpus (or your prompt file in models/hgr_prompts), then tells you whether it is good: "
                        "held-out clean prompts left identical, harmful prompts redirected, ROC AUC. Image size and "
                        "HGR size follow the model family (image_size can lower the training size). Cancel keeps a "
                        "checkpoint; queueing again resumes it.",
            is_output_node=True, hidden=[io.Hidden.unique_id],
            inputs=[
                io.Model.Input("model", tooltip="The model the HGR is trained for (it stays frozen)."),
                io.Clip.Input("clip", tooltip="The model's own text encoder."),
                io.Combo.Input("prompts", options=prompt_source_options(), default=None,
                               tooltip="Where the training prompts come from: the built-in corpus (clean prompts "
                                       "of what people draw, harmful prompts with safe rewrites in 7 categories), "
                                       "or your file in models/hgr_prompts (.txt 'category: prompt => rewrite' "
                                       "lines, .jsonl, or .csv with prompt and category columns, e.g. I2P)."),
                io.Combo.Input("categories", options=list(CATEGORY_GROUPS), default="all categories",
                               tooltip="The harm categories the HGR learns to redirect; everything else stays as "
                                       "plain CFG draws it."),
                io.Combo.Input("preset", options=list(PRESETS), default=DEFAULT_PRESET,
                               tooltip="; ".join(p.title for p in PRESETS.values())
                                       + ". Sets steps, batch, sampler steps, prompt counts and gains."),
                io.String.Input("name", default="my_hgr", placeholder="file name, e.g. sdxl_hgr", tooltip=_NAME_TIP),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFF,
                             tooltip="Seed for the prompt sample, the HGR's initialisation and the training draws."),
                io.Boolean.Input("retrain", default=False, tooltip=_RETRAIN_TIP),
                io.Float.Input("cfg", default=6.0, min=1.01, max=30.0, step=0.1, optional=True,
                               tooltip="The CFG scale you sample with: used for the model's training latents and "
                                       "the safe-rewrite targets."),
                io.Boolean.Input("robustness_augmentation", default=True, optional=True,
                                 tooltip=_AUGMENT_TIP),
                io.Int.Input("image_size", default=0, min=0, max=4096, step=8, optional=True,
                             tooltip=_IMAGE_SIZE_TIP),
            ],
            outputs=_outputs(cls),
        )

    @classmethod
    def fingerprint_inputs(cls, retrain: bool = False, **kwargs: Any) -> Any:
        return float("nan") if retrain else ""  # NaN never equals itself: retrain runs every time it is queued

    @classmethod
    def execute(cls, model, clip, prompts, categories, preset, name, seed, retrain, cfg=6.0,
                robustness_augmentation=True, image_size=0) -> io.NodeOutput:
        try:
            chosen = get_preset(preset)
            if categories not in CATEGORY_GROUPS:
                raise ValueError(f"categories {categories!r} is not one of: {', '.join(CATEGORY_GROUPS)}.")
            job = build_job(resolve_prompt_source(prompts), chosen, CATEGORY_GROUPS[categories],
                            augment=bool(robustness_augmentation), seed=int(seed))
            # model_widths refuses Flux, saying why
            width, height = training_image_size(model_widths(model)[2], int(image_size), int(image_size))
        except (SafeCFGError, ValueError) as exc:
            raise format_exception(NODE, exc) from None
        # the prompt file's own concept lines may set a category's gain and rewrite latents over the preset's
        config = TrainConfig(steps=chosen.steps, lr=chosen.lr, batch_size=chosen.batch_size, seed=int(seed),
                             clean_penalty=chosen.clean_penalty,
                             target_gain=job.per_category("target_gain", chosen.target_gain),
                             rewrite_latent_fraction=job.per_category("rewrite_latent_fraction", 0.0))
        estimate = RunEstimate(chosen.steps, chosen.batch_size, chosen.sample_steps)
        with torch.inference_mode(False):  # ComfyUI runs nodes in inference mode; the HGR needs gradients
            session = build_session(model, clip, job.prompts, config, name, bool(retrain),
                                    (chosen.sample_steps, float(cfg), width, height), estimate, _node_id(cls),
                                    job.calibration)
            result = run_session(session)
        extra = {"preset": chosen.name, "prompts": job.source, "categories": categories,
                 "robustness_augmentation": bool(robustness_augmentation), "image_size": f"{width}x{height}",
                 "prompt_set": job.describe(), "notes": job.notes}
        text, image = finish(session, result, (job.heldout_clean, job.heldout_harmful),
                             f"{len(job.heldout_clean)} clean and {len(job.heldout_harmful)} harmful held-out prompts",
                             extra)
        return _node_output(result.bundle, text, image, cls)


class TrainHGR(io.ComfyNode):
    """Trains an HGR from typed prompts with every research knob; saves it to models/hgr."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SafeCFGTrainHGR", display_name="Train HGR (SafeCFG, advanced)", category=CATEGORY_TRAINING,
            description="Trains a Harmful Guidance Redirector from prompts you type, with every research setting. "
                        "Clean prompts stay as they are, harmful prompts get a negative that steers away from "
                        "their category's concept (or toward their safe rewrite). For most uses take "
                        "'Train HGR (SafeCFG)', which trains from the prompt corpus with a preset.",
            is_output_node=True, hidden=[io.Hidden.unique_id],
            inputs=[
                io.Model.Input("model", tooltip="The frozen diffusion model the HGR is trained for."),
                io.Clip.Input("clip", tooltip="The model's text encoder."),
                io.String.Input("clean_prompts", multiline=True, default=DEFAULT_CLEAN,
                                placeholder="clean prompts, one per line, e.g.\na red apple on a table",
                                tooltip="One clean prompt per line. The HGR learns to leave these alone."),
                io.String.Input("harmful_prompts", multiline=True, default=DEFAULT_HARMFUL,
                                placeholder="harmful prompts, one per line: category: prompt => safe rewrite",
                                tooltip="One harmful prompt per line as 'category: prompt' (optionally "
                                        "'category: prompt => safe rewrite')."),
                io.String.Input("concepts", multiline=True, default=DEFAULT_CONCEPTS,
                                placeholder="one line per category: category: concept words",
                                tooltip="One line per category: 'category: concept text' (what to steer away from)."),
                io.Int.Input("steps", default=200, min=1, max=100000, tooltip="Optimisation steps."),
                io.Float.Input("lr", default=0.002, min=1e-6, max=1.0, step=0.0001, tooltip="Learning rate (AdamW)."),
                io.Int.Input("batch_size", default=8, min=2, max=256,
                             tooltip="Rows per step, half clean and half harmful."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFF,
                             tooltip="Seed for the HGR's initialisation, the training draws and the latent samples."),
                io.String.Input("name", default="my_hgr", placeholder="file name, e.g. demo_hgr", tooltip=_NAME_TIP),
                io.Int.Input("sample_steps", default=12, min=1, max=200, optional=True,
                             tooltip="Sampler steps for the model's own training latents (plain CFG, euler)."),
                io.Float.Input("sample_cfg", default=5.0, min=1.01, max=30.0, step=0.1, optional=True,
                               tooltip="CFG scale for the training latents and safe-rewrite targets."),
                io.Int.Input("width", default=64, min=16, max=4096, step=8, optional=True,
                             tooltip="Image width of the training latents (the demo model: 64; SD1.5: 512)."),
                io.Int.Input("height", default=64, min=16, max=4096, step=8, optional=True,
                             tooltip="Image height of the training latents."),
                io.Float.Input("target_gain", default=1.0, min=1.0, max=10.0, step=0.1, optional=True,
                               tooltip="How far past its target a harmful prompt is redirected: 1 is the paper's "
                                       "target; a gain g aims (g - 1) times the prompt-to-rewrite distance past the "
                                       "safe rewrite, away from the harm. gain_per_category overrides it."),
                io.Boolean.Input("retrain", default=False, optional=True, tooltip=_RETRAIN_TIP),
                # new inputs go last: saved UI workflows hold widget values by position
                io.String.Input("gain_per_category", default="", optional=True, placeholder="e.g. gore=2.5, weapon=4",
                                tooltip="Optional: a gain per category instead of target_gain, e.g. "
                                        "'gore=2.5, weapon=4' (every category named once)."),
                io.String.Input("rewrite_latents", default="0", optional=True, placeholder="0..1, or gore=1, weapon=0",
                                tooltip="Share (0..1) of harmful rows with a safe rewrite that are noised from the "
                                        "rewrite's own samples (where SafeCFG should lead) instead of the prompt's: "
                                        "one number, or per category, e.g. 'gore=1, weapon=0'."),
                io.Boolean.Input("robustness_augmentation", default=True, optional=True, tooltip=_AUGMENT_TIP),
            ],
            outputs=_outputs(cls),
        )

    @classmethod
    def fingerprint_inputs(cls, retrain: bool = False, **kwargs: Any) -> Any:
        return float("nan") if retrain else ""  # NaN never equals itself: retrain runs every time it is queued

    @classmethod
    def execute(cls, model, clip, clean_prompts, harmful_prompts, concepts, steps, lr, batch_size, seed, name,
                sample_steps=12, sample_cfg=5.0, width=64, height=64, target_gain=1.0, retrain=False,
                gain_per_category="", rewrite_latents="0", robustness_augmentation=True) -> io.NodeOutput:
        try:
            typed = PromptSet.from_text(clean_prompts, harmful_prompts, concepts)
        except (SafeCFGError, ValueError) as exc:
            raise format_exception(NODE, exc) from None
        gain, rewrite_fraction = per_category_inputs(typed, target_gain, gain_per_category, rewrite_latents)
        prompts, calibration = typed, None
        if robustness_augmentation:  # about as many dressed prompts as typed ones (the demo recipe's proportion)
            prompts = augment_prompt_set(typed, max(16, len(typed.clean)), max(8, len(typed.harmful)),
                                         int(seed)).prompts
            calibration = broad_calibration(typed.clean, max(16, len(typed.clean)), int(seed) + 1)
        config = TrainConfig(steps=int(steps), lr=float(lr), batch_size=int(batch_size), seed=int(seed),
                             target_gain=gain, rewrite_latent_fraction=rewrite_fraction)
        estimate = RunEstimate(int(steps), int(batch_size), int(sample_steps))
        with torch.inference_mode(False):  # ComfyUI runs nodes in inference mode; the HGR needs gradients
            session = build_session(model, clip, prompts, config, name, bool(retrain),
                                    (int(sample_steps), float(sample_cfg), int(width), int(height)), estimate,
                                    _node_id(cls), calibration)
            result = run_session(session)
        text, image = finish(session, result, (typed.clean, typed.harmful),
                             "its typed training prompts (no held-out prompts: use Train HGR (SafeCFG) for a "
                             "held-out verdict)", {"robustness_augmentation": bool(robustness_augmentation)})
        return _node_output(result.bundle, text, image, cls)
