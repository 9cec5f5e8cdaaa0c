"""The default aiohttp transport: real sockets (tiny local servers) and aioresponses.

What only aiohttp can show: the bytes on a real connection, proxies from the environment,
the user's own session and connector, error mapping (with no aiohttp exception left in any
chain), compressed bodies left for quickmj to inflate, deadlines against dripping servers.
"""

from __future__ import annotations

import asyncio
import gzip
import inspect
import json
import socket
import time
import zlib
from collections.abc import Iterator
from typing import Any
from unittest import mock

import aiohttp
import pytest
from aiohttp import web
from aioresponses import aioresponses
from conftest import Serve
from fakes import spy_on

from quickmj import (
    AsyncClient,
    ClientClosedError,
    ConnectError,
    HTTPStatusError,
    MalformedResponseError,
    QuickMJError,
    Request,
    RequestTimeoutError,
    RetryPolicy,
    SubmitOutcomeUnknownError,
    TaskNotFoundError,
    Timeouts,
    TransportError,
    __version__,
)
from quickmj._aiohttp import AiohttpTransport

BASE = "http://relay.test"
KEY = "sk-aiohttp-key-0123456789"
FETCH = f"{BASE}/mj/task/1/fetch"
IMAGINE = f"{BASE}/mj/submit/imagine"
OK = {"code": 1, "description": "提交成功", "result": "1730621826053999", "properties": {}}
TASK = {"id": "1", "status": "SUCCESS", "progress": "100%"}
NO_WAIT = RetryPolicy(backoff=0, max_backoff=0, max_attempts=3)


class _MockedResponse(aiohttp.ClientResponse):
    """What aioresponses builds for a mocked answer, through its public ``response_class``.

    aioresponses (0.7.9, the newest) leaves out the ``stream_writer`` aiohttp 3.12+ requires;
    only the answer side is mocked, so a stand-in writer does (older aiohttp: unchanged)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if "stream_writer" in inspect.signature(aiohttp.ClientResponse.__init__).parameters:
            kwargs.setdefault("stream_writer", mock.Mock(output_size=0))
        super().__init__(*args, **kwargs)


#: Pass to every aioresponses mock that answers (one raising an exception builds nothing).
ANSWER: dict[str, Any] = {"response_class": _MockedResponse}


def client(**kwargs: Any) -> AsyncClient:
    kwargs.setdefault("retry", NO_WAIT)
    return AsyncClient(KEY, base_url=kwargs.pop("base_url", BASE), **kwargs)


def count(m: aioresponses, method: str, url: str) -> int:
    return sum(
        len(calls) for (meth, u), calls in m.requests.items() if (meth, str(u)) == (method, url)
    )


def chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception and every cause/context below it."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def no_foreign_exceptions(exc: BaseException) -> None:
    """Only quickmj's own errors in the chain: no aiohttp exception (they hold requests)."""
    foreign = [type(e).__qualname__ for e in chain(exc) if not isinstance(e, QuickMJError)]
    assert [] == foreign


def connect_error() -> aiohttp.ClientConnectorError:
    """What aiohttp raises when nothing listens (built without a network)."""
    key = aiohttp.client_reqrep.ConnectionKey("relay.test", 80, False, True, None, None, None)
    return aiohttp.ClientConnectorError(key, OSError(111, "Connection refused"))


