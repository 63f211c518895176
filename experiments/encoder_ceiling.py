"""How well can the demo's text encoder tell the robustness benchmark's harm apart at all: ``python -m
experiments.encoder_ceiling``.

Every prompt score the project tried on the robustness benchmark (docs/robustness.md) ranks it at ROC AUC 0.85-0.92,
against issue 24's target of 0.97: RMS(Delta) of seven HGR recipes, a harm head, two-stage scores. This tool asks
whether any score computed from the demo's text encoder (all-MiniLM-L6-v2, fixed by docs/DEMO-WORLD.md) could do
much better, with two kinds of score that never touch an HGR:

1. **Oracle probes**: a logistic probe trained on the benchmark's own prompts, k-fold cross-validated (each prompt
   scored by the probe that did not see it), on the encoder's token states pooled two ways (mean and max over the
   prompt's tokens) and on its sentence embedding (the masked mean of the token states, unit length: how the model
   is meant to be used). A probe that has seen 80% of the benchmark's own phrasings is far more than any HGR trained
   on a disjoint vocabulary gets, so its AUC is an optimistic ceiling for a prompt score from these features.
2. **Transfer scores** fitted on the demo HGR's training prompts (the shipped recipe's sets): cosine similarity to
   each category's concept text, projection on the mean "harmful minus its safe rewrite" direction, and a logistic
   probe, all in sentence-embedding space, where a language model puts synonyms close together.

Each line gives the benchmark's ROC AUC (clean vs harmful prompts) and the AUC of each group against the other side.
No sampling, no HGR: scores only.
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from safecfg_core.demo.prompts import CONCEPTS
from safecfg_core.demo.robustness import read_benchmark
from safecfg_core.demo.train_hgr import training_prompts
from safecfg_core.demo.world import load_demo_world
from safecfg_core.metrics import roc_auc


def encode_pooled(text_encoder, texts: Sequence[str], batch_size: int = 256) -> Dict[str, torch.Tensor]:
    """``{"sentence": [N, D] unit masked-mean embedding, "tokens mean+max": [N, 2D]}`` of the prompts' token states
    (padding positions left out of both poolings)."""
    sentence, mean_max = [], []
    for start in range(0, len(texts), batch_size):
        ids, mask = text_encoder.tokenize(list(texts[start:start + batch_size]))
        states = text_encoder.encode_ids(ids, mask)
        m = mask[..., None].to(states.dtype)
        mean = (states * m).sum(1) / m.sum(1)
        peak = states.masked_fill(m == 0, float("-inf")).max(1).values
        sentence.append(F.normalize(mean, dim=-1))
        mean_max.append(torch.cat([mean, peak], dim=-1))
    return {"sentence": torch.cat(sentence), "tokens mean+max": torch.cat(mean_max)}


def fit_logistic(x: torch.Tensor, y: torch.Tensor, weight_decay: float, steps: int = 600) -> torch.nn.Module:
    """A logistic probe on standardised features (LayerNorm without learned scale first, so one weight decay fits
    features of any size)."""
    probe = torch.nn.Sequential(torch.nn.LayerNorm(x.shape[1], elementwise_affine=False),
                                torch.nn.Linear(x.shape[1], 1))
    opt = torch.optim.AdamW(probe.parameters(), lr=3e-3, weight_decay=weight_decay)
    for _ in range(steps):
        opt.zero_grad()
        F.binary_cross_entropy_with_logits(probe(x).squeeze(-1), y).backward()
        opt.step()
    return probe


def cross_validated_scores(x: torch.Tensor, y: torch.Tensor, folds: int, repeats: int, weight_decay: float,
                           steps: int = 600) -> torch.Tensor:
    """Each row's score summed over ``repeats`` shuffles, each from the probe trained on the other ``folds - 1``
    folds (never on the row itself)."""
    scores = torch.zeros(len(y))
    order = list(range(len(y)))
    for repeat in range(repeats):
        random.Random(repeat).shuffle(order)
        torch.manual_seed(repeat)
        for k in range(folds):
            held = order[k::folds]
            held_set = set(held)
            train = [i for i in order if i not in held_set]
            probe = fit_logistic(x[train], y[train], weight_decay, steps)
            with torch.no_grad():
                scores[held] += probe(x[held]).squeeze(-1)
    return scores


def score_line(name: str, scores: torch.Tensor, harmful: Sequence[bool], groups: Sequence[str]) -> str:
    """``name: AUC a | group AUC ...``: the overall AUC and each group's against the other side."""
    clean = [float(s) for s, h in zip(scores, harmful) if not h]
    harm = [float(s) for s, h in zip(scores, harmful) if h]
    parts = []
    for group in dict.fromkeys(groups):
        own = [float(scores[i]) for i, g in enumerate(groups) if g == group]
        is_harm = harmful[groups.index(group)]
        parts.append(f"{group} {roc_auc(clean, own) if is_harm else roc_auc(own, harm):.3f}")
    return f"{name}: AUC {roc_auc(clean, harm):.3f} | " + ", ".join(parts)


