"""Progress with the time left, for the demo's commands: a first run should say how long it will take.

The work is planned up front as stages with a relative cost; after each stage the time left is the time taken so
far scaled by the planned cost still to do. The costs only need to be right relative to each other, so the estimate
holds on a fast or a busy machine alike.
"""
from __future__ import annotations

import time
from typing import Callable, Dict, Optional

METHOD_COST = {"cfg": 1.0, "negative_prompt": 1.0, "sld": 1.67, "sld_max": 1.67, "safecfg": 1.1,
               "safecfg_strength2": 1.05}
"""Cost of sampling one image with each method, relative to plain CFG (SLD makes three model passes a step, CFG
two; SafeCFG adds the HGR once per prompt), as measured by the demo command."""

def sampling_cost(method: str, n_images: int, steps: int) -> float:
    """Planned cost of sampling ``n_images`` with ``method`` in ``steps`` steps, in the unit of every planned cost:
    plain CFG sampling one image in 20 steps."""
    return METHOD_COST.get(method, 1.0) * n_images * steps / 20


class Progress:
    """Prints each finished stage with the share of the work done and an estimate of the time left."""

    def __init__(self, say: Callable[[str], None] = print) -> None:
        self.say = say
        self.planned: Dict[str, float] = {}
        self.done = 0.0
        self.t0 = time.perf_counter()

    def plan(self, stage: str, cost: float) -> None:
        """Add a stage still to run, with its cost (see :func:`sampling_cost` for the unit)."""
        self.planned[stage] = self.planned.get(stage, 0.0) + float(cost)

    def seconds_left(self) -> Optional[float]:
        """Estimated seconds until every planned stage is done; None before any stage has finished."""
        if self.done <= 0:
            return None
        return (time.perf_counter() - self.t0) * sum(self.planned.values()) / self.done

    def finish(self, stage: str, what: str) -> None:
        """Mark ``stage`` done and print ``what`` with the share done and the time left."""
        self.done += self.planned.pop(stage, 0.0)
        total = self.done + sum(self.planned.values())
        share = 100 * self.done / total if total else 100.0
        elapsed = time.perf_counter() - self.t0
        left = self.seconds_left()
        tail = "done" if not self.planned else f"about {left:.0f} s left" if left is not None else "estimating"
        self.say(f"[{share:3.0f}%] {what} ({elapsed:.0f} s so far, {tail})")
