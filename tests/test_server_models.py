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


class RecordingResidency(ModelResidency):
    """A GPU-like residency without a GPU: moves are recorded instead of copying tensors."""

    def __init__(self, **kw):
        super().__init__("cuda:0", **kw)
        self.where: dict[int, str] = {}

    def _move(self, module, device):
        self.where[id(module)] = device.type


def test_device_budget_offloads_lru_to_cpu():
    size = module_bytes(lin())
    r = RecordingResidency(device_budget=2 * size, ram_budget=100 * size)
    a, b, c = lin(), lin(), lin()
    r.load(a, "a"), r.load(b, "b")
    assert r.where[id(a)] == "cuda" and r.stats()["device_bytes"] == 2 * size and r.stats()["loads"] == 2
    r.load(b, "b")  # already resident: no move
    assert r.stats()["loads"] == 2
    r.load(c, "c")  # over budget: a (least recently used) goes back to CPU RAM
    assert r.where[id(a)] == "cpu" and r.where[id(c)] == "cuda"
    st = r.stats()
    assert st["offloads"] == 1 and st["device_bytes"] == 2 * size and st["ram_bytes"] == size
    r.load(a, "a")  # back on the device; b is now the oldest and leaves
    assert r.where[id(a)] == "cuda" and r.where[id(b)] == "cpu"
    r.free()
    assert r.stats()["models"] == 0 and r.where[id(a)] == "cpu"
