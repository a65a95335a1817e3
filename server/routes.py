"""HTTP routes, ComfyUI-compatible: every API route is served under ``/path`` and ``/api/path``.

Extensions over ComfyUI (clients that don't know them are unaffected):
- ``POST /prompt`` also takes a UI-format workflow (as ``prompt``, or as the whole body; converted here) and a
  PNG with an embedded workflow (``Content-Type: image/png``, optional ``?client_id=``).
- ``POST /queue`` also takes ``{"requeue": [ids]}`` (run finished prompts again, e.g. those cut off by a restart)
  and ``{"pause": true|false}``; ``GET /queue`` adds ``"paused"``.
- ``GET /workflows`` lists the shipped workflows, ``GET /workflows/{name}`` serves one.
- ``POST /prompt`` answers ``"migrated"`` when nodes saved with older versions were brought up to date
  (server/migrations.py), and refuses newer ones (``newer_node_version``).
- ``POST /workflow/open`` (what the canvas asks when it opens a file): ``{"workflow": UI or API JSON,
  "latentgraph": the image's provenance record}`` → the workflow migrated, what changed (``migrated``), and the
  model files that differ here from those the image was made with (``mismatches``, server/provenance.py).
"""
from __future__ import annotations

import asyncio
import hashlib
import io
import json
import mimetypes
import os
import platform
import sys
import uuid
from pathlib import Path
from urllib.parse import quote

from aiohttp import web

from nodes.catalog import MODEL_FOLDERS, model_names

from . import canvas_lib
from .security import PathError, confined, error_json

FILE_TYPES = ("output", "input", "temp")
FIELD_LIMIT = 64 * 1024


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
        ("POST", "/workflow/open", r.open_workflow),
        ("GET", "/ws", state.hub.handle),
    ]
    for method, path, handler in api:
        app.router.add_route(method, path, handler)
        app.router.add_route(method, "/api" + path, handler)
    app.router.add_get("/", r.index)
    web_dir = Path(state.config.web_dir)
    if web_dir.is_dir():
        app.router.add_static("/", web_dir, follow_symlinks=False)


async def read_json(request: web.Request, default=None):
    """The JSON body, or a 400 naming what is wrong with it. An empty body gives `default`."""
    raw = await request.read()
    if not raw.strip():
        if default is not None:
            return default
        raise _bad("invalid_json", "the request body is empty; JSON was expected")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _bad("invalid_json", f"the request body is not valid JSON: {exc}")


def _bad(type_: str, message: str, status: int = 400) -> web.HTTPException:
    body = {"error": {"type": type_, "message": message, "details": "", "extra_info": {}}, "node_errors": {}}
    cls = {400: web.HTTPBadRequest, 403: web.HTTPForbidden, 404: web.HTTPNotFound}[status]
    return cls(text=json.dumps(body), content_type="application/json")


def _json_dict(body, what: str = "request body") -> dict:
    if not isinstance(body, dict):
        raise _bad("invalid_json", f"the {what} must be a JSON object")
    return body


