"""Figures the pack draws itself: comparison grids and line plots (loss curves, score traces).

Pillow does the drawing (ComfyUI ships it; the `demo` extra installs it). matplotlib is deliberately not used:
the same code has to run inside a user's ComfyUI, where we cannot add heavy dependencies.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np


def _pil():
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError as exc:  # pragma: no cover - exercised only without Pillow
        raise ImportError("Drawing figures needs Pillow: pip install Pillow (ComfyUI already has it).") from exc
    return Image, ImageDraw, ImageFont


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Float image in [0, 1] (H, W, 3) to uint8, clipping out-of-range values."""
    return (np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def image_grid(
    rows: Sequence[Sequence[np.ndarray]],
    row_labels: Optional[Sequence[str]] = None,
    col_labels: Optional[Sequence[str]] = None,
    scale: int = 2,
    label_width: int = 260,
    pad: int = 4,
):
    """Lay images (float HxWx3 in [0,1]) out in a labelled grid and return a PIL image."""
    Image, ImageDraw, ImageFont = _pil()
    if not rows or not rows[0]:
        raise ValueError("image_grid needs at least one row with one image.")
    h, w = np.asarray(rows[0][0]).shape[:2]
    cell_h, cell_w = h * scale, w * scale
    n_cols = max(len(r) for r in rows)
    top = 18 if col_labels else 0
    left = label_width if row_labels else 0
    canvas = Image.new("RGB", (left + n_cols * (cell_w + pad) + pad, top + len(rows) * (cell_h + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for j, label in enumerate(col_labels or []):
        draw.text((left + pad + j * (cell_w + pad), 3), str(label), fill="black", font=font)
    for i, row in enumerate(rows):
        y = top + pad + i * (cell_h + pad)
        if row_labels:
            _draw_wrapped(draw, str(row_labels[i]), (4, y + 2), label_width - 8, font)
        for j, img in enumerate(row):
            tile = Image.fromarray(to_uint8(img)).resize((cell_w, cell_h), Image.NEAREST)
            canvas.paste(tile, (left + pad + j * (cell_w + pad), y))
    return canvas


def _draw_wrapped(draw, text: str, xy, max_width: int, font) -> None:
    words, lines, line = text.split(), [], ""
    for word in words:
        trial = f"{line} {word}".strip()
        if draw.textlength(trial, font=font) <= max_width or not line:
            line = trial
        else:
            lines.append(line)
            line = word
    lines.append(line)
    x, y = xy
    for k, ln in enumerate(lines[:6]):
        draw.text((x, y + 11 * k), ln, fill="black", font=font)


def line_plot(
    series: Dict[str, Sequence[float]],
    title: str = "",
    xlabel: str = "step",
    ylabel: str = "",
    size=(512, 320),
    log_y: bool = False,
):
    """A plain line plot (one colour per series, legend, axis ranges) as a PIL image."""
    Image, ImageDraw, ImageFont = _pil()
    width, height = size
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    margin_l, margin_r, margin_t, margin_b = 60, 12, 24, 36
    plot_w, plot_h = width - margin_l - margin_r, height - margin_t - margin_b
    colours = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189)]
    values: List[np.ndarray] = []
    for ys in series.values():
        arr = np.asarray(list(ys), dtype=np.float64)
        if log_y:
            arr = np.log10(np.clip(arr, 1e-12, None))
        values.append(arr)
    finite = [v[np.isfinite(v)] for v in values if v.size]
    finite = [v for v in finite if v.size]
    lo = min(float(v.min()) for v in finite) if finite else 0.0
    hi = max(float(v.max()) for v in finite) if finite else 1.0
    if hi - lo < 1e-12:
        hi = lo + 1.0
    n_max = max((v.size for v in values), default=1)
    draw.rectangle([margin_l, margin_t, margin_l + plot_w, margin_t + plot_h], outline="black")
    draw.text((margin_l, 4), title, fill="black", font=font)
    draw.text((margin_l + plot_w // 2 - 10, height - 14), xlabel, fill="black", font=font)
    fmt = (lambda v: f"1e{v:.1f}") if log_y else (lambda v: f"{v:.3g}")
    draw.text((2, margin_t), fmt(hi), fill="black", font=font)
    draw.text((2, margin_t + plot_h - 10), fmt(lo), fill="black", font=font)
    draw.text((2, margin_t + plot_h // 2), ylabel[:9], fill="black", font=font)
    draw.text((margin_l, margin_t + plot_h + 4), "0", fill="black", font=font)
    draw.text((margin_l + plot_w - 24, margin_t + plot_h + 4), str(max(n_max - 1, 0)), fill="black", font=font)
    for k, (name, arr) in enumerate(zip(series.keys(), values)):
        colour = colours[k % len(colours)]
        if arr.size:
            xs = margin_l + np.arange(arr.size) * plot_w / max(n_max - 1, 1)
            ys = margin_t + plot_h - (arr - lo) / (hi - lo) * plot_h
            pts = [(float(x), float(y)) for x, y in zip(xs, ys) if np.isfinite(y)]
            if len(pts) > 1:
                draw.line(pts, fill=colour, width=2)
            elif pts:
                draw.ellipse([pts[0][0] - 2, pts[0][1] - 2, pts[0][0] + 2, pts[0][1] + 2], fill=colour)
        draw.text((margin_l + 8, margin_t + 6 + 12 * k), name, fill=colour, font=font)
    return canvas
