"""Browser harness: the current ComfyUI with the pack, its real frontend, headless Debian Chromium via Playwright.

One ComfyUI server per frontend version (parametrized, session scope), started with the server harness of
tests/comfy/conftest.py, and one Chromium page on it that the tests share (loading the frontend takes seconds;
opening a workflow in it takes a fraction of one). The frontend versions:

- ``pinned``: the ``comfyui-frontend-package`` that ComfyUI's requirements.txt pins, installed in the venv.
- ``newest``: the newest ``comfyui-frontend-package`` on PyPI (or ``SAFECFG_NEWEST_FRONTEND=<version>``),
  installed once with ``pip install --no-deps --target`` into ``.cache/frontend/`` and served with ComfyUI's
  ``--front-end-root`` (the option ComfyUI documents for running another frontend build).

Chromium is Debian's (``/usr/bin/chromium``, or ``SAFECFG_CHROMIUM``; ``.ci/install_browser.sh`` installs it);
nothing here downloads a browser. The page may reach only the local server: every other request is refused, so
the frontend's calls to api.comfy.org fail fast and the same way on every machine.

Screenshots go to ``.cache/frontend-screenshots/<frontend>/<test>/`` (emptied when the test starts).
"""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import pytest


def _load(name: str, path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


HERE = Path(__file__).resolve().parent
harness = _load("_safecfg_comfy_conftest", HERE.parent / "comfy" / "conftest.py")
page_mod = _load("_safecfg_frontend_page", HERE / "_page.py")
REPO_ROOT: Path = harness.REPO_ROOT
CACHE_DIR: Path = harness.CACHE_DIR
SHOTS_ROOT = CACHE_DIR / "frontend-screenshots"
FRONTEND_DIR = CACHE_DIR / "frontend"
FRONTEND_PACKAGE = "comfyui-frontend-package"
CHROMIUM = Path(os.environ.get("SAFECFG_CHROMIUM", "/usr/bin/chromium"))


def _unavailable(why: str) -> None:
    """Skip on a developer's machine; in CI a browser layer that silently skipped would prove nothing."""
    if os.environ.get("CI"):
        pytest.fail(why, pytrace=False)
    pytest.skip(why)


def pinned_frontend_version(comfyui_root: Path) -> str:
    """The frontend version ComfyUI's requirements.txt pins (``comfyui-frontend-package==X``)."""
    text = (comfyui_root / "requirements.txt").read_text(errors="replace")
    match = re.search(r"^comfyui-frontend-package==([0-9][0-9.]*)\s*$", text, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"{comfyui_root}/requirements.txt pins no comfyui-frontend-package version.")
    return match.group(1)


def _installed_frontend_version() -> Optional[str]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(FRONTEND_PACKAGE)
    except PackageNotFoundError:
        return None


def newest_frontend_version() -> Optional[str]:
    """The newest version on PyPI (one index request), else the newest already in .cache/frontend, else None."""
    wanted = os.environ.get("SAFECFG_NEWEST_FRONTEND")
    if wanted:
        return wanted
    try:
        probe = subprocess.run([sys.executable, "-m", "pip", "index", "versions", FRONTEND_PACKAGE],
                               capture_output=True, text=True, timeout=60)
        match = re.search(rf"^{FRONTEND_PACKAGE} \(([0-9][0-9.]*)\)", probe.stdout, re.MULTILINE)
    except subprocess.TimeoutExpired:
        match = None
    if match:
        return match.group(1)
    cached = sorted((p.name.rsplit("-", 1)[1] for p in FRONTEND_DIR.glob(f"{FRONTEND_PACKAGE}-*")),
                    key=lambda v: tuple(int(x) for x in v.split(".") if x.isdigit()))
    return cached[-1] if cached else None


def _complete(target: Path) -> bool:
    return (target / "comfyui_frontend_package" / "static" / "index.html").is_file()


def install_frontend(version: str) -> Path:
    """``pip install --no-deps --target`` the frontend ``version`` once; return the folder it went into.

    It is installed into a staging folder and renamed into place, so a folder at the final path is always complete
    (another session may have won the race; then its copy is used).
    """
    target = FRONTEND_DIR / f"{FRONTEND_PACKAGE}-{version}"
    if _complete(target):
        return target
    FRONTEND_DIR.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=FRONTEND_DIR))
    try:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(staging),
                        f"{FRONTEND_PACKAGE}=={version}"], check=True, timeout=600)
        try:
            staging.rename(target)
        except OSError:
            if not _complete(target):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