def _int_query(request: web.Request, name: str, default: int | None) -> int | None:
    value = request.query.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise _bad("invalid_query", f"{name} must be an integer, got {value!r}")


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
        from .graph import is_serverless_envelope, load_prompt, validate
        from .migrations import NewerVersion

        if request.content_type == "image/png":  # a PNG with its embedded workflow, as the canvas would load it
            body = {"prompt": _png_workflow(await request.read()), "client_id": request.query.get("client_id")}
        else:
            body = _json_dict(await read_json(request))
        graph = body.get("prompt")
        if graph is None and ("nodes" in body or is_serverless_envelope(body)):
            graph, body = body, {}  # a bare UI workflow as the whole body (or an envelope, which load_prompt names)
        if graph is None:
            return error_json(400, "no_prompt", "No prompt provided")
        migrated: list[str] = []
        try:
            prompt, workflow = load_prompt(graph, self.s.registry, migrated)
        except NewerVersion as exc:
            return error_json(400, "newer_node_version", str(exc))
        except (ValueError, KeyError, TypeError) as exc:
            return error_json(400, "invalid_prompt", f"Cannot read the prompt: {exc}")
        extra = body.get("extra_data") or {}
        if not isinstance(extra, dict):
            return error_json(400, "invalid_prompt", "extra_data must be a JSON object")
        if body.get("client_id"):
            extra["client_id"] = str(body["client_id"])
        if workflow is not None:  # converted here: outputs embed it as it runs, migrated to today's versions
            pnginfo = extra.setdefault("extra_pnginfo", {})
            if isinstance(pnginfo, dict):
                pnginfo["workflow"] = workflow
        targets = body.get("partial_execution_targets")
        if targets is not None and (not isinstance(targets, list) or not all(isinstance(t, (str, int)) for t in targets)):
            return error_json(400, "invalid_prompt", "partial_execution_targets must be a list of node ids")
        result = validate(prompt, self.s.registry, self.s.env,
                          outputs=[str(t) for t in targets] if targets is not None else None)
        if not result.ok:
            return web.json_response({"error": result.error, "node_errors": result.node_errors}, status=400)
        prompt_id = body.get("prompt_id") or str(uuid.uuid4())
        number = body.get("number")
        if not isinstance(prompt_id, str) or (number is not None and not isinstance(number, (int, float))):
            return error_json(400, "invalid_prompt", "prompt_id must be a string and number a number")
        ticket = self.s.queue.add(prompt_id, prompt, extra, list(result.outputs), number=number,
                                  front=bool(body.get("front")))
        await self.s.committed()  # acknowledged only once on disk
        if ticket.duplicate:
            return error_json(400, "duplicate_prompt_id", f"prompt id {prompt_id!r} is already queued or in history")
        self.s.queue_changed()
        answer = {"prompt_id": prompt_id, "number": ticket.number, "node_errors": result.node_errors}
        if migrated:
            answer["migrated"] = migrated
        return web.json_response(answer)

    # -- queue --------------------------------------------------------------------------------
    async def get_queue(self, request):
        q = self.s.queue
        return web.json_response({"queue_running": [i.as_list() for i in q.running()],
                                  "queue_pending": [i.as_list() for i in q.pending()], "paused": q.paused})

    async def post_queue(self, request):
        body = _json_dict(await read_json(request))
        q = self.s.queue
        result = {}
        if body.get("clear"):
            result["cleared"] = q.clear("pending")
        if "delete" in body:
            result["deleted"] = q.delete(_id_list(body["delete"]), "pending")
        if "requeue" in body:
            ids = _id_list(body["requeue"])
            missing = [pid for pid in ids if not q.requeue(pid)]
            if missing:
                return error_json(404, "unknown_prompt_id", f"not in history: {', '.join(missing)}")
            result["requeued"] = len(ids)
        if "pause" in body:
            q.set_paused(bool(body["pause"]))
            result["paused"] = q.paused
        self.s.queue_changed()
        return web.json_response(result)

    async def interrupt(self, request):
        body = _json_dict(await read_json(request, default={}))
        prompt_id = body.get("prompt_id")
        return web.json_response({"interrupted": await self.s.interrupt(prompt_id)})

    # -- history ------------------------------------------------------------------------------
    async def get_history(self, request):
        max_items = _int_query(request, "max_items", None)
        offset = _int_query(request, "offset", -1)
        entries = self.s.queue.history(max_items, offset)
        return web.json_response({e.item.prompt_id: e.as_dict() for e in entries})

    async def get_history_item(self, request):
        entry = self.s.queue.history_item(request.match_info["prompt_id"])
        return web.json_response({entry.item.prompt_id: entry.as_dict()} if entry else {})

    async def post_history(self, request):
        body = _json_dict(await read_json(request))
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
            data, ctype = await _reencode(request, path, preview, channel)
            return web.Response(body=data, content_type=ctype, headers={"Cache-Control": "public, max-age=86400"})
        ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        if not ctype.startswith(("image/", "video/", "audio/")):  # never let a browser render HTML/JS from here
            ctype = "application/octet-stream"
        return web.FileResponse(path, headers={"Content-Type": ctype, "Cache-Control": "public, max-age=86400",
                                               "Content-Disposition": f"inline; filename*=UTF-8''{quote(path.name)}",
                                               "X-Content-Type-Options": "nosniff"})

    async def upload_image(self, request):
        fields, filename, data = await self._read_upload(request)
        path, name = self._place_upload(fields, filename, data)
        if path is not None:
            path.write_bytes(data)
        return web.json_response({"name": name, "subfolder": fields.get("subfolder", ""),
                                  "type": fields.get("type", "input")})

    async def upload_mask(self, request):
        from PIL import Image

        fields, filename, data = await self._read_upload(request)
        try:
            ref = json.loads(fields.get("original_ref", ""))
            ref_path = self._confined(self._folder(ref.get("type", "output")), ref.get("subfolder", ""),
                                      ref["filename"])
        except (ValueError, KeyError, TypeError, AttributeError):
            raise _bad("invalid_original_ref", "original_ref must be JSON {filename, subfolder, type}")
        if not ref_path.is_file():
            raise _bad("not_found", f"original image {ref['filename']!r} not found", 404)
        with Image.open(ref_path) as original, Image.open(io.BytesIO(data)) as mask:
            merged = original.convert("RGBA")
            merged.putalpha(mask.convert("RGBA").getchannel("A").resize(merged.size))
            buf = io.BytesIO()
            merged.save(buf, format="PNG")
        data = buf.getvalue()
        fields.setdefault("overwrite", "true")
        path, name = self._place_upload(fields, filename, data)
        if path is not None:
            path.write_bytes(data)
        return web.json_response({"name": name, "subfolder": fields.get("subfolder", ""),
                                  "type": fields.get("type", "input")})

    async def _read_upload(self, request) -> tuple[dict, str, bytes]:
        limit = self.config.max_upload_bytes
        if request.content_length is not None and request.content_length > limit + FIELD_LIMIT:
            raise _too_large(limit)
        try:
            reader = await request.multipart()
        except (AssertionError, ValueError, KeyError):
            raise _bad("invalid_upload", "expected a multipart/form-data body with an `image` file")
        fields: dict[str, str] = {}
        filename, data = None, None
        while (part := await reader.next()) is not None:
            if part.name == "image":
                filename = part.filename
                data = await _read_part(part, limit)
            else:
                fields[part.name or ""] = (await _read_part(part, FIELD_LIMIT)).decode("utf-8", "replace")
        if data is None or not filename:
            raise _bad("invalid_upload", "the multipart body has no `image` file")
        _check_image(data)
        return fields, filename, data

    def _place_upload(self, fields: dict, filename: str, data: bytes) -> tuple[Path | None, str]:
        """Where an upload goes: reuse an identical file, else a free `name (n).ext` unless overwrite is set."""
        name = os.path.basename(filename.replace("\\", "/"))
        if not name or name.startswith("."):
            raise _bad("invalid_filename", f"bad upload file name {filename!r}")
        base = self._folder(fields.get("type", "input"))
        folder = self._confined(base, fields.get("subfolder", ""))
        folder.mkdir(parents=True, exist_ok=True)
        path = self._confined(folder, name)
        overwrite = fields.get("overwrite", "").lower() in ("true", "1")
        stem, suffix = os.path.splitext(name)
        n = 1
        while path.exists() and not overwrite:
            if path.is_file() and _sha256(path.read_bytes()) == _sha256(data):
                return None, path.name
            path = self._confined(folder, f"{stem} ({n}){suffix}")
            n += 1
        return path, path.name

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
                  "pytorch_version": torch.__version__, "embedded_python": False, "argv": sys.argv,
                  "required_frontend_version": None, "machine": platform.machine(), "pid": os.getpid()}
        q = self.s.queue
        return web.json_response({"system": system, "devices": devices,
                                  "queue": {"pending": len(q.pending()), "running": len(q.running()),
                                            "paused": q.paused}})

    async def free(self, request):
        body = _json_dict(await read_json(request, default={}))
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
        settings.update(_json_dict(await read_json(request)))
        self._save_settings(settings)
        return web.json_response({})

    async def get_setting(self, request):
        return web.json_response(self._load_settings().get(request.match_info["id"]))

    async def post_setting(self, request):
        settings = self._load_settings()
        settings[request.match_info["id"]] = await read_json(request)
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

    async def open_workflow(self, request):
        from .graph import load_prompt
        from .migrations import NewerVersion
        from .provenance import mismatches

        body = _json_dict(await read_json(request))
        graph, migrated = body.get("workflow"), []
        try:
            load_prompt(graph, self.s.registry, migrated)  # migrates `graph` in place
        except NewerVersion as exc:
            return error_json(400, "newer_node_version", str(exc))
        except (ValueError, KeyError, TypeError) as exc:
            return error_json(400, "invalid_prompt", f"Cannot read the workflow: {exc}")
        record = body.get("latentgraph")
        if record is not None and not isinstance(record, dict):
            return error_json(400, "invalid_provenance", "latentgraph must be the image's provenance record (object)")
        problems = await asyncio.get_running_loop().run_in_executor(  # hashing a new file takes a while
            None, mismatches, record, self.s.registry, self.s.env, self.s.hashes)
        return web.json_response({"workflow": graph, "migrated": migrated, "mismatches": problems})

    async def index(self, request):
        index = Path(self.config.web_dir) / "index.html"
        if not index.is_file():
            return web.Response(text="latentgraph API server (web/index.html not found)", content_type="text/plain")
        if reason := canvas_lib.missing(self.config.web_dir):  # say so, rather than a canvas stuck at "connecting…"
            return web.Response(text=canvas_lib.missing_page(reason), status=503, content_type="text/html",
                                headers={"Cache-Control": "no-cache"})
        return web.FileResponse(index, headers={"Cache-Control": "no-cache"})


