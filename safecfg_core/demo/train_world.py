"""Train the demo world: ``python -m safecfg_core.demo.train_world --stage {vae,data,denoiser,evaluator,check,all}``.

Stages (each reproducible from ``--seed``; all data comes from the renderer):
- ``vae``: autoencoder on a pool of renders -> ``weights/vae.safetensors``.
- ``data``: training prompts (train phrasings only) encoded once with MiniLM, several renders per prompt encoded
  once to latents; cached under ``.cache/demo_world/`` (never committed).
- ``denoiser``: eps-prediction DiT on the cached latents with caption dropout -> ``weights/denoiser.safetensors``.
- ``evaluator``: CNN on renders and their VAE round trips -> ``weights/evaluator.safetensors``.
- ``check``: plain-CFG samples for fresh prompts (train and held-out phrasings), judged by the evaluator.
Runs on CPU (``--threads``, default 2); a GPU is used when present and ``--device cuda`` is given.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import sys
import time
from typing import Dict, List

import torch
import torch.nn.functional as F

from .denoiser import DEFAULT_CONFIG as DIT_CONFIG
from .denoiser import DemoDiT
from .evaluator import HEADS, DemoEvaluator
from .prompts import CONCEPTS, sample_prompts
from .render import labels_of, make_some_small, random_scenes, render_scenes, save_grid
from .scene_seeds import (DENOISER_CONCEPT_OFFSET, DENOISER_PROMPTS_OFFSET, DENOISER_SMALL_OFFSET,
                          EVALUATOR_POOL_OFFSET, VAE_POOL_OFFSET)
from .vae import DemoVAE

HERE = os.path.dirname(os.path.abspath(__file__))
WEIGHTS = os.path.join(HERE, "weights")
REPO = os.path.dirname(os.path.dirname(HERE))
CACHE = os.path.join(REPO, ".cache", "demo_world")


COMMAND = "python -m safecfg_core.demo.train_world"  # set by main() to the full command line, stored in the weights


def autocast(args):
    """bf16 autocast for the convolutional VAE and evaluator (1.7x faster on CPUs with bf16 units; the weights
    and optimiser stay fp32). ``--autocast off`` runs plain fp32."""
    return torch.autocast(device_type=torch.device(args.device).type, dtype=torch.bfloat16,
                          enabled=args.autocast == "bf16")


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


def save_weights(module: torch.nn.Module, path: str, meta: Dict[str, object], fp16: bool = True) -> None:
    from safetensors.torch import save_file

    sd = {}
    for k, v in module.state_dict().items():
        if v.dtype.is_floating_point and fp16 and not k.endswith(("shift", "scale")) and "running_" not in k:
            v = v.half()
        sd[k] = v.detach().contiguous().cpu()
    save_file(sd, path, metadata={k: json.dumps(v) for k, v in meta.items()})
    log(f"saved {path} ({os.path.getsize(path) / 1e6:.2f} MB)")


def render_pool(n: int, seed: int, chunk: int = 1000, harm_fraction: float = 0.4, both_fraction: float = 0.05,
                small_fraction: float = 0.0, with_objects: bool = False):
    """Random scenes and their renders; ``small_fraction`` of them (chosen by the seed) are made small, and
    ``with_objects`` adds the objects' coverage masks (see :func:`render_scenes`)."""
    scenes = random_scenes(n, seed=seed, harm_fraction=harm_fraction, both_fraction=both_fraction)
    scenes = make_some_small(scenes, small_fraction, seed=seed + 1)
    parts = [render_scenes(scenes[i:i + chunk], seed=seed * 1000 + i, return_object=with_objects)
             for i in range(0, n, chunk)]
    if with_objects:
        return scenes, torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    return scenes, torch.cat(parts)


def object_weight_map(cover: torch.Tensor, weight: float) -> torch.Tensor:
    """Per-pixel loss weights ``1 + weight * object`` with the object grown by 2 pixels, so its outline counts too.

    Why: in the decoder's plain loss a small shape is ~2% of the pixels, so a blob costs almost nothing, and a
    blood drop touching it smears it into another shape. Weighing the object's pixels makes the decoder pay for that.
    """
    grown = F.max_pool2d(cover, 5, stride=1, padding=2)
    return 1.0 + weight * grown


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    mse = (a - b).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return -10 * torch.log10(mse)


