"""Hostile and careless input through a real ComfyUI server (issue 29): generated malformed HGR files in the server's
hgr folder, and malformed inputs to every node of the pack over /prompt.

For every case: the prompt fails with a message starting ``SafeCFG <node>:`` (or, for what ComfyUI's own input
validation refuses before any node runs, with ComfyUI's validation message, asserted as such), the server's memory
stays under a ceiling, and the server still samples a small demo prompt afterwards.

The memory ceiling is the server's resident set after the first demo prompt plus ``RSS_HEADROOM_MB`` (tests/comfy/hostile_harness.py); both its
current RSS (psutil) and its peak since then (Linux ``VmHWM``, reset through ``/proc/<pid>/clear_refs``) must stay
under it. The headroom (400 MB) is far above what a refused input legitimately costs (the demo world is loaded
once; every HGR here is at most a few MB; one 64x64 demo sample) and far below what the bugs it guards against
cost: the issue measured +2.4 GB for a 2 MB file declaring width 2048 / depth 12, and a declared chunk of 2^40 asks
for terabytes.
"""
from __future__ import annotations

import copy
import importlib.util
import os
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from safecfg_core.hgr import HGRBundle, HGRConfig, HGRMeta

_spec = importlib.util.spec_from_file_location("safecfg_tests_hostile_hgr",
                                               Path(__file__).parents[1] / "hostile_hgr.py")
hostile_hgr = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(hostile_hgr)  # type: ignore[union-attr]
_spec = importlib.util.spec_from_file_location("safecfg_tests_hostile_harness",
                                               Path(__file__).with_name("hostile_harness.py"))
harness = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(harness)  # type: ignore[union-attr]
Guard, Ctx, run, exception_message, peak_kb, counter, NAN, INF = (
    harness.Guard, harness.Ctx, harness.run, harness.exception_message, harness.peak_kb, harness.counter, harness.NAN,
    harness.INF)
assert_node_error, assert_refused_by_comfyui, small_demo_hgr = (
    harness.assert_node_error, harness.assert_refused_by_comfyui, harness.small_demo_hgr)
detector_prompt, safecfg_prompt, train_prompt, align_prompt, demo_model_prompt = (
    harness.detector_prompt, harness.safecfg_prompt, harness.train_prompt, harness.align_prompt,
    harness.demo_model_prompt)


@pytest.fixture(scope="module")
def guard(comfy_server) -> Iterator[Guard]:
    g = Guard(comfy_server)
    yield g
    # the figures behind harness.RSS_HEADROOM_MB (shown with pytest -s)
    print(f"\nhostile suite: server RSS baseline {g.baseline / 2**20:.0f} MB, highest after a case "
          f"{g.highest / 2**20:.0f} MB, peak {(peak_kb(g.proc.pid) or 0) / 1024:.0f} MB, ceiling "
          f"{g.ceiling / 2**20:.0f} MB; server CPU {sum(g.proc.cpu_times()[:2]) - g.cpu0:.0f} s in this module")


# ---- HGR files ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def files(comfy_server, tmp_path_factory) -> Dict[str, str]:
    """Names (as Load HGR lists them) of a valid small demo HGR, an sd1-width one, and of hostile entries."""
    d: Path = comfy_server.hgr_dir
    outside = tmp_path_factory.mktemp("outside_hgr")
    small_demo_hgr().save(d / "hostile_base.safetensors")
    HGRBundle.create(HGRConfig.for_family("sd1", width=32, depth=1, heads=4), HGRMeta(threshold=0.1)).save(
        d / "hostile_sd1.safetensors")
    small_demo_hgr().save(outside / "elsewhere.safetensors")
    (outside / "folder").mkdir()
    small_demo_hgr().save(outside / "folder" / "inside.safetensors")
    os.mkfifo(d / "hostile_fifo.safetensors")
    (d / "hostile_link_out.safetensors").symlink_to(outside / "elsewhere.safetensors")
    (d / "hostile_linkdir").symlink_to(outside / "folder", target_is_directory=True)
    (d / "hostile_broken.safetensors").symlink_to(outside / "missing.safetensors")
    (d / "hostile_empty.safetensors").write_bytes(b"")
    (d / "hostile_dir.safetensors").mkdir()
    overflow = small_demo_hgr()  # finite weights whose output overflows float32: the HGR is the cause, not fp16
    with torch.no_grad():
        for p in overflow.net.parameters():
            p.fill_(1e30)
    overflow.save(d / "hostile_overflow.safetensors")
    return {"base": "hostile_base.safetensors", "sd1": "hostile_sd1.safetensors"}


