"""Shared pieces for the server tests: configs in a temp folder, small prompts, an instrumented node, live servers."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from PIL import Image

from nodes.node import REGISTRY, Input, Output, load_builtin_nodes, node
from nodes.types import IMAGE
from server.app import Config

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


@node(category="testing", outputs=[Output(IMAGE)], name="TestSteps")
class Stepper:
    """Pass an image through after `steps` progress reports with previews; waits on a gate if one is named."""
    image: IMAGE = Input()
    steps: int = Input(default=3, min=1, max=1000)
    delay: float = Input(default=0.0, min=0.0, max=10.0)
    gate: str = Input(default="")

    def run(self, ctx):
        for i in range(1, self.steps + 1):
            if self.gate:
                if self.gate in AT_GATE:
                    AT_GATE[self.gate].set()
                while not GATES[self.gate].wait(0.02):
                    ctx.check_interrupted()
            time.sleep(self.delay)
            ctx.progress(i, self.steps, Image.new("RGB", (640, 320), (i * 40 % 256, 0, 0)))
        return (self.image,)


# Instrumented for tests only: kept out of the shared registry, passed to create_app explicitly.
REGISTRY.pop("TestSteps")
GATES: dict[str, threading.Event] = {}
AT_GATE: dict[str, threading.Event] = {}  # set once a TestSteps node waits on the gate of that name


def probe_registry() -> dict:
    return {**load_builtin_nodes(), "TestSteps": Stepper.spec}


def make_config(tmp_path: Path, **overrides) -> Config:
    cfg = Config(models_dir=tmp_path / "models", output_dir=tmp_path / "output", input_dir=tmp_path / "input",
                 data_dir=tmp_path / "data", devices=["cpu"], worker_process=False)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


def image_prompt(color: int = 0xFF0000, size: int = 16, prefix: str = "test", steps: int | None = None,
                 delay: float = 0.0, gate: str = "") -> dict:
    """EmptyImage → ImageInvert → (TestSteps) → SaveImage, in API format."""
    prompt = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": size, "height": size, "batch_size": 1, "color": color}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}},
    }
    if steps is not None:
        prompt["3"] = {"class_type": "TestSteps", "inputs": {"image": ["2", 0], "steps": steps, "delay": delay,
                                                            "gate": gate}}
        prompt["9"]["inputs"]["images"] = ["3", 0]
    return prompt


def slow_prompt(size: int = 2048, prefix: str = "slow", seed: int = 0) -> dict:
    """A real, built-in-nodes-only workflow that keeps a CPU busy for a while (large bicubic resizes)."""
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": size, "height": size, "batch_size": 1, "color": seed}},
        "2": {"class_type": "ImageScale", "inputs": {"image": ["1", 0], "upscale_method": "bicubic",
                                                     "width": size * 2, "height": size * 2, "crop": "disabled"}},
        "3": {"class_type": "ImageScale", "inputs": {"image": ["2", 0], "upscale_method": "bicubic",
                                                     "width": size // 2, "height": size // 2, "crop": "disabled"}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": prefix}},
    }


# -- live servers (subprocesses) for client, durability and benchmark runs --------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(tmp_path: Path, port: int, *extra: str, log_name: str = "server.log") -> subprocess.Popen:
    args = [PYTHON, "-c", "import sys; from server.cli import main; sys.exit(main())", "serve", "--host", "127.0.0.1", "--port", str(port),
            "--models", str(tmp_path / "models"), "--output", str(tmp_path / "output"),
            "--input", str(tmp_path / "input"), "--data", str(tmp_path / "data"), "--no-demo-models", *extra]
    log = open(tmp_path / log_name, "ab")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("LATENTGRAPH_TOKEN", None)
    proc = subprocess.Popen(args, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
    wait_ready(port, proc, tmp_path / log_name)
    return proc


def wait_ready(port: int, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/prompt", timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"server did not start in {timeout} s:\n{log.read_text()[-3000:]}")


def http_json(port: int, path: str, body=None, timeout: float = 10):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data,
                                 headers={"Content-Type": "application/json"} if data else {})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


# -- measuring a live server: event-loop stalls and memory --------------------------------------------------------
def load_factor() -> float:
    """How much busier than one runnable task per core the machine is: limits on wall-clock stalls scale by it, so
    a test that holds on a quiet machine also holds on a loaded one (where every wait is longer)."""
    return max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))


class StallWatch:
    """Polls ``GET /system_stats`` on a live server from a thread, one request at a time, for as long as the
    ``with`` block lasts. An answer waits for the event loop, so the slowest answer is the longest stall."""

    def __init__(self, port: int, interval: float = 0.02):
        self.port, self.interval = port, interval
        self.worst, self.polls = 0.0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        import http.client

        while not self._stop.is_set():
            started = time.perf_counter()
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)
            try:
                conn.request("GET", "/system_stats")
                conn.getresponse().read()
            finally:
                conn.close()
            self.worst = max(self.worst, time.perf_counter() - started)
            self.polls += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> "StallWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def rss_mb(pid: int) -> float:
    """Resident memory of a process, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def upload_form(data: bytes, name="pic.png", **fields):
    """A multipart /upload/image or /upload/mask body: the file as `image`, plus text fields."""
    from aiohttp import FormData

    form = FormData()
    form.add_field("image", data, filename=name, content_type="image/png")
    for key, value in fields.items():
        form.add_field(key, value)
    return form
