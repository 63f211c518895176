"""Build the pack's UI-format (litegraph) templates from their API-format twins, ComfyUI's /object_info and
the hand layouts in ``layouts.py``.

    python example_workflows/tools/api_to_ui.py OBJECT_INFO.json [API_NAME ...]

writes ``example_workflows/<template>.json`` for each API twin ``example_workflows/api/<API_NAME>.json`` (all of
them by default). The API twins are what the tests run in a real server, and the UI files are generated from them,
so the two never drift apart; ``tests/comfy/test_workflows.py`` checks that they match (and rewrites them with
``SAFECFG_REGEN_WORKFLOWS=1``, taking /object_info from its running server).

Each of the pack's nodes carries ``cnr_id`` (the Registry name, pyproject's ``[project] name``) and ``ver`` in its
properties, so a user without the pack is told which pack to install.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = None  # type: ignore[assignment]

HERE = Path(__file__).resolve().parent
FOLDER = HERE.parent  # example_workflows/
sys.path.insert(0, str(HERE))
from layouts import LAYOUTS, Layout  # noqa: E402

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN"}
NOTE_ID = 100  # the Note's node id: above every API node id


def pack_identity(pyproject: Path = FOLDER.parent / "pyproject.toml") -> Dict[str, str]:
    """``{"cnr_id": <Registry name>, "ver": <version>}`` from the pack's pyproject.toml."""
    text = pyproject.read_text()
    if tomllib is not None:
        project = tomllib.loads(text)["project"]
        return {"cnr_id": project["name"], "ver": project["version"]}
    import re  # the two plain `key = "value"` lines of [project]

    return {"cnr_id": re.search(r'^name = "([^"]+)"', text, re.M).group(1),  # type: ignore[union-attr]
            "ver": re.search(r'^version = "([^"]+)"', text, re.M).group(1)}  # type: ignore[union-attr]


def _is_widget(spec: List[Any]) -> bool:
    kind = spec[0]
    return isinstance(kind, list) or kind in WIDGET_TYPES or kind == "COMBO"


def _is_link(value: Any, api: Dict[str, Any]) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and value[0] in api


def _order(api: Dict[str, Any]) -> List[str]:
    """Topological order (inputs first), ties by numeric id: the order ComfyUI would execute them in."""
    done: List[str] = []
    seen = set()

    def visit(nid: str) -> None:
        if nid in seen:
            return
        seen.add(nid)
        for v in api[nid]["inputs"].values():
            if _is_link(v, api):
                visit(v[0])
        done.append(nid)

    for nid in sorted(api, key=int):
        visit(nid)
    return done


def _inputs(nid: str, api: Dict[str, Any], object_info: Dict[str, Any], links: List[List[Any]],
            out_links: Dict[str, Dict[int, List[int]]]) -> Tuple[List[Dict[str, Any]], List[Any]]:
    """A node's link inputs (appending its links) and its widget values, in the order the frontend lists them."""
    node = api[nid]
    ctype = node["class_type"]
    info = object_info[ctype]
    inputs_ui: List[Dict[str, Any]] = []
    widgets: List[Any] = []
    for section in ("required", "optional"):
        for name, spec in info["input"].get(section, {}).items():
            value = node["inputs"].get(name)
            if _is_widget(spec):
                if _is_link(value, api):
                    raise ValueError(f"{ctype}.{name}: widget inputs fed by links are not supported here")
                if value is None:
                    value = spec[1].get("default") if len(spec) > 1 else None
                    if value is None and isinstance(spec[0], list) and spec[0]:
                        value = spec[0][0]
                widgets.append(value)
                opts = spec[1] if len(spec) > 1 else {}
                if opts.get("control_after_generate") or name in ("seed", "noise_seed"):
                    widgets.append("fixed")
                continue
            entry: Dict[str, Any] = {"name": name, "type": spec[0], "link": None}
            if _is_link(value, api):
                link_id = len(links) + 1
                src, slot = value[0], int(value[1])
                src_type = object_info[api[src]["class_type"]]["output"][slot]
                links.append([link_id, int(src), slot, int(nid), len(inputs_ui), src_type])
                out_links[src].setdefault(slot, []).append(link_id)
                entry["link"] = link_id
            inputs_ui.append(entry)
    return inputs_ui, widgets


