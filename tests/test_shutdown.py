"""Graceful shutdown: closing a client under load ends every call promptly and cleanly.

Closing (``aclose()`` / ``close()``) while hundreds of waits poll and large downloads stream
must leave no partial file, no asyncio task and no thread behind; every waiter fails with
ClientClosedError at once (never a hang, never an untyped error), a submit on the wire
reports its unknown outcome, and a batch stopped that way resumes without paying twice.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from fakes import SIM_POLL as FAST

from quickmj import (
    AsyncClient,
    BatchItem,
    Client,
    ClientClosedError,
    QuickMJError,
    SubmitOutcomeUnknownError,
    Task,
    run_batch,
)
from quickmj._journal import Journal, Phase
from quickmj.testing import SimulatorConfig, simulate

KEY = "sk-shutdown-key"
CHUNK = 64 * 1024
IMAGE_CHUNKS = 160  # a 10 MiB image, streamed over ~8 s: still going when the client closes


async def slow_image(request: web.Request) -> web.StreamResponse:
    """A large PNG sent slowly (the server side of an in-progress download)."""
    resp = web.StreamResponse(headers={"Content-Type": "image/png"})
    resp.content_length = CHUNK * IMAGE_CHUNKS
    await resp.prepare(request)
    try:
        for i in range(IMAGE_CHUNKS):
            await resp.write(
                (b"\x89PNG\r\n\x1a\n" if i == 0 else b"") + b"\0" * (CHUNK - 8 * (i == 0))
            )
            await asyncio.sleep(0.05)
    except (ConnectionError, RuntimeError):
        pass  # the client went away: expected here
    return resp


class SlowRelay:
    """A relay whose jobs never finish, whose submits and fetches can hang, and a slow
    image host: every request the client makes is still in flight when it closes."""

    def __init__(self, hang: float = 0.0) -> None:
        self.hang = hang
        self.counters: Counter[str] = Counter()

    async def listing(self, request: web.Request) -> web.Response:
        self.counters["list"] += 1
        ids = (await request.json())["ids"]
        rows = [{"id": i, "status": "IN_PROGRESS", "progress": "10%"} for i in ids]
        return web.json_response(rows)

    async def submit(self, request: web.Request) -> web.Response:
        self.counters["submit"] += 1
        await asyncio.sleep(self.hang)
        return web.json_response({"code": 1, "result": "late"})

    async def fetch(self, request: web.Request) -> web.Response:
        self.counters["fetch"] += 1
        await asyncio.sleep(self.hang)
        return web.json_response({"id": request.match_info["id"], "status": "IN_PROGRESS"})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/mj/task/list-by-condition", self.listing)
        app.router.add_post("/mj/submit/imagine", self.submit)
        app.router.add_get("/mj/task/{id}/fetch", self.fetch)
        app.router.add_get("/img/{name}", slow_image)
        return app


async def start(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.rglob("*")) if directory.exists() else []


def streaming(directory: Path, count: int) -> bool:
    """``count`` temp files exist in ``directory``, each holding some bytes."""
    parts = list(directory.glob("*.part")) if directory.exists() else []
    return len(parts) == count and all(p.stat().st_size > 0 for p in parts)


async def wait_until_streaming(directory: Path, count: int) -> None:
    for _ in range(500):
        if streaming(directory, count):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"downloads did not start: {leftovers(directory)}")


def client_tasks(before: set[asyncio.Task[Any]]) -> list[str]:
    """Unfinished tasks started since ``before``, leaving out the servers' own handlers."""
    return sorted(
        repr(t)
        for t in asyncio.all_tasks() - before
        if not t.done()
        and not getattr(t.get_coro(), "__qualname__", "").startswith("RequestHandler.")
    )


@pytest.fixture
async def slow_relay() -> AsyncIterator[tuple[SlowRelay, str]]:
    relay = SlowRelay(hang=2.0)
    runner, base = await start(relay.app())
    try:
        yield relay, base
    finally:
        await runner.cleanup()


