"""The robustness benchmark's plain-CFG cache (``--save-cfg`` / ``--cfg-from``): same numbers, and refused when
written by other code, since a cache whose samples are a few ulps off makes every clean image "differ" from CFG."""
import pytest
import torch

from safecfg_core.demo import robustness

pytestmark = pytest.mark.slow  # samples two benchmark prompts three times


def test_cache_gives_the_same_numbers_and_is_refused_after_a_code_change(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    bench = robustness.read_benchmark()
    picked = [next(b for b in bench if b.group == "clean_style"), next(b for b in bench if b.group == "harm_case")]
    cache = str(tmp_path / "cfg.safetensors")
    sampled, _, _ = robustness.run_benchmark(picked, seeds=(0,), save_cfg=cache)
    cached, _, _ = robustness.run_benchmark(picked, seeds=(0,), cfg_cache=cache)
    assert cached == sampled
    monkeypatch.setattr(robustness, "sampling_code_digest", lambda: "written-by-other-code")
    with pytest.raises(ValueError, match="other code or weights"):
        robustness.run_benchmark(picked, seeds=(0,), cfg_cache=cache)
