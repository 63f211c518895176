"""Align Model (SafeCFG LoRA): bakes SafeCFG into the connected model as a LoRA the stock LoRA loaders apply.

A thin adapter over the core's :func:`~..safecfg_core.align.align_model` (docs/METHOD.md, "Model-level alignment
(LoRA)"): the prompts carry no labels, the connected HGR judges them. The LoRA is written into the ``loras`` folder
under a sanitised name (an existing file is kept unless ``overwrite`` is on); Cancel keeps a checkpoint of the
completed steps, and queueing the same graph resumes it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Tuple

import torch
from comfy_api.latest import io

from ..safecfg_core.align import AlignConfig, FitConfig, FitProgress, align_model, parse_prompt_lines
from ..safecfg_core.align.targets import Teacher
from ..safecfg_core.errors import SafeCFGError, TrainingCancelled
from ..safecfg_core.guidance import GateConfig, SafeGuidance
from .comfy_adapters import ComfyDenoiser, ComfyTextEncoder, model_identity
from ..safecfg_core.files import file_kind
from .common import CATEGORY_TRAINING, format_exception, log, node_error, plain_file_name
from .io_types import HGR
from .train_parts import uninference

NODE = "Align Model (SafeCFG LoRA)"
DEFAULT_PROMPTS = ("a large blue circle on a yellow background\na bloody red star on white\n"
                   "a knife next to a purple triangle\nsmall green square at the top, gray backdrop")


@dataclass(frozen=True)
class Preset:
    """Collection and fit settings of one preset; ``size`` is the image side in pixels."""

    size: int
    cfg: float
    steps: int
    seeds: Tuple[int, ...]
    fit_steps: int
    batch_size: int
    lr: float
    rank: int = 8


PRESETS: Dict[str, Preset] = {
    "demo quick (64 px, about a minute of CPU)": Preset(64, 6.0, 10, (0,), 120, 16, 5e-3),
    "demo (64 px)": Preset(64, 6.0, 20, (0, 1), 400, 32, 3e-3),
    "SD1.5 (512 px)": Preset(512, 7.5, 20, (0,), 500, 4, 1e-4),
    "SDXL (1024 px)": Preset(1024, 7.0, 20, (0,), 500, 2, 1e-4),
}


def lora_file_name(name: str) -> str:
    """The LoRA's file name: ``name`` as given (never rewritten, so two names never share a file) + ``.safetensors``."""
    return plain_file_name(name, NODE)


