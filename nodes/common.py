"""Shared plumbing of the SafeCFG nodes: the ``hgr`` model folder, safe file names, error messages.

Everything ComfyUI-specific that more than one node needs lives here once. ComfyUI modules are imported inside
functions so that importing this file never fails outside a ComfyUI process (unit tests import it directly).
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import List, Optional

log = logging.getLogger("safecfg")

# Functional menu categories, next to ComfyUI's own loaders / sampling / conditioning / training nodes.
CATEGORY_LOADERS = "loaders/safecfg"
CATEGORY_SAMPLING = "sampling/safecfg"
CATEGORY_CONDITIONING = "conditioning/safecfg"
CATEGORY_TRAINING = "training/safecfg"
CATEGORY_DEMO = "safecfg/demo"
HGR_FOLDER = "hgr"
HGR_EXTENSIONS = {".safetensors"}
HGR_TYPE = "HGR"


class SafeCFGNodeError(ValueError):
    """An input problem a node reports to the user (shown in ComfyUI's error dialog and in /history)."""


def node_error(node: str, message: str) -> SafeCFGNodeError:
    """``SafeCFG <node>: <message>``: one format for every message the pack's nodes raise."""
    return SafeCFGNodeError(f"SafeCFG {node}: {message}")


def register_hgr_folder() -> Optional[str]:
    """Register ComfyUI's ``hgr`` model folder (``models/hgr``) with ``.safetensors`` files.

    Called once, when ComfyUI loads the pack (``comfy_entrypoint``); idempotent.

    ComfyUI reads ``extra_model_paths.yaml`` before it loads custom nodes, so an ``hgr:`` entry there may already
    have created the folder entry (with no extensions): keep its paths first and add ours after them.
    Returns the default folder, or None outside ComfyUI.
    """
    try:
        import folder_paths  # type: ignore
    except Exception:  # not inside ComfyUI
        return None
    default = os.path.join(folder_paths.models_dir, HGR_FOLDER)
    entry = folder_paths.folder_names_and_paths.get(HGR_FOLDER)
    if entry is None:
        paths: List[str] = []
        exts = set()
    else:
        paths, exts = list(entry[0]), set(entry[1])
    if default not in paths:
        paths.append(default)
    exts |= HGR_EXTENSIONS
    folder_paths.folder_names_and_paths[HGR_FOLDER] = (paths, exts)
    try:
        os.makedirs(default, exist_ok=True)
    except OSError:  # read-only install: the folder list still works for extra paths
        pass
    cache = getattr(folder_paths, "filename_list_cache", None)
    if isinstance(cache, dict):
        cache.pop(HGR_FOLDER, None)
    return default


def hgr_folders() -> List[str]:
    import folder_paths  # type: ignore

    return list(folder_paths.get_folder_paths(HGR_FOLDER))


BUILTIN_DEMO_HGR = "safecfg_demo (built-in)"
"""Choice in Load HGR for the HGR shipped with the pack for its demo model (when the file is present)."""


def builtin_demo_hgr_path() -> Optional[Path]:
    try:
        from ..safecfg_core.demo.world import HGR_PATH
    except Exception:  # the demo world is optional
        return None
    p = Path(HGR_PATH)
    return p if p.is_file() else None


def list_hgr_files() -> List[str]:
    names: List[str] = []
    try:
        import folder_paths  # type: ignore

        names = sorted(folder_paths.get_filename_list(HGR_FOLDER))
    except Exception as exc:  # never break /object_info
        log.warning("SafeCFG: could not list HGR files: %s", exc)
    if builtin_demo_hgr_path() is not None:
        names.append(BUILTIN_DEMO_HGR)
    return names


def resolve_hgr_path(name: str) -> Path:
    """Full path of an HGR file chosen in the Load HGR node; refuses names that leave the hgr folders."""
    import folder_paths  # type: ignore

    if name == BUILTIN_DEMO_HGR:
        builtin = builtin_demo_hgr_path()
        if builtin is None:
            raise node_error("Load HGR", "the pack's demo HGR is not installed (safecfg_core/demo/weights/hgr.safetensors).")
        return builtin
    if not isinstance(name, str) or not name.strip():
        raise node_error("Load HGR", "no HGR file chosen. Put .safetensors HGR files in models/hgr (or train one "
                                     "with the Train HGR node) and pick one.")
    if os.path.isabs(name) or ".." in Path(name).parts:
        raise node_error("Load HGR", f"{name!r} is not a file name inside the hgr folders; pick one from the list.")
    full = folder_paths.get_full_path(HGR_FOLDER, name)
    if full is None:
        raise node_error("Load HGR", f"HGR file {name!r} was not found in {hgr_folders()}; refresh the node list "
                                     "or copy the file there.")
    real = Path(full).resolve()
    roots = [Path(p).resolve() for p in hgr_folders()]
    if not any(real == r or r in real.parents for r in roots):
        raise node_error("Load HGR", f"{name!r} resolves outside the hgr folders; pick a file from the list.")
    return real


_SAFE_NAME = re.compile(r"[^A-Za-z0-9._ -]+")


def sanitize_hgr_name(name: str) -> str:
    """A file name for a new HGR: no folders, no path escapes, ``.safetensors`` suffix.

    Raises if nothing usable is left (an empty name or only dots/separators).
    """
    raw = str(name or "").strip()
    base = raw.replace("\\", "/").split("/")[-1]
    if base.lower().endswith(".safetensors"):
        base = base[: -len(".safetensors")]
    base = _SAFE_NAME.sub("_", base).strip(" .")
    if not base or set(base) <= {"_", "."}:
        raise node_error("Train HGR", f"the name {raw!r} leaves no usable file name; use letters, digits, '-', '_'.")
    if raw.replace("\\", "/") != base and raw.replace("\\", "/") != base + ".safetensors":
        log.warning("SafeCFG Train HGR: name %r was sanitised to %r (no folders or special characters).", raw, base)
    return base[:120] + ".safetensors"


def hgr_save_path(name: str) -> Path:
    """Where Train HGR writes ``name``: the first hgr folder (extra_model_paths.yaml entries come first)."""
    fname = sanitize_hgr_name(name)
    folder = Path(hgr_folders()[0])
    folder.mkdir(parents=True, exist_ok=True)
    target = (folder / fname).resolve()
    if target.parent != folder.resolve():
        raise node_error("Train HGR", f"refusing to write outside {folder}.")
    return target


def format_exception(node: str, exc: BaseException) -> SafeCFGNodeError:
    """Wrap a core error into the node's message format, keeping the core's explanation."""
    msg = str(exc) or type(exc).__name__
    return node_error(node, msg)
