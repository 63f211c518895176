"""What a training run keeps on disk: the model's own latents (cached) and checkpoints (weights, optimizer, RNG).

The latent cache is written as it grows: each batch of newly sampled latents goes to a small shard file next to the
cache, and the shards are merged into the cache file once, when every latent is drawn. So sampling thousands of
prompts writes each latent about twice, never the whole cache per batch, and a run cut short keeps the shards it
wrote. A checkpoint is itself a loadable HGR file with the optimizer and RNG state under ``train.*``; it records
the run's fingerprint and settings and is resumed only by a run with the same ones.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import torch

from ..errors import CheckpointMismatch, HGRFileError, TrainingInputError
from ..guidance import check_finite
from ..hgr import TRAIN_STATE_PREFIX, HGRBundle, atomic_save_safetensors, load_with_extras
from .ddp import is_main_process

LATENT_CACHE_FORMAT = "safecfg-latent-cache"


def prompt_key(prompt: str) -> str:
    return "latent." + hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:32]


class LatentCache:
    """The model's own latents per prompt at ``path`` (None: no cache), valid only for one ``identity``.

    ``identity`` names the model and sampler settings that drew the latents; a cache or shard with another identity
    is ignored (its latents would teach this model's HGR the wrong pictures) and replaced once this one's are drawn.
    """

    def __init__(self, path: Optional[Path], identity: str) -> None:
        self.path = path
        self.identity = identity

    def _metadata(self) -> Dict[str, str]:
        return {"safecfg.format": LATENT_CACHE_FORMAT, "safecfg.model_id": self.identity}

    def shards(self) -> List[Path]:
        if self.path is None:
            return []
        return sorted(self.path.parent.glob(self.path.name + ".part*.safetensors"))

    def _read(self, path: Path) -> Dict[str, torch.Tensor]:
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                if (f.metadata() or {}).get("safecfg.model_id", "") != self.identity:
                    return {}
                return {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:
            raise TrainingInputError(f"Latent cache {path} is unreadable ({exc}); delete it and it will be rebuilt.") from None

    def load(self) -> Dict[str, torch.Tensor]:
        """Every cached latent of this identity: the merged cache file and any shards a cut-short run left."""
        out: Dict[str, torch.Tensor] = {}
        if self.path is not None and self.path.is_file():
            out.update(self._read(self.path))
        for shard in self.shards():
            out.update(self._read(shard))
        return out

    def append(self, latents: Mapping[str, torch.Tensor]) -> None:
        """Write newly drawn latents as one more shard (the cache file itself is not rewritten)."""
        if self.path is None or not latents or not is_main_process():  # one writer in a distributed run
            return
        index = len(self.shards())
        shard = self.path.with_name(f"{self.path.name}.part{index:06d}.safetensors")
        atomic_save_safetensors(latents, self._metadata(), shard)

    def merge(self, latents: Mapping[str, torch.Tensor]) -> None:
        """Write ``latents`` (everything this run uses) as the cache file, once, and remove the shards."""
        shards = self.shards()
        if self.path is None or not shards or not is_main_process():
            return
        merged = self.load()
        merged.update(latents)
        atomic_save_safetensors(merged, self._metadata(), self.path)
        for shard in shards:
            shard.unlink(missing_ok=True)


def gather_latents(prompts: List[str], sample_latents: Optional[Callable[[List[str]], torch.Tensor]],
                   latents: Optional[Mapping[str, torch.Tensor]], cache: LatentCache, batch: int,
                   report: Callable[[int, int], None]) -> Dict[str, torch.Tensor]:
    """Latent ``[n_i, C, H, W]`` per prompt: given, cached on disk (by the same model), or sampled (and cached) once."""
    out: Dict[str, torch.Tensor] = {}
    cached = cache.load()
    missing: List[str] = []
    for p in prompts:
        if latents is not None and p in latents:
            t = latents[p]
            out[p] = t.unsqueeze(0) if t.dim() == 3 else t
        elif prompt_key(p) in cached:
            out[p] = cached[prompt_key(p)]
        else:
            missing.append(p)
    del cached
    if missing and sample_latents is None:
        raise TrainingInputError(
            f"No latents for {len(missing)} prompt(s) (first: {missing[0]!r}); pass sample_latents (the model's own "
            "plain-CFG sampler) or precomputed latents for every prompt."
        )
    done = len(prompts) - len(missing)
    if missing:  # say at once how many are left, so a long sampling phase is never a silent 0%
        report(done, len(prompts))
    for i in range(0, len(missing), batch):
        chunk = missing[i:i + batch]
        x = sample_latents(chunk)  # type: ignore[misc]
        if x.shape[0] != len(chunk):
            raise TrainingInputError(f"sample_latents returned {x.shape[0]} latents for {len(chunk)} prompts.")
        check_finite("sampled latents", x)
        fresh = {}
        for p, row in zip(chunk, x):
            out[p] = row.detach().float().cpu().unsqueeze(0)
            fresh[prompt_key(p)] = out[p]
        cache.append(fresh)
        done += len(chunk)
        report(done, len(prompts))
    if missing:
        cache.merge({prompt_key(p): out[p] for p in missing})
    return out


# ----------------------------------------------------------------------------------------------------------
# Checkpoints


@dataclass
class RunState:
    """Everything a training run changes step by step; what a checkpoint saves and a resume restores.

    ``rng`` is the generator's state after the last *completed* step, so a checkpoint written while a step is cut
    short still resumes exactly where the completed steps end.
    """

    bundle: HGRBundle
    opt: torch.optim.Optimizer
    gen: torch.Generator
    rng: torch.Tensor
    step: int = 0
    history: List[float] = field(default_factory=list)
    harm_hist: List[float] = field(default_factory=list)
    clean_hist: List[float] = field(default_factory=list)
    counters: Dict[str, int] = field(default_factory=lambda: {"denoiser_calls": 0, "denoiser_rows": 0})
    resumed_from: Optional[int] = None
    saved_step: Optional[int] = None

    def complete_step(self, loss: float, harm: float, clean: float) -> None:
        self.step += 1
        self.history.append(loss)
        self.harm_hist.append(harm)
        self.clean_hist.append(clean)
        self.rng = self.gen.get_state()


def _optimizer_tensors(opt: torch.optim.Optimizer) -> Tuple[Dict[str, torch.Tensor], str]:
    sd = opt.state_dict()
    tensors: Dict[str, torch.Tensor] = {}
    for idx, state in sd["state"].items():
        for name, value in state.items():
            t = value if isinstance(value, torch.Tensor) else torch.tensor(value, dtype=torch.float64)
            tensors[f"{TRAIN_STATE_PREFIX}opt.{idx}.{name}"] = t
    return tensors, json.dumps(sd["param_groups"])


def _restore_optimizer(opt: torch.optim.Optimizer, extras: Mapping[str, torch.Tensor], groups_json: str) -> None:
    state: Dict[int, Dict[str, torch.Tensor]] = {}
    prefix = f"{TRAIN_STATE_PREFIX}opt."
    for key, value in extras.items():
        if key.startswith(prefix):
            idx, name = key[len(prefix):].split(".", 1)
            state.setdefault(int(idx), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": json.loads(groups_json)})


def save_checkpoint(path: str, state: RunState, fingerprint: str, settings: Mapping[str, Any]) -> None:
    """Write the completed steps of ``state`` to ``path`` (atomically: a crash leaves the previous checkpoint)."""
    opt_tensors, groups = _optimizer_tensors(state.opt)
    extra = dict(opt_tensors)
    extra[f"{TRAIN_STATE_PREFIX}rng"] = state.rng
    extra[f"{TRAIN_STATE_PREFIX}history"] = torch.tensor(
        [state.history, state.harm_hist, state.clean_hist], dtype=torch.float64).reshape(3, -1)
    state.bundle.meta.training = {"checkpoint_step": state.step, "steps": settings.get("steps"),
                                  "fingerprint": fingerprint}
    state.bundle.save(path, extra_tensors=extra, extra_metadata={
        "safecfg.checkpoint": json.dumps({"step": state.step, "fingerprint": fingerprint, "param_groups": groups,
                                          "counters": state.counters, "settings": dict(settings)}, default=str),
    })
    state.saved_step = state.step


def _differences(recorded: Mapping[str, Any], settings: Mapping[str, Any]) -> Dict[str, Tuple[Any, Any]]:
    now = json.loads(json.dumps(dict(settings), default=str))
    return {k: (recorded.get(k), now.get(k)) for k in sorted(set(recorded) | set(now)) if recorded.get(k) != now.get(k)}


def restore_checkpoint(path: str, state: RunState, fingerprint: str, settings: Mapping[str, Any],
                       device: torch.device) -> None:
    """Load the checkpoint at ``path`` into ``state``; :class:`CheckpointMismatch` when other inputs wrote it."""
    try:
        loaded, extras, raw = load_with_extras(path, device=device)
    except HGRFileError as exc:
        raise TrainingInputError(f"Cannot resume: {exc}") from None
    info = json.loads(raw.get("safecfg.checkpoint", "null") or "null")
    if not info:
        raise TrainingInputError(
            f"Cannot resume from {path}: it is a finished HGR, not a training checkpoint. "
            "Pass another checkpoint path or resume=False."
        )
    if info.get("fingerprint") != fingerprint:
        diffs = _differences(info.get("settings") or {}, settings)
        said = "; ".join(f"{k}: {a!r} then, {b!r} now" for k, (a, b) in list(diffs.items())[:4])
        raise CheckpointMismatch(
            f"Cannot resume from {path}: it was written by a run with different prompts or settings"
            + (f" ({said})" if said else "") + ". A checkpoint continues only the run that wrote it; use the same "
            "settings, or start over (the checkpoint is then replaced).", checkpoint_path=str(path), differences=diffs,
        )
    net = state.bundle.net
    net.load_state_dict(loaded.net.state_dict())
    for p in net.parameters():
        p.requires_grad_(True)
    _restore_optimizer(state.opt, {k: v.to(device) if "step" not in k else v for k, v in extras.items()},
                       info["param_groups"])
    state.gen.set_state(extras[f"{TRAIN_STATE_PREFIX}rng"])
    state.rng = state.gen.get_state()
    hist = extras[f"{TRAIN_STATE_PREFIX}history"]
    state.history, state.harm_hist, state.clean_hist = (hist[i].tolist() for i in range(3))
    state.counters.update(info.get("counters", {}))
    state.step = state.resumed_from = state.saved_step = int(info["step"])


__all__ = ["LatentCache", "RunState", "gather_latents", "prompt_key", "restore_checkpoint", "save_checkpoint"]
