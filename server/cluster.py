"""HTTP over several processes: ``latentgraph serve --http-processes N``.

One event loop answers a few thousand requests a second; a burst of submissions queues behind it. With N > 1
the server process (the *primary*, which owns the devices' workers) starts N - 1 *HTTP processes*. Every process
listens on the same port with SO_REUSEPORT, so the kernel spreads connections over them, and each runs the whole
app: routes, validation, websocket clients of its own. They share the SQLite queue (queue.py is safe across
processes). A socket pair to the primary carries the rest:

- primary → HTTP process: every websocket message the primary's hub sends (worker events, status, previews),
  delivered there to that process's own clients;
- HTTP process → primary: that it changed the queue (the primary wakes its workers and broadcasts the status),
  and the few requests only the workers can answer (interrupt, /free, device stats).

Frames are a 4-byte length and a pickle; both ends are this program.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import multiprocessing
import os
import pickle
import signal
import socket
import struct

from aiohttp import web

log = logging.getLogger("latentgraph.cluster")

_LENGTH = struct.Struct("!I")
CALL_TIMEOUT = 30.0  # seconds an HTTP process waits for the primary's answer
MIRROR_BACKLOG = 16 << 20  # bytes waiting for an HTTP process beyond which previews to it are dropped


async def _read_frame(reader: asyncio.StreamReader):
    (n,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
    return pickle.loads(await reader.readexactly(n))


def _frame(message) -> bytes:
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(body)) + body


# -- the primary's side ---------------------------------------------------------------------------------------
class Cluster:
    """The primary's HTTP processes: starts them, mirrors its hub to them, answers their calls."""

    def __init__(self, state, processes: int):
        self.state = state
        self.count = processes - 1
        self.procs: list[multiprocessing.Process] = []
        self.writers: list[asyncio.StreamWriter] = []
        self.tasks: list[asyncio.Task] = []
        self.ready: list[asyncio.Future] = []  # one per process: it listens

    async def start(self) -> None:
        mp = multiprocessing.get_context("spawn")
        for rank in range(1, self.count + 1):
            self.ready.append(asyncio.get_running_loop().create_future())
            ours, theirs = socket.socketpair()
            proc = mp.Process(target=http_process_main, args=(self.state.config, theirs, os.getpid(), rank),
                              name=f"latentgraph-http-{rank}", daemon=False)
            proc.start()
            theirs.close()
            reader, writer = await asyncio.open_connection(sock=ours)
            self.procs.append(proc)
            self.writers.append(writer)
            self.tasks.append(asyncio.ensure_future(self._serve(rank, reader, writer)))
        self.state.hub.mirrors.append(self._mirror)
        # the primary binds the port only after this returns: a client that connects then is spread over all
        await asyncio.wait_for(asyncio.gather(*self.ready), timeout=300)

    def _mirror(self, kind: str, *args) -> None:
        frame = _frame((kind, *args))
        for writer in self.writers:
            # a stuck process must not grow us: previews are the bulk, and the next one replaces a dropped one
            stuck = writer.transport.get_write_buffer_size() > MIRROR_BACKLOG
            if not writer.is_closing() and not (stuck and kind == "preview"):
                writer.write(frame)

    async def _serve(self, rank: int, reader, writer) -> None:
        try:
            while True:
                kind, call_id, name, args = await _read_frame(reader)
                if name == "ready":
                    self.ready[rank - 1].set_result(None)
                    continue
                try:
                    result = await self._answer(name, args)
                except Exception as exc:  # reported to the caller, whose request gets a 500
                    log.exception("HTTP process %d: %s failed", rank, name)
                    result = RuntimeError(f"{name} failed in the primary server process: {type(exc).__name__}")
                if kind == "call":
                    writer.write(_frame(("reply", call_id, result)))
        except (asyncio.IncompleteReadError, ConnectionError):
            if not self.state.stopping:
                log.error("HTTP process %d stopped; its share of connections goes to the others", rank)

    async def _answer(self, name: str, args: tuple):
        s = self.state
        if name == "queue_changed":  # it queued prompts: they may be for an idle worker
            s.queue.wake()
            return s.queue_changed()
        if name in ("interrupt", "free", "devices"):
            return await getattr(s, name)(*args)
        raise ValueError(f"unknown call {name!r}")

    async def stop(self) -> None:
        for writer in self.writers:
            writer.close()
        for proc in self.procs:
            proc.terminate()  # SIGTERM: aiohttp closes its sockets and runs its cleanup
        loop = asyncio.get_running_loop()
        for proc in self.procs:
            await loop.run_in_executor(None, proc.join, 10)
            if proc.is_alive():
                proc.kill()
        for task in self.tasks:
            task.cancel()


