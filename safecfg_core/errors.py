"""The pack's exception types.

Every error a user can trigger (a wrong file, a model/HGR mismatch, NaN conditioning, a bad prompt list) gets
its own type so the ComfyUI nodes can show it as-is and tests can check it precisely. Messages always say
what was wrong *and* what to do about it. The input-validation errors subclass ``ValueError`` so generic
callers that catch ``ValueError`` keep working.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple


INPLACE_AUTOGRAD_HINT = (
    "this ComfyUI's transformer blocks for this model add in place (`x += n`), which autograd cannot differentiate "
    "through, so nothing can be trained through it here (Chroma in ComfyUI 0.3.64); ComfyUI versions that write "
    "`x = n + x` work")
"""Why training through some ComfyUI models fails at the first backward pass (autograd's "modified by an inplace
operation" error), in words a user can act on; shared by the Train HGR node and the bench."""


def is_inplace_autograd_error(exc: BaseException) -> bool:
    """Whether ``exc`` is autograd's refusal to differentiate through an in-place update."""
    return isinstance(exc, RuntimeError) and "inplace operation" in str(exc)


class SafeCFGError(Exception):
    """Base class of every exception this pack raises on purpose."""


class HGRFileError(SafeCFGError, ValueError):
    """An HGR file could not be used: missing, not safetensors, a pickle, truncated, not an HGR, bad version."""


class HGRMismatchError(SafeCFGError, ValueError):
    """The HGR was trained for a different text-encoder width / model family than the model it meets."""


class NonFiniteInputError(SafeCFGError, ValueError):
    """A conditioning, latent or HGR output contains NaN or inf (never passed on silently)."""


class TrainingInputError(SafeCFGError, ValueError):
    """The prompt set, training configuration or checkpoint given to HGR training is unusable."""


class CheckpointMismatch(TrainingInputError):
    """A training checkpoint exists but was written by other inputs or settings, so resuming it would not give the
    run that was asked for. ``checkpoint_path`` is the file; ``differences`` names the settings that differ."""

    def __init__(self, message: str, checkpoint_path: Optional[str] = None,
                 differences: Optional[Dict[str, Tuple[Any, Any]]] = None) -> None:
        super().__init__(message)
        self.checkpoint_path = checkpoint_path
        self.differences = dict(differences or {})


class HGRExistsError(TrainingInputError):
    """Training would replace an existing HGR file that was not trained from the same inputs (or is not an HGR this
    pack can read). Nothing is trained; ``path`` is the file, kept as it was."""

    def __init__(self, message: str, path: Optional[str] = None) -> None:
        super().__init__(message)
        self.path = path


class TrainingCancelled(SafeCFGError):
    """Training stopped on request (progress callback); the last checkpoint, if any, is kept.

    ``step`` is the number of completed optimisation steps and ``checkpoint_path`` the file that holds them
    (None when training ran without checkpoints), so a caller can resume from exactly there.
    """

    def __init__(self, message: str = "HGR training was cancelled.", step: int = 0,
                 checkpoint_path: Optional[str] = None) -> None:
        super().__init__(message)
        self.step = step
        self.checkpoint_path = checkpoint_path


__all__ = [
    "SafeCFGError",
    "HGRFileError",
    "HGRMismatchError",
    "NonFiniteInputError",
    "TrainingInputError",
    "CheckpointMismatch",
    "HGRExistsError",
    "TrainingCancelled",
]
