"""The one table of model families SafeCFG knows: widths, HGR presets, and the families it refuses.

SafeCFG redirects the *negative* conditioning of classifier-free guidance (METHOD.md), so it can serve every model
that samples with CFG over text-token conditioning, and nothing else. An HGR reads the text encoder's token states
(and the pooled vector, where the model takes one), so its shape is fixed by the family's text encoder; it is trained
per model. Every other module asks this table (``HGRConfig.for_family``, the ComfyUI adapters' model detection, the
mismatch messages) so a family's numbers live once.

Widths are those of ComfyUI's own classes (ComfyUI 0.3.64: ``comfy/supported_models.py``,
``comfy/text_encoders/*``): the token width is what the model's cross-attention reads, after ComfyUI's own
padding (SD3 pads the CLIP-L+G states to T5's 4096; HiDream's T5 states are the cross-attention input while its
Llama states ride in the entry options and are left alone).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Tuple, Union

from .errors import SafeCFGError

ALIGN_HINT = (
    "What can act there is model-level alignment: fine-tune the model itself with a SafeCFG LoRA "
    "(`python -m safecfg_core align`, or the 'Align Model (SafeCFG LoRA)' node) and use the aligned model without "
    "SafeCFG."
)

# HGR sizes. A few million parameters: ~1 ms per prompt on a GPU next to seconds of sampling.
_NET_CLIP = {"width": 320, "depth": 3, "heads": 5}
_NET_WIDE = {"width": 384, "depth": 3, "heads": 6}
_NET_DEMO = {"width": 128, "depth": 2, "heads": 4}


class UnsupportedFamilyError(SafeCFGError, ValueError):
    """The model belongs to a family SafeCFG cannot act on (no negative pass at its usual settings)."""


@dataclass(frozen=True)
class Family:
    """A family SafeCFG serves: what its HGR reads and the settings a test or template starts from."""

    name: str
    title: str
    token_dim: int
    pooled_dim: int
    text_encoder: str
    token_length: str
    """How long its conditioning is: fixed (CLIP chunks, padded T5) or variable (unpadded T5, Qwen, Gemma)."""
    image_size: Tuple[int, int]
    """Default (width, height) in pixels."""
    net: Mapping[str, int]
    comfy_classes: Tuple[str, ...]
    """ComfyUI supported-model config class names (``comfy/supported_models.py``) that are this family."""
    aliases: Tuple[str, ...] = ()
    uses_cfg: bool = True
    """Whether its usual settings sample with a negative pass (cfg > 1); distilled variants are caught at cfg 1."""
    frames: int = 1
    note: str = ""
    training_refusal: str = ""
    """Why Train HGR cannot train through this family's model yet (empty: it can)."""


@dataclass(frozen=True)
class RefusedFamily:
    """A family recognised only to refuse it, saying why SafeCFG cannot act and what would."""

    name: str
    title: str
    comfy_classes: Tuple[str, ...]
    reason: str
    aliases: Tuple[str, ...] = field(default=())

    def message(self) -> str:
        return f"{self.title} cannot use SafeCFG: {self.reason} {ALIGN_HINT}"


