"""Make the template thumbnails (``example_workflows/<template>.jpg``) from real runs of the templates.

    python example_workflows/tools/make_thumbnails.py [API_NAME ...]

Starts ComfyUI with the pack (the test harness's server: tests/comfy/conftest.py, the ComfyUI that tests/conftest.py
finds), runs each runnable template's API twin exactly as shipped, and tiles the images its Save Image nodes wrote:
the demo's plain CFG row above its SafeCFG row; the training template's loss curve and samples (with fewer
training steps, ``SHORTER``). A template that
cannot run on a fresh install (SD1.5: no checkpoint here) gets a card saying what it needs instead of pictures it
never made. Several minutes on a CPU (the training template trains its HGR).
"""
from __future__ import annotations

import importlib.util
import json
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List

from PIL import Image, ImageDraw, ImageFont

HERE = Path(__file__).resolve().parent
FOLDER = HERE.parent
REPO = FOLDER.parent
sys.path.insert(0, str(HERE))
from layouts import LAYOUTS  # noqa: E402

WIDTH = 512
# API twin -> the Save Image nodes to tile, one row each, with the row's label
ROWS: Dict[str, List[tuple]] = {
    "safecfg_demo_vs_cfg": [("9", "plain CFG"), ("12", "SafeCFG")],
    "train_hgr_demo": [("3", "")],
}
NEEDS = {"safecfg_sd15": "needs an SD1.5 checkpoint\nand an HGR trained for SD1.5",
         "safecfg_sdxl": "needs an SDXL checkpoint\nand an HGR trained for SDXL",
         "train_hgr_sd15": "needs an SD1.5 checkpoint\n(trains its HGR)",
         "train_hgr_sdxl": "needs an SDXL checkpoint\n(trains its HGR)",
         "safecfg_sd35": "needs an SD3.5 checkpoint\nand an HGR trained for SD3.5",
         "train_hgr_sd35": "needs an SD3.5 checkpoint\n(trains its HGR)"}
# Settings changed for the thumbnail run only: the shipped training (200 steps) takes over half an hour on a
# shared 2-core machine; 40 steps draw the same kind of loss curve and samples.
SHORTER = {"train_hgr_demo": {"2": {"steps": 40, "name": "thumbnail_hgr"}}}


def _load(name: str, path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def _row(images: List[Image.Image], label: str) -> Image.Image:
    """The images side by side, scaled to WIDTH (nearest: the demo's 64 px images stay crisp), label on top."""
    strip = Image.new("RGB", (sum(i.width for i in images), max(i.height for i in images)), "white")
    x = 0
    for im in images:
        strip.paste(im.convert("RGB"), (x, 0))
        x += im.width
    scale = WIDTH / strip.width
    strip = strip.resize((WIDTH, max(1, round(strip.height * scale))),
                         Image.NEAREST if scale >= 1 else Image.LANCZOS)
    if not label:
        return strip
    out = Image.new("RGB", (WIDTH, strip.height + 22), "#202020")
    ImageDraw.Draw(out).text((8, 5), label, fill="white")
    out.paste(strip, (0, 22))
    return out


def _stack(rows: List[Image.Image]) -> Image.Image:
    out = Image.new("RGB", (WIDTH, sum(r.height for r in rows)), "white")
    y = 0
    for r in rows:
        out.paste(r, (0, y))
        y += r.height
    return out


def _card(text: str) -> Image.Image:
    """For a template that cannot run here: the pack's icon with what it needs written over it."""
    icon = Image.open(REPO / "docs" / "icon.png").convert("RGB").resize((WIDTH, WIDTH), Image.NEAREST)
    card = icon.crop((0, WIDTH // 4, WIDTH, 3 * WIDTH // 4))
    draw = ImageDraw.Draw(card)
    draw.rectangle((0, 64, WIDTH, 192), fill="#202020")
    draw.multiline_text((24, 84), text, fill="white", spacing=12, font=ImageFont.load_default(size=28))
    return card


def _run(server: Any, name: str) -> Image.Image:
    api = json.loads((FOLDER / "api" / f"{name}.json").read_text())
    for node_id, inputs in SHORTER.get(name, {}).items():
        api[node_id]["inputs"].update(inputs)
    entry = server.run(api, timeout=3600.0)
    if not server.succeeded(entry):
        raise SystemExit(f"{name}: the run failed: {server.error_message(entry)}")
    rows = []
    for node_id, label in ROWS[name]:
        images = [Image.fromarray(a) for a in server.output_images(entry, node_id)]
        rows.append(_row(images, label))
    return _stack(rows)


def main(names: List[str]) -> int:
    names = names or sorted(LAYOUTS)
    found, why = _load("_safecfg_tests_conftest", REPO / "tests" / "conftest.py").locate_comfyui()
    if found is None:
        raise SystemExit(why)
    harness = _load("_safecfg_comfy_conftest", REPO / "tests" / "comfy" / "conftest.py")
    workdir = Path(tempfile.mkdtemp(prefix="safecfg-thumbnails-"))
    (workdir / "custom_nodes").mkdir()
    (workdir / "custom_nodes" / harness.PACK_LINK_NAME).symlink_to(REPO, target_is_directory=True)
    server = harness.ComfyServer(found, workdir)
    server.start()
    try:
        for name in names:
            if name not in ROWS and name not in NEEDS:
                print(f"skipped {name}: no recipe here (ROWS or NEEDS)")
                continue
            image = _card(NEEDS[name]) if name in NEEDS else _run(server, name)
            out = FOLDER / f"{LAYOUTS[name]['template']}.jpg"
            image.save(out, quality=88)
            print(f"wrote {out} {image.size}")
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
