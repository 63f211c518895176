"""The Harmful Guidance Redirector (HGR) and its file format.

The HGR is a small transformer that reads the positive conditioning ``c`` and the negative conditioning ``u``
and proposes a change ``Delta`` to ``u`` (METHOD.md). Its output projections are zero-initialised, so an
untrained HGR returns exactly zero and SafeCFG reduces to plain CFG bit for bit; training then only has to
learn *where* to move away from zero.

Files are safetensors only (weights can never execute code); everything that is not a tensor (config, harm
categories, calibrated threshold, training summary) lives as JSON strings in the safetensors header metadata,
so one file is the whole, self-describing HGR.
"""
from __future__ import annotations

import json
import math
import os
import struct
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch
from torch import nn

from .conditioning import TOKEN_CHUNK, Cond
from .errors import HGRFileError, HGRMismatchError

FORMAT_NAME = "safecfg-hgr"
FORMAT_VERSION = 1
WEIGHT_PREFIX = "hgr."
TRAIN_STATE_PREFIX = "train."
"""Checkpoints written during training carry optimizer/RNG state under this prefix; ``load`` ignores it."""

KNOWN_FAMILIES: Dict[str, Tuple[int, int]] = {
    "sd1": (768, 0),
    "sd2": (1024, 0),
    "sdxl": (2048, 1280),
    "demo": (384, 0),
}
"""Token width and pooled width of the model families we know, used to name a family in error messages."""

_FAMILY_ALIASES = {
    "sd15": "sd1", "sd1.5": "sd1", "sd1x": "sd1", "sd1.x": "sd1",
    "sd21": "sd2", "sd2.1": "sd2", "sd2x": "sd2", "sd2.x": "sd2",
    "sd_xl": "sdxl", "sdxl_base": "sdxl",
}

# Net sizes per family: a few million parameters for SD1.5 (~1 ms on a GPU), smaller for the CPU demo.
_FAMILY_NET = {
    "sd1": dict(width=320, depth=3, heads=5),
    "sd2": dict(width=320, depth=3, heads=5),
    "sdxl": dict(width=384, depth=3, heads=6),
    "demo": dict(width=128, depth=2, heads=4),
}


def normalize_family(family: Optional[str]) -> Optional[str]:
    """Lower-case a family name and map common aliases (``sd15`` -> ``sd1``); None stays None."""
    if family is None:
        return None
    f = str(family).strip().lower()
    return _FAMILY_ALIASES.get(f, f)


def guess_family(token_dim: int, pooled_dim: int = 0) -> Optional[str]:
    """The known family with these widths, if exactly one matches (for error messages only)."""
    hits = [name for name, (t, p) in KNOWN_FAMILIES.items() if t == token_dim and p == pooled_dim]
    if not hits:
        hits = [name for name, (t, _p) in KNOWN_FAMILIES.items() if t == token_dim]
    return hits[0] if len(hits) == 1 else None


def format_parameter_count(n: int) -> str:
    """``4213760 -> '4.21 M'``: parameter counts the way people read them."""
    if n >= 1_000_000:
        return f"{n / 1e6:.2f} M"
    if n >= 1_000:
        return f"{n / 1e3:.1f} k"
    return str(n)


# ----------------------------------------------------------------------------------------------------------
# Config


