"""The heartbeat of an executor child process, and the watchdog that gives up on a child that stops beating.

A thread in the child stamps a clock shared with the parent every second. The worker thread that waits for the
child's messages looks at the stamp while it waits: a child that is stopped (SIGSTOP), frozen, or deadlocked
misses its beats, and once its last beat is older than the limit the worker kills it, records its prompt as failed
with the reason, and the next prompt starts a new child. A node that computes for minutes keeps beating: the
heartbeat thread runs beside it (torch releases the GIL while it computes). A child that misses beats while one
of its threads is running is not hung but starved: on a busy machine the thread holding the GIL can wait long for
a core (more so at the executor's low priority), and the heartbeat waits for the GIL. It is left alone.
"""
from __future__ import annotations

import os
import threading
import time

BEAT = 1.0  # seconds between beats
LIMIT = 120.0  # default seconds without a beat before a child counts as hung (generous: a loaded machine is slow)
STARTUP_SLACK = 10  # before its first beat a child is still starting (spawning, importing torch): LIMIT × this


class Unresponsive(Exception):
    """The child missed its heartbeats for longer than the limit."""

    def __init__(self, silent: float):
        super().__init__(f"no heartbeat for {silent:.0f} s")
        self.silent = silent


class Heartbeat:
    """A monotonic clock stamp in shared memory: written by the child, read by the parent (CLOCK_MONOTONIC is one
    clock for every process of the machine)."""

    def __init__(self, mp_context):
        self._stamp = mp_context.Value("d", time.monotonic(), lock=False)  # one aligned double: no lock needed
        self._reset = self._stamp.value

    def reset(self) -> None:
        """A new child is starting: its start-up counts from now."""
        self._stamp.value = self._reset = time.monotonic()

    def start(self) -> None:
        """In the child, first thing (a thread started before the child lowers its priority keeps the normal one,
        so a busy machine does not starve the beat): beat until the process ends."""
        threading.Thread(target=self._beat, name="heartbeat", daemon=True).start()

    def _beat(self) -> None:
        while True:
            self._stamp.value = time.monotonic()
            time.sleep(BEAT)

    def silent_for(self) -> float:
        return time.monotonic() - self._stamp.value

    def receive(self, conn, limit: float, pid: int):
        """``conn.recv()`` from child `pid`, raising Unresponsive once it has not beaten for `limit` seconds while
        none of its threads runs (0: no limit; STARTUP_SLACK times more before its first beat)."""
        while limit and not conn.poll(BEAT):
            started = self._stamp.value > self._reset
            if self.silent_for() > (limit if started else limit * STARTUP_SLACK) and not running(pid):
                raise Unresponsive(self.silent_for())
        return conn.recv()


def running(pid: int) -> bool:
    """Whether a thread of process `pid` is running or waiting for a core (Linux's /proc; elsewhere, no)."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/stat", "rb") as f:
                if f.read().rpartition(b")")[2].split()[0] == b"R":  # the state follows the (command name)
                    return True
        except (OSError, IndexError):
            continue
    return False
