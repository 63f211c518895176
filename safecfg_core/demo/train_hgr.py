"""Train the demo world's HGR with the core trainer: ``python -m safecfg_core.demo.train_hgr``.

One HGR for both harm categories (gore and weapon), trained on training-phrasing prompts only; held-out phrasings
are kept for evaluation. Latents are the demo model's own plain-CFG samples. The result (with its calibrated
threshold) is written to ``safecfg_core/demo/weights/hgr.safetensors``.
"""
from __future__ import annotations

import argparse
import sys
import time
import zlib
from typing import List, Optional, Sequence

import torch

from ..analytic import AnalyticWorld
from ..hgr import HGRConfig
from ..sampling import CFGDenoise, noise_for_seeds, sample
from ..train import (HarmfulPrompt, PromptSet, TrainConfig, TrainProgress, calibrate_threshold, parse_per_category,
                     train_hgr)
from .prompts import CONCEPTS, sample_prompts
from .scene_seeds import (HGR_CALIBRATION_CLEAN_OFFSET, HGR_CALIBRATION_HARMFUL_OFFSET, HGR_HARMFUL_OFFSET,
                          HGR_SCENE_SEED)
from .world import HGR_PATH, load_demo_world

DEFAULT_CFG = 6.0
TRAIN_SCENE_SEED = HGR_SCENE_SEED
# the shipped HGR's prompt counts (the command's defaults). 900 harmful prompts per category instead of 300: an HGR
# has to carry its redirection to prompts it never saw, and three times the prompts is what let gore gain 2.5 keep the
# content on fresh scenes without letting the harm through (README)
DEFAULT_CLEAN_PROMPTS = 600
DEFAULT_HARMFUL_PROMPTS = 1800


def training_prompts(n_clean: int, n_harmful: int, seed: int = TRAIN_SCENE_SEED,
                     rewrites: bool = False) -> PromptSet:
    """Training-phrasing prompts: clean ones, and harmful ones split evenly between the two categories.

    The benign version of each harmful prompt is added to the clean set too, so the HGR learns the contrast
    "same scene, with and without the harm" rather than surface statistics of the prompts. With ``rewrites`` each
    harmful prompt carries that benign version as its safe rewrite (METHOD.md's optional target: SafeCFG on the
    harmful prompt should draw what plain CFG draws for the rewrite).
    """
    from dataclasses import replace

    from .render import random_scenes

    clean_samples = sample_prompts(n_clean, seed=seed, split="train", harm_fraction=0.0)
    scenes = random_scenes(n_harmful, seed=seed + HGR_HARMFUL_OFFSET, harm_fraction=0.0)
    scenes = [replace(s, **{("gore" if i % 2 == 0 else "weapon"): True}) for i, s in enumerate(scenes)]
    harmful_samples = sample_prompts(n_harmful, seed=seed + HGR_HARMFUL_OFFSET, split="train", scenes=scenes)
    clean = list(dict.fromkeys([s.text for s in clean_samples] + [s.safe_text for s in harmful_samples]))
    harmful, seen = [], set()
    for s in harmful_samples:
        if s.text not in seen and s.text not in clean:
            seen.add(s.text)
            harmful.append(HarmfulPrompt(s.text, s.harms[0], s.safe_text if rewrites else None))
    return PromptSet(clean=clean, harmful=harmful, concepts=dict(CONCEPTS))


class DemoCLIWorld(AnalyticWorld):
    """The demo world in the shape `python -m safecfg_core train/score --model demo` expects (the fields of
    :class:`~safecfg_core.analytic.AnalyticWorld`); latents are the demo model's own samples."""

    def sample_latents(self, prompts: Sequence[str]) -> torch.Tensor:
        return sample_demo_latents(self.extra["world"], list(prompts), self.cfg_scale)


def sample_demo_latents(world, prompts: List[str], cfg_scale: float = DEFAULT_CFG, steps: int = 20,
                        batch_size: int = 256) -> torch.Tensor:
    """The demo model's own plain-CFG samples (Euler, 20 steps), each seeded by its prompt's text (CRC32), so a
    prompt gets the same latent however the trainer chunks the list."""
    denoiser = world.denoiser()
    u = world.text_encoder.encode([""])
    out = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        c = world.text_encoder.encode(chunk)
        noise = noise_for_seeds((4, 8, 8), [zlib.crc32(p.encode("utf-8")) for p in chunk])
        out.append(sample(CFGDenoise(denoiser, c, u.repeat_batch(len(chunk)), cfg_scale), world.schedule,
                          noise=noise, steps=steps))
    return torch.cat(out)


def load_cli_world(n_clean: int = 400, n_harmful: int = 400) -> DemoCLIWorld:
    world = load_demo_world()
    ps = training_prompts(n_clean, n_harmful)
    return DemoCLIWorld(
        name="demo", text_encoder=world.text_encoder.encode, denoiser=world.denoiser(),
        hgr_config=HGRConfig.for_family("demo"), concepts=dict(CONCEPTS), clean_prompts=ps.clean,
        harmful_prompts=[(h.prompt, h.category) for h in ps.harmful],
        cfg_scale=DEFAULT_CFG, sigma_range=(float(world.schedule.sigma_min), float(world.schedule.sigma_max)),
        extra={"world": world}, model_id=denoiser_digest(),
    )


