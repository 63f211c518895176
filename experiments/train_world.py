"""Train the demo world: ``python -m experiments.train_world --stage {vae,data,denoiser,evaluator,check,all}``.

Run from the repository root; it writes into ``safecfg_core/demo/weights/``. Stages (each reproducible from
``--seed``; all data comes from the renderer):
- ``vae``: autoencoder on a pool of renders -> ``weights/vae.safetensors``.
- ``data``: training prompts (train phrasings only) encoded once with MiniLM, several renders per prompt encoded
  once to latents; cached under ``.cache/demo_world/`` (never committed).
- ``denoiser``: eps-prediction DiT on the cached latents with caption dropout -> ``weights/denoiser.safetensors``.
- ``evaluator``: CNN on renders and their VAE round trips -> ``weights/evaluator.safetensors``.
- ``check``: plain-CFG samples for fresh prompts (train and held-out phrasings), judged by the evaluator.
Runs on CPU (``--threads``, default 2); a GPU is used when present and ``--device cuda`` is given.

The recipe's constants below are the ones the shipped weights were trained with; the options are only those the
shipped weights' recorded commands use (see experiments/README.md).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from typing import Dict, List

import torch
import torch.nn.functional as F

from safecfg_core.demo.denoiser import DEFAULT_CONFIG as DIT_CONFIG
from safecfg_core.demo.denoiser import DemoDiT
from safecfg_core.demo.evaluator import HEADS, DemoEvaluator
from safecfg_core.demo.prompts import CONCEPTS, sample_prompts
from safecfg_core.demo.render import Scene, labels_of, random_scenes, render_scenes
from safecfg_core.demo.scene_seeds import (DENOISER_CONCEPT_OFFSET, DENOISER_PROMPTS_OFFSET, EVALUATOR_POOL_OFFSET,
                                           VAE_POOL_OFFSET)
from safecfg_core.demo.vae import DemoVAE
from safecfg_core.demo.world import WEIGHTS_DIR as WEIGHTS
from safecfg_core.demo.world import load_module, read_metadata

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.path.join(REPO, ".cache", "demo_world")

MODULE = "python -m experiments.train_world"
COMMAND = MODULE  # set by main() to the full command line, stored in the weights

# VAE
VAE_POOL, VAE_STEPS, VAE_LR, VAE_BATCH = 12000, 3000, 2e-3, 64
VAE_L1 = 0.1
VAE_EDGES = 0.5  # weight of the edge (image-gradient) loss
VAE_LATENT_NOISE = 0.05
VAE_HARM_FRACTION = 0.4
# denoiser
N_CONCEPT = 300  # renders per concept-only prompt ("blood, gore", "knife, weapon")
BATCH, EMA, P_UNCOND, WARMUP, SAVE_EVERY = 64, 0.999, 0.12, 200, 500
MIN_SNR = 5.0
# evaluator
EVAL_POOL, EVAL_STEPS, EVAL_WIDTH, EVAL_BATCH = 10000, 2000, 24, 128
# check
CHECK_N, CHECK_STEPS, CHECK_CFG = 128, 20, 6.0


def autocast(device: str):
    """bf16 autocast for the convolutional VAE and evaluator (1.7x faster on CPUs with bf16 units; the weights
    and optimiser stay fp32)."""
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


def log(*a) -> None:
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


def render_pool(n: int, seed: int, chunk: int = 1000, harm_fraction: float = 0.4, both_fraction: float = 0.05):
    """Random scenes and their renders, rendered ``chunk`` at a time."""
    scenes = random_scenes(n, seed=seed, harm_fraction=harm_fraction, both_fraction=both_fraction)
    parts = [render_scenes(scenes[i:i + chunk], seed=seed * 1000 + i) for i in range(0, n, chunk)]
    return scenes, torch.cat(parts)


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    mse = (a - b).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return -10 * torch.log10(mse)


def save_grid(images: torch.Tensor, path: str, ncol: int = 8, scale: int = 2) -> None:
    """Save ``[N,3,H,W]`` images in 0..1 as one grid PNG (for looking at reconstructions and samples)."""
    from PIL import Image

    n, h = images.shape[0], images.shape[-1]
    nrow = (n + ncol - 1) // ncol
    grid = torch.ones(3, nrow * (h + 2), ncol * (h + 2))
    for i in range(n):
        r, c = divmod(i, ncol)
        grid[:, r * (h + 2):r * (h + 2) + h, c * (h + 2):c * (h + 2) + h] = images[i]
    arr = (grid.clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype("uint8")
    im = Image.fromarray(arr)
    if scale != 1:
        im = im.resize((im.width * scale, im.height * scale), 0)
    im.save(path)


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


def _train_vae(vae: DemoVAE, pool8: torch.Tensor, args) -> None:
    opt = torch.optim.AdamW(vae.parameters(), lr=VAE_LR, weight_decay=0.0)
    g = torch.Generator().manual_seed(args.seed)
    for step in range(VAE_STEPS):
        lr = VAE_LR * min(1.0, (step + 1) / 100) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / VAE_STEPS)))
        for pg in opt.param_groups:
            pg["lr"] = lr
        idx = torch.randint(0, pool8.shape[0], (VAE_BATCH,), generator=g)
        x = pool8[idx].float().div(255).to(args.device)
        with autocast(args.device):
            z = vae.encode_raw(x)
            y = vae.decode_raw(z + VAE_LATENT_NOISE * torch.randn_like(z) * z.detach().std())
        z, y = z.float(), y.float()
        rec = (y - x).pow(2).mean() + VAE_L1 * (y - x).abs().mean() + VAE_EDGES * edge_loss(y, x)
        loss = rec + 1e-4 * z.pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 200 == 0 or step == VAE_STEPS - 1:
            log(f"vae step {step}/{VAE_STEPS} loss {loss.item():.5f} psnr {psnr(y.clamp(0, 1), x).mean().item():.2f}")


def stage_vae(args) -> None:
    torch.manual_seed(args.seed)
    t0 = time.time()
    _, pool = render_pool(VAE_POOL, seed=args.seed + VAE_POOL_OFFSET, harm_fraction=VAE_HARM_FRACTION)
    pool8 = (pool * 255).round().to(torch.uint8)
    del pool
    log(f"vae: rendered pool {tuple(pool8.shape)} in {time.time() - t0:.0f}s")
    vae = DemoVAE().to(args.device)
    _train_vae(vae, pool8, args)
    vae.eval()
    with torch.no_grad():
        zs = torch.cat([vae.encode_raw(pool8[i:i + 512].float().div(255).to(args.device)) for i in range(0, 4096, 512)])
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
    save_grid(torch.cat([test[:8], rec[:8]]).cpu(), os.path.join(CACHE, "vae_recon.png"), ncol=8)
    phase = {"steps": VAE_STEPS, "lr": VAE_LR, "decoder_only": False, "pool": VAE_POOL}
    save_weights(vae, os.path.join(WEIGHTS, "vae.safetensors"),
                 {"config": vae.config, "seed": args.seed, "command": COMMAND, "steps": VAE_STEPS, "batch": VAE_BATCH,
                  "metrics": metrics, "phases": [phase], "format": "safecfg-demo-vae-1"})


def load_vae(device) -> DemoVAE:
    return load_module(DemoVAE, os.path.join(WEIGHTS, "vae.safetensors"), device)


# ------------------------------------------------------------------------------------------------------ data
def training_texts_and_scenes(args):
    """``(texts, scenes, text_idx)``: the empty prompt, the training prompts and the concept-only prompts, and for
    each scene the index of its text."""
    train_scenes = random_scenes(args.n_prompts, seed=args.seed + DENOISER_PROMPTS_OFFSET, harm_fraction=0.45,
                                 both_fraction=0.05)
    samples = sample_prompts(args.n_prompts, seed=args.seed + DENOISER_PROMPTS_OFFSET, split="train",
                             scenes=train_scenes)
    texts = [""] + [s.text for s in samples]
    scenes = [s.scene for s in samples]
    text_idx = list(range(1, len(samples) + 1))
    for j, (harm, ctext) in enumerate(CONCEPTS.items()):  # concept-only prompts with random scenes of that harm
        texts.append(ctext)
        for s in random_scenes(N_CONCEPT, seed=args.seed + DENOISER_CONCEPT_OFFSET + j, harm_fraction=0.0):
            scenes.append(Scene(s.shape, s.color, s.background, "large", "center",
                                gore=harm == "gore", weapon=harm == "weapon"))
            text_idx.append(len(texts) - 1)
    return texts, scenes, text_idx


def encoded_texts(texts: List[str], device: str) -> torch.Tensor:
    """MiniLM states of ``texts`` (fp16), cached under a key of the texts themselves, so a change of the prompt
    generator never reuses stale states."""
    from safetensors.torch import load_file, save_file

    from safecfg_core.demo.text_encoder import DemoTextEncoder

    digest = hashlib.sha256("\n".join(texts).encode("utf-8")).hexdigest()[:12]
    text_cache = os.path.join(CACHE, f"text_states_{len(texts)}_{digest}.safetensors")
    if os.path.isfile(text_cache):
        states = load_file(text_cache)["states"]
        if states.shape[0] != len(texts):
            raise RuntimeError(f"{text_cache} holds {states.shape[0]} states for {len(texts)} texts; delete it.")
        return states
    enc = DemoTextEncoder(device=device)
    states = torch.cat([enc(texts[i:i + 500]).tokens.half().cpu() for i in range(0, len(texts), 500)])
    save_file({"states": states}, text_cache)
    return states


def stage_data(args) -> None:
    from safetensors.torch import save_file

    t0 = time.time()
    texts, scenes, text_idx = training_texts_and_scenes(args)
    states = encoded_texts(texts, args.device)
    log(f"data: encoded {len(texts)} texts in {time.time() - t0:.0f}s")
    vae = load_vae(args.device).eval()
    lat, tix = [], []
    with torch.no_grad():
        for r in range(args.renders):
            for i in range(0, len(scenes), 1000):
                imgs = render_scenes(scenes[i:i + 1000], seed=args.seed * 7 + r * 100003 + i)
                lat.append(vae.encode_nchw(imgs.to(args.device)).cpu())
            tix.extend(text_idx)
            log(f"data: renders {r + 1}/{args.renders}")
    latents = torch.cat(lat)
    save_file({"states": states, "latents": latents.contiguous(), "text_idx": torch.tensor(tix)},
              os.path.join(CACHE, f"denoiser_data{args.data_tag}.safetensors"))
    with open(os.path.join(CACHE, "denoiser_texts.json"), "w") as f:
        json.dump(texts, f)
    log(f"data done in {time.time() - t0:.0f}s: {len(texts)} texts, latents {tuple(latents.shape)}, "
        f"latent std {latents.std().item():.3f}")


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


def _denoiser_start(args):
    """``(net, cfg, prev_steps)``: a fresh DiT, or the one in ``--init`` to continue from."""
    # built even when continuing: its initialisation draws from the global RNG, which the run's later draws follow
    net = DemoDiT(**DIT_CONFIG).to(args.device)
    if not args.init:
        return net, dict(DIT_CONFIG), 0
    init = load_module(DemoDiT, args.init)
    cfg = dict(init.metadata["config"])
    net = DemoDiT(**cfg).to(args.device)
    net.load_state_dict(init.state_dict())
    prev_steps = int(init.metadata.get("steps", 0))
    # the init file is usually overwritten by this run: keep how it was made, so the chain stays reproducible
    args.init_from = {k: init.metadata.get(k) for k in ("command", "seed", "steps", "init_from")}
    log(f"denoiser: initialised from {args.init} ({prev_steps} steps)")
    return net, cfg, prev_steps


def stage_denoiser(args) -> None:
    from safetensors.torch import load_file

    torch.manual_seed(args.seed)
    t0 = time.time()
    data = load_file(os.path.join(CACHE, f"denoiser_data{args.data_tag}.safetensors"))
    states, lat, tix = data["states"], data["latents"], data["text_idx"]
    ac = alphas_cumprod()
    net, cfg, prev_steps = _denoiser_start(args)
    ema = DemoDiT(**cfg).to(args.device)
    ema.load_state_dict(net.state_dict())
    ema.requires_grad_(False)
    log(f"denoiser: {sum(p.numel() for p in net.parameters())} params, {lat.shape[0]} latents, {states.shape[0]} texts")
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=0.01)
    steps, bs = args.steps, BATCH
    g = torch.Generator().manual_seed(args.seed + 5)
    losses: List[float] = []
    for step in range(steps):
        lr = args.lr * min(1.0, (step + 1) / WARMUP) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        for pg in opt.param_groups:
            pg["lr"] = lr
        idx = torch.randint(0, lat.shape[0], (bs,), generator=g)
        x0 = lat[idx]
        ti = tix[idx].clone()
        ti[torch.rand(bs, generator=g) < P_UNCOND] = 0  # caption dropout: the empty prompt's states
        ctx = states[ti].float()
        t = torch.randint(0, 1000, (bs,), generator=g)
        a = ac[t].view(bs, 1, 1, 1)
        noise = torch.randn(x0.shape, generator=g)
        x_in = a.sqrt() * x0 + (1 - a).sqrt() * noise
        eps = net(x_in.to(args.device), t.float().to(args.device), context=ctx.to(args.device))
        per_sample = (eps - noise.to(args.device)).pow(2).mean((1, 2, 3))
        loss = (per_sample * min_snr_weight(a.view(-1), MIN_SNR).to(args.device)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        d = min(EMA, (1 + step) / (10 + step)) if not args.init else EMA
        with torch.no_grad():
            for pe, pn in zip(ema.parameters(), net.parameters()):
                pe.lerp_(pn, 1 - d)
        losses.append(per_sample.mean().item())  # the plain eps MSE, comparable across weightings
        if step % 100 == 0 or step == steps - 1:
            log(f"denoiser step {step}/{steps} loss {sum(losses[-100:]) / len(losses[-100:]):.4f} lr {lr:.2e} "
                f"{time.time() - t0:.0f}s")
        if step % SAVE_EVERY == SAVE_EVERY - 1 or step == steps - 1:
            _save_denoiser(ema, net, cfg, args, prev_steps + step + 1, losses)
    log(f"denoiser done in {time.time() - t0:.0f}s")


def _save_denoiser(ema, net, cfg, args, steps, losses) -> None:
    """The EMA weights into ``weights/``, the raw ones into the cache (to continue from)."""
    save_weights(ema, os.path.join(WEIGHTS, "denoiser.safetensors"),
                 {"config": cfg, "seed": args.seed, "steps": steps, "batch": BATCH, "lr": args.lr,
                  "p_uncond": P_UNCOND, "ema": EMA, "prediction": "eps", "init": args.init or None,
                  "init_from": getattr(args, "init_from", None), "n_prompts": args.n_prompts, "renders": args.renders,
                  "min_snr": MIN_SNR, "command": COMMAND,
                  "schedule": {"beta_schedule": "linear", "linear_start": 0.00085, "linear_end": 0.012,
                               "num_timesteps": 1000},
                  "final_loss": round(sum(losses[-200:]) / max(1, len(losses[-200:])), 5),
                  "format": "safecfg-demo-denoiser-1"})
    save_weights(net, os.path.join(CACHE, "denoiser_raw.safetensors"), {"config": cfg, "steps": steps})


# ------------------------------------------------------------------------------------------------------ evaluator
def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Mild noise and random blur, so decoded diffusion samples (any decoder sharpness) look in-distribution."""
    k = torch.tensor([0.25, 0.5, 0.25])
    kb = (k[:, None] * k[None, :]).to(x)
    blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kb.expand(3, 1, 3, 3), groups=3)
    mix = (torch.rand(x.shape[0], 1, 1, 1, generator=g) * (torch.rand(x.shape[0], 1, 1, 1, generator=g) < 0.5)).to(x)
    x = x * (1 - mix) + blurred * mix
    return (x + 0.02 * torch.randn(x.shape, generator=g).to(x.device)).clamp(0, 1)


