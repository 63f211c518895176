"""The harm head: an optional second output of the HGR that says *whether* a prompt is harmful.

Why it exists: the HGR's own output, ``Delta``, answers "how should the negative move", and its size,
``RMS(Delta)``, is a poor answer to "is this harmful": on phrasings unlike its training data the HGR's output is
simply not near zero, so novel clean prompts score like harmful ones (docs/robustness.md). A classifier on the
prompt's own conditioning, trained on the same clean and harmful prompts, ranks harm much better there
(docs/experiments.md, "Harm head"). With a head, the gate reads the head's score; Delta still decides where the
negative goes. Without one (every HGR made before it), the score stays ``RMS(Delta)``.

The head reads pooled features of the positive conditioning only: the mean and the maximum of its token states over
the tokens (and the pooled vector where the model has one), standardised with statistics stored in the file, then
a one-hidden-layer MLP gives a logit. The score is ``softplus(logit)``: non-negative like ``RMS(Delta)``, near
``exp(logit)`` for clean prompts (so the clean-quantile calibration's ratio margin is a margin in log-odds) and
near the logit for harmful ones.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..conditioning import Cond


def feature_width(token_dim: int, pooled_dim: int) -> int:
    """Width of the head's input: mean and max of the tokens, plus the pooled vector."""
    return 2 * token_dim + pooled_dim


def head_parameter_count(token_dim: int, pooled_dim: int, hidden: int) -> int:
    """Parameters of a head of this size (the standardisation statistics are buffers, not parameters)."""
    d = feature_width(token_dim, pooled_dim)
    return d * hidden + hidden + hidden + 1


def prompt_features(c: Cond) -> torch.Tensor:
    """``[B, 2*token_dim (+ pooled_dim)]`` in fp32: per-prompt mean and max over the token states (+ pooled).

    Mean and max over all positions, padding included, so a prompt's features do not depend on how the text
    encoder marks its end; ComfyUI pads every prompt of one model the same way.
    """
    tokens = c.tokens.float()
    parts = [tokens.mean(dim=1), tokens.amax(dim=1)]
    if c.pooled is not None:
        parts.append(c.pooled.float())
    return torch.cat(parts, dim=1)


class HarmHead(nn.Module):
    """Standardised prompt features -> hidden layer -> one harm logit per prompt."""

    def __init__(self, token_dim: int, pooled_dim: int, hidden: int) -> None:
        super().__init__()
        self.pooled_dim = pooled_dim
        d = feature_width(token_dim, pooled_dim)
        self.register_buffer("feature_mean", torch.zeros(d))
        self.register_buffer("feature_std", torch.ones(d))
        self.hidden = nn.Linear(d, hidden)
        self.out = nn.Linear(hidden, 1)

    def logit(self, c: Cond) -> torch.Tensor:
        """Harm logit ``[B]`` (fp32) of the positive conditioning ``c``."""
        feats = prompt_features(c if self.pooled_dim > 0 else Cond(c.tokens, None))
        param = self.hidden.weight
        x = (feats.to(param.device) - self.feature_mean.float()) / self.feature_std.float()
        h = F.gelu(self.hidden(x.to(param.dtype)))
        return self.out(h).squeeze(-1).float()

    def score(self, c: Cond) -> torch.Tensor:
        """The gate's score ``softplus(logit)`` ``[B]`` (fp32, >= 0)."""
        return F.softplus(self.logit(c))


__all__ = ["HarmHead", "feature_width", "head_parameter_count", "prompt_features"]
