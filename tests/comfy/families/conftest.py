"""Fixtures of the model-family tests: stock-loader checkpoints placed where the session's ComfyUI server finds them,
(the graphs and result readers the tests share are in ``_family_graphs.py``).

The checkpoints are built once (tests/comfy/model_fixtures.py, cached under ``.cache/model-fixtures/<version>``) and
linked into the server's ``models/checkpoints`` folder, so ``CheckpointLoaderSimple`` lists and loads them as it
would a user's file.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any, Dict

import pytest


def _load(name: str, path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:
    sys.path.insert(0, str(_HERE))  # the tests here import their shared helpers (_family_graphs) by name
from _family_graphs import place_files  # noqa: E402
model_fixtures = _load("_safecfg_model_fixtures", _HERE.parent / "model_fixtures.py")
_root_conftest = _load("_safecfg_tests_root_conftest_families", _HERE.parents[1] / "conftest.py")


@pytest.fixture(scope="session")
def sd_checkpoint_files(comfyui_root) -> Dict[str, Path]:
    """``{family: path}`` (sd15, sdxl, sd2, sdxl_refiner): the cached stock-loader checkpoints (built on first use)."""
    return model_fixtures.ensure_checkpoints(Path(comfyui_root), _root_conftest.CACHE_DIR)


@pytest.fixture(scope="session")
def sd_checkpoints(comfy_server, sd_checkpoint_files) -> Dict[str, str]:
    """``{family: file name}``: the checkpoints in the server's checkpoints folder."""
    place_files(comfy_server.workdir / "models" / "checkpoints", sd_checkpoint_files.values())
    return {family: path.name for family, path in sd_checkpoint_files.items()}