def _grid_box(nid: str, api: Dict[str, Any], order: List[str]) -> Tuple[int, int, int, int]:
    """Fallback for a node the layout does not place: a column per depth (only for workflows without a layout)."""
    depth: Dict[str, int] = {}
    for k in order:
        ins = [v[0] for v in api[k]["inputs"].values() if _is_link(v, api)]
        depth[k] = 1 + max((depth[i] for i in ins), default=-1)
    row = sum(1 for k in order[:order.index(nid)] if depth[k] == depth[nid])
    return 40 + 360 * depth[nid], 40 + 300 * row, 320, 262


def _note(layout: Layout, order_index: int) -> Dict[str, Any]:
    (x, y, w, h), text = layout["note"]
    return {"id": NOTE_ID, "type": "MarkdownNote", "title": "Read me", "pos": [x, y], "size": [w, h],
            "flags": {}, "order": order_index, "mode": 0, "inputs": [], "outputs": [], "properties": {},
            "widgets_values": [text], "color": "#432", "bgcolor": "#653"}


def api_to_ui(api: Dict[str, Any], object_info: Dict[str, Any], layout: Optional[Layout] = None,
              pack: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    """The UI workflow for ``api``; nodes placed by ``layout`` (else on a grid), pack nodes tagged with ``pack``."""
    order = _order(api)
    nodes: List[Dict[str, Any]] = []
    links: List[List[Any]] = []
    out_links: Dict[str, Dict[int, List[int]]] = {nid: {} for nid in api}
    for index, nid in enumerate(order):
        ctype = api[nid]["class_type"]
        inputs_ui, widgets = _inputs(nid, api, object_info, links, out_links)
        x, y, w, h = layout["nodes"][nid] if layout else _grid_box(nid, api, order)
        props: Dict[str, Any] = {"Node name for S&R": ctype}
        if pack and str(object_info[ctype].get("python_module", "")).startswith("custom_nodes."):
            props.update(pack)
        title = api[nid].get("_meta", {}).get("title")
        nodes.append({"id": int(nid), "type": ctype, "pos": [x, y], "size": [w, h], "flags": {}, "order": index,
                      "mode": 0, "inputs": inputs_ui, "outputs": [], "properties": props,
                      "widgets_values": widgets, **({"title": title} if title else {})})
    for n in nodes:
        info = object_info[n["type"]]
        names = info.get("output_name") or info["output"]
        n["outputs"] = [
            {"name": names[i], "type": t, "links": out_links[str(n["id"])].get(i, []), "slot_index": i}
            for i, t in enumerate(info["output"])
        ]
    groups: List[Dict[str, Any]] = []
    if layout:
        nodes.append(_note(layout, len(nodes)))
        groups = [{"id": i + 1, "title": g["title"], "bounding": list(g["box"]), "color": g["color"],
                   "font_size": 24, "flags": {}} for i, g in enumerate(layout["groups"])]
    return {
        "last_node_id": max([int(k) for k in api] + ([NOTE_ID] if layout else [])), "last_link_id": len(links),
        "nodes": nodes, "links": links, "groups": groups, "config": {}, "extra": {}, "version": 0.4,
    }


def build(api_name: str, object_info: Dict[str, Any]) -> Tuple[Path, Dict[str, Any]]:
    """``(path of the UI template, its content)`` for the API twin ``example_workflows/api/<api_name>.json``."""
    api = json.loads((FOLDER / "api" / f"{api_name}.json").read_text())
    layout = LAYOUTS[api_name]
    return FOLDER / f"{layout['template']}.json", api_to_ui(api, object_info, layout, pack_identity())


def main(argv: List[str]) -> int:
    if len(argv) < 2:
        print(__doc__)
        return 2
    object_info = json.loads(Path(argv[1]).read_text())
    for name in argv[2:] or sorted(LAYOUTS):
        path, data = build(name, object_info)
        path.write_text(json.dumps(data, indent=2) + "\n")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
