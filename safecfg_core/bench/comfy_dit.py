"""ComfyUI's own DiT-family denoisers for the benchmark (``--models sd3,qwen_image,wan21,wan22,chroma,lumina2,
hidream``).

Like ``comfy_unet`` (whose import and initialisation it shares), this touches ComfyUI only when these models are
asked for, from a checkout the user names. The model is what ComfyUI builds for a checkpoint of the family:

* full size: a few key names and shapes of the real checkpoint go through ComfyUI's own
  ``model_detection.model_config_from_unet``, whose supported-model class builds the model (SD3.5 Large, Qwen-Image,
  Wan 2.1 14B t2v, Wan 2.2 TI2V 5B, Chroma, Lumina Image 2.0, HiDream-I1 Full), random weights, ``--dtype``, at
  the family's usual size;
* ``--quick``: the same classes from a small explicit config (one or two blocks, narrow) that keeps the family's
  token width, at 8x8 latents (2 latent frames for Wan), so CI runs every family on a CPU in seconds.

ComfyUI's ``BaseModel.apply_model`` does the rest exactly as in a ComfyUI sampler (input scaling, the flow
timestep, each family's extra inputs), and its ``model_sampling`` is the schedule the core's Euler sampler walks.
Conditionings are random tensors of the family's shapes: sampling time does not depend on what the text says.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch

from ..conditioning import Cond
from ..model_inputs import apply_model_extras
from .comfy_unet import comfy_module, import_comfy, random_init
from .models import BenchModel, make_guidance, random_cond, text_encoder_for


def _blocks(prefix: str, n: int) -> Dict[str, Tuple[int, ...]]:
    return {f"{prefix}{i}.x": (1,) for i in range(n)}


# Keys (and shapes) of the real checkpoints that ComfyUI's detection reads (comfy/model_detection.py).
REAL_KEYS: Dict[str, Dict[str, Tuple[int, ...]]] = {
    "sd3": {"joint_blocks.0.context_block.attn.qkv.weight": (1,), "x_embedder.proj.weight": (2432, 16, 2, 2),
            "final_layer.linear.weight": (64, 2432), "y_embedder.mlp.0.weight": (2432, 2048),
            "context_embedder.weight": (2432, 4096), "pos_embed": (1, 36864, 2432),
            "joint_blocks.0.context_block.attn.ln_q.weight": (64,)},  # SD3.5 Large (38 blocks)
    "qwen_image": {"txt_norm.weight": (3584,), "img_in.weight": (3072, 64), **_blocks("transformer_blocks.", 60)},
    "wan21": {"head.modulation": (1, 2, 5120), "head.head.weight": (64, 5120), "blocks.0.ffn.0.weight": (13824, 5120),
              "patch_embedding.weight": (5120, 16, 1, 2, 2), **_blocks("blocks.", 40)},  # Wan 2.1 / 2.2 A14B
    "chroma": {"double_blocks.0.img_attn.norm.key_norm.scale": (128,), "img_in.weight": (3072, 64),
               "distilled_guidance_layer.norms.0.scale": (5120,), **_blocks("double_blocks.", 19),
               **_blocks("single_blocks.", 38)},
    "lumina2": {"cap_embedder.1.weight": (2304, 2304), **_blocks("layers.", 26)},
    "wan22": {"head.modulation": (1, 2, 3072), "head.head.weight": (192, 3072), "blocks.0.ffn.0.weight": (14336, 3072),
              "patch_embedding.weight": (3072, 48, 1, 2, 2), **_blocks("blocks.", 30)},  # Wan 2.2 TI2V 5B
    "hidream": {"caption_projection.0.linear.weight": (1,)},  # ComfyUI's detection fixes HiDream-I1's config
}
# --quick: the same classes, small, the family's token width kept.
QUICK_CONFIGS: Dict[str, Dict[str, Any]] = {
    "sd3": {"in_channels": 16, "out_channels": 16, "patch_size": 2, "depth": 1, "input_size": None,
            "adm_in_channels": 2048, "pos_embed_scaling_factor": None, "pos_embed_max_size": 16, "num_patches": 256,
            "context_embedder_config": {"target": "torch.nn.Linear",
                                        "params": {"in_features": 4096, "out_features": 64}},
            "qk_norm": "rms", "x_block_self_attn_layers": []},
    "qwen_image": {"image_model": "qwen_image", "in_channels": 64, "num_layers": 1, "num_attention_heads": 2,
                   "attention_head_dim": 64, "axes_dims_rope": (8, 28, 28)},
    "wan21": {"image_model": "wan2.1", "model_type": "t2v", "dim": 128, "out_dim": 16, "num_heads": 1, "ffn_dim": 256,
              "num_layers": 1, "patch_size": (1, 2, 2), "freq_dim": 256, "window_size": (-1, -1), "qk_norm": True,
              "cross_attn_norm": True, "eps": 1e-6, "in_dim": 16},
    "chroma": {"image_model": "chroma", "in_channels": 64, "out_channels": 64, "patch_size": 2,
               "context_in_dim": 4096, "hidden_size": 128, "mlp_ratio": 2.0, "num_heads": 2, "depth": 1,
               "depth_single_blocks": 1, "axes_dim": [16, 24, 24], "theta": 10000, "qkv_bias": True,
               "in_dim": 64, "out_dim": 128, "hidden_dim": 128, "n_layers": 1},
    "lumina2": {"image_model": "lumina2", "patch_size": 2, "in_channels": 16, "dim": 128, "cap_feat_dim": 2304,
                "n_layers": 1, "n_refiner_layers": 1, "n_heads": 2, "n_kv_heads": 1, "qk_norm": True,
                "axes_dims": [32, 16, 16], "axes_lens": [300, 512, 512]},
    "wan22": {"image_model": "wan2.1", "model_type": "t2v", "dim": 128, "out_dim": 48, "num_heads": 1, "ffn_dim": 256,
              "num_layers": 1, "patch_size": (1, 2, 2), "freq_dim": 256, "window_size": (-1, -1), "qk_norm": True,
              "cross_attn_norm": True, "eps": 1e-6, "in_dim": 48},
    "hidream": {"image_model": "hidream", "attention_head_dim": 128, "axes_dims_rope": [64, 32, 32],
                "caption_channels": [4096, 4096], "max_resolution": [128, 128], "in_channels": 16, "out_channels": 16,
                "patch_size": 2, "text_emb_dim": 2048, "num_layers": 1, "num_single_layers": 1,
                "num_attention_heads": 1, "num_routed_experts": 2, "num_activated_experts": 1,
                "llama_layers": [0, 1]},
}
# family: (token width, pooled width, text tokens, latent shape at the usual size, what that size is). Qwen-Image's
# and Wan's latents have a frame axis (ComfyUI adds it to Qwen-Image's empty image latents before sampling).
SHAPES: Dict[str, Tuple[int, int, int, list, str]] = {
    "sd3": (4096, 2048, 154, [1, 16, 128, 128], "1024x1024 px, 77 CLIP + 77 T5 tokens"),
    "qwen_image": (3584, 0, 128, [1, 16, 1, 166, 166], "1328x1328 px, 128 Qwen2.5-VL tokens"),
    "wan21": (4096, 0, 512, [1, 16, 21, 60, 104], "832x480 px, 81 frames, 512 umT5 tokens"),
    "chroma": (4096, 0, 128, [1, 16, 128, 128], "1024x1024 px, 128 T5 tokens"),
    "lumina2": (2304, 0, 128, [1, 16, 128, 128], "1024x1024 px, 128 Gemma tokens"),
    "wan22": (4096, 0, 512, [1, 48, 31, 44, 80], "1280x704 px, 121 frames, 512 umT5 tokens"),
    "hidream": (4096, 2048, 128, [1, 16, 128, 128], "1024x1024 px, 128 T5 and 128 Llama tokens"),
}
VIDEO_FAMILIES = ("wan21", "wan22")
DIT_FAMILIES = tuple(SHAPES)


class ComfySchedule:
    """ComfyUI's ``model_sampling`` as the core's schedule (what ``schedules.get_sigmas`` and ``sampling.sample``
    call): the family's own sigmas, timesteps and noise scaling (rectified flow for these families)."""

    def __init__(self, model_sampling: Any) -> None:
        self.ms = model_sampling

    @property
    def sigmas(self) -> torch.Tensor:
        return self.ms.sigmas

    @property
    def device(self) -> torch.device:
        return self.ms.sigmas.device

    def to(self, device: Any) -> "ComfySchedule":
        self.ms.to(device)
        return self

    @property
    def sigma_min(self) -> torch.Tensor:
        return self.ms.sigma_min

    @property
    def sigma_max(self) -> torch.Tensor:
        return self.ms.sigma_max

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        return self.ms.timestep(sigma)

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        return self.ms.sigma(timestep)

    def noise_scaling(self, sigma: torch.Tensor, noise: torch.Tensor, latent: torch.Tensor,
                      max_denoise: bool = False) -> torch.Tensor:
        return self.ms.noise_scaling(sigma.reshape(1), noise, latent, max_denoise)

    def inverse_noise_scaling(self, sigma: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        return self.ms.inverse_noise_scaling(sigma, latent)

    def is_max_denoise(self, sigmas: torch.Tensor) -> bool:
        return bool(float(sigmas[0]) >= float(self.ms.sigma_max) - 1e-6)


class ComfyApplyDenoiser:
    """``D(x, sigma, cond)`` through ComfyUI's ``BaseModel.apply_model`` with the family's extra inputs."""

    def __init__(self, model: Any, family: str) -> None:
        self.model = model
        self.family = family
        self._llama: Optional[torch.Tensor] = None

    def _llama_states(self, batch: int, tokens: int, device: torch.device) -> torch.Tensor:
        """HiDream's blocks read the prompt's Llama-3.1 states (one layer per block) beside the T5 tokens: random
        states of that shape, drawn once (the time does not depend on what they say)."""
        layers = max(self.model.diffusion_model.llama_layers) + 1
        if self._llama is None or self._llama.shape[0] != batch:
            gen = torch.Generator().manual_seed(5)
            self._llama = torch.randn(batch, layers, tokens, 4096, generator=gen).to(device, self.model.get_dtype())
        return self._llama

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: Cond) -> torch.Tensor:
        extra: Dict[str, Any] = apply_model_extras(self.family, cond, x.shape[0], x.device)
        if cond.pooled is not None and self.family in ("sd3", "hidream"):
            extra["y"] = cond.pooled
        if self.family == "hidream":
            extra["encoder_hidden_states_llama3"] = self._llama_states(x.shape[0], cond.tokens.shape[1], x.device)
        out = self.model.apply_model(x, sigma, c_crossattn=cond.tokens, **extra)
        return out.float()


