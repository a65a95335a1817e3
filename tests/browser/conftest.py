"""Browser tests: a real `latentgraph serve` on 127.0.0.1 and Debian's headless Chromium via Playwright.

Playwright never downloads a browser here: it launches /usr/bin/chromium. Without it the tests are
skipped (with the reason), except under CI=true, where a missing browser is a failure.
Screenshots of each step go to test-artifacts/browser/ (gitignored).
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
ARTIFACTS = REPO / "test-artifacts" / "browser"
VIEWPORT = {"width": 1280, "height": 800}


def pytest_collection_modifyitems(config, items):
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
        if "browser" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=reason))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_up(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"latentgraph serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "object_info", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"latentgraph serve did not answer within {timeout}s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """Base URL of a live server with its own temporary models/output/input/data folders."""
    root = tmp_path_factory.mktemp("latentgraph")
    dirs = {name: root / name for name in ("models", "output", "input", "data")}
    for d in dirs.values():
        d.mkdir()
    port = _free_port()
    log = root / "server.log"
    cmd = [sys.executable, "-c", "import sys; from server.cli import main; sys.exit(main())", "serve",
           "--host", "127.0.0.1", "--port", str(port), "--models", str(dirs["models"]),
           "--output", str(dirs["output"]), "--input", str(dirs["input"]), "--data", str(dirs["data"])]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_up(url, proc, log)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="session")
def chromium():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(chromium, server, request):
    """A fresh browser context (empty local storage) showing the canvas, ready to use."""
    context = chromium.new_context(viewport=VIEWPORT, accept_downloads=True)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.shot = Shots(page, request.node.name)
    page.load_seconds = load(page, server)
    yield page
    context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


def load(page, url: str) -> float:
    start = time.monotonic()
    page.goto(url)
    page.wait_for_function("window.app && window.app.ready", timeout=15000)
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
