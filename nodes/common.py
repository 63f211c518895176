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


def shown(name: object, limit: int = 80) -> str:
    """``name`` as messages quote it: repr, cut to ``limit`` characters (a 100 kB name must not become the message)."""
    text = repr(name)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(str(name))} characters)"


def _kind_in_folders(name: str) -> str:
    """What ``name`` is in the hgr folders ("special", "folder" or "missing"), read from stat alone (never opened)."""
    from ..safecfg_core.files import file_kind

    kinds = set()
    for folder in hgr_folders():
        try:
            kinds.add(file_kind(Path(folder) / name))
        except (OSError, ValueError):  # unreadable, or a name the OS refuses: nothing usable there
            kinds.add("missing")
    return next((k for k in ("special", "folder") if k in kinds), "missing")


def resolve_hgr_path(name: str) -> Path:
    """Full path of an HGR file chosen in the Load HGR node; refuses names that leave the hgr folders.

    ComfyUI does not check a V3 combo's value against its list, so any string (or JSON value) arrives here.
    """
    import folder_paths  # type: ignore

    if name == BUILTIN_DEMO_HGR:
        builtin = builtin_demo_hgr_path()
        if builtin is None:
            raise node_error("Load HGR", "the pack's demo HGR is not installed "
                                         "(safecfg_core/demo/weights/hgr.safetensors).")
        return builtin
    if not isinstance(name, str) or not name.strip():
        raise node_error("Load HGR", "no HGR file chosen. Put .safetensors HGR files in models/hgr (or train one "
                                     "with the Train HGR node) and pick one.")
    if os.path.isabs(name) or ".." in Path(name).parts or "\x00" in name:
        raise node_error("Load HGR", f"{shown(name)} is not a file name inside the hgr folders; pick one from the "
                                     "list.")
    full = folder_paths.get_full_path(HGR_FOLDER, name)
    if full is None:
        kind = _kind_in_folders(name)
        if kind == "special":
            raise node_error("Load HGR", f"{shown(name)} in the hgr folder is not a regular file (a pipe, socket "
                                         "or device); HGR files are ordinary .safetensors files. Remove it from the "
                                         "folder.")
        if kind == "folder":
            raise node_error("Load HGR", f"{shown(name)} is a folder, not an HGR file; pick a .safetensors file.")
        raise node_error("Load HGR", f"HGR file {shown(name)} was not found in {hgr_folders()}; refresh the node "
                                     "list or copy the file there.")
    real = Path(full).resolve()
    roots = [Path(p).resolve() for p in hgr_folders()]
    if not any(real == r or r in real.parents for r in roots):
        raise node_error("Load HGR", f"{shown(name)} resolves outside the hgr folders; pick a file from the list.")
    return real


_SAFE_NAME = re.compile(r"[^A-Za-z0-9._ -]+")
MAX_NAME_CHARS = 120
SUFFIX = ".safetensors"


def sanitize_hgr_name(name: str, node: str = "Train HGR") -> str:
    """The nearest usable file name for ``name``: no folders, no path escapes, ``.safetensors`` suffix.

    Only a suggestion: :func:`plain_file_name` refuses names that need it, because different names rewrite to the
    same file ('a?b' and 'a*b', 'x/h' and 'y/h'). Raises if nothing usable is left (empty, only dots/separators).
    """
    raw = str(name or "").strip()
    base = raw.replace("\\", "/").split("/")[-1]
    if base.lower().endswith(SUFFIX):
        base = base[: -len(SUFFIX)]
    base = _SAFE_NAME.sub("_", base).strip(" .")
    if not base or set(base) <= {"_", "."}:
        raise node_error(node, f"the name {shown(raw)} leaves no usable file name; use letters, digits, '-', '_'.")
    return base[:MAX_NAME_CHARS] + SUFFIX


def plain_file_name(name: str, node: str) -> str:
    """``name`` + ``.safetensors`` when ``name`` is already a plain file name, else a node error that suggests one.

    Rewriting would be silent and lossy: two different names would share one file, and training under one of them
    would then load or (with retrain) replace the other's HGR. Surrounding spaces and a ``.safetensors`` suffix are
    the only differences allowed, since they never name another file.
    """
    raw = str(name or "").strip()
    suggestion = sanitize_hgr_name(raw, node)  # raises when nothing usable is left
    stem = raw[: -len(SUFFIX)] if raw.lower().endswith(SUFFIX) else raw
    if stem + SUFFIX != suggestion:
        why = (f"longer than {MAX_NAME_CHARS} characters" if len(stem) > MAX_NAME_CHARS
               else "not a plain file name (folders, '..' and characters other than letters, digits, ' ', '.', "
                    "'-', '_' are not allowed, and it may not start or end with '.' or ' ')")
        hint = shown(suggestion[: -len(SUFFIX)], MAX_NAME_CHARS + 2)
        raise node_error(node, f"the name {shown(raw)} is {why}. Names are never rewritten, so that two names can "
                               f"never share one file; use e.g. {hint}.")
    return suggestion


def hgr_save_path(name: str) -> Path:
    """Where Train HGR writes ``name``: the first hgr folder (extra_model_paths.yaml entries come first)."""
    fname = plain_file_name(name, "Train HGR")
    folder = Path(hgr_folders()[0])
    folder.mkdir(parents=True, exist_ok=True)
    target = (folder / fname).resolve()
    if target.parent != folder.resolve():
        raise node_error("Train HGR", f"refusing to write outside {folder}: {fname} is a link that leads out of "
                                      "it.")
    return target


def format_exception(node: str, exc: BaseException) -> SafeCFGNodeError:
    """Wrap a core error into the node's message format, keeping the core's explanation."""
    msg = str(exc) or type(exc).__name__
    if isinstance(exc, SafeCFGNodeError) and msg.startswith(f"SafeCFG {node}:"):
        return exc  # raised by a helper inside the node's own try block: already in the format, never twice
    return node_error(node, msg)
