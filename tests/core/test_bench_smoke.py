"""`python -m safecfg_core bench --quick` completes and prints its table (numbers are not checked)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_bench_quick_prints_the_table(tmp_path):
    out_json = tmp_path / "bench.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.run(
        [sys.executable, "-m", "safecfg_core", "bench", "--quick", "--device", "cpu", "--json", str(out_json)],
        capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=240,
    )
    assert proc.returncode == 0, f"bench failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    out = proc.stdout
    assert "| method | passes/step | median |" in out
    for label in ("plain CFG", "SafeCFG (HGR + CFG)", "negative prompt (concepts)", "SLD MEDIUM"):
        assert f"| {label} |" in out, f"row {label!r} missing from:\n{out}"
    assert "HGR per prompt" in out and "HGR training:" in out
    data = json.loads(out_json.read_text())
    rows = data["models"][0]["rows"]
    assert [r["method"] for r in rows] == ["cfg", "safecfg", "negprompt", "sld"]
    assert rows[0]["ratio_to_cfg"] == 1.0
