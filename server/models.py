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
    resources.entries()               (key, bytes, builds) of each registered module: what a Ray actor reports as
                                      resident for routing (routing.py)

A module's size is counted from its parameters and buffers. On a CPU-only machine "device" and "RAM" are the
same memory: ``load`` then only updates the LRU order, and the RAM budget alone bounds what is kept.
"""
from __future__ import annotations

import os
import threading
from collections import Counter, OrderedDict
from typing import Any, Callable

import torch


def module_bytes(module: torch.nn.Module) -> int:
    return sum(_nbytes(t) for t in _tensors(module))


def _tensors(module: torch.nn.Module) -> list[torch.Tensor]:
    return list(module.parameters()) + list(module.buffers())


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


class ModelResidency:
    """Entries may nest (a checkpoint container registered with `cached`, its denoising network with `load`):
    memory is counted per tensor, once, wherever it lives, and a module in use protects every entry sharing its
    tensors."""

    def __init__(self, device: str | torch.device = "cpu", device_budget: int | None = None,
                 ram_budget: int | None = None):
        self.device = torch.device(device)
        self.dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        self.device_budget = device_budget if device_budget is not None else _default_device_budget(self.device)
        self.ram_budget = ram_budget if ram_budget is not None else ram_total() // 2
        self._entries: OrderedDict[Any, torch.nn.Module] = OrderedDict()  # least recently used first
        self._lock = threading.RLock()
        self.loads = 0       # moves onto the device
        self.offloads = 0    # moves back to CPU RAM
        self.drops = 0       # entries forgotten beyond the RAM budget
        self.builds = 0      # factory() calls in `cached`
        self._builds: Counter = Counter()  # the same, per key

    @property
    def on_cpu(self) -> bool:
        return self.device.type == "cpu"

    def load(self, module: torch.nn.Module, key: Any = None) -> torch.nn.Module:
        with self._lock:
            self._register(id(module) if key is None else key, module)
            away = sum(_nbytes(t) for t in _tensors(module) if t.device != self.device)
            if away and not self.on_cpu:
                self._make_room(away, protect=module)
                self._move(module, self.device)
                self.loads += 1
            self._trim_ram(protect=module)
            return module

    def cached(self, key: Any, factory: Callable[[], torch.nn.Module]) -> torch.nn.Module:
        with self._lock:
            module = self._entries.get(key)
            if module is not None:
                self._touch(module)
                return module
        module = factory()  # outside the lock: building can take long and touches no residency state
        self.builds += 1
        self._builds[key] += 1
        with self._lock:
            self._register(key, module)
            self._trim_ram(protect=module)
        return module

    def offload(self, module: torch.nn.Module) -> None:
        with self._lock:
            if not self.on_cpu and self._device_bytes(module):
                self._move(module, torch.device("cpu"))
                self.offloads += 1

    def free(self) -> None:
        with self._lock:
            for module in self._entries.values():
                self.offload(module)
            self._entries.clear()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def stats(self) -> dict:
        with self._lock:
            device_bytes, ram_bytes = self._usage()
            return {"device": str(self.device), "models": len(self._entries),
                    "device_bytes": device_bytes, "device_budget": self.device_budget,
                    "ram_bytes": ram_bytes, "ram_budget": self.ram_budget,
                    "loads": self.loads, "offloads": self.offloads, "drops": self.drops, "builds": self.builds}

    def entries(self) -> list[tuple[Any, int, int]]:
        """(key, bytes, times built) of every registered module, least recently used first."""
        with self._lock:
            return [(key, module_bytes(module), self._builds[key]) for key, module in self._entries.items()]

    # -- internals (lock held) ----------------------------------------------------------------
    def _register(self, key: Any, module: torch.nn.Module) -> None:
        self._entries[key] = module
        self._touch(module)

    def _touch(self, module: torch.nn.Module) -> None:
        """Mark `module` and every entry sharing tensors with it (its container, its parts) as just used."""
        ids = {id(t) for t in _tensors(module)}
        for key in [k for k, m in self._entries.items() if m is module or ids & {id(t) for t in _tensors(m)}]:
            self._entries.move_to_end(key)

    def _usage(self) -> tuple[int, int]:
        """(bytes on the device, bytes in CPU RAM) over all entries, each tensor once."""
        seen: set[int] = set()
        device_bytes = ram_bytes = 0
        for module in self._entries.values():
            for t in _tensors(module):
                if id(t) in seen:
                    continue
                seen.add(id(t))
                if t.device.type == "cpu":
                    ram_bytes += _nbytes(t)
                else:
                    device_bytes += _nbytes(t)
        return device_bytes, ram_bytes

    def _device_bytes(self, module: torch.nn.Module) -> int:
        return sum(_nbytes(t) for t in _tensors(module) if t.device.type != "cpu")

    def _make_room(self, incoming: int, protect: torch.nn.Module) -> None:
        used, _ = self._usage()
        keep = {id(t) for t in _tensors(protect)}
        for module in list(self._entries.values()):  # least recently used first
            if used + incoming <= self.device_budget:
                break
            on_device = self._device_bytes(module)
            if on_device and not keep & {id(t) for t in _tensors(module)}:
                self._move(module, torch.device("cpu"))
                self.offloads += 1
                used -= on_device

    def _trim_ram(self, protect: torch.nn.Module) -> None:
        keep = {id(t) for t in _tensors(protect)}
        for key in list(self._entries):  # least recently used first
            if self._usage()[1] <= self.ram_budget:
                break
            module = self._entries[key]
            if not keep & {id(t) for t in _tensors(module)} and not self._device_bytes(module):
                del self._entries[key]
                self.drops += 1

    def _move(self, module: torch.nn.Module, device: torch.device) -> None:
        module.to(device)


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


def device_memory(device: torch.device) -> dict:
    """/system_stats' per-device fields (ComfyUI's names): on the CPU, "VRAM" is system RAM."""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        reserved, allocated = torch.cuda.memory_reserved(device), torch.cuda.memory_allocated(device)
        return {"name": torch.cuda.get_device_name(device), "type": "cuda", "index": device.index or 0,
                "vram_total": total, "vram_free": free, "torch_vram_total": reserved,
                "torch_vram_free": reserved - allocated}
    return {"name": "cpu", "type": device.type, "index": device.index or 0, "vram_total": ram_total(),
            "vram_free": ram_free(), "torch_vram_total": 0, "torch_vram_free": 0}
