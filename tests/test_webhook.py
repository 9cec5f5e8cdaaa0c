"""notifyHook receiver: pushes resolve waiters; hostile hooks change nothing."""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

import aiohttp
import pytest
from aioresponses import aioresponses
from fakes import FakeRelay, make_client

from quickmj import Client, PollPolicy, Task, TaskStatus
from quickmj._converter import unstructure

# Polling alone would take "forever" (10k reads); only pushes can finish these tasks fast.
SLOW = FakeRelay(ticks=10_000)
POLICY = PollPolicy(interval=0.02, first_poll=0.01, safety_net_interval=0.3)


def hook(task_id: str, status: str, progress: str = "") -> dict[str, Any]:
    return unstructure(Task(id=task_id, status=TaskStatus(status), progress=progress))


async def post(url: str, body: Any, *, raw: bytes | None = None) -> int:
    async with aiohttp.ClientSession() as session:
        data = io.BytesIO(raw if raw is not None else json.dumps(body).encode())
        async with session.post(url, data=data, headers={"Content-Type": "application/json"}) as r:
            return r.status


async def test_push_resolves_waiter_and_submits_carry_the_url() -> None:
    """A pushed SUCCESS wakes the waiter; submits send the receiver's URL as notifyHook."""
    relay = FakeRelay(ticks=10_000)
    async with make_client(relay, POLICY) as mj, mj.webhook_receiver() as rx:
        with aioresponses(passthrough=["http://127.0.0.1"]) as m:
            m.post("http://relay.test/mj/submit/imagine", payload={"code": 1, "result": "t1"})
            result = await mj.imagine("a fox")
            body = next(iter(m.requests.values()))[0].kwargs["json"]
        assert rx.url == body["notifyHook"]
        waiter = asyncio.ensure_future(mj.wait(result))
        await asyncio.sleep(0.05)
        assert 200 == await post(rx.url, hook("t1", "IN_PROGRESS", "50%"))
        assert 200 == await post(rx.url, hook("t1", "SUCCESS", "100%"))
        task = await asyncio.wait_for(waiter, 2)
        assert TaskStatus.SUCCESS == task.status
        assert 2 == rx.stats["accepted"]
    assert mj._hook_url(None) is None  # the URL is no longer sent after the block


async def test_explicit_notify_hook_wins() -> None:
    """A notify_hook argument overrides the receiver's URL."""
    async with make_client(SLOW, POLICY) as mj, mj.webhook_receiver():
        assert "https://mine.example/h" == mj._hook_url("https://mine.example/h")


async def test_wrong_token_is_404_and_changes_nothing() -> None:
    """A hook to the wrong secret path is refused and not applied."""
    relay = FakeRelay(ticks=10_000)
    async with make_client(relay, POLICY) as mj, mj.webhook_receiver() as rx:
        waiter = asyncio.ensure_future(mj.wait("t2", timeout=0.3))
        await asyncio.sleep(0.03)
        bad = rx.url.rsplit("/", 1)[0] + "/not-the-token"
        assert 404 == await post(bad, hook("t2", "SUCCESS", "100%"))
        with pytest.raises(TimeoutError):
            await waiter
        assert 1 == rx.stats["rejected"]
    assert "not-the-token" not in repr(rx) and rx.url.rsplit("/", 1)[1] not in repr(rx)


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"{not json", 400),
        (b"[1, 2, 3]", 400),
        (json.dumps({"id": {"x": 1}, "status": "SUCCESS"}).encode(), 400),
        (b"\xff\xfe", 400),
        (b"[" * 5000 + b"]" * 5000, 400),
        (b'{"id": "t3", "status": "SUCCESS", "prompt": "' + b"x" * (2 * 1024 * 1024) + b'"}', 413),
    ],
)
async def test_hostile_bodies_are_refused(raw: bytes, status: int) -> None:
    """Malformed, wrong-shaped, non-UTF-8, deeply nested or oversized bodies change nothing."""
    relay = FakeRelay(ticks=10_000)
    async with make_client(relay, POLICY) as mj, mj.webhook_receiver() as rx:
        sub = mj.poller.subscribe(["t3"], updates=True)
        assert status == await post(rx.url, None, raw=raw)
        await asyncio.sleep(0.05)
        assert mj.poller.feed.__self__ is mj.poller  # the poller is still the same object
        assert sub.last("t3") is None or sub.last("t3").status is TaskStatus.IN_PROGRESS  # type: ignore[union-attr]
        sub.close()


