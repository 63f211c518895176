"""The pack as a person sees it in ComfyUI's real frontend (headless Chromium), in the pinned and newest frontend.

Each test names the check it makes in its failure message and leaves screenshots of the states it looked at in
``.cache/frontend-screenshots/<frontend>/<test>/``.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import pytest

pytestmark = [pytest.mark.comfyui, pytest.mark.browser]

REPO_ROOT = Path(__file__).resolve().parents[2]
# The pack's node ids, as the project's spec names them (not read from the pack: the check is that they all arrive).
PACK_NODES = ["SafeCFGLoadHGR", "SafeCFG", "SafeCFGHarmfulnessDetector", "SafeCFGTrainHGR", "SafeCFGTrainHGRPreset",
              "SafeCFGDemoModel", "SafeCFGAlignModel"]
# Shipped UI-format workflows: the Registry's example_workflows/ folder (its api/ twins are not templates).
WORKFLOWS = sorted(p for p in (REPO_ROOT / "example_workflows").glob("*.json") if "nodes" in json.loads(p.read_text()))
# The runnable demo template (example_workflows/tools/layouts.py names the templates).
DEMO = "1 SafeCFG demo - plain CFG vs SafeCFG"
DETECTOR = "SafeCFGHarmfulnessDetector"
RUN_TIMEOUT_S = 300
# How each frontend says a workflow names node types it does not know: 1.27's dialog "Some Nodes Are Missing ...
# the following node types were not found", 1.5x's toast "Missing node: <type> ... isn't installed". Other notices
# (a template's missing model files, say) are a different check's business.
MISSING_NODE_NOTICE = re.compile(r"missing node|nodes? (are|is) missing|node types? (were|was) not found", re.I)


def _slug(path: Path) -> str:
    """A test id for a template (its file name has spaces: it is the title the template browser shows)."""
    return re.sub(r"[^a-z0-9]+", "_", path.stem.lower()).strip("_")


WORKFLOW_PARAMS = [pytest.param(p, id=_slug(p)) for p in WORKFLOWS]


def _intersection(a: List[float], b: List[float]) -> float:
    """Area shared by two [x, y, w, h] boxes (0 when they only touch)."""
    w = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    h = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    return max(w, 0.0) * max(h, 0.0)


def _label(node: Dict[str, Any]) -> str:
    return f"#{node['id']} {node['type']} '{node['title']}'"


def _open(page: Any, path: Path) -> List[Dict[str, Any]]:
    page.load_workflow(json.loads(path.read_text()))
    page.shot(f"opened-{_slug(path)}")
    return page.graph_nodes()


def test_page_loads_without_pack_errors(comfy_page: Any, frontend_server: Dict[str, Any]) -> None:
    comfy_page.shot("page-loaded")
    served = comfy_page.frontend_version()
    assert served == frontend_server["version"], (
        f"check 'served frontend': the page runs frontend {served!r}, expected {frontend_server['version']}")
    errors = comfy_page.pack_errors()
    assert not errors, "check 'no console error from the pack on page load': " + "; ".join(map(str, errors))


def test_frontend_defines_every_pack_node(comfy_page: Any) -> None:
    registered = set(comfy_page.registered_types())
    missing = [n for n in PACK_NODES if n not in registered]
    assert not missing, f"check 'node definitions': the frontend has no definition for {missing}"


@pytest.mark.parametrize("node_id", PACK_NODES)
def test_node_search_finds_pack_node(comfy_page: Any, frontend_server: Dict[str, Any], node_id: str) -> None:
    info = frontend_server["server"].get(f"/object_info/{node_id}")
    assert node_id in info, f"check 'node search': the server does not offer {node_id} (/object_info)"
    display = info[node_id].get("display_name") or node_id
    listed = comfy_page.search_nodes(display)
    # An entry whose own line is the display name: "SafeCFG" alone also appears inside "Load HGR (SafeCFG)".
    assert any(display in [line.strip() for line in entry.splitlines()] for entry in listed), (
        f"check 'node search': searching {display!r} lists {listed[:8]}, not {node_id} ({display!r})")


@pytest.mark.parametrize("path", WORKFLOW_PARAMS)
def test_workflow_opens_without_missing_nodes(comfy_page: Any, path: Path) -> None:
    since = len(comfy_page.console)
    before = set(comfy_page.notices())
    nodes = _open(comfy_page, path)
    shown = [t for t in comfy_page.notices() if t not in before and MISSING_NODE_NOTICE.search(t)]
    assert not shown, f"check 'no missing-node dialog or notice on open' ({path.name}): {[t[:300] for t in shown]}"
    unknown = [_label(n) for n in nodes if not n["registered"]]
    assert not unknown, f"check 'no missing nodes' ({path.name}): the frontend knows no node type for {unknown}"
    errors = comfy_page.pack_errors(since)
    assert not errors, f"check 'no console error from the pack' ({path.name}): " + "; ".join(map(str, errors))


def test_missing_node_check_sees_an_unknown_node(comfy_page: Any) -> None:
    """Control for the check above: a workflow naming a node type nobody defines must trip it."""
    data = json.loads(WORKFLOWS[0].read_text())
    data["nodes"][0]["type"] = "NoSuchNodeSafeCFGControl"
    before = set(comfy_page.notices())
    comfy_page.load_workflow(data)
    comfy_page.shot("unknown-node-opened")
    shown = [t for t in comfy_page.notices() if t not in before and MISSING_NODE_NOTICE.search(t)]
    unknown = [n for n in comfy_page.graph_nodes() if not n["registered"]]
    comfy_page.close_dialogs()
    assert any("NoSuchNodeSafeCFGControl" in t for t in shown), (
        f"check 'missing-node notice detection': nothing shown names the unknown node; shown: {shown}")
    assert [n["type"] for n in unknown] == ["NoSuchNodeSafeCFGControl"], f"unregistered nodes seen: {unknown}"


@pytest.mark.parametrize("path", WORKFLOW_PARAMS)
def test_workflow_nodes_do_not_overlap(comfy_page: Any, path: Path) -> None:
    nodes = _open(comfy_page, path)
    overlaps: List[Tuple[str, str, float]] = []
    for i, a in enumerate(nodes):
        for b in nodes[i + 1:]:
            area = _intersection(a["bounding"], b["bounding"])
            if area > 0:
                overlaps.append((_label(a), _label(b), round(area)))
    assert not overlaps, f"check 'no two nodes overlap' ({path.name}): overlapping pairs (area px^2): {overlaps}"


def test_template_browser_lists_pack_templates_with_thumbnails(comfy_page: Any, frontend_server: Dict[str, Any]
                                                               ) -> None:
    """Every template in example_workflows/ is listed under the pack with its title and its own thumbnail.

    The order is checked by test_template_browser_lists_pack_templates_in_name_order, against a server answer
    made to come in the wrong order (this one sees whatever order this machine's file system gives)."""
    module = comfy_page.pack_folder
    shown = comfy_page.template_cards(module)
    problems = []
    for path in WORKFLOWS:
        if path.stem not in shown["text"]:
            problems.append(f"'{path.stem}' not listed")
            continue
        thumbs = [i for i in shown["images"] if i["alt"] == path.stem]
        ok = [i for i in thumbs if i["complete"] and i["width"] > 0 and "default-template" not in i["src"]]
        if not ok:
            problems.append(f"'{path.stem}' shows no thumbnail of its own: {thumbs}")
    assert not problems, f"check 'template browser lists titles and thumbnails' (module {module}): {problems}"


# Another pack's templates, not in name order: the pack must leave them as the server sent them.
OTHER_PACK, OTHER_TEMPLATES = "zz-other-pack", ["b second", "a first"]
TEMPLATE_LIST_URL = re.compile(r"/api/workflow_templates(\?[^/]*)?$")  # the list, not a template or thumbnail


def _number(stem: str) -> int:
    """A template's place: its file name starts with its number ("1 SafeCFG demo - ...")."""
    return int(stem.split(" ", 1)[0])


def _serve_pack_templates_reversed(folder: str, served: Dict[str, Any]) -> Callable[[Any], None]:
    """A Playwright route handler for the template list: the real server's answer with the pack's templates in
    reverse name order (the demo last: an order a file system may return, since ComfyUI 0.3.64 lists them with an
    unsorted glob) and another pack's entry added; what it served goes into ``served``."""
    def handle(route: Any) -> None:
        response = route.fetch()
        data = response.json()
        data[folder] = sorted(data.get(folder, []), key=_number, reverse=True)
        data[OTHER_PACK] = list(OTHER_TEMPLATES)
        served.update(data)
        route.fulfill(response=response, json=data)
    return handle


def test_template_browser_lists_pack_templates_in_name_order(own_comfy_page: Callable[..., Any],
                                                             frontend_server: Dict[str, Any]) -> None:
    """The template browser lists the pack's templates in name order, the runnable demo first, whatever order the
    server sends them in (web/safecfg_template_order.js sorts them), and leaves other packs' lists alone."""
    folder = frontend_server["pack_folder"]
    expected = sorted((p.stem for p in WORKFLOWS), key=_number)
    assert expected[0] == DEMO, f"the demo is not numbered first: {expected}"
    served: Dict[str, Any] = {}
    page = own_comfy_page([(TEMPLATE_LIST_URL, _serve_pack_templates_reversed(folder, served))])
    shown = page.template_cards(folder)
    assert served.get(folder) == expected[::-1], (
        f"the test's server answer was not the reversed list: it served {served.get(folder)}")
    listed: List[str] = []
    for image in shown["images"]:
        if image["alt"] in expected and image["alt"] not in listed:
            listed.append(image["alt"])
    assert listed == expected, (
        f"check 'templates in name order, demo first' (module {folder}): served {served[folder]}, "
        f"the browser lists {listed}")
    read = page.workflow_templates()
    assert read.get(folder) == expected, f"check 'templates in name order': the frontend reads {read.get(folder)}"
    assert read.get(OTHER_PACK) == OTHER_TEMPLATES, (
        f"check 'other packs' templates untouched': served {OTHER_TEMPLATES}, the frontend reads "
        f"{read.get(OTHER_PACK)}")
    errors = page.pack_errors()
    assert not errors, "check 'no console error from the pack': " + "; ".join(map(str, errors))


def _widget_problems(nodes: List[Dict[str, Any]]) -> List[str]:
    """Why a person could not see or reach each widget of each pack node: collapsed node, hidden widget, widget
    outside the node's body, or widget under a node drawn after it (later in the graph's list, so on top)."""
    problems: List[str] = []
    for k, n in enumerate(nodes):
        if n["type"] not in PACK_NODES:
            continue
        if n["collapsed"]:
            problems.append(f"{_label(n)} is collapsed")
        for w in n["widgets"]:
            where = f"{_label(n)} widget '{w['name']}'"
            if w["hidden"]:
                problems.append(f"{where} is hidden")
                continue
            if w["y"] is None or w["y"] + w["height"] > n["size"][1] + 0.5:
                problems.append(f"{where} (y={w['y']}, h={w['height']}) lies outside the node (h={n['size'][1]})")
                continue
            rect = [n["pos"][0], n["pos"][1] + w["y"], n["size"][0], w["height"]]
            covering = [_label(o) for o in nodes[k + 1:] if _intersection(rect, o["bounding"]) > 0]
            if covering:
                problems.append(f"{where} is covered by {covering}")
    return problems


@pytest.mark.parametrize("path", WORKFLOW_PARAMS)
def test_every_pack_widget_is_visible(comfy_page: Any, path: Path) -> None:
    nodes = _open(comfy_page, path)
    assert any(n["type"] in PACK_NODES for n in nodes), f"{path.name} holds no pack node"
    problems = _widget_problems(nodes)
    assert not problems, f"check 'every pack widget visible' ({path.name}): " + "; ".join(problems)


def test_widget_check_sees_collapsed_and_covered_nodes(comfy_page: Any) -> None:
    """Control for the check above: a collapsed pack node and a pack widget under another node must both trip it."""
    data = json.loads(next(p for p in WORKFLOWS if p.stem == DEMO).read_text())
    pack = [n for n in data["nodes"] if n["type"] in PACK_NODES]
    widgeted = next(n for n in pack if n.get("widgets_values"))
    folded = next(n for n in pack if n is not widgeted)
    folded["flags"] = {"collapsed": True}
    cover = data["nodes"][-1] if data["nodes"][-1] is not widgeted else data["nodes"][-2]
    data["nodes"].remove(cover)
    data["nodes"].append(cover)  # last in the list: drawn on top
    cover["pos"] = [widgeted["pos"][0] + 10, widgeted["pos"][1] + 40]
    comfy_page.load_workflow(data)
    comfy_page.shot("collapsed-and-covered")
    problems = _widget_problems(comfy_page.graph_nodes())
    assert any(p.startswith(f"#{folded['id']} ") and p.endswith("is collapsed") for p in problems), (
        f"check 'widget check control': collapsed #{folded['id']} not reported; reported: {problems}")
    assert any(p.startswith(f"#{widgeted['id']} ") and "is covered by" in p and f"#{cover['id']} " in p
               for p in problems), (
        f"check 'widget check control': #{widgeted['id']} under #{cover['id']} not reported; reported: {problems}")


def _wait_for_new_prompt(server: Any, before: set, timeout: float) -> Dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = [pid for pid in server.get("/history") if pid not in before]
        if new:
            return server.wait_history(new[0], timeout=max(deadline - time.monotonic(), 1.0))
        time.sleep(0.5)
    raise AssertionError(f"check 'Run button queues the demo': no prompt reached /history within {timeout}s")


def test_demo_runs_from_run_button_and_shows_images(comfy_page: Any, frontend_server: Dict[str, Any]) -> None:
    server = frontend_server["server"]
    path = next(p for p in WORKFLOWS if p.stem == DEMO)
    since = len(comfy_page.console)
    nodes = _open(comfy_page, path)
    savers = [n for n in nodes if n["type"] in ("SaveImage", "PreviewImage")]
    assert len(savers) >= 2, f"{path.name} should show two image sets; it has image outputs {savers}"
    before = set(server.get("/history"))
    comfy_page.run_button().click()
    comfy_page.shot("queued")
    started = time.monotonic()
    entry = _wait_for_new_prompt(server, before, RUN_TIMEOUT_S)
    assert server.succeeded(entry), f"check 'demo run succeeds': {server.error_message(entry) or entry['status']}"
    missing: List[str] = []
    for n in savers:
        files = [im["filename"] for im in entry["outputs"].get(n["id"], {}).get("images", [])]
        assert files, f"check 'demo run saves images': {_label(n)} produced no image"
        if not comfy_page.wait_for_node_images(n["id"], files):
            missing.append(f"{_label(n)} shows {comfy_page.node_images(n['id'])}, not {files}")
    comfy_page.settle()
    comfy_page.shot(f"images-shown-after-{time.monotonic() - started:.0f}s")
    assert not missing, "check 'output images shown after the run': " + "; ".join(missing)
    _check_verdict_on_canvas(comfy_page, nodes, entry)
    after = comfy_page.graph_nodes()
    overlaps = [(_label(a), _label(b)) for i, a in enumerate(after) for b in after[i + 1:]
                if _intersection(a["bounding"], b["bounding"]) > 0]
    assert not overlaps, f"check 'no two nodes overlap once the images arrived': {overlaps}"
    errors = comfy_page.pack_errors(since)
    assert not errors, "check 'no console error from the pack during the run': " + "; ".join(map(str, errors))


def _check_verdict_on_canvas(comfy_page: Any, nodes: List[Dict[str, Any]], entry: Dict[str, Any]) -> None:
    """The detector's verdict box on its node shows the run's report, and its BOOLEAN reaches the canvas too."""
    detector = next(n for n in nodes if n["type"] == DETECTOR)
    report = entry["outputs"][detector["id"]]["text"][0]
    boxes = [w for w in comfy_page.widget_texts(detector["id"]) if w["dom"]]
    comfy_page.shot("verdict-on-canvas")
    shown = [w for w in boxes if w["shown"] and w["text"] == report]
    assert shown, (f"check 'detector verdict shown on the node': its text boxes {boxes} do not show the run's "
                   f"report {report!r}")
    # the demo's prompt asks for blood: a person reads HARMFUL and the gore category on the node
    prompt = next(n for n in nodes if n["title"] == "Prompt")
    assert "bloody" in (comfy_page.widget_texts(prompt["id"])[0]["value"] or ""), "the demo prompt changed"
    assert "prompt judged: HARMFUL" in report and "category most implicated: gore" in report, report
    boolean = next(n for n in nodes if n["type"] == "PreviewAny" and n["title"].startswith("Harmful?"))
    values = [w["text"] if w["dom"] else w["value"] for w in comfy_page.widget_texts(boolean["id"])]
    assert any(str(v).strip().lower() == "true" for v in values), (
        f"check 'harmful BOOLEAN shown': {_label(boolean)} shows {values}")
