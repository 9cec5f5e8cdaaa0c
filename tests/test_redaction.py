"""The API key never leaks: not in reprs, error messages, error attributes, nor logs."""

from __future__ import annotations

import asyncio
import json
import logging
import pickle
import socket
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aioresponses import aioresponses
from conftest import Serve

from quickmj import AsyncClient, QuickMJError, RetryPolicy, Task, Timeouts
from quickmj._config import Secret

KEY = "sk-Zq8vLkP3-distinctive-7f3c9e1a"
BASE = "http://relay.test"
ONCE = RetryPolicy(max_attempts=2, backoff=0, max_backoff=0)

Call = Callable[[AsyncClient], Awaitable[Any]]


def client(**kwargs: Any) -> AsyncClient:
    kwargs.setdefault("retry", ONCE)
    return AsyncClient(KEY, base_url=kwargs.pop("base_url", BASE), **kwargs)


def everything_about(exc: BaseException) -> str:
    """str, repr, the attributes and the formatted traceback of an error and its chain."""
    parts = ["".join(traceback.format_exception(exc))]
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        parts += [str(current), repr(current)]
        for name in ("body", "description", "properties", "message", "available", "path"):
            parts.append(repr(getattr(current, name, "")))
        current = current.__cause__ or current.__context__
    return "\n".join(parts)


def fetch(mj: AsyncClient) -> Awaitable[Any]:
    return mj.fetch("1")


def imagine(mj: AsyncClient) -> Awaitable[Any]:
    return mj.imagine("x")


def list_tasks(mj: AsyncClient) -> Awaitable[Any]:
    return mj.list_tasks(["1"])


FETCH = f"{BASE}/mj/task/1/fetch"
IMAGINE = f"{BASE}/mj/submit/imagine"
LIST = f"{BASE}/mj/task/list-by-condition"

MOCKED: list[tuple[str, str, str, dict[str, Any], Call]] = [
    ("401 echoes the key", "GET", FETCH, {"status": 401, "body": f"bad token {KEY}"}, fetch),
    (
        "401 echoes the bearer header",
        "POST",
        IMAGINE,
        {"status": 401, "body": f"Authorization: Bearer {KEY} is not valid"},
        imagine,
    ),
    (
        "403 JSON echo",
        "POST",
        LIST,
        {"status": 403, "body": json.dumps({"error": {"message": f"token {KEY} disabled"}})},
        list_tasks,
    ),
    (
        "400 code 4 echo",
        "POST",
        IMAGINE,
        {"status": 400, "payload": {"code": 4, "description": f"invalid key {KEY}"}},
        imagine,
    ),
    (
        "200 code 4 echo",
        "POST",
        IMAGINE,
        {"payload": {"code": 4, "description": f"no quota for {KEY}", "properties": {"k": KEY}}},
        imagine,
    ),
    (
        "200 failure shape echo",
        "POST",
        IMAGINE,
        {"payload": {"success": False, "code": -1, "message": f"用户 {KEY} 已禁用"}},
        imagine,
    ),
    (
        "404 code 3 echo",
        "POST",
        LIST,
        {"status": 404, "payload": {"code": 3, "description": f"{KEY} 不存在"}},
        list_tasks,
    ),
    ("429 echo", "GET", FETCH, {"status": 429, "body": f"slow down {KEY}"}, fetch),
    ("502 html echo (read)", "GET", FETCH, {"status": 502, "body": f"<html>{KEY}</html>"}, fetch),
    (
        "502 html echo (submit)",
        "POST",
        IMAGINE,
        {"status": 502, "body": f"<html>{KEY}</html>"},
        imagine,
    ),
    ("200 html echo", "GET", FETCH, {"body": f"<html>login {KEY}</html>"}, fetch),
    ("200 bad json echo", "GET", FETCH, {"body": f'{{"id": "{KEY}'}, fetch),
    (
        "200 wrong shape echo",
        "POST",
        IMAGINE,
        {"payload": {"created": 1, "data": [{"url": KEY}], KEY: 1}},
        imagine,
    ),
    ("200 bad task echo", "GET", FETCH, {"payload": {"id": "1", "status": {KEY: 1}}}, fetch),
    (
        "fetch error body echo",
        "GET",
        FETCH,
        {"payload": {"code": 5, "description": f"upstream says {KEY}"}},
        fetch,
    ),
    (
        "dropped connection",
        "POST",
        IMAGINE,
        {"exception": aiohttp.ServerDisconnectedError()},
        imagine,
    ),
    ("read timeout", "GET", FETCH, {"exception": asyncio.TimeoutError()}, fetch),
]


