"""Prompts on Ray actors: ``latentgraph serve --ray [ADDRESS|auto|local]``.

The HTTP server and the SQLite queue stay in this process, the one source of truth for queue and history. Each actor
is a worker like a local device's child process: the server keeps one worker thread per actor (worker.py), and its
runner here (:class:`RayRunner`) hands the actor one prompt at a time. The actor runs the executor through
``runners.ThreadRunner``, the code the child process runs (build_executor, free, stats, previews encoded where they
are made), at the child's CPU priority.

- Placement: an actor holds one GPU (``num_gpus=1``); with no GPU in the cluster, or with ``--ray-cpu-workers N``,
  N actors hold one CPU each. Ray restarts an actor that dies.
- Routing: routing.Router picks each actor's next prompt by the models it holds.
- Events: the actor's ``run`` is a streaming generator. The executor runs on a thread of the actor and puts its
  events in an :class:`EventBuffer`; the generator yields whatever has accumulated as one batch, so the server
  receives them in order. The buffer never blocks the executor: while the server is behind, a node's newest
  progress event (and preview) replaces the one still waiting. On the server, events go to the websocket hub,
  whose per-client outboxes are bounded: a slow client never slows an actor.
- Files: each of the input, output and temp folders is shared when the actor sees the server's folder at the same
  path (a marker file proves it: same machine, or a shared mount). Otherwise ("object store") the actor works in a
  folder of its own, the files a node reports (its ui ``images`` and the like) travel back with its ``executed``
  event through Ray's object store and are written into the server's folder (under a free name if another actor
  used the name first), and the input files a prompt names travel with it. ``--ray-files`` forces one or the other.
- Faults: an actor that dies mid-prompt fails that prompt with WORKER_DIED; the router queues it again once
  (``--ray-retries``) for another actor, and meanwhile Ray restarts the actor, which takes prompts again when it is
  back. An actor that stops answering (stopped, frozen: Ray still sees its process) is found by the watchdog of the
  local child process (watchdog.py, ``--watchdog``): while it runs a prompt it sends an empty batch every quiet
  second, and one silent past the limit is killed (WORKER_HUNG), restarted by Ray, its prompt queued again like a
  dead one's. /interrupt reaches the actor running the prompt, /free every actor.
"""
from __future__ import annotations

import collections
import dataclasses
import logging
import os
import re
import secrets
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from . import runners, watchdog
from .executor import Hooks, RunReport
from .runners import WORKER_DIED, WORKER_HUNG, RunnerConfig, ThreadRunner, failed_run
from .routing import resident_models
from .security import confined

log = logging.getLogger("latentgraph.ray")

FOLDERS = ("input", "output", "temp")
MARKER = ".latentgraph-ray"  # written by the server into each folder; an actor that reads it there shares it
BACKPRESSURE = 16  # event batches the server may fall behind before the actor's generator waits (never the executor)
CALL_TIMEOUT = 60.0  # seconds to wait for an actor's answer to /free
ACTOR_THREADS = 4  # a run, plus interrupt, free and describe calls beside it


# -- the actor -------------------------------------------------------------------------------------------------
class EventBuffer:
    """Events from the executor's thread to the generator that yields them. ``put`` never blocks; while nobody
    takes, a progress event replaces the one before it when both are the same node's, so what waits stays bounded
    (by the number of nodes) however slow the reader."""

    def __init__(self):
        self._events: list[tuple] = []
        self._cond = threading.Condition()

    def put(self, event: tuple) -> None:
        with self._cond:
            last = self._events[-1] if self._events else None
            if event[0] == "progress" and last is not None and last[0] == "progress" and last[1] == event[1]:
                self._events[-1] = event if event[4] is not None else (*event[:4], last[4])  # keep a preview
            else:
                self._events.append(event)
            self._cond.notify()

    def take(self, timeout: float | None = None) -> list[tuple]:
        """What has accumulated, once there is something or `timeout` has passed (then maybe nothing)."""
        with self._cond:
            if not self._events:
                self._cond.wait_for(lambda: self._events, timeout)
            events, self._events = self._events, []
            return events


