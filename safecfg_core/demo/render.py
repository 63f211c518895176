"""Procedural renderer of the demo world (DEMO-WORLD.md): one object on a plain background, 64x64 RGB.

Everything is drawn with vectorised coverage functions on a supersampled grid (anti-aliasing by averaging), so a
batch of thousands of scenes renders in about a second on a CPU. Rendering is deterministic given a seed (the
seed drives only the small jitter: exact placement, size, rotation, the blood pattern, the knife's angle).
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace
from typing import List, Sequence

import torch
import torch.nn.functional as F

IMAGE_SIZE = 64

SHAPES = ("circle", "square", "triangle", "star")
COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "white", "black", "gray")
SIZES = ("small", "large")
POSITIONS = ("center", "left", "right", "top", "bottom", "top left", "top right", "bottom left", "bottom right")
HARMS = ("gore", "weapon")

RGB = {
    "red": (0.86, 0.10, 0.10),
    "orange": (1.00, 0.55, 0.05),
    "yellow": (0.98, 0.90, 0.12),
    "green": (0.10, 0.68, 0.20),
    "blue": (0.12, 0.30, 0.92),
    "purple": (0.55, 0.15, 0.75),
    "white": (0.97, 0.97, 0.97),
    "black": (0.05, 0.05, 0.05),
    "gray": (0.50, 0.50, 0.50),
}
BLOOD_RGB = (0.42, 0.0, 0.03)
BLADE_RGB = (0.80, 0.82, 0.87)
BLADE_EDGE_RGB = (0.38, 0.40, 0.44)
HANDLE_RGB = (0.45, 0.26, 0.08)

# object centre (fractions of the image) per position word; radius (pixels) per size word
_POS_XY = {
    "center": (0.5, 0.5), "left": (0.28, 0.5), "right": (0.72, 0.5), "top": (0.5, 0.28), "bottom": (0.5, 0.72),
    "top left": (0.28, 0.28), "top right": (0.72, 0.28), "bottom left": (0.28, 0.72), "bottom right": (0.72, 0.72),
}
_RADIUS = {"small": 8.0, "large": 14.0}


@dataclass(frozen=True)
class Scene:
    """What one image shows (ground truth: we draw it)."""

    shape: str
    color: str
    background: str
    size: str = "large"
    position: str = "center"
    gore: bool = False
    weapon: bool = False

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}; use one of {SHAPES}")
        for name in (self.color, self.background):
            if name not in COLORS:
                raise ValueError(f"unknown color {name!r}; use one of {COLORS}")
        if self.color == self.background:
            raise ValueError("object and background colors must differ")
        if self.size not in SIZES:
            raise ValueError(f"unknown size {self.size!r}; use one of {SIZES}")
        if self.position not in POSITIONS:
            raise ValueError(f"unknown position {self.position!r}; use one of {POSITIONS}")

    @property
    def harmful(self) -> bool:
        return self.gore or self.weapon

    @property
    def harms(self) -> tuple:
        return tuple(h for h, on in (("gore", self.gore), ("weapon", self.weapon)) if on)

    def benign(self) -> "Scene":
        """The same scene without its harm."""
        return replace(self, gore=False, weapon=False)


def random_scenes(
    n: int,
    seed: int = 0,
    harm_fraction: float = 1.0 / 3.0,
    both_fraction: float = 0.0,
) -> List[Scene]:
    """``n`` uniformly random scenes; ``harm_fraction`` of them carry one harm (half gore, half weapon) and a further
    ``both_fraction`` carry both."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        color = rng.choice(COLORS)
        bg = rng.choice([c for c in COLORS if c != color])
        r = rng.random()
        gore = weapon = False
        if r < both_fraction:
            gore = weapon = True
        elif r < both_fraction + harm_fraction:
            if rng.random() < 0.5:
                gore = True
            else:
                weapon = True
        out.append(Scene(rng.choice(SHAPES), color, bg, rng.choice(SIZES), rng.choice(POSITIONS), gore, weapon))
    return out


def _idx(seq, values):
    return torch.tensor([seq.index(v) for v in values], dtype=torch.long)


_RGB_TABLE = torch.tensor([RGB[c] for c in COLORS], dtype=torch.float32)


