"""ComfyUI's rule for batching conditionings of different token lengths.

When a cond and an uncond of different lengths (say 77 and 154 tokens) go through one batched model call,
ComfyUI repeats each along the token axis up to their least common multiple (``comfy.conds.CONDCrossAttn``).
Attention is invariant to repeating keys and values as a whole, so the model's output does not change. The
core mirrors the rule so it sees exactly the tensors the denoiser sees.

Encoders without padding (T5 in Chroma, Qwen2.5-VL in Qwen-Image, Gemma in Lumina 2) give every prompt its own
length, and the least common multiple of a few dozen lengths is astronomically long. ComfyUI never batches such
rows (``CONDCrossAttn.can_concat`` refuses beyond a small multiple and runs them in separate model calls), so past
:data:`MAX_REPEAT` times the longest row the core instead repeats each row cyclically up to the longest length:
every token a model then reads is still one of the prompt's own, and the batch stays as long as its longest row.
The SafeCFG node itself never batches prompts: it judges each prompt pair at its own lengths.
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


MAX_REPEAT = 16
"""The least common multiple is used while it is at most this many times the longest row (every mix of up to six
77-token CLIP chunks stays exact); beyond, rows are repeated cyclically to the longest length."""


def padded_length(lengths: Sequence[int]) -> int:
    """The token length :func:`pad_to_common_length` gives rows of these lengths."""
    lcm = common_token_length(lengths)
    longest = max(lengths)
    return lcm if lcm <= MAX_REPEAT * longest else longest


def pad_to_common_length(tokens: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    """Repeat each ``[B, T, D]`` tensor along T up to the common length: ComfyUI's ``cond_cat`` rule (the least
    common multiple) while that stays short, else cyclic repetition up to the longest row (module docstring)."""
    target = padded_length([int(t.shape[1]) for t in tokens])
    out = []
    for t in tokens:
        n = int(t.shape[1])
        if n != target:
            t = t.repeat(1, -(-target // n), 1)[:, :target]
        out.append(t)
    return out