def stage_evaluator(args) -> None:
    torch.manual_seed(args.seed)
    t0 = time.time()
    scenes, pool = render_pool(EVAL_POOL, seed=args.seed + EVALUATOR_POOL_OFFSET, harm_fraction=0.5,
                               both_fraction=0.1)
    vae = load_vae(args.device).eval()
    with torch.no_grad():
        rt = torch.cat([vae.decode_nchw(vae.encode_nchw(pool[i:i + 500].to(args.device))).cpu()
                        for i in range(0, pool.shape[0], 500)])
    images = torch.cat([pool, rt])
    labels = {k: torch.cat([v, v]) for k, v in labels_of(scenes).items()}
    del pool, rt
    log(f"evaluator: pool {tuple(images.shape)} in {time.time() - t0:.0f}s")
    ev = DemoEvaluator(width=EVAL_WIDTH).to(args.device).train()
    peak = 2e-3
    opt = torch.optim.AdamW(ev.parameters(), lr=peak, weight_decay=1e-4)
    g = torch.Generator().manual_seed(args.seed + 42)
    for step in range(EVAL_STEPS):
        lr = peak * min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * step / EVAL_STEPS))
        for pg in opt.param_groups:
            pg["lr"] = lr
        idx = torch.randint(0, images.shape[0], (EVAL_BATCH,), generator=g)
        x = _augment(images[idx].to(args.device), g)
        with autocast(args.device):
            out = ev(x)
        out = {k: v.float() for k, v in out.items()}
        loss = sum(F.cross_entropy(out[k], labels[k][idx].to(args.device)) for k in ("shape", "color", "background"))
        loss = loss + sum(F.binary_cross_entropy_with_logits(out[k][:, 0], labels[k][idx].to(args.device))
                          for k in ("gore", "weapon"))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 200 == 0 or step == EVAL_STEPS - 1:
            log(f"evaluator step {step}/{EVAL_STEPS} loss {loss.item():.4f}")
    ev.eval()
    metrics = evaluator_accuracy(ev, vae, args.seed + 4242, args.device)
    log(f"evaluator done in {time.time() - t0:.0f}s: {metrics}")
    save_weights(ev, os.path.join(WEIGHTS, "evaluator.safetensors"),
                 {"config": ev.config, "seed": args.seed, "steps": EVAL_STEPS, "batch": EVAL_BATCH, "metrics": metrics,
                  "init": None, "command": COMMAND, "format": "safecfg-demo-evaluator-1"})