async def test_duplicate_and_reordered_hooks_never_move_backwards() -> None:
    """Late IN_PROGRESS after SUCCESS, and duplicates, are ignored."""
    relay = FakeRelay(ticks=10_000)
    seen: list[tuple[str, str | None]] = []
    async with make_client(relay, POLICY) as mj, mj.webhook_receiver() as rx:
        waiter = asyncio.ensure_future(
            mj.wait("t4", on_progress=lambda t: seen.append((t.status.value, t.progress)))
        )
        await asyncio.sleep(0.03)
        for body in (
            hook("t4", "IN_PROGRESS", "62%"),
            hook("t4", "IN_PROGRESS", "31%"),  # older, arrives late
            hook("t4", "IN_PROGRESS", "62%"),  # duplicate
            hook("t4", "SUCCESS", "100%"),
            hook("t4", "IN_PROGRESS", "93%"),  # after the end
        ):
            assert 200 == await post(rx.url, body)
        task = await asyncio.wait_for(waiter, 2)
    assert TaskStatus.SUCCESS == task.status
    assert ("IN_PROGRESS", "31%") not in seen
    assert 1 == seen.count(("IN_PROGRESS", "62%"))


async def test_unknown_task_is_ignored() -> None:
    """A hook for an id nobody waits on is accepted (200) and ignored."""
    async with make_client(FakeRelay(), POLICY) as mj, mj.webhook_receiver() as rx:
        assert 200 == await post(rx.url, hook("nobody", "SUCCESS", "100%"))
        assert 1 == rx.stats["unknown"]


async def test_pushed_ids_are_polled_only_as_safety_net_until_pushes_stop() -> None:
    """While pushes arrive the id is barely polled; when they stop, polling takes over."""
    relay = FakeRelay(ticks=10_000)
    async with make_client(relay, POLICY) as mj, mj.webhook_receiver() as rx:
        waiter = asyncio.ensure_future(mj.wait("t5", timeout=5))
        await asyncio.sleep(0.05)
        assert 200 == await post(rx.url, hook("t5", "IN_PROGRESS", "10%"))
        reads_at_push = relay.reads.get("t5", 0)
        await asyncio.sleep(0.2)  # < safety_net_interval: no polling of t5
        assert reads_at_push == relay.reads.get("t5", 0)
        relay.ticks = 1  # the relay now reports SUCCESS; only polling can see it
        task = await asyncio.wait_for(waiter, 3)  # pushes stopped: polling resumes
    assert TaskStatus.SUCCESS == task.status
    assert relay.reads["t5"] > reads_at_push


def test_sync_entry_point() -> None:
    """Client.webhook_receiver works as a blocking context manager."""
    relay = FakeRelay(ticks=10_000)
    with Client("k", base_url="http://relay.test", poll=POLICY) as mj:
        mj._async.list_tasks = relay.list_tasks  # type: ignore[method-assign]
        mj._async._list_raw = relay.list_raw  # type: ignore[method-assign]
        mj._async.fetch = relay.fetch  # type: ignore[method-assign]
        with mj.webhook_receiver() as rx:
            assert rx.url.startswith("http://127.0.0.1:")
            fut = asyncio.run_coroutine_threadsafe(
                _push_later(rx.url, hook("t6", "SUCCESS", "100%")),
                mj._loop,  # type: ignore[arg-type]
            )
            task = mj.wait("t6", timeout=3)
            fut.result(3)
    assert TaskStatus.SUCCESS == task.status


async def _push_later(url: str, body: dict[str, Any]) -> None:
    await asyncio.sleep(0.1)
    await post(url, body)


async def test_end_to_end_with_simulator_hooks() -> None:
    """The simulator's notifyHooks finish every wait; polling hardly runs at all."""
    from quickmj import AsyncClient
    from quickmj.simulator import SimulatorConfig, simulate

    # Polling this slowly could never finish in time: only the pushes can.
    policy = PollPolicy(interval=30, first_poll=30, safety_net_interval=30)
    async with (
        simulate(SimulatorConfig(queue_seconds=0.05, run_seconds=0.3)) as relay,
        AsyncClient(relay.api_key, base_url=relay.base_url, poll=policy) as mj,
        mj.webhook_receiver() as rx,
    ):
        results = [await mj.imagine(f"hooked {i}") for i in range(20)]
        tasks = await asyncio.wait_for(asyncio.gather(*(mj.wait(r) for r in results)), 10)
        lists = relay.simulator.counters["POST /task/list-by-condition"]
    assert all(t.status is TaskStatus.SUCCESS for t in tasks)
    assert 0 == lists
    assert rx.stats["accepted"] >= 20
