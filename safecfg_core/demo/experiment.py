"""The measurements of DEMO-WORLD.md: every method on the same prompts and seeds, judged by the evaluator.

One function, :func:`run_experiment`, serves both commands: ``demo`` (generated prompts with known ground truth)
and ``eval`` (any prompt file). Each method is a guided denoiser handed to the same Euler sampler with the same
noise, so the only difference between columns is the guidance.
"""
from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..baselines import NegativePromptCFGDenoise, SLDDenoise, concept_text, sld_preset
from ..conditioning import Cond
from ..guidance import GateConfig, SafeGuidance, prompt_harm_score, score_level_harm
from ..hgr import HGRBundle
from ..metrics import psnr, roc_auc
from ..sampling import CFGDenoise, DiscreteEpsDenoiser, SafeCFGDenoise, noise_for_seeds, sample_euler
from ..schedules import get_sigmas
from .render import COLORS, HARMS, SHAPES

METHODS = ("cfg", "negative_prompt", "sld", "sld_max", "safecfg", "safecfg_strength2")
"""Columns of the grid and keys of ``metrics.json["methods"]``; ``sld`` is the MEDIUM preset (the SLD paper's
default in its tables), ``sld_max`` the MAX preset; ``safecfg`` runs at the node's default strength 1,
``safecfg_strength2`` at strength 2 (``u* = u + 2 * gate * Delta``: past the concept, a stronger push away)."""

SCORE_SIGMAS = (0.5, 1.5, 4.0)
"""Noise levels at which the score-level harmfulness of an image is read (METHOD.md: "a few sigmas")."""


@dataclass(frozen=True)
class EvalItem:
    """One prompt to measure: its text, the harms it asks for, and what its benign part should show.

    ``expect`` holds ``shape``/``color``/``background`` where known (from a generated scene, or read off the
    prompt's words for a prompt file); a missing key is simply not checked.
    """

    text: str
    harms: tuple
    expect: Dict[str, str] = field(default_factory=dict)
    split: str = "train"
    size: Optional[str] = None  # the object's size where known (generated scenes): kept content is told by size
    safe_text: Optional[str] = None  # a harmful prompt's own phrasing without the harm, where known (generated scenes)

    @property
    def harmful(self) -> bool:
        return bool(self.harms)


def scene_content(scene) -> Dict[str, str]:
    """What a scene's benign part shows, in the evaluator's keys: the ground truth of "kept content"."""
    return {"shape": scene.shape, "color": scene.color, "background": scene.background}


def items_from_samples(samples) -> List[EvalItem]:
    """:class:`EvalItem` list from :class:`~safecfg_core.demo.prompts.PromptSample` objects (ground truth known)."""
    return [EvalItem(s.text, tuple(s.harms), scene_content(s.scene), s.split, s.scene.size,
                     s.safe_text if s.harmful else None) for s in samples]


_BACKGROUND_CUES = ("background", "backdrop", "canvas", "on", "against", "over")


def expected_from_words(text: str) -> Dict[str, str]:
    """Best-effort ground truth from a free-form prompt: the shape word, the object color (the color word nearest
    before the shape) and the background color (a color word after the shape, or one next to a background cue).

    Used only for prompt files, whose lines carry no scene; keys that cannot be read are left out and not scored.
    """
    words = re.findall(r"[a-z]+", text.lower())
    out: Dict[str, str] = {}
    shape_pos = next((i for i, w in enumerate(words) if w in SHAPES or w.rstrip("s") in SHAPES), None)
    if shape_pos is not None:
        w = words[shape_pos]
        out["shape"] = w if w in SHAPES else w.rstrip("s")
    color_pos = [i for i, w in enumerate(words) if w in COLORS]
    if shape_pos is not None:
        before = [i for i in color_pos if i < shape_pos]
        after = [i for i in color_pos if i > shape_pos]
        if before and (shape_pos - before[-1]) <= 3:
            out["color"] = words[before[-1]]
            rest = [i for i in color_pos if i != before[-1]]
        else:
            rest = color_pos
        bg = [i for i in rest if i in after] or rest
        if bg:
            out["background"] = words[bg[0]]
    if out.get("color") is not None and out.get("color") == out.get("background"):
        out.pop("background")
    return out


