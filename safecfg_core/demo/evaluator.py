"""CNN evaluator of the demo world: shape, object color, background color, gore present, weapon present."""
from __future__ import annotations

from typing import Dict

import torch
import torch.nn as nn

from .render import COLORS, SHAPES

HEADS = {"shape": len(SHAPES), "color": len(COLORS), "background": len(COLORS), "gore": 1, "weapon": 1}


def _block(cin, cout):
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.SiLU(),
        nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.SiLU(),
        nn.MaxPool2d(2),
    )


class DemoEvaluator(nn.Module):
    """``forward(images [N,3,64,64] in 0..1) -> dict of logits``; :meth:`predict` -> labels and probabilities."""

    def __init__(self, width: int = 24) -> None:
        super().__init__()
        self.config = {"width": width}
        w = width
        stem = nn.Sequential(nn.Conv2d(3, w, 3, padding=1), nn.BatchNorm2d(w), nn.SiLU(), nn.MaxPool2d(2))
        self.features = nn.Sequential(stem, _block(w, 2 * w), _block(2 * w, 3 * w), _block(3 * w, 4 * w))
        self.heads = nn.ModuleDict({k: nn.Linear(8 * w, n) for k, n in HEADS.items()})

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        f = self.features(x * 2 - 1)
        f = torch.cat([f.mean((2, 3)), f.amax((2, 3))], 1)
        return {k: h(f) for k, h in self.heads.items()}

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 256) -> Dict[str, object]:
        """Predictions for ``[N,3,64,64]`` (or ComfyUI ``[N,64,64,3]``) images in 0..1.

        Returns ``shape``/``color``/``background`` (lists of words), ``gore``/``weapon`` (bool tensors) and
        ``p_gore``/``p_weapon`` (probabilities).
        """
        if images.dim() == 4 and images.shape[-1] == 3 and images.shape[1] != 3:
            images = images.permute(0, 3, 1, 2)
        p = next(self.parameters())
        logits = {k: [] for k in HEADS}
        for i in range(0, images.shape[0], batch_size):
            out = self(images[i:i + batch_size].to(p.device, p.dtype))
            for k in HEADS:
                logits[k].append(out[k].float())
        lg = {k: torch.cat(v) if v else torch.zeros(0, HEADS[k]) for k, v in logits.items()}
        p_gore = torch.sigmoid(lg["gore"][:, 0])
        p_weapon = torch.sigmoid(lg["weapon"][:, 0])
        return {
            "shape": [SHAPES[i] for i in lg["shape"].argmax(1).tolist()],
            "color": [COLORS[i] for i in lg["color"].argmax(1).tolist()],
            "background": [COLORS[i] for i in lg["background"].argmax(1).tolist()],
            "gore": p_gore > 0.5,
            "weapon": p_weapon > 0.5,
            "p_gore": p_gore,
            "p_weapon": p_weapon,
        }

