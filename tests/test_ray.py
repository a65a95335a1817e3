"""`latentgraph serve --ray ADDRESS` on a real Ray cluster: two raylet nodes on this machine (ray.cluster_utils),
each declaring one fake GPU, so the server starts one actor per "GPU"; the actors see no CUDA and run on the CPU.
Files go through Ray's object store (--ray-files object-store), as between machines. Everything is driven through
HTTP and /ws, as a client would."""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import io
import json
import os
import shutil
import signal
import struct
import subprocess
from pathlib import Path

import aiohttp
import pytest
from PIL import Image
from patience import wait_until
from server_helpers import PYTHON, REPO, free_port, http_json, image_prompt, local_ray_cluster, start_server
from test_durability import alive

from nodes.demo import make_demo_models
from server.cli import main
from server.ray_runner import FOLDERS, MARKER, EventBuffer, actor_folders, place_file

pytest.importorskip("ray")

pytestmark = pytest.mark.slow

BASE, REFINER = "demo_sdxl_base.safetensors", "demo_sdxl_refiner.safetensors"
WATCHDOG = 10.0  # the server's --watchdog: seconds an actor may send nothing mid-prompt


class Server:
    """`latentgraph serve --ray ADDRESS` in a subprocess, restartable on the same folders."""

    def __init__(self, folder: Path, address: str):
        self.folder, self.address, self.port, self.proc = folder, address, free_port(), None

    def start(self) -> None:
        self.proc = start_server(self.folder, self.port, "--ray", self.address, "--ray-files", "object-store",
                                 "--ray-max-wait", "60", "--watchdog", str(WATCHDOG))
        wait_until(lambda: all(d.get("ready") for d in self.devices()) and len(self.devices()) == 2, seconds=300,
                 every=0.5)

    def devices(self) -> list[dict]:
        return http_json(self.port, "/system_stats")["devices"]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ray-server")
    # the demo checkpoints are written while the cluster starts (both mostly wait on imports and process starts)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        models = pool.submit(make_demo_models, folder / "models" / "checkpoints")
        with local_ray_cluster([{"num_gpus": 1}, {"num_gpus": 1}]) as cluster:
            models.result()
            server = Server(folder, cluster.address)
            try:
                server.start()
                yield server
            finally:
                server.stop()
    assert not (folder / "output" / MARKER).exists()


def sample(ckpt: str, seed: int, steps: int = 2, prefix: str = "ray") -> dict:
    """A ComfyUI-basic text-to-image prompt on a demo checkpoint (64 px: a fraction of a second per step)."""
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a lion", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0],
                                                   "latent_image": ["4", 0], "seed": seed, "steps": steps, "cfg": 5.0,
                                                   "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": prefix}},
    }


class Watcher:
    """A websocket client that asked for previews with metadata; keeps every message in order."""

    def __init__(self, ws):
        self.ws, self.messages, self.previews = ws, [], []
        self.task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for m in self.ws:
            if m.type == aiohttp.WSMsgType.BINARY:
                event, size = struct.unpack(">II", m.data[:8])
                if event == 4:  # PREVIEW_IMAGE_WITH_METADATA, as asked: it names the prompt
                    self.previews.append(json.loads(m.data[8:8 + size]))
            elif m.type == aiohttp.WSMsgType.TEXT:
                self.messages.append(json.loads(m.data))

    def of(self, prompt_id: str) -> list[dict]:
        return [m for m in self.messages if m.get("data", {}).get("prompt_id") == prompt_id]

    async def until(self, predicate, timeout: float = 300) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.05)


async def watch(http: aiohttp.ClientSession, base: str, client_id: str) -> Watcher:
    ws = await http.ws_connect(f"{base}/ws?clientId={client_id}")
    await ws.send_json({"type": "feature_flags", "data": {"supports_preview_metadata": True}})
    return Watcher(ws)


async def submit(http, base: str, prompt: dict, client_id: str) -> str:
    async with http.post(f"{base}/prompt", json={"prompt": prompt, "client_id": client_id}) as r:
        body = await r.json()
        assert r.status == 200, body
        return body["prompt_id"]