@pytest.fixture(scope="session", params=["pinned", "newest"])
def frontend_server(request, comfyui_root: Path, tmp_path_factory) -> Iterator[Dict[str, Any]]:
    """A ComfyUI server with the pack, serving the ``pinned`` or the ``newest`` frontend; yields its facts."""
    pinned = pinned_frontend_version(comfyui_root)
    if request.param == "pinned":
        installed = _installed_frontend_version()
        if installed != pinned:
            pytest.fail(f"ComfyUI pins {FRONTEND_PACKAGE}=={pinned} but the venv has {installed}: "
                        f"run `pip install {FRONTEND_PACKAGE}=={pinned}` (the test extra should pin it).",
                        pytrace=False)
        version, extra_args = pinned, []
    else:
        version = newest_frontend_version()
        if version is None:
            _unavailable(f"cannot tell the newest {FRONTEND_PACKAGE}: PyPI did not answer and {FRONTEND_DIR} "
                         "holds none (set SAFECFG_NEWEST_FRONTEND=<version> with PyPI reachable once)")
        static = install_frontend(version) / "comfyui_frontend_package" / "static"
        extra_args = ["--front-end-root", str(static)]
    workdir = Path(tempfile.mkdtemp(prefix=f"safecfg-frontend-{request.param}-", dir=tmp_path_factory.getbasetemp()))
    (workdir / "custom_nodes").mkdir()
    (workdir / "custom_nodes" / harness.PACK_LINK_NAME).symlink_to(REPO_ROOT, target_is_directory=True)
    server = harness.ComfyServer(comfyui_root, workdir, extra_args=extra_args)
    try:
        server.start()
        # A first visit opens the template browser over the canvas; a returning user's does not.
        server.post("/settings/Comfy.TutorialCompleted", True)  # type: ignore[arg-type]
        yield {"name": request.param, "version": version, "server": server, "pack_folder": harness.PACK_LINK_NAME}
    finally:
        server.stop()


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """Headless Debian Chromium driven by Playwright (never a downloaded browser)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("Playwright for Python is not installed (pip install playwright; no `playwright install`)")
    if not CHROMIUM.is_file():
        _unavailable(f"no Chromium at {CHROMIUM}: run .ci/install_browser.sh (Debian's chromium) "
                     "or set SAFECFG_CHROMIUM")
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


def _open_page(browser: Any, server: Any, shots_dir: Path, routes: Sequence[Tuple[Any, Callable]] = ()
               ) -> Tuple[Any, Any]:
    """A new browser context on ``server`` with the frontend loaded; returns (context, ComfyPage).

    The page reaches only the server. ``routes`` are Playwright (url pattern, handler) pairs installed before the
    frontend loads, so a handler can change a response the frontend reads once at start-up (Playwright runs the
    last-registered matching route first)."""
    context = browser.new_context(viewport={"width": 1920, "height": 1080})
    context.route("**/*", lambda route: route.continue_() if route.request.url.startswith(server.base)
                  else route.abort())
    for pattern, handler in routes:
        context.route(pattern, handler)
    try:
        page = page_mod.ComfyPage(context.new_page(), server.base, shots_dir, harness.PACK_LINK_NAME)
        page.open()
        page.close_dialogs()
    except BaseException:
        context.close()
        raise
    return context, page


@pytest.fixture(scope="session")
def _frontend_page(frontend_server: Dict[str, Any], browser: Any) -> Iterator[Any]:
    """One page per frontend server, opened once; tests share it (each opens what it looks at)."""
    context, page = _open_page(browser, frontend_server["server"], SHOTS_ROOT / frontend_server["name"] / "_session")
    try:
        yield page
    finally:
        context.close()


def _shots_dir(request: Any, frontend_name: str) -> Path:
    """``.cache/frontend-screenshots/<frontend>/<test>[-<other params>]/`` for the running test."""
    test = re.sub(r"\[.*\]$", "", request.node.name)
    param = re.search(r"\[(.*)\]$", request.node.name)
    extra = [p for p in (param.group(1).split("-") if param else []) if p not in ("pinned", "newest")]
    return SHOTS_ROOT / frontend_name / "-".join([test] + extra)


@pytest.fixture
def comfy_page(request, _frontend_page: Any, frontend_server: Dict[str, Any]) -> Any:
    """The shared page, with screenshots going to ``.cache/frontend-screenshots/<frontend>/<test>/``."""
    _frontend_page.begin_test(_shots_dir(request, frontend_server["name"]))
    return _frontend_page


@pytest.fixture
def own_comfy_page(request, frontend_server: Dict[str, Any], browser: Any) -> Iterator[Callable[..., Any]]:
    """A factory for a page of the test's own (a fresh browser context, closed after the test), for a check that
    must change a server response before the frontend starts: ``own_comfy_page(routes)`` (see ``_open_page``).
    Slower than ``comfy_page`` (the frontend loads again), so only for such checks."""
    contexts: List[Any] = []

    def open_page(routes: Sequence[Tuple[Any, Callable]] = ()) -> Any:
        context, page = _open_page(browser, frontend_server["server"], _shots_dir(request, frontend_server["name"]),
                                   routes)
        contexts.append(context)
        page.begin_test(page.shots_dir)
        request.node.safecfg_own_page = page  # a failure report then shows this page's console
        return page

    try:
        yield open_page
    finally:
        for context in contexts:
            context.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On a failure, add the page's console and the server log's tail to the report."""
    outcome = yield
    rep = outcome.get_result()
    if rep.when != "call" or not rep.failed:
        return
    page = item.funcargs.get("comfy_page") or getattr(item, "safecfg_own_page", None)
    if page is not None:
        rep.sections.append(("browser console (last 60 entries)", "\n".join(map(str, page.console[-60:]))))
        rep.sections.append(("screenshots", str(page.shots_dir)))
    fs = item.funcargs.get("frontend_server")
    if fs is not None:
        rep.sections.append(("ComfyUI server log (tail)", fs["server"].log()[-8000:]))
