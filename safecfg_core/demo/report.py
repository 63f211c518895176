"""The demo's outputs: the comparison grid (``grid.png``), the numbers (``metrics.json``) and a short report
(``report.md``) that shows the same numbers and adds none."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from .render import HARMS
from .runs import METHODS, ExperimentResult

METHOD_TITLES = {
    "cfg": "plain CFG",
    "negative_prompt": "negative prompt",
    "sld": "SLD (MEDIUM)",
    "sld_max": "SLD (MAX)",
    "safecfg": "SafeCFG",
    "safecfg_strength2": "SafeCFG (strength 2)",
}
SPLIT_TITLES = {"train": "training phrasings", "heldout": "held-out phrasings", "file": "prompt file"}

Metrics = Mapping[str, Any]


def _fmt(value: Optional[float], pct: bool = True) -> str:
    if value is None:
        return "n/a"
    return f"{100 * value:.1f}%" if pct else f"{value:.2f}"


def _percentages(values: Mapping[str, float]) -> str:
    return ", ".join(f"{k} {100 * v:.1f}%" for k, v in values.items())


def _method_table(metrics: Metrics) -> List[str]:
    """Report lines: the headline table, one row per method."""
    lines = ["| method | harmful rate (lower is safer) | kept content | clean fidelity | clean PSNR vs CFG (dB) | "
             "clean identical to CFG |", "|---|---|---|---|---|---|"]
    for m, row in metrics["methods"].items():
        psnr_v = row["clean_psnr_vs_cfg"]
        if psnr_v is None:
            psnr_s = "inf (identical)" if row.get("clean_identical_to_cfg") == 1.0 else "n/a"
        else:
            psnr_s = f"{psnr_v:.1f}"
        lines.append(f"| {METHOD_TITLES.get(m, m)} | {_fmt(row['harmful_rate'])} | {_fmt(row['kept_content'])} | "
                     f"{_fmt(row['clean_fidelity'])} | {psnr_s} | {_fmt(row['clean_identical_to_cfg'])} |")
    return lines


def _split_table(metrics: Metrics) -> List[str]:
    """Report lines: harmful rate per category and kept content / clean fidelity, per phrasing split."""
    rows = []
    for m, row in metrics["methods"].items():
        for split, r in (row.get("by_split") or {}).items():
            rows.append(f"| {METHOD_TITLES.get(m, m)} | {SPLIT_TITLES.get(split, split)} | "
                        + " | ".join(_fmt(r.get(f"harmful_rate_{h}")) for h in HARMS)
                        + f" | {_fmt(r['kept_content'])} | {_fmt(r['clean_fidelity'])} |")
    if not rows:
        return []
    return ["", "By phrasing split:", "",
            "| method | phrasing | " + " | ".join(f"{h} drawn" for h in HARMS) + " | kept content | clean fidelity |",
            "|---|---|" + "---|" * (len(HARMS) + 2)] + rows


def _size_table(metrics: Metrics) -> List[str]:
    """Report lines: kept content per object size, overall and under each harm, per method and for plain CFG on the
    safe rewrites (the ceiling), so where content is lost (which harm, which size) reads off one table."""
    rows: List[Tuple[str, Mapping[str, Any]]] = [
        (METHOD_TITLES.get(m, m), row) for m, row in metrics["methods"].items() if row.get("kept_content_by_size")]
    reference = metrics.get("rewrite_reference")
    if isinstance(reference, dict) and reference.get("kept_content_by_size"):
        rows.append(("plain CFG on the safe rewrites", reference))
    if not rows:
        return []
    sizes = sorted({s for _, row in rows for s in row["kept_content_by_size"]})
    harms = [h for h in HARMS if any(h in (row.get("kept_content_by_harm_and_size") or {}) for _, row in rows)]
    columns = [(None, s) for s in sizes] + [(h, s) for h in harms for s in sizes]
    head = " | ".join(s if h is None else f"{h}: {s}" for h, s in columns)

    def cell(row: Mapping[str, Any], harm: Optional[str], size: str) -> str:
        if harm is None:
            return _fmt(row["kept_content_by_size"].get(size))
        return _fmt((row.get("kept_content_by_harm_and_size") or {}).get(harm, {}).get(size))

    return ["", "Kept content by object size (harmful prompts), in all and under each harm:", "",
            f"| method | {head} |", "|---|" + "---|" * len(columns)] + [
        f"| {title} | " + " | ".join(cell(row, h, s) for h, s in columns) + " |" for title, row in rows]


def _detection(metrics: Metrics) -> List[str]:
    det = metrics.get("detection_auroc", {})
    return ["", "Detection ROC AUC (clean vs harmful prompts): " + ", ".join(
        f"{k} {v:.3f}" for k, v in det.items() if v is not None) + "  ",
            "(`prompt`: HGR's prompt score; `score`: the score-level judgement of the plain-CFG image with its "
            "prompt; `_heldout`: phrasings never seen in training.)"]


def _gate(metrics: Metrics) -> List[str]:
    gate = metrics.get("gate", {})
    if not gate:
        return []
    return ["", f"Gate (threshold {gate.get('threshold')}): open on {_fmt(gate.get('open_on_clean'))} of clean "
                f"and {_fmt(gate.get('open_on_harmful'))} of harmful prompts."]


def _ceilings(metrics: Metrics) -> List[str]:
    """Report lines: the evaluator's accuracy and the ceilings on kept content (where measured)."""
    lines: List[str] = []
    acc = metrics.get("evaluator_accuracy")
    if isinstance(acc, dict):
        lines += ["", "Evaluator accuracy on fresh renders: " + _percentages(acc)]
    ceiling = metrics.get("vae_roundtrip_content")
    if isinstance(ceiling, dict):
        lines += ["", "Content the evaluator still reads after the VAE alone encodes and decodes a fresh render (the "
                      "ceiling on kept content and clean fidelity): " + _percentages(ceiling)]
    under_harm = metrics.get("vae_roundtrip_content_by_harm")
    if isinstance(under_harm, dict):
        lines += ["", "The same with a harm drawn over every scene (what the model's training latents of harmful "
                      "prompts still show): " + "; ".join(f"{h} " + _percentages(by) for h, by in under_harm.items())]
    reference = metrics.get("rewrite_reference")
    if isinstance(reference, dict) and reference:
        sizes = ", ".join(f"{k} {_fmt(v)}" for k, v in reference.get("kept_content_by_size", {}).items())
        lines += ["", "Plain CFG on each harmful prompt's safe rewrite (same scenes and seeds; what SafeCFG's rewrite "
                      "target asks it to draw, so the ceiling on its kept content): kept content "
                      f"{_fmt(reference['kept_content'])}" + (f" ({sizes})" if sizes else "")]
    return lines


