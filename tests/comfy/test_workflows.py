"""The pack's templates (example_workflows/): UI files match their API twins (which test_server.py runs in the real
server), and each is a template a person can use: a Note, groups, distinct titles, the pack's Registry id on its
nodes, a thumbnail, no two stored node boxes overlapping, and the runnable demos listed first.

``SAFECFG_REGEN_WORKFLOWS=1 pytest tests/comfy/test_workflows.py`` rewrites the UI templates from
``example_workflows/api/*.json`` and ``example_workflows/tools/layouts.py`` with the running server's /object_info.
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FOLDER = ROOT / "example_workflows"
API_DIR = FOLDER / "api"
_spec = importlib.util.spec_from_file_location("api_to_ui", FOLDER / "tools" / "api_to_ui.py")
api_to_ui = importlib.util.module_from_spec(_spec)
sys.modules["api_to_ui"] = api_to_ui
_spec.loader.exec_module(api_to_ui)  # type: ignore[union-attr]
LAYOUTS = api_to_ui.LAYOUTS

NAMES = sorted(p.stem for p in API_DIR.glob("*.json"))
# Templates that run on a fresh install (the demo model is built in); the others need downloaded models.
RUNNABLE = {"safecfg_demo_vs_cfg", "train_hgr_demo"}
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _template(name: str) -> dict:
    return json.loads((FOLDER / f"{LAYOUTS[name]['template']}.json").read_text())


def test_every_api_twin_has_a_layout_and_every_template_a_twin() -> None:
    assert sorted(LAYOUTS) == NAMES
    templates = sorted(p.stem for p in FOLDER.glob("*.json"))
    assert templates == sorted(LAYOUTS[n]["template"] for n in NAMES), "a template without an API twin and layout"


@pytest.mark.parametrize("name", NAMES)
def test_ui_workflow_matches_api_twin(comfy_server, name):
    info = comfy_server.get("/object_info")
    ui_path, built = api_to_ui.build(name, info)
    if os.environ.get("SAFECFG_REGEN_WORKFLOWS") == "1":
        ui_path.write_text(json.dumps(built, indent=2) + "\n")
    ui = json.loads(ui_path.read_text())
    assert sorted((n["id"], n["type"]) for n in ui["nodes"]) == sorted((n["id"], n["type"]) for n in built["nodes"])
    assert sorted(map(tuple, ui["links"])) == sorted(map(tuple, built["links"]))
    by_id = {n["id"]: n for n in ui["nodes"]}
    for n in built["nodes"]:
        assert by_id[n["id"]]["widgets_values"] == n["widgets_values"], n["type"]
        assert by_id[n["id"]]["properties"] == n["properties"], n["type"]
    # the pack's nodes name the pack for the Missing Nodes dialog; ComfyUI's own nodes do not
    api = json.loads((API_DIR / f"{name}.json").read_text())
    pack_ids = {int(k) for k, v in api.items() if v["class_type"].startswith("SafeCFG")}
    tagged = {n["id"] for n in ui["nodes"] if n["properties"].get("cnr_id") == PROJECT["name"]
              and n["properties"].get("ver") == PROJECT["version"]}
    assert pack_ids and tagged == pack_ids


@pytest.mark.parametrize("name", NAMES)
def test_template_reads_well(name: str) -> None:
    ui = _template(name)
    notes = [n for n in ui["nodes"] if n["type"] in ("Note", "MarkdownNote")]
    assert len(notes) == 1 and len(notes[0]["widgets_values"][0]) > 200, "one Note that says what to look at"
    assert len(ui["groups"]) >= 1
    titles = [n.get("title") or n["type"] for n in ui["nodes"]]
    assert len(set(titles)) == len(titles), f"repeated node titles: {sorted(titles)}"
    detectors = [n for n in ui["nodes"] if n["type"] == "SafeCFGHarmfulnessDetector"]
    for d in detectors:  # its BOOLEAN and its report both lead somewhere a person sees
        wired = {o["name"] for o in d["outputs"] if o["links"]}
        assert {"harmful", "report"} <= wired, wired


@pytest.mark.parametrize("name", NAMES)
def test_stored_node_boxes_do_not_overlap(name: str) -> None:
    """The layout table's own boxes (title bar included); the browser test checks the sizes the frontend gives."""
    title_h = 30
    boxes = [(n["id"], n["pos"][0], n["pos"][1] - title_h, n["size"][0], n["size"][1] + title_h)
             for n in _template(name)["nodes"]]
    clashes = [(a[0], b[0]) for i, a in enumerate(boxes) for b in boxes[i + 1:]
               if min(a[1] + a[3], b[1] + b[3]) > max(a[1], b[1]) and min(a[2] + a[4], b[2] + b[4]) > max(a[2], b[2])]
    assert not clashes, clashes


@pytest.mark.parametrize("name", NAMES)
def test_template_has_a_thumbnail(name: str) -> None:
    """The template browser shows ``<template>.jpg`` from the same folder (ComfyUI frontend 1.27 and 1.5x)."""
    from PIL import Image

    thumb = FOLDER / f"{LAYOUTS[name]['template']}.jpg"
    assert thumb.is_file(), f"{thumb.name} is missing: python example_workflows/tools/make_thumbnails.py"
    with Image.open(thumb) as im:
        assert im.format == "JPEG" and min(im.size) >= 128, (im.format, im.size)


def test_runnable_templates_sort_first() -> None:
    order = sorted(NAMES, key=lambda n: LAYOUTS[n]["template"])
    assert set(order[:len(RUNNABLE)]) == RUNNABLE, order
    assert order[0] == "safecfg_demo_vs_cfg", order
