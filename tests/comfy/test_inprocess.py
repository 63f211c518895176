"""SafeCFG inside ComfyUI's own sampling code, in a subprocess (no server, no mocks).

Checks what the HTTP tests cannot see: that every negative model call of every step gets the redirected
negative, also when ComfyUI runs the positive and negative passes as separate model calls (forced here by making
the model report a huge memory need, as a big image on a small GPU would); that the HGR runs once per graph run,
not per step; that the returned MODEL carries nothing but the one post-CFG guard; and how the returned
CONDITIONING treats entry options, SDXL's pooled vector and combined positives.
"""
from __future__ import annotations

import textwrap

from pack_scripts import PACK_PREAMBLE, run_in_comfyui

SAMPLING_SCRIPT = PACK_PREAMBLE + textwrap.dedent(r'''
    import comfy.sample
    model, clip, vae = N["SafeCFGDemoModel"].execute("untrained").args
    bundle = random_hgr(HGRConfig.for_family("demo"))
    hgr_calls = []
    bundle.net.register_forward_hook(lambda *a: hgr_calls.append(1))

    def enc(text):
        cond, pooled = clip.encode_from_tokens(clip.tokenize(text), return_pooled=True)
        return [[cond, {"pooled_output": pooled}]]

    pos, neg = enc("a bloody red star with a knife on white"), enc("")
    latent = torch.zeros([1, 4, 8, 8])
    noise = comfy.sample.prepare_noise(latent, 0)

    def run(m, p, n, steps=4):
        return comfy.sample.sample(m, noise, steps, 5.0, "euler", "normal", p, n, latent, seed=0)

    def recording(m, u_star):
        """A clone of ``m`` whose unet wrapper notes, per model call with a negative chunk, whether that chunk's
        tokens are u* (True) or something else (False)."""
        seen = []
        def wrapper(apply_model, args):
            chunks = args["c"]["c_crossattn"].chunk(len(args["cond_or_uncond"]))
            for kind, tokens in zip(args["cond_or_uncond"], chunks):
                if kind == 1:
                    seen.append(bool(torch.equal(tokens[:, :u_star.shape[1]], u_star.expand(tokens.shape[0], -1, -1))))
            return apply_model(args["input"], args["timestep"], **args["c"])
        m = m.clone()
        m.set_model_unet_function_wrapper(wrapper)
        return m, seen

    out = {"post_cfg_before": len(model.model_options.get("sampler_post_cfg_function", []))}
    plain = run(model, pos, neg)
    m, p, n = N["SafeCFG"].execute(model, bundle, pos, neg, 1.0, -1.0, gate_mode="always").args
    out["hgr_calls_node"] = len(hgr_calls)
    u_star = n[0][0]
    out["u_star_differs"] = not torch.equal(u_star, neg[0][0])
    rec, seen = recording(m, u_star)
    safe = run(rec, p, n)
    out["hgr_calls_after_sampling"] = len(hgr_calls)
    out["batched_uncond_calls"] = seen[:]
    out["changed"] = not torch.equal(plain, safe)
    out["plain_cfg_with_u_star"] = bool(torch.equal(safe, run(model, pos, [[u_star, neg[0][1]]])))
    out["wrapper_installed"] = "model_function_wrapper" in m.model_options
    out["post_cfg_after"] = len(m.model_options.get("sampler_post_cfg_function", []))
    out["input_model_untouched"] = (len(model.model_options.get("sampler_post_cfg_function", []))
                                    == out["post_cfg_before"])
    # force ComfyUI to run cond and uncond as separate calls
    model.model.memory_required = lambda *a, **k: float("inf")
    rec, seen = recording(m, u_star)
    calls = []
    inner = rec.model_options["model_function_wrapper"]
    def counting(apply_model, args):
        calls.append(list(args["cond_or_uncond"]))
        return inner(apply_model, args)
    rec.set_model_unet_function_wrapper(counting)
    split = run(rec, p, n)
    out["split_calls"] = calls
    out["split_uncond_calls"] = seen
    out["split_vs_batched"] = float((split - safe).abs().max())
    out["split_vs_plain"] = float((split - plain).abs().max())
    # the shipped HGR's threshold was calibrated for softness 0.25: a wider ramp is warned about, that one is not
    from safecfg_pack.safecfg_core.demo.world import HGR_PATH
    shipped = HGRBundle.load(HGR_PATH)
    for softness in (0.25, 0.5):
        N["SafeCFG"].execute(model, shipped, pos, neg, 1.0, -1.0, gate_mode="smooth", softness=softness)
    print("RESULT " + json.dumps(out))
''')


