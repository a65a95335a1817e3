"""The prompt queue and its history, persisted in SQLite so that nothing queued is lost on a restart or kill -9.

One table holds every prompt with its state: ``pending`` (queued), ``running`` (a worker has it) and ``done``
(history). WAL mode with ``synchronous=NORMAL`` makes every committed submission survive a process crash (the
data is in the OS page cache the moment the commit returns); only a power loss can take the last moments.

Order follows ComfyUI: the lowest ``number`` runs first (ties: submission order); ``front`` submissions get a
negative number. A prompt found ``running`` when the database is opened was cut off by a restart: it moves to
history with an error status and can be put back with :meth:`PromptQueue.requeue`.

Thread-safety: one connection guarded by a lock; workers block in :meth:`take` on a condition variable.
Processes: several may open the same file (``serve --http-processes``). Only the owner (the process with the
workers) recovers cut-off prompts; prompt numbers and the paused flag live in the database, and each write is
one short transaction, so no process holds the write lock while it does anything else.

Group commit: a burst of submissions can share one transaction (:meth:`add` each, then :meth:`commit`), which
costs a fifth of a commit each; the server answers each of them only after that commit, so an acknowledged
prompt is always on disk.
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

RESTART_MESSAGE = "interrupted by server restart"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS prompts (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    prompt_id TEXT UNIQUE NOT NULL,
    number REAL NOT NULL,
    -- OR rather than IN (…): SQLite builds a temporary table for an IN list on every insert (8.7 → 5.7 µs)
    state TEXT NOT NULL CHECK (state = 'pending' OR state = 'running' OR state = 'done'),
    prompt TEXT NOT NULL,
    extra_data TEXT NOT NULL,
    outputs_to_execute TEXT NOT NULL,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    status TEXT,
    outputs TEXT,
    meta TEXT
);
CREATE INDEX IF NOT EXISTS prompts_by_state ON prompts (state, number, seq);
CREATE INDEX IF NOT EXISTS prompts_by_finish ON prompts (state, finished, seq);
-- 'number': the last prompt number handed out; 'paused': 1 while the queue starts nothing
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


@dataclass
class QueueItem:
    """One queued or running prompt, in the shape ComfyUI's ``/queue`` lists: [number, id, prompt, extra, outputs]."""

    number: float
    prompt_id: str
    prompt: dict
    extra_data: dict
    outputs_to_execute: list
    created: float = 0.0

    def as_list(self) -> list:
        number = int(self.number) if float(self.number).is_integer() else self.number
        return [number, self.prompt_id, self.prompt, self.extra_data, self.outputs_to_execute]


@dataclass
class HistoryEntry:
    item: QueueItem
    status: dict
    outputs: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    started: float | None = None
    finished: float | None = None

    def as_dict(self) -> dict:
        """ComfyUI's history entry shape (plus start/end times in ms, which clients ignore)."""
        return {"prompt": self.item.as_list(), "outputs": self.outputs, "status": self.status, "meta": self.meta,
                "timing": {"start": _ms(self.started), "end": _ms(self.finished)}}


def _ms(t: float | None) -> int | None:
    return None if t is None else int(t * 1000)


class Ticket:
    """A prompt in the open group commit: once :meth:`PromptQueue.commit` ran, its ``number``; or ``duplicate``
    if its id was taken (by a stored prompt, one earlier in the group, or another process in between); or
    ``error``, what SQLite refused in its row (which fails that prompt alone, never the rest of the group)."""

    __slots__ = ("row", "number", "duplicate", "error")

    def __init__(self, row: tuple):
        self.row, self.number, self.duplicate, self.error = row, None, False, None


