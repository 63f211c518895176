"""HGR training settings, what a run reports, what it returns, and the fingerprint of a run's inputs."""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, fields
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import torch

from ..errors import TrainingInputError
from ..hgr import HGRBundle, HGRConfig
from .prompts import PromptSet

PerCategory = Union[float, Dict[str, float]]
"""A training setting given once for every harm category, or per category as ``{category: value}`` (every category
of the prompt set named): categories can need different settings, e.g. a texture over the object (gore) against a
separate object (a knife)."""


def _check_per_category(name: str, value: PerCategory, low: float, high: float, note: str) -> None:
    values = value.values() if isinstance(value, Mapping) else [value]
    if isinstance(value, Mapping) and not value:
        raise TrainingInputError(f"{name} is an empty mapping; give one number or a value per category.")
    for v in values:
        if not isinstance(v, (int, float)) or not (low <= float(v) <= high):
            raise TrainingInputError(f"{name} must be in [{low:g}, {high:g}]{note}, got {value}.")


def per_category_tensor(name: str, value: PerCategory, categories: Sequence[str]) -> torch.Tensor:
    """``value`` as one float per category (in ``categories``' order); a mapping must name exactly these categories."""
    if not isinstance(value, Mapping):
        return torch.full((len(categories),), float(value))
    missing, unknown = sorted(set(categories) - set(value)), sorted(set(value) - set(categories))
    problems = ([f"leaves out {missing}"] if missing else []) + ([f"names unknown {unknown}"] if unknown else [])
    if problems:
        raise TrainingInputError(f"{name} is given per category but {'; '.join(problems)}. The prompt set's "
                                 f"categories are {list(categories)}: name each once, or give one number.")
    return torch.tensor([float(value[c]) for c in categories])


def parse_per_category(text: str) -> PerCategory:
    """Command-line form of a :data:`PerCategory` setting: ``"4"`` or ``"gore=2,weapon=4"``."""
    text = text.strip()
    if "=" not in text:
        return float(text)
    out: Dict[str, float] = {}
    for part in text.split(","):
        key, sep, val = part.partition("=")
        if not sep or not key.strip() or key.strip() in out:
            raise ValueError(f"{text!r}: write one number, or category=number pairs separated by commas "
                             "(e.g. gore=2,weapon=4), each category once")
        out[key.strip()] = float(val)
    return out


def _finite(name: str, value: float, low: float = -math.inf) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < low:
        raise TrainingInputError(f"{name} must be a finite number{f' >= {low:g}' if low > -math.inf else ''}, got {value}.")