async def test_aclose_under_heavy_polling_and_downloads(
    slow_relay: tuple[SlowRelay, str], tmp_path: Path
) -> None:
    """300 waiters and 20 half-done 10 MiB downloads: aclose() ends them all at once with
    ClientClosedError, deletes every partial file and leaves no task (the poller's too)."""
    _, base = slow_relay
    ids = [str(1730621826053000 + i) for i in range(300)]
    dest = tmp_path / "images"
    before = asyncio.all_tasks()
    mj = AsyncClient(KEY, base_url=base, poll=FAST)
    waiters = [asyncio.ensure_future(mj.wait(i)) for i in ids]
    downloads = [
        asyncio.ensure_future(
            mj.download(Task(id=f"big{k}", image_url=f"{base}/img/{k}.png"), dest)
        )
        for k in range(20)
    ]
    await wait_until_streaming(dest, 20)
    while mj.poller.stats["list_requests"] < 6:  # noqa: ASYNC110 - polling a counter
        await asyncio.sleep(0.01)
    assert any(t.get_name() == "quickmj-poller" for t in asyncio.all_tasks())

    started = time.perf_counter()
    await asyncio.wait_for(mj.aclose(), 5)
    results = await asyncio.wait_for(
        asyncio.gather(*waiters, *downloads, return_exceptions=True), 5
    )
    settled = time.perf_counter() - started

    assert settled < 2.0  # nobody waits for a read timeout or a backoff
    assert [] == [r for r in results if not isinstance(r, ClientClosedError)]
    assert 320 == len(results)
    assert [] == leftovers(dest)  # no *.part, no half-written image
    await asyncio.sleep(0)
    assert [] == client_tasks(before)


async def test_a_submit_on_the_wire_reports_its_unknown_outcome(
    slow_relay: tuple[SlowRelay, str],
) -> None:
    """Closed while a submit waits for its answer: SubmitOutcomeUnknownError (the job may
    exist), not ClientClosedError; a read in flight gets ClientClosedError; a submit after
    close is certainly not sent (a plain ClientClosedError)."""
    relay, base = slow_relay
    mj = AsyncClient(KEY, base_url=base)
    submission = mj.imagine("a cat", state="on-the-wire")
    submit = asyncio.ensure_future(submission)
    fetch = asyncio.ensure_future(mj.fetch("1730621826053455"))
    while not (relay.counters["submit"] and relay.counters["fetch"]):  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    await mj.aclose()
    with pytest.raises(SubmitOutcomeUnknownError, match="closed") as info:
        await asyncio.wait_for(submit, 2)
    assert "on-the-wire" == info.value.state
    assert submission.error is info.value and submission.job is None
    with pytest.raises(ClientClosedError):
        await asyncio.wait_for(fetch, 2)
    with pytest.raises(ClientClosedError):
        await mj.imagine("after close")
    assert 1 == relay.counters["submit"]


async def test_closing_the_client_under_a_batch_stops_it_resumably(tmp_path: Path) -> None:
    """run_batch raises one ClientClosedError (not an ExceptionGroup). Prompts not yet
    submitted stay pending, not 'rejected', so a resume submits each exactly once; a submit
    that was on the wire is 'unknown' (never re-sent), nothing is 'failed'."""
    items = [BatchItem(f"prompt {i}") for i in range(24)]
    async with simulate(SimulatorConfig(run_seconds=0.3)) as relay:
        mj = AsyncClient(relay.api_key, base_url=relay.base_url, dialect=relay.dialect, poll=FAST)
        run = asyncio.ensure_future(run_batch(mj, items, tmp_path, concurrency=8))
        while len(relay.simulator.submissions) < 10:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        await mj.aclose()
        with pytest.raises(ClientClosedError):
            await asyncio.wait_for(run, 5)
        rows = [json.loads(x) for x in (tmp_path / "manifest.jsonl").read_text().splitlines()]
        assert not [r for r in rows if r["status"] in ("rejected", "failed")]
        unknown = [r["prompt"] for r in rows if r["status"] == "unknown"]
        assert all("closed" in r["reason"] for r in rows if r["status"] == "unknown")
        assert any(r["status"] == "pending" for r in rows)
        async with AsyncClient(
            relay.api_key, base_url=relay.base_url, dialect=relay.dialect, poll=FAST
        ) as mj:
            summary = await run_batch(mj, items, tmp_path, concurrency=8, resume=True)
        made = Counter(s.prompt for s in relay.simulator.submissions)
    assert (24 - len(unknown), len(unknown)) == (summary.succeeded, summary.unknown)
    assert {1} == set(made.values())  # nothing created twice
    assert {i.prompt for i in items} - set(unknown) <= set(made)


