"""Browser tests: a real `latentgraph serve` on 127.0.0.1 and Debian's headless Chromium via Playwright.

Playwright never downloads a browser here: it launches /usr/bin/chromium. Without it the tests are
skipped (with the reason), except under CI=true, where a missing browser is a failure.
Screenshots of each step go to test-artifacts/browser/ (gitignored).
"""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from patience import Deadline, patience

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
ARTIFACTS = REPO / "test-artifacts" / "browser"
VIEWPORT = {"width": 1280, "height": 800}


def pytest_collection_modifyitems(config, items):
    for item in items:  # under pytest-xdist (--dist loadgroup) they share one worker: one server, one Chromium
        if item.get_closest_marker("browser"):
            item.add_marker(pytest.mark.xdist_group("browser"))
    reason = None
    if not os.path.exists(CHROMIUM):
        reason = f"{CHROMIUM} is missing (apt-get install chromium)"
    elif not (REPO / "web" / "node_modules" / "@comfyorg" / "litegraph").is_dir():
        reason = "web/node_modules is missing (npm ci --prefix web)"
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        raise pytest.UsageError(f"browser tests cannot run under CI: {reason}")
    for item in items:
        if item.get_closest_marker("browser"):
            item.add_marker(pytest.mark.skip(reason=reason))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_up(url: str, proc: subprocess.Popen, log: Path, seconds: float = 180.0) -> None:
    deadline = Deadline(seconds)
    while not deadline.expired():
        if proc.poll() is not None:
            raise RuntimeError(f"latentgraph serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "object_info", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"latentgraph serve did not answer within {deadline.elapsed():.0f}s:\n{log.read_text()[-3000:]}")


def start_server(root: Path, port: int, data: str = "data", *extra: str) -> subprocess.Popen:
    """Start `latentgraph serve` on 127.0.0.1:port with folders under root (and `extra` arguments); returns once it
    answers. Its output goes to root/server-<port>.log."""
    dirs = {name: root / name for name in ("models", "output", "input", data)}
    for d in dirs.values():
        d.mkdir(exist_ok=True)
    log = root / f"server-{port}.log"
    cmd = [sys.executable, "-c", "import sys; from server.cli import main; sys.exit(main())", "serve",
           "--host", "127.0.0.1", "--port", str(port), "--models", str(dirs["models"]),
           "--output", str(dirs["output"]), "--input", str(dirs["input"]), "--data", str(dirs[data]), *extra]
    with open(log, "a") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_up(f"http://127.0.0.1:{port}/", proc, log)
    except Exception:
        stop_server(proc)
        raise
    return proc


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def server_root(tmp_path_factory):
    """Folders shared by the test servers (the demo models are written once)."""
    return tmp_path_factory.mktemp("latentgraph")


@pytest.fixture(scope="session")
def server(server_root):
    """Base URL of a live server with its own temporary models/output/input/data folders."""
    port = free_port()
    proc = start_server(server_root, port)
    yield f"http://127.0.0.1:{port}/"
    stop_server(proc)


@pytest.fixture(scope="module")
def chromium():
    """Module-scoped on purpose: Playwright's sync API keeps an asyncio loop running in this thread while it
    is open, and every async test collected after the browser tests would then fail to start its own."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def context(chromium):
    """A fresh browser context: empty local storage, 1280x800; waits time out after 30 s of an idle machine."""
    context = chromium.new_context(viewport=VIEWPORT, accept_downloads=True)
    context.set_default_timeout(patience(30) * 1000)  # Playwright's own default, stretched by the load
    yield context
    context.close()


@pytest.fixture
def open_canvas(context, request):
    """Open the canvas of the server at `url` in a new page of `context`; the page gets `.shot(step)`
    (numbered screenshots) and `.load_seconds`. Uncaught page errors and console errors fail the test, except
    console errors a test announces with `page.allow_console_error(regex)` (matched against the message and the
    URL of the resource it names, e.g. a 400 the test provokes)."""
    errors: list[str] = []
    allowed: list[str] = []

    def on_console(msg):
        text = f"{msg.text} {msg.location.get('url', '')}"
        if msg.type == "error" and not any(re.search(p, text) for p in allowed):
            errors.append(f"console: {text}")

    def _open(url: str, ready: bool = True, allow: tuple[str, ...] = ()):
        """`ready`: wait until the canvas is connected (else only until the page loaded); `allow`: console errors
        expected while it loads."""
        allowed.extend(allow)
        page = context.new_page()
        page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
        page.on("console", on_console)
        page.allow_console_error = allowed.append
        page.shot = Shots(page, request.node.name)
        page.load_seconds = load(page, url) if ready else page.goto(url) and None
        return page

    yield _open
    assert not errors, f"errors in the page: {errors}"


@pytest.fixture
def page(open_canvas, server):
    """The canvas of the session's server, ready to use."""
    return open_canvas(server)


def load(page, url: str) -> float:
    start = time.monotonic()
    page.goto(url)
    page.wait_for_function("window.app && window.app.ready", timeout=patience(15) * 1000)
    return time.monotonic() - start


class Shots:
    """Numbered screenshots per test: test-artifacts/browser/<test>/<nn>-<step>.png."""

    def __init__(self, page, test_name: str):
        self.page = page
        self.dir = ARTIFACTS / test_name
        self.dir.mkdir(parents=True, exist_ok=True)
        for old in self.dir.glob("*.png"):
            old.unlink()
        self.n = 0

    def __call__(self, step: str) -> Path:
        self.n += 1
        path = self.dir / f"{self.n:02d}-{step}.png"
        self.page.wait_for_timeout(150)  # let the canvas draw its next frame
        self.page.screenshot(path=str(path))
        return path


@pytest.fixture
def extra_server(server_root, server):
    """Start another `latentgraph serve` with extra arguments (own data folder; the session server has written the
    demo models, so start-up is quick); returns its port and log; stopped after the test."""
    procs = []

    def _start(*extra: str) -> tuple[int, Path]:
        port = free_port()
        procs.append(start_server(server_root, port, f"data-{port}", *extra))
        return port, server_root / f"server-{port}.log"

    yield _start
    for proc in procs:
        stop_server(proc)


class RestartableServer:
    """A server of its own (own queue database) that a test may stop and start again on the same port."""

    def __init__(self, root: Path):
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.proc = None

    def start(self):
        self.proc = start_server(self.root, self.port, data="data-restartable")

    def stop(self):
        stop_server(self.proc)


@pytest.fixture
def restartable_server(server_root, server):
    # Depends on `server` so the demo models already exist and start-up is quick.
    srv = RestartableServer(server_root)
    srv.start()
    yield srv
    if srv.proc.poll() is None:
        srv.stop()
