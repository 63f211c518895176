"""Which prompt-level score ranks the robustness benchmark best: ``python -m experiments.harm_head_probes``.

docs/robustness.md found that the HGR's ``RMS(Delta)`` ranks unseen clean and harmful prompts poorly (AUC 0.845 for
the shipped HGR) and that a harm head on the prompt's own conditioning ranks better (0.918). This tool asks two
follow-up questions on one HGR (``--hgr``, the shipped one by default), with the head's inputs encoded once:

1. **Coverage**: does a head fitted on the built-in corpus as well (its clean train prompts, and its violence,
   weapons and shocking prompts as harmful: the real-language counterparts of the demo's gore and weapon) rank the
   benchmark better than a head fitted on the demo's training prompts only? Corpus prompts containing a word of the
   benchmark's synonym group are left out, so the benchmark's synonyms stay unseen.
2. **Two stages**: does combining the head's score with ``RMS(Delta)`` (each divided by its own threshold) rank
   better than either alone?

Each line gives the benchmark's prompt-score ROC AUC, the gate-open rates on its clean and harmful prompts at a
threshold calibrated like the trainer's (the clean 99th percentile times 1.1, at the gate's lower edge), per group,
and the gate-open rates on the demo command's own prompts. No sampling: scores only.
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from typing import Callable, Dict, List, Sequence, Tuple

import torch

from safecfg_core.corpus.load import builtin_records
from safecfg_core.demo.items import build_items
from safecfg_core.demo.prompts import sample_prompts
from safecfg_core.demo.robustness import read_benchmark
from safecfg_core.demo.scene_seeds import DEMO_SCENE_SEED
from safecfg_core.demo.train_hgr import (AUGMENT_CALIBRATION_OFFSET, HGR_CALIBRATION_CLEAN_OFFSET, TRAIN_SCENE_SEED,
                                         augment_clean_prompts, training_prompts)
from safecfg_core.demo.world import load_demo_world
from safecfg_core.hgr import HGRBundle
from safecfg_core.metrics import roc_auc
from safecfg_core.train.calibration import harm_scores
from safecfg_core.train.harm_head import encode_features, fit_harm_head, with_harm_head

CORPUS_HARM = ("violence", "weapons", "shocking")
"""The corpus categories that are the demo's harms in real language (gore: violence, shocking; weapon: weapons)."""


def _words(text: str) -> set:
    return set(re.findall(r"[a-z]+", text.lower()))


