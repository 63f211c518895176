"""``python -m safecfg_core bench``: what SafeCFG costs next to plain CFG and the two baselines.

In ONE process, with interleaved repetitions (every repetition runs every method once, in a rotating order, so
drift in clock speed or load hits all methods alike), it times complete sampling runs (Euler, ``--steps`` steps,
batch 1, ComfyUI's ``normal`` schedule) of

* ``cfg``: plain CFG (2 model passes per step, batched in one call);
* ``safecfg``: SafeCFG with an HGR of the size shipped for the model family (``HGRConfig.for_family``); the HGR
  runs once per prompt inside the timed region, then CFG with ``u*`` (2 passes per step);
* ``negprompt``: CFG with the concept texts as the negative prompt (2 passes per step);
* ``sld``: SLD-style safety guidance, MEDIUM preset scaled to the step count (3 passes per step, one call);

and prints medians, spread (interquartile range), each method's ratio to plain CFG, the HGR's own time per prompt,
parameter counts and peak memory (``torch.cuda.max_memory_allocated`` on a GPU; on a CPU the process' peak
resident set size, reset before each method through ``/proc/self/clear_refs`` where Linux allows it). It then
times HGR training (``safecfg_core.train.train_hgr``): prompts per second, denoiser rows per second, peak memory.

Models (``--models``):

* ``demo``: the embedded demo world's denoiser (``safecfg_core.demo.world.load_demo_world``; when that is not
  available, the demo-world architecture ``DemoDiT`` with random weights, and the table says so). 4x8x8 latents.
* ``sd15``, ``sdxl``: ComfyUI's own ``UNetModel`` built with the real SD1.5 / SDXL configurations (random init,
  ``--dtype``, default fp16 on CUDA) at 512x512 / 1024x1024 (latents 64x64 / 128x128). ComfyUI is imported from
  ``--comfyui PATH`` or ``$COMFYUI_PATH``; this is the only place in ``safecfg_core`` that touches ComfyUI, only
  when these models are asked for, and only for the UNet class (the library itself never imports ComfyUI).
  Conditionings are random tensors of the family's shapes (the text encoder is not part of sampling time);
  SDXL's ADM vector ``y`` is the pooled vector followed by zeros for the size embeddings.

``--quick`` is for CI: a tiny demo-architecture network, 3 steps, 2 repetitions, 2 training steps.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

COMMAND = "bench"
HELP = "time CFG, SafeCFG, negative-prompt CFG and SLD sampling, and HGR training"

METHODS = ("cfg", "safecfg", "negprompt", "sld")
METHOD_LABELS = {
    "cfg": "plain CFG",
    "safecfg": "SafeCFG (HGR + CFG)",
    "negprompt": "negative prompt (concepts)",
    "sld": "SLD MEDIUM",
}
PASSES_PER_STEP = {"cfg": 2, "safecfg": 2, "negprompt": 2, "sld": 3}

# The real UNet configurations (the values ComfyUI's model detection produces for SD1.5 and SDXL checkpoints).
SD15_UNET = {
    "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True, "legacy": False,
    "adm_in_channels": None, "in_channels": 4, "model_channels": 320, "num_res_blocks": [2, 2, 2, 2],
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "channel_mult": [1, 2, 4, 4], "transformer_depth_middle": 1,
    "use_linear_in_transformer": False, "context_dim": 768, "num_heads": 8,
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    "use_temporal_attention": False, "use_temporal_resblock": False,
}
SDXL_UNET = {
    "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True, "legacy": False,
    "num_classes": "sequential", "adm_in_channels": 2816, "in_channels": 4, "model_channels": 320,
    "num_res_blocks": [2, 2, 2], "transformer_depth": [0, 0, 2, 2, 10, 10], "channel_mult": [1, 2, 4],
    "transformer_depth_middle": 10, "use_linear_in_transformer": True, "context_dim": 2048, "num_head_channels": 64,
    "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
    "use_temporal_attention": False, "use_temporal_resblock": False,
}
FAMILY_SHAPES = {  # family: (unet config, latent H=W at the native resolution, token dim, pooled dim)
    "sd15": (SD15_UNET, 64, 768, 0),
    "sdxl": (SDXL_UNET, 128, 2048, 1280),
}
HGR_FAMILY = {"sd15": "sd1", "sdxl": "sdxl", "demo": "demo"}

CONCEPTS = {"gore": "blood, gore", "weapon": "knife, weapon"}


# ------------------------------------------------------------------------------------------ measurement
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss_hwm_reset() -> bool:
    """Reset the kernel's peak-RSS counter of this process (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _proc_status_bytes(key: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _rss_hwm_bytes() -> Optional[int]:
    v = _proc_status_bytes("VmHWM")
    if v is not None:
        return v
    try:
        import resource

        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(kb) * (1 if sys.platform == "darwin" else 1024)
    except Exception:  # pragma: no cover
        return None


