"""Real-ComfyUI harness: one ComfyUI server per test session with this pack linked into custom_nodes.

The server is ComfyUI's own ``main.py --cpu`` on 127.0.0.1 and a free port, with an ``extra_model_paths.yaml``
that adds a temporary ``hgr`` folder and a temporary output folder. Prompts go in over HTTP (``/api/prompt``),
progress is followed on the websocket (as ComfyUI's own tests/execution do), results come from ``/api/history``.
The server is always stopped and the link removed; its log is printed when a test fails.

The test extra of pyproject.toml installs what ComfyUI imports at start-up, except torchvision and torchaudio: their
wheels are built against the CUDA torch and do not load with the CPU torch the tests pin. ComfyUI imports them at
start-up only for model families and nodes these tests never run, so placeholder modules stand in for them.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence

import pytest

import importlib.util

_spec = importlib.util.spec_from_file_location("_safecfg_tests_root_conftest",
                                               Path(__file__).resolve().parents[1] / "conftest.py")
_root = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_root)  # type: ignore[union-attr]
CACHE_DIR, REPO_ROOT = _root.CACHE_DIR, _root.REPO_ROOT

if str(Path(__file__).resolve().parent) not in sys.path:  # the tests here import shared helpers (pack_scripts) by name
    sys.path.insert(0, str(Path(__file__).resolve().parent))

PACK_LINK_NAME = "comfyui-safecfg-under-test"

# Installed as sitecustomize on the server's PYTHONPATH. A module is replaced only when it cannot be found at all,
# so a real torchvision/torchaudio always wins; any use of a placeholder returns inert dummies instead of failing
# at import time (ComfyUI builds a few torchvision transforms at module level).
AUTOSHIM = '''"""Placeholders for torchvision and torchaudio, written by the safecfg tests (tests/comfy/conftest.py)."""
import importlib.abc, importlib.machinery, importlib.util, sys, types
ROOTS = {"torchvision", "torchaudio"}
class _DummyMeta(type):
    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Dummy
class _Dummy(metaclass=_DummyMeta):
    def __init__(self, *a, **k): pass
    def __call__(self, *a, **k): return _Dummy()
    def __getattr__(self, name): return _Dummy
class _Mod(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Dummy
class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path, target=None):
        root = fullname.split(".")[0]
        if root not in ROOTS:
            return None
        if "." in fullname:  # a submodule: shim it only if its package is one of our placeholders
            if not isinstance(sys.modules.get(root), _Mod):
                return None
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        sys.meta_path.remove(self)
        try:
            real = importlib.util.find_spec(root)
        except Exception:
            real = None
        finally:
            sys.meta_path.insert(0, self)
        return None if real is not None else importlib.machinery.ModuleSpec(fullname, self, is_package=True)
    def create_module(self, spec):
        m = _Mod(spec.name); m.__path__ = []; return m
    def exec_module(self, module): pass
sys.meta_path.insert(0, _Finder())
'''


def shim_paths_for(root: Path) -> List[Path]:
    """Folders to put on PYTHONPATH so the ComfyUI at ``root`` starts here (the torchvision/torchaudio placeholders)."""
    del root  # every supported ComfyUI (>= 0.3.48) needs the same placeholders
    shim = CACHE_DIR / "shims"
    shim.mkdir(parents=True, exist_ok=True)
    (shim / "_safecfg_autoshim.py").write_text(AUTOSHIM)
    (shim / "sitecustomize.py").write_text("import _safecfg_autoshim\n")
    return [shim]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    """A running ComfyUI with helpers to queue prompts and wait for their results."""

    def __init__(self, root: Path, workdir: Path, extra_args: Sequence[str] = ()) -> None:
        self.root = root
        self.workdir = workdir
        self.extra_args = list(extra_args)  # more main.py options (tests/frontend: --front-end-root)
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.hgr_dir = workdir / "hgr"
        self.output_dir = workdir / "output"
        self.log_path = workdir / "server.log"
        self.client_id = uuid.uuid4().hex
        self.proc: Optional[subprocess.Popen] = None
        self.api_prefix = "/api"  # every supported ComfyUI (>= 0.3.48) serves its API under /api
        self._log_file = None

    # -- lifecycle -------------------------------------------------------------------------------------------
    def start(self, timeout: float = 240.0) -> None:
        self.hgr_dir.mkdir(parents=True, exist_ok=True)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        extra = self.workdir / "extra_model_paths.yaml"
        extra.write_text(f"safecfg_tests:\n    base_path: {self.workdir}\n    hgr: hgr\n")
        args = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
                "--base-directory", str(self.workdir), "--output-directory", str(self.output_dir),
                "--extra-model-paths-config", str(extra), "--disable-auto-launch", *self.extra_args]
        env = dict(os.environ)
        paths = [str(p) for p in shim_paths_for(self.root)]
        env["PYTHONPATH"] = os.pathsep.join(paths + [env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        env["PYTHONUNBUFFERED"] = "1"
        env.setdefault("OMP_NUM_THREADS", "2")
        self._log_file = open(self.log_path, "w")
        self.proc = subprocess.Popen(args, cwd=self.root, env=env, stdout=self._log_file, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.proc.returncode} during start-up:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.base + self.api_prefix + "/object_info/KSampler", timeout=5) as r:
                    if r.status == 200:
                        json.loads(r.read())
                        return
            except (urllib.error.URLError, ConnectionError, OSError, ValueError):
                pass
            time.sleep(0.5)
        raise RuntimeError(f"ComfyUI did not start within {timeout}s:\n{self.log()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=20)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return "<no server log>"

    # -- HTTP ------------------------------------------------------------------------------------------------
    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.base + self.api_prefix + path, timeout=60) as r:
            return json.loads(r.read())

    def post(self, path: str, payload: Dict[str, Any]) -> Any:
        req = urllib.request.Request(self.base + self.api_prefix + path, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as exc:
            body = exc.read().decode(errors="replace")
            raise PromptRejected(exc.code, body) from None

    def queue(self, prompt: Dict[str, Any]) -> str:
        return self.post("/prompt", {"prompt": prompt, "client_id": self.client_id})["prompt_id"]

    def run(self, prompt: Dict[str, Any], timeout: float = 300.0) -> Dict[str, Any]:
        """Queue ``prompt``, follow the websocket until it finished, return its /history entry."""
        import websocket  # websocket-client

        ws = websocket.WebSocket()
        ws.connect(f"ws://127.0.0.1:{self.port}/ws?clientId={self.client_id}", timeout=timeout)
        try:
            prompt_id = self.queue(prompt)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                try:
                    msg = ws.recv()
                except websocket.WebSocketTimeoutException:
                    break
                if not isinstance(msg, str):
                    continue  # binary previews
                data = json.loads(msg)
                d = data.get("data", {})
                if d.get("prompt_id") not in (None, prompt_id):
                    continue
                if data["type"] == "executing" and d.get("node") is None and d.get("prompt_id") == prompt_id:
                    break
                if data["type"] in ("execution_error", "execution_interrupted") and d.get("prompt_id") == prompt_id:
                    break
                if data["type"] == "execution_success" and d.get("prompt_id") == prompt_id:
                    break
        finally:
            ws.close()
        return self.wait_history(prompt_id)

    def wait_history(self, prompt_id: str, timeout: float = 60.0) -> Dict[str, Any]:
        """The prompt's /history entry once ComfyUI has written it (it lags the websocket a little)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            hist = self.get(f"/history/{prompt_id}")
            if prompt_id in hist and (hist[prompt_id].get("status", {}).get("completed") is not None
                                      or hist[prompt_id].get("outputs")):
                entry = hist[prompt_id]
                entry["prompt_id"] = prompt_id
                return entry
            time.sleep(0.2)
        raise TimeoutError(f"prompt {prompt_id} has no history entry after {timeout}s")

    # -- results ---------------------------------------------------------------------------------------------
    def output_images(self, entry: Dict[str, Any], node_id: str):
        import numpy as np
        from PIL import Image

        imgs = []
        for im in entry["outputs"][node_id]["images"]:
            folder = self.output_dir / im.get("subfolder", "")
            imgs.append(np.asarray(Image.open(folder / im["filename"])))
        return imgs

    @staticmethod
    def error_message(entry: Dict[str, Any]) -> Optional[str]:
        for kind, data in entry.get("status", {}).get("messages", []):
            if kind == "execution_error":
                return f"{data.get('exception_type')}: {data.get('exception_message')}"
        return None

    @staticmethod
    def succeeded(entry: Dict[str, Any]) -> bool:
        st = entry.get("status", {})
        return st.get("status_str") == "success" and st.get("completed") is True


class PromptRejected(Exception):
    def __init__(self, code: int, body: str) -> None:
        super().__init__(f"HTTP {code}: {body}")
        self.code = code
        self.body = body


@pytest.fixture(scope="session")
def comfy_server(comfyui_root: Path, tmp_path_factory) -> Iterator[ComfyServer]:
    """The session's ComfyUI server with this pack installed as a custom node.

    The server's base directory (custom_nodes, models, user, input, temp) is a fresh temporary folder, so the
    ComfyUI checkout is never modified and several test sessions can share one checkout at the same time.
    """
    workdir = Path(tempfile.mkdtemp(prefix="safecfg-comfy-", dir=tmp_path_factory.getbasetemp()))
    (workdir / "custom_nodes").mkdir()
    (workdir / "custom_nodes" / PACK_LINK_NAME).symlink_to(REPO_ROOT, target_is_directory=True)
    server = ComfyServer(comfyui_root, workdir)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call" and rep.failed and "comfy_server" in getattr(item, "fixturenames", ()):
        server = item.funcargs.get("comfy_server")
        if server is not None:
            tail = server.log()[-12000:]
            rep.sections.append(("ComfyUI server log (tail)", tail))
