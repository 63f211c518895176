"""Build a UI-format (litegraph) workflow from an API-format one and ComfyUI's /object_info.

    python workflows/tools/api_to_ui.py OBJECT_INFO.json workflows/api/X.json workflows/X.json

The UI files in ``workflows/`` are generated this way from their ``workflows/api/`` twins (which the tests run in
a real server), so the two never drift apart; ``tests/comfy/test_workflows.py`` checks that they match.
"""
from __future__ import annotations

import json
import sys
from typing import Any, Dict, List

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN"}


def _is_widget(spec: List[Any]) -> bool:
    kind = spec[0]
    return isinstance(kind, list) or kind in WIDGET_TYPES or kind == "COMBO"


def _order(api: Dict[str, Any]) -> List[str]:
    """Topological order (inputs first), ties by numeric id."""
    done: List[str] = []
    seen = set()

    def visit(nid: str) -> None:
        if nid in seen:
            return
        seen.add(nid)
        for v in api[nid]["inputs"].values():
            if isinstance(v, list) and len(v) == 2 and isinstance(v[0], str) and v[0] in api:
                visit(v[0])
        done.append(nid)

    for nid in sorted(api, key=lambda k: int(k)):
        visit(nid)
    return done


def api_to_ui(api: Dict[str, Any], object_info: Dict[str, Any]) -> Dict[str, Any]:
    order = _order(api)
    nodes: List[Dict[str, Any]] = []
    links: List[List[Any]] = []
    out_links: Dict[str, Dict[int, List[int]]] = {nid: {} for nid in api}
    depth: Dict[str, int] = {}
    for nid in order:
        ins = [v[0] for v in api[nid]["inputs"].values() if isinstance(v, list) and len(v) == 2 and v[0] in api]
        depth[nid] = 1 + max((depth[i] for i in ins), default=-1)
    column_rows: Dict[int, int] = {}
    link_id = 0
    for index, nid in enumerate(order):
        node = api[nid]
        ctype = node["class_type"]
        info = object_info[ctype]
        inputs_ui: List[Dict[str, Any]] = []
        widgets: List[Any] = []
        for section in ("required", "optional"):
            for name, spec in info["input"].get(section, {}).items():
                value = node["inputs"].get(name)
                if _is_widget(spec):
                    if isinstance(value, list) and len(value) == 2 and value[0] in api:
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
                if isinstance(value, list) and len(value) == 2 and value[0] in api:
                    link_id += 1
                    src, slot = value[0], int(value[1])
                    src_type = object_info[api[src]["class_type"]]["output"][slot]
                    links.append([link_id, int(src), slot, int(nid), len(inputs_ui), src_type])
                    out_links[src].setdefault(slot, []).append(link_id)
                    entry["link"] = link_id
                inputs_ui.append(entry)
        col = depth[nid]
        row = column_rows.get(col, 0)
        column_rows[col] = row + 1
        nodes.append({
            "id": int(nid), "type": ctype, "pos": [40 + 360 * col, 40 + 260 * row], "size": [320, 200],
            "flags": {}, "order": index, "mode": 0, "inputs": inputs_ui, "outputs": [],
            "properties": {"Node name for S&R": ctype}, "widgets_values": widgets,
            **({"title": node["_meta"]["title"]} if node.get("_meta", {}).get("title") else {}),
        })
    for n in nodes:
        info = object_info[n["type"]]
        names = info.get("output_name") or info["output"]
        n["outputs"] = [
            {"name": names[i], "type": t, "links": out_links[str(n["id"])].get(i, []), "slot_index": i}
            for i, t in enumerate(info["output"])
        ]
    return {
        "last_node_id": max(int(k) for k in api), "last_link_id": link_id, "nodes": nodes, "links": links,
        "groups": [], "config": {}, "extra": {}, "version": 0.4,
    }


def main(argv: List[str]) -> int:
    if len(argv) != 4:
        print(__doc__)
        return 2
    object_info = json.loads(open(argv[1]).read())
    api = json.loads(open(argv[2]).read())
    with open(argv[3], "w") as f:
        json.dump(api_to_ui(api, object_info), f, indent=2)
        f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