class PeakMemory:
    """Peak memory of what runs inside ``with``: CUDA allocator peak, or process peak RSS on a CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak: Optional[int] = None
        self.start: Optional[int] = None
        self.kind = "max_memory_allocated" if device.type == "cuda" else "peak RSS"
        self.reset_ok = True

    def __enter__(self) -> "PeakMemory":
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = int(torch.cuda.memory_allocated(self.device))
        else:
            self.start = _proc_status_bytes("VmRSS")
            self.reset_ok = _rss_hwm_reset()
            if not self.reset_ok:
                self.kind = "process peak RSS (not resettable here)"
        return self

    @property
    def increase(self) -> Optional[int]:
        """Peak minus what was in use when the measurement started (weights, torch itself)."""
        if self.peak is None or self.start is None:
            return None
        return max(0, self.peak - self.start)

    def __exit__(self, *exc: Any) -> None:
        _sync(self.device)
        if self.device.type == "cuda":
            self.peak = int(torch.cuda.max_memory_allocated(self.device))
        else:
            self.peak = _rss_hwm_bytes()


def _fmt_bytes(n: Optional[int]) -> str:
    if n is None:
        return "n/a"
    if n >= 1 << 30:
        return f"{n / (1 << 30):.2f} GiB"
    return f"{n / (1 << 20):.1f} MiB"


def _fmt_s(x: float) -> str:
    return f"{x * 1000:.1f} ms" if x < 10 else f"{x:.2f} s"


def _quantiles(xs: Sequence[float]) -> Dict[str, float]:
    xs = sorted(xs)
    if len(xs) == 1:
        return {"median": xs[0], "q1": xs[0], "q3": xs[0], "min": xs[0], "max": xs[0]}
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return {"median": statistics.median(xs), "q1": q[0], "q3": q[2], "min": xs[0], "max": xs[-1]}


def count_parameters(module: Any) -> int:
    params = getattr(module, "parameters", None)
    return int(sum(p.numel() for p in params())) if params is not None else 0


# ----------------------------------------------------------------------------------------------- models
@dataclass
class BenchModel:
    name: str
    description: str
    net: Any
    denoiser: Any
    schedule: Any
    latent_shape: List[int]
    c: Any
    u: Any
    concept: Any
    guidance: Any
    hgr_params: int
    hgr_description: str
    text_encoder: Callable[[Sequence[str]], Any]
    device: torch.device
    dtype: torch.dtype
    notes: List[str] = field(default_factory=list)


def _random_cond(n: int, tokens: int, dim: int, pooled: int, device, seed: int):
    from .conditioning import Cond

    g = torch.Generator().manual_seed(seed)
    t = torch.randn(n, tokens, dim, generator=g)
    p = torch.randn(n, pooled, generator=g) if pooled else None
    return Cond(t.to(device), None if p is None else p.to(device))


def _make_guidance(family: str, token_dim: int, pooled_dim: int, device, bundle=None):
    from .guidance import GateConfig, SafeGuidance
    from .hgr import HGRBundle, HGRConfig, HGRMeta

    if bundle is None:
        cfg = HGRConfig.for_family(HGR_FAMILY.get(family, family))
        if cfg.token_dim != token_dim or cfg.pooled_dim != pooled_dim:
            cfg = HGRConfig.for_family(HGR_FAMILY.get(family, family), token_dim=token_dim, pooled_dim=pooled_dim)
        bundle = HGRBundle.create(cfg, HGRMeta(categories=dict(CONCEPTS)), seed=0)
        how = "untrained (zero output; same compute as a trained one)"
    else:
        how = "trained (demo world file)"
    bundle.net.to(device).eval()
    # gate "always": the redirect runs for every prompt, the most work SafeCFG ever does per prompt
    guidance = SafeGuidance(bundle, GateConfig(mode="always"))
    c = bundle.config
    desc = f"HGR {c.model_family}: width {c.width}, depth {c.depth}, heads {c.heads}, {how}"
    return guidance, bundle.num_parameters(), desc


def _text_encoder_for(token_dim: int, pooled_dim: int):
    from .analytic import ToyTextEncoder

    return ToyTextEncoder(token_dim=token_dim, pooled_dim=pooled_dim)


def build_demo(device: torch.device, quick: bool) -> BenchModel:
    from .sampling import DiscreteEpsDenoiser
    from .schedules import DiscreteSchedule

    notes: List[str] = []
    world = None
    if not quick:
        try:
            from .demo.world import load_demo_world  # type: ignore

            world = load_demo_world(device=str(device))
        except Exception as exc:  # the demo world is optional for benchmarking
            notes.append(f"demo world not loadable ({type(exc).__name__}: {exc}); used its architecture, random init")
    if world is not None:
        net = world.denoiser_net
        schedule = getattr(world, "schedule", None) or DiscreteSchedule()
        te = world.text_encoder
        encode = te.encode if hasattr(te, "encode") and not callable(te) else te
        c = encode(["a bloody blue circle on a white background"]).to(device)
        u = encode([""]).to(device)
        k = encode([", ".join(CONCEPTS.values())]).to(device)
        bundle = None
        hgr_path = getattr(world, "hgr_path", None)
        if hgr_path and Path(hgr_path).exists():
            from .hgr import HGRBundle

            bundle = HGRBundle.load(hgr_path, device=str(device))
        guidance, hgr_params, hgr_desc = _make_guidance("demo", c.token_dim, 0, device, bundle)
        desc = "demo world (trained weights), 4x8x8 latents (64x64 px)"
        latent = [1, 4, 8, 8]
        text_encoder = encode
    else:
        from .demo.denoiser import DEFAULT_CONFIG, DemoDiT

        cfg = dict(DEFAULT_CONFIG)
        if quick:
            cfg.update(width=32, depth=1, heads=2)
        torch.manual_seed(0)
        net = DemoDiT(**cfg)
        with torch.no_grad():  # the zero-initialised output layers would make every method trivially equal
            for m in (net.out, net.out_ada):
                m.weight.normal_(0, 0.02)
        net = net.to(device).eval()
        schedule = DiscreteSchedule().to(device)
        d = cfg["context_dim"]
        c = _random_cond(1, 77, d, 0, device, 1)
        u = _random_cond(1, 77, d, 0, device, 2)
        k = _random_cond(1, 77, d, 0, device, 3)
        if quick:
            from .hgr import HGRBundle, HGRConfig, HGRMeta

            bundle = HGRBundle.create(HGRConfig(token_dim=d, model_family="demo", width=32, depth=1, heads=2),
                                      HGRMeta(categories=dict(CONCEPTS)), seed=0)
            guidance, hgr_params, hgr_desc = _make_guidance("demo", d, 0, device, bundle)
            hgr_desc = hgr_desc.replace("trained (demo world file)", "tiny (--quick)")
            desc = "tiny demo-architecture DiT (--quick), random init, 4x8x8 latents"
        else:
            guidance, hgr_params, hgr_desc = _make_guidance("demo", d, 0, device)
            desc = "demo-world architecture (DemoDiT, random init), 4x8x8 latents (64x64 px)"
        latent = [1, cfg["in_channels"], cfg["size"], cfg["size"]]
        text_encoder = _text_encoder_for(d, 0)
    denoiser = DiscreteEpsDenoiser(net, schedule)
    return BenchModel("demo", desc, net, denoiser, schedule, latent, c, u, k, guidance, hgr_params, hgr_desc,
                      text_encoder, device, getattr(net, "dtype", torch.float32), notes)


def _import_comfy_unet(comfyui: Optional[str], device: torch.device):
    """ComfyUI's UNetModel and ops, imported from the ComfyUI checkout at ``comfyui`` (or $COMFYUI_PATH)."""
    import importlib

    root = comfyui or os.environ.get("COMFYUI_PATH")
    if not root:
        raise SystemExit("error: the sd15/sdxl benchmarks build ComfyUI's UNet: pass --comfyui PATH or set COMFYUI_PATH.")
    root = str(Path(root).resolve())
    if not (Path(root) / "comfy").is_dir():
        raise SystemExit(f"error: {root} is not a ComfyUI checkout (no comfy/ folder).")
    if root not in sys.path:
        sys.path.insert(0, root)
    cli_args = importlib.import_module("comfy.cli_args")  # parses no argv unless ComfyUI's main enabled it
    if device.type == "cpu":
        cli_args.args.cpu = True
    openaimodel = importlib.import_module("comfy.ldm.modules.diffusionmodules.openaimodel")
    ops = importlib.import_module("comfy.ops")
    return openaimodel.UNetModel, ops.disable_weight_init, root


