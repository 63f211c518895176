"""An HGR file: the network, its config and what it says about itself, as one safetensors file.

Files are safetensors only (weights can never execute code); everything that is not a tensor (config, harm
categories, calibrated threshold, training summary) lives as JSON strings in the safetensors header metadata, so one
file is the whole, self-describing HGR. Loading checks the header completely (:mod:`.header`) before it reads a
tensor or builds a module.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import torch

from ..errors import HGRFileError, HGRMismatchError
from ..families import describe_model_widths, normalize_family
from .header import (FORMAT_NAME, FORMAT_VERSION, PICKLE_SUFFIXES, TRAIN_STATE_PREFIX, WEIGHT_PREFIX, check_format,
                     check_tensors_match_config, parse_json, read_config, read_header, read_threshold)
from .net import HarmfulGuidanceRedirector, HGRConfig, format_parameter_count


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


def _read_meta(path: Path, raw: Mapping[str, str], version: int) -> HGRMeta:
    categories = parse_json(raw.get("safecfg.categories", "{}"), "SafeCFG metadata (categories)", path)
    training = parse_json(raw.get("safecfg.training", "{}"), "SafeCFG metadata (training)", path)
    calibration = parse_json(raw.get("safecfg.calibration", "{}"), "SafeCFG metadata (calibration)", path)
    if not isinstance(categories, dict) or not isinstance(training, dict):
        raise HGRFileError(f"{path} has corrupted SafeCFG metadata (categories/training have wrong types).")
    return HGRMeta(categories={str(k): str(v) for k, v in categories.items()}, threshold=read_threshold(path, raw),
                   training=training, format_version=version,
                   calibration=calibration if isinstance(calibration, dict) else {})


def _read_tensors(path: Path, keys: Any) -> Dict[str, torch.Tensor]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {k: f.get_tensor(k) for k in keys}
    except Exception as exc:  # safetensors raises its own error types
        raise HGRFileError(
            f"{path} could not be read as safetensors ({type(exc).__name__}: {exc}); it is corrupted or "
            "truncated. Copy or download it again."
        ) from None


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

    def check_compatible(self, token_dim: int, pooled_dim: int = 0, model_family: Optional[str] = None) -> None:
        """Raise :class:`HGRMismatchError` if this HGR cannot serve a model with these widths / family.

        An HGR without pooled input may serve a model that has a pooled vector (the pooled part then stays
        untouched); the reverse cannot work.
        """
        cfg = self.config
        fam = normalize_family(model_family)
        model_desc = fam or describe_model_widths(token_dim, pooled_dim)
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
        if path.suffix.lower() in PICKLE_SUFFIXES:
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
        return load_with_extras(path, device, with_extras=False)[0]


def read_training_record(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """The ``training`` summary of an HGR file, from its header alone (no tensor is read); raises
    :class:`HGRFileError` when the file is not a usable HGR header."""
    path = Path(path)
    header = read_header(path)
    version = check_format(path, header)
    return _read_meta(path, header.get("__metadata__") or {}, version).training


def load_with_extras(path: Union[str, os.PathLike], device: Union[str, torch.device] = "cpu",
                     with_extras: bool = True) -> Tuple[HGRBundle, Dict[str, torch.Tensor], Dict[str, str]]:
    """Load an HGR file and, for a training checkpoint, its ``train.*`` tensors and raw metadata.

    Order matters: the header is read and checked, the declared config is bounded and compared with the tensor
    shapes the header lists, and only then are tensors read and the network built.
    """
    path = Path(path)
    header = read_header(path)  # raises on non-files, pickles, truncation, garbage, lying sizes
    version = check_format(path, header)
    meta_raw: Dict[str, str] = header.get("__metadata__") or {}
    config = read_config(path, meta_raw)
    meta = _read_meta(path, meta_raw, version)
    dtype = check_tensors_match_config(path, header, config)
    keys = sorted(k for k in header if k.startswith(WEIGHT_PREFIX) or (with_extras and k.startswith(TRAIN_STATE_PREFIX)))
    tensors = _read_tensors(path, keys)
    weights = {k[len(WEIGHT_PREFIX):]: v for k, v in tensors.items() if k.startswith(WEIGHT_PREFIX)}
    nonfinite = [WEIGHT_PREFIX + k for k, v in weights.items() if not bool(torch.isfinite(v).all())]
    if nonfinite:
        raise HGRFileError(
            f"{path} contains NaN/inf weights ({nonfinite[:3]}); training diverged or the file is corrupted. "
            "Retrain the HGR (lower the learning rate) or use another file."
        )
    net = HarmfulGuidanceRedirector(config)
    if dtype is not None:
        net = net.to(dtype=dtype)
    net.load_state_dict(weights, strict=True)
    net = net.to(device).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    extras = {k: v for k, v in tensors.items() if k.startswith(TRAIN_STATE_PREFIX)}
    return HGRBundle(net, config, meta), extras, meta_raw


__all__ = ["HGRBundle", "HGRMeta", "atomic_save_safetensors", "load_with_extras", "read_training_record"]
