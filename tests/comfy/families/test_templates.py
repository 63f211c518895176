"""The shipped real-model templates (example_workflows/api/: SafeCFG on SD1.5 and SDXL, training an HGR for each)
in the real server, against the random-weight checkpoints of tests/comfy/model_fixtures.py placed under the file
names the templates load (``v1-5-pruned-emaonly.safetensors``, ``sd_xl_base_1.0.safetensors``; the HGRs
``sd15_hgr.safetensors`` / ``sdxl_hgr.safetensors``).

The SafeCFG templates run end to end at test size: the latent is 64x64 pixels and the sampler takes 2 steps (the
shipped 512/1024 px and 25 steps are minutes per image on a CPU); every other node and widget is the template's.
The training templates cannot run end to end here: their Train HGR (SafeCFG) trains at the family's own size (512 or
1024 px; the node has no size input) and even the ``quick`` preset, with a prompt file of a few lines, trains 40
steps of 8 rows with gradients through the model and encodes about 130 prompts (calibration and dressed prompts come
from the built-in corpus whatever the file): hours on CI's CPU, where one SDXL row with gradients at 1024 px takes
minutes. So for them the server must accept the whole graph (ComfyUI validates every node, link, widget value and
file name when a prompt is queued); the prompt is then taken off the queue before it starts. Training through the
same stock-loaded checkpoints is test_sd_families.py's ``test_train_hgr_through_the_stock_loaded_model`` (the
advanced node at test size).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict

import pytest


from _family_graphs import assert_accepted_without_running, place_files, run_ok, template_hgr

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
def test_training_template_is_accepted_by_the_server(comfy_server, template_files, name, family):
    """ComfyUI validates a whole prompt when it is queued (node types, links, widget values, file names against
    the folders), so the template is queued behind a running graph and taken off the queue before it starts."""
    g = _template(name)
    assert g["1"]["inputs"]["ckpt_name"] == CKPT_NAMES[family]
    assert g["20"]["inputs"]["name"] + ".safetensors" == HGR_NAMES[family][1]  # what the SafeCFG template loads
    blocker = _template(f"safecfg_{family}")
    blocker["4"]["inputs"].update(width=64, height=64)
    blocker["5"]["inputs"]["steps"] = 2
    assert_accepted_without_running(comfy_server, g, blocker)