class PromptQueue:
    def __init__(self, path: str | Path, *, owner: bool = True):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._closed = False
        self._batch: list[Ticket] = []  # added, not yet committed
        self._db.execute("INSERT OR IGNORE INTO counters SELECT 'number', COALESCE(MAX(ABS(number)), 0) FROM prompts")
        self.recovered = []
        if owner:  # a restart: what was running was cut off, and a pause does not outlive the server
            self.recovered = self._recover()
            self._db.execute("INSERT OR REPLACE INTO counters VALUES ('paused', 0)")

    # -- startup ------------------------------------------------------------------------------
    def _recover(self) -> list[str]:
        """Move prompts a dead process was running into history, marked as cut off. Returns their ids."""
        ids = [r[0] for r in self._db.execute("SELECT prompt_id FROM prompts WHERE state='running'")]
        now = time.time()
        for pid in ids:
            status = {"status_str": "error", "completed": False,
                      "messages": [["execution_error", {"prompt_id": pid, "exception_type": "ServerRestart",
                                                        "exception_message": RESTART_MESSAGE, "timestamp": _ms(now)}]]}
            self._db.execute("UPDATE prompts SET state='done', finished=?, status=?, outputs='{}', meta='{}' "
                             "WHERE prompt_id=?", (now, json.dumps(status), pid))
        return ids

    # -- submitting ---------------------------------------------------------------------------
    def put(self, prompt_id: str, prompt: dict, extra_data: dict, outputs: list, *, number: float | None = None,
            front: bool = False) -> float:
        """Queue a prompt and commit; returns its number. Raises KeyError if the id is already known."""
        ticket = self.add(prompt_id, prompt, extra_data, outputs, number=number, front=front)
        self.commit()
        if ticket.duplicate:
            raise KeyError(prompt_id)
        return ticket.number

    def add(self, prompt_id: str, prompt: dict, extra_data: dict, outputs: list, *, number: float | None = None,
            front: bool = False) -> Ticket:
        """Add a prompt to the open group commit; it is queued (and durable) once :meth:`commit` ran, which marks
        the ticket ``duplicate`` instead if the id was already known (queued, in history, or earlier in the group)."""
        ticket = Ticket((prompt_id, number, front, json.dumps(prompt), json.dumps(extra_data), json.dumps(outputs),
                         time.time()))
        with self._lock:
            self._batch.append(ticket)
        return ticket

    def commit(self) -> int:
        """Write the open group in one transaction, numbering its prompts, then let the workers start them: a
        prompt never runs before it is on disk. Returns how many were stored."""
        with self._cond:
            batch, self._batch = self._batch, []
            if not batch:
                return 0
            with self._write():
                counter = self._counter()
                for ticket in batch:
                    prompt_id, number, front, prompt, extra, outputs, created = ticket.row
                    counter += 1
                    if number is None:
                        number = -counter if front else counter
                    try:  # a failed INSERT undoes itself alone; the transaction and the other rows stand
                        self._db.execute(
                            "INSERT INTO prompts (prompt_id, number, state, prompt, extra_data, outputs_to_execute, "
                            "created) VALUES (?, ?, 'pending', ?, ?, ?, ?)",
                            (prompt_id, float(number), prompt, extra, outputs, created))
                        ticket.number = number
                    except sqlite3.IntegrityError as exc:
                        if exc.sqlite_errorname == "SQLITE_CONSTRAINT_UNIQUE":  # the prompt_id is UNIQUE
                            ticket.duplicate = True
                        else:
                            ticket.error = f"the queue refused this prompt: {exc}"
                    except (sqlite3.Error, OverflowError, ValueError) as exc:  # e.g. a lone surrogate in an id
                        ticket.error = f"the queue refused this prompt: {type(exc).__name__}: {exc}"
                self._set_counter(counter)
            if not self._is_paused():
                self._cond.notify_all()  # a group may hold work for every idle worker
            return sum(t.number is not None for t in batch)

    @contextmanager
    def _write(self):  # lock held: one short write transaction, taking the write lock up front
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _counter(self) -> int:  # the last prompt number handed out, by any process
        return self._db.execute("SELECT value FROM counters WHERE name='number'").fetchone()[0]

    def _set_counter(self, value: int) -> None:
        self._db.execute("UPDATE counters SET value=? WHERE name='number'", (value,))

    def requeue(self, prompt_ids: list[str]) -> list[str]:
        """Put finished prompts (e.g. ones cut off by a restart) back at the end of the queue, same ids, in one
        transaction; returns the ids that were not in history."""
        with self._cond:
            with self._write():
                counter = self._counter()
                missing = []
                for prompt_id in prompt_ids:
                    counter += 1
                    cur = self._db.execute("UPDATE prompts SET state='pending', number=?, started=NULL, "
                                           "finished=NULL, status=NULL, outputs=NULL, meta=NULL "
                                           "WHERE prompt_id=? AND state='done'", (float(counter), prompt_id))
                    if cur.rowcount == 0:
                        missing.append(prompt_id)
                self._set_counter(counter)
            self._notify()
            return missing

    # -- the worker side ----------------------------------------------------------------------
    def take(self, timeout: float | None = None) -> QueueItem | None:
        """Block until a prompt is pending (and the queue not paused), mark it running and return it.

        Returns None on timeout, on :meth:`wake` and after :meth:`close`."""
        with self._cond:
            row = self._next_pending()
            if row is None:
                self._cond.wait(timeout)
                row = self._next_pending()
            if row is None:
                return None
            self._db.execute("UPDATE prompts SET state='running', started=? WHERE prompt_id=?", (time.time(), row[1]))
            return _item(row)

    def _notify(self) -> None:
        """Wake one idle worker for new work. Skipped while paused: a needless wake-up hands the GIL to a
        thread that has nothing to do and costs the event loop milliseconds per submission."""
        if not self._is_paused():
            self._cond.notify()

    def _next_pending(self):
        if self._closed or self._is_paused():
            return None
        return self._db.execute(f"SELECT {_ITEM_COLUMNS} FROM prompts WHERE state='pending' "
                                "ORDER BY number, seq LIMIT 1").fetchone()

    def finish(self, prompt_id: str, status: dict, outputs: dict, meta: dict) -> None:
        with self._lock:
            self._db.execute("UPDATE prompts SET state='done', finished=?, status=?, outputs=?, meta=? "
                             "WHERE prompt_id=?",
                             (time.time(), json.dumps(status), json.dumps(outputs), json.dumps(meta), prompt_id))

    def release(self, prompt_id: str) -> None:
        """Give a running prompt back to the queue, keeping its place (a graceful shutdown cut it short)."""
        with self._lock:
            self._db.execute("UPDATE prompts SET state='pending', started=NULL WHERE prompt_id=? AND state='running'",
                             (prompt_id,))

    def wake(self) -> None:
        """Make a blocked :meth:`take` return (so a worker can look at other work, e.g. a /free request, or at
        prompts another process queued)."""
        with self._cond:
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        with self._lock:
            self._db.close()

    # -- pause / resume -----------------------------------------------------------------------
    @property
    def paused(self) -> bool:
        with self._lock:
            return self._is_paused()

    def _is_paused(self) -> bool:  # lock held
        row = self._db.execute("SELECT value FROM counters WHERE name='paused'").fetchone()
        return bool(row and row[0])

    def set_paused(self, paused: bool) -> None:
        """A paused queue keeps accepting prompts but starts none (the running one finishes)."""
        with self._cond:
            self._db.execute("INSERT OR REPLACE INTO counters VALUES ('paused', ?)", (int(bool(paused)),))
            self._cond.notify_all()

    # -- reading ------------------------------------------------------------------------------
    def pending(self) -> list[QueueItem]:
        with self._lock:
            rows = self._db.execute(f"SELECT {_ITEM_COLUMNS} FROM prompts WHERE state='pending' "
                                    "ORDER BY number, seq").fetchall()
        return [_item(r) for r in rows]

    def running(self) -> list[QueueItem]:
        with self._lock:
            rows = self._db.execute(f"SELECT {_ITEM_COLUMNS} FROM prompts WHERE state='running' "
                                    "ORDER BY started").fetchall()
        return [_item(r) for r in rows]

    def remaining(self) -> int:
        """Pending plus running: ComfyUI's ``queue_remaining``."""
        with self._lock:  # two index searches; `state != 'done'` scanned the whole history (0.8 ms at 20,000)
            (n,) = self._db.execute("SELECT (SELECT COUNT(*) FROM prompts WHERE state='pending') + "
                                    "(SELECT COUNT(*) FROM prompts WHERE state='running')").fetchone()
        return n

    def state_of(self, prompt_id: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT state FROM prompts WHERE prompt_id=?", (prompt_id,)).fetchone()
        return row[0] if row else None

    def history(self, max_items: int | None = None, offset: int = -1) -> list[HistoryEntry]:
        """Finished prompts, oldest first. ``offset=-1`` means the newest ``max_items``."""
        with self._lock:
            (total,) = self._db.execute("SELECT COUNT(*) FROM prompts WHERE state='done'").fetchone()
            if max_items is None or max_items < 0:
                max_items = total
            if offset < 0:
                offset = max(0, total - max_items)
            rows = self._db.execute(f"SELECT {_ITEM_COLUMNS}, status, outputs, meta, started, finished FROM prompts "
                                    "WHERE state='done' ORDER BY finished, seq LIMIT ? OFFSET ?",
                                    (max_items, offset)).fetchall()
        return [_entry(r) for r in rows]

    def history_item(self, prompt_id: str) -> HistoryEntry | None:
        with self._lock:
            row = self._db.execute(f"SELECT {_ITEM_COLUMNS}, status, outputs, meta, started, finished FROM prompts "
                                   "WHERE state='done' AND prompt_id=?", (prompt_id,)).fetchone()
        return _entry(row) if row else None

    # -- deleting -----------------------------------------------------------------------------
    def delete(self, prompt_ids, state: str) -> int:
        """Delete prompts in one state ('pending' or 'done'); running prompts are interrupted, not deleted."""
        with self._lock, self._write():  # one statement run per id, in one transaction
            return self._db.executemany("DELETE FROM prompts WHERE prompt_id=? AND state=?",
                                        [(str(pid), state) for pid in prompt_ids]).rowcount

    def clear(self, state: str) -> int:
        with self._lock:
            n = self._db.execute("DELETE FROM prompts WHERE state=?", (state,)).rowcount
            return n


_ITEM_COLUMNS = "number, prompt_id, prompt, extra_data, outputs_to_execute, created"


def _item(row) -> QueueItem:
    number, pid, prompt, extra, outputs, created = row[:6]
    return QueueItem(number, pid, json.loads(prompt), json.loads(extra), json.loads(outputs), created)


def _entry(row) -> HistoryEntry:
    status, outputs, meta, started, finished = row[6:]
    return HistoryEntry(_item(row), json.loads(status or "{}"), json.loads(outputs or "{}"), json.loads(meta or "{}"),
                        started, finished)
