"""Load HGR: a Harmful Guidance Redirector file from ComfyUI's ``models/hgr`` folder."""
from __future__ import annotations

from typing import Any

from comfy_api.latest import io

from ..safecfg_core.errors import SafeCFGError
from ..safecfg_core.hgr import HGRBundle
from .common import CATEGORY_LOADERS, format_exception, list_hgr_files, log, resolve_hgr_path
from .io_types import HGR


class LoadHGR(io.ComfyNode):
    """Loads a Harmful Guidance Redirector (.safetensors); damaged or wrong files are refused with a clear message."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SafeCFGLoadHGR",
            display_name="Load HGR (SafeCFG)",
            category=CATEGORY_LOADERS,
            description="Loads a Harmful Guidance Redirector (HGR) file; damaged or wrong files are refused with a "
                        "clear message.",
            inputs=[io.Combo.Input("hgr_name", options=list_hgr_files(),
                                   tooltip="HGR file (.safetensors) in models/hgr or an 'hgr:' folder of "
                                           "extra_model_paths.yaml. Train one with the Train HGR node.")],
            outputs=[HGR.Output("hgr", display_name="hgr",
                                tooltip="The loaded Harmful Guidance Redirector, for the SafeCFG and Harmfulness "
                                        "Detector nodes.")],
        )

    @classmethod
    def fingerprint_inputs(cls, hgr_name: str) -> Any:
        """The file's identity (from stat; never opened), so that a file replaced under the same name (retrained,
        copied over) is loaded again instead of ComfyUI reusing the HGR it cached for that name."""
        try:
            st = resolve_hgr_path(hgr_name).stat()
        except Exception:  # noqa: BLE001 - execute reports what is wrong; NaN never equals itself, so it runs
            return float("nan")
        return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"

    @classmethod
    def execute(cls, hgr_name: str) -> io.NodeOutput:
        path = resolve_hgr_path(hgr_name)
        try:
            bundle = HGRBundle.load(path, device="cpu")
        except (SafeCFGError, ValueError, OSError) as exc:
            raise format_exception("Load HGR", exc) from None
        log.info("SafeCFG: loaded %s: %s", path.name, bundle.describe())
        return io.NodeOutput(bundle)
