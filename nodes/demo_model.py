"""SafeCFG Demo Model: the embedded demo world as native ComfyUI MODEL, CLIP and VAE objects.

Built from ComfyUI's own classes so the stock CLIPTextEncode / EmptyLatentImage / KSampler / VAEDecode nodes run it:

* MODEL: ``comfy.model_base.BaseModel`` (eps prediction, ComfyUI's discrete schedule) created with
  ``unet_config={"disable_unet_model_creation": True, ...}`` and the demo DiT assigned as ``diffusion_model``
  (it takes ``(x, timesteps, context=..., control=..., transformer_options=...)`` like ComfyUI's UNet), wrapped in
  ``comfy.model_patcher.ModelPatcher``. The config is a ``supported_models_base.BASE`` subclass with a latent
  format of scale 1.0.
* CLIP: ``comfy.sd.CLIP`` built from a ``ClipTarget`` whose tokenizer / text-model classes wrap the demo MiniLM
  (``tokenize_with_weights`` -> ``{"demo": [[(id, weight), ...]]}``, ``encode_token_weights`` -> ``[1, 77, 384]``).
  Prompt weights ``(word:1.2)`` are not supported by the demo encoder and are ignored.
* VAE: a ``comfy.sd.VAE`` subclass whose encode/decode run the demo VAE (IMAGE ``[N, H, W, 3]`` <-> ``[N, 4, H/8, W/8]``).

Constructors are called with keywords only.
"""
from __future__ import annotations

import threading
from typing import Any, Dict, Tuple

import torch

import comfy.latent_formats  # type: ignore
import comfy.model_base  # type: ignore
import comfy.model_management as mm  # type: ignore
import comfy.model_patcher  # type: ignore
import comfy.sd  # type: ignore
import comfy.supported_models_base  # type: ignore

from comfy_api.latest import io

from .common import CATEGORY_DEMO, log

TOKEN_DIM = 384
VARIANTS = ("demo", "untrained")


class SafeCFGDemoLatentFormat(comfy.latent_formats.LatentFormat):
    scale_factor = 1.0
    latent_channels = 4


class SafeCFGDemoConfig(comfy.supported_models_base.BASE):
    unet_config = {"context_dim": TOKEN_DIM, "in_channels": 4, "disable_unet_model_creation": True,
                   "safecfg_demo": True}
    unet_extra_config: Dict[str, Any] = {}
    latent_format = SafeCFGDemoLatentFormat
    sampling_settings: Dict[str, Any] = {}  # ComfyUI's default discrete eps schedule (scaled-linear 0.00085..0.012)
    memory_usage_factor = 0.05
    supported_inference_dtypes = [torch.float32]


# ----------------------------------------------------------------------------------------------------------
# World loading (cached per variant)

_WORLDS: Dict[str, Any] = {}
_LOCK = threading.Lock()


class _World:
    def __init__(self, text_encoder, vae, net, trained: bool) -> None:
        self.text_encoder = text_encoder
        self.vae = vae
        self.net = net
        self.trained = trained


def _untrained_world(seed: int = 0) -> _World:
    """Seeded random DiT + VAE with the real MiniLM: exercises the pipeline without trained weights."""
    from ..safecfg_core.demo.denoiser import DemoDiT
    from ..safecfg_core.demo.text_encoder import DemoTextEncoder
    from ..safecfg_core.demo.vae import DemoVAE

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = DemoDiT(width=64, depth=2, heads=4)
        # the DiT zero-initialises its output layers; give them small random values so the text matters
        for m in (net.out_ada, net.out):
            torch.nn.init.normal_(m.weight, std=0.05)
        vae = DemoVAE(ch=32, mid=32)
    return _World(DemoTextEncoder(), vae.eval().requires_grad_(False), net.eval().requires_grad_(False), False)