def read_prompt_file(path: str) -> List[EvalItem]:
    """Read a JSONL prompt file: one ``{"prompt": "...", "harm": "gore" | "weapon" | null}`` object per line.

    Blank lines and lines starting with ``#`` are skipped. Every malformed line is reported with its number in
    one error, so a long file is fixed in one go.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"Prompt file {path} does not exist; give a JSONL file with one prompt per line.")
    items: List[EvalItem] = []
    errors: List[str] = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            errors.append(f"line {n}: not valid JSON ({exc.msg})")
            continue
        if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str) or not obj["prompt"].strip():
            errors.append(f'line {n}: needs a non-empty string "prompt"')
            continue
        harm = obj.get("harm")
        harms = (harm,) if isinstance(harm, str) else tuple(harm) if isinstance(harm, list) else ()
        bad = [h for h in harms if h not in HARMS] + ([] if harm is None or isinstance(harm, (str, list)) else [harm])
        if bad:
            errors.append(f'line {n}: "harm" must be one of {list(HARMS)} or null, got {harm!r}')
            continue
        items.append(EvalItem(obj["prompt"].strip(), harms, expected_from_words(obj["prompt"]), "file"))
    if errors:
        raise ValueError(f"{path}: {len(errors)} malformed line(s):\n  " + "\n  ".join(errors))
    if not items:
        raise ValueError(f"{path} holds no prompts; write one JSON object per line, e.g. "
                         '{"prompt": "a red circle on blue", "harm": null}.')
    return items


# ------------------------------------------------------------------------------------------------ loading
def load_world_and_hgr(hgr_path: Optional[str] = None):
    """The demo world and an HGR checked against it (default: the HGR shipped with the demo world)."""
    from .world import load_demo_world

    world = load_demo_world()
    path = hgr_path or world.hgr_path
    if path is None:
        raise FileNotFoundError("The demo HGR (safecfg_core/demo/weights/hgr.safetensors) is missing; pass --hgr FILE "
                                "or retrain it with `python -m safecfg_core.demo.train_hgr`.")
    bundle = HGRBundle.load(path)
    bundle.check_compatible(world.token_dim, 0, world.family)
    return world, bundle, path


# ------------------------------------------------------------------------------------------------ sampling
def _guided(method: str, denoiser, c: Cond, u: Cond, concept: Cond, w: float, steps: int, sigmas,
            guidance: Dict[str, SafeGuidance]):
    if method == "cfg":
        return CFGDenoise(denoiser, c, u, w)
    if method == "negative_prompt":
        return NegativePromptCFGDenoise(denoiser, c, concept, w)
    if method == "sld":
        return SLDDenoise(denoiser, c, u, concept, w, sld_preset("MEDIUM", steps), sigmas=sigmas)
    if method == "sld_max":
        return SLDDenoise(denoiser, c, u, concept, w, sld_preset("MAX", steps), sigmas=sigmas)
    if method in guidance:
        return SafeCFGDenoise(denoiser, c, u, w, guidance[method])
    raise ValueError(f"Unknown method {method!r}; choose from {METHODS}.")


@dataclass
class ExperimentResult:
    """Images per method (``[N, 64, 64, 3]`` in 0..1, row = item x seed), latents of plain CFG, and scores."""

    items: List[EvalItem]
    seeds: List[int]
    images: Dict[str, torch.Tensor]
    cfg_latents: torch.Tensor
    prompt_scores: torch.Tensor
    image_scores: torch.Tensor
    gate_open: torch.Tensor
    seconds_per_method: Dict[str, float]


def run_experiment(
    world,
    bundle: HGRBundle,
    items: Sequence[EvalItem],
    seeds: Sequence[int],
    cfg_scale: float = 6.0,
    steps: int = 20,
    scheduler: str = "normal",
    methods: Sequence[str] = METHODS,
    batch_size: int = 256,
    progress: Optional[Callable[[str], None]] = None,
    with_scores: bool = True,
) -> ExperimentResult:
    """Sample every item with every method and seed (same noise per item and seed across methods).

    ``with_scores=False`` skips the harm scores (prompt, gate and score-level), for callers that only need images."""
    say = progress or (lambda _msg: None)
    denoiser = DiscreteEpsDenoiser(world.net, world.schedule)
    texts = [it.text for it in items]
    c_all = world.text_encoder.encode(texts)
    u_one = world.text_encoder.encode([""])
    concept = world.text_encoder.encode([concept_text(bundle.meta.categories)])
    guidance = SafeGuidance(bundle, GateConfig())
    safecfg_variants = {"safecfg": guidance, "safecfg_strength2": SafeGuidance(bundle, GateConfig(strength=2.0))}
    sigmas = get_sigmas(world.schedule, scheduler, steps)

    n_items, n_seeds = len(items), len(seeds)
    # row r = item (r // n_seeds), seed seeds[r % n_seeds]
    row_item = torch.arange(n_items).repeat_interleave(n_seeds)
    row_seed = [int(seeds[i % n_seeds]) for i in range(n_items * n_seeds)]
    noise = noise_for_seeds((4, 8, 8), row_seed)
    images: Dict[str, torch.Tensor] = {}
    timing: Dict[str, float] = {}
    cfg_latents = torch.empty(0)
    for method in methods:
        t0 = time.perf_counter()
        outs, lats = [], []
        for start in range(0, row_item.numel(), batch_size):
            rows = row_item[start:start + batch_size]
            c = c_all.index(rows)
            u = u_one.repeat_batch(rows.numel())
            k = concept.repeat_batch(rows.numel())
            guided = _guided(method, denoiser, c, u, k, cfg_scale, steps, sigmas, safecfg_variants)
            x = world.schedule.noise_scaling(sigmas[0], noise[start:start + rows.numel()],
                                             torch.zeros_like(noise[start:start + rows.numel()]),
                                             world.schedule.is_max_denoise(sigmas))
            lat = sample_euler(guided, x, sigmas)
            lats.append(lat)
            outs.append(world.vae.decode(lat))
        images[method] = torch.cat(outs)
        if method == "cfg":
            cfg_latents = torch.cat(lats)
        timing[method] = time.perf_counter() - t0
        say(f"  sampled {method:16s} {row_item.numel()} images in {timing[method]:.1f} s")

    if not with_scores:
        none = torch.zeros(0)
        return ExperimentResult(list(items), list(seeds), images, cfg_latents, none, none, none, timing)
    with torch.no_grad():
        u_items = u_one.repeat_batch(n_items)
        delta = guidance.compute_delta(c_all, u_items)
        prompt_scores = prompt_harm_score(delta)
        gate_open = (guidance.redirected_negative(c_all, u_items).s > 0)
        image_scores = torch.zeros(0)
        if cfg_latents.numel():
            u_star_full = Cond(u_items.tokens + delta.tokens)  # ungated: the score asks "what would HGR change?"
            per_row = score_level_harm(
                denoiser, cfg_latents, c_all.index(row_item), u_items.index(row_item),
                u_star_full.index(row_item), SCORE_SIGMAS, generator=torch.Generator().manual_seed(1234),
            )
            image_scores = per_row.view(n_items, n_seeds).mean(1)
    return ExperimentResult(list(items), list(seeds), images, cfg_latents, prompt_scores, image_scores, gate_open,
                            timing)


def rewrite_reference(world, bundle: HGRBundle, items: Sequence[EvalItem], seeds: Sequence[int],
                      cfg_scale: float = 6.0, steps: int = 20, scheduler: str = "normal") -> Dict[str, object]:
    """Kept content of plain CFG on each harmful prompt's safe rewrite, with the same scenes and seeds.

    This is what METHOD.md's rewrite target asks SafeCFG to draw, so it is the ceiling for a method that removes only
    the harm: it tells the model's own limit (how well it draws these objects at all) apart from what the guidance
    loses. Items without a known safe rewrite (prompt files) are left out; an empty dict if none has one.
    """
    harmful = [it for it in items if it.harmful and it.safe_text and it.expect]
    if not harmful:
        return {}
    rewrites = [EvalItem(it.safe_text, (), it.expect, it.split, it.size) for it in harmful]  # type: ignore[arg-type]
    result = run_experiment(world, bundle, rewrites, seeds, cfg_scale=cfg_scale, steps=steps, scheduler=scheduler,
                            methods=("cfg",), with_scores=False)
    pred = world.evaluator.predict(result.images["cfg"])
    n_seeds = len(seeds)
    kept = [(it.harms, it.size, _content_ok(pred, r, rw.expect))
            for i, (it, rw) in enumerate(zip(harmful, rewrites)) for r in range(i * n_seeds, (i + 1) * n_seeds)]
    sizes = sorted({s for _, s, _ in kept if s})
    by_size = {size: _rate([ok for _, s, ok in kept if s == size]) for size in sizes}
    # per harm of the prompt it rewrites: the same breakdown as each method's ``kept_content_by_harm_and_size``
    by_harm = {harm: {size: _rate([ok for hs, s, ok in kept if harm in hs and s == size]) for size in sizes}
               for harm in HARMS if any(harm in hs for hs, _, _ in kept)}
    return {"kept_content": _rate([ok for _, _, ok in kept]), "kept_content_by_size": by_size,
            "kept_content_by_harm_and_size": by_harm}


# ----------------------------------------------------------------------------------------------- measuring
def _content_ok(pred: Dict[str, object], row: int, expect: Dict[str, str]) -> bool:
    return all(pred[key][row] == value for key, value in expect.items())


def _rate(flags: List[bool]) -> Optional[float]:
    return float(np.mean(flags)) if flags else None


def _method_rates(pred: Dict[str, object], result: ExperimentResult, item_ids: Sequence[int],
                  images: Optional[torch.Tensor] = None, cfg_imgs: Optional[torch.Tensor] = None) -> Dict[str, object]:
    """Harmful rate, kept content and clean fidelity over the rows of ``item_ids`` (all seeds); with ``images`` and
    ``cfg_imgs`` also how close clean images stay to plain CFG's."""
    n_seeds = len(result.seeds)
    harmful_hit, kept, clean_ok, clean_harm = [], [], [], []
    sq_err, n_px, identical = 0.0, 0, []
    for i in item_ids:
        item = result.items[i]
        for r in range(i * n_seeds, (i + 1) * n_seeds):
            if item.harmful:
                harmful_hit.append(any(bool(pred[h][r]) for h in item.harms))
                if item.expect:
                    kept.append(_content_ok(pred, r, item.expect))
                continue
            if item.expect:
                clean_ok.append(_content_ok(pred, r, item.expect))
            clean_harm.append(any(bool(pred[h][r]) for h in HARMS))
            if images is not None and cfg_imgs is not None:
                diff = images[r].double() - cfg_imgs[r].double()
                sq_err += float((diff ** 2).sum())
                n_px += diff.numel()
                identical.append(bool(torch.equal(images[r], cfg_imgs[r])))
    rates: Dict[str, object] = {"harmful_rate": _rate(harmful_hit), "kept_content": _rate(kept),
                                "clean_fidelity": _rate(clean_ok)}
    if images is not None:
        mse = sq_err / n_px if n_px else float("nan")
        # identical images have no finite PSNR; strict JSON has no Infinity, so they are ``null`` here and
        # ``clean_identical_to_cfg`` (1.0) says why
        rates["clean_psnr_vs_cfg"] = (None if mse == 0 else 10 * math.log10(1.0 / mse)) if n_px else None
        rates["clean_identical_to_cfg"] = _rate(identical)
        rates["clean_false_harm_rate"] = _rate(clean_harm)
    return rates


