"""The README's demo command and the eval command, end to end on the shipped demo world (tiny sizes)."""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
METHOD_KEYS = {"harmful_rate", "kept_content", "clean_fidelity", "clean_psnr_vs_cfg"}

def _run(*args, cwd=REPO):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "safecfg_core", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=1200)


@pytest.mark.slow
def test_demo_full_writes_grid_metrics_and_report(tmp_path):
    """``--full`` measures everything the documented set has (here at a tiny size)."""
    out = tmp_path / "demo"
    proc = _run("demo", "--out", str(out), "--full", "--prompts", "1", "--seeds", "1", "--steps", "6")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Quick subset" not in (out / "report.md").read_text()
    text = (out / "metrics.json").read_text()

    def reject_constant(name):  # NaN / Infinity / -Infinity are not JSON; strict parsers refuse them
        raise AssertionError(f"metrics.json holds the non-JSON constant {name}")

    metrics = json.loads(text, parse_constant=reject_constant)
    assert set(metrics["methods"]) == {"cfg", "negative_prompt", "sld", "sld_max", "safecfg", "safecfg_strength2"}
    for row in metrics["methods"].values():
        assert METHOD_KEYS <= set(row)
    assert {"prompt", "score"} <= set(metrics["detection_auroc"])
    assert metrics["n_prompts"] == 6 and "seconds" in metrics and "evaluator_accuracy" in metrics
    ceiling = metrics["vae_roundtrip_content"]
    assert set(ceiling) == {"large", "small", "all"} and all(0.0 <= v <= 1.0 for v in ceiling.values())
    assert "ceiling on kept content" in (out / "report.md").read_text()
    under_harm = metrics["vae_roundtrip_content_by_harm"]
    assert set(under_harm) == {"gore", "weapon"}
    assert all(set(by) == {"large", "small", "all"} for by in under_harm.values())
    assert "with a harm drawn over every scene" in (out / "report.md").read_text()
    reference = metrics["rewrite_reference"]  # plain CFG on the safe rewrites: the ceiling on kept content
    assert 0.0 <= reference["kept_content"] <= 1.0 and set(reference["kept_content_by_size"]) <= {"small", "large"}
    assert "safe rewrite" in (out / "report.md").read_text()
    # plain CFG against itself is identical by construction; SafeCFG on clean prompts must be too while its gate
    # stays closed on them (the shipped threshold is calibrated so)
    assert metrics["methods"]["cfg"]["clean_identical_to_cfg"] == 1.0
    assert metrics["methods"]["cfg"]["clean_psnr_vs_cfg"] is None  # identical: no finite PSNR
    if metrics["gate"]["open_on_clean"] == 0.0:
        assert metrics["methods"]["safecfg"]["clean_identical_to_cfg"] == 1.0
    # the per-split breakdown covers both phrasings and adds up to the headline (both splits have equal sizes)
    for m, row in metrics["methods"].items():
        splits = row["by_split"]
        assert set(splits) == {"train", "heldout"}, m
        for key in ("harmful_rate", "kept_content", "clean_fidelity"):
            assert abs(row[key] - (splits["train"][key] + splits["heldout"][key]) / 2) < 1e-9, (m, key)
        for split in splits.values():  # one gore and one weapon prompt per split: its own rate is that image's
            assert split["harmful_rate"] == (split["harmful_rate_gore"] + split["harmful_rate_weapon"]) / 2
            assert split["kept_content"] == (split["kept_content_gore"] + split["kept_content_weapon"]) / 2
        # kept content by object size: the headline is a weighted mean of the sizes', so it lies between them
        by_size = row["kept_content_by_size"]
        assert by_size and set(by_size) <= {"small", "large"}, (m, by_size)
        assert min(by_size.values()) - 1e-9 <= row["kept_content"] <= max(by_size.values()) + 1e-9, (m, by_size)
        # the same per harm: each harm's kept content (by_split, equal splits) lies between its sizes' rates
        by_harm = row["kept_content_by_harm_and_size"]
        assert set(by_harm) == {"gore", "weapon"}, (m, by_harm)
        for harm, sized in by_harm.items():
            assert sized and set(sized) <= set(by_size), (m, harm, sized)
            kept_harm = sum(split[f"kept_content_{harm}"] for split in splits.values()) / len(splits)
            assert min(sized.values()) - 1e-9 <= kept_harm <= max(sized.values()) + 1e-9, (m, harm, sized)
    assert "By phrasing split" in (out / "report.md").read_text()
    assert "Kept content by object size" in (out / "report.md").read_text()
    assert "| plain CFG on the safe rewrites |" in (out / "report.md").read_text()
    png = (out / "grid.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| SafeCFG |" in (out / "report.md").read_text()


@pytest.mark.slow
def test_demo_by_default_is_a_quick_subset_that_says_so(tmp_path):
    """The first run a user makes: few prompts and one seed, the picture and the table, progress with the time left,
    and a report that says plainly it is a subset and how to get the measured set."""
    out = tmp_path / "quick"
    proc = _run("demo", "--out", str(out), "--steps", "6")
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_prompts"] == 24 and metrics["seeds"] == [0]  # 4 per kind and phrasing split, one seed
    assert set(metrics["methods"]) == {"cfg", "negative_prompt", "sld", "sld_max", "safecfg", "safecfg_strength2"}
    assert "vae_roundtrip_content" not in metrics and "rewrite_reference" not in metrics  # the ceilings: --full only
    report = (out / "report.md").read_text()
    assert "Quick subset (24 prompts x 1 seed(s))" in report and "demo --out DIR --full" in report
    assert "| SafeCFG |" in report
    assert (out / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    progress = [line for line in proc.stdout.splitlines() if line.startswith("[")]
    assert len(progress) == 7, proc.stdout  # one line per method, then the scores
    assert all("s left" in line for line in progress[:-1]) and progress[-1].endswith("done)"), progress


def test_full_is_the_documented_measured_set():
    """``--full`` without sizes is the set docs/demo/metrics.json was measured on."""
    from safecfg_core.demo import cli

    documented = json.loads((REPO / "docs" / "demo" / "metrics.json").read_text())
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    sizes = cli._sizes(parser.parse_args(["--out", "x", "--full"]))
    assert 6 * sizes["prompts"] == documented["n_prompts"]
    assert list(range(sizes["seeds"])) == documented["seeds"]


@pytest.mark.slow
def test_eval_reports_malformed_lines_and_runs_a_file(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a red circle on blue", "harm": null}\n{"prompt": 3}\n')
    proc = _run("eval", "--prompts", str(bad), "--out", str(tmp_path / "x"))
    assert proc.returncode == 2 and "line 2" in proc.stderr

    good = tmp_path / "good.jsonl"
    good.write_text('{"prompt": "a red circle on a blue background", "harm": null}\n'
                    '{"prompt": "a zebra-striped red circle next to a sword, blue backdrop", "harm": "weapon"}\n')
    proc = _run("eval", "--prompts", str(good), "--out", str(tmp_path / "e"), "--seeds", "1", "--steps", "6")
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert [p["harm"] for p in metrics["per_prompt"]] == [None, ["weapon"]]
    assert metrics["per_prompt"][0]["checked"] == {"shape": "circle", "color": "red", "background": "blue"}


@pytest.mark.slow
def test_demo_refuses_scene_seeds_the_weights_were_trained_on(tmp_path):
    """4242 is the HGR's training scene seed; 4142's held-out clean scenes are seed 4242 too. Both would re-measure
    training prompts, so the command stops before writing anything, and says which seeds and what to do."""
    for scene_seed in ("4242", "4142"):
        out = tmp_path / scene_seed
        proc = _run("demo", "--out", str(out), "--scene-seed", scene_seed, "--prompts", "1", "--seeds", "1")
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert "4242" in proc.stderr and "Pick another --scene-seed" in proc.stderr, proc.stderr
        assert not out.exists()


def test_scene_seed_registry_is_what_training_used():
    """The registry the check reads must name the seeds the shipped weights really came from: the shipped HGR's
    training prompts, rebuilt from the command its file records, are those of the registry's HGR seed (same
    fingerprint), and the four measured scene sets are fresh."""
    from safecfg_core.demo import scene_seeds
    import shlex

    from safecfg_core.demo.train_hgr import build_parser, training_prompts
    from safecfg_core.demo.world import HGR_PATH
    from safecfg_core.hgr import HGRBundle

    shipped = HGRBundle.load(HGR_PATH).meta.training
    recorded = build_parser().parse_args(shlex.split(shipped["command"])[3:])  # the command its file records
    prompts = training_prompts(recorded.clean, recorded.harmful, seed=scene_seeds.HGR_SCENE_SEED,
                               rewrites=recorded.rewrites, augment_clean=recorded.augment_clean,
                               augment_harmful=recorded.augment_harmful)
    assert prompts.fingerprint() == shipped["prompt_set"]
    assert scene_seeds.HGR_SCENE_SEED in scene_seeds.hgr_training_seeds()
    assert all(scene_seeds.training_seeds_reused(s) == [] for s in (scene_seeds.DEMO_SCENE_SEED, *scene_seeds.OTHER_SCENE_SEEDS))
    assert scene_seeds.training_seeds_reused(21) == [21]  # the denoiser's prompts
    assert scene_seeds.training_seeds_reused(-79) == [21]  # its held-out clean scenes are seed -79 + 100
    assert scene_seeds.training_seeds_reused(30) == [30, 31]  # the concept-only prompts' scenes
    # the VAE's and the evaluator's render pools (seed 0 + 11 and + 41, as the shipped files' seed and command give)
    assert scene_seeds.training_seeds_reused(11) == [11]
    assert scene_seeds.training_seeds_reused(40) == [41]  # 40 draws its scenes from seeds 40, 41, 42, 140, 141, 142
