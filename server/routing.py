"""Model-affinity routing: which worker runs which queued prompt (``latentgraph serve --ray``).

A prompt goes to an idle worker that already holds the model files it reads; else to the idle worker that can load
them most cheaply (what it holds already, then the most free room); only then anywhere. It does not wait forever
for the worker it prefers: once that worker has kept it waiting ``max_wait`` seconds, the cheapest idle worker
takes it. The decision and its reason go into the prompt's history (``meta.worker``, ``meta.route_reason``).

Each worker thread pulls its prompts through its own :class:`RouteSource`: ``take`` runs :meth:`Router.choose` on
the first pending prompts (in queue order) under the queue's lock, so decisions are made one at a time against the
queue as it is; a worker declines the prompts another idle worker is better placed to run, and every change that
can alter a decision (a submission, a worker going idle) wakes them all.

What a prompt needs is found without knowing any node: the files under the models folder that its nodes'
``fingerprint`` names (the loaders fingerprint the file they read). What a worker holds comes from its model
residency (server.models), whose keys name the same files; each worker reports them with its stats.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Any, Iterator

from .queue import PromptQueue, QueueItem

log = logging.getLogger("latentgraph.routing")

MAX_WAIT = 10.0  # seconds a prompt waits for a busy worker that holds its models before another loads them


# -- what a prompt needs, what a worker holds -----------------------------------------------------------------
def model_paths(value: Any, root: str) -> Iterator[str]:
    """Paths under `root` named anywhere in `value` (nested tuples and lists of a fingerprint or residency key),
    relative to `root`, '/'-separated."""
    if isinstance(value, str):
        if os.path.isabs(value) and os.path.commonpath([root, value]) == root and value != root:
            yield os.path.relpath(value, root).replace(os.sep, "/")
    elif isinstance(value, (tuple, list)):
        for part in value:
            yield from model_paths(part, root)


def model_files(prompt: dict, registry: dict, env) -> dict[str, int]:
    """{file under the models folder: bytes} that the prompt's nodes read, by their fingerprints."""
    root = os.path.abspath(env.models_dir or "models")
    found: dict[str, int] = {}
    for entry in prompt.values():
        spec = registry.get(entry.get("class_type")) if isinstance(entry, dict) else None
        if spec is None or getattr(spec.cls, "fingerprint", None) is None:
            continue
        constants = {k: v for k, v in (entry.get("inputs") or {}).items() if not _is_link(v)}
        try:
            fingerprint = spec.fingerprint(constants, env)
        except Exception:  # a missing or bad file: the executor reports it, naming the node, when the prompt runs
            continue
        for rel in model_paths(fingerprint, root):
            found[rel] = _size(os.path.join(root, rel))
    return found


def resident_models(resources, models_dir: str) -> dict[str, dict]:
    """{file under the models folder: {bytes, builds, hash}} of the modules a worker's residency holds. ``hash``
    identifies the file (blake2b of its name, size and modification time; not of its contents)."""
    root = os.path.abspath(models_dir or "models")
    found: dict[str, dict] = {}
    for key, size, builds in resources.entries():
        for rel in model_paths(key, root):
            entry = found.setdefault(rel, {"bytes": 0, "builds": 0, "hash": _file_hash(os.path.join(root, rel))})
            entry["bytes"] += size
            entry["builds"] += builds
    return found


def _is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[1], int)


def _size(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(here, f)) for here, _, files in os.walk(path) for f in files)


def _file_hash(path: str) -> str:
    try:
        st = os.stat(path)
    except OSError:
        return ""
    return hashlib.blake2b(f"{path}\0{st.st_size}\0{st.st_mtime_ns}".encode(), digest_size=8).hexdigest()


# -- the router -----------------------------------------------------------------------------------------------
@dataclass(eq=False)
class _Slot:
    """One worker as the router sees it. Its runner has ``ready`` (False while its actor starts or restarts) and
    ``stats()`` with ``resident`` (see resident_models) and ``room`` (bytes it can load without evicting)."""
    name: str
    runner: Any
    running: dict[str, int] | None = None  # model files of the prompt it runs; None when idle


@dataclass(eq=False)
class _View:
    """A ready worker at the moment of a decision."""
    slot: _Slot
    resident: dict
    room: int

    @property
    def idle(self) -> bool:
        return self.slot.running is None

    def holds(self, needs: dict[str, int]) -> int:
        """Bytes of `needs` it holds: resident, or being loaded by the prompt it runs."""
        running = self.slot.running or {}
        return sum(size for rel, size in needs.items() if rel in self.resident or rel in running)


