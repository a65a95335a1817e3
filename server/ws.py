"""WebSocket fan-out: ``/ws?clientId=`` connections and the messages the worker threads emit.

Each socket gets its own outbox and writer task, so messages reach every client in the order they were sent and
a slow client delays nobody else (its outbox is bounded in bytes; a client that falls that far behind is
disconnected). The bound is on bytes, not messages: a prompt of thousands of trivial nodes sends a burst of
thousands of small messages faster than any socket drains them, and that client is not slow.
Worker threads never touch sockets: they call :meth:`Hub.send_threadsafe`, which hops onto the event loop; the
hops queue up in order and one wake-up of the loop delivers all that arrived meanwhile, so a prompt of thousands
of fast nodes does not wake the loop thousands of times. A message is encoded once, and only when some client
will receive it.
"""
from __future__ import annotations

import asyncio
import json
import logging
import struct
import threading
import uuid

from aiohttp import WSMsgType, web

log = logging.getLogger("latentgraph.ws")

PREVIEW_IMAGE = 1
PREVIEW_IMAGE_WITH_METADATA = 4
IMAGE_JPEG = 1
OUTBOX_BYTES = 32 << 20  # a client whose unsent messages pass this is disconnected
HOPS_PER_TURN = 500  # messages from worker threads sent per turn of the event loop
SERVER_FEATURES = {"supports_preview_metadata": True}


class Client:
    def __init__(self, sid: str, ws: web.WebSocketResponse):
        self.sid = sid
        self.ws = ws
        self.outbox: asyncio.Queue = asyncio.Queue()
        self.backlog = 0  # the size of the frames in the outbox
        self.features: dict = {}

    async def write(self) -> None:
        while True:
            frame = await self.outbox.get()
            if frame is None:
                return
            self.backlog -= len(frame)
            try:
                if isinstance(frame, bytes):
                    await self.ws.send_bytes(frame)
                else:
                    await self.ws.send_str(frame)
            except (ConnectionError, RuntimeError):
                return

    def push(self, frame: str | bytes | None) -> bool:
        """Queue a frame (None: stop writing); False, and nothing queued, when the client is too far behind."""
        if frame is not None:
            if self.backlog + len(frame) > OUTBOX_BYTES:
                return False
            self.backlog += len(frame)
        self.outbox.put_nowait(frame)
        return True


class Hub:
    def __init__(self):
        self.clients: dict[str, Client] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.on_connect = None  # callable(sid) -> list of (type, data) to send a (re)connecting client
        self.mirrors: list = []  # callables(kind, *args) that get every send: the other HTTP processes (cluster.py)
        self._hops: list = []  # (callable, args) from other threads, run in order on the loop's next turn
        self._hops_lock = threading.Lock()

    # -- sending (event loop) -----------------------------------------------------------------
    def send(self, type_: str, data: dict, sid: str | None = None) -> None:
        """Send a JSON message to one client (`sid`) or to everyone (`sid` None)."""
        for mirror in self.mirrors:
            mirror("send", type_, data, sid)
        targets = self._targets(sid)
        if targets:
            frame = json.dumps({"type": type_, "data": data})
            for client in targets:
                self._push(client, frame)

    def send_preview(self, jpeg: bytes, sid: str | None, metadata: dict) -> None:
        """A latent preview: event 1 (JPEG) for plain clients, event 4 with metadata for those that asked for it."""
        for mirror in self.mirrors:
            mirror("preview", jpeg, sid, metadata)
        targets = self._targets(sid)
        if not targets:
            return
        plain = struct.pack(">II", PREVIEW_IMAGE, IMAGE_JPEG) + jpeg
        meta = json.dumps({**metadata, "image_type": "image/jpeg"}).encode()
        rich = struct.pack(">II", PREVIEW_IMAGE_WITH_METADATA, len(meta)) + meta + jpeg
        for client in targets:
            self._push(client, rich if client.features.get("supports_preview_metadata") else plain)

    def _targets(self, sid: str | None) -> list[Client]:
        if sid is None:
            return list(self.clients.values())
        client = self.clients.get(sid)
        return [client] if client else []

    def _push(self, client: Client, frame) -> None:
        if not client.push(frame):
            log.warning("websocket client %s fell %d MB behind; disconnecting it", client.sid, OUTBOX_BYTES >> 20)
            self.clients.pop(client.sid, None)
            asyncio.ensure_future(client.ws.close())

    # -- sending (worker threads) -------------------------------------------------------------
    def send_threadsafe(self, type_: str, data: dict, sid: str | None = None) -> None:
        self.call_threadsafe(self.send, type_, data, sid)

    def send_preview_threadsafe(self, jpeg: bytes, sid: str | None, metadata: dict) -> None:
        self.call_threadsafe(self.send_preview, jpeg, sid, metadata)

    def call_threadsafe(self, fn, *args) -> None:
        """Run ``fn(*args)`` on the event loop, after everything handed over before it (from any thread)."""
        loop = self.loop
        if loop is None or loop.is_closed():
            return
        with self._hops_lock:
            self._hops.append((fn, args))
            if len(self._hops) > 1:  # a wake-up is already on its way and will run this too
                return
        try:
            loop.call_soon_threadsafe(self._run_hops)
        except RuntimeError:  # the loop closed in between: the server is stopping
            pass

    def _run_hops(self) -> None:
        with self._hops_lock:  # a few hundred per turn, so that requests are answered between them
            hops, self._hops = self._hops[:HOPS_PER_TURN], self._hops[HOPS_PER_TURN:]
            if self._hops:
                self.loop.call_soon(self._run_hops)
        for fn, args in hops:
            try:
                fn(*args)
            except Exception:  # one bad message must not drop the ones after it
                log.exception("websocket send failed")

    # -- the /ws route ------------------------------------------------------------------------
    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=30, max_msg_size=1 << 20)
        await ws.prepare(request)
        sid = request.query.get("clientId") or uuid.uuid4().hex
        old = self.clients.pop(sid, None)
        if old is not None:  # same clientId reconnecting: the new socket replaces the old one
            old.push(None)
        client = Client(sid, ws)
        self.clients[sid] = client
        writer = asyncio.ensure_future(client.write())
        try:
            for type_, data in (self.on_connect(sid) if self.on_connect else []):
                client.push(json.dumps({"type": type_, "data": data}))
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    self._on_message(client, msg.data)
        finally:
            if self.clients.get(sid) is client:
                del self.clients[sid]
            client.push(None)
            await asyncio.wait([writer], timeout=1)
            writer.cancel()
        return ws

    def _on_message(self, client: Client, text: str) -> None:
        try:
            msg = json.loads(text)
        except (ValueError, RecursionError):  # not JSON, or nested past json's limit: ignored like any unknown message
            return
        if isinstance(msg, dict) and msg.get("type") == "feature_flags" and isinstance(msg.get("data"), dict):
            client.features = msg["data"]
            client.push(json.dumps({"type": "feature_flags", "data": SERVER_FEATURES}))

    async def close_all(self, timeout: float = 2.0) -> None:
        """Close every socket at once; a client that does not answer the close handshake is not waited for."""
        clients, self.clients = list(self.clients.values()), {}
        for client in clients:
            client.push(None)
        if clients:
            await asyncio.wait([asyncio.ensure_future(c.ws.close()) for c in clients], timeout=timeout)
