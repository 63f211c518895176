"""Fitting the HGR's harm head (:mod:`safecfg_core.hgr.harm_head`) on the training prompts.

The head is fitted after the HGR, on the same clean and harmful prompt sets, with the HGR frozen: it only has to
learn "harmful or not" from the prompt's conditioning, which is a small logistic problem, and fitting it apart keeps
the HGR's own training (and every HGR made without a head) unchanged. Clean and harmful prompts are weighted to
count equally, since the sets differ in size. The threshold is calibrated afterwards on the head's score, as for
any HGR (:mod:`.calibration`).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable, Dict, Optional, Sequence

import torch
from torch.nn import functional as F

from ..conditioning import Cond
from ..errors import TrainingInputError
from ..hgr import HGRBundle
from ..hgr.harm_head import prompt_features
from ..hgr.net import HarmfulGuidanceRedirector

DEFAULT_HIDDEN = 256
"""Hidden width: enough for the demo's two categories and seven real ones; about 0.4 M parameters on CLIP-L."""


def with_harm_head(bundle: HGRBundle, hidden: int = DEFAULT_HIDDEN) -> HGRBundle:
    """A copy of ``bundle`` whose network carries an (unfitted) harm head; the HGR's weights are kept as they are."""
    config = replace(bundle.config, harm_head=int(hidden))
    net = HarmfulGuidanceRedirector(config).to(device=bundle.device, dtype=bundle.dtype)
    missing, unexpected = net.load_state_dict(bundle.net.state_dict(), strict=False)
    if unexpected or any(not k.startswith("harm_head.") for k in missing):
        raise ValueError(f"with_harm_head: the HGR's weights do not fit its config ({unexpected or missing})")
    return HGRBundle(net.eval(), config, bundle.meta)


def encode_features(encode: Callable[[Sequence[str]], Cond], texts: Sequence[str], batch_size: int = 256,
                    progress: Optional[Callable[[int, int], None]] = None) -> torch.Tensor:
    """Head features ``[N, F]`` (fp32, CPU) of ``texts``, encoded ``batch_size`` at a time."""
    out = []
    for i in range(0, len(texts), batch_size):
        with torch.no_grad():
            out.append(prompt_features(encode(list(texts[i:i + batch_size]))).cpu())
        if progress is not None:
            progress(min(i + batch_size, len(texts)), len(texts))
    return torch.cat(out)


def fit_harm_head(bundle: HGRBundle, clean_features: torch.Tensor, harmful_features: torch.Tensor,
                  steps: int = 1500, lr: float = 3e-3, weight_decay: float = 1e-3, batch_size: int = 512,
                  seed: int = 0) -> Dict[str, float]:
    """Fit ``bundle``'s harm head in place (the HGR itself stays frozen); returns the final loss and the training
    ROC AUC. Deterministic for a given ``seed``."""
    head = bundle.net.harm_head
    if head is None:
        raise ValueError("fit_harm_head: this HGR has no harm head; add one with with_harm_head().")
    if len(clean_features) == 0 or len(harmful_features) == 0:
        raise TrainingInputError("The harm head needs both clean and harmful prompts.")
    x = torch.cat([clean_features, harmful_features]).float()
    y = torch.cat([torch.zeros(len(clean_features)), torch.ones(len(harmful_features))])
    weight = torch.where(y > 0, len(clean_features) / len(harmful_features), 1.0)
    device, dtype = head.hidden.weight.device, head.hidden.weight.dtype
    with torch.no_grad():
        head.feature_mean.copy_(x.mean(0))
        head.feature_std.copy_(x.std(0).clamp_min(1e-4))  # a constant feature (padding) must not divide by zero
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # a fresh, seeded initialisation: the same prompts give the same head
        for layer in (head.hidden, head.out):
            bound = layer.weight.shape[1] ** -0.5
            layer.weight.copy_(torch.empty(layer.weight.shape).uniform_(-bound, bound, generator=gen))
            layer.bias.zero_()
    xn = ((x - head.feature_mean.cpu()) / head.feature_std.cpu()).to(device=device, dtype=dtype)
    y, weight = y.to(device), weight.to(device)
    params = list(head.hidden.parameters()) + list(head.out.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    loss = torch.zeros(())
    for _ in range(steps):
        idx = torch.randint(0, len(x), (min(batch_size, len(x)),), generator=gen).to(device)
        logits = head.out(F.gelu(head.hidden(xn[idx]))).squeeze(-1).float()
        loss = (F.binary_cross_entropy_with_logits(logits, y[idx], reduction="none") * weight[idx]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    for p in params:
        p.requires_grad_(False)
    from ..metrics import roc_auc

    with torch.no_grad():
        logits = head.out(F.gelu(head.hidden(xn))).squeeze(-1).float().cpu()
    n_clean = len(clean_features)
    return {"final_loss": float(loss.detach()), "train_auc": roc_auc(logits[:n_clean].tolist(), logits[n_clean:].tolist()),
            "steps": steps, "n_clean": n_clean, "n_harmful": len(harmful_features)}


__all__ = ["DEFAULT_HIDDEN", "encode_features", "fit_harm_head", "with_harm_head"]