def _png_workflow(data: bytes):
    """The `workflow` (UI) or else `prompt` (API) JSON that SaveImage embeds in its PNGs."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            text = dict(getattr(img, "text", None) or {})
    except (UnidentifiedImageError, OSError, SyntaxError):
        raise _bad("invalid_image", "the request body is not a readable PNG")
    for key in ("workflow", "prompt"):
        if key in text:
            try:
                return json.loads(text[key])
            except ValueError:
                raise _bad("invalid_json", f"the PNG's {key!r} text chunk is not valid JSON")
    raise _bad("no_prompt", "the PNG carries no 'workflow' or 'prompt' text chunk")


def _id_list(value) -> list[str]:
    if not isinstance(value, list):
        raise _bad("invalid_json", "expected a list of prompt ids")
    return [str(v) for v in value]


def _too_large(limit: int) -> web.HTTPException:
    body = {"error": {"type": "upload_too_large", "message": f"upload larger than {limit} bytes",
                      "details": "", "extra_info": {}}, "node_errors": {}}
    return web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=limit + 1, text=json.dumps(body),
                                         content_type="application/json")


async def _read_part(part, limit: int) -> bytes:
    chunks, size = [], 0
    while chunk := await part.read_chunk(256 * 1024):
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _check_image(data: bytes) -> None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.verify()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise _bad("invalid_image", "the uploaded file is not an image PIL can read")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def _reencode(request, path: Path, preview: str | None, channel: str) -> tuple[bytes, str]:
    """`/view?preview=webp;90` or `jpeg;Q` re-encodes; `channel=rgb|a` picks channels. Done off the loop."""
    from PIL import Image

    fmt, quality = "png", 95
    if preview:
        head, _, q = preview.partition(";")
        if head not in ("webp", "jpeg"):
            raise _bad("invalid_preview", f"preview must be webp;Q or jpeg;Q, got {preview!r}")
        fmt, quality = head, int(q) if q.isdigit() else 90
    if channel not in ("rgba", "rgb", "a"):
        raise _bad("invalid_channel", f"channel must be rgba, rgb or a, got {channel!r}")

    def work() -> bytes:
        with Image.open(path) as img:
            img = img.convert("RGBA")
            if channel == "rgb" or fmt == "jpeg":
                img = img.convert("RGB")
            if channel == "a":
                alpha = img.getchannel("A")
                img = Image.new("RGBA", img.size, (0, 0, 0, 0))
                img.putalpha(alpha)
            buf = io.BytesIO()
            img.save(buf, format=fmt.upper(), **({"quality": quality} if fmt != "png" else {}))
            return buf.getvalue()

    try:
        data = await asyncio.get_running_loop().run_in_executor(None, work)
    except (OSError, ValueError):
        raise _bad("invalid_image", f"{path.name} is not an image that can be re-encoded")
    return data, f"image/{fmt}"
