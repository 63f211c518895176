"""A tiny analytic diffusion model whose right answers are known in closed form.

Tests and CLI smoke runs need a real ``Denoiser`` and ``TextEncoder`` that run in milliseconds and whose
behaviour can be checked exactly, without trained weights. Here the data distribution for a conditioning is
Gaussian, ``x ~ N(mu(cond), tau^2 I)`` with ``mu`` a fixed linear map of the mean-pooled tokens (plus the
pooled vector, if any), so the denoiser is the exact posterior mean

    D(x, sigma, cond) = (tau^2 x + sigma^2 mu(cond)) / (tau^2 + sigma^2).

The toy text encoder maps words to fixed pseudo-random vectors (77 tokens, CLIP-like BOS/EOS padding); words
of a harm lexicon also carry their category's fixed *harm direction*. So "harm" is a known direction in
conditioning space, and the ideal redirection is known: for a harmful prompt ``D(u*)`` must equal
``D(concept)``, i.e. ``mean_t(Delta) = mean_t(k) - mean_t(u)``; for a clean one ``Delta = 0``.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from .conditioning import TOKEN_CHUNK, Cond
from .hgr import HGRConfig

DEFAULT_HARM_LEXICON: Dict[str, Tuple[str, ...]] = {
    "violence": ("blood", "gore", "bloody", "wound", "corpse", "knife", "stabbed"),
    "nudity": ("nude", "naked", "topless", "nsfw", "undressed"),
}
DEFAULT_CONCEPTS: Dict[str, str] = {"violence": "blood, gore", "nudity": "nude, naked"}


def _seed_of(*parts: str) -> int:
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _fixed_randn(shape: Sequence[int], *parts: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(_seed_of(*parts))
    return torch.randn(tuple(shape), generator=g, dtype=torch.float32)


class ToyTextEncoder:
    """Deterministic ``TextEncoder``: prompt -> ``[77, token_dim]`` tokens (BOS, words, EOS, EOS padding).

    Word vectors come from a hash of (seed, word), so the same word always gets the same vector, in any
    process. Harm-lexicon words add ``harm_gain`` times their category's unit harm direction.
    ``pooled_dim > 0`` adds an SDXL-like pooled vector (the EOS-position state through a fixed projection).
    """

    def __init__(self, token_dim: int = 32, length: int = TOKEN_CHUNK, seed: int = 0,
                 harm_lexicon: Mapping[str, Sequence[str]] = DEFAULT_HARM_LEXICON, harm_gain: float = 3.0,
                 pooled_dim: int = 0) -> None:
        self.token_dim = token_dim
        self.length = length
        self.seed = seed
        self.harm_gain = harm_gain
        self.pooled_dim = pooled_dim
        self.word_category: Dict[str, str] = {w.lower(): cat for cat, words in harm_lexicon.items() for w in words}
        self.categories = sorted(harm_lexicon)
        self._cache: Dict[str, torch.Tensor] = {}
        self.bos = _fixed_randn((token_dim,), str(seed), "<bos>")
        self.eos = _fixed_randn((token_dim,), str(seed), "<eos>")
        self.pooled_proj = _fixed_randn((token_dim, pooled_dim), str(seed), "<pooled>") / token_dim ** 0.5 if pooled_dim else None

    def harm_direction(self, category: str) -> torch.Tensor:
        d = _fixed_randn((self.token_dim,), str(self.seed), "<harm>", category)
        return d / d.norm()

    def word_vector(self, word: str) -> torch.Tensor:
        w = word.lower()
        if w not in self._cache:
            v = _fixed_randn((self.token_dim,), str(self.seed), "word", w)
            if w in self.word_category:
                v = v + self.harm_gain * self.harm_direction(self.word_category[w])
            self._cache[w] = v
        return self._cache[w]

    @staticmethod
    def words(prompt: str) -> List[str]:
        return re.findall(r"[a-z0-9]+", prompt.lower())

    def encode_one(self, prompt: str) -> torch.Tensor:
        words = self.words(prompt)[: self.length - 2]
        rows = [self.bos] + [self.word_vector(w) for w in words]
        rows += [self.eos] * (self.length - len(rows))
        return torch.stack(rows)

    def __call__(self, prompts: Sequence[str]) -> Cond:
        if isinstance(prompts, str):
            raise TypeError("ToyTextEncoder takes a list of prompts, not a single string.")
        tokens = torch.stack([self.encode_one(p) for p in prompts])
        pooled = None
        if self.pooled_proj is not None:
            n_words = [min(len(self.words(p)), self.length - 2) for p in prompts]
            eos_state = torch.stack([tokens[i, n + 1] + tokens[i, : n + 2].mean(0) for i, n in enumerate(n_words)])
            pooled = eos_state @ self.pooled_proj
        return Cond(tokens, pooled)


class AnalyticDenoiser(nn.Module):
    """Exact posterior-mean denoiser of ``x ~ N(mu(cond), tau^2 I)``; see the module docstring.

    ``mu(cond) = gain * A @ mean_t(tokens) (+ gain * B @ pooled)`` with fixed random ``A``; mean pooling makes
    it invariant to ComfyUI's repetition padding, like attention. Parameters are frozen buffers; gradients
    still flow to the conditioning (what HGR training needs).
    """

    def __init__(self, token_dim: int = 32, latent_shape: Tuple[int, int, int] = (4, 8, 8), tau: float = 1.0,
                 gain: float = 8.0, seed: int = 0, pooled_dim: int = 0) -> None:
        super().__init__()
        self.token_dim = token_dim
        self.latent_shape = tuple(latent_shape)
        self.tau = float(tau)
        n = 1
        for s in latent_shape:
            n *= s
        self.register_buffer("A", _fixed_randn((n, token_dim), str(seed), "<A>") * (gain / token_dim ** 0.5))
        # Subtracted from the token mean so the empty prompt's mean sits near 0 (pure numerical comfort).
        self.register_buffer("center", torch.zeros(token_dim))
        self.pooled_dim = pooled_dim
        if pooled_dim:
            self.register_buffer("B", _fixed_randn((n, pooled_dim), str(seed), "<B>") * (gain / pooled_dim ** 0.5))
        self.calls = 0
        self.rows = 0

    def mean(self, cond: Cond) -> torch.Tensor:
        """``mu(cond)`` as latents ``[B, *latent_shape]`` (float32)."""
        m = (cond.tokens.float().mean(1) - self.center) @ self.A.t()
        if self.pooled_dim and cond.pooled is not None:
            m = m + cond.pooled.float() @ self.B.t()
        return m.reshape((-1,) + self.latent_shape)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: Cond) -> torch.Tensor:
        self.calls += 1
        self.rows += int(x.shape[0])
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1)
        if sigma.numel() == 1:
            sigma = sigma.expand(x.shape[0])
        s2 = sigma.pow(2).reshape((-1,) + (1,) * (x.dim() - 1))
        t2 = self.tau ** 2
        mu = self.mean(cond).to(x.device)
        return ((t2 * x.float() + s2 * mu) / (t2 + s2)).to(x.dtype)

    def sample(self, c: Cond, u: Optional[Cond] = None, cfg_scale: float = 1.0,
               generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Exact samples of plain CFG: ``N(mu(u) + w (mu(c) - mu(u)), tau^2 I)`` (the Gaussian's CFG flow)."""
        mu = self.mean(c)
        if u is not None and cfg_scale != 1.0:
            mu_u = self.mean(u)
            mu = mu_u + cfg_scale * (mu - mu_u)
        return mu + self.tau * torch.randn(mu.shape, generator=generator, dtype=mu.dtype)


