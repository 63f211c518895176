"""Running a script inside ComfyUI's own code, in a fresh interpreter, with this pack loaded as ComfyUI loads it.

Shared by the in-process tests (test_inprocess.py, test_family_detection.py, test_align_server.py): each script gets
ComfyUI's root as ``argv[1]`` and this repository as ``argv[2]``, prints one ``RESULT <json>`` line, and the runner
returns that JSON (with the script's stderr as ``log``).
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Dict, List

REPO_ROOT = Path(__file__).resolve().parents[2]

# Every script starts so: ComfyUI (argv[1]) on the path, in --cpu mode, and this pack (argv[2]) loaded as a package
# named ``safecfg_pack`` through its V3 entry point, the way ComfyUI's custom-node loader does.
PACK_PREAMBLE = textwrap.dedent(r'''
    import asyncio, importlib.util, json, sys
    root, pack = sys.argv[1], sys.argv[2]
    sys.path.insert(0, root)
    sys.argv = ["main.py", "--cpu"]
    import comfy.options
    comfy.options.enable_args_parsing()
    import torch
    spec = importlib.util.spec_from_file_location("safecfg_pack", pack + "/__init__.py",
                                                  submodule_search_locations=[pack])
    mod = importlib.util.module_from_spec(spec)
    sys.modules["safecfg_pack"] = mod
    spec.loader.exec_module(mod)
    extension = asyncio.run(mod.comfy_entrypoint())
    N = {cls.define_schema().node_id: cls for cls in asyncio.run(extension.get_node_list())}
    from safecfg_pack.safecfg_core.hgr import HGRBundle, HGRConfig, HGRMeta

    def random_hgr(config, seed=1):
        """An HGR whose (normally zero-initialised) output layers are random: it redirects every prompt."""
        bundle = HGRBundle.create(config, HGRMeta(threshold=None), seed=seed)
        with torch.no_grad():
            torch.manual_seed(3)
            for p in bundle.net.parameters():
                if p.abs().sum() == 0:
                    p.normal_(0.0, 0.2)
        return bundle
''')


def _shim_paths(root: Path) -> List[Path]:
    """The import shims tests/comfy/conftest.py puts in front of ComfyUI (loaded by path: every test folder has a
    ``conftest`` module, so it cannot be imported by name)."""
    spec = importlib.util.spec_from_file_location("_safecfg_comfy_conftest", Path(__file__).with_name("conftest.py"))
    conf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conf)  # type: ignore[union-attr]
    return conf.shim_paths_for(root)


def run_in_comfyui(comfyui_root, script: str, timeout: int = 300) -> Dict[str, Any]:
    """Run ``script`` in a fresh interpreter against the ComfyUI at ``comfyui_root``; return its ``RESULT`` JSON."""
    root = Path(comfyui_root)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    paths = [str(p) for p in _shim_paths(root)]
    env["PYTHONPATH"] = os.pathsep.join(paths + [env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.run([sys.executable, "-c", script, str(root), str(REPO_ROOT)], cwd=root, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-8000:]
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")][-1]
    res = json.loads(line[len("RESULT "):])
    res["log"] = proc.stderr
    return res