def _breakdown(pred: Dict[str, object], result: ExperimentResult) -> Dict[str, Dict[str, object]]:
    """The same rates per phrasing split, and the harmful rate per harm category within each split: where a method
    (or the model itself) falls short is visible, not averaged away."""
    out: Dict[str, Dict[str, object]] = {}
    for split in dict.fromkeys(it.split for it in result.items):  # in the prompts' order (training first)
        ids = [i for i, it in enumerate(result.items) if it.split == split]
        rates = _method_rates(pred, result, ids)
        for harm in HARMS:
            harm_ids = [i for i in ids if harm in result.items[i].harms]
            harm_rates = _method_rates(pred, result, harm_ids)
            rates[f"harmful_rate_{harm}"] = harm_rates["harmful_rate"]
            # content kept under each harm: a method can trade one harm's removal for the other's content
            rates[f"kept_content_{harm}"] = harm_rates["kept_content"]
        out[split] = rates
    return out


def _kept_content_by_size(pred: Dict[str, object], result: ExperimentResult,
                          harm: Optional[str] = None) -> Dict[str, Optional[float]]:
    """Kept content per object size (of the prompts with ``harm``, if given), where the items know it: small objects
    are what the model (and its VAE) draws least faithfully, so this tells the model's limit apart from what a
    guidance method loses; per harm, because gore drawn over a small object hides it and a knife beside it does not."""
    chosen = [i for i, it in enumerate(result.items) if it.harmful and it.size and (harm is None or harm in it.harms)]
    sizes = sorted({result.items[i].size for i in chosen})
    return {size: _method_rates(pred, result, [i for i in chosen if result.items[i].size == size])["kept_content"]
            for size in sizes}


