"""HTTP routes, ComfyUI-compatible: every API route is served under ``/path`` and ``/api/path``.

Extensions over ComfyUI (clients that don't know them are unaffected):
- ``POST /prompt`` also takes a UI-format workflow (as ``prompt``, or as the whole body; converted here) and a
  PNG with an embedded workflow (``Content-Type: image/png``, optional ``?client_id=``).
- ``POST /queue`` also takes ``{"requeue": [ids]}`` (run finished prompts again, e.g. those cut off by a restart)
  and ``{"pause": true|false}``; ``GET /queue`` adds ``"paused"``.
- ``GET /workflows`` lists the shipped workflows, ``GET /workflows/{name}`` serves one.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import mimetypes
import os
import platform
import sys
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from nodes.catalog import MODEL_FOLDERS, model_names

from . import canvas_lib, images
from .limits import MAX_JSON_DEPTH, MAX_PROMPT_ID_CHARS, MAX_PROMPT_NUMBER, MAX_QUEUE_IDS, TooLarge, too_deep
from .security import PathError, confined, error_json, redacted_argv

FILE_TYPES = ("output", "input", "temp")
FIELD_LIMIT = 64 * 1024
INLINE_BYTES = 64 * 1024  # a /prompt body up to this size is read and validated on the event loop; larger, off it


def setup(app: web.Application, state) -> None:
    r = Routes(state)
    api = [
        ("GET", "/prompt", r.get_prompt), ("POST", "/prompt", r.post_prompt),
        ("GET", "/queue", r.get_queue), ("POST", "/queue", r.post_queue),
        ("POST", "/interrupt", r.interrupt),
        ("GET", "/history", r.get_history), ("GET", "/history/{prompt_id}", r.get_history_item),
        ("POST", "/history", r.post_history),
        ("GET", "/object_info", r.object_info), ("GET", "/object_info/{node_class}", r.object_info_one),
        ("GET", "/view", r.view),
        ("POST", "/upload/image", r.upload_image), ("POST", "/upload/mask", r.upload_mask),
        ("GET", "/system_stats", r.system_stats), ("POST", "/free", r.free),
        ("GET", "/models", r.models), ("GET", "/models/{folder}", r.models_in),
        ("GET", "/embeddings", r.embeddings), ("GET", "/extensions", r.extensions), ("GET", "/features", r.features),
        ("GET", "/users", r.users), ("GET", "/settings", r.get_settings), ("POST", "/settings", r.post_settings),
        ("GET", "/settings/{id}", r.get_setting), ("POST", "/settings/{id}", r.post_setting),
        ("GET", "/workflows", r.workflows), ("GET", "/workflows/{name}", r.workflow),
        ("GET", "/ws", state.hub.handle),
    ]
    for method, path, handler in api:
        app.router.add_route(method, path, handler)
        app.router.add_route(method, "/api" + path, handler)
    app.router.add_get("/", r.index)
    web_dir = Path(state.config.web_dir)
    if web_dir.is_dir():
        app.router.add_static("/", web_dir, follow_symlinks=False)


async def read_body(request: web.Request, limit: int, timeout: float) -> bytes:
    """The whole request body: 413 past `limit` bytes, 408 when the client sends nothing for `timeout` s."""
    if request.content_length is not None and request.content_length > limit:
        raise _too_large("request_too_large", f"the request body is larger than {limit} bytes")
    chunks, size = [], 0
    while chunk := await within(request, timeout, request.content.readany()):
        size += len(chunk)
        if size > limit:
            raise _too_large("request_too_large", f"the request body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def within(request: web.Request, timeout: float, awaitable):
    """Await the client's next bytes; 408 if it stays silent for `timeout` seconds (a stalled client would
    otherwise hold its handler, and its memory, for ever). The connection then closes after the answer, rather
    than wait on for the rest of the body."""
    try:
        async with asyncio.timeout(timeout):
            return await awaitable
    except TimeoutError:
        request.protocol.force_close()
        raise _bad("request_timeout", f"the client sent nothing for {timeout:g} s", 408) from None


def parse_json(raw: bytes | str, default=None):
    """JSON from a body, or a 400 naming what is wrong with it. An empty body gives `default`."""
    if not raw.strip():
        if default is not None:
            return default
        raise _bad("invalid_json", "the request body is empty; JSON was expected")
    try:
        value = json.loads(raw)
        deep = too_deep(value)
    except RecursionError:  # json's own limit, met before ours
        deep = True
    except (ValueError, UnicodeDecodeError) as exc:
        raise _bad("invalid_json", f"the request body is not valid JSON: {exc}")
    if deep:
        raise _bad("invalid_json", f"the JSON nests deeper than {MAX_JSON_DEPTH} levels")
    return value


def _bad(type_: str, message: str, status: int = 400) -> web.HTTPException:
    return _reply(status, {"error": {"type": type_, "message": message, "details": "", "extra_info": {}},
                           "node_errors": {}})


def _too_large(type_: str, message: str) -> web.HTTPException:
    return _bad(type_, message, 413)


_ERRORS = {400: web.HTTPBadRequest, 403: web.HTTPForbidden, 404: web.HTTPNotFound, 408: web.HTTPRequestTimeout,
           409: web.HTTPConflict, 413: lambda **kw: web.HTTPRequestEntityTooLarge(0, **kw)}


def _reply(status: int, body: dict) -> web.HTTPException:
    """An error response carrying `body`, to raise (also from code that runs off the event loop)."""
    return _ERRORS[status](text=json.dumps(body), content_type="application/json")


def _json_dict(body, what: str = "request body") -> dict:
    if not isinstance(body, dict):
        raise _bad("invalid_json", f"the {what} must be a JSON object")
    return body


def _int_query(request: web.Request, name: str, default: int | None, low: int = -1, high: int = 2 ** 31) -> int | None:
    value = request.query.get(name)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise _bad("invalid_query", f"{name} must be an integer, got {value!r}")
    if not low <= number <= high:
        raise _bad("invalid_query", f"{name} must be between {low} and {high}, got {value}")
    return number


def _text(value, limit: int) -> bool:
    """A string of at most `limit` characters that is valid Unicode (no lone surrogate: SQLite could not store it)."""
    if not isinstance(value, str) or len(value) > limit:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _number(value) -> bool:
    """A finite number of a size a float holds exactly (NaN fails the comparison; a huge int never reaches float)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) <= MAX_PROMPT_NUMBER


