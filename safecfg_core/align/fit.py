"""Step 3 of METHOD.md's model-level alignment: fit the LoRA to the collected targets.

The loop reports progress, writes a checkpoint every ``checkpoint_every`` steps (LoRA, optimizer, random state,
loss history), resumes one written by the same inputs and settings, and stops on request: a progress callback that
returns ``False`` (or raises) leaves a checkpoint of the completed steps and raises :class:`TrainingCancelled`, like
the HGR trainer. A checkpoint written by other inputs is never resumed (:class:`CheckpointMismatch`).
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch

from ..conditioning import Cond
from ..errors import CheckpointMismatch, TrainingCancelled, TrainingInputError
from .lora import LoRA, applied

STATE_PREFIX = "safecfg_align_state."


@dataclass
class FitConfig:
    """Settings of the fit (METHOD.md: ``beta`` preserve weight, ``gamma`` unconditional weight)."""

    steps: int = 300
    batch_size: int = 64
    lr: float = 2e-3
    rank: int = 8
    alpha: Optional[float] = None
    beta: float = 1.0
    gamma: float = 1.0
    seed: int = 0
    target_layers: Optional[str] = None
    checkpoint_every: int = 50
    checkpoint_path: Optional[str] = None
    resume: bool = True

    def validate(self) -> "FitConfig":
        for name in ("steps", "batch_size", "rank"):
            if int(getattr(self, name)) < 1:
                raise TrainingInputError(f"{name} must be at least 1, got {getattr(self, name)}.")
        for name in ("lr", "beta", "gamma"):
            v = float(getattr(self, name))
            if not (v >= 0.0 and v < float("inf")):
                raise TrainingInputError(f"{name} must be a finite number >= 0, got {v}.")
        return self

    def settings(self) -> Dict[str, Any]:
        """What decides the result (not where checkpoints go or whether to resume)."""
        d = asdict(self)
        for k in ("checkpoint_every", "checkpoint_path", "resume"):
            d.pop(k)
        return d


@dataclass
class FitProgress:
    """Reported to the progress callback each step; ``phase`` is ``collect`` or ``fit``."""

    step: int
    total: int
    loss: Optional[float] = None
    elapsed_s: float = 0.0
    phase: str = "fit"
    message: str = ""
    first_step: int = 0

    @property
    def eta_s(self) -> Optional[float]:
        done = self.step - self.first_step
        return None if done <= 0 else self.elapsed_s / done * (self.total - self.step)


ProgressFn = Callable[[FitProgress], Optional[bool]]


@dataclass
class FitResult:
    lora: LoRA
    history: List[float]
    resumed_from: Optional[int] = None
    checkpoint_step: Optional[int] = None
    info: Dict[str, Any] = field(default_factory=dict)


def fingerprint(parts: Dict[str, Any]) -> str:
    """A digest of everything that decides the result (prompts, model, HGR, settings)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _lambda(sigma: torch.Tensor, ndim: int) -> torch.Tensor:
    """METHOD.md's loss weight ``(sigma^2 + 1) / sigma^2`` per row, broadcastable to the latents."""
    s2 = sigma.float().pow(2).clamp_min(1e-8)
    return ((s2 + 1.0) / s2).reshape((-1,) + (1,) * (ndim - 1))


def save_checkpoint(path: str, lora: LoRA, opt: torch.optim.Optimizer, gen: torch.Generator, step: int,
                    history: List[float], digest: str, settings: Dict[str, Any]) -> None:
    """Write the completed steps (atomically: a crash leaves the previous checkpoint)."""
    from ..hgr import atomic_save_safetensors

    tensors = {f"{STATE_PREFIX}lora.{k}": v.detach() for k, v in lora.state_dict().items()}
    sd = opt.state_dict()
    for idx, st in sd["state"].items():
        for name, value in st.items():
            t = value if isinstance(value, torch.Tensor) else torch.tensor(value, dtype=torch.float64)
            tensors[f"{STATE_PREFIX}opt.{idx}.{name}"] = t
    tensors[f"{STATE_PREFIX}rng"] = gen.get_state()
    tensors[f"{STATE_PREFIX}history"] = torch.tensor(history, dtype=torch.float64)
    meta = {"safecfg.align_checkpoint": json.dumps({"step": step, "fingerprint": digest, "settings": settings,
                                                     "param_groups": sd["param_groups"]}, default=str)}
    atomic_save_safetensors(tensors, meta, path)


