"""ComfyUI's stock KSampler (euler) on the SafeCFG Demo Model gives the core sampler's image for the same seed.

Tolerance: the server saves 8-bit PNGs (ComfyUI truncates 255*x to uint8); we apply the same conversion to the
core's image and allow at most 1 level per channel (float kernels may round differently across processes and
thread counts); in practice the images are identical.
"""
import numpy as np
import torch

from safecfg_core.demo.world import load_demo_world
from safecfg_core.sampling import CFGDenoise, prepare_noise, sample

PROMPT = "a large blue circle on a yellow background"
SEED, STEPS, CFG = 7, 10, 6.0


def test_ksampler_euler_matches_core_sampler(comfy_server):
    g = {
        "1": {"class_type": "SafeCFGDemoModel", "inputs": {"variant": "demo"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "seed": SEED, "steps": STEPS, "cfg": CFG, "sampler_name": "euler",
            "scheduler": "normal", "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0],
            "denoise": 1.0}},
        "7": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "8": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": "match"}},
    }
    entry = comfy_server.run(g)
    assert comfy_server.succeeded(entry), comfy_server.error_message(entry)
    server_img = comfy_server.output_images(entry, "8")[0].astype(np.int16)

    world = load_demo_world()
    enc = world.text_encoder
    guided = CFGDenoise(world.denoiser(), enc.encode([PROMPT]), enc.encode([""]), CFG)
    latent = sample(guided, world.schedule, noise=prepare_noise((1, 4, 8, 8), SEED), steps=STEPS)
    core_img = np.clip(255.0 * world.vae.decode(latent)[0].numpy(), 0, 255).astype(np.uint8).astype(np.int16)

    assert server_img.shape == core_img.shape == (64, 64, 3)
    diff = np.abs(server_img - core_img)
    assert diff.max() <= 1, f"max difference {diff.max()} levels, {int((diff > 0).sum())} channels differ"
    # and the comparison is not vacuous: another seed gives a different image
    other = sample(guided, world.schedule, noise=prepare_noise((1, 4, 8, 8), SEED + 1), steps=STEPS)
    assert not torch.allclose(other, latent)