@dataclass
class _Accepted:
    """A /prompt submission that passed validation and is in the open group commit."""

    prompt_id: str
    ticket: object
    node_errors: dict


class Routes:
    def __init__(self, state):
        self.s = state

    @property
    def config(self):
        return self.s.config

    # -- prompts ------------------------------------------------------------------------------
    async def get_prompt(self, request):
        return web.json_response({"exec_info": {"queue_remaining": self.s.queue.remaining()}})

    async def post_prompt(self, request):
        raw = await self._body(request)
        args = (raw, request.content_type, request.query.get("client_id"))
        if len(raw) > INLINE_BYTES:  # reading, converting and validating a large graph would stall every client
            accepted = await self.s.heavy_work(self._accept, *args)
        else:
            accepted = self._accept(*args)
        await self.s.committed()  # acknowledged only once on disk
        ticket = accepted.ticket
        if ticket.error is not None:
            return error_json(400, "invalid_prompt", ticket.error)
        if ticket.duplicate:
            return error_json(400, "duplicate_prompt_id",
                              f"prompt id {accepted.prompt_id!r} is already queued or in history")
        self.s.queue_changed()
        return web.json_response({"prompt_id": accepted.prompt_id, "number": ticket.number,
                                  "node_errors": accepted.node_errors})

    def _accept(self, raw: bytes, content_type: str, client_id: str | None) -> _Accepted:
        """Read, convert and validate a /prompt body and add it to the open group commit (any thread); raises the
        HTTP error a bad one gets."""
        from .graph import is_serverless_envelope, load_prompt, validate

        if content_type == "image/png":  # a PNG with its embedded workflow, as the canvas would load it
            body = {"prompt": self._png_workflow(raw), "client_id": client_id}
        else:
            body = _json_dict(parse_json(raw))
        graph = body.get("prompt")
        if graph is None and ("nodes" in body or is_serverless_envelope(body)):
            graph, body = body, {}  # a bare UI workflow as the whole body (or an envelope, which load_prompt names)
        if graph is None:
            raise _bad("no_prompt", "No prompt provided")
        prompt_id = body.get("prompt_id") or str(uuid.uuid4())
        number = body.get("number")
        if not _text(prompt_id, MAX_PROMPT_ID_CHARS):
            raise _bad("invalid_prompt", f"prompt_id must be a string of at most {MAX_PROMPT_ID_CHARS} characters")
        if number is not None and not _number(number):
            raise _bad("invalid_prompt", f"number must be a finite number no larger than {MAX_PROMPT_NUMBER} in size")
        extra = body.get("extra_data") or {}
        if not isinstance(extra, dict) or not isinstance(extra.get("extra_pnginfo", {}), dict):
            raise _bad("invalid_prompt", "extra_data and its extra_pnginfo must be JSON objects")
        targets = body.get("partial_execution_targets")
        if targets is not None and (not isinstance(targets, list) or not all(_is_id(t) for t in targets)):
            raise _bad("invalid_prompt", "partial_execution_targets must be a list of node ids")
        try:
            prompt, workflow = load_prompt(graph, self.s.registry)
        except TooLarge as exc:
            raise _too_large("prompt_too_large", f"Cannot read the prompt: {exc}")
        except (ValueError, KeyError, TypeError) as exc:
            raise _bad("invalid_prompt", f"Cannot read the prompt: {exc}")
        if body.get("client_id"):
            extra["client_id"] = str(body["client_id"])
        if workflow is not None:
            extra.setdefault("extra_pnginfo", {}).setdefault("workflow", workflow)
        result = validate(prompt, self.s.registry, self.s.env,
                          outputs=[str(t) for t in targets] if targets is not None else None)
        if not result.ok:
            status = 413 if result.error and result.error["type"] == "prompt_too_large" else 400
            raise _reply(status, {"error": result.error, "node_errors": result.node_errors})
        ticket = self.s.queue.add(prompt_id, prompt, extra, list(result.outputs), number=number,
                                  front=bool(body.get("front")))
        return _Accepted(prompt_id, ticket, result.node_errors)

    def _png_workflow(self, data: bytes):
        """The workflow embedded in a PNG /prompt body."""
        with _image_errors():
            found = images.png_text(data)
        if found is None:
            raise _bad("no_prompt", "the PNG carries no 'workflow' or 'prompt' text chunk")
        key, text = found
        try:
            return parse_json(text.encode("utf-8", "surrogatepass"))
        except web.HTTPBadRequest:
            raise _bad("invalid_json", f"the PNG's {key!r} text chunk is not valid JSON")

    async def _body(self, request) -> bytes:
        return await read_body(request, self.config.max_body_bytes, self.config.read_timeout)

    async def _json(self, request, default=None):
        raw = await self._body(request)
        if len(raw) > INLINE_BYTES:
            return await self.s.heavy_work(parse_json, raw, default)
        return parse_json(raw, default)

    # -- queue --------------------------------------------------------------------------------
    async def get_queue(self, request):
        q = self.s.queue
        return web.json_response({"queue_running": [i.as_list() for i in q.running()],
                                  "queue_pending": [i.as_list() for i in q.pending()], "paused": q.paused})

    async def post_queue(self, request):
        body = _json_dict(await self._json(request))
        q = self.s.queue
        result = {}
        if body.get("clear"):
            result["cleared"] = q.clear("pending")
        if "delete" in body:
            result["deleted"] = q.delete(_id_list(body["delete"]), "pending")
        if "requeue" in body:
            ids = _id_list(body["requeue"])
            missing = q.requeue(ids)
            if missing:
                shown = ", ".join(missing[:20]) + (f" and {len(missing) - 20} more" if len(missing) > 20 else "")
                return error_json(404, "unknown_prompt_id", f"not in history: {shown}")
            result["requeued"] = len(ids)
        if "pause" in body:
            q.set_paused(bool(body["pause"]))
            result["paused"] = q.paused
        self.s.queue_changed()
        return web.json_response(result)

    async def interrupt(self, request):
        body = _json_dict(await self._json(request, default={}))
        prompt_id = body.get("prompt_id")
        return web.json_response({"interrupted": await self.s.interrupt(prompt_id)})

    # -- history ------------------------------------------------------------------------------
    async def get_history(self, request):
        max_items = _int_query(request, "max_items", None, low=0)
        offset = _int_query(request, "offset", -1)
        entries = self.s.queue.history(max_items, offset)
        return web.json_response({e.item.prompt_id: e.as_dict() for e in entries})

    async def get_history_item(self, request):
        entry = self.s.queue.history_item(request.match_info["prompt_id"])
        return web.json_response({entry.item.prompt_id: entry.as_dict()} if entry else {})

    async def post_history(self, request):
        body = _json_dict(await self._json(request))
        result = {}
        if body.get("clear"):
            result["cleared"] = self.s.queue.clear("done")
        if "delete" in body:
            result["deleted"] = self.s.queue.delete(_id_list(body["delete"]), "done")
        return web.json_response(result)

    # -- nodes --------------------------------------------------------------------------------
    async def object_info(self, request):
        return web.json_response({name: spec.schema(self.s.env) for name, spec in self.s.registry.items()})

    async def object_info_one(self, request):
        name = request.match_info["node_class"]
        spec = self.s.registry.get(name)
        if spec is None:
            raise _bad("unknown_node_class", f"no node type {name!r}", 404)
        return web.json_response({name: spec.schema(self.s.env)})

    # -- files --------------------------------------------------------------------------------
    def _folder(self, type_: str) -> Path:
        folders = {"output": self.config.output_dir, "input": self.config.input_dir, "temp": self.config.temp_dir}
        if type_ not in folders:
            raise _bad("invalid_type", f"type must be one of {', '.join(FILE_TYPES)}, got {type_!r}")
        return Path(folders[type_])

    def _confined(self, base: Path, *parts: str) -> Path:
        try:
            return confined(base, *parts)
        except PathError as exc:
            raise _bad("forbidden_path", str(exc), 403)

    async def view(self, request):
        q = request.query
        filename = q.get("filename", "")
        type_ = q.get("type", "output")
        for t in FILE_TYPES:  # "name.png [input]" names its folder
            if filename.endswith(f" [{t}]"):
                filename, type_ = filename[: -len(t) - 3], t
        if not filename:
            raise _bad("invalid_filename", "filename is required")
        path = self._confined(self._folder(type_), q.get("subfolder", ""), filename)
        if not path.is_file():
            raise _bad("not_found", f"no file {filename!r} in {type_}", 404)
        preview, channel = q.get("preview"), q.get("channel", "rgba")
        if preview or channel != "rgba":
            fmt, quality = _preview_format(preview)
            if channel not in images.CHANNELS:
                raise _bad("invalid_channel", f"channel must be rgba, rgb or a, got {channel!r}")
            with _image_errors():
                data = await self.s.heavy_work(images.reencode, path, fmt, quality, channel)
            return web.Response(body=data, content_type=f"image/{fmt}",
                                headers={"Cache-Control": "public, max-age=86400"})
        ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        if not ctype.startswith(("image/", "video/", "audio/")):  # never let a browser render HTML/JS from here
            ctype = "application/octet-stream"
        return web.FileResponse(path, headers={"Content-Type": ctype, "Cache-Control": "public, max-age=86400",
                                               "Content-Disposition": f"inline; filename*=UTF-8''{quote(path.name)}",
                                               "X-Content-Type-Options": "nosniff"})

    async def upload_image(self, request):
        fields, filename, data = await self._read_upload(request)

        def store() -> str:
            with _image_errors():
                images.check_upload(data)
            return self._store_upload(fields, filename, data)

        name = await self.s.heavy_work(store)  # decoding checks and file writes stay off the event loop
        return web.json_response({"name": name, "subfolder": fields.get("subfolder", ""),
                                  "type": fields.get("type", "input")})

    async def upload_mask(self, request):
        fields, filename, data = await self._read_upload(request)
        try:
            ref = json.loads(fields.get("original_ref", ""))
            ref_path = self._confined(self._folder(ref.get("type", "output")), ref.get("subfolder", ""),
                                      ref["filename"])
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
            raise _bad("invalid_original_ref", "original_ref must be JSON {filename, subfolder, type}")
        if not ref_path.is_file():
            raise _bad("not_found", f"original image {ref['filename']!r} not found", 404)

        def store() -> str:
            with _image_errors():
                merged = images.merge_mask(ref_path, data)
            return self._store_upload({**fields, "overwrite": fields.get("overwrite", "true")}, filename, merged)

        name = await self.s.heavy_work(store)
        return web.json_response({"name": name, "subfolder": fields.get("subfolder", ""),
                                  "type": fields.get("type", "input")})

    async def _read_upload(self, request) -> tuple[dict, str, bytes]:
        limit, timeout = self.config.max_upload_bytes, self.config.read_timeout
        if request.content_length is not None and request.content_length > limit + FIELD_LIMIT:
            raise _too_large("upload_too_large", f"upload larger than {limit} bytes")
        fields: dict[str, str] = {}
        filename, data = None, None
        try:
            reader = await request.multipart()
            while (part := await within(request, timeout, reader.next())) is not None:
                if part.name == "image":
                    filename = part.filename
                    data = await _read_part(request, part, limit, timeout)
                else:
                    value = await _read_part(request, part, FIELD_LIMIT, timeout)
                    fields[part.name or ""] = value.decode("utf-8", "replace")
        except (AssertionError, ValueError, KeyError, HttpProcessingError) as exc:
            raise _bad("invalid_upload", "expected a multipart/form-data body with an `image` file "
                                         f"({type(exc).__name__})")
        if data is None or not filename:
            raise _bad("invalid_upload", "the multipart body has no `image` file")
        return fields, filename, data

    def _store_upload(self, fields: dict, filename: str, data: bytes) -> str:
        """Write an upload where it goes (any thread) and return its name: an identical file there is reused,
        else a free `name (n).ext` is taken unless overwrite is set."""
        name = os.path.basename(filename.replace("\\", "/"))
        if not name or name.startswith("."):
            raise _bad("invalid_filename", f"bad upload file name {filename!r}")
        base = self._folder(fields.get("type", "input"))
        folder = self._confined(base, fields.get("subfolder", ""))
        path = self._confined(folder, name)
        overwrite = fields.get("overwrite", "").lower() in ("true", "1")
        stem, suffix = os.path.splitext(name)
        digest, n = None, 1
        try:
            folder.mkdir(parents=True, exist_ok=True)
            while path.exists() and not overwrite:
                if path.is_file() and path.stat().st_size == len(data):  # only a file of that size can be the same
                    digest = digest or _sha256(data)
                    if _sha256(path.read_bytes()) == digest:
                        return path.name
                path = self._confined(folder, f"{stem} ({n}){suffix}")
                n += 1
            path.write_bytes(data)
        except OSError as exc:  # e.g. a subfolder that names a file
            raise _bad("invalid_filename", f"cannot store {name!r} there: {exc.strerror}", 409)
        return path.name

    # -- system -------------------------------------------------------------------------------
    async def system_stats(self, request):
        import torch

        from .models import ram_free, ram_total

        devices = await self.s.devices()
        from importlib.metadata import PackageNotFoundError, version

        try:
            ours = version("latentgraph")
        except PackageNotFoundError:
            ours = "unknown"
        system = {"os": sys.platform, "ram_total": ram_total(), "ram_free": ram_free(),
                  "comfyui_version": ours, "latentgraph_version": ours, "python_version": sys.version,
                  "pytorch_version": torch.__version__, "embedded_python": False, "argv": redacted_argv(sys.argv),
                  "required_frontend_version": None, "machine": platform.machine(), "pid": os.getpid()}
        q = self.s.queue
        return web.json_response({"system": system, "devices": devices,
                                  "queue": {"pending": len(q.pending()), "running": len(q.running()),
                                            "paused": q.paused}})

    async def free(self, request):
        body = _json_dict(await self._json(request, default={}))
        await self.s.free(bool(body.get("unload_models")), bool(body.get("free_memory")))
        return web.json_response({})

    async def models(self, request):
        root = Path(self.config.models_dir)
        extra = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name not in MODEL_FOLDERS)
        return web.json_response(list(MODEL_FOLDERS) + extra)

    async def models_in(self, request):
        folder = request.match_info["folder"]
        root = Path(self.config.models_dir)
        if folder not in MODEL_FOLDERS and not (root / folder).is_dir():
            raise _bad("unknown_folder", f"no model folder {folder!r}", 404)
        return web.json_response(model_names(self.s.env, self._confined(root, folder), folder))

    async def embeddings(self, request):
        files = model_names(self.s.env, Path(self.config.models_dir) / "embeddings", "embeddings")
        return web.json_response([os.path.splitext(f)[0] for f in files])

    async def extensions(self, request):
        return web.json_response([])

    async def features(self, request):
        return web.json_response({"supports_preview_metadata": True, "max_upload_size": self.config.max_upload_bytes})

    # -- per-user settings (the official frontend needs them to boot) ------------------------
    async def users(self, request):
        return web.json_response({"storage": "server", "migrated": True})

    def _settings_path(self) -> Path:
        return Path(self.config.data_dir) / "settings.json"

    def _load_settings(self) -> dict:
        try:
            return json.loads(self._settings_path().read_text())
        except (OSError, ValueError):
            return {}

    def _save_settings(self, settings: dict) -> None:
        tmp = self._settings_path().with_suffix(".tmp")
        tmp.write_text(json.dumps(settings, indent=1))
        tmp.replace(self._settings_path())

    async def get_settings(self, request):
        return web.json_response(self._load_settings())

    async def post_settings(self, request):
        settings = self._load_settings()
        settings.update(_json_dict(await self._json(request)))
        self._save_settings(settings)
        return web.json_response({})

    async def get_setting(self, request):
        return web.json_response(self._load_settings().get(request.match_info["id"]))

    async def post_setting(self, request):
        settings = self._load_settings()
        settings[request.match_info["id"]] = await self._json(request)
        self._save_settings(settings)
        return web.json_response({})

    # -- shipped workflows and the canvas -----------------------------------------------------
    async def workflows(self, request):
        folder = Path(self.config.workflows_dir)
        names = sorted(p.name for p in folder.glob("*.json")) if folder.is_dir() else []
        return web.json_response(names)

    async def workflow(self, request):
        name = request.match_info["name"]
        path = self._confined(Path(self.config.workflows_dir), name)
        if path.suffix != ".json" or not path.is_file():
            raise _bad("not_found", f"no workflow {name!r}", 404)
        return web.FileResponse(path, headers={"Content-Type": "application/json", "Cache-Control": "no-cache"})

    async def index(self, request):
        index = Path(self.config.web_dir) / "index.html"
        if not index.is_file():
            return web.Response(text="latentgraph API server (web/index.html not found)", content_type="text/plain")
        if reason := canvas_lib.missing(self.config.web_dir):  # say so, rather than a canvas stuck at "connecting…"
            return web.Response(text=canvas_lib.missing_page(reason), status=503, content_type="text/html",
                                headers={"Cache-Control": "no-cache"})
        return web.FileResponse(index, headers={"Cache-Control": "no-cache"})


