"""Redirect the negative (uncond) rows of a ComfyUI-style batched model call.

ComfyUI evaluates the positive and the negative conditioning of one sampler step in as few model calls as memory
allows. A call's input rows are ``len(cond_or_uncond)`` equal chunks; chunk ``i`` belongs to the positive prompt
when ``cond_or_uncond[i] == 0`` and to the negative one when it is ``1`` (guiders with more conditionings use
higher indices, which are left alone here). The token states of all chunks arrive concatenated in
``c_crossattn`` (padded by repetition to a common length), SDXL's pooled vector in the first dims of ``y``.

:class:`BatchedRedirector` swaps every uncond chunk's tokens (and pooled vector) for the redirected negative
``u* = u + s * Delta(c, u)``, pairing it with

* the cond chunks of the same call (with several, as after ``ConditioningCombine``: per row the one HGR finds
  most harmful), or
* when ComfyUI ran the cond and the uncond in separate calls, the cond chunks of this step announced by
  :meth:`BatchedRedirector.prime` (the current ComfyUI's ``calc_cond_batch`` wrapper calls it before any model
  call), else the cond chunks last seen in this sampling run (in the current step if already seen, else the
  previous step). ComfyUI batches from the end of its run list, so a split step runs the uncond *first*: without
  priming (ComfyUI before the wrapper system, e.g. March 2024) nothing is known about the prompt at the very
  first step of a run, and that one uncond pass is left unredirected (a warning is logged once). Models that fit
  in memory twice over never split.

Caching (nothing but a tensor swap per step): ``Delta`` depends only on the prompt, so ``u*`` is computed once per
(prompt, negative, sampling run) and reused. The cache key is chosen without reading tensor values back:

* current ComfyUI (2024-10 onwards) hands every conditioning entry a fresh ``uuid4`` per sampling run and passes
  them as ``transformer_options["uuids"]`` (one per chunk), and the run's sigma schedule as
  ``transformer_options["sample_sigmas"]`` (one tensor object per run). The key is the chunk uuids plus the
  identity of that schedule tensor: no host-device synchronisation at all.
* older ComfyUI (e.g. the March-2024 release) passes neither. Then the key is the chunk *contents*: a cache hit
  is confirmed with ``torch.equal`` against the stored tokens, which costs one host-device sync per step on a GPU
  (free on the CPU). The run boundary is the sigma going up again (another sync, same place).

Where the gate is exactly 0 for every row (a clean prompt), the call's tensors are returned untouched, so the
model sees bit for bit what plain CFG gives it.

This module is torch only; it never imports ComfyUI.
"""
from __future__ import annotations

import logging
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from .conditioning import Cond
from .padding import pad_to_common_length

log = logging.getLogger(__name__)

COND = 0
UNCOND = 1


@dataclass
class _Entry:
    """A cached redirect for one uncond chunk: tensors already on the call's device/dtype."""

    u_tokens: torch.Tensor  # [rows, T*, D] the chunk's replacement tokens (T* may exceed the call's T)
    u_pooled: Optional[torch.Tensor]  # [rows, P] or None
    active: bool  # False: s == 0 for every row, nothing to swap
    score: torch.Tensor  # [rows] prompt-level harm score (cpu float)
    strength: torch.Tensor  # [rows] applied strength s (cpu float)
    # content-check fallback only: the inputs this entry was computed from
    key_c: Optional[List[torch.Tensor]] = None
    key_u: Optional[torch.Tensor] = None
    key_pc: Optional[List[Optional[torch.Tensor]]] = None
    key_pu: Optional[torch.Tensor] = None


def _guidance_device_dtype(guidance: Any) -> Tuple[torch.device, torch.dtype]:
    for attr in ("device",):
        dev = getattr(guidance, attr, None)
        if isinstance(dev, (torch.device, str)):
            return torch.device(dev), torch.float32
    for holder in (guidance, getattr(guidance, "bundle", None)):
        net = getattr(holder, "net", None) if holder is not None else None
        if isinstance(net, torch.nn.Module):
            for p in net.parameters():
                return p.device, p.dtype
    return torch.device("cpu"), torch.float32


