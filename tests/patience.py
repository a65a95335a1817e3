"""Time limits for the tests' waits, stretched by how busy the machine is.

A test waits for an event (a server answering, a message, a prompt finishing), never for a fixed time; its limit
only tells a hang from slowness. The base limits are generous for a quiet machine. On a loaded one every process
gets a fraction of a core, so a limit stretches by the load average per core: at load 40 on 2 cores, 20×. The
load average follows a change over about a minute, so a running wait re-reads it rather than fixing its limit
at the start.
"""
from __future__ import annotations

import asyncio
import inspect
import os
import time
from typing import Awaitable, Callable, TypeVar

T = TypeVar("T")
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def load_factor() -> float:
    """How many times slower than on an idle machine a test may run now (≥ 1)."""
    return max(1.0, os.getloadavg()[0] / CORES)


def patience(seconds: float) -> float:
    """`seconds` of an idle machine, in seconds of this machine now."""
    return seconds * load_factor()


class Deadline:
    """A limit of `seconds` on an idle machine that stretches with the load while the wait lasts."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.start = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def expired(self) -> bool:
        return self.elapsed() > patience(self.seconds)


def wait_until(predicate: Callable[[], T], seconds: float = 120.0, every: float = 0.1, what: str = "") -> T:
    """Poll `predicate` until it returns something truthy (returned); TimeoutError past the stretched limit."""
    deadline = Deadline(seconds)
    while not (value := predicate()):
        if deadline.expired():
            raise TimeoutError(f"{what or predicate} did not happen in {deadline.elapsed():.1f} s "
                               f"(load factor {load_factor():.1f})")
        time.sleep(every)
    return value


async def async_wait_until(predicate: Callable[[], Awaitable[T] | T], seconds: float = 120.0, every: float = 0.05,
                           what: str = "") -> T:
    """`wait_until` on the event loop: `predicate` may be async; the loop runs between tries."""
    deadline = Deadline(seconds)
    while not (value := await _result(predicate())):
        if deadline.expired():
            raise TimeoutError(f"{what or predicate} did not happen in {deadline.elapsed():.1f} s "
                               f"(load factor {load_factor():.1f})")
        await asyncio.sleep(every)
    return value


async def _result(value):
    return await value if inspect.isawaitable(value) else value