def build_comfy_family(family: str, device: torch.device, dtype: torch.dtype, comfyui: Optional[str],
                       quick: bool) -> BenchModel:
    from .sampling import DiscreteEpsDenoiser
    from .schedules import DiscreteSchedule

    UNetModel, ops, root = _import_comfy_unet(comfyui, device)
    unet_cfg, size, token_dim, pooled_dim = FAMILY_SHAPES[family]
    if quick:
        size = 8
    net = UNetModel(**unet_cfg, dtype=dtype, device=device, operations=ops)
    gen = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():  # disable_weight_init leaves weights uninitialised: a standard fan-in initialisation
        for pname, p in net.named_parameters():
            if p.dim() >= 2:
                fan_in = p[0].numel()
                w = torch.randn(p.shape, generator=gen, device=p.device, dtype=torch.float32) / fan_in ** 0.5
                p.copy_(w.to(p.dtype))
            elif pname.endswith("weight"):
                p.fill_(1.0)  # norm scales
            else:
                p.zero_()
    net.eval()
    schedule = DiscreteSchedule().to(device)
    c = _random_cond(1, 77, token_dim, pooled_dim, device, 1)
    u = _random_cond(1, 77, token_dim, pooled_dim, device, 2)
    k = _random_cond(1, 77, token_dim, pooled_dim, device, 3)
    adm = None
    if unet_cfg.get("adm_in_channels"):
        extra = int(unet_cfg["adm_in_channels"]) - pooled_dim

        def adm(pooled: torch.Tensor, _extra: int = extra) -> torch.Tensor:
            return torch.cat([pooled, pooled.new_zeros(pooled.shape[0], _extra)], dim=1)

    denoiser = DiscreteEpsDenoiser(net, schedule, dtype=dtype, adm=adm)
    guidance, hgr_params, hgr_desc = _make_guidance(family, token_dim, pooled_dim, device)
    px = size * 8
    desc = (f"{family.upper()} UNet (ComfyUI's UNetModel, real config, random init, {str(dtype)[6:]}), "
            f"{px}x{px} px ({size}x{size} latents); ComfyUI from {root}")
    return BenchModel(family, desc, net, denoiser, schedule, [1, 4, size, size], c, u, k, guidance, hgr_params,
                      hgr_desc, _text_encoder_for(token_dim, pooled_dim), device, dtype)