def free_port() -> int:
    """A port that was free a moment ago (nobody listens on it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def catch_all(handler: Any) -> web.Application:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    return app


# ---- errors: mapped, chained to nothing foreign, retried per the rules ----


@pytest.mark.parametrize(
    ("exception", "error"),
    [
        (aiohttp.ServerDisconnectedError(), TransportError),
        (aiohttp.ClientPayloadError("cut"), TransportError),
        (connect_error(), ConnectError),
        (aiohttp.ConnectionTimeoutError(), ConnectError),
        (aiohttp.SocketTimeoutError(), RequestTimeoutError),
        (asyncio.TimeoutError(), RequestTimeoutError),
        (aiohttp.ClientOSError(104, "Connection reset by peer"), TransportError),
        (OSError(101, "Network is unreachable"), TransportError),
    ],
)
async def test_aiohttp_failures_become_quickmj_errors(exception: Exception, error: type) -> None:
    """Every aiohttp/socket failure is a quickmj transport error naming the request, with no
    aiohttp exception in its cause or context; reads retry it (max_attempts requests)."""
    with aioresponses() as m:
        m.get(FETCH, exception=exception, repeat=True)
        async with client() as mj:
            with pytest.raises(error) as info:
                await mj.fetch("1")
        assert 3 == count(m, "GET", FETCH)
    err = info.value
    assert type(err) is error
    assert ("GET", "/mj/task/1/fetch") == (err.method, err.path)
    assert str(err).startswith("GET /mj/task/1/fetch: ")
    no_foreign_exceptions(err)


@pytest.mark.parametrize(
    ("exception", "cause"),
    [
        (aiohttp.ServerDisconnectedError(), TransportError),
        (aiohttp.ClientPayloadError("cut"), TransportError),
        (aiohttp.SocketTimeoutError(), RequestTimeoutError),
    ],
)
async def test_submit_after_a_lost_answer_is_unknown(exception: Exception, cause: type) -> None:
    """A connection lost after sending: SubmitOutcomeUnknownError, sent once, nothing foreign
    in the chain."""
    with aioresponses() as m:
        m.post(IMAGINE, exception=exception, repeat=True)
        async with client() as mj:
            with pytest.raises(SubmitOutcomeUnknownError) as info:
                await mj.imagine("x", state="s1")
        assert 1 == count(m, "POST", IMAGINE)
    assert type(info.value.__cause__) is cause
    no_foreign_exceptions(info.value)


@pytest.mark.parametrize("exception", [connect_error(), aiohttp.ConnectionTimeoutError()])
async def test_submit_is_retried_after_a_failed_connect(exception: Exception) -> None:
    """A failed connect sent nothing: the submit is retried and succeeds."""
    with aioresponses() as m:
        m.post(IMAGINE, exception=exception)
        m.post(IMAGINE, payload=OK, **ANSWER)
        async with client() as mj:
            job = await mj.imagine("x")
        assert 2 == count(m, "POST", IMAGINE)
    assert "1730621826053999" == job.id


async def test_error_messages_never_hold_credentials() -> None:
    """An aiohttp error whose text echoes the auth header is redacted before it is shown."""
    leaky = aiohttp.ClientConnectionError(f"failed sending Authorization: Bearer {KEY}")
    with aioresponses() as m:
        m.get(FETCH, exception=leaky, repeat=True)
        async with client(auth_scheme="bearer") as mj:
            with pytest.raises(TransportError) as info:
                await mj.fetch("1")
    assert KEY not in str(info.value) and "***" in str(info.value)


async def test_transport_errors_on_the_body_are_mapped_too() -> None:
    """A failure while the body streams is a quickmj error as well (read retried)."""
    calls: list[int] = []

    async def cut(request: web.Request) -> web.StreamResponse:
        calls.append(1)
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.content_length = 1000
        await resp.prepare(request)
        await resp.write(b'{"id": "1", ')
        assert request.transport is not None
        request.transport.close()
        return resp

    async with aiohttp_relay(catch_all(cut)) as base, client(base_url=base) as mj:
        with pytest.raises(TransportError) as info:
            await mj.fetch("1")
    assert 3 == len(calls)
    no_foreign_exceptions(info.value)


# ---- on the wire (tiny local servers) ----


class aiohttp_relay:
    """``async with aiohttp_relay(app) as base_url``: serve an app on a free port."""

    def __init__(self, app: web.Application, host: str = "127.0.0.1") -> None:
        self._app = app
        self._host = host
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> str:
        self._runner = web.AppRunner(self._app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, self._host, 0).start()
        return f"http://{self._host}:{self._runner.addresses[0][1]}"

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


async def test_wire_headers_and_body(serve: Serve) -> None:
    """What really goes out: path, JSON body, auth, User-Agent, Accept, Content-Type."""
    seen: list[dict[str, Any]] = []

    async def submit(request: web.Request) -> web.Response:
        seen.append(
            {"path": request.path, "headers": dict(request.headers), "body": await request.json()}
        )
        return web.json_response(OK)

    app = web.Application()
    app.router.add_post("/mj-fast/mj/submit/imagine", submit)
    relay = await serve(app)
    async with client(base_url=relay, mode="fast") as mj:
        await mj.imagine("一只猫", state="s")
    (req,) = seen
    assert "/mj-fast/mj/submit/imagine" == req["path"]
    assert {"prompt": "一只猫", "state": "s"} == req["body"]
    headers = req["headers"]
    assert f"Bearer {KEY}" == headers["Authorization"]
    assert headers["User-Agent"].startswith(f"quickmj/{__version__} python/")
    assert "application/json" == headers["Accept"]
    assert headers["Content-Type"].startswith("application/json")
    assert "gzip" in headers["Accept-Encoding"]


async def test_dot_ids_stay_in_their_segment_on_the_wire(serve: Serve) -> None:
    """On a real connection too, id '..' reaches /mj/task/{id}/fetch, not /mj/fetch."""
    paths: list[str] = []

    async def anything(request: web.Request) -> web.Response:
        paths.append(request.raw_path)
        return web.json_response({"id": ".."})

    relay = await serve(catch_all(anything))
    async with client(base_url=relay) as mj:
        await mj.fetch("..")
    assert ["/mj/task/%2E%2E/fetch"] == paths


async def test_dropped_connection_on_a_read_is_retried(serve: Serve) -> None:
    """The server hangs up mid-answer once; the read is retried and succeeds."""
    calls: list[int] = []

    async def flaky(request: web.Request) -> web.StreamResponse:
        calls.append(1)
        if len(calls) == 1:
            resp = web.StreamResponse(headers={"Content-Type": "application/json"})
            resp.content_length = 1000
            await resp.prepare(request)
            await resp.write(b'{"id": "1", ')
            assert request.transport is not None
            request.transport.close()
            return resp
        return web.json_response(TASK)

    app = web.Application()
    app.router.add_get("/mj/task/1/fetch", flaky)
    relay = await serve(app)
    async with client(base_url=relay) as mj:
        task = await mj.fetch("1")
    assert ("1", 2) == (task.id, len(calls))


async def test_dropped_connection_on_a_submit_is_not_resent(serve: Serve) -> None:
    """The server takes the submit and hangs up: unknown outcome, exactly one request."""
    calls: list[Any] = []

    async def hang_up(request: web.Request) -> web.StreamResponse:
        calls.append(await request.json())
        assert request.transport is not None
        request.transport.close()
        return web.Response()

    app = web.Application()
    app.router.add_post("/mj/submit/imagine", hang_up)
    relay = await serve(app)
    async with client(base_url=relay) as mj:
        with pytest.raises(SubmitOutcomeUnknownError) as info:
            await mj.imagine("x", state="once")
    assert [{"prompt": "x", "state": "once"}] == calls
    assert "once" == info.value.state
    no_foreign_exceptions(info.value)


async def test_read_timeout(serve: Serve) -> None:
    """A relay that does not answer in time: RequestTimeoutError for reads (after retries),
    SubmitOutcomeUnknownError for submits (sent once)."""
    calls: list[str] = []

    async def slow(request: web.Request) -> web.Response:
        calls.append(request.path)
        await asyncio.sleep(1)
        return web.json_response(TASK)

    app = web.Application()
    app.router.add_get("/mj/task/1/fetch", slow)
    app.router.add_post("/mj/submit/imagine", slow)
    relay = await serve(app)
    timeouts = Timeouts(read=0.05)
    retry = RetryPolicy(max_attempts=2, backoff=0, max_backoff=0)
    async with client(base_url=relay, timeouts=timeouts, retry=retry) as mj:
        with pytest.raises(RequestTimeoutError) as read:
            await mj.fetch("1")
        with pytest.raises(SubmitOutcomeUnknownError) as submit:
            await mj.imagine("x")
    assert ["/mj/task/1/fetch", "/mj/task/1/fetch", "/mj/submit/imagine"] == calls
    assert isinstance(read.value, TimeoutError)
    assert isinstance(submit.value.__cause__, RequestTimeoutError)
    no_foreign_exceptions(read.value)


async def test_dripping_server_is_cut_at_the_request_deadline(serve: Serve) -> None:
    """A server that sends a byte every 20 ms never trips the read timeout, but the whole
    exchange ends at Timeouts.request with RequestTimeoutError."""

    async def drip(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        try:
            for _ in range(500):
                await resp.write(b" ")
                await asyncio.sleep(0.02)
        except (ConnectionError, RuntimeError):
            pass  # the client went away: expected
        return resp

    relay = await serve(catch_all(drip))
    timeouts = Timeouts(read=1, request=0.4)
    async with client(base_url=relay, timeouts=timeouts, retry=RetryPolicy(max_attempts=1)) as mj:
        started = time.monotonic()
        with pytest.raises(RequestTimeoutError, match=r"within 0\.4 s"):
            await mj.fetch("1")
        took = time.monotonic() - started
    assert 0.35 < took < 2.0


async def test_unreachable_relay_is_a_connect_error() -> None:
    """Nothing listening: ConnectError after the configured attempts."""
    async with client(base_url=f"http://127.0.0.1:{free_port()}") as mj:
        spy = spy_on(mj)
        with pytest.raises(ConnectError) as info:
            await mj.fetch("1")
    assert 2 == len(spy.delays)
    assert isinstance(info.value, ConnectionError)
    no_foreign_exceptions(info.value)


async def test_api_redirects_are_not_followed(serve: Serve) -> None:
    """A redirect on an API call is an error naming it; the target never sees the request."""
    other_calls: list[str | None] = []

    async def other(request: web.Request) -> web.Response:
        other_calls.append(request.headers.get("Authorization"))
        return web.json_response(TASK)

    target = await serve(catch_all(other), "localhost")

    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPMovedPermanently(f"{target}{request.path}")

    relay = await serve(catch_all(moved))
    async with client(base_url=relay) as mj:
        with pytest.raises(HTTPStatusError, match=r"redirect.*301") as read:
            await mj.fetch("1")
        with pytest.raises(HTTPStatusError, match="redirect"):
            await mj.list_tasks(["1"])
        with pytest.raises(HTTPStatusError, match="redirect"):
            await mj.imagine("x")
    assert [] == other_calls
    assert not isinstance(read.value, TaskNotFoundError)
    assert 301 == read.value.status


# ---- compressed bodies: aiohttp leaves them alone, quickmj inflates with its cap ----


async def test_compressed_answers_are_inflated_by_quickmj(serve: Serve) -> None:
    """gzip and deflate answers from a real server arrive compressed and are inflated."""
    body = json.dumps({"id": "1", "prompt": "猫" * 2000}).encode()

    async def packed(request: web.Request) -> web.Response:
        encoding = request.query.get("e", "gzip")
        data = gzip.compress(body) if encoding == "gzip" else zlib.compress(body)
        return web.Response(
            body=data, headers={"Content-Encoding": encoding, "Content-Type": "application/json"}
        )

    app = web.Application()
    app.router.add_get("/mj/task/1/fetch", packed)
    relay = await serve(app)
    async with client(base_url=relay) as mj:
        assert "猫" * 2000 == (await mj.fetch("1")).prompt


async def test_gzip_bomb_from_a_real_server(serve: Serve) -> None:
    """A 40 KB gzip body that inflates to 40 MiB (past the 32 MiB cap): aiohttp does not
    inflate it (auto_decompress=False) and quickmj stops at the cap."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    bomb = b"".join([*(packer.compress(b"\0" * (1 << 20)) for _ in range(40)), packer.flush()])

    async def boom(request: web.Request) -> web.Response:
        return web.Response(
            body=bomb, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"}
        )

    relay = await serve(catch_all(boom))
    async with client(base_url=relay) as mj:
        with pytest.raises(MalformedResponseError, match="larger than"):
            await mj.fetch("1")


