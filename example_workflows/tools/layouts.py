"""Hand layouts of the pack's templates: where each node sits, its size, the groups and the Note.

``api_to_ui.py`` builds each UI template from its API twin (``example_workflows/api/<api name>.json``) and this
table. Positions and sizes are in canvas pixels; every size is at least what the frontend computes for the node
(1.27 and 1.5x: KSampler 262 px high, Harmfulness Detector 322 with its verdict box, Train HGR 572), so nothing
grows into a neighbour when the workflow opens. The browser test (tests/frontend, "no two nodes overlap") checks
that on the live graph.

A template's file name is what the template browser shows as its title, and the templates are named so that
they sort in the order a new user should try them: the runnable demos first.
"""
from __future__ import annotations

from typing import Dict, List, Tuple, TypedDict

Box = Tuple[int, int, int, int]  # x, y, width, height


class Group(TypedDict):
    title: str
    box: Box
    color: str


class Layout(TypedDict):
    template: str  # the UI file's name (without .json) in example_workflows/: the template browser's title
    nodes: Dict[str, Box]  # API node id -> box
    groups: List[Group]
    note: Tuple[Box, str]  # a MarkdownNote: what to look at


BLUE, GREEN, RED, GRAY, PURPLE = "#3f789e", "#3f7e4a", "#8a3b3b", "#444444", "#6a4a8a"

_DEMO_NOTE = """## SafeCFG demo: plain CFG vs SafeCFG

Press **Run** (about a minute on a CPU; the demo model is built in, nothing to download).

The same prompt and seed are sampled twice:
- **top lane**: plain CFG draws what the prompt asks for, the harm included (blood);
- **bottom lane**: the **SafeCFG** node redirects the negative prompt with the HGR from **Load HGR**, so the harm
  is gone while the shape, colour and background stay.

**Harmfulness Detector** (bottom): after the run it shows the harm score, the verdict and the harm category on
the node. Its `harmful` output is a BOOLEAN you can branch on (shown in the small preview next to it).

Try a clean prompt such as `a blue circle on white`, or a weapon: `a knife next to a green star on gray`."""

_TRAIN_NOTE = """## Train your own HGR on the demo model

Press **Run** to train a Harmful Guidance Redirector (a few minutes on a CPU) for the harm concepts in
**Train HGR** (`category: words` per line). It is saved to `models/hgr/` under the name you give, so
**Load HGR** in the demo template lists it afterwards.

**Loss curve and samples** shows the training loss and sample images drawn with the new HGR."""

_SD15_NOTE = """## SafeCFG on a Stable Diffusion 1.5 checkpoint

This one does **not** run on a fresh install: it needs an SD1.5 checkpoint in `models/checkpoints/` and an HGR
trained for SD1.5 in `models/hgr/` (train one with **Train HGR** on that checkpoint). Pick both in the
loaders, then press **Run**.

The wiring is the demo's: **SafeCFG** sits between the prompts and the KSampler; the **Harmfulness Detector**
shows its verdict on the node after the run and gives a BOOLEAN `harmful` output for branching."""

LAYOUTS: Dict[str, Layout] = {
    "safecfg_demo_vs_cfg": {
        "template": "1 SafeCFG demo - plain CFG vs SafeCFG",
        "note": ((20, 20, 860, 310), _DEMO_NOTE),
        "nodes": {
            "1": (40, 420, 300, 110), "4": (40, 580, 300, 130),
            "2": (380, 420, 480, 150), "3": (380, 610, 480, 110),
            "10": (960, 420, 340, 80), "11": (960, 540, 340, 230),
            "5": (1380, 90, 320, 262), "7": (1740, 90, 200, 50), "9": (1980, 90, 320, 262),
            "6": (1380, 460, 320, 262), "8": (1740, 460, 200, 50), "12": (1980, 460, 320, 262),
            "13": (960, 900, 340, 330), "14": (1340, 900, 460, 190), "15": (1340, 1130, 300, 130),
        },
        "groups": [
            {"title": "Model, prompts, image size", "box": (20, 340, 880, 410), "color": GRAY},
            {"title": "SafeCFG: redirect the negative", "box": (940, 340, 380, 450), "color": GREEN},
            {"title": "Plain CFG", "box": (1360, 20, 960, 340), "color": RED},
            {"title": "SafeCFG (same seed)", "box": (1360, 390, 960, 340), "color": GREEN},
            {"title": "Harm judgement (Harmfulness Detector)", "box": (940, 820, 880, 460), "color": PURPLE},
        ],
    },
    "train_hgr_demo": {
        "template": "2 SafeCFG demo - train your own HGR",
        "note": ((20, 20, 560, 250), _TRAIN_NOTE),
        "nodes": {"1": (40, 340, 300, 110), "2": (380, 340, 420, 640), "3": (840, 340, 460, 460)},
        "groups": [
            {"title": "Train an HGR on the demo model", "box": (20, 280, 1300, 720), "color": BLUE},
        ],
    },
    "safecfg_sd15": {
        "template": "3 SafeCFG on SD1.5 (needs a checkpoint and an SD1.5 HGR)",
        "note": ((20, 20, 860, 250), _SD15_NOTE),
        "nodes": {
            "1": (40, 360, 300, 130), "4": (40, 540, 300, 130),
            "2": (380, 360, 480, 150), "3": (380, 550, 480, 110),
            "10": (960, 360, 340, 80), "11": (960, 480, 340, 230),
            "5": (1380, 360, 320, 262), "6": (1740, 360, 200, 50), "7": (1980, 360, 420, 460),
            "13": (960, 840, 340, 330), "14": (1340, 840, 460, 190), "15": (1340, 1070, 300, 130),
        },
        "groups": [
            {"title": "Checkpoint, prompts, image size", "box": (20, 280, 880, 410), "color": GRAY},
            {"title": "SafeCFG: redirect the negative", "box": (940, 280, 380, 450), "color": GREEN},
            {"title": "Sample and save", "box": (1360, 280, 1060, 560), "color": BLUE},
            {"title": "Harm judgement (Harmfulness Detector)", "box": (940, 760, 880, 460), "color": PURPLE},
        ],
    },
}

# The real-model family templates (family_layouts.py) import the colours and types above, so they are
# merged in last.
from family_layouts import FAMILY_LAYOUTS  # noqa: E402

LAYOUTS.update(FAMILY_LAYOUTS)