# ------------------------------------------------------------------------------------------------ timing
def make_guided(method: str, bm: BenchModel, cfg_scale: float, steps: int, sigmas: torch.Tensor):
    from .baselines import NegativePromptCFGDenoise, SLDDenoise, sld_preset
    from .sampling import CFGDenoise, SafeCFGDenoise

    if method == "cfg":
        return CFGDenoise(bm.denoiser, bm.c, bm.u, cfg_scale)
    if method == "safecfg":
        return SafeCFGDenoise(bm.denoiser, bm.c, bm.u, cfg_scale, bm.guidance)
    if method == "negprompt":
        return NegativePromptCFGDenoise(bm.denoiser, bm.c, bm.concept, cfg_scale)
    if method == "sld":
        return SLDDenoise(bm.denoiser, bm.c, bm.u, bm.concept, cfg_scale, sld_preset("MEDIUM", steps), sigmas=sigmas)
    raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")


def bench_sampling(bm: BenchModel, methods: Sequence[str], steps: int, reps: int, cfg_scale: float,
                   log: Callable[[str], None]) -> Dict[str, Any]:
    from .sampling import prepare_noise, sample
    from .schedules import get_sigmas

    sigmas = get_sigmas(bm.schedule, "normal", steps)
    noise = prepare_noise(bm.latent_shape, 0).to(bm.device)

    def run_once(method: str) -> None:
        with torch.no_grad():
            guided = make_guided(method, bm, cfg_scale, steps, sigmas)
            sample(guided, bm.schedule, noise=noise, sigmas=sigmas, device=bm.device)

    for m in methods:  # warm-up (kernels, allocator, caches)
        run_once(m)
    times: Dict[str, List[float]] = {m: [] for m in methods}
    for r in range(reps):
        order = list(methods[r % len(methods):]) + list(methods[:r % len(methods)])
        for m in order:
            _sync(bm.device)
            t0 = time.perf_counter()
            run_once(m)
            _sync(bm.device)
            times[m].append(time.perf_counter() - t0)
        log(f"  rep {r + 1}/{reps}: " + ", ".join(f"{m} {_fmt_s(times[m][-1])}" for m in methods))

    # HGR alone, once per prompt (what SafeCFG adds before the loop)
    hgr_times = []
    with torch.no_grad():
        for _ in range(max(3, reps)):
            _sync(bm.device)
            t0 = time.perf_counter()
            bm.guidance.redirected_negative(bm.c, bm.u)
            _sync(bm.device)
            hgr_times.append(time.perf_counter() - t0)

    memory: Dict[str, Optional[int]] = {}
    memory_increase: Dict[str, Optional[int]] = {}
    mem_kind = None
    for m in methods:
        with PeakMemory(bm.device) as pm:
            run_once(m)
        memory[m] = pm.peak
        memory_increase[m] = pm.increase
        mem_kind = pm.kind

    stats = {m: _quantiles(times[m]) for m in methods}
    base = stats["cfg"]["median"] if "cfg" in stats else None
    rows = []
    for m in methods:
        s = stats[m]
        rows.append({
            "method": m, "label": METHOD_LABELS[m], "passes_per_step": PASSES_PER_STEP[m],
            "median_s": s["median"], "q1_s": s["q1"], "q3_s": s["q3"], "min_s": s["min"], "max_s": s["max"],
            "ratio_to_cfg": (s["median"] / base) if base else None,
            "ratio_to_cfg_per_rep_median": (statistics.median(t / c for t, c in zip(times[m], times["cfg"]))
                                            if "cfg" in times else None),
            "peak_memory_bytes": memory[m], "peak_increase_bytes": memory_increase[m], "times_s": times[m],
        })
    return {"rows": rows, "hgr_per_prompt": _quantiles(hgr_times), "memory_kind": mem_kind}


