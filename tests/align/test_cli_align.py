"""``python -m safecfg_core align`` on the demo model: writes a LoRA ComfyUI's keys name, never replaces a file
unasked, and resumes its checkpoint."""
from __future__ import annotations

import pytest
from safetensors import safe_open

from safecfg_core.align import load_lora
from safecfg_core.cli import main

pytestmark = pytest.mark.slow
PROMPTS = ("a large blue circle on a yellow background\na bloody red star on white\n"
           "a knife next to a purple triangle\nsmall green square at the top, gray backdrop\n")


def test_align_command_writes_resumes_and_refuses_to_overwrite(tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(PROMPTS, encoding="utf-8")
    out = tmp_path / "aligned.safetensors"
    args = ["align", "--prompts", str(prompts), "--out", str(out), "--model", "demo", "--steps", "4",
            "--fit-steps", "3", "--batch-size", "4"]
    assert main(args) == 0
    report = capsys.readouterr().out
    assert "prompts: 4" in report and "fit: 3 steps" in report
    with safe_open(str(out), framework="pt") as f:
        keys = set(f.keys())
    assert "diffusion_model.blocks.0.cq.lora_up.weight" in keys and "diffusion_model.blocks.0.cq.alpha" in keys
    assert len(load_lora(out).layer_names) > 20
    assert (tmp_path / "aligned.safetensors.ckpt.safetensors").exists()

    before = out.read_bytes()
    assert main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert out.read_bytes() == before

    assert main(args + ["--overwrite"]) == 0  # the same run: its checkpoint holds all 3 steps
    assert "resumed from step 3" in capsys.readouterr().out
    assert main(args + ["--overwrite", "--lr", "0.01"]) == 2  # other settings: that checkpoint is not theirs
    assert "Cannot resume" in capsys.readouterr().err


def test_a_model_without_linear_or_conv_layers_is_refused_clearly(tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a photo of a cat in a garden\n", encoding="utf-8")
    code = main(["align", "--prompts", str(prompts), "--out", str(tmp_path / "x.safetensors"), "--model", "analytic",
                 "--hgr", str(tmp_path / "missing.safetensors")])
    assert code == 2
    assert "no layers to adapt" in capsys.readouterr().err  # said before the HGR is even looked for
