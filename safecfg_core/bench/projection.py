"""Projected wall time of each training preset on the benchmarked model, from what the benchmark measured.

The presets' cost model (``safecfg_core.train.presets``): a run samples the model's own latents once per source
prompt (``sample_steps`` CFG steps) and then makes ``steps`` training steps of ``batch_size`` rows. The benchmark
measures both unit costs on the model at its benchmarked size: seconds per CFG sampling step of one prompt (plain
CFG's median run divided by its steps) and seconds per training row (the inverse of the measured prompts per
second). With ``--quick`` those are the tiny CPU models' costs, so the projection only shows the arithmetic.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional


def _n_categories() -> int:
    """Categories of the built-in corpus (the Train HGR node's default, 'all categories')."""
    from ..corpus.load import builtin_categories

    return len(builtin_categories())


def project_presets(mres: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """Per preset: projected latent-sampling, training and total seconds; None without both measurements."""
    from ..train.presets import PRESETS

    training = mres.get("training") or {}
    cfg_rows = [r for r in mres.get("rows", []) if r["method"] == "cfg"]
    if not cfg_rows or not training.get("prompts_per_s"):
        return None
    sample_step_s = cfg_rows[0]["median_s"] / max(1, int(mres["steps"]))
    train_row_s = 1.0 / float(training["prompts_per_s"])
    n_categories = _n_categories()
    return {"sample_step_s": sample_step_s, "train_row_s": train_row_s, "n_categories": n_categories,
            "presets": {name: {**p.projected_seconds(train_row_s, sample_step_s, n_categories),
                               "latent_prompts": p.latent_prompts(n_categories), "steps": p.steps,
                               "batch_size": p.batch_size, "sample_steps": p.sample_steps}
                        for name, p in PRESETS.items()}}


def fmt_duration(seconds: float) -> str:
    """``42 s``, ``7.5 min``, ``3.2 h``: wall times from seconds to days, at a glance."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def projection_lines(proj: Optional[Dict[str, Any]]) -> List[str]:
    """The report's preset table (nothing when the projection could not be made)."""
    if not proj:
        return []
    lines = ["", f"Training presets, projected wall time on this model (one {proj['sample_step_s'] * 1000:.1f} ms "
                 f"CFG step per prompt, {proj['train_row_s'] * 1000:.1f} ms per training row; "
                 f"all {proj['n_categories']} corpus categories):", "",
             "| preset | latent prompts x sampler steps | training steps x batch | latents | training | total |",
             "|---|---|---|---|---|---|"]
    for name, p in proj["presets"].items():
        lines.append(f"| {name} | {p['latent_prompts']} x {p['sample_steps']} | {p['steps']} x {p['batch_size']} | "
                     f"{fmt_duration(p['latents_s'])} | {fmt_duration(p['train_s'])} | "
                     f"{fmt_duration(p['total_s'])} |")
    return lines