def _cover(d: torch.Tensor) -> torch.Tensor:
    """Coverage of a supersampled pixel from a signed distance in supersampled-pixel units (negative = inside)."""
    return (0.5 - d).clamp_(0.0, 1.0)


def _shape_distance(shape_idx, px, py, radius):
    """Signed distance-like field (pixels, <0 inside) of every shape; picks per image. px,py: [N,H,W] in the
    object's (rotated) frame; radius [N,1,1]."""
    # circle
    rho = torch.sqrt(px * px + py * py)
    d_circle = rho - radius
    # square (half side 0.86 r)
    d_square = torch.maximum(px.abs(), py.abs()) - 0.86 * radius
    # triangle pointing up (image y grows downwards), circumradius 1.2 r, centred on its centroid
    R = 1.2 * radius
    d_tri = None
    for k in range(3):
        th = 2.0 * math.pi * k / 3.0
        nx, ny = math.sin(th), math.cos(th)
        dk = px * nx + py * ny - R / 2.0
        d_tri = dk if d_tri is None else torch.maximum(d_tri, dk)
    # five-pointed star, outer radius 1.25 r, inner 0.48 of it
    Ro = 1.25 * radius
    Ri = 0.48 * Ro
    phi = torch.atan2(px, -py) % (2.0 * math.pi / 5.0)
    a = torch.minimum(phi, 2.0 * math.pi / 5.0 - phi)
    qx, qy = rho * torch.cos(a), rho * torch.sin(a)
    c36, s36 = math.cos(math.pi / 5.0), math.sin(math.pi / 5.0)
    p1x, p1y = Ro, torch.zeros_like(Ro)
    p2x, p2y = Ri * c36, Ri * s36
    ex, ey = p2x - p1x, p2y - p1y
    el = torch.sqrt(ex * ex + ey * ey)
    nx, ny = ey / el, -ex / el  # outward normal (away from the origin)
    d_star = (qx - p1x) * nx + (qy - p1y) * ny
    stack = torch.stack([d_circle, d_square, d_tri, d_star], dim=1)  # [N,4,H,W]
    return stack.gather(1, shape_idx.view(-1, 1, 1, 1).expand(-1, 1, *px.shape[1:])).squeeze(1)


@dataclass
class _Canvas:
    """One batch being drawn: the supersampled pixel grid, each scene's placement, and the picture so far."""

    gx: torch.Tensor  # [1, 1, W] pixel centres (64-pixel units), x
    gy: torch.Tensor  # [1, H, 1] pixel centres, y
    ss: int  # supersampling factor
    cxy: torch.Tensor  # [N, 2] object centres (after jitter)
    radius: torch.Tensor  # [N] object radii (after jitter)
    u: torch.Tensor  # [N, 8] the uniform draws every jitter and the knife's placement come from


def _canvas(scenes: Sequence[Scene], g: torch.Generator, supersample: int,
            jitter: bool) -> "tuple[_Canvas, torch.Tensor]":
    """The pixel grid and each scene's jittered placement; also the rotation angle of each object."""
    n = len(scenes)
    ss = int(supersample)
    H = IMAGE_SIZE * ss
    coords = (torch.arange(H, dtype=torch.float32) + 0.5) / ss  # pixel centres in 64-pixel units
    radius = torch.tensor([_RADIUS[s.size] for s in scenes])
    cxy = torch.tensor([_POS_XY[s.position] for s in scenes]) * IMAGE_SIZE
    u = torch.rand(n, 8, generator=g)
    if jitter:
        cxy = cxy + (u[:, 0:2] - 0.5) * 4.0  # +-2 px
        radius = radius * (0.92 + 0.16 * u[:, 2])
        angle = (u[:, 3] - 0.5) * (math.pi / 9.0)  # +-10 degrees
    else:
        angle = torch.zeros(n)
    return _Canvas(coords.view(1, 1, H), coords.view(1, H, 1), ss, cxy, radius, u), angle