def _id_list(value) -> list[str]:
    if isinstance(value, list) and len(value) > MAX_QUEUE_IDS:
        raise _too_large("too_many_ids", f"{len(value)} prompt ids in one request; the server takes at most "
                                         f"{MAX_QUEUE_IDS} (send several requests, or use clear)")
    if not isinstance(value, list) or not all(_is_id(v) for v in value):
        raise _bad("invalid_json", "expected a list of prompt ids")
    return [str(v) for v in value]


def _is_id(value) -> bool:
    return isinstance(value, (str, int)) and not isinstance(value, bool)


async def _read_part(request, part, limit: int, timeout: float) -> bytes:
    chunks, size = [], 0
    while chunk := await within(request, timeout, part.read_chunk(256 * 1024)):
        size += len(chunk)
        if size > limit:
            raise _too_large("upload_too_large", f"upload larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _preview_format(preview: str | None) -> tuple[str, int]:
    """`/view?preview=webp;90` or `jpeg;Q` (Q from 1 to 100, default 90) re-encodes; without it, PNG."""
    if not preview:
        return "png", 95
    head, _, quality = preview.partition(";")
    if head not in images.PREVIEW_FORMATS or quality and not (quality.isdecimal() and len(quality) <= 3
                                                              and 1 <= int(quality) <= 100):
        raise _bad("invalid_preview", f"preview must be webp;Q or jpeg;Q with Q from 1 to 100, got {preview!r}")
    return head, int(quality) if quality else 90


@contextmanager
def _image_errors():
    """The HTTP errors for an image the server will not decode (too large) or cannot (not an image)."""
    try:
        yield
    except TooLarge as exc:
        raise _too_large("image_too_large", str(exc)) from None
    except images.NotAnImage as exc:
        raise _bad("invalid_image", str(exc)) from None
