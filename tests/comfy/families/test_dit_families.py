"""The DiT families (SD3/3.5, Wan 2.1 and 2.2 t2v, Qwen-Image, Chroma, Lumina 2, HiDream) end to end in a real ComfyUI
server.

Each graph is the family's example workflow at test size: ``UNETLoader`` (a diffusion model built by ComfyUI's own
classes with fewer blocks; ComfyUI's detection loads it as the family, see ``dit_build.py``) + the test-only
reduced text encoder (ComfyUI's own encoder classes and tokenizers at reduced depth, built in the server: T5-XXL,
umT5-XXL, Qwen2.5-VL-7B and Gemma-2-2B cannot be held in CI; see ``dit_nodes``) + ``VAELoader`` -> stock
``CLIPTextEncode`` -> SafeCFG -> stock ``KSampler`` -> ``SaveLatent`` and stock ``VAEDecode``. HiDream's model
comes from a test-only node instead of ``UNETLoader`` (ComfyUI's classes at a reduced size: its detection builds
HiDream-I1's 17 B parameters from any file, see ``dit_nodes``); its Llama states ride in the conditioning as in
ComfyUI. Token lengths are the families' own: SD3 77 CLIP + >= 77 T5 tokens, HiDream >= 128 T5 tokens, Wan 512
padded, Qwen-Image / Chroma / Lumina 2 unpadded, so the positive and the empty negative differ in length there.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

if "_safecfg_dit_fixtures" not in sys.modules:  # --import-mode=importlib: the helper module is loaded by path, once
    _spec = importlib.util.spec_from_file_location("_safecfg_dit_fixtures", Path(__file__).with_name("dit_fixtures.py"))
    sys.modules["_safecfg_dit_fixtures"] = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(sys.modules["_safecfg_dit_fixtures"])  # type: ignore[union-attr]
fx = sys.modules["_safecfg_dit_fixtures"]
dit_files, dit_server = fx.dit_files, fx.dit_server  # fixtures

pytestmark = [pytest.mark.comfyui, pytest.mark.slow]

A = "a large blue circle on a yellow background"
B = "a bloody red star with a knife on white"
LONG = ", ".join(["a small green tree next to a bright house under a dark sky"] * 12)  # > 77 T5 tokens

FAMILY_PARAMS = [pytest.param(name, id=name) for name in fx.FAMILIES]


@pytest.fixture(scope="module")
def ready(comfyui_root, dit_server):
    """Per family (built on first use): its fixture files, its two HGR files, and the gate threshold that sits
    between the two prompts' harm scores (which prompt is 'harmful' is whichever the random HGR scores higher)."""
    cache = {}

    def get(family: str, negative: str = ""):
        key = (family, negative)
        if key not in cache:
            fx.build_fixture_files(comfyui_root, [family])
            zero, gated = fx.write_hgrs(dit_server, family)
            sa, sb = (fx.harm_score(dit_server, family, p, gated, negative) for p in (A, B))
            assert abs(sa - sb) > 5e-4, (sa, sb)  # the report has 4 decimals: the midpoint stays between them
            harmful, clean = (B, A) if sb > sa else (A, B)
            cache[key] = {"zero": zero, "gated": gated, "threshold": (sa + sb) / 2, "harmful": harmful,
                          "clean": clean}
        return cache[key]

    return get


def _latent(server, graph):
    return fx.saved_latent(server, fx.run_ok(server, graph))


@pytest.fixture(scope="module")
def plain(dit_server):
    """Plain CFG's latent of (family, prompt, negative), sampled once per module (several tests compare to it)."""
    cache = {}

    def get(family: str, prompt: str, negative: str = ""):
        key = (family, prompt, negative)
        if key not in cache:
            cache[key] = _latent(dit_server, fx.sampling_graph(family, prompt, negative, prefix=f"{family}_plain"))
        return cache[key]

    return get