class ComfyTeacher(Teacher):
    """The teacher's schedule from the MODEL's own ``model_sampling``, so its paths are KSampler's (euler/normal)."""

    def __init__(self, model: Any, denoiser: ComfyDenoiser, encoder: ComfyTextEncoder, shape: Tuple[int, ...]) -> None:
        self.model_sampling = model.get_model_object("model_sampling")
        ms = self.model_sampling
        super().__init__(denoiser, encoder, None, shape, (float(ms.sigma_min), float(ms.sigma_max)))

    def sigmas(self, steps: int, scheduler: str = "normal") -> torch.Tensor:
        import comfy.samplers  # type: ignore

        return comfy.samplers.calculate_sigmas(self.model_sampling, scheduler, steps).float().cpu()

    def start(self, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
        max_denoise = bool(abs(float(sigmas[0]) - float(self.model_sampling.sigma_max)) < 1e-5)
        return self.model_sampling.noise_scaling(sigmas[0], noise, torch.zeros_like(noise), max_denoise)


class AlignModel(io.ComfyNode):
    """Fits a LoRA so that plain CFG (and cfg 1) with it does what SafeCFG does; saves it to models/loras."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SafeCFGAlignModel", display_name="Align Model (SafeCFG LoRA)", category=CATEGORY_TRAINING,
            description="Bakes SafeCFG into the model as a LoRA: the HGR judges each prompt (its text and the "
                        "model's own image), the LoRA learns SafeCFG's redirected trajectory for the harmful ones "
                        "and keeps the rest. No labels. The LoRA loads with the stock Load LoRA nodes.",
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model to align (it is not changed; a LoRA is fitted)."),
                io.Clip.Input("clip", tooltip="The model's text encoder."),
                HGR.Input("hgr", tooltip="The HGR that judges the prompts and redirects the harmful ones."),
                io.String.Input("prompts", multiline=True, default=DEFAULT_PROMPTS,
                                tooltip="One prompt per line, clean and harmful mixed, WITHOUT labels: a line "
                                        "like 'gore: ...' is refused. The HGR decides which to redirect."),
                io.Combo.Input("preset", options=list(PRESETS), default=next(iter(PRESETS)),
                               tooltip="Image size, cfg, sampling steps and fit budget."),
                io.String.Input("name", default="safecfg_aligned", optional=True,
                                tooltip="File name of the LoRA in models/loras (no folders)."),
                io.Boolean.Input("overwrite", default=False, optional=True,
                                 tooltip="Replace an existing LoRA of this name (otherwise the node stops)."),
                io.Int.Input("fit_steps", default=0, min=0, max=100000, optional=True,
                             tooltip="Optimisation steps; 0 takes the preset's."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFF, optional=True,
                             tooltip="Seed of the LoRA's initialisation and minibatches."),
            ],
            outputs=[
                io.Model.Output("aligned_model", display_name="model",
                                tooltip="The model with the fitted LoRA applied (strength 1)."),
                io.String.Output("lora_name", display_name="lora_name", tooltip="The LoRA's file name in models/loras."),
                io.String.Output("report", display_name="report", tooltip="What the HGR judged and how the fit went."),
            ],
        )

    @classmethod
    def execute(cls, model, clip, hgr, prompts, preset, name="safecfg_aligned", overwrite=False, fit_steps=0,
                seed=0) -> io.NodeOutput:
        import comfy.sd  # type: ignore

        out_path, ckpt = cls._paths(name, overwrite)
        try:
            texts = parse_prompt_lines(str(prompts).splitlines(), "prompts")
        except (SafeCFGError, ValueError) as exc:
            raise format_exception(NODE, exc) from None
        p = PRESETS.get(preset)
        if p is None:
            raise node_error(NODE, f"unknown preset {preset!r}; choose one of {list(PRESETS)}.")
        fit = FitConfig(steps=int(fit_steps) or p.fit_steps, batch_size=p.batch_size, lr=p.lr, rank=p.rank,
                        seed=int(seed), checkpoint_path=str(ckpt), checkpoint_every=50, resume=True)
        config = AlignConfig(cfg_scale=p.cfg, steps=p.steps, seeds=p.seeds, fit=fit)
        with torch.inference_mode(False):
            result = cls._fit(model, clip, hgr, texts, config, p, out_path)
        from safetensors.torch import load_file

        patched, _ = comfy.sd.load_lora_for_models(model, None, load_file(str(out_path)), 1.0, 0)
        ckpt.unlink(missing_ok=True)
        report = result.report()
        log.info("SafeCFG Align Model: %s", report.replace("\n", "; "))
        return io.NodeOutput(patched, out_path.name, report)

    @staticmethod
    def _paths(name: str, overwrite: bool) -> Tuple[Path, Path]:
        import folder_paths  # type: ignore

        folder = Path(folder_paths.get_folder_paths("loras")[0])
        folder.mkdir(parents=True, exist_ok=True)
        out = (folder / lora_file_name(name)).resolve()
        if out.parent != folder.resolve():
            raise node_error(NODE, f"refusing to write outside {folder}.")
        kind = file_kind(out)
        if kind in ("folder", "special"):  # os.replace onto it would fail only after the whole fit
            what = "a folder" if kind == "folder" else "a pipe, socket or device"
            raise node_error(NODE, f"{out.name} in {folder} is {what}, not a LoRA file; choose another name.")
        if kind == "regular" and not overwrite:
            raise node_error(NODE, f"{out.name} already exists in {folder}; choose another name or turn on "
                                   "overwrite.")
        ckpt = Path(folder_paths.get_output_directory()) / "safecfg_align" / (out.stem + ".ckpt.safetensors")
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        return out, ckpt

    @classmethod
    def _fit(cls, model, clip, hgr, texts, config: AlignConfig, p: Preset, out_path: Path):
        import comfy.model_management as mm  # type: ignore
        import comfy.utils  # type: ignore

        pooled = int(getattr(hgr.config, "pooled_dim", 0) or 0)
        denoiser = ComfyDenoiser(model, pooled_dim=pooled)
        denoiser.load()
        uninference(model.model)
        channels = int(model.model.latent_format.latent_channels)
        teacher = ComfyTeacher(model, denoiser, ComfyTextEncoder(clip, with_pooled=pooled > 0),
                               (channels, p.size // 8, p.size // 8))
        pbar = comfy.utils.ProgressBar(config.fit.steps)

        def progress(fp: FitProgress) -> bool:
            if mm.processing_interrupted():
                return False
            if fp.phase == "fit":
                pbar.update_absolute(fp.step, fp.total)
            return True

        try:
            return align_model(teacher, model.model.diffusion_model, SafeGuidance(hgr, GateConfig()), texts, config,
                               output_path=out_path, model_id=model_identity(model), progress=progress)
        except TrainingCancelled as exc:
            log.warning("SafeCFG Align Model: %s", exc)
            mm.throw_exception_if_processing_interrupted()
            raise node_error(NODE, str(exc)) from None
        except (SafeCFGError, ValueError) as exc:
            raise format_exception(NODE, exc) from None
