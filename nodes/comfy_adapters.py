"""Adapters between ComfyUI's objects (MODEL, CLIP, CONDITIONING) and the core's Denoiser / TextEncoder / Cond.

Only public, long-stable ComfyUI entry points are used:
``model.model.apply_model(x, sigma, c_crossattn=..., y=...)`` (denoised output for eps/v/flow models alike),
``comfy.model_management.load_models_gpu``, ``clip.tokenize`` + ``clip.encode_from_tokens(..., return_pooled=True)``,
and the ``[[tokens, {"pooled_output": ...}], ...]`` layout of CONDITIONING.
"""
from __future__ import annotations

import hashlib
from typing import Any, Callable, List, Optional, Sequence, Tuple

import torch

from ..safecfg_core.conditioning import Cond
from ..safecfg_core.families import Family, check_served, family_for_class, token_dim_from_unet_config
from ..safecfg_core.model_inputs import apply_model_extras


def model_family(model_patcher: Any) -> Optional[Family]:
    """The served family of a ComfyUI MODEL, by its supported-model config class (``comfy/supported_models.py``);
    None for a class the table does not know. A refused family (Flux) raises UnsupportedFamilyError saying why."""
    cfg = getattr(model_patcher.model, "model_config", None)
    return check_served(family_for_class(type(cfg).__name__)) if cfg is not None else None


def family_name(model_patcher: Any) -> Optional[str]:
    """The family table's name for a MODEL's class, served or refused (None for a class it does not know); never
    raises: the nodes refuse families where they check widths, this only picks a family's model inputs."""
    cfg = getattr(model_patcher.model, "model_config", None)
    entry = family_for_class(type(cfg).__name__) if cfg is not None else None
    return entry.name if entry is not None else None


def model_widths(model_patcher: Any) -> Tuple[Optional[int], int, Optional[str]]:
    """``(token_dim, pooled_dim, family)`` of a ComfyUI MODEL; token_dim None when neither the model's config nor
    its family says. Detection goes by config class (the family's row); for a class the table does not know, or a
    variant whose detected ``unet_config`` states another text width, the stated width decides and the family is
    None (the HGR's widths are still checked; no family's preset or name is guessed for it).
    A refused family raises UnsupportedFamilyError."""
    fam = model_family(model_patcher)
    cfg = getattr(model_patcher.model, "model_config", None)
    stated = token_dim_from_unet_config(getattr(cfg, "unet_config", {}) or {})
    if fam is None:
        return stated, 0, None
    if stated is not None and stated != fam.token_dim:
        return stated, 0, None
    return fam.token_dim, fam.pooled_dim, fam.name