class ExecutorActor:
    """A Ray actor running prompts with the executor of one device (its GPU, else the CPU)."""

    def __init__(self, config: RunnerConfig, server_dirs: dict[str, str], token: str, file_mode: str,
                 server_node: str):
        import ray
        import torch

        # as the child process, the executor yields the CPU to the HTTP server when they share a machine
        self.yields = ray.get_runtime_context().get_node_id() == server_node
        device = "cuda:0" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"  # Ray sets CUDA_VISIBLE_DEVICES
        self.dirs, self.shared = actor_folders(server_dirs, token, file_mode)
        env = dataclasses.replace(config.env, models_dir=os.environ.get("LATENTGRAPH_MODELS") or config.env.models_dir,
                                  input_dir=self.dirs["input"], output_dir=self.dirs["output"],
                                  temp_dir=self.dirs["temp"])
        # the server's model hash cache where this machine can write it (the same file beside the server), else
        # hashes are kept in memory
        hash_cache = config.hash_cache if config.hash_cache and os.access(os.path.dirname(config.hash_cache),
                                                                          os.W_OK) else None
        self.runner = ThreadRunner(dataclasses.replace(config, device=device, env=env, hash_cache=hash_cache))
        if device == "cpu":  # the CPUs Ray gave this actor, not the machine's
            torch.set_num_threads(max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1))))
        self.node = ray.util.get_node_ip_address()
        self.current: str | None = None
        self.interrupted: collections.deque = collections.deque(maxlen=64)  # ids /interrupt named
        self.running = threading.Lock()  # one prompt at a time, even if a server that lost sight of this actor
        # (a network partition) sent the next one

    def describe(self) -> dict:
        return {"node": self.node, "pid": os.getpid(), "device": self.runner.device,
                "files": {kind: "shared" if self.shared[kind] else "object store" for kind in FOLDERS},
                "stats": self.stats()}

    def stats(self) -> dict:
        executor = self.runner.executor
        residency = executor.resources.stats()
        on_cpu = executor.resources.on_cpu
        room = (residency["ram_budget"] - residency["ram_bytes"] if on_cpu
                else residency["device_budget"] - residency["device_bytes"])
        return {**runners.stats(executor), "resident": resident_models(executor.resources, executor.env.models_dir),
                "room": max(0, room)}

    def run(self, prompt: dict, outputs: list, prompt_id: str, extra_data: dict, inputs: dict[str, bytes]):
        """A generator of event batches, the last ending with ``("done", report, stats)``; a batch is empty after
        a second without events: the server's watchdog hears it as a heartbeat."""
        for rel, data in inputs.items():
            write_if_changed(confined(self.dirs["input"], rel), data)
        buffer = EventBuffer()
        hooks = Hooks(on_start=lambda pid: buffer.put(("start", pid)),
                      on_cached=lambda ids: buffer.put(("cached", ids)),
                      on_node_start=lambda node: buffer.put(("node_start", node)),
                      on_progress=lambda node, value, max_, jpeg=None: buffer.put(("progress", node, value, max_,
                                                                                     jpeg)),
                      on_executed=lambda node, ui, profile=None: buffer.put(("executed", node, ui, profile,
                                                                              self._files_of(ui))))

        def work() -> None:
            started = time.perf_counter()
            if self.yields:  # per thread: this one runs the executor (and starts torch's threads)
                runners.lower_priority()
            try:
                with self.running:
                    self.current = prompt_id
                    interrupt = self.runner.interrupt_event
                    interrupt.clear()
                    if prompt_id in self.interrupted:  # /interrupt came before the prompt did
                        interrupt.set()
                    try:
                        report = self.runner.run(prompt, outputs, prompt_id=prompt_id, extra_data=extra_data,
                                                 hooks=hooks)
                    finally:
                        self.current = None
            except BaseException as exc:  # reported like a node error, never a silent hang of the generator
                log.exception("prompt %s failed in the actor", prompt_id)
                report = failed_run(prompt_id, started, type(exc).__name__, str(exc))
            buffer.put(("done", dataclasses.asdict(report), self.stats()))

        threading.Thread(target=work, name=f"prompt-{prompt_id}", daemon=True).start()
        while True:
            batch = buffer.take(timeout=watchdog.BEAT)
            yield batch
            if batch and batch[-1][0] == "done":
                return

    def _files_of(self, ui: dict) -> list[dict]:
        """The files a node reported, with their bytes, from the folders the server does not share."""
        files = []
        for ref in file_refs(ui):
            kind = ref["type"]
            if not self.shared[kind]:
                try:
                    data = confined(self.dirs[kind], ref.get("subfolder", ""), ref["filename"]).read_bytes()
                except (OSError, ValueError):
                    continue  # not one of ours (a node may name a file it did not write)
                files.append({**ref, "data": data})
        return files

    def interrupt(self, prompt_id: str) -> None:
        self.interrupted.append(prompt_id)
        if self.current == prompt_id:
            self.runner.interrupt_event.set()

    def free(self, unload_models: bool, free_memory: bool) -> dict:
        self.runner.free(unload_models, free_memory)
        return self.stats()


