"""Hand layouts of the real-model family templates (SDXL; training an HGR for SD1.5 and SDXL), in the form of
``layouts.py``, which merges them into ``LAYOUTS``. The file names in the Notes are the ones the API twins load
and ``tests/comfy/families/test_templates.py`` runs them against (random-weight checkpoints under those names).
"""
from __future__ import annotations

from typing import Dict

from layouts import BLUE, GRAY, GREEN, PURPLE, Layout

_SDXL_NOTE = """## SafeCFG on a Stable Diffusion XL checkpoint

Needs two files (this template does **not** run on a fresh install):
- `models/checkpoints/sd_xl_base_1.0.safetensors`: SDXL base, or any SDXL fine-tune (pick it in **SDXL checkpoint**);
- `models/hgr/sdxl_hgr.safetensors`: an HGR trained for that checkpoint (template **6 Train an HGR for SDXL**
  writes it under this name).

An SD1.5 HGR is refused on an SDXL model before sampling (the message names both). The wiring is the demo's:
**SafeCFG** sits between the prompts and the KSampler (cfg above 1); the **Harmfulness Detector** shows its
verdict after the run and gives a BOOLEAN `harmful` output for branching."""

_TRAIN_NOTE = """## Train an HGR for your {family} checkpoint, then sample with it

Needs one file: `models/checkpoints/{ckpt}` ({family}, or a fine-tune of it; pick it in **{family} checkpoint**).

**Train HGR** trains from the built-in prompt corpus with the `standard` preset at {size}x{size} pixels (the
family's own size; well under an hour on one GPU for SD1.5, longer for SDXL) and saves
`models/hgr/{hgr}.safetensors`, which the **SafeCFG on {family}** template loads. Running again reuses the trained
file (set `retrain` to train anew); Cancel keeps a checkpoint that the next run resumes. The **Training report**
says whether the HGR is good (held-out clean prompts left identical, harmful prompts redirected).

The lower lane samples the prompt with the new HGR in **SafeCFG**."""


def _train_layout(template: str, family: str, ckpt: str, size: int, hgr: str) -> Layout:
    return {
        "template": template,
        "note": ((20, 20, 860, 270), _TRAIN_NOTE.format(family=family, ckpt=ckpt, size=size, hgr=hgr)),
        "nodes": {
            "1": (40, 380, 300, 130), "20": (380, 380, 420, 430), "21": (840, 380, 360, 320),
            "22": (1240, 380, 460, 320),
            "2": (40, 940, 480, 150), "3": (40, 1130, 480, 110), "4": (560, 940, 300, 130),
            "11": (900, 940, 340, 230), "5": (1280, 940, 320, 262), "6": (1640, 940, 200, 50),
            "7": (1640, 1030, 420, 460),
        },
        "groups": [
            {"title": f"Train an HGR for this {family} checkpoint", "box": (20, 320, 1700, 520), "color": BLUE},
            {"title": "Sample with the new HGR", "box": (20, 880, 2060, 640), "color": GREEN},
        ],
    }


FAMILY_LAYOUTS: Dict[str, Layout] = {
    "safecfg_sdxl": {
        "template": "4 SafeCFG on SDXL (needs a checkpoint and an SDXL HGR)",
        "note": ((20, 20, 860, 270), _SDXL_NOTE),
        "nodes": {
            "1": (40, 380, 300, 130), "4": (40, 560, 300, 130),
            "2": (380, 380, 480, 150), "3": (380, 570, 480, 110),
            "10": (960, 380, 340, 80), "11": (960, 500, 340, 230),
            "5": (1380, 380, 320, 262), "6": (1740, 380, 200, 50), "7": (1980, 380, 420, 460),
            "13": (960, 860, 340, 330), "14": (1340, 860, 460, 190), "15": (1340, 1090, 300, 130),
        },
        "groups": [
            {"title": "SDXL checkpoint, prompts, image size", "box": (20, 320, 880, 390), "color": GRAY},
            {"title": "SafeCFG: redirect the negative", "box": (940, 320, 380, 430), "color": GREEN},
            {"title": "Sample and save", "box": (1360, 320, 1060, 540), "color": BLUE},
            {"title": "Harm judgement (Harmfulness Detector)", "box": (940, 800, 880, 440), "color": PURPLE},
        ],
    },
    "train_hgr_sdxl": _train_layout("6 Train an HGR for SDXL (needs a checkpoint)", "SDXL",
                                    "sd_xl_base_1.0.safetensors", 1024, "sdxl_hgr"),
    "train_hgr_sd15": _train_layout("5 Train an HGR for SD1.5 (needs a checkpoint)", "SD1.5",
                                    "v1-5-pruned-emaonly.safetensors", 512, "sd15_hgr"),
}
