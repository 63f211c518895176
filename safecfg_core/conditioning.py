"""The one data type every part of the pack passes around: a text conditioning.

ComfyUI hands a denoiser a token sequence ``[B, T, D]`` (``c_crossattn``) and, for SDXL-style models, a pooled
vector ``[B, P]`` that ends up in the ADM input ``y``. Keeping both in one small immutable record lets the core
library (HGR, guidance math, training, demo model) stay independent of ComfyUI's own conditioning classes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Protocol, Sequence

import torch

TOKEN_CHUNK = 77
"""ComfyUI (and CLIP) work in chunks of 77 tokens; conditionings of different lengths are padded to a common
multiple of it by repetition before they are batched together."""


@dataclass(frozen=True)
class Cond:
    """A batch of text conditionings: ``tokens`` ``[B, T, D]`` and an optional ``pooled`` ``[B, P]``."""

    tokens: torch.Tensor
    pooled: Optional[torch.Tensor] = None

    def __post_init__(self) -> None:
        if self.tokens.dim() != 3:
            raise ValueError(
                f"Cond.tokens must be [batch, tokens, width], got shape {tuple(self.tokens.shape)}; "
                "pass the text encoder's token states, not a pooled vector."
            )
        if self.pooled is not None:
            if self.pooled.dim() != 2 or self.pooled.shape[0] != self.tokens.shape[0]:
                raise ValueError(
                    f"Cond.pooled must be [batch, width] with the same batch as tokens "
                    f"({self.tokens.shape[0]}), got shape {tuple(self.pooled.shape)}."
                )

    @property
    def batch_size(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def token_dim(self) -> int:
        return int(self.tokens.shape[-1])

    def to(self, *args, **kwargs) -> "Cond":
        """Move/cast like ``Tensor.to``; both parts follow."""
        return Cond(self.tokens.to(*args, **kwargs), None if self.pooled is None else self.pooled.to(*args, **kwargs))

    def index(self, idx) -> "Cond":
        """Select batch rows (an int list, slice or index tensor)."""
        return Cond(self.tokens[idx], None if self.pooled is None else self.pooled[idx])

    def repeat_batch(self, n: int) -> "Cond":
        """Repeat each row ``n`` times in a row (``[a, b] -> [a, a, b, b]`` for n=2)."""
        return Cond(
            self.tokens.repeat_interleave(n, dim=0),
            None if self.pooled is None else self.pooled.repeat_interleave(n, dim=0),
        )

    @staticmethod
    def cat(conds: Sequence["Cond"]) -> "Cond":
        """Concatenate along the batch; token lengths are first padded to a common multiple (ComfyUI's rule)."""
        from .padding import pad_to_common_length  # local import: padding imports Cond

        if not conds:
            raise ValueError("Cond.cat needs at least one conditioning.")
        tokens = pad_to_common_length([c.tokens for c in conds])
        pooled_parts = [c.pooled for c in conds]
        if any(p is None for p in pooled_parts) and not all(p is None for p in pooled_parts):
            raise ValueError("Cond.cat: either every conditioning has a pooled vector or none has.")
        pooled = None if pooled_parts[0] is None else torch.cat(pooled_parts, dim=0)  # type: ignore[arg-type]
        return Cond(torch.cat(tokens, dim=0), pooled)


class Denoiser(Protocol):
    """``D(x, sigma, cond) -> denoised``: the model's x0 prediction at noise level ``sigma`` (shape ``[B]``).

    ComfyUI's samplers work on denoised outputs for eps, v and flow models alike, so everything in the core is
    written against this one signature.
    """

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: Cond) -> torch.Tensor: ...


TextEncoder = Callable[[Sequence[str]], Cond]
"""Encodes a list of prompts into one batched :class:`Cond` (row i = prompt i)."""
