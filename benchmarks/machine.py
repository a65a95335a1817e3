"""How much other work on the machine got in a benchmark's way: time its processes spent runnable but waiting for a
core, from the scheduler's per-thread statistics (Linux /proc; 0 elsewhere). On a quiet machine it stays near 0;
a run that waited seconds was slowed by whatever else ran, whatever its wall time says."""
from __future__ import annotations

import os
from pathlib import Path


def family(pid: int | str = "self") -> list[str]:
    """`pid` and its descendants (the server's executor child, a child's workers)."""
    pids, i = [str(pid)], 0
    while i < len(pids):
        try:
            tasks = Path(f"/proc/{pids[i]}/task").iterdir()
            pids += [c for t in tasks for c in (t / "children").read_text().split()]
        except OSError:
            pass
        i += 1
    return pids


def waited(pid: int | str = "self") -> float:
    """Seconds the threads of `pid` and of its descendants have waited for a core, so far."""
    total = 0
    for p in family(pid):
        try:
            total += sum(int((t / "schedstat").read_text().split()[1]) for t in Path(f"/proc/{p}/task").iterdir())
        except (OSError, IndexError, ValueError):
            pass
    return total / 1e9


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())
