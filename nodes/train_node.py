"""Train HGR node: trains a Harmful Guidance Redirector for the connected MODEL + CLIP inside ComfyUI.

A thin adapter over the core's :class:`~..safecfg_core.train.TrainingSession`, which owns the policy: an HGR
already trained from the same inputs is loaded, any other file under the name is kept unless ``retrain`` is set,
a checkpoint is resumed only by the same settings, and Cancel writes a checkpoint of the completed steps.
"""
from __future__ import annotations

from typing import Any

import torch
from comfy_api.latest import io

from ..safecfg_core.errors import SafeCFGError, TrainingCancelled
from ..safecfg_core.train import PromptSet, TrainConfig, TrainingSession, TrainProgress
from .comfy_adapters import ComfyDenoiser, model_identity
from .common import CATEGORY_TRAINING, format_exception, hgr_save_path, log, node_error
from .io_types import HGR
from .train_parts import (NODE, checkpoint_paths, encoder_and_config, latent_sampler, loss_image,
                          per_category_inputs, uninference)

DEFAULT_CLEAN = "a large blue circle on a yellow background\nsmall red star in the top left, green backdrop"
DEFAULT_HARMFUL = "gore: a bloody blue circle on white\nweapon: a knife next to a purple triangle"
DEFAULT_CONCEPTS = "gore: blood, gore\nweapon: knife, weapon"


