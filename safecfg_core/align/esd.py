"""The baseline: ESD-style concept erasure (Gandikota et al., ICCV 2023) as a LoRA on the same fit loop.

ESD names the concept ``c_e`` and teaches the model, conditioned on it, the negatively guided prediction
``eps_th(x_t, c_e, t) <- eps(x_t, t) - eta * (eps(x_t, c_e, t) - eps(x_t, t))`` (METHOD.md), with ``x_t`` from the
frozen model's own sampling of ``c_e``. In ComfyUI's denoised form: ``D_th(x, c_e) <- D(x, u) - eta * (D(x, c_e) -
D(x, u))``. Every state is an erasure state (no preservation rows); ESD has no unconditional term either, so the
demo comparison runs it with ``gamma = 0`` and otherwise the same LoRA, loss weight and budget as the alignment.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..errors import TrainingInputError
from ..sampling import noise_for_seeds
from .targets import AlignTargets, Teacher, Verdict, _Recorder, _run_path


def collect_esd_targets(teacher: Teacher, concepts: Sequence[str], *, cfg_scale: float, seeds: Sequence[int],
                        steps: int = 20, eta: float = 1.0, negative: str = "", scheduler: str = "normal"
                        ) -> AlignTargets:
    """ESD's states and targets for the concept texts ``concepts`` x ``seeds`` (plain-CFG paths of the concepts)."""
    if not concepts or not seeds:
        raise TrainingInputError("ESD needs at least one concept text and one seed.")
    c = teacher.text_encoder(list(concepts))
    u = teacher.text_encoder([negative])
    n_c, n_s = len(concepts), len(seeds)
    rows = torch.arange(n_c).repeat_interleave(n_s)
    noise = noise_for_seeds(teacher.latent_shape, [int(seeds[r % n_s]) for r in range(rows.numel())])
    sigmas = teacher.sigmas(steps, scheduler)
    cr, ur = c.index(rows), u.repeat_batch(rows.numel())
    rec = _Recorder(teacher.denoiser, cr, ur, ur, cfg_scale, "cfg", torch.zeros(rows.numel(), dtype=torch.bool))
    with torch.no_grad():
        _run_path(teacher, rec, noise, sigmas)
    xs = torch.cat([r[0] for r in rec.records])
    sig = torch.cat([r[1] for r in rec.records]).float()
    dc = torch.cat([r[2] for r in rec.records])
    du = torch.cat([r[3] for r in rec.records])
    idx = rows.repeat(len(rec.records))
    target = du - float(eta) * (dc - du)
    verdicts = [Verdict(t, float("nan"), float("nan"), True) for t in concepts]
    return AlignTargets(list(concepts), verdicts, c, u, xs, sig, idx, target, du,
                        torch.ones(idx.numel(), dtype=torch.bool), {"concepts": n_c, "seeds": n_s})


__all__ = ["collect_esd_targets"]
