"""What the official ComfyUI frontend needs beyond the core API, and ``--frontend comfyui`` to serve it.

The frontend (pip package ``comfyui-frontend-package``, GPL — never a dependency of ours; users install it
themselves) is a static single-page app. ``latentgraph serve --frontend comfyui`` serves its ``static/`` folder in
place of ``web/``. Besides the routes in server/routes.py it calls (comfyui-compat.md §14):

- ``/userdata`` (saved workflows, per-user files): list, read, write, delete, move; ``/v2/userdata``;
- ``/jobs`` (the queue and history panels; the frontend validates the shape strictly), ``/jobs/{id}``, cancel;
- ``/i18n``, ``/workflow_templates``, ``/global_subgraphs``, ``/experiment/models`` (degrade gracefully);
- ``/templates/index.json``, ``/templates/<name>.json`` and thumbnails: the template browser. Our shipped workflows
  come first, one category per family (server/templates.py); the MIT ``comfyui-workflow-templates-json`` package's
  templates follow when it is installed.

User files live under ``<data>/userdata``; every path is confined to it.
"""
from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import shutil
import time
from pathlib import Path

from aiohttp import web

from nodes.catalog import model_names

from . import templates
from .routes import read_body
from .security import PathError, confined, error_json

FRONTENDS = ("latentgraph", "comfyui")
JOB_STATES = ("pending", "in_progress", "completed", "failed", "cancelled")
# user files are served as these types only (never HTML or script a browser would run), as attachments
USERDATA_TYPES = {".json": "application/json", ".css": "text/plain", ".txt": "text/plain", ".md": "text/plain",
                  ".csv": "text/plain", ".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
                  ".webp": "image/webp"}


# -- command line ------------------------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--frontend", choices=FRONTENDS, default="latentgraph",
                        help="web UI to serve: ours (web/) or the official ComfyUI frontend, if you have installed "
                             "it yourself (pip install comfyui-frontend-package; GPL, not shipped with latentgraph)")
    parser.add_argument("--front-end-root", metavar="DIR", default=None,
                        help="serve the web UI from this folder instead (as ComfyUI's flag of that name)")


def comfyui_static_dir() -> Path:
    """The installed official frontend's static folder; a clear error when it is not installed."""
    try:
        import comfyui_frontend_package
    except ImportError:
        raise SystemExit("--frontend comfyui needs the official frontend: pip install comfyui-frontend-package "
                         "(GPL-3.0, installed separately; latentgraph does not ship it)") from None
    static = Path(comfyui_frontend_package.__file__).parent / "static"
    if not (static / "index.html").is_file():
        raise SystemExit(f"comfyui-frontend-package is installed but {static}/index.html is missing")
    return static


def configure(config, args: argparse.Namespace):
    """Apply ``--frontend`` / ``--front-end-root`` to a server Config: the static root replaces web/."""
    if getattr(args, "front_end_root", None):
        config.web_dir = Path(args.front_end_root)
    elif getattr(args, "frontend", "latentgraph") == "comfyui":
        config.web_dir = comfyui_static_dir()
    return config


# -- routes ------------------------------------------------------------------------------------------------------

def setup(app: web.Application, state) -> None:
    """Register the routes (each also under /api). Call before the static catch-all is added."""
    r = FrontendRoutes(state)
    api = [
        ("GET", "/userdata", r.list_userdata), ("GET", "/v2/userdata", r.list_userdata_v2),
        ("GET", "/userdata/{file}", r.get_userdata), ("POST", "/userdata/{file}", r.post_userdata),
        ("DELETE", "/userdata/{file}", r.delete_userdata),
        ("POST", "/userdata/{file}/move/{dest}", r.move_userdata),
        ("GET", "/jobs", r.jobs), ("GET", "/jobs/{job_id}", r.job), ("POST", "/jobs/{job_id}/cancel", r.cancel_job),
        ("GET", "/i18n", r.empty_object), ("GET", "/workflow_templates", r.empty_object),
        ("GET", "/global_subgraphs", r.empty_object),
        ("GET", "/experiment/models", r.model_folders), ("GET", "/experiment/models/{folder}", r.model_files),
    ]
    for method, path, handler in api:
        app.router.add_route(method, path, handler)
        app.router.add_route(method, "/api" + path, handler)
    app.router.add_get("/templates/{name}", r.template)
    app.router.add_get("/internal/folder_paths", r.folder_paths)
    app.router.add_get("/user.css", r.user_css)


