"""comfyui-safecfg: SafeCFG (arXiv 2412.16039) nodes for ComfyUI (V3 node API, ComfyUI 0.3.48 or newer).

ComfyUI calls :func:`comfy_entrypoint`. The pack deliberately defines no ``NODE_CLASS_MAPPINGS``: ComfyUI reads that
first and would then ignore the entry point. Importing the pack never downloads anything and never crashes
ComfyUI's start-up: each node module is imported on its own, and one that cannot be imported (a missing optional
dependency, a broken file) disables only its own nodes, with the reason logged and kept in :data:`DISABLED_NODES`.
"""
from __future__ import annotations

import importlib
import logging
import traceback
from typing import Any, Dict, List

log = logging.getLogger("safecfg")

WEB_DIRECTORY = "./web"
"""Frontend extensions ComfyUI serves with the pack (web/safecfg_detector.js: the detector's verdict on its node;
web/safecfg_template_order.js: the pack's templates in name order, demo first)."""

DISABLED_NODES: Dict[str, str] = {}
"""Node module -> why it could not be imported (for diagnostics and tests)."""

# node module (relative to .nodes) -> [(node id, class name)]
_NODES = {
    "load_hgr": [("SafeCFGLoadHGR", "LoadHGR")],
    "safecfg_node": [("SafeCFG", "SafeCFG")],
    "detector": [("SafeCFGHarmfulnessDetector", "HarmfulnessDetector")],
    "train_node": [("SafeCFGTrainHGR", "TrainHGR"), ("SafeCFGTrainHGRPreset", "TrainHGRPreset")],
    "align_node": [("SafeCFGAlignModel", "AlignModel")],
    "demo_model": [("SafeCFGDemoModel", "SafeCFGDemoModel")],
}


def load_node_classes() -> List[Any]:
    """The V3 node classes of every node module that imports; the others are recorded in DISABLED_NODES."""
    classes: List[Any] = []
    for module_name, entries in _NODES.items():
        try:
            module = importlib.import_module(f".nodes.{module_name}", __name__)
            found = [getattr(module, cls_name) for _, cls_name in entries]
            for cls in found:  # a schema ComfyUI would reject must not take the pack's other nodes with it
                get_schema = getattr(cls, "GET_SCHEMA", None)
                if get_schema is not None:
                    get_schema()
        except Exception as exc:  # noqa: BLE001 - a broken optional part must not stop ComfyUI
            reason = f"{type(exc).__name__}: {exc}"
            DISABLED_NODES[module_name] = reason
            log.warning("SafeCFG: nodes %s disabled (%s)", [e[0] for e in entries], reason)
            log.debug("%s", traceback.format_exc())
            continue
        classes.extend(found)
    return classes


def _register_hgr_folder() -> None:
    try:
        from .nodes.common import register_hgr_folder

        register_hgr_folder()
    except Exception as exc:  # noqa: BLE001 - Load HGR then lists only the built-in demo HGR
        log.warning("SafeCFG: could not register the hgr model folder (%s)", exc)


async def comfy_entrypoint() -> Any:
    """ComfyUI's V3 entry point: registers the ``hgr`` model folder, returns the extension with the nodes."""
    from comfy_api.latest import ComfyExtension

    _register_hgr_folder()
    classes = load_node_classes()

    class SafeCFGExtension(ComfyExtension):
        async def get_node_list(self) -> List[Any]:
            return list(classes)

    return SafeCFGExtension()


__all__ = ["DISABLED_NODES", "WEB_DIRECTORY", "comfy_entrypoint"]
