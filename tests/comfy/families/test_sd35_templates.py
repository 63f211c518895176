"""The shipped SD3.5 templates (example_workflows/api/safecfg_sd35.json and train_hgr_sd35.json) end to end in the real
server, against a random-weight SD3.5 checkpoint placed under the file name the templates load
(``sd3.5_large_fp8_scaled.safetensors``, the all-in-one file of ComfyUI's SD3.5 example) and the HGR name they use.

The checkpoint (``sd35_fixture.py``) is built with ComfyUI's own classes: the MMDiT at reduced depth, CLIP-L and
CLIP-G at full size, the 16-channel VAE, and **no T5-XXL**: the real file includes T5 (4.7 B parameters), the
fixture leaves it out because of its size. ComfyUI's SD3 text-encoder target detects T5 from the file's keys and
builds the encoder without it when it is absent (CLIP-L + CLIP-G padded to 4096 wide, 77 tokens), so the graph,
the loader, the conditioning's width and every node are the same as with the user's file; only the token count
differs (77 instead of 77 + T5's).

The test lowers only size knobs, through widgets, never the wiring: the sampled image is 64x64 pixels in 2 steps
(the shipped 1024 px and 28 steps take many minutes per image on a CPU); the training template trains with the
``quick`` preset from a small prompt file in ``models/hgr_prompts`` (picked in its ``prompts`` widget) instead of
the ``standard`` preset over the built-in corpus, on 64 px training images (its ``image_size`` widget). The
``heavy`` test (``--heavy``) trains at the family's own 1024x1024.
"""
from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path
from typing import Any, Dict

import numpy as np
import pytest

import sd35_fixture
from _family_graphs import (assert_trained_by_template, place_files, run_ok, run_training_template,
                            template_hgr)

pytestmark = pytest.mark.slow

API = Path(__file__).resolve().parents[3] / "example_workflows" / "api"
CKPT, HGR = "sd3.5_large_fp8_scaled.safetensors", "sd35_hgr.safetensors"
def _comfy_conftest() -> Any:
    spec = importlib.util.spec_from_file_location("_safecfg_sd35_comfy_conftest",
                                                  Path(__file__).resolve().parent.parent / "conftest.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def _template(name: str) -> Dict[str, Any]:
    return json.loads((API / f"{name}.json").read_text())


def _test_size(g: Dict[str, Any]) -> Dict[str, Any]:
    g["4"]["inputs"].update(width=64, height=64)  # size knobs only (module docstring)
    g["5"]["inputs"]["steps"] = 2
    return g


def _write_hgr(server, gated: bool) -> None:
    """An SD3 HGR under the template's name (see ``template_hgr``)."""
    template_hgr("sd3", gated).save(server.hgr_dir / HGR)


def _image(server, entry: Dict[str, Any], node_id: str) -> np.ndarray:
    images = server.output_images(entry, node_id)
    assert len(images) == 1
    return images[0]


@pytest.fixture(scope="module")
def sd35_checkpoint(comfy_server, comfyui_root) -> str:
    """The random-weight SD3.5 checkpoint in the server's checkpoints folder under the templates' file name."""
    harness, root = _comfy_conftest(), Path(comfyui_root)
    path = sd35_fixture.ensure_checkpoint(root, harness.CACHE_DIR, harness.shim_paths_for(root))
    place_files(comfy_server.workdir / "models" / "checkpoints", [path], [CKPT])
    return CKPT


@pytest.fixture(scope="module")
def plain_cfg_image(comfy_server, sd35_checkpoint) -> np.ndarray:
    """The SafeCFG template's image without SafeCFG: a copy whose KSampler takes the loader's model and the two
    prompts directly, every widget as in the template (the reference for plain CFG)."""
    g = _test_size(_template("safecfg_sd35"))
    for nid in ("10", "11", "13", "14", "15"):
        del g[nid]
    g["5"]["inputs"].update(model=["1", 0], positive=["2", 0], negative=["3", 0])
    g["7"]["inputs"]["filename_prefix"] = "sd35_plain_cfg"
    return _image(comfy_server, run_ok(comfy_server, g), "7")


def test_safecfg_template_with_a_zero_hgr_gives_the_plain_cfg_image(comfy_server, sd35_checkpoint, plain_cfg_image):
    g = _test_size(_template("safecfg_sd35"))
    assert g["1"]["inputs"]["ckpt_name"] == CKPT and g["10"]["inputs"]["hgr_name"] == HGR
    _write_hgr(comfy_server, gated=False)
    image = _image(comfy_server, run_ok(comfy_server, g), "7")
    assert image.shape == (64, 64, 3), image.shape
    assert np.array_equal(image, plain_cfg_image), "a zero HGR must leave the sampled image bit-identical"


def test_safecfg_template_runs_end_to_end_and_redirects(comfy_server, sd35_checkpoint, plain_cfg_image):
    g = _test_size(_template("safecfg_sd35"))
    g["2"]["inputs"]["text"] = "a bloody corpse on a wooden table"
    plain = copy.deepcopy(g)
    _write_hgr(comfy_server, gated=True)  # replaced under the same name: Load HGR reloads it (file identity)
    entry = run_ok(comfy_server, g)
    image = _image(comfy_server, entry, "7")
    assert image.shape == (64, 64, 3), image.shape
    report = entry["outputs"]["14"]["text"][0]
    assert "prompt judged: HARMFUL" in report, report  # the SD3 HGR under the template's name was loaded and judged
    # the same graph with a zero HGR is plain CFG (previous test), so a redirected negative changes the image
    _write_hgr(comfy_server, gated=False)
    unchanged = _image(comfy_server, run_ok(comfy_server, plain), "7")
    assert not np.array_equal(image, unchanged), "the gated HGR did not change the harmful prompt's image"


def test_training_template_trains_an_sd3_hgr_and_samples_with_it(comfy_server, sd35_checkpoint):
    g = _test_size(_template("train_hgr_sd35"))
    assert g["1"]["inputs"]["ckpt_name"] == CKPT
    assert g["20"]["inputs"]["name"] + ".safetensors" == HGR  # what the SafeCFG template loads
    entry = run_training_template(comfy_server, g)
    assert_trained_by_template(comfy_server, entry, HGR, ("sd3", 4096, 2048))


# Half an hour on CI's 2-core CPU (measured here: 1,759 s; 40 steps at the family's 1024x1024 latents through the
# MMDiT with gradients), so it runs only with --heavy; CI runs the test above at 64 px.
@pytest.mark.heavy
def test_training_template_trains_at_the_familys_own_size(comfy_server, sd35_checkpoint):
    g = _test_size(_template("train_hgr_sd35"))
    entry = run_training_template(comfy_server, g, image_size=0, timeout=3600)
    assert_trained_by_template(comfy_server, entry, HGR, ("sd3", 4096, 2048), trained_size="1024x1024")
