"""Where a worker's prompts execute: in a child process (the default) or on the worker's own thread.

Both runners hold one device's executor, node output cache and model residency, and offer the worker the same
calls: ``run`` (one prompt, reporting through Hooks, previews already JPEG-encoded), ``free``, ``stats`` and
``close``, plus ``interrupt_event`` for /interrupt.

Why a child process: nodes run Python between torch calls and would hold the server's GIL while they do, so every
HTTP request and websocket frame would wait its turn behind the sampler. In its own process the executor shares
nothing with the event loop, it runs at a lower CPU priority so the server stays responsive on a busy machine,
and a crash in native code (a CUDA fault, the OOM killer) costs one prompt an error instead of the server. The
thread runner keeps everything in one process: tests use it to plug in instrumented nodes.
"""
from __future__ import annotations

import ctypes
import dataclasses
import gc
import importlib
import io
import logging
import multiprocessing
import os
import signal
import threading
import time
from typing import Any, Callable

from . import watchdog

log = logging.getLogger("latentgraph.runner")

PREVIEW_MAX_SIZE = 512
CHILD_NICE = 10  # where SCHED_IDLE does not exist (see lower_priority)
DEFAULT_REGISTRY = "nodes.node:load_builtin_nodes"
EVENT_DELAY = 0.01  # seconds a hook event may wait in the child to go out with others (see EventBatches)


@dataclasses.dataclass
class RunnerConfig:
    device: str
    env: Any                     # nodes.node.Environment
    cache_entries: int
    cache_bytes: int
    registry: str = DEFAULT_REGISTRY  # "module:function" returning the node registry; the child imports it
    watchdog_seconds: float = watchdog.LIMIT  # a child process silent this long is killed (0: never; watchdog.py)


def build_executor(config: RunnerConfig, registry: dict | None = None):
    """The executor with its output cache and model residency for one device (in whichever process runs it)."""
    from .cache import OutputCache
    from .executor import Executor
    from .models import ModelResidency

    if config.device == "cpu":  # leave a core to the event loop so HTTP and websockets stay responsive
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))
    if registry is None:
        module, _, name = config.registry.partition(":")
        registry = getattr(importlib.import_module(module), name)()
    resources = ModelResidency(config.device)
    return Executor(registry, config.env, cache=OutputCache(config.cache_entries, config.cache_bytes),
                    resources=resources)


def free(executor, unload_models: bool, free_memory: bool) -> None:
    if unload_models or free_memory:
        executor.resources.free()
        log.info("models unloaded")
    if free_memory:
        executor.cache.clear()
        log.info("node output cache cleared")


def stats(executor) -> dict:
    """What /system_stats shows for the device: memory, resident models, the output cache."""
    from .models import device_memory

    return {**device_memory(executor.resources.device), "models": executor.resources.stats(),
            "cache": executor.cache.stats()}


def encoding_hooks(hooks):
    """The worker's hooks with previews encoded to JPEG where the executor runs."""
    on_progress = hooks.on_progress
    if on_progress is None:
        return hooks

    def progress(node_id, value, max_, preview=None):
        on_progress(node_id, value, max_, encode_preview(preview) if preview is not None else None)

    return dataclasses.replace(hooks, on_progress=progress)


def encode_preview(image) -> bytes | None:
    """A PIL image as a JPEG no larger than 512 px on its long side (ComfyUI's preview cap)."""
    try:
        image = image.convert("RGB")
        image.thumbnail((PREVIEW_MAX_SIZE, PREVIEW_MAX_SIZE))
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=95)
        return buf.getvalue()
    except (AttributeError, OSError, ValueError):
        log.warning("could not encode a preview image of type %s", type(image).__name__)
        return None


class ThreadRunner:
    """The executor on the calling thread, in this process."""

    def __init__(self, config: RunnerConfig, registry: dict | None = None):
        self.device = config.device
        self.executor = build_executor(config, registry)
        self.interrupt_event = threading.Event()

    @property
    def resources(self):
        return self.executor.resources

    def run(self, prompt: dict, outputs: list, *, prompt_id: str, extra_data: dict, hooks):
        return self.executor.run(prompt, outputs, prompt_id=prompt_id, extra_data=extra_data,
                                 hooks=encoding_hooks(hooks), interrupt=self.interrupt_event)

    def free(self, unload_models: bool, free_memory: bool) -> None:
        free(self.executor, unload_models, free_memory)

    def stats(self) -> dict:
        return stats(self.executor)

    def kill(self) -> None:
        """A thread cannot be killed: the node runs to its end."""

    def close(self) -> None:
        pass


