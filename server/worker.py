"""A worker thread per device: takes prompts from the queue, has its runner execute them, reports over /ws.

The event loop never waits on a prompt: the worker thread hands each prompt to its runner (the executor in a
child process, or on this thread; see runners.py) and forwards every event to the loop with
``call_soon_threadsafe`` (through the hub). Between prompts it applies ``/free`` requests, so models are never
unloaded under a running node.
"""
from __future__ import annotations

import logging
import threading
import time
import traceback
from typing import Any

from .queue import PromptQueue, QueueItem
from .ws import Hub

log = logging.getLogger("latentgraph.worker")


def now_ms() -> int:
    return int(time.time() * 1000)


class Worker(threading.Thread):
    def __init__(self, name: str, queue: PromptQueue, runner, hub: Hub, on_queue_change=None):
        super().__init__(name=f"worker-{name}", daemon=True)
        self.queue = queue
        self.runner = runner
        self.hub = hub
        self.on_queue_change = on_queue_change or (lambda: None)
        self.interrupt_event = runner.interrupt_event
        self.current: QueueItem | None = None
        self.current_node: str | None = None
        self._free_request: dict[str, bool] = {}
        self._free_lock = threading.Lock()
        self._halt = threading.Event()

    # -- control (any thread) -----------------------------------------------------------------
    def interrupt(self, prompt_id: str | None = None) -> bool:
        current = self.current
        if current is None or (prompt_id is not None and prompt_id != current.prompt_id):
            return False
        self.interrupt_event.set()
        return True

    def request_free(self, unload_models: bool, free_memory: bool) -> None:
        with self._free_lock:
            self._free_request["unload_models"] = self._free_request.get("unload_models", False) or unload_models
            self._free_request["free_memory"] = self._free_request.get("free_memory", False) or free_memory
        self.queue.wake()

    def stop(self) -> None:
        self._halt.set()
        self.interrupt_event.set()
        self.queue.wake()

    def finish(self, grace: float) -> None:
        """After stop(): wait until this thread has recorded its last prompt. A prompt that does not heed the
        interrupt within `grace` seconds has its runner killed where it can be (a child process); a node on this
        process's own thread can only be waited for."""
        self.join(grace)
        if self.is_alive():
            log.warning("worker %s: prompt still running %.0f s after the interrupt; stopping its runner", self.name,
                        grace)
            self.runner.kill()
        while self.is_alive():
            self.join(grace)
            if self.is_alive():
                log.warning("worker %s: waiting for node %s to finish", self.name, self.current_node)

    # -- the thread ---------------------------------------------------------------------------
    def run(self) -> None:
        try:
            while not self._halt.is_set():
                self._apply_free()
                item = self.queue.take(timeout=1.0)
                if item is not None and not self._halt.is_set():
                    self._execute(item)
        finally:
            self.runner.close()

    def _apply_free(self) -> None:
        with self._free_lock:
            request, self._free_request = self._free_request, {}
        if request.get("unload_models") or request.get("free_memory"):
            self.runner.free(bool(request.get("unload_models")), bool(request.get("free_memory")))

    def _execute(self, item: QueueItem) -> None:
        from .executor import Hooks

        pid = item.prompt_id
        sid = item.extra_data.get("client_id") or None
        messages: list[list] = []
        self.current, self.current_node = item, None
        self.interrupt_event.clear()

        def emit(type_: str, data: dict, record: bool = False) -> None:
            if record:
                messages.append([type_, data])
            self.hub.send_threadsafe(type_, data, sid)

        def on_start(prompt_id):
            emit("execution_start", {"prompt_id": pid, "timestamp": now_ms()}, record=True)

        def on_cached(node_ids):
            emit("execution_cached", {"nodes": list(node_ids), "prompt_id": pid, "timestamp": now_ms()}, record=True)

        progress = NodeProgress(pid)

        def on_node_start(node_id):
            self.current_node = node_id
            emit("executing", {"node": node_id, "display_node": node_id, "prompt_id": pid})
            emit("progress_state", progress.start(node_id))

        def on_progress(node_id, value, max_, jpeg=None):
            emit("progress", {"value": value, "max": max_, "prompt_id": pid, "node": node_id})
            emit("progress_state", progress.update(node_id, value, max_))
            if jpeg is not None:
                self.hub.send_preview_threadsafe(jpeg, sid, {
                    "node_id": node_id, "display_node_id": node_id, "parent_node_id": None,
                    "real_node_id": node_id, "prompt_id": pid})

        def on_executed(node_id, ui):
            emit("executed", {"node": node_id, "display_node": node_id, "output": ui, "prompt_id": pid})

        hooks = Hooks(on_start=on_start, on_cached=on_cached, on_node_start=on_node_start,
                      on_progress=on_progress, on_executed=on_executed)
        started = time.perf_counter()
        try:
            report = self.runner.run(item.prompt, item.outputs_to_execute, prompt_id=pid,
                                     extra_data=item.extra_data, hooks=hooks)
            status, outputs, error = report.status, report.outputs or {}, report.error
            executed, cached = list(report.executed or []), list(report.cached or [])
        except Exception as exc:  # an executor bug must not kill the worker or lose the prompt's record
            log.exception("executor failed on prompt %s", pid)
            status, outputs, executed, cached = "error", {}, [], []
            error = {"prompt_id": pid, "node_id": self.current_node, "node_type": None, "executed": [],
                     "exception_message": str(exc), "exception_type": type(exc).__name__,
                     "traceback": traceback.format_exception(exc), "current_inputs": {}, "current_outputs": {}}
        seconds = time.perf_counter() - started
        if status != "success" and self._halt.is_set():
            self.queue.release(pid)  # the server is stopping: this prompt runs again after the restart
            self.current, self.current_node = None, None
            log.info("prompt %s: stopped by shutdown after %.2f s; it stays queued", pid, seconds)
            return

        if self.current_node is not None:  # the last node's final state: finished, or error where it failed
            emit("progress_state", progress.end(self.current_node, "finished" if status == "success" else "error"))
        if status == "success":
            emit("execution_success", {"prompt_id": pid, "timestamp": now_ms()}, record=True)
        elif status == "interrupted":
            node = self.current_node
            payload = {"node_id": node, "node_type": _class_of(item, node), "executed": executed, **(error or {})}
            emit("execution_interrupted", {**payload, "prompt_id": pid, "timestamp": now_ms()}, record=True)
        else:
            emit("execution_error", {**(error or {}), "prompt_id": pid, "timestamp": now_ms()}, record=True)
        self.queue.finish(pid, {"status_str": "success" if status == "success" else "error",
                                "completed": status == "success", "messages": messages},
                          outputs, {nid: _meta(nid) for nid in outputs})
        self.current, self.current_node = None, None
        self.on_queue_change()  # as ComfyUI: the status broadcast, then `executing` null ends the prompt
        emit("executing", {"node": None, "display_node": None, "prompt_id": pid})
        log.info("prompt %s: %s, %d executed, %d cached, %.2f s", pid, status, len(executed), len(cached), seconds)


