"""LoRA on a frozen denoiser: the adapter, how it is put on a network, and the file ComfyUI's LoRA loaders read.

The adapter of one layer is ``W' = W + (alpha / rank) * (up.flatten(1) @ down.flatten(1)).reshape(W.shape)``, which
is exactly how ComfyUI applies a LoRA (``comfy.weight_adapter.lora.LoRAAdapter.calculate_weight``): the same
operations in the same order, so a LoRA sampled here and in ComfyUI gives the same weights. ``up`` starts at zero,
so an untrained LoRA leaves the model bit for bit as it was. Linear layers get ``up [out, r]``, ``down [r, in]``;
convolutions ``up [out, r, 1, ...]``, ``down [r, in/groups, *kernel]`` (LoCon), grouped ones included.

The adapter is installed as a weight parametrization (``torch.nn.utils.parametrize``) for the duration of a
``with applied(lora, net):`` block and removed afterwards, so it works on any network whose layers are
``nn.Linear``/``nn.Conv*`` modules, however the :class:`~safecfg_core.conditioning.Denoiser` around it calls it.
"""
from __future__ import annotations

import contextlib
import json
import re
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..errors import TrainingInputError

ADAPTABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
COMFY_PREFIX = "diffusion_model."
"""ComfyUI's name of the denoising network inside its model (``BaseModel.diffusion_model``): the generic LoRA key
format ``diffusion_model.<module>.lora_up.weight`` maps onto any model ComfyUI loads (``model_lora_keys_unet``)."""


class _Delta(nn.Module):
    """The parametrization ``W -> W + scale * up @ down`` of one layer (ComfyUI's order of operations)."""

    def __init__(self, lora: "LoRA", name: str) -> None:
        super().__init__()
        self.lora, self.name = (lora,), name  # a tuple: not registered as a submodule of the layer

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        lora = self.lora[0]
        if not lora.enabled:
            return weight
        up, down = lora.factors(self.name)
        # to the weight's device: a model manager (ComfyUI's) may move the network after the LoRA was put on it
        up, down = up.to(weight.device, torch.float32), down.to(weight.device, torch.float32)
        diff = torch.mm(up.flatten(start_dim=1), down.flatten(start_dim=1)).reshape(weight.shape)
        return weight + (lora.strength * lora.scale * diff).to(weight.dtype)


def _safe(name: str) -> str:
    return name.replace(".", "__")


class LoRA(nn.Module):
    """Low-rank adapters for the named layers of one network (names as in ``net.named_modules()``).

    ``shapes``: each layer's weight shape; ``strength`` scales the whole LoRA as ComfyUI's ``strength_model`` does;
    ``enabled = False`` turns it off without removing it (the teacher passes of alignment).
    """

    def __init__(self, shapes: Mapping[str, Sequence[int]], rank: int = 8, alpha: Optional[float] = None,
                 seed: int = 0) -> None:
        super().__init__()
        if rank < 1:
            raise TrainingInputError(f"LoRA rank must be at least 1, got {rank}.")
        if not shapes:
            raise TrainingInputError("The LoRA has no layers to adapt: the network has no Linear or Conv layers "
                                     "matching the target pattern. Widen the pattern or use another network.")
        self.rank = int(rank)
        self.alpha = float(alpha if alpha is not None else rank)
        self.strength = 1.0
        self.enabled = True
        self.shapes = {k: tuple(int(s) for s in v) for k, v in shapes.items()}
        self.up = nn.ParameterDict()
        self.down = nn.ParameterDict()
        g = torch.Generator().manual_seed(int(seed))
        self._keys: Dict[str, str] = {}
        for name, shape in self.shapes.items():
            out_dim, in_shape, kernel = shape[0], shape[1:], shape[2:]
            down = torch.empty((self.rank,) + tuple(in_shape))
            # the kaiming-uniform bound nn.Linear/Conv give a layer of this fan-in, drawn from our own generator
            bound = max(1, down[0].numel()) ** -0.5
            down.uniform_(-bound, bound, generator=g)
            up = torch.zeros((out_dim, self.rank) + (1,) * len(kernel))
            self._keys[name] = _safe(name)
            self.down[_safe(name)] = nn.Parameter(down)
            self.up[_safe(name)] = nn.Parameter(up)

    @property
    def scale(self) -> float:
        """ComfyUI's ``alpha / rank``."""
        return self.alpha / self.rank

    @property
    def layer_names(self) -> List[str]:
        return list(self.shapes)

    def factors(self, name: str) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(up, down)`` of one layer."""
        key = self._keys[name]
        return self.up[key], self.down[key]

    def delta(self, name: str) -> torch.Tensor:
        """The weight change ``scale * up @ down`` of one layer, in the layer's weight shape (fp32)."""
        up, down = self.factors(name)
        diff = torch.mm(up.flatten(start_dim=1).float(), down.flatten(start_dim=1).float())
        return (self.strength * self.scale * diff).reshape(self.shapes[name])