def actor_folders(server_dirs: dict[str, str], token: str, mode: str) -> tuple[dict[str, str], dict[str, bool]]:
    """The actor's input, output and temp folders, and which of them are the server's own."""
    staging = None
    dirs, shared = {}, {}
    for kind in FOLDERS:
        try:
            seen = Path(server_dirs[kind], MARKER).read_text() == token
        except OSError:
            seen = False
        shared[kind] = mode == "shared" or (mode == "auto" and seen)
        if shared[kind]:
            dirs[kind] = server_dirs[kind]
        else:
            staging = staging or tempfile.mkdtemp(prefix="latentgraph-actor-")
            dirs[kind] = os.path.join(staging, kind)
            os.makedirs(dirs[kind], exist_ok=True)
    return dirs, shared


def file_refs(ui: Any):
    """The file entries (``{filename, subfolder, type}``) anywhere in a node's ui dict."""
    if isinstance(ui, dict):
        if isinstance(ui.get("filename"), str) and ui.get("type") in FOLDERS:
            yield ui
        else:
            for value in ui.values():
                yield from file_refs(value)
    elif isinstance(ui, list):
        for value in ui:
            yield from file_refs(value)


def write_if_changed(path: Path, data: bytes) -> None:
    try:
        if path.read_bytes() == data:
            return
    except OSError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


# -- the server's side -----------------------------------------------------------------------------------------
_COUNTED = re.compile(r"^(.*_)(\d{5,})(_\.[^.]+)$")  # SaveImage's names: prefix_00001_.png


def place_file(folder: str, subfolder: str, filename: str, data: bytes) -> str:
    """Write an actor's file into a server folder; returns its name there. The same bytes under the same name
    are left as they are (a cached node reports its file again); another file under that name (another actor's
    prefix_00001_.png) goes under the next free number."""
    target = confined(folder, subfolder)
    target.mkdir(parents=True, exist_ok=True)
    name = filename
    while True:
        path = confined(target, name)
        try:
            with open(path, "xb") as f:
                f.write(data)
            return name
        except FileExistsError:
            if path.read_bytes() == data:
                return name
        name = _next_name(target, name)


def _next_name(folder: Path, name: str) -> str:
    match = _COUNTED.match(name)
    if match is None:
        stem, dot, suffix = name.rpartition(".")
        return f"{stem or suffix} ({secrets.token_hex(2)}){dot}{suffix if stem else ''}"
    head, _, tail = match.groups()
    used = [int(m.group(2)) for f in os.listdir(folder) if (m := _COUNTED.match(f)) and m.group(1) == head
            and m.group(3) == tail]
    return f"{head}{max(used, default=0) + 1:05}{tail}"


class RemoteInterrupt:
    """The worker's ``interrupt_event`` for a prompt that runs in an actor (the part of threading.Event's interface
    the worker uses): setting it tells the actor."""

    def __init__(self, runner: RayRunner):
        self.runner = runner
        self._set = False

    def set(self) -> None:
        self._set = True
        self.runner.forward_interrupt()

    def clear(self) -> None:
        self._set = False

    def is_set(self) -> bool:
        return self._set