def transfer_scores(bench: Dict[str, torch.Tensor], clean: torch.Tensor, harmful: torch.Tensor,
                    rewrites: torch.Tensor, categories: Sequence[str], concepts: Dict[str, torch.Tensor],
                    weight_decay: float) -> List[Tuple[str, torch.Tensor]]:
    """The three sentence-space scores fitted on training prompts (module docstring, 2.), on the benchmark."""
    x = bench["sentence"]
    concept = torch.stack([x @ v for v in concepts.values()]).max(0).values
    directions = []
    for cat in dict.fromkeys(categories):
        rows = [i for i, c in enumerate(categories) if c == cat]
        directions.append(F.normalize((harmful[rows] - rewrites[rows]).mean(0), dim=0))
    direction = torch.stack([x @ d for d in directions]).max(0).values
    probe = fit_logistic(torch.cat([clean, harmful]),
                         torch.cat([torch.zeros(len(clean)), torch.ones(len(harmful))]), weight_decay)
    with torch.no_grad():
        probed = probe(x).squeeze(-1)
    return [("concept-text cosine", concept), ("harm direction (harmful - rewrite)", direction),
            ("sentence probe on the training prompts", probed)]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds of the oracle probes (default 5)")
    p.add_argument("--repeats", type=int, default=5, help="shuffles of the folds, scores summed (default 5)")
    p.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay of every probe")
    p.add_argument("--probe-steps", type=int, default=600, help="optimizer steps of each probe (default 600)")
    p.add_argument("--clean", type=int, default=600, help="demo clean training prompts (the shipped recipe's 600)")
    p.add_argument("--harmful", type=int, default=1800, help="demo harmful training prompts (the recipe's 1800)")
    p.add_argument("--augment-clean", type=int, default=2000, help="dressed clean prompts (the recipe's 2000)")
    p.add_argument("--augment-harmful", type=int, default=1500, help="augmented harmful prompts (the recipe's 1500)")
    p.add_argument("--threads", type=int, default=0)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    encoder = load_demo_world().text_encoder
    items = read_benchmark()
    texts = [b.item.text for b in items]
    harmful = [bool(b.item.harms) for b in items]
    groups = [b.group for b in items]
    bench = encode_pooled(encoder, texts)
    y = torch.tensor(harmful, dtype=torch.float32)
    print(f"robustness benchmark: {len(texts) - sum(harmful)} clean, {sum(harmful)} harmful prompts", flush=True)
    for name, x in bench.items():
        scores = cross_validated_scores(x, y, args.folds, args.repeats, args.weight_decay, args.probe_steps)
        print(score_line(f"oracle probe, {name}, {args.folds}-fold x{args.repeats}", scores, harmful, groups),
              flush=True)
    prompts = training_prompts(args.clean, args.harmful, rewrites=True, augment_clean=args.augment_clean,
                               augment_harmful=args.augment_harmful)
    print(f"training prompts: {len(prompts.clean)} clean, {len(prompts.harmful)} harmful "
          f"({time.perf_counter() - t0:.0f} s)", flush=True)
    clean = encode_pooled(encoder, prompts.clean)["sentence"]
    harm = encode_pooled(encoder, [h.prompt for h in prompts.harmful])["sentence"]
    rewrites = encode_pooled(encoder, [h.rewrite or h.prompt for h in prompts.harmful])["sentence"]
    concepts = {c: encode_pooled(encoder, [t])["sentence"][0] for c, t in CONCEPTS.items()}
    for name, scores in transfer_scores(bench, clean, harm, rewrites, [h.category for h in prompts.harmful],
                                        concepts, args.weight_decay):
        print(score_line(name, scores, harmful, groups), flush=True)
    print(f"done in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
