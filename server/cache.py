"""The executor's output cache: node results by content key, bounded by entry count and tensor bytes (LRU).

Keys come from server.executor (a hash of a node's class, constants and upstream keys), so identical work in
different prompts or workflows shares one entry. Model weights are not counted here: loaders return handles
whose memory the model-residency service (server.models) accounts for."""
from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from typing import Any

import torch

_SMALL = 64  # bytes charged for anything that is not a tensor: keeps the entry bound meaningful


def size_of(value: Any) -> int:
    """Bytes held by the tensors inside an output (tuples, lists, dicts, dataclass values such as a CLIP vision output,
    and Result objects are walked)."""
    total, stack, seen = 0, [value], set()
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            total += item.nelement() * item.element_size()
        elif isinstance(item, (list, tuple)):
            if id(item) not in seen:
                seen.add(id(item))
                stack.extend(item)
        elif isinstance(item, dict):
            if id(item) not in seen:
                seen.add(id(item))
                stack.extend(item.values())
        elif hasattr(item, "outputs") and hasattr(item, "ui"):  # nodes.node.Result
            stack.extend((item.outputs, item.ui))
        elif dataclasses.is_dataclass(item) and not isinstance(item, type):
            if id(item) not in seen:
                seen.add(id(item))
                stack.extend(getattr(item, f.name) for f in dataclasses.fields(item))
        else:
            total += _SMALL
    return total


class OutputCache:
    """Least-recently-used store of node results, bounded by ``max_entries`` and ``max_bytes``.

    Thread-safe: the server may clear or inspect it while the worker runs a prompt."""

    def __init__(self, max_entries: int = 1024, max_bytes: int = 4 << 30):
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = self.evictions = 0

    def get(self, key: str) -> Any | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return item[0]

    def put(self, key: str, outputs: Any) -> bool:
        """Store a result; False when it alone exceeds the byte bound (it is then not kept)."""
        size = size_of(outputs)
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            if size > self.max_bytes or self.max_entries <= 0:
                return False
            self._items[key] = (outputs, size)
            self._bytes += size
            while len(self._items) > self.max_entries or self._bytes > self.max_bytes:
                _, (_, dropped) = self._items.popitem(last=False)
                self._bytes -= dropped
                self.evictions += 1
            return True

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0

    def __contains__(self, key: str) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def stats(self) -> dict:
        with self._lock:
            return {"entries": len(self._items), "bytes": self._bytes, "max_entries": self.max_entries,
                    "max_bytes": self.max_bytes, "hits": self.hits, "misses": self.misses,
                    "evictions": self.evictions}