def test_every_negative_call_gets_u_star_batched_and_split(comfyui_root):
    res = run_in_comfyui(comfyui_root, SAMPLING_SCRIPT)
    assert res["u_star_differs"] and res["changed"], res
    # one positive x one negative entry: the HGR ran once, in the node, and never during the 4 sampling steps
    assert res["hgr_calls_node"] == 1 and res["hgr_calls_after_sampling"] == 1, res
    # the result is plain CFG with u* as the negative: nothing else is patched
    assert res["plain_cfg_with_u_star"], res
    assert not res["wrapper_installed"] and res["post_cfg_after"] == res["post_cfg_before"] + 1, res
    assert res["input_model_untouched"], res
    # batched: 4 steps, each one call holding a negative chunk, and that chunk is u*
    assert res["batched_uncond_calls"] == [True] * 4, res
    # split: the negative ran alone in each of the 4 steps, and was u* every time
    assert all(len(c) == 1 for c in res["split_calls"]) and res["split_calls"].count([1]) == 4, res
    assert res["split_uncond_calls"] == [True] * 4, res
    assert res["split_vs_batched"] < 1e-4 < res["split_vs_plain"], res
    assert res["log"].count("softness 0.5 is wider than the 0.25 this HGR's threshold was calibrated for") == 1
    assert "softness 0.25 is wider" not in res["log"]


CONDITIONING_SCRIPT = PACK_PREAMBLE + textwrap.dedent(r'''
    from safecfg_pack.nodes.safecfg_node import GUARD_KEY, redirect_conditioning
    from safecfg_pack.safecfg_core.conditioning import Cond
    from safecfg_pack.safecfg_core.guidance import GateConfig, SafeGuidance, prompt_harm_score
    g = torch.Generator().manual_seed(0)
    out = {}
    # SDXL-like widths: 77 x 2048 tokens, pooled 1280
    bundle = random_hgr(HGRConfig(token_dim=2048, pooled_dim=1280, model_family="sdxl", width=32, depth=1, heads=4))
    harmful = torch.randn(1, 77, 2048, generator=g), torch.randn(1, 1280, generator=g)
    clean = torch.zeros(1, 77, 2048), torch.zeros(1, 1280)
    u = torch.randn(1, 77, 2048, generator=g), torch.randn(1, 1280, generator=g)
    with torch.no_grad():
        d_h = bundle.net(Cond(*harmful), Cond(*u))
        d_c = bundle.net(Cond(*clean), Cond(*u))
    s_h, s_c = float(prompt_harm_score(d_h)), float(prompt_harm_score(d_c))
    out["scores_differ"] = abs(s_h - s_c) > 1e-6
    opts = {"pooled_output": u[1], "start_percent": 0.0, "end_percent": 0.6, "mask": torch.ones(1, 8, 8),
            "area": (64, 64, 0, 0), "strength": 0.9}
    negative = [[u[0], dict(opts)]]
    # two combined positives: the clean one first, the harmful one second
    positive = [[clean[0], {"pooled_output": clean[1]}], [harmful[0], {"pooled_output": harmful[1]}]]
    if s_c > s_h:
        positive = positive[::-1]
    always = SafeGuidance(bundle, GateConfig(mode="always"))
    pos, neg, verdicts = redirect_conditioning(always, positive, negative, "tok")
    most = d_h if s_h >= s_c else d_c
    out["tokens_are_u_plus_delta"] = float((neg[0][0] - (u[0] + most.tokens)).abs().max())
    out["pooled_is_u_plus_delta"] = float((neg[0][1]["pooled_output"] - (u[1] + most.pooled)).abs().max())
    out["chosen_index"] = verdicts[0].index
    out["options_kept"] = all(neg[0][1][k] is opts[k] for k in ("start_percent", "end_percent", "mask", "area",
                                                                 "strength"))
    out["marked"] = [e[1].get(GUARD_KEY) for e in pos + neg]
    out["input_untouched"] = GUARD_KEY not in negative[0][1] and negative[0][1]["pooled_output"] is u[1]
    # a gate that stays shut: the very same tensors come back (bit-identical to plain CFG by construction)
    shut = SafeGuidance(bundle, GateConfig(mode="hard", threshold=1e9))
    pos2, neg2, _ = redirect_conditioning(shut, positive, negative, "tok2")
    out["clean_same_objects"] = neg2[0][0] is u[0] and neg2[0][1]["pooled_output"] is u[1]
    print("RESULT " + json.dumps(out))
''')


def test_conditioning_options_pooled_and_most_harmful(comfyui_root):
    res = run_in_comfyui(comfyui_root, CONDITIONING_SCRIPT)
    assert res["scores_differ"], res
    assert res["tokens_are_u_plus_delta"] < 1e-5 and res["pooled_is_u_plus_delta"] < 1e-5, res
    assert res["chosen_index"] == 1, res  # the harmful positive was put second
    assert res["options_kept"] and res["input_untouched"], res
    assert res["marked"] == ["tok"] * 3, res
    assert res["clean_same_objects"], res


IDENTITY_SCRIPT = PACK_PREAMBLE + textwrap.dedent(r'''
    from safecfg_pack.nodes.comfy_adapters import model_identity
    demo = N["SafeCFGDemoModel"].execute("demo").args[0]
    untrained = N["SafeCFGDemoModel"].execute("untrained").args[0]
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
    ids = run_in_comfyui(comfyui_root, IDENTITY_SCRIPT)
    assert ids["demo"] == ids["demo_clone"], ids
    assert len({ids["demo"], ids["untrained"], ids["patched"]}) == 3, ids
