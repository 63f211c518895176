"""Calibration of an HGR's prompt-score threshold on clean prompts (METHOD.md, "Calibration")."""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import torch

from ..conditioning import TextEncoder
from ..errors import TrainingInputError
from ..hgr import HGRBundle


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
            c, u = c.to(param.device), u.to(param.device)
            out.append(bundle.net.prompt_score(c, bundle.net(c, u)).cpu())
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
        from ..metrics import roc_auc

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


__all__ = ["calibrate_threshold", "harm_scores"]
