"""Test-only ComfyUI nodes: the text encoders of the DiT families at a reduced depth, and HiDream's diffusion model
at a reduced size (installed only by the DiT tests).

Why a test-only loader: these families' text encoders have billions of parameters (T5-XXL 4.7B, umT5-XXL 5.7B,
Qwen2.5-VL-7B, Gemma-2-2B, Llama-3.1-8B) and ComfyUI's stock ``CLIPLoader`` detects each by a key of its *last* layer
(``encoder.block.23...`` for T5) and builds the full-depth model, which CI can neither hold nor build. So this node
builds **ComfyUI's own text-encoder classes** for the family (``sd3_clip.SD3ClipModel``, ``pixart_t5`` for Chroma,
``wan.WanT5Model``, ``qwen_image.QwenImageTEModel``, ``lumina2.LuminaModel``, ``hidream.HiDreamTEModel``) with
ComfyUI's own tokenizers, through ComfyUI's own hook for a reduced configuration
(``model_options['<encoder>_model_config']``, the hook ``long_clipl`` uses): fewer layers and a narrow feed-forward,
the real token width. Everything downstream is stock:
``comfy.sd.CLIP``, CLIPTextEncode, the conditioning layout (T5 lengths, Qwen's template cut and attention mask,
umT5's 512-token padding with zeroed padding).

Two reductions beyond depth, both outside what the HGR sees: the token-embedding table has ``VOCAB_ROWS`` rows
and ids are folded into it (``id % rows``), so a 152k-token vocabulary costs no memory; and umT5/Gemma, whose
tokenizers ComfyUI reads from the weights file (not shipped in ComfyUI), use a small SentencePiece model the
fixture builds (the ``tokenizer`` input: a file in models/text_encoders holding it under ``spiece_model``, as
ComfyUI's own umT5 and Gemma files do). Weights are random and seeded (``seed``).
"""
from __future__ import annotations

from typing import Any, Dict, Tuple

import torch

VOCAB_ROWS = 2048
_THIN = {"intermediate_size": 256}
_T5 = {"num_layers": 1, "d_ff": 256, "num_heads": 8, "vocab_size": VOCAB_ROWS}
_CLIP = {"num_hidden_layers": 3, "vocab_size": VOCAB_ROWS, **_THIN}


def _targets() -> Dict[str, Tuple[Any, Any, Dict[str, dict], bool]]:
    """family -> (ComfyUI text-encoder class, tokenizer class, reduced configs, needs a SentencePiece model)."""
    from comfy.text_encoders import hidream, lumina2, pixart_t5, qwen_image, sd3_clip, wan

    return {
        "sd3": (sd3_clip.sd3_clip(clip_l=True, clip_g=True, t5=True), sd3_clip.SD3Tokenizer,
                {"clip_l_model_config": _CLIP, "clip_g_model_config": _CLIP, "t5xxl_model_config": _T5}, False),
        "chroma": (pixart_t5.pixart_te(), pixart_t5.PixArtTokenizer, {"t5xxl_model_config": _T5}, False),
        "wan21": (wan.te(), wan.WanT5Tokenizer, {"umt5xxl_model_config": _T5}, True),
        "wan22": (wan.te(), wan.WanT5Tokenizer, {"umt5xxl_model_config": _T5}, True),  # the same umT5-XXL
        "qwen_image": (qwen_image.te(), qwen_image.QwenImageTokenizer,
                       {"qwen25_7b_model_config": {"num_hidden_layers": 1, "vocab_size": VOCAB_ROWS, **_THIN}}, False),
        "lumina2": (lumina2.te(), lumina2.LuminaTokenizer,
                    {"gemma2_2b_model_config": {"num_hidden_layers": 3, "vocab_size": VOCAB_ROWS, **_THIN}}, True),
        # HiDream's four encoders as its QuadrupleCLIPLoader builds them; the Llama states the model reads per block
        # (HIDREAM_REDUCTION's llama_layers) are the reduced Llama's layers
        "hidream": (hidream.hidream_clip(clip_l=True, clip_g=True, t5=True, llama=True), hidream.HiDreamTokenizer,
                    {"clip_l_model_config": _CLIP, "clip_g_model_config": _CLIP, "t5xxl_model_config": _T5,
                     "vocab_size": VOCAB_ROWS,
                     "llama_model_config": {"num_hidden_layers": 2, "vocab_size": VOCAB_ROWS, **_THIN}}, False),
    }


def _fold_vocabulary(te_model: torch.nn.Module) -> None:
    """Every encoder's token embedding looks ids up modulo its (reduced) number of rows."""
    import comfy.sd1_clip

    for sub in te_model.modules():
        if isinstance(sub, comfy.sd1_clip.SDClipModel):
            emb = sub.transformer.get_input_embeddings()
            rows = int(emb.weight.shape[0])
            original = emb.forward

            def folded(ids, *args, _orig=original, _rows=rows, **kwargs):
                return _orig(ids % _rows, *args, **kwargs)

            emb.forward = folded