async def history(http, base: str) -> dict:
    async with http.get(f"{base}/history") as r:
        return await r.json()


async def until_done(http, base: str, ids: list[str], timeout: float = 300) -> dict:
    async with asyncio.timeout(timeout):
        while not set(ids) <= set(entries := await history(http, base)):
            await asyncio.sleep(0.2)
    return entries


async def test_prompts_spread_by_model_affinity_and_stream_back_events_and_files(server):
    base = f"http://127.0.0.1:{server.port}"
    async with aiohttp.ClientSession() as http:
        watcher = await watch(http, base, "spread")
        ids = [await submit(http, base, sample((BASE, REFINER)[i % 2], seed=i), "spread") for i in range(20)]
        entries = await until_done(http, base, ids)
        await watcher.until(lambda: all(any(m["type"] == "executing" and m["data"]["node"] is None
                                            for m in watcher.of(pid)) for pid in ids))

        workers = {pid: entries[pid]["meta"]["worker"] for pid in ids}
        assert all(entries[pid]["status"]["completed"] for pid in ids)
        assert set(workers.values()) == {"ray-0", "ray-1"}  # spread over both actors

        # affinity: each checkpoint was read once, by one actor, which ran every prompt on it
        devices = {d["worker"]: d for d in server.devices()}
        builds = {(w, rel): m["builds"] for w, d in devices.items() for rel, m in d["resident"].items()}
        assert sorted(builds.values()) == [1, 1], builds
        for i, pid in enumerate(ids):
            ckpt = f"checkpoints/{(BASE, REFINER)[i % 2]}"
            assert (workers[pid], ckpt) in builds
            assert ckpt in entries[pid]["meta"]["route_reason"]
        assert all(d["node"] and d["pid"] and d["device"] == "cpu" for d in devices.values())

        # provenance and profiles come back from the actors as from a local worker
        sha = hashlib.sha256((server.folder / "models" / "checkpoints" / BASE).read_bytes()).hexdigest()
        (model,) = entries[ids[0]]["meta"]["latentgraph"]["models"]
        assert model["name"] == BASE and model["sha256"] == sha
        assert entries[ids[0]]["meta"]["profile"]["5"]["ms"] > 0
        assert all(m["data"]["profile"] for m in watcher.of(ids[0]) if m["type"] == "executed")

        # every actor's progress and previews reached the client, each prompt's messages in order
        for worker in ("ray-0", "ray-1"):
            mine = [pid for pid in ids if workers[pid] == worker]
            assert any(p["prompt_id"] in mine for p in watcher.previews)
            assert any(m["type"] == "progress" for pid in mine for m in watcher.of(pid))
        for pid in ids:
            kinds = [m["type"] for m in watcher.of(pid) if m["type"] != "progress_state"]
            assert kinds[0] == "execution_start" and kinds[-2:] == ["execution_success", "executing"]
            assert kinds.index("executed") > max(i for i, k in enumerate(kinds) if k == "progress")
            steps = [m["data"]["value"] for m in watcher.of(pid)
                     if m["type"] == "progress" and m["data"]["node"] == "5"]
            assert steps == sorted(steps) and steps[-1] == 2

        # the files came back through the object store: twenty distinct PNGs, each served by /view
        names = set()
        for pid in ids:
            (image,) = entries[pid]["outputs"]["7"]["images"]
            names.add(image["filename"])
            async with http.get(f"{base}/view", params=image) as r:
                assert r.status == 200 and r.content_type == "image/png"
                assert (await r.read())[:8] == b"\x89PNG\r\n\x1a\n"
        assert len(names) == 20
        assert sorted(p.name for p in (server.folder / "output").glob("*.png")) == sorted(names)
        await watcher.ws.close()