class Router:
    def __init__(self, queue: PromptQueue, registry: dict, env, max_wait: float = MAX_WAIT, retries: int = 1):
        self.queue, self.registry, self.env = queue, registry, env
        self.max_wait = max_wait
        self.retries = retries  # times a prompt whose worker died under it is queued again
        self.slots: dict[str, _Slot] = {}
        self._needs: dict[str, dict[str, int]] = {}  # prompt id -> model_files, for the prompts in view
        self._seen: dict[str, float] = {}  # prompt id -> when routing first saw it
        self._recheck = math.inf  # when the next wait for a busy worker runs out

    def source(self, name: str, runner) -> RouteSource:
        self.slots[name] = _Slot(name, runner)
        return RouteSource(self, name)

    def idle(self, name: str) -> None:
        slot = self.slots[name]
        was_busy, slot.running = slot.running is not None, None
        if was_busy:  # what it loaded may change where the waiting prompts go
            self.queue.wake()

    def recheck_in(self) -> float:
        return max(0.0, self._recheck - time.monotonic())

    def choose(self, name: str, items: list[QueueItem]) -> QueueItem | None:
        """The prompt worker `name` (idle) should run next, among `items` (pending, in order), or None to wait."""
        now = time.monotonic()
        views = []
        for slot in list(self.slots.values()):
            if slot.runner.ready:
                stats = slot.runner.stats()
                views.append(_View(slot, stats.get("resident") or {}, int(stats.get("room") or 0)))
        me = next((v for v in views if v.slot.name == name), None)
        if me is None:
            return None
        self._needs = {i.prompt_id: self._needs[i.prompt_id] if i.prompt_id in self._needs
                       else model_files(i.prompt, self.registry, self.env) for i in items}
        self._seen = {i.prompt_id: self._seen.get(i.prompt_id, now) for i in items}
        self._recheck = math.inf
        for item in items:
            needs = self._needs[item.prompt_id]
            tried = {a.get("worker") for a in item.meta.get("attempts", ())}
            fresh = [v for v in views if v.slot.name not in tried] or views  # re-run elsewhere if anywhere else
            if me not in fresh:
                continue
            if not needs:
                return self._claim(me, item, "reads no model file")
            total = sum(needs.values())
            held = {v: v.holds(needs) for v in fresh}
            holders = [v for v in fresh if held[v] == total]
            if me in holders:
                return self._claim(me, item, f"holds {', '.join(needs)}")
            if any(v.idle for v in holders):
                continue  # an idle worker holds it: it takes it
            waited = now - self._seen[item.prompt_id]
            if holders and waited < self.max_wait:
                self._recheck = min(self._recheck, now - waited + self.max_wait)
                continue
            best = min((v for v in fresh if v.idle),
                       key=lambda v: (total - held[v] > v.room, total - held[v], -v.room, v.slot.name))
            if best is not me:
                continue  # another idle worker loads it more cheaply
            missing = [rel for rel in needs if rel not in me.resident]
            reason = f"loads {', '.join(missing)} ({_mb(total - held[me])}; {_mb(me.room)} free)"
            if holders:
                reason = f"waited {waited:.1f} s for busy {', '.join(v.slot.name for v in holders)}; {reason}"
            return self._claim(me, item, reason)
        return None

    def _claim(self, view: _View, item: QueueItem, reason: str) -> QueueItem:
        view.slot.running = self._needs.pop(item.prompt_id, {})
        self._seen.pop(item.prompt_id, None)
        item.meta = {**item.meta, "worker": view.slot.name, "route_reason": reason}
        log.info("prompt %s → %s: %s", item.prompt_id, view.slot.name, reason)
        return item

    def retry(self, item: QueueItem, error: dict) -> bool:
        """A worker died under `item`: queue it again for another worker, up to ``retries`` times. The attempt goes
        into its history either way (``meta.attempts``)."""
        attempts = [*item.meta.get("attempts", ()), {"worker": item.meta.get("worker"), "status": "interrupted",
                                                     "node": error.get("node_id"),
                                                     "reason": error.get("exception_message")}]
        if len(attempts) > self.retries:
            item.meta = {**item.meta, "attempts": attempts}
            return False
        self.queue.retry(item.prompt_id, {"attempts": attempts})
        return True


def _mb(n: int) -> str:
    return f"{n / 2**20:.0f} MB" if n < 2**30 else f"{n / 2**30:.1f} GB"


class RouteSource:
    """A worker's source of prompts (the interface of worker.QueueSource) that routes by model affinity."""

    def __init__(self, router: Router, name: str):
        self.router, self.name = router, name
        self.runner = router.slots[name].runner

    def take(self, timeout: float) -> QueueItem | None:
        self.router.idle(self.name)
        if not self.runner.wait_ready(timeout):  # a starting or restarting actor takes nothing yet
            return None
        item = self.router.queue.take(timeout=min(timeout, self.router.recheck_in()),
                                      choose=lambda items: self.router.choose(self.name, items))
        if item is not None:  # the others may have left this prompt to this worker and now want the next
            self.router.queue.wake()
        return item

    def retry(self, item: QueueItem, error: dict) -> bool:
        return self.router.retry(item, error)
