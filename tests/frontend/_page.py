"""A ComfyUI frontend page as a person uses it, driven with Playwright: what the checks in this folder read.

Everything here reads the live page (the LiteGraph graph the frontend built, the DOM it shows, the console it
writes), never the workflow files or the pack's Python, so a check fails exactly when a person would see the fault.
Each state a check looks at is also saved as a screenshot, numbered in the order it was taken.
"""
from __future__ import annotations

import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

# Pack-attribution: console output counts as the pack's when it is served from the pack's web directory (ComfyUI
# serves it under /extensions/<custom-node folder>/) or names the pack (its folder name or its node ids all
# contain "safecfg"). The frontend's own 404s for user.css, templates and the like are not the pack's.
PACK_TEXT = re.compile(r"safecfg", re.IGNORECASE)

# The live graph's nodes: what the frontend built, after it sized each node (computeSize on configure).
GRAPH_NODES_JS = """() => {
  const g = window.app.graph;
  return g._nodes.map((n) => {
    const b = n.getBounding ? Array.from(n.getBounding()) : Array.from(n.boundingRect);
    return {
      id: String(n.id), type: n.type, title: n.title, pos: Array.from(n.pos), size: Array.from(n.size),
      bounding: b, collapsed: !!(n.flags && n.flags.collapsed), mode: n.mode,
      registered: !!window.LiteGraph.registered_node_types[n.type],
      widgets: (n.widgets || []).map((w) => ({
        name: w.name, type: w.type, y: (w.last_y ?? w.y ?? null),
        height: (w.computedHeight
                 ?? (w.computeSize ? w.computeSize(n.size[0])[1] : window.LiteGraph.NODE_WIDGET_HEIGHT)),
        hidden: !!(w.hidden || (w.options && w.options.hidden) || w.type === 'hidden' || w.type === 'converted-widget'),
      })),
    };
  });
}"""

# Output images the frontend shows on a node: the <img> elements it loaded for the node's preview.
NODE_IMAGES_JS = """(id) => {
  const n = window.app.graph.getNodeById(isNaN(Number(id)) ? id : Number(id)) || window.app.graph.getNodeById(id);
  if (!n) return null;
  return (n.imgs || []).map((img) => ({src: img.src, complete: img.complete, width: img.naturalWidth,
                                       height: img.naturalHeight}));
}"""


@dataclass
class ConsoleEntry:
    """One console message or uncaught page error, with the URL of the script or resource it came from."""

    kind: str
    text: str
    url: str

    def from_pack(self, pack_folder: str) -> bool:
        return f"/extensions/{pack_folder}/" in self.url or bool(PACK_TEXT.search(self.text + " " + self.url))

    def __str__(self) -> str:
        return f"[{self.kind}] {self.text} ({self.url or 'no url'})"


