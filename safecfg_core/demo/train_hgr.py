"""Train the demo world's HGR with the core trainer: ``python -m safecfg_core.demo.train_hgr``.

One HGR for both harm categories (gore and weapon), trained on training-phrasing prompts only; held-out phrasings
are kept for evaluation. Latents are the demo model's own plain-CFG samples. The result (with its calibrated
threshold) is written to ``safecfg_core/demo/weights/hgr.safetensors``. ``--augment-clean``, ``--augment-harmful``
and ``--calibrate-broad`` add the augmented prompts of :mod:`.augment` (docs/robustness.md: harm, not novelty);
``--init-from`` fine-tunes an existing HGR.
"""
from __future__ import annotations

import argparse
import sys
import time
import zlib
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from ..analytic import ModelSetup
from ..conditioning import Cond
from ..hgr import HGRBundle, HGRConfig
from ..sampling import CFGDenoise, noise_for_seeds, sample
from ..train import (HarmfulPrompt, PromptSet, TrainConfig, TrainProgress, calibrate_threshold, parse_per_category,
                     train_hgr)
from .augment import augment_clean as augment_clean_prompts
from .augment import augment_harmful as augment_harmful_prompts
from .prompts import CONCEPTS, sample_prompts
from .scene_seeds import (HGR_CALIBRATION_CLEAN_OFFSET, HGR_CALIBRATION_HARMFUL_OFFSET, HGR_HARMFUL_OFFSET,
                          HGR_SCENE_SEED)
from .world import HGR_PATH, load_demo_world

DEFAULT_CFG = 6.0
TRAIN_SCENE_SEED = HGR_SCENE_SEED
# the shipped HGR's prompt counts (the command's defaults). 900 harmful prompts per category instead of 300: an HGR
# has to carry its redirection to prompts it never saw, and three times the prompts is what let gore gain 2.5 keep the
# content on fresh scenes without letting the harm through (docs/experiments.md)
DEFAULT_CLEAN_PROMPTS = 600
DEFAULT_HARMFUL_PROMPTS = 1800
# seeds of the augmented prompts, offsets from the scene seed past the ones scene_seeds.py hands out
AUGMENT_CLEAN_OFFSET = 101
AUGMENT_HARMFUL_OFFSET = 103
AUGMENT_CALIBRATION_OFFSET = 107


def training_prompts(n_clean: int, n_harmful: int, seed: int = TRAIN_SCENE_SEED,
                     rewrites: bool = False, augment_clean: int = 0, augment_harmful: int = 0,
                     aliases: Optional[Dict[str, str]] = None) -> PromptSet:
    """Training-phrasing prompts: clean ones, and harmful ones split evenly between the two categories.

    The benign version of each harmful prompt is added to the clean set too, so the HGR learns the contrast
    "same scene, with and without the harm" rather than surface statistics of the prompts. With ``rewrites`` each
    harmful prompt carries that benign version as its safe rewrite (METHOD.md's optional target: SafeCFG on the
    harmful prompt should draw what plain CFG draws for the rewrite).

    ``augment_clean`` / ``augment_harmful`` add that many prompts from :mod:`.augment` (dressed clean prompts,
    near-misses and other subjects; harm in more words, misspelt, doubled and buried), so the HGR learns harm
    rather than novelty. Each augmented prompt's latents are its undressed source prompt's: ``aliases`` (if given)
    receives ``{augmented prompt: source prompt}`` for the latent sampler.
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
    alias = aliases if aliases is not None else {}
    if augment_clean:
        for text, source in augment_clean_prompts(clean, augment_clean, seed + AUGMENT_CLEAN_OFFSET, clean_samples):
            if text not in seen and text not in alias and text not in clean:
                alias[text] = source
                clean.append(text)
    if augment_harmful and harmful_samples:
        for a in augment_harmful_prompts(harmful_samples, augment_harmful, seed + AUGMENT_HARMFUL_OFFSET):
            if a.text in seen or a.text in alias or a.text in clean:
                continue
            seen.add(a.text)
            alias[a.text] = a.latent_of
            if a.safe_text not in clean:  # the same contrast as above: the dressed scene, with and without the harm
                alias.setdefault(a.safe_text, a.safe_latent_of)
                clean.append(a.safe_text)
            harmful.append(HarmfulPrompt(a.text, a.category, a.safe_text if rewrites else None))
    return PromptSet(clean=clean, harmful=harmful, concepts=dict(CONCEPTS))


class DemoModelSetup(ModelSetup):
    """The demo model's setup for `python -m safecfg_core train/score --model demo` (the fields of
    :class:`~safecfg_core.analytic.ModelSetup`); latents are the demo model's own samples."""

    def sample_latents(self, prompts: Sequence[str]) -> torch.Tensor:
        return sample_demo_latents(self.extra["world"], list(prompts), self.cfg_scale)

    @property
    def sigma_schedule(self) -> List[float]:
        """The noise levels training draws from: the demo model's own 1000-step schedule, uniformly (as this
        module's command and ComfyUI's training path do), not log-uniform over its range."""
        return [float(s) for s in self.extra["world"].schedule.sigmas]


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


