"""The pack's own V3 socket type: HGR (a loaded :class:`~..safecfg_core.hgr.HGRBundle`), shared by all nodes."""
from __future__ import annotations

from comfy_api.latest import io

HGR = io.Custom("HGR")
"""Output of Load HGR / Train HGR, input of SafeCFG and the Harmfulness Detector."""
