"""Issue #16 against one live `latentgraph serve` (its default process layout: executor in a child process):
fuzzing, stalled connections, a hung executor, $LATENTGRAPH_MODELS.

The fuzz run: a seeded, bounded stream of mutated workflows and odd requests (tests/fuzz_workflows.py) from
concurrent clients; none may get a 5xx, the event loop must keep answering /system_stats within a second, and
the server's memory must stay bounded."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest
from fuzz_workflows import Fuzzer
from server_helpers import PYTHON, REPO, StallWatch, free_port, load_factor, rss_mb, wait_ready

from nodes.node import load_builtin_nodes
from server.graph import load_prompt

READ_TIMEOUT = 2.0  # the server's --read-timeout here
WATCHDOG = 3.0  # its --watchdog (30 s while the executor process starts)
STALL = 1.0  # seconds the event loop may be busy with one request, on a quiet machine
FUZZ_SEED, FUZZ_WORKFLOWS, FUZZ_OTHERS, FUZZ_CLIENTS = 16, 2000, 200, 8
RSS_GROWTH = 300  # MB the server may grow by over the fuzz run


class Live:
    def __init__(self, proc: subprocess.Popen, port: int, folder: Path):
        self.proc, self.port, self.folder = proc, port, folder
        self.url = f"http://127.0.0.1:{port}"

    def child_pid(self) -> int:
        """The executor process: the server's child started by multiprocessing's spawn (its other child is
        multiprocessing's resource tracker)."""
        children = [pid for task in Path(f"/proc/{self.proc.pid}/task").iterdir()  # any thread may have started it
                    for pid in (task / "children").read_text().split()]
        (pid,) = [p for p in children if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()]
        return int(pid)


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    folder = tmp_path_factory.mktemp("live")
    models = folder / "env-models"
    (models / "checkpoints").mkdir(parents=True)
    (models / "checkpoints" / "from_env.safetensors").write_bytes(b"")
    port = free_port()
    args = [PYTHON, "-c", "import sys; from server.cli import main; sys.exit(main())", "serve", "--port", str(port),
            "--output", str(folder / "output"), "--input", str(folder / "input"), "--data", str(folder / "data"),
            "--no-demo-models", "--read-timeout", str(READ_TIMEOUT), "--watchdog", str(WATCHDOG)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "LATENTGRAPH_MODELS": str(models)}  # no --models: from here
    env.pop("LATENTGRAPH_TOKEN", None)
    with open(folder / "server.log", "ab") as log:
        proc = subprocess.Popen(args, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        wait_ready(port, proc, folder / "server.log")
        yield Live(proc, port, folder)
    finally:
        proc.terminate()
        proc.wait(60)


async def wait_history(http: aiohttp.ClientSession, prompt_id: str) -> dict:
    while True:
        async with http.get(f"/history/{prompt_id}") as resp:
            entry = (await resp.json()).get(prompt_id)
        if entry:
            return entry
        await asyncio.sleep(0.05)


def chain(n: int) -> dict:
    prompt = {"0": {"class_type": "PrimitiveInt", "inputs": {"value": n}}}
    for i in range(1, n):
        prompt[str(i)] = {"class_type": "IntMath", "inputs": {"a": [str(i - 1), 0], "b": i, "operation": "add"}}
    return prompt


def test_models_folder_comes_from_the_environment(live):
    """$LATENTGRAPH_MODELS, with no --models (item 13)."""
    import urllib.request

    with urllib.request.urlopen(f"{live.url}/api/models/checkpoints", timeout=30) as resp:
        assert json.loads(resp.read()) == ["from_env.safetensors"]


async def test_fuzzed_workflows_get_no_5xx_no_stall_and_bounded_memory(live):
    registry = load_builtin_nodes()
    workflows = [json.loads(p.read_text()) for p in sorted((REPO / "workflows").glob("*.json"))]
    prompts = [load_prompt(w, registry)[0] for w in workflows]
    requests = Fuzzer(FUZZ_SEED, workflows, prompts, sorted(registry)).requests(FUZZ_WORKFLOWS, FUZZ_OTHERS)
    statuses: dict[int, int] = {}
    server_errors: list[str] = []
    async with aiohttp.ClientSession(live.url) as http:
        async with http.post("/queue", json={"pause": True}) as resp:  # validation is the target: nothing runs
            assert resp.status == 200

        async def client():
            for method, path, body, ctype in requests:
                async with http.request(method, path, data=body,
                                        headers={"Content-Type": ctype} if ctype else {}) as resp:
                    await resp.read()
                statuses[resp.status] = statuses.get(resp.status, 0) + 1
                if resp.status >= 500:
                    server_errors.append(f"{resp.status} {method} {path} {(body or b'')[:300]!r}")

        before = rss_mb(live.proc.pid)
        started = time.perf_counter()
        with StallWatch(live.port) as watch:
            await asyncio.gather(*(client() for _ in range(FUZZ_CLIENTS)))
        seconds = time.perf_counter() - started
        growth = rss_mb(live.proc.pid) - before
        print(f"{FUZZ_WORKFLOWS} workflows and {FUZZ_OTHERS} other requests in {seconds:.1f} s; statuses "
              f"{dict(sorted(statuses.items()))}; slowest /system_stats {watch.worst * 1000:.0f} ms of {watch.polls}; "
              f"server RSS +{growth:.0f} MB")
        assert server_errors == []
        assert sum(statuses.values()) == FUZZ_WORKFLOWS + FUZZ_OTHERS
        assert statuses.get(200, 0) > FUZZ_WORKFLOWS // 50  # some mutations stay valid: the accepting path is fuzzed
        assert watch.worst < STALL * load_factor()
        assert growth < RSS_GROWTH
        async with http.post("/queue", json={"clear": True, "pause": False}) as resp:
            assert resp.status == 200


def test_stalled_connections_are_cut_off(live):
    """Before: 500 connections stalled mid-header were all still held after 62 s (item 9). Now a connection
    silent for --read-timeout is closed, mid-header or mid-body."""
    limit = READ_TIMEOUT * 10 * load_factor()
    header_stalls = [socket.create_connection(("127.0.0.1", live.port), timeout=limit) for _ in range(50)]
    for s in header_stalls:
        s.sendall(b"GET /prompt HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
    body_stall = socket.create_connection(("127.0.0.1", live.port), timeout=limit)
    body_stall.sendall(b"POST /prompt HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                       b"Content-Length: 1000\r\n\r\n{\"prompt\": ")
    started = time.monotonic()
    for s in header_stalls:
        assert s.recv(65536) == b""  # closed
        s.close()
    assert body_stall.recv(65536) == b""
    body_stall.close()
    assert time.monotonic() - started < limit


async def test_a_hung_executor_is_killed_and_replaced(live):
    """Before: after SIGSTOP, /interrupt said interrupted: true and nothing happened, for ever (item 10)."""
    async with aiohttp.ClientSession(live.url) as http:
        await (await http.post("/prompt", json={"prompt": chain(3), "partial_execution_targets": ["2"],
                                                "prompt_id": "warm"})).read()
        assert (await wait_history(http, "warm"))["status"]["status_str"] == "success"
        hung = live.child_pid()
        os.kill(hung, signal.SIGSTOP)
        try:
            resp = await http.post("/prompt", json={"prompt": chain(5), "partial_execution_targets": ["4"],
                                                    "prompt_id": "stuck"})
            assert resp.status == 200
            while not (await (await http.post("/interrupt", json={})).json())["interrupted"]:
                await asyncio.sleep(0.05)  # until the worker has taken the prompt
            entry = await wait_history(http, "stuck")
        finally:
            if os.path.exists(f"/proc/{hung}"):
                os.kill(hung, signal.SIGKILL)
        error = entry["status"]["messages"][-1][1]
        assert entry["status"]["status_str"] == "error"
        assert error["exception_type"] == "WorkerProcessUnresponsive" and "no heartbeat" in error["exception_message"]
        await (await http.post("/prompt", json={"prompt": chain(4), "partial_execution_targets": ["3"],
                                                "prompt_id": "after"})).read()
        assert (await wait_history(http, "after"))["status"]["status_str"] == "success"
        assert live.child_pid() != hung