@pytest.mark.parametrize("family", FAMILY_PARAMS)
def test_zero_hgr_is_bit_identical_to_plain_cfg(dit_server, ready, plain, family):
    """An untrained HGR (zero output) through the redirect path (gate 'always') leaves the sample bit-identical."""
    r = ready(family)
    base = plain(family, B)
    zero = _latent(dit_server, fx.sampling_graph(family, B, hgr=r["zero"], safecfg={"gate_mode": "always"},
                                                 prefix=f"{family}_zero"))
    assert torch.isfinite(base).all() and base.abs().sum() > 0
    assert torch.equal(base, zero)


@pytest.mark.parametrize("family", FAMILY_PARAMS)
def test_gated_hgr_changes_harmful_and_keeps_clean(dit_server, ready, plain, family):
    """With the gate between the two prompts' scores, the harmful prompt's latents change and the clean one's are
    plain CFG's bit for bit."""
    r = ready(family)
    gate = {"gate_mode": "hard", "threshold": r["threshold"]}
    for prompt, changes in ((r["harmful"], True), (r["clean"], False)):
        base = plain(family, prompt)
        safe = _latent(dit_server, fx.sampling_graph(family, prompt, hgr=r["gated"], safecfg=gate,
                                                     prefix=f"{family}_s"))
        assert base.shape == safe.shape
        if changes:
            assert (base - safe).abs().max() > 1e-4, f"{family}: the harmful prompt's sample did not change"
        else:
            assert torch.equal(base, safe), f"{family}: the clean prompt's sample changed"


@pytest.mark.parametrize("family", [pytest.param(f, id=f) for f in ("sd3", "qwen_image", "hidream")])
def test_long_negative_of_another_length_is_redirected(dit_server, ready, plain, family):
    """A negative longer than the prompt (SD3: T5 beyond its 77 padded tokens; HiDream: beyond its 128; Qwen-Image:
    unpadded) is redirected. (Chroma's unpadded T5 differs in length already in the tests above, its empty negative
    being one token.)"""
    r = ready(family, LONG)
    gate = {"gate_mode": "hard", "threshold": r["threshold"]}
    safe = _latent(dit_server, fx.sampling_graph(family, r["harmful"], LONG, hgr=r["gated"], safecfg=gate,
                                                 prefix=f"{family}_ls"))
    assert (plain(family, r["harmful"], LONG) - safe).abs().max() > 1e-4


def test_hgr_of_another_family_with_the_same_width_is_refused(dit_server, ready):
    """A Chroma HGR (T5's 4096-wide tokens, like Wan's) on the Wan model is refused before sampling, naming both."""
    ready("wan21")
    fx.write_hgrs(dit_server, "chroma")
    g = fx.sampling_graph("wan21", A, hgr="chroma_zero.safetensors")
    entry = dit_server.run(g)
    message = dit_server.error_message(entry) or ""
    assert not dit_server.succeeded(entry)
    assert "SafeCFG" in message and "chroma" in message and "wan21" in message, message


@pytest.mark.parametrize("family,other", [pytest.param("hidream", "sd3", id="sd3-on-hidream"),
                                          pytest.param("wan22", "wan21", id="wan21-on-wan22")])
def test_an_hgr_of_a_family_with_the_same_widths_is_refused(dit_server, ready, family, other):
    """SD3 and HiDream give the same widths (4096-wide T5 tokens, 2048 pooled), as do Wan 2.1 and 2.2 (umT5): the
    family the HGR records decides, so the model must be detected as its own family (ComfyUI's ``HiDream`` /
    ``WAN22_T2V``), and the other family's HGR is refused on it, naming both."""
    ready(family)
    fx.write_hgrs(dit_server, other)
    entry = dit_server.run(fx.sampling_graph(family, A, hgr=f"{other}_zero.safetensors"))
    message = dit_server.error_message(entry) or ""
    assert not dit_server.succeeded(entry)
    assert f"This HGR was trained for {other} (4096-wide tokens) but the model is {family}" in message, message
