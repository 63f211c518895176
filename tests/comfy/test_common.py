"""nodes/common.py helpers that need no ComfyUI: HGR file names can never escape the hgr folder."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def _pack():
    name = "safecfg_pack_under_test"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "__init__.py",
                                                  submodule_search_locations=[str(REPO_ROOT)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


@pytest.fixture(scope="module")
def common():
    _pack()
    return importlib.import_module("safecfg_pack_under_test.nodes.common")


@pytest.mark.parametrize("raw,expected", [
    ("my_hgr", "my_hgr.safetensors"),
    ("my_hgr.safetensors", "my_hgr.safetensors"),
    ("../escape/trained", "trained.safetensors"),
    ("..\\..\\windows\\evil", "evil.safetensors"),
    ("/etc/passwd", "passwd.safetensors"),
    ("gore & weapons v2", "gore _ weapons v2.safetensors"),
    (".hidden", "hidden.safetensors"),
])
def test_sanitize_hgr_name(common, raw, expected):
    out = common.sanitize_hgr_name(raw)
    assert out == expected
    assert "/" not in out and "\\" not in out and not out.startswith(".")


@pytest.mark.parametrize("raw", ["", "   ", "..", "../..", "/", "...", "???"])
def test_sanitize_refuses_unusable_names(common, raw):
    with pytest.raises(ValueError, match="SafeCFG Train HGR"):
        common.sanitize_hgr_name(raw)


def test_long_names_are_cut(common):
    assert len(common.sanitize_hgr_name("x" * 500)) == 120 + len(".safetensors")
