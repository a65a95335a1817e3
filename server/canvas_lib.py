"""The canvas's one third-party library, ``@comfyorg/litegraph`` (MIT), pinned by ``web/package-lock.json``.

``npm ci --prefix web`` puts it in ``web/node_modules``. Without npm, ``latentgraph fetch-canvas`` downloads the same
tarball from the npm registry and checks it against the lockfile's integrity hash, and building the Python package
(``pip install .``) bundles the canvas, this library and the shipped workflows into it, fetching the library the same
way when ``web/node_modules`` lacks it. When it is missing anyway, the server logs it and the page says what to do,
instead of a blank canvas stuck at "connecting…".

Standard library only: the package build imports this module.
"""
from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import os
import shutil
import tarfile
import urllib.request
from pathlib import Path

NAME = "@comfyorg/litegraph"
PACKAGE = Path("node_modules") / NAME  # inside the web folder
FILES = ("package.json", "LICENSE", "dist/litegraph.es.js", "dist/css/litegraph.css")  # what the page loads, and why
REGISTRY = os.environ.get("npm_config_registry", "https://registry.npmjs.org").rstrip("/")  # as npm reads it
# the canvas's own files, as the page loads them (everything else in web/ is for npm)
WEB_FILES = ("index.html", "*.css", "package.json", "package-lock.json", "src/*.js")


def pinned(web_dir: Path) -> tuple[str, str]:
    """(version, sha512 integrity) of the library in the canvas's lockfile."""
    lock = json.loads((Path(web_dir) / "package-lock.json").read_text())
    entry = lock["packages"][PACKAGE.as_posix()]
    return entry["version"], entry["integrity"]


def missing(web_dir: Path) -> str | None:
    """Why the canvas in `web_dir` cannot start, or None. Only our canvas (src/main.js) needs the library."""
    web_dir = Path(web_dir)
    if not (web_dir / "src" / "main.js").is_file() or all((web_dir / PACKAGE / f).is_file() for f in FILES):
        return None
    version = pinned(web_dir)[0] if (web_dir / "package-lock.json").is_file() else "?"
    return (f"the canvas library {NAME} {version} is not installed in {web_dir / 'node_modules'}. Install it with "
            f"`npm ci --prefix {web_dir}`, or without npm with `latentgraph fetch-canvas --web {web_dir}` (downloads "
            f"it from the npm registry, checked against its package-lock.json). The HTTP API works without it.")


def missing_page(reason: str) -> str:
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>latentgraph: the canvas cannot start</title><link rel="icon" href="data:,">
<style>body{{font:15px/1.5 system-ui,sans-serif;max-width:46em;margin:4em auto;padding:0 1em;color:#dcdde0;background:#1e1f22}}
code{{background:#2d2e33;padding:1px 5px;border-radius:3px}}</style></head>
<body><h1>The canvas cannot start</h1>
<p id="missing-library">{html.escape(reason)}</p>
<p>Then reload this page. The server itself is running: the ComfyUI-compatible API (<code>/prompt</code>,
<code>/queue</code>, <code>/ws</code>, …) and <code>latentgraph run</code> work as they are.</p>
</body></html>
"""


def fetch(web_dir: Path, dest: Path | None = None, registry: str = REGISTRY) -> Path:
    """Download the pinned library from the registry into ``dest`` (default ``web_dir``), verified against the
    lockfile's sha512 integrity; returns the package folder. Raises ValueError on a hash mismatch."""
    version, integrity = pinned(web_dir)
    url = f"{registry}/{NAME}/-/{NAME.split('/')[1]}-{version}.tgz"
    with urllib.request.urlopen(url, timeout=60) as response:
        data = response.read()
    algorithm, _, expected = integrity.partition("-")
    got = base64.b64encode(hashlib.new(algorithm, data).digest()).decode()
    if got != expected:
        raise ValueError(f"{url}: {algorithm} is {got}, the lockfile pins {expected}; not installed")
    target = Path(dest or web_dir) / PACKAGE
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for name in FILES:
            member = tar.extractfile(f"package/{name}")
            if member is None:
                raise ValueError(f"{url} has no package/{name}")
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            (target / name).write_bytes(member.read())
    return target


def bundle(repo: Path, dest: Path) -> None:
    """Copy the canvas (with the library: from web/node_modules, else fetched) and the shipped workflows into
    ``dest/web`` and ``dest/workflows``: what an installed package serves."""
    web, out = Path(repo) / "web", Path(dest) / "web"
    for pattern in WEB_FILES:
        for path in web.glob(pattern):
            (out / path.relative_to(web)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, out / path.relative_to(web))
    if all((web / PACKAGE / f).is_file() for f in FILES):
        for name in FILES:
            (out / PACKAGE / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(web / PACKAGE / name, out / PACKAGE / name)
    else:
        try:
            fetch(web, out)
        except (OSError, ValueError) as exc:  # offline: the installed server explains what is missing
            print(f"warning: {NAME} not bundled ({exc}); `latentgraph fetch-canvas` can add it later")
    (Path(dest) / "workflows").mkdir(parents=True, exist_ok=True)
    for path in (Path(repo) / "workflows").glob("*.json"):
        shutil.copy2(path, Path(dest) / "workflows" / path.name)