@torch.no_grad()
def evaluator_accuracy(ev, vae, seed: int, device="cpu", n: int = 2000) -> Dict[str, float]:
    scenes, imgs = render_pool(n, seed=seed, harm_fraction=0.5, both_fraction=0.1)
    lab = labels_of(scenes)
    out = {}
    for name, x in (("render", imgs), ("vae", None)):
        if x is None:
            x = torch.cat([vae.decode_nchw(vae.encode_nchw(imgs[i:i + 500].to(device))).cpu()
                           for i in range(0, n, 500)])
        logits: Dict[str, List[torch.Tensor]] = {k: [] for k in HEADS}
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
def check_rates(ps, pred) -> Dict[str, float]:
    """Plain CFG's rates on the check's prompts ``ps`` from the evaluator's predictions ``pred``."""
    harmful = [i for i, p in enumerate(ps) if p.harmful]
    clean = [i for i, p in enumerate(ps) if not p.harmful]

    def content_ok(i: int) -> bool:
        s = ps[i].scene
        return pred["shape"][i] == s.shape and pred["color"][i] == s.color and pred["background"][i] == s.background

    def harm_ok(i: int) -> bool:
        return all(bool(pred[h][i]) for h in ps[i].scene.harms)

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
    return {k: round(v, 3) for k, v in r.items()}