def _repeat_to(t: torch.Tensor, length: int) -> torch.Tensor:
    return t if t.shape[1] == length else t.repeat(1, length // t.shape[1], 1)


class BatchedRedirector:
    """Swap the uncond chunks of a batched ComfyUI model call for HGR's redirected negative.

    ``guidance`` is a :class:`safecfg_core.guidance.SafeGuidance` (anything with
    ``redirected_negative(c: Cond, u: Cond)`` returning an object with ``u_star``, ``score`` and ``s``).
    ``pooled_dim``: how many leading dims of the pooled input HGR reads and writes (0: tokens only).
    """

    def __init__(self, guidance: Any, pooled_dim: int = 0, max_entries: int = 64) -> None:
        self.guidance = guidance
        self.pooled_dim = int(pooled_dim)
        self.max_entries = int(max_entries)
        self._cache: "OrderedDict[Any, _Entry]" = OrderedDict()
        self._content_cache: List[_Entry] = []
        self._lock = threading.Lock()
        # run / step tracking
        self._run_obj: Any = None  # sample_sigmas tensor of the current run (held so its id cannot be reused)
        self._last_sigma_value: Optional[float] = None  # fallback run detection
        self._step_obj: Any = None  # the current step's sigma tensor (same object for all calls of one step)
        self._step_conds: List[Tuple[Any, torch.Tensor, Optional[torch.Tensor]]] = []
        self._prev_step_conds: List[Tuple[Any, torch.Tensor, Optional[torch.Tensor]]] = []
        self._warned_no_cond = False
        self.last_scores: Optional[torch.Tensor] = None
        self.last_strengths: Optional[torch.Tensor] = None
        self.calls = 0
        self.misses = 0

    def __deepcopy__(self, memo):
        # Shared on purpose: ComfyUI deep-copies model options when it clones a model; the cache is keyed on the
        # prompt (uuids or contents), so sharing is safe, and a lock cannot be copied anyway.
        return self

    # ------------------------------------------------------------------ bookkeeping
    def reset(self) -> None:
        with self._lock:
            self._cache.clear()
            self._content_cache.clear()
            self._run_obj = None
            self._last_sigma_value = None
            self._step_obj = None
            self._step_conds = []
            self._prev_step_conds = []

    def _track_run_and_step(self, topts: Dict[str, Any]) -> None:
        sample_sigmas = topts.get("sample_sigmas")
        step_sigma = topts.get("sigmas")
        new_run = False
        if sample_sigmas is not None:
            if sample_sigmas is not self._run_obj:
                new_run = True
                self._run_obj = sample_sigmas
        elif isinstance(step_sigma, torch.Tensor):
            # Fallback (older ComfyUI): a run restarts when the noise level goes up. One sync per step.
            if step_sigma is not self._step_obj:
                value = float(step_sigma.detach().flatten()[0].item())
                if self._last_sigma_value is not None and value > self._last_sigma_value:
                    new_run = True
                self._last_sigma_value = value
        if new_run:
            self._step_conds = []
            self._prev_step_conds = []
            self._step_obj = None
            self._content_cache.clear()  # content-keyed entries are safe across runs, but keep memory bounded
        if step_sigma is not None and step_sigma is not self._step_obj:
            self._step_obj = step_sigma
            if self._step_conds:
                self._prev_step_conds = self._step_conds
            self._step_conds = []

    def prime(self, conds: Sequence[Tuple[Any, torch.Tensor, Optional[torch.Tensor]]], sample_sigmas: Any,
              step_sigma: Any) -> None:
        """Announce this step's positive chunks ``(uuid, tokens [rows, T, D], pooled | None)`` before the model runs.

        The current ComfyUI lets a ``calc_cond_batch`` wrapper see every conditioning of the step before the model
        calls; priming from there means even a split step whose negative pass runs first (at the very first step of
        a run) is redirected. Nothing is computed here.
        """
        with self._lock:
            self._track_run_and_step({"sample_sigmas": sample_sigmas, "sigmas": step_sigma})
            known = {k for k, _, _ in self._step_conds if k is not None}
            for entry in conds:
                if entry[0] is None or entry[0] not in known:
                    self._step_conds.append(entry)

    # ------------------------------------------------------------------ main entry
    def __call__(
        self,
        crossattn: torch.Tensor,
        pooled: Optional[torch.Tensor],
        cond_or_uncond: Sequence[int],
        transformer_options: Optional[Dict[str, Any]] = None,
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Return ``(crossattn', pooled')`` with every uncond chunk redirected.

        ``pooled`` is the ``[rows, >= pooled_dim]`` input whose first ``pooled_dim`` dims are the pooled text
        vector (SDXL's ``y``), or None. Tensors are returned unchanged (the same objects) when there is nothing
        to redirect.
        """
        topts = transformer_options or {}
        n = len(cond_or_uncond)
        if n == 0 or crossattn.shape[0] % n != 0:
            return crossattn, pooled
        rows = crossattn.shape[0] // n
        with self._lock:
            self.calls += 1
            self._track_run_and_step(topts)
            uuids = topts.get("uuids")
            if uuids is not None and len(uuids) != n:
                uuids = None
            use_pooled = self.pooled_dim > 0 and pooled is not None and pooled.shape[-1] >= self.pooled_dim

            def chunk(t: torch.Tensor, i: int) -> torch.Tensor:
                return t[i * rows:(i + 1) * rows]

            cond_idx = [i for i, k in enumerate(cond_or_uncond) if k == COND]
            uncond_idx = [i for i, k in enumerate(cond_or_uncond) if k == UNCOND]
            conds = [
                (
                    None if uuids is None else uuids[i],
                    chunk(crossattn, i),
                    chunk(pooled, i)[:, : self.pooled_dim] if use_pooled else None,
                )
                for i in cond_idx
            ]
            if conds:
                known = {k for k, _, _ in self._step_conds if k is not None}
                for entry in conds:
                    if entry[0] is None or entry[0] not in known:
                        self._step_conds.append(entry)
            if not uncond_idx:
                return crossattn, pooled
            pair = conds or self._step_conds or self._prev_step_conds
            if not pair:
                if not self._warned_no_cond:
                    log.warning(
                        "SafeCFG: ComfyUI ran the negative pass before any positive pass of this sampling run "
                        "(it split the batch to save memory), so this one pass uses the plain negative; every later "
                        "step is redirected."
                    )
                    self._warned_no_cond = True
                return crossattn, pooled

            replacements: List[Tuple[int, _Entry]] = []
            for i in uncond_idx:
                u_tok = chunk(crossattn, i)
                u_pool = chunk(pooled, i)[:, : self.pooled_dim] if use_pooled else None
                u_uuid = None if uuids is None else uuids[i]
                entry = self._lookup(pair, u_uuid, u_tok, u_pool, topts)
                if entry.active:
                    replacements.append((i, entry))
                self.last_scores = entry.score
                self.last_strengths = entry.strength
            if not replacements:
                return crossattn, pooled
            return self._swap(crossattn, pooled, n, rows, replacements, use_pooled)

    # ------------------------------------------------------------------ cache
    def _lookup(self, pair, u_uuid, u_tok, u_pool, topts) -> _Entry:
        c_uuids = [k for k, _, _ in pair]
        if u_uuid is not None and all(k is not None for k in c_uuids):
            run_key = id(self._run_obj) if self._run_obj is not None else None
            key = (run_key, u_uuid, tuple(c_uuids), tuple(u_tok.shape), tuple(t.shape[1] for _, t, _ in pair),
                   u_tok.device, u_tok.dtype)
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
            entry = self._compute(pair, u_tok, u_pool)
            self._cache[key] = entry
            while len(self._cache) > self.max_entries:
                self._cache.popitem(last=False)
            return entry
        # Content-checked fallback (no uuids from ComfyUI): one sync per lookup.
        for entry in self._content_cache:
            if self._same_content(entry, pair, u_tok, u_pool):
                return entry
        entry = self._compute(pair, u_tok, u_pool)
        entry.key_c = [t for _, t, _ in pair]
        entry.key_pc = [p for _, _, p in pair]
        entry.key_u = u_tok
        entry.key_pu = u_pool
        self._content_cache.append(entry)
        if len(self._content_cache) > self.max_entries:
            self._content_cache.pop(0)
        return entry

    @staticmethod
    def _eq(a: Optional[torch.Tensor], b: Optional[torch.Tensor]) -> bool:
        if a is None or b is None:
            return a is None and b is None
        return a.shape == b.shape and a.dtype == b.dtype and a.device == b.device and bool(torch.equal(a, b))

    def _same_content(self, entry: _Entry, pair, u_tok, u_pool) -> bool:
        if entry.key_c is None or len(entry.key_c) != len(pair):
            return False
        if not self._eq(entry.key_u, u_tok) or not self._eq(entry.key_pu, u_pool):
            return False
        return all(self._eq(a, t) and self._eq(pa, p) for a, pa, (_, t, p) in zip(entry.key_c, entry.key_pc, pair))

    def _compute(self, pair, u_tok: torch.Tensor, u_pool: Optional[torch.Tensor]) -> _Entry:
        """Run HGR once for this uncond chunk (cache miss)."""
        self.misses += 1
        dev, dtype = _guidance_device_dtype(self.guidance)
        rows = u_tok.shape[0]
        best_u: Optional[Cond] = None
        best_score: Optional[torch.Tensor] = None
        best_s: Optional[torch.Tensor] = None
        with torch.no_grad():
            for _, c_tok, c_pool in pair:
                if c_tok.shape[0] != rows:
                    continue
                c_pad, u_pad = pad_to_common_length([c_tok, u_tok])
                c = Cond(c_pad.to(dev, dtype), None if c_pool is None else c_pool.to(dev, dtype))
                u = Cond(u_pad.to(dev, dtype), None if u_pool is None else u_pool.to(dev, dtype))
                res = self.guidance.redirected_negative(c, u)
                score = res.score.detach().float().reshape(-1).cpu()
                s = torch.as_tensor(res.s).detach().float().reshape(-1).cpu()
                if s.numel() == 1 and rows > 1:
                    s = s.expand(rows).clone()
                if score.numel() == 1 and rows > 1:
                    score = score.expand(rows).clone()
                u_star = res.u_star
                if best_u is None:
                    best_u, best_score, best_s = u_star, score, s
                    continue
                # several positives (ConditioningCombine): per row, the one HGR finds most harmful
                better = score > best_score
                if bool(better.any()):
                    tok_len = math.lcm(best_u.tokens.shape[1], u_star.tokens.shape[1])
                    sel = better.to(best_u.tokens.device).view(-1, 1, 1)
                    tokens = torch.where(sel, _repeat_to(u_star.tokens, tok_len), _repeat_to(best_u.tokens, tok_len))
                    pooled = None
                    if best_u.pooled is not None and u_star.pooled is not None:
                        pooled = torch.where(sel.view(-1, 1), u_star.pooled, best_u.pooled)
                    best_u = Cond(tokens, pooled)
                    best_score = torch.where(better, score, best_score)
                    best_s = torch.where(better, s, best_s)
        if best_u is None:  # no cond chunk with a matching batch: leave the negative alone
            zero = torch.zeros(rows)
            return _Entry(u_tok, u_pool, False, zero, zero)
        active_rows = best_s > 0
        active = bool(active_rows.any())
        tokens = best_u.tokens.to(u_tok.device, u_tok.dtype)
        # rows with s == 0 keep the exact original tensor values (no float round trip)
        t_len = math.lcm(tokens.shape[1], u_tok.shape[1])
        mask = active_rows.to(u_tok.device).view(-1, 1, 1)
        tokens = torch.where(mask, _repeat_to(tokens, t_len), _repeat_to(u_tok, t_len))
        pooled = None
        if u_pool is not None and best_u.pooled is not None:
            pooled = torch.where(mask.view(-1, 1), best_u.pooled.to(u_pool.device, u_pool.dtype), u_pool)
        if not torch.isfinite(tokens).all() or (pooled is not None and not torch.isfinite(pooled).all()):
            raise ValueError(
                "SafeCFG: the HGR produced non-finite values for this prompt; the HGR file is probably damaged "
                "or was trained for another model. Re-train it or load the right one."
            )
        return _Entry(tokens, pooled, active, best_score, best_s)

    # ------------------------------------------------------------------ swap
    @staticmethod
    def _swap(crossattn, pooled, n, rows, replacements, use_pooled):
        T = crossattn.shape[1]
        t_len = T
        for _, e in replacements:
            t_len = math.lcm(t_len, e.u_tokens.shape[1])
        out = _repeat_to(crossattn, t_len)
        if out is crossattn:
            out = crossattn.clone()
        for i, e in replacements:
            out[i * rows:(i + 1) * rows] = _repeat_to(e.u_tokens, t_len)
        new_pooled = pooled
        if use_pooled and any(e.u_pooled is not None for _, e in replacements):
            new_pooled = pooled.clone()
            for i, e in replacements:
                if e.u_pooled is not None:
                    new_pooled[i * rows:(i + 1) * rows, : e.u_pooled.shape[1]] = e.u_pooled
        return out, new_pooled
