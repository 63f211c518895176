"""One alignment job: judge and collect the targets, fit the LoRA, save it in ComfyUI's format.

``align_model`` is what the ``align`` command and the Align Model node both call. ``sample_prompts_with`` draws
images the way ComfyUI's KSampler does (same noise per seed), with or without the LoRA and with plain CFG or
SafeCFG, so the core's aligned samples can be compared with the server's bit for bit.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import torch

from ..guidance import SafeGuidance
from ..hgr import HGRBundle
from ..judge import IMAGE_THRESHOLD
from ..sampling import CFGDenoise, SafeCFGDenoise, noise_for_seeds, sample
from .fit import FitConfig, FitProgress, FitResult, ProgressFn, fit_lora
from .lora import LoRA, applied, save_lora
from .targets import AlignTargets, Teacher, Verdict, collect_targets


@dataclass
class AlignConfig:
    """Collection settings (METHOD.md step 1-2) and the fit's (:class:`~.fit.FitConfig`)."""

    cfg_scale: float = 6.0
    steps: int = 20
    seeds: Sequence[int] = (0,)
    negative: str = ""
    image_threshold: float = IMAGE_THRESHOLD
    scheduler: str = "normal"
    fit: FitConfig = field(default_factory=FitConfig)

    def collection(self) -> Dict[str, Any]:
        d = asdict(self)
        d.pop("fit")
        d["seeds"] = [int(s) for s in self.seeds]
        return d


@dataclass
class AlignResult:
    lora: LoRA
    verdicts: List[Verdict]
    history: List[float]
    targets: AlignTargets
    fit: FitResult
    path: Optional[str] = None

    def report(self) -> str:
        """A short text report: what the HGR judged and how the fit went."""
        red = [v for v in self.verdicts if v.redirect]
        lines = [f"prompts: {len(self.verdicts)}; redirected (HGR's judgement of text and image): {len(red)}; "
                 f"kept: {len(self.verdicts) - len(red)}",
                 f"LoRA: rank {self.lora.rank}, {len(self.lora.layer_names)} layers, "
                 f"{sum(p.numel() for p in self.lora.parameters())} parameters",
                 f"fit: {len(self.history)} steps, loss {self.history[0]:.4g} -> {self.history[-1]:.4g}"
                 if self.history else "fit: no steps"]
        if self.fit.resumed_from:
            lines.append(f"resumed from step {self.fit.resumed_from}")
        if self.path:
            lines.append(f"saved: {self.path}")
        return "\n".join(lines)


def hgr_digest(bundle: HGRBundle) -> str:
    """A digest of the HGR's weights and threshold: part of the fingerprint of an alignment run."""
    h = hashlib.sha256()
    for k, v in sorted(bundle.net.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().float().cpu().numpy().tobytes())
    h.update(repr(bundle.meta.threshold).encode())
    return h.hexdigest()[:16]


def align_model(teacher: Teacher, net: torch.nn.Module, guidance: SafeGuidance, prompts: Sequence[str],
                config: AlignConfig, *, output_path: Union[str, os.PathLike, None] = None, model_id: str = "",
                progress: Optional[ProgressFn] = None) -> AlignResult:
    """Judge ``prompts`` with the HGR, collect SafeCFG's targets, fit and (optionally) save the LoRA.

    ``model_id`` names the model's weights in the checkpoint fingerprint, so one model's checkpoint never resumes
    on another. The LoRA file's metadata records the collection and fit settings and the judgement counts.
    """
    def say(msg: str) -> None:
        if progress is not None and progress(FitProgress(0, config.fit.steps, phase="collect", message=msg)) is False:
            from ..errors import TrainingCancelled

            raise TrainingCancelled("Alignment cancelled while collecting targets.", step=0)

    with torch.no_grad():
        targets = collect_targets(teacher, guidance, prompts, cfg_scale=config.cfg_scale, seeds=config.seeds,
                                  steps=config.steps, scheduler=config.scheduler, negative=config.negative,
                                  image_threshold=config.image_threshold, progress=say)
    identity = {"prompts": list(prompts), "model": model_id, "hgr": hgr_digest(guidance.bundle),
                "gate": asdict(guidance.gate), "collection": config.collection()}
    fit = fit_lora(teacher.denoiser, net, targets, config.fit, identity, progress)
    result = AlignResult(fit.lora, targets.verdicts, fit.history, targets, fit)
    if output_path is not None:
        save_lora(output_path, fit.lora, {
            "safecfg.align": {"collection": config.collection(), "fit": config.fit.settings(), "model": model_id,
                              "counts": targets.counts, "fingerprint": fit.info.get("fingerprint")}})
        result.path = str(output_path)
    return result


def sample_prompts_with(teacher: Teacher, prompts: Sequence[str], seeds: Sequence[int], cfg_scale: float,
                        steps: int = 20, *, lora: Optional[LoRA] = None, net: Optional[torch.nn.Module] = None,
                        guidance: Optional[SafeGuidance] = None, negative: str = "", scheduler: str = "normal",
                        batch_size: int = 256) -> torch.Tensor:
    """Latents ``[P * S, C, H, W]`` (prompt-major) as KSampler draws them: plain CFG, or SafeCFG with ``guidance``,
    with ``lora`` applied on ``net`` when given. Each row starts from a batch-1 ComfyUI run's noise for its seed."""
    if teacher.schedule is None:
        raise ValueError("sample_prompts_with needs a model with a discrete schedule (what KSampler samples).")
    c = teacher.text_encoder(list(prompts))
    u = teacher.text_encoder([negative])
    n_s = len(seeds)
    rows = torch.arange(len(prompts)).repeat_interleave(n_s)
    noise = noise_for_seeds(teacher.latent_shape, [int(seeds[r % n_s]) for r in range(rows.numel())])
    out = []

    def run() -> None:
        for start in range(0, rows.numel(), batch_size):
            r = rows[start:start + batch_size]
            cr, ur = c.index(r), u.repeat_batch(r.numel())
            guided = (CFGDenoise(teacher.denoiser, cr, ur, cfg_scale) if guidance is None
                      else SafeCFGDenoise(teacher.denoiser, cr, ur, cfg_scale, guidance))
            out.append(sample(guided, teacher.schedule, noise=noise[start:start + r.numel()], steps=steps,
                              scheduler=scheduler))

    with torch.no_grad():
        if lora is None:
            run()
        else:
            if net is None:
                raise ValueError("sample_prompts_with: give the network the LoRA goes on (net=...).")
            with applied(lora, net):
                run()
    return torch.cat(out)


__all__ = ["AlignConfig", "AlignResult", "align_model", "hgr_digest", "sample_prompts_with"]
