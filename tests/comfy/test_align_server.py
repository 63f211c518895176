"""The alignment LoRA in real ComfyUI: its key format maps onto the demo model and an SD-family UNet, and the stock
LoraLoaderModelOnly + KSampler in the server reproduce the core's samples with the LoRA.

The LoRA here has random non-zero factors on every layer rather than fitted ones: a fitted LoRA after a short fit
changes some layers very little, so a layer whose key ComfyUI silently skipped could go unnoticed; with every layer
moved, any skipped or mis-shaped layer changes the image. The fitted LoRA is the same kind of object (tests/align).
"""
from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import torch

from safecfg_core.align import LoRA, adaptable_layers, sample_prompts_with, save_lora
from safecfg_core.align.targets import Teacher
from safecfg_core.demo.world import load_demo_world

from pack_scripts import PACK_PREAMBLE, run_in_comfyui

REPO_ROOT = Path(__file__).resolve().parents[2]
PROMPT = "a bloody red star with a knife on white"
SEED, STEPS, CFG = 7, 10, 6.0


def random_lora(net: torch.nn.Module, seed: int, scale: float) -> LoRA:
    """A LoRA on every Linear/Conv layer of ``net`` with all factors random (``up`` of size ``scale``)."""
    lora = LoRA(adaptable_layers(net), rank=4, alpha=2.0, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name in lora.layer_names:
            up, _down = lora.factors(name)
            up.copy_(torch.randn(up.shape, generator=g) * scale)
    return lora


def to_png_levels(world, latent: torch.Tensor) -> np.ndarray:
    """The core's image as the server saves it: 255 * x truncated to uint8 (what SaveImage does)."""
    img = world.vae.decode(latent)[0].numpy()
    return np.clip(255.0 * img, 0, 255).astype(np.uint8).astype(np.int16)


def lora_graph(lora_name: str, strength: float, cfg: float, prefix: str) -> dict:
    return {
        "1": {"class_type": "SafeCFGDemoModel", "inputs": {"variant": "demo"}},
        "9": {"class_type": "LoraLoaderModelOnly", "inputs": {"model": ["1", 0], "lora_name": lora_name,
                                                              "strength_model": strength}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {
            "model": ["9", 0], "seed": SEED, "steps": STEPS, "cfg": cfg, "sampler_name": "euler",
            "scheduler": "normal", "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0],
            "denoise": 1.0}},
        "7": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "8": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": prefix}},
    }


def test_stock_lora_loader_and_ksampler_reproduce_the_core(comfy_server):
    world = load_demo_world()
    lora = random_lora(world.net, seed=5, scale=0.05)
    loras = comfy_server.workdir / "models" / "loras"
    loras.mkdir(parents=True, exist_ok=True)
    save_lora(loras / "safecfg_aligned_test.safetensors", lora)
    teacher = Teacher(world.denoiser(), world.text_encoder.encode, world.schedule, (4, 8, 8))

    for cfg, strength in ((CFG, 1.0), (1.0, 1.0), (CFG, 0.5)):
        entry = comfy_server.run(lora_graph("safecfg_aligned_test.safetensors", strength, cfg, f"al{cfg}_{strength}"))
        assert comfy_server.succeeded(entry), comfy_server.error_message(entry)
        server_img = comfy_server.output_images(entry, "8")[0].astype(np.int16)
        lora.strength = strength
        core = sample_prompts_with(teacher, [PROMPT], [SEED], cfg, STEPS, lora=lora, net=world.net)
        base = sample_prompts_with(teacher, [PROMPT], [SEED], cfg, STEPS)
        lora.strength = 1.0
        core_img, base_img = to_png_levels(world, core), to_png_levels(world, base)
        diff = np.abs(server_img - core_img)
        assert diff.max() <= 1, f"cfg {cfg}, strength {strength}: max difference {diff.max()} levels"
        # not vacuous: the LoRA changes the image well beyond the tolerance
        assert np.abs(base_img - core_img).max() > 20, f"cfg {cfg}, strength {strength}: the LoRA changed nothing"
    # the server's log names no LoRA key it could not load
    assert "lora key not loaded" not in comfy_server.log()


SD_SCRIPT = textwrap.dedent(r'''
    import json, sys
    root, repo = sys.argv[1], sys.argv[2]
    sys.path.insert(0, root); sys.path.insert(0, repo)
    sys.argv = ["main.py", "--cpu"]
    import comfy.options
    comfy.options.enable_args_parsing()
    import torch, comfy.lora, comfy.model_base, comfy.model_patcher, comfy.supported_models
    from safecfg_core.align import LoRA, adaptable_layers, applied, comfy_state_dict

    unet = {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
            "legacy": False, "adm_in_channels": None, "in_channels": 4, "model_channels": 32,
            "num_res_blocks": [1, 1], "transformer_depth": [1, 1], "channel_mult": [1, 2],
            "transformer_depth_middle": 1, "use_linear_in_transformer": False, "context_dim": 64, "num_heads": 4,
            "transformer_depth_output": [1, 1, 1, 1], "use_temporal_attention": False,
            "use_temporal_resblock": False}
    model = comfy.model_base.BaseModel(comfy.supported_models.SD15(dict(unet)), device="cpu")
    net = model.diffusion_model
    torch.manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape) * (p[0].numel() ** -0.5 if p.dim() > 1 else 0.1))
    layers = adaptable_layers(net)
    lora = LoRA(layers, rank=4, alpha=4.0, seed=1)
    with torch.no_grad():
        for n in lora.layer_names:
            lora.factors(n)[0].normal_(0.0, 0.05)
    sd = comfy_state_dict(lora)
    key_map = comfy.lora.model_lora_keys_unet(model, {})
    loaded = comfy.lora.load_lora(sd, key_map)
    x = torch.randn(2, 4, 8, 8); t = torch.tensor([10.0, 500.0]); ctx = torch.randn(2, 77, 64)
    with torch.no_grad():
        with applied(lora, net):
            ours = net(x, t, context=ctx).clone()
        before = net(x, t, context=ctx).clone()
        patcher = comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"),
                                                   offload_device=torch.device("cpu"))
        patched = patcher.clone()
        patched.add_patches(loaded, 1.0)
        patched.patch_model()
        theirs = net(x, t, context=ctx).clone()
        patched.unpatch_model()
    kinds = sorted({type(m).__mro__[1].__name__ for n, m in net.named_modules() if n in layers})
    print("RESULT " + json.dumps({
        "layers": len(layers), "mapped": len(loaded), "kinds": kinds,
        "unmapped": sorted(set(f"diffusion_model.{n}.weight" for n in layers) - set(loaded))[:5],
        "max_diff": float((ours - theirs).abs().max()), "lora_effect": float((ours - before).abs().max())}))
''')


def test_sd_family_unet_keys_map_and_patch_like_the_core(comfyui_root):
    """ComfyUI's own key map and patcher on an SD1.5-architecture UNet (small widths, random weights)."""
    res = run_in_comfyui(comfyui_root, SD_SCRIPT)
    assert res["layers"] > 20 and res["mapped"] == res["layers"], res
    assert "Conv2d" in str(res["kinds"]) and "Linear" in str(res["kinds"]), res
    assert res["lora_effect"] > 1e-2, res
    assert res["max_diff"] <= 1e-5 * max(1.0, res["lora_effect"]), res
    assert "lora key not loaded" not in res["log"]


NODE_SCRIPT = PACK_PREAMBLE + textwrap.dedent(r'''
    import os, tempfile
    import folder_paths
    from safecfg_pack.nodes.align_node import AlignModel
    from safecfg_pack.safecfg_core.demo.world import HGR_PATH

    work = tempfile.mkdtemp()
    folder_paths.folder_names_and_paths["loras"] = ([os.path.join(work, "loras")], {".safetensors"})
    folder_paths.set_output_directory(os.path.join(work, "output"))
    AlignModel.define_schema()
    model, clip, vae = N["SafeCFGDemoModel"].execute("demo").args
    hgr = HGRBundle.load(HGR_PATH)
    prompts = "a large blue circle on a yellow background\na bloody red star on white\n"
    preset = "demo quick (64 px, about a minute of CPU)"
    out = {}
    with torch.inference_mode():  # as ComfyUI runs nodes
        res = AlignModel.execute(model, clip, hgr, prompts, preset, name="My LoRA", fit_steps=3).args
    patched, name, report = res
    out["name"] = name
    out["files"] = sorted(os.listdir(os.path.join(work, "loras")))
    out["report"] = report
    out["patched_layers"] = len(patched.patches)
    out["input_patches"] = len(model.patches)
    out["leftover_ckpt"] = os.listdir(os.path.join(work, "output", "safecfg_align"))
    for label, kwargs in (("exists", dict(name="My LoRA")),
                          ("labelled", dict(name="other", prompts="gore: a bloody star"))):
        args = dict(model=model, clip=clip, hgr=hgr, prompts=prompts, preset=preset, fit_steps=3)
        args.update(kwargs)
        try:
            AlignModel.execute(**args)
            out[label] = None
        except Exception as exc:
            out[label] = str(exc)
    print("RESULT " + json.dumps(out))
''')


def test_align_node_writes_the_named_lora_and_returns_the_patched_model(comfyui_root):
    res = run_in_comfyui(comfyui_root, NODE_SCRIPT, timeout=600)
    assert res["name"] == "My LoRA.safetensors" and res["files"] == ["My LoRA.safetensors"], res
    assert "prompts: 2" in res["report"] and "fit: 3 steps" in res["report"], res
    assert res["patched_layers"] > 20 and res["input_patches"] == 0, res
    assert res["leftover_ckpt"] == [], res
    assert res["exists"] and "already exists" in res["exists"], res
    assert res["labelled"] and "prompts only" in res["labelled"], res
