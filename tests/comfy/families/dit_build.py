"""Builds the DiT-family fixture files with ComfyUI's own classes and random weights (run in a subprocess).

``python dit_build.py COMFYUI_ROOT OUT_DIR FAMILY...`` writes, for each family, ``<family>.safetensors``: the
diffusion model in the layout ComfyUI's ``UNETLoader`` reads, plus the VAEs the families decode with
(``vae_kl16.safetensors``: the 16-channel AutoencoderKL of SD3/Flux/Chroma/Lumina 2/HiDream;
``vae_wan21.safetensors``: the Wan 2.1 VAE that Qwen-Image also uses; ``vae_wan22.safetensors``: the 48-channel Wan
2.2 VAE), and ``spiece_<n>.safetensors``: a small SentencePiece model for the encoders whose tokenizer ships in the
weights file rather than in ComfyUI (umT5, Gemma).

How a reduced model stays the family: each family starts from a few *key names and shapes* that ComfyUI's
``model_detection.detect_unet_config`` reads; ComfyUI's detection turns them into the config, ComfyUI's supported
model class builds the model from that config (``model_config.get_model``), and the saved state dict is detected
again and must give the same class and config. So the files hold exactly what ComfyUI builds for that family,
only with fewer blocks (and, where the key shapes decide it, narrower: SD3's MMDiT width, Wan's width) — the
token width every family's text encoder feeds stays the real one.

A separate process because ComfyUI's modules read their command line at import and keep global state; the test
process stays free of them.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Dict, Tuple

Shapes = Dict[str, Tuple[int, ...]]

# Keys ComfyUI's detection reads for each family, with the shapes that pick the reduced size (comfy/model_detection.py).
DETECT_KEYS: Dict[str, Shapes] = {
    # MMDiT: width = 64 * depth (depth 1 -> 64 wide, 1 head); 4096-wide T5/CLIP tokens, 2048 pooled (SD3.5: rms qk)
    "sd3": {"joint_blocks.0.context_block.attn.qkv.weight": (192, 64), "x_embedder.proj.weight": (64, 16, 2, 2),
            "final_layer.linear.weight": (64, 64), "y_embedder.mlp.0.weight": (64, 2048),
            "context_embedder.weight": (64, 4096), "pos_embed": (1, 36864, 64),
            "joint_blocks.0.context_block.attn.ln_q.weight": (64,)},
    # Wan 2.1 t2v: width from head.modulation (128 -> 1 head), one block; text_dim keeps umT5's 4096
    "wan21": {"head.modulation": (1, 2, 128), "head.head.weight": (64, 128), "blocks.0.ffn.0.weight": (256, 128),
              "patch_embedding.weight": (128, 16, 1, 2, 2)},
    # Wan 2.2 TI2V 5B: as Wan 2.1's, with the 48-channel latents of the Wan 2.2 VAE in and out (WAN22_T2V)
    "wan22": {"head.modulation": (1, 2, 128), "head.head.weight": (192, 128), "blocks.0.ffn.0.weight": (256, 128),
              "patch_embedding.weight": (128, 48, 1, 2, 2)},
    # Qwen-Image: one of 60 blocks; the width (3072) and Qwen2.5-VL's 3584-wide tokens are fixed by the class
    "qwen_image": {"txt_norm.weight": (3584,), "img_in.weight": (3072, 64),
                   "transformer_blocks.0.img_mod.1.weight": (1,)},
    # Chroma: one double block, no single blocks; widths fixed by detection (3072 wide, T5's 4096 tokens)
    "chroma": {"double_blocks.0.img_attn.norm.key_norm.scale": (128,), "img_in.weight": (3072, 64),
               "distilled_guidance_layer.norms.0.scale": (5120,)},
    # Lumina 2: one main layer (the two refiners per stream are fixed); Gemma-2-2B's 2304-wide tokens
    "lumina2": {"cap_embedder.1.weight": (2304, 2304), "layers.0.attention.qkv.weight": (1,)},
}
# Which VAE each family decodes with, as the keys comfy.sd.VAE detects it by.
VAE_OF = {"sd3": "kl16", "chroma": "kl16", "lumina2": "kl16", "wan21": "wan21", "qwen_image": "wan21", "wan22": "wan22",
          "hidream": "kl16"}
VAE_KEYS: Dict[str, Shapes] = {
    "kl16": {"decoder.conv_in.weight": (512, 16, 3, 3), "decoder.up.3.upsample.conv.weight": (512, 512, 3, 3)},
    "wan21": {"decoder.middle.0.residual.0.gamma": (384, 1, 1, 1)},
    "wan22": {"decoder.middle.0.residual.0.gamma": (1024, 1, 1, 1),
              "decoder.upsamples.0.upsamples.0.residual.2.weight": (1024, 1024, 3, 3, 3)},
}
SPIECE_VOCAB = 1000


def init_weights(module, seed: int, skip: Callable[[str], bool] = lambda name: False) -> None:
    """A standard seeded initialisation: fan-in scaled normal matrices, unit norm scales, zero biases, small
    other vectors. ComfyUI's ops leave weights uninitialised (they expect a file), so every tensor is written."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in list(module.named_parameters()) + list(module.named_buffers()):
            if skip(name) or not p.is_floating_point():
                continue
            if p.dim() >= 2:
                fan_in = max(1, p[0].numel())
                w = torch.randn(p.shape, generator=gen) / fan_in ** 0.5
            elif name.endswith("bias"):
                w = torch.zeros(p.shape)
            elif name.endswith(("weight", "scale", "gamma")):
                w = torch.ones(p.shape)
            else:
                w = torch.randn(p.shape, generator=gen) * 0.02
            p.copy_(w.to(p.dtype))


