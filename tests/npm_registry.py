"""A stand-in npm registry on 127.0.0.1 for the canvas library, so tests of fetching it never leave the machine: it
serves a tarball packed from web/node_modules (the files the canvas needs, under npm's `package/` prefix), and gives
the sha512 integrity to pin in a copy of web/package-lock.json."""
from __future__ import annotations

import base64
import functools
import hashlib
import http.server
import io
import json
import shutil
import tarfile
import threading
from contextlib import contextmanager
from pathlib import Path

from server.canvas_lib import FILES, NAME, PACKAGE, WEB_FILES, pinned

REPO = Path(__file__).resolve().parents[1]
WEB = REPO / "web"


def copy_web_without_library(dest: Path) -> Path:
    """The canvas's files as a checkout without `npm ci` has them."""
    for pattern in WEB_FILES:
        for path in WEB.glob(pattern):
            (dest / path.relative_to(WEB)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest / path.relative_to(WEB))
    return dest


def pin(web: Path, integrity: str) -> None:
    """Pin `integrity` for the library in web/package-lock.json."""
    lock_path = web / "package-lock.json"
    lock = json.loads(lock_path.read_text())
    lock["packages"][PACKAGE.as_posix()]["integrity"] = integrity
    lock_path.write_text(json.dumps(lock, indent=2))


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@contextmanager
def local_registry(root: Path):
    """Serve the library's tarball; yields (registry URL, its sha512 integrity)."""
    version = pinned(WEB)[0]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in FILES:
            tar.add(WEB / PACKAGE / name, arcname=f"package/{name}")
    data = buf.getvalue()
    tarball = root / NAME / "-" / f"{NAME.split('/')[1]}-{version}.tgz"
    tarball.parent.mkdir(parents=True)
    tarball.write_bytes(data)
    handler = functools.partial(_QuietHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
    finally:
        httpd.shutdown()
        httpd.server_close()