def bench_training(bm: BenchModel, steps: int, batch_size: int, log: Callable[[str], None]) -> Dict[str, Any]:
    from .train import HarmfulPrompt, PromptSet, TrainConfig, train_hgr
    from .hgr import HGRConfig

    clean = [f"a {s} {c} {sh} on a {b} background" for s, c, sh, b in
             [("small", "red", "circle", "blue"), ("large", "green", "square", "white"),
              ("small", "purple", "star", "yellow"), ("large", "orange", "triangle", "gray")]]
    harmful = [HarmfulPrompt(f"a bloody {sh} with gore", "gore") for sh in ("circle", "square")] + \
              [HarmfulPrompt(f"a knife next to a {sh}", "weapon") for sh in ("star", "triangle")]
    prompts = PromptSet(clean=clean, harmful=harmful, concepts=dict(CONCEPTS))
    g = torch.Generator().manual_seed(0)
    latents = {p: torch.randn([2] + bm.latent_shape[1:], generator=g)
               for p in clean + [h.prompt for h in harmful]}
    hcfg = bm.guidance.bundle.config
    hgr_config = HGRConfig.from_dict(hcfg.to_dict())
    marks: Dict[int, float] = {}

    def progress(p) -> None:
        if p.phase == "train":
            _sync(bm.device)
            marks[p.step] = time.perf_counter()

    config = TrainConfig(steps=steps, batch_size=batch_size, seed=0, device=str(bm.device), warmup_steps=1)
    with PeakMemory(bm.device) as pm:
        t0 = time.perf_counter()
        result = train_hgr(bm.text_encoder, bm.denoiser, prompts, config, hgr_config=hgr_config, latents=latents,
                           progress=progress)
        total = time.perf_counter() - t0
    summary = result.summary
    rows_per_step = summary.get("denoiser_rows", 0) / max(1, steps)
    if steps >= 2 and 1 in marks and steps in marks:
        loop_s = marks[steps] - marks[1]
        timed_steps = steps - 1  # the first step (allocator, kernels) is left out
    else:
        loop_s = total
        timed_steps = steps
    out = {
        "steps": steps, "batch_size": batch_size, "timed_steps": timed_steps, "loop_s": loop_s,
        "total_s_incl_setup_and_calibration": total,
        "prompts_per_s": timed_steps * batch_size / loop_s if loop_s > 0 else None,
        "denoiser_rows_per_s": timed_steps * rows_per_step / loop_s if loop_s > 0 else None,
        "denoiser_calls_per_step": summary.get("denoiser_calls", 0) / max(1, steps),
        "denoiser_rows_per_step": rows_per_step,
        "peak_memory_bytes": pm.peak, "peak_increase_bytes": pm.increase, "memory_kind": pm.kind,
    }
    log(f"  training: {out['prompts_per_s']:.2f} prompts/s, {out['denoiser_rows_per_s']:.1f} denoiser rows/s")
    return out