def _meta(shapes: Shapes) -> dict:
    import torch

    return {k: torch.empty(s, device="meta") for k, s in shapes.items()}


def build_unet(family: str) -> Tuple[dict, str]:
    """The family's diffusion model state dict (bf16) and ComfyUI's supported-model class name for it."""
    import torch
    import comfy.model_detection as md

    cfg = md.model_config_from_unet(_meta(DETECT_KEYS[family]), "")
    if cfg is None:
        raise RuntimeError(f"ComfyUI does not detect the {family} seed keys")
    model = cfg.get_model({}, device="cpu")
    init_weights(model.diffusion_model, seed=1234)
    sd = {k: v.to(torch.bfloat16).contiguous() for k, v in model.diffusion_model.state_dict().items()}
    again = md.model_config_from_unet(sd, "")
    if again is None or type(again) is not type(cfg) or again.unet_config != cfg.unet_config:
        raise RuntimeError(f"{family}: the saved state dict is not detected as {type(cfg).__name__} with the same "
                           f"config ({None if again is None else again.unet_config} vs {cfg.unet_config})")
    return sd, type(cfg).__name__


def build_vae(kind: str) -> dict:
    """A VAE state dict of the kind ``comfy.sd.VAE`` detects (its own classes, random weights)."""
    import torch
    import comfy.sd

    seed_sd = {k: torch.zeros(s) for k, s in VAE_KEYS[kind].items()}
    vae = comfy.sd.VAE(sd=seed_sd)  # builds the architecture; the missing weights are what we write next
    init_weights(vae.first_stage_model, seed=99)
    return {k: v.to(torch.bfloat16).contiguous() for k, v in vae.first_stage_model.state_dict().items()}


def build_spiece(path: Path) -> None:
    """A small SentencePiece model, stored the way ComfyUI stores umT5's and Gemma's tokenizers in their weights
    files: the serialized model as a uint8 tensor under ``spiece_model``."""
    import io

    import sentencepiece as spm
    import torch
    from safetensors.torch import save_file

    words = ("a photo of the red blue green yellow circle square star knife blood gore weapon cat dog tree "
             "house bright dark small large over under next to on in with background foreground painting").split()
    lines = [" ".join(words[(i * 7 + j) % len(words)] for j in range(12)) for i in range(400)]
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=out, vocab_size=SPIECE_VOCAB,
                                   model_type="unigram", hard_vocab_limit=False, pad_id=0, eos_id=1, unk_id=2,
                                   bos_id=3, character_coverage=1.0, minloglevel=2)
    save_file({"spiece_model": torch.frombuffer(bytearray(out.getvalue()), dtype=torch.uint8)}, str(path))


def main(root: str, out_dir: str, families) -> None:
    import logging

    logging.getLogger().setLevel(logging.ERROR)  # ComfyUI lists every VAE key it builds without a weight
    sys.path.insert(0, root)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for fam in families:
        target = out / f"{fam}.safetensors"
        if not target.exists():
            sd, cls = build_unet(fam)
            save_file(sd, str(target) + ".part", metadata={"safecfg_test_class": cls})
            Path(str(target) + ".part").rename(target)
        vae = out / f"vae_{VAE_OF[fam]}.safetensors"
        if not vae.exists():
            save_file(build_vae(VAE_OF[fam]), str(vae) + ".part")
            Path(str(vae) + ".part").rename(vae)
    spiece = out / f"spiece_{SPIECE_VOCAB}.safetensors"
    if not spiece.exists():
        build_spiece(spiece)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
