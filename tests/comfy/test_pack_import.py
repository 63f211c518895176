"""The pack's root __init__ never crashes ComfyUI start-up: a module that cannot import disables only its own nodes."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
ALL_NODES = ["SafeCFG", "SafeCFGAlignModel", "SafeCFGDemoModel", "SafeCFGHarmfulnessDetector", "SafeCFGLoadHGR",
             "SafeCFGTrainHGR", "SafeCFGTrainHGRPreset"]


def _import_pack(blocked: str, comfyui_root: Path = None) -> str:
    """Import the pack as ComfyUI does (a package from its folder, then its V3 entry point) with ``blocked`` made
    unimportable; without ``comfyui_root`` outside ComfyUI."""
    code = textwrap.dedent(f"""
        import asyncio, importlib.util, sys
        root = {str(comfyui_root) if comfyui_root else None!r}
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == {blocked!r} or name.startswith({blocked!r} + "."):
                    raise ModuleNotFoundError(f"No module named {{name!r}} (blocked by the test)")
                return None
        sys.meta_path.insert(0, Block())
        if root:
            sys.path.insert(0, root)
            sys.argv = ["main.py", "--cpu"]
            import comfy.options
            comfy.options.enable_args_parsing()
        spec = importlib.util.spec_from_file_location("safecfg_pack", {str(REPO_ROOT / '__init__.py')!r},
                                                      submodule_search_locations=[{str(REPO_ROOT)!r}])
        mod = importlib.util.module_from_spec(spec)
        sys.modules["safecfg_pack"] = mod
        spec.loader.exec_module(mod)
        print("V1_MAPPINGS", hasattr(mod, "NODE_CLASS_MAPPINGS"))
        print("ENTRYPOINT", callable(getattr(mod, "comfy_entrypoint", None)))
        if root:
            ext = asyncio.run(mod.comfy_entrypoint())
            nodes = asyncio.run(ext.get_node_list())
            print("NODES", sorted(n.GET_SCHEMA().node_id for n in nodes))  # GET_SCHEMA validates, as ComfyUI does
            print("DISABLED", sorted(mod.DISABLED_NODES))
    """)
    env = dict(os.environ)
    if comfyui_root:
        env["PYTHONPATH"] = os.pathsep.join([str(p) for p in _shim_paths(comfyui_root)] + [env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180,
                         cwd=comfyui_root or REPO_ROOT, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    return out.stdout + out.stderr


def _shim_paths(root: Path):
    import importlib.util as iu

    spec = iu.spec_from_file_location("_safecfg_comfy_conftest", Path(__file__).with_name("conftest.py"))
    conf = iu.module_from_spec(spec)
    spec.loader.exec_module(conf)  # type: ignore[union-attr]
    return conf.shim_paths_for(Path(root))


def test_outside_comfyui_import_is_harmless():
    # no ComfyUI at all: importing the pack works and defines only the V3 entry point (no V1 mappings, which
    # ComfyUI would read first and then ignore comfy_entrypoint)
    out = _import_pack("comfy")
    assert "V1_MAPPINGS False" in out and "ENTRYPOINT True" in out, out


def test_all_nodes_register_in_current_comfyui(comfyui_root):
    out = _import_pack("no_such_module_blocked", comfyui_root)
    assert f"NODES {ALL_NODES}" in out and "DISABLED []" in out, out
    assert "V1_MAPPINGS False" in out, out


def test_broken_module_disables_only_its_own_nodes(comfyui_root):
    # the demo model builds on comfy.sd; without it only the demo model goes, with the reason logged
    out = _import_pack("comfy.sd", comfyui_root)
    assert f"NODES {[n for n in ALL_NODES if n != 'SafeCFGDemoModel']}" in out, out
    assert "DISABLED ['demo_model']" in out, out
    assert "nodes ['SafeCFGDemoModel'] disabled (ModuleNotFoundError" in out and "blocked by the test" in out, out
