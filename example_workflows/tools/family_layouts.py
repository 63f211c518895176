"""Hand layouts of the real-model family templates (SDXL, SD3.5; training an HGR for SD1.5, SDXL and SD3.5), in
the form of ``layouts.py``, which merges them into ``LAYOUTS``. The file names in the Notes are the ones the API
twins load and ``tests/comfy/families/test_templates.py`` / ``test_sd35_templates.py`` run them against
(random-weight checkpoints under those names).
"""
from __future__ import annotations

from typing import Dict

from layouts import BLUE, GRAY, GREEN, PURPLE, Box, Layout

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

The lower lane samples the prompt with the new HGR in **SafeCFG**.{extra}"""

_SD35_FILE = ("the all-in-one SD3.5 Large file of ComfyUI's SD3.5 example (MMDiT, CLIP-L, CLIP-G, T5-XXL and the VAE "
              "in one file, from Comfy-Org/stable-diffusion-3.5-fp8), or SD3.5 Medium's "
              "`sd3.5_medium_incl_clips_t5xxlfp8scaled.safetensors`")
_SD35_CI = ("The pack's CI runs this graph on a random-weight SD3.5 checkpoint built with ComfyUI's own classes that "
            "leaves T5-XXL out (4.7 B parameters; without it ComfyUI encodes with CLIP-L + CLIP-G only): the "
            "real file includes T5, the graph is the same.")

_SD35_NOTE = f"""## SafeCFG on a Stable Diffusion 3.5 checkpoint

Needs two files (this template does **not** run on a fresh install):
- `models/checkpoints/sd3.5_large_fp8_scaled.safetensors`: {_SD35_FILE} (pick it in **SD3.5 checkpoint**). A file
  without text encoders (`sd3.5_large.safetensors`) needs ComfyUI's TripleCLIPLoader instead;
- `models/hgr/sd35_hgr.safetensors`: an HGR trained for that checkpoint (template **8 Train an HGR for SD3.5**
  writes it under this name).

EmptySD3LatentImage 1024x1024 and euler / sgm_uniform as in ComfyUI's SD3.5 example (the checkpoint brings its
shift of 3); 28 steps at cfg 4.5 (raise the steps to 40 for SD3.5 Medium). **SafeCFG** sits between the prompts
and the KSampler and redirects the whole token sequence (CLIP and T5); an HGR trained for another family is refused
before sampling, naming both.
{_SD35_CI}"""


def _shift(layout: Layout, dy: int, note: Box) -> Layout:
    """``layout`` with its nodes and groups moved down by ``dy`` (room for a longer Note in box ``note``)."""
    return {
        "template": layout["template"],
        "note": (note, layout["note"][1]),
        "nodes": {k: (x, y + dy, w, h) for k, (x, y, w, h) in layout["nodes"].items()},
        "groups": [{**g, "box": (g["box"][0], g["box"][1] + dy, g["box"][2], g["box"][3])} for g in layout["groups"]],
    }


def _train_layout(template: str, family: str, ckpt: str, size: int, hgr: str, extra: str = "") -> Layout:
    layout: Layout = {
        "template": template,
        "note": ((20, 20, 860, 270), _TRAIN_NOTE.format(family=family, ckpt=ckpt, size=size, hgr=hgr, extra=extra)),
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
    return _shift(layout, 110, (20, 20, 960, 380)) if extra else layout


_SDXL_LAYOUT: Layout = {
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
}
_SD35_LAYOUT = _shift({**_SDXL_LAYOUT, "template": "7 SafeCFG on SD3.5 (needs a checkpoint and an SD3.5 HGR)",
                       "note": ((0, 0, 0, 0), _SD35_NOTE),
                       "groups": [{**g, "title": g["title"].replace("SDXL", "SD3.5")} for g in _SDXL_LAYOUT["groups"]]},
                      110, (20, 20, 960, 380))


FAMILY_LAYOUTS: Dict[str, Layout] = {
    "safecfg_sdxl": _SDXL_LAYOUT,
    "train_hgr_sdxl": _train_layout("6 Train an HGR for SDXL (needs a checkpoint)", "SDXL",
                                    "sd_xl_base_1.0.safetensors", 1024, "sdxl_hgr"),
    "train_hgr_sd15": _train_layout("5 Train an HGR for SD1.5 (needs a checkpoint)", "SD1.5",
                                    "v1-5-pruned-emaonly.safetensors", 512, "sd15_hgr"),
    "safecfg_sd35": _SD35_LAYOUT,
    "train_hgr_sd35": _train_layout("8 Train an HGR for SD3.5 (needs a checkpoint)", "SD3.5",
                                    "sd3.5_large_fp8_scaled.safetensors", 1024, "sd35_hgr",
                                    extra=f"\n\nThe checkpoint is {_SD35_FILE}; set `cfg` on **Train HGR** to the "
                                          f"cfg you sample with (4.5 here, as in template 7). "
                                          f"{_SD35_CI}"),
}
