"""The shipped real-model templates (example_workflows/api/: SafeCFG on SD1.5 and SDXL, training an HGR for each)
in the real server, against the random-weight checkpoints of tests/comfy/model_fixtures.py placed under the file
names the templates load (``v1-5-pruned-emaonly.safetensors``, ``sd_xl_base_1.0.safetensors``; the HGRs
``sd15_hgr.safetensors`` / ``sdxl_hgr.safetensors``).

The SafeCFG templates run end to end at test size: the latent is 64x64 pixels and the sampler takes 2 steps (the
shipped 512/1024 px and 25 steps are minutes per image on a CPU); every other node and widget is the template's.
The training templates run end to end too, with the cost knobs of their Train HGR (SafeCFG) lowered through its own
widgets (``run_training_template``): the ``quick`` preset on a prompt file of a few lines, with training images of
64 px instead of the family's 512 or 1024 (one SDXL row with gradients at 1024 px takes minutes on CI's CPU). The
HGR each saves is what the SafeCFG template loads; the fixture's HGRs are put back afterwards.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict

import pytest


from _family_graphs import assert_trained_by_template, place_files, run_ok, run_training_template, template_hgr

pytestmark = pytest.mark.slow

API = Path(__file__).resolve().parents[3] / "example_workflows" / "api"
CKPT_NAMES = {"sd15": "v1-5-pruned-emaonly.safetensors", "sdxl": "sd_xl_base_1.0.safetensors"}
HGR_NAMES = {"sd15": ("sd1", "sd15_hgr.safetensors"), "sdxl": ("sdxl", "sdxl_hgr.safetensors")}


def _template(name: str) -> Dict[str, Any]:
    return json.loads((API / f"{name}.json").read_text())


@pytest.fixture(scope="module")
def template_files(comfy_server, sd_checkpoint_files) -> None:
    """The checkpoints under the templates' names; per family an HGR of its preset size under the template's name,
    with non-zero output layers and a threshold of 0, so SafeCFG and the detector act on every prompt."""
    place_files(comfy_server.workdir / "models" / "checkpoints",
                [sd_checkpoint_files[f] for f in CKPT_NAMES], list(CKPT_NAMES.values()))
    for family, (hgr_family, name) in HGR_NAMES.items():
        template_hgr(hgr_family).save(comfy_server.hgr_dir / name)


@pytest.mark.parametrize("name,family", [("safecfg_sd15", "sd15"), ("safecfg_sdxl", "sdxl")])
def test_safecfg_template_runs_end_to_end(comfy_server, template_files, name, family):
    g = _template(name)
    assert g["1"]["inputs"]["ckpt_name"] == CKPT_NAMES[family] and g["10"]["inputs"]["hgr_name"] == HGR_NAMES[family][1]
    g["4"]["inputs"].update(width=64, height=64)  # test size (module docstring)
    g["5"]["inputs"]["steps"] = 2
    entry = run_ok(comfy_server, g)
    images = entry["outputs"]["7"]["images"]
    assert len(images) == 1 and (comfy_server.output_dir / images[0].get("subfolder", "") / images[0]["filename"]).is_file()
    report = entry["outputs"]["14"]["text"][0]
    assert "prompt judged: HARMFUL" in report, report  # the HGR under the template's name was loaded and judged


@pytest.mark.parametrize("name,family", [("train_hgr_sd15", "sd15"), ("train_hgr_sdxl", "sdxl")])
def test_training_template_trains_an_hgr_and_samples_with_it(comfy_server, template_files, name, family):
    g = _template(name)
    assert g["1"]["inputs"]["ckpt_name"] == CKPT_NAMES[family]
    hgr_family, hgr_name = HGR_NAMES[family]
    assert g["20"]["inputs"]["name"] + ".safetensors" == hgr_name  # what the SafeCFG template loads
    g["4"]["inputs"].update(width=64, height=64)  # test size (module docstring)
    g["5"]["inputs"]["steps"] = 2
    try:
        entry = run_training_template(comfy_server, g)
        widths = {"sd1": (768, 0), "sdxl": (2048, 1280)}[hgr_family]
        assert_trained_by_template(comfy_server, entry, hgr_name, (hgr_family, *widths))
    finally:  # the other tests here load the fixture's HGR under this name
        template_hgr(hgr_family).save(comfy_server.hgr_dir / hgr_name)
