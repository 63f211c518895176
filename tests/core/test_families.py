"""The family table (safecfg_core/families.py): presets, aliases, refused families, mismatch messages, variable
token lengths. No ComfyUI here; tests/comfy/test_family_detection.py checks the table against ComfyUI's classes."""
from __future__ import annotations

import pytest
import torch

from safecfg_core.conditioning import Cond
from safecfg_core.errors import HGRMismatchError
from safecfg_core.families import (FAMILIES, REFUSED, UnsupportedFamilyError, describe_model_widths, family,
                                   family_for_class, guess_family, normalize_family, token_dim_from_unet_config)
from safecfg_core.guidance import GateConfig, SafeGuidance
from safecfg_core.hgr import HGRBundle, HGRConfig, HGRMeta
from safecfg_core.judge import judge_prompt
from safecfg_core.padding import pad_to_common_length

# Widths read off the model cards / ComfyUI's text encoders (comfy/text_encoders/*): CLIP-L 768, OpenCLIP-H 1024,
# CLIP-L+G 768+1280 with G's 1280 pooled, SD3 pads to T5-XXL's 4096 and pools L+G (2048), Qwen2.5-VL-7B 3584,
# umT5-XXL / T5-XXL 4096, Gemma-2-2B 2304, MiniLM-L6 384.
EXPECTED_WIDTHS = {
    "sd1": (768, 0), "sd2": (1024, 0), "sdxl": (2048, 1280), "sdxl_refiner": (1280, 1280), "sd3": (4096, 2048),
    "qwen_image": (3584, 0), "wan21": (4096, 0), "wan22": (4096, 0), "chroma": (4096, 0), "lumina2": (2304, 0),
    "hidream": (4096, 2048), "demo": (384, 0),
}


def test_every_family_has_a_preset_of_its_widths_and_a_few_million_parameters() -> None:
    assert set(FAMILIES) == set(EXPECTED_WIDTHS)
    for name, widths in EXPECTED_WIDTHS.items():
        cfg = HGRConfig.for_family(name)
        assert (cfg.token_dim, cfg.pooled_dim, cfg.model_family) == (*widths, name)
        assert HGRConfig.from_dict(cfg.to_dict()) == cfg
        n = cfg.parameter_count()
        assert n == HGRBundle.create(cfg).num_parameters()
        if name != "demo":
            assert 1_000_000 <= n <= 12_000_000, (name, n)
        w, h = FAMILIES[name].image_size
        assert w % 16 == 0 and h % 16 == 0 and w >= 64


@pytest.mark.parametrize("alias,name", [("SD1.5", "sd1"), ("sd15", "sd1"), ("SD2.1", "sd2"), ("sd3.5", "sd3"),
                                        ("SD35", "sd3"), ("Qwen-Image", "qwen_image"), ("wan2.1", "wan21"),
                                        ("Wan2.2", "wan22"), ("flux", "flux_dev"), ("HiDream-I1", "hidream")])
def test_aliases(alias: str, name: str) -> None:
    assert normalize_family(alias) == name


def test_refused_families_say_why_and_what_would_act() -> None:
    for alias in ("flux", "flux_dev", "Flux.1", "schnell", "flux_schnell"):
        with pytest.raises(UnsupportedFamilyError) as ei:
            HGRConfig.for_family(alias)
        msg = str(ei.value)
        assert "cfg 1" in msg and "no negative pass" in msg, msg
        assert "python -m safecfg_core align" in msg and "Align Model (SafeCFG LoRA)" in msg, msg
        assert isinstance(ei.value, ValueError)  # callers that catch ValueError keep working
    assert "guidance-distilled" in REFUSED["flux_dev"].message()
    assert "1-4 steps" in REFUSED["flux_schnell"].message()
    with pytest.raises(ValueError, match="known families") as ei:
        family("pixart")
    assert not isinstance(ei.value, UnsupportedFamilyError)


def test_comfy_class_names_map_to_families() -> None:
    expected = {
        "SD15": "sd1", "SD20": "sd2", "SD21UnclipH": "sd2", "SDXL": "sdxl", "SSD1B": "sdxl",
        "SDXLRefiner": "sdxl_refiner", "SD3": "sd3", "QwenImage": "qwen_image", "WAN21_T2V": "wan21",
        "WAN22_T2V": "wan22", "Chroma": "chroma", "Lumina2": "lumina2", "HiDream": "hidream",
        "Flux": "flux_dev", "FluxInpaint": "flux_dev", "FluxSchnell": "flux_schnell",
    }
    for cls, name in expected.items():
        entry = family_for_class(cls)
        assert entry is not None and entry.name == name, cls
    assert family_for_class("WAN21_I2V") is None and family_for_class("StableAudio") is None


