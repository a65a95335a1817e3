"""Ray scale-out: throughput with 1, 2 and 4 CPU actors against 1, 2 and 4 local child processes, and the per-prompt
overhead of the Ray path against the local child process, in one run.

Each configuration is a real `latentgraph serve` on 127.0.0.1 (a free port, temp folders): with `--ray ADDRESS
--ray-cpu-workers N` against a local Ray cluster (ray.cluster_utils, one raylet with 4 CPU slots, started by this
script and stopped at its end), or without Ray with `--device cpu` N times (N executor child processes).

- Throughput: the shipped SDXL base workflow (workflows/sdxl_base.json) on the demo checkpoint, a new seed per
  prompt. 2N prompts warm every worker up (each loads the checkpoint once), then --prompts are queued at once and
  timed from the first submission to the last one's end. --ray-max-wait 0: the prompts go to any idle actor, as
  they do to any idle device without Ray, so what is compared is the execution path, not the routing.
- Overhead: an "empty" prompt, one whose every node the executor serves from its cache (the same small graph again
  under a new id: planning, the cached event, the report; nothing runs), submitted one at a time; latency from
  the submission to its final `executing` message on /ws, median over --overhead-prompts. The Ray server has one
  actor, the local one one child process. Target: the Ray path adds at most 20 ms.

    .venv/bin/python benchmarks/ray_scaling.py [--prompts 12] [--workers 1 2 4]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parent.parent
# run as a script, this file's folder comes first on sys.path and its name would hide the `server` package
sys.path[:1] = [str(REPO), str(REPO / "tests")]
from server_helpers import free_port, http_json, image_prompt, local_ray_cluster, start_server  # noqa: E402


def demo_workflow() -> dict:
    """workflows/sdxl_base.json as an API prompt (the server would convert it the same way)."""
    from nodes.node import load_builtin_nodes
    from server.graph import load_prompt

    prompt, _ = load_prompt(json.loads((REPO / "workflows" / "sdxl_base.json").read_text()), load_builtin_nodes())
    return prompt


def with_seed(prompt: dict, seed: int) -> dict:
    prompt = json.loads(json.dumps(prompt))
    for node in prompt.values():
        if "seed" in node["inputs"]:
            node["inputs"]["seed"] = seed
    return prompt


class Running:
    """A started server and a websocket client that records when each prompt ended."""

    def __init__(self, folder: Path, args: list[str]):
        self.port = free_port()
        self.proc = start_server(folder, self.port, *args)
        self.base = f"http://127.0.0.1:{self.port}"
        deadline = time.time() + 300
        while not all(d.get("ready", True) for d in http_json(self.port, "/system_stats")["devices"]):
            if time.time() > deadline:
                raise RuntimeError("the actors did not start in 300 s")
            time.sleep(0.5)

    async def __aenter__(self):
        self.http = aiohttp.ClientSession()
        self.ws = await self.http.ws_connect(f"{self.base}/ws?clientId=bench")
        self.ended: dict[str, float] = {}
        self.failed: list[str] = []
        self.reader = asyncio.ensure_future(self._read())
        return self

    async def _read(self) -> None:
        async for m in self.ws:
            if m.type != aiohttp.WSMsgType.TEXT:
                continue
            msg = json.loads(m.data)
            if msg["type"] == "execution_error":
                self.failed.append(msg["data"].get("exception_message", "?"))
            if msg["type"] == "executing" and msg["data"]["node"] is None:
                self.ended[msg["data"]["prompt_id"]] = time.perf_counter()

    async def submit(self, prompt: dict) -> str:
        async with self.http.post(f"{self.base}/prompt", json={"prompt": prompt, "client_id": "bench"}) as r:
            body = await r.json()
            if r.status != 200:
                raise RuntimeError(f"submission refused: {body}")
            return body["prompt_id"]

    async def wait(self, ids: list[str], timeout: float = 1800) -> float:
        """When the last of `ids` ended."""
        async with asyncio.timeout(timeout):
            while not all(pid in self.ended for pid in ids):
                if self.failed:
                    raise RuntimeError(f"a prompt failed: {self.failed[0]}")
                await asyncio.sleep(0.002)
        return max(self.ended[pid] for pid in ids)

    async def __aexit__(self, *exc):
        await self.ws.close()
        self.reader.cancel()
        await self.http.close()
        self.proc.terminate()
        self.proc.wait(60)


async def throughput(folder: Path, args: list[str], workers: int, prompts: int, seed: int) -> float:
    """Prompts per second with `workers` busy."""
    workflow = demo_workflow()
    async with Running(folder, args) as server:
        warm = [await server.submit(with_seed(workflow, seed + i)) for i in range(2 * workers)]
        await server.wait(warm)
        started = time.perf_counter()
        ids = [await server.submit(with_seed(workflow, seed + 100 + i)) for i in range(prompts)]
        return prompts / (await server.wait(ids) - started)


async def latency(folder: Path, args: list[str], count: int) -> list[float]:
    """Milliseconds from submission to the end of a fully cached prompt, one at a time."""
    prompt = image_prompt(color=0x123456, size=8, prefix="empty")
    async with Running(folder, args) as server:
        await server.wait([await server.submit(prompt)])  # runs once: the cache holds every node after it
        times = []
        for _ in range(count + 3):
            sent = time.perf_counter()
            ended = await server.wait([await server.submit(prompt)])
            times.append((ended - sent) * 1000)
        return times[3:]  # the first few warm up the connection and the actor's code paths


async def bench(opts) -> int:
    from nodes.demo import make_demo_models

    tmp = Path(tempfile.mkdtemp(prefix="lg-ray-bench-"))
    try:
        make_demo_models(tmp / "models" / "checkpoints")
        with local_ray_cluster([{"num_cpus": max(opts.workers), "object_store_memory": 200 * 1024 * 1024}]) as cluster:
            ray_args = ["--ray", cluster.address, "--ray-max-wait", "0"]
            rates: dict[tuple[str, int], float] = {}
            for n in opts.workers:
                configs = (("local", ["--device", "cpu"] * n), ("ray", [*ray_args, "--ray-cpu-workers", str(n)]))
                for kind, args in configs:
                    rates[kind, n] = await throughput(tmp, args, n, opts.prompts, seed=1000 * n)
                    print(f"  {kind:5} {n} worker(s): {rates[kind, n]:.3f} prompts/s", flush=True)
            local = await latency(tmp, ["--device", "cpu"], opts.overhead_prompts)
            remote = await latency(tmp, [*ray_args, "--ray-cpu-workers", "1"], opts.overhead_prompts)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"\nthroughput on workflows/sdxl_base.json (demo checkpoint, 256 px, 4 steps), {opts.prompts} prompts after "
          f"warm-up, on {os.cpu_count()} CPU cores:")
    print(f"{'workers':>8} {'local':>12} {'ray':>12} {'ray/local':>10} {'local vs 1':>11} {'ray vs 1':>9}")
    for n in opts.workers:
        lo, ra = rates["local", n], rates["ray", n]
        print(f"{n:>8} {lo:>9.3f}/s {ra:>9.3f}/s {ra / lo:>10.2f} {lo / rates['local', opts.workers[0]]:>10.2f}x "
              f"{ra / rates['ray', opts.workers[0]]:>8.2f}x")
    added = statistics.median(remote) - statistics.median(local)
    print(f"\nper-prompt overhead on an empty (fully cached) prompt, one at a time, {opts.overhead_prompts} prompts:")
    print(f"  local child process  median {statistics.median(local):6.1f} ms   p90 {pct(local, 90):6.1f} ms")
    print(f"  Ray actor            median {statistics.median(remote):6.1f} ms   p90 {pct(remote, 90):6.1f} ms")
    print(f"  added by Ray: {added:.1f} ms (target <= 20 ms: ratio {added / 20:.2f})")
    return 0


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q / 100 * (len(values) - 1)))]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--prompts", type=int, default=12, help="timed prompts per configuration (after warm-up)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4], help="worker counts to compare")
    p.add_argument("--overhead-prompts", type=int, default=50, help="empty prompts timed one at a time")
    return asyncio.run(bench(p.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
