"""A newcomer who installed without npm gets no silent failure: the page says the canvas library is missing and how
to get it, the server log says so too, and `latentgraph fetch-canvas` (no npm needed) fixes it for the next reload."""
import os
import subprocess
import sys

import pytest
from npm_registry import copy_web_without_library, local_registry, pin
from patience import patience

pytestmark = pytest.mark.browser


def test_without_the_canvas_library_the_page_says_what_to_do_and_fetch_canvas_fixes_it(open_canvas, extra_server,
                                                                                        tmp_path):
    web = copy_web_without_library(tmp_path / "web")  # a checkout where `npm ci` never ran
    port, log = extra_server("--front-end-root", str(web))
    assert "cannot show the canvas" in log.read_text() and f"latentgraph fetch-canvas --web {web}" in log.read_text()
    # the page comes as 503 Service Unavailable
    page = open_canvas(f"http://127.0.0.1:{port}/", ready=False, allow=[r"status of 503 .*/$"])
    text = page.locator("#missing-library").inner_text()
    assert "@comfyorg/litegraph" in text and f"npm ci --prefix {web}" in text
    assert f"latentgraph fetch-canvas --web {web}" in text
    assert page.locator("#connection").count() == 0, "no canvas stuck at connecting…"
    page.shot("library-missing")

    with local_registry(tmp_path / "registry") as (url, integrity):
        pin(web, integrity)
        fetched = subprocess.run([sys.executable, "-m", "server.cli", "fetch-canvas", "--web", str(web)],
                                 env={**os.environ, "npm_config_registry": url}, capture_output=True, text=True,
                                 timeout=patience(120))
    assert fetched.returncode == 0, fetched.stderr
    assert "@comfyorg/litegraph" in fetched.stdout
    page.reload()
    page.wait_for_function("window.app && window.app.ready", timeout=patience(30) * 1000)
    assert page.evaluate("app.graph._nodes.length") > 0
    page.shot("canvas-after-fetch")
