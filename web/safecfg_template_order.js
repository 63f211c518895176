// SafeCFG: list the pack's workflow templates in name order, so the runnable demo ("1 SafeCFG demo - ...") is first.
//
// ComfyUI's /workflow_templates route returns each pack's example_workflows/ file names in directory order (an
// unsorted glob), and the template browser shows them in that order, so without this the order a person sees
// depends on the file system. Both the pinned frontend (1.27) and newer ones (1.5x) read that route through one
// call, api.getWorkflowTemplates, and only when something first needs the list (the template browser, the
// first-run screen, a ?template= link), which is after every extension's `init`. Wrapping that call in `init`
// therefore sorts the list before anyone reads it, without changing ComfyUI. Only this pack's entry is sorted:
// other packs' entries are left exactly as the server sent them.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

// ComfyUI serves this file at /extensions/<pack folder>/<file> and keys the pack's templates by the same folder
// name (both are the folder's name under custom_nodes/), so the key is read from this module's own URL rather than
// fixed here: it follows however the pack's folder was named at install.
function packFolder() {
  const match = new URL(import.meta.url).pathname.match(/\/extensions\/([^/]+)\/[^/]+$/);
  return match ? decodeURIComponent(match[1]) : null;
}

// Natural order: the file names are numbered ("1 ...", "2 ..."), and "10 ..." must follow "9 ...".
const byName = (a, b) => a.localeCompare(b, "en", { numeric: true });

function sortOwnEntry(original, folder) {
  return async function (...args) {
    const templates = await original.apply(this, args);
    const own = templates?.[folder];
    if (Array.isArray(own)) templates[folder] = [...own].sort(byName);
    return templates;
  };
}

app.registerExtension({
  name: "SafeCFG.TemplateOrder",
  async init() {
    const folder = packFolder();
    const original = api.getWorkflowTemplates;
    if (!folder || typeof original !== "function") return; // not a frontend this was written for: change nothing
    api.getWorkflowTemplates = sortOwnEntry(original, folder);
  },
});
