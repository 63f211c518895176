"""The models the ``align`` command knows: a ``--model`` setup (see :mod:`safecfg_core.cli`) as a
:class:`~.targets.Teacher` plus the network its LoRA goes on."""
from __future__ import annotations

from typing import Any, Optional, Tuple

import torch

from ..errors import TrainingInputError
from .lora import network_of
from .targets import Teacher


def teacher_from_setup(setup: Any) -> Tuple[Teacher, torch.nn.Module, Optional[str]]:
    """``(teacher, net, default HGR path)`` of a ``--model`` setup.

    The schedule comes from the denoiser (a ``DiscreteEpsDenoiser`` has one; then samples match KSampler's), the
    latent shape from the setup (``latent_shape``, or the demo world's 4x8x8), the default HGR from the demo world's
    shipped file where there is one.
    """
    denoiser = setup.denoiser
    net = network_of(denoiser)
    inner = getattr(setup, "extra", {}).get("world")
    shape = getattr(setup, "latent_shape", None) or getattr(denoiser, "latent_shape", None)
    if shape is None and inner is not None:
        shape = (4, 8, 8)  # the demo world: SD's latent geometry at 64x64 pixels
    if shape is None:
        raise TrainingInputError(f"Model {getattr(setup, 'name', '?')!r} does not say its latent shape; it cannot be "
                                 "sampled for alignment.")
    teacher = Teacher(denoiser, setup.text_encoder, getattr(denoiser, "schedule", None), tuple(shape),
                      tuple(getattr(setup, "sigma_range", None) or ()) or None)
    return teacher, net, getattr(inner, "hgr_path", None)


__all__ = ["teacher_from_setup"]