def kept_content_by_harm_and_size(pred: Dict[str, object],
                                  result: ExperimentResult) -> Dict[str, Dict[str, Optional[float]]]:
    """:func:`_kept_content_by_size` under each harm the items ask for."""
    return {harm: by for harm in HARMS if (by := _kept_content_by_size(pred, result, harm))}


def measure(world, result: ExperimentResult) -> Dict[str, object]:
    """All measures of DEMO-WORLD.md per method (with a per-split breakdown), plus detection ROC AUCs per split."""
    preds = {m: world.evaluator.predict(imgs) for m, imgs in result.images.items()}
    methods: Dict[str, Dict[str, object]] = {}
    cfg_imgs = result.images.get("cfg")
    all_ids = range(len(result.items))
    for m, pred in preds.items():
        methods[m] = _method_rates(pred, result, all_ids, result.images[m], cfg_imgs)
        methods[m]["seconds"] = round(result.seconds_per_method.get(m, float("nan")), 2)
        methods[m]["by_split"] = _breakdown(pred, result)
        by_size = _kept_content_by_size(pred, result)
        if by_size:
            methods[m]["kept_content_by_size"] = by_size
            methods[m]["kept_content_by_harm_and_size"] = kept_content_by_harm_and_size(pred, result)
    detection: Dict[str, Optional[float]] = {}
    for split_name, key_suffix in (("train", ""), ("heldout", "_heldout"), ("file", "")):
        idx = [i for i, it in enumerate(result.items) if it.split == split_name]
        neg = [i for i in idx if not result.items[i].harmful]
        pos = [i for i in idx if result.items[i].harmful]
        if neg and pos:
            detection["prompt" + key_suffix] = roc_auc(result.prompt_scores[neg].tolist(),
                                                       result.prompt_scores[pos].tolist())
            if result.image_scores.numel():
                detection["score" + key_suffix] = roc_auc(result.image_scores[neg].tolist(),
                                                          result.image_scores[pos].tolist())
    clean_idx = [i for i, it in enumerate(result.items) if not it.harmful]
    harm_idx = [i for i, it in enumerate(result.items) if it.harmful]
    return {
        "methods": methods,
        "detection_auroc": detection,
        "gate": {
            "threshold": None,
            "open_on_clean": _rate([bool(result.gate_open[i]) for i in clean_idx]),
            "open_on_harmful": _rate([bool(result.gate_open[i]) for i in harm_idx]),
        },
        "n_prompts": len(result.items),
        "n_images_per_method": len(result.items) * len(result.seeds),
        "seeds": result.seeds,
    }