def test_token_width_read_from_detected_unet_configs() -> None:
    assert token_dim_from_unet_config({"context_dim": 768, "in_channels": 4}) == 768
    assert token_dim_from_unet_config({"context_embedder_config": {"target": "torch.nn.Linear",
                                                                   "params": {"in_features": 4096}}}) == 4096
    assert token_dim_from_unet_config({"image_model": "lumina2", "cap_feat_dim": 2304}) == 2304
    assert token_dim_from_unet_config({"image_model": "chroma", "context_in_dim": 4096}) == 4096
    assert token_dim_from_unet_config({"image_model": "qwen_image"}) is None  # width lives in the model's defaults
    assert token_dim_from_unet_config({"context_dim": 1}) is None  # SDXL-style configs without cross-attention


def test_widths_name_the_families_that_have_them() -> None:
    assert guess_family(768) == "sd1" and guess_family(2048, 1280) == "sdxl"
    assert guess_family(4096, 0) is None  # Wan and Chroma share T5's width
    assert describe_model_widths(4096, 0) == "wan21 or wan22 or chroma"
    assert describe_model_widths(4096, 2048) == "sd3 or hidream"
    assert describe_model_widths(999) == "an unknown family"


@pytest.mark.parametrize("hgr_family,model,widths,named", [
    ("sd3", "hidream", (4096, 2048), ("sd3", "hidream")),       # same widths, other model: refused by family
    ("wan21", "wan22", (4096, 0), ("wan21", "wan22")),
    ("qwen_image", "chroma", (4096, 0), ("qwen_image", "3584", "chroma", "4096")),
    ("sdxl", None, (768, 0), ("sdxl", "2048", "768", "sd1")),      # widths only: the family is named from them
    ("chroma", None, (3584, 0), ("chroma", "qwen_image")),
])
def test_hgr_for_one_family_refused_on_another_naming_both(hgr_family, model, widths, named) -> None:
    bundle = HGRBundle.create(HGRConfig.for_family(hgr_family, width=32, depth=1, heads=4))
    with pytest.raises(HGRMismatchError) as ei:
        bundle.check_compatible(*widths, model)
    msg = str(ei.value)
    for word in named:
        assert word in msg, (word, msg)
    bundle.check_compatible(bundle.config.token_dim, bundle.config.pooled_dim, hgr_family)


def _gated_bundle(name: str) -> HGRBundle:
    """A small HGR of the family's widths with a non-zero output head, so Delta is not zero."""
    bundle = HGRBundle.create(HGRConfig.for_family(name, width=32, depth=1, heads=4), HGRMeta(threshold=0.0), seed=0)
    with torch.no_grad():
        bundle.net.out_proj.weight.normal_(0, 0.05)
    return bundle


@pytest.mark.parametrize("name,c_len,u_len", [("qwen_image", 13, 4), ("chroma", 9, 1), ("wan21", 512, 512),
                                              ("lumina2", 21, 7), ("sd3", 154, 154)])
def test_unpadded_and_padded_token_lengths_are_judged(name: str, c_len: int, u_len: int) -> None:
    """c and u of their own lengths (no padding, as Qwen/T5/Gemma give them) go through the HGR and the judge;
    Delta has u's length, so u* is a conditioning of the length the sampler already had."""
    bundle = _gated_bundle(name)
    t, p = bundle.config.token_dim, bundle.config.pooled_dim
    g = torch.Generator().manual_seed(1)

    def cond(n: int) -> Cond:
        return Cond(torch.randn(1, n, t, generator=g), torch.randn(1, p, generator=g) if p else None)

    c, u = cond(c_len), cond(u_len)
    verdict = judge_prompt(SafeGuidance(bundle, GateConfig(mode="always")), [c], u)
    assert verdict.redirected
    assert verdict.result.u_star.tokens.shape == u.tokens.shape
    assert not torch.equal(verdict.result.u_star.tokens, u.tokens)


def test_padding_keeps_comfyui_rule_for_clip_and_stays_bounded_for_variable_lengths() -> None:
    clip = [torch.randn(1, n, 3) for n in (77, 154, 231)]
    padded = pad_to_common_length(clip)
    assert {t.shape[1] for t in padded} == {462}  # ComfyUI's least common multiple, exact repetition
    assert torch.equal(padded[0], clip[0].repeat(1, 6, 1))
    ragged = [torch.randn(1, n, 3) for n in range(10, 40)]  # 30 unpadded Qwen/T5 prompts: LCM would be ~5e15
    out = pad_to_common_length(ragged)
    assert {t.shape[1] for t in out} == {39}
    for src, dst in zip(ragged, out):
        n = src.shape[1]
        assert torch.equal(dst[:, :n], src)  # the prompt's own tokens first
        assert torch.equal(dst[:, n:], src.repeat(1, 4, 1)[:, :39 - n])  # then its own tokens again, cyclically
    batch = Cond.cat([Cond(t, None) for t in ragged])
    assert tuple(batch.tokens.shape) == (30, 39, 3)