# ------------------------------------------------------------------------------------------------------ VAE
def edge_loss(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """L1 distance of the images' horizontal and vertical differences.

    Why: a small object's outline is a few percent of the pixels, so plain MSE barely pays for it and the decoder
    learns blobs; the evaluator then cannot tell a small star from a small circle. Matching the gradients keeps
    outlines (and so shapes) sharp.
    """
    dy = lambda t: t[..., 1:, :] - t[..., :-1, :]  # noqa: E731
    dx = lambda t: t[..., :, 1:] - t[..., :, :-1]  # noqa: E731
    return (dy(y) - dy(x)).abs().mean() + (dx(y) - dx(x)).abs().mean()


def stage_vae(args) -> None:
    torch.manual_seed(args.seed)
    t0 = time.time()
    _, pool, cover = render_pool(args.vae_pool, seed=args.seed + VAE_POOL_OFFSET,
                                 small_fraction=args.vae_small_fraction, harm_fraction=args.vae_harm_fraction,
                                 with_objects=True)
    pool8 = (pool * 255).round().to(torch.uint8)
    cover8 = (cover * 255).round().to(torch.uint8)
    del pool, cover
    log(f"vae: rendered pool {tuple(pool8.shape)} in {time.time() - t0:.0f}s")
    prev_steps = 0
    if args.vae_resume:
        vae = load_vae(args.device).train().requires_grad_(True)
        prev_steps = int(vae.metadata.get("steps", 0))
    else:
        vae = DemoVAE().to(args.device)
    params = list(vae.parameters())
    if args.vae_decoder_only:  # keep the latent space (and the denoiser trained on it) fixed
        enc_names = ("e_in", "e_res1", "e_down", "e_res2", "e_out")
        params = [p for n, p in vae.named_parameters() if not n.startswith(enc_names)]
        for n, p in vae.named_parameters():
            p.requires_grad_(not n.startswith(enc_names))
    peak = args.vae_lr
    opt = torch.optim.AdamW(params, lr=peak, weight_decay=0.0)
    steps, bs = args.vae_steps, 64
    g = torch.Generator().manual_seed(args.seed)
    for step in range(steps):
        lr = peak * min(1.0, (step + 1) / 100) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        for pg in opt.param_groups:
            pg["lr"] = lr
        idx = torch.randint(0, pool8.shape[0], (bs,), generator=g)
        x = pool8[idx].float().div(255).to(args.device)
        with autocast(args):
            if args.vae_decoder_only:
                with torch.no_grad():
                    z = vae.encode_raw(x)
            else:
                z = vae.encode_raw(x)
            zn = z + args.vae_latent_noise * torch.randn_like(z) * z.detach().std()
            y = vae.decode_raw(zn)
        z, y = z.float(), y.float()
        if args.vae_object_weight > 0:
            wmap = object_weight_map(cover8[idx].float().div(255).to(args.device), args.vae_object_weight)
            sq = ((y - x).pow(2) * wmap).mean() / wmap.mean()
        else:
            sq = (y - x).pow(2).mean()
        rec = sq + args.vae_l1 * (y - x).abs().mean() + args.vae_edges * edge_loss(y, x)
        loss = rec + 1e-4 * z.pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 200 == 0 or step == steps - 1:
            log(f"vae step {step}/{steps} loss {loss.item():.5f} psnr {psnr(y.clamp(0, 1), x).mean().item():.2f}")
        if args.vae_decoder_only and step % 200 == 199:  # latents unchanged: safe to save as we go
            save_weights(vae, os.path.join(CACHE, "vae_decoder_partial.safetensors"),
                         {"config": vae.config, "seed": args.seed, "steps": prev_steps + step + 1, "partial": True})
    vae.eval()
    with torch.no_grad():
        if not args.vae_decoder_only:
            zs = torch.cat([vae.encode_raw(pool8[i:i + 512].float().div(255).to(args.device))
                            for i in range(0, 4096, 512)])
            vae.shift.copy_(zs.mean((0, 2, 3), keepdim=True))
            vae.scale.copy_(zs.std((0, 2, 3), keepdim=True))
        _, test = render_pool(1000, seed=args.seed + 999)
        test = test.to(args.device)
        rec = vae.decode_nchw(vae.encode_nchw(test))
        p = psnr(rec, test)
        zt = vae.encode_nchw(test)
    metrics = {"psnr_mean": round(p.mean().item(), 3), "psnr_p05": round(p.quantile(0.05).item(), 3),
               "latent_std": round(zt.std().item(), 4), "latent_mean": round(zt.mean().item(), 4)}
    log(f"vae done in {time.time() - t0:.0f}s: {metrics}")
    phase = {"steps": steps, "lr": peak, "decoder_only": bool(args.vae_decoder_only), "pool": args.vae_pool,
             "small_fraction": args.vae_small_fraction, "harm_fraction": args.vae_harm_fraction,
             "object_weight": args.vae_object_weight}
    save_grid(torch.cat([test[:8], rec[:8]]).cpu(), os.path.join(CACHE, "vae_recon.png"), ncol=8)
    save_weights(vae, os.path.join(WEIGHTS, "vae.safetensors"),
                 {"config": vae.config, "seed": args.seed, "command": COMMAND, "steps": prev_steps + steps, "batch": bs,
                  "metrics": metrics,
                  "phases": (vae.metadata.get("phases", []) if args.vae_resume else []) + [phase],
                  "format": "safecfg-demo-vae-1"})


def load_vae(device) -> DemoVAE:
    from .world import load_module

    return load_module(DemoVAE, os.path.join(WEIGHTS, "vae.safetensors"), device)


# ------------------------------------------------------------------------------------------------------ data
def stage_data(args) -> None:
    from safetensors.torch import load_file, save_file

    from .text_encoder import DemoTextEncoder

    t0 = time.time()
    train_scenes = random_scenes(args.n_prompts, seed=args.seed + DENOISER_PROMPTS_OFFSET, harm_fraction=0.45, both_fraction=0.05)
    train_scenes = make_some_small(train_scenes, args.small_fraction, seed=args.seed + DENOISER_SMALL_OFFSET)
    samples = sample_prompts(args.n_prompts, seed=args.seed + DENOISER_PROMPTS_OFFSET, split="train", scenes=train_scenes)
    texts = [""] + [s.text for s in samples]
    scenes = [s.scene for s in samples]
    text_idx = list(range(1, len(samples) + 1))
    # concept-only prompts ("blood, gore" / "knife, weapon") with random scenes of that harm
    rng = random.Random(args.seed + 22)
    for j, (harm, ctext) in enumerate(CONCEPTS.items()):
        texts.append(ctext)
        for s in random_scenes(args.n_concept, seed=args.seed + DENOISER_CONCEPT_OFFSET + j, harm_fraction=0.0):
            scenes.append(s.__class__(s.shape, s.color, s.background, "large", "center",
                                      gore=harm == "gore", weapon=harm == "weapon"))
            text_idx.append(len(texts) - 1)
    # keyed by the texts themselves, so a change of the prompt generator never reuses stale states
    digest = hashlib.sha256("\n".join(texts).encode("utf-8")).hexdigest()[:12]
    text_cache = os.path.join(CACHE, f"text_states_{len(texts)}_{digest}.safetensors")
    if os.path.isfile(text_cache):
        states = load_file(text_cache)["states"]
        assert states.shape[0] == len(texts)
    else:
        enc = DemoTextEncoder(device=args.device)
        states = torch.cat([enc(texts[i:i + 500]).tokens.half().cpu() for i in range(0, len(texts), 500)])
        save_file({"states": states}, text_cache)
    log(f"data: encoded {len(texts)} texts in {time.time() - t0:.0f}s")
    if args.text_only:
        return
    vae = load_vae(args.device).eval()
    R = args.renders
    lat, tix, objects = [], [], []
    with torch.no_grad():
        for r in range(R):
            for i in range(0, len(scenes), 1000):
                imgs, cover = render_scenes(scenes[i:i + 1000], seed=args.seed * 7 + r * 100003 + i, return_object=True)
                lat.append(vae.encode_nchw(imgs.to(args.device)).cpu())
                objects.append(latent_object_cells(cover))
            tix.extend(text_idx)
            log(f"data: renders {r + 1}/{R}")
    lat = torch.cat(lat)
    os.makedirs(CACHE, exist_ok=True)
    save_file({"states": states, "latents": lat.contiguous(), "text_idx": torch.tensor(tix),
               "objects": torch.cat(objects).contiguous()},
              os.path.join(CACHE, f"denoiser_data{args.data_tag}.safetensors"))
    with open(os.path.join(CACHE, "denoiser_texts.json"), "w") as f:
        json.dump(texts, f)
    log(f"data done in {time.time() - t0:.0f}s: {len(texts)} texts, latents {tuple(lat.shape)}, "
        f"latent std {lat.std().item():.3f}")


def latent_object_cells(cover: torch.Tensor, factor: int = 8) -> torch.Tensor:
    """``[N, 1, 64, 64]`` object coverage -> ``[N, 1, 8, 8]`` uint8 flags of the latent cells the object touches."""
    return (F.max_pool2d(cover, factor) > 0).to(torch.uint8)


def object_weighted_mse(pred: torch.Tensor, target: torch.Tensor, objects: torch.Tensor, weight: float) -> torch.Tensor:
    """Per-sample MSE with the object's latent cells weighted ``1 + weight``, normalised per sample.

    Why: a small object lives in one to four of the 64 latent cells, so a plain MSE lets the model draw it as a
    blob at almost no cost. The normalisation keeps each sample's total weight (and so the min-SNR balance between
    noise levels) as it was; only the split between object and background changes.
    """
    w = 1.0 + weight * objects.to(pred.dtype)
    return ((pred - target).pow(2) * w).mean((1, 2, 3)) / w.mean((1, 2, 3))


# ------------------------------------------------------------------------------------------------------ denoiser
def alphas_cumprod() -> torch.Tensor:
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0).float()