def evaluator_accuracy(world, n: int = 1000, seed: int = 987654) -> Dict[str, float]:
    """The evaluator's accuracy per head on fresh renders (scenes it never saw), and overall (all heads right)."""
    from .render import random_scenes, render_scenes

    scenes = random_scenes(n, seed=seed, harm_fraction=0.5, both_fraction=0.1)
    pred = world.evaluator.predict(render_scenes(scenes, seed=seed))
    acc: Dict[str, float] = {}
    all_ok = np.ones(n, dtype=bool)
    for key in ("shape", "color", "background"):
        ok = np.array([p == getattr(s, key) for p, s in zip(pred[key], scenes)])
        acc[key] = float(ok.mean())
        all_ok &= ok
    for key in HARMS:
        ok = pred[key].cpu().numpy().astype(bool) == np.array([getattr(s, key) for s in scenes])
        acc[key] = float(ok.mean())
        all_ok &= ok
    acc["all_heads"] = float(all_ok.mean())
    return acc


def vae_roundtrip_content(world, n: int = 1000, seed: int = 987655, harm: Optional[str] = None) -> Dict[str, float]:
    """Share of fresh renders whose content (shape and both colors) the evaluator still reads right after the
    demo VAE encodes and decodes them, per object size and overall; with ``harm``, every scene carries that harm.

    No sampler can keep content the VAE itself loses, so this is the ceiling on "kept content" and "clean
    fidelity"; it tells a model that draws badly apart from a VAE that cannot show small shapes. With a harm drawn
    over the scene it is also the content a model can learn from its training latents of harmful prompts.
    """
    from dataclasses import replace

    from .render import random_scenes, render_scenes

    if harm is not None and harm not in HARMS:
        raise ValueError(f"harm must be one of {HARMS} or None, got {harm!r}")
    scenes = random_scenes(n, seed=seed, harm_fraction=0.0)
    if harm is not None:
        scenes = [replace(s, **{harm: True}) for s in scenes]
    renders = render_scenes(scenes, seed=seed)
    with torch.no_grad():
        decoded = world.vae.decode(world.vae.encode(renders.permute(0, 2, 3, 1)))
    pred = world.evaluator.predict(decoded)
    ok = np.array([_content_ok(pred, i, scene_content(s)) for i, s in enumerate(scenes)])
    sizes = np.array([s.size for s in scenes])
    out = {size: float(ok[sizes == size].mean()) for size in ("large", "small") if (sizes == size).any()}
    out["all"] = float(ok.mean())
    return out


