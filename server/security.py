"""Safe defaults: host and origin checks, token, confined paths and errors that never leak a stack trace.

- Without a token, a request must name this server in its ``Host`` header: a loopback name or address, the
  ``--host`` it listens on, or a name added with ``--allow-host`` (403 otherwise). This stops DNS rebinding: a page
  on evil.example whose name is made to resolve to 127.0.0.1 sends ``Host: evil.example``, and its requests are
  same-origin to the browser, so the Origin check alone lets them through. (With a token, the token guards.)
- Browser cross-origin requests are refused: a request whose ``Origin`` host differs from its ``Host`` gets 403
  (a page on another site cannot drive a local server; non-browser clients send no Origin).
- With a token configured, every route and the websocket need it: ``Authorization: Bearer <token>``, a
  ``?token=`` query (websockets, first browser visit) or the cookie that visiting ``/?token=...`` sets.
- Files are reached only through :func:`confined`, which refuses absolute paths, ``..`` and symlinks that
  resolve outside their folder.
- Any exception in a handler becomes a JSON 500 without a traceback (unless ``debug``); the server lives on.
"""
from __future__ import annotations

import hmac
import ipaddress
import logging
import traceback
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web

log = logging.getLogger("latentgraph.server")

TOKEN_COOKIE = "latentgraph_token"


class PathError(ValueError):
    """A user-supplied path that would leave its folder."""


def confined(base: str | Path, *parts: str) -> Path:
    """``base/parts...`` resolved, guaranteed to lie inside ``base``; raises PathError otherwise."""
    root = Path(base).resolve()
    rel = Path()
    for part in parts:
        if not part:
            continue
        if "\x00" in part or "\\" in part:
            raise PathError(f"invalid path {part!r}")
        p = Path(part)
        if p.is_absolute() or p.drive or ".." in p.parts:
            raise PathError(f"path {part!r} leaves its folder")
        rel = rel / p
    target = (root / rel).resolve()
    if target != root and not target.is_relative_to(root):
        raise PathError(f"path {str(rel)!r} leaves its folder")
    return target


def is_loopback(host: str) -> bool:
    """Whether `host` names this machine's loopback interface only. The empty string is not: bound to, it means
    every interface."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def allowed_hosts(config) -> set[str] | None:
    """The Host names the server answers besides loopback ones (see the module docstring); None when any is
    answered (a token is set)."""
    if config.token:
        return None
    names = {config.host, *config.allow_hosts}
    return {_hostname(n) for n in names if n and n not in ("0.0.0.0", "::")}


def _hostname(host: str) -> str:
    """The name in a Host header or address, without port or brackets, lower case."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    if host.count(":") == 1:
        host = host.partition(":")[0]
    return host.rstrip(".")


def redacted_argv(argv: list[str]) -> list[str]:
    """The command line with the value of --token hidden (/system_stats shows it to every client)."""
    out, hide = [], False
    for arg in argv:
        if hide:
            out.append("<hidden>")
        elif arg.startswith("--token="):
            out.append("--token=<hidden>")
        else:
            out.append(arg)
        hide = arg == "--token"
    return out


def error_json(status: int, type_: str, message: str, details: str = "") -> web.Response:
    body = {"error": {"type": type_, "message": message, "details": details, "extra_info": {}}, "node_errors": {}}
    return web.json_response(body, status=status)


def _host_of(value: str) -> str:
    return (urlsplit(value).netloc or "").lower()


def origin_ok(request: web.Request) -> bool:
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    return _host_of(origin) == (request.host or "").lower()


def presented_token(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    if auth.startswith("Bearer "):
        return auth[7:].strip()
    return request.query.get("token") or request.cookies.get(TOKEN_COOKIE)


def make_middlewares(token: str | None, debug: bool, hosts: set[str] | None = None) -> list:
    """`hosts`: see allowed_hosts."""
    @web.middleware
    async def guard(request: web.Request, handler):
        host = request.headers.get("Host")  # a request without one comes from no browser
        if hosts is not None and host is not None:
            name = _hostname(host)
            if name not in hosts and not is_loopback(name):
                return error_json(403, "forbidden_host", f"this server does not answer to the name {name!r}; start "
                                  f"it with --allow-host {name} if that name is really it")
        if not origin_ok(request):
            return error_json(403, "forbidden_origin",
                              f"cross-origin request from {request.headers.get('Origin')} refused")
        if token is not None:
            given = presented_token(request)
            if given is None or not hmac.compare_digest(given.encode(), token.encode()):
                return error_json(401, "unauthorized", "a valid token is required "
                                  "(Authorization: Bearer <token>, ?token=, or visit /?token=<token> once)")
        response = await handler(request)
        if token is not None and request.query.get("token") and isinstance(response, web.StreamResponse) \
                and not response.prepared:
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="Strict")
        return response

    @web.middleware
    async def errors(request: web.Request, handler):
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400 or exc.content_type == "application/json":
                raise
            return error_json(exc.status, exc.reason.lower().replace(" ", "_"), exc.text or exc.reason)
        except Exception as exc:  # the server never dies from a request
            log.exception("error handling %s %s", request.method, request.path)
            details = traceback.format_exc() if debug else ""
            return error_json(500, "server_error", f"internal error: {type(exc).__name__}" if debug
                              else "internal error (see the server log)", details)

    return [errors, guard]
