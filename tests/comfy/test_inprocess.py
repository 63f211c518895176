"""SafeCFG inside ComfyUI's own sampling code, one subprocess per ComfyUI version (no server, no mocks).

Checks what the HTTP tests cannot see: which cache path the batched redirector takes (the sync-free uuid path on
the current ComfyUI, the content-checked one on the March-2024 one), that HGR runs once per sampling run, and that
SafeCFG still works when ComfyUI runs the positive and negative passes as separate model calls (forced here by
making the model report a huge memory need, as a big image on a small GPU would).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

# Every script starts so: ComfyUI (argv[1]) on the path, in --cpu mode, and this pack (argv[2]) imported as a
# package named ``safecfg_pack``, the way ComfyUI's custom-node loader does.
PACK_PREAMBLE = textwrap.dedent(r'''
    import importlib.util, json, sys
    root, pack = sys.argv[1], sys.argv[2]
    sys.path.insert(0, root)
    sys.argv = ["main.py", "--cpu"]
    import comfy.options
    comfy.options.enable_args_parsing()
    import torch
    spec = importlib.util.spec_from_file_location("safecfg_pack", pack + "/__init__.py",
                                                  submodule_search_locations=[pack])
    mod = importlib.util.module_from_spec(spec)
    sys.modules["safecfg_pack"] = mod
    spec.loader.exec_module(mod)
''')

SCRIPT = PACK_PREAMBLE + textwrap.dedent(r'''
    import comfy.sample
    assert not mod.DISABLED_NODES, mod.DISABLED_NODES
    from safecfg_pack.safecfg_core.hgr import HGRBundle, HGRConfig, HGRMeta
    N = mod.NODE_CLASS_MAPPINGS
    model, clip, vae = N["SafeCFGDemoModel"]().load("untrained")
    bundle = HGRBundle.create(HGRConfig.for_family("demo"), HGRMeta(threshold=None), seed=1)
    with torch.no_grad():
        torch.manual_seed(3)
        for p in bundle.net.parameters():
            if p.abs().sum() == 0:
                p.normal_(0.0, 0.2)

    def enc(text):
        cond, pooled = clip.encode_from_tokens(clip.tokenize(text), return_pooled=True)
        return [[cond, {"pooled_output": pooled}]]

    pos, neg = enc("a bloody red star with a knife on white"), enc("")
    latent = torch.zeros([1, 4, 8, 8])
    noise = comfy.sample.prepare_noise(latent, 0)

    def run(m, steps=4):
        return comfy.sample.sample(m, noise, steps, 5.0, "euler", "normal", pos, neg, latent, seed=0)

    plain = run(model)
    patched = N["SafeCFG"]().patch(model, bundle, 1.0, -1.0, gate_mode="always")[0]
    safe = run(patched)
    r = patched.model_options["model_function_wrapper"].redirector
    out = {"uuid_entries": len(r._cache), "content_entries": len(r._content_cache), "misses": r.misses,
           "calls": r.calls, "changed": not torch.equal(plain, safe)}
    safe_again = run(patched)
    out["misses_after_second_run"] = r.misses
    out["repeatable"] = bool(torch.equal(safe, safe_again))
    # an unet wrapper installed before SafeCFG is chained (called with the redirected conditioning)
    seen = []
    def previous(apply_model, args):
        seen.append(args["cond_or_uncond"])
        return apply_model(args["input"], args["timestep"], **args["c"])
    m0 = model.clone()
    m0.set_model_unet_function_wrapper(previous)
    chained = run(N["SafeCFG"]().patch(m0, bundle, 1.0, -1.0, gate_mode="always")[0])
    out["chained_calls"] = len(seen)
    out["chained_same_as_safe"] = bool(torch.equal(chained, safe))
    out["input_model_untouched"] = "model_function_wrapper" not in model.model_options
    # force ComfyUI to run cond and uncond as separate calls (uncond first)
    model.model.memory_required = lambda *a, **k: float("inf")
    split_patched = N["SafeCFG"]().patch(model, bundle, 1.0, -1.0, gate_mode="always")[0]
    split = run(split_patched)
    r2 = split_patched.model_options["model_function_wrapper"].redirector
    out["split_calls"] = r2.calls
    out["split_changed"] = not torch.equal(plain, split)
    out["split_close_to_batched"] = float((split - safe).abs().max())
    out["split_vs_plain"] = float((split - plain).abs().max())
    # the shipped HGR's threshold was calibrated for softness 0.25: a wider ramp is warned about, that one is not
    from safecfg_pack.safecfg_core.demo.world import HGR_PATH
    shipped = HGRBundle.load(HGR_PATH)
    for softness in (0.25, 0.5):
        N["SafeCFG"]().patch(model, shipped, 1.0, -1.0, gate_mode="smooth", softness=softness)
    print("RESULT " + json.dumps(out))
''')


def _run(root: Path, pythonpath: list, script: str = SCRIPT) -> dict:
    """Run ``script`` in a fresh interpreter against the ComfyUI at ``root``; return its ``RESULT`` JSON (+ log)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(p) for p in pythonpath] + [env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.run([sys.executable, "-c", script, str(root), str(REPO_ROOT)], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-8000:]
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")][-1]
    res = json.loads(line[len("RESULT "):])
    res["log"] = proc.stderr
    return res


def _check_common(res: dict) -> None:
    assert res["chained_calls"] == 4 and res["chained_same_as_safe"], res
    assert res["input_model_untouched"], res
    assert res["changed"], "SafeCFG did not change the harmful prompt's latent"
    assert res["misses"] == 1, res  # HGR ran once for the whole run (4 steps)
    assert res["repeatable"], "the same run twice gave different results"
    assert res["split_calls"] >= 8, res  # cond and uncond in separate calls
    assert res["split_changed"], "with split calls SafeCFG did nothing"
    assert res["log"].count("softness 0.5 is wider than the 0.25 this HGR's threshold was calibrated for") == 1
    assert "softness 0.25 is wider" not in res["log"]


def _shim_paths(root: Path):
    import importlib.util as iu

    spec = iu.spec_from_file_location("_safecfg_comfy_conftest", Path(__file__).with_name("conftest.py"))
    conf = iu.module_from_spec(spec)
    spec.loader.exec_module(conf)  # type: ignore[union-attr]
    return conf.shim_paths_for(root)


@pytest.mark.parametrize("which", ["session", "current"])
def test_safecfg_inside_comfy_sampling(comfyui_root, which):
    if which == "current":
        env = os.environ.get("COMFYUI_CURRENT_PATH", "/tmp/comfy_current")
        root = Path(env)
        if not (root / "comfy_api").is_dir():
            pytest.skip("no current ComfyUI checkout (set COMFYUI_CURRENT_PATH)")
        if root.resolve() == Path(comfyui_root).resolve():
            pytest.skip("the session ComfyUI is already the current one")
    else:
        root = Path(comfyui_root)
    res = _run(root, _shim_paths(root))
    _check_common(res)
    if (root / "comfy_api").is_dir():
        # current ComfyUI: uuids + sample_sigmas -> the sync-free cache path
        assert res["uuid_entries"] >= 1 and res["content_entries"] == 0, res
        assert res["misses_after_second_run"] == 2, res  # a new run gets new uuids: HGR runs once more
        # primed from the calc_cond_batch wrapper: even step 0 of a split run is redirected
        assert res["split_close_to_batched"] < 1e-3, res
        assert "negative pass before any positive pass" not in res["log"]
    else:
        assert res["uuid_entries"] == 0 and res["content_entries"] >= 1, res
        # no wrapper system: the first step of a split run uses the plain negative (documented, logged once)
        assert "negative pass before any positive pass" in res["log"]


IDENTITY_SCRIPT = PACK_PREAMBLE + textwrap.dedent(r'''
    from safecfg_pack.nodes.comfy_adapters import model_identity
    N = mod.NODE_CLASS_MAPPINGS
    demo = N["SafeCFGDemoModel"]().load("demo")[0]
    untrained = N["SafeCFGDemoModel"]().load("untrained")[0]
    sd = demo.model.state_dict()
    key = next(k for k, v in sd.items() if k.endswith("weight") and v.dim() == 2)
    patched = demo.clone()
    patched.add_patches({key: (torch.full_like(sd[key], 0.01),)}, 0.5)
    out = {"demo": model_identity(demo), "demo_clone": model_identity(demo.clone()),
           "untrained": model_identity(untrained), "patched": model_identity(patched)}
    print("RESULT " + json.dumps(out))
''')


def test_model_identity_tells_models_apart(comfyui_root):
    """The Train HGR node keys its latent cache and its "already trained" shortcut by this identity: a clone is the
    same model, other weights or a LoRA-style patch are not."""
    root = Path(comfyui_root)
    ids = _run(root, _shim_paths(root), IDENTITY_SCRIPT)
    assert ids["demo"] == ids["demo_clone"], ids
    assert len({ids["demo"], ids["untrained"], ids["patched"]}) == 3, ids