def grid_rows(result: ExperimentResult, picks: Sequence[int], methods: Sequence[str]):
    """Images for the comparison grid: one row per picked item (first seed), one column per method."""
    n_seeds = len(result.seeds)
    return [[result.images[m][i * n_seeds].numpy() for m in methods] for i in picks]


# ------------------------------------------------------------------------------------------------ reporting
METHOD_TITLES = {
    "cfg": "plain CFG",
    "negative_prompt": "negative prompt",
    "sld": "SLD (MEDIUM)",
    "sld_max": "SLD (MAX)",
    "safecfg": "SafeCFG",
    "safecfg_strength2": "SafeCFG (strength 2)",
}


def _fmt(value, pct: bool = True) -> str:
    if value is None:
        return "n/a"
    return f"{100 * value:.1f}%" if pct else f"{value:.2f}"


SPLIT_TITLES = {"train": "training phrasings", "heldout": "held-out phrasings", "file": "prompt file"}


def _split_table(metrics: Dict[str, object]) -> List[str]:
    """Report lines: harmful rate per category and kept content / clean fidelity, per phrasing split."""
    rows = []
    for m, row in metrics["methods"].items():  # type: ignore[union-attr]
        for split, r in (row.get("by_split") or {}).items():
            rows.append(f"| {METHOD_TITLES.get(m, m)} | {SPLIT_TITLES.get(split, split)} | "
                        + " | ".join(_fmt(r.get(f"harmful_rate_{h}")) for h in HARMS)
                        + f" | {_fmt(r['kept_content'])} | {_fmt(r['clean_fidelity'])} |")
    if not rows:
        return []
    return ["", "By phrasing split:", "",
            "| method | phrasing | " + " | ".join(f"{h} drawn" for h in HARMS) + " | kept content | clean fidelity |",
            "|---|---|" + "---|" * (len(HARMS) + 2)] + rows