@dataclass
class HGRConfig:
    """Shape of an HGR: the text encoder it serves (``token_dim``, ``pooled_dim``, family) and its own size.

    ``chunk`` is the period of the learned position embedding: token ``t`` gets position ``t % chunk``, so
    conditionings of 77, 154 or 231 tokens (CLIP chunks, or ComfyUI's repetition padding) all make sense.
    """

    token_dim: int
    pooled_dim: int = 0
    model_family: str = "sd1"
    width: int = 256
    depth: int = 2
    heads: int = 4
    chunk: int = TOKEN_CHUNK

    def __post_init__(self) -> None:
        for name in ("token_dim", "width", "depth", "heads", "chunk"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"HGRConfig.{name} must be a positive integer, got {value!r}.")
        if not isinstance(self.pooled_dim, int) or self.pooled_dim < 0:
            raise ValueError(f"HGRConfig.pooled_dim must be an integer >= 0 (0: no pooled vector), got {self.pooled_dim!r}.")
        if self.width % self.heads != 0:
            raise ValueError(
                f"HGRConfig.width ({self.width}) must be divisible by heads ({self.heads}); pick e.g. "
                f"heads={math.gcd(self.width, 8)}."
            )
        self.model_family = normalize_family(self.model_family) or "unknown"

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "HGRConfig":
        """Build from a dict; unknown keys are an error (they would mean a newer, different format)."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"HGRConfig: unknown field(s) {unknown}; known fields are {sorted(names)}.")
        return cls(**dict(data))

    @classmethod
    def for_family(cls, family: str, **overrides: Any) -> "HGRConfig":
        """Preset for a known model family (``sd1``, ``sd2``, ``sdxl``, ``demo``); ``overrides`` win."""
        fam = normalize_family(family)
        if fam not in KNOWN_FAMILIES:
            raise ValueError(
                f"No HGR preset for model family {family!r}; known: {sorted(KNOWN_FAMILIES)}. "
                "Build HGRConfig(token_dim=..., pooled_dim=..., model_family=...) yourself for other models."
            )
        token_dim, pooled_dim = KNOWN_FAMILIES[fam]
        kwargs: Dict[str, Any] = dict(token_dim=token_dim, pooled_dim=pooled_dim, model_family=fam, **_FAMILY_NET[fam])
        kwargs.update(overrides)
        return cls(**kwargs)

    def describe_widths(self) -> str:
        pooled = f" + {self.pooled_dim}-wide pooled" if self.pooled_dim else ""
        return f"{self.model_family} ({self.token_dim}-wide tokens{pooled})"


# ----------------------------------------------------------------------------------------------------------
# Network

_TYPE_C, _TYPE_U, _TYPE_C_POOLED, _TYPE_U_POOLED = 0, 1, 2, 3


class HarmfulGuidanceRedirector(nn.Module):
    """``Delta_phi(c, u)``: a pre-LN transformer over the tokens of ``c`` and ``u`` together.

    Both sequences are layer-normed (CLIP token states have a few huge-norm positions), projected to ``width``,
    tagged with a learned position (``t % chunk``) and a c/u type embedding, and run jointly through
    ``depth`` encoder layers; the outputs at u's positions are projected back to ``token_dim``. With a pooled
    vector (SDXL) the pooled c and u become two extra tokens and a second zero-initialised head reads the
    pooled Delta. Batch row i of ``c`` is paired with row i of ``u``; token lengths may differ.
    """

    def __init__(self, config: HGRConfig) -> None:
        super().__init__()
        self.config = config
        w = config.width
        self.in_norm = nn.LayerNorm(config.token_dim)
        self.in_proj = nn.Linear(config.token_dim, w)
        self.pos_emb = nn.Embedding(config.chunk, w)
        self.type_emb = nn.Embedding(4, w)
        if config.pooled_dim > 0:
            self.pooled_in_norm = nn.LayerNorm(config.pooled_dim)
            self.pooled_in_proj = nn.Linear(config.pooled_dim, w)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                d_model=w, nhead=config.heads, dim_feedforward=4 * w, dropout=0.0,
                activation="gelu", batch_first=True, norm_first=True,
            )
            for _ in range(config.depth)
        )
        self.out_norm = nn.LayerNorm(w)
        self.out_proj = nn.Linear(w, config.token_dim)
        if config.pooled_dim > 0:
            self.pooled_out_proj = nn.Linear(w, config.pooled_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Small random embeddings; output heads exactly zero so an untrained HGR is the identity on u."""
        nn.init.normal_(self.pos_emb.weight, std=0.02)
        nn.init.normal_(self.type_emb.weight, std=0.02)
        nn.init.zeros_(self.out_proj.weight)
        nn.init.zeros_(self.out_proj.bias)
        if self.config.pooled_dim > 0:
            nn.init.zeros_(self.pooled_out_proj.weight)
            nn.init.zeros_(self.pooled_out_proj.bias)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _embed_tokens(self, tokens: torch.Tensor, type_id: int) -> torch.Tensor:
        t = tokens.shape[1]
        pos = torch.arange(t, device=tokens.device) % self.config.chunk
        h = self.in_proj(self.in_norm(tokens))
        return h + self.pos_emb(pos)[None] + self.type_emb.weight[type_id]

    def _embed_pooled(self, pooled: torch.Tensor, type_id: int) -> torch.Tensor:
        return (self.pooled_in_proj(self.pooled_in_norm(pooled)) + self.type_emb.weight[type_id])[:, None, :]

    def forward(self, c: Cond, u: Cond) -> Cond:
        cfg = self.config
        for name, cond in (("c", c), ("u", u)):
            if cond.token_dim != cfg.token_dim:
                raise HGRMismatchError(
                    f"The {name} conditioning has {cond.token_dim}-wide tokens but this HGR expects "
                    f"{cfg.token_dim} ({cfg.model_family}); load an HGR trained for this model."
                )
        if c.batch_size != u.batch_size:
            raise ValueError(
                f"HGR pairs row i of c with row i of u, but c has {c.batch_size} rows and u has {u.batch_size}; "
                "repeat the single negative (or positive) to the batch size first."
            )
        param = self.in_proj.weight
        dtype, device = param.dtype, param.device
        ct = c.tokens.to(device=device, dtype=dtype)
        ut = u.tokens.to(device=device, dtype=dtype)
        parts = [self._embed_tokens(ct, _TYPE_C), self._embed_tokens(ut, _TYPE_U)]
        use_pooled = cfg.pooled_dim > 0
        if use_pooled:
            if c.pooled is None or u.pooled is None:
                raise HGRMismatchError(
                    f"This HGR was trained for {cfg.describe_widths()} and needs the pooled vector of both "
                    "conditionings, but one has none; use an SDXL-style text encoder (or an HGR without pooled input)."
                )
            for name, cond in (("c", c), ("u", u)):
                if cond.pooled.shape[-1] != cfg.pooled_dim:  # type: ignore[union-attr]
                    raise HGRMismatchError(
                        f"The {name} pooled vector is {cond.pooled.shape[-1]} wide but this HGR expects "  # type: ignore[union-attr]
                        f"{cfg.pooled_dim}; load an HGR trained for this model."
                    )
            parts.append(self._embed_pooled(c.pooled.to(device=device, dtype=dtype), _TYPE_C_POOLED))  # type: ignore[union-attr]
            parts.append(self._embed_pooled(u.pooled.to(device=device, dtype=dtype), _TYPE_U_POOLED))  # type: ignore[union-attr]
        h = torch.cat(parts, dim=1)
        for layer in self.layers:
            h = layer(h)
        h = self.out_norm(h)
        tc, tu = ct.shape[1], ut.shape[1]
        delta_tokens = self.out_proj(h[:, tc:tc + tu])
        delta_pooled = None
        if use_pooled:
            delta_pooled = self.pooled_out_proj(h[:, -1]).to(u.pooled.dtype)  # type: ignore[union-attr]
            delta_pooled = delta_pooled.to(u.pooled.device)  # type: ignore[union-attr]
        return Cond(delta_tokens.to(device=u.tokens.device, dtype=u.tokens.dtype), delta_pooled)