def build_model(family: str, device: torch.device, dtype: torch.dtype, quick: bool, init: bool = True) -> Any:
    """ComfyUI's model (``model_base``) of ``family``, random weights, in eval mode on ``device``. ``init=False``
    skips the weights (with ``device='meta'``: the architecture of the real model without its memory)."""
    md = comfy_module("comfy.model_detection")
    if quick:
        config = md.model_config_from_unet_config(dict(QUICK_CONFIGS[family]))
    else:
        keys = {k: torch.empty(s, device="meta") for k, s in REAL_KEYS[family].items()}
        config = md.model_config_from_unet(keys, "")
    if config is None:
        raise RuntimeError(f"ComfyUI did not detect a {family} model from its config")
    config.set_inference_dtype(dtype, None)
    model = config.get_model({}, device=device)
    if init:
        random_init(model.diffusion_model, device)
    return model.eval()


def build_comfy_dit(family: str, device: torch.device, dtype: torch.dtype, comfyui: Optional[str],
                    quick: bool) -> BenchModel:
    """The BenchModel of a DiT ``family`` at its usual size (or tiny with ``quick``)."""
    root = import_comfy(comfyui, device)
    token_dim, pooled_dim, tokens, latent, size = SHAPES[family]
    if quick:
        latent = latent[:2] + [2 if family in VIDEO_FAMILIES else 1][:len(latent) - 4] + [8, 8]
        tokens, size = min(tokens, 32), "tiny config (--quick), 8x8 latents, " + str(min(tokens, 32)) + " tokens"
    model = build_model(family, device, dtype, quick)
    c, u, k = (random_cond(1, tokens, token_dim, pooled_dim, device, seed) for seed in (1, 2, 3))
    guidance, hgr_params, hgr_desc = make_guidance(family, token_dim, pooled_dim, device)
    desc = (f"{family} ({type(model.model_config).__name__}: ComfyUI's {type(model.diffusion_model).__name__}, "
            f"{'reduced' if quick else 'real'} config, random init, {str(dtype)[6:]}), {size}; ComfyUI from {root}")
    return BenchModel(family, desc, model.diffusion_model, ComfyApplyDenoiser(model, family),
                      ComfySchedule(model.model_sampling), latent, c, u, k, guidance, hgr_params, hgr_desc,
                      text_encoder_for(token_dim, pooled_dim), device, dtype)