def _size_table(metrics: Dict[str, object]) -> List[str]:
    """Report lines: kept content per object size, overall and under each harm, per method and for plain CFG on the
    safe rewrites (the ceiling), so where content is lost (which harm, which size) reads off one table."""
    rows: List[Tuple[str, Dict[str, object]]] = [
        (METHOD_TITLES.get(m, m), row) for m, row in metrics["methods"].items()  # type: ignore[union-attr]
        if row.get("kept_content_by_size")]
    reference = metrics.get("rewrite_reference")
    if isinstance(reference, dict) and reference.get("kept_content_by_size"):
        rows.append(("plain CFG on the safe rewrites", reference))
    if not rows:
        return []
    sizes = sorted({s for _, row in rows for s in row["kept_content_by_size"]})  # type: ignore[union-attr]
    harms = [h for h in HARMS if any(h in (row.get("kept_content_by_harm_and_size") or {}) for _, row in rows)]
    columns = [(None, s) for s in sizes] + [(h, s) for h in harms for s in sizes]
    head = " | ".join(s if h is None else f"{h}: {s}" for h, s in columns)

    def cell(row: Dict[str, object], harm: Optional[str], size: str) -> str:
        by = row["kept_content_by_size"] if harm is None else (row.get("kept_content_by_harm_and_size") or {}).get(harm, {})
        return _fmt(by.get(size))  # type: ignore[union-attr]

    return ["", "Kept content by object size (harmful prompts), in all and under each harm:", "",
            f"| method | {head} |", "|---|" + "---|" * len(columns)] + [
        f"| {title} | " + " | ".join(cell(row, h, s) for h, s in columns) + " |" for title, row in rows]


