"""HGR files: exact save/load round trip, and a clear refusal for every way a file can be wrong."""
from __future__ import annotations

import importlib.util
import json
import pickle
import struct
import zipfile
from pathlib import Path

import pytest
import torch
from hypothesis import example, given, settings
from safetensors.torch import save_file

from safecfg_core.errors import HGRFileError, HGRMismatchError
from safecfg_core.hgr import FORMAT_VERSION, HGRBundle, HGRConfig, HGRMeta

_spec = importlib.util.spec_from_file_location("safecfg_tests_hostile_hgr",
                                               Path(__file__).parents[1] / "hostile_hgr.py")
hostile_hgr = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(hostile_hgr)  # type: ignore[union-attr]


def _trained_like_bundle(pooled: bool = False) -> HGRBundle:
    """A small bundle with non-zero output heads (so the round trip checks real values, not zeros)."""
    cfg = HGRConfig(token_dim=24, pooled_dim=12 if pooled else 0, model_family="sdxl" if pooled else "sd1",
                    width=32, depth=1, heads=4)
    meta = HGRMeta(categories={"gore": "blood, gore", "weapon": "knife, weapon"}, threshold=0.0123,
                   training={"steps": 7, "final_loss": 0.5, "nested": {"a": [1, 2]}},
                   calibration={"method": "clean-quantile", "fpr": 0.01})
    b = HGRBundle.create(cfg, meta, seed=3)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in b.net.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return b


