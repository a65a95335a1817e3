"""The /ws protocol: ComfyUI's message sequence and payload shapes, binary previews, targeting, reconnects."""
from __future__ import annotations

import asyncio
import io
import json
import struct
import threading

import pytest
from aiohttp import WSMsgType
from PIL import Image
from server_helpers import GATES, image_prompt, make_config, probe_registry

from server.app import create_app


@pytest.fixture
async def client(aiohttp_client, tmp_path):
    return await aiohttp_client(create_app(make_config(tmp_path), probe_registry()))


async def collect(ws, prompt_id, timeout=20.0):
    """JSON messages and binary frames until `executing` with node null for `prompt_id`."""
    msgs, frames = [], []
    async with asyncio.timeout(timeout):
        while True:
            msg = await ws.receive()
            if msg.type == WSMsgType.BINARY:
                frames.append(msg.data)
                continue
            assert msg.type == WSMsgType.TEXT, msg
            m = json.loads(msg.data)
            msgs.append(m)
            d = m["data"]
            if m["type"] == "executing" and d["node"] is None and d["prompt_id"] == prompt_id:
                return msgs, frames


async def test_message_sequence_and_previews(client):
    ws = await client.ws_connect("/ws?clientId=abc")
    hello = await ws.receive_json()
    assert hello == {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": "abc"}}
    await client.post("/queue", json={"pause": True})
    resp = await client.post("/prompt", json={"prompt": image_prompt(steps=3), "client_id": "abc"})
    pid = (await resp.json())["prompt_id"]
    while True:  # every queue change is broadcast (the pause itself may come first, with 0)
        queued = await ws.receive_json(timeout=5)
        assert queued["type"] == "status" and set(queued["data"]) == {"status"}
        if queued["data"]["status"]["exec_info"]["queue_remaining"] == 1:
            break
    await client.post("/queue", json={"pause": False})
    msgs, frames = await collect(ws, pid)
    kinds = [m["type"] for m in msgs if m["type"] not in ("status", "progress_state")]
    assert kinds == ["execution_start", "execution_cached",
                     "executing", "executing", "executing", "progress", "progress", "progress", "executing",
                     "progress", "executed", "execution_success", "executing"]  # SaveImage reports per image
    by = {}
    for m in msgs:
        by.setdefault(m["type"], []).append(m["data"])
    assert set(by["execution_start"][0]) == {"prompt_id", "timestamp"}
    assert by["execution_cached"][0]["nodes"] == [] and by["execution_cached"][0]["prompt_id"] == pid
    assert [d["node"] for d in by["executing"]] == ["1", "2", "3", "9", None]
    assert by["executing"][0] == {"node": "1", "display_node": "1", "prompt_id": pid}
    assert by["progress"][2] == {"value": 3, "max": 3, "prompt_id": pid, "node": "3"}
    # progress_state: deltas, naming only the nodes whose state changed
    states = by["progress_state"]
    assert len(states) == 4 + 4 + 1  # a start per node, a step per progress message, the end
    assert all(s["prompt_id"] == pid for s in states)
    assert {n: v["state"] for n, v in states[2]["nodes"].items()} == {"2": "finished", "3": "running"}
    assert states[4]["nodes"] == {"3": {"value": 2, "max": 3, "state": "running", "node_id": "3", "prompt_id": pid,
                                        "display_node_id": "3", "parent_node_id": None, "real_node_id": "3"}}
    finished_3 = states[6]["nodes"]["3"]  # node 9 starts: node 3 ends with its last bar
    assert (finished_3["state"], finished_3["value"], finished_3["max"]) == ("finished", 3, 3)
    assert {n: v["state"] for n, v in states[-1]["nodes"].items()} == {"9": "finished"}
    executed = by["executed"][0]
    assert executed["node"] == "9" and executed["display_node"] == "9" and executed["prompt_id"] == pid
    assert executed["output"]["images"][0]["type"] == "output"
    assert by["execution_success"][0]["prompt_id"] == pid
    statuses = [d["status"]["exec_info"]["queue_remaining"] for d in by["status"]]
    assert statuses[-1] == 0  # sent when the prompt ends, before its final `executing`
    # three previews: event 1 (JPEG), capped at 512 px
    assert len(frames) == 3
    event, fmt = struct.unpack(">II", frames[0][:8])
    assert (event, fmt) == (1, 1) and frames[0][8:10] == b"\xff\xd8"
    assert max(Image.open(io.BytesIO(frames[0][8:])).size) == 512

    # run again: everything is cached and the output node still reports `executed`
    resp = await client.post("/prompt", json={"prompt": image_prompt(steps=3), "client_id": "abc"})
    pid2 = (await resp.json())["prompt_id"]
    msgs, frames = await collect(ws, pid2)
    cached = next(m["data"] for m in msgs if m["type"] == "execution_cached")
    assert "9" in cached["nodes"] and frames == [] and "progress" not in [m["type"] for m in msgs]
    assert [m["type"] for m in msgs].count("executed") == 1
    await ws.close()


async def test_preview_metadata_frames_for_clients_that_ask(client):
    ws = await client.ws_connect("/ws?clientId=meta")
    await ws.receive_json()
    await ws.send_json({"type": "feature_flags", "data": {"supports_preview_metadata": True}})
    flags = await ws.receive_json()
    assert flags["type"] == "feature_flags" and flags["data"]["supports_preview_metadata"] is True
    resp = await client.post("/prompt", json={"prompt": image_prompt(steps=1, color=7), "client_id": "meta"})
    pid = (await resp.json())["prompt_id"]
    _, frames = await collect(ws, pid)
    event, size = struct.unpack(">II", frames[0][:8])
    meta = json.loads(frames[0][8:8 + size])
    assert event == 4 and meta["node_id"] == "3" and meta["prompt_id"] == pid and meta["image_type"] == "image/jpeg"
    assert frames[0][8 + size:8 + size + 2] == b"\xff\xd8"
    await ws.close()


async def test_messages_go_to_the_prompts_client_only(client):
    a = await client.ws_connect("/ws?clientId=a")
    b = await client.ws_connect("/ws?clientId=b")
    await a.receive_json(), await b.receive_json()
    resp = await client.post("/prompt", json={"prompt": image_prompt(color=11), "client_id": "a"})
    pid = (await resp.json())["prompt_id"]
    await collect(a, pid)
    seen_by_b = []
    while True:
        try:
            seen_by_b.append((await b.receive_json(timeout=0.3))["type"])
        except asyncio.TimeoutError:
            break
    assert set(seen_by_b) == {"status"}  # queue changes are broadcast, execution messages are not
    await a.close(), await b.close()


async def test_error_and_reconnect_mid_prompt(client, tmp_path):
    ws = await client.ws_connect("/ws?clientId=r")
    await ws.receive_json()
    GATES["reconnect"] = gate = threading.Event()
    resp = await client.post("/prompt", json={"prompt": image_prompt(steps=2, gate="reconnect"), "client_id": "r"})
    pid = (await resp.json())["prompt_id"]
    while True:  # wait until node 3 runs
        m = await ws.receive_json(timeout=10)
        if m["type"] == "executing" and m["data"]["node"] == "3":
            break
    await ws.close()
    ws = await client.ws_connect("/ws?clientId=r")
    assert (await ws.receive_json())["data"]["sid"] == "r"
    again = await ws.receive_json(timeout=5)
    assert again == {"type": "executing", "data": {"node": "3", "display_node": "3", "prompt_id": pid}}
    gate.set()
    await collect(ws, pid)

    # a node that fails at run time: LoadImage of a file removed after validation
    Image.new("RGB", (4, 4)).save(tmp_path / "input" / "gone.png")
    prompt = {"1": {"class_type": "LoadImage", "inputs": {"image": "gone.png"}},
              "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}}
    await client.post("/queue", json={"pause": True})
    resp = await client.post("/prompt", json={"prompt": prompt, "client_id": "r"})
    pid = (await resp.json())["prompt_id"]
    (tmp_path / "input" / "gone.png").unlink()
    await client.post("/queue", json={"pause": False})
    msgs, _ = await collect(ws, pid)
    err = next(m["data"] for m in msgs if m["type"] == "execution_error")
    assert err["prompt_id"] == pid and err["node_id"] == "1" and err["node_type"] == "LoadImage"
    assert "gone.png" in err["exception_message"] and isinstance(err["traceback"], list)
    assert {"executed", "exception_type", "current_inputs", "current_outputs", "timestamp"} <= set(err)
    hist = await (await client.get(f"/history/{pid}")).json()
    assert hist[pid]["status"]["status_str"] == "error"
    assert hist[pid]["status"]["messages"][-1][0] == "execution_error"
    await ws.close()


async def test_websocket_survives_garbage(client):
    ws = await client.ws_connect("/api/ws")
    hello = await ws.receive_json()
    assert len(hello["data"]["sid"]) == 32  # minted uuid4 hex
    await ws.send_str("not json")
    await ws.send_json({"type": "feature_flags", "data": "nope"})
    await ws.send_bytes(b"\x00\x01")
    resp = await client.get("/prompt")
    assert resp.status == 200
    await ws.close()


async def statuses_until(ws, until: int, timeout: float) -> list[int]:
    """queue_remaining of each status message until one carries `until`."""
    seen = []
    async with asyncio.timeout(timeout):
        while not seen or seen[-1] != until:
            m = await ws.receive_json()
            if m["type"] == "status":
                seen.append(m["data"]["status"]["exec_info"]["queue_remaining"])
    return seen


async def test_a_queue_change_is_sent_at_once_and_the_next_ones_coalesced(client, monkeypatch):
    monkeypatch.setattr("server.app.STATUS_INTERVAL", 3600.0)
    ws = await client.ws_connect("/ws?clientId=counter")
    await ws.receive_json()  # the hello
    await client.post("/queue", json={"pause": True})
    assert await statuses_until(ws, 0, 5) == [0]  # the first change after a quiet interval: not held for the hour
    for i in range(3):
        assert (await client.post("/prompt", json={"prompt": image_prompt(color=i)})).status == 200
    with pytest.raises(TimeoutError):  # within the interval: held for its end
        await statuses_until(ws, 3, 0.5)
    await ws.close()


async def test_a_burst_of_submissions_ends_with_a_status_of_the_final_count(client):
    ws = await client.ws_connect("/ws?clientId=counter")
    await ws.receive_json()
    await client.post("/queue", json={"pause": True})
    burst = await asyncio.gather(*(client.post("/prompt", json={"prompt": image_prompt(color=i)})
                                   for i in range(20)))
    assert all(r.status == 200 for r in burst)
    seen = await statuses_until(ws, 20, 5)
    assert len(seen) < 10, seen  # one per interval, not one per submission
    await ws.close()
