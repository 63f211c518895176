"""What a training run prepares once (encodings, latents, per-category settings) and the batch it draws each step.

All randomness of a step comes from the run's CPU generator, in a fixed order (rows, rewrite-latent swaps, latent
pick, sigmas, noise), so the same seed and checkpoint give the same batches on any device.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Tuple

import torch

from ..conditioning import Cond, TextEncoder
from ..errors import TrainingInputError
from ..guidance import check_finite
from ..hgr import HGRConfig
from .config import TrainConfig, per_category_tensor
from .prompts import PromptSet
from .state import LatentCache, gather_latents


@dataclass
class TrainData:
    """Everything fixed for a run. Row i of ``c_all`` is clean prompt i, then the harmful prompts follow."""

    hgr_config: HGRConfig
    categories: List[str]
    c_all: Cond
    u1: Cond
    k_all: Cond
    r_all: Optional[Cond]
    harm_cat: torch.Tensor       # [n_harm] category index of each harmful prompt
    rewrite_idx: torch.Tensor    # [n_harm] row of its rewrite in r_all, -1: none
    delta_scale: float           # scale of a concept-sized change of the negative (for the |Delta|^2 penalty)
    n_clean: int
    n_harm: int
    n_rewrites: int
    gain_of: torch.Tensor        # [n_categories]
    aims_past_target: bool
    rewrite_fraction_of: torch.Tensor
    use_rewrite_latents: bool
    rewrite_lat_row: torch.Tensor  # [n_harm] latent row of its rewrite's samples, -1: none
    lat_flat: torch.Tensor
    lat_counts: torch.Tensor
    lat_offsets: torch.Tensor
    latent_shape: Tuple[int, ...]


@dataclass
class Batch:
    """One step's rows: ``n_clean_rows`` clean rows first, then harmful ones (``h_cat``/``h_rw`` per harmful row)."""

    n_clean_rows: int
    x: torch.Tensor
    sigma: torch.Tensor
    c: Cond
    u: Cond
    h_cat: torch.Tensor
    h_rw: torch.Tensor
    d_u: Optional[torch.Tensor] = None
    target: Optional[torch.Tensor] = None


def _config_for(enc_u: Cond) -> HGRConfig:
    return HGRConfig(token_dim=enc_u.token_dim, pooled_dim=0 if enc_u.pooled is None else int(enc_u.pooled.shape[1]),
                     model_family="unknown")


def default_hgr_config(text_encoder: TextEncoder, negative_prompt: str = "") -> HGRConfig:
    """An HGR config for this encoder's widths, when the caller gives none."""
    with torch.no_grad():
        return _config_for(text_encoder([negative_prompt]))


ENCODE_CHUNK = 32
"""Prompts per text-encoder call while a run encodes its prompt set: progress (and Cancel) between chunks. A real
model's text encoder takes seconds per prompt on a CPU, and a corpus run encodes thousands before its first step.
The chunks are joined by :meth:`Cond.cat` (ComfyUI's padding rule), as prompts of different lengths in one call are."""


def _encode(text_encoder: TextEncoder, prompts: PromptSet, config: TrainConfig, categories: List[str],
            report: Optional[Callable[[int, int], None]] = None
            ) -> Tuple[Cond, Cond, Cond, Cond, Optional[Cond], List[str]]:
    rewrites = [h.rewrite for h in prompts.harmful if h.rewrite]
    groups = [list(prompts.clean), [h.prompt for h in prompts.harmful], [prompts.concepts[c] for c in categories],
              [config.negative_prompt], rewrites]
    total, done = sum(len(g) for g in groups), 0

    def encode(texts: List[str]) -> Cond:
        nonlocal done
        if not texts:  # the encoder's own answer for nothing (the prompt set's validation says what is missing)
            return text_encoder(texts)
        parts = []
        for start in range(0, len(texts), ENCODE_CHUNK):
            parts.append(text_encoder(texts[start:start + ENCODE_CHUNK]))
            done += len(parts[-1].tokens)
            if report is not None:
                report(done, total)
        return parts[0] if len(parts) == 1 else Cond.cat(parts)

    with torch.no_grad():
        if report is not None:
            report(0, total)
        enc_clean, enc_harm, enc_concept, enc_u = (encode(g) for g in groups[:4])
        enc_rewrite = encode(rewrites) if rewrites else None
    for name, cond in (("clean prompt encodings", enc_clean), ("harmful prompt encodings", enc_harm),
                       ("concept encodings", enc_concept), ("negative prompt encoding", enc_u)):
        check_finite(name, cond)
    return enc_clean, enc_harm, enc_concept, enc_u, enc_rewrite, rewrites  # type: ignore[return-value]