class RayRunner:
    """A worker's runner (the interface of runners.py) whose executor is a Ray actor."""

    def __init__(self, name: str, actor, server_dirs: dict[str, str], registry: dict, watchdog_seconds: float):
        import ray

        self.name = name
        self.actor = actor
        self.server_dirs = server_dirs
        self.registry = registry
        self.watchdog_seconds = watchdog_seconds
        self.here = ray.util.get_node_ip_address()  # the server's machine: an actor here can be seen in /proc
        self.device = "ray"  # until the actor says which
        self.interrupt_event = RemoteInterrupt(self)
        self.ready = False
        self._info: dict = {}
        self._stats: dict = {}
        self._describing = actor.describe.remote()
        self._current: str | None = None

    # -- state ----------------------------------------------------------------------------------------------
    def wait_ready(self, timeout: float) -> bool:
        """Whether the actor is up (waiting up to `timeout` seconds for a starting or restarting one)."""
        import ray

        if self.ready:
            return True
        done, _ = ray.wait([self._describing], timeout=timeout)
        if not done:
            return False
        try:
            self._info = ray.get(self._describing)
        except ray.exceptions.RayActorError as exc:  # died while starting: Ray restarts it; ask again
            log.debug("%s: the actor is not up yet: %s", self.name, _first_line(exc))
            self._describing = self.actor.describe.remote()
            return False
        self._stats = self._info.pop("stats")
        self.device = self._info["device"]
        self.ready = True
        log.info("%s: actor up on %s (pid %d, %s); files: %s", self.name, self._info["node"], self._info["pid"],
                 self.device, ", ".join(f"{k} {v}" for k, v in self._info["files"].items()))
        return True

    def stats(self) -> dict:
        """The actor's numbers as of its last prompt or /free, with where it runs (it is not asked now)."""
        return {**self._stats, "worker": self.name, "ready": self.ready, **self._info}

    # -- the runner interface -------------------------------------------------------------------------------
    def run(self, prompt: dict, outputs: list, *, prompt_id: str, extra_data: dict, hooks) -> RunReport:
        import ray

        started = time.perf_counter()
        self._current = prompt_id
        renamed: dict[tuple, str] = {}
        try:
            events = self.actor.run.options(num_returns="streaming",
                                            _generator_backpressure_num_objects=BACKPRESSURE).remote(
                prompt, outputs, prompt_id, extra_data, self._inputs(prompt))
            if self.interrupt_event.is_set():  # /interrupt came before the call went out
                self.forward_interrupt()
            for batch in self._batches(events):
                for kind, *args in batch:
                    if kind == "done":
                        report, self._stats = args
                        _rename(report["outputs"], renamed)
                        return RunReport(**report)
                    if kind == "executed":
                        node_id, ui, profile, files = args
                        self._receive(files, renamed)
                        args = (node_id, _rename(ui, renamed), profile)
                    callback = getattr(hooks, f"on_{kind}", None)
                    if callback is not None:
                        callback(*args)
            raise RuntimeError(f"{self.name}: the actor's event stream ended without a report")
        except ray.exceptions.RayActorError as exc:  # killed, out of memory, its node lost
            self.actor.interrupt.remote(prompt_id)  # if it was only out of reach, it stops; the router re-runs it
            return self._lost(prompt_id, started, WORKER_DIED, f"died while running this prompt: {_first_line(exc)}")
        except watchdog.Unresponsive as exc:
            self.kill()
            return self._lost(prompt_id, started, WORKER_HUNG, f"stopped responding while running this prompt ({exc}); "
                                                               "it was killed and Ray starts it again")
        finally:
            self._current = None

    def _batches(self, events):
        """The actor's event batches in order. Raises watchdog.Unresponsive once the actor has sent nothing (it
        sends an empty batch every quiet second) for the watchdog's limit, unless it is on this machine and one of
        its threads is running (a busy machine starves it; it is not hung)."""
        import ray

        while True:
            heard = time.monotonic()
            while self.watchdog_seconds and not ray.wait([events], timeout=watchdog.BEAT)[0]:
                silent = time.monotonic() - heard
                if silent > self.watchdog_seconds and not (self._info.get("node") == self.here
                                                           and watchdog.running(self._info["pid"])):
                    raise watchdog.Unresponsive(silent)
            try:
                ref = next(events)
            except StopIteration:
                return
            yield ray.get(ref)

    def forward_interrupt(self) -> None:
        if self._current is not None:
            self.actor.interrupt.remote(self._current)

    def free(self, unload_models: bool, free_memory: bool) -> None:
        import ray

        if not self.ready:
            return  # a starting actor holds nothing
        try:
            self._stats = ray.get(self.actor.free.remote(unload_models, free_memory), timeout=CALL_TIMEOUT)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as exc:
            log.warning("%s: /free did not reach the actor: %s", self.name, _first_line(exc))

    def kill(self) -> None:
        """End the actor now, from any thread (a prompt it runs fails as WORKER_DIED); Ray starts it again."""
        self._end(restart=True)

    def close(self) -> None:
        self._end(restart=False)

    def _end(self, restart: bool) -> None:
        import ray

        try:
            ray.kill(self.actor, no_restart=not restart)
        except Exception as exc:  # Ray itself may be shutting down
            log.debug("%s: %s", self.name, exc)

    # -- files ----------------------------------------------------------------------------------------------
    def _inputs(self, prompt: dict) -> dict[str, bytes]:
        """The input files the prompt names (inputs declared ``image_upload``), for an actor that does not share
        the server's input folder."""
        files = self._info.get("files", {})
        if files.get("input") != "object store":
            return {}
        found = {}
        for entry in prompt.values():
            spec = self.registry.get(entry.get("class_type")) if isinstance(entry, dict) else None
            for name, inp in (spec.inputs.items() if spec else ()):
                value = (entry.get("inputs") or {}).get(name)
                if inp.image_upload and isinstance(value, str):
                    try:
                        found[value] = confined(self.server_dirs["input"], value).read_bytes()
                    except (OSError, ValueError):
                        pass  # the node reports the missing file when it runs
        return found

    def _receive(self, files: list[dict], renamed: dict[tuple, str]) -> None:
        for f in files:
            key = (f["type"], f.get("subfolder", ""), f["filename"])
            renamed[key] = place_file(self.server_dirs[f["type"]], key[1], key[2], f["data"])

    def _lost(self, prompt_id: str, started: float, kind: str, what: str) -> RunReport:
        """The actor was lost under the prompt: the worker may queue the prompt again (routing.Router.retry). Ray
        restarts the actor; this runner takes prompts again once it is up."""
        self.ready = False
        self._describing = self.actor.describe.remote()
        where = f"{self._info.get('node', '?')}, pid {self._info.get('pid', '?')}"
        return failed_run(prompt_id, started, kind, f"the Ray actor {self.name} ({where}) {what}")


