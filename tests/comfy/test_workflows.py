"""UI-format workflows match their API twins (which test_server.py runs in the real server).

``SAFECFG_REGEN_WORKFLOWS=1 pytest tests/comfy/test_workflows.py`` rewrites ``workflows/*.json`` from
``workflows/api/*.json`` with the running server's /object_info.
"""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
API_DIR = ROOT / "workflows" / "api"
_spec = importlib.util.spec_from_file_location("api_to_ui", ROOT / "workflows" / "tools" / "api_to_ui.py")
api_to_ui = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(api_to_ui)  # type: ignore[union-attr]

NAMES = sorted(p.stem for p in API_DIR.glob("*.json"))


@pytest.mark.parametrize("name", NAMES)
def test_ui_workflow_matches_api_twin(comfy_server, name):
    info = comfy_server.get("/object_info")
    api = json.loads((API_DIR / f"{name}.json").read_text())
    built = api_to_ui.api_to_ui(api, info)
    ui_path = ROOT / "workflows" / f"{name}.json"
    if os.environ.get("SAFECFG_REGEN_WORKFLOWS") == "1":
        ui_path.write_text(json.dumps(built, indent=2) + "\n")
    ui = json.loads(ui_path.read_text())
    assert sorted((n["id"], n["type"]) for n in ui["nodes"]) == sorted((n["id"], n["type"]) for n in built["nodes"])
    assert sorted(map(tuple, ui["links"])) == sorted(map(tuple, built["links"]))
    by_id = {n["id"]: n for n in ui["nodes"]}
    for n in built["nodes"]:
        assert by_id[n["id"]]["widgets_values"] == n["widgets_values"], n["type"]