@pytest.mark.parametrize("pooled", [False, True])
def test_round_trip_is_exact(tmp_path: Path, pooled: bool) -> None:
    b = _trained_like_bundle(pooled)
    path = b.save(tmp_path / "h.safetensors")
    b2 = HGRBundle.load(path)
    assert b2.config == b.config
    assert b2.meta == b.meta
    sd1, sd2 = b.net.state_dict(), b2.net.state_dict()
    assert sd1.keys() == sd2.keys()
    for k in sd1:
        assert torch.equal(sd1[k], sd2[k]), k
    # Same outputs, bit for bit, on a fresh input.
    from safecfg_core import Cond

    g = torch.Generator().manual_seed(5)
    c = Cond(torch.randn(2, 77, 24, generator=g), torch.randn(2, 12, generator=g) if pooled else None)
    u = Cond(torch.randn(2, 154, 24, generator=g), torch.randn(2, 12, generator=g) if pooled else None)
    b.net.eval()
    with torch.no_grad():
        d1, d2 = b.net(c, u), b2.net(c, u)
    assert torch.equal(d1.tokens, d2.tokens)
    assert d1.tokens.abs().max() > 0
    if pooled:
        assert torch.equal(d1.pooled, d2.pooled)
    # Loaded HGRs are frozen inference modules.
    assert not any(p.requires_grad for p in b2.net.parameters())


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import safetensors.torch as st

    b = _trained_like_bundle()
    target = tmp_path / "h.safetensors"
    b.save(target)
    before = target.read_bytes()

    def crash_mid_write(tensors, filename, metadata=None):  # writes half a file, then the "disk is full"
        Path(filename).write_bytes(before[: len(before) // 2])
        raise OSError("No space left on device")

    monkeypatch.setattr(st, "save_file", crash_mid_write)
    with torch.no_grad():
        b.net.out_proj.bias.add_(1.0)
    with pytest.raises(OSError, match="No space"):
        b.save(target)
    assert target.read_bytes() == before  # the previous file is untouched, never half-written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h.safetensors"]  # and no temp file is left
    monkeypatch.undo()
    HGRBundle.load(target)


def _assert_refused(path: Path, *needles: str) -> str:
    with pytest.raises(HGRFileError) as ei:
        HGRBundle.load(path)
    msg = str(ei.value)
    for n in needles:
        assert n.lower() in msg.lower(), f"{n!r} not in message: {msg}"
    return msg


def test_missing_file(tmp_path: Path) -> None:
    _assert_refused(tmp_path / "nope.safetensors", "does not exist", "models/hgr")


def test_folder(tmp_path: Path) -> None:
    _assert_refused(tmp_path, "folder")


def test_real_pickle_is_refused_without_unpickling(tmp_path: Path) -> None:
    # A pickle whose loading would have a visible side effect: if it were ever unpickled, the marker would appear.
    marker = tmp_path / "unpickled.marker"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    for name in ("evil.ckpt", "evil.safetensors"):
        p = tmp_path / name
        p.write_bytes(pickle.dumps({"state_dict": Evil()}, protocol=4))
        _assert_refused(p, "never unpickle", "convert", "safetensors")
    assert not marker.exists()


def test_torch_zip_archive_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "model.pt"
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    _assert_refused(p, "never unpickle")


def test_pickle_extension_is_refused_even_if_content_is_safetensors(tmp_path: Path) -> None:
    b = _trained_like_bundle()
    good = b.save(tmp_path / "h.safetensors")
    p = tmp_path / "h.bin"
    p.write_bytes(good.read_bytes())
    _assert_refused(p, "never unpickle", ".safetensors")


def test_truncated_file(tmp_path: Path) -> None:
    b = _trained_like_bundle()
    good = b.save(tmp_path / "h.safetensors").read_bytes()
    for cut in (3, 20, len(good) // 2, len(good) - 1):
        p = tmp_path / f"cut{cut}.safetensors"
        p.write_bytes(good[:cut])
        _assert_refused(p, "again")


def test_garbage_and_corrupted_header(tmp_path: Path) -> None:
    p = tmp_path / "text.safetensors"
    p.write_bytes(b"hello world, this is not a tensor file at all" * 10)
    _assert_refused(p, "not a safetensors file")
    header = b"{this is not json" + b" " * 7
    p2 = tmp_path / "badjson.safetensors"
    p2.write_bytes(struct.pack("<Q", len(header)) + header + b"\x00" * 16)
    _assert_refused(p2, "not JSON")


def test_model_checkpoint_is_named_as_such(tmp_path: Path) -> None:
    p = tmp_path / "v1-5.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4),
               "first_stage_model.decoder.conv_in.weight": torch.zeros(2)}, str(p))
    _assert_refused(p, "looks like a model checkpoint", "models/checkpoints")


def test_lora_is_named_as_such(tmp_path: Path) -> None:
    p = tmp_path / "style.safetensors"
    save_file({"lora_unet_down_blocks_0.lora_up.weight": torch.zeros(4, 4)}, str(p))
    _assert_refused(p, "looks like a lora", "models/loras")


def test_other_safetensors_is_not_an_hgr(tmp_path: Path) -> None:
    p = tmp_path / "random.safetensors"
    save_file({"w": torch.zeros(3)}, str(p))
    _assert_refused(p, "not an HGR", "train")


def _rewrite(path: Path, out: Path, *, meta_update=None, drop=None, add=None, reshape=None) -> Path:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta.update(meta_update or {})
    for k in drop or []:
        tensors.pop(k)
    tensors.update(add or {})
    for k, shape in (reshape or {}).items():
        tensors[k] = torch.zeros(shape)
    save_file(tensors, str(out), metadata=meta)
    return out


def test_wrong_format_version(tmp_path: Path) -> None:
    good = _trained_like_bundle().save(tmp_path / "h.safetensors")
    newer = _rewrite(good, tmp_path / "newer.safetensors", meta_update={"safecfg.format_version": str(FORMAT_VERSION + 1)})
    _assert_refused(newer, "version", "update comfyui-safecfg")
    older = _rewrite(good, tmp_path / "older.safetensors", meta_update={"safecfg.format_version": "0"})
    _assert_refused(older, "version", "retrain")


def test_corrupted_metadata(tmp_path: Path) -> None:
    good = _trained_like_bundle().save(tmp_path / "h.safetensors")
    bad = _rewrite(good, tmp_path / "bad.safetensors", meta_update={"safecfg.config": "{not json"})
    _assert_refused(bad, "corrupted SafeCFG metadata")
    unknown = _rewrite(good, tmp_path / "unknown.safetensors",
                       meta_update={"safecfg.config": json.dumps({"token_dim": 24, "mystery": 1})})
    _assert_refused(unknown, "corrupted SafeCFG metadata", "mystery")


def test_missing_unexpected_and_misshaped_tensors(tmp_path: Path) -> None:
    good = _trained_like_bundle().save(tmp_path / "h.safetensors")
    missing = _rewrite(good, tmp_path / "missing.safetensors", drop=["hgr.out_proj.weight"])
    _assert_refused(missing, "missing tensors", "hgr.out_proj.weight")
    extra = _rewrite(good, tmp_path / "extra.safetensors", add={"hgr.surprise": torch.zeros(2)})
    _assert_refused(extra, "unexpected tensors", "hgr.surprise")
    shaped = _rewrite(good, tmp_path / "shape.safetensors", reshape={"hgr.out_proj.weight": (3, 3)})
    _assert_refused(shaped, "wrong shape", "hgr.out_proj.weight")


def test_nonfinite_weights_are_refused(tmp_path: Path) -> None:
    b = _trained_like_bundle()
    with torch.no_grad():
        b.net.out_proj.weight[0, 0] = float("nan")
    p = b.save(tmp_path / "nan.safetensors")
    _assert_refused(p, "NaN", "retrain")


def test_check_compatible_names_both_sides() -> None:
    b = HGRBundle.create(HGRConfig.for_family("sd1"))
    b.check_compatible(768, 0, "sd1")
    b.check_compatible(768, 0, "SD15")  # alias
    b.check_compatible(768, 1280)  # an HGR without pooled input may serve a model with one
    with pytest.raises(HGRMismatchError) as ei:
        b.check_compatible(2048, 1280)
    msg = str(ei.value)
    assert "sd1 (768-wide tokens)" in msg and "2048-wide tokens (sdxl)" in msg and "load an HGR trained" in msg
    with pytest.raises(HGRMismatchError, match="sd2"):
        b.check_compatible(768, 0, "sd2")
    xl = HGRBundle.create(HGRConfig.for_family("sdxl", width=32, depth=1, heads=4))
    with pytest.raises(HGRMismatchError, match="no pooled vector"):
        xl.check_compatible(2048, 0)
    xl.check_compatible(2048, 1280, "sdxl")


def test_family_presets_and_sizes() -> None:
    sizes = {}
    for fam, (tok, pooled) in {"sd1": (768, 0), "sd2": (1024, 0), "sdxl": (2048, 1280), "demo": (384, 0)}.items():
        cfg = HGRConfig.for_family(fam)
        assert (cfg.token_dim, cfg.pooled_dim, cfg.model_family) == (tok, pooled, fam)
        assert HGRConfig.from_dict(cfg.to_dict()) == cfg
        sizes[fam] = HGRBundle.create(cfg).num_parameters()
    assert 1_000_000 <= sizes["sd1"] <= 10_000_000  # "a few million"
    assert sizes["demo"] < sizes["sd1"] < sizes["sdxl"]
    with pytest.raises(ValueError, match="known"):
        HGRConfig.for_family("flux")
    with pytest.raises(ValueError, match="divisible"):
        HGRConfig(token_dim=8, width=30, heads=4)
    desc = HGRBundle.create(HGRConfig.for_family("sd1")).describe()
    assert "sd1" in desc and " M parameters" in desc


# ---- hostile files (issue 29) -------------------------------------------------------------------------------


def test_declared_sizes_are_bounded_and_checked_against_the_tensors_before_building(tmp_path: Path) -> None:
    """Finding 1: the config in the metadata is checked against the header's tensor shapes (and size limits)
    before any module is built, so a small file cannot make the loader allocate what it declares."""
    good = _trained_like_bundle().save(tmp_path / "h.safetensors")
    chunk = _rewrite(good, tmp_path / "chunk.safetensors", meta_update={"safecfg.config": json.dumps(
        {"token_dim": 24, "width": 32, "depth": 1, "heads": 4, "chunk": 2 ** 40})})
    _assert_refused(chunk, "corrupted SafeCFG metadata", "chunk", "limit")
    wide = _rewrite(good, tmp_path / "wide.safetensors", meta_update={"safecfg.config": json.dumps(
        {"token_dim": 24, "width": 4096, "depth": 1, "heads": 4})})  # 200 M parameters declared, 10 k stored
    import safecfg_core.hgr.bundle as bundle_module

    built = []
    real = bundle_module.HarmfulGuidanceRedirector
    bundle_module.HarmfulGuidanceRedirector = lambda cfg: built.append(cfg) or real(cfg)
    try:
        _assert_refused(wide, "wrong shape", "hgr.in_proj.weight")
    finally:
        bundle_module.HarmfulGuidanceRedirector = real
    assert built == []  # refused from the header alone


@pytest.mark.slow
def test_declared_huge_network_costs_no_memory(tmp_path: Path) -> None:
    """Finding 1, measured: loading a 20 kB file that declares width 2048 / depth 12 (600 M parameters) in a fresh
    process raises the refusal without the process ever growing by more than 200 MB."""
    import subprocess
    import sys

    good = _trained_like_bundle().save(tmp_path / "h.safetensors")
    big = _rewrite(good, tmp_path / "big.safetensors", meta_update={"safecfg.config": json.dumps(
        {"token_dim": 24, "width": 2048, "depth": 12, "heads": 8})})
    code = (
        "import resource, sys, torch\n"
        "from safecfg_core.hgr import HGRBundle\n"
        "from safecfg_core.errors import HGRFileError\n"
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n    HGRBundle.load(sys.argv[1]); print('LOADED')\n"
        "except HGRFileError as e:\n    print('REFUSED', e)\n"
        "print('GROWTH_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base)\n"
    )
    repo = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code, str(big)], capture_output=True, text=True, timeout=300,
                         cwd=str(repo), env={**__import__("os").environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"})
    assert "REFUSED" in out.stdout, out.stdout + out.stderr
    growth_kb = int(out.stdout.split("GROWTH_KB")[1].split()[0])
    assert growth_kb < 200_000, growth_kb


@pytest.mark.parametrize("threshold", ["NaN", "Infinity", "-1.0", "\"0.5\""])
def test_unusable_threshold_is_refused_at_load(tmp_path: Path, threshold: str) -> None:
    """Finding 4: NaN would silently turn SafeCFG into plain CFG, a negative threshold would change clean images."""
    from safecfg_core.guidance import GateConfig

    good = _trained_like_bundle().save(tmp_path / "h.safetensors")
    bad = _rewrite(good, tmp_path / "thr.safetensors", meta_update={"safecfg.threshold": threshold})
    _assert_refused(bad, "threshold", "finite number >= 0")
    for value in (float("nan"), -1.0):
        with pytest.raises(ValueError, match="threshold"):
            GateConfig(threshold=value)


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    """Finding 5: opening a FIFO blocks until someone writes to it; the loader must not open it at all."""
    import os
    import threading

    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    outcome = []
    t = threading.Thread(target=lambda: outcome.append(pytest.raises(HGRFileError, HGRBundle.load, fifo)), daemon=True)
    t.start()
    t.join(10)
    assert outcome, "loading a FIFO blocked"
    assert "not a regular file" in str(outcome[0].value)


def test_deeply_nested_metadata_is_a_clear_file_error(tmp_path: Path) -> None:
    """Finding 8: JSON nested deeper than the parser's stack is refused as an HGRFileError, not a RecursionError."""
    good = _trained_like_bundle().save(tmp_path / "h.safetensors")
    for key in ("safecfg.training", "safecfg.categories", "safecfg.config"):
        bad = _rewrite(good, tmp_path / "deep.safetensors", meta_update={key: "[" * 100_000 + "]" * 100_000})
        _assert_refused(bad, "nested")
        moderate = _rewrite(good, tmp_path / "deep40.safetensors", meta_update={key: "[" * 40 + "]" * 40})
        _assert_refused(moderate, "nested")


@given(hostile_hgr.mutations())
@example(("config", ("pooled_dim", True)))  # a JSON true is an int to Python; it once reached nn.LayerNorm(True)
@settings(max_examples=120, deadline=None, database=None)
def test_generated_hostile_files_are_refused_with_a_file_error(tmp_path_factory, mutation) -> None:
    """Issue 29, made systematic: a valid HGR file with one generated lie in its header (config values, metadata
    JSON, a tensor's shape, dtype or offsets, a missing tensor, a cut) either still loads as a valid HGR or is refused
    with an HGRFileError; never another exception (declared sizes up to 2^41 are among the lies: building what they
    declare would end in an allocator error, which this test would report)."""
    d = tmp_path_factory.mktemp("hostile")
    good = _trained_like_bundle().save(d / "good.safetensors")
    path = hostile_hgr.write_mutated(good, d / "hostile.safetensors", mutation)
    try:
        bundle = HGRBundle.load(path)
    except HGRFileError:
        return
    assert bundle.num_parameters() < 10 ** 6  # what loaded is a small, valid HGR
    thr = bundle.meta.threshold
    assert thr is None or (thr >= 0 and thr == thr and thr != float("inf"))