# ---- options: proxies, the user's own session/connector, tracing, pool, close ----


@pytest.fixture
def proxy_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    yield


async def test_proxies_from_the_environment_and_explicit(
    serve: Serve, monkeypatch: pytest.MonkeyPatch, proxy_env: None
) -> None:
    """HTTP_PROXY is honoured by default (trust_env), ignored with trust_env=False, and an
    explicit proxy= wins."""
    seen: list[str] = []

    async def proxy(request: web.Request) -> web.Response:
        seen.append(str(request.url))
        return web.json_response({"id": "1"})

    proxy_url = await serve(catch_all(proxy))
    monkeypatch.setenv("HTTP_PROXY", proxy_url)
    async with client() as mj:
        await mj.fetch("1")
    assert [f"{FETCH}"] == seen
    async with client(trust_env=False, base_url=f"http://127.0.0.1:{free_port()}") as mj:
        with pytest.raises(ConnectError):
            await mj.fetch("1")  # straight to the (closed) port, not through the proxy
    assert 1 == len(seen)
    monkeypatch.delenv("HTTP_PROXY")
    async with client(trust_env=False, proxy=proxy_url) as mj:
        await mj.fetch("1")
    assert 2 == len(seen)


async def test_own_session_is_used_and_never_closed(serve: Serve) -> None:
    """session=: quickmj sends through it and leaves it open; so for connector=."""

    async def fetch(request: web.Request) -> web.Response:
        return web.json_response({"id": "1"})

    relay = await serve(catch_all(fetch))
    async with aiohttp.ClientSession() as session:
        async with client(base_url=relay, session=session) as mj:
            await mj.fetch("1")
        assert not session.closed
    connector = aiohttp.TCPConnector(limit=3)
    try:
        async with client(base_url=relay, connector=connector) as mj:
            await mj.fetch("1")
        assert not connector.closed
    finally:
        await connector.close()