# ----------------------------------------------------------------------------------------------------------
# A ready-made model setup for tests and `python -m safecfg_core train --model analytic`.

_SUBJECTS = ("cat", "dog", "horse", "woman", "man", "child", "robot", "castle", "car", "bird", "tree", "boat",
             "dancer", "farmer", "knight", "wizard")
_PLACES = ("in a garden", "on a beach", "in the city", "at night", "in the snow", "in a forest", "on a mountain",
           "in a kitchen", "under the rain", "in the desert", "by a lake", "in a library")
_STYLES = ("a photo of", "a painting of", "a drawing of", "a portrait of")
_HARM_PHRASES = {
    "violence": ("covered in blood", "with a bloody wound", "holding a knife, gore", "stabbed and bleeding blood",
                 "next to a corpse"),
    "nudity": ("nude", "naked and topless", "nsfw undressed", "posing naked"),
}


def analytic_prompts(split: str = "train") -> "tuple[list[str], list[tuple[str, str]]]":
    """Deterministic clean and (prompt, category) harmful prompts; ``"train"`` and ``"test"`` do not overlap.

    Every fourth clean and fifth harmful prompt is held out for ``"test"``: unseen subject/place/style combinations,
    with the same harm vocabulary (the HGR learns the harm words from the training prompts).
    """
    if split not in ("train", "test"):
        raise ValueError("split must be 'train' or 'test'")
    clean: List[str] = []
    harmful: List[Tuple[str, str]] = []
    n_clean = n_harm = 0
    cats = sorted(_HARM_PHRASES)
    for i, subj in enumerate(_SUBJECTS):
        for j, place in enumerate(_PLACES):
            style = _STYLES[(i * 3 + j) % len(_STYLES)]
            if (i + 2 * j) % 3 == 0:
                cat = cats[n_harm % len(cats)]
                phrases = _HARM_PHRASES[cat]
                phrase = phrases[(n_harm // len(cats) + i) % len(phrases)]
                if (n_harm % 5 == 4) == (split == "test"):
                    harmful.append((f"{style} a {subj} {phrase} {place}", cat))
                n_harm += 1
            else:
                if (n_clean % 4 == 3) == (split == "test"):
                    clean.append(f"{style} a {subj} {place}")
                n_clean += 1
    return clean, harmful


@dataclass
class ModelSetup:
    """Everything `train`/`score`/`align` need to know about one model: its text encoder, denoiser, HGR preset,
    built-in prompts and sampling settings (the demo model's setup has the same fields)."""

    name: str
    text_encoder: ToyTextEncoder
    denoiser: AnalyticDenoiser
    hgr_config: HGRConfig
    concepts: Dict[str, str]
    clean_prompts: List[str]
    harmful_prompts: List[Tuple[str, str]]
    negative_prompt: str = ""
    cfg_scale: float = 5.0
    sigma_range: Tuple[float, float] = (0.05, 20.0)
    latent_seed: int = 0
    extra: Dict[str, object] = field(default_factory=dict)
    model_id: str = ""  # which weights (TrainConfig.model_id): keeps one model's cached latents from another's HGR

    def sample_latents(self, prompts: Sequence[str]) -> torch.Tensor:
        """The model's own plain-CFG samples, one per prompt, seeded by the prompt text (order-independent)."""
        c = self.text_encoder(list(prompts))
        u = self.text_encoder([self.negative_prompt] * len(prompts))
        rows = []
        for i, p in enumerate(prompts):
            g = torch.Generator().manual_seed(_seed_of(str(self.latent_seed), "latent", p))
            rows.append(self.denoiser.sample(c.index([i]), u.index([i]), self.cfg_scale, g))
        return torch.cat(rows)


def load_analytic_setup(token_dim: int = 32, pooled_dim: int = 0, seed: int = 0) -> ModelSetup:
    enc = ToyTextEncoder(token_dim=token_dim, seed=seed, pooled_dim=pooled_dim)
    den = AnalyticDenoiser(token_dim=token_dim, seed=seed, pooled_dim=pooled_dim)
    den.center.copy_(enc([""]).tokens[0].mean(0))
    clean, harmful = analytic_prompts("train")
    cfg = HGRConfig(token_dim=token_dim, pooled_dim=pooled_dim, model_family="analytic", width=64, depth=2, heads=4)
    return ModelSetup(
        name="analytic", text_encoder=enc, denoiser=den, hgr_config=cfg, concepts=dict(DEFAULT_CONCEPTS),
        clean_prompts=clean, harmful_prompts=harmful,
    )


__all__ = [
    "AnalyticDenoiser",
    "ModelSetup",
    "DEFAULT_CONCEPTS",
    "DEFAULT_HARM_LEXICON",
    "ToyTextEncoder",
    "analytic_prompts",
    "load_analytic_setup",
]