# -- an HTTP process's side -----------------------------------------------------------------------------------
class PrimaryLink:
    """An HTTP process's connection to the primary: feeds the primary's messages to the local hub, forwards
    calls, and remembers which node each client's prompt is executing (for a client that reconnects here)."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.writer: asyncio.StreamWriter | None = None
        self.replies: dict[int, asyncio.Future] = {}
        self.ids = itertools.count()
        self.executing: dict[str, dict] = {}  # client id -> the last `executing` message of its running prompt
        self.pending: list[str] = []  # notifications to send at the end of this event-loop iteration

    async def start(self, hub) -> None:
        reader, self.writer = await asyncio.open_connection(sock=self.sock)
        self.task = asyncio.ensure_future(self._read(reader, hub))

    async def _read(self, reader, hub) -> None:
        try:
            while True:
                kind, *args = await _read_frame(reader)
                if kind == "send":
                    type_, data, sid = args
                    if type_ == "executing" and sid is not None:
                        if data.get("node") is None:
                            self.executing.pop(sid, None)
                        else:
                            self.executing[sid] = data
                    hub.send(type_, data, sid)
                elif kind == "preview":
                    hub.send_preview(*args)
                elif kind == "reply":
                    future = self.replies.pop(args[0], None)
                    if future is not None and not future.done():
                        future.set_result(args[1])
        except (asyncio.IncompleteReadError, ConnectionError):
            log.error("lost the primary server process; stopping")
            os.kill(os.getpid(), signal.SIGTERM)

    def notify(self, name: str) -> None:
        """Tell the primary, once per event-loop iteration however often this is called in it (a burst of
        submissions handled together is one queue change)."""
        if name not in self.pending:
            if not self.pending:
                asyncio.get_running_loop().call_soon(self._flush)
            self.pending.append(name)

    def _flush(self) -> None:
        names, self.pending = self.pending, []
        self.writer.write(b"".join(_frame(("notify", None, name, ())) for name in names))

    async def call(self, name: str, *args):
        call_id = next(self.ids)
        future = self.replies[call_id] = asyncio.get_running_loop().create_future()
        self.writer.write(_frame(("call", call_id, name, args)))
        try:
            result = await asyncio.wait_for(future, CALL_TIMEOUT)
        finally:
            self.replies.pop(call_id, None)
        if isinstance(result, Exception):
            raise result
        return result


def http_process_main(config, sock: socket.socket, parent_pid: int, rank: int) -> None:
    from .app import new_event_loop
    from .runners import die_with_parent

    die_with_parent(parent_pid)
    logging.basicConfig(level=logging.DEBUG if config.debug else logging.INFO,
                        format=f"%(asctime)s %(levelname)s %(name)s[http-{rank}]: %(message)s")
    loop = new_event_loop()
    loop.run_until_complete(_serve_http(config, PrimaryLink(sock)))


async def _serve_http(config, link: PrimaryLink) -> None:
    """aiohttp's run_app, plus telling the primary once the port is bound."""
    from .app import create_app, settle_gc

    runner = web.AppRunner(create_app(config, primary=link), access_log=None,
                           keepalive_timeout=config.read_timeout)  # the header timeout too, as in app.run
    await runner.setup()
    settle_gc()
    await web.TCPSite(runner, config.host, config.port, reuse_port=True).start()
    link.notify("ready")
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    await stop.wait()
    await runner.cleanup()