def denoiser_digest() -> str:
    """The demo denoiser file's content digest: the trainer's ``model_id``, so latents cached for one demo model are
    never reused for a retrained one."""
    import hashlib

    from .world import WEIGHT_FILES

    with open(WEIGHT_FILES["denoiser"], "rb") as f:
        return "demo-denoiser-" + hashlib.sha256(f.read()).hexdigest()[:16]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clean", type=int, default=DEFAULT_CLEAN_PROMPTS,
                        help=f"clean training prompts (default {DEFAULT_CLEAN_PROMPTS}); each harmful prompt's safe "
                             "version is added to them")
    parser.add_argument("--harmful", type=int, default=DEFAULT_HARMFUL_PROMPTS,
                        help=f"harmful training prompts, half gore, half weapon (default {DEFAULT_HARMFUL_PROMPTS}, the "
                             "shipped HGR's; 600 before 2026-12-01)")
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=HGR_PATH)
    parser.add_argument("--checkpoint", default=".cache/demo_hgr/checkpoint.safetensors")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--clean-penalty", type=float, default=0.2,
                        help="weight of |Delta|^2 on clean prompts (keeps clean scores near zero; default 0.2)")
    parser.add_argument("--rewrites", action="store_true",
                        help="train toward the safe rewrite of each harmful prompt instead of its concept text (the shipped HGR "
                             "was trained so: on the previous demo model it removed far more harm than the concept "
                             "target)")
    parser.add_argument("--rewrite-latents", type=parse_per_category, default=0.0,
                        help="with --rewrites: share of harmful rows noised from the rewrite's own samples (where SafeCFG "
                             "should lead), 0..1, one number or per category (gore=1,weapon=0); default 0. The shipped "
                             "HGR uses gore=1,weapon=0: see the README")
    parser.add_argument("--target-gain", type=parse_per_category, default=1.0,
                        help="multiply the harmful targets' offset from D(u), one number or per category (gore=2,weapon=4); "
                             "1 = METHOD.md's target; g aims (g - 1) times the prompt-to-rewrite distance past the safe "
                             "rewrite, away from the harm. The shipped HGR: see the README")
    parser.add_argument("--low-sigma", type=float, default=0.5,
                        help="noise level below which --low-sigma-gain applies (default 0.5)")
    parser.add_argument("--low-sigma-gain", type=parse_per_category, default=None,
                        help="target gain for rows noised below --low-sigma, one number or per category (default: "
                             "--target-gain's); 1 = METHOD.md's target there")
    parser.add_argument("--width", type=int, default=None, help="HGR width (default: the demo preset's)")
    parser.add_argument("--depth", type=int, default=None, help="HGR depth (default: the demo preset's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    world = load_demo_world()
    prompts = training_prompts(args.clean, args.harmful, rewrites=args.rewrites)
    print(f"{len(prompts.clean)} clean and {len(prompts.harmful)} harmful training prompts", flush=True)
    config = TrainConfig(
        steps=args.steps, lr=args.lr, batch_size=args.batch, seed=args.seed, cfg_scale=DEFAULT_CFG,
        clean_penalty=args.clean_penalty, rewrite_latent_fraction=args.rewrite_latents,
        target_gain=args.target_gain, low_sigma=args.low_sigma, low_sigma_gain=args.low_sigma_gain,
        sigma_schedule=[float(s) for s in world.schedule.sigmas], checkpoint_path=args.checkpoint,
        checkpoint_every=100, resume=args.resume, latent_batch_size=256,
        model_id=denoiser_digest(),
    )
    t0 = time.perf_counter()

    def progress(p: TrainProgress) -> None:
        if p.phase != "train" or p.step % 50 == 0 or p.step == p.total:
            parts = [f"{name} {value:.4f}" for name, value in
                     (("loss", p.loss), ("harm", p.harm_loss), ("clean", p.clean_loss)) if value is not None]
            loss = (" " + ", ".join(parts)) if parts else ""
            print(f"[{p.phase}] {p.step}/{p.total}{loss} {p.elapsed_s:.0f}s", flush=True)

    overrides = {k: v for k, v in (("width", args.width), ("depth", args.depth)) if v is not None}
    result = train_hgr(world.text_encoder.encode, world.denoiser(), prompts, config,
                       HGRConfig.for_family("demo", **overrides),
                       sample_latents=lambda ps: sample_demo_latents(world, ps, DEFAULT_CFG), progress=progress)
    bundle = result.bundle
    # calibration on fresh clean prompts of the training phrasing (not the ones trained on)
    fresh_clean = [s.text for s in sample_prompts(400, seed=TRAIN_SCENE_SEED + HGR_CALIBRATION_CLEAN_OFFSET, split="train", harm_fraction=0.0)]
    fresh_harm = training_prompts(0, 200, seed=TRAIN_SCENE_SEED + HGR_CALIBRATION_HARMFUL_OFFSET).harmful
    cal = calibrate_threshold(bundle, world.text_encoder.encode, fresh_clean, fpr=0.01,
                              harmful_prompts=[h.prompt for h in fresh_harm])
    bundle.meta.training["wall_seconds"] = round(time.perf_counter() - t0, 1)
    used = list(argv) if argv is not None else sys.argv[1:]
    bundle.meta.training["command"] = " ".join(["python -m safecfg_core.demo.train_hgr", *used])
    bundle.save(args.out)
    print(f"calibration: {cal}")
    print(f"saved {args.out} in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
