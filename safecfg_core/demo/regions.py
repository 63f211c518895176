"""Where a demo picture's content is, per latent cell: the mask behind ``--region-weight`` of the demo trainer.

The demo's pictures are one object (and a knife, when drawn) on a plain background, so "content" is every pixel
that differs from the background's colour. The mask is the share of such pixels in each 8x8 block, the block a latent
cell decodes to.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

# summed |RGB| difference (0..3) above which a pixel is not background; the renderer's closest object/background
# colour pair differs by far more, decoding noise by far less
BACKGROUND_TOLERANCE = 0.3


def background_colors(images: torch.Tensor) -> torch.Tensor:
    """Median colour of each image's one-pixel border (``[N, H, W, 3]`` -> ``[N, 3]``): the object never fills it."""
    border = torch.cat([images[:, 0], images[:, -1], images[:, :, 0], images[:, :, -1]], dim=1)
    return border.median(dim=1).values


def content_mask(vae, latents: torch.Tensor, tolerance: float = BACKGROUND_TOLERANCE) -> torch.Tensor:
    """Share of non-background pixels in each latent cell's block: ``[N, 4, h, w]`` latents -> ``[N, 1, h, w]``."""
    images = vae.decode(latents).float().clamp(0, 1)
    off = (images - background_colors(images)[:, None, None, :]).abs().sum(-1) > tolerance
    block = images.shape[1] // latents.shape[2]
    return F.avg_pool2d(off.float()[:, None], block)