async def test_trace_configs_see_each_request(serve: Serve) -> None:
    """trace_configs are attached to the session quickmj creates."""
    started: list[str] = []

    async def on_start(session: Any, context: Any, params: aiohttp.TraceRequestStartParams) -> None:
        started.append(f"{params.method} {params.url.path}")

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(on_start)

    async def fetch(request: web.Request) -> web.Response:
        return web.json_response({"id": "1"})

    relay = await serve(catch_all(fetch))
    async with client(base_url=relay, trace_configs=[trace]) as mj:
        await mj.fetch("1")
    assert ["GET /mj/task/1/fetch"] == started


async def test_session_is_lazy_pooled_and_closed() -> None:
    """The session appears with the first request (pool size max_connections) and is closed
    by aclose(); the transport refuses requests afterwards."""
    transport = AiohttpTransport(max_connections=7)
    assert transport._session is None
    session = transport._get_session()
    assert 7 == session.connector.limit  # type: ignore[union-attr]
    assert transport._get_session() is session
    await transport.aclose()
    assert session.closed
    with pytest.raises(ClientClosedError):
        await transport.handle_request(Request("GET", FETCH))
    assert "proxy=None" in repr(transport)


async def test_async_with_closes_the_session() -> None:
    """Leaving ``async with`` closes the aiohttp session the client created."""
    with aioresponses() as m:
        m.get(FETCH, payload={"id": "1"}, **ANSWER)
        async with client() as mj:
            await mj.fetch("1")
            session = mj._http.transport._session  # type: ignore[attr-defined]
            assert session is not None and not session.closed
    assert session.closed
    assert mj.is_closed


async def test_ssl_and_proxy_options_reach_aiohttp() -> None:
    """ssl= and proxy= are handed to every aiohttp request (certificate checks stay on by
    default); redirects are never followed by aiohttp itself."""
    with aioresponses() as m:
        m.get(FETCH, payload={"id": "1"}, repeat=True, **ANSWER)
        async with client() as mj:
            await mj.fetch("1")
        async with client(ssl=False, proxy="http://proxy.test:3128") as mj:
            await mj.fetch("1")
        default, custom = next(iter(m.requests.values()))
    assert (True, None, False) == (
        default.kwargs["ssl"],
        default.kwargs["proxy"],
        default.kwargs["allow_redirects"],
    )
    assert (False, "http://proxy.test:3128") == (custom.kwargs["ssl"], custom.kwargs["proxy"])