FAMILIES: Dict[str, Family] = {f.name: f for f in (
    Family("sd1", "Stable Diffusion 1.x", 768, 0, "CLIP-L", "77 per chunk", (512, 512), _NET_CLIP,
           ("SD15", "SD15_instructpix2pix"), ("sd15", "sd1.5", "sd1x", "sd1.x")),
    Family("sd2", "Stable Diffusion 2.x", 1024, 0, "OpenCLIP-H", "77 per chunk", (768, 768), _NET_CLIP,
           ("SD20", "SD21UnclipL", "SD21UnclipH", "SD_X4Upscaler"), ("sd21", "sd2.1", "sd2x", "sd2.x")),
    Family("sdxl", "Stable Diffusion XL", 2048, 1280, "CLIP-L + CLIP-G", "77 per chunk", (1024, 1024), _NET_WIDE,
           ("SDXL", "SDXL_instructpix2pix", "SSD1B", "Segmind_Vega", "KOALA_700M", "KOALA_1B"),
           ("sd_xl", "sdxl_base"),
           note="SDXL-Turbo/Lightning checkpoints load as SDXL; at cfg 1 the SafeCFG node refuses them."),
    Family("sdxl_refiner", "Stable Diffusion XL refiner", 1280, 1280, "CLIP-G", "77 per chunk", (1024, 1024),
           _NET_WIDE, ("SDXLRefiner",), ("sdxl-refiner", "refiner")),
    Family("sd3", "Stable Diffusion 3 / 3.5", 4096, 2048, "CLIP-L + CLIP-G + T5-XXL (CLIP padded to 4096)",
           "77 + T5 tokens (T5 at least 77, longer prompts longer)", (1024, 1024), _NET_WIDE, ("SD3",),
           ("sd35", "sd3.5", "sd3_5", "sd3.5_large", "sd3.5_medium")),
    Family("qwen_image", "Qwen-Image", 3584, 0, "Qwen2.5-VL-7B", "variable (no padding)", (1328, 1328), _NET_WIDE,
           ("QwenImage",), ("qwen-image", "qwenimage", "qwen")),
    Family("wan21", "Wan 2.1 / 2.2 A14B text-to-video", 4096, 0, "umT5-XXL", "512 (padded), longer prompts longer",
           (832, 480), _NET_WIDE, ("WAN21_T2V",), ("wan2.1", "wan_2.1", "wan21_t2v", "wan22_a14b"), frames=81,
           note="Wan 2.2 A14B (high and low noise) loads with the Wan 2.1 architecture."),
    Family("wan22", "Wan 2.2 TI2V 5B text-to-video", 4096, 0, "umT5-XXL", "512 (padded), longer prompts longer",
           (1280, 704), _NET_WIDE, ("WAN22_T2V",), ("wan2.2", "wan_2.2", "wan22_t2v", "wan22_5b"), frames=121),
    Family("chroma", "Chroma", 4096, 0, "T5-XXL", "variable (no padding)", (1024, 1024), _NET_WIDE,
           ("Chroma", "ChromaRadiance")),
    Family("lumina2", "Lumina Image 2.0", 2304, 0, "Gemma-2-2B", "variable (no padding)", (1024, 1024), _NET_WIDE,
           ("Lumina2",), ("lumina", "lumina_2", "lumina-image-2")),
    Family("hidream", "HiDream-I1", 4096, 2048, "CLIP-L + CLIP-G (pooled), T5-XXL (tokens), Llama-3.1-8B (options)",
           "128 (T5 padded)", (1024, 1024), _NET_WIDE, ("HiDream",), ("hidream_i1", "hidream-i1"),
           note="I1 Full samples with CFG; Dev and Fast are distilled and run at cfg 1 (refused there). The Llama "
                "states (conditioning_llama3) are not redirected.",
           training_refusal="HiDream's model reads the prompt's Llama-3.1 states in every block beside the T5 tokens "
                            "the HGR redirects, and the trainer gives the model tokens and the pooled vector only, so "
                            "an HGR cannot be trained through HiDream yet. SafeCFG and the detector do run on "
                            "HiDream with an HGR of its family."),
    Family("demo", "SafeCFG demo world", 384, 0, "MiniLM-L6", "77", (64, 64), _NET_DEMO, ("SafeCFGDemoConfig",)),
)}
"""The families SafeCFG serves, by canonical name."""

REFUSED: Dict[str, RefusedFamily] = {r.name: r for r in (
    RefusedFamily("flux_dev", "Flux.1 dev (and Fill/inpaint)", ("Flux", "FluxInpaint"),
                  "it is guidance-distilled: the guidance strength is an input of the model (FluxGuidance) and it "
                  "samples at cfg 1, so there is no negative pass for SafeCFG to redirect.", ("flux", "flux1", "flux.1")),
    RefusedFamily("flux_schnell", "Flux.1 schnell", ("FluxSchnell",),
                  "it is timestep- and guidance-distilled and samples in 1-4 steps at cfg 1, so there is no negative "
                  "pass for SafeCFG to redirect.", ("schnell",)),
)}
"""Families recognised to refuse them. Turbo/Lightning/LCM/Hyper checkpoints load as their base class (an SDXL
Turbo is ComfyUI's SDXL), so they are refused where they sample: at cfg 1 (the SafeCFG node's guard)."""

DISTILLED_MESSAGE = (
    "Distilled few-step models (SDXL-Turbo, Lightning, Hyper-SD, LCM, HiDream Dev/Fast) sample at cfg 1, where "
    "there is no negative pass for SafeCFG to redirect. " + ALIGN_HINT
)

KNOWN_FAMILIES: Dict[str, Tuple[int, int]] = {name: (f.token_dim, f.pooled_dim) for name, f in FAMILIES.items()}
"""Token width and pooled width of every family SafeCFG serves."""

