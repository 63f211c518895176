"""The LoRA adapter: zero-initialised, installed and removed without a trace, ComfyUI's key format and merge rule."""
from __future__ import annotations

import torch
from torch import nn

import pytest

from safecfg_core.align import LoRA, adaptable_layers, applied, comfy_state_dict, load_lora, save_lora
from safecfg_core.errors import TrainingInputError


class Net(nn.Module):
    """Linear, plain and grouped (depthwise) convolutions: the layer kinds the demo DiT and SD UNets have."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Conv2d(4, 8, 3, padding=1)
        self.depth = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.head = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 4))
        self.norm = nn.LayerNorm(8)  # not adapted

    def forward(self, x):
        h = self.depth(self.inp(x)).mean((2, 3))
        return self.head(self.norm(h))


def _net():
    torch.manual_seed(0)
    return Net().eval().requires_grad_(False)


def _random(lora, scale=0.1, seed=3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n in lora.layer_names:
            up, _ = lora.factors(n)
            up.copy_(torch.randn(up.shape, generator=g) * scale)
    return lora


def test_layers_found_and_untrained_lora_is_the_model_bit_for_bit():
    net, x = _net(), torch.randn(3, 4, 6, 6)
    layers = adaptable_layers(net)
    assert sorted(layers) == ["depth", "head.0", "head.2", "inp"]
    before = net(x)
    lora = LoRA(layers, rank=2)
    with applied(lora, net):
        assert torch.equal(net(x), before)


def test_applied_lora_is_comfyuis_merge_and_leaves_no_trace():
    net, x = _net(), torch.randn(3, 4, 6, 6)
    sd_before = {k: v.clone() for k, v in net.state_dict().items()}
    lora = _random(LoRA(adaptable_layers(net), rank=2, alpha=1.0))
    with applied(lora, net):
        out = net(x)
    # ComfyUI: weight += (strength * alpha / rank) * (up.flatten(1) @ down.flatten(1)).reshape(weight.shape)
    merged = _net()
    with torch.no_grad():
        for name in lora.layer_names:
            up, down = lora.factors(name)
            w = dict(merged.named_modules())[name].weight
            w += ((1.0 * 1.0 / 2) * torch.mm(up.flatten(1), down.flatten(1))).reshape(w.shape)
    assert torch.allclose(out, merged(x), atol=1e-6)
    assert not torch.allclose(out, net(x), atol=1e-3)
    assert net.state_dict().keys() == sd_before.keys()
    assert all(torch.equal(net.state_dict()[k], v) for k, v in sd_before.items())


def test_strength_scales_the_change_linearly():
    net = _net()
    lora = _random(LoRA(adaptable_layers(net), rank=2))
    full = lora.delta("head.0")
    lora.strength = 0.5
    assert torch.allclose(lora.delta("head.0"), 0.5 * full)


def test_file_has_comfy_keys_and_round_trips(tmp_path):
    net = _net()
    lora = _random(LoRA(adaptable_layers(net), rank=2, alpha=1.5))
    sd = comfy_state_dict(lora)
    assert set(sd) == {f"diffusion_model.{n}.{k}" for n in lora.layer_names
                       for k in ("lora_up.weight", "lora_down.weight", "alpha")}
    assert sd["diffusion_model.depth.lora_down.weight"].shape == (2, 1, 3, 3)
    assert sd["diffusion_model.depth.lora_up.weight"].shape == (8, 2, 1, 1)
    assert sd["diffusion_model.head.0.lora_up.weight"].shape == (16, 2)
    save_lora(tmp_path / "l.safetensors", lora)
    back = load_lora(tmp_path / "l.safetensors")
    assert back.rank == 2 and back.alpha == 1.5 and back.shapes == lora.shapes
    assert all(torch.equal(back.delta(n), lora.delta(n)) for n in lora.layer_names)


def test_a_lora_for_another_network_is_refused():
    lora = LoRA({"head.0": (32, 8)}, rank=2)
    with pytest.raises(TrainingInputError, match="does not fit"):
        with applied(lora, _net()):
            pass


def test_a_network_without_adaptable_layers_is_refused():
    with pytest.raises(TrainingInputError, match="no layers to adapt"):
        LoRA(adaptable_layers(nn.LayerNorm(4)), rank=2)