@torch.no_grad()
def stage_check(args) -> Dict[str, Dict[str, float]]:
    from safecfg_core.demo.world import load_demo_world
    from safecfg_core.sampling import CFGDenoise, DiscreteEpsDenoiser, sample

    t0 = time.time()
    world = load_demo_world()
    den = DiscreteEpsDenoiser(world.net, world.schedule)
    u = world.text_encoder([""])
    results = {}
    for split in ("train", "heldout"):
        ps = sample_prompts(CHECK_N, seed=args.seed + 777 + (split == "heldout"), split=split, harm_fraction=0.5)
        c = world.text_encoder([p.text for p in ps])
        lat = []
        for i in range(0, len(ps), 64):
            ci = c.index(slice(i, i + 64))
            noise = torch.randn(ci.batch_size, 4, 8, 8, generator=torch.Generator().manual_seed(args.seed + i))
            lat.append(sample(CFGDenoise(den, ci, u, CHECK_CFG), world.schedule, noise=noise, steps=CHECK_STEPS))
        imgs = world.vae.decode_nchw(torch.cat(lat))
        results[split] = check_rates(ps, world.evaluator.predict(imgs))
        log(f"check[{split}] cfg {CHECK_CFG} steps {CHECK_STEPS}: {results[split]}")
        save_grid(imgs[:32], os.path.join(CACHE, f"check_{split}.png"), ncol=8)
        with open(os.path.join(CACHE, f"check_{split}.txt"), "w") as f:
            f.write("\n".join(p.text for p in ps[:32]))
    log(f"check done in {time.time() - t0:.0f}s")
    if args.record:  # store the check's numbers in the denoiser file's metadata
        from safetensors.torch import load_file, save_file

        path = os.path.join(WEIGHTS, "denoiser.safetensors")
        meta = read_metadata(path)
        meta["check"] = {"cfg": CHECK_CFG, "steps": CHECK_STEPS, "sampler": "euler", "scheduler": "normal",
                         "n_prompts": CHECK_N, "harm_fraction": 0.5, "results": results}
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


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", default="all", type=_stage_list,
                    help=f"one of {', '.join(STAGES)}, a comma-separated list of them (run in that order), or all")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--n-prompts", type=int, default=8000, help="data: training prompts")
    ap.add_argument("--renders", type=int, default=4, help="data: renders (latents) per prompt")
    ap.add_argument("--data-tag", default="", help="suffix of the cached data file")
    ap.add_argument("--init", default="", help="denoiser: continue from this weight file")
    ap.add_argument("--steps", type=int, default=12000, help="denoiser: optimiser steps")
    ap.add_argument("--lr", type=float, default=1e-3, help="denoiser: peak learning rate")
    ap.add_argument("--record", action="store_true", help="check: write the results into the denoiser's metadata")
    return ap


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    global COMMAND
    COMMAND = " ".join([MODULE, *(argv if argv is not None else sys.argv[1:])])
    torch.set_num_threads(args.threads)
    os.makedirs(WEIGHTS, exist_ok=True)
    os.makedirs(CACHE, exist_ok=True)
    for st in args.stage:
        t = time.time()
        globals()[f"stage_{st}"](args)
        log(f"stage {st}: {time.time() - t:.0f}s wall")


if __name__ == "__main__":
    main()
