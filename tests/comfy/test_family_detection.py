"""Family detection against ComfyUI's own classes (in a subprocess, like test_inprocess.py).

ComfyUI picks a supported-model config class from the unet_config its detection reads off a checkpoint
(``comfy.model_detection.model_config_from_unet_config``); the SafeCFG pack names the family from that class. Here
ComfyUI picks the class from detection-shaped configs, the pack detects the family from the MODEL, and the family
table's widths are compared with the widths ComfyUI's text encoders and denoisers are built with (their config files
and constructor defaults), so a wrong row in safecfg_core/families.py fails here. Flux dev and schnell are real
(tiny) ComfyUI Flux models, refused by the SafeCFG node with why and what would act.
"""
from __future__ import annotations

import textwrap

import pytest

from pack_scripts import PACK_PREAMBLE, run_in_comfyui

DETECTION_SCRIPT = PACK_PREAMBLE + textwrap.dedent(r'''
    import inspect, types
    import comfy.model_detection, comfy.model_patcher, comfy.supported_models as sm
    from comfy.text_encoders import llama
    from comfy.ldm.qwen_image.model import QwenImageTransformer2DModel
    from comfy.ldm.wan.model import WanModel
    from safecfg_pack.nodes.comfy_adapters import model_widths
    from safecfg_pack.safecfg_core.families import FAMILIES, UnsupportedFamilyError

    def detected(extra, name):
        """The config class ComfyUI picks for class ``name``'s own keys plus the keys its detection adds."""
        cfg = comfy.model_detection.model_config_from_unet_config({**getattr(sm, name).unet_config, **extra})
        return cfg

    def patcher_of(cfg):
        return types.SimpleNamespace(model=types.SimpleNamespace(model_config=cfg))

    # keys detection adds that decide the class or carry the text width (comfy/model_detection.py)
    cases = {
        "SD15": {"in_channels": 4}, "SD20": {"in_channels": 4}, "SDXL": {"in_channels": 4},
        "SDXLRefiner": {"in_channels": 4},
        "SD3": {"context_embedder_config": {"target": "torch.nn.Linear",
                                            "params": {"in_features": 4096, "out_features": 1536}}},
        "QwenImage": {}, "WAN21_T2V": {}, "WAN22_T2V": {},
        "Chroma": {"context_in_dim": 4096}, "Lumina2": {"cap_feat_dim": 2304}, "HiDream": {},
    }
    out = {"picked": {}, "widths": {}}
    for name, extra in cases.items():
        cfg = detected(extra, name)
        out["picked"][name] = type(cfg).__name__
        out["widths"][name] = list(model_widths(patcher_of(cfg)))

    # an unknown class: no family is named, its stated width still decides
    z = sm.Stable_Zero123(dict(sm.Stable_Zero123.unet_config))
    out["unknown"] = list(model_widths(patcher_of(z)))

    # the widths ComfyUI builds each encoder / denoiser input with
    cdir = root + "/comfy/"
    jl = lambda p: json.load(open(cdir + p))
    out["comfy_widths"] = {
        "clip_l": jl("sd1_clip_config.json")["hidden_size"], "clip_g": jl("clip_config_bigg.json")["hidden_size"],
        "clip_g_pooled": jl("clip_config_bigg.json")["projection_dim"],
        "clip_h": jl("text_encoders/sd2_clip_config.json")["hidden_size"],
        "t5xxl": jl("text_encoders/t5_config_xxl.json")["d_model"],
        "umt5xxl": jl("text_encoders/umt5_config_xxl.json")["d_model"],
        "qwen25_7b": llama.Qwen25_7BVLI_Config.hidden_size, "gemma2_2b": llama.Gemma2_2B_Config.hidden_size,
        "qwen_image_joint": inspect.signature(QwenImageTransformer2DModel).parameters["joint_attention_dim"].default,
        "wan_text_dim": inspect.signature(WanModel).parameters["text_dim"].default,
    }

    # Flux: ComfyUI picks dev (guidance_embed) or schnell; both are refused before sampling, naming why
    flux = dict(image_model="flux", in_channels=16, out_channels=16, vec_in_dim=768, context_in_dim=4096,
                hidden_size=64, mlp_ratio=4.0, num_heads=2, depth=1, depth_single_blocks=1, axes_dim=[8, 12, 12],
                theta=10000, patch_size=2, qkv_bias=True)
    hgr = HGRBundle.create(HGRConfig.for_family("chroma", width=32, depth=1, heads=4), HGRMeta(threshold=0.1))
    cond = [[torch.zeros(1, 8, 4096), {"pooled_output": torch.zeros(1, 768)}]]
    out["refused"] = {}
    for guidance_embed in (True, False):
        cfg = comfy.model_detection.model_config_from_unet_config(dict(flux, guidance_embed=guidance_embed))
        patcher = comfy.model_patcher.ModelPatcher(cfg.get_model({}), torch.device("cpu"), torch.device("cpu"))
        try:
            model_widths(patcher)
            core = "accepted"
        except UnsupportedFamilyError as exc:
            core = str(exc)
        try:
            N["SafeCFG"].execute(patcher, hgr, cond, cond, 1.0, -1.0)
            node = "accepted"
        except Exception as exc:
            node = f"{type(exc).__name__}: {exc}"
        out["refused"][type(cfg).__name__] = {"core": core, "node": node}

    # an HGR for one family on a MODEL of another, through the node: refused naming both
    sd3 = patcher_of(detected(cases["SD3"], "SD3"))
    xl_hgr = HGRBundle.create(HGRConfig.for_family("sdxl", width=32, depth=1, heads=4), HGRMeta(threshold=0.1))
    hd_hgr = HGRBundle.create(HGRConfig.for_family("hidream", width=32, depth=1, heads=4), HGRMeta(threshold=0.1))
    cond = [[torch.zeros(1, 154, 4096), {"pooled_output": torch.zeros(1, 2048)}]]
    out["mismatch"] = {}
    for label, h in (("sdxl_on_sd3", xl_hgr), ("hidream_on_sd3", hd_hgr)):
        try:
            N["SafeCFG"].execute(sd3, h, cond, cond, 1.0, -1.0)
            out["mismatch"][label] = "accepted"
        except Exception as exc:
            out["mismatch"][label] = str(exc)
    print("RESULT " + json.dumps(out))
''')