_ALIASES: Dict[str, str] = {}
for _entry in (*FAMILIES.values(), *REFUSED.values()):
    for _alias in _entry.aliases:
        _ALIASES[_alias] = _entry.name
_BY_CLASS: Dict[str, Union[Family, RefusedFamily]] = {
    cls: entry for entry in (*FAMILIES.values(), *REFUSED.values()) for cls in entry.comfy_classes
}


def normalize_family(family: Optional[str]) -> Optional[str]:
    """Lower-case a family name and map common aliases (``sd15`` -> ``sd1``, ``SD3.5`` -> ``sd3``); None stays
    None. Unknown names come back lower-cased (an HGR may record a family this table does not know)."""
    if family is None:
        return None
    f = str(family).strip().lower()
    return _ALIASES.get(f, f)


def families_with_widths(token_dim: int, pooled_dim: int = 0) -> List[str]:
    """The served families with these widths (exact pooled width first; token width alone if none has it)."""
    hits = [name for name, f in FAMILIES.items() if f.token_dim == token_dim and f.pooled_dim == pooled_dim]
    return hits or [name for name, f in FAMILIES.items() if f.token_dim == token_dim]


def guess_family(token_dim: int, pooled_dim: int = 0) -> Optional[str]:
    """The family with these widths if exactly one has them (several share T5's 4096: then None)."""
    hits = families_with_widths(token_dim, pooled_dim)
    return hits[0] if len(hits) == 1 else None


def describe_model_widths(token_dim: int, pooled_dim: int = 0) -> str:
    """``'sdxl'``, ``'wan21 or wan22 or chroma'``, or ``'an unknown family'``: who gives these widths, for
    messages."""
    hits = families_with_widths(token_dim, pooled_dim)
    return " or ".join(hits) if hits else "an unknown family"


def family(name: str) -> Family:
    """The served family called ``name`` (aliases allowed); refused families raise UnsupportedFamilyError with the
    reason, unknown ones a ValueError listing the known families."""
    key = normalize_family(name) or ""
    if key in FAMILIES:
        return FAMILIES[key]
    if key in REFUSED:
        raise UnsupportedFamilyError(f"{REFUSED[key].message()} SafeCFG serves the known families {sorted(FAMILIES)}.")
    raise ValueError(
        f"No model family called {name!r}; known families: {sorted(FAMILIES)}. For another model build "
        "HGRConfig(token_dim=..., pooled_dim=..., model_family=...) yourself."
    )


def family_for_class(class_name: str) -> Optional[Union[Family, RefusedFamily]]:
    """The family of a ComfyUI supported-model config class (``type(model.model.model_config).__name__``)."""
    return _BY_CLASS.get(class_name)


def check_served(entry: Optional[Union[Family, RefusedFamily]]) -> Optional[Family]:
    """``entry`` as a served Family (None stays None); a refused family raises UnsupportedFamilyError."""
    if isinstance(entry, RefusedFamily):
        raise UnsupportedFamilyError(entry.message())
    return entry


# Where ComfyUI's detected configs record the text width the denoiser reads (comfy/model_detection.py), in the
# order tried; a family row is used when none is present (Qwen-Image, Wan keep theirs as model defaults).
_WIDTH_KEYS = ("context_dim", "context_in_dim", "cap_feat_dim", "text_dim", "joint_attention_dim")


def token_dim_from_unet_config(unet_config: Mapping[str, object]) -> Optional[int]:
    """The text token width a ComfyUI ``unet_config`` states, if it states one."""
    for key in _WIDTH_KEYS:
        value = unet_config.get(key)
        if isinstance(value, (list, tuple)):
            value = value[0] if value else None
        if isinstance(value, int) and not isinstance(value, bool) and value > 1:
            return value
    embedder = unet_config.get("context_embedder_config")  # SD3: the Linear that reads the tokens
    if isinstance(embedder, Mapping):
        params = embedder.get("params")
        if isinstance(params, Mapping) and isinstance(params.get("in_features"), int):
            return int(params["in_features"])
    return None


__all__ = [
    "ALIGN_HINT", "DISTILLED_MESSAGE", "FAMILIES", "KNOWN_FAMILIES", "REFUSED", "Family", "RefusedFamily",
    "UnsupportedFamilyError", "check_served", "describe_model_widths", "families_with_widths", "family",
    "family_for_class", "guess_family", "normalize_family", "token_dim_from_unet_config",
]
