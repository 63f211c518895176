"""Reading and checking an HGR file's safetensors header before any tensor is read or any module is built.

Everything here works on the header alone (at most ``MAX_HEADER_BYTES`` read from disk), so a hostile or damaged
file is refused for the price of a small read: a pickle, a truncated file, a header that lies about its size, a
config declaring a network far larger than its tensors, JSON nested deeply enough to exhaust the parser.
"""
from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch

from ..errors import HGRFileError
from ..files import file_kind
from .net import HarmfulGuidanceRedirector, HGRConfig

FORMAT_NAME = "safecfg-hgr"
FORMAT_VERSION = 1
WEIGHT_PREFIX = "hgr."
TRAIN_STATE_PREFIX = "train."
"""Checkpoints written during training carry optimizer/RNG state under this prefix; ``load`` ignores it."""

MAX_HEADER_BYTES = 16 * 1024 * 1024
"""An HGR's header is a few kB (its training summary holds at most a few thousand numbers)."""
MAX_JSON_DEPTH = 32
"""Nesting depth allowed in any JSON the header holds; ours needs 4."""
MAX_TENSORS = 4096

WEIGHT_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}

PICKLE_SUFFIXES = {".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle"}
_CHECKPOINT_MARKERS = (
    "model.diffusion_model.", "first_stage_model.", "cond_stage_model.", "conditioner.", "model_ema.",
    "text_model.", "transformer.", "unet.", "vae.", "encoder.", "decoder.", "double_blocks.", "joint_blocks.",
)
_LORA_MARKERS = ("lora_", ".lora_up", ".lora_down", "lora_A", "lora_B", ".alpha")


def check_regular_file(path: Path) -> None:
    """Refuse what is not a regular file before opening it: opening a FIFO blocks until a writer appears."""
    try:
        kind = file_kind(path)
    except OSError as exc:
        raise HGRFileError(f"HGR file {path} cannot be read ({exc.strerror or exc}); check its permissions.") from None
    if kind == "missing":
        raise HGRFileError(
            f"HGR file {path} does not exist. Check the path; HGR files go in ComfyUI's models/hgr folder "
            "(or train one with `python -m safecfg_core train`)."
        )
    if kind == "folder":
        raise HGRFileError(f"{path} is a folder, not an HGR file; pick the .safetensors file inside it.")
    if kind == "special":
        raise HGRFileError(
            f"{path} is not a regular file (a pipe, socket or device); HGR files are ordinary .safetensors files. "
            "Remove it from the hgr folder."
        )


def json_depth(value: Any) -> int:
    """Nesting depth of a parsed JSON value, walked without recursion (so it cannot exhaust the stack)."""
    depth, stack = 0, [(value, 1)]
    while stack:
        item, d = stack.pop()
        if isinstance(item, (dict, list)):
            depth = max(depth, d)
            if d > MAX_JSON_DEPTH:
                return d
            stack.extend((v, d + 1) for v in (item.values() if isinstance(item, dict) else item))
    return depth