class TrainHGR(io.ComfyNode):
    """Trains an HGR for the connected model and text encoder; saves it to models/hgr."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SafeCFGTrainHGR", display_name="Train HGR (SafeCFG)", category=CATEGORY_TRAINING,
            description="Trains a Harmful Guidance Redirector for the connected model: clean prompts stay as they "
                        "are, harmful prompts get a negative that steers away from their category's concept (or "
                        "toward their safe rewrite). Cancel keeps a checkpoint; queueing the same graph resumes it.",
            inputs=[
                io.Model.Input("model", tooltip="The frozen diffusion model the HGR is trained for."),
                io.Clip.Input("clip", tooltip="The model's text encoder."),
                io.String.Input("clean_prompts", multiline=True, default=DEFAULT_CLEAN,
                                tooltip="One clean prompt per line. The HGR learns to leave these alone."),
                io.String.Input("harmful_prompts", multiline=True, default=DEFAULT_HARMFUL,
                                tooltip="One harmful prompt per line as 'category: prompt' (optionally "
                                        "'category: prompt => safe rewrite')."),
                io.String.Input("concepts", multiline=True, default=DEFAULT_CONCEPTS,
                                tooltip="One line per category: 'category: concept text' (what to steer away from)."),
                io.Int.Input("steps", default=200, min=1, max=100000, tooltip="Optimisation steps."),
                io.Float.Input("lr", default=0.002, min=1e-6, max=1.0, step=0.0001, tooltip="Learning rate (AdamW)."),
                io.Int.Input("batch_size", default=8, min=2, max=256, tooltip="Rows per step, half clean and half harmful."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFF,
                             tooltip="Seed for the HGR's initialisation, the training draws and the latent samples."),
                io.String.Input("name", default="my_hgr",
                                tooltip="File name for the trained HGR in models/hgr (letters, digits, '-', '_'; "
                                        "no folders). An existing file is never replaced unless retrain is on."),
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
                io.Boolean.Input("retrain", default=False, optional=True,
                                 tooltip="Train from step 0 and replace the file under this name, even if it was "
                                         "trained from these inputs or from others."),
                # new inputs go last: saved UI workflows hold widget values by position
                io.String.Input("gain_per_category", default="", optional=True,
                                tooltip="Optional: a gain per category instead of target_gain, e.g. "
                                        "'gore=2.5, weapon=4' (every category named once)."),
                io.String.Input("rewrite_latents", default="0", optional=True,
                                tooltip="Share (0..1) of harmful rows with a safe rewrite that are noised from the "
                                        "rewrite's own samples (where SafeCFG should lead) instead of the prompt's: "
                                        "one number, or per category, e.g. 'gore=1, weapon=0'."),
            ],
            outputs=[HGR.Output("hgr", display_name="hgr", tooltip="The trained HGR (also saved to models/hgr)."),
                     io.Image.Output("loss_curve", display_name="loss_curve", tooltip="Training loss curve."),
                     io.String.Output("summary", display_name="summary", tooltip="Training summary.")],
        )

    @classmethod
    def fingerprint_inputs(cls, retrain: bool = False, **kwargs: Any) -> Any:
        return float("nan") if retrain else ""  # NaN never equals itself: retrain runs every time it is queued

    @classmethod
    def execute(cls, model, clip, clean_prompts, harmful_prompts, concepts, steps, lr, batch_size, seed, name,
                sample_steps=12, sample_cfg=5.0, width=64, height=64, target_gain=1.0, retrain=False,
                gain_per_category="", rewrite_latents="0") -> io.NodeOutput:
        with torch.inference_mode(False):
            session = cls._session(model, clip, clean_prompts, harmful_prompts, concepts, steps, lr, batch_size,
                                   seed, name, sample_steps, sample_cfg, width, height, target_gain, retrain,
                                   gain_per_category, rewrite_latents)
            result = cls._run(session)
        bundle, out = result.bundle, session.output_path
        bundle.net.to("cpu")
        if result.reused:
            log.info("SafeCFG Train HGR: %s already trained with these inputs; loaded it (retrain trains again).",
                     out.name)
            summary = f"loaded existing {out.name} (already trained with these inputs): {bundle.describe()}"
        else:
            resumed = result.summary.get("resumed_from")
            summary = (f"saved {out.name}: {bundle.describe()}; final loss {result.loss_history[-1]:.4f}"
                       + (f" (resumed from the checkpoint at step {resumed})" if resumed else ""))
            log.info("SafeCFG Train HGR: %s", summary)
        image = loss_image(result.loss_history, result.harm_history, result.clean_history, out.name)
        return io.NodeOutput(bundle, image, summary)

    @classmethod
    def _session(cls, model, clip, clean_prompts, harmful_prompts, concepts, steps, lr, batch_size, seed, name,
                 sample_steps, sample_cfg, width, height, target_gain, retrain, gain_per_category,
                 rewrite_latents) -> TrainingSession:
        import comfy.utils  # type: ignore
        import folder_paths  # type: ignore

        try:
            prompts = PromptSet.from_text(clean_prompts, harmful_prompts, concepts)
        except (SafeCFGError, ValueError) as exc:
            raise format_exception(NODE, exc) from None
        gain, rewrite_fraction = per_category_inputs(prompts, target_gain, gain_per_category, rewrite_latents)
        out_path = hgr_save_path(name)
        ckpt, cache = checkpoint_paths(folder_paths.get_output_directory(), out_path)
        text_encoder, hgr_config = encoder_and_config(model, clip)
        denoiser = ComfyDenoiser(model, pooled_dim=hgr_config.pooled_dim)
        config = TrainConfig(
            steps=int(steps), lr=float(lr), batch_size=int(batch_size), seed=int(seed),
            sigma_schedule=[float(s) for s in denoiser.model_sigmas()[::10]], cfg_scale=float(sample_cfg),
            target_gain=gain, rewrite_latent_fraction=rewrite_fraction, model_id=model_identity(model),
            sampler_id=f"euler/normal, {int(sample_steps)} steps, {int(width)}x{int(height)}",
            checkpoint_path=str(ckpt), checkpoint_every=max(1, min(50, int(steps) // 4 or 1)), resume=True,
            device=str(model.load_device), latent_cache_path=str(cache))
        pbar = comfy.utils.ProgressBar(int(steps))
        try:
            session = TrainingSession(
                text_encoder, denoiser, prompts, config, hgr_config, output_path=out_path, retrain=bool(retrain),
                sample_latents=latent_sampler(model, text_encoder, sample_steps, sample_cfg, width, height, seed),
                progress=lambda p: cls._progress(pbar, p), restart_on_mismatch=True, keep_checkpoint=False)
            if session.existing() is None:  # training will run: the model must take gradients through it
                uninference(model.model)
        except (SafeCFGError, ValueError) as exc:
            raise format_exception(NODE, exc) from None
        return session

    @staticmethod
    def _progress(pbar: Any, p: TrainProgress) -> bool:
        import comfy.model_management as mm  # type: ignore

        if mm.processing_interrupted():
            return False  # the session writes the checkpoint, then raises TrainingCancelled
        if p.phase == "train":
            pbar.update_absolute(p.step, p.total)  # current ComfyUI raises its interrupt here: checkpointed too
        return True

    @classmethod
    def _run(cls, session: TrainingSession) -> Any:
        import comfy.model_management as mm  # type: ignore

        try:
            return session.run()
        except TrainingCancelled as exc:
            log.warning("SafeCFG Train HGR: %s", exc)
            mm.throw_exception_if_processing_interrupted()  # ComfyUI's own "interrupted" (also clears the flag)
            raise node_error(NODE, str(exc)) from None
        except (SafeCFGError, ValueError) as exc:
            raise format_exception(NODE, exc) from None
        except mm.InterruptProcessingException:
            if session.checkpoint_step:
                log.warning("SafeCFG Train HGR: cancelled; checkpoint of step %d kept at %s. Queue the same graph "
                            "to resume from it.", session.checkpoint_step, session.checkpoint_path)
            raise
