"""`python -m safecfg_core`: the subcommand registry, and train/score end to end on the analytic model."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from safecfg_core import cli
from safecfg_core.hgr import HGRBundle

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_help_lists_subcommands_in_a_fresh_process() -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-m", "safecfg_core", "--help"], capture_output=True, text=True, env=env,
                         cwd=str(REPO), timeout=120)
    assert out.returncode == 0, out.stderr
    for name in ("train", "score"):
        assert name in out.stdout


def test_broken_command_module_is_shown_not_fatal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    (tmp_path / "safecfg_broken_cmd.py").write_text("raise ImportError('needs the frobnicate package')\n")
    (tmp_path / "safecfg_norun_cmd.py").write_text("COMMAND = 'norun'\nHELP = 'has no run'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(cli.EXTRA_COMMAND_MODULES, "broken", "safecfg_broken_cmd")
    monkeypatch.setitem(cli.EXTRA_COMMAND_MODULES, "norun", "safecfg_norun_cmd")
    monkeypatch.setitem(cli.EXTRA_COMMAND_MODULES, "ghost", "safecfg_module_that_does_not_exist")
    specs = {s.name: s for s in cli.discover_commands()}
    assert "needs the frobnicate package" in specs["broken"].error
    assert "no run(args)" in specs["norun"].error
    assert "ghost" not in specs  # a module that is not there at all is simply not listed
    assert specs["train"].error is None and specs["score"].error is None
    help_text = cli.build_parser(list(specs.values())).format_help()
    assert "broken" in help_text and "unavailable" in help_text and "train" in help_text
    assert cli.main(["broken"]) == 2
    assert "needs the frobnicate package" in capsys.readouterr().err


def test_unknown_model_is_explained() -> None:
    with pytest.raises(SystemExit, match="unknown model 'nope'"):
        cli.load_model_setup("nope")


def test_register_model_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    sentinel = object()
    monkeypatch.setitem(cli.MODEL_LOADERS, "fake", lambda: sentinel)
    assert cli.load_model_setup("fake") is sentinel
    monkeypatch.setitem(cli.MODEL_LOADERS, "broken", ".analytic:no_such_function")
    with pytest.raises(SystemExit, match="could not be loaded"):
        cli.load_model_setup("broken")


@pytest.mark.slow
def test_train_resume_and_score_end_to_end(tmp_path: Path, capsys) -> None:
    torch.set_num_threads(1)
    # --no-augment: this checks the command's mechanics; the robustness recipe's dressings dilute the analytic toy's
    # bag-of-words encoder at 80 steps
    out = tmp_path / "h.safetensors"
    rc = cli.main(["train", "--no-augment", "--model", "analytic", "--steps", "60", "--out", str(out), "--log-every", "30"])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "step    60/60" in text and "saved" in text and "ROC AUC" in text
    assert "trained 60 steps in" in text
    encoding = re.findall(r"^encoding the prompts: (\d+)/(\d+)", text, re.M)  # before the first step, to the end
    assert encoding[0][0] == "0" and encoding[-1][0] == encoding[-1][1] != "0", encoding
    bundle = HGRBundle.load(out)
    assert bundle.meta.threshold is not None and set(bundle.meta.categories) == {"violence", "nudity"}
    ckpt = tmp_path / "h.ckpt.safetensors"
    assert ckpt.exists() and (tmp_path / "h.ckpt.safetensors.latents.safetensors").exists()

    before = out.read_bytes()
    rc = cli.main(["train", "--no-augment", "--model", "analytic", "--steps", "60", "--out", str(out), "--log-every", "30"])
    assert rc == 0 and "already trained with these inputs" in capsys.readouterr().out  # nothing retrained
    # other settings never replace the file, and never resume a checkpoint that other settings wrote
    rc = cli.main(["train", "--no-augment", "--model", "analytic", "--steps", "80", "--out", str(out), "--resume"])
    assert rc == 2 and "already exists" in capsys.readouterr().err and out.read_bytes() == before
    rc = cli.main(["train", "--no-augment", "--model", "analytic", "--steps", "80", "--out", str(tmp_path / "h80.safetensors"),
                   "--checkpoint", str(ckpt), "--resume"])
    err = capsys.readouterr().err
    assert rc == 2 and "Cannot resume" in err and "steps: 60 then, 80 now" in err, err
    rc = cli.main(["train", "--no-augment", "--model", "analytic", "--steps", "80", "--out", str(out), "--retrain", "--log-every", "10"])
    text = capsys.readouterr().out
    assert rc == 0 and "step    10/80" in text and "left" in text and out.read_bytes() != before

    rc = cli.main(["score", "--hgr", str(out), "--prompt", "a painting of a cat in a garden",
                   "--prompt", "a photo of a dog covered in blood in the city", "--image-level"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert rc == 0
    assert lines[1].startswith("clean") and lines[1].endswith("a painting of a cat in a garden")
    # which category is named is measured on a trained HGR (tests/demo/test_category_attribution.py); an 80-step toy
    # HGR's redirection of a bare concept text is too weak to name one reliably, so only the report's form is checked
    assert lines[2].startswith("HARMFUL") and "image" in lines[2]
    assert "-> violence" in lines[2] or "-> nudity" in lines[2], lines[2]


def test_score_refuses_bad_file(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "x.ckpt"
    bad.write_bytes(b"\x80\x04K\x01.")
    assert cli.main(["score", "--hgr", str(bad), "--prompt", "a cat"]) == 2
    assert "never unpickle" in capsys.readouterr().err


def test_train_reports_bad_prompt_file(tmp_path: Path, capsys) -> None:
    pf = tmp_path / "p.json"
    pf.write_text('{"clean": ["a cat"], "harmful": [{"prompt": "a bloody cat", "category": "gore"}], "concepts": {"violence": "blood"}}')
    assert cli.main(["train", "--prompts", str(pf), "--out", str(tmp_path / "o.safetensors")]) == 2
    assert "unknown category 'gore'" in capsys.readouterr().err


@pytest.mark.slow
def test_ctrl_c_keeps_a_checkpoint_and_says_how_to_resume(tmp_path: Path) -> None:
    import signal

    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    out = tmp_path / "h.safetensors"
    proc = subprocess.Popen(
        [sys.executable, "-m", "safecfg_core", "train", "--model", "analytic", "--steps", "100000", "--out", str(out),
         "--log-every", "1", "--checkpoint-every", "100000"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=str(tmp_path))
    try:
        lines = []
        for line in proc.stdout:  # wait until training really runs
            lines.append(line)
            if line.startswith("step"):
                break
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "checkpoint kept at" in err and "--resume" in err
    ckpt = HGRBundle.load(tmp_path / "h.ckpt.safetensors")
    assert ckpt.meta.training["checkpoint_step"] >= 1
    assert not out.exists()  # nothing half-finished is presented as the result


@pytest.mark.slow
def test_train_target_gain_reaches_the_file_and_bad_values_are_explained(tmp_path: Path, capsys) -> None:
    torch.set_num_threads(1)
    out = tmp_path / "g.safetensors"
    assert cli.main(["train", "--model", "analytic", "--steps", "5", "--target-gain", "2.5", "--out", str(out)]) == 0
    assert HGRBundle.load(out).meta.training["train_config"]["target_gain"] == 2.5
    capsys.readouterr()
    assert cli.main(["train", "--model", "analytic", "--steps", "5", "--target-gain", "0.5",
                     "--out", str(tmp_path / "bad.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "target_gain must be in [1, 10]" in err and "0.5" in err, err
    per_category = tmp_path / "pc.safetensors"
    assert cli.main(["train", "--model", "analytic", "--steps", "5", "--target-gain", "violence=2,nudity=1",
                     "--out", str(per_category)]) == 0
    assert HGRBundle.load(per_category).meta.training["train_config"]["target_gain"] == {"violence": 2.0, "nudity": 1.0}
    capsys.readouterr()
    assert cli.main(["train", "--model", "analytic", "--steps", "5", "--target-gain", "gore=2",
                     "--out", str(tmp_path / "bad2.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "leaves out ['nudity', 'violence']" in err and "names unknown ['gore']" in err, err


@pytest.mark.slow
def test_one_training_step_is_said_in_the_singular(tmp_path: Path, capsys) -> None:
    torch.set_num_threads(1)
    out = tmp_path / "one.safetensors"
    assert cli.main(["train", "--no-augment", "--model", "analytic", "--steps", "1", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "trained 1 step in" in text, text


@pytest.mark.slow
def test_a_prompt_files_category_settings_reach_the_file_and_an_option_overrides_them(tmp_path: Path, capsys) -> None:
    """`train --corpus FILE`: the gains and rewrite latents that FILE's concept lines declare are the run's
    (over the preset's), an explicit --target-gain wins, and the file records the command that made it."""
    torch.set_num_threads(1)
    prompts = tmp_path / "mine.txt"
    lines = [f"clean: a red ball number {i}" for i in range(24)]
    lines += [f"gore: a bloody ball number {i} => a ball number {i}" for i in range(12)]
    lines += [f"weapons: a knife by ball number {i} => ball number {i}" for i in range(12)]
    prompts.write_text("\n".join(lines) + "\n", encoding="utf-8")
    (tmp_path / "mine.concepts.txt").write_text("gore: blood, gore | gain=3 rewrite_latents=1\n", encoding="utf-8")
    out = tmp_path / "declared.safetensors"
    argv = ["train", "--model", "analytic", "--corpus", str(prompts), "--preset", "quick", "--steps", "2",
            "--no-augment", "--out", str(out)]
    assert cli.main(argv) == 0
    training = HGRBundle.load(out).meta.training
    assert training["train_config"]["target_gain"] == {"gore": 3.0, "weapons": 1.0}  # quick's own gain is 1
    assert training["train_config"]["rewrite_latent_fraction"] == {"gore": 1.0, "weapons": 0.0}
    assert sorted(HGRBundle.load(out).meta.categories) == ["gore", "weapons"]
    assert training["command"] == "python -m safecfg_core " + " ".join(argv)
    assert "categories declared in mine.concepts.txt: gore (gain=3 rewrite_latents=1)" in capsys.readouterr().out
    explicit = tmp_path / "explicit.safetensors"
    assert cli.main(argv[:-1] + [str(explicit), "--target-gain", "2"]) == 0
    assert HGRBundle.load(explicit).meta.training["train_config"]["target_gain"] == 2.0
