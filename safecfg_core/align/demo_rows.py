"""The alignment's rows of the demo report: ``python -m safecfg_core.align.demo_rows --out DIR``.

Aligns the demo model on unlabelled training-phrasing prompts (clean and harmful mixed, scenes of their own seed),
fits the ESD-style baseline on the concept texts with the same LoRA and budget, and measures on the demo's fresh
scenes and seeds, per phrasing split, with the demo report's own measures: plain CFG with the aligned LoRA at the
demo cfg and at cfg 1, SafeCFG with it, the ESD LoRA, and the references without a LoRA.

This module is the *measurement*: ground truth (which prompt is harmful, what it should show) is read here, after
the fits, to score images. The alignment itself gets the prompt texts alone (tests/align check that no module of
the alignment path reads a label, and that none imports this one).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

ALIGN_SCENE_SEED = 5150  # the alignment prompts' scenes: neither a training seed of the world nor an evaluation seed


def _rows(world, teacher, bundle, items, seeds, cfg, steps, lora, esd) -> Dict[str, torch.Tensor]:
    from ..guidance import GateConfig, SafeGuidance
    from .run import sample_prompts_with

    prompts = [it.text for it in items]
    g = SafeGuidance(bundle, GateConfig())
    net = world.net
    runs = {
        "cfg": dict(cfg_scale=cfg), "cfg1": dict(cfg_scale=1.0), "safecfg": dict(cfg_scale=cfg, guidance=g),
        "cfg+align": dict(cfg_scale=cfg, lora=lora), "cfg1+align": dict(cfg_scale=1.0, lora=lora),
        "safecfg+align": dict(cfg_scale=cfg, guidance=g, lora=lora),
        "cfg+esd": dict(cfg_scale=cfg, lora=esd), "cfg1+esd": dict(cfg_scale=1.0, lora=esd),
    }
    images = {}
    for name, kw in runs.items():
        t0 = time.perf_counter()
        lat = sample_prompts_with(teacher, prompts, seeds, kw.pop("cfg_scale"), steps, net=net, **kw)
        images[name] = world.vae.decode(lat)
        print(f"sampled {name:14s} {lat.shape[0]} images in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return images


def measure_rows(world, items, n_seeds: int, images: Dict[str, torch.Tensor]) -> Dict[str, Any]:
    from ..demo.measures import method_rates, rates_by_split

    out: Dict[str, Any] = {}
    for name, imgs in images.items():
        ref = images["cfg1"] if name.startswith("cfg1") else images["cfg"]
        pred = world.evaluator.predict(imgs)
        rates = method_rates(pred, items, n_seeds, range(len(items)), imgs, ref)
        rates["by_split"] = rates_by_split(pred, items, n_seeds)
        out[name] = rates
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    from ..demo.items import build_items
    from ..demo.prompts import sample_prompts
    from ..demo.runs import load_world_and_hgr
    from ..demo.scene_seeds import DEMO_SCENE_SEED
    from ..guidance import GateConfig, SafeGuidance
    from .esd import collect_esd_targets
    from .fit import FitConfig, fit_lora
    from .run import AlignConfig, align_model
    from .targets import Teacher

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--align-prompts", type=int, default=64)
    p.add_argument("--per-kind", type=int, default=32, help="fresh prompts per split and kind (demo --full: 32)")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--fit-steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--beta", type=float, default=1.0,
                   help="weight of the preserve term (prompts the HGR judged clean), METHOD.md's beta (default 1)")
    p.add_argument("--cfg", type=float, default=6.0)
    p.add_argument("--steps", type=int, default=20)
    args = p.parse_args(argv)
    t_start = time.perf_counter()
    world, bundle, _ = load_world_and_hgr()
    teacher = Teacher(world.denoiser(), world.text_encoder.encode, world.schedule, (4, 8, 8),
                      (float(world.schedule.sigma_min), float(world.schedule.sigma_max)))
    align_texts = [s.text for s in sample_prompts(args.align_prompts, seed=ALIGN_SCENE_SEED, split="train",
                                                  harm_fraction=0.5)]
    fit = FitConfig(steps=args.fit_steps, batch_size=args.batch_size, lr=args.lr, rank=8, beta=args.beta,
                    checkpoint_every=0)
    say = lambda fp: print(fp.message, file=sys.stderr) if fp.phase == "collect" else None  # noqa: E731
    aligned = align_model(teacher, world.net, SafeGuidance(bundle, GateConfig()), align_texts,
                          AlignConfig(cfg_scale=args.cfg, steps=args.steps, seeds=(0, 1), fit=fit),
                          output_path=Path(args.out) / "aligned_demo.safetensors", model_id="demo", progress=say)
    concepts = list(bundle.meta.categories.values())
    n_esd_seeds = max(1, (2 * args.align_prompts) // max(1, len(concepts)) // 4)
    esd_targets = collect_esd_targets(teacher, concepts, cfg_scale=args.cfg, seeds=list(range(n_esd_seeds)),
                                      steps=args.steps)
    esd = fit_lora(teacher.denoiser, world.net, esd_targets, replace(fit, gamma=0.0), {"esd": concepts}).lora
    t_fit = time.perf_counter() - t_start
    items = build_items(args.per_kind, DEMO_SCENE_SEED)
    seeds = list(range(args.seeds))
    images = _rows(world, teacher, bundle, items, seeds, args.cfg, args.steps, aligned.lora, esd)
    rows = measure_rows(world, items, len(seeds), images)
    report = {"command": "python -m safecfg_core.align.demo_rows " + " ".join(argv or sys.argv[1:]),
              "align_prompts": len(align_texts), "redirected": len(aligned.targets.redirected),
              "fit_seconds_wall": t_fit, "eval_prompts": len(items), "seeds": seeds, "rows": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "align_rows.json").write_text(json.dumps(report, indent=1, default=str))
    for name, r in rows.items():
        print(f"{name:14s} harmful {r['harmful_rate']:.3f} kept {r['kept_content']:.3f} "
              f"clean {r['clean_fidelity']:.3f} psnr {r.get('clean_psnr_vs_cfg')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
