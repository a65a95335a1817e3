"""Per-node profiling: time, peak memory, cached or why it ran — in the run report, the /ws messages, the
history entry and `latentgraph run --profile`. (The sampler's "seed changed" is in test_server_sdxl.py.)"""
from __future__ import annotations

import asyncio
import ctypes
import gc
import os

from server_helpers import image_prompt, make_config, probe_registry

from server.app import create_app
from server.cli import main, profile_table
from server.executor import Executor

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_slow_node_cached_nodes_and_why_each_ran(env):
    executor = Executor(probe_registry(), env)
    prompt = image_prompt(size=16, steps=2, delay=0.1)  # EmptyImage → ImageInvert → TestSteps (0.2 s) → SaveImage
    report = executor.run(prompt, ["9"])
    profile = report.profile
    assert list(profile) == ["1", "2", "3", "9"]
    assert max(profile, key=lambda n: profile[n]["ms"]) == "3" and profile["3"]["ms"] >= 200
    assert all(e["why"] == "first run" and not e["cached"] for e in profile.values())
    assert profile["3"]["memory"] == "rss" and profile["3"]["peak_bytes"] is not None

    assert executor.run(prompt, ["9"]).profile == {"9": {"class_type": "SaveImage", "cached": True, "ms": 0.0,
                                                         "peak_bytes": None, "memory": "rss", "why": None}}
    prompt["1"]["inputs"]["color"] = 0x00FF00
    whys = {n: e["why"] for n, e in executor.run(prompt, ["9"]).profile.items()}
    assert whys == {"1": "color changed", "2": "upstream changed: image", "3": "upstream changed: image",
                    "9": "upstream changed: images"}
    executor.cache.clear()
    assert executor.run(prompt, ["9"]).profile["1"]["why"] == "not in the cache (evicted, or memory was freed)"


def test_peak_memory_is_what_the_node_added(env):
    big = {"1": {"class_type": "EmptyImage", "inputs": {"width": 2048, "height": 2048, "batch_size": 1, "color": 1}},
           "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
           "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}}}
    # The measure is the resident set's peak above its size when the node starts, so memory this process already
    # holds does not count: free the garbage earlier tests in this worker left, and hand glibc's free heap back to
    # the system, or the image may be placed in pages that are already resident.
    gc.collect()
    if hasattr(ctypes.CDLL(None), "malloc_trim"):
        ctypes.CDLL(None).malloc_trim(0)
    report = Executor(probe_registry(), env).run(big, ["3"])
    size = 2048 * 2048 * 3 * 4  # one float32 image
    assert 0.9 * size <= report.profile["1"]["peak_bytes"] <= 2.5 * size
    assert 0.9 * size <= report.profile["2"]["peak_bytes"] <= 2.5 * size


async def test_profile_in_executed_success_messages_and_history(aiohttp_client, tmp_path):
    client = await aiohttp_client(create_app(make_config(tmp_path), probe_registry()))
    ws = await client.ws_connect("/ws?clientId=prof")
    await ws.receive_json()
    for color in (1, 1):  # the second run is served from the cache
        resp = await client.post("/prompt", json={"prompt": image_prompt(color=color), "client_id": "prof"})
        pid = (await resp.json())["prompt_id"]
        messages = {}
        async with asyncio.timeout(30):  # until `executing` null: by then the history entry is written
            while messages.get("executing", {"node": "none yet"})["node"] is not None:
                m = await ws.receive_json()
                messages[m["type"]] = m["data"]
        history = (await (await client.get(f"/history/{pid}")).json())[pid]
        profile = messages["execution_success"]["profile"]
        assert history["meta"]["profile"] == profile
        assert messages["executed"]["profile"] == profile["9"]
        assert "profile" not in history["status"]["messages"][-1][1], "kept once in the history entry"
    assert profile == {"9": {"class_type": "SaveImage", "cached": True, "ms": 0.0, "peak_bytes": None,
                             "memory": "rss", "why": None}}
    await ws.close()


def test_cli_profile_table(tmp_path, capsys):
    code = main(["run", os.path.join(REPO, "workflows", "image_basic.json"), "--out", str(tmp_path / "out"),
                 "--data", str(tmp_path / "data"), "-q", "--profile"])
    err = capsys.readouterr().err
    assert code == 0, err
    lines = err[err.index("node  type"):].splitlines()
    assert lines[0].split() == ["node", "type", "time", "peak", "memory", "cached", "why", "it", "ran"]
    assert [line.split()[:2] for line in lines[1:5]] == [["1", "EmptyImage"], ["2", "ImageScale"],
                                                         ["3", "ImageInvert"], ["4", "SaveImage"]]
    assert all(line.split()[3] == "ms" and line.split()[-3:] == ["no", "first", "run"] for line in lines[1:5])
    assert lines[5].startswith("4 run, 0 cached")


def test_table_shows_cached_rows_and_units():
    text = profile_table({"1": {"class_type": "Loader", "cached": True, "ms": 0.0, "peak_bytes": None, "memory": "cuda",
                        "why": None},
                  "2": {"class_type": "Sampler", "cached": False, "ms": 1234.5, "peak_bytes": 3 * 1024 ** 3,
                        "memory": "cuda", "why": "seed changed"}})
    assert text.splitlines()[1:] == [
        "1     Loader              -            yes",
        "2     Sampler  1234.5 ms  3.0 GB       no      seed changed",
        "1 run, 1 cached, 1234.5 ms in nodes; memory: CUDA peak allocated added, '-' under 0.1 ms"]
