"""Every HTTP route through aiohttp's test client, including the error paths."""
from __future__ import annotations

import asyncio
import io
import json
import threading

import pytest
from PIL import Image
from yarl import URL
from server_helpers import AT_GATE, GATES, image_prompt, make_config, probe_registry, upload_form

from server.app import STATE, create_app


@pytest.fixture
async def client(aiohttp_client, tmp_path):
    return await aiohttp_client(create_app(make_config(tmp_path), probe_registry()))


def state(client):
    return client.app[STATE]


async def submit(client, prompt, **body):
    resp = await client.post("/prompt", json={"prompt": prompt, **body})
    data = await resp.json()
    assert resp.status == 200, data
    return data


async def wait_history(client, prompt_id, timeout=20.0):
    for _ in range(int(timeout / 0.05)):
        data = await (await client.get(f"/history/{prompt_id}")).json()
        if prompt_id in data:
            return data[prompt_id]
        await asyncio.sleep(0.05)
    raise AssertionError(f"prompt {prompt_id} did not finish")


def png_bytes(color=(10, 20, 30, 255), size=(8, 8)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGBA", size, color).save(buf, format="PNG")
    return buf.getvalue()


# -- prompts ---------------------------------------------------------------------------------------------------
async def test_prompt_runs_to_history_and_view(client):
    res = await submit(client, image_prompt(color=0x00FF00, prefix="green"))
    assert set(res) == {"prompt_id", "number", "node_errors"} and res["node_errors"] == {}
    entry = await wait_history(client, res["prompt_id"])
    assert entry["status"]["status_str"] == "success" and entry["status"]["completed"] is True
    assert [m[0] for m in entry["status"]["messages"]] == ["execution_start", "execution_cached", "execution_success"]
    assert entry["prompt"][1] == res["prompt_id"] and entry["prompt"][4] == ["9"]
    image = entry["outputs"]["9"]["images"][0]
    assert image["type"] == "output" and image["filename"].startswith("green")
    for prefix in ("", "/api"):
        resp = await client.get(f"{prefix}/view", params={"filename": image["filename"],
                                                          "subfolder": image["subfolder"], "type": "output"})
        assert resp.status == 200 and resp.content_type == "image/png"
        # inverted green
        assert Image.open(io.BytesIO(await resp.read())).convert("RGB").getpixel((0, 0)) == (255, 0, 255)
    assert (await (await client.get("/prompt")).json()) == {"exec_info": {"queue_remaining": 0}}


async def test_prompt_accepts_ui_workflow(client):
    ui = {"version": 0.4, "last_node_id": 2, "last_link_id": 1, "groups": [], "config": {}, "extra": {},
          "nodes": [{"id": 1, "type": "EmptyImage", "mode": 0, "inputs": [],
                     "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [1]}], "widgets_values": [8, 8, 1, 255]},
                    {"id": 2, "type": "SaveImage", "mode": 0, "inputs": [{"name": "images", "type": "IMAGE", "link": 1}],
                     "outputs": [], "widgets_values": ["fromui"]}],
          "links": [[1, 1, 0, 2, 0, "IMAGE"]]}
    for body in ({"prompt": ui}, ui):  # as `prompt`, or the whole body
        resp = await client.post("/api/prompt", json=body)
        assert resp.status == 200, await resp.text()
        pid = (await resp.json())["prompt_id"]
        entry = await wait_history(client, pid)
        assert entry["status"]["status_str"] == "success"
        assert entry["prompt"][2]["1"]["inputs"]["color"] == 255
        assert entry["prompt"][3]["extra_pnginfo"]["workflow"]["nodes"][0]["type"] == "EmptyImage"


async def test_prompt_validation_errors(client):
    resp = await client.post("/prompt", data=b"{not json")
    assert resp.status == 400 and (await resp.json())["error"]["type"] == "invalid_json"
    resp = await client.post("/prompt", json=[1, 2])
    assert resp.status == 400 and (await resp.json())["error"]["type"] == "invalid_json"
    resp = await client.post("/prompt", json={"client_id": "x"})
    assert resp.status == 400 and (await resp.json())["error"]["type"] == "no_prompt"
    resp = await client.post("/prompt", json={"prompt": {"1": {"class_type": "NoSuchNode", "inputs": {}}}})
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["type"] in ("invalid_prompt", "missing_node_type") and "NoSuchNode" in error["message"]
    bad = image_prompt()
    bad["1"]["inputs"]["width"] = -5
    resp = await client.post("/prompt", json={"prompt": bad})
    data = await resp.json()
    assert resp.status == 400 and data["error"]["type"] == "prompt_outputs_failed_validation"
    err = data["node_errors"]["1"]
    assert err["class_type"] == "EmptyImage" and err["dependent_outputs"] == ["9"]
    assert err["errors"][0]["type"] == "value_smaller_than_min"
    assert err["errors"][0]["extra_info"]["input_name"] == "width"
    no_out = {"1": image_prompt()["1"]}
    resp = await client.post("/prompt", json={"prompt": no_out})
    assert resp.status == 400 and (await resp.json())["error"]["type"] == "prompt_no_outputs"
    resp = await client.post("/prompt", json={"prompt": image_prompt(), "partial_execution_targets": "9"})
    assert resp.status == 400
    res = await submit(client, image_prompt(), prompt_id="fixed-id")
    resp = await client.post("/prompt", json={"prompt": image_prompt(), "prompt_id": "fixed-id"})
    assert resp.status == 400 and (await resp.json())["error"]["type"] == "duplicate_prompt_id"
    await wait_history(client, res["prompt_id"])
    assert state(client).queue.remaining() == 0  # nothing bad was queued


async def test_partial_execution_targets(client):
    prompt = image_prompt(prefix="a")
    prompt["8"] = {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "b"}}
    res = await submit(client, prompt, partial_execution_targets=["8"])
    entry = await wait_history(client, res["prompt_id"])
    assert list(entry["outputs"]) == ["8"] and entry["prompt"][4] == ["8"]
    resp = await client.post("/prompt", json={"prompt": prompt, "partial_execution_targets": ["77"]})
    assert resp.status == 400


# -- queue -----------------------------------------------------------------------------------------------------
async def test_queue_order_front_number_delete_clear_pause(client):
    assert (await (await client.post("/queue", json={"pause": True})).json())["paused"] is True
    a = await submit(client, image_prompt(color=1))
    b = await submit(client, image_prompt(color=2))
    c = await submit(client, image_prompt(color=3), front=True)
    d = await submit(client, image_prompt(color=4), number=1.5)
    q = await (await client.get("/api/queue")).json()
    assert q["queue_running"] == [] and q["paused"] is True
    # numbers: a=1, b=2, c=-3 (front), d=1.5 (explicit); lowest runs first
    assert [i[1] for i in q["queue_pending"]] == [c["prompt_id"], a["prompt_id"], d["prompt_id"], b["prompt_id"]]
    assert c["number"] < 0 and q["queue_pending"][2][0] == 1.5
    assert (await (await client.get("/prompt")).json())["exec_info"]["queue_remaining"] == 4
    await client.post("/queue", json={"delete": [a["prompt_id"], "unknown"]})
    q = await (await client.get("/queue")).json()
    assert a["prompt_id"] not in [i[1] for i in q["queue_pending"]] and len(q["queue_pending"]) == 3
    await client.post("/queue", json={"clear": True})
    assert (await (await client.get("/queue")).json())["queue_pending"] == []
    e = await submit(client, image_prompt(color=5))
    await client.post("/queue", json={"pause": False})
    assert (await wait_history(client, e["prompt_id"]))["status"]["completed"]
    resp = await client.post("/queue", data=b"nope")
    assert resp.status == 400
    resp = await client.post("/queue", json={"requeue": ["never-seen"]})
    assert resp.status == 404 and (await resp.json())["error"]["type"] == "unknown_prompt_id"


async def test_requeue_runs_a_finished_prompt_again(client):
    res = await submit(client, image_prompt(prefix="again"))
    await wait_history(client, res["prompt_id"])
    resp = await client.post("/queue", json={"requeue": [res["prompt_id"]]})
    assert resp.status == 200 and (await resp.json())["requeued"] == 1
    entry = await wait_history(client, res["prompt_id"])
    assert entry["status"]["completed"]


async def test_interrupt(client):
    GATES["hold"] = gate = threading.Event()
    AT_GATE["hold"] = reached = threading.Event()
    res = await submit(client, image_prompt(steps=2, gate="hold"))
    assert await asyncio.to_thread(reached.wait, 30)  # node 3 runs (before it, the interrupt would hit node 2)
    resp = await client.post("/interrupt", json={"prompt_id": "some-other-prompt"})
    assert (await resp.json())["interrupted"] is False
    resp = await client.post("/api/interrupt")  # no body: whatever runs
    assert (await resp.json())["interrupted"] is True
    entry = await wait_history(client, res["prompt_id"])
    assert entry["status"]["status_str"] == "error" and not entry["status"]["completed"]
    kind, data = entry["status"]["messages"][-1]
    assert kind == "execution_interrupted" and data["node_id"] == "3" and data["node_type"] == "TestSteps"
    gate.set()


# -- history ---------------------------------------------------------------------------------------------------
async def test_history_paging_delete_clear(client):
    ids = []
    for i in range(4):
        ids.append((await submit(client, image_prompt(color=i)))["prompt_id"])
        await wait_history(client, ids[-1])
    assert list(await (await client.get("/history")).json()) == ids
    assert list(await (await client.get("/history", params={"max_items": 2})).json()) == ids[2:]
    assert list(await (await client.get("/history", params={"max_items": 2, "offset": 1})).json()) == ids[1:3]
    assert (await client.get("/history", params={"max_items": "x"})).status == 400
    assert await (await client.get("/history/no-such-id")).json() == {}
    await client.post("/history", json={"delete": [ids[0]]})
    assert list(await (await client.get("/api/history")).json()) == ids[1:]
    await client.post("/history", json={"clear": True})
    assert await (await client.get("/history")).json() == {}


# -- nodes -----------------------------------------------------------------------------------------------------
async def test_object_info(client):
    info = await (await client.get("/object_info")).json()
    assert "SaveImage" in info and info["SaveImage"]["output_node"] is True
    assert info["EmptyImage"]["input_order"]["required"][:2] == ["width", "height"]
    one = await (await client.get("/api/object_info/ImageInvert")).json()
    assert list(one) == ["ImageInvert"] and one["ImageInvert"]["output"] == ["IMAGE"]
    resp = await client.get("/object_info/Nope")
    assert resp.status == 404 and (await resp.json())["error"]["type"] == "unknown_node_class"


# -- files -----------------------------------------------------------------------------------------------------
async def test_view_confinement_and_types(client, tmp_path):
    out = tmp_path / "output"
    (out / "sub").mkdir()
    (out / "sub" / "a.png").write_bytes(png_bytes())
    (out / "page.html").write_text("<script>alert(1)</script>")
    (tmp_path / "secret.png").write_bytes(png_bytes())
    (out / "link.png").symlink_to(tmp_path / "secret.png")
    ok = await client.get("/view", params={"filename": "a.png", "subfolder": "sub"})
    assert ok.status == 200 and ok.headers["Cache-Control"].startswith("public")
    ok = await client.get("/view", params={"filename": "a.png [output]", "subfolder": "sub", "type": "input"})
    assert ok.status == 200
    html = await client.get("/view", params={"filename": "page.html"})
    assert html.status == 200 and html.content_type == "application/octet-stream"
    for params in ({"filename": "../secret.png"}, {"filename": "secret.png", "subfolder": ".."},
                   {"filename": str(tmp_path / "secret.png")}, {"filename": "a.png", "subfolder": "/etc"},
                   {"filename": "link.png"}, {"filename": "..\\secret.png"}):
        resp = await client.get("/view", params=params)
        assert resp.status == 403, params
        assert (await resp.json())["error"]["type"] == "forbidden_path"
    assert (await client.get("/view", params={"filename": "missing.png"})).status == 404
    assert (await client.get("/view", params={"filename": "a.png", "type": "etc"})).status == 400
    assert (await client.get("/view")).status == 400
    webp = await client.get("/view", params={"filename": "a.png", "subfolder": "sub", "preview": "webp;80"})
    assert webp.status == 200 and webp.content_type == "image/webp"
    assert Image.open(io.BytesIO(await webp.read())).format == "WEBP"
    rgb = await client.get("/view", params={"filename": "a.png", "subfolder": "sub", "channel": "rgb"})
    assert Image.open(io.BytesIO(await rgb.read())).mode == "RGB"


async def test_upload_image_dedupe_overwrite_and_limits(aiohttp_client, tmp_path):
    client = await aiohttp_client(create_app(make_config(tmp_path, max_upload_bytes=4096), probe_registry()))
    one, two = png_bytes((1, 2, 3, 255)), png_bytes((9, 9, 9, 255))
    r = await (await client.post("/upload/image", data=upload_form(one))).json()
    assert r == {"name": "pic.png", "subfolder": "", "type": "input"}
    assert (tmp_path / "input" / "pic.png").read_bytes() == one
    r = await (await client.post("/api/upload/image", data=upload_form(one))).json()
    assert r["name"] == "pic.png"  # same content: reused
    r = await (await client.post("/upload/image", data=upload_form(two))).json()
    assert r["name"] == "pic (1).png" and (tmp_path / "input" / "pic (1).png").read_bytes() == two
    r = await (await client.post("/upload/image", data=upload_form(two, overwrite="true"))).json()
    assert r["name"] == "pic.png" and (tmp_path / "input" / "pic.png").read_bytes() == two
    r = await (await client.post("/upload/image", data=upload_form(one, subfolder="masks", type="temp"))).json()
    assert r == {"name": "pic.png", "subfolder": "masks", "type": "temp"}
    assert (tmp_path / "data" / "temp" / "masks" / "pic.png").exists()
    # the uploaded file is now a LoadImage choice
    info = await (await client.get("/object_info/LoadImage")).json()
    assert "pic.png" in info["LoadImage"]["input"]["required"]["image"][0]
    # errors
    resp = await client.post("/upload/image", data=upload_form(one, subfolder="../escape"))
    assert resp.status == 403 and not (tmp_path / "escape").exists()
    raw = (b'--b\r\nContent-Disposition: form-data; name="image"; filename="../../evil.png"\r\n'
           b"Content-Type: image/png\r\n\r\n" + one + b"\r\n--b--\r\n")
    r = await (await client.post("/upload/image", data=raw,
                                 headers={"Content-Type": "multipart/form-data; boundary=b"})).json()
    assert r["name"] == "evil.png" and not (tmp_path / "evil.png").exists()  # only the base name is kept
    resp = await client.post("/upload/image", data=upload_form(one, name=".hidden"))
    assert resp.status == 400
    resp = await client.post("/upload/image", data=upload_form(b"<html>not an image</html>", name="x.png"))
    assert resp.status == 400 and (await resp.json())["error"]["type"] == "invalid_image"
    big = png_bytes(size=(300, 300)) + b"\0" * 8192
    resp = await client.post("/upload/image", data=upload_form(big, name="big.png"))
    assert resp.status == 413 and not (tmp_path / "input" / "big.png").exists()
    resp = await client.post("/upload/image", data=b"plain")
    assert resp.status == 400
    resp = await client.post("/upload/image", data=upload_form(one, type="models"))
    assert resp.status == 400


async def test_upload_mask_merges_alpha(client, tmp_path):
    (tmp_path / "input" / "base.png").write_bytes(png_bytes((200, 100, 50, 255), (8, 8)))
    mask = png_bytes((0, 0, 0, 0), (4, 4))
    ref = json.dumps({"filename": "base.png", "subfolder": "", "type": "input"})
    r = await (await client.post("/upload/mask", data=upload_form(mask, name="base-mask.png",
                                                                  original_ref=ref))).json()
    assert r["name"] == "base-mask.png"
    merged = Image.open(tmp_path / "input" / "base-mask.png")
    assert merged.size == (8, 8) and merged.getpixel((3, 3)) == (200, 100, 50, 0)
    bad = json.dumps({"filename": "../../x.png", "type": "input"})
    resp = await client.post("/upload/mask", data=upload_form(mask, original_ref=bad))
    assert resp.status == 403
    resp = await client.post("/upload/mask", data=upload_form(mask, original_ref="{"))
    assert resp.status == 400


# -- system ----------------------------------------------------------------------------------------------------
async def test_system_stats_free_models_and_misc(client, tmp_path):
    stats = await (await client.get("/system_stats")).json()
    assert stats["system"]["python_version"] and stats["system"]["pytorch_version"]
    assert stats["system"]["ram_total"] > stats["system"]["ram_free"] > 0
    dev = stats["devices"][0]
    assert dev["type"] == "cpu" and dev["vram_total"] > 0 and dev["models"]["device"] == "cpu"
    assert "entries" in dev["cache"] or dev["cache"]

    import torch
    residency = state(client).workers[0].runner.resources
    residency.load(torch.nn.Linear(4, 4), key="lin")
    assert residency.stats()["models"] == 1
    assert (await client.post("/free", json={"unload_models": True, "free_memory": True})).status == 200
    for _ in range(100):
        if residency.stats()["models"] == 0:
            break
        await asyncio.sleep(0.05)
    assert residency.stats()["models"] == 0
    assert (await client.post("/free", data=b"[")).status == 400

    (tmp_path / "models" / "checkpoints").mkdir()
    (tmp_path / "models" / "checkpoints" / "a.safetensors").write_bytes(b"x")
    (tmp_path / "models" / "checkpoints" / "notes.txt").write_text("x")
    (tmp_path / "models" / "embeddings").mkdir()
    (tmp_path / "models" / "embeddings" / "easyneg.pt").write_bytes(b"x")
    assert "checkpoints" in await (await client.get("/models")).json()
    folder = tmp_path / "models" / "checkpoints" / "sdxl-diffusers"  # a diffusers folder is one model, as ckpt_name offers it
    (folder / "unet").mkdir(parents=True)
    (folder / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"x")
    (folder / "model_index.json").write_text("{}")
    assert await (await client.get("/api/models/checkpoints")).json() == ["a.safetensors", "sdxl-diffusers"]
    assert await (await client.get("/models/loras")).json() == []
    assert (await client.get("/models/nope")).status == 404
    assert (await client.get(URL("/models/%2E%2E", encoded=True))).status in (403, 404)
    assert await (await client.get("/embeddings")).json() == ["easyneg"]
    assert await (await client.get("/extensions")).json() == []
    assert (await (await client.get("/features")).json())["supports_preview_metadata"] is True


async def test_settings_users_and_workflows(client, tmp_path):
    assert (await (await client.get("/api/users")).json())["storage"] == "server"
    assert await (await client.get("/api/settings")).json() == {}
    await client.post("/api/settings/Comfy.TutorialCompleted", json=True)
    await client.post("/api/settings", json={"a": 1})
    assert await (await client.get("/api/settings")).json() == {"Comfy.TutorialCompleted": True, "a": 1}
    assert await (await client.get("/api/settings/a")).json() == 1
    names = await (await client.get("/workflows")).json()
    assert isinstance(names, list) and all(n.endswith(".json") for n in names)
    for name in names:
        resp = await client.get(f"/api/workflows/{name}")
        assert resp.status == 200 and isinstance(await resp.json(), dict)
    assert (await client.get(URL("/workflows/..%2Fpyproject.toml", encoded=True))).status in (403, 404)
    assert (await client.get("/workflows/nope.json")).status == 404


async def test_static_web_root(client):
    resp = await client.get("/")
    assert resp.status == 200 and "html" in resp.content_type
    assert (await client.get("/node_modules/@comfyorg/litegraph/package.json")).status == 200
    assert (await client.get(URL("/%2E%2E/pyproject.toml", encoded=True))).status in (403, 404)
    resp = await client.get("/no/such/route")
    assert resp.status == 404


async def test_graceful_shutdown_keeps_the_running_prompt_queued(aiohttp_client, tmp_path):
    cfg = make_config(tmp_path)
    client = await aiohttp_client(create_app(cfg, probe_registry()))
    GATES["shutdown"] = threading.Event()  # never set: the prompt runs until the server stops
    res = await submit(client, image_prompt(steps=2, gate="shutdown"))
    for _ in range(200):
        if (await (await client.get("/queue")).json())["queue_running"]:
            break
        await asyncio.sleep(0.02)
    await client.close()  # on_cleanup: workers interrupted and joined
    client = await aiohttp_client(create_app(cfg, probe_registry()))
    q = await (await client.get("/queue")).json()  # queued again (and maybe already restarted)
    assert [i[1] for i in q["queue_pending"] + q["queue_running"]] == [res["prompt_id"]]
    assert await (await client.get("/history")).json() == {}


async def test_prompt_from_a_png_with_its_workflow(client, tmp_path):
    res = await submit(client, image_prompt(color=0x0000FF, prefix="png"))
    entry = await wait_history(client, res["prompt_id"])
    image = entry["outputs"]["9"]["images"][0]
    png = (tmp_path / "output" / image["subfolder"] / image["filename"]).read_bytes()
    resp = await client.post("/prompt?client_id=me", data=png, headers={"Content-Type": "image/png"})
    assert resp.status == 200, await resp.text()
    again = await wait_history(client, (await resp.json())["prompt_id"])
    assert again["prompt"][2]["1"]["inputs"]["color"] == 0x0000FF and again["prompt"][3]["client_id"] == "me"
    resp = await client.post("/prompt", data=png_bytes(), headers={"Content-Type": "image/png"})
    assert resp.status == 400 and (await resp.json())["error"]["type"] == "no_prompt"
    resp = await client.post("/prompt", data=b"not a png", headers={"Content-Type": "image/png"})
    assert resp.status == 400 and (await resp.json())["error"]["type"] == "invalid_image"


def test_a_start_empties_temp_and_keeps_outputs_and_inputs(tmp_path):
    cfg = make_config(tmp_path)
    create_app(cfg, probe_registry())
    for folder in ("data/temp/masks", "output", "input"):
        (tmp_path / folder).mkdir(parents=True, exist_ok=True)
        (tmp_path / folder / "kept.png").write_bytes(b"x")
    create_app(cfg, probe_registry())  # the next start of a server on the same folders
    assert list((tmp_path / "data" / "temp").iterdir()) == []
    assert (tmp_path / "output" / "kept.png").exists() and (tmp_path / "input" / "kept.png").exists()
