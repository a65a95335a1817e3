"""`latentgraph serve --http-processes 2` on a live server: both processes answer, each one's websocket clients get
the worker's messages for prompts submitted through either, worker-only requests sent to the extra process reach
the workers, and the extra process goes when the server does (kill -9 included)."""
from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import aiohttp

from patience import async_wait_until, patience, wait_until
from server_helpers import free_port, http_json, image_prompt, slow_prompt, start_server
from test_durability import alive


def owner_pids(local_ports: set[int], pids: list[int]) -> dict[int, int]:
    """Which server process holds the other end of each client connection (by the client's local port):
    /proc/net/tcp gives the socket inode of each server-side connection, /proc/PID/fd which process holds it."""
    inode_of = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        remote_port = int(fields[2].split(":")[1], 16)
        if remote_port in local_ports:
            inode_of[fields[9]] = remote_port
    owners = {}
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = fd.readlink().as_posix()
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inode_of:
                owners[inode_of[target[8:-1]]] = pid
    return owners


async def _exercise(base: str, primary: int) -> int:
    fresh = aiohttp.TCPConnector(force_close=True)  # a new connection per request: the kernel picks the process
    async with aiohttp.ClientSession(connector=fresh) as http:
        async def get(path: str):
            async with http.get(base + path) as r:
                assert r.status == 200
                return await r.json()

        pids = {(await get("/system_stats"))["system"]["pid"] for _ in range(40)}
        assert len(pids) == 2 and primary in pids, pids
        (extra,) = pids - {primary}

        # websocket clients until both processes hold some
        sockets, owners = [], {}
        for i in range(40):
            ws = await http.ws_connect(f"{base}/ws?clientId=c{i}")
            sockets.append(ws)
            port = ws._response.connection.transport.get_extra_info("sockname")[1]
            owners[i] = owner_pids({port}, [primary, extra])[port]
            if len(sockets) >= 6 and set(owners.values()) == {primary, extra}:
                break
        assert set(owners.values()) == {primary, extra}

        # each client submits a prompt (through whichever process takes the connection) and follows it
        submitted = {}
        for i in range(len(sockets)):
            async with http.post(f"{base}/prompt", json={"prompt": image_prompt(color=i, prefix=f"c{i}"),
                                                         "client_id": f"c{i}"}) as r:
                assert r.status == 200, await r.text()
                submitted[i] = (await r.json())["prompt_id"]

        async def follow(i: int, ws) -> tuple[set, int]:
            kinds, remaining = set(), None
            async for msg in ws:
                m = msg.json()
                kinds.add(m["type"])
                if m["type"] == "status":
                    remaining = m["data"]["status"]["exec_info"]["queue_remaining"]
                if m["type"] == "executing" and m["data"]["node"] is None \
                        and m["data"]["prompt_id"] == submitted[i]:
                    return kinds, remaining
        results = await asyncio.wait_for(asyncio.gather(*(follow(i, ws) for i, ws in enumerate(sockets))), patience(120))
        for kinds, remaining in results:
            assert {"status", "execution_start", "executing", "executed", "execution_success"} <= kinds
            assert remaining is not None
        for ws in sockets:
            await ws.close()

        # worker-only requests through the extra process: a keep-alive connection that it holds
        pinned = None
        for _ in range(40):
            pinned = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1))
            async with pinned.get(base + "/system_stats") as r:
                stats = await r.json()
            if stats["system"]["pid"] == extra:
                break
            await pinned.close()
        async with pinned:
            assert stats["system"]["pid"] == extra
            assert [d["name"] for d in stats["devices"]] == ["cpu"]
            async with pinned.post(base + "/prompt", json={"prompt": slow_prompt(2048)}) as r:
                slow = (await r.json())["prompt_id"]

            async def running():
                async with pinned.get(base + "/queue") as r:
                    return [i[1] for i in (await r.json())["queue_running"]] == [slow]
            await async_wait_until(running, every=0.02, what="the slow prompt running")
            async with pinned.post(base + "/interrupt", json={"prompt_id": slow}) as r:
                assert await r.json() == {"interrupted": True}
            async with pinned.post(base + "/free", json={"unload_models": True}) as r:
                assert r.status == 200

            async def recorded():
                async with pinned.get(f"{base}/history/{slow}") as r:
                    return (await r.json()).get(slow)
            entry = await async_wait_until(recorded, every=0.1, what="the interrupted prompt in the history")
            assert entry["status"]["messages"][-1][0] == "execution_interrupted"
    return extra


def test_http_processes_share_the_port_and_the_workers(tmp_path):
    port = free_port()
    proc = start_server(tmp_path, port, "--http-processes", "2")
    try:
        extra = asyncio.run(_exercise(f"http://127.0.0.1:{port}", proc.pid))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(patience(30))
    assert proc.returncode == 0
    wait_until(lambda: not alive(extra), 10)

    # kill -9: the extra process dies with the primary, and nothing is left listening
    proc = start_server(tmp_path, port, "--http-processes", "2", log_name="server2.log")
    try:
        extra = wait_until(lambda: _other_pid(port, proc.pid))
        assert port in listening_ports()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(patience(10))
    wait_until(lambda: not alive(extra), 5)
    # the executor child goes too (it watches its parent); until it has, it may still hold the inherited socket
    wait_until(lambda: port not in listening_ports(), 10, what=f"port {port} closed after kill -9")


def listening_ports() -> set[int]:
    """Ports with a listening TCP socket (/proc/net/tcp state 0A); a probe connect could meet itself (TCP
    self-connect when its ephemeral port equals the target) and pass for a listener."""
    rows = [line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:]]
    return {int(r[1].split(":")[1], 16) for r in rows if r[3] == "0A"}


def _other_pid(port: int, primary: int) -> int | None:
    pid = http_json(port, "/system_stats")["system"]["pid"]  # a new connection each time
    return pid if pid != primary else None