class ProcessRunner:
    """The executor in a child process, started at once and again after it dies. Messages over a pipe: the
    parent sends ``("run", ...)``, ``("free", ...)`` or ``("stop",)``; the child answers a run with batches of hook
    events (``("events", [...])``, see EventBatches) and a final ``("done", report, stats)``."""

    def __init__(self, config: RunnerConfig):
        self.config = config
        self.device = config.device
        self._mp = multiprocessing.get_context("spawn")  # fork would copy the server's threads and sockets
        self.interrupt_event = self._mp.Event()
        self.heartbeat = watchdog.Heartbeat(self._mp)
        self._stats: dict = {}
        self._conn = None
        self._proc = None
        self._lock = threading.Lock()  # one conversation with the child at a time
        self._start()

    def _start(self) -> None:
        parent, child = self._mp.Pipe()
        self.heartbeat.reset()
        self._proc = self._mp.Process(target=child_main, name=f"latentgraph-{self.device}", daemon=True,
                                      args=(child, self.config, self.interrupt_event, os.getpid(), self.heartbeat))
        self._proc.start()
        child.close()  # the parent's copy: once the child exits, reading the pipe raises EOFError
        self._conn = parent

    def _ensure_started(self) -> None:
        if self._proc is None or not self._proc.is_alive():
            if self._proc is not None:
                log.warning("the %s worker process is gone (exit code %s); starting a new one", self.device,
                            self._proc.exitcode)
            self._start()

    def _receive(self):
        """The child's next message, after waiting for it to start if it has not yet answered."""
        while True:
            message = self.heartbeat.receive(self._conn, self.config.watchdog_seconds, self._proc.pid)
            if message[0] == "ready":
                self._stats = message[1]
                continue
            return message

    def run(self, prompt: dict, outputs: list, *, prompt_id: str, extra_data: dict, hooks):
        from .executor import RunReport

        with self._lock:
            self._ensure_started()
            started = time.perf_counter()
            try:
                self._conn.send(("run", prompt, list(outputs), prompt_id, extra_data))
                while True:
                    kind, *args = self._receive()
                    if kind == "done":
                        report, self._stats = args
                        return RunReport(**report)
                    for event, *event_args in args[0] if kind == "events" else [(kind, *args)]:
                        callback = getattr(hooks, f"on_{event}", None)
                        if callback is not None:
                            callback(*event_args)
            except (EOFError, OSError):
                return self._died(prompt_id, started)
            except watchdog.Unresponsive as exc:
                return self._hung(prompt_id, started, exc)

    def _died(self, prompt_id: str, started: float):
        """The child exited mid-prompt (killed, out of memory, a crash in native code): that prompt fails with an
        error saying so; the next prompt starts a new child."""
        self._proc.join(5)
        code = self._proc.exitcode
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        if code == -signal.SIGKILL:
            how += " (the system may have run out of memory)"
        return self._failed(prompt_id, started, "WorkerProcessDied",
                            f"the worker process for {self.device} died while running this prompt ({how})")

    def _hung(self, prompt_id: str, started: float, exc: watchdog.Unresponsive):
        """The child stopped beating mid-prompt: it is killed, the prompt fails, the next prompt starts a new one."""
        self._proc.kill()
        self._proc.join(5)
        return self._failed(prompt_id, started, "WorkerProcessUnresponsive",
                            f"the worker process for {self.device} stopped responding while running this prompt "
                            f"({exc}); it was killed and a new one starts for the next prompt")

    def _failed(self, prompt_id: str, started: float, kind: str, message: str):
        from .executor import RunReport

        log.error("prompt %s: %s", prompt_id, message)
        error = {"prompt_id": prompt_id, "node_id": None, "node_type": None, "executed": [],
                 "exception_message": message, "exception_type": kind, "traceback": [], "current_inputs": {},
                 "current_outputs": {}}
        return RunReport("error", error=error, seconds=time.perf_counter() - started)

    def free(self, unload_models: bool, free_memory: bool) -> None:
        with self._lock:
            if self._proc is None or not self._proc.is_alive():
                return  # nothing is loaded in a process that is not running
            try:
                self._conn.send(("free", unload_models, free_memory))
                kind, self._stats = self._receive()
            except (EOFError, OSError):
                log.warning("the %s worker process died while freeing memory", self.device)
            except watchdog.Unresponsive as exc:
                log.error("the %s worker process stopped responding while freeing memory (%s); killing it",
                          self.device, exc)
                self._proc.kill()

    def stats(self) -> dict:
        """The child's numbers as of its last prompt or /free (it is not interrupted to ask)."""
        return dict(self._stats)

    def kill(self) -> None:
        """End the child now, from any thread (a prompt it runs fails as WorkerProcessDied)."""
        if self._proc is not None:
            self._proc.kill()

    def close(self) -> None:
        with self._lock:
            if self._proc is None:
                return
            try:
                self._conn.send(("stop",))
            except OSError:
                pass
            self._proc.join(10)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join(5)
            self._conn.close()


