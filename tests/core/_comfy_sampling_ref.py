"""Reference values computed by a REAL ComfyUI, for tests/core/test_sampling_comfy.py.

Run as a script in a subprocess (so ComfyUI's global state and its imports stay out of the test process):

    python _comfy_sampling_ref.py COMFYUI_ROOT OUT.pt

It imports ComfyUI from COMFYUI_ROOT, wraps the tiny eps network defined below (which the test also imports, by
file path, to build our side) in ComfyUI's own ``BaseModel`` + ``ModelPatcher`` and writes what ComfyUI computes:
the discrete schedule, every scheduler's sigmas, ``prepare_noise``, ``apply_model`` and complete ``comfy.sample.sample``
runs (KSampler, euler). Nothing here is copied into the library; the test compares our independent implementation
against these numbers.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types

import torch


class TinyEpsNet(torch.nn.Module):
    """A small conditional eps network with the UNet call signature ``net(x, t, context=..., y=None, **kw)``.

    Conv in, a timestep embedding, cross-attention over the context, conv out: enough to make every input
    (x scaling, t, context, y, dtype) matter to the output.
    """

    def __init__(self, channels: int = 4, ctx_dim: int = 16, width: int = 32, adm_dim: int = 0, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv_in = torch.nn.Conv2d(channels, width, 3, padding=1)
        self.t_proj = torch.nn.Linear(16, width)
        self.q = torch.nn.Linear(width, width)
        self.k = torch.nn.Linear(ctx_dim, width)
        self.v = torch.nn.Linear(ctx_dim, width)
        self.y_proj = torch.nn.Linear(adm_dim, width) if adm_dim else None
        self.conv_out = torch.nn.Conv2d(width, channels, 3, padding=1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * (0.3 / max(1, p.shape[-1]) ** 0.5))

    @property
    def dtype(self) -> torch.dtype:
        return self.conv_in.weight.dtype

    def forward(self, x, timesteps, context=None, y=None, **kwargs):
        half = 8
        freqs = torch.exp(-torch.arange(half, dtype=torch.float32) * (9.21 / half)).to(x.device)
        args = timesteps.float()[:, None] * freqs[None]
        temb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1).to(x.dtype)
        h = self.conv_in(x) + self.t_proj(temb)[:, :, None, None]
        if y is not None and self.y_proj is not None:
            h = h + self.y_proj(y)[:, :, None, None]
        b, c, hh, ww = h.shape
        q = self.q(h.flatten(2).transpose(1, 2))
        k, v = self.k(context), self.v(context)
        att = torch.softmax(q @ k.transpose(1, 2) / c ** 0.5, dim=-1)
        h = h + (att @ v).transpose(1, 2).reshape(b, c, hh, ww)
        return self.conv_out(torch.nn.functional.silu(h))


def _install_torchvision_stub() -> None:
    """ComfyUI imports torchvision at import time in places we never call; give it empty stand-in modules."""
    try:
        import torchvision  # noqa: F401
        return
    except Exception:
        pass

    class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        def find_spec(self, name, path, target=None):
            if name == "torchvision" or name.startswith("torchvision."):
                return importlib.machinery.ModuleSpec(name, self, is_package=True)
            return None

        def create_module(self, spec):
            mod = types.ModuleType(spec.name)
            mod.__path__ = []

            def __getattr__(attr, _n=spec.name):
                if attr.startswith("__"):
                    raise AttributeError(attr)
                return importlib.import_module(_n + "." + attr)

            mod.__getattr__ = __getattr__
            return mod

        def exec_module(self, module):
            pass

    for k in [k for k in sys.modules if k == "torchvision" or k.startswith("torchvision.")]:
        del sys.modules[k]
    sys.meta_path.insert(0, _Finder())


import importlib  # noqa: E402

# Inputs shared by both sides (regenerated identically in the test from these seeds).
CTX_DIM = 16


def make_inputs():
    g = torch.Generator().manual_seed(1234)
    return {
        "x": torch.randn(3, 4, 8, 8, generator=g) * 5.0,
        "sigma": torch.tensor([14.6, 3.3, 0.05]),
        "ctx": torch.randn(3, 77, CTX_DIM, generator=g),
        "pos": torch.randn(2, 77, CTX_DIM, generator=g),
        "neg": torch.randn(1, 154, CTX_DIM, generator=g),
        "test_sigmas": torch.tensor([0.01, 0.0292, 0.03, 0.5, 1.0, 3.3, 7.7, 14.6, 14.61, 20.0]),
        "test_timesteps": torch.tensor([0.0, 0.5, 1.0, 250.25, 998.9, 999.0, 1200.0, -3.0]),
    }


SCHEDULERS = ["normal", "karras", "exponential", "simple", "sgm_uniform", "ddim_uniform"]
STEPS = [1, 2, 3, 7, 20, 50]


def main(root: str, out_path: str) -> None:
    sys.path.insert(0, root)
    sys.argv = sys.argv[:1] + ["--cpu"]
    _install_torchvision_stub()
    torch.set_num_threads(1)
    import comfy.options

    comfy.options.enable_args_parsing()
    import comfy.latent_formats
    import comfy.model_base
    import comfy.model_patcher
    import comfy.model_sampling
    import comfy.sample
    import comfy.samplers
    import comfy.supported_models

    res = {}
    inp = make_inputs()

    # ---- the discrete schedule
    class _Cfg:
        sampling_settings = {}

    ms_cls = type("MS", (comfy.model_sampling.ModelSamplingDiscrete, comfy.model_sampling.EPS), {})
    ms = ms_cls(None)
    res["sigmas"] = ms.sigmas.clone()
    res["log_sigmas"] = ms.log_sigmas.clone()
    res["timestep"] = ms.timestep(inp["test_sigmas"])
    res["sigma_of_t"] = torch.stack([ms.sigma(t) for t in inp["test_timesteps"]])
    res["calc_input"] = ms.calculate_input(inp["sigma"], inp["x"])
    eps = inp["x"].flip(0) * 0.3
    res["calc_denoised"] = ms.calculate_denoised(inp["sigma"], eps, inp["x"])
    for md in (False, True):
        res[f"noise_scaling_{md}"] = ms.noise_scaling(torch.tensor(14.614641), inp["x"].clone(),
                                                      torch.full_like(inp["x"], 0.25), max_denoise=md)

    # ---- schedulers
    for name in SCHEDULERS:
        for steps in STEPS:
            res[f"sched_{name}_{steps}"] = comfy.samplers.calculate_sigmas(ms, name, steps).float().cpu()

    # ---- noise
    res["noise_1"] = comfy.sample.prepare_noise(torch.zeros(1, 4, 8, 8), 42)
    res["noise_3"] = comfy.sample.prepare_noise(torch.zeros(3, 4, 8, 8), 42)
    res["noise_inds"] = comfy.sample.prepare_noise(torch.zeros(3, 4, 8, 8), 7, noise_inds=[0, 2, 2])
    res["noise_big_seed"] = comfy.sample.prepare_noise(torch.zeros(1, 4, 8, 8), 2 ** 63 + 5)

    # ---- BaseModel.apply_model and full KSampler runs around the tiny net
    unet_config = {"context_dim": 768, "model_channels": 320, "use_linear_in_transformer": False,
                   "adm_in_channels": None, "use_temporal_attention": False}
    mc = comfy.supported_models.SD15(dict(unet_config))
    mc.unet_config["disable_unet_model_creation"] = True
    mc.unet_config.pop("adm_in_channels", None)
    mc.set_inference_dtype(torch.float32, None)
    model = comfy.model_base.BaseModel(mc)
    for dtype in (torch.float32, torch.bfloat16):
        net = TinyEpsNet(ctx_dim=CTX_DIM).to(dtype)
        model.diffusion_model = net
        with torch.no_grad():
            res[f"apply_model_{str(dtype)[6:]}"] = model.apply_model(inp["x"], inp["sigma"], c_crossattn=inp["ctx"])

    model.diffusion_model = TinyEpsNet(ctx_dim=CTX_DIM)
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))
    latent = torch.zeros(2, 4, 8, 8)
    for scheduler, steps, cfg in [("normal", 6, 5.0), ("karras", 5, 7.5), ("normal", 4, 1.0), ("simple", 3, 3.0)]:
        noise = comfy.sample.prepare_noise(latent, 99)
        positive = [[inp["pos"], {}]]
        negative = [[inp["neg"], {}]]
        with torch.no_grad():
            out = comfy.sample.sample(patcher, noise, steps, cfg, "euler", scheduler, positive, negative, latent,
                                      denoise=1.0, disable_pbar=True, seed=99)
        res[f"ksampler_{scheduler}_{steps}_{cfg}"] = out.float().cpu()
    # img2img-style: denoise < 1 (tail of a longer schedule, no max_denoise) on a non-zero input latent
    g = torch.Generator().manual_seed(77)
    latent_in = torch.randn(2, 4, 8, 8, generator=g) * 3.0
    for scheduler, steps, denoise in [("normal", 6, 0.6), ("karras", 5, 0.35)]:
        ks = comfy.samplers.KSampler(patcher, steps=steps, device=torch.device("cpu"), sampler="euler",
                                     scheduler=scheduler, denoise=denoise)
        res[f"denoise_sigmas_{scheduler}_{steps}_{denoise}"] = ks.sigmas.float().cpu()
        noise = comfy.sample.prepare_noise(latent_in, 5)
        with torch.no_grad():
            out = comfy.sample.sample(patcher, noise, steps, 4.0, "euler", scheduler, [[inp["pos"], {}]],
                                      [[inp["neg"], {}]], latent_in, denoise=denoise, disable_pbar=True, seed=5)
        res[f"img2img_{scheduler}_{steps}_{denoise}"] = out.float().cpu()
    res["img2img_latent"] = latent_in
    res["latent_scale_factor"] = torch.tensor(float(mc.latent_format.scale_factor))
    torch.save(res, out_path)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
