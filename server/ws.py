"""WebSocket fan-out: ``/ws?clientId=`` connections and the messages the worker threads emit.

Each socket gets its own outbox and writer task, so messages reach every client in the order they were sent and
a slow client delays nobody else (its outbox is bounded; a client that falls that far behind is disconnected).
Worker threads never touch sockets: they call :meth:`Hub.send_threadsafe`, which hops onto the event loop.
"""
from __future__ import annotations

import asyncio
import json
import logging
import struct
import uuid

from aiohttp import WSMsgType, web

log = logging.getLogger("latentgraph.ws")

PREVIEW_IMAGE = 1
PREVIEW_IMAGE_WITH_METADATA = 4
IMAGE_JPEG = 1
OUTBOX_LIMIT = 1000
SERVER_FEATURES = {"supports_preview_metadata": True}


class Client:
    def __init__(self, sid: str, ws: web.WebSocketResponse):
        self.sid = sid
        self.ws = ws
        self.outbox: asyncio.Queue = asyncio.Queue(OUTBOX_LIMIT)
        self.features: dict = {}

    async def write(self) -> None:
        while True:
            frame = await self.outbox.get()
            if frame is None:
                return
            try:
                if isinstance(frame, bytes):
                    await self.ws.send_bytes(frame)
                else:
                    await self.ws.send_str(frame)
            except (ConnectionError, RuntimeError):
                return

    def push(self, frame: str | bytes | None) -> bool:
        try:
            self.outbox.put_nowait(frame)
            return True
        except asyncio.QueueFull:
            return False


class Hub:
    def __init__(self):
        self.clients: dict[str, Client] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.on_connect = None  # callable(sid) -> list of (type, data) to send a (re)connecting client
        self.mirrors: list = []  # callables(kind, *args) that get every send: the other HTTP processes (cluster.py)

    # -- sending (event loop) -----------------------------------------------------------------
    def send(self, type_: str, data: dict, sid: str | None = None) -> None:
        """Send a JSON message to one client (`sid`) or to everyone (`sid` None)."""
        for mirror in self.mirrors:
            mirror("send", type_, data, sid)
        self._deliver(json.dumps({"type": type_, "data": data}), sid)

    def send_preview(self, jpeg: bytes, sid: str | None, metadata: dict) -> None:
        """A latent preview: event 1 (JPEG) for plain clients, event 4 with metadata for those that asked for it."""
        for mirror in self.mirrors:
            mirror("preview", jpeg, sid, metadata)
        plain = struct.pack(">II", PREVIEW_IMAGE, IMAGE_JPEG) + jpeg
        meta = json.dumps({**metadata, "image_type": "image/jpeg"}).encode()
        rich = struct.pack(">II", PREVIEW_IMAGE_WITH_METADATA, len(meta)) + meta + jpeg
        for client in self._targets(sid):
            self._push(client, rich if client.features.get("supports_preview_metadata") else plain)

    def _deliver(self, frame: str | bytes, sid: str | None) -> None:
        for client in self._targets(sid):
            self._push(client, frame)

    def _targets(self, sid: str | None) -> list[Client]:
        if sid is None:
            return list(self.clients.values())
        client = self.clients.get(sid)
        return [client] if client else []

    def _push(self, client: Client, frame) -> None:
        if not client.push(frame):
            log.warning("websocket client %s fell %d messages behind; disconnecting it", client.sid, OUTBOX_LIMIT)
            self.clients.pop(client.sid, None)
            asyncio.ensure_future(client.ws.close())

    # -- sending (worker threads) -------------------------------------------------------------
    def send_threadsafe(self, type_: str, data: dict, sid: str | None = None) -> None:
        self._call(self.send, type_, data, sid)

    def send_preview_threadsafe(self, jpeg: bytes, sid: str | None, metadata: dict) -> None:
        self._call(self.send_preview, jpeg, sid, metadata)

    def _call(self, fn, *args) -> None:
        loop = self.loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(fn, *args)

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
        except ValueError:
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
