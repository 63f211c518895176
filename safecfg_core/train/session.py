"""One training job with an output file: the policy the Train HGR node and the ``train`` command share.

A session decides, before anything is sampled, whether training is needed at all: an HGR at the output path that
was trained from exactly these inputs (same fingerprint) is loaded instead; any other file there is never replaced
unless the caller asked to retrain. It resumes a checkpoint only when the same settings wrote it, keeps a
checkpoint of the completed steps on every interruption, and says everything through typed exceptions
(:class:`HGRExistsError`, :class:`CheckpointMismatch`, :class:`TrainingCancelled`), never through message text.
"""
from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, List, Mapping, Optional, Sequence, Union

import torch

from ..conditioning import Denoiser, TextEncoder
from ..errors import CheckpointMismatch, HGRExistsError, HGRFileError, TrainingInputError
from ..files import file_kind
from ..hgr import HGRBundle, HGRConfig, read_training_record
from .batch import default_hgr_config
from .config import ProgressFn, TrainConfig, TrainResult, training_fingerprint
from .ddp import DistContext
from .loop import TrainingRun
from .prompts import PromptSet

log = logging.getLogger("safecfg")


def check_output_target(path: Path) -> None:
    """Refuse an output path that can never hold the HGR (a folder, a pipe, a device) before any work is done."""
    try:
        kind = file_kind(path)
    except OSError as exc:
        raise TrainingInputError(f"Cannot use {path} as the HGR file ({exc.strerror or exc}); choose another name.") from None
    if kind == "folder":
        raise TrainingInputError(f"{path} is a folder, so the trained HGR cannot be saved there; choose another name.")
    if kind == "special":
        raise TrainingInputError(
            f"{path} is not a regular file (a pipe, socket or device), so the trained HGR cannot be saved there; "
            "remove it or choose another name."
        )


class TrainingSession:
    """Train an HGR into ``output_path`` (optional) with the skip / resume / cancel policy described above.

    ``retrain``: replace an existing output and start over from step 0 (the checkpoint is overwritten).
    ``restart_on_mismatch``: a checkpoint written by other settings is replaced by a fresh run instead of raising
    :class:`CheckpointMismatch` (``mismatch`` then holds the exception, for the caller to report).
    ``keep_checkpoint``: leave the checkpoint after a successful run (the command keeps it; the node removes it).
    ``record``: entries added to a newly trained file's training metadata (the command records its command line).
    After an interruption, ``checkpoint_step`` is the step the kept checkpoint holds (None: none written).
    """

    def __init__(self, text_encoder: TextEncoder, denoiser: Denoiser, prompts: PromptSet, config: TrainConfig,
                 hgr_config: Optional[HGRConfig] = None, *, output_path: Union[str, os.PathLike, None] = None,
                 retrain: bool = False, sample_latents: Optional[Callable[[List[str]], torch.Tensor]] = None,
                 latents: Optional[Mapping[str, torch.Tensor]] = None, progress: Optional[ProgressFn] = None,
                 restart_on_mismatch: bool = False, keep_checkpoint: bool = True,
                 calibration_prompts: Optional[Sequence[str]] = None, dist: Optional[DistContext] = None,
                 record: Optional[Mapping[str, Any]] = None) -> None:
        self.config = config.validate()
        self.prompts = prompts.validate()
        self.text_encoder, self.denoiser = text_encoder, denoiser
        self.hgr_config = hgr_config or default_hgr_config(text_encoder, config.negative_prompt)
        self.calibration_prompts = None if calibration_prompts is None else list(calibration_prompts)
        self.fingerprint = training_fingerprint(prompts, config, self.hgr_config, self.calibration_prompts)
        self.output_path = Path(output_path) if output_path is not None else None
        self.retrain, self.restart_on_mismatch, self.keep_checkpoint = retrain, restart_on_mismatch, keep_checkpoint
        self.sample_latents, self.latents, self.progress = sample_latents, latents, progress
        self.dist = dist  # several processes: every rank trains, rank 0 alone writes the file
        self.record = dict(record or {})  # added to a newly trained file's training metadata (e.g. its command)
        self.checkpoint_step: Optional[int] = None
        self.mismatch: Optional[CheckpointMismatch] = None
        if self.output_path is not None:
            check_output_target(self.output_path)

    @property
    def checkpoint_path(self) -> Optional[str]:
        return self.config.checkpoint_path

    def existing(self) -> Optional[HGRBundle]:
        """The HGR at ``output_path`` when it was trained from exactly these inputs (and no retrain was asked).

        Raises :class:`HGRExistsError` when another file is there, so it is never replaced by accident.
        """
        path = self.output_path
        if path is None or self.retrain or not path.exists():
            return None
        check_output_target(path)
        how = "ask to retrain (the node's retrain switch, the command's --retrain) to replace it"
        try:
            record = read_training_record(path)
        except HGRFileError as exc:
            raise HGRExistsError(
                f"{path} already exists and is not an HGR this pack can read ({exc}). Nothing was trained and the file "
                f"is unchanged: choose another name, or {how}.", path=str(path)) from None
        if record.get("fingerprint") != self.fingerprint:
            raise HGRExistsError(
                f"{path} already exists and was trained from other prompts or settings. Nothing was trained and the "
                f"file is unchanged: choose another name to keep both, or {how}.", path=str(path))
        return HGRBundle.load(path)

    def run(self) -> TrainResult:
        """Load the up-to-date HGR, or train (resuming a matching checkpoint), save to ``output_path`` and return."""
        found = self.existing()
        if found is not None:
            record = found.meta.training
            history = [float(v) for v in record.get("loss_history") or []]
            return TrainResult(found, history, [], [], dict(record), reused=True)
        config = replace(self.config, resume=False) if self.retrain else self.config
        try:
            result = self._train(config)
        except CheckpointMismatch as exc:
            if not self.restart_on_mismatch:
                raise
            self.mismatch = exc
            log.info("SafeCFG: %s Starting over.", exc)
            result = self._train(replace(config, resume=False))
        result.bundle.meta.training.update(self.record)
        if self.output_path is not None and (self.dist is None or self.dist.is_main):
            check_output_target(self.output_path)
            result.bundle.save(self.output_path)
        if not self.keep_checkpoint and self.checkpoint_path and (self.dist is None or self.dist.is_main):
            Path(self.checkpoint_path).unlink(missing_ok=True)
        return result

    def _train(self, config: TrainConfig) -> TrainResult:
        run = TrainingRun(self.text_encoder, self.denoiser, self.prompts, config, self.hgr_config,
                          self.sample_latents, self.latents, self.progress, self.calibration_prompts, self.dist)
        try:
            return run.run()
        finally:
            self.checkpoint_step = run.state.saved_step if run.state is not None else None


__all__ = ["TrainingSession", "check_output_target"]
