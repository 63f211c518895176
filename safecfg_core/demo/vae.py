"""Small autoencoder of the demo world: 64x64x3 images <-> 4x8x8 latents (SD's geometry: factor 8, 4 channels).

Most of its work happens at 8x8 and 16x16 (pixel (un)shuffle to and from full resolution), so it is cheap on a
CPU. Latents are normalised per channel (buffers ``shift``/``scale`` measured on training renders) so they are
roughly zero-mean, unit-scale: the latent format scale factor is 1.0. Images are ``[N, H, W, 3]`` floats in 0..1
(ComfyUI's IMAGE layout) in :meth:`DemoVAE.encode`/:meth:`DemoVAE.decode`; ``encode_nchw``/``decode_nchw`` take
``[N, 3, H, W]``.
"""
from __future__ import annotations

from typing import Dict

import torch
import torch.nn as nn
import torch.nn.functional as F

LATENT_CHANNELS = 4
DOWNSCALE = 8

DEFAULT_CONFIG: Dict[str, int] = {"ch": 128, "mid": 96}


class _Res(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.c2 = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x):
        return x + self.c2(F.silu(self.c1(F.silu(x))))


class DemoVAE(nn.Module):
    def __init__(self, ch: int = 128, mid: int = 96) -> None:
        super().__init__()
        self.config = {"ch": ch, "mid": mid}
        # encoder: unshuffle 4 -> 48 ch at 16x16 -> conv -> stride-2 -> 8x8 -> latent
        self.e_in = nn.Conv2d(48, mid, 3, padding=1)
        self.e_res1 = _Res(mid)
        self.e_down = nn.Conv2d(mid, ch, 3, stride=2, padding=1)
        self.e_res2 = _Res(ch)
        self.e_out = nn.Conv2d(ch, LATENT_CHANNELS, 1)
        # decoder: 8x8 -> shuffle 2 -> 16x16 -> 1x1 to 48 -> shuffle 4 -> 64x64 -> small refinement
        self.d_in = nn.Conv2d(LATENT_CHANNELS, ch, 3, padding=1)
        self.d_res1 = _Res(ch)
        self.d_res2 = _Res(ch)
        self.d_up = nn.Conv2d(ch, mid * 4, 1)
        self.d_res3 = _Res(mid)
        self.d_out = nn.Conv2d(mid, 48, 1)
        self.r1 = nn.Conv2d(3, 16, 3, padding=1)
        self.r2 = nn.Conv2d(16, 3, 3, padding=1)
        nn.init.zeros_(self.r2.weight)
        nn.init.zeros_(self.r2.bias)
        self.register_buffer("shift", torch.zeros(1, LATENT_CHANNELS, 1, 1))
        self.register_buffer("scale", torch.ones(1, LATENT_CHANNELS, 1, 1))

    # raw (unnormalised) latent
    def encode_raw(self, img: torch.Tensor) -> torch.Tensor:
        x = F.pixel_unshuffle(img * 2 - 1, 4)
        x = self.e_res1(self.e_in(x))
        x = self.e_res2(self.e_down(F.silu(x)))
        return self.e_out(F.silu(x))

    def decode_raw(self, z: torch.Tensor) -> torch.Tensor:
        x = self.d_res2(self.d_res1(self.d_in(z)))
        x = F.pixel_shuffle(self.d_up(F.silu(x)), 2)
        x = self.d_res3(x)
        x = F.pixel_shuffle(self.d_out(F.silu(x)), 4)
        x = x + self.r2(F.silu(self.r1(x)))
        return (x + 1) / 2

    def encode_nchw(self, img: torch.Tensor) -> torch.Tensor:
        """``[N,3,64k,64k]`` in 0..1 -> normalised latents ``[N,4,8k,8k]``."""
        return (self.encode_raw(img) - self.shift) / self.scale

    def decode_nchw(self, z: torch.Tensor) -> torch.Tensor:
        """Normalised latents -> ``[N,3,H,W]`` images clamped to 0..1."""
        return self.decode_raw(z * self.scale + self.shift).clamp(0, 1)

    def _check_image(self, images: torch.Tensor) -> None:
        if images.dim() != 4 or images.shape[-1] != 3:
            raise ValueError(f"DemoVAE.encode expects images [N, H, W, 3] in 0..1, got {tuple(images.shape)}")
        if images.shape[1] % DOWNSCALE or images.shape[2] % DOWNSCALE:
            raise ValueError(f"image height and width must be multiples of {DOWNSCALE}, got {tuple(images.shape)}")

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """ComfyUI IMAGE ``[N,H,W,3]`` (0..1) -> latents ``[N,4,H/8,W/8]``."""
        self._check_image(images)
        p = next(self.parameters())
        return self.encode_nchw(images[..., :3].permute(0, 3, 1, 2).to(p.device, p.dtype)).float()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents ``[N,4,h,w]`` -> ComfyUI IMAGE ``[N,8h,8w,3]`` in 0..1."""
        if latents.dim() != 4 or latents.shape[1] != LATENT_CHANNELS:
            raise ValueError(f"DemoVAE.decode expects latents [N, 4, h, w], got {tuple(latents.shape)}")
        p = next(self.parameters())
        return self.decode_nchw(latents.to(p.device, p.dtype)).float().permute(0, 2, 3, 1)