def parse_json(text: str, what: str, path: Path) -> Any:
    """``json.loads`` with every failure (syntax, nesting, size) as an :class:`HGRFileError` naming ``what``."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise HGRFileError(
            f"{path} has corrupted {what}: its JSON is nested too deeply to be an HGR's. The file is damaged or "
            "was made to attack the loader; use another file."
        ) from None
    except (ValueError, TypeError) as exc:
        raise HGRFileError(
            f"{path} has corrupted {what} ({type(exc).__name__}: {exc}); the file cannot be used. "
            "Copy it again or retrain the HGR."
        ) from None
    if json_depth(value) > MAX_JSON_DEPTH:
        raise HGRFileError(
            f"{path} has corrupted {what}: its JSON is nested more than {MAX_JSON_DEPTH} levels deep, far more than "
            "an HGR's. The file is damaged or was made to attack the loader; use another file."
        )
    return value


def read_header(path: Path) -> Dict[str, Any]:
    """The safetensors header of ``path``, sanity-checked, with every failure as a precise :class:`HGRFileError`.

    Reads at most ``8 + MAX_HEADER_BYTES`` bytes; checks that every tensor's data lies inside the file and has the
    size its dtype and shape need.
    """
    check_regular_file(path)
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
        if header_len <= 0 or header_len > MAX_HEADER_BYTES:
            raise HGRFileError(
                f"{path} is not a safetensors file an HGR could be (header length {header_len}; an HGR's is at "
                f"most {MAX_HEADER_BYTES}). HGR files are .safetensors written by this pack; check that you picked the "
                "right file."
            )
        if 8 + header_len > size:
            raise HGRFileError(
                f"{path} is truncated: its header announces {header_len} bytes but the file has only {size}. "
                "Copy or download the HGR file again."
            )
        raw = fh.read(header_len)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HGRFileError(
            f"{path} is not a valid safetensors file (its header is not JSON: {exc}). Check that you picked "
            "an HGR .safetensors file; if it is one, it is corrupted: copy it again."
        ) from None
    try:
        header = json.loads(text)
    except RecursionError:
        raise HGRFileError(f"{path} is not a valid safetensors file (its header is not JSON: nested too deeply).") from None
    except ValueError as exc:
        raise HGRFileError(
            f"{path} is not a valid safetensors file (its header is not JSON: {exc}). Check that you picked "
            "an HGR .safetensors file; if it is one, it is corrupted: copy it again."
        ) from None
    if not isinstance(header, dict):
        raise HGRFileError(f"{path} is not a valid safetensors file (header is not a JSON object).")
    if len(header) > MAX_TENSORS:
        raise HGRFileError(f"{path} has {len(header) - 1} tensors; an HGR has a few dozen. It is not an HGR file.")
    _check_tensor_entries(path, header, size - 8 - header_len)
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise HGRFileError(f"{path} is corrupted: its safetensors metadata is not a string map.")
    return header


_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def _check_tensor_entries(path: Path, header: Mapping[str, Any], data_len: int) -> None:
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            start, end = info["data_offsets"]
            shape, dtype = info["shape"], info["dtype"]
            ok = all(isinstance(v, int) and not isinstance(v, bool) for v in (start, end, *shape))
        except (TypeError, KeyError, ValueError):
            ok = False
        if not ok:
            raise HGRFileError(f"{path} is corrupted: tensor {key!r} has no valid shape and data offsets. Copy it again.")
        if not (0 <= start <= end <= data_len):
            raise HGRFileError(
                f"{path} is truncated or corrupted: tensor {key!r} needs bytes {start}..{end} of the data "
                f"section but it has only {data_len}. Copy or download the HGR file again."
            )
        if dtype not in _DTYPE_BYTES or any(d < 0 for d in shape) or \
                math.prod(shape) * _DTYPE_BYTES[dtype] != end - start:
            raise HGRFileError(
                f"{path} is corrupted: tensor {key!r} ({dtype}, shape {shape}) does not fit its {end - start} bytes. "
                "Copy or download the HGR file again."
            )


def not_an_hgr_message(path: Path, keys: List[str]) -> str:
    """Why a safetensors file without our format tag is not an HGR, naming what it looks like instead."""
    keys = keys or ["<no tensors>"]
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


def check_format(path: Path, header: Mapping[str, Any]) -> int:
    """Refuse files that are not HGRs or are another format version; returns the version."""
    meta: Dict[str, str] = header.get("__metadata__") or {}
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise HGRFileError(
            f"{path} has a pickle-style extension ({path.suffix}). We never unpickle files; convert it to "
            "safetensors and name it .safetensors."
        )
    if meta.get("safecfg.format") != FORMAT_NAME:
        raise HGRFileError(not_an_hgr_message(path, sorted(k for k in header if k != "__metadata__")))
    try:
        version = int(meta.get("safecfg.format_version", "-1"))
    except ValueError:
        version = -1
    if version != FORMAT_VERSION:
        newer = version > FORMAT_VERSION
        raise HGRFileError(
            f"{path} is HGR format version {meta.get('safecfg.format_version')!r}, but this pack reads "
            f"version {FORMAT_VERSION}. "
            + ("Update comfyui-safecfg to load it." if newer else "Retrain the HGR (or convert it) with this version of the pack.")
        )
    return version


def read_config(path: Path, meta: Mapping[str, str]) -> HGRConfig:
    """The declared config, with every size checked against :data:`~.net.SIZE_LIMITS` (nothing is built)."""
    data = parse_json(meta.get("safecfg.config", ""), "SafeCFG metadata (config)", path)
    if not isinstance(data, dict):
        raise HGRFileError(f"{path} has corrupted SafeCFG metadata: the config is not a JSON object.")
    try:
        return HGRConfig.from_dict(data)
    except (TypeError, ValueError) as exc:
        raise HGRFileError(
            f"{path} has corrupted SafeCFG metadata (config: {exc}); the file cannot be used. Copy it again or "
            "retrain the HGR."
        ) from None


def expected_shapes(config: HGRConfig) -> Dict[str, Tuple[int, ...]]:
    """Weight name -> shape for ``config``, from a network built on the meta device (no memory is allocated)."""
    with torch.device("meta"):
        net = HarmfulGuidanceRedirector(config)
    return {WEIGHT_PREFIX + k: tuple(v.shape) for k, v in net.state_dict().items()}


def check_tensors_match_config(path: Path, header: Mapping[str, Any], config: HGRConfig) -> Optional[torch.dtype]:
    """Compare the header's tensor names, shapes and dtypes with what ``config`` needs; returns the weights' dtype.

    Runs before any tensor is read, so a config that declares a bigger network than the file holds costs nothing.
    """
    expected = expected_shapes(config)
    weights = {k: v for k, v in header.items() if k.startswith(WEIGHT_PREFIX)}
    other = sorted(k for k in header if k != "__metadata__" and k not in weights and not k.startswith(TRAIN_STATE_PREFIX))
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected)) + other
    if missing or unexpected:
        raise HGRFileError(
            f"{path} does not match its own HGR config ({config.describe_widths()}, width {config.width}, "
            f"depth {config.depth}): missing tensors {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected tensors {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}. The file is "
            "corrupted or was edited; retrain or copy it again."
        )
    bad_shapes = [f"{k}: file {tuple(weights[k]['shape'])} vs expected {shape}"
                  for k, shape in expected.items() if tuple(weights[k]["shape"]) != shape]
    if bad_shapes:
        raise HGRFileError(
            f"{path} has tensors of the wrong shape for its config ({'; '.join(bad_shapes[:3])}). The file is "
            "corrupted or was edited; retrain or copy it again."
        )
    dtypes = {weights[k]["dtype"] for k in expected}
    if not dtypes <= set(WEIGHT_DTYPES):
        raise HGRFileError(
            f"{path} stores weights as {sorted(dtypes - set(WEIGHT_DTYPES))}; HGR weights are F32, F16 or BF16. "
            "The file is corrupted or was edited; retrain or copy it again."
        )
    return WEIGHT_DTYPES[next(iter(dtypes))] if len(dtypes) == 1 else None


def read_threshold(path: Path, meta: Mapping[str, str]) -> Optional[float]:
    """The calibrated threshold: None, or a finite number >= 0 (NaN would silently disable SafeCFG, a negative
    one would redirect clean prompts)."""
    value = parse_json(meta.get("safecfg.threshold", "null"), "SafeCFG metadata (threshold)", path)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise HGRFileError(
            f"{path} records the threshold {value!r}; a threshold must be a finite number >= 0 (NaN would turn "
            "SafeCFG off for harmful prompts, a negative one would change clean images). Recalibrate or retrain "
            "the HGR, or use another file."
        )
    return float(value)


__all__ = [
    "FORMAT_NAME", "FORMAT_VERSION", "MAX_HEADER_BYTES", "MAX_JSON_DEPTH", "TRAIN_STATE_PREFIX", "WEIGHT_PREFIX",
    "check_format", "check_regular_file", "check_tensors_match_config", "expected_shapes", "json_depth",
    "not_an_hgr_message", "parse_json", "read_config", "read_header", "read_threshold",
]