# -- the child process ----------------------------------------------------------------------------------------
class EventBatches:
    """The child's end of the pipe. Hook events go out in batches, one pipe message (and one pickling) per batch:
    a message per event was a third of the child's time on a prompt of 500 trivial nodes. An event waits at most
    EVENT_DELAY for a thread that sends what has gathered; a reply (ready, done, freed) goes at once, after the
    events before it."""

    def __init__(self, conn):
        self.conn = conn
        self.events: list[tuple] = []
        self.lock = threading.Lock()
        self.waiting = threading.Event()
        threading.Thread(target=self._flusher, name="event-batches", daemon=True).start()

    def event(self, *message) -> None:
        with self.lock:
            self.events.append(message)
        self.waiting.set()

    def reply(self, *message) -> None:
        with self.lock:
            self._flush()
            self.conn.send(message)

    def _flush(self) -> None:  # lock held
        if self.events:
            self.conn.send(("events", self.events))
            self.events = []

    def _flusher(self) -> None:
        while True:
            self.waiting.wait()
            time.sleep(EVENT_DELAY)
            self.waiting.clear()  # an event added after this sets it again
            with self.lock:
                self._flush()


def child_main(conn, config: RunnerConfig, interrupt, parent_pid: int, heartbeat: watchdog.Heartbeat) -> None:
    heartbeat.start()
    die_with_parent(parent_pid)
    pipe = EventBatches(conn)
    lower_priority()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    executor = build_executor(config)
    gc.freeze()  # the imports and the registry stay for the child's life: keep the cyclic GC off them (as the server)
    pipe.reply("ready", stats(executor))
    from .executor import Hooks

    def sender(kind: str) -> Callable:
        return lambda *args: pipe.event(kind, *args)

    hooks = encoding_hooks(Hooks(on_start=sender("start"), on_cached=sender("cached"),
                                 on_node_start=sender("node_start"), on_progress=sender("progress"),
                                 on_executed=sender("executed")))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError, KeyboardInterrupt):
            return
        kind, *args = message
        if kind == "run":
            prompt, outputs, prompt_id, extra_data = args
            report = executor.run(prompt, outputs, prompt_id=prompt_id, extra_data=extra_data, hooks=hooks,
                                  interrupt=interrupt)
            pipe.reply("done", dataclasses.asdict(report), stats(executor))
        elif kind == "free":
            free(executor, *args)
            pipe.reply("freed", stats(executor))
        elif kind == "stop":
            return


def lower_priority() -> None:
    """The executor runs on CPU time the HTTP processes do not want: they answer a burst of requests at once
    instead of waiting for a slice of a core. On Linux, SCHED_IDLE: a waking HTTP process preempts the executor
    immediately and the scheduler treats a core running only the executor as free; a nice level (10 measured
    ~65 ms of 80 for the executor during a 200-submission burst on 2 cores) only shares the core. On a GPU the
    executor needs little CPU; on a CPU-only machine that is busy with other work too, prompts run slower."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        try:
            os.nice(CHILD_NICE)
        except OSError:
            pass


def die_with_parent(parent_pid: int) -> None:
    """A server killed with kill -9 takes its executor with it, so no orphan keeps running a prompt the
    restarted server will run again. Linux only; elsewhere the child ends when the pipe closes between prompts."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)
