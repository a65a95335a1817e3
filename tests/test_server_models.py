"""Model residency: LRU offload under a device budget, drop beyond a RAM budget, cached builds, free."""
from __future__ import annotations

import torch

from server.models import ModelResidency, module_bytes


def lin(n=16):
    return torch.nn.Linear(n, n, bias=False)  # n*n*4 bytes


def test_cached_builds_once_and_survives_other_loads():
    r = ModelResidency("cpu", ram_budget=10 * module_bytes(lin()))
    calls = []

    def build():
        calls.append(1)
        return lin()

    a = r.cached(("ckpt", "base.safetensors", 123), build)
    assert r.cached(("ckpt", "base.safetensors", 123), build) is a and len(calls) == 1
    r.load(lin())  # something else used in between: the checkpoint stays
    assert r.cached(("ckpt", "base.safetensors", 123), build) is a and len(calls) == 1
    assert r.stats()["builds"] == 1 and r.load(a, key=("ckpt", "base.safetensors", 123)) is a


def test_ram_budget_drops_least_recently_used():
    size = module_bytes(lin())
    r = ModelResidency("cpu", ram_budget=2 * size)
    a = r.cached("a", lin)
    r.cached("b", lin)
    r.cached("a", lin)  # touch a: b is now the oldest
    r.cached("c", lin)
    st = r.stats()
    assert st["models"] == 2 and st["drops"] == 1 and st["ram_bytes"] <= 2 * size
    assert r.cached("a", lin) is a
    built = []
    r.cached("b", lambda: built.append(1) or lin())
    assert built == [1]  # b had been dropped


def test_free_forgets_everything():
    r = ModelResidency("cpu")
    r.load(lin(), key="x")
    r.free()
    assert r.stats()["models"] == 0 and r.stats()["device_bytes"] == 0
    assert r.device == torch.device("cpu") and r.dtype == torch.float32


class MetaResidency(ModelResidency):
    """A GPU-like residency without a GPU: the `meta` device stands in for it (tensors with no storage); coming
    back to CPU allocates fresh storage, since meta tensors hold no values to copy."""

    def __init__(self, **kw):
        super().__init__("meta", **kw)

    def _move(self, module, device):
        module.to("meta") if device.type == "meta" else module.to_empty(device="cpu")


def where(module) -> str:
    return module.weight.device.type


def test_device_budget_offloads_lru_to_cpu():
    size = module_bytes(lin())
    r = MetaResidency(device_budget=2 * size, ram_budget=100 * size)
    a, b, c = lin(), lin(), lin()
    r.load(a, "a"), r.load(b, "b")
    assert where(a) == "meta" and r.stats()["device_bytes"] == 2 * size and r.stats()["loads"] == 2
    r.load(b, "b")  # already resident: no move
    assert r.stats()["loads"] == 2
    r.load(c, "c")  # over budget: a (least recently used) goes back to CPU RAM
    assert where(a) == "cpu" and where(b) == "meta" and where(c) == "meta"
    st = r.stats()
    assert st["offloads"] == 1 and st["device_bytes"] == 2 * size and st["ram_bytes"] == size
    r.load(a, "a")  # back on the device; b is now the oldest and leaves
    assert where(a) == "meta" and where(b) == "cpu"
    r.free()
    assert r.stats()["models"] == 0 and where(a) == "cpu"


class Container(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.unet, self.vae = lin(32), lin(8)


def test_nested_entries_count_once_and_protect_their_container():
    """A checkpoint registered with `cached` whose UNet a sampler then `load`s: one copy of memory, and using
    the UNet keeps the checkpoint from being dropped (which would mean reading it from disk again)."""
    small = module_bytes(lin(8))
    r = MetaResidency(device_budget=10 * module_bytes(lin(32)), ram_budget=small)
    ckpt = r.cached("ckpt", Container)
    assert r.stats()["ram_bytes"] == module_bytes(ckpt)
    r.load(ckpt.unet)  # onto the device; the rest of the checkpoint (vae) stays in RAM
    st = r.stats()
    assert st["device_bytes"] == module_bytes(ckpt.unet) and st["ram_bytes"] == small and st["models"] == 2
    r.cached("other", lambda: lin(8))  # RAM over budget, but the checkpoint is in use on the device: kept
    assert r.stats()["drops"] == 0 and r.cached("ckpt", Container) is ckpt and r.stats()["builds"] == 2
    r.offload(ckpt)  # all back in RAM: now it can be dropped like anything else, least recently used first
    assert r.stats()["device_bytes"] == 0
    r.cached("third", lambda: lin(8))
    st = r.stats()
    assert st["drops"] == 3 and st["models"] == 1 and st["ram_bytes"] == small
    assert r.cached("ckpt", Container) is not ckpt  # forgotten: built again