def restore_checkpoint(path: str, lora: LoRA, opt: torch.optim.Optimizer, gen: torch.Generator, digest: str,
                       settings: Dict[str, Any]) -> tuple:
    """Load ``path`` into the objects; ``(step, history)``. Other inputs wrote it: :class:`CheckpointMismatch`."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            raw = (f.metadata() or {}).get("safecfg.align_checkpoint")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise TrainingInputError(f"Cannot resume from {path}: it is not a readable checkpoint ({exc}). Delete it or "
                                 "pass another checkpoint path.") from None
    info = json.loads(raw) if raw else None
    if not info:
        raise TrainingInputError(f"Cannot resume from {path}: it is not an alignment checkpoint. Delete it or pass "
                                 "another checkpoint path.")
    if info.get("fingerprint") != digest:
        then = info.get("settings") or {}
        diffs = {k: (then.get(k), settings.get(k)) for k in sorted(set(then) | set(settings))
                 if then.get(k) != settings.get(k)}
        said = "; ".join(f"{k}: {a!r} then, {b!r} now" for k, (a, b) in list(diffs.items())[:4])
        raise CheckpointMismatch(
            f"Cannot resume from {path}: other prompts, model, HGR or settings wrote it"
            + (f" ({said})" if said else "") + ". Use the same inputs, or delete the checkpoint to start over.",
            checkpoint_path=path, differences=diffs)
    lora.load_state_dict({k[len(STATE_PREFIX) + 5:]: v for k, v in tensors.items()
                          if k.startswith(STATE_PREFIX + "lora.")})
    state: Dict[int, Dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith(STATE_PREFIX + "opt."):
            idx, name = k[len(STATE_PREFIX) + 4:].split(".", 1)
            state.setdefault(int(idx), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": info["param_groups"]})
    gen.set_state(tensors[f"{STATE_PREFIX}rng"])
    return int(info["step"]), tensors[f"{STATE_PREFIX}history"].tolist()


def batch_loss(denoiser, c: Cond, u: Cond, x: torch.Tensor, sigma: torch.Tensor, target_c: torch.Tensor,
               target_u: torch.Tensor, weight_c: torch.Tensor, gamma: float) -> torch.Tensor:
    """METHOD.md's loss on one minibatch: one student call for the conditional rows and the unconditional rows.

    ``weight_c`` is 1 on redirect rows and ``beta`` on preserve rows; the unconditional term (weight ``gamma``) is
    taken on the same states.
    """
    b = x.shape[0]
    out = denoiser(torch.cat([x, x]), torch.cat([sigma, sigma]), Cond.cat([c, u])).float()
    lam = _lambda(sigma, x.dim())
    err_c = (lam * (out[:b] - target_c).pow(2)).flatten(1).mean(1)
    err_u = (lam * (out[b:] - target_u).pow(2)).flatten(1).mean(1)
    return (weight_c * err_c).mean() + gamma * err_u.mean()


def _draw(gen: torch.Generator, pool: torch.Tensor, n: int) -> torch.Tensor:
    return pool[torch.randint(0, pool.numel(), (n,), generator=gen)]


def _minibatch(targets, gen: torch.Generator, batch_size: int) -> torch.Tensor:
    """Row indices: half from the redirect states and half from the preserve states (all from one when the other is
    empty), so a few redirected prompts among many clean ones still get their share of every step."""
    red = torch.nonzero(targets.redirect_row).flatten()
    keep = torch.nonzero(~targets.redirect_row).flatten()
    if red.numel() == 0 or keep.numel() == 0:
        return _draw(gen, red if red.numel() else keep, batch_size)
    half = max(1, batch_size // 2)
    return torch.cat([_draw(gen, red, half), _draw(gen, keep, max(1, batch_size - half))])


class _Checkpointer:
    def __init__(self, config: FitConfig, digest: str) -> None:
        self.path, self.every, self.digest = config.checkpoint_path, int(config.checkpoint_every), digest
        self.settings = config.settings()
        self.saved_step: Optional[int] = None

    def save(self, lora: LoRA, opt, gen: torch.Generator, step: int, history: List[float]) -> None:
        if self.path and step != self.saved_step:
            save_checkpoint(self.path, lora, opt, gen, step, history, self.digest, self.settings)
            self.saved_step = step


def fit_lora(denoiser, net: torch.nn.Module, targets, config: FitConfig, identity: Dict[str, Any],
             progress: Optional[ProgressFn] = None) -> FitResult:
    """Fit a LoRA on ``net`` (the network inside ``denoiser``) to ``targets`` (:class:`~.targets.AlignTargets`).

    ``identity`` names the inputs (prompts, model, HGR, collection settings); with the fit settings it makes the
    checkpoint's fingerprint, so a checkpoint is resumed only by the run that wrote it.
    """
    config.validate()
    from .lora import adaptable_layers

    lora = LoRA(adaptable_layers(net, config.target_layers), config.rank, config.alpha, seed=config.seed)
    opt = torch.optim.AdamW(lora.parameters(), lr=config.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(int(config.seed))
    digest = fingerprint({"identity": identity, "fit": config.settings()})
    ckpt = _Checkpointer(config, digest)
    step, history, resumed = 0, [], None
    if config.checkpoint_path and config.resume and Path(config.checkpoint_path).exists():
        step, history = restore_checkpoint(config.checkpoint_path, lora, opt, gen, digest, config.settings())
        resumed = ckpt.saved_step = step
    start, t0 = step, time.perf_counter()
    c_all, u1 = targets.c, targets.u
    try:
        with applied(lora, net):
            while step < config.steps:
                idx = _minibatch(targets, gen, config.batch_size)
                weight = torch.where(targets.redirect_row[idx], torch.tensor(1.0), torch.tensor(float(config.beta)))
                loss = batch_loss(denoiser, c_all.index(targets.prompt_index[idx]), u1.repeat_batch(idx.numel()),
                                  targets.x[idx], targets.sigma[idx], targets.target_c[idx], targets.target_u[idx],
                                  weight, float(config.gamma))
                if not torch.isfinite(loss):
                    raise TrainingInputError(f"The alignment loss became {float(loss)} at step {step + 1}; lower the "
                                             "learning rate (--lr) or the rank.")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                value = float(loss.detach())
                history.append(value)
                if ckpt.every > 0 and step % ckpt.every == 0:
                    ckpt.save(lora, opt, gen, step, history)
                if progress is not None and progress(FitProgress(step, config.steps, value,
                                                                 time.perf_counter() - t0, first_step=start)) is False:
                    ckpt.save(lora, opt, gen, step, history)
                    raise TrainingCancelled(f"Alignment cancelled after {step} of {config.steps} steps" + (
                        f"; resume from {ckpt.path}." if ckpt.path else "."), step=step, checkpoint_path=ckpt.path)
    except (KeyboardInterrupt, Exception) as exc:
        if not isinstance(exc, (TrainingCancelled, CheckpointMismatch)):
            ckpt.save(lora, opt, gen, step, history)
        raise
    ckpt.save(lora, opt, gen, step, history)
    return FitResult(lora, history, resumed, ckpt.saved_step, {"fingerprint": digest})


__all__ = ["FitConfig", "FitProgress", "FitResult", "ProgressFn", "batch_loss", "fingerprint", "fit_lora",
           "restore_checkpoint", "save_checkpoint"]
