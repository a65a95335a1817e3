"""Models with weight patches (LoRAs), the base weights never copied per patch and never changed.

A patched MODEL or CLIP is a handle: the base value, the patches in the order they were applied (each a LoRA file at
a strength, matched to the base's weights) and the residency service it was made under. Nothing is computed when a
LoRA loader runs, so a stack of loaders costs nothing until the end of it is used. When a sampler asks for
``module`` (a text encoder for ``towers()``), the patched network is materialised: a copy of the module's structure
that shares every untouched parameter and buffer with the base (the same tensor objects) and holds new tensors
``W + Σ strength · ΔW`` only for the weights the LoRAs change, computed on the device the base weight is on.

That copy is its own cached value: registered with the residency service (server.models) under the base module and
the patches, so the memory budget counts its new tensors (shared ones once), moves it like any model and drops it
when memory is short, and another graph with the same LoRAs at the same strengths reuses it. The base model is
untouched: a graph without the LoRA gets exactly the weights it had.
"""
from __future__ import annotations

import copy
import dataclasses
import itertools
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .float8 import stored_name
from .lora import Adapter, Target


@dataclass(eq=False)
class Patch:
    """One LoRA applied at one strength: its adapters by the target weight they change."""
    key: tuple  # identifies the file's contents and the strength, for cache keys
    strength: float
    changes: dict[Target, list[Adapter]]


def patched_copy(module: nn.Module, index: int, patches: tuple[Patch, ...]) -> nn.Module:
    """``module`` (the patches' module ``index``) with the patches applied, sharing every tensor they leave alone."""
    updates: dict[str, list] = {}
    for patch in patches:
        for target, adapters in patch.changes.items():
            if target.module == index:
                updates.setdefault(target.weight, []).extend((target, a, patch.strength) for a in adapters)
    named = dict(itertools.chain(module.named_parameters(), module.named_buffers()))
    memo: dict[int, Any] = {id(t): t for t in named.values()}  # deepcopy keeps these objects as they are
    with torch.no_grad():
        for name, changes in updates.items():
            base = named[stored_name(module, name)]  # a float8-stored weight is patched and stored as float8
            acc = base.detach().to(torch.float32, copy=True)
            for target, adapter, strength in changes:
                part = acc if target.rows is None else acc[target.rows[0]:target.rows[1]]
                delta = adapter.delta(target.shape(part.shape if target.rows else acc.shape), acc.device)
                part += strength * target.stored(delta)
            new = acc.to(base.dtype)
            memo[id(base)] = nn.Parameter(new, requires_grad=base.requires_grad) \
                if isinstance(base, nn.Parameter) else new
    return copy.deepcopy(module, memo)


def materialise(resources, module: nn.Module, index: int, patches: tuple[Patch, ...]) -> nn.Module:
    """The patched copy of ``module``, cached by the residency service under the base module and the patches."""
    if resources is None:
        return patched_copy(module, index, patches)
    key = ("patched", module, tuple(p.key for p in patches))  # the module itself: an id could be reused
    return resources.cached(key, lambda: patched_copy(module, index, patches))


@dataclass(eq=False)
class PatchedModel:
    """A MODEL with LoRAs (the Denoiser protocol, nodes.sampling.denoiser): the base denoiser's conditioning,
    sampling and latent format, on the patched network."""
    base: Any  # the unpatched Denoiser
    patches: tuple[Patch, ...]
    resources: Any = None  # the residency service the loader ran under (None: plain CPU, the copy is kept here)
    _module: nn.Module | None = dataclasses.field(default=None, repr=False)

    name = property(lambda self: self.base.name)
    kind = property(lambda self: self.base.kind)
    sampling = property(lambda self: self.base.sampling)
    latent_format = property(lambda self: self.base.latent_format)

    @property
    def module(self) -> nn.Module:
        if self.resources is not None:
            return materialise(self.resources, self.base.module, 0, self.patches)
        if self._module is None:
            self._module = patched_copy(self.base.module, 0, self.patches)
        return self._module

    def eps_fn(self, module: nn.Module | None = None):
        return self.base.eps_fn(module if module is not None else self.module)

    def prepare(self, conditioning: list, role: str, latent_hw: tuple[int, int], device=None,
                seed: int = 0) -> list[dict]:
        return self.base.prepare(conditioning, role, latent_hw, device, seed)

    def with_sampling(self, sampling) -> "PatchedModel":
        return PatchedModel(self.base.with_sampling(sampling), self.patches, self.resources)


@dataclass(eq=False)
class PatchedTextEncoder:
    """A CLIP with LoRAs (the TextEncoder protocol, nodes.families): the base encoder on patched towers.
    ``resolved()`` is the base encoder's own class on them (what nodes that need an SDXL CLIP check for)."""
    base: Any  # the unpatched TextEncoder
    patches: tuple[Patch, ...]
    resources: Any = None
    _towers: list | None = dataclasses.field(default=None, repr=False)
    _resolved: Any = dataclasses.field(default=None, repr=False)

    kind = property(lambda self: self.base.kind)

    def towers(self) -> list[nn.Module]:
        if self.resources is not None:
            return [materialise(self.resources, t, i, self.patches) for i, t in enumerate(self.base.towers())]
        if self._towers is None:
            self._towers = [patched_copy(t, i, self.patches) for i, t in enumerate(self.base.towers())]
        return self._towers

    def resolved(self):
        towers = self.towers()
        # the same encoder while its towers stay cached: it keeps what it computed once (the empty prompt's window)
        if self._resolved is None or any(a is not b for a, b in zip(self._resolved.towers(), towers)):
            self._resolved = self.base.with_towers(towers)
        return self._resolved

    def conditioning(self, text: str) -> list:
        return self.resolved().conditioning(text)

    def with_layer(self, layer: int) -> "PatchedTextEncoder":
        return PatchedTextEncoder(self.base.with_layer(layer), self.patches, self.resources)


def stacked(cls, value, patch: Patch, resources):
    """``value`` (a MODEL for ``cls`` PatchedModel, a CLIP for PatchedTextEncoder), patched already or not, with
    one more patch on its base."""
    before = value.patches if isinstance(value, cls) else ()
    return cls(unpatched(value), before + (patch,), resources)


def unpatched(value):
    """The base MODEL or CLIP under any patches."""
    return value.base if isinstance(value, (PatchedModel, PatchedTextEncoder)) else value