async def test_interrupt_reaches_the_actor_running_the_prompt_and_free_reaches_all(server):
    base = f"http://127.0.0.1:{server.port}"
    async with aiohttp.ClientSession() as http:
        watcher = await watch(http, base, "interrupt")
        # one long prompt per actor (each holds one of the checkpoints)
        stop, keep = [await submit(http, base, sample(ckpt, seed=100, steps=40), "interrupt")
                      for ckpt in (BASE, REFINER)]
        await watcher.until(lambda: all(any(m["type"] == "progress" for m in watcher.of(p)) for p in (stop, keep)))
        async with http.post(f"{base}/interrupt", json={"prompt_id": stop}) as r:
            assert (await r.json()) == {"interrupted": True}
        entries = await until_done(http, base, [stop, keep])
        assert [m[0] for m in entries[stop]["status"]["messages"]][-1] == "execution_interrupted"
        assert entries[keep]["status"]["completed"]  # the other actor's prompt ran on
        assert entries[stop]["meta"]["worker"] != entries[keep]["meta"]["worker"]

        async with http.post(f"{base}/free", json={"unload_models": True, "free_memory": True}) as r:
            assert r.status == 200
        wait_until(lambda: all(d["resident"] == {} and d["cache"]["entries"] == 0 for d in server.devices()),
                   seconds=60)
        await watcher.ws.close()


@pytest.mark.parametrize("sig, reason", [
    (signal.SIGKILL, "died while running this prompt"),
    # Ray still sees a live process: only the watchdog (--watchdog) can tell
    (signal.SIGSTOP, "stopped responding while running this prompt (no heartbeat for"),
], ids=["killed", "stopped"])
async def test_an_actor_lost_mid_prompt_loses_nothing_and_its_prompt_runs_elsewhere(server, sig, reason):
    base = f"http://127.0.0.1:{server.port}"
    async with aiohttp.ClientSession() as http:
        watcher = await watch(http, base, f"lost-{sig}")
        long = await submit(http, base, sample(BASE, seed=200 + sig, steps=30), f"lost-{sig}")
        await watcher.until(lambda: any(m["type"] == "progress" and m["data"]["node"] == "5" for m in watcher.of(long)))
        queued = [await submit(http, base, sample((BASE, REFINER)[i % 2], seed=300 + sig + i), f"lost-{sig}")
                  for i in range(4)]
        (victim,) = [d for d in server.devices() if d["running"] == long]
        os.kill(victim["pid"], sig)
        try:
            entries = await until_done(http, base, [long, *queued])
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim["pid"], signal.SIGCONT)
        assert all(entries[pid]["status"]["completed"] for pid in [long, *queued])  # nothing lost
        meta = entries[long]["meta"]
        assert meta["worker"] != victim["worker"]
        (attempt,) = meta["attempts"]
        assert attempt["worker"] == victim["worker"] and attempt["status"] == "interrupted"
        assert attempt["node"] in ("5", "6", "7")  # cut off in the sampler (or just after it)
        assert reason in attempt["reason"]
        assert "execution_interrupted" in [m["type"] for m in watcher.of(long)]  # clients saw it cut off

        # Ray restarted the actor; it is listed again, in a new process
        wait_until(lambda: any(d["worker"] == victim["worker"] and d["ready"] and d["pid"] != victim["pid"]
                             for d in server.devices()), seconds=120)
        assert not alive(victim["pid"])
        await watcher.ws.close()


async def test_uploaded_images_travel_to_the_actors_with_their_prompt(server):
    base = f"http://127.0.0.1:{server.port}"
    picture = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 60)).save(picture, format="PNG")
    async with aiohttp.ClientSession() as http:
        form = aiohttp.FormData()
        form.add_field("image", picture.getvalue(), filename="upload.png", content_type="image/png")
        async with http.post(f"{base}/upload/image", data=form) as r:
            name = (await r.json())["name"]
        pid = await submit(http, base, {
            "1": {"class_type": "LoadImage", "inputs": {"image": name}},
            "9": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "loaded"}}}, "upload")
        entry = (await until_done(http, base, [pid]))[pid]
        assert entry["status"]["completed"], entry["status"]
        async with http.get(f"{base}/view", params=entry["outputs"]["9"]["images"][0]) as r:
            with Image.open(io.BytesIO(await r.read())) as saved:
                assert saved.convert("RGB").getpixel((3, 3)) == (200, 30, 60)


