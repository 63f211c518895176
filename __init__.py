"""comfyui-safecfg: SafeCFG (arXiv 2412.16039) nodes for ComfyUI.

Importing the pack never downloads anything and never crashes ComfyUI's start-up: each node module is imported on
its own, and one that cannot be imported (a missing optional dependency, an unsupported ComfyUI) disables only its
own nodes, with the reason logged.
"""
from __future__ import annotations

import importlib
import logging
import traceback

log = logging.getLogger("safecfg")

NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}
DISABLED_NODES = {}  # module -> reason, for diagnostics

# module (relative to .nodes) -> [(node id, class name, display name)]
_NODES = {
    "hgr_nodes": [
        ("SafeCFGLoadHGR", "LoadHGR", "Load HGR (SafeCFG)"),
        ("SafeCFG", "SafeCFG", "SafeCFG"),
        ("SafeCFGHarmfulnessDetector", "HarmfulnessDetector", "Harmfulness Detector (SafeCFG)"),
    ],
    "train_node": [
        ("SafeCFGTrainHGR", "TrainHGR", "Train HGR (SafeCFG)"),
    ],
    "demo_model": [
        ("SafeCFGDemoModel", "SafeCFGDemoModel", "SafeCFG Demo Model"),
    ],
}


def _load() -> None:
    for module_name, entries in _NODES.items():
        try:
            module = importlib.import_module(f".nodes.{module_name}", __name__)
        except Exception as exc:  # noqa: BLE001 - a broken optional part must not stop ComfyUI
            reason = f"{type(exc).__name__}: {exc}"
            DISABLED_NODES[module_name] = reason
            log.warning("SafeCFG: nodes %s disabled (%s)", [e[0] for e in entries], reason)
            log.debug("%s", traceback.format_exc())
            continue
        for node_id, cls_name, display in entries:
            NODE_CLASS_MAPPINGS[node_id] = getattr(module, cls_name)
            NODE_DISPLAY_NAME_MAPPINGS[node_id] = display
    try:
        from .nodes.common import register_hgr_folder

        register_hgr_folder()
    except Exception as exc:  # noqa: BLE001
        log.warning("SafeCFG: could not register the hgr model folder (%s)", exc)


_load()

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