def _rename(ui: Any, renamed: dict[tuple, str]) -> Any:
    """`ui` with the file names the server gave the actor's files."""
    for ref in file_refs(ui):
        ref["filename"] = renamed.get((ref["type"], ref.get("subfolder", ""), ref["filename"]), ref["filename"])
    return ui


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


# -- starting ---------------------------------------------------------------------------------------------------
class RayPool:
    """The actors of one server: connects to Ray, writes the shared-folder markers, starts one actor per GPU (or
    ``cpu_workers`` CPU actors) and the router that feeds them."""

    def __init__(self, config, env, queue, registry):
        import ray

        from .routing import Router

        address = config.ray
        options: dict[str, Any] = {}
        if address == "local":  # a private cluster: room for every CPU worker asked for
            options.update(num_cpus=max(os.cpu_count() or 1, config.ray_cpu_workers), include_dashboard=False)
        try:
            ray.init(address=address, namespace="latentgraph", logging_level=logging.WARNING, **options)
        except ConnectionError as exc:
            raise ConnectionError(f"--ray {address}: no Ray cluster to join ({_first_line(exc)}); start one with "
                                  "`ray start --head`, or pass --ray local") from None
        self.connected = True
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        if config.ray_cpu_workers or not gpus:
            count, placement = config.ray_cpu_workers or 1, {"num_cpus": 1}
        else:
            count, placement = gpus, {"num_gpus": 1, "num_cpus": 0}
        token = secrets.token_hex(16)
        self.server_dirs = {"input": os.path.abspath(env.input_dir), "output": os.path.abspath(env.output_dir),
                            "temp": os.path.abspath(env.temp_dir)}
        for folder in self.server_dirs.values():
            Path(folder, MARKER).write_text(token)
        runner_config = RunnerConfig("cpu", dataclasses.replace(env, models_dir=os.path.abspath(env.models_dir)),
                                     config.cache_entries, config.cache_bytes,
                                     hash_cache=os.path.abspath(config.hash_cache),
                                     watchdog_seconds=config.watchdog_seconds)
        actor_class = ray.remote(ExecutorActor).options(max_concurrency=ACTOR_THREADS, max_restarts=-1,
                                                       max_task_retries=0, **placement)
        self.router = Router(queue, registry, env, max_wait=config.ray_max_wait, retries=config.ray_retries)
        here = ray.get_runtime_context().get_node_id()
        self.runners = [RayRunner(f"ray-{i}", actor_class.remote(runner_config, self.server_dirs, token,
                                                                config.ray_files, here), self.server_dirs, registry,
                                  config.watchdog_seconds)
                        for i in range(count)]
        log.info("Ray cluster at %s: %s; %d actor(s), each on one %s", address,
                 ", ".join(f"{k} {v:g}" for k, v in sorted(resources.items()) if k in ("CPU", "GPU")), count,
                 "GPU" if "num_gpus" in placement else "CPU")

    def sources(self) -> list[tuple[RayRunner, Any]]:
        return [(runner, self.router.source(runner.name, runner)) for runner in self.runners]

    def close(self) -> None:
        import ray

        for folder in self.server_dirs.values():
            Path(folder, MARKER).unlink(missing_ok=True)
        if self.connected:
            ray.shutdown()
            self.connected = False