@pytest.mark.parametrize(
    ("method", "url", "answer", "call"), [m[1:] for m in MOCKED], ids=[m[0] for m in MOCKED]
)
async def test_key_absent_from_errors(
    method: str, url: str, answer: dict[str, Any], call: Call, caplog: pytest.LogCaptureFixture
) -> None:
    """Whatever the relay echoes, errors and logs never contain the key."""
    caplog.set_level(logging.DEBUG, logger="quickmj")
    with aioresponses() as m:
        m.add(url, method, repeat=True, **answer)
        async with client() as mj:
            with pytest.raises(QuickMJError) as info:
                await call(mj)
    text = everything_about(info.value)
    assert KEY not in text
    assert KEY[3:] not in text  # nor its distinctive part without the sk- prefix
    assert all(KEY not in r.getMessage() and KEY not in str(r.args) for r in caplog.records)
    assert caplog.records  # a request was logged


async def test_key_absent_on_real_connections(
    serve: Serve, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """Timeouts, resets, unreachable hosts and failed downloads on a real socket."""
    caplog.set_level(logging.DEBUG, logger="quickmj")

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(1)
        return web.Response(text=KEY)

    async def reset(request: web.Request) -> web.Response:
        assert request.transport is not None
        request.transport.close()
        return web.Response(text=KEY)

    async def garbage(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        request.transport.write(f"HTTP/1.1 999 {KEY}\r\nX: {KEY}\r\n\r\n".encode())
        request.transport.close()
        return web.Response()

    async def image_gone(request: web.Request) -> web.Response:
        return web.Response(status=403, text=f"denied for {request.headers.get('Authorization')}")

    app = web.Application()
    app.router.add_get("/mj/task/slow/fetch", slow)
    app.router.add_post("/mj/submit/imagine", slow)
    app.router.add_get("/mj/task/reset/fetch", reset)
    app.router.add_get("/mj/task/garbage/fetch", garbage)
    app.router.add_get("/img/gone.png", image_gone)
    relay = await serve(app)
    caught: list[BaseException] = []
    async with client(base_url=relay, timeouts=Timeouts(read=0.05)) as mj:
        calls: list[Callable[[], Awaitable[Any]]] = [
            lambda: mj.fetch("slow"),
            lambda: mj.imagine("x"),
            lambda: mj.fetch("reset"),
            lambda: mj.fetch("garbage"),
            lambda: mj.download(Task(id="g", image_url=f"{relay}/img/gone.png"), tmp_path),
        ]
        for call in calls:
            try:
                await call()
            except QuickMJError as exc:
                caught.append(exc)
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with client(base_url=f"http://127.0.0.1:{port}") as mj:
        try:
            await mj.fetch("1")
        except QuickMJError as exc:
            caught.append(exc)
    assert 6 == len(caught)
    for err in caught:
        assert KEY not in everything_about(err), type(err).__name__
    assert all(KEY not in r.getMessage() for r in caplog.records)


async def test_key_absent_from_reprs() -> None:
    """repr/str of the client, its transport, config and key holder hide the key."""
    mj = client(mode="relax", auth_scheme="mj-api-secret")
    texts = [repr(mj), str(mj), repr(mj._transport), repr(mj._transport._key)]
    texts.append(str(mj._transport._key))
    texts.append(repr(vars(mj)))
    await mj.aclose()
    assert all(KEY not in t for t in texts)
    assert "Secret('***')" == repr(Secret(KEY))


def test_secret_cannot_be_pickled() -> None:
    """The key holder refuses to be pickled (no accidental copies to disk or other processes)."""
    with pytest.raises(TypeError):
        pickle.dumps(Secret(KEY))


def test_secret_redaction() -> None:
    """Every occurrence is replaced; keys too short to be distinctive are left alone."""
    assert "a *** b ***" == Secret(KEY).redact(f"a {KEY} b {KEY}")
    assert "a b c" == Secret("b").redact("a b c")


async def test_request_and_retry_logs_hold_no_key(caplog: pytest.LogCaptureFixture) -> None:
    """DEBUG logs of a successful exchange with retries name paths, never the key."""
    caplog.set_level(logging.DEBUG, logger="quickmj")
    with aioresponses() as m:
        m.get(FETCH, status=503, body=KEY)
        m.get(FETCH, payload={"id": "1"})
        m.post(IMAGINE, payload={"code": 1, "result": "2"})
        async with client() as mj:
            await mj.fetch("1")
            await mj.imagine("x")
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) >= 4
    assert all(KEY not in msg for msg in messages)
