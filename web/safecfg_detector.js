// SafeCFG: show the Harmfulness Detector's verdict on the node itself after a run.
//
// The node returns its report as a UI text output (`text`), which ComfyUI's frontend draws only for its own
// Preview Any and Save Text nodes. This extension gives the detector the same read-only text box, filled from that
// output, so the score, verdict and harm category are on the canvas without extra nodes. It uses only the
// public extension API (app.registerExtension, node.addDOMWidget), which both the pinned frontend and newer ones
// provide.
import { app } from "../../scripts/app.js";

const NODE_TYPE = "SafeCFGHarmfulnessDetector";
const WIDGET_NAME = "verdict";
const PLACEHOLDER = "Run the workflow: the harm score, verdict and category appear here.";

function addVerdictWidget(node) {
  const box = document.createElement("textarea");
  box.readOnly = true;
  box.placeholder = PLACEHOLDER;
  box.className = "comfy-multiline-input";
  box.dataset.safecfg = WIDGET_NAME;
  const widget = node.addDOMWidget(WIDGET_NAME, "customtext", box, {
    getValue: () => box.value,
    setValue: (v) => { box.value = v ?? ""; },
    getMinHeight: () => 96,
  });
  widget.serialize = false; // a result, not a setting: saved workflows keep only the real widgets' values
  return widget;
}

function showVerdict(node, message) {
  const text = message?.text;
  if (!text || !text.length) return;
  const widget = node.widgets?.find((w) => w.name === WIDGET_NAME) ?? addVerdictWidget(node);
  widget.value = Array.isArray(text) ? text.join("\n") : String(text);
  node.setDirtyCanvas?.(true, true);
}

app.registerExtension({
  name: "SafeCFG.DetectorVerdict",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== NODE_TYPE) return;
    // The box is added on the first result, not when the node is created: a DOM widget present while a saved
    // workflow is configured stopped the pinned frontend (1.27) from loading the images of other nodes after a run
    // (tests/frontend: test_demo_runs_from_run_button_and_shows_images).
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      showVerdict(this, message);
    };
  },
});