def load_world(variant: str) -> _World:
    # ComfyUI runs nodes under torch.inference_mode(); weights made there could not take part in the Train HGR
    # node's backward pass, so the world is always built as normal tensors.
    with _LOCK, torch.inference_mode(False):
        if variant in _WORLDS:
            return _WORLDS[variant]
        if variant == "untrained":
            world = _untrained_world()
        else:
            try:
                from ..safecfg_core.demo.world import load_demo_world

                w = load_demo_world(device="cpu")
                world = _World(w.text_encoder, w.vae, w.net if hasattr(w, "net") else w.denoiser_net, True)
            except (FileNotFoundError, OSError, ImportError) as exc:
                raise ValueError(
                    f"SafeCFG Demo Model: the trained demo weights are not available ({exc}). Train them with "
                    "`python -m experiments.train_world` (in a clone of the repository) or pick the 'untrained' "
                    "variant."
                ) from None
        for m in (world.net, world.vae, world.text_encoder.model):
            m.eval().requires_grad_(False)
        _WORLDS[variant] = world
        return world


# ----------------------------------------------------------------------------------------------------------
# CLIP


def _make_clip_target(world: _World):
    encoder = world.text_encoder

    class SafeCFGDemoTokenizer:
        def __init__(self, embedding_directory=None, tokenizer_data=None, **kwargs):
            self.embedding_directory = embedding_directory

        def tokenize_with_weights(self, text: str, return_word_ids: bool = False, **kwargs):
            ids, _mask = encoder.tokenize([text])
            row = ids[0].tolist()
            pairs = [(int(i), 1.0, 0) if return_word_ids else (int(i), 1.0) for i in row]
            return {"demo": [pairs]}

        def untokenize(self, token_weight_pair):
            return list(token_weight_pair)

        def state_dict(self):
            return {}

    class SafeCFGDemoTextModel(torch.nn.Module):
        def __init__(self, device="cpu", dtype=None, model_options=None, **kwargs):
            super().__init__()
            self.transformer = encoder.model
            self.dtypes = {torch.float32}
            self.pad_id = getattr(encoder.tokenizer, "pad_id", 0)

        def reset_clip_options(self):
            pass

        def set_clip_options(self, options):
            pass

        def encode_token_weights(self, token_weight_pairs):
            sections = token_weight_pairs["demo"] if isinstance(token_weight_pairs, dict) else token_weight_pairs
            ids = torch.tensor([[int(p[0]) for p in seq] for seq in sections], dtype=torch.long)
            mask = (ids != self.pad_id).long()
            dev = next(self.transformer.parameters()).device
            with torch.no_grad():
                out = self.transformer(ids.to(dev), mask.to(dev)).float()
            # ComfyUI concatenates the sections of a long prompt along the tokens
            return out.reshape(1, -1, out.shape[-1]).to(mm.intermediate_device()), None

        def load_sd(self, sd):
            return self.transformer.load_state_dict(sd, strict=False)

    return comfy.supported_models_base.ClipTarget(SafeCFGDemoTokenizer, SafeCFGDemoTextModel)


# ----------------------------------------------------------------------------------------------------------
# VAE


