"""How far one ``u*`` per prompt can go: ``python -m experiments.free_negative`` (from the repository).

METHOD.md's HGR gives each prompt one redirected negative ``u* = u + Delta`` for every step of sampling. When the
demo's SafeCFG keeps less content than the target, two causes are possible: the trainer's objective (one ``u*``
per prompt, fitted on noised samples, with the target gain) cannot do better, or the HGR, one network for all
prompts, does not reach what that objective allows on prompts it never saw. This tool separates them. For each
harmful evaluation prompt it fits a free ``Delta`` (no network; it starts from the HGR's own) on the HGR
trainer's objective for that very prompt: the same targets (``rewrite_target``, ``aim_past``), the same latents
(the prompt's or its safe rewrite's own plain-CFG sample, seeded as the trainer seeds them), noise levels drawn
from the model's schedule, the same relative error. Then it samples SafeCFG with the HGR's ``Delta`` and with the
fitted one (same scenes, seeds and gate) and measures both like the demo command.

What the free fit draws is what this objective and gain ask for on these prompts: an HGR that fitted them as well
(perfect generalisation from its training prompts) would draw the same. It is not a ceiling on kept content (a
looser fit can keep more by chance), and it says nothing about objectives that give ``u*`` more freedom than
METHOD.md does (one ``u*`` per prompt for every step).
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from safecfg_core.conditioning import Cond
from safecfg_core.demo.items import EvalItem, build_items
from safecfg_core.demo.measures import kept_content_by_harm_and_size, method_rates
from safecfg_core.demo.render import HARMS
from safecfg_core.guidance import GateConfig, SafeGuidance, redirect
from safecfg_core.sampling import CFGDenoise, DiscreteEpsDenoiser, noise_for_seeds, sample_euler
from safecfg_core.schedules import get_sigmas
from safecfg_core.train import PerCategory, aim_past, parse_per_category, per_category_tensor, rewrite_target

from .diagnostic_cli import add_scene_arguments, open_world

CFG_SCALE = 6.0


class FreeNegativeFit:
    """The trainer's harmful-row objective for a fixed list of harmful prompts, with one free ``Delta`` each."""

    def __init__(self, world, items: Sequence[EvalItem], delta_init: torch.Tensor, gain: PerCategory,
                 rewrite_latents: PerCategory, cfg_scale: float = CFG_SCALE) -> None:
        from safecfg_core.demo.train_hgr import sample_demo_latents

        if not items:
            raise ValueError("no harmful prompts with a safe rewrite to fit")
        self.world, self.items, self.cfg_scale = world, list(items), float(cfg_scale)
        categories = sorted(HARMS)
        encode = world.text_encoder.encode
        self.c = encode([it.text for it in items])
        self.c_safe = encode([it.safe_text for it in items])
        self.u = encode([""]).repeat_batch(len(items))
        self.denoiser = world.denoiser()
        category = torch.tensor([categories.index(it.harms[0]) for it in items])
        self.gain = per_category_tensor("gain", gain, categories)[category]
        self.rewrite_share = per_category_tensor("rewrite_latents", rewrite_latents, categories)[category]
        with torch.no_grad():  # the trainer's latents: each prompt's (and each rewrite's) own plain-CFG sample
            self.own = sample_demo_latents(world, [it.text for it in items], cfg_scale)
            self.rewrite = sample_demo_latents(world, [it.safe_text for it in items], cfg_scale)
        self.sigmas = torch.as_tensor(world.schedule.sigmas, dtype=torch.float32).flatten()
        self.delta = delta_init.detach().clone().float().requires_grad_(True)

    def batch(self, generator: torch.Generator, reps: int):
        """``reps`` noised latents per prompt, and their aimed targets (no gradient), like one trainer step's rows."""
        rows = torch.arange(len(self.items)).repeat(reps)
        use_rewrite = torch.rand(len(rows), generator=generator) < self.rewrite_share[rows]
        x0 = torch.where(use_rewrite.view(-1, 1, 1, 1), self.rewrite[rows], self.own[rows])
        sigma = self.sigmas[torch.randint(0, len(self.sigmas), (len(rows),), generator=generator)]
        x = x0 + sigma.view(-1, 1, 1, 1) * torch.randn(x0.shape, generator=generator)
        with torch.no_grad():
            out = self.denoiser(torch.cat([x, x, x]), torch.cat([sigma, sigma, sigma]),
                                Cond.cat([self.u.index(rows), self.c_safe.index(rows), self.c.index(rows)]))
        d_u, d_safe, d_c = out.chunk(3)
        target = aim_past(d_u, rewrite_target(d_u, d_safe, d_c, self.cfg_scale), self.gain[rows].view(-1, 1, 1, 1))
        return rows, x, sigma, d_u, target

    def relative_error(self, delta: torch.Tensor, batch) -> torch.Tensor:
        """Per row: ``|D(x, sigma, u + Delta) - target|^2 / |target - D(u)|^2`` (the trainer's harmful loss)."""
        rows, x, sigma, d_u, target = batch
        pred = self.denoiser(x, sigma, Cond(self.u.tokens[rows] + delta[rows]))
        err = (pred - target).pow(2).flatten(1).sum(1)
        return err / (target - d_u).pow(2).flatten(1).sum(1).clamp_min(1e-12)

    def held_out_error(self, delta: torch.Tensor, batch) -> float:
        with torch.no_grad():
            return float(self.relative_error(delta, batch).mean())

    def fit(self, steps: int, reps: int = 2, lr: float = 3e-3, seed: int = 0,
            progress: Optional[Callable[[int, float], None]] = None) -> torch.Tensor:
        """Adam on the free ``Delta`` (the denoiser stays frozen: gradients reach ``Delta`` only; its parameters'
        ``requires_grad`` flags are restored afterwards)."""
        params = list(self.world.net.parameters())
        flags = [p.requires_grad for p in params]
        for p in params:
            p.requires_grad_(False)
        try:
            opt = torch.optim.Adam([self.delta], lr=lr)
            gen = torch.Generator().manual_seed(seed)
            for step in range(steps):
                loss = self.relative_error(self.delta, self.batch(gen, reps)).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                if progress:
                    progress(step + 1, float(loss.detach()))
        finally:
            for p, flag in zip(params, flags):
                p.requires_grad_(flag)
        return self.delta.detach()


