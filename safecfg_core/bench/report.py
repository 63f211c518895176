"""The benchmark's text report: one markdown table per model plus HGR, parameter and training lines."""
from __future__ import annotations

from typing import Any, Dict, List

from .measure import fmt_bytes, fmt_seconds
from .projection import projection_lines


def _table(mres: Dict[str, Any]) -> List[str]:
    lines = [f"{mres['steps']} Euler steps, batch 1, cfg {mres['cfg_scale']}, {mres['reps']} interleaved "
             f"repetitions (+1 warm-up); spread = interquartile range; x plain CFG = ratio of medians "
             f"(median of the per-repetition ratios); memory = {mres['memory_kind']}",
             "",
             "| method | passes/step | median | spread (q1-q3) | x plain CFG (paired) | peak memory (+ during run) |",
             "|---|---|---|---|---|---|"]
    for r in mres["rows"]:
        ratio = "n/a" if r["ratio_to_cfg"] is None else f"{r['ratio_to_cfg']:.3f}"
        if r.get("ratio_to_cfg_per_rep_median") is not None:
            ratio += f" ({r['ratio_to_cfg_per_rep_median']:.3f})"
        lines.append(f"| {r['label']} | {r['passes_per_step']} | {fmt_seconds(r['median_s'])} | "
                     f"{fmt_seconds(r['q1_s'])} - {fmt_seconds(r['q3_s'])} | {ratio} | "
                     f"{fmt_bytes(r['peak_memory_bytes'])} (+{fmt_bytes(r['peak_increase_bytes'])}) |")
    return lines


def _training_line(t: Dict[str, Any]) -> str:
    if "error" in t:
        return f"HGR training: not measured: {t['error']}"
    return (f"HGR training: {t['prompts_per_s']:.2f} prompts/s, {t['denoiser_rows_per_s']:.1f} denoiser "
            f"rows/s ({t['denoiser_calls_per_step']:.0f} calls, {t['denoiser_rows_per_step']:.0f} rows per "
            f"step of batch {t['batch_size']}; {t['timed_steps']} timed steps), peak memory "
            f"{fmt_bytes(t['peak_memory_bytes'])} (+{fmt_bytes(t['peak_increase_bytes'])} during training; "
            f"{t['memory_kind']})")


def format_report(result: Dict[str, Any]) -> str:
    """The report printed by ``python -m safecfg_core bench`` for ``result`` (the JSON it can also write)."""
    env = result["environment"]
    lines = [f"SafeCFG benchmark: {env['device_name']}, torch {env['torch']}, {env['threads']} CPU threads",
             f"command: {env['command']}"]
    for mres in result["models"]:
        lines += ["", f"## {mres['model']}: {mres['description']}"]
        lines += [f"note: {n}" for n in mres.get("notes", [])]
        lines += _table(mres)
        h = mres["hgr_per_prompt"]
        pct = 100.0 * mres["hgr_params"] / max(1, mres["denoiser_params"])
        lines += ["",
                  f"HGR per prompt (once per sampling run): median {fmt_seconds(h['median'])} "
                  f"(q1-q3 {fmt_seconds(h['q1'])} - {fmt_seconds(h['q3'])})",
                  f"parameters: denoiser {mres['denoiser_params']:,}, HGR {mres['hgr_params']:,} ({pct:.2f}% of the "
                  f"denoiser); {mres['hgr_description']}"]
        if mres.get("training"):
            lines.append(_training_line(mres["training"]))
        lines += projection_lines(mres.get("preset_projection"))
    return "\n".join(lines)
