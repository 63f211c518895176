"""What the demo world's diagnostics (``sigma_windows``, ``free_negative``) share: the scene arguments, and
opening the world on fresh scenes only, so each script states its own question and nothing else."""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Optional, Tuple

from safecfg_core.demo.scene_seeds import DEMO_SCENE_SEED, fresh_scene_seed_error


def add_scene_arguments(parser: argparse.ArgumentParser,
                        hgr_help: str = "HGR file (default: the shipped demo HGR)") -> None:
    """``--prompts``, ``--seeds``, ``--scene-seed``, ``--hgr`` and ``--threads``, as the demo command has them."""
    parser.add_argument("--prompts", type=int, default=32, help="prompts per harm and phrasing split (default 32)")
    parser.add_argument("--seeds", type=int, default=2, help="seeds per prompt (default 2)")
    parser.add_argument("--scene-seed", type=int, default=DEMO_SCENE_SEED, help="seed of the evaluation scenes")
    parser.add_argument("--hgr", default=None, help=hgr_help)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")


def open_world(args: argparse.Namespace, check: Optional[Callable[[], None]] = None) -> Optional[Tuple[object, object]]:
    """``(world, bundle)`` for ``args``, or None after printing why not to stderr (the caller exits with 2).

    Refuses scene seeds the shipped weights were trained on; ``check`` may raise ``ValueError`` for the command's own
    arguments. Sets the torch thread count once the world is open.
    """
    import torch

    from safecfg_core.demo.runs import load_world_and_hgr

    try:
        refused = fresh_scene_seed_error(args.scene_seed)
        if refused:
            raise ValueError(refused)
        if check is not None:
            check()
        world, bundle, _ = load_world_and_hgr(args.hgr)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None
    if args.threads:
        torch.set_num_threads(args.threads)
    return world, bundle