@dataclass
class TrainConfig:
    """Everything that shapes a training run. The fields after ``autocast_dtype`` are *run-only*: they say where
    and how to run, never what comes out, so they stay out of the fingerprint."""

    steps: int = 400
    lr: float = 2e-3
    batch_size: int = 16            # rows per step, half clean, half harmful
    seed: int = 0
    clean_penalty: float = 0.05     # weight of |Delta|^2 on clean rows (relative to the concept scale)
    weight_decay: float = 0.0
    warmup_steps: int = 20
    grad_clip: float = 1.0
    sigma_min: float = 0.05
    sigma_max: float = 20.0
    sigma_schedule: Optional[List[float]] = None  # if set, sigmas are drawn uniformly from these (the model's schedule)
    cfg_scale: float = 7.0          # guidance scale for safe-rewrite targets
    # share of harmful rows (those with a safe rewrite) noised from the rewrite's own samples: where SafeCFG's
    # trajectory is meant to go, so the redirection is trained there too, not only on pictures that show the harm.
    rewrite_latent_fraction: PerCategory = 0.0
    # harmful targets' offset from D(u) is multiplied by this; 1 is METHOD.md's target. Matching the target at the
    # harmful prompt's own latents does not carry the whole sampling trajectory there, so a gain g > 1 aims SafeCFG
    # on c at CFG(c_safe) - (g-1) * (CFG(c) - CFG(c_safe)): past the rewrite, away from the harm.
    target_gain: PerCategory = 1.0
    # identity of the frozen model (any string; the ComfyUI node passes a digest of its weights) and of the settings
    # its training latents were sampled with. Both are part of the fingerprint, and the latent cache serves only
    # latents drawn by the same model with the same sampler settings.
    model_id: str = ""
    sampler_id: str = ""
    negative_prompt: str = ""
    calibrate_fpr: float = 0.01
    calibrate_margin: float = 1.1
    calibrate_softness: float = 0.25
    latent_batch_size: int = 8      # prompts per sample_latents call (a sampler's noise may depend on the chunk)
    autocast_dtype: Optional[str] = None  # "bf16" (recommended) / "fp16" (no loss scaling): mixed-precision passes
    # run-only
    checkpoint_path: Optional[str] = None
    checkpoint_every: int = 100
    resume: bool = False
    device: str = "cpu"
    latent_cache_path: Optional[str] = None  # default: next to the checkpoint

    _RUN_ONLY = ("checkpoint_path", "checkpoint_every", "resume", "device", "latent_cache_path")

    def validate(self) -> "TrainConfig":
        """Raise :class:`TrainingInputError` naming the first unusable setting; returns self."""
        if self.steps < 1:
            raise TrainingInputError(f"steps must be >= 1, got {self.steps}.")
        if self.batch_size < 2:
            raise TrainingInputError(f"batch_size must be >= 2 (half clean, half harmful rows), got {self.batch_size}.")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0 and math.isfinite(self.lr)):
            raise TrainingInputError(f"lr must be a positive number, got {self.lr}.")
        if not (0 < self.sigma_min < self.sigma_max < math.inf):
            raise TrainingInputError(f"Need 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}.")
        if self.sigma_schedule is not None and (not self.sigma_schedule or not all(
                math.isfinite(s) and s > 0 for s in self.sigma_schedule)):
            raise TrainingInputError("sigma_schedule must be a non-empty list of positive sigmas.")
        if self.checkpoint_every < 1:
            raise TrainingInputError(f"checkpoint_every must be >= 1, got {self.checkpoint_every}.")
        if self.latent_batch_size < 1:
            raise TrainingInputError(f"latent_batch_size must be >= 1, got {self.latent_batch_size}.")
        _check_per_category("rewrite_latent_fraction", self.rewrite_latent_fraction, 0.0, 1.0, "")
        _check_per_category("target_gain", self.target_gain, 1.0, 10.0, " (1 = METHOD.md's target)")
        if self.autocast_dtype not in (None, "bf16", "fp16"):
            raise TrainingInputError(f"autocast_dtype must be None, 'bf16' or 'fp16', got {self.autocast_dtype!r}.")
        if not (0 < self.calibrate_fpr < 1):
            raise TrainingInputError(f"calibrate_fpr must be in (0, 1), got {self.calibrate_fpr}.")
        for name in ("clean_penalty", "weight_decay", "grad_clip"):
            _finite(name, getattr(self, name), 0.0)
        _finite("cfg_scale", self.cfg_scale)
        if self.cfg_scale == 1.0:
            raise TrainingInputError("cfg_scale must differ from 1 (safe-rewrite targets divide by 1 - cfg_scale).")
        return self

    def result_fields(self) -> Dict[str, Any]:
        """Every setting that changes the trained HGR (recorded in the file as ``train_config``)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in self._RUN_ONLY}


@dataclass
class TrainProgress:
    """Reported to the progress callback. ``phase``: "encode" (the prompts through the text encoder, before anything
    else), "latents", "train", "calibrate" or "done"."""

    step: int
    total: int
    loss: Optional[float] = None
    harm_loss: Optional[float] = None
    clean_loss: Optional[float] = None
    penalty: Optional[float] = None
    lr: Optional[float] = None
    elapsed_s: float = 0.0
    phase: str = "train"
    first_step: int = 0  # the step this run started from (a resumed run's checkpoint step), for the time left

    @property
    def eta_s(self) -> Optional[float]:
        """Seconds left in this phase, from the pace of the steps this run made (None before the first)."""
        done = self.step - self.first_step
        if done <= 0 or self.phase not in ("encode", "train", "latents"):
            return None
        return self.elapsed_s / done * (self.total - self.step)


ProgressFn = Callable[[TrainProgress], Optional[bool]]


@dataclass
class TrainResult:
    """A finished run: the calibrated HGR, its per-step losses and the summary recorded in the file."""

    bundle: HGRBundle
    loss_history: List[float]
    harm_history: List[float]
    clean_history: List[float]
    summary: Dict[str, Any]
    reused: bool = False  # True: an HGR trained with exactly these inputs existed and was loaded, not retrained


FINGERPRINT_VERSION = 2
"""Bumped when what the fingerprint covers changes, so an old fingerprint never matches a new one by accident."""


def training_fingerprint(prompts: PromptSet, config: TrainConfig, hgr_config: HGRConfig,
                         calibration_prompts: Optional[Sequence[str]] = None) -> str:
    """Hash of everything that determines a training result (prompts, every result setting, the HGR's shape, and
    the calibration prompts when they are not the training clean prompts).

    Stored in checkpoints (a checkpoint is resumed only with the same one) and in the final file's ``meta.training``,
    so a caller can tell whether an existing HGR was trained from exactly these inputs.
    """
    parts: Dict[str, Any] = {"v": FINGERPRINT_VERSION, "prompts": prompts.fingerprint(),
                             "train": config.result_fields(), "hgr": hgr_config.to_dict()}
    if calibration_prompts is not None:  # only when given, so runs without it keep their fingerprints
        parts["calibration"] = hashlib.sha256("\n".join(calibration_prompts).encode()).hexdigest()[:16]
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


__all__ = [
    "PerCategory",
    "ProgressFn",
    "TrainConfig",
    "TrainProgress",
    "TrainResult",
    "parse_per_category",
    "per_category_tensor",
    "training_fingerprint",
]