def report_markdown(metrics: Metrics, command: str, note: str = "") -> str:
    """A short human-readable report of ``metrics`` (the same numbers, nothing added); ``note`` is a paragraph
    printed under the heading (e.g. that this is a quick subset)."""
    lines = [
        "# SafeCFG on the demo world",
        "",
        f"Produced by `{command}` in {metrics.get('seconds', float('nan')):.0f} s; "
        f"{metrics['n_prompts']} prompts x {len(metrics['seeds'])} seeds per method, cfg {metrics.get('cfg_scale')}, "
        f"{metrics.get('steps')} Euler steps.",
        "",
    ]
    if note:
        lines += [note, ""]
    lines += _method_table(metrics)
    lines += _split_table(metrics)
    lines += _size_table(metrics)
    lines += _detection(metrics) + _ceilings(metrics) + _gate(metrics)
    return "\n".join(lines) + "\n"


def strict_json(value: Any) -> Any:
    """``value`` with every non-finite float replaced by ``None``, so the file is strict JSON (no NaN/Infinity),
    which browsers' and other languages' parsers require."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def write_grid(out_dir: str, result: ExperimentResult, picks: Sequence[int]) -> str:
    """Write ``grid.png`` (one row per picked item with its first seed, one column per method); return its path."""
    from ..plotting import image_grid

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    methods = [m for m in METHODS if m in result.images]
    n_seeds = len(result.seeds)
    labels = []
    for i in picks:
        it = result.items[i]
        tag = f"[{'+'.join(it.harms)}] " if it.harms else "[clean] "
        score = f"  (score {float(result.prompt_scores[i]):.3f})" if result.prompt_scores.numel() else ""
        labels.append(tag + it.text + score)
    rows = [[result.images[m][i * n_seeds].numpy() for m in methods] for i in picks]
    grid = image_grid(rows, labels, [METHOD_TITLES[m] for m in methods], scale=2, label_width=300)
    path = str(out / "grid.png")
    grid.save(path)
    return path


def write_metrics_and_report(out_dir: str, metrics: Dict[str, Any], command: str, note: str = "") -> Dict[str, str]:
    """Write ``metrics.json`` (strict JSON) and ``report.md`` into ``out_dir``; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"metrics": str(out / "metrics.json"), "report": str(out / "report.md")}
    Path(paths["metrics"]).write_text(json.dumps(strict_json(metrics), indent=2, allow_nan=False) + "\n")
    Path(paths["report"]).write_text(report_markdown(metrics, command, note))
    return paths


def write_outputs(out_dir: str, result: ExperimentResult, metrics: Dict[str, Any], picks: Sequence[int],
                  command: str, note: str = "") -> Dict[str, str]:
    """Write ``grid.png``, ``metrics.json`` and ``report.md`` into ``out_dir``; return their paths."""
    return {"grid": write_grid(out_dir, result, picks), **write_metrics_and_report(out_dir, metrics, command, note)}
