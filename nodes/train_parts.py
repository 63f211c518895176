"""What the Train HGR node needs besides its schema: ComfyUI's MODEL/CLIP as a training session, and its outputs.

Everything that decides *how* training runs (skip, resume, checkpoint, cancel, overwrite) is the core's
:class:`~..safecfg_core.train.TrainingSession`; this module only translates ComfyUI's objects and widgets into it.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..safecfg_core.errors import (INPLACE_AUTOGRAD_HINT, SafeCFGError, TrainingCancelled, TrainingInputError,
                                   is_inplace_autograd_error)
from ..safecfg_core.families import FAMILIES
from ..safecfg_core.hgr import HGRConfig
from ..safecfg_core.train import (PerCategory, PromptSet, TrainConfig, TrainingSession, TrainProgress,
                                  parse_per_category, per_category_tensor)
from ..safecfg_core.train.presets import family_hgr_config
from ..safecfg_core.train.progress import RunEstimate
from ..safecfg_core.train.report import evaluate_heldout, report_lines, write_report
from .comfy_adapters import ComfyDenoiser, ComfyTextEncoder, model_identity, model_widths, sampler_entry
from .common import format_exception, hgr_save_path, log, node_error, shown

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
    try:
        token_dim, pooled_dim, family = model_widths(model)  # refuses Flux, saying why
    except (SafeCFGError, ValueError) as exc:
        raise format_exception(NODE, exc) from None
    known = FAMILIES.get(family or "")
    if known is not None and known.training_refusal:
        raise node_error(NODE, known.training_refusal)
    text_encoder = ComfyTextEncoder(clip, with_pooled=pooled_dim > 0)
    probe = text_encoder([""])
    if token_dim is not None and probe.token_dim != token_dim:
        raise node_error(NODE, f"the CLIP gives {probe.token_dim}-wide tokens but the model expects {token_dim}; "
                               "connect the model's own text encoder.")
    pooled = 0 if probe.pooled is None or pooled_dim == 0 else int(probe.pooled.shape[-1])
    return text_encoder, family_hgr_config(family, probe.token_dim, pooled)


def latent_sampler(model: Any, text_encoder: ComfyTextEncoder, steps: int, cfg: float, width: int, height: int,
                   seed: int) -> Callable[[List[str]], torch.Tensor]:
    """The model's own plain-CFG samples (euler, normal schedule, empty negative) for a list of prompts."""
    import comfy.sample  # type: ignore

    negative = text_encoder([""])

    def sample_latents(prompts: List[str]) -> torch.Tensor:
        pos = [sampler_entry(model, text_encoder(prompts))]
        neg = [sampler_entry(model, negative.repeat_batch(len(prompts)))]
        channels = int(getattr(model.model.latent_format, "latent_channels", 4))
        latent = torch.zeros([len(prompts), channels, height // 8, width // 8])
        # video-latent families (Wan, Qwen-Image) need the frame axis KSampler adds to an empty latent
        latent = comfy.sample.fix_empty_latent_channels(model, latent)
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


# ----------------------------------------------------------------------------------------------------------
# Prompt sources: the built-in corpus or a file in models/hgr_prompts

PROMPT_FOLDER = "hgr_prompts"
PROMPT_EXTENSIONS = {".txt", ".jsonl", ".ndjson", ".csv", ".tsv"}
BUILTIN_CORPUS = "built-in corpus (real models)"
CATEGORY_GROUPS: Dict[str, Optional[Tuple[str, ...]]] = {
    "all categories": None,
    "sexual": ("sexual",), "violence": ("violence",), "weapons": ("weapons",), "self-harm": ("self-harm",),
    "drugs": ("drugs",), "hate": ("hate",), "shocking": ("shocking",),
    "graphic (violence, weapons, shocking)": ("violence", "weapons", "shocking"),
    "sexual and graphic (sexual, violence, shocking)": ("sexual", "violence", "shocking"),
}
"""The categories choice (ComfyUI 0.3.64's MultiCombo is not drawn as a multi-select by its frontend, so groups)."""


def register_prompt_folder() -> Optional[str]:
    """Register ``models/hgr_prompts`` (prompt files for Train HGR) with ComfyUI once; idempotent, like the
    ``hgr`` folder. Returns the default folder, or None outside ComfyUI."""
    try:
        import folder_paths  # type: ignore
    except Exception:
        return None
    default = os.path.join(folder_paths.models_dir, PROMPT_FOLDER)
    paths, exts = folder_paths.folder_names_and_paths.get(PROMPT_FOLDER, ([], set()))
    paths = list(paths) + ([default] if default not in paths else [])
    folder_paths.folder_names_and_paths[PROMPT_FOLDER] = (paths, set(exts) | PROMPT_EXTENSIONS)
    try:
        os.makedirs(default, exist_ok=True)
    except OSError:  # read-only install: extra_model_paths folders still work
        pass
    return default


def prompt_source_options() -> List[str]:
    """The prompts choice: the built-in corpus first, then the files in ``models/hgr_prompts`` (a new file appears
    on the next refresh: ComfyUI re-lists a folder whose modification time changed)."""
    try:
        import folder_paths  # type: ignore

        register_prompt_folder()
        files = [f for f in folder_paths.get_filename_list(PROMPT_FOLDER) if "concepts" not in Path(f).stem.lower()]
    except Exception:  # outside ComfyUI
        files = []
    return [BUILTIN_CORPUS] + sorted(files)


def resolve_prompt_source(choice: str) -> str:
    """``"builtin"`` or the full path of a file in the prompts folder; never a path outside it."""
    if choice == BUILTIN_CORPUS:
        return "builtin"
    import folder_paths  # type: ignore

    if choice not in folder_paths.get_filename_list(PROMPT_FOLDER):
        raise node_error(NODE, f"prompts {shown(choice)} is not a file in models/{PROMPT_FOLDER}; pick one from the "
                               f"list (put your own .txt, .jsonl or .csv there and press R to refresh).")
    full = folder_paths.get_full_path(PROMPT_FOLDER, choice)  # None for a pipe, a folder or a broken link
    if full is None:
        raise node_error(NODE, f"prompts {shown(choice)} in models/{PROMPT_FOLDER} is not a regular file (a pipe, "
                               "socket, device or broken link); remove it or pick another file.")
    return str(full)


# ----------------------------------------------------------------------------------------------------------
# One run: session, progress (the whole run, latents included), outputs and report


class NodeProgress:
    """ComfyUI's progress bar and the node's progress text over the whole run; Cancel stops it (the session
    checkpoints the completed steps first)."""

    def __init__(self, estimate: RunEstimate, node_id: Optional[str]) -> None:
        import comfy.utils  # type: ignore

        self.estimate, self.node_id = estimate, node_id
        self.pbar = comfy.utils.ProgressBar(1000)
        self.last_text = ""
        self.logged_tenth = -1

    def __call__(self, p: TrainProgress) -> bool:
        import comfy.model_management as mm  # type: ignore

        if mm.processing_interrupted():
            return False
        self.estimate.update(p)
        text = self.estimate.line(p)
        tenth = int(self.estimate.fraction * 10)
        if tenth != self.logged_tenth or p.phase in ("calibrate", "done"):  # the console too, every 10%
            log.info("SafeCFG Train HGR: %s", text)
            self.logged_tenth = tenth
        self._show(text)
        self.pbar.update_absolute(int(self.estimate.fraction * 1000), 1000)  # raises ComfyUI's interrupt: checkpointed
        return True

    @staticmethod
    def before_encoding(done: int, total: int) -> None:
        """Before each prompt the CLIP encodes: Cancel stops here, not only between the trainer's chunks of prompts
        (a full-size text encoder on a CPU takes seconds per prompt). Nothing is trained yet, so nothing is lost."""
        import comfy.model_management as mm  # type: ignore

        mm.throw_exception_if_processing_interrupted()

    def _show(self, text: str) -> None:
        """``text`` on the node (below its title) when it runs in the server."""
        if self.node_id is None or text == self.last_text:
            return
        try:
            from server import PromptServer  # type: ignore

            PromptServer.instance.send_progress_text(text, self.node_id)
        except Exception:  # no server (in-process use): the bar and the log still say it
            pass
        self.last_text = text


def build_session(model: Any, clip: Any, prompts: PromptSet, config: TrainConfig, name: str, retrain: bool,
                  sample: Tuple[int, float, int, int], estimate: RunEstimate, node_id: Optional[str],
                  calibration: Optional[Sequence[str]] = None) -> TrainingSession:
    """The core session for this MODEL/CLIP: checkpoint and latent cache in output/safecfg_train, the model's own
    latents from ``sample`` = (sampler steps, cfg, width, height), progress on the node."""
    import folder_paths  # type: ignore

    out_path = hgr_save_path(name)
    ckpt, cache = checkpoint_paths(folder_paths.get_output_directory(), out_path)
    text_encoder, hgr_config = encoder_and_config(model, clip)
    progress = NodeProgress(estimate, node_id)
    text_encoder.on_encode = progress.before_encoding  # the prompt set is encoded before the first step
    denoiser = ComfyDenoiser(model, pooled_dim=hgr_config.pooled_dim)
    steps, cfg, width, height = sample
    from dataclasses import replace

    config = replace(config, sigma_schedule=[float(s) for s in denoiser.model_sigmas()[::10]], cfg_scale=float(cfg),
                     model_id=model_identity(model), sampler_id=f"euler/normal, {steps} steps, {width}x{height}",
                     checkpoint_path=str(ckpt), checkpoint_every=max(1, min(50, config.steps // 4 or 1)),
                     resume=True, device=str(model.load_device), latent_cache_path=str(cache))
    try:
        session = TrainingSession(
            text_encoder, denoiser, prompts, config, hgr_config, output_path=out_path, retrain=retrain,
            sample_latents=latent_sampler(model, text_encoder, steps, cfg, width, height, config.seed),
            progress=progress, restart_on_mismatch=True, keep_checkpoint=False,
            calibration_prompts=calibration)
        if session.existing() is None:  # training will run: the model must take gradients through it
            uninference(model.model)
    except (SafeCFGError, ValueError) as exc:
        raise format_exception(NODE, exc) from None
    return session


def run_session(session: TrainingSession) -> Any:
    """Run it; a cancel keeps the checkpoint and says how to resume, errors become "SafeCFG Train HGR: ..."."""
    import comfy.model_management as mm  # type: ignore

    try:
        with torch.inference_mode(False):
            return session.run()
    except TrainingCancelled as exc:
        log.warning("SafeCFG Train HGR: %s", exc)
        mm.throw_exception_if_processing_interrupted()  # ComfyUI's own "interrupted" (also clears the flag)
        raise node_error(NODE, str(exc)) from None
    except (SafeCFGError, ValueError) as exc:
        raise format_exception(NODE, exc) from None
    except RuntimeError as exc:
        if is_inplace_autograd_error(exc):
            raise node_error(NODE, f"cannot train an HGR through this model: {INPLACE_AUTOGRAD_HINT}. No HGR file was "
                             "written. Sampling with SafeCFG on this model is not affected.") from None
        raise
    except mm.InterruptProcessingException:
        if session.checkpoint_step:
            log.warning("SafeCFG Train HGR: cancelled; checkpoint of step %d kept at %s. Queue the same graph "
                        "to resume from it.", session.checkpoint_step, session.checkpoint_path)
        raise


def finish(session: TrainingSession, result: Any, heldout: Tuple[Sequence[str], Sequence[Any]], judged_on: str,
           extra: Dict[str, Any]) -> Tuple[str, torch.Tensor]:
    """Judge the HGR, save the report beside it, and return the node's text and loss-curve image."""
    bundle, out = result.bundle, session.output_path
    bundle.net.to("cpu")
    with torch.inference_mode(False), torch.no_grad():
        evaluation = evaluate_heldout(bundle, session.text_encoder, heldout[0], heldout[1],
                                      session.config.negative_prompt)
    evaluation["judged_on"] = judged_on
    lines = report_lines(evaluation, result.summary, out.name)
    if result.reused:
        lines.insert(1, "already trained with these inputs: loaded, not retrained (retrain trains again)")
    elif result.summary.get("resumed_from"):
        lines.insert(1, f"resumed from the checkpoint at step {result.summary['resumed_from']}")
    json_path, md_path = write_report(out, evaluation, result.summary, extra)
    lines.append(f"saved {out.name} ({bundle.describe()}); report {md_path.name} beside it")
    log.info("SafeCFG Train HGR: %s", "; ".join(lines))
    image = loss_image(result.loss_history, result.harm_history, result.clean_history, out.name)
    return "\n".join(lines), image


def load_checkpoint(path: Any) -> Tuple[Any, Any]:
    """MODEL and CLIP of a checkpoint file, loaded by ComfyUI's own loader (what Load Checkpoint does), for the
    headless ``train --comfyui`` command. Only a ``.safetensors`` file is handed to ComfyUI's loader, which would
    unpickle anything else (the headless command checks the file's header before this)."""
    if Path(path).suffix.lower() != ".safetensors":
        raise TrainingInputError(f"{path} is not a .safetensors file; SafeCFG loads checkpoints only as safetensors "
                                 "(never unpickled). Convert it to .safetensors first.")
    import comfy.sd  # type: ignore

    out = comfy.sd.load_checkpoint_guess_config(str(path), output_vae=False, output_clip=True)
    return out[0], out[1]
