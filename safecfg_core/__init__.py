"""safecfg_core: the ComfyUI-independent SafeCFG library (torch only).

Never imports ComfyUI. Modules import each other relatively so the package works both installed
(``import safecfg_core``) and vendored inside the ComfyUI node pack.

The main entry points: :class:`HGRBundle` (load/save an HGR), :class:`SafeGuidance` (turn ``(c, u)`` into the
redirected negative ``u*``), :class:`TrainingSession` / :func:`train_hgr` (train an HGR against any denoiser), and
``python -m safecfg_core``.
"""
from .conditioning import TOKEN_CHUNK, Cond, Denoiser, TextEncoder
from .errors import (CheckpointMismatch, HGRExistsError, HGRFileError, HGRMismatchError, NonFiniteInputError,
                     SafeCFGError, TrainingCancelled, TrainingInputError)
from .guidance import GateConfig, SafeGuidance, cfg_combine, prompt_harm_score, score_level_harm
from .hgr import HarmfulGuidanceRedirector, HGRBundle, HGRConfig, HGRMeta
from .train import PromptSet, TrainConfig, TrainingSession, train_hgr

__all__ = [
    "Cond", "Denoiser", "TextEncoder", "TOKEN_CHUNK",
    "SafeCFGError", "HGRFileError", "HGRMismatchError", "NonFiniteInputError", "TrainingInputError",
    "TrainingCancelled", "CheckpointMismatch", "HGRExistsError",
    "GateConfig", "SafeGuidance", "cfg_combine", "prompt_harm_score", "score_level_harm",
    "HarmfulGuidanceRedirector", "HGRBundle", "HGRConfig", "HGRMeta",
    "PromptSet", "TrainConfig", "TrainingSession", "train_hgr",
]
__version__ = "0.1.0"