def corpus_features(encode: Callable, split: str, unseen_words: set, limit: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Head features of the corpus split's clean and (demo-harm) harmful prompts, without any prompt that uses one
    of ``unseen_words``; at most ``limit`` of each."""
    clean, harmful = [], []
    for r in builtin_records(split):
        if unseen_words & _words(r.prompt):
            continue
        if r.category is None:
            clean.append(r.prompt)
        elif r.category in CORPUS_HARM:
            harmful.append(r.prompt)
    return encode_features(encode, clean[:limit]), encode_features(encode, harmful[:limit])


def calibration_prompts(n_plain: int, n_broad: int) -> List[str]:
    """The demo trainer's calibration set: ``n_plain`` (its 400) fresh clean prompts plus ``n_broad`` dressed ones."""
    fresh = [s.text for s in sample_prompts(n_plain, seed=TRAIN_SCENE_SEED + HGR_CALIBRATION_CLEAN_OFFSET, split="train",
                                            harm_fraction=0.0)]
    return fresh + [t for t, _ in augment_clean_prompts(fresh, n_broad, TRAIN_SCENE_SEED + AUGMENT_CALIBRATION_OFFSET)]


def gate_report(name: str, bench: torch.Tensor, bench_harm: torch.Tensor, groups: Sequence[str],
                demo: torch.Tensor, demo_harm: torch.Tensor, calibration: torch.Tensor) -> str:
    """One line: AUC, gate-open rates at the trainer's calibration rule, per benchmark group, and on the demo set."""
    lower_edge = float(torch.quantile(calibration, 0.99, interpolation="higher")) * 1.1
    opened = lambda s: float((s >= lower_edge).float().mean()) if len(s) else float("nan")  # noqa: E731
    rows = {g: [i for i, x in enumerate(groups) if x == g] for g in dict.fromkeys(groups)}
    per_group = ", ".join(f"{g} {opened(bench[ids]):.2f}" for g, ids in rows.items())
    return (f"{name}: AUC {roc_auc(bench[~bench_harm].tolist(), bench[bench_harm].tolist()):.3f} | gate open: clean "
            f"{opened(bench[~bench_harm]):.3f}, harmful {opened(bench[bench_harm]):.3f}; demo set clean "
            f"{opened(demo[~demo_harm]):.3f}, harmful {opened(demo[demo_harm]):.3f} | {per_group}")


def head_scorer(bundle: HGRBundle) -> Callable[[torch.Tensor], torch.Tensor]:
    """The fitted head's gate score ``softplus(logit)`` on precomputed features."""
    head = bundle.net.harm_head

    def score(features: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            x = (features - head.feature_mean) / head.feature_std
            return torch.nn.functional.softplus(head.out(torch.nn.functional.gelu(head.hidden(x))).squeeze(-1))
    return score


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--hgr", default=None, help="the HGR (default: the shipped demo HGR)")
    p.add_argument("--clean", type=int, default=300, help="demo training prompts, as the HGR's command (R6: 300)")
    p.add_argument("--harmful", type=int, default=900, help="(R6: 900)")
    p.add_argument("--augment-clean", type=int, default=2000, help="(R6: 2000)")
    p.add_argument("--augment-harmful", type=int, default=1500, help="(R6: 1500)")
    p.add_argument("--calibrate-plain", type=int, default=400, help="(the trainer's: 400)")
    p.add_argument("--calibrate-broad", type=int, default=1200, help="(R6: 1200)")
    p.add_argument("--demo-per-kind", type=int, default=32, help="the demo set's prompts per split and kind (--full: 32)")
    p.add_argument("--corpus-limit", type=int, default=100_000, help="at most this many corpus prompts per side")
    p.add_argument("--head-steps", type=int, default=1500)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    world = load_demo_world()
    encode = world.text_encoder.encode
    hgr = HGRBundle.load(args.hgr or world.hgr_path)
    bench_items = read_benchmark()
    bench_texts = [b.item.text for b in bench_items]
    bench_harm = torch.tensor([bool(b.item.harms) for b in bench_items])
    groups = [b.group for b in bench_items]
    unseen = set().union(*(_words(b.item.text) for b in bench_items if b.group == "harm_synonym"))
    unseen -= _words(" ".join(b.item.text for b in bench_items if b.group != "harm_synonym"))
    demo_items = build_items(args.demo_per_kind, DEMO_SCENE_SEED)
    demo_texts = [it.text for it in demo_items]
    demo_harm = torch.tensor([bool(it.harms) for it in demo_items])
    prompts = training_prompts(args.clean, args.harmful, rewrites=True, augment_clean=args.augment_clean,
                               augment_harmful=args.augment_harmful)
    cal_texts = calibration_prompts(args.calibrate_plain, args.calibrate_broad)
    feats: Dict[str, torch.Tensor] = {
        "clean": encode_features(encode, prompts.clean),
        "harm": encode_features(encode, [h.prompt for h in prompts.harmful]),
        "bench": encode_features(encode, bench_texts), "demo": encode_features(encode, demo_texts),
        "cal": encode_features(encode, cal_texts)}
    corpus_clean, corpus_harm = corpus_features(encode, "train", unseen, args.corpus_limit)
    print(f"features in {time.perf_counter() - t0:.0f} s; corpus: {len(corpus_clean)} clean, {len(corpus_harm)} "
          "harmful", flush=True)

    heads = {}
    for name, clean, harm in (("head (demo prompts)", feats["clean"], feats["harm"]),
                              ("head (demo + corpus)", torch.cat([feats["clean"], corpus_clean]),
                               torch.cat([feats["harm"], corpus_harm]))):
        bundle = with_harm_head(hgr)
        fit_harm_head(bundle, clean, harm, steps=args.head_steps, seed=0)
        score = head_scorer(bundle)
        heads[name] = score
        print(gate_report(name, score(feats["bench"]), bench_harm, groups, score(feats["demo"]), demo_harm,
                          score(feats["cal"])), flush=True)

    rms = {k: harm_scores(hgr, encode, v) for k, v in (("bench", bench_texts), ("demo", demo_texts),
                                                       ("cal", cal_texts))}
    head = {k: heads["head (demo prompts)"](feats[k]) for k in rms}
    print(gate_report("RMS(Delta)", rms["bench"], bench_harm, groups, rms["demo"], demo_harm, rms["cal"]))
    edge = {k: float(torch.quantile(v["cal"], 0.99, interpolation="higher")) for k, v in (("rms", rms), ("head", head))}
    for name, combine in (("product", torch.mul), ("minimum", torch.minimum), ("maximum", torch.maximum)):
        s = {k: combine(rms[k] / edge["rms"], head[k] / edge["head"]) for k in rms}
        print(gate_report(f"two stages, {name}", s["bench"], bench_harm, groups, s["demo"], demo_harm, s["cal"]))
    print(f"done in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
