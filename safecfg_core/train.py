"""Training the HGR against any frozen ``Denoiser`` + ``TextEncoder`` (METHOD.md, "Training the HGR").

Targets live in score space: for a clean prompt ``D(x, sigma, u*)`` must stay ``D(x, sigma, u)``; for a harmful
prompt it must become ``D(x, sigma, k)`` (``k``: the category's concept text), or, with a safe rewrite
``c_safe``, SafeCFG on ``c`` must equal CFG on ``c_safe``. Gradients flow through the frozen denoiser into
``Delta`` only. ``TrainConfig.target_gain`` (default 1: exactly those targets) can aim the harmful targets past
that point, away from ``D(u)``.

The cost is denoiser passes, so each step makes exactly two batched calls: one under ``no_grad`` for all
targets, one with gradients for ``D(u*)``. Prompts are encoded once, the model's own latents are generated once
(and cached on disk next to the checkpoint). Every random draw comes from one seeded CPU generator whose state
is checkpointed with the weights and the optimizer, so a resumed run is identical to an uninterrupted one.

Losses are *relative*: a harmful row's error is divided by ``||D(target) - D(u)||^2`` (so 1.0 = untrained,
0 = perfect) and clean rows by the batch's mean harmful scale; this keeps the defaults meaningful for any
model's latent scale.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from .conditioning import Cond, Denoiser, TextEncoder
from .errors import HGRFileError, TrainingCancelled, TrainingInputError
from .guidance import check_finite, prompt_harm_score
from .hgr import HGRBundle, HGRConfig, HGRMeta, TRAIN_STATE_PREFIX, atomic_save_safetensors

# ----------------------------------------------------------------------------------------------------------
# Prompt set


@dataclass
class HarmfulPrompt:
    prompt: str
    category: str
    rewrite: Optional[str] = None


@dataclass
class PromptSet:
    """Clean prompts, harmful prompts (each with a category, optionally a safe rewrite), concept text per category.

    ``sources`` optionally maps ``"clean:<i>"`` / ``"harmful:<i>"`` (list index) to where that entry came from
    ("harmful line 3"), so error messages can point at the user's line.
    """

    clean: List[str]
    harmful: List[HarmfulPrompt]
    concepts: Dict[str, str]
    sources: Dict[str, str] = field(default_factory=dict, compare=False)

    def _where(self, kind: str, i: int) -> str:
        return self.sources.get(f"{kind}:{i}", f"{kind} prompt #{i + 1}")

    def validate(self) -> "PromptSet":
        """Raise :class:`TrainingInputError` naming the first offending prompt/line; returns self."""
        if not self.clean:
            raise TrainingInputError(
                "No clean prompts: add at least one ordinary prompt (one per line); the HGR must learn what to leave alone."
            )
        if not self.harmful:
            raise TrainingInputError(
                "No harmful prompts: add lines of the form 'category: prompt' so the HGR learns what to redirect."
            )
        if not self.concepts:
            raise TrainingInputError(
                "No harm categories: add one concept line per category, e.g. 'violence: blood, gore'."
            )
        for cat, text in self.concepts.items():
            if not str(cat).strip():
                raise TrainingInputError(f"A concept line has an empty category name (concept {text!r}); write 'name: concept text'.")
            if not str(text).strip():
                raise TrainingInputError(f"Category {cat!r} has an empty concept text; write e.g. '{cat}: words that describe the harm'.")
        seen: Dict[str, str] = {}
        for i, p in enumerate(self.clean):
            where = self._where("clean", i)
            if not isinstance(p, str) or not p.strip():
                raise TrainingInputError(f"{where} is empty; remove the line or write a prompt.")
            if p in seen:
                raise TrainingInputError(f"{where} {p!r} is a duplicate of {seen[p]}; remove one of them.")
            seen[p] = where
        for i, h in enumerate(self.harmful):
            where = self._where("harmful", i)
            if not isinstance(h.prompt, str) or not h.prompt.strip():
                raise TrainingInputError(f"{where} has an empty prompt; write 'category: prompt'.")
            if h.category not in self.concepts:
                raise TrainingInputError(
                    f"{where} {h.prompt!r} has unknown category {h.category!r}; known categories: "
                    f"{', '.join(sorted(self.concepts))}. Add a concept line '{h.category}: ...' or fix the name."
                )
            if h.rewrite is not None and not h.rewrite.strip():
                raise TrainingInputError(f"{where} {h.prompt!r} has an empty safe rewrite after '=>'; write one or drop the '=>'.")
            if h.prompt in seen:
                raise TrainingInputError(f"{where} {h.prompt!r} is a duplicate of {seen[h.prompt]}; remove one of them.")
            seen[h.prompt] = where
        unused = sorted(set(self.concepts) - {h.category for h in self.harmful})
        if unused:
            raise TrainingInputError(
                f"Categor{'y' if len(unused) == 1 else 'ies'} {', '.join(map(repr, unused))} ha{'s' if len(unused) == 1 else 've'} "
                "a concept text but no harmful prompts; add harmful prompts for it or remove its concept line."
            )
        return self

    @classmethod
    def from_text(cls, clean: str, harmful: str, concepts: str) -> "PromptSet":
        """Parse the node/CLI text format and validate it.

        ``clean``: one prompt per line. ``harmful``: ``category: prompt`` or ``category: prompt => safe rewrite``.
        ``concepts``: ``category: concept text``. Blank lines and lines starting with ``#`` are ignored.
        """
        sources: Dict[str, str] = {}

        def lines(text: str):
            for n, raw in enumerate(text.splitlines(), 1):
                line = raw.strip()
                if line and not line.startswith("#"):
                    yield n, line

        clean_list = []
        for n, line in lines(clean):
            sources[f"clean:{len(clean_list)}"] = f"clean line {n}"
            clean_list.append(line)
        concept_map: Dict[str, str] = {}
        for n, line in lines(concepts):
            if ":" not in line:
                raise TrainingInputError(f"concept line {n} ({line!r}) has no ':'; write 'category: concept text'.")
            cat, text = (s.strip() for s in line.split(":", 1))
            if not cat or not text:
                raise TrainingInputError(f"concept line {n} ({line!r}) needs both a category and a concept text.")
            if cat in concept_map:
                raise TrainingInputError(f"concept line {n}: category {cat!r} is defined twice; keep one line per category.")
            concept_map[cat] = text
        harm_list = []
        for n, line in lines(harmful):
            if ":" not in line:
                raise TrainingInputError(
                    f"harmful line {n} ({line!r}) has no category; write 'category: prompt' (categories: "
                    f"{', '.join(sorted(concept_map)) or 'none defined yet'})."
                )
            cat, rest = (s.strip() for s in line.split(":", 1))
            rewrite = None
            if "=>" in rest:
                rest, rewrite = (s.strip() for s in rest.split("=>", 1))
            sources[f"harmful:{len(harm_list)}"] = f"harmful line {n}"
            harm_list.append(HarmfulPrompt(rest, cat, rewrite))
        return cls(clean_list, harm_list, concept_map, sources).validate()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PromptSet":
        """``{"clean": [...], "harmful": [{"prompt", "category", "rewrite"?} | [prompt, category]], "concepts": {...}}``."""
        try:
            harmful = []
            for h in data.get("harmful", []):
                if isinstance(h, Mapping):
                    harmful.append(HarmfulPrompt(str(h["prompt"]), str(h["category"]), h.get("rewrite")))
                else:
                    harmful.append(HarmfulPrompt(str(h[0]), str(h[1]), h[2] if len(h) > 2 else None))
            return cls([str(p) for p in data.get("clean", [])], harmful,
                       {str(k): str(v) for k, v in dict(data.get("concepts", {})).items()}).validate()
        except (KeyError, IndexError, TypeError) as exc:
            raise TrainingInputError(
                f"Prompt set is malformed ({type(exc).__name__}: {exc}); expected keys 'clean', 'harmful' "
                "(objects with 'prompt' and 'category') and 'concepts'."
            ) from None

    @classmethod
    def from_file(cls, path: Union[str, os.PathLike]) -> "PromptSet":
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise TrainingInputError(f"Prompt file {path} does not exist.") from None
        except json.JSONDecodeError as exc:
            raise TrainingInputError(f"Prompt file {path} is not valid JSON (line {exc.lineno}: {exc.msg}).") from None
        return cls.from_dict(data)

    def to_dict(self) -> Dict[str, Any]:
        return {"clean": list(self.clean), "harmful": [asdict(h) for h in self.harmful], "concepts": dict(self.concepts)}

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------------------
# Config, progress, result


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


@dataclass
class TrainConfig:
    """Everything that shapes a training run. Fields marked *run-only* do not change the result."""

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
    # One number for every category, or a {category: number} mapping (see PerCategory).
    rewrite_latent_fraction: PerCategory = 0.0
    # harmful targets' offset from D(u) is multiplied by this. 1 is METHOD.md's target. Why more: matching the
    # target at the harmful prompt's own latents does not carry the whole sampling trajectory there, so SafeCFG
    # lands short of the rewrite; with a gain g, SafeCFG on c aims at CFG(c_safe) - (g-1) * (CFG(c) - CFG(c_safe)),
    # i.e. as far again past the rewrite, away from the harm, for g = 2. One number, or one per category.
    target_gain: PerCategory = 1.0
    # The last steps (below ``low_sigma``) settle detail: on the demo model a small object's outline, and part of
    # the harm too. There the harmful rows can use their own gain (``low_sigma_gain``; None = ``target_gain``; 1 =
    # METHOD.md's target), to trade aiming past the rewrite (harm removed) against bending the object (content
    # lost); the README measures the trade. The default changes nothing (and leaves the fingerprint as it was).
    low_sigma: float = 0.5
    low_sigma_gain: Optional[PerCategory] = None
    # identity of the frozen model (any string; the ComfyUI node passes a digest of its weights). It is part of the
    # run's fingerprint, and the latent cache only serves latents that this same model drew.
    model_id: str = ""
    negative_prompt: str = ""
    calibrate_fpr: float = 0.01
    calibrate_margin: float = 1.1
    calibrate_softness: float = 0.25
    autocast_dtype: Optional[str] = None  # "bf16" (recommended) / "fp16" (no loss scaling): mixed-precision passes
    # run-only
    checkpoint_path: Optional[str] = None
    checkpoint_every: int = 100
    resume: bool = False
    device: str = "cpu"
    latent_cache_path: Optional[str] = None  # default: next to the checkpoint
    latent_batch_size: int = 8

    _RUN_ONLY = ("steps", "checkpoint_path", "checkpoint_every", "resume", "device", "latent_cache_path",
                 "latent_batch_size", "calibrate_fpr", "calibrate_margin", "calibrate_softness")

    def validate(self) -> "TrainConfig":
        if self.steps < 1:
            raise TrainingInputError(f"steps must be >= 1, got {self.steps}.")
        if self.batch_size < 2:
            raise TrainingInputError(f"batch_size must be >= 2 (half clean, half harmful rows), got {self.batch_size}.")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise TrainingInputError(f"lr must be a positive number, got {self.lr}.")
        if not (0 < self.sigma_min < self.sigma_max):
            raise TrainingInputError(f"Need 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}.")
        if self.sigma_schedule is not None and (not self.sigma_schedule or min(self.sigma_schedule) <= 0):
            raise TrainingInputError("sigma_schedule must be a non-empty list of positive sigmas.")
        if self.checkpoint_every < 1:
            raise TrainingInputError(f"checkpoint_every must be >= 1, got {self.checkpoint_every}.")
        _check_per_category("rewrite_latent_fraction", self.rewrite_latent_fraction, 0.0, 1.0, "")
        _check_per_category("target_gain", self.target_gain, 1.0, 10.0, " (1 = METHOD.md's target)")
        if self.low_sigma_gain is not None:
            _check_per_category("low_sigma_gain", self.low_sigma_gain, 1.0, 10.0, " (1 = METHOD.md's target)")
        if not (self.low_sigma > 0 and math.isfinite(self.low_sigma)):
            raise TrainingInputError(f"low_sigma must be a positive number, got {self.low_sigma}.")
        if self.autocast_dtype not in (None, "bf16", "fp16"):
            raise TrainingInputError(f"autocast_dtype must be None, 'bf16' or 'fp16', got {self.autocast_dtype!r}.")
        if not (0 < self.calibrate_fpr < 1):
            raise TrainingInputError(f"calibrate_fpr must be in (0, 1), got {self.calibrate_fpr}.")
        if self.cfg_scale == 1.0:
            raise TrainingInputError("cfg_scale must differ from 1 (safe-rewrite targets divide by 1 - cfg_scale).")
        return self

    # fields added after HGRs were trained: left out of the fingerprint at their defaults, so those HGRs still match
    _LATER_DEFAULTS = ("low_sigma", "low_sigma_gain")

    def result_fields(self) -> Dict[str, Any]:
        later_default = self.low_sigma_gain is None
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in self._RUN_ONLY
                and not (later_default and f.name in self._LATER_DEFAULTS)}


@dataclass
class TrainProgress:
    """Reported to the progress callback. ``phase``: "latents", "train", "calibrate" or "done"."""

    step: int
    total: int
    loss: Optional[float] = None
    harm_loss: Optional[float] = None
    clean_loss: Optional[float] = None
    penalty: Optional[float] = None
    lr: Optional[float] = None
    elapsed_s: float = 0.0
    phase: str = "train"

    @property
    def eta_s(self) -> Optional[float]:
        if self.step <= 0 or self.phase != "train":
            return None
        return self.elapsed_s / self.step * (self.total - self.step)


ProgressFn = Callable[[TrainProgress], Optional[bool]]


@dataclass
class TrainResult:
    bundle: HGRBundle
    loss_history: List[float]
    harm_history: List[float]
    clean_history: List[float]
    summary: Dict[str, Any]


# ----------------------------------------------------------------------------------------------------------
# Latent cache


def _prompt_key(prompt: str) -> str:
    return "latent." + hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:32]


def _load_latent_cache(path: Optional[Path], model_id: str = "") -> Dict[str, torch.Tensor]:
    """The cached latents at ``path``, or nothing when there are none or another model drew them. A cache with
    another ``model_id`` is ignored (its latents would teach this model's HGR the wrong pictures) and replaced by
    this model's once they are drawn."""
    if path is None or not path.exists():
        return {}
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as f:
            cached_id = (f.metadata() or {}).get("safecfg.model_id", "")
        if cached_id != model_id:
            return {}
        return dict(load_file(str(path)))
    except Exception as exc:
        raise TrainingInputError(f"Latent cache {path} is unreadable ({exc}); delete it and it will be rebuilt.") from None


def _gather_latents(prompts: List[str], sample_latents: Optional[Callable[[List[str]], torch.Tensor]],
                    latents: Optional[Mapping[str, torch.Tensor]], cache_path: Optional[Path], batch: int,
                    report: Callable[[int, int], None], model_id: str = "") -> Dict[str, torch.Tensor]:
    """Latent ``[n_i, C, H, W]`` per prompt: given, cached on disk (by the same model), or sampled (and cached) once."""
    out: Dict[str, torch.Tensor] = {}
    cache = _load_latent_cache(cache_path, model_id)
    missing: List[str] = []
    for p in prompts:
        if latents is not None and p in latents:
            t = latents[p]
            out[p] = t.unsqueeze(0) if t.dim() == 3 else t
        elif _prompt_key(p) in cache:
            out[p] = cache[_prompt_key(p)]
        else:
            missing.append(p)
    if missing and sample_latents is None:
        raise TrainingInputError(
            f"No latents for {len(missing)} prompt(s) (first: {missing[0]!r}); pass sample_latents (the model's own "
            "plain-CFG sampler) or precomputed latents for every prompt."
        )
    done = len(prompts) - len(missing)
    for i in range(0, len(missing), batch):
        chunk = missing[i:i + batch]
        x = sample_latents(chunk)  # type: ignore[misc]
        if x.shape[0] != len(chunk):
            raise TrainingInputError(f"sample_latents returned {x.shape[0]} latents for {len(chunk)} prompts.")
        check_finite("sampled latents", x)
        for p, row in zip(chunk, x):
            out[p] = row.detach().float().cpu().unsqueeze(0)
            cache[_prompt_key(p)] = out[p]
        if cache_path is not None:
            atomic_save_safetensors(cache, {"safecfg.format": "safecfg-latent-cache", "safecfg.model_id": model_id},
                                    cache_path)
        done += len(chunk)
        report(done, len(prompts))
    return out


# ----------------------------------------------------------------------------------------------------------
# Checkpoints


def _optimizer_tensors(opt: torch.optim.Optimizer) -> Tuple[Dict[str, torch.Tensor], str]:
    sd = opt.state_dict()
    tensors: Dict[str, torch.Tensor] = {}
    for idx, state in sd["state"].items():
        for name, value in state.items():
            t = value if isinstance(value, torch.Tensor) else torch.tensor(value, dtype=torch.float64)
            tensors[f"{TRAIN_STATE_PREFIX}opt.{idx}.{name}"] = t
    return tensors, json.dumps(sd["param_groups"])


def _restore_optimizer(opt: torch.optim.Optimizer, extras: Mapping[str, torch.Tensor], groups_json: str) -> None:
    state: Dict[int, Dict[str, torch.Tensor]] = {}
    prefix = f"{TRAIN_STATE_PREFIX}opt."
    for key, value in extras.items():
        if key.startswith(prefix):
            idx, name = key[len(prefix):].split(".", 1)
            state.setdefault(int(idx), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": json.loads(groups_json)})


def training_fingerprint(prompts: PromptSet, config: TrainConfig, hgr_config: HGRConfig) -> str:
    """Hash of everything that determines a training result (prompts, result-relevant settings, HGR shape).

    Stored in checkpoints (resume refuses a different one) and in the final file's ``meta.training``, so a
    caller can tell whether an existing HGR was trained from exactly these inputs.
    """
    return _fingerprint(prompts, config, hgr_config)


def _fingerprint(prompts: PromptSet, config: TrainConfig, hgr_config: HGRConfig) -> str:
    blob = json.dumps({"prompts": prompts.fingerprint(), "train": config.result_fields(),
                       "hgr": hgr_config.to_dict()}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------------------
# Calibration


def harm_scores(bundle: HGRBundle, text_encoder: TextEncoder, prompts: Sequence[str], negative_prompt: str = "",
                batch_size: int = 32) -> torch.Tensor:
    """Prompt-level harm score ``[N]`` (fp32, CPU) of each prompt against ``negative_prompt``."""
    out = []
    param = next(bundle.net.parameters())
    u1 = text_encoder([negative_prompt])
    for i in range(0, len(prompts), batch_size):
        chunk = list(prompts[i:i + batch_size])
        c = text_encoder(chunk)
        u = u1.repeat_batch(len(chunk))
        with torch.no_grad():
            delta = bundle.net(c.to(param.device), u.to(param.device))
        out.append(prompt_harm_score(delta).cpu())
    return torch.cat(out) if out else torch.zeros(0)


def calibrate_threshold(bundle: HGRBundle, text_encoder: TextEncoder, clean_prompts: Sequence[str],
                        negative_prompt: str = "", fpr: float = 0.01, margin: float = 1.1, softness: float = 0.25,
                        harmful_prompts: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Set ``bundle.meta.threshold`` from clean prompts and record how in ``bundle.meta.calibration``.

    ``q`` = the clean scores' ``(1 - fpr)`` quantile (taken "higher", i.e. an observed score);
    ``threshold = q * margin / (1 - softness)``, so that even the smooth gate's lower edge
    ``threshold * (1 - softness)`` sits ``margin`` above ``q``: at most ``fpr`` of clean prompts get any
    redirection at all. With harmful prompts, their detection rate and the ROC AUC are recorded too.
    """
    if not clean_prompts:
        raise TrainingInputError("Calibration needs at least one clean prompt.")
    clean = harm_scores(bundle, text_encoder, clean_prompts, negative_prompt)
    q = float(torch.quantile(clean.double(), 1.0 - fpr, interpolation="higher"))
    threshold = q * margin / (1.0 - softness)
    cal: Dict[str, Any] = {
        "method": "clean-quantile",
        "rule": "threshold = quantile_(1-fpr)(clean scores) * margin / (1 - softness)",
        "fpr": fpr, "margin": margin, "softness": softness, "clean_quantile": q,
        "clean_max": float(clean.max()), "clean_mean": float(clean.mean()), "n_clean": len(clean_prompts),
        "negative_prompt": negative_prompt,
    }
    if harmful_prompts:
        from .metrics import roc_auc

        harm = harm_scores(bundle, text_encoder, harmful_prompts, negative_prompt)
        cal.update(
            n_harmful=len(harmful_prompts), harmful_min=float(harm.min()), harmful_mean=float(harm.mean()),
            detection_rate=float((harm >= threshold).float().mean()),
            full_strength_rate=float((harm >= threshold * (1 + softness)).float().mean()),
            roc_auc=roc_auc(clean.tolist(), harm.tolist()),
        )
    bundle.meta.threshold = threshold
    bundle.meta.calibration = cal
    return cal


# ----------------------------------------------------------------------------------------------------------
# Training


def rewrite_target(d_u: torch.Tensor, d_safe: torch.Tensor, d_c: torch.Tensor, cfg_scale: float) -> torch.Tensor:
    """The ``D(u*)`` that makes SafeCFG on ``c`` draw what plain CFG draws for the safe rewrite (METHOD.md).

    Solves ``D(u*) + w (D(c) - D(u*)) = D(u) + w (D(c_safe) - D(u))`` for ``D(u*)``; needs ``w != 1`` (at w = 1
    there is no negative pass to redirect).
    """
    w = cfg_scale
    return (d_u + w * (d_safe - d_u) - w * d_c) / (1.0 - w)


def aim_past(d_u: torch.Tensor, target: torch.Tensor, gain: Union[float, torch.Tensor]) -> torch.Tensor:
    """``target``'s offset from ``D(u)`` multiplied by ``gain`` (``TrainConfig.target_gain``; 1 leaves it)."""
    return d_u + gain * (target - d_u)


class _Freeze:
    """Freeze the denoiser's parameters (and put it in eval mode) for the duration of training, then restore.

    Works for an ``nn.Module`` denoiser and for a plain wrapper object holding modules as attributes (e.g. a
    ``DiscreteEpsDenoiser`` around a UNet), so no gradient memory is ever spent on the model.
    """

    def __init__(self, denoiser: Any) -> None:
        if isinstance(denoiser, torch.nn.Module):
            self.modules = [denoiser]
        else:
            self.modules = [v for v in vars(denoiser).values() if isinstance(v, torch.nn.Module)] \
                if hasattr(denoiser, "__dict__") else []

    def __enter__(self) -> "_Freeze":
        self.flags = [(p, p.requires_grad) for m in self.modules for p in m.parameters()]
        self.modes = [(m, m.training) for m in self.modules]
        for p, _ in self.flags:
            p.requires_grad_(False)
        for m in self.modules:
            m.eval()
        return self

    def __exit__(self, *exc: Any) -> None:
        for p, flag in self.flags:
            p.requires_grad_(flag)
        for m, mode in self.modes:
            m.train(mode)


def _lr_at(step: int, config: TrainConfig) -> float:
    """Warm-up then cosine decay to 10%; a pure function of the step, so resuming needs no scheduler state."""
    warm = min(1.0, (step + 1) / max(1, config.warmup_steps))
    progress = min(1.0, step / max(1, config.steps))
    return config.lr * warm * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def train_hgr(
    text_encoder: TextEncoder,
    denoiser: Denoiser,
    prompts: PromptSet,
    config: Optional[TrainConfig] = None,
    hgr_config: Optional[HGRConfig] = None,
    sample_latents: Optional[Callable[[List[str]], torch.Tensor]] = None,
    latents: Optional[Mapping[str, torch.Tensor]] = None,
    progress: Optional[ProgressFn] = None,
) -> TrainResult:
    """Train an HGR for ``denoiser``; returns the calibrated bundle, loss histories and a summary.

    ``progress`` is called after every step (and during latent sampling); returning ``False`` or raising
    :class:`TrainingCancelled` stops training: a checkpoint of the completed steps is written (if a
    ``checkpoint_path`` is set) and :class:`TrainingCancelled` is raised with its step and path.
    """
    config = (config or TrainConfig()).validate()
    prompts.validate()
    t_start = time.monotonic()
    device = torch.device(config.device)
    all_prompts = list(prompts.clean) + [h.prompt for h in prompts.harmful]
    categories = sorted(prompts.concepts)

    def report(p: TrainProgress, ckpt_step: Optional[int] = None) -> None:
        if progress is None:
            return
        try:
            keep_going = progress(p)
        except TrainingCancelled:
            keep_going = False
        if keep_going is False:
            path = None
            if ckpt_step is not None and config.checkpoint_path:
                save_checkpoint()
                path = config.checkpoint_path
            raise TrainingCancelled(
                f"HGR training cancelled after {p.step} of {p.total} {p.phase} steps"
                + (f"; checkpoint kept at {path} (resume with the same settings)." if path else "."),
                step=ckpt_step or 0, checkpoint_path=path,
            )

    # -- encode everything once -----------------------------------------------------------------------------
    with torch.no_grad():
        enc_clean = text_encoder(list(prompts.clean))
        enc_harm = text_encoder([h.prompt for h in prompts.harmful])
        enc_concept = text_encoder([prompts.concepts[c] for c in categories])
        enc_u = text_encoder([config.negative_prompt])
        rewrites = [h.rewrite for h in prompts.harmful if h.rewrite]
        enc_rewrite = text_encoder(rewrites) if rewrites else None
    for name, cond in (("clean prompt encodings", enc_clean), ("harmful prompt encodings", enc_harm),
                       ("concept encodings", enc_concept), ("negative prompt encoding", enc_u)):
        check_finite(name, cond)
    c_all = Cond.cat([enc_clean, enc_harm]).to(device)  # row i = all_prompts[i]
    u1 = enc_u.to(device)
    if hgr_config is None:
        hgr_config = HGRConfig(token_dim=enc_u.token_dim, pooled_dim=0 if enc_u.pooled is None else int(enc_u.pooled.shape[1]),
                               model_family="unknown")
    if hgr_config.token_dim != enc_u.token_dim:
        raise TrainingInputError(
            f"hgr_config.token_dim={hgr_config.token_dim} but the text encoder gives {enc_u.token_dim}-wide tokens."
        )
    concept_idx = {c: i for i, c in enumerate(categories)}
    harm_cat = torch.tensor([concept_idx[h.category] for h in prompts.harmful])
    rewrite_idx = torch.full((len(prompts.harmful),), -1, dtype=torch.long)
    j = 0
    for i, h in enumerate(prompts.harmful):
        if h.rewrite:
            rewrite_idx[i] = j
            j += 1
    k_all = enc_concept.to(device)
    r_all = enc_rewrite.to(device) if enc_rewrite is not None else None
    # Scale of a "concept-sized" change of the negative, for the relative |Delta|^2 penalty.
    with torch.no_grad():
        kt, ut = Cond.cat([k_all, u1]).tokens.split([len(categories), 1])
        delta_scale = float((kt - ut).pow(2).mean().clamp_min(1e-12))

    # -- latents (the model's own samples), cached ------------------------------------------------------------
    cache_path = Path(config.latent_cache_path) if config.latent_cache_path else (
        Path(str(config.checkpoint_path) + ".latents.safetensors") if config.checkpoint_path else None)
    rewrite_fraction_of = per_category_tensor("rewrite_latent_fraction", config.rewrite_latent_fraction, categories)
    gain_of = per_category_tensor("target_gain", config.target_gain, categories)
    low_gain_of = (gain_of if config.low_sigma_gain is None
                   else per_category_tensor("low_sigma_gain", config.low_sigma_gain, categories))
    aims_past_target = bool((gain_of != 1.0).any() or (low_gain_of != 1.0).any())
    use_rewrite_latents = bool((rewrite_fraction_of > 0).any()) and bool(rewrites)
    # rows 0..len(all_prompts)-1 stay aligned with c_all; rewrites that are not prompts already are appended
    known = set(all_prompts)
    latent_prompts = all_prompts + list(dict.fromkeys(r for r in (rewrites if use_rewrite_latents else [])
                                                      if r not in known))
    lat = _gather_latents(
        latent_prompts, sample_latents, latents, cache_path, config.latent_batch_size,
        lambda done, total: report(TrainProgress(done, total, elapsed_s=time.monotonic() - t_start, phase="latents")),
        model_id=config.model_id,
    )
    lat_list = [lat[p].to(device=device, dtype=torch.float32) for p in latent_prompts]
    latent_row: Dict[str, int] = {}
    for i, p in enumerate(latent_prompts):
        latent_row.setdefault(p, i)
    # harmful prompt j's rewrite, as a row of lat_counts / lat_offsets (-1: none)
    rewrite_lat_row = torch.tensor([latent_row[h.rewrite] if (use_rewrite_latents and h.rewrite) else -1
                                    for h in prompts.harmful], dtype=torch.long)
    lat_counts = torch.tensor([t.shape[0] for t in lat_list])
    lat_flat = torch.cat(lat_list)
    lat_offsets = torch.cat([torch.zeros(1, dtype=torch.long), lat_counts.cumsum(0)[:-1]])
    latent_shape = tuple(lat_flat.shape[1:])

    # -- model, optimizer, RNG, resume ---------------------------------------------------------------------------
    fingerprint = _fingerprint(prompts, config, hgr_config)
    meta = HGRMeta(categories={c: prompts.concepts[c] for c in categories})
    bundle = HGRBundle.create(hgr_config, meta, seed=config.seed)
    net = bundle.net.to(device).train()
    for p in net.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    gen = torch.Generator().manual_seed(config.seed)
    history: List[float] = []
    harm_hist: List[float] = []
    clean_hist: List[float] = []
    counters = {"denoiser_calls": 0, "denoiser_rows": 0}
    step = 0
    resumed_from = None

    def save_checkpoint() -> None:
        if not config.checkpoint_path:
            return
        opt_tensors, groups = _optimizer_tensors(opt)
        extra = dict(opt_tensors)
        extra[f"{TRAIN_STATE_PREFIX}rng"] = gen.get_state()
        extra[f"{TRAIN_STATE_PREFIX}history"] = torch.tensor([history, harm_hist, clean_hist], dtype=torch.float64).reshape(3, -1)
        bundle.meta.training = {"checkpoint_step": step, "steps": config.steps, "fingerprint": fingerprint}
        bundle.save(config.checkpoint_path, extra_tensors=extra, extra_metadata={
            "safecfg.checkpoint": json.dumps({"step": step, "fingerprint": fingerprint, "param_groups": groups,
                                              "counters": counters}),
        })

    if config.resume and config.checkpoint_path and Path(config.checkpoint_path).exists():
        try:
            loaded, extras, raw = HGRBundle._load_with_extras(config.checkpoint_path, device=device)
        except HGRFileError as exc:
            raise TrainingInputError(f"Cannot resume: {exc}") from None
        info = json.loads(raw.get("safecfg.checkpoint", "null") or "null")
        if not info:
            raise TrainingInputError(
                f"Cannot resume from {config.checkpoint_path}: it is a finished HGR, not a training checkpoint. "
                "Pass another checkpoint path or resume=False."
            )
        if info["fingerprint"] != fingerprint:
            raise TrainingInputError(
                f"Cannot resume from {config.checkpoint_path}: it was made with different prompts or settings "
                "(only steps, device and checkpoint options may change). Use the same settings, or resume=False "
                "to start over."
            )
        net.load_state_dict(loaded.net.state_dict())
        for p in net.parameters():
            p.requires_grad_(True)
        _restore_optimizer(opt, {k: v.to(device) if "step" not in k else v for k, v in extras.items()}, info["param_groups"])
        gen.set_state(extras[f"{TRAIN_STATE_PREFIX}rng"])
        hist = extras[f"{TRAIN_STATE_PREFIX}history"]
        history, harm_hist, clean_hist = (hist[i].tolist() for i in range(3))
        counters.update(info.get("counters", {}))
        step = resumed_from = int(info["step"])

    n_c_rows = config.batch_size - config.batch_size // 2
    n_h_rows = config.batch_size // 2
    n_clean, n_harm = len(prompts.clean), len(prompts.harmful)
    amp_dtype = {None: None, "bf16": torch.bfloat16, "fp16": torch.float16}[config.autocast_dtype]

    def autocast():
        """Mixed precision for the passes when asked for (weights and optimizer stay fp32)."""
        return torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None)

    def denoise(x: torch.Tensor, sigma: torch.Tensor, cond: Cond) -> torch.Tensor:
        counters["denoiser_calls"] += 1
        counters["denoiser_rows"] += int(x.shape[0])
        with autocast():
            return denoiser(x, sigma, cond).float()

    with _Freeze(denoiser):
        while step < config.steps:
            # ---- draw the batch (all randomness from `gen`, on CPU) ----
            ci = torch.randint(0, n_clean, (n_c_rows,), generator=gen)
            hi = torch.randint(0, n_harm, (n_h_rows,), generator=gen)
            rows = torch.cat([ci, n_clean + hi])
            lat_rows = rows.clone()
            if use_rewrite_latents:  # (draws nothing extra otherwise: old runs and checkpoints stay reproducible)
                swap = (torch.rand(len(hi), generator=gen) < rewrite_fraction_of[harm_cat[hi]]) & (rewrite_lat_row[hi] >= 0)
                lat_rows[n_c_rows:][swap] = rewrite_lat_row[hi][swap]
            pick = (torch.rand(len(rows), generator=gen) * lat_counts[lat_rows]).long()
            x0 = lat_flat[(lat_offsets[lat_rows] + pick).to(device)]
            if config.sigma_schedule is not None:
                sched = torch.tensor(config.sigma_schedule, dtype=torch.float32)
                sigma = sched[torch.randint(0, len(sched), (len(rows),), generator=gen)]
            else:
                lo, hi_ = math.log(config.sigma_min), math.log(config.sigma_max)
                sigma = torch.exp(lo + (hi_ - lo) * torch.rand(len(rows), generator=gen))
            noise = torch.randn((len(rows),) + latent_shape, generator=gen)
            sigma_cpu, sigma = sigma, sigma.to(device)
            x = x0 + sigma.view(-1, *([1] * len(latent_shape))) * noise.to(device)
            B = len(rows)
            c_b = c_all.index(rows.to(device))
            u_b = u1.repeat_batch(B)

            # ---- targets: one no-grad call (u for all rows; k or (c_safe, c) for harmful rows) ----
            h_cat = harm_cat[hi]
            h_rw = rewrite_idx[hi]
            plain = (h_rw < 0).nonzero().flatten()
            withrw = (h_rw >= 0).nonzero().flatten()
            t_conds = [u_b, k_all.index(h_cat[plain].to(device))]
            t_x = [x, x[n_c_rows + plain]]
            t_s = [sigma, sigma[n_c_rows + plain]]
            if len(withrw):
                assert r_all is not None
                t_conds += [r_all.index(h_rw[withrw].to(device)), c_b.index((n_c_rows + withrw).to(device))]
                t_x += [x[n_c_rows + withrw]] * 2
                t_s += [sigma[n_c_rows + withrw]] * 2
            with torch.no_grad():
                out = denoise(torch.cat(t_x), torch.cat(t_s), Cond.cat(t_conds))
            d_u = out[:B]
            target = d_u.clone()
            off = B
            target[n_c_rows + plain] = out[off:off + len(plain)]
            off += len(plain)
            if len(withrw):
                n_r = len(withrw)
                d_safe_c, d_c = out[off:off + n_r], out[off + n_r:off + 2 * n_r]
                w = config.cfg_scale
                du_r = d_u[n_c_rows + withrw]
                target[n_c_rows + withrw] = rewrite_target(du_r, d_safe_c, d_c, w)
            if aims_past_target:
                low = sigma_cpu[n_c_rows:] < config.low_sigma  # (CPU copy: no device sync per step)
                gain = torch.where(low, low_gain_of[h_cat], gain_of[h_cat])
                gain = gain.to(device).view(-1, *([1] * len(latent_shape)))
                target[n_c_rows:] = aim_past(d_u[n_c_rows:], target[n_c_rows:], gain)

            # ---- the one gradient pass: D(x, sigma, u + Delta) ----
            lr_now = _lr_at(step, config)
            for g in opt.param_groups:
                g["lr"] = lr_now
            with autocast():
                delta = net(c_b, u_b)
            delta_t = delta.tokens.float()
            u_star = Cond(u_b.tokens + delta_t.to(u_b.tokens.dtype),
                          None if u_b.pooled is None else (u_b.pooled + delta.pooled.to(u_b.pooled.dtype)
                                                           if delta.pooled is not None else u_b.pooled))
            pred = denoise(x, sigma, u_star)
            err = (pred - target).pow(2).flatten(1).sum(1)
            scale_h = (target[n_c_rows:] - d_u[n_c_rows:]).pow(2).flatten(1).sum(1).clamp_min(1e-12)
            harm_loss = (err[n_c_rows:] / scale_h).mean()
            clean_loss = (err[:n_c_rows] / scale_h.mean()).mean()
            pen_rows = delta_t[:n_c_rows].pow(2).mean()
            if delta.pooled is not None:
                pen_rows = pen_rows + delta.pooled[:n_c_rows].float().pow(2).mean()
            penalty = config.clean_penalty * pen_rows / delta_scale
            loss = harm_loss + clean_loss + penalty
            if not torch.isfinite(loss):
                raise TrainingInputError(
                    f"Training diverged at step {step} (loss is {float(loss)}); lower lr (now {config.lr}) or "
                    "use fp32 (no autocast)."
                )
            # Gradients for the HGR only (never into the denoiser, even if something in it still requires grad).
            params = [p for p in net.parameters()]
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            for p_, g_ in zip(params, grads):
                p_.grad = g_
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(net.parameters(), config.grad_clip)
            opt.step()
            step += 1
            history.append(float(loss.detach()))
            harm_hist.append(float(harm_loss.detach()))
            clean_hist.append(float(clean_loss.detach()))
            if config.checkpoint_path and (step % config.checkpoint_every == 0 or step == config.steps):
                save_checkpoint()
            report(TrainProgress(step, config.steps, history[-1], harm_hist[-1], clean_hist[-1], float(penalty.detach()),
                                 lr_now, time.monotonic() - t_start, "train"), ckpt_step=step)

    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    report(TrainProgress(config.steps, config.steps, elapsed_s=time.monotonic() - t_start, phase="calibrate"))
    cal = calibrate_threshold(
        bundle, text_encoder, prompts.clean, config.negative_prompt, fpr=config.calibrate_fpr,
        margin=config.calibrate_margin, softness=config.calibrate_softness,
        harmful_prompts=[h.prompt for h in prompts.harmful],
    )
    tail = max(1, len(history) // 10)
    summary: Dict[str, Any] = {
        "steps": config.steps, "final_loss": sum(history[-tail:]) / tail,
        "final_harm_loss": sum(harm_hist[-tail:]) / tail, "final_clean_loss": sum(clean_hist[-tail:]) / tail,
        "n_clean": n_clean, "n_harmful": n_harm, "n_rewrites": len(rewrites), "categories": categories,
        "prompt_set": prompts.fingerprint(), "fingerprint": fingerprint, "resumed_from": resumed_from,
        "train_seconds": round(time.monotonic() - t_start, 3), "train_config": config.result_fields(),
        "roc_auc_train": cal.get("roc_auc"), **counters,
        # at most ~200 points, enough to plot the curve from the file alone
        "loss_history": [round(v, 6) for v in history[:: max(1, len(history) // 200)]],
        "loss_history_stride": max(1, len(history) // 200),
    }
    bundle.meta.training = summary
    report(TrainProgress(config.steps, config.steps, history[-1] if history else None,
                         elapsed_s=time.monotonic() - t_start, phase="done"))
    return TrainResult(bundle, history, harm_hist, clean_hist, summary)


__all__ = [
    "HarmfulPrompt",
    "PromptSet",
    "ProgressFn",
    "TrainConfig",
    "TrainProgress",
    "TrainResult",
    "PerCategory",
    "aim_past",
    "calibrate_threshold",
    "harm_scores",
    "parse_per_category",
    "per_category_tensor",
    "rewrite_target",
    "train_hgr",
    "training_fingerprint",
]
