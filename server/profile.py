"""Per-node profiling, always on: each node's wall time, the peak memory it added, whether its result came from the
cache, and why it ran again (which inputs or upstream results changed since it last ran on this device).

Memory is the peak during the node above what was in use when it started: on a CUDA device torch's peak allocated
memory; on the CPU the process's resident-set high-water mark (``ru_maxrss``), which Linux lets us reset to the
current size before each node (``/proc/self/clear_refs``; elsewhere it is only the growth of the process's peak).
On the CPU it is memory the node added to the process: what it placed in pages the process already held (freed but
still resident) does not count.
Reading it costs a few system calls (~6 µs on a busy VM), so a node that finishes within MEMORY_AFTER_NS is not
measured (``peak_bytes`` None): touching new memory costs about a microsecond per page, so such a node cannot
add more than a few MB, and the next measured node counts what it did add. A fast node thus costs two clock
reads and one small dict (see benchmarks/executor.py for the measured overhead).

A profile entry (JSON): ``{"class_type", "cached", "ms", "peak_bytes", "memory": "rss" | "cuda", "why"}``, ``why``
saying why a node that ran was not served from the cache (None for cached nodes).
"""
from __future__ import annotations

import functools
import os
import time
from typing import Any

import torch

try:
    import resource
except ImportError:  # Windows: no resident-set high-water mark to read; memory is not measured there
    resource = None

MEMORY_AFTER_NS = 100_000  # nodes faster than 0.1 ms are not measured for memory (see the module docstring)
_MISSING = object()


class NodeProfiler:
    """Measures the nodes of a run one after another on one device."""

    def __init__(self, device: torch.device | None = None):
        self.cuda = device if device is not None and device.type == "cuda" else None
        self.memory = "cuda" if self.cuda is not None else "rss"
        self._base = 0

    def begin(self) -> None:
        """Before a run's first node."""
        self._reset()

    def entry(self, class_type: str, started_ns: int, why: str) -> dict:
        """The entry of a node that ran from `started_ns` (time.perf_counter_ns) until now."""
        cuda = self.cuda
        if cuda is not None:
            torch.cuda.synchronize(cuda)  # kernels are asynchronous: the node's time includes its GPU work
        elapsed = time.perf_counter_ns() - started_ns
        peak = None
        if elapsed >= MEMORY_AFTER_NS and (cuda is not None or resource is not None):
            peak = max(0, self._peak() - self._base)
            self._reset()
        return {"class_type": class_type, "cached": False, "ms": elapsed / 1e6, "peak_bytes": peak,
                "memory": self.memory, "why": why}

    def cached(self, class_type: str) -> dict:
        return {"class_type": class_type, "cached": True, "ms": 0.0, "peak_bytes": None, "memory": self.memory,
                "why": None}

    def _peak(self) -> int:
        if self.cuda is not None:
            return torch.cuda.max_memory_allocated(self.cuda)
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux

    def _reset(self) -> None:
        if self.cuda is not None:
            torch.cuda.reset_peak_memory_stats(self.cuda)
            self._base = torch.cuda.memory_allocated(self.cuda)
            return
        if resource is None:
            return
        fd = _clear_refs()
        if fd is not None:
            try:
                os.write(fd, b"5")  # the kernel's high-water mark := the current resident size
            except OSError:
                pass
        self._base = self._peak()


@functools.cache
def _clear_refs() -> int | None:
    """This process's /proc/self/clear_refs, opened once (None where there is none)."""
    try:
        return os.open("/proc/self/clear_refs", os.O_WRONLY)
    except OSError:
        return None


FIRST_RUN = "first run"


def why_ran(item: Any, previous: Any) -> str:
    """Why `item` (a planned node: spec, consts, upstream, extra, key) ran instead of coming from the cache, given
    the same node id as it was when it last ran or was served here (None if never)."""
    if previous is None or previous.spec.type_name != item.spec.type_name:
        return FIRST_RUN
    if previous.key == item.key:
        return "not in the cache (evicted, or memory was freed)"
    reasons = []
    if previous.spec.version != item.spec.version:
        reasons.append(f"node version {previous.spec.version} → {item.spec.version}")
    consts, before = item.consts, previous.consts
    changed = sorted(n for n in consts.keys() | before.keys() if consts.get(n, _MISSING) != before.get(n, _MISSING))
    if changed:
        reasons.append(f"{', '.join(changed)} changed")
    upstream = {name: (key, slot) for name, key, slot in item.upstream}
    earlier = {name: (key, slot) for name, key, slot in previous.upstream}
    moved = sorted(n for n in upstream.keys() | earlier.keys() if upstream.get(n) != earlier.get(n))
    if moved:
        reasons.append(f"upstream changed: {', '.join(moved)}")
    if item.extra != previous.extra:
        reasons.append("its file changed")
    return "; ".join(reasons) or "inputs changed"
