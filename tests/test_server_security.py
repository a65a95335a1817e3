"""Safe defaults: token on every route and the websocket, cross-origin refusal, body limits, no leaked tracebacks."""
from __future__ import annotations

import argparse

import pytest
from aiohttp import WSServerHandshakeError
from server_helpers import image_prompt, make_config, probe_registry

from server import app as server_app
from server.app import STATE, create_app
from server.security import PathError, confined, is_loopback

TOKEN = "s3cret-token"


async def test_token_required_everywhere(aiohttp_client, tmp_path):
    client = await aiohttp_client(create_app(make_config(tmp_path, token=TOKEN), probe_registry()))
    for method, path in (("GET", "/prompt"), ("POST", "/prompt"), ("GET", "/api/queue"), ("GET", "/history"),
                         ("GET", "/object_info"), ("GET", "/view?filename=a.png"), ("POST", "/upload/image"),
                         ("GET", "/system_stats"), ("POST", "/interrupt"), ("GET", "/"), ("GET", "/workflows")):
        resp = await client.request(method, path)
        assert resp.status == 401, (method, path)
        assert (await resp.json())["error"]["type"] == "unauthorized"
    resp = await client.get("/prompt", headers={"Authorization": "Bearer wrong"})
    assert resp.status == 401
    resp = await client.get("/prompt", headers={"Authorization": f"Bearer {TOKEN}"})
    assert resp.status == 200
    resp = await client.post("/prompt", json={"prompt": image_prompt()}, headers={"Authorization": f"Bearer {TOKEN}"})
    assert resp.status == 200
    with pytest.raises(WSServerHandshakeError) as exc:
        await client.ws_connect("/ws")
    assert exc.value.status == 401
    ws = await client.ws_connect(f"/ws?clientId=t&token={TOKEN}")
    assert (await ws.receive_json())["type"] == "status"
    await ws.close()


async def test_browser_visit_with_token_sets_cookie(aiohttp_client, tmp_path):
    client = await aiohttp_client(create_app(make_config(tmp_path, token=TOKEN), probe_registry()))
    resp = await client.get(f"/?token={TOKEN}")
    assert resp.status == 200
    cookie = resp.cookies["latentgraph_token"]
    assert cookie.value == TOKEN and cookie["httponly"] and cookie["samesite"] == "Strict"
    # the client's cookie jar now carries it: plain requests pass
    assert (await client.get("/api/object_info/SaveImage")).status == 200


async def test_cross_origin_requests_refused(aiohttp_client, tmp_path):
    client = await aiohttp_client(create_app(make_config(tmp_path), probe_registry()))
    host = f"{client.host}:{client.port}"
    resp = await client.post("/prompt", json={"prompt": image_prompt()}, headers={"Origin": "http://evil.example"})
    assert resp.status == 403 and (await resp.json())["error"]["type"] == "forbidden_origin"
    assert client.app[STATE].queue.remaining() == 0
    resp = await client.post("/free", json={}, headers={"Origin": f"http://{host}.evil.example"})
    assert resp.status == 403
    with pytest.raises(WSServerHandshakeError) as exc:
        await client.ws_connect("/ws", headers={"Origin": "http://evil.example"})
    assert exc.value.status == 403
    resp = await client.post("/prompt", json={"prompt": image_prompt()}, headers={"Origin": f"http://{host}"})
    assert resp.status == 200  # same origin: the canvas itself
    resp = await client.get("/prompt")  # no Origin: scripts and curl
    assert resp.status == 200


async def test_body_limit_and_no_traceback_unless_debug(aiohttp_client, tmp_path):
    client = await aiohttp_client(create_app(make_config(tmp_path, max_body_bytes=2048), probe_registry()))
    resp = await client.post("/prompt", data=b"{" + b" " * 4096 + b"}", headers={"Content-Type": "application/json"})
    assert resp.status == 413
    st = client.app[STATE]

    def boom():
        raise RuntimeError("secret internals")

    st.queue.remaining = boom
    resp = await client.get("/prompt")
    body = await resp.json()
    assert resp.status == 500 and body["error"]["type"] == "server_error"
    assert "secret internals" not in await resp.text() and "Traceback" not in await resp.text()
    del st.queue.remaining
    assert (await client.get("/prompt")).status == 200  # still serving


async def test_debug_shows_traceback(aiohttp_client, tmp_path):
    client = await aiohttp_client(create_app(make_config(tmp_path, debug=True), probe_registry()))
    st = client.app[STATE]

    def boom():
        raise RuntimeError("visible in debug")

    st.queue.remaining = boom
    body = await (await client.get("/prompt")).json()
    assert "visible in debug" in body["error"]["details"] and "Traceback" in body["error"]["details"]


def test_confined(tmp_path):
    (tmp_path / "base" / "sub").mkdir(parents=True)
    (tmp_path / "outside.txt").write_text("x")
    (tmp_path / "base" / "escape").symlink_to(tmp_path)
    assert confined(tmp_path / "base", "sub", "a.png") == (tmp_path / "base" / "sub" / "a.png").resolve()
    for parts in (("..", "outside.txt"), ("sub/../../outside.txt",), ("/etc/passwd",), ("escape", "outside.txt"),
                  ("a\x00b",), ("..\\x",)):
        with pytest.raises(PathError):
            confined(tmp_path / "base", *parts)


def test_non_loopback_host_needs_token(monkeypatch, capsys):
    parser = argparse.ArgumentParser()
    server_app.add_arguments(parser)
    monkeypatch.delenv("LATENTGRAPH_TOKEN", raising=False)
    args = parser.parse_args(["--host", "0.0.0.0"])
    assert server_app.run(args) == 2
    assert "without a token" in capsys.readouterr().err
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4")
    monkeypatch.setenv("LATENTGRAPH_TOKEN", "from-env")
    assert server_app.config_from_args(parser.parse_args([])).token == "from-env"
