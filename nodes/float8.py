"""Weights kept in float8 and upcast to the compute dtype when a layer reads them, as ComfyUI's manual-cast layers do:
SD3 checkpoints store T5-XXL so (nodes.mmdit.t5), and UNETLoader's ``weight_dtype`` stores a diffusion model so.
Memory is a quarter of fp32's; each use costs one cast of the layer's weight.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from .weights import FLOAT8


class Upcast(nn.Module):
    """A parametrization: the stored (float8) tensor, as the compute dtype and times its per-tensor scale if it has
    one, whenever the layer reads it."""

    def __init__(self, dtype: torch.dtype, scale: torch.Tensor | None = None):
        super().__init__()
        self.dtype = dtype
        self.register_buffer("scale", scale, persistent=False)  # a buffer, so it moves with the model

    def forward(self, stored: torch.Tensor) -> torch.Tensor:
        weight = stored.to(self.dtype)
        return weight if self.scale is None else weight * self.scale.to(self.dtype)


def upcast_on_use(model: nn.Module, dtype: torch.dtype, scales: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """Keep the model's float8 tensors as they are and hand its layers ``dtype`` copies when they run, each times
    its ``scales[parameter name]`` where given."""
    scales = scales or {}
    for name, p in list(model.named_parameters()):
        if p.dtype in FLOAT8 or name in scales:
            owner, _, attr = name.rpartition(".")
            parametrize.register_parametrization(model.get_submodule(owner), attr, Upcast(dtype, scales.get(name)),
                                                 unsafe=True)
    return model


def store_as_float8(model: nn.Module, float8: torch.dtype, dtype: torch.dtype) -> nn.Module:
    """Store the model's matrices and kernels (every floating parameter of two or more dimensions: nearly all of its
    size) as ``float8``, upcast to ``dtype`` on use; biases, norm scales and buffers (a fraction of a percent of
    the bytes) stay in ``dtype``."""
    for p in model.parameters():
        if p.is_floating_point() and p.ndim >= 2:
            p.data = p.data.to(float8)
    return upcast_on_use(model, dtype)


def stored_name(model: nn.Module, name: str) -> str:
    """The name of the tensor that holds parameter ``name`` (e.g. ``a.weight``): under an upcast it is the stored
    float8 one (``a.parametrizations.weight.original``), which weight patches (LoRAs) replace."""
    owner, _, attr = name.rpartition(".")
    if parametrize.is_parametrized(model.get_submodule(owner), attr):
        return f"{owner}.parametrizations.{attr}.original"
    return name