# ------------------------------------------------------------------------------------------------ report
def format_report(result: Dict[str, Any]) -> str:
    lines = []
    env = result["environment"]
    lines.append(f"SafeCFG benchmark: {env['device_name']}, torch {env['torch']}, {env['threads']} CPU threads")
    lines.append(f"command: {env['command']}")
    for mres in result["models"]:
        lines.append("")
        lines.append(f"## {mres['model']}: {mres['description']}")
        for n in mres.get("notes", []):
            lines.append(f"note: {n}")
        lines.append(f"{mres['steps']} Euler steps, batch 1, cfg {mres['cfg_scale']}, {mres['reps']} interleaved "
                     f"repetitions (+1 warm-up); spread = interquartile range; x plain CFG = ratio of medians "
                     f"(median of the per-repetition ratios); memory = {mres['memory_kind']}")
        lines.append("")
        lines.append("| method | passes/step | median | spread (q1-q3) | x plain CFG (paired) | peak memory (+ during run) |")
        lines.append("|---|---|---|---|---|---|")
        for r in mres["rows"]:
            ratio = "n/a" if r["ratio_to_cfg"] is None else f"{r['ratio_to_cfg']:.3f}"
            if r.get("ratio_to_cfg_per_rep_median") is not None:
                ratio += f" ({r['ratio_to_cfg_per_rep_median']:.3f})"
            lines.append(f"| {r['label']} | {r['passes_per_step']} | {_fmt_s(r['median_s'])} | "
                         f"{_fmt_s(r['q1_s'])} - {_fmt_s(r['q3_s'])} | {ratio} | {_fmt_bytes(r['peak_memory_bytes'])} "
                         f"(+{_fmt_bytes(r['peak_increase_bytes'])}) |")
        h = mres["hgr_per_prompt"]
        lines.append("")
        lines.append(f"HGR per prompt (once per sampling run): median {_fmt_s(h['median'])} "
                     f"(q1-q3 {_fmt_s(h['q1'])} - {_fmt_s(h['q3'])})")
        pct = 100.0 * mres["hgr_params"] / max(1, mres["denoiser_params"])
        lines.append(f"parameters: denoiser {mres['denoiser_params']:,}, HGR {mres['hgr_params']:,} ({pct:.2f}% of the "
                     f"denoiser); {mres['hgr_description']}")
        t = mres.get("training")
        if t and "error" in t:
            lines.append(f"HGR training: not measured: {t['error']}")
        elif t:
            lines.append(f"HGR training: {t['prompts_per_s']:.2f} prompts/s, {t['denoiser_rows_per_s']:.1f} denoiser "
                         f"rows/s ({t['denoiser_calls_per_step']:.0f} calls, {t['denoiser_rows_per_step']:.0f} rows per "
                         f"step of batch {t['batch_size']}; {t['timed_steps']} timed steps), peak memory "
                         f"{_fmt_bytes(t['peak_memory_bytes'])} (+{_fmt_bytes(t['peak_increase_bytes'])} during training; {t['memory_kind']})")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few repetitions (CI smoke run)")
    parser.add_argument("--models", default=None,
                        help="comma list of demo, sd15, sdxl (default: sd15,sdxl on CUDA, demo on CPU)")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    parser.add_argument("--dtype", default=None, choices=["fp16", "bf16", "fp32"],
                        help="weights of the sd15/sdxl UNets (default fp16 on CUDA, fp32 on CPU)")
    parser.add_argument("--comfyui", default=None, help="ComfyUI checkout for the sd15/sdxl UNets ($COMFYUI_PATH)")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default 20; 3 with --quick)")
    parser.add_argument("--reps", type=int, default=None, help="interleaved repetitions (default 7; 2 with --quick)")
    parser.add_argument("--cfg", type=float, default=7.0, help="CFG scale (default 7)")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma list of {', '.join(METHODS)}")
    parser.add_argument("--train-steps", type=int, default=None, help="HGR training steps timed (0: skip)")
    parser.add_argument("--train-batch", type=int, default=None,
                        help="HGR training batch (default 16 demo, 8 sd15, 4 sdxl; 4 with --quick)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", default=None, help="also write the results as JSON here")


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but torch sees no CUDA device.")
    quick = bool(args.quick)
    models = [m.strip() for m in (args.models or ("sd15,sdxl" if device.type == "cuda" and not quick else "demo"))
              .split(",") if m.strip()]
    for m in models:
        if m not in ("demo", "sd15", "sdxl"):
            raise SystemExit(f"error: unknown model {m!r}; choose from demo, sd15, sdxl.")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        if m not in METHODS:
            raise SystemExit(f"error: unknown method {m!r}; choose from {', '.join(METHODS)}.")
    if "cfg" not in methods:
        methods.insert(0, "cfg")
    steps = args.steps or (3 if quick else 20)
    reps = args.reps or (2 if quick else 7)
    dtype_name = args.dtype or ("fp16" if device.type == "cuda" else "fp32")
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()})"
    result: Dict[str, Any] = {"environment": {
        "device": str(device), "device_name": device_name, "torch": torch.__version__,
        "threads": torch.get_num_threads(), "python": platform.python_version(),
        "command": "python -m safecfg_core bench " + " ".join(sys.argv[2:] if sys.argv[1:2] == ["bench"] else sys.argv[1:]),
    }, "models": []}
    for name in models:
        log(f"building {name} ...")
        if name == "demo":
            bm = build_demo(device, quick)
        else:
            bm = build_comfy_family(name, device, dtype, args.comfyui, quick)
        log(f"timing {name}: {bm.description}")
        s = bench_sampling(bm, methods, steps, reps, args.cfg, log)
        mres = {"model": name, "description": bm.description, "notes": bm.notes, "steps": steps, "reps": reps,
                "cfg_scale": args.cfg, "denoiser_params": count_parameters(bm.net), "hgr_params": bm.hgr_params,
                "hgr_description": bm.hgr_description, **s}
        train_steps = args.train_steps if args.train_steps is not None else (2 if quick else 10)
        if train_steps > 0:
            batch = args.train_batch or (4 if quick else {"demo": 16, "sd15": 8, "sdxl": 4}[name])
            log(f"timing HGR training on {name} ({train_steps} steps, batch {batch}) ...")
            try:
                mres["training"] = bench_training(bm, train_steps, batch, log)
            except RuntimeError as exc:
                msg = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
                if "inplace operation" in str(exc):
                    msg += (" (this ComfyUI's transformer blocks add in place (`x += n`), which autograd cannot "
                            "differentiate through; ComfyUI versions that write `x = n + x` (e.g. Oct 2025) work)")
                log(f"  training failed: {msg}")
                mres["training"] = {"error": msg, "steps": train_steps, "batch_size": batch}
        result["models"].append(mres)
        del bm
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(format_report(result), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m safecfg_core bench", description=HELP)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
