"""ComfyUI's rule for batching conditionings of different token lengths.

When a cond and an uncond of different lengths (say 77 and 154 tokens) go through one batched model call,
ComfyUI repeats each along the token axis up to their least common multiple (``comfy.conds.CONDCrossAttn``).
Attention is invariant to repeating keys and values as a whole, so the model's output does not change. The
core mirrors the rule so it sees exactly the tensors the denoiser sees.
"""
from __future__ import annotations

import math
from typing import List, Sequence

import torch



def common_token_length(lengths: Sequence[int]) -> int:
    """Least common multiple of the token lengths (CLIP-style encoders give multiples of 77)."""
    out = 1
    for n in lengths:
        if n <= 0:
            raise ValueError(f"Token length {n} is not positive; a conditioning needs at least one token.")
        out = out * n // math.gcd(out, n)
    return out


def pad_to_common_length(tokens: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    """Repeat each ``[B, T, D]`` tensor along T up to the common length (ComfyUI's ``cond_cat`` rule)."""
    target = common_token_length([int(t.shape[1]) for t in tokens])
    return [t if t.shape[1] == target else t.repeat(1, target // t.shape[1], 1) for t in tokens]