class NodeProgress:
    """ComfyUI's ``progress_state`` messages for one prompt, as deltas: each names only the nodes whose state
    changed (the node that started or advanced, and the one it ended). A message holding every node seen so far
    made a prompt O(nodes²) to report: a 4,000-node chain stalled the server for 38 s. The ComfyUI frontend draws
    node bars from the latest message, which always holds the running node; what it no longer hears of is a
    finished node's state. A node runs from its start until the next one starts (nodes run one at a time)."""

    def __init__(self, prompt_id: str):
        self.prompt_id = prompt_id
        self.running: str | None = None
        self.bar = (0, 1)  # the running node's last value and max

    def start(self, node_id: str) -> dict:
        ended = self._state(self.running, "finished") if self.running is not None else {}
        self.running, self.bar = node_id, (0, 1)
        return self._message({**ended, **self._state(node_id, "running")})

    def update(self, node_id: str, value, max_) -> dict:
        if node_id == self.running:
            self.bar = (value, max_)
        return self._message(self._state(node_id, "running", (value, max_)))

    def end(self, node_id: str, state: str) -> dict:
        message = self._message(self._state(node_id, state))
        self.running = None
        return message

    def _state(self, node_id: str, state: str, bar: tuple | None = None) -> dict:
        value, max_ = bar or (self.bar if node_id == self.running else (1, 1))
        return {node_id: {"value": value, "max": max_, "state": state, "node_id": node_id,
                          "prompt_id": self.prompt_id, "display_node_id": node_id, "parent_node_id": None,
                          "real_node_id": node_id}}

    def _message(self, nodes: dict) -> dict:
        return {"prompt_id": self.prompt_id, "nodes": nodes}


def _class_of(item: QueueItem, node_id: Any) -> str | None:
    node = item.prompt.get(node_id) if node_id is not None else None
    return node.get("class_type") if isinstance(node, dict) else None


def _meta(node_id: str) -> dict:
    return {"node_id": node_id, "display_node": node_id, "parent_node": None, "real_node_id": node_id}