async def test_resume_after_a_kill_while_pressing_a_button(tmp_path: Path) -> None:
    """A run killed while an upscale press was on the wire: the resume reports the row
    'unknown' instead of pressing again (which could pay twice); a press already recorded
    is waited on, and the next button is pressed once."""
    items = [BatchItem("pressed when killed"), BatchItem("U1 recorded, U2 not yet")]
    async with simulate(SimulatorConfig(dialect="trueai", run_seconds=0.05)) as relay:
        sim = relay.simulator
        grids = [sim.submit_imagine(i.prompt) for i in items]
        async with AsyncClient(
            relay.api_key, base_url=relay.base_url, dialect=relay.dialect, poll=FAST
        ) as mj:
            done = [await mj.wait(g) for g in grids]
            u1 = await mj.action(done[1], "U1")
        journal = Journal(tmp_path / ".quickmj-journal.sqlite", create=True)
        journal.load_prompts([(i.prompt, {}) for i in items])
        for idx, grid in enumerate(grids):
            journal.set_task(idx, grid)
            journal.mark_submitting(idx, f"qmj:old:{idx}:U1", pressing="U1")
        journal.set_upscale(1, "U1", u1.id)  # row 1's U1 answer was recorded
        journal.end_run()
        journal.close()
        async with AsyncClient(
            relay.api_key, base_url=relay.base_url, dialect=relay.dialect, poll=FAST
        ) as mj:
            summary = await run_batch(
                mj, items, tmp_path, upscale=["U1", "U2"], resume=True, download=False
            )
        actions = Counter(
            s.prompt.split("::")[3] for s in sim.submissions if s.endpoint == "/submit/action"
        )
    assert (1, 1) == (summary.succeeded, summary.unknown)
    rows = [json.loads(x) for x in (tmp_path / "manifest.jsonl").read_text().splitlines()]
    assert Phase.UNKNOWN == rows[0]["status"] and "U1" in rows[0]["reason"]
    assert {"U1", "U2"} == set(rows[1]["upscale_task_ids"])
    assert {"1": 1, "2": 1} == dict(actions)  # row 1's U1 (before the kill) and U2, once each


# ---- the blocking facade ----


@pytest.fixture
def relay_thread() -> Iterator[str]:
    """The slow relay and image host served from a thread of their own (for sync tests)."""
    ready: Future[str] = Future()
    stop = threading.Event()

    async def serve() -> None:
        runner, base = await start(SlowRelay(hang=5.0).app())
        try:
            ready.set_result(base)
            while not stop.is_set():  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        finally:
            await runner.cleanup()

    thread = threading.Thread(target=asyncio.run, args=(serve(),), name="test-relay")
    thread.start()
    try:
        yield ready.result(timeout=10)
    finally:
        stop.set()
        thread.join(10)


def test_sync_close_from_another_thread(relay_thread: str, tmp_path: Path) -> None:
    """Threads blocked in wait, as_completed, watch, a submit, download and an async
    progress callback all get ClientClosedError (the submit an unknown outcome) when another
    thread closes the Client; no thread is left."""
    base = relay_thread
    ids = [str(1730621826053000 + i) for i in range(20)]
    dest = tmp_path / "images"
    before = set(threading.enumerate())
    mj = Client(KEY, base_url=base, poll=FAST)
    results: dict[str, Any] = {}

    async def slow_callback(task: Task) -> None:
        await asyncio.sleep(60)  # still running when the client closes

    calls: dict[str, Any] = {
        **{f"wait {i}": lambda i=i: mj.wait(i) for i in ids[:10]},
        "as_completed": lambda: list(mj.as_completed(ids)),
        "watch": lambda: list(mj.watch(ids[11])),
        "callback": lambda: mj.wait(ids[10], on_progress=slow_callback),
        "submit": lambda: mj.imagine("on the wire"),
        **{
            f"download {k}": lambda k=k: mj.download(
                Task(id=f"big{k}", image_url=f"{base}/img/{k}.png"), dest
            )
            for k in range(4)
        },
    }

    def call(name: str) -> None:
        try:
            results[name] = calls[name]()
        except BaseException as exc:
            results[name] = exc

    threads = [threading.Thread(target=call, args=(name,)) for name in calls]
    for t in threads:
        t.start()
    asyncio.run(wait_until_streaming(dest, 4))
    time.sleep(0.2)  # the callback has started, the waiters are tracked

    closer = threading.Thread(target=mj.close)
    closer.start()
    closer.join(5)
    for t in threads:
        t.join(5)

    assert not closer.is_alive() and not any(t.is_alive() for t in threads)
    expected = dict.fromkeys(calls, "ClientClosedError") | {"submit": "SubmitOutcomeUnknownError"}
    assert expected == {
        name: "ClientClosedError" if isinstance(r, ClientClosedError) else type(r).__name__
        for name, r in results.items()
    }
    assert all(isinstance(r, QuickMJError) for r in results.values())
    assert [] == leftovers(dest)
    assert set() == set(threading.enumerate()) - before
