"""The scene seeds of the demo world: which ones training used, which ones an evaluation draws, and the check that
keeps the two apart.

Every scene in the demo world comes from ``random_scenes(n, seed)``, so a seed *is* a set of scenes. The demo command
promises fresh scenes; with ``--scene-seed 4242`` it would silently re-measure the HGR's own training prompts (this
happened once while choosing an HGR). The training scripts take their seeds from here, and the demo command refuses an
evaluation seed that lands on one of them.
"""
from __future__ import annotations

from typing import FrozenSet, List, Optional

# the seed ``experiments/train_world.py --seed`` had for the shipped weights (their metadata records it)
WORLD_SEED = 0
# offsets from the world seed of the denoiser's training prompts: the prompts' scenes, and one per concept-only prompt
# ("blood, gore", "knife, weapon")
DENOISER_PROMPTS_OFFSET = 21
DENOISER_CONCEPT_OFFSET = 30

# offsets from the world seed of the render pools the VAE and the evaluator were trained on (scenes without prompts:
# an evaluation on them would have the evaluator judge renders of scenes it was trained on)
VAE_POOL_OFFSET = 11
EVALUATOR_POOL_OFFSET = 41

# ``train_hgr``: its clean prompts, harmful prompts, and the fresh prompts it calibrates the threshold on
HGR_SCENE_SEED = 4242
HGR_HARMFUL_OFFSET = 1
HGR_CALIBRATION_CLEAN_OFFSET = 7
HGR_CALIBRATION_HARMFUL_OFFSET = 9

# the demo command's default evaluation scenes (the README's headline table), and the other sets docs/experiments.md uses
DEMO_SCENE_SEED = 20261123
OTHER_SCENE_SEEDS = (777, 90210, 31337)
# an evaluation's scenes: one seed per phrasing split (training, held-out) and kind (clean, gore, weapon)
EVAL_SPLIT_STRIDE = 100
EVAL_KINDS = ("clean", "gore", "weapon")
EVAL_SPLITS = ("train", "heldout")


def denoiser_training_seeds(world_seed: int = WORLD_SEED, n_concepts: int = 2) -> FrozenSet[int]:
    """Scene seeds the denoiser's training prompts came from."""
    return frozenset({world_seed + DENOISER_PROMPTS_OFFSET}
                     | {world_seed + DENOISER_CONCEPT_OFFSET + j for j in range(n_concepts)})


def render_pool_training_seeds(world_seed: int = WORLD_SEED) -> FrozenSet[int]:
    """Scene seeds of the VAE's and the evaluator's training render pools."""
    return frozenset({world_seed + VAE_POOL_OFFSET, world_seed + EVALUATOR_POOL_OFFSET})


def hgr_training_seeds(hgr_seed: int = HGR_SCENE_SEED) -> FrozenSet[int]:
    """Scene seeds ``train_hgr`` trained and calibrated the shipped HGR on."""
    return frozenset(hgr_seed + k for k in (0, HGR_HARMFUL_OFFSET, HGR_CALIBRATION_CLEAN_OFFSET,
                                            HGR_CALIBRATION_HARMFUL_OFFSET))


def evaluation_seed(scene_seed: int, split_no: int, kind_no: int) -> int:
    """The seed of one split's scenes of one kind in an evaluation with ``scene_seed``."""
    return scene_seed + EVAL_SPLIT_STRIDE * split_no + kind_no


def evaluation_seeds(scene_seed: int) -> List[int]:
    return [evaluation_seed(scene_seed, s, k) for s in range(len(EVAL_SPLITS)) for k in range(len(EVAL_KINDS))]


def training_seeds_reused(scene_seed: int) -> List[int]:
    """The seeds an evaluation with ``scene_seed`` would share with the shipped weights' training (empty if none)."""
    used = denoiser_training_seeds() | render_pool_training_seeds() | hgr_training_seeds()
    return sorted(set(evaluation_seeds(scene_seed)) & used)


def fresh_scene_seed_error(scene_seed: int) -> Optional[str]:
    """Why ``scene_seed`` may not be used for measuring (it reuses training scenes), or None if it is fresh."""
    reused = training_seeds_reused(scene_seed)
    if not reused:
        return None
    return (f"--scene-seed {scene_seed} would draw scenes from seeds {reused}, which the shipped demo weights were "
            f"trained on, so the numbers would not be on fresh scenes. Pick another --scene-seed (the default is "
            f"{DEMO_SCENE_SEED}; the other measured sets are {', '.join(map(str, OTHER_SCENE_SEEDS))}).")
