"""Provenance: which exact models made an output.

Every model file a prompt loads (an input declared with ``Input(model_folder=...)``) is identified by the SHA-256
of its file, and by the AutoV2 short hash model sites show (its first 10 hex digits). Outputs carry the record in a
``latentgraph`` PNG text chunk, with the latentgraph version and each node type's version; the history entry
keeps the same record (``meta.latentgraph``):

    {"version": "0.1.0", "nodes": {"CheckpointLoaderSimple": "1.0.0", ...},
     "models": [{"node": "4", "class_type": "CheckpointLoaderSimple", "input": "ckpt_name",
                 "name": "sd_xl_base_1.0.safetensors", "sha256": "31e35c80fc...", "autov2": "31e35c80fc"}]}

Hashing a 7 GB checkpoint takes tens of seconds, so it is done once: on a background thread while the prompt
runs (an output waits for it only if it is written first), and remembered in <data>/model_hashes.json by (path,
size, modification time), across restarts. A diffusers folder's hash is the SHA-256 of its files' ``sha256sum``
lines, sorted by path. ``mismatches`` compares a record with the local files (``latentgraph run IMAGE.png``,
the canvas when an image is dropped on it).
"""
from __future__ import annotations

import concurrent.futures
import functools
import hashlib
import json
import os
import tempfile
import threading
from typing import Any

from nodes.node import Environment, NodeSpec

AUTOV2_DIGITS = 10


@functools.cache
def latentgraph_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("latentgraph")
    except PackageNotFoundError:
        return "unknown"


class HashCache:
    """SHA-256 of model files and folders, computed on background threads one file at a time and remembered by
    (path, size, mtime) in a JSON file (none: in memory only). ``bytes_hashed`` counts what was read to hash."""

    def __init__(self, path: str | None = None):
        self.path = path
        self._known: dict[str, dict] = self._load()
        self._lock = threading.Lock()          # guards _pending
        self._one_at_a_time = threading.Lock()  # one file read at a time; guards _known
        self._pending: dict[str, concurrent.futures.Future] = {}
        self.bytes_hashed = 0

    def submit(self, path: str) -> concurrent.futures.Future:
        """A future of the SHA-256 of the file or folder at `path`, computed on a daemon thread (a process that
        ends does not wait for it) unless already under way."""
        path = os.path.abspath(path)
        with self._lock:
            future = self._pending.get(path)
            if future is None or future.done():  # done: look again, the file may have changed since
                future = self._pending[path] = concurrent.futures.Future()
                threading.Thread(target=self._resolve, args=(path, future), name="model-hash", daemon=True).start()
            return future

    def sha256(self, path: str) -> str:
        return self.submit(path).result()

    def _resolve(self, path: str, future: concurrent.futures.Future) -> None:
        with self._one_at_a_time:
            try:
                future.set_result(self._digest(path))
            except OSError as exc:
                future.set_exception(exc)

    def _digest(self, path: str) -> str:
        if not os.path.isdir(path):
            return self._file(path)
        files = []
        for here, _, names in os.walk(path, followlinks=True):
            files += [os.path.join(here, name) for name in names]
        digests = sorted((os.path.relpath(f, path).replace(os.sep, "/"), self._file(f)) for f in files)
        return hashlib.sha256("".join(f"{digest}  {rel}\n" for rel, digest in digests).encode()).hexdigest()

    def _file(self, path: str) -> str:
        st = os.stat(path)
        for look in (self._known, self._load()):  # then what other processes (the executor's, the CLI) stored
            entry = look.get(path)
            if isinstance(entry, dict) and entry.get("size") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns:
                self._known[path] = entry
                return entry["sha256"]
        with open(path, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()  # releases the GIL while it reads and hashes
        self.bytes_hashed += st.st_size
        self._known[path] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
        self._save(path)
        return digest

    def _load(self) -> dict[str, dict]:
        try:
            with open(self.path, encoding="utf-8") as f:
                known = json.load(f)
            return known if isinstance(known, dict) else {}
        except (TypeError, OSError, ValueError):  # no path, no file yet, or a damaged one: hash again
            return {}

    def _save(self, changed: str) -> None:
        """Merge into the file (another process may have added entries) and replace it whole."""
        if self.path is None:
            return
        known = {**self._load(), changed: self._known[changed]}
        folder = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(folder, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=folder, delete=False, suffix=".tmp", encoding="utf-8") as f:
            json.dump(known, f, indent=0)
        os.replace(f.name, self.path)


class RunModels:
    """The model files one run loads, their hashes under way from the start of the run."""

    def __init__(self, order: dict[str, Any], env: Environment, hashes: HashCache):
        """`order`: the run's planned nodes by id (each with its ``spec`` and constant inputs ``consts``)."""
        self.versions = {item.spec.type_name: item.spec.version for item in order.values()}
        self.models = []
        for node_id, item in order.items():
            if item.spec.model_inputs:
                for name, path in item.spec.model_files(item.consts, env).items():
                    entry = {"node": node_id, "class_type": item.spec.type_name, "input": name,
                             "name": item.consts[name]}
                    self.models.append((entry, hashes.submit(path) if os.path.exists(path) else None))

    def record(self, wait: bool) -> dict:
        """The provenance record; with `wait`, once every hash is done (else those not done yet are None)."""
        models = []
        for entry, future in self.models:
            digest = None
            if future is not None and (wait or future.done()):
                try:
                    digest = future.result()
                except OSError as exc:
                    entry = {**entry, "error": str(exc)}
            models.append({**entry, "sha256": digest, "autov2": digest[:AUTOV2_DIGITS] if digest else None})
        return {"version": latentgraph_version(), "nodes": self.versions, "models": models}


def mismatches(record: Any, registry: dict[str, NodeSpec], env: Environment, hashes: HashCache,
               prompt: dict | None = None) -> list[str]:
    """Where the local model files differ from those a record names, one line each naming the node and the file.
    Given the prompt about to run, a node that now names another file than the recorded one is not compared."""
    problems = []
    models = record.get("models") if isinstance(record, dict) else None
    for model in models if isinstance(models, list) else []:
        keys = ("node", "class_type", "input", "name", "sha256")
        fields = [model.get(k) for k in keys] if isinstance(model, dict) else []
        if not fields or not all(isinstance(f, str) for f in fields):
            continue  # not a model entry this version writes: nothing to compare
        node_id, kind, field, name, _ = fields
        spec = registry.get(kind)
        if spec is None or (prompt is not None and _input(prompt, node_id, field) != name):
            continue
        where = f"node {node_id} ({kind}) {field} {name!r}"
        path = spec.model_files({field: name}, env).get(field)
        if path is None or not os.path.exists(path):
            problems.append(f"{where}: the file is missing here (the image was made with sha256 {model['sha256']})")
            continue
        try:
            local = hashes.sha256(path)
        except OSError as exc:
            problems.append(f"{where}: the file cannot be read here ({exc})")
            continue
        if local != model["sha256"]:
            problems.append(f"{where}: the file differs here (sha256 {local}; the image was made with "
                            f"{model['sha256']})")
    return problems


def _input(prompt: dict, node_id: Any, name: Any) -> Any:
    node = prompt.get(node_id)
    inputs = node.get("inputs") if isinstance(node, dict) else None
    return inputs.get(name) if isinstance(inputs, dict) else None
