"""Our schedules, noise, apply_model wrapping, Euler and CFG equal a real ComfyUI's, bit for bit on CPU fp32.

The reference numbers come from ComfyUI itself (``_comfy_sampling_ref.py``, run once per session in a subprocess
against the ``comfyui_root`` fixture: ComfyUI 0.3.64 by default, or ``COMFYUI_PATH``). Tolerance: exact
(``torch.equal``) for everything, including the bf16 network path and complete KSampler runs.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from safecfg_core.conditioning import Cond
from safecfg_core.sampling import CFGDenoise, DiscreteEpsDenoiser, prepare_noise, sample
from safecfg_core.schedules import DiscreteSchedule, get_sigmas, get_sigmas_denoise

HERE = Path(__file__).resolve().parent


def _load_ref_module():
    spec = importlib.util.spec_from_file_location("_comfy_sampling_ref", HERE / "_comfy_sampling_ref.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


REF = _load_ref_module()


@pytest.fixture(scope="module")
def comfy_ref(comfyui_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("comfyref") / "ref.pt"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, str(HERE / "_comfy_sampling_ref.py"), str(comfyui_root), str(out)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, f"ComfyUI reference run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return torch.load(out)


@pytest.fixture(scope="module")
def inputs():
    return REF.make_inputs()


def assert_same(ours: torch.Tensor, theirs: torch.Tensor, what: str) -> None:
    assert ours.shape == theirs.shape, f"{what}: shape {tuple(ours.shape)} != ComfyUI's {tuple(theirs.shape)}"
    assert ours.dtype == theirs.dtype, f"{what}: dtype {ours.dtype} != ComfyUI's {theirs.dtype}"
    if not torch.equal(ours, theirs):
        diff = (ours.double() - theirs.double()).abs().max().item()
        raise AssertionError(f"{what}: differs from ComfyUI (max abs diff {diff:g})")


def test_schedule_tables(comfy_ref):
    s = DiscreteSchedule()
    assert_same(s.sigmas, comfy_ref["sigmas"], "sigmas")
    assert_same(s.log_sigmas, comfy_ref["log_sigmas"], "log_sigmas")
    assert abs(float(s.sigma_min) - 0.0291675) < 1e-6 and abs(float(s.sigma_max) - 14.614642) < 1e-5


def test_timestep_and_sigma(comfy_ref, inputs):
    s = DiscreteSchedule()
    assert_same(s.timestep(inputs["test_sigmas"]), comfy_ref["timestep"], "timestep(sigma)")
    assert_same(torch.stack([s.sigma(t) for t in inputs["test_timesteps"]]), comfy_ref["sigma_of_t"], "sigma(t)")


def test_eps_algebra(comfy_ref, inputs):
    s = DiscreteSchedule()
    x, sigma = inputs["x"], inputs["sigma"]
    assert_same(s.calculate_input(sigma, x), comfy_ref["calc_input"], "calculate_input")
    assert_same(s.calculate_denoised(sigma, x.flip(0) * 0.3, x), comfy_ref["calc_denoised"], "calculate_denoised")
    for md in (False, True):
        ours = s.noise_scaling(torch.tensor(14.614641), x.clone(), torch.full_like(x, 0.25), max_denoise=md)
        assert_same(ours, comfy_ref[f"noise_scaling_{md}"], f"noise_scaling(max_denoise={md})")


@pytest.mark.parametrize("name", REF.SCHEDULERS)
def test_schedulers(comfy_ref, name):
    s = DiscreteSchedule()
    for steps in REF.STEPS:
        assert_same(get_sigmas(s, name, steps), comfy_ref[f"sched_{name}_{steps}"], f"{name} scheduler, {steps} steps")


def test_prepare_noise(comfy_ref):
    assert_same(prepare_noise([1, 4, 8, 8], 42), comfy_ref["noise_1"], "noise batch 1")
    assert_same(prepare_noise([3, 4, 8, 8], 42), comfy_ref["noise_3"], "noise batch 3")
    assert_same(prepare_noise([3, 4, 8, 8], 7, noise_inds=[0, 2, 2]), comfy_ref["noise_inds"], "noise batch_index")
    assert_same(prepare_noise([1, 4, 8, 8], 2 ** 63 + 5), comfy_ref["noise_big_seed"], "noise, 64-bit seed")


def test_prepare_noise_leaves_global_rng_alone():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    prepare_noise([1, 4, 8, 8], 42)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_apply_model_wrapping(comfy_ref, inputs, dtype):
    net = REF.TinyEpsNet(ctx_dim=REF.CTX_DIM).to(dtype)
    den = DiscreteEpsDenoiser(net, DiscreteSchedule())
    with torch.no_grad():
        ours = den(inputs["x"], inputs["sigma"], Cond(inputs["ctx"]))
    assert ours.dtype == torch.float32
    assert_same(ours, comfy_ref[f"apply_model_{str(dtype)[6:]}"], f"BaseModel.apply_model ({dtype})")


@pytest.mark.parametrize("scheduler,steps,cfg", [("normal", 6, 5.0), ("karras", 5, 7.5), ("normal", 4, 1.0),
                                                 ("simple", 3, 3.0)])
def test_full_ksampler_run(comfy_ref, inputs, scheduler, steps, cfg):
    """comfy.sample.sample (KSampler, euler, denoise 1) with a 2-row positive and a 154-token negative."""
    schedule = DiscreteSchedule()
    den = DiscreteEpsDenoiser(REF.TinyEpsNet(ctx_dim=REF.CTX_DIM), schedule)
    guided = CFGDenoise(den, Cond(inputs["pos"]), Cond(inputs["neg"]), cfg)
    ours = sample(guided, schedule, shape=[2, 4, 8, 8], seed=99, steps=steps, scheduler=scheduler,
                  scale_factor=float(comfy_ref["latent_scale_factor"]))
    assert guided.calls == steps
    assert_same(ours, comfy_ref[f"ksampler_{scheduler}_{steps}_{cfg}"], f"KSampler {scheduler}/{steps}/cfg {cfg}")


@pytest.mark.parametrize("scheduler,steps,denoise", [("normal", 6, 0.6), ("karras", 5, 0.35)])
def test_partial_denoise_on_an_input_latent(comfy_ref, inputs, scheduler, steps, denoise):
    """denoise < 1: tail of a longer schedule, noise scaled without max_denoise, latent through the scale factor."""
    schedule = DiscreteSchedule()
    sigmas = get_sigmas_denoise(schedule, scheduler, steps, denoise)
    assert_same(sigmas, comfy_ref[f"denoise_sigmas_{scheduler}_{steps}_{denoise}"], f"{scheduler} denoise {denoise}")
    den = DiscreteEpsDenoiser(REF.TinyEpsNet(ctx_dim=REF.CTX_DIM), schedule)
    guided = CFGDenoise(den, Cond(inputs["pos"]), Cond(inputs["neg"]), 4.0)
    latent = comfy_ref["img2img_latent"]
    ours = sample(guided, schedule, noise=prepare_noise(list(latent.shape), 5), latent=latent, sigmas=sigmas,
                  scale_factor=float(comfy_ref["latent_scale_factor"]))
    assert_same(ours, comfy_ref[f"img2img_{scheduler}_{steps}_{denoise}"], f"KSampler {scheduler} denoise {denoise}")
