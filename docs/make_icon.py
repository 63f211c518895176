"""Render the pack's Registry icon, docs/icon.png (400x400), from the demo world's own drawings.

    python docs/make_icon.py [OUT.png]

Four clean demo scenes (the renderer that draws the demo world's training images, safecfg_core/demo/render.py),
tiled 2x2 and upscaled with nearest-neighbour so the 64x64 pixels stay crisp. Deterministic: the same scenes and
seed give the same file.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from safecfg_core.demo.render import Scene, render_scenes  # noqa: E402

SCENES = [Scene("circle", "blue", "white"), Scene("star", "yellow", "purple"),
          Scene("triangle", "green", "black"), Scene("square", "orange", "gray")]
SIZE = 400


def make_icon(out: Path) -> None:
    from PIL import Image

    images = render_scenes(SCENES, seed=0, jitter=False).permute(0, 2, 3, 1)  # [4, 64, 64, 3] in 0..1
    tile = SIZE // 2
    icon = Image.new("RGB", (SIZE, SIZE))
    for i, img in enumerate(images):
        arr = (img.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        part = Image.fromarray(arr).resize((tile, tile), Image.NEAREST)
        icon.paste(part, ((i % 2) * tile, (i // 2) * tile))
    icon.save(out, optimize=True)


if __name__ == "__main__":
    make_icon(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "icon.png")
