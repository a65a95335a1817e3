"""Model residency: which torch modules live on the compute device, which wait in CPU RAM, which are dropped.

Nodes get one ``ModelResidency`` per device as ``ctx.resources``. What they may call:

    resources.device                  torch.device the node should compute on
    resources.dtype                   preferred floating dtype there (float32 on CPU)
    resources.load(module, key=None)  make `module` resident on the device and return it; other modules are
                                      offloaded to CPU RAM least-recently-used first to stay under the device
                                      budget, and dropped (forgotten) beyond the RAM budget
    resources.cached(key, factory)    the module registered under `key` (e.g. checkpoint path + size + mtime),
                                      built with `factory()` on a miss and registered in CPU RAM: switching
                                      between workflows that use the same checkpoint never reloads it
    resources.offload(module)         move one module back to CPU RAM
    resources.free()                  forget everything (POST /free {"unload_models": true})
    resources.stats()                 numbers for /system_stats

A module's size is counted from its parameters and buffers. On a CPU-only machine "device" and "RAM" are the
same memory: ``load`` then only updates the LRU order, and the RAM budget alone bounds what is kept.
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable

import torch


def module_bytes(module: torch.nn.Module) -> int:
    tensors = list(module.parameters()) + list(module.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


@dataclass
class _Entry:
    module: torch.nn.Module
    size: int
    on_device: bool


class ModelResidency:
    def __init__(self, device: str | torch.device = "cpu", device_budget: int | None = None,
                 ram_budget: int | None = None):
        self.device = torch.device(device)
        self.dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        self.device_budget = device_budget if device_budget is not None else _default_device_budget(self.device)
        self.ram_budget = ram_budget if ram_budget is not None else ram_total() // 2
        self._entries: OrderedDict[Any, _Entry] = OrderedDict()  # least recently used first
        self._lock = threading.RLock()
        self.loads = 0       # moves onto the device
        self.offloads = 0    # moves back to CPU RAM
        self.drops = 0       # entries forgotten beyond the RAM budget
        self.builds = 0      # factory() calls in `cached`

    @property
    def on_cpu(self) -> bool:
        return self.device.type == "cpu"

    def load(self, module: torch.nn.Module, key: Any = None) -> torch.nn.Module:
        key = id(module) if key is None else key
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry.module is not module:
                entry = _Entry(module, module_bytes(module), on_device=self.on_cpu)
                self._entries[key] = entry
            self._entries.move_to_end(key)
            if not entry.on_device:
                self._make_room(entry.size, keep=key)
                self._move(module, self.device)
                entry.on_device = True
                self.loads += 1
            self._trim_ram(keep=key)
            return module

    def cached(self, key: Any, factory: Callable[[], torch.nn.Module]) -> torch.nn.Module:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                return entry.module
        module = factory()  # outside the lock: building can take long and touches no residency state
        self.builds += 1
        with self._lock:
            self._entries[key] = _Entry(module, module_bytes(module), on_device=self.on_cpu)
            self._trim_ram(keep=key)
        return module

    def offload(self, module: torch.nn.Module) -> None:
        with self._lock:
            for entry in self._entries.values():
                if entry.module is module:
                    self._to_cpu(entry)

    def free(self) -> None:
        with self._lock:
            for entry in self._entries.values():
                self._to_cpu(entry)
            self._entries.clear()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def stats(self) -> dict:
        with self._lock:
            on_device = [e.size for e in self._entries.values() if e.on_device]
            in_ram = [e.size for e in self._entries.values() if not e.on_device or self.on_cpu]
            return {"device": str(self.device), "models": len(self._entries),
                    "device_bytes": sum(on_device), "device_budget": self.device_budget,
                    "ram_bytes": sum(in_ram), "ram_budget": self.ram_budget,
                    "loads": self.loads, "offloads": self.offloads, "drops": self.drops, "builds": self.builds}

    # -- internals (lock held) ----------------------------------------------------------------
    def _make_room(self, size: int, keep: Any) -> None:
        used = sum(e.size for e in self._entries.values() if e.on_device)
        for key, entry in self._entries.items():  # oldest first
            if used + size <= self.device_budget:
                break
            if key != keep and entry.on_device:
                self._to_cpu(entry)
                used -= entry.size

    def _trim_ram(self, keep: Any) -> None:
        def ram_used():
            return sum(e.size for e in self._entries.values() if not e.on_device or self.on_cpu)

        for key in list(self._entries):
            if ram_used() <= self.ram_budget:
                break
            entry = self._entries[key]
            if key != keep and (not entry.on_device or self.on_cpu):
                del self._entries[key]
                self.drops += 1

    def _move(self, module: torch.nn.Module, device: torch.device) -> None:
        module.to(device)

    def _to_cpu(self, entry: _Entry) -> None:
        if entry.on_device and not self.on_cpu:
            self._move(entry.module, torch.device("cpu"))
            self.offloads += 1
        entry.on_device = self.on_cpu


def _default_device_budget(device: torch.device) -> int:
    if device.type == "cuda":
        _, total = torch.cuda.mem_get_info(device)
        return int(total * 0.85)
    return ram_total() // 2


def ram_total() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def ram_free() -> int:
    """Available memory as the kernel estimates it (MemAvailable), falling back to free pages."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