def adaptable_layers(net: nn.Module, pattern: Optional[str] = None) -> Dict[str, Tuple[int, ...]]:
    """``{module name: weight shape}`` of the Linear/Conv layers of ``net`` whose name matches ``pattern`` (a regular
    expression searched in the name; None: all)."""
    rx = re.compile(pattern) if pattern else None
    out: Dict[str, Tuple[int, ...]] = {}
    for name, module in net.named_modules():
        if isinstance(module, ADAPTABLE) and name and (rx is None or rx.search(name)):
            out[name] = tuple(module.weight.shape)
    return out


def network_of(denoiser) -> nn.Module:
    """The torch network inside a denoiser: ``denoiser.net`` (:class:`~safecfg_core.sampling.DiscreteEpsDenoiser`,
    the demo world's) or the denoiser itself when it is a module."""
    net = getattr(denoiser, "net", None)
    if isinstance(net, nn.Module):
        return net
    if isinstance(denoiser, nn.Module):
        return denoiser
    raise TrainingInputError(
        f"Cannot put a LoRA on a {type(denoiser).__name__}: it is not a torch module and has no `.net` module. "
        "Pass the network (an nn.Module whose Linear/Conv layers the LoRA adapts) explicitly.")


@contextlib.contextmanager
def applied(lora: LoRA, net: nn.Module) -> Iterator[LoRA]:
    """Install ``lora`` on ``net`` for the ``with`` block; the original weights are back afterwards, untouched."""
    modules = dict(net.named_modules())
    installed: List[nn.Module] = []
    try:
        for name in lora.layer_names:
            module = modules.get(name)
            if module is None or tuple(module.weight.shape) != lora.shapes[name]:
                got = None if module is None else tuple(module.weight.shape)
                raise TrainingInputError(
                    f"This LoRA does not fit the network: layer {name!r} is {got}, the LoRA was made for "
                    f"{lora.shapes[name]}. Use the LoRA with the model it was trained on.")
            parametrize.register_parametrization(module, "weight", _Delta(lora, name))
            installed.append(module)
        yield lora
    finally:
        for module in installed:
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)


# ---------------------------------------------------------------------------------------------------- files
def comfy_state_dict(lora: LoRA, prefix: str = COMFY_PREFIX) -> Dict[str, torch.Tensor]:
    """The LoRA in ComfyUI's standard key format: ``<prefix><module>.lora_up.weight`` / ``.lora_down.weight`` /
    ``.alpha`` (fp32, contiguous)."""
    sd: Dict[str, torch.Tensor] = {}
    for name in lora.layer_names:
        up, down = lora.factors(name)
        sd[f"{prefix}{name}.lora_up.weight"] = up.detach().float().contiguous().clone()
        sd[f"{prefix}{name}.lora_down.weight"] = down.detach().float().contiguous().clone()
        sd[f"{prefix}{name}.alpha"] = torch.tensor(lora.alpha, dtype=torch.float32)
    return sd


def save_lora(path, lora: LoRA, metadata: Optional[Mapping[str, object]] = None, prefix: str = COMFY_PREFIX) -> None:
    """Write ``lora`` as a ComfyUI LoRA (safetensors; written to a temporary file and renamed into place)."""
    from ..hgr import atomic_save_safetensors

    meta = {"safecfg.lora": json.dumps({"rank": lora.rank, "alpha": lora.alpha, "prefix": prefix,
                                        "shapes": lora.shapes})}
    meta.update({str(k): v if isinstance(v, str) else json.dumps(v, default=str) for k, v in (metadata or {}).items()})
    atomic_save_safetensors(comfy_state_dict(lora, prefix), meta, str(path))


def load_lora(path, prefix: str = COMFY_PREFIX) -> LoRA:
    """Read a LoRA written by :func:`save_lora` (or any ``lora_up``/``lora_down`` file with that prefix)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        keys = list(f.keys())
        tensors = {k: f.get_tensor(k) for k in keys}
    names = sorted({k[len(prefix):-len(".lora_up.weight")] for k in keys
                    if k.startswith(prefix) and k.endswith(".lora_up.weight")})
    if not names:
        raise TrainingInputError(f"{path} holds no '{prefix}<layer>.lora_up.weight' keys; it is not a LoRA this "
                                 "pack wrote. Pass a LoRA made by the align command.")
    first_up = tensors[f"{prefix}{names[0]}.lora_up.weight"]
    rank = int(first_up.shape[1])
    alpha = float(tensors.get(f"{prefix}{names[0]}.alpha", torch.tensor(float(rank))))
    shapes = {}
    for n in names:
        up, down = tensors[f"{prefix}{n}.lora_up.weight"], tensors[f"{prefix}{n}.lora_down.weight"]
        shapes[n] = (int(up.shape[0]),) + tuple(int(s) for s in down.shape[1:])
    lora = LoRA(shapes, rank=rank, alpha=alpha)
    with torch.no_grad():
        for n in names:
            up, down = lora.factors(n)
            up.copy_(tensors[f"{prefix}{n}.lora_up.weight"])
            down.copy_(tensors[f"{prefix}{n}.lora_down.weight"])
    return lora


__all__ = ["ADAPTABLE", "COMFY_PREFIX", "LoRA", "adaptable_layers", "applied", "comfy_state_dict", "load_lora",
           "network_of", "save_lora"]