@pytest.fixture(scope="module")
def detection(comfyui_root) -> dict:
    """One run of the script for the module's tests (importing ComfyUI takes a while)."""
    return run_in_comfyui(comfyui_root, DETECTION_SCRIPT)


def test_comfy_classes_detected_as_families_with_comfy_widths(detection) -> None:
    res = detection
    assert res["picked"] == {name: name for name in res["picked"]}, res["picked"]  # ComfyUI chose the class meant
    w = res["comfy_widths"]
    clip_lg = w["clip_l"] + w["clip_g"]
    expected = {
        "SD15": [w["clip_l"], 0, "sd1"], "SD20": [w["clip_h"], 0, "sd2"],
        "SDXL": [clip_lg, w["clip_g_pooled"], "sdxl"], "SDXLRefiner": [w["clip_g"], w["clip_g_pooled"], "sdxl_refiner"],
        "SD3": [w["t5xxl"], w["clip_l"] + w["clip_g_pooled"], "sd3"],
        "QwenImage": [w["qwen25_7b"], 0, "qwen_image"], "WAN21_T2V": [w["umt5xxl"], 0, "wan21"],
        "WAN22_T2V": [w["umt5xxl"], 0, "wan22"], "Chroma": [w["t5xxl"], 0, "chroma"],
        "Lumina2": [w["gemma2_2b"], 0, "lumina2"], "HiDream": [w["t5xxl"], w["clip_l"] + w["clip_g_pooled"], "hidream"],
    }
    assert res["widths"] == expected
    assert w["qwen_image_joint"] == w["qwen25_7b"] and w["wan_text_dim"] == w["umt5xxl"]  # the denoisers read these
    assert res["unknown"] == [768, 0, None]


def test_flux_refused_and_other_family_hgr_refused_naming_both(detection) -> None:
    res = detection
    assert set(res["refused"]) == {"Flux", "FluxSchnell"}
    for name, why in (("Flux", "guidance-distilled"), ("FluxSchnell", "1-4 steps")):
        core, node = res["refused"][name]["core"], res["refused"][name]["node"]
        for msg in (core, node):
            assert why in msg and "no negative pass" in msg, msg
            assert "python -m safecfg_core align" in msg and "Align Model (SafeCFG LoRA)" in msg, msg
        assert node.startswith("SafeCFGNodeError: SafeCFG SafeCFG: Flux.1"), node
    mismatch = res["mismatch"]
    assert "sdxl (2048-wide tokens)" in mismatch["sdxl_on_sd3"] and "sd3" in mismatch["sdxl_on_sd3"], mismatch
    assert "trained for hidream" in mismatch["hidream_on_sd3"] and "model is sd3" in mismatch["hidream_on_sd3"]