# ----------------------------------------------------------------------------------------------------------
# Metadata and bundle


@dataclass
class HGRMeta:
    """What an HGR file says about itself besides its weights.

    ``categories`` maps each harm category to its concept text (e.g. ``"gore": "blood, gore"``); ``threshold``
    is the prompt-score threshold calibrated on clean prompts (None: never calibrated); ``training`` is a
    JSON-able summary of how it was trained; ``calibration`` records how the threshold was chosen.
    """

    categories: Dict[str, str] = field(default_factory=dict)
    threshold: Optional[float] = None
    training: Dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    calibration: Dict[str, Any] = field(default_factory=dict)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor) and obj.numel() == 1:
        return obj.item()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _dumps(obj: Any) -> str:
    return json.dumps(obj, default=_json_default, sort_keys=True)


def atomic_save_safetensors(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str],
                            path: Union[str, os.PathLike]) -> None:
    """Write a safetensors file via a temp file in the same folder and ``os.replace``.

    A crash (or a full disk) mid-write leaves the previous file untouched instead of a truncated one.
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    os.close(fd)
    try:
        contiguous = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
        save_file(contiguous, tmp, metadata=dict(metadata))
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the permissions open() would
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


_PICKLE_SUFFIXES = {".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle"}
_CHECKPOINT_MARKERS = (
    "model.diffusion_model.", "first_stage_model.", "cond_stage_model.", "conditioner.", "model_ema.",
    "text_model.", "transformer.", "unet.", "vae.", "encoder.", "decoder.", "double_blocks.", "joint_blocks.",
)
_LORA_MARKERS = ("lora_", ".lora_up", ".lora_down", "lora_A", "lora_B", ".alpha")


def _read_safetensors_header(path: Path) -> Tuple[Dict[str, Any], int]:
    """Parse and sanity-check the safetensors header ourselves, so every failure gets a precise message."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if head[:2] in (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05") or head[:4] == b"PK\x03\x04":
            raise HGRFileError(
                f"{path} is a pickle / PyTorch .pt archive. We never unpickle files (a pickle can run arbitrary "
                "code); convert it to safetensors (e.g. safetensors.torch.save_file(state_dict, ...)) or use "
                "an HGR saved by this pack."
            )
        if len(head) < 8:
            raise HGRFileError(
                f"{path} is {size} bytes long, too short to be a safetensors file; it is empty or truncated. "
                "Copy or download the HGR file again."
            )
        (header_len,) = struct.unpack("<Q", head)
        if header_len <= 0 or header_len > 100_000_000:
            raise HGRFileError(
                f"{path} is not a safetensors file (implausible header length {header_len}). HGR files are "
                ".safetensors written by this pack; check that you picked the right file."
            )
        if 8 + header_len > size:
            raise HGRFileError(
                f"{path} is truncated: its header announces {header_len} bytes but the file has only {size}. "
                "Copy or download the HGR file again."
            )
        raw = fh.read(header_len)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HGRFileError(
            f"{path} is not a valid safetensors file (its header is not JSON: {exc}). Check that you picked "
            "an HGR .safetensors file; if it is one, it is corrupted: copy it again."
        ) from None
    if not isinstance(header, dict):
        raise HGRFileError(f"{path} is not a valid safetensors file (header is not a JSON object).")
    data_len = size - 8 - header_len
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            start, end = info["data_offsets"]
        except (TypeError, KeyError, ValueError):
            raise HGRFileError(f"{path} is corrupted: tensor {key!r} has no valid data offsets. Copy it again.") from None
        if not (0 <= start <= end <= data_len):
            raise HGRFileError(
                f"{path} is truncated or corrupted: tensor {key!r} needs bytes {start}..{end} of the data "
                f"section but it has only {data_len}. Copy or download the HGR file again."
            )
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict):
        raise HGRFileError(f"{path} is corrupted: its safetensors metadata is not a string map.")
    return header, size