def _templates_dir() -> Path | None:
    try:
        import comfyui_workflow_templates_json as pkg
    except ImportError:
        return None
    return Path(pkg.__file__).parent / "templates"


@functools.cache
def _package_index() -> list:
    """The template package's own index (read once: an installed package does not change)."""
    folder = _templates_dir()
    index = folder / "index.json" if folder else None
    return json.loads(index.read_text()) if index and index.is_file() else []


def _flag(request: web.Request, name: str) -> bool:
    return request.query.get(name, "").lower() in ("true", "1")


class FrontendRoutes:
    def __init__(self, state):
        self.s = state

    # -- user data -----------------------------------------------------------------------------------------------
    @property
    def root(self) -> Path:
        root = Path(self.s.config.data_dir) / "userdata"
        (root / "workflows").mkdir(parents=True, exist_ok=True)  # where both frontends save workflows
        return root

    def _path(self, rel: str) -> Path:
        try:
            return confined(self.root, rel)
        except PathError as exc:
            raise web.HTTPForbidden(text=json.dumps({"error": {"type": "forbidden_path", "message": str(exc)}}),
                                    content_type="application/json")

    def _info(self, path: Path, split: bool = False) -> dict:
        rel = path.relative_to(self.root).as_posix()
        st = path.stat()
        return {"path": rel.split("/") if split else rel, "size": st.st_size, "modified": st.st_mtime,
                "created": st.st_ctime}

    async def list_userdata(self, request):
        """Files under a user-data folder (`dir`), relative to it; `full_info` adds size and times."""
        folder = self._path(request.query.get("dir", ""))
        if not folder.is_dir():
            return error_json(404, "not_found", f"no user-data folder {request.query.get('dir', '')!r}")
        pattern = "**/*" if _flag(request, "recurse") else "*"
        files = sorted(p for p in folder.glob(pattern) if p.is_file())
        split, full = _flag(request, "split"), _flag(request, "full_info")
        out = []
        for p in files:
            rel = p.relative_to(folder).as_posix()
            if full:
                out.append({**self._info(p), "path": rel.split("/") if split else rel})
            else:
                out.append([rel, *rel.split("/")] if split else rel)
        return web.json_response(out)

    async def list_userdata_v2(self, request):
        folder = self._path(request.query.get("path", ""))
        if not folder.is_dir():
            return error_json(404, "not_found", f"no user-data folder {request.query.get('path', '')!r}")
        out = []
        for p in sorted(folder.iterdir()):
            entry = {"name": p.name, "path": p.relative_to(self.root).as_posix(),
                     "type": "directory" if p.is_dir() else "file"}
            if p.is_file():
                entry.update(size=p.stat().st_size, modified=p.stat().st_mtime)
            out.append(entry)
        return web.json_response(out)

    async def get_userdata(self, request):
        path = self._path(request.match_info["file"])
        if not path.is_file():
            return error_json(404, "not_found", f"no user file {request.match_info['file']!r}")
        ctype = USERDATA_TYPES.get(path.suffix.lower(), "application/octet-stream")
        return web.FileResponse(path, headers={"Cache-Control": "no-cache", "Content-Type": ctype,
                                               "Content-Disposition": "attachment",
                                               "X-Content-Type-Options": "nosniff"})

    async def post_userdata(self, request):
        """Write a user file; refuses to replace one unless ``overwrite`` is not false (409, as ComfyUI)."""
        path = self._path(request.match_info["file"])
        if path.exists() and request.query.get("overwrite", "true").lower() == "false":
            return error_json(409, "file_exists", f"{request.match_info['file']!r} already exists")
        if path.is_dir():
            return error_json(400, "is_a_directory", f"{request.match_info['file']!r} is a folder")
        config = self.s.config
        data = await read_body(request, config.max_body_bytes, config.read_timeout)
        tmp = path.with_name(path.name + ".part")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(data)
            os.replace(tmp, path)
        except OSError as exc:  # e.g. `a.json/x` where a.json is a file
            return error_json(409, "cannot_write", f"cannot write {request.match_info['file']!r}: {exc.strerror}")
        return web.json_response(self._info(path) if _flag(request, "full_info") else
                                 path.relative_to(self.root).as_posix())

    async def delete_userdata(self, request):
        path = self._path(request.match_info["file"])
        if not path.is_file():
            return error_json(404, "not_found", f"no user file {request.match_info['file']!r}")
        path.unlink()
        return web.Response(status=204)

    async def move_userdata(self, request):
        source, dest = self._path(request.match_info["file"]), self._path(request.match_info["dest"])
        if not source.is_file():
            return error_json(404, "not_found", f"no user file {request.match_info['file']!r}")
        if dest.exists() and request.query.get("overwrite", "true").lower() == "false":
            return error_json(409, "file_exists", f"{request.match_info['dest']!r} already exists")
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(source, dest)
        except OSError as exc:
            return error_json(409, "cannot_write", f"cannot move to {request.match_info['dest']!r}: {exc.strerror}")
        return web.json_response(self._info(dest) if _flag(request, "full_info") else
                                 dest.relative_to(self.root).as_posix())

    # -- jobs (the queue and history panels) ---------------------------------------------------------------------
    def _all_jobs(self) -> list[dict]:
        q = self.s.queue
        running = [_queued_job(i, "in_progress") for i in q.running()]
        pending = [_queued_job(i, "pending") for i in q.pending()]
        done = [_finished_job(e) for e in reversed(q.history())]  # newest first, as ComfyUI lists them
        return running + pending + done

    async def jobs(self, request):
        wanted = [s for s in request.query.get("status", "").split(",") if s] or list(JOB_STATES)
        unknown = [s for s in wanted if s not in JOB_STATES]
        if unknown:
            return error_json(400, "invalid_query", f"unknown job status {', '.join(unknown)}; one of {JOB_STATES}")
        try:
            limit = int(request.query.get("limit", 200))
            offset = int(request.query.get("offset", 0))
        except ValueError:
            return error_json(400, "invalid_query", "limit and offset must be integers")
        jobs = [j for j in self._all_jobs() if j["status"] in wanted]
        page = [{k: v for k, v in j.items() if k not in _DETAIL_ONLY} for j in jobs[offset:offset + max(limit, 0)]]
        return web.json_response({"jobs": page, "pagination": {"offset": offset, "limit": limit, "total": len(jobs),
                                                               "has_more": offset + len(page) < len(jobs)}})

    async def job(self, request):
        job_id = request.match_info["job_id"]
        q = self.s.queue
        state = q.state_of(job_id)  # one row, not every job
        if state == "done":
            found = _finished_job(q.history_item(job_id))
        else:
            items = q.pending() if state == "pending" else q.running() if state == "running" else []
            status = "in_progress" if state == "running" else "pending"
            found = next((_queued_job(i, status) for i in items if i.prompt_id == job_id), None)
        if found is None:
            return error_json(404, "not_found", f"no job {job_id!r}")
        return web.json_response(found)

    async def cancel_job(self, request):
        """Pending: removed from the queue; running: interrupted."""
        job_id = request.match_info["job_id"]
        state = self.s.queue.state_of(job_id)
        if state == "pending":
            self.s.queue.delete([job_id], "pending")
            self.s.queue_changed()
        elif state == "running":
            await self.s.interrupt(job_id)
        else:
            return error_json(404, "not_found", f"no pending or running job {job_id!r}")
        return web.json_response({"id": job_id, "cancelled": True})

    # -- small extras ----------------------------------------------------------------------------------------------
    async def empty_object(self, request):
        return web.json_response({})

    def _model_folders(self) -> dict[str, str]:
        root = Path(self.s.config.models_dir)
        folders = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        return {p.name: str(p.resolve()) for p in folders}

    async def model_folders(self, request):
        return web.json_response([{"name": n, "folders": [p]} for n, p in self._model_folders().items()])

    async def model_files(self, request):
        root = Path(self.s.config.models_dir)
        try:
            folder = confined(root, request.match_info["folder"])
        except PathError as exc:
            return error_json(403, "forbidden_path", str(exc))
        if not folder.is_dir():
            return error_json(404, "not_found", f"no model folder {request.match_info['folder']!r}")
        files = model_names(self.s.env, folder, request.match_info["folder"])
        return web.json_response([{"name": f, "pathIndex": 0} for f in files])

    async def folder_paths(self, request):
        """{folder: [absolute path]} for each model folder (the model library shows where files go)."""
        return web.json_response({n: [p] for n, p in self._model_folders().items()})

    async def user_css(self, request):
        """The user's style overrides (userdata/user.css), empty when there are none."""
        path = self.root / "user.css"
        text = path.read_text() if path.is_file() else ""
        return web.Response(text=text, content_type="text/css", headers={"Cache-Control": "no-cache"})

    async def template(self, request):
        """Template browser files: the shipped workflows and their thumbnails, then the MIT template package's."""
        name = request.match_info["name"]
        shipped = Path(self.s.config.workflows_dir)
        folder = _templates_dir()
        if name == "index.json":
            return web.json_response(templates.index(shipped) + _package_index(), headers={"Cache-Control": "no-cache"})
        found = templates.find(shipped, name)
        if found and found[0] == "json":
            return web.FileResponse(found[1], headers={"Content-Type": "application/json", "Cache-Control": "no-cache"})
        if found:
            data = await asyncio.get_running_loop().run_in_executor(None, templates.thumbnail, found[1])
            return web.Response(body=data, content_type="image/webp", headers={"Cache-Control": "no-cache"})
        if folder is None:
            return error_json(404, "not_found", f"no template {name!r} (more: pip install comfyui-workflow-templates-json)")
        try:
            path = confined(folder, name)
        except PathError as exc:
            return error_json(403, "forbidden_path", str(exc))
        if not path.is_file():
            return error_json(404, "not_found", f"no template file {name!r}")
        return web.FileResponse(path, headers={"Cache-Control": "no-cache"})


