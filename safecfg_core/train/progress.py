"""One progress measure and time-left estimate for a whole training run: latent sampling and training steps.

The two phases cost different amounts, so they are put in one unit, model rows: sampling one prompt's latents is
``sample_steps`` sampler steps of two rows (CFG), a training step of ``batch_size`` rows is a no-grad pass for the
targets (about 1.5 rows per row: the harmful rows' concept or rewrite passes) plus a pass with gradients (about 3:
forward and backward). The time left is the time per unit measured so far in this run times the units left, so the
estimate is right once the first units are done, whichever phase is slower on the user's machine.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional

from .config import TrainProgress

ROWS_PER_TRAIN_ROW = 4.5


def _fmt(seconds: Optional[float]) -> str:
    if seconds is None:
        return "estimating"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


@dataclass
class RunEstimate:
    """Feed it every :class:`TrainProgress`; it says how far the whole run is and how long is left."""

    steps: int
    batch_size: int
    sample_steps: int
    latent_prompts: int = 0  # known once sampling reports; 0 when every latent was cached
    latents_done: int = 0
    steps_done: int = 0
    _first_units: Optional[float] = None
    _t0: float = field(default_factory=time.monotonic)

    @property
    def latent_unit(self) -> float:
        return 2.0 * self.sample_steps

    @property
    def step_unit(self) -> float:
        return ROWS_PER_TRAIN_ROW * self.batch_size

    @property
    def total_units(self) -> float:
        return self.latent_prompts * self.latent_unit + self.steps * self.step_unit

    @property
    def done_units(self) -> float:
        return self.latents_done * self.latent_unit + self.steps_done * self.step_unit

    def update(self, p: TrainProgress) -> None:
        if p.phase == "encode":  # before the measured units: neither counted nor timed (its own line says how far)
            return
        if p.phase == "latents":
            self.latent_prompts, self.latents_done = p.total, p.step
        elif p.phase == "train":
            self.latents_done = self.latent_prompts
            self.steps_done = p.step
        elif p.phase in ("calibrate", "done"):
            self.latents_done, self.steps_done = self.latent_prompts, self.steps
        if self._first_units is None:  # what was done before this run (cached latents, a resumed checkpoint)
            self._first_units = self.done_units
            self._t0 = time.monotonic()

    @property
    def fraction(self) -> float:
        return min(1.0, self.done_units / self.total_units) if self.total_units else 0.0

    @property
    def eta_s(self) -> Optional[float]:
        """Seconds left, from this run's pace (None until some work was timed)."""
        done_here = self.done_units - (self._first_units or 0.0)
        if done_here <= 0:
            return None
        return (time.monotonic() - self._t0) / done_here * max(0.0, self.total_units - self.done_units)

    def line(self, p: TrainProgress) -> str:
        """One human line: phase, counts, percent of the whole run, time left."""
        what = {"encode": f"encoding the prompts {p.step}/{p.total}",
                "latents": f"sampling the model's latents {p.step}/{p.total}",
                "train": f"training step {p.step}/{p.total}" + (f", loss {p.loss:.4f}" if p.loss is not None else ""),
                "calibrate": "calibrating the threshold", "done": "done"}.get(p.phase, p.phase)
        eta = self.eta_s
        return f"{what} ({self.fraction:.0%} of the run" + (f", {_fmt(eta)} left)" if eta is not None else ")")


__all__ = ["RunEstimate"]