def _not_an_hgr_message(path: Path, keys: List[str]) -> str:
    if any(any(k.startswith(m) for m in _CHECKPOINT_MARKERS) for k in keys) or len(keys) > 400:
        return (
            f"{path} looks like a model checkpoint, not an HGR (it has {len(keys)} tensors such as {keys[0]!r} and "
            "no SafeCFG metadata); put it in models/checkpoints and load an HGR file (written by SafeCFG "
            "training) here instead."
        )
    if any(any(m in k for m in _LORA_MARKERS) for k in keys):
        return (
            f"{path} looks like a LoRA, not an HGR; put it in models/loras and load an HGR file (written by "
            "SafeCFG training) here instead."
        )
    return (
        f"{path} is a safetensors file but not an HGR (no '{FORMAT_NAME}' format tag in its metadata). Load an "
        "HGR file written by SafeCFG training, or train one with the 'Train HGR' node / `python -m safecfg_core train`."
    )


@dataclass
class HGRBundle:
    """An HGR network together with its config and metadata: what one ``.safetensors`` file holds."""

    net: HarmfulGuidanceRedirector
    config: HGRConfig
    meta: HGRMeta = field(default_factory=HGRMeta)

    @classmethod
    def create(cls, config: HGRConfig, meta: Optional[HGRMeta] = None, seed: Optional[int] = None) -> "HGRBundle":
        """A fresh, zero-output HGR; ``seed`` makes its (non-zero) inner initialisation reproducible."""
        if seed is None:
            net = HarmfulGuidanceRedirector(config)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                net = HarmfulGuidanceRedirector(config)
        return cls(net, config, meta or HGRMeta())

    def to(self, device: Optional[Union[str, torch.device]] = None, dtype: Optional[torch.dtype] = None) -> "HGRBundle":
        """Move/cast the network in place (e.g. to the sampler's device, fp16 on GPU); returns self."""
        self.net.to(device=device, dtype=dtype)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.net.parameters()).dtype

    # -- description ---------------------------------------------------------------------------------------
    def num_parameters(self) -> int:
        return self.net.num_parameters()

    def describe(self) -> str:
        """One human line: family/widths, size, categories, threshold."""
        cats = ", ".join(sorted(self.meta.categories)) or "none recorded"
        thr = "not calibrated" if self.meta.threshold is None else f"{self.meta.threshold:.4g}"
        return (
            f"HGR for {self.config.describe_widths()}, {format_parameter_count(self.num_parameters())} parameters "
            f"(width {self.config.width}, depth {self.config.depth}), categories: {cats}, threshold: {thr}"
        )

    # -- compatibility -------------------------------------------------------------------------------------
    def check_compatible(self, token_dim: int, pooled_dim: int = 0, model_family: Optional[str] = None) -> None:
        """Raise :class:`HGRMismatchError` if this HGR cannot serve a model with these widths / family.

        An HGR without pooled input may serve a model that has a pooled vector (the pooled part then stays
        untouched); the reverse cannot work.
        """
        cfg = self.config
        fam = normalize_family(model_family)
        model_desc = fam or guess_family(token_dim, pooled_dim) or "an unknown family"
        if token_dim != cfg.token_dim:
            raise HGRMismatchError(
                f"This HGR was trained for {cfg.model_family} ({cfg.token_dim}-wide tokens) but the model gives "
                f"{token_dim}-wide tokens ({model_desc}); load an HGR trained for this model."
            )
        if cfg.pooled_dim > 0 and pooled_dim != cfg.pooled_dim:
            got = "no pooled vector" if pooled_dim == 0 else f"a {pooled_dim}-wide pooled vector"
            raise HGRMismatchError(
                f"This HGR was trained for {cfg.describe_widths()} but the model gives {got} ({model_desc}); "
                "load an HGR trained for this model."
            )
        if fam is not None and cfg.model_family not in ("unknown", fam):
            raise HGRMismatchError(
                f"This HGR was trained for {cfg.model_family} ({cfg.token_dim}-wide tokens) but the model is "
                f"{fam} ({token_dim}-wide tokens); load an HGR trained for this model."
            )

    # -- save / load ---------------------------------------------------------------------------------------
    def header_metadata(self) -> Dict[str, str]:
        m = self.meta
        return {
            "safecfg.format": FORMAT_NAME,
            "safecfg.format_version": str(m.format_version),
            "safecfg.config": _dumps(self.config.to_dict()),
            "safecfg.categories": _dumps(m.categories),
            "safecfg.threshold": _dumps(m.threshold),
            "safecfg.training": _dumps(m.training),
            "safecfg.calibration": _dumps(m.calibration),
            "safecfg.num_parameters": str(self.num_parameters()),
        }

    def weight_tensors(self) -> Dict[str, torch.Tensor]:
        return {WEIGHT_PREFIX + k: v for k, v in self.net.state_dict().items()}

    def save(self, path: Union[str, os.PathLike], extra_tensors: Optional[Mapping[str, torch.Tensor]] = None,
             extra_metadata: Optional[Mapping[str, str]] = None) -> Path:
        """Write the HGR (atomically) to ``path``; ``extra_*`` are for training checkpoints."""
        path = Path(path)
        if path.suffix.lower() in _PICKLE_SUFFIXES:
            raise HGRFileError(f"Refusing to save an HGR as {path.suffix}: HGR files are .safetensors; use {path.with_suffix('.safetensors')}.")
        tensors = self.weight_tensors()
        metadata = self.header_metadata()
        if extra_tensors:
            for k, v in extra_tensors.items():
                if not k.startswith(TRAIN_STATE_PREFIX):
                    raise ValueError(f"extra tensor {k!r} must start with {TRAIN_STATE_PREFIX!r}")
                tensors[k] = v
        if extra_metadata:
            metadata.update(extra_metadata)
        atomic_save_safetensors(tensors, metadata, path)
        return path

    @classmethod
    def load(cls, path: Union[str, os.PathLike], device: Union[str, torch.device] = "cpu") -> "HGRBundle":
        """Load an HGR file; every way it can be unusable raises :class:`HGRFileError` saying what to do."""
        bundle, _extra, _meta = cls._load_with_extras(path, device)
        return bundle

    @classmethod
    def _load_with_extras(cls, path: Union[str, os.PathLike], device: Union[str, torch.device] = "cpu"
                          ) -> Tuple["HGRBundle", Dict[str, torch.Tensor], Dict[str, str]]:
        path = Path(path)
        if not path.exists():
            raise HGRFileError(
                f"HGR file {path} does not exist. Check the path; HGR files go in ComfyUI's models/hgr folder "
                "(or train one with `python -m safecfg_core train`)."
            )
        if path.is_dir():
            raise HGRFileError(f"{path} is a folder, not an HGR file; pick the .safetensors file inside it.")
        header, _size = _read_safetensors_header(path)  # raises on pickles / truncation / garbage
        if path.suffix.lower() in _PICKLE_SUFFIXES:
            raise HGRFileError(
                f"{path} has a pickle-style extension ({path.suffix}). We never unpickle files; convert it to "
                "safetensors and name it .safetensors."
            )
        meta_raw: Dict[str, str] = header.get("__metadata__") or {}
        keys = sorted(k for k in header if k != "__metadata__")
        if meta_raw.get("safecfg.format") != FORMAT_NAME:
            raise HGRFileError(_not_an_hgr_message(path, keys or ["<no tensors>"]))
        try:
            version = int(meta_raw.get("safecfg.format_version", "-1"))
        except ValueError:
            version = -1
        if version != FORMAT_VERSION:
            newer = version > FORMAT_VERSION
            raise HGRFileError(
                f"{path} is HGR format version {meta_raw.get('safecfg.format_version')!r}, but this pack reads "
                f"version {FORMAT_VERSION}. "
                + ("Update comfyui-safecfg to load it." if newer else "Retrain the HGR (or convert it) with this version of the pack.")
            )
        try:
            config = HGRConfig.from_dict(json.loads(meta_raw["safecfg.config"]))
            categories = json.loads(meta_raw.get("safecfg.categories", "{}"))
            threshold = json.loads(meta_raw.get("safecfg.threshold", "null"))
            training = json.loads(meta_raw.get("safecfg.training", "{}"))
            calibration = json.loads(meta_raw.get("safecfg.calibration", "{}"))
        except (KeyError, ValueError, TypeError) as exc:
            raise HGRFileError(
                f"{path} has corrupted SafeCFG metadata ({type(exc).__name__}: {exc}); the file cannot be used. "
                "Copy it again or retrain the HGR."
            ) from None
        if not isinstance(categories, dict) or not isinstance(training, dict) or not (
            threshold is None or isinstance(threshold, (int, float))
        ):
            raise HGRFileError(f"{path} has corrupted SafeCFG metadata (categories/threshold/training have wrong types).")
        try:
            from safetensors.torch import load_file

            tensors = load_file(str(path), device="cpu")
        except Exception as exc:  # safetensors raises its own error types
            raise HGRFileError(
                f"{path} could not be read as safetensors ({type(exc).__name__}: {exc}); it is corrupted or "
                "truncated. Copy or download it again."
            ) from None
        net = HarmfulGuidanceRedirector(config)
        expected = {WEIGHT_PREFIX + k: v for k, v in net.state_dict().items()}
        weights = {k: v for k, v in tensors.items() if k.startswith(WEIGHT_PREFIX)}
        extras = {k: v for k, v in tensors.items() if k.startswith(TRAIN_STATE_PREFIX)}
        unknown = sorted(set(tensors) - set(weights) - set(extras))
        missing = sorted(set(expected) - set(weights))
        unexpected = sorted(set(weights) - set(expected)) + unknown
        if missing or unexpected:
            raise HGRFileError(
                f"{path} does not match its own HGR config ({config.describe_widths()}, width {config.width}, "
                f"depth {config.depth}): missing tensors {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                f"unexpected tensors {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}. The file is "
                "corrupted or was edited; retrain or copy it again."
            )
        bad_shapes = [
            f"{k}: file {tuple(weights[k].shape)} vs expected {tuple(v.shape)}"
            for k, v in expected.items() if tuple(weights[k].shape) != tuple(v.shape)
        ]
        if bad_shapes:
            raise HGRFileError(
                f"{path} has tensors of the wrong shape for its config ({'; '.join(bad_shapes[:3])}). The file is "
                "corrupted or was edited; retrain or copy it again."
            )
        nonfinite = [k for k, v in weights.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if nonfinite:
            raise HGRFileError(
                f"{path} contains NaN/inf weights ({nonfinite[:3]}); training diverged or the file is corrupted. "
                "Retrain the HGR (lower the learning rate) or use another file."
            )
        dtypes = {v.dtype for v in weights.values() if v.is_floating_point()}
        if len(dtypes) == 1:
            net = net.to(dtype=next(iter(dtypes)))
        net.load_state_dict({k[len(WEIGHT_PREFIX):]: v for k, v in weights.items()}, strict=True)
        net = net.to(device).eval()
        for p in net.parameters():
            p.requires_grad_(False)
        meta = HGRMeta(
            categories={str(k): str(v) for k, v in categories.items()},
            threshold=None if threshold is None else float(threshold),
            training=training, format_version=version,
            calibration=calibration if isinstance(calibration, dict) else {},
        )
        return cls(net, config, meta), extras, meta_raw


__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "KNOWN_FAMILIES",
    "HGRConfig",
    "HarmfulGuidanceRedirector",
    "HGRMeta",
    "HGRBundle",
    "atomic_save_safetensors",
    "format_parameter_count",
    "guess_family",
    "normalize_family",
]