def test_the_deployment_check_in_the_docs_passes(server):
    check = subprocess.run([PYTHON, str(REPO / "scripts" / "check_scale_out.py"), f"http://127.0.0.1:{server.port}",
                            "--actors", "2", "--timeout", "300"], capture_output=True, text=True, timeout=400)
    assert check.returncode == 0, check.stdout + check.stderr
    lines = check.stdout.splitlines()
    assert lines[-1] == "OK" and {"actor ray-0:", "actor ray-1:"} <= {" ".join(line.split()[:2]) for line in lines}


async def test_a_restarted_head_carries_on_from_the_queue_in_sqlite(server):
    base = f"http://127.0.0.1:{server.port}"
    async with aiohttp.ClientSession() as http:
        old_actors = [d["pid"] for d in server.devices()]
        async with http.post(f"{base}/queue", json={"pause": True}) as r:
            assert r.status == 200
        ids = [await submit(http, base, image_prompt(color=i, prefix="restart"), "restart") for i in range(3)]
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(30)
    wait_until(lambda: not any(alive(pid) for pid in old_actors), seconds=60)  # Ray ends a dead driver's actors

    server.start()
    async with aiohttp.ClientSession() as http:
        entries = await until_done(http, base, ids)
        assert all(entries[pid]["status"]["completed"] for pid in ids)
        assert not {d["pid"] for d in server.devices()} & set(old_actors)


# -- the parts that need no cluster -----------------------------------------------------------------------------
def test_serve_refuses_ray_options_without_ray(tmp_path, capsys):
    assert main(["serve", "--no-demo-models", "--data", str(tmp_path), "--ray-cpu-workers", "2"]) == 2
    assert "--ray-cpu-workers needs --ray" in capsys.readouterr().err


def test_an_actor_shares_a_folder_only_where_it_finds_this_servers_marker(tmp_path):
    server_dirs = {kind: str(tmp_path / kind) for kind in FOLDERS}
    for folder in server_dirs.values():
        os.mkdir(folder)
    Path(server_dirs["output"], MARKER).write_text("this-server")
    made = []

    def folders(token: str, mode: str) -> dict[str, bool]:
        dirs, shared = actor_folders(server_dirs, token, mode)
        for kind in FOLDERS:
            assert (dirs[kind] == server_dirs[kind]) == shared[kind] and os.path.isdir(dirs[kind])
            if not shared[kind]:
                made.append(os.path.dirname(dirs[kind]))
        return shared

    try:
        assert folders("this-server", "auto") == {"input": False, "output": True, "temp": False}
        assert not any(folders("another-server", "auto").values())
        assert not any(folders("this-server", "object-store").values())
        assert all(folders("another-server", "shared").values())
    finally:
        for folder in set(made):
            shutil.rmtree(folder)


def test_files_from_actors_never_overwrite_each_other(tmp_path):
    out = str(tmp_path)
    assert place_file(out, "", "ray_00001_.png", b"a") == "ray_00001_.png"
    assert place_file(out, "", "ray_00001_.png", b"a") == "ray_00001_.png"  # a cached node reports it again
    assert place_file(out, "", "ray_00001_.png", b"b") == "ray_00002_.png"  # another actor's first file
    assert place_file(out, "sub", "pic.png", b"c") == "pic.png"
    other = place_file(out, "sub", "pic.png", b"d")
    assert other.startswith("pic (") and other.endswith(").png")
    assert [(tmp_path / n).read_bytes() for n in ("ray_00001_.png", "ray_00002_.png")] == [b"a", b"b"]
    with pytest.raises(ValueError, match="leaves its folder"):
        place_file(out, "..", "escape.png", b"")


def test_the_event_buffer_never_blocks_the_executor_and_keeps_a_nodes_newest_progress():
    events = EventBuffer()
    events.put(("node_start", "5"))
    for step in range(1, 10_001):  # nobody reads meanwhile
        events.put(("progress", "5", step, 10_000, b"jpeg" if step == 9_999 else None))
    events.put(("executed", "5", {}, []))
    assert events.take() == [("node_start", "5"), ("progress", "5", 10_000, 10_000, b"jpeg"), ("executed", "5", {}, [])]