def _init(module: torch.nn.Module, seed: int) -> None:
    """Seeded random weights (ComfyUI's ops leave them uninitialised). Qwen's vision tower is left as built: it
    only runs for image prompts, which these tests never send."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if ".visual." in f".{name}":
                continue
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) / max(1, p[0].numel()) ** 0.5)
            elif name.endswith("bias"):
                p.zero_()
            else:
                p.fill_(1.0)


class SafeCFGTestReducedTextEncoder:
    """Loads a DiT family's text encoder as ComfyUI's own classes at a reduced depth (test fixture only)."""

    @classmethod
    def INPUT_TYPES(cls):
        import folder_paths

        return {"required": {"family": (sorted(_targets()),),
                             "tokenizer": (["none"] + folder_paths.get_filename_list("text_encoders"),),
                             "seed": ("INT", {"default": 0, "min": 0, "max": 2 ** 31})}}

    RETURN_TYPES = ("CLIP",)
    FUNCTION = "load"
    CATEGORY = "safecfg_tests"

    def load(self, family: str, tokenizer: str, seed: int):
        import comfy.sd
        import folder_paths

        te_class, tok_class, configs, needs_spiece = _targets()[family]
        tokenizer_data = {}
        if needs_spiece:
            if tokenizer == "none":
                raise ValueError(f"SafeCFG test loader: {family} needs a SentencePiece tokenizer file")
            from safetensors.torch import load_file

            path = folder_paths.get_full_path_or_raise("text_encoders", tokenizer)
            tokenizer_data["spiece_model"] = load_file(path)["spiece_model"]

        class Target:
            clip = te_class
            tokenizer = tok_class
            params: Dict[str, Any] = {}

        clip = comfy.sd.CLIP(Target, tokenizer_data=tokenizer_data,
                             model_options={"dtype": torch.float32, **configs})
        _init(clip.cond_stage_model, seed)
        _fold_vocabulary(clip.cond_stage_model)
        return (clip,)


HIDREAM_REDUCTION = {"num_layers": 1, "num_single_layers": 1, "num_attention_heads": 1, "num_routed_experts": 2,
                     "num_activated_experts": 1, "llama_layers": [0, 1]}
"""What the HiDream test model changes in ComfyUI's HiDream-I1 config: one block of each kind, one 128-wide head, two
experts; one Llama layer per block. The token widths (T5's and Llama's 4096, the pooled 2048) stay the real ones."""


class SafeCFGTestReducedHiDream:
    """Builds HiDream's diffusion model as ComfyUI's own classes at a reduced size (test fixture only).

    Why not ``UNETLoader``: ComfyUI's detection gives HiDream one fixed configuration (HiDream-I1's 17 B parameters,
    ``comfy/model_detection.py``) whatever the file's size, so no reduced file loads as HiDream. This node takes the
    configuration ComfyUI's detection gives for HiDream's keys, applies :data:`HIDREAM_REDUCTION`, and builds the
    model the way ``comfy.sd.load_diffusion_model_state_dict`` does (ComfyUI's ``HiDream`` supported-model class, its
    ``model_base.HiDream``, a ``ModelPatcher``), with seeded random weights."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0, "min": 0, "max": 2 ** 31})}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "load"
    CATEGORY = "safecfg_tests"

    def load(self, seed: int):
        import comfy.model_detection as md
        import comfy.model_management as mm
        import comfy.model_patcher

        seed_keys = {"caption_projection.0.linear.weight": torch.empty((1,), device="meta")}
        config = md.detect_unet_config(seed_keys, "")
        if config is None or config.get("image_model") != "hidream":
            raise RuntimeError("ComfyUI's detection no longer gives HiDream for its caption projection key")
        model_config = md.model_config_from_unet_config({**config, **HIDREAM_REDUCTION})
        model_config.set_inference_dtype(torch.float32, None)
        model = model_config.get_model({}, device="cpu")
        _init(model.diffusion_model, seed)
        return (comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                                 offload_device=mm.unet_offload_device()),)


NODE_CLASS_MAPPINGS = {"SafeCFGTestReducedTextEncoder": SafeCFGTestReducedTextEncoder,
                       "SafeCFGTestReducedHiDream": SafeCFGTestReducedHiDream}
NODE_DISPLAY_NAME_MAPPINGS = {"SafeCFGTestReducedTextEncoder": "Reduced DiT text encoder (SafeCFG tests only)",
                              "SafeCFGTestReducedHiDream": "Reduced HiDream model (SafeCFG tests only)"}
