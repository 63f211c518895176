"""The pack as the Comfy Registry sees it: `comfy node validate`'s lint, and the pyproject fields the Registry needs.

`comfy node validate` / `comfy node publish` run ruff with security rules over the pack (comfy-cli's
``validate_node_for_publishing``: S102 exec, S307 eval; newer versions add E702 and E701, several statements on one
line). The same selection runs here over every Python file that ships. The pyproject checks follow the Registry's
specification (docs.comfy.org/registry/specifications): the node id rules, a semantic version, a Repository URL,
``[tool.comfy]`` PublisherId / DisplayName / Icon, ``requires-comfyui``.
"""
from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path
from urllib.parse import urlparse

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUFF_RULES = "S102,S307,E701,E702"
# What does not ship or is not the pack's code: the venv, caches, ComfyUI's unpacked copy, build metadata.
RUFF_EXCLUDE = ".venv,.cache,*.egg-info,build,dist"


def _ruff(target: Path) -> subprocess.CompletedProcess:
    try:
        import ruff  # noqa: F401  (the test extra installs it)
    except ImportError:
        pytest.fail("ruff is not installed: pip install -e '.[test]' (it is in the test extra)", pytrace=False)
    return subprocess.run([sys.executable, "-m", "ruff", "check", str(target), "--no-cache", "--isolated",
                           "--select", RUFF_RULES, "--extend-exclude", RUFF_EXCLUDE, "--output-format", "concise"],
                          capture_output=True, text=True, timeout=120)


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_comfy_validate_lint_passes_over_the_pack() -> None:
    result = _ruff(ROOT)
    assert result.returncode == 0, f"ruff {RUFF_RULES} (`comfy node validate`):\n{result.stdout}{result.stderr}"


def test_comfy_validate_lint_catches_exec_eval_and_joined_statements(tmp_path: Path) -> None:
    """Control for the test above: the same command flags each rule it is meant to enforce."""
    bad = tmp_path / "bad_node.py"
    bad.write_text("def run(code):\n    exec(code)\n    return eval(code)\n\n\nx = 1; y = 2\nif x: y = 3\n")
    result = _ruff(tmp_path)
    assert result.returncode != 0
    for rule in RUFF_RULES.split(","):
        assert f" {rule} " in result.stdout, f"{rule} not reported:\n{result.stdout}"


def test_project_name_is_a_valid_registry_node_id() -> None:
    name = _pyproject()["project"]["name"]
    assert len(name) < 100
    assert re.fullmatch(r"[A-Za-z][A-Za-z0-9_.-]*", name), f"{name!r}: letters, digits, - _ . only, a letter first"
    assert not re.search(r"[-_.]{2}", name), f"{name!r}: no consecutive special characters"
    assert "comfyui" not in name.lower(), f"{name!r}: the Registry asks for names without 'ComfyUI'"


def test_version_and_license() -> None:
    project = _pyproject()["project"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", project["version"]), project["version"]
    assert (ROOT / project["license"]["file"]).is_file()


def _github_owner_repo(url: str) -> str:
    parsed = urlparse(url)
    assert parsed.scheme == "https", url
    parts = parsed.path.strip("/").split("/")
    if parsed.netloc == "github.com":
        return "/".join(parts[:2])
    assert parsed.netloc == "raw.githubusercontent.com", url
    return "/".join(parts[:2])


def test_repository_and_icon_urls_name_the_same_repository_and_an_icon_that_exists() -> None:
    data = _pyproject()
    repo = data["project"]["urls"]["Repository"]
    icon = data["tool"]["comfy"]["Icon"]
    assert _github_owner_repo(repo) == _github_owner_repo(icon), (repo, icon)
    # raw.githubusercontent.com/OWNER/REPO/BRANCH/<path in the repository>
    icon_path = ROOT / "/".join(urlparse(icon).path.strip("/").split("/")[3:])
    assert icon_path.is_file(), f"the Icon URL points at {icon_path.relative_to(ROOT)}, which the repository lacks"
    from PIL import Image

    with Image.open(icon_path) as im:
        assert im.size[0] == im.size[1] <= 400, f"icon is {im.size}; the Registry shows a square of at most 400 px"


def test_tool_comfy_fields() -> None:
    comfy = _pyproject()["tool"]["comfy"]
    for key in ("PublisherId", "DisplayName", "Icon"):
        assert isinstance(comfy.get(key), str) and comfy[key].strip(), f"[tool.comfy] {key} is missing"
    spec = comfy.get("requires-comfyui")
    assert isinstance(spec, str) and re.fullmatch(r"(>=|==|~=|>)\s*\d+\.\d+\.\d+", spec), spec
    assert isinstance(comfy.get("includes", []), list)