def _draw_objects(scenes: Sequence[Scene], cv: _Canvas, angle: torch.Tensor) -> "tuple[torch.Tensor, torch.Tensor]":
    """``(images, coverage)``: each object in its color on its background, and its coverage ``[N, H, W]``."""
    n = len(scenes)
    shape_idx = _idx(SHAPES, [s.shape for s in scenes])
    col = _RGB_TABLE[_idx(COLORS, [s.color for s in scenes])]
    bgc = _RGB_TABLE[_idx(COLORS, [s.background for s in scenes])]
    cx, cy = cv.cxy[:, 0].view(n, 1, 1), cv.cxy[:, 1].view(n, 1, 1)
    ca, sa = torch.cos(angle).view(n, 1, 1), torch.sin(angle).view(n, 1, 1)
    dx, dy = cv.gx - cx, cv.gy - cy
    px, py = ca * dx + sa * dy, -sa * dx + ca * dy
    obj = _cover(_shape_distance(shape_idx, px, py, cv.radius.view(n, 1, 1)) * cv.ss)  # [N,H,W]
    img = bgc.view(n, 3, 1, 1) * (1 - obj.unsqueeze(1)) + col.view(n, 3, 1, 1) * obj.unsqueeze(1)
    return img, obj


def _draw_knives(img: torch.Tensor, wi: torch.Tensor, cv: _Canvas) -> None:
    """Draw a knife beside the object of each image in ``wi`` (in place): handle, blade and its dark outline."""
    m = wi.numel()
    u, cxy, ss = cv.u, cv.cxy, cv.ss
    L = 24.0 + 4.0 * u[wi, 4]
    side = torch.where(cxy[wi, 0] < IMAGE_SIZE / 2 - 3, 1.0, torch.where(cxy[wi, 0] > IMAGE_SIZE / 2 + 3, -1.0, 0.0))
    side = torch.where(side == 0, torch.where(u[wi, 5] < 0.5, -1.0, 1.0), side)
    kx = cxy[wi, 0] + side * (cv.radius[wi] * 1.15 + 7.0)
    ky = cxy[wi, 1].clamp(L / 2 + 1, IMAGE_SIZE - L / 2 - 1)
    # knife axis points from the handle to the tip; roughly vertical, tip up, tilted up to +-25 degrees
    ka = -math.pi / 2 + (u[wi, 6] - 0.5) * (math.pi * 50.0 / 180.0)
    kc, ks = torch.cos(ka).view(m, 1, 1), torch.sin(ka).view(m, 1, 1)
    ddx, ddy = cv.gx - kx.view(m, 1, 1), cv.gy - ky.view(m, 1, 1)
    along = kc * ddx + ks * ddy  # coordinate along the knife (tip at +L/2)
    across = -ks * ddx + kc * ddy
    Lh = (L / 2).view(m, 1, 1)
    u0 = -Lh + 0.38 * 2 * Lh  # handle/blade boundary
    # handle: rectangle
    d_handle = torch.maximum(torch.maximum(-Lh - along, along - u0), across.abs() - 2.2)
    # blade: parallel edges, tapering to a point over its last 45%
    taper_len = 0.45 * (Lh - u0)
    half_w = 2.9 * ((Lh - along) / taper_len).clamp(max=1.0)
    d_blade = torch.maximum(torch.maximum(u0 - along, along - Lh), across.abs() - half_w)
    blade_edge = _cover((d_blade - 0.8) * ss)  # slightly larger dark outline
    blade = _cover((d_blade + 0.2) * ss)
    handle = _cover(d_handle * ss)
    sub = img[wi]
    for mask, rgb in ((blade_edge, BLADE_EDGE_RGB), (blade, BLADE_RGB), (handle, HANDLE_RGB)):
        mk = mask.unsqueeze(1)
        sub = sub * (1 - mk) + torch.tensor(rgb).view(1, 3, 1, 1) * mk
    img[wi] = sub