@pytest.mark.slow
@given(mutation=hostile_hgr.mutations())
@settings(max_examples=20, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
def test_generated_hostile_hgr_files_through_the_server(comfy_server, guard, files, mutation) -> None:
    """A valid demo-width HGR with one generated lie (the core suite's generator) is either used as the valid HGR
    it still is, or refused by Load HGR with its message; memory stays bounded and the server keeps serving."""
    name = f"hostile_gen_{next(counter)}.safetensors"
    hostile_hgr.write_mutated(comfy_server.hgr_dir / files["base"], comfy_server.hgr_dir / name, mutation)
    entry = run(comfy_server, detector_prompt(name))
    msg = exception_message(entry)
    if msg is None:
        assert comfy_server.succeeded(entry), entry.get("status")
        assert "prompt harm score" in entry["outputs"]["20"]["text"][0]
    else:
        assert msg.startswith("SafeCFG Load HGR:"), (mutation, msg)
    guard.check(f"generated file {mutation!r}")


# ---- malformed node inputs -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ctx(comfy_server, files) -> Ctx:
    c = Ctx(comfy_server)
    c.loras_dir.mkdir(parents=True, exist_ok=True)
    (c.loras_dir / "hostile_lora_dir.safetensors").mkdir()
    c.prompts_dir.mkdir(parents=True, exist_ok=True)
    os.mkfifo(c.prompts_dir / "hostile_fifo.txt")
    os.mkfifo(c.loras_dir / "hostile_lora_fifo.safetensors")
    return c


def _case(case_id: str, build: Any, node: Optional[str], *says: str, node_id: str = "") -> Any:
    """One case: ``node`` set: the pack's node refuses with ``SafeCFG <node>:`` and ``says``; ``node`` None:
    ComfyUI's validation refuses node ``node_id`` with message ``says[0]``."""
    return pytest.param(build, node, says, node_id, id=case_id)


TOO_SMALL, TOO_BIG, NOT_A_NUMBER = "smaller than min", "bigger than max", "Failed to convert"
LOAD, SAFECFG, DETECTOR, TRAIN, ALIGN, DEMO = ("Load HGR", "SafeCFG", "Harmfulness Detector", "Train HGR",
                                               "Align Model (SafeCFG LoRA)", "Demo Model")
PRESET = "SafeCFGTrainHGRPreset"
HUGE_BAD_LINES = "\n".join(f"line {i} without a category" for i in range(50_000))
HUGE_LABELLED_LINES = "\n".join(f"gore: a bloody star number {i}" for i in range(50_000))

CASES = [
    # Load HGR: names outside the list, and what a hostile hgr folder can hold
    # (ComfyUI does not check a V3 combo's value against its list: every name reaches the node)
    _case("load-traversal", lambda c: detector_prompt("../hostile_base.safetensors"), LOAD, "not a file name inside"),
    _case("load-absolute", lambda c: detector_prompt(str(c.hgr_dir / "hostile_base.safetensors")), LOAD,
          "not a file name inside"),
    _case("load-nul-byte", lambda c: detector_prompt("hostile_base.safetensors\x00.txt"), LOAD, "not a file name"),
    _case("load-huge-name", lambda c: detector_prompt("h" * 200_000 + ".safetensors"), LOAD, "not found"),
    _case("load-name-not-a-string", lambda c: detector_prompt(NAN), LOAD, "no HGR file chosen"),
    _case("load-directory", lambda c: detector_prompt("hostile_dir.safetensors"), LOAD, "is a folder"),
    _case("load-fifo", lambda c: detector_prompt("hostile_fifo.safetensors"), LOAD, "not a regular file"),
    _case("load-symlink-out", lambda c: detector_prompt("hostile_link_out.safetensors"), LOAD, "outside"),
    _case("load-symlinked-dir-out", lambda c: detector_prompt("hostile_linkdir/inside.safetensors"), LOAD, "outside"),
    _case("load-broken-symlink", lambda c: detector_prompt("hostile_broken.safetensors"), LOAD, "not found"),
    _case("load-empty-file", lambda c: detector_prompt("hostile_empty.safetensors"), LOAD, "too short"),
    # SafeCFG: NaN passes ComfyUI's min/max checks, so the node must refuse it; the rest ComfyUI refuses
    _case("safecfg-strength-nan", lambda c: safecfg_prompt(strength=NAN), SAFECFG, "strength"),
    _case("safecfg-threshold-nan", lambda c: safecfg_prompt(threshold=NAN), SAFECFG, "threshold"),
    _case("safecfg-softness-nan", lambda c: safecfg_prompt(softness=NAN), SAFECFG, "softness"),
    _case("safecfg-strength-negative", lambda c: safecfg_prompt(strength=-1.0), None, TOO_SMALL, node_id="11"),
    _case("safecfg-strength-huge", lambda c: safecfg_prompt(strength=1e308), None, TOO_BIG, node_id="11"),
    _case("safecfg-threshold-inf", lambda c: safecfg_prompt(threshold=INF), None, TOO_BIG, node_id="11"),
    _case("safecfg-gate-mode-path", lambda c: safecfg_prompt(gate_mode="../off"), SAFECFG, "gate mode"),
    _case("safecfg-wrong-family", lambda c: safecfg_prompt("hostile_sd1.safetensors"), SAFECFG, "768", "384"),
    # Harmfulness Detector
    _case("detector-threshold-nan", lambda c: detector_prompt("hostile_base.safetensors", threshold=NAN), DETECTOR,
          "threshold"),
    _case("detector-image-threshold-nan", lambda c: dict(safecfg_prompt(), **{"20": {
        "class_type": "SafeCFGHarmfulnessDetector", "inputs": {
            "hgr": ["10", 0], "positive": ["2", 0], "negative": ["3", 0], "threshold": -1.0, "model": ["1", 0],
            "latent": ["5", 0], "image_threshold": NAN}}}), DETECTOR, "image_threshold"),
    _case("detector-image-threshold-negative", lambda c: detector_prompt("hostile_base.safetensors",
                                                                         image_threshold=-INF), None, TOO_SMALL,
          node_id="20"),
    _case("detector-hgr-output-overflows", lambda c: detector_prompt("hostile_overflow.safetensors"), DETECTOR,
          "weights overflow"),
    _case("detector-wrong-family", lambda c: detector_prompt("hostile_sd1.safetensors"), DETECTOR, "768", "384"),
    # Train HGR: names (never rewritten, never outside the folder, never a special file), prompt lists, numbers
    _case("train-name-traversal", lambda c: train_prompt(c, name="../escape/x"), TRAIN, "not a plain file name"),
    _case("train-name-absolute", lambda c: train_prompt(c, name=str(c.hgr_dir.parent / "abs")), TRAIN,
          "not a plain file name"),
    _case("train-name-special-chars", lambda c: train_prompt(c, name="a?b"), TRAIN, "'a_b'"),
    _case("train-name-too-long", lambda c: train_prompt(c, name="x" * 100_000), TRAIN, "longer than"),
    _case("train-name-empty", lambda c: train_prompt(c, name=""), TRAIN, "no usable file name"),
    _case("train-name-whitespace", lambda c: train_prompt(c, name=" \t " * 300), TRAIN, "no usable file name"),
    _case("train-name-dots", lambda c: train_prompt(c, name="../.."), TRAIN, "no usable file name"),
    _case("train-name-fifo", lambda c: train_prompt(c, name="hostile_fifo"), TRAIN, "not a regular file"),
    _case("train-name-directory", lambda c: train_prompt(c, name="hostile_dir"), TRAIN, "folder"),
    _case("train-name-symlink-out", lambda c: train_prompt(c, name="hostile_link_out"), TRAIN, "outside"),
    _case("train-clean-empty", lambda c: train_prompt(c, clean_prompts=""), TRAIN),
    _case("train-clean-whitespace", lambda c: train_prompt(c, clean_prompts=" \n\t\n   \n"), TRAIN),
    _case("train-harmful-malformed", lambda c: train_prompt(c, harmful_prompts="no category here"), TRAIN),
    _case("train-harmful-huge-malformed", lambda c: train_prompt(c, harmful_prompts=HUGE_BAD_LINES), TRAIN),
    _case("train-concepts-empty", lambda c: train_prompt(c, concepts=""), TRAIN),
    _case("train-lr-nan", lambda c: train_prompt(c, lr=NAN), TRAIN, "lr"),
    _case("train-sample-cfg-nan", lambda c: train_prompt(c, sample_cfg=NAN), TRAIN, "cfg"),
    _case("train-target-gain-nan", lambda c: train_prompt(c, target_gain=NAN), TRAIN, "gain"),
    _case("train-gain-per-category-nan", lambda c: train_prompt(c, gain_per_category="gore=nan, weapon=1"), TRAIN,
          "gain"),
    _case("train-rewrite-latents-out-of-range", lambda c: train_prompt(c, rewrite_latents="7"), TRAIN, "rewrite"),
    _case("train-steps-nan", lambda c: train_prompt(c, steps=NAN), None, NOT_A_NUMBER, node_id="30"),
    _case("train-steps-negative", lambda c: train_prompt(c, steps=-5), None, TOO_SMALL, node_id="30"),
    _case("train-batch-inf", lambda c: train_prompt(c, batch_size=INF), None, NOT_A_NUMBER, node_id="30"),
    _case("train-width-huge", lambda c: train_prompt(c, width=10 ** 9), None, TOO_BIG, node_id="30"),
    # Train HGR's preset node: the same names, its prompt-file choice (a V3 combo: any string reaches the node)
    _case("preset-name-traversal", lambda c: train_prompt(c, PRESET, name="../escape/x"), TRAIN,
          "not a plain file name"),
    _case("preset-name-fifo", lambda c: train_prompt(c, PRESET, name="hostile_fifo"), TRAIN, "not a regular file"),
    _case("preset-name-directory", lambda c: train_prompt(c, PRESET, name="hostile_dir"), TRAIN, "folder"),
    _case("preset-prompts-traversal", lambda c: train_prompt(c, PRESET, prompts="../../../etc/passwd"), TRAIN,
          "hgr_prompts"),
    _case("preset-prompts-fifo", lambda c: train_prompt(c, PRESET, prompts="hostile_fifo.txt"), TRAIN, "regular"),
    _case("preset-prompts-huge-name", lambda c: train_prompt(c, PRESET, prompts="p" * 200_000), TRAIN, "hgr_prompts"),
    _case("preset-categories-path", lambda c: train_prompt(c, PRESET, categories="../x"), TRAIN, "categories"),
    _case("preset-preset-path", lambda c: train_prompt(c, PRESET, preset="../x"), TRAIN, "preset"),
    _case("preset-cfg-nan", lambda c: train_prompt(c, PRESET, cfg=NAN), TRAIN, "cfg"),
    # Align Model
    _case("align-prompts-empty", lambda c: align_prompt(prompts=" \n \n"), ALIGN),
    _case("align-prompts-labelled", lambda c: align_prompt(prompts="gore: a bloody red star"), ALIGN),
    _case("align-prompts-huge-labelled", lambda c: align_prompt(prompts=HUGE_LABELLED_LINES), ALIGN),
    _case("align-name-traversal", lambda c: align_prompt(name="../escape/lora"), ALIGN, "not a plain file name"),
    _case("align-name-dots", lambda c: align_prompt(name="../../.."), ALIGN, "no usable file name"),
    _case("align-name-directory", lambda c: align_prompt(name="hostile_lora_dir"), ALIGN,
          "hostile_lora_dir.safetensors"),
    _case("align-name-directory-overwrite", lambda c: align_prompt(name="hostile_lora_dir", overwrite=True), ALIGN,
          "folder"),
    _case("align-name-fifo", lambda c: align_prompt(name="hostile_lora_fifo"), ALIGN, "hostile_lora_fifo.safetensors"),
    _case("align-wrong-family", lambda c: align_prompt("hostile_sd1.safetensors"), ALIGN, "768"),
    _case("align-preset-path", lambda c: align_prompt(preset="../x"), ALIGN, "unknown preset"),
    _case("align-fit-steps-nan", lambda c: align_prompt(fit_steps=NAN), None, NOT_A_NUMBER, node_id="40"),
    # SafeCFG Demo Model
    _case("demo-variant-path", lambda c: demo_model_prompt("../../etc/passwd"), DEMO, "unknown variant"),
    _case("demo-variant-nan", lambda c: demo_model_prompt(NAN), DEMO, "unknown variant"),
]


@pytest.mark.slow
@pytest.mark.parametrize("build,node,says,node_id", CASES)
def test_malformed_node_inputs_are_refused(comfy_server, guard, ctx, request, build, node, says, node_id) -> None:
    prompt = build(ctx)
    if node is None:
        assert_refused_by_comfyui(comfy_server, prompt, node_id, says[0])
    else:
        assert_node_error(comfy_server, copy.deepcopy(prompt), node, *says)
    guard.check(request.node.callspec.id)


@pytest.mark.slow
def test_a_file_replaced_under_the_same_name_is_loaded_again(comfy_server, guard, files) -> None:
    """ComfyUI caches a node's output by its inputs; Load HGR's input is only the name, so without the file's
    identity in its fingerprint an HGR retrained or copied over under the same name would silently stay the old one."""
    path = comfy_server.hgr_dir / "hostile_swapped.safetensors"
    reports = []
    for threshold in (0.5, 0.25):
        hgr = small_demo_hgr()
        hgr.meta.threshold = threshold
        hgr.save(path)
        entry = run(comfy_server, detector_prompt(path.name))
        assert comfy_server.succeeded(entry), exception_message(entry)
        reports.append(entry["outputs"]["20"]["text"][0])
    assert "threshold: 0.5000" in reports[0] and "threshold: 0.2500" in reports[1], reports
    guard.check("a replaced HGR file")

# ---- Train HGR file names (finding 6): no two different names share a file ----------------------------------------


@pytest.fixture(scope="module")
def common() -> Any:
    spec = importlib.util.spec_from_file_location("safecfg_tests_common", Path(__file__).with_name("test_common.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    module._pack()
    return importlib.import_module("safecfg_pack_under_test.nodes.common")


NAME_CHARS = st.sampled_from(list("ab_-. ?*/\\:\x00") + ["..", ".safetensors", "\u00e9"])


@given(a=st.lists(NAME_CHARS, max_size=8).map("".join), b=st.lists(NAME_CHARS, max_size=8).map("".join))
@settings(max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_different_names_never_share_a_file(common, a: str, b: str) -> None:
    """Names are taken as they are or refused with a suggestion, never rewritten: 'a?b' and 'a*b' (or 'x/h' and
    'y/h') used to be saved to the same file, where training under one loaded or replaced the other's HGR."""
    def file_for(name: str) -> Optional[str]:
        try:
            return common.plain_file_name(name, "Train HGR")
        except ValueError as exc:
            assert str(exc).startswith("SafeCFG Train HGR: the name"), exc
            return None

    fa, fb = file_for(a), file_for(b)
    def same_name(n: str) -> str:
        return n.strip()[: -len(".safetensors")] if n.strip().endswith(".safetensors") else n.strip()

    if fa is not None and fa == fb:
        assert same_name(a) == same_name(b), (a, b, fa)
    for name, f in ((a, fa), (b, fb)):
        if f is not None:
            assert f == common.sanitize_hgr_name(name) and "/" not in f and "\\" not in f and not f.startswith(".")


def test_names_needing_a_rewrite_are_refused_with_the_suggestion(common) -> None:
    assert common.plain_file_name(" my_hgr ", "Train HGR") == "my_hgr.safetensors"
    assert common.plain_file_name("my_hgr.safetensors", "Train HGR") == "my_hgr.safetensors"
    for raw, suggestion in (("a?b", "a_b"), ("a*b", "a_b"), ("../escape/trained", "trained"),
                            ("/etc/passwd", "passwd"), (".hidden", "hidden"), ("x" * 121, "x" * 120)):
        with pytest.raises(ValueError, match=f"use e.g. '{suggestion}'") as ei:
            common.plain_file_name(raw, "Train HGR")
        assert str(ei.value).startswith("SafeCFG Train HGR: the name")


def test_a_node_message_is_never_prefixed_twice(common) -> None:
    """A helper's node error raised inside a node's own ``try`` (caught there as a ValueError) keeps one prefix."""
    inner = common.node_error("Train HGR", "prompts 'x' is not a file in models/hgr_prompts")
    assert str(common.format_exception("Train HGR", inner)) == ("SafeCFG Train HGR: prompts 'x' is not a file in "
                                                                "models/hgr_prompts")
    assert str(common.format_exception("SafeCFG", ValueError("bad gate"))) == "SafeCFG SafeCFG: bad gate"
