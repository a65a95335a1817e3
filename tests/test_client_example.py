"""A client written the way ComfyUI's websocket API example is, run against a live server on 127.0.0.1.

The client knows nothing of latentgraph: it POSTs /prompt with a client_id, follows /ws until `executing` with
node null for its prompt, then reads /history and downloads every image through /view.
"""
from __future__ import annotations

import asyncio
import io
import json
import time
import uuid

import aiohttp
import pytest
from patience import patience
from PIL import Image
from server_helpers import REPO, free_port, start_server

# ---- the client (mirrors ComfyUI's script/examples/websockets_api_example.py, written with aiohttp) ----------


class ComfyClient:
    def __init__(self, session: aiohttp.ClientSession, server: str):
        self.session, self.server, self.client_id = session, server, str(uuid.uuid4())

    async def queue_prompt(self, prompt: dict) -> dict:
        async with self.session.post(f"http://{self.server}/prompt",
                                     json={"prompt": prompt, "client_id": self.client_id}) as resp:
            return await resp.json()

    async def get_image(self, filename: str, subfolder: str, folder_type: str) -> bytes:
        params = {"filename": filename, "subfolder": subfolder, "type": folder_type}
        async with self.session.get(f"http://{self.server}/view", params=params) as resp:
            return await resp.read()

    async def get_history(self, prompt_id: str) -> dict:
        async with self.session.get(f"http://{self.server}/history/{prompt_id}") as resp:
            return await resp.json()

    async def get_images(self, ws, prompt: dict) -> tuple[str, dict[str, list[bytes]]]:
        prompt_id = (await self.queue_prompt(prompt))["prompt_id"]
        while True:
            out = await ws.receive()
            if out.type == aiohttp.WSMsgType.TEXT:
                message = json.loads(out.data)
                if message["type"] == "executing":
                    data = message["data"]
                    if data["node"] is None and data["prompt_id"] == prompt_id:
                        break  # execution is done
            # binary frames are previews; the example ignores them
        history = (await self.get_history(prompt_id))[prompt_id]
        output_images = {}
        for node_id, node_output in history["outputs"].items():
            if "images" in node_output:
                output_images[node_id] = [await self.get_image(i["filename"], i["subfolder"], i["type"])
                                          for i in node_output["images"]]
        return prompt_id, output_images


# ---- the test --------------------------------------------------------------------------------------------------


@pytest.fixture
def live_server(tmp_path):
    port = free_port()
    proc = start_server(tmp_path, port)
    yield f"127.0.0.1:{port}", proc
    proc.terminate()
    proc.wait(patience(20))


async def test_comfyui_style_client_runs_a_shipped_workflow(live_server):
    live_server, proc = live_server
    workflow = json.loads((REPO / "workflows" / "image_basic.json").read_text())
    async with aiohttp.ClientSession() as session:
        client = ComfyClient(session, live_server)
        async with session.ws_connect(f"ws://{live_server}/ws?clientId={client.client_id}") as ws:
            # the shipped UI-format file, converted by the server
            prompt_id, images = await asyncio.wait_for(client.get_images(ws, workflow), patience(120))
            (first,) = images.values()
            img = Image.open(io.BytesIO(first[0]))
            assert img.size == (768, 576)
            assert img.convert("RGB").getpixel((10, 10)) == (0xFF - 0x33, 0xFF - 0x66, 0xFF - 0xCC)
            assert "workflow" in img.text and "prompt" in img.text  # the PNG carries the graph

            # as the example does: take the API prompt, change an input, queue it again
            api = (await client.get_history(prompt_id))[prompt_id]["prompt"][2]
            empty = next(n for n in api.values() if n["class_type"] == "EmptyImage")
            empty["inputs"]["color"] = 0x000000
            _, images = await asyncio.wait_for(client.get_images(ws, api), patience(120))
            (second,) = images.values()
            assert Image.open(io.BytesIO(second[0])).convert("RGB").getpixel((10, 10)) == (255, 255, 255)

            # the worker runs in a child process; /system_stats shows its cache as of the last prompt
            async with session.get(f"http://{live_server}/system_stats") as resp:
                (device,) = (await resp.json())["devices"]
            assert device["type"] == "cpu" and device["vram_total"] > 0 and device["cache"]["entries"] >= 4

            # SIGTERM with this websocket still open: the server closes it and exits promptly
            started = time.monotonic()
            proc.terminate()
            closing = await asyncio.wait_for(ws.receive(), patience(15))
            assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED)
            assert await asyncio.get_running_loop().run_in_executor(None, proc.wait, patience(15)) == 0
            assert time.monotonic() - started < patience(15)
