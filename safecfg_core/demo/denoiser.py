"""Small conditional DiT on 4x8x8 latents with cross-attention to 384-wide text tokens (eps prediction).

Signature as ComfyUI's ``BaseModel.apply_model`` calls a diffusion model: ``net(x_in, timesteps, context=...,
control=None, transformer_options={}, **kwargs) -> eps`` where ``x_in = x / sqrt(sigma^2 + 1)`` and ``timesteps``
is the (float) index 0..999 of SD's discrete schedule. Extra keyword arguments are accepted and ignored.
"""
from __future__ import annotations

import math
from typing import Dict

import torch
import torch.nn as nn
import torch.nn.functional as F

DEFAULT_CONFIG: Dict[str, int] = {
    "in_channels": 4, "size": 8, "width": 128, "depth": 4, "heads": 4, "context_dim": 384, "mlp_ratio": 2,
    "text_pool": 1, "local_mix": 1,
}


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class _TextPool(nn.Module):
    """Attention pooling of the projected text tokens into one vector per prompt (learned queries, one per head).

    Why: shape, colours and the harm are global properties of a prompt. Handing them to every block through the
    adaLN modulation (as SD3/SDXL do with their pooled text vector) lets the small model learn them in a fraction of
    the steps that cross-attention alone needs. The pool reads only the token states, so everything that edits
    token states (negative prompts, the HGR's redirected ``u*``) still reaches it.
    """

    def __init__(self, w: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Parameter(torch.zeros(1, heads, 1, w // heads))
        self.kv = nn.Linear(w, 2 * w)
        self.out = nn.Linear(w, w)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, ctx: torch.Tensor) -> torch.Tensor:
        B, T, W = ctx.shape
        k, v = self.kv(ctx).view(B, T, 2, self.heads, W // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(self.query.expand(B, -1, -1, -1).to(ctx.dtype), k, v)
        return self.out(a.reshape(B, W))


class _Block(nn.Module):
    def __init__(self, w: int, heads: int, mlp_ratio: int, local_mix: bool = False) -> None:
        super().__init__()
        self.heads = heads
        # a depthwise 3x3 convolution in the MLP gives the tiny transformer a convolution's locality, which
        # it otherwise has to learn from position embeddings (shapes' edges come out far sooner)
        self.local = nn.Conv2d(mlp_ratio * w, mlp_ratio * w, 3, padding=1, groups=mlp_ratio * w) if local_mix else None
        self.n1 = nn.LayerNorm(w, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(w, 3 * w)
        self.proj = nn.Linear(w, w)
        self.n2 = nn.LayerNorm(w, eps=1e-6)
        self.cq = nn.Linear(w, w)
        self.ckv = nn.Linear(w, 2 * w)
        self.cproj = nn.Linear(w, w)
        self.n3 = nn.LayerNorm(w, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(w, mlp_ratio * w), nn.GELU(approximate="tanh"), nn.Linear(mlp_ratio * w, w))
        self.ada = nn.Linear(w, 6 * w)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)

    def _heads(self, t):
        B, T, W = t.shape
        return t.view(B, T, self.heads, W // self.heads).transpose(1, 2)

    def forward(self, x, temb, ctx, grid):
        """``x [B, H*W, width]``; ``grid = (H, W)`` lays the tokens out for the local mixing."""
        B, T, W = x.shape
        s1, b1, g1, s3, b3, g3 = self.ada(temb).unsqueeze(1).chunk(6, dim=-1)
        h = self.n1(x) * (1 + s1) + b1
        q, k, v = self.qkv(h).chunk(3, dim=-1)
        a = F.scaled_dot_product_attention(self._heads(q), self._heads(k), self._heads(v))
        x = x + g1 * self.proj(a.transpose(1, 2).reshape(B, T, W))
        h = self.n2(x)
        k, v = self.ckv(ctx).chunk(2, dim=-1)
        a = F.scaled_dot_product_attention(self._heads(self.cq(h)), self._heads(k), self._heads(v))
        x = x + self.cproj(a.transpose(1, 2).reshape(B, T, W))
        h = self.n3(x) * (1 + s3) + b3
        if self.local is None:
            return x + g3 * self.mlp(h)
        gh, gw = grid
        if gh * gw != T:
            raise ValueError(f"token count {T} is not the grid {gh}x{gw}")
        h = self.mlp[1](self.mlp[0](h))
        h = h + self.local(h.transpose(1, 2).reshape(B, -1, gh, gw)).flatten(2).transpose(1, 2)
        return x + g3 * self.mlp[2](h)


class DemoDiT(nn.Module):
    """``forward(x_in [B,4,H,W], timesteps [B], context [B,T,384]) -> eps [B,4,H,W]``."""

    def __init__(self, in_channels: int = 4, size: int = 8, width: int = 128, depth: int = 4, heads: int = 4,
                 context_dim: int = 384, mlp_ratio: int = 2, text_pool: int = 0, local_mix: int = 0) -> None:
        super().__init__()
        self.config = dict(in_channels=in_channels, size=size, width=width, depth=depth, heads=heads,
                           context_dim=context_dim, mlp_ratio=mlp_ratio, text_pool=int(text_pool),
                           local_mix=int(local_mix))
        self.in_channels = in_channels
        self.size = size
        self.width = width
        self.x_in = nn.Linear(in_channels, width)
        self.pos = nn.Parameter(torch.randn(1, size * size, width) * 0.02)
        self.t_mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.ctx_norm = nn.LayerNorm(context_dim)
        self.ctx_proj = nn.Linear(context_dim, width)
        self.text_pool = _TextPool(width, heads) if text_pool else None
        self.blocks = nn.ModuleList(_Block(width, heads, mlp_ratio, bool(local_mix)) for _ in range(depth))
        self.out_norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.out_ada = nn.Linear(width, 2 * width)
        self.out = nn.Linear(width, in_channels)
        for m in (self.out_ada, self.out):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    @property
    def dtype(self) -> torch.dtype:
        return self.x_in.weight.dtype

    def _pos(self, H: int, W: int) -> torch.Tensor:
        if H == self.size and W == self.size:
            return self.pos
        # other latent sizes: interpolate the learned grid (works, but the model was trained at 8x8)
        g = self.pos.view(1, self.size, self.size, self.width).permute(0, 3, 1, 2)
        g = F.interpolate(g, size=(H, W), mode="bilinear", align_corners=False)
        return g.permute(0, 2, 3, 1).reshape(1, H * W, self.width)

    def forward(self, x, timesteps, context=None, control=None, transformer_options=None, **kwargs):
        if context is None:
            raise ValueError("DemoDiT needs a text context [B, T, 384] (the demo text encoder's token states).")
        B, C, H, W = x.shape
        if timesteps.dim() == 0:
            timesteps = timesteps.expand(B)
        if context.shape[0] != B:
            if B % context.shape[0]:
                raise ValueError(f"context batch {context.shape[0]} does not divide the latent batch {B}")
            context = context.repeat(B // context.shape[0], 1, 1)
        dtype = self.x_in.weight.dtype
        h = self.x_in(x.to(dtype).flatten(2).transpose(1, 2)) + self._pos(H, W).to(dtype)
        temb = self.t_mlp(timestep_embedding(timesteps, self.width).to(dtype))
        ctx = self.ctx_proj(self.ctx_norm(context.to(dtype)))
        if self.text_pool is not None:
            temb = temb + self.text_pool(ctx)
        st = F.silu(temb)
        for blk in self.blocks:
            h = blk(h, st, ctx, (H, W))
        sh, sc = self.out_ada(st).unsqueeze(1).chunk(2, dim=-1)
        h = self.out(self.out_norm(h) * (1 + sc) + sh)
        return h.transpose(1, 2).reshape(B, C, H, W)