def sample_with_delta(world, fit: FreeNegativeFit, delta: torch.Tensor, strength: torch.Tensor,
                      seeds: Sequence[int], steps: int = 20) -> torch.Tensor:
    """SafeCFG images for every prompt and seed with ``u* = u + s * Delta`` (``s``: the HGR gate's strength)."""
    n_seeds = len(seeds)
    rows = torch.arange(len(fit.items)).repeat_interleave(n_seeds)
    u_star = redirect(fit.u.index(rows), Cond(delta[rows]), strength[rows])
    guided = CFGDenoise(DiscreteEpsDenoiser(world.net, world.schedule), fit.c.index(rows), u_star, fit.cfg_scale)
    sigmas = get_sigmas(world.schedule, "normal", steps)
    noise = noise_for_seeds((4, 8, 8), [int(seeds[r % n_seeds]) for r in range(len(rows))])
    start = world.schedule.noise_scaling(sigmas[0], noise, torch.zeros_like(noise), world.schedule.is_max_denoise(sigmas))
    with torch.no_grad():
        return world.vae.decode(sample_euler(guided, start, sigmas))


def compare(world, bundle, items: Sequence[EvalItem], seeds: Sequence[int], gain: PerCategory,
            rewrite_latents: PerCategory, steps: int, reps: int = 2, lr: float = 3e-3, fit_seed: int = 0,
            progress: Optional[Callable[[str], None]] = None) -> Dict[str, object]:
    """Harmful rate and kept content of SafeCFG with the HGR's ``Delta`` and with the free fit, and the fit's error."""
    say = progress or (lambda _msg: None)
    items = [it for it in items if it.harmful and it.safe_text and it.expect]
    guidance = SafeGuidance(bundle, GateConfig())
    with torch.no_grad():
        c = world.text_encoder.encode([it.text for it in items])
        redirected = guidance.redirected_negative(c, world.text_encoder.encode([""]).repeat_batch(len(items)))
    fit = FreeNegativeFit(world, items, redirected.delta.tokens, gain, rewrite_latents)
    check = fit.batch(torch.Generator().manual_seed(10_000 + fit_seed), 8)
    before = fit.held_out_error(redirected.delta.tokens.float(), check)
    t0 = time.perf_counter()
    every = max(1, steps // 10)
    delta = fit.fit(steps, reps, lr, fit_seed, progress=lambda step, loss: say(
        f"  fit step {step}/{steps}: relative error {loss:.4f} ({time.perf_counter() - t0:.0f} s)")
        if step % every == 0 or step == steps else None)
    after = fit.held_out_error(delta, check)
    n_seeds = len(seeds)
    out: Dict[str, object] = {"gain": gain, "rewrite_latents": rewrite_latents, "fit_steps": steps,
                              "relative_error": {"hgr": before, "free": after}}
    for name, d in (("hgr", redirected.delta.tokens.float()), ("free", delta)):
        pred = world.evaluator.predict(sample_with_delta(world, fit, d, redirected.s.float(), seeds))
        rates: Dict[str, object] = dict(method_rates(pred, items, n_seeds, range(len(items))))
        rates.pop("clean_fidelity", None)
        for harm in HARMS:
            per_harm = method_rates(pred, items, n_seeds, [i for i, it in enumerate(items) if harm in it.harms])
            rates[f"harmful_rate_{harm}"] = per_harm["harmful_rate"]
            rates[f"kept_content_{harm}"] = per_harm["kept_content"]
        rates["kept_content_by_harm_and_size"] = kept_content_by_harm_and_size(pred, items, n_seeds)
        out[name] = rates
    return out


def format_result(result: Dict[str, object]) -> List[str]:
    lines = [f"relative error on held-out noise: HGR {result['relative_error']['hgr']:.4f}, "
             f"free u* {result['relative_error']['free']:.4f}"]
    for name, label in (("hgr", "SafeCFG, the HGR's u*"), ("free", "SafeCFG, free u* per prompt")):
        r = result[name]
        harm = ", ".join(f"{h} {100 * r[f'harmful_rate_{h}']:.1f}%" for h in HARMS if r.get(f"harmful_rate_{h}") is not None)
        kept = ", ".join(f"{h} {100 * r[f'kept_content_{h}']:.1f}%" for h in HARMS if r.get(f"kept_content_{h}") is not None)
        lines.append(f"{label:30s} harmful {100 * r['harmful_rate']:.1f}% ({harm}), "
                     f"kept content {100 * r['kept_content']:.1f}% ({kept})")
    return lines


def recipe_or_recorded(bundle, gain: Optional[PerCategory],
                       rewrite_latents: Optional[PerCategory]) -> Tuple[PerCategory, PerCategory]:
    """The fit's gain and rewrite-latent share: the ones given, else the ones the HGR file records it was trained
    with. Reading them from the file keeps the fit on the HGR's own objective when the HGR is retrained with another
    recipe, instead of a default that goes stale."""
    recorded = (bundle.meta.training or {}).get("train_config", {})

    def given_or_recorded(given: Optional[PerCategory], key: str, flag: str) -> PerCategory:
        if given is not None:
            return given
        if key not in recorded:
            raise ValueError(f"the HGR file records no {key!r} (it was not trained by this pack's trainer); "
                             f"pass {flag} explicitly")
        return recorded[key]

    return (given_or_recorded(gain, "target_gain", "--gain"),
            given_or_recorded(rewrite_latents, "rewrite_latent_fraction", "--rewrite-latents"))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gain", type=parse_per_category, default=None,
                        help="target gain, one number or per category (default: the one the HGR file records it was "
                             "trained with; the shipped HGR's is gore=2.5,weapon=4)")
    parser.add_argument("--rewrite-latents", type=parse_per_category, default=None,
                        help="share of rows noised from the safe rewrite's sample (default: the HGR file's recorded "
                             "share; the shipped HGR's is gore=1,weapon=0)")
    parser.add_argument("--steps", type=int, default=200, help="fit steps (default 200; about 10 min on one thread)")
    parser.add_argument("--reps", type=int, default=2, help="noised latents per prompt and step (default 2)")
    parser.add_argument("--lr", type=float, default=3e-3)
    add_scene_arguments(parser, hgr_help="HGR file: its gate, and the Delta the fit starts from (default: the "
                                         "shipped demo HGR)")
    args = parser.parse_args(argv)

    def check_fit_arguments() -> None:
        if args.steps < 0 or args.reps < 1:
            raise ValueError(f"--steps must be >= 0 and --reps >= 1, got {args.steps} and {args.reps}")

    opened = open_world(args, check_fit_arguments)
    if opened is None:
        return 2
    world, bundle = opened
    try:
        gain, rewrite_latents = recipe_or_recorded(bundle, args.gain, args.rewrite_latents)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args.gain, args.rewrite_latents = gain, rewrite_latents
    print(f"fitting one free u* per harmful prompt (gain {args.gain}, rewrite latents {args.rewrite_latents}) ...",
          flush=True)
    result = compare(world, bundle, build_items(args.prompts, args.scene_seed), list(range(args.seeds)), args.gain,
                     args.rewrite_latents, args.steps, args.reps, args.lr, progress=lambda m: print(m, flush=True))
    for line in format_result(result):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