def model_identity(model_patcher: Any, samples_per_tensor: int = 64) -> str:
    """A short digest that tells two MODELs apart: tensor names and shapes, a strided sample of the values of every
    weight, and the LoRA-style patches (keys and strengths) the ModelPatcher will apply.

    Why: the HGR trainer caches the model's own samples and skips work already done for the same inputs; keyed only
    by prompts and settings, a second SD1.5 fine-tune would silently get the first one's latents or HGR. Only a few
    values per tensor are read, never the whole weights.
    """
    h = hashlib.sha256(type(getattr(model_patcher.model, "model_config", None)).__name__.encode())
    with torch.no_grad():
        for name, tensor in sorted(model_patcher.model.state_dict().items()):
            h.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
            try:
                flat = tensor.reshape(-1)
                if flat.numel():
                    step = max(1, flat.numel() // samples_per_tensor)
                    h.update(flat[::step][:samples_per_tensor].detach().float().cpu().numpy().tobytes())
            except (RuntimeError, TypeError, NotImplementedError):
                pass  # quantized tensor types (GGUF, fp8 wrappers) without plain indexing: name and shape still count
    for key, patch_list in sorted(getattr(model_patcher, "patches", {}).items()):
        strengths = [p[0] for p in patch_list if p and isinstance(p[0], (int, float))]
        h.update(f"{key}{strengths}".encode())
    return h.hexdigest()[:16]


def entry_cond(entry: Any, with_pooled: bool = True) -> Cond:
    """One CONDITIONING entry ``[tokens, options]`` as a float32 Cond (with its ``pooled_output`` if asked and
    present)."""
    tokens = entry[0]
    opts = entry[1] if len(entry) > 1 and isinstance(entry[1], dict) else {}
    pooled = opts.get("pooled_output") if with_pooled else None
    if isinstance(pooled, torch.Tensor) and pooled.dim() == 2 and pooled.shape[0] == tokens.shape[0]:
        return Cond(tokens.float(), pooled.float())
    return Cond(tokens.float(), None)


def conditioning_to_conds(conditioning: Any, with_pooled: bool = True) -> List[Cond]:
    """Each entry of a ComfyUI CONDITIONING as a Cond (tokens + pooled_output when present and asked for)."""
    if not isinstance(conditioning, (list, tuple)) or not all(isinstance(e, (list, tuple)) and e for e in conditioning):
        raise ValueError("expected a CONDITIONING (a list of [tokens, options] pairs).")
    if not conditioning:
        raise ValueError("the CONDITIONING is empty.")
    return [entry_cond(entry, with_pooled) for entry in conditioning]


def sampler_entry(model_patcher: Any, cond: Cond) -> List[Any]:
    """``cond`` as a CONDITIONING entry for ComfyUI's samplers. It carries the family's model inputs that the
    model's ``extra_conds`` would derive from what a text encoder adds and a Cond does not keep (Lumina 2's caption
    length comes from the encoder's attention mask), as ComfyUI's own ``model_conds``."""
    import comfy.conds  # type: ignore

    extras = apply_model_extras(family_name(model_patcher), cond, cond.batch_size, torch.device("cpu"))
    model_conds = {k: comfy.conds.CONDRegular(v) if isinstance(v, torch.Tensor) else comfy.conds.CONDConstant(v)
                   for k, v in extras.items()}
    return [cond.tokens, {"pooled_output": cond.pooled, "model_conds": model_conds}]


def replace_entry(entry: Any, cond: Optional[Cond], **options: Any) -> List[Any]:
    """A copy of a CONDITIONING entry with ``cond``'s tokens (and pooled vector, if it has one) in the entry's own
    dtype and device, plus ``options``; ``cond=None`` keeps the entry's tensors (the very same objects)."""
    tokens = entry[0]
    opts = dict(entry[1]) if len(entry) > 1 and isinstance(entry[1], dict) else {}
    if cond is not None:
        tokens = cond.tokens.to(dtype=tokens.dtype, device=tokens.device)
        old = opts.get("pooled_output")
        if cond.pooled is not None and isinstance(old, torch.Tensor):
            opts["pooled_output"] = cond.pooled.to(dtype=old.dtype, device=old.device)
    opts.update(options)
    return [tokens, opts]


class ComfyTextEncoder:
    """Core ``TextEncoder`` over a ComfyUI CLIP: ``encoder(prompts) -> Cond`` (row i = prompt i).

    ``on_encode(done, total)`` (optional) is called before each prompt that is not memoised yet, with the count
    encoded so far in this call and the call's number of new prompts. A full-size text encoder on a CPU takes
    seconds per prompt, so the Train HGR nodes honour Cancel there (the hook raises ComfyUI's interrupt) rather than
    only between the trainer's chunks.
    """

    def __init__(self, clip: Any, with_pooled: bool = False,
                 on_encode: Optional[Callable[[int, int], None]] = None) -> None:
        self.clip = clip
        self.with_pooled = with_pooled
        self.on_encode = on_encode
        self._memo: dict = {}  # text -> Cond; training encodes the same prompts several times

    def __call__(self, prompts: Sequence[str]) -> Cond:
        if isinstance(prompts, str):
            prompts = [prompts]
        conds = []
        new = len({t for t in prompts if t not in self._memo}) if self.on_encode is not None else 0
        done = 0
        for text in prompts:
            hit = self._memo.get(text)
            if hit is None:
                if self.on_encode is not None:
                    self.on_encode(done, new)
                    done += 1
                cond, pooled = self.clip.encode_from_tokens(self.clip.tokenize(text), return_pooled=True)
                p = pooled.float().reshape(1, -1) if (self.with_pooled and isinstance(pooled, torch.Tensor)) else None
                hit = Cond(cond.float().cpu(), None if p is None else p.cpu())
                self._memo[text] = hit
            conds.append(hit)
        return Cond.cat(conds)

    encode = __call__


class ComfyDenoiser:
    """Core ``Denoiser`` over a ComfyUI MODEL: ``D(x, sigma, cond)`` via ``model.model.apply_model``.

    The model patcher is loaded (ComfyUI's memory manager) on first use; inputs are moved to its device and the
    denoised output comes back as float32 on the input's device. A pooled vector builds the model's ``y`` with
    ``encode_adm`` for the latent's size (SDXL, SD3); the family's other inputs (Lumina 2's caption length,
    Chroma's guidance) come from :func:`apply_model_extras`.
    """

    def __init__(self, model_patcher: Any, pooled_dim: int = 0) -> None:
        self.patcher = model_patcher
        self.pooled_dim = pooled_dim
        self._loaded = False
        self.family = family_name(model_patcher)

    @property
    def base(self) -> Any:
        return self.patcher.model

    def load(self) -> None:
        if not self._loaded:
            import comfy.model_management as mm  # type: ignore

            mm.load_models_gpu([self.patcher])
            self._loaded = True

    @property
    def device(self) -> torch.device:
        return torch.device(self.patcher.load_device)

    def model_sigmas(self) -> torch.Tensor:
        return self.base.model_sampling.sigmas.detach().float().cpu()

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: Cond) -> torch.Tensor:
        self.load()
        dev = self.device
        kwargs = {}
        if cond.pooled is not None and getattr(self.base, "adm_channels", 0):
            h, w = x.shape[-2] * 8, x.shape[-1] * 8
            ys = [
                self.base.encode_adm(pooled_output=cond.pooled[i:i + 1].to(dev), width=w, height=h, device=dev,
                                     prompt_type="positive")
                for i in range(cond.batch_size)
            ]
            if all(y is not None for y in ys):
                kwargs["y"] = torch.cat(ys).to(dev)
        kwargs.update(apply_model_extras(self.family, cond, x.shape[0], dev))
        out = self.base.apply_model(
            x.to(dev), sigma.to(dev).float(), c_crossattn=cond.tokens.to(dev), **kwargs
        )
        return out.float().to(x.device)
