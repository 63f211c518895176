"""The pack's root __init__ never crashes ComfyUI start-up: a missing dependency disables only what needs it."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def _import_pack(blocked: str) -> str:
    """Import the pack as ComfyUI does (a package from its folder) with ``blocked`` made unimportable."""
    code = textwrap.dedent(f"""
        import importlib.util, sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == {blocked!r} or name.startswith({blocked!r} + "."):
                    raise ModuleNotFoundError(f"No module named {{name!r}} (blocked by the test)")
                return None
        sys.meta_path.insert(0, Block())
        spec = importlib.util.spec_from_file_location("safecfg_pack", {str(REPO_ROOT / '__init__.py')!r},
                                                      submodule_search_locations=[{str(REPO_ROOT)!r}])
        mod = importlib.util.module_from_spec(spec)
        sys.modules["safecfg_pack"] = mod
        spec.loader.exec_module(mod)
        print("NODES", sorted(mod.NODE_CLASS_MAPPINGS))
        print("DISABLED", sorted(mod.DISABLED_NODES))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout + out.stderr


def test_missing_comfy_disables_only_the_demo_model():
    # outside ComfyUI (no `comfy` package) the demo model loader cannot work; the rest still registers
    out = _import_pack("comfy")
    assert "SafeCFG" in out and "SafeCFGLoadHGR" in out and "SafeCFGTrainHGR" in out
    assert "DISABLED ['demo_model']" in out
    assert "disabled" in out  # the reason is logged


def test_missing_pillow_does_not_break_import():
    out = _import_pack("PIL")
    assert "'SafeCFG'" in out and "'SafeCFGTrainHGR'" in out


def test_missing_numpy_disables_only_training():
    out = _import_pack("numpy")
    assert "'SafeCFG'" in out and "'SafeCFGHarmfulnessDetector'" in out
    assert "train_node" in out