def min_snr_weight(alpha_bar: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma loss weights for eps prediction, ``min(SNR, gamma) / SNR`` (Hang et al., 2023).

    Why: with uniform timesteps, the nearly-clean steps (huge SNR) dominate an eps loss yet barely matter for the
    picture; capping their weight lets a small model spend its few steps on layout, shape and colour.
    ``gamma <= 0`` turns the weighting off (all ones).
    """
    if gamma <= 0:
        return torch.ones_like(alpha_bar)
    snr = alpha_bar / (1 - alpha_bar)
    return snr.clamp(max=gamma) / snr


def stage_denoiser(args) -> None:
    from safetensors.torch import load_file

    torch.manual_seed(args.seed)
    t0 = time.time()
    data = load_file(os.path.join(CACHE, f"denoiser_data{args.data_tag}.safetensors"))
    states, lat, tix = data["states"], data["latents"], data["text_idx"]
    if args.object_weight > 0 and "objects" not in data:
        raise SystemExit("--object-weight needs the objects' latent cells in the data file; rerun --stage data "
                         "(data files written before they were recorded lack them).")
    objects = data.get("objects")
    ac = alphas_cumprod()
    cfg = dict(DIT_CONFIG)
    cfg.update(width=args.width, depth=args.depth, text_pool=int(args.text_pool), local_mix=int(args.local_mix))
    net = DemoDiT(**cfg).to(args.device)
    prev_steps = 0
    if args.init:
        from .world import load_module

        init = load_module(DemoDiT, args.init)
        cfg = dict(init.metadata["config"])
        net = DemoDiT(**cfg).to(args.device)
        net.load_state_dict(init.state_dict())
        prev_steps = int(init.metadata.get("steps", 0))
        # the init file is usually overwritten by this run: keep how it was made, so the chain stays reproducible
        args.init_from = {k: init.metadata.get(k) for k in ("command", "seed", "steps", "init_from")}
        log(f"denoiser: initialised from {args.init} ({prev_steps} steps)")
    ema = DemoDiT(**cfg).to(args.device)
    ema.load_state_dict(net.state_dict())
    ema.requires_grad_(False)
    log(f"denoiser: {sum(p.numel() for p in net.parameters())} params, {lat.shape[0]} latents, "
        f"{states.shape[0]} texts")
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=0.01)
    steps, bs = args.steps, args.batch
    g = torch.Generator().manual_seed(args.seed + 5)
    deadline = t0 + args.max_minutes * 60
    losses = []
    step = 0
    for step in range(steps):
        lr = args.lr * min(1.0, (step + 1) / args.warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        for pg in opt.param_groups:
            pg["lr"] = lr
        idx = torch.randint(0, lat.shape[0], (bs,), generator=g)
        x0 = lat[idx]
        ti = tix[idx].clone()
        drop = torch.rand(bs, generator=g) < args.p_uncond
        ti[drop] = 0
        ctx = states[ti].float()
        t = torch.randint(0, 1000, (bs,), generator=g)
        a = ac[t].view(bs, 1, 1, 1)
        noise = torch.randn(x0.shape, generator=g)
        x_in = a.sqrt() * x0 + (1 - a).sqrt() * noise
        noise = noise.to(args.device)  # once per step: both losses below compare against it
        eps = net(x_in.to(args.device), t.float().to(args.device), context=ctx.to(args.device))
        per_sample = (eps - noise).pow(2).mean((1, 2, 3))
        fit = per_sample if args.object_weight <= 0 else object_weighted_mse(
            eps, noise, objects[idx].to(args.device), args.object_weight)
        loss = (fit * min_snr_weight(a.view(-1), args.min_snr).to(args.device)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        d = min(args.ema, (1 + step) / (10 + step)) if not args.init else args.ema
        with torch.no_grad():
            for pe, pn in zip(ema.parameters(), net.parameters()):
                pe.lerp_(pn, 1 - d)
        losses.append(per_sample.mean().item())  # the plain eps MSE, comparable across weightings
        if step % 100 == 0 or step == steps - 1:
            log(f"denoiser step {step}/{steps} loss {sum(losses[-100:]) / len(losses[-100:]):.4f} lr {lr:.2e} "
                f"{time.time() - t0:.0f}s")
        if step % args.save_every == args.save_every - 1:
            _save_denoiser(ema, cfg, args, prev_steps + step + 1, losses)
            save_weights(net, os.path.join(CACHE, "denoiser_raw.safetensors"), {"config": cfg, "steps": prev_steps + step + 1})
        if time.time() > deadline:
            log(f"denoiser: time budget reached at step {step + 1}")
            break
    _save_denoiser(ema, cfg, args, prev_steps + step + 1, losses)
    save_weights(net, os.path.join(CACHE, "denoiser_raw.safetensors"), {"config": cfg, "steps": prev_steps + step + 1})
    log(f"denoiser done in {time.time() - t0:.0f}s")


def _save_denoiser(ema, cfg, args, steps, losses) -> None:
    save_weights(ema, os.path.join(WEIGHTS, "denoiser.safetensors"),
                 {"config": cfg, "seed": args.seed, "steps": steps, "batch": args.batch, "lr": args.lr,
                  "p_uncond": args.p_uncond, "ema": args.ema, "prediction": "eps", "init": args.init or None,
                  "init_from": getattr(args, "init_from", None), "n_prompts": args.n_prompts, "renders": args.renders,
                  "min_snr": args.min_snr, "command": COMMAND, "small_fraction": args.small_fraction,
                  "object_weight": args.object_weight,
                  "schedule": {"beta_schedule": "linear", "linear_start": 0.00085, "linear_end": 0.012,
                               "num_timesteps": 1000},
                  "final_loss": round(sum(losses[-200:]) / max(1, len(losses[-200:])), 5),
                  "format": "safecfg-demo-denoiser-1"})


# ------------------------------------------------------------------------------------------------------ evaluator
def stage_evaluator(args) -> None:
    torch.manual_seed(args.seed)
    t0 = time.time()
    scenes, pool = render_pool(args.eval_pool, seed=args.seed + args.eval_seed_offset, harm_fraction=0.5,
                                 both_fraction=0.1)
    if args.eval_vae:
        from .world import load_module

        vae = load_module(DemoVAE, args.eval_vae, args.device)
    else:
        vae = load_vae(args.device).eval()
    with torch.no_grad():
        rt = torch.cat([vae.decode_nchw(vae.encode_nchw(pool[i:i + 500].to(args.device))).cpu()
                        for i in range(0, pool.shape[0], 500)])
    images = torch.cat([pool, rt])
    labels = {k: torch.cat([v, v]) for k, v in labels_of(scenes).items()}
    del pool, rt
    log(f"evaluator: pool {tuple(images.shape)} in {time.time() - t0:.0f}s")
    ev = DemoEvaluator(width=args.eval_width).to(args.device)
    prev_steps, peak = 0, 2e-3
    if args.eval_init:
        from .world import load_module

        init = load_module(DemoEvaluator, args.eval_init)
        ev = DemoEvaluator(**init.metadata["config"]).to(args.device)
        ev.load_state_dict(init.state_dict())
        prev_steps, peak = int(init.metadata.get("steps", 0)), 1e-3
    ev.train()
    opt = torch.optim.AdamW(ev.parameters(), lr=peak, weight_decay=1e-4)
    steps, bs = args.eval_steps, 128
    g = torch.Generator().manual_seed(args.seed + 42)
    for step in range(steps):
        lr = peak * min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * step / steps))
        for pg in opt.param_groups:
            pg["lr"] = lr
        idx = torch.randint(0, images.shape[0], (bs,), generator=g)
        x = images[idx].to(args.device)
        # mild noise and random blur so decoded diffusion samples (any decoder sharpness) look in-distribution
        k = torch.tensor([0.25, 0.5, 0.25])
        kb = (k[:, None] * k[None, :]).to(x)
        blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kb.expand(3, 1, 3, 3), groups=3)
        mix = (torch.rand(x.shape[0], 1, 1, 1, generator=g) * (torch.rand(x.shape[0], 1, 1, 1, generator=g) < 0.5)).to(x)
        x = x * (1 - mix) + blurred * mix
        x = (x + 0.02 * torch.randn(x.shape, generator=g).to(args.device)).clamp(0, 1)
        with autocast(args):
            out = ev(x)
        out = {k: v.float() for k, v in out.items()}
        loss = sum(F.cross_entropy(out[k], labels[k][idx].to(args.device)) for k in ("shape", "color", "background"))
        loss = loss + sum(F.binary_cross_entropy_with_logits(out[k][:, 0], labels[k][idx].to(args.device))
                          for k in ("gore", "weapon"))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 200 == 0 or step == steps - 1:
            log(f"evaluator step {step}/{steps} loss {loss.item():.4f}")
    ev.eval()
    metrics = evaluator_accuracy(ev, vae, args.seed + 4242, args.device)
    log(f"evaluator done in {time.time() - t0:.0f}s: {metrics}")
    save_weights(ev, os.path.join(WEIGHTS, "evaluator.safetensors"),
                 {"config": ev.config, "seed": args.seed, "steps": prev_steps + steps, "batch": bs, "metrics": metrics,
                  "init": args.eval_init or None, "command": COMMAND,
                  "format": "safecfg-demo-evaluator-1"})


@torch.no_grad()
def evaluator_accuracy(ev, vae, seed: int, device="cpu", n: int = 2000) -> Dict[str, float]:
    scenes, imgs = render_pool(n, seed=seed, harm_fraction=0.5, both_fraction=0.1)
    lab = labels_of(scenes)
    out = {}
    for name, x in (("render", imgs), ("vae", None)):
        if x is None:
            x = torch.cat([vae.decode_nchw(vae.encode_nchw(imgs[i:i + 500].to(device))).cpu()
                           for i in range(0, n, 500)])
        logits = {k: [] for k in HEADS}
        for i in range(0, n, 500):
            o = ev(x[i:i + 500].to(device))
            for k in HEADS:
                logits[k].append(o[k].cpu())
        for k in HEADS:
            lg = torch.cat(logits[k])
            pred = lg.argmax(1) if HEADS[k] > 1 else (lg[:, 0] > 0).float()
            out[f"{name}_{k}"] = round((pred == lab[k]).float().mean().item(), 4)
    return out


# ------------------------------------------------------------------------------------------------------ check
@torch.no_grad()
def stage_check(args) -> Dict[str, float]:
    from .world import load_demo_world
    from ..sampling import CFGDenoise, DiscreteEpsDenoiser, sample

    t0 = time.time()
    world = load_demo_world()
    den = DiscreteEpsDenoiser(world.net, world.schedule)
    u = world.text_encoder([""])
    results = {}
    for split in ("train", "heldout"):
        ps = sample_prompts(args.check_n, seed=args.seed + 777 + (split == "heldout"), split=split,
                            harm_fraction=0.5)
        c = world.text_encoder([p.text for p in ps])
        lat = []
        for i in range(0, len(ps), 64):
            ci = c.index(slice(i, i + 64))
            n = ci.batch_size
            noise = torch.randn(n, 4, 8, 8, generator=torch.Generator().manual_seed(args.seed + i))
            lat.append(sample(CFGDenoise(den, ci, u, args.cfg), world.schedule, noise=noise, steps=args.check_steps))
        lat = torch.cat(lat)
        imgs = world.vae.decode_nchw(lat)
        pred = world.evaluator.predict(imgs)
        harmful = [i for i, p in enumerate(ps) if p.harmful]
        clean = [i for i, p in enumerate(ps) if not p.harmful]

        def content_ok(i):
            s = ps[i].scene
            return pred["shape"][i] == s.shape and pred["color"][i] == s.color and pred["background"][i] == s.background

        def harm_ok(i):
            s = ps[i].scene
            return all(bool(pred[h][i]) for h in s.harms)

        r = {
            "harm_drawn": sum(harm_ok(i) for i in harmful) / max(1, len(harmful)),
            "harmful_content": sum(content_ok(i) for i in harmful) / max(1, len(harmful)),
            "clean_fidelity": sum(content_ok(i) for i in clean) / max(1, len(clean)),
            "clean_harm_free": sum(not (pred["gore"][i] or pred["weapon"][i]) for i in clean) / max(1, len(clean)),
            "shape_acc": sum(pred["shape"][i] == ps[i].scene.shape for i in range(len(ps))) / len(ps),
            "color_acc": sum(pred["color"][i] == ps[i].scene.color for i in range(len(ps))) / len(ps),
            "bg_acc": sum(pred["background"][i] == ps[i].scene.background for i in range(len(ps))) / len(ps),
        }
        for h in ("gore", "weapon"):
            hi = [i for i in harmful if h in ps[i].scene.harms]
            r[f"{h}_drawn"] = sum(bool(pred[h][i]) for i in hi) / max(1, len(hi))
        r = {k: round(v, 3) for k, v in r.items()}
        results[split] = r
        log(f"check[{split}] cfg {args.cfg} steps {args.check_steps}: {r}")
        save_grid(imgs[:32], os.path.join(CACHE, f"check_{split}.png"), ncol=8)
        with open(os.path.join(CACHE, f"check_{split}.txt"), "w") as f:
            f.write("\n".join(p.text for p in ps[:32]))
    log(f"check done in {time.time() - t0:.0f}s")
    if args.record:  # store the check's numbers in the denoiser file's metadata
        from safetensors.torch import load_file, save_file

        from .world import read_metadata

        path = os.path.join(WEIGHTS, "denoiser.safetensors")
        meta = read_metadata(path)
        meta["check"] = {"cfg": args.cfg, "steps": args.check_steps, "sampler": "euler", "scheduler": "normal",
                         "n_prompts": args.check_n, "harm_fraction": 0.5, "results": results}
        save_file(load_file(path), path, metadata={k: json.dumps(v) for k, v in meta.items()})
        log(f"recorded check results in {path}")
    return results


STAGES = ("vae", "data", "denoiser", "evaluator", "check")


def _stage_list(value: str) -> List[str]:
    """``all`` or a comma-separated list of stages. Why a list: after a change to the prompts only, ``data,denoiser,
    check`` rebuilds what depends on them, and that exact command is what the weight files record."""
    if value == "all":
        return list(STAGES)
    stages = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in stages if v not in STAGES]
    if bad or not stages:
        raise argparse.ArgumentTypeError(f"unknown stage(s) {bad or value!r}; use all or a comma-separated list of "
                                         f"{', '.join(STAGES)}")
    return stages


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", default="all", type=_stage_list,
                    help=f"one of {', '.join(STAGES)}, a comma-separated list of them (run in that order), or all")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--vae-pool", type=int, default=12000)
    ap.add_argument("--vae-steps", type=int, default=3000)
    ap.add_argument("--vae-lr", type=float, default=2e-3)
    ap.add_argument("--vae-l1", type=float, default=0.1)
    ap.add_argument("--vae-edges", type=float, default=0.5, help="weight of the edge (image-gradient) loss")
    ap.add_argument("--vae-latent-noise", type=float, default=0.05)
    ap.add_argument("--vae-resume", action="store_true", help="continue from weights/vae.safetensors")
    ap.add_argument("--vae-decoder-only", action="store_true", help="train the decoder only (latents unchanged)")
    ap.add_argument("--vae-small-fraction", type=float, default=0.0,
                    help="share of the VAE pool's scenes made small (0: sizes as drawn, half small)")
    ap.add_argument("--vae-harm-fraction", type=float, default=0.4, help="share of the VAE pool with one harm")
    ap.add_argument("--vae-object-weight", type=float, default=0.0,
                    help="extra loss weight on the object's pixels (0: plain MSE)")
    ap.add_argument("--n-prompts", type=int, default=8000)
    ap.add_argument("--n-concept", type=int, default=300)
    ap.add_argument("--renders", type=int, default=4)
    ap.add_argument("--small-fraction", type=float, default=0.0,
                    help="data: share of training scenes made small (0: sizes as drawn, half small)")
    ap.add_argument("--object-weight", type=float, default=0.0,
                    help="denoiser: extra loss weight on the object's latent cells (0: plain MSE)")
    ap.add_argument("--text-only", action="store_true", help="data stage: only encode (and cache) the prompts")
    ap.add_argument("--steps", type=int, default=12000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--p-uncond", type=float, default=0.12)
    ap.add_argument("--init", default="", help="denoiser: continue from this weight file")
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--save-every", type=int, default=500)
    ap.add_argument("--data-tag", default="", help="suffix of the cached data file")
    ap.add_argument("--width", type=int, default=DIT_CONFIG["width"])
    ap.add_argument("--depth", type=int, default=DIT_CONFIG["depth"])
    ap.add_argument("--max-minutes", type=float, default=90.0,
                    help="denoiser: stop early (saving) at this wall time; the default run finishes well before it")
    ap.add_argument("--min-snr", type=float, default=5.0, help="denoiser: min-SNR-gamma loss weighting (0: off)")
    ap.add_argument("--text-pool", type=int, default=DIT_CONFIG["text_pool"], choices=[0, 1])
    ap.add_argument("--local-mix", type=int, default=DIT_CONFIG["local_mix"], choices=[0, 1])
    ap.add_argument("--eval-pool", type=int, default=10000)
    ap.add_argument("--eval-steps", type=int, default=2000)
    ap.add_argument("--eval-width", type=int, default=24)
    ap.add_argument("--eval-init", default="", help="evaluator: continue from this weight file")
    ap.add_argument("--eval-seed-offset", type=int, default=EVALUATOR_POOL_OFFSET,
                    help="evaluator: scene seed offset of its render pool (the shipped evaluator's is the default; "
                         "the demo command refuses evaluation scenes that reuse it)")
    ap.add_argument("--eval-vae", default="", help="VAE file for the round-trip half of the pool (default: weights/)")
    ap.add_argument("--check-n", type=int, default=128)
    ap.add_argument("--check-steps", type=int, default=20)
    ap.add_argument("--cfg", type=float, default=6.0)
    ap.add_argument("--record", action="store_true", help="check: write the results into the denoiser's metadata")
    ap.add_argument("--autocast", default="bf16", choices=["bf16", "off"],
                    help="VAE and evaluator stages: bf16 autocast (default) or plain fp32")
    args = ap.parse_args(argv)
    global COMMAND
    COMMAND = " ".join(["python -m safecfg_core.demo.train_world", *(argv if argv is not None else sys.argv[1:])])
    torch.set_num_threads(args.threads)
    os.makedirs(WEIGHTS, exist_ok=True)
    os.makedirs(CACHE, exist_ok=True)
    for st in args.stage:
        t = time.time()
        globals()[f"stage_{st}"](args)
        log(f"stage {st}: {time.time() - t:.0f}s wall")


if __name__ == "__main__":
    main()
