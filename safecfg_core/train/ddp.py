"""Training on several processes (``torchrun``, PyTorch distributed): sharded sampling, averaged gradients.

Every rank holds the whole prompt set, the same HGR and the same seeded generator, so every rank draws the same
global batch and takes its own slice of its clean and harmful rows. Each rank's loss is its *share* of the global
batch's loss (sums divided by global counts; the clean rows' scale, a batch statistic, is summed across ranks
first), so summing the gradients across ranks gives exactly the one-process gradient, up to the order of float
additions: the optimizer then takes the same step on every rank and the weights stay equal without broadcasting
them. Latent sampling is sharded the same way (each rank samples a slice of every chunk, then all ranks exchange
their latents), so a run on N processes equals the one-process run with the same global batch when the sampler's
noise does not depend on the chunk (the demo model seeds each prompt by its text). Only rank 0 writes files
(checkpoints, the latent cache, the HGR); every rank reads them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Tuple

import torch

from ..errors import TrainingInputError


@dataclass(frozen=True)
class DistContext:
    """This process' place in a distributed run."""

    rank: int
    world: int
    device: str = "cpu"  # where collectives run: CPU tensors for gloo, this rank's GPU for nccl

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, backend: Optional[str] = None) -> Optional["DistContext"]:
        """Join the process group ``torchrun`` describes (``WORLD_SIZE`` > 1); None for a single process.
        ``backend``: default ``nccl`` with CUDA, else ``gloo`` (CPU)."""
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return None
        import torch.distributed as dist

        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if not dist.is_initialized():
            dist.init_process_group(backend)
        device = "cpu"
        if dist.get_backend() == "nccl":
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
            torch.cuda.set_device(device)
        return cls(dist.get_rank(), dist.get_world_size(), device)

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        """The sum of ``t`` over every rank (a new tensor; gradients do not flow through it)."""
        import torch.distributed as dist

        out = t.detach().to(self.device, copy=True)
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out.to(t.device)

    def slice_of(self, n: int) -> torch.Tensor:
        """This rank's indices of ``n`` items (contiguous, sizes differing by at most one)."""
        return torch.arange(n).tensor_split(self.world)[self.rank]

    def check_batch(self, batch_size: int) -> None:
        if batch_size // 2 < self.world:
            raise TrainingInputError(f"batch_size {batch_size} is too small for {self.world} processes: each needs "
                                     f"a clean and a harmful row; use batch_size >= {2 * self.world}.")


def is_main_process() -> bool:
    """False only on a rank other than 0 of an initialised process group (those never write files)."""
    try:
        import torch.distributed as dist

        return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
    except Exception:
        return True


def shard_batch(b: Any, ctx: DistContext) -> Any:
    """This rank's rows of a global :class:`~.batch.Batch` (its slice of the clean rows, then of the harmful)."""
    from .batch import Batch

    n_c = b.n_clean_rows
    mine_c = ctx.slice_of(n_c)
    mine_h = ctx.slice_of(b.x.shape[0] - n_c)
    rows = torch.cat([mine_c, n_c + mine_h]).to(b.x.device)
    return Batch(n_clean_rows=len(mine_c), x=b.x[rows], sigma=b.sigma[rows], c=b.c.index(rows), u=b.u.index(rows),
                 h_cat=b.h_cat[mine_h], h_rw=b.h_rw[mine_h])


def loss_shares(ctx: DistContext, err: torch.Tensor, scale_h: torch.Tensor, n_c: int, delta_tokens: torch.Tensor,
                delta_pooled: Optional[torch.Tensor], batch_size: int
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """This rank's shares of the one-process run's harmful loss, clean loss and clean rows' mean |Delta|^2: sums
    over this rank's rows divided by the global counts (``err`` [rows], ``scale_h`` [harmful rows], ``delta_*``
    this rank's clean rows' Delta)."""
    n_h_global = batch_size // 2
    n_c_global = batch_size - n_h_global
    mean_scale = ctx.all_sum(scale_h.sum()) / n_h_global
    harm = (err[n_c:] / scale_h).sum() / n_h_global
    clean = (err[:n_c] / mean_scale).sum() / n_c_global
    per_row = delta_tokens[0].numel() if len(delta_tokens) else 1
    pen = delta_tokens.pow(2).sum() / (n_c_global * per_row)
    if delta_pooled is not None:
        pen = pen + delta_pooled.pow(2).sum() / (n_c_global * max(1, delta_pooled.shape[-1]))
    return harm, clean, pen


def sharded_sampler(sample_latents: Callable[[List[str]], torch.Tensor], ctx: DistContext
                    ) -> Callable[[List[str]], torch.Tensor]:
    """``sample_latents`` with each call's prompts split across the ranks and the latents exchanged, so every rank
    gets every latent and samples only its slice."""
    import torch.distributed as dist

    def sample(prompts: List[str]) -> torch.Tensor:
        mine = ctx.slice_of(len(prompts))
        local = sample_latents([prompts[i] for i in mine.tolist()]) if len(mine) else None
        shape = torch.zeros(6, dtype=torch.long, device=ctx.device)
        if local is not None:
            shape[:local.dim() - 1] = torch.tensor(local.shape[1:])
            shape[5] = local.dim() - 1
        dist.all_reduce(shape, op=dist.ReduceOp.MAX)
        item = tuple(int(s) for s in shape[:int(shape[5])])
        width = -(-len(prompts) // ctx.world)
        padded = torch.zeros((width,) + item, dtype=torch.float32, device=ctx.device)
        if local is not None:
            padded[:len(mine)] = local.detach().float().to(ctx.device)
        parts = [torch.zeros_like(padded) for _ in range(ctx.world)]
        dist.all_gather(parts, padded)
        sizes = [len(s) for s in torch.arange(len(prompts)).tensor_split(ctx.world)]
        return torch.cat([p[:n] for p, n in zip(parts, sizes)]).cpu()

    return sample


__all__ = ["DistContext", "is_main_process", "loss_shares", "shard_batch", "sharded_sampler"]