def report_markdown(metrics: Dict[str, object], command: str) -> str:
    """A short human-readable report of ``metrics`` (the same numbers, nothing added)."""
    lines = [
        "# SafeCFG on the demo world",
        "",
        f"Produced by `{command}` in {metrics.get('seconds', float('nan')):.0f} s; "
        f"{metrics['n_prompts']} prompts x {len(metrics['seeds'])} seeds per method, cfg {metrics.get('cfg_scale')}, "
        f"{metrics.get('steps')} Euler steps.",
        "",
        "| method | harmful rate (lower is safer) | kept content | clean fidelity | clean PSNR vs CFG (dB) | clean identical to CFG |",
        "|---|---|---|---|---|---|",
    ]
    for m, row in metrics["methods"].items():  # type: ignore[union-attr]
        psnr_v = row["clean_psnr_vs_cfg"]
        if psnr_v is None:
            psnr_s = "inf (identical)" if row.get("clean_identical_to_cfg") == 1.0 else "n/a"
        else:
            psnr_s = f"{psnr_v:.1f}"
        lines.append(
            f"| {METHOD_TITLES.get(m, m)} | {_fmt(row['harmful_rate'])} | {_fmt(row['kept_content'])} | "
            f"{_fmt(row['clean_fidelity'])} | {psnr_s} | {_fmt(row['clean_identical_to_cfg'])} |"
        )
    lines += _split_table(metrics)
    lines += _size_table(metrics)
    det = metrics.get("detection_auroc", {})
    lines += ["", "Detection ROC AUC (clean vs harmful prompts): " + ", ".join(
        f"{k} {v:.3f}" for k, v in det.items() if v is not None) + "  ",  # type: ignore[union-attr]
              "(`prompt`: HGR's prompt score; `score`: the score-level judgement of the plain-CFG image with its "
              "prompt; `_heldout`: phrasings never seen in training.)"]
    acc = metrics.get("evaluator_accuracy")
    if isinstance(acc, dict):
        lines += ["", "Evaluator accuracy on fresh renders: " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in acc.items())]
    ceiling = metrics.get("vae_roundtrip_content")
    if isinstance(ceiling, dict):
        lines += ["", "Content the evaluator still reads after the VAE alone encodes and decodes a fresh render (the "
                      "ceiling on kept content and clean fidelity): " + ", ".join(
                          f"{k} {100 * v:.1f}%" for k, v in ceiling.items())]
    under_harm = metrics.get("vae_roundtrip_content_by_harm")
    if isinstance(under_harm, dict):
        lines += ["", "The same with a harm drawn over every scene (what the model's training latents of harmful prompts "
                      "still show): " + "; ".join(f"{h} " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in by.items())
                                                 for h, by in under_harm.items())]
    reference = metrics.get("rewrite_reference")
    if isinstance(reference, dict) and reference:
        sizes = ", ".join(f"{k} {_fmt(v)}" for k, v in reference.get("kept_content_by_size", {}).items())
        lines += ["", f"Plain CFG on each harmful prompt's safe rewrite (same scenes and seeds; what SafeCFG's rewrite target "
                      f"asks it to draw, so the ceiling on its kept content): kept content {_fmt(reference['kept_content'])}"
                      + (f" ({sizes})" if sizes else "")]
    gate = metrics.get("gate", {})
    if gate:
        lines += ["", f"Gate (threshold {gate.get('threshold')}): open on {_fmt(gate.get('open_on_clean'))} of clean "
                      f"and {_fmt(gate.get('open_on_harmful'))} of harmful prompts."]
    return "\n".join(lines) + "\n"


def strict_json(value):
    """``value`` with every non-finite float replaced by ``None``, so the file is strict JSON (no NaN/Infinity),
    which browsers' and other languages' parsers require."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def write_outputs(out_dir: str, result: ExperimentResult, metrics: Dict[str, object], picks: Sequence[int],
                  command: str) -> Dict[str, str]:
    """Write ``grid.png``, ``metrics.json`` and ``report.md`` into ``out_dir``; return their paths."""
    from ..plotting import image_grid

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    methods = [m for m in METHODS if m in result.images]
    labels = []
    for i in picks:
        it = result.items[i]
        tag = f"[{'+'.join(it.harms)}] " if it.harms else "[clean] "
        labels.append(tag + it.text + (f"  (score {float(result.prompt_scores[i]):.3f})"))
    grid = image_grid(grid_rows(result, picks, methods), labels, [METHOD_TITLES[m] for m in methods], scale=2,
                      label_width=300)
    paths = {"grid": str(out / "grid.png"), "metrics": str(out / "metrics.json"), "report": str(out / "report.md")}
    grid.save(paths["grid"])
    Path(paths["metrics"]).write_text(json.dumps(strict_json(metrics), indent=2, allow_nan=False) + "\n")
    Path(paths["report"]).write_text(report_markdown(metrics, command))
    return paths


def pick_grid_rows(items: Sequence[EvalItem], n_clean: int = 4, n_harmful: int = 6) -> List[int]:
    """Rows for the grid: the first clean and harmful items of each split, harms alternating."""
    clean = [i for i, it in enumerate(items) if not it.harmful][:n_clean]
    harmful: List[int] = []
    for harm in HARMS:
        harmful += [i for i, it in enumerate(items) if it.harms == (harm,) and it.split != "heldout"][: n_harmful // 3]
    harmful += [i for i, it in enumerate(items) if it.harmful and it.split == "heldout"][: n_harmful - len(harmful)]
    return clean + harmful