def _latents(prompts: PromptSet, config: TrainConfig, rewrites: List[str], use_rewrite_latents: bool,
             sample_latents: Optional[Callable[[List[str]], torch.Tensor]],
             latents: Optional[Mapping[str, torch.Tensor]], report: Callable[[int, int], None], device: torch.device
             ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The latents flattened into one tensor, with per-prompt counts and offsets, and each rewrite's row.

    A prompt with a ``latent_of`` source points at its source's rows: only distinct sources are gathered (sampled or
    cached), so thousands of dressed prompts cost no sampling and no memory. Without ``latent_of`` the sources are
    the prompts themselves, in the same order as always.
    """
    all_prompts = list(prompts.clean) + [h.prompt for h in prompts.harmful]
    cache_path = Path(config.latent_cache_path) if config.latent_cache_path else (
        Path(str(config.checkpoint_path) + ".latents.safetensors") if config.checkpoint_path else None)
    identity = config.model_id if not config.sampler_id else f"{config.model_id}|{config.sampler_id}"
    # rows 0..len(all_prompts)-1 stay aligned with c_all; rewrites that are not prompts already are appended
    known = set(all_prompts)
    latent_prompts = all_prompts + list(dict.fromkeys(r for r in (rewrites if use_rewrite_latents else [])
                                                      if r not in known))
    sources = [prompts.latent_of.get(p, p) for p in latent_prompts]
    unique = list(dict.fromkeys(sources))
    lat = gather_latents(unique, sample_latents, latents, LatentCache(cache_path, identity),
                         config.latent_batch_size, report)
    lat_list = [lat[s].to(device=device, dtype=torch.float32) for s in unique]
    latent_row: Dict[str, int] = {}
    for i, p in enumerate(latent_prompts):
        latent_row.setdefault(p, i)
    rewrite_lat_row = torch.tensor([latent_row[h.rewrite] if (use_rewrite_latents and h.rewrite) else -1
                                    for h in prompts.harmful], dtype=torch.long)
    unique_counts = torch.tensor([t.shape[0] for t in lat_list])
    unique_offsets = torch.cat([torch.zeros(1, dtype=torch.long), unique_counts.cumsum(0)[:-1]])
    slot = {s: i for i, s in enumerate(unique)}
    of_row = torch.tensor([slot[s] for s in sources], dtype=torch.long)
    return torch.cat(lat_list), unique_counts[of_row], unique_offsets[of_row], rewrite_lat_row


def prepare_data(text_encoder: TextEncoder, prompts: PromptSet, config: TrainConfig, hgr_config: Optional[HGRConfig],
                 device: torch.device, sample_latents: Optional[Callable[[List[str]], torch.Tensor]],
                 latents: Optional[Mapping[str, torch.Tensor]], report: Callable[[int, int], None],
                 report_encode: Optional[Callable[[int, int], None]] = None) -> TrainData:
    """Encode every prompt once, check the HGR config against the encoder, and gather the model's own latents.
    ``report(done, total)`` follows the latent sampling, ``report_encode(done, total)`` the encoding."""
    categories = sorted(prompts.concepts)
    enc_clean, enc_harm, enc_concept, enc_u, enc_rewrite, rewrites = _encode(text_encoder, prompts, config, categories,
                                                                             report_encode)
    if hgr_config is None:
        hgr_config = _config_for(enc_u)
    if hgr_config.token_dim != enc_u.token_dim:
        raise TrainingInputError(
            f"hgr_config.token_dim={hgr_config.token_dim} but the text encoder gives {enc_u.token_dim}-wide tokens."
        )
    concept_idx = {c: i for i, c in enumerate(categories)}
    rewrite_idx = torch.full((len(prompts.harmful),), -1, dtype=torch.long)
    j = 0
    for i, h in enumerate(prompts.harmful):
        if h.rewrite:
            rewrite_idx[i] = j
            j += 1
    k_all, u1 = enc_concept.to(device), enc_u.to(device)
    with torch.no_grad():
        kt, ut = Cond.cat([k_all, u1]).tokens.split([len(categories), 1])
        delta_scale = float((kt - ut).pow(2).mean().clamp_min(1e-12))
    rewrite_fraction_of = per_category_tensor("rewrite_latent_fraction", config.rewrite_latent_fraction, categories)
    gain_of = per_category_tensor("target_gain", config.target_gain, categories)
    use_rewrite_latents = bool((rewrite_fraction_of > 0).any()) and bool(rewrites)
    lat_flat, lat_counts, lat_offsets, rewrite_lat_row = _latents(
        prompts, config, rewrites, use_rewrite_latents, sample_latents, latents, report, device)
    return TrainData(
        hgr_config=hgr_config, categories=categories, c_all=Cond.cat([enc_clean, enc_harm]).to(device), u1=u1,
        k_all=k_all, r_all=enc_rewrite.to(device) if enc_rewrite is not None else None,
        harm_cat=torch.tensor([concept_idx[h.category] for h in prompts.harmful]), rewrite_idx=rewrite_idx,
        delta_scale=delta_scale, n_clean=len(prompts.clean), n_harm=len(prompts.harmful), n_rewrites=len(rewrites),
        gain_of=gain_of, aims_past_target=bool((gain_of != 1.0).any()), rewrite_fraction_of=rewrite_fraction_of,
        use_rewrite_latents=use_rewrite_latents, rewrite_lat_row=rewrite_lat_row, lat_flat=lat_flat,
        lat_counts=lat_counts, lat_offsets=lat_offsets, latent_shape=tuple(lat_flat.shape[1:]),
    )


def draw_batch(d: TrainData, config: TrainConfig, gen: torch.Generator, device: torch.device) -> Batch:
    """Rows, their latents, sigmas and noise for one step (all draws from ``gen``, on CPU)."""
    n_c_rows = config.batch_size - config.batch_size // 2
    n_h_rows = config.batch_size // 2
    ci = torch.randint(0, d.n_clean, (n_c_rows,), generator=gen)
    hi = torch.randint(0, d.n_harm, (n_h_rows,), generator=gen)
    rows = torch.cat([ci, d.n_clean + hi])
    lat_rows = rows.clone()
    if d.use_rewrite_latents:  # draws nothing extra otherwise, so runs without rewrite latents keep their draws
        swap = (torch.rand(len(hi), generator=gen) < d.rewrite_fraction_of[d.harm_cat[hi]]) & (d.rewrite_lat_row[hi] >= 0)
        lat_rows[n_c_rows:][swap] = d.rewrite_lat_row[hi][swap]
    pick = (torch.rand(len(rows), generator=gen) * d.lat_counts[lat_rows]).long()
    x0 = d.lat_flat[(d.lat_offsets[lat_rows] + pick).to(device)]
    if config.sigma_schedule is not None:
        sched = torch.tensor(config.sigma_schedule, dtype=torch.float32)
        sigma = sched[torch.randint(0, len(sched), (len(rows),), generator=gen)]
    else:
        lo, hi_ = math.log(config.sigma_min), math.log(config.sigma_max)
        sigma = torch.exp(lo + (hi_ - lo) * torch.rand(len(rows), generator=gen))
    noise = torch.randn((len(rows),) + d.latent_shape, generator=gen)
    sigma = sigma.to(device)
    x = x0 + sigma.view(-1, *([1] * len(d.latent_shape))) * noise.to(device)
    return Batch(n_clean_rows=n_c_rows, x=x, sigma=sigma, c=d.c_all.index(rows.to(device)),
                 u=d.u1.repeat_batch(len(rows)), h_cat=d.harm_cat[hi], h_rw=d.rewrite_idx[hi])
