"""Shared fixtures: where the real ComfyUI for the ``comfyui`` tests comes from.

ComfyUI is not on PyPI. The project keeps the source of ComfyUI 0.3.64 (commit a125cd8) as an archive in
``shared/comfyui/`` beside the repository (``../shared/comfyui`` from the repository root, in CI as here); the tests
check its sha256 and unpack it once into the git-ignored ``.cache/``. ``COMFYUI_PATH`` points the tests at any
other ComfyUI checkout instead. The pack uses ComfyUI's V3 node API, so ComfyUI older than 0.3.48 is refused.

Without any ComfyUI the ``comfyui`` tests are skipped with one reason in the summary, except in CI (``CI`` set),
where a missing ComfyUI is an error: a CI run that silently skipped the server tests would prove nothing.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Any, Optional, Tuple

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
CACHE_DIR = Path(os.environ.get("SAFECFG_TEST_CACHE", REPO_ROOT / ".cache"))
SHARED_COMFYUI = REPO_ROOT.parent / "shared" / "comfyui"
COMFYUI_ARCHIVE = "ComfyUI-a125cd8.tar.gz"
COMFYUI_ARCHIVE_SHA256 = "96cacdb8c339f68cf5376b11b5fcb4a5ce19137967f269b1f79e662cb3668b93"
NO_COMFYUI = "no ComfyUI"  # how every skip for a missing ComfyUI starts (see pytest_runtest_makereport)
MIN_COMFYUI = (0, 3, 48)  # comfy_api.latest (io.ComfyNode, ComfyExtension, comfy_entrypoint) first shipped here


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _unpack_shared_comfyui(archive: Path) -> Path:
    """Unpack ``archive`` (once) into CACHE_DIR and return the ComfyUI root inside it.

    The archive holds one folder named like the archive. It is unpacked into a temporary folder and renamed into
    place, so a folder at the final path is always complete even if an earlier run was killed half-way.
    """
    root = CACHE_DIR / archive.name[: -len(".tar.gz")]
    if (root / "main.py").is_file():
        return root
    actual = _sha256(archive)
    if actual != COMFYUI_ARCHIVE_SHA256:
        raise RuntimeError(
            f"{archive} has sha256 {actual}, expected {COMFYUI_ARCHIVE_SHA256} (see {archive.parent / 'README.md'}). "
            "Replace the archive with the one the README describes, or set COMFYUI_PATH to a ComfyUI checkout.")
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".unpack-", dir=CACHE_DIR))
    try:
        with tarfile.open(archive, "r:gz") as tar:
            if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12 / 3.11.4: refuse links and paths out of the folder
                tar.extractall(staging, filter="data")
            else:
                tar.extractall(staging)
        unpacked = staging / root.name
        if not (unpacked / "main.py").is_file():
            raise RuntimeError(f"{archive} does not contain {root.name}/main.py; "
                               "it is not the expected ComfyUI archive.")
        try:
            unpacked.rename(root)
        except OSError:
            if not (root / "main.py").is_file():  # another session won the race only if its copy is complete
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root


def comfyui_version(root: Path) -> Optional[Tuple[int, ...]]:
    """ComfyUI's version from ``comfyui_version.py`` (None when the checkout has no such file: older than 0.3.x)."""
    path = root / "comfyui_version.py"
    if not path.is_file():
        return None
    match = re.search(r"__version__\s*=\s*['\"]([0-9.]+)", path.read_text(errors="replace"))
    return tuple(int(p) for p in match.group(1).split(".") if p) if match else None


def _check_comfyui(root: Path, origin: str) -> Path:
    if not (root / "main.py").is_file() or not (root / "comfy").is_dir():
        raise RuntimeError(f"{origin}: {root} does not look like a ComfyUI checkout (no main.py or comfy/).")
    version = comfyui_version(root)
    if version is None or version < MIN_COMFYUI:
        found = "an unknown version" if version is None else ".".join(map(str, version))
        need = ".".join(map(str, MIN_COMFYUI))
        raise RuntimeError(f"{origin}: {root} is ComfyUI {found}; the pack needs ComfyUI >= {need} (V3 node API). "
                           "Point COMFYUI_PATH at a newer checkout.")
    return root