class SafeCFGDemoVAE(comfy.sd.VAE):
    """``comfy.sd.VAE`` over the demo VAE (built without a state dict; encode/decode run the demo module)."""

    def __init__(self, demo_vae: torch.nn.Module) -> None:  # noqa: D401 - deliberately not calling super().__init__
        self.first_stage_model = demo_vae
        self.device = mm.vae_device()
        self.offload_device = mm.vae_offload_device()
        self.output_device = mm.intermediate_device()
        self.vae_dtype = torch.float32
        self.downscale_ratio = 8
        self.upscale_ratio = 8
        self.latent_channels = 4
        self.latent_dim = 2
        self.output_channels = 3
        self.extra_1d_channel = None
        self.not_video = True
        self.disable_offload = False
        self.size = None
        self.working_dtypes = [torch.float32]
        self.process_input = lambda image: image * 2.0 - 1.0
        self.process_output = lambda image: torch.clamp((image + 1.0) / 2.0, min=0.0, max=1.0)
        self.memory_used_encode = lambda shape, dtype: 1024 * 1024 * max(1, shape[0])
        self.memory_used_decode = lambda shape, dtype: 1024 * 1024 * max(1, shape[0])
        self.patcher = comfy.model_patcher.ModelPatcher(demo_vae, load_device=self.device,
                                                        offload_device=self.offload_device)

    def _load(self) -> torch.device:
        mm.load_models_gpu([self.patcher])
        return next(self.first_stage_model.parameters()).device

    def decode(self, samples_in, *args, **kwargs):
        dev = self._load()
        with torch.no_grad():
            out = self.first_stage_model.decode(samples_in.to(dev).float())
        return out.to(self.output_device).float()

    def decode_tiled(self, samples, *args, **kwargs):
        return self.decode(samples)

    def encode(self, pixel_samples, *args, **kwargs):
        dev = self._load()
        h = (pixel_samples.shape[1] // 8) * 8
        w = (pixel_samples.shape[2] // 8) * 8
        pixels = pixel_samples[:, :h, :w, :3]
        with torch.no_grad():
            out = self.first_stage_model.encode(pixels.to(dev).float())
        return out.to(self.output_device).float()

    def encode_tiled(self, pixel_samples, *args, **kwargs):
        return self.encode(pixel_samples)

    def spacial_compression_decode(self):
        return 8

    def spacial_compression_encode(self):
        return 8

    def temporal_compression_decode(self):
        return None

    def get_sd(self):
        return self.first_stage_model.state_dict()

    def throw_exception_if_invalid(self):
        pass


# ----------------------------------------------------------------------------------------------------------


def build_comfy_objects(world: _World) -> Tuple[Any, Any, Any]:
    """(MODEL, CLIP, VAE) from a demo world, using ComfyUI's own classes."""
    config = SafeCFGDemoConfig(dict(SafeCFGDemoConfig.unet_config))
    load_device = mm.get_torch_device()
    offload_device = mm.unet_offload_device()
    base = comfy.model_base.BaseModel(config, model_type=comfy.model_base.ModelType.EPS, device=offload_device)
    base.diffusion_model = world.net
    base.eval()
    model = comfy.model_patcher.ModelPatcher(base, load_device=load_device, offload_device=offload_device)
    clip = comfy.sd.CLIP(target=_make_clip_target(world))
    vae = SafeCFGDemoVAE(world.vae)
    return model, clip, vae


class SafeCFGDemoModel(io.ComfyNode):
    """Loads the embedded demo world as MODEL, CLIP and VAE for the stock ComfyUI nodes."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SafeCFGDemoModel",
            display_name="SafeCFG Demo Model",
            category=CATEGORY_DEMO,
            description="The pack's self-contained demo model as native ComfyUI objects: use it with CLIP Text "
                        "Encode, Empty Latent Image (64x64), KSampler and VAE Decode.",
            inputs=[io.Combo.Input("variant", options=list(VARIANTS), default="demo",
                                   tooltip="demo: the trained demo world shipped with the pack (64x64 images of "
                                           "shapes; harm stand-ins 'gore' and 'weapon'). untrained: a small randomly "
                                           "initialised model with the same interfaces (for testing pipelines "
                                           "quickly).")],
            outputs=[io.Model.Output("model",
                                     tooltip="The demo diffusion model (eps, 4x8x8 latents for 64x64 images)."),
                     io.Clip.Output("clip", tooltip="The demo text encoder (MiniLM, 77 tokens x 384)."),
                     io.Vae.Output("vae", tooltip="The demo VAE (64x64x3 <-> 4x8x8).")],
        )

    @classmethod
    def execute(cls, variant: str = "demo") -> io.NodeOutput:
        if variant not in VARIANTS:
            raise ValueError(f"SafeCFG Demo Model: unknown variant {variant!r}; use one of {VARIANTS}.")
        world = load_world(variant)
        model, clip, vae = build_comfy_objects(world)
        log.info("SafeCFG: demo model loaded (%s)", "trained" if world.trained else "untrained")
        return io.NodeOutput(model, clip, vae)
