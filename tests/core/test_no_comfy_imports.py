"""safecfg_core must never import ComfyUI: it has to work (and be tested) without it."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[2] / "safecfg_core"
COMFY_MODULES = ("comfy", "comfy_extras", "comfy_execution", "folder_paths", "nodes", "server", "execution",
                 "latent_preview", "node_helpers", "comfyui_version")
IMPORT_RE = re.compile(
    r"^\s*(?:from\s+(?P<from>[\w.]+)\s+import|import\s+(?P<imp>[\w.]+(?:\s*,\s*[\w.]+)*))", re.MULTILINE)
DYNAMIC_RE = re.compile(r"""(?:import_module|__import__)\(\s*['"](?P<name>[\w.]+)['"]""")
DYNAMIC_ALLOWED = {
    # file (relative to safecfg_core/) -> why it may import ComfyUI at *run time* (never at import time; the
    # subprocess test below checks that importing every module pulls in no ComfyUI module)
    "bench/comfy_unet.py": "opt-in `bench --comfyui PATH`: times ComfyUI's own SD1.5/SDXL UNet from a user-given "
                           "checkout",
}


def _top_level_imports(source: str, dynamic: bool = True):
    for m in IMPORT_RE.finditer(source):
        if m.group("from"):
            if not m.group("from").startswith("."):
                yield m.group("from").split(".")[0]
        else:
            for part in m.group("imp").split(","):
                yield part.strip().split(".")[0]
    if dynamic:
        for m in DYNAMIC_RE.finditer(source):
            yield m.group("name").split(".")[0]


def test_the_scanner_catches_what_it_should() -> None:
    sample = "import os\nimport comfy.model_management\nfrom folder_paths import x\n  import nodes, torch\nfrom .nodes import y\n" \
             "importlib.import_module('comfy.sd')\n"
    assert sorted(set(_top_level_imports(sample))) == ["comfy", "folder_paths", "nodes", "os", "torch"]


def test_no_comfyui_imports_in_core() -> None:
    files = sorted(CORE.rglob("*.py"))
    assert len(files) > 5
    offenders = []
    for f in files:
        rel = f.relative_to(CORE).as_posix()
        for name in _top_level_imports(f.read_text(encoding="utf-8"), dynamic=rel not in DYNAMIC_ALLOWED):
            if name in COMFY_MODULES:
                offenders.append(f"{f.relative_to(CORE.parent)}: imports {name}")
    assert not offenders, "safecfg_core must not import ComfyUI:\n" + "\n".join(offenders)


@pytest.mark.slow
def test_core_imports_without_comfyui_on_the_path() -> None:
    code = ("import sys, importlib, pkgutil, safecfg_core\n"
            "for m in pkgutil.walk_packages(safecfg_core.__path__, 'safecfg_core.'):\n"
            "    if m.name.endswith('__main__'): continue\n"
            "    importlib.import_module(m.name)\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in %r]\n"
            "assert not bad, bad\n" % (COMFY_MODULES,))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(CORE.parent),
                         env={"PYTHONPATH": str(CORE.parent), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