_DETAIL_ONLY = ("workflow", "outputs", "execution_status", "update_time")


def _ms(t: float | None) -> int | None:
    return None if t is None else int(t * 1000)


def _workflow_id(extra) -> str | None:
    """The id of the UI workflow a prompt came from; None when it carries none (stored rows are read as they
    are: an older server accepted any JSON in extra_pnginfo)."""
    pnginfo = extra.get("extra_pnginfo") if isinstance(extra, dict) else None
    workflow = pnginfo.get("workflow") if isinstance(pnginfo, dict) else None
    value = workflow.get("id") if isinstance(workflow, dict) else None
    return str(value) if value is not None else None


def _queued_job(item, status: str) -> dict:
    return {"id": item.prompt_id, "status": status, "create_time": _ms(item.created) or 0,
            "execution_start_time": None, "execution_end_time": None, "preview_output": None,
            "outputs_count": 0, "previewable_outputs_count": 0, "execution_error": None,
            "workflow_id": _workflow_id(item.extra_data), "priority": item.number,
            "workflow": {"prompt": item.prompt, "extra_data": item.extra_data}, "outputs": {},
            "update_time": _ms(item.created) or 0}


def _finished_job(entry) -> dict:
    messages = entry.status.get("messages") or []
    events = {name: data for name, data in messages if isinstance(data, dict)}
    if entry.status.get("status_str") == "success":
        status = "completed"
    elif "execution_interrupted" in events:
        status = "cancelled"
    else:
        status = "failed"
    files = [(node_id, kind, f) for node_id, ui in entry.outputs.items() if isinstance(ui, dict)
             for kind, items in ui.items() if isinstance(items, list) for f in items]
    previews = [(n, k, f) for n, k, f in files if k in ("images", "video", "audio") and isinstance(f, dict)]
    preview = None
    if previews:
        node_id, kind, f = previews[-1]
        preview = {**f, "nodeId": str(node_id), "mediaType": kind}
    error = events.get("execution_error")
    item = entry.item
    return {"id": item.prompt_id, "status": status, "create_time": _ms(item.created) or 0,
            "execution_start_time": _ms(entry.started), "execution_end_time": _ms(entry.finished),
            "preview_output": preview, "outputs_count": len(files), "previewable_outputs_count": len(previews),
            "execution_error": _error(error) if error else None, "workflow_id": _workflow_id(item.extra_data),
            "priority": item.number, "workflow": {"prompt": item.prompt, "extra_data": item.extra_data},
            "outputs": entry.outputs, "execution_status": entry.status,
            "update_time": _ms(entry.finished or time.time())}


def _error(data: dict) -> dict:
    """The execution_error payload with the keys the frontend requires present."""
    return {"node_id": str(data.get("node_id", "")), "node_type": str(data.get("node_type", "")),
            "exception_message": str(data.get("exception_message", "")),
            "exception_type": str(data.get("exception_type", "")),
            "traceback": [str(t) for t in data.get("traceback") or []],
            **{k: data[k] for k in ("prompt_id", "timestamp", "executed", "current_inputs", "current_outputs")
               if k in data}}
