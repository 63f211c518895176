"""Measures the project reports: ROC AUC for detection, PSNR for "did the clean image change".

Kept free of scikit-learn so the demo and CLI need nothing beyond torch/numpy.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def roc_auc(negative_scores: Sequence[float], positive_scores: Sequence[float]) -> float:
    """Probability that a random positive scores above a random negative (ties count one half).

    This is the Mann-Whitney form of the area under the ROC curve: exact, threshold-free, and defined for any
    score scale, which is what the detector's scores are.
    """
    neg = np.asarray(negative_scores, dtype=np.float64).ravel()
    pos = np.asarray(positive_scores, dtype=np.float64).ravel()
    if neg.size == 0 or pos.size == 0:
        raise ValueError("roc_auc needs at least one negative and one positive score.")
    if not (np.isfinite(neg).all() and np.isfinite(pos).all()):
        raise ValueError("roc_auc got NaN or infinite scores; fix the scorer before measuring detection.")
    scores = np.concatenate([neg, pos])
    order = scores.argsort(kind="mergesort")
    ranks = np.empty_like(scores)
    sorted_scores = scores[order]
    # average ranks for ties (1-based)
    i = 0
    while i < len(sorted_scores):
        j = i
        while j + 1 < len(sorted_scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    pos_rank_sum = ranks[neg.size :].sum()
    u = pos_rank_sum - pos.size * (pos.size + 1) / 2.0
    return float(u / (neg.size * pos.size))


def psnr(image: np.ndarray, reference: np.ndarray, peak: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB of ``image`` against ``reference`` (identical images give +inf)."""
    a = np.asarray(image, dtype=np.float64)
    b = np.asarray(reference, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"psnr: shapes differ, {a.shape} vs {b.shape}.")
    mse = float(np.mean((a - b) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(peak * peak / mse)
