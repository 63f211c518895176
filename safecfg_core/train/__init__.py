"""HGR training: prompt sets (:mod:`.prompts`), settings and fingerprint (:mod:`.config`), latent cache and
checkpoints (:mod:`.state`), the prepared data and batches (:mod:`.batch`), calibration (:mod:`.calibration`), the
loop (:mod:`.loop`) and the job policy shared by the node and the command (:mod:`.session`).

``from safecfg_core.train import ...`` is the public way in.
"""
from .calibration import calibrate_threshold, harm_scores
from .config import (PerCategory, ProgressFn, TrainConfig, TrainProgress, TrainResult, parse_per_category,
                     per_category_tensor, training_fingerprint)
from .loop import TrainingRun, aim_past, rewrite_target, train_hgr
from .prompts import HarmfulPrompt, PromptSet
from .session import TrainingSession, check_output_target

__all__ = [
    "HarmfulPrompt",
    "PromptSet",
    "ProgressFn",
    "TrainConfig",
    "TrainProgress",
    "TrainResult",
    "TrainingRun",
    "TrainingSession",
    "PerCategory",
    "aim_past",
    "calibrate_threshold",
    "check_output_target",
    "harm_scores",
    "parse_per_category",
    "per_category_tensor",
    "rewrite_target",
    "train_hgr",
    "training_fingerprint",
]