def locate_comfyui() -> Tuple[Optional[Path], str]:
    """The ComfyUI the tests use and where it came from, or (None, why none was found)."""
    env = os.environ.get("COMFYUI_PATH")
    if env:
        return _check_comfyui(Path(env).resolve(), "COMFYUI_PATH"), f"COMFYUI_PATH={env}"
    archive = SHARED_COMFYUI / COMFYUI_ARCHIVE
    if archive.is_file():
        return _check_comfyui(_unpack_shared_comfyui(archive), str(archive)), str(archive)
    return None, (f"{NO_COMFYUI}: COMFYUI_PATH is not set and {archive} does not exist "
                  "(set COMFYUI_PATH to a ComfyUI >= 0.3.48 checkout to run the comfyui tests)")


COMFY_TESTS = Path(__file__).resolve().parent / "comfy"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--slow", action="store_true", default=False,
                     help="also run the tests marked slow (CI and the README's test command do)")
    parser.addoption("--heavy", action="store_true", default=False,
                     help="also run the tests marked heavy (a real-model template trained at its family's own size "
                          "on CPU: half an hour each; CI does not)")


def _wants_slow(config: pytest.Config) -> bool:
    """Slow tests run with ``--slow``, or when a ``-m`` expression names the marker (``-m slow``)."""
    return bool(config.getoption("--slow")) or "slow" in (config.getoption("markexpr") or "")


def pytest_report_header(config: pytest.Config) -> Optional[str]:
    return None if _wants_slow(config) else "tests marked slow are deselected; add --slow to run them (CI does)"


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    """Mark ``comfyui`` every test that needs a real ComfyUI (it uses ``comfyui_root``, directly or through
    ``comfy_server``) and every test of the pack-in-ComfyUI layer (tests/comfy), so that ``-m "not comfyui"``
    selects the core suite without each file having to say so.

    Tests marked ``slow`` (the demo's full measured set, alignment and training runs: minutes on 2 cores) are
    deselected unless asked for, so that ``pytest -m "not comfyui"`` is the under-a-minute core suite a developer
    runs after each change; they are reported as deselected, never as passed, and CI runs them all (``--slow``).
    Tests marked ``heavy`` (half an hour each on CI's CPU) run only with ``--heavy``, and are reported as deselected
    otherwise."""
    for item in items:
        if "comfyui_root" in getattr(item, "fixturenames", ()) or COMFY_TESTS in Path(item.path).parents:
            item.add_marker(pytest.mark.comfyui)
    for marker, wanted in (("heavy", bool(config.getoption("--heavy"))), ("slow", _wants_slow(config))):
        if wanted:
            continue
        left_out = [item for item in items if item.get_closest_marker(marker)]
        if left_out:
            config.hook.pytest_deselected(items=left_out)
            items[:] = [item for item in items if not item.get_closest_marker(marker)]


@pytest.fixture(scope="session")
def comfyui_root() -> Path:
    """Root folder of a real ComfyUI: ``COMFYUI_PATH``, else the project's shared ComfyUI 0.3.64 archive."""
    root, why = locate_comfyui()
    if root is None:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but there is {why}", pytrace=False)
        pytest.skip(why)
    return root


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Any:
    """Report every skip for a missing ComfyUI at this file's location, so that the summary folds them into one
    line ("SKIPPED [N] tests/conftest.py: no ComfyUI ...") instead of one line per test function."""
    outcome = yield
    rep = outcome.get_result()
    if rep.skipped and isinstance(rep.longrepr, tuple) and f"Skipped: {NO_COMFYUI}" in str(rep.longrepr[2]):
        rep.longrepr = (__file__, None, rep.longrepr[2])
