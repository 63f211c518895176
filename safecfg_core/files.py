"""What a path is, read from ``stat`` alone: the HGR loader and the trainer must never open a path to find out,
because opening a FIFO blocks until a writer appears (and with it ComfyUI's whole queue)."""
from __future__ import annotations

import stat
from pathlib import Path


def file_kind(path: Path) -> str:
    """``"missing"``, ``"folder"``, ``"regular"`` or ``"special"`` (a pipe, socket or device); other ``OSError``s
    (permissions, a broken mount) propagate for the caller to phrase."""
    try:
        mode = Path(path).stat().st_mode
    except FileNotFoundError:
        return "missing"
    if stat.S_ISDIR(mode):
        return "folder"
    return "regular" if stat.S_ISREG(mode) else "special"


__all__ = ["file_kind"]