@dataclass
class ComfyPage:
    """A Playwright page on a ComfyUI server, with screenshots and the console recorded."""

    page: Any
    base_url: str
    shots_dir: Path
    pack_folder: str
    console: List[ConsoleEntry] = field(default_factory=list)
    _shot_no: int = 0

    def __post_init__(self) -> None:
        self.page.on("console", self._on_console)
        self.page.on("pageerror", lambda exc: self.console.append(
            ConsoleEntry("pageerror", f"{exc}\n{getattr(exc, 'stack', '') or ''}", "")))

    def _on_console(self, msg: Any) -> None:
        loc = msg.location or {}
        self.console.append(ConsoleEntry(msg.type, msg.text, loc.get("url", "")))

    # -- recording -------------------------------------------------------------------------------------------
    def begin_test(self, shots_dir: Path) -> None:
        """Start a test: its screenshots go to a fresh ``shots_dir``, numbered from 01; leftover dialogs close."""
        shutil.rmtree(shots_dir, ignore_errors=True)
        self.shots_dir = shots_dir
        self._shot_no = 0
        self.close_dialogs()

    def shot(self, state: str) -> Path:
        """Save a screenshot of the whole window as ``NN-<state>.png`` in this test's folder."""
        self._shot_no += 1
        self.shots_dir.mkdir(parents=True, exist_ok=True)
        path = self.shots_dir / f"{self._shot_no:02d}-{re.sub(r'[^A-Za-z0-9_.-]+', '_', state)}.png"
        self.page.screenshot(path=str(path), timeout=90_000)  # slow when the CPUs are shared
        return path

    def pack_errors(self, since: int = 0) -> List[ConsoleEntry]:
        """Console errors, warnings and uncaught exceptions since entry ``since`` that come from the pack."""
        return [e for e in self.console[since:]
                if e.kind in ("error", "warning", "pageerror") and e.from_pack(self.pack_folder)]

    # -- navigation ------------------------------------------------------------------------------------------
    def open(self, timeout_ms: int = 120_000) -> None:
        """Load the frontend and wait until the app, its graph and every node definition are ready."""
        self.page.goto(self.base_url)
        self.page.wait_for_function(
            "() => window.app && window.app.graph && window.app.canvas && window.LiteGraph"
            " && Object.keys(window.LiteGraph.registered_node_types).length > 100", timeout=timeout_ms)
        self.settle()

    def settle(self, frames: int = 3) -> None:
        """Let the frontend draw a few frames: node sizes, widget positions and images are set while drawing."""
        self.page.evaluate("window.app.canvas.setDirty(true, true)")
        self.page.evaluate(
            "(n) => new Promise((ok) => { const step = (k) => k ? requestAnimationFrame(() => step(k - 1)) : ok();"
            " step(n); })", frames)
        time.sleep(0.3)  # Vue dialogs and toasts appear on the next tick after the graph settles

    def frontend_version(self) -> str:
        return self.page.evaluate("() => window.__COMFYUI_FRONTEND_VERSION__ || ''")

    def registered_types(self) -> List[str]:
        return self.page.evaluate("() => Object.keys(window.LiteGraph.registered_node_types)")

    def load_workflow(self, data: Dict[str, Any]) -> None:
        """Open ``data`` as the frontend does when a user opens a workflow file, and fit it into the window."""
        self.page.evaluate("async (d) => { await window.app.loadGraphData(d, true, true); }", data)
        self.settle()

    def graph_nodes(self) -> List[Dict[str, Any]]:
        return self.page.evaluate(GRAPH_NODES_JS)

    def notices(self) -> List[str]:
        """Texts of the dialogs and notices now shown: PrimeVue dialogs and toasts (1.27), reka-ui dialogs and
        status toasts (1.5x, which reports missing nodes in a toast rather than a dialog)."""
        return self.page.evaluate("""() => Array.from(document.querySelectorAll(
                '.p-dialog, [role=dialog], [role=alertdialog], [role=alert], [role=status], .p-toast-message'))
            .filter((e) => e.getClientRects().length > 0)
            .map((e) => e.innerText.trim()).filter((t) => t.length > 0)""")

    def close_dialogs(self) -> None:
        for _ in range(3):
            if not self.notices():
                return
            self.page.keyboard.press("Escape")
            time.sleep(0.3)

    def node_images(self, node_id: str) -> Optional[List[Dict[str, Any]]]:
        return self.page.evaluate(NODE_IMAGES_JS, node_id)

    def wait_for_node_images(self, node_id: str, files: List[str], timeout_ms: int = 30_000) -> bool:
        """Wait until node ``node_id`` shows every one of ``files`` as a loaded image; False if it never does."""
        try:
            self.page.wait_for_function(
                "([id, files]) => { const g = window.app.graph; const n = g.getNodeById(Number(id)) ||"
                " g.getNodeById(id) || {}; const imgs = n.imgs || []; return files.every((f) => imgs.some("
                "(i) => i.complete && i.naturalWidth > 0 && i.src.includes(encodeURIComponent(f)))); }",
                arg=[node_id, files], timeout=timeout_ms)
        except Exception as exc:  # Playwright's TimeoutError: the caller reports which node shows what
            if "Timeout" not in type(exc).__name__:
                raise
            return False
        return True

    def widget_texts(self, node_id: str) -> List[Dict[str, Any]]:
        """Each widget of node ``node_id``: its name, value, and for a DOM widget (a text box) whether its element is
        shown on the page and the text it shows."""
        return self.page.evaluate(
            "(id) => { const g = window.app.graph; const n = g.getNodeById(Number(id)) || g.getNodeById(id);"
            " return ((n && n.widgets) || []).map((w) => { const el = w.element || w.inputEl || null;"
            " return {name: w.name, value: (typeof w.value === 'string' || typeof w.value === 'boolean')"
            " ? String(w.value) : null, dom: !!el, shown: !!el && el.getClientRects().length > 0"
            " && getComputedStyle(el).visibility !== 'hidden' && getComputedStyle(el).display !== 'none',"
            " text: el ? (el.value ?? el.innerText ?? '') : null}; }); }", node_id)

    def template_cards(self, module: str) -> Dict[str, Any]:
        """Open the template browser as a person does (the Browse Templates command), pick ``module`` under the
        custom-node templates, and return what it shows: the dialog's text and each thumbnail <img> (alt, src,
        loaded size). Both 1.27 and 1.5x give a custom template's card image the template's name as alt text."""
        self.page.evaluate("() => window.app.extensionManager.command.execute('Comfy.BrowseTemplates')")
        self.page.get_by_text(module, exact=True).first.click(timeout=15_000)
        time.sleep(2.0)  # cards render, then their thumbnails load
        self.shot(f"templates-{module}")
        shown = self.page.evaluate(
            "() => { const d = Array.from(document.querySelectorAll('[role=dialog]')).filter((e) =>"
            " e.getClientRects().length > 0).pop(); if (!d) return null; return {text: d.innerText,"
            " images: Array.from(d.querySelectorAll('img')).map((i) => ({alt: i.alt, src: i.currentSrc || i.src,"
            " width: i.naturalWidth, complete: i.complete}))}; }")
        self.page.keyboard.press("Escape")
        time.sleep(0.3)
        return shown or {"text": "", "images": []}

    def workflow_templates(self) -> Dict[str, List[str]]:
        """The custom nodes' templates as the frontend reads them (``api.getWorkflowTemplates()``, the one call through
        which both 1.27 and 1.5x fetch /workflow_templates): custom-node folder -> template names, in listed order."""
        return self.page.evaluate("async () => await window.comfyAPI.api.api.getWorkflowTemplates()")

    def run_button(self) -> Any:
        """The Run (queue prompt) button of the top bar, as a person finds it: a button labelled Run."""
        button = self.page.get_by_role("button", name=re.compile(r"^\s*Run\s*$")).first
        button.wait_for(state="visible", timeout=10_000)
        return button

    # -- node search -----------------------------------------------------------------------------------------
    def search_nodes(self, query: str) -> List[str]:
        """Open the node search box on an empty canvas (double-click), type ``query``, return the listed entries."""
        self.page.evaluate("() => { window.app.graph.clear(); }")
        self.settle()
        canvas = self.page.locator("#graph-canvas").first
        box = canvas.bounding_box()
        search = self.page.locator(".comfy-vue-node-search-container input, [role=dialog] input[type=text],"
                                   " .node-search-box input").first
        # a double-click that lands while a toast fades, or while the canvas is still busy after the clear, is taken
        # as two single clicks: try again a few times, at another empty spot, after the page settles
        spots = ((0.45, 0.55), (0.55, 0.45), (0.35, 0.65), (0.6, 0.6))
        for attempt, (fx, fy) in enumerate(spots):
            if attempt:
                self.page.keyboard.press("Escape")
                self.settle()
                self.page.wait_for_timeout(500)
            self.page.mouse.dblclick(box["x"] + box["width"] * fx, box["y"] + box["height"] * fy)
            try:
                search.wait_for(state="visible", timeout=5_000)
                break
            except Exception as exc:
                if "Timeout" not in type(exc).__name__:
                    raise
                self.shot(f"search-box-did-not-open-{attempt}")
        else:
            raise AssertionError("check 'node search': double-clicking the empty canvas opened no search box")
        search.fill(query)
        time.sleep(1.0)  # the result list is debounced
        items = self.page.locator(".p-autocomplete-option, [role=option], .option-container")
        texts = [t.strip() for t in items.all_inner_texts() if t.strip()]
        self.shot(f"search-{query}")
        self.page.keyboard.press("Escape")
        time.sleep(0.3)
        return texts