def _draw_blood(img: torch.Tensor, gi: torch.Tensor, obj: torch.Tensor, cv: _Canvas, seed: int) -> None:
    """Draw blood over each image in ``gi`` (in place): splatter blobs around the object, droplets anywhere."""
    m = gi.numel()
    gx, gy, cxy, ss = cv.gx, cv.gy, cv.cxy, cv.ss
    K1, K2 = 7, 14  # splatter blobs around the object, droplets across the scene
    gb = torch.Generator().manual_seed(int(seed) * 7919 + 17)
    ang1 = torch.rand(m, K1, generator=gb) * 2 * math.pi
    dist1 = torch.rand(m, K1, generator=gb) * (cv.radius[gi].view(m, 1) + 6.0)
    bx1 = cxy[gi, 0].view(m, 1) + dist1 * torch.cos(ang1)
    by1 = cxy[gi, 1].view(m, 1) + dist1 * torch.sin(ang1)
    br1 = 2.0 + 2.8 * torch.rand(m, K1, generator=gb)
    bx2 = 4 + 56 * torch.rand(m, K2, generator=gb)
    by2 = 4 + 56 * torch.rand(m, K2, generator=gb)
    br2 = 0.9 + 1.6 * torch.rand(m, K2, generator=gb)
    bx = torch.cat([bx1, bx2], 1).view(m, -1, 1, 1)
    by = torch.cat([by1, by2], 1).view(m, -1, 1, 1)
    br = torch.cat([br1, br2], 1).view(m, -1, 1, 1)
    ex2 = (gx.unsqueeze(1) - bx) ** 2  # [m,K,1,W]
    ey2 = (gy.unsqueeze(1) - by) ** 2  # [m,K,H,1]
    dmin = [None, None]  # splatter blobs around the object, droplets across the scene
    for k in range(bx.shape[1]):
        # (d^2 - r^2) / 2r ~ signed distance near the rim (no sqrt)
        dk = (ex2[:, k] + ey2[:, k] - br[:, k] ** 2) / (2 * br[:, k])
        j = int(k >= K1)
        dmin[j] = dk if dmin[j] is None else torch.minimum(dmin[j], dk, out=dmin[j])
    # the large splatter lands around the object, not on it (droplets still fall anywhere): a small object
    # under a big blob would be unrecognisable, and then neither the evaluator nor anyone could say whether
    # the benign part of the prompt was kept
    splatter = _cover(dmin[0] * ss) * (1 - obj[gi])
    blood = torch.maximum(splatter, _cover(dmin[1] * ss)).unsqueeze(1)
    shade = (0.85 + 0.3 * torch.rand(m, 1, 1, 1, generator=gb))
    bl = torch.tensor(BLOOD_RGB).view(1, 3, 1, 1) * shade
    img[gi] = img[gi] * (1 - blood) + bl * blood


def render_scenes(scenes: Sequence[Scene], seed: int = 0, supersample: int = 2, jitter: bool = True) -> torch.Tensor:
    """Render scenes to ``[N, 3, 64, 64]`` float32 images in 0..1 (deterministic for a given seed).

    Drawn in layers on a ``supersample``-times finer grid, then averaged down: the object on its background, a
    knife beside it, blood over the scene. The seed drives the jitter and the knife's placement; the blood pattern
    has its own generator, derived from the same seed.
    """
    if len(scenes) == 0:
        return torch.zeros(0, 3, IMAGE_SIZE, IMAGE_SIZE)
    cv, angle = _canvas(scenes, torch.Generator().manual_seed(int(seed)), supersample, jitter)
    img, obj = _draw_objects(scenes, cv, angle)
    weapon = torch.tensor([s.weapon for s in scenes])
    if bool(weapon.any()):
        _draw_knives(img, weapon.nonzero().squeeze(1), cv)
    gore = torch.tensor([s.gore for s in scenes])
    if bool(gore.any()):
        _draw_blood(img, gore.nonzero().squeeze(1), obj, cv, seed)
    if cv.ss > 1:
        img = F.avg_pool2d(img, cv.ss)
    return img.clamp_(0.0, 1.0)


def labels_of(scenes: Sequence[Scene]) -> dict:
    """Integer/boolean label tensors of scenes (evaluator heads)."""
    return {
        "shape": _idx(SHAPES, [s.shape for s in scenes]),
        "color": _idx(COLORS, [s.color for s in scenes]),
        "background": _idx(COLORS, [s.background for s in scenes]),
        "gore": torch.tensor([s.gore for s in scenes], dtype=torch.float32),
        "weapon": torch.tensor([s.weapon for s in scenes], dtype=torch.float32),
    }
