"""Convert between ComfyUI's two workflow formats, given the server's ``/object_info``.

The UI format (what the template browser and drag-and-drop load) stores each node's widget values as a flat,
ordered list and its links separately; the API format (what ``/prompt`` takes) stores named inputs. The example
workflows ship in both; this module builds the UI file from the API twin and reads it back, so a test can prove the
two say the same thing. No ComfyUI import: ``object_info`` is plain JSON fetched from a running server.

Widget order follows the front end: required inputs then optional ones, in declaration order, skipping inputs that
are links (types that are not INT/FLOAT/STRING/BOOLEAN/COMBO); an INT named ``seed`` or ``noise_seed`` (or declared
with ``control_after_generate``) is followed by its "control after generate" value.
"""
from __future__ import annotations

import json
from collections import defaultdict
from typing import Any, Dict, List, Mapping, Tuple

WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN")
SEED_NAMES = ("seed", "noise_seed")


def _inputs(info: Mapping[str, Any]) -> List[Tuple[str, Any, Dict[str, Any]]]:
    out = []
    for section in ("required", "optional"):
        for name, spec in (info.get("input", {}).get(section, {}) or {}).items():
            kind = spec[0]
            opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            out.append((name, kind, opts))
    return out


def _is_widget(kind: Any, opts: Mapping[str, Any]) -> bool:
    if opts.get("forceInput"):
        return False
    return isinstance(kind, list) or kind in WIDGET_TYPES or kind == "COMBO"


def _has_control(name: str, kind: Any, opts: Mapping[str, Any]) -> bool:
    return kind == "INT" and (name in SEED_NAMES or bool(opts.get("control_after_generate")))


def _is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def _depths(api: Mapping[str, Any]) -> Dict[str, int]:
    depth: Dict[str, int] = {}

    def visit(node_id: str, stack: Tuple[str, ...] = ()) -> int:
        if node_id in depth:
            return depth[node_id]
        if node_id in stack:
            raise ValueError(f"workflow has a cycle through node {node_id}")
        parents = [v[0] for v in api[node_id]["inputs"].values() if _is_link(v)]
        depth[node_id] = 1 + max((visit(p, stack + (node_id,)) for p in parents), default=-1)
        return depth[node_id]

    for nid in api:
        visit(nid)
    return depth


def api_to_ui(api: Mapping[str, Any], object_info: Mapping[str, Any], title: str = "") -> Dict[str, Any]:
    """A UI-format workflow equivalent to the API prompt ``api`` (laid out in columns by graph depth)."""
    depth = _depths(api)
    column_count: Dict[int, int] = defaultdict(int)
    nodes, links = [], []
    link_id = 0
    outgoing: Dict[Tuple[str, int], List[int]] = defaultdict(list)
    order = sorted(api, key=lambda n: (depth[n], int(n) if n.isdigit() else n))
    for index, node_id in enumerate(order):
        node = api[node_id]
        class_type = node["class_type"]
        if class_type not in object_info:
            raise KeyError(f"node type {class_type!r} (node {node_id}) is not in /object_info; is its pack loaded?")
        info = object_info[class_type]
        ui_inputs, widgets = [], []
        for name, kind, opts in _inputs(info):
            value = node["inputs"].get(name)
            if _is_widget(kind, opts) and not _is_link(value):
                if value is None:
                    value = opts.get("default")
                widgets.append(value)
                if _has_control(name, kind, opts):
                    widgets.append("fixed")
                continue
            if value is None:
                continue
            if not _is_link(value):
                raise ValueError(f"node {node_id} ({class_type}): input {name!r} must be a link, got {value!r}")
            link_id += 1
            src, slot = value
            src_type = object_info[api[src]["class_type"]]["output"][slot]
            links.append([link_id, int(src), slot, int(node_id), len(ui_inputs), src_type])
            outgoing[(src, slot)].append(link_id)
            ui_inputs.append({"name": name, "type": kind if isinstance(kind, str) else "COMBO", "link": link_id})
        col = depth[node_id]
        row = column_count[col]
        column_count[col] += 1
        nodes.append({
            "id": int(node_id), "type": class_type, "pos": [40 + 340 * col, 40 + 260 * row], "size": [300, 200],
            "flags": {}, "order": index, "mode": 0, "inputs": ui_inputs, "outputs": [],
            "properties": {"Node name for S&R": class_type}, "widgets_values": widgets,
        })
        if node.get("_meta", {}).get("title"):
            nodes[-1]["title"] = node["_meta"]["title"]
    for ui_node in nodes:
        info = object_info[ui_node["type"]]
        names = info.get("output_name") or info["output"]
        ui_node["outputs"] = [
            {"name": names[i], "type": t, "links": outgoing.get((str(ui_node["id"]), i), []), "slot_index": i}
            for i, t in enumerate(info["output"])
        ]
    return {
        "last_node_id": max(n["id"] for n in nodes), "last_link_id": link_id, "nodes": nodes, "links": links,
        "groups": [], "config": {}, "extra": {"safecfg_title": title} if title else {}, "version": 0.4,
    }


def ui_to_api(ui: Mapping[str, Any], object_info: Mapping[str, Any]) -> Dict[str, Any]:
    """The API prompt a UI-format workflow queues (what the front end's "Queue" sends)."""
    link_src = {l[0]: (str(l[1]), l[2]) for l in ui["links"]}
    api: Dict[str, Any] = {}
    for node in ui["nodes"]:
        if node.get("mode", 0) != 0:
            continue
        info = object_info[node["type"]]
        values = list(node.get("widgets_values") or [])
        inputs: Dict[str, Any] = {}
        for name, kind, opts in _inputs(info):
            if _is_widget(kind, opts):
                if not values:
                    raise ValueError(f"node {node['id']} ({node['type']}): too few widget values for {name!r}")
                inputs[name] = values.pop(0)
                if _has_control(name, kind, opts) and values and values[0] in ("fixed", "increment", "decrement",
                                                                                "randomize"):
                    values.pop(0)
        for slot in node.get("inputs", []):
            if slot.get("link") is not None:
                src, out_slot = link_src[slot["link"]]
                inputs[slot["name"]] = [src, out_slot]
        if values:
            raise ValueError(f"node {node['id']} ({node['type']}): {len(values)} widget value(s) left over")
        api[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
        if node.get("title"):
            api[str(node["id"])]["_meta"] = {"title": node["title"]}
    return api


def strip_meta(api: Mapping[str, Any]) -> Dict[str, Any]:
    """API prompt without ``_meta`` (titles), for comparisons."""
    return {k: {"class_type": v["class_type"], "inputs": dict(v["inputs"])} for k, v in api.items()}


def load_json(path: str) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)
