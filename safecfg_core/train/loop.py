"""The HGR training loop against any frozen ``Denoiser`` + ``TextEncoder`` (METHOD.md, "Training the HGR").

Targets live in score space: for a clean prompt ``D(x, sigma, u*)`` must stay ``D(x, sigma, u)``; for a harmful
prompt it must become ``D(x, sigma, k)`` (``k``: the category's concept text), or, with a safe rewrite ``c_safe``,
SafeCFG on ``c`` must equal CFG on ``c_safe``. Gradients flow through the frozen denoiser into ``Delta`` only.
``TrainConfig.target_gain`` (default 1: exactly those targets) can aim the harmful targets past that point.

The cost is denoiser passes, so each step makes exactly two batched calls: one under ``no_grad`` for all targets,
one with gradients for ``D(u*)``. Prompts are encoded once, the model's own latents are generated once (and cached
on disk). Every random draw comes from one seeded CPU generator whose state is checkpointed with the weights and the
optimizer, so a resumed run is identical to an uninterrupted one.

Losses are *relative*: a harmful row's error is divided by ``||D(target) - D(u)||^2`` (so 1.0 = untrained, 0 =
perfect) and clean rows by the batch's mean harmful scale; this keeps the defaults meaningful for any model's
latent scale.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable, List, Mapping, Optional, Sequence, Union

import torch

from ..conditioning import Cond, Denoiser, TextEncoder
from ..errors import TrainingCancelled, TrainingInputError
from ..hgr import HGRBundle, HGRConfig, HGRMeta
from .batch import Batch, TrainData, draw_batch, prepare_data
from .calibration import calibrate_threshold
from .config import ProgressFn, TrainConfig, TrainProgress, TrainResult, training_fingerprint
from .ddp import DistContext, is_main_process, loss_shares, shard_batch, sharded_sampler
from .prompts import PromptSet
from .state import RunState, restore_checkpoint, save_checkpoint


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


class _CancelRequested(Exception):
    """The progress callback asked to stop; turned into :class:`TrainingCancelled` once the checkpoint is written."""


class TrainingRun:
    """One training run: the steps of :func:`train_hgr`, each a method. ``state`` survives an interruption, so a
    caller can say which step the kept checkpoint holds."""

    def __init__(self, text_encoder: TextEncoder, denoiser: Denoiser, prompts: PromptSet, config: TrainConfig,
                 hgr_config: Optional[HGRConfig], sample_latents: Optional[Callable[[List[str]], torch.Tensor]],
                 latents: Optional[Mapping[str, torch.Tensor]], progress: Optional[ProgressFn],
                 calibration_prompts: Optional[Sequence[str]] = None, dist: Optional[DistContext] = None) -> None:
        self.text_encoder, self.denoiser, self.prompts = text_encoder, denoiser, prompts
        self.dist = dist  # several processes (torchrun): see .ddp
        if dist is not None:
            dist.check_batch(config.batch_size)
            if sample_latents is not None:
                sample_latents = sharded_sampler(sample_latents, dist)
        # the threshold's clean set (default: the training clean prompts); a broad one holds on unfamiliar text
        self.calibration_prompts = None if calibration_prompts is None else list(calibration_prompts)
        self.config = config.validate()
        prompts.validate()
        self.hgr_config, self.sample_latents, self.latents, self.progress = hgr_config, sample_latents, latents, progress
        self.device = torch.device(config.device)
        self.t_start = time.monotonic()
        self.state: Optional[RunState] = None
        self.amp_dtype = {None: None, "bf16": torch.bfloat16, "fp16": torch.float16}[config.autocast_dtype]

    # -- reporting and interruption ---------------------------------------------------------------------------
    def report(self, p: TrainProgress) -> None:
        if self.progress is None:
            return
        try:
            keep_going = self.progress(p)
        except TrainingCancelled:
            keep_going = False
        if keep_going is False:
            raise _CancelRequested()

    def _elapsed(self) -> float:
        return time.monotonic() - self.t_start

    def checkpoint_now(self) -> Optional[str]:
        """Write the completed steps if the last checkpoint does not hold them; the checkpoint path, if any."""
        s, path = self.state, self.config.checkpoint_path
        if s is None or not path:
            return None
        if s.saved_step != s.step and is_main_process():
            save_checkpoint(path, s, self.fingerprint, self.config.result_fields())
        elif s.saved_step != s.step:  # other ranks: rank 0 writes the same state
            s.saved_step = s.step
        return path

    def run(self) -> TrainResult:
        """Train, calibrate and summarise. Any interruption (a cancel, an exception from the progress callback or
        anywhere in a step) first writes a checkpoint of the completed steps, then propagates."""
        try:
            return self._run()
        except _CancelRequested:
            path = self.checkpoint_now()
            step = self.state.step if self.state is not None else 0
            total = self.config.steps
            raise TrainingCancelled(
                f"HGR training cancelled after {step} of {total} steps"
                + (f"; checkpoint kept at {path} (resume with the same settings)." if path else "."),
                step=step, checkpoint_path=path) from None
        except BaseException as exc:
            path = self.checkpoint_now()
            if path and self.state is not None and hasattr(exc, "add_note"):
                exc.add_note(f"SafeCFG: HGR training checkpoint of step {self.state.step} kept at {path}.")
            raise

    def _run(self) -> TrainResult:
        self.data = prepare_data(self.text_encoder, self.prompts, self.config, self.hgr_config, self.device,
                                 self.sample_latents, self.latents, self._report_latents, self._report_encode)
        self.hgr_config = self.data.hgr_config
        self.fingerprint = training_fingerprint(self.prompts, self.config, self.hgr_config, self.calibration_prompts)
        self.state = self._init_state()
        with _Freeze(self.denoiser):
            while self.state.step < self.config.steps:
                self._step()
        return self._finish()

    def _report_encode(self, done: int, total: int) -> None:
        self.report(TrainProgress(done, total, elapsed_s=self._elapsed(), phase="encode"))

    def _report_latents(self, done: int, total: int) -> None:
        self.report(TrainProgress(done, total, elapsed_s=self._elapsed(), phase="latents"))

    # -- the steps ----------------------------------------------------------------------------------------------
    def _init_state(self) -> RunState:
        categories = self.data.categories
        meta = HGRMeta(categories={c: self.prompts.concepts[c] for c in categories})
        bundle = HGRBundle.create(self.hgr_config, meta, seed=self.config.seed)
        net = bundle.net.to(self.device).train()
        for p in net.parameters():
            p.requires_grad_(True)
        opt = torch.optim.AdamW(net.parameters(), lr=self.config.lr, weight_decay=self.config.weight_decay)
        gen = torch.Generator().manual_seed(self.config.seed)
        state = RunState(bundle, opt, gen, gen.get_state())
        path = self.config.checkpoint_path
        if self.config.resume and path and Path(path).exists():
            restore_checkpoint(path, state, self.fingerprint, self.config.result_fields(), self.device)
        self.first_step = state.step
        self.t_steps = time.monotonic()
        return state

    def _denoise(self, x: torch.Tensor, sigma: torch.Tensor, cond: Cond) -> torch.Tensor:
        counters = self.state.counters  # type: ignore[union-attr]
        counters["denoiser_calls"] += 1
        counters["denoiser_rows"] += int(x.shape[0])
        with self._autocast():
            return self.denoiser(x, sigma, cond).float()

    def _autocast(self) -> Any:
        """Mixed precision for the passes when asked for (weights and optimizer stay fp32)."""
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def _targets(self, b: Batch) -> Batch:
        """One no-grad call: ``D(u)`` for all rows; ``D(k)``, or ``D(c_safe)`` and ``D(c)``, for harmful rows."""
        d, n_c = self.data, b.n_clean_rows
        plain = (b.h_rw < 0).nonzero().flatten()
        withrw = (b.h_rw >= 0).nonzero().flatten()
        t_conds = [b.u, d.k_all.index(b.h_cat[plain].to(self.device))]
        t_x = [b.x, b.x[n_c + plain]]
        t_s = [b.sigma, b.sigma[n_c + plain]]
        if len(withrw):
            assert d.r_all is not None
            t_conds += [d.r_all.index(b.h_rw[withrw].to(self.device)), b.c.index((n_c + withrw).to(self.device))]
            t_x += [b.x[n_c + withrw]] * 2
            t_s += [b.sigma[n_c + withrw]] * 2
        with torch.no_grad():
            out = self._denoise(torch.cat(t_x), torch.cat(t_s), Cond.cat(t_conds))
        rows = b.x.shape[0]
        d_u = out[:rows]
        target = d_u.clone()
        off = rows
        target[n_c + plain] = out[off:off + len(plain)]
        off += len(plain)
        if len(withrw):
            n_r = len(withrw)
            d_safe_c, d_c = out[off:off + n_r], out[off + n_r:off + 2 * n_r]
            target[n_c + withrw] = rewrite_target(d_u[n_c + withrw], d_safe_c, d_c, self.config.cfg_scale)
        if d.aims_past_target:
            gain = d.gain_of[b.h_cat].to(self.device).view(-1, *([1] * len(d.latent_shape)))
            target[n_c:] = aim_past(d_u[n_c:], target[n_c:], gain)
        b.d_u, b.target = d_u, target
        return b

    def _losses(self, b: Batch) -> Any:
        """The one gradient pass ``D(x, sigma, u + Delta)`` and the relative losses."""
        net, n_c = self.state.bundle.net, b.n_clean_rows  # type: ignore[union-attr]
        with self._autocast():
            delta = net(b.c, b.u)
        delta_t = delta.tokens.float()
        u = b.u
        u_star = Cond(u.tokens + delta_t.to(u.tokens.dtype),
                      None if u.pooled is None else (u.pooled + delta.pooled.to(u.pooled.dtype)
                                                     if delta.pooled is not None else u.pooled))
        pred = self._denoise(b.x, b.sigma, u_star)
        err = (pred - b.target).pow(2).flatten(1).sum(1)
        scale_h = (b.target[n_c:] - b.d_u[n_c:]).pow(2).flatten(1).sum(1).clamp_min(1e-12)
        if self.dist is not None:  # this rank's shares of the global batch's losses
            pooled = delta.pooled[:n_c].float() if delta.pooled is not None else None
            harm_loss, clean_loss, pen_rows = loss_shares(self.dist, err, scale_h, n_c, delta_t[:n_c], pooled,
                                                          self.config.batch_size)
            penalty = self.config.clean_penalty * pen_rows / self.data.delta_scale
            return harm_loss + clean_loss + penalty, harm_loss, clean_loss, penalty
        harm_loss = (err[n_c:] / scale_h).mean()
        clean_loss = (err[:n_c] / scale_h.mean()).mean()
        pen_rows = delta_t[:n_c].pow(2).mean()
        if delta.pooled is not None:
            pen_rows = pen_rows + delta.pooled[:n_c].float().pow(2).mean()
        penalty = self.config.clean_penalty * pen_rows / self.data.delta_scale
        return harm_loss + clean_loss + penalty, harm_loss, clean_loss, penalty

    def _step(self) -> None:
        state, config = self.state, self.config
        assert state is not None
        b = draw_batch(self.data, config, state.gen, self.device)
        b = self._targets(b if self.dist is None else shard_batch(b, self.dist))
        lr_now = _lr_at(state.step, config)
        for g in state.opt.param_groups:
            g["lr"] = lr_now
        loss, harm_loss, clean_loss, penalty = self._losses(b)
        if not torch.isfinite(loss):
            raise TrainingInputError(
                f"Training diverged at step {state.step} (loss is {float(loss)}); lower lr (now {config.lr}) or "
                "use fp32 (no autocast)."
            )
        # Gradients for the HGR only (never into the denoiser, even if something in it still requires grad).
        params = [p for p in state.bundle.net.parameters()]
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        if self.dist is not None:  # shares of one global loss: their gradients add up to the global gradient
            grads = tuple(None if g_ is None else self.dist.all_sum(g_) for g_ in grads)
            loss, harm_loss, clean_loss, penalty = (self.dist.all_sum(v)
                                                    for v in (loss, harm_loss, clean_loss, penalty))
        for p_, g_ in zip(params, grads):
            p_.grad = g_
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        state.opt.step()
        state.complete_step(float(loss.detach()), float(harm_loss.detach()), float(clean_loss.detach()))
        if config.checkpoint_path and (state.step % config.checkpoint_every == 0 or state.step == config.steps):
            self.checkpoint_now()
        self.report(TrainProgress(state.step, config.steps, state.history[-1], state.harm_hist[-1],
                                  state.clean_hist[-1], float(penalty.detach()), lr_now,
                                  time.monotonic() - self.t_steps, "train", first_step=self.first_step))

    def _finish(self) -> TrainResult:
        state, config, prompts = self.state, self.config, self.prompts
        assert state is not None
        bundle, history = state.bundle, state.history
        bundle.net.eval()
        for p in bundle.net.parameters():
            p.requires_grad_(False)
        self.report(TrainProgress(config.steps, config.steps, elapsed_s=self._elapsed(), phase="calibrate"))
        cal = calibrate_threshold(
            bundle, self.text_encoder, self.calibration_prompts or prompts.clean, config.negative_prompt,
            fpr=config.calibrate_fpr, margin=config.calibrate_margin, softness=config.calibrate_softness,
            harmful_prompts=[h.prompt for h in prompts.harmful],
        )
        tail = max(1, len(history) // 10)
        if self.dist is not None:  # every rank's model calls, so the record matches a one-process run's
            state.counters = {k: int(self.dist.all_sum(torch.tensor(v))) for k, v in state.counters.items()}
        summary = {
            "steps": config.steps, "final_loss": sum(history[-tail:]) / tail,
            "final_harm_loss": sum(state.harm_hist[-tail:]) / tail,
            "final_clean_loss": sum(state.clean_hist[-tail:]) / tail,
            "n_clean": len(prompts.clean), "n_harmful": len(prompts.harmful), "n_rewrites": self.data.n_rewrites,
            "categories": self.data.categories, "prompt_set": prompts.fingerprint(), "fingerprint": self.fingerprint,
            "resumed_from": state.resumed_from, "train_seconds": round(self._elapsed(), 3),
            "train_config": config.result_fields(), "roc_auc_train": cal.get("roc_auc"), **state.counters,
            # at most ~200 points, enough to plot the curve from the file alone
            "loss_history": [round(v, 6) for v in history[:: max(1, len(history) // 200)]],
            "loss_history_stride": max(1, len(history) // 200),
        }
        bundle.meta.training = summary
        self.report(TrainProgress(config.steps, config.steps, history[-1] if history else None,
                                  elapsed_s=self._elapsed(), phase="done"))
        return TrainResult(bundle, history, state.harm_hist, state.clean_hist, summary)


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
    ``checkpoint_path`` is set) and :class:`TrainingCancelled` is raised with its step and path. Any other
    exception also writes that checkpoint first. :class:`~safecfg_core.train.session.TrainingSession` adds the
    output-file policy (skip what is already trained, never overwrite another HGR) on top.
    """
    return TrainingRun(text_encoder, denoiser, prompts, config or TrainConfig(), hgr_config, sample_latents,
                       latents, progress).run()


__all__ = ["TrainData", "TrainingRun", "aim_past", "rewrite_target", "train_hgr"]
