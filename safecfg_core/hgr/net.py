"""The Harmful Guidance Redirector (HGR) network and its configuration.

The HGR is a small transformer that reads the positive conditioning ``c`` and the negative conditioning ``u``
and proposes a change ``Delta`` to ``u`` (METHOD.md). Its output projections are zero-initialised, so an
untrained HGR returns exactly zero and SafeCFG reduces to plain CFG bit for bit; training then only has to
learn *where* to move away from zero. The file format lives in :mod:`.bundle`.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Dict, Mapping

import torch
from torch import nn

from ..conditioning import TOKEN_CHUNK, Cond
from ..errors import HGRMismatchError
from ..families import family, normalize_family
from .harm_head import HarmHead, head_parameter_count


def format_parameter_count(n: int) -> str:
    """``4213760 -> '4.21 M'``: parameter counts the way people read them."""
    if n >= 1_000_000:
        return f"{n / 1e6:.2f} M"
    if n >= 1_000:
        return f"{n / 1e3:.1f} k"
    return str(n)


# Upper bounds on every size an HGR config may declare. A config is read from a file before anything is built, and
# these keep a small hostile file from making the loader allocate gigabytes: the largest preset (sdxl) is far
# inside them, and a network at the limits would still be under MAX_PARAMETERS only if it is a sane shape.
SIZE_LIMITS: Dict[str, int] = {
    "token_dim": 16384, "pooled_dim": 16384, "width": 4096, "depth": 64, "heads": 256, "chunk": 8192,
    "harm_head": 4096,
}
MAX_PARAMETERS = 256_000_000
"""About 1 GB in fp32, 50 times the sdxl preset."""


# ----------------------------------------------------------------------------------------------------------
# Config


@dataclass
class HGRConfig:
    """Shape of an HGR: the text encoder it serves (``token_dim``, ``pooled_dim``, family) and its own size.

    ``chunk`` is the period of the learned position embedding: token ``t`` gets position ``t % chunk``, so
    conditionings of 77, 154 or 231 tokens (CLIP chunks, or ComfyUI's repetition padding) all make sense.
    ``harm_head`` is the hidden width of the optional harm head (:mod:`.harm_head`; 0: none, the gate then reads
    ``RMS(Delta)``); it is left out of the file's config when 0, so files without a head read as before.
    """

    token_dim: int
    pooled_dim: int = 0
    model_family: str = "sd1"
    width: int = 256
    depth: int = 2
    heads: int = 4
    chunk: int = TOKEN_CHUNK
    harm_head: int = 0

    def __post_init__(self) -> None:
        for name in ("token_dim", "width", "depth", "heads", "chunk"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"HGRConfig.{name} must be a positive integer, got {value!r}.")
        if not isinstance(self.pooled_dim, int) or isinstance(self.pooled_dim, bool) or self.pooled_dim < 0:
            raise ValueError(f"HGRConfig.pooled_dim must be an integer >= 0 (0: no pooled vector), got {self.pooled_dim!r}.")
        if not isinstance(self.harm_head, int) or isinstance(self.harm_head, bool) or self.harm_head < 0:
            raise ValueError(f"HGRConfig.harm_head must be an integer >= 0 (0: no harm head), got {self.harm_head!r}.")
        for name, limit in SIZE_LIMITS.items():
            if getattr(self, name) > limit:
                raise ValueError(f"HGRConfig.{name} is {getattr(self, name)}, above the limit of {limit}.")
        if self.width % self.heads != 0:
            raise ValueError(
                f"HGRConfig.width ({self.width}) must be divisible by heads ({self.heads}); pick e.g. "
                f"heads={math.gcd(self.width, 8)}."
            )
        if not isinstance(self.model_family, str) or len(self.model_family) > 64:
            raise ValueError(f"HGRConfig.model_family must be a short name, got {str(self.model_family)[:80]!r}.")
        self.model_family = normalize_family(self.model_family) or "unknown"
        if self.parameter_count() > MAX_PARAMETERS:
            raise ValueError(
                f"HGRConfig describes a network of {format_parameter_count(self.parameter_count())} parameters, above "
                f"the limit of {format_parameter_count(MAX_PARAMETERS)}; HGRs are a few million parameters."
            )

    def parameter_count(self) -> int:
        """The network's parameter count, computed from the sizes alone (nothing is built or allocated)."""
        t, p, w = self.token_dim, self.pooled_dim, self.width
        layer = 12 * w * w + 13 * w  # attention (4 w x w + biases), 4x MLP (8 w x w + biases), two LayerNorms
        total = 2 * t + (t * w + w) + self.chunk * w + 4 * w + self.depth * layer + 2 * w + (w * t + t)
        if p > 0:
            total += 2 * p + (p * w + w) + (w * p + p)
        if self.harm_head:
            total += head_parameter_count(t, p, self.harm_head)
        return total

    def to_dict(self) -> Dict[str, Any]:
        data = asdict(self)
        if not self.harm_head:
            del data["harm_head"]  # files (and training fingerprints) without a head stay as they were
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "HGRConfig":
        """Build from a dict; unknown keys are an error (they would mean a newer, different format)."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"HGRConfig: unknown field(s) {unknown}; known fields are {sorted(names)}.")
        return cls(**dict(data))

    @classmethod
    def for_family(cls, family_name: str, **overrides: Any) -> "HGRConfig":
        """Preset for a model family of :mod:`safecfg_core.families` (aliases allowed); ``overrides`` win. A refused
        family (Flux) raises UnsupportedFamilyError saying why, an unknown one a ValueError listing the known."""
        fam = family(family_name)
        kwargs: Dict[str, Any] = dict(token_dim=fam.token_dim, pooled_dim=fam.pooled_dim, model_family=fam.name,
                                      **fam.net)
        kwargs.update(overrides)
        return cls(**kwargs)

    def describe_widths(self) -> str:
        """``sd1 (768-wide tokens)``: the encoder this HGR serves, for messages."""
        pooled = f" + {self.pooled_dim}-wide pooled" if self.pooled_dim else ""
        return f"{self.model_family} ({self.token_dim}-wide tokens{pooled})"


# ----------------------------------------------------------------------------------------------------------
# Network


def rms_score(delta: Cond) -> torch.Tensor:
    """RMS of ``Delta`` over all its tokens (and pooled part) per row, in fp32: how far the HGR moves the negative.

    Independent of the token length, so 77- and 154-token prompts compare.
    """
    t = delta.tokens.float()
    sq = t.pow(2).flatten(1).sum(1)
    n = t[0].numel()
    if delta.pooled is not None:
        p = delta.pooled.float()
        sq = sq + p.pow(2).sum(1)
        n += p.shape[1]
    return (sq / n).sqrt()

_TYPE_C, _TYPE_U, _TYPE_C_POOLED, _TYPE_U_POOLED = 0, 1, 2, 3


class HarmfulGuidanceRedirector(nn.Module):
    """``Delta_phi(c, u)``: a pre-LN transformer over the tokens of ``c`` and ``u`` together.

    Both sequences are layer-normed (CLIP token states have a few huge-norm positions), projected to ``width``,
    tagged with a learned position (``t % chunk``) and a c/u type embedding, and run jointly through
    ``depth`` encoder layers; the outputs at u's positions are projected back to ``token_dim``. With a pooled
    vector (SDXL) the pooled c and u become two extra tokens and a second zero-initialised head reads the
    pooled Delta. Batch row i of ``c`` is paired with row i of ``u``; token lengths may differ.
    """

    def __init__(self, config: HGRConfig) -> None:
        super().__init__()
        self.config = config
        w = config.width
        self.in_norm = nn.LayerNorm(config.token_dim)
        self.in_proj = nn.Linear(config.token_dim, w)
        self.pos_emb = nn.Embedding(config.chunk, w)
        self.type_emb = nn.Embedding(4, w)
        if config.pooled_dim > 0:
            self.pooled_in_norm = nn.LayerNorm(config.pooled_dim)
            self.pooled_in_proj = nn.Linear(config.pooled_dim, w)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                d_model=w, nhead=config.heads, dim_feedforward=4 * w, dropout=0.0,
                activation="gelu", batch_first=True, norm_first=True,
            )
            for _ in range(config.depth)
        )
        self.out_norm = nn.LayerNorm(w)
        self.out_proj = nn.Linear(w, config.token_dim)
        if config.pooled_dim > 0:
            self.pooled_out_proj = nn.Linear(w, config.pooled_dim)
        self.harm_head = HarmHead(config.token_dim, config.pooled_dim, config.harm_head) if config.harm_head else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Small random embeddings; output heads exactly zero so an untrained HGR is the identity on u."""
        nn.init.normal_(self.pos_emb.weight, std=0.02)
        nn.init.normal_(self.type_emb.weight, std=0.02)
        nn.init.zeros_(self.out_proj.weight)
        nn.init.zeros_(self.out_proj.bias)
        if self.config.pooled_dim > 0:
            nn.init.zeros_(self.pooled_out_proj.weight)
            nn.init.zeros_(self.pooled_out_proj.bias)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def prompt_score(self, c: Cond, delta: Cond) -> torch.Tensor:
        """The gate's harm score per row (fp32): the harm head's if this HGR has one, else ``RMS(Delta)``."""
        if self.harm_head is not None:
            return self.harm_head.score(c)
        return rms_score(delta)

    def _embed_tokens(self, tokens: torch.Tensor, type_id: int) -> torch.Tensor:
        t = tokens.shape[1]
        pos = torch.arange(t, device=tokens.device) % self.config.chunk
        h = self.in_proj(self.in_norm(tokens))
        return h + self.pos_emb(pos)[None] + self.type_emb.weight[type_id]

    def _embed_pooled(self, pooled: torch.Tensor, type_id: int) -> torch.Tensor:
        return (self.pooled_in_proj(self.pooled_in_norm(pooled)) + self.type_emb.weight[type_id])[:, None, :]

    def forward(self, c: Cond, u: Cond) -> Cond:
        cfg = self.config
        for name, cond in (("c", c), ("u", u)):
            if cond.token_dim != cfg.token_dim:
                raise HGRMismatchError(
                    f"The {name} conditioning has {cond.token_dim}-wide tokens but this HGR expects "
                    f"{cfg.token_dim} ({cfg.model_family}); load an HGR trained for this model."
                )
        if c.batch_size != u.batch_size:
            raise ValueError(
                f"HGR pairs row i of c with row i of u, but c has {c.batch_size} rows and u has {u.batch_size}; "
                "repeat the single negative (or positive) to the batch size first."
            )
        param = self.in_proj.weight
        dtype, device = param.dtype, param.device
        ct = c.tokens.to(device=device, dtype=dtype)
        ut = u.tokens.to(device=device, dtype=dtype)
        parts = [self._embed_tokens(ct, _TYPE_C), self._embed_tokens(ut, _TYPE_U)]
        use_pooled = cfg.pooled_dim > 0
        if use_pooled:
            if c.pooled is None or u.pooled is None:
                raise HGRMismatchError(
                    f"This HGR was trained for {cfg.describe_widths()} and needs the pooled vector of both "
                    "conditionings, but one has none; use an SDXL-style text encoder (or an HGR without pooled input)."
                )
            for name, cond in (("c", c), ("u", u)):
                if cond.pooled.shape[-1] != cfg.pooled_dim:  # type: ignore[union-attr]
                    raise HGRMismatchError(
                        f"The {name} pooled vector is {cond.pooled.shape[-1]} wide but this HGR expects "  # type: ignore[union-attr]
                        f"{cfg.pooled_dim}; load an HGR trained for this model."
                    )
            parts.append(self._embed_pooled(c.pooled.to(device=device, dtype=dtype), _TYPE_C_POOLED))  # type: ignore[union-attr]
            parts.append(self._embed_pooled(u.pooled.to(device=device, dtype=dtype), _TYPE_U_POOLED))  # type: ignore[union-attr]
        h = torch.cat(parts, dim=1)
        for layer in self.layers:
            h = layer(h)
        h = self.out_norm(h)
        tc, tu = ct.shape[1], ut.shape[1]
        delta_tokens = self.out_proj(h[:, tc:tc + tu])
        delta_pooled = None
        if use_pooled:
            delta_pooled = self.pooled_out_proj(h[:, -1]).to(u.pooled.dtype)  # type: ignore[union-attr]
            delta_pooled = delta_pooled.to(u.pooled.device)  # type: ignore[union-attr]
        return Cond(delta_tokens.to(device=u.tokens.device, dtype=u.tokens.dtype), delta_pooled)


__all__ = [
    "MAX_PARAMETERS",
    "SIZE_LIMITS",
    "HGRConfig",
    "HarmfulGuidanceRedirector",
    "format_parameter_count",
    "rms_score",
]
