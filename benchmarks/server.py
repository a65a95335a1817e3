"""Server load: 200 concurrent /prompt submissions and 50 websocket clients while the worker is busy.

Starts a real `latentgraph serve` on 127.0.0.1 (a free port, temp folders), connects 50 /ws clients, queues a
slow real workflow (the shipped SDXL base workflow on the demo checkpoint, or large bicubic resizes with
--busy resize), and once it runs fires 200 /prompt submissions at once (small
image workflows, each different so each really executes afterwards). The slow prompt has no client_id, so its
messages are broadcast to all 50 sockets; the small ones are spread over the 50 clients as ComfyUI clients do
(each follows the prompts it submitted, with its client_id), and every queue change is broadcast.

Prints p50/p99/max submission latency (request sent → JSON answer read) and fan-out delay (server timestamp in
execution_start / execution_cached / execution_success → arrival at each client; ComfyUI's timestamps are whole
ms, so delays are rounded down by < 1 ms), the ratio to the targets (p99 submission ≤ 50 ms, fan-out ≤ 20 ms),
and the error count, which must be zero. The clients share the machine (2 cores here) with the server, so the
fan-out numbers include the clients' own time to read 50 sockets (they run in a process of their own, apart
from the submitting client). Also printed: the CPU that the HTTP processes, the submitters, the websocket
clients and the executor used during the burst, and how busy the machine was before the start (on 2 cores,
the submission latency follows the total).

    .venv/bin/python benchmarks/server.py [--submissions 200] [--clients 50] [--busy sdxl|resize]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parent.parent
# run as a script, this file's folder comes first on sys.path and its name would hide the `server` package
sys.path[:1] = [str(REPO), str(REPO / "tests")]
from server_helpers import free_port, image_prompt, slow_prompt, start_server  # noqa: E402

from server.runners import EXECUTOR_NICE  # noqa: E402

TIMESTAMPED = ("execution_start", "execution_cached", "execution_success")


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q / 100 * (len(values) - 1)))]


class Listener:
    def __init__(self, ws):
        self.ws = ws
        self.delays: list[float] = []
        self.messages = 0
        self.previews = 0
        self.finished: set[str] = set()

    async def run(self):
        async for msg in self.ws:
            if msg.type == aiohttp.WSMsgType.BINARY:
                self.previews += 1
                continue
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            arrived = time.time() * 1000
            m = json.loads(msg.data)
            self.messages += 1
            data = m["data"]
            if m["type"] in TIMESTAMPED:
                self.delays.append(arrived - data["timestamp"])
            if m["type"] == "executing" and data["node"] is None:
                self.finished.add(data["prompt_id"])


def thread_cpu_ns(task: Path) -> int:
    """A thread's CPU time, from the scheduler's nanosecond count (`task`: /proc/PID/task/TID)."""
    return int((task / "schedstat").read_text().split()[0])


def loop_cpu_ms(pids: list[int]) -> float:
    """CPU time of the HTTP processes' main threads (their event loops: HTTP, validation, SQLite, websocket
    fan-out)."""
    return sum(thread_cpu_ns(Path(f"/proc/{pid}/task/{pid}")) for pid in pids) / 1e6


def process_cpu_ms(pids: list[int]) -> float:
    """CPU time of every thread of these processes (0 for a thread that is gone)."""
    total = 0
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                total += thread_cpu_ns(task)
            except (OSError, ValueError):
                pass
    return total / 1e6


def executor_pids(server_pid: int, http: list[int]) -> list[int]:
    """The server's executor child processes: its children that are neither HTTP processes nor
    multiprocessing's resource tracker."""
    children = {int(c) for task in Path(f"/proc/{server_pid}/task").glob("*")
                for c in (task / "children").read_text().split()}
    return sorted(pid for pid in children - set(http)
                  if b"resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_bytes())


def http_pids(port: int, count: int) -> list[int]:
    """The server's HTTP processes, as /system_stats reports them over new connections (the kernel spreads
    connections over the processes)."""
    pids: set[int] = set()
    for _ in range(200):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/system_stats") as r:
            pids.add(json.loads(r.read())["system"]["pid"])
        if len(pids) == count:
            return sorted(pids)
    raise RuntimeError(f"found {len(pids)} of {count} HTTP processes")


def busy_prompt(args) -> dict:
    """What keeps the worker busy: the shipped SDXL base workflow on the demo checkpoint (sampling with
    progress and latent previews, broadcast to every client), or large bicubic resizes."""
    if args.busy == "sdxl":
        return json.loads((REPO / "workflows" / "sdxl_base.json").read_text())
    return slow_prompt(args.slow_size)


async def post_prompt(session, base: str, i: int, clients: int) -> tuple[dict, float]:
    body = {"prompt": image_prompt(color=i, size=8), "client_id": f"bench{i % clients}"}
    t = time.perf_counter()
    async with session.post(f"{base}/prompt", json=body) as r:
        answer = await r.json()
        if r.status != 200:
            answer = {"http_status": r.status, **answer}
    return answer, (time.perf_counter() - t) * 1000


def submitter(base: str, numbers: list[int], clients: int, go, done, finish) -> None:
    """One process of the burst: opens a connection per submission, waits for `go`, submits its share at once,
    then idles until `finish` (so its exit does not compete with the server while other shares are in flight).

    Plain HTTP/1.1 over asyncio streams with each request encoded beforehand: the load generator shares the
    machine's cores with the server, and a full client library's own CPU time would be counted as server
    latency (measured: aiohttp's client costs ~4x more CPU per request than this)."""
    host, port = base.removeprefix("http://").split(":")

    def request(i: int) -> bytes:
        body = json.dumps({"prompt": image_prompt(color=i, size=8), "client_id": f"bench{i % clients}"}).encode()
        return (f"POST /prompt HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode() + body

    async def post(stream, i: int, raw: bytes) -> tuple[int, dict, float]:
        reader, writer = stream
        t = time.perf_counter()
        writer.write(raw)
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:")))
        answer = json.loads(await reader.readexactly(length))
        ms = (time.perf_counter() - t) * 1000
        status = int(head.split(b" ", 2)[1])
        return i, answer if status == 200 else {"http_status": status, **answer}, ms

    async def run():
        streams = [await asyncio.open_connection(host, int(port)) for _ in numbers]
        requests = [request(i) for i in numbers]
        done.put("ready")
        await asyncio.get_running_loop().run_in_executor(None, go.wait)
        cpu0 = time.process_time()
        results = await asyncio.gather(*(post(s, i, r) for s, i, r in zip(streams, numbers, requests)))
        cpu = (time.process_time() - cpu0) * 1000
        for _, writer in streams:
            writer.close()
        return results, cpu

    done.put(asyncio.run(run()))
    finish.wait(300)


def listen(base: str, clients: int, ready, stop, results) -> None:
    """The 50 websocket clients, in a process of their own so reading them does not delay the submissions."""
    asyncio.run(_listen(base, clients, ready, stop, results))


async def _listen(base: str, clients: int, ready, stop, results) -> None:
    async with aiohttp.ClientSession() as session:
        sockets = [await session.ws_connect(f"{base}/ws?clientId=bench{i}") for i in range(clients)]
        listeners = [Listener(ws) for ws in sockets]
        tasks = [asyncio.create_task(lis.run()) for lis in listeners]
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.05)
        for ws in sockets:
            await ws.close()
        await asyncio.gather(*tasks)
    results.put({"delays": [d for lis in listeners for d in lis.delays],
                 "messages": sum(lis.messages for lis in listeners),
                 "previews": sum(lis.previews for lis in listeners),
                 "finished": [sorted(lis.finished) for lis in listeners]})


def machine_busy(seconds: float = 1.0) -> float:
    """How many cores other processes keep busy before the benchmark starts (from /proc/stat). Anything left
    running (a stray server executing its queue, even at idle priority) shows up in the latencies."""
    def ticks() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return sum(fields) - idle, sum(fields)

    busy0, total0 = ticks()
    time.sleep(seconds)
    busy1, total1 = ticks()
    return (busy1 - busy0) / max(1, total1 - total0) * (os.cpu_count() or 1)


async def bench(args) -> int:
    background = machine_busy()
    tmp = Path(tempfile.mkdtemp(prefix="lg-bench-"))
    if args.busy == "sdxl":
        from nodes.demo import make_demo_models

        make_demo_models(tmp / "models" / "checkpoints")
    port = free_port()
    proc = start_server(tmp, port, "--http-processes", str(args.http_processes))
    base = f"http://127.0.0.1:{port}"
    loops = http_pids(port, args.http_processes)
    errors: list[str] = []
    mp = multiprocessing.get_context("spawn")
    ready, stop, results = mp.Event(), mp.Event(), mp.Queue()
    child = mp.Process(target=listen, args=(base, args.clients, ready, stop, results))
    child.start()
    expected: list[set[str]] = [set() for _ in range(args.clients)]
    go, done, finish = mp.Event(), mp.Queue(), mp.Event()
    shares = [list(range(k, args.submissions, args.submitters)) for k in range(args.submitters)]
    senders = [mp.Process(target=submitter, args=(base, share, args.clients, go, done, finish)) for share in shares]
    for sender in senders:
        sender.start()
    for _ in senders:
        assert done.get(timeout=300) == "ready"
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            if not ready.wait(120):
                raise RuntimeError("the websocket clients did not connect")

            async def get(path: str):
                async with session.get(f"{base}{path}") as r:
                    return await r.json()

            async with session.post(f"{base}/prompt", json={"prompt": busy_prompt(args)}) as r:
                slow_id = (await r.json())["prompt_id"]
            while [i[1] for i in (await get("/queue"))["queue_running"]] != [slow_id]:
                await asyncio.sleep(0.005)
            busy_since = time.perf_counter()
            for owned in expected:
                owned.add(slow_id)

            # one at a time first: the service time of a single submission with the worker busy
            async def submit(i: int) -> float:
                answer, ms = await post_prompt(session, base, i, args.clients)
                record(i, answer)
                return ms

            def record(i: int, answer: dict) -> None:
                if "prompt_id" in answer:
                    expected[i % args.clients].add(answer["prompt_id"])
                else:
                    errors.append(f"submission {i}: {answer}")

            single = [await submit(args.submissions + i) for i in range(args.sequential)]
            # the burst: the submitter processes, each with its connections open, released together
            others = {"websocket clients": [child.pid], "executor": executor_pids(proc.pid, loops)}
            others0 = {k: process_cpu_ms(v) for k, v in others.items()}
            cpu0, t0 = loop_cpu_ms(loops), time.perf_counter()
            go.set()
            latencies, client_cpu = [], 0.0
            for _ in senders:
                answers, cpu = done.get(True, 300)  # blocking: this process has nothing else to do meanwhile
                client_cpu += cpu
                for i, answer, ms in answers:
                    record(i, answer)
                    latencies.append(ms)
            burst = (time.perf_counter() - t0) * 1000
            loop_cpu = loop_cpu_ms(loops) - cpu0
            others_cpu = {k: process_cpu_ms(v) - others0[k] for k, v in others.items()}
            finish.set()
            for sender in senders:
                sender.join(30)
            still_busy = [i[1] for i in (await get("/queue"))["queue_running"]] == [slow_id]

            total = args.submissions + args.sequential + 1
            deadline = time.time() + args.timeout
            while len(history := await get("/history")) < total and time.time() < deadline:
                await asyncio.sleep(0.1)
            slow_seconds = time.perf_counter() - busy_since
            failed = [pid for pid, e in history.items() if not e["status"].get("completed")]
            errors += [f"prompt {pid} did not succeed" for pid in failed]
            if len(history) != total:
                errors.append(f"history has {len(history)} entries, expected {total}")
            await asyncio.sleep(1.0)  # let the last messages arrive
    finally:
        stop.set()
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)
    seen = results.get(timeout=60)
    child.join(30)
    for owned, finished in zip(expected, seen["finished"]):
        if owned - set(finished):
            errors.append(f"a client saw {len(owned & set(finished))}/{len(owned)} of its prompts finish")

    delays = seen["delays"]
    print(f"server on 127.0.0.1, {args.clients} websocket clients, {args.submissions} concurrent /prompt submissions"
          f" ({os.cpu_count()} CPU cores; {background:.2f} of them busy with other work before the start)")
    print(f"worker busy with the {args.busy} prompt during the burst: {still_busy}; burst took {burst:.0f} ms; "
          f"all {total} prompts done after {slow_seconds:.1f} s")
    print(f"event loop CPU for the burst, {args.http_processes} HTTP process(es): {loop_cpu:.0f} ms "
          f"({loop_cpu / args.submissions:.2f} ms per submission, "
          f"including its status broadcasts and the fan-out of the running prompt's messages); "
          f"the {args.submitters} submitting processes' CPU meanwhile: {client_cpu:.0f} ms")
    print("other CPU during the burst: " + ", ".join(f"{k} {v:.0f} ms" for k, v in others_cpu.items())
          + f" (the executor runs at nice +{EXECUTOR_NICE})")
    print(f"one at a time       p50 {pct(single, 50):6.1f} ms   p99 {pct(single, 99):6.1f} ms   "
          f"({args.sequential} sequential submissions, worker busy)")
    print(f"submission latency  p50 {pct(latencies, 50):6.1f} ms   p99 {pct(latencies, 99):6.1f} ms   "
          f"max {max(latencies):6.1f} ms   (target p99 <= 50 ms: ratio {pct(latencies, 99) / 50:.2f})")
    print(f"fan-out delay       p50 {pct(delays, 50):6.1f} ms   p99 {pct(delays, 99):6.1f} ms   "
          f"max {max(delays):6.1f} ms   mean {statistics.fmean(delays):.1f} ms over {len(delays)} deliveries "
          f"(target <= 20 ms: p99 ratio {pct(delays, 99) / 20:.2f})")
    print(f"messages received {seen['messages']}, preview frames {seen['previews']}, errors {len(errors)}")
    for e in errors[:10]:
        print("  error:", e)
    return 1 if errors else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--submissions", type=int, default=200)
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--submitters", type=int, default=4, help="processes sharing the burst")
    p.add_argument("--sequential", type=int, default=20, help="one-at-a-time submissions measured before the burst")
    p.add_argument("--busy", choices=("sdxl", "resize"), default="sdxl",
                   help="the running workflow: SDXL base on the demo checkpoint, or large image resizes")
    p.add_argument("--slow-size", type=int, default=2048, help="EmptyImage side of the resize workflow")
    p.add_argument("--http-processes", type=int, default=2,
                   help="the server's --http-processes: processes answering HTTP and websockets on the port")
    p.add_argument("--timeout", type=float, default=300)
    return asyncio.run(bench(p.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
