"""Generators of hostile HGR files, shared by the core suite (tests/core/test_hgr_file.py) and the server suite
(tests/comfy/test_hostile_server.py): one valid HGR file with one generated lie in its header (config values,
metadata JSON, a tensor's shape, dtype or offsets, a missing tensor) or a cut.

Not a test module (pytest collects ``test_*.py`` only); the test files load it by path, as the suite runs with
``--import-mode=importlib`` and ``tests`` is no package.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any, Dict, Tuple

from hypothesis import strategies as st

Mutation = Tuple[str, Any]

JSON_LEAF = st.one_of(st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70),
                      st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8))
JSON = st.recursive(JSON_LEAF, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                    max_leaves=12)
HOSTILE = st.sampled_from([float("nan"), float("inf"), -1.0, -1, 0, 2 ** 40, 2 ** 31, 4097, True, "8", None, [], {}])
CONFIG_KEYS = ["token_dim", "pooled_dim", "width", "depth", "heads", "chunk", "model_family"]
METADATA_KEYS = ["safecfg.config", "safecfg.threshold", "safecfg.categories", "safecfg.training",
                 "safecfg.calibration", "safecfg.format_version"]
KINDS = ["config", "metadata", "shape", "dtype", "offsets", "drop", "truncate"]


@st.composite
def mutations(draw: Any) -> Mutation:
    """``(kind, argument)``: one lie to tell in a valid HGR file's header (see :func:`write_mutated`)."""
    kind = draw(st.sampled_from(KINDS))
    if kind == "config":
        return kind, (draw(st.sampled_from(CONFIG_KEYS)), draw(st.one_of(HOSTILE, JSON_LEAF, st.integers(0, 2 ** 41))))
    if kind == "metadata":
        value = draw(st.one_of(HOSTILE.map(lambda v: json.dumps(v, allow_nan=True)), JSON.map(json.dumps),
                               st.integers(1, 5000).map(lambda n: "[" * n + "]" * n)))
        return kind, (draw(st.sampled_from(METADATA_KEYS)), value)
    if kind == "shape":
        return kind, (draw(st.integers(0, 40)), draw(st.lists(st.integers(0, 2 ** 33), min_size=0, max_size=3)))
    if kind == "dtype":
        return kind, (draw(st.integers(0, 40)), draw(st.sampled_from(["F64", "I8", "U8", "BOOL", "F16", "X9"])))
    if kind == "offsets":
        return kind, (draw(st.integers(0, 40)), draw(st.integers(-5, 2 ** 40)), draw(st.integers(-5, 2 ** 40)))
    return kind, draw(st.integers(0, 40))


def raw_parts(path: Path) -> Tuple[Dict[str, Any], bytes]:
    """A safetensors file as (parsed header, data section)."""
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]), data[8 + n:]


def write_raw(path: Path, header: Dict[str, Any], body: bytes) -> Path:
    """Write ``header`` (any JSON, NaN included) and ``body`` as a safetensors file, lies and all."""
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + body)
    return path


def write_mutated(good: Path, out: Path, mutation: Mutation) -> Path:
    """``good`` (a valid HGR file) with ``mutation`` applied, written to ``out``."""
    header, body = raw_parts(good)
    meta = header["__metadata__"]
    tensors = sorted(k for k in header if k != "__metadata__")
    kind, arg = mutation
    if kind == "config":
        cfg = json.loads(meta["safecfg.config"])
        cfg[arg[0]] = arg[1]
        meta["safecfg.config"] = json.dumps(cfg)
    elif kind == "metadata":
        meta[arg[0]] = arg[1]
    elif kind == "shape":
        header[tensors[arg[0] % len(tensors)]]["shape"] = arg[1]
    elif kind == "dtype":
        header[tensors[arg[0] % len(tensors)]]["dtype"] = arg[1]
    elif kind == "offsets":
        header[tensors[arg[0] % len(tensors)]]["data_offsets"] = [arg[1], arg[2]]
    elif kind == "drop":
        header.pop(tensors[arg % len(tensors)])
    if kind == "truncate":
        whole = good.read_bytes()
        out.write_bytes(whole[: max(0, len(whole) - 1 - arg * 97)])
        return out
    return write_raw(out, header, body)


__all__ = ["HOSTILE", "JSON", "JSON_LEAF", "Mutation", "mutations", "raw_parts", "write_mutated", "write_raw"]