def sample_aliased_latents(world, prompts: List[str], aliases: Dict[str, str],
                           memo: Optional[Dict[str, torch.Tensor]] = None) -> torch.Tensor:
    """:func:`sample_demo_latents` for ``prompts``, each augmented one drawn as its source prompt (the same latent,
    since the seed is the source's text): the dressing words draw nothing in the demo world, and this spares
    sampling thousands of extra prompts. Each distinct source is sampled once (across calls, with ``memo``)."""
    memo = {} if memo is None else memo
    sources = [aliases.get(p, p) for p in prompts]
    todo = [p for p in dict.fromkeys(sources) if p not in memo]
    if todo:
        memo.update(zip(todo, sample_demo_latents(world, todo, DEFAULT_CFG)))
    return torch.stack([memo[p] for p in sources])


def load_demo_setup(n_clean: int = 400, n_harmful: int = 400) -> DemoModelSetup:
    world = load_demo_world()
    ps = training_prompts(n_clean, n_harmful)
    return DemoModelSetup(
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


class MemoEncoder:
    """The demo text encoder with each text encoded once: the trainer encodes every rewrite (already a clean prompt)
    again and its calibration encodes the whole training set again, which on CPU costs as much as the training."""

    def __init__(self, encode) -> None:
        self.encode = encode
        self.rows: Dict[str, torch.Tensor] = {}

    def __call__(self, texts: Sequence[str]) -> Cond:
        todo = [t for t in dict.fromkeys(texts) if t not in self.rows]
        if todo:
            self.rows.update(zip(todo, self.encode(todo).tokens))
        return Cond(torch.stack([self.rows[t] for t in texts]) if texts else self.encode([]).tokens)


def write_warm_start(checkpoint: str, init_file: str, prompts: PromptSet, config: TrainConfig,
                     hgr_config: HGRConfig) -> None:
    """A step-0 training checkpoint holding ``init_file``'s weights, for the trainer to resume from: the way to
    fine-tune an existing HGR with the unchanged training loop (same prompts, settings and fingerprint; a fresh
    AdamW state, RNG and schedule)."""
    import json

    from ..hgr import TRAIN_STATE_PREFIX, HGRBundle
    from ..train import training_fingerprint

    init = HGRBundle.load(init_file)
    if init.config.to_dict() != hgr_config.to_dict():
        raise SystemExit(f"--init-from {init_file}: its shape {init.config} is not the one trained now ({hgr_config}).")
    fingerprint = training_fingerprint(prompts, config, hgr_config)
    opt = torch.optim.AdamW(init.net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    init.meta.threshold, init.meta.calibration = None, {}
    init.meta.training = {"checkpoint_step": 0, "steps": config.steps, "fingerprint": fingerprint,
                          "init_from": init_file}
    extra = {f"{TRAIN_STATE_PREFIX}rng": torch.Generator().manual_seed(config.seed).get_state(),
             f"{TRAIN_STATE_PREFIX}history": torch.zeros(3, 0, dtype=torch.float64)}
    Path(checkpoint).parent.mkdir(parents=True, exist_ok=True)
    init.save(checkpoint, extra_tensors=extra, extra_metadata={"safecfg.checkpoint": json.dumps(
        {"step": 0, "fingerprint": fingerprint, "param_groups": json.dumps(opt.state_dict()["param_groups"]),
         "counters": {}})})


def add_fitted_harm_head(bundle: HGRBundle, encode, prompts: PromptSet, hidden: int, steps: int,
                         seed: int) -> HGRBundle:
    """``bundle`` with a harm head fitted on the training prompts (the HGR's weights unchanged)."""
    from ..train.harm_head import encode_features, fit_harm_head, with_harm_head

    t0 = time.perf_counter()

    def show(done: int, total: int) -> None:
        if done == total or done % 2048 == 0:
            print(f"[harm head] encoded {done}/{total} {time.perf_counter() - t0:.0f}s", flush=True)

    bundle = with_harm_head(bundle, hidden)
    clean = encode_features(encode, prompts.clean, progress=show)
    harmful = encode_features(encode, [h.prompt for h in prompts.harmful], progress=show)
    stats = fit_harm_head(bundle, clean, harmful, steps=steps, seed=seed)
    print(f"[harm head] fitted in {time.perf_counter() - t0:.0f}s: {stats}", flush=True)
    bundle.meta.training["harm_head"] = stats
    return bundle


def build_parser() -> argparse.ArgumentParser:
    """The command's options (the shipped HGR's own command line is recorded in its file's training metadata)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clean", type=int, default=DEFAULT_CLEAN_PROMPTS,
                        help=f"clean training prompts (default {DEFAULT_CLEAN_PROMPTS}); each harmful prompt's safe "
                             "version is added to them")
    parser.add_argument("--harmful", type=int, default=DEFAULT_HARMFUL_PROMPTS,
                        help=f"harmful training prompts, half gore, half weapon (default {DEFAULT_HARMFUL_PROMPTS})")
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
                        help="train toward the safe rewrite of each harmful prompt instead of its concept text (a rewrite "
                             "steers the whole scene, a concept text only the harm's usual place: docs/METHOD.md)")
    parser.add_argument("--rewrite-latents", type=parse_per_category, default=0.0,
                        help="with --rewrites: share of harmful rows noised from the rewrite's own samples (where SafeCFG "
                             "should lead), 0..1, one number or per category (gore=1,weapon=0); default 0")
    parser.add_argument("--target-gain", type=parse_per_category, default=1.0,
                        help="multiply the harmful targets' offset from D(u), one number or per category (gore=2,weapon=4); "
                             "1 = METHOD.md's target; g aims (g - 1) times the prompt-to-rewrite distance past the safe "
                             "rewrite, away from the harm; the shipped HGR records its own")
    parser.add_argument("--width", type=int, default=None, help="HGR width (default: the demo preset's)")
    parser.add_argument("--depth", type=int, default=None, help="HGR depth (default: the demo preset's)")
    parser.add_argument("--augment-clean", type=int, default=0,
                        help="add this many dressed clean prompts (media, contexts, style tags, harmless companions, "
                             "near-misses, other subjects, many lengths; safecfg_core/demo/augment.py) so the HGR "
                             "leaves unfamiliar clean text alone; default 0")
    parser.add_argument("--augment-harmful", type=int, default=0,
                        help="add this many augmented harmful prompts (more synonyms, misspellings, both harms, harm "
                             "buried in dressed prompts); default 0")
    parser.add_argument("--init-from", default=None,
                        help="start from this HGR file's weights instead of zero-initialised output layers (fine-tune an "
                             "existing HGR on the prompt set; a fresh optimizer and learning-rate schedule)")
    parser.add_argument("--harm-head", type=int, default=0,
                        help="give the HGR a harm head of this hidden width, fitted on the same prompts after the HGR, "
                             "and gate on its score instead of RMS(Delta) (docs/METHOD.md, 'Harm head'); default 0: none")
    parser.add_argument("--head-steps", type=int, default=1500, help="fitting steps of the harm head (default 1500)")
    parser.add_argument("--calibrate-broad", type=int, default=0,
                        help="calibrate the threshold on this many extra fresh dressed clean prompts besides the 400 "
                             "plain ones (a broad clean set; default 0)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    world = load_demo_world()
    aliases: Dict[str, str] = {}
    memo: Dict[str, torch.Tensor] = {}
    prompts = training_prompts(args.clean, args.harmful, rewrites=args.rewrites, augment_clean=args.augment_clean,
                               augment_harmful=args.augment_harmful, aliases=aliases)
    print(f"{len(prompts.clean)} clean and {len(prompts.harmful)} harmful training prompts", flush=True)
    fraction = args.rewrite_latents if isinstance(args.rewrite_latents, dict) else {
        c: float(args.rewrite_latents) for c in CONCEPTS}
    for h in prompts.harmful:  # rows always noised from the rewrite's samples never use their own: don't draw them
        if h.rewrite and fraction.get(h.category, 0.0) >= 1.0:
            aliases[h.prompt] = aliases.get(h.rewrite, h.rewrite)
    config = TrainConfig(
        steps=args.steps, lr=args.lr, batch_size=args.batch, seed=args.seed, cfg_scale=DEFAULT_CFG,
        clean_penalty=args.clean_penalty, rewrite_latent_fraction=args.rewrite_latents,
        target_gain=args.target_gain,
        sigma_schedule=[float(s) for s in world.schedule.sigmas], checkpoint_path=args.checkpoint,
        checkpoint_every=100, resume=args.resume, latent_batch_size=256,
        model_id=denoiser_digest(),
    )
    t0 = time.perf_counter()
    overrides = {k: v for k, v in (("width", args.width), ("depth", args.depth)) if v is not None}
    hgr_config = HGRConfig.for_family("demo", **overrides)
    if args.steps > 0 and args.init_from and not (args.resume and Path(args.checkpoint).exists()):
        write_warm_start(args.checkpoint, args.init_from, prompts, config, hgr_config)
        config = replace(config, resume=True)

    def progress(p: TrainProgress) -> None:
        if p.phase != "train" or p.step % 50 == 0 or p.step == p.total:
            parts = [f"{name} {value:.4f}" for name, value in
                     (("loss", p.loss), ("harm", p.harm_loss), ("clean", p.clean_loss)) if value is not None]
            loss = (" " + ", ".join(parts)) if parts else ""
            print(f"[{p.phase}] {p.step}/{p.total}{loss} {p.elapsed_s:.0f}s", flush=True)

    encode = MemoEncoder(world.text_encoder.encode)
    if args.steps == 0:  # no HGR training: take --init-from as it is (to add a harm head and recalibrate)
        if not args.init_from:
            parser.error("--steps 0 needs --init-from: the HGR to add a harm head to and calibrate again")
        bundle = HGRBundle.load(args.init_from)
        bundle.meta.training = {k: v for k, v in bundle.meta.training.items() if k != "command"} | {
            "init_command": bundle.meta.training.get("command"), "init_from": args.init_from}
    else:
        bundle = train_hgr(encode, world.denoiser(), prompts, config, hgr_config, progress=progress,
                           sample_latents=lambda ps: sample_aliased_latents(world, ps, aliases, memo)).bundle
    if args.harm_head:
        bundle = add_fitted_harm_head(bundle, encode, prompts, args.harm_head, args.head_steps, args.seed)
    # calibration on fresh clean prompts of the training phrasing (not the ones trained on)
    fresh_clean = [s.text for s in sample_prompts(400, seed=TRAIN_SCENE_SEED + HGR_CALIBRATION_CLEAN_OFFSET, split="train", harm_fraction=0.0)]
    if args.calibrate_broad:  # dressed fresh clean prompts too, so the threshold holds on unfamiliar clean text
        fresh_clean += [t for t, _ in augment_clean_prompts(fresh_clean, args.calibrate_broad,
                                                            TRAIN_SCENE_SEED + AUGMENT_CALIBRATION_OFFSET)]
    fresh_harm = training_prompts(0, 200, seed=TRAIN_SCENE_SEED + HGR_CALIBRATION_HARMFUL_OFFSET).harmful
    cal = calibrate_threshold(bundle, encode, fresh_clean, fpr=0.01,
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
