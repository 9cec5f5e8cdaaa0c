"""The batch poller: batching, robustness against real relay behaviour, waiting APIs."""

from __future__ import annotations

import asyncio
import math
import re
from typing import Any

import pytest
from aioresponses import CallbackResult, aioresponses
from fakes import FAST, FakeRelay, make_client

from quickmj import (
    AsyncClient,
    ClientClosedError,
    QuickMJError,
    ServerError,
    Task,
    TaskFailedError,
    TaskNeedsModalError,
    TaskNotFoundError,
    TaskStatus,
    TaskTimeoutError,
)
from quickmj._poller import PollPolicy


async def test_wait_returns_success_task() -> None:
    """wait() resolves with the SUCCESS task."""
    relay = FakeRelay()
    async with make_client(relay) as mj:
        task = await mj.wait("a")
    assert TaskStatus.SUCCESS == task.status
    assert "a" == task.id


async def test_many_waiters_share_batches() -> None:
    """1000 waiters cost ceil(1000/batch) list requests per tick, never one per task."""
    relay = FakeRelay(ticks=2)
    policy = PollPolicy(interval=0.02, first_poll=0.01, batch_size=100)
    async with make_client(relay, policy) as mj:
        ids = [f"t{i}" for i in range(1000)]
        tasks = await asyncio.gather(*(mj.wait(i) for i in ids))
        stats = dict(mj.poller.stats)
    assert ids == [t.id for t in tasks]
    assert all(len(c) <= 100 for c in relay.list_calls)
    assert math.ceil(1000 / 100) * stats["ticks"] == len(relay.list_calls)
    assert 2 == stats["ticks"]


async def test_concurrent_waiters_on_one_id_share_an_entry() -> None:
    """Several waiters on one id are served by one tracked entry and one read per tick."""
    relay = FakeRelay(ticks=2)
    async with make_client(relay) as mj:
        results = await asyncio.gather(*(mj.wait("same") for _ in range(50)))
    assert {"same"} == {t.id for t in results}
    assert all(c == ["same"] for c in relay.list_calls)
    assert 2 == relay.reads["same"]


async def test_failure_raises_with_task() -> None:
    """A FAILURE ends wait() with TaskFailedError carrying the task and reason."""
    relay = FakeRelay(fail={"bad"})
    async with make_client(relay) as mj:
        with pytest.raises(TaskFailedError) as info:
            await mj.wait("bad")
    assert "boom" == info.value.fail_reason
    assert "bad" == info.value.task.id


async def test_unknown_id_fails_only_its_waiter() -> None:
    """Missing ids are confirmed with one fetch; only that waiter gets TaskNotFoundError."""
    relay = FakeRelay()
    relay.unknown = {"ghost"}
    async with make_client(relay) as mj:
        good, ghost = await asyncio.gather(mj.wait("ok"), mj.wait("ghost"), return_exceptions=True)
    assert isinstance(good, Task)
    assert isinstance(ghost, TaskNotFoundError)
    assert ["ghost"] == relay.fetch_calls


async def test_missing_id_that_exists_is_recovered_by_fetch() -> None:
    """An id the list keeps leaving out, but fetch finds, is not declared unknown."""
    relay = FakeRelay(ticks=4)
    relay.mangle = lambda ids, out: [t for t in out if t.id != "shy"]
    async with make_client(relay) as mj:
        task = await mj.wait("shy", timeout=5)
    assert TaskStatus.SUCCESS == task.status
    assert relay.fetch_calls


async def test_truncated_answers_are_reasked_in_the_same_tick() -> None:
    """A truncated answer (fewer tasks than asked) is followed by a request for the rest."""
    relay = FakeRelay(ticks=1)
    relay.mangle = lambda ids, out: out[:3]
    async with make_client(relay) as mj:
        ids = [f"t{i}" for i in range(10)]
        tasks = await asyncio.gather(*(mj.wait(i) for i in ids))
    assert ids == [t.id for t in tasks]
    assert [10, 7, 4, 1] == [len(c) for c in relay.list_calls]
    assert [] == relay.fetch_calls


async def test_duplicates_and_foreign_ids_in_answers_are_ignored() -> None:
    """Duplicated tasks and tasks nobody asked for do not confuse the poller."""
    relay = FakeRelay(ticks=2)
    stranger = Task(id="stranger", status=TaskStatus.SUCCESS)
    relay.mangle = lambda ids, out: [*out, *out, stranger]
    async with make_client(relay) as mj:
        tasks = await asyncio.gather(mj.wait("a"), mj.wait("b"))
    assert ["a", "b"] == [t.id for t in tasks]


async def test_failing_batch_does_not_stop_others() -> None:
    """A batch that errors is retried later; other batches and waiters carry on."""
    relay = FakeRelay(ticks=1)
    failures = {"left": 2}

    def raise_for(ids: list[str]) -> BaseException | None:
        if "x0" in ids and failures["left"]:
            failures["left"] -= 1
            return ServerError("boom", status=502)
        return None

    relay.raise_for = raise_for
    policy = PollPolicy(interval=0.01, first_poll=0.005, batch_size=2, max_error_backoff=0.02)
    async with make_client(relay, policy) as mj:
        order: list[str] = []

        async def waiter(task_id: str) -> None:
            await mj.wait(task_id)
            order.append(task_id)

        await asyncio.gather(*(waiter(f"x{i}") for i in range(4)))
    assert 0 == failures["left"]
    assert {"x2", "x3"} == set(order[:2])  # the healthy batch finished first
    assert {"x0", "x1", "x2", "x3"} == set(order)


async def test_out_of_order_and_regressions_never_move_backwards() -> None:
    """An older state reported after a newer one is ignored."""
    relay = FakeRelay(ticks=99)
    seen: list[str | None] = []
    async with make_client(relay) as mj:
        sub = mj.poller.subscribe(["r"], updates=True)
        mj.poller.feed(Task(id="r", status=TaskStatus.IN_PROGRESS, progress="60%"))
        mj.poller.feed(Task(id="r", status=TaskStatus.SUBMITTED, progress="0%"))
        mj.poller.feed(Task(id="r", status=TaskStatus.IN_PROGRESS, progress="30%"))
        mj.poller.feed(Task(id="r", status=TaskStatus.SUCCESS, progress="100%"))
        mj.poller.feed(Task(id="r", status=TaskStatus.IN_PROGRESS, progress="90%"))
        while True:
            item = await sub.next()
            if isinstance(item, Task):
                seen.append(item.progress)
            else:
                break
        sub.close()
    assert ["60%", "100%"] == seen


async def test_modal_task_is_reported_not_awaited_forever() -> None:
    """A task stuck in MODAL raises TaskNeedsModalError from wait()."""
    relay = FakeRelay(modal={"m"})
    policy = PollPolicy(interval=0.01, first_poll=0.005, modal_timeout=0.05)
    async with make_client(relay, policy) as mj:
        with pytest.raises(TaskNeedsModalError) as info:
            await mj.wait("m", timeout=5)
        assert info.value.task is not None
        completed = [t async for t in mj.as_completed(["m"], timeout=5)]
    assert TaskStatus.MODAL == info.value.task.status
    assert [TaskStatus.MODAL] == [t.status for t in completed]


async def test_timeout_raises_and_keeps_last_state() -> None:
    """wait(timeout=...) raises TaskTimeoutError with the last seen task."""
    relay = FakeRelay(ticks=10_000)
    async with make_client(relay) as mj:
        with pytest.raises(TaskTimeoutError) as info:
            await mj.wait("slow", timeout=0.1)
        assert 0 == mj.poller.tracked  # the entry went away with its only waiter
    assert info.value.last_task is not None
    assert TaskStatus.IN_PROGRESS == info.value.last_task.status


async def test_on_progress_sees_each_change() -> None:
    """on_progress (sync or async) receives every status/progress change."""
    relay = FakeRelay(ticks=4)
    sync_seen: list[str | None] = []
    async_seen: list[str | None] = []

    async def record(task: Task) -> None:
        async_seen.append(task.progress)

    async with make_client(relay) as mj:
        await asyncio.gather(
            mj.wait("p", on_progress=lambda t: sync_seen.append(t.progress)),
            mj.wait("q", on_progress=record),
        )
    assert ["20%", "40%", "60%", "100%"] == sync_seen
    assert ["20%", "40%", "60%", "100%"] == async_seen


async def test_as_completed_yields_in_completion_order_including_failures() -> None:
    """as_completed yields finished tasks as they finish, failures too, without raising."""
    relay = FakeRelay(ticks=1)
    relay.ticks = 1
    slow_ids = {"slow"}
    original = relay.state

    def state(task_id: str) -> Task:
        task = original(task_id)
        if task_id in slow_ids and relay.reads[task_id] < 4:
            return Task(id=task_id, status=TaskStatus.IN_PROGRESS, progress="10%")
        return task

    relay.state = state  # type: ignore[method-assign]
    relay.fail = {"bad"}
    async with make_client(relay) as mj:
        got = [t async for t in mj.as_completed(["slow", "bad", "fast"])]
    assert "slow" == got[-1].id
    assert {"bad", "fast"} == {t.id for t in got[:2]}
    assert TaskStatus.FAILURE == next(t for t in got if t.id == "bad").status


async def test_as_completed_reports_unknown_ids_after_the_rest() -> None:
    """Unknown ids do not stop the others; they raise at the end."""
    relay = FakeRelay(ticks=1)
    relay.unknown = {"ghost"}
    got: list[str] = []
    async with make_client(relay) as mj:
        with pytest.raises(TaskNotFoundError) as info:
            async for t in mj.as_completed(["a", "ghost", "b"]):
                got.append(t.id)
    assert {"a", "b"} == set(got)
    assert ("ghost",) == info.value.task_ids


async def test_as_completed_timeout_lists_pending() -> None:
    """The as_completed timeout bounds the whole iteration."""
    relay = FakeRelay(ticks=10_000)
    async with make_client(relay) as mj:
        with pytest.raises(TaskTimeoutError) as info:
            async for _ in mj.as_completed(["a", "b"], timeout=0.05):
                pass
    assert ("a", "b") == info.value.pending


async def test_watch_yields_changes_until_terminal() -> None:
    """watch() yields each change and ends with the final state."""
    relay = FakeRelay(ticks=3)
    async with make_client(relay) as mj:
        states = [(t.status, t.progress) async for t in mj.watch("w")]
    assert [
        (TaskStatus.IN_PROGRESS, "20%"),
        (TaskStatus.IN_PROGRESS, "40%"),
        (TaskStatus.SUCCESS, "100%"),
    ] == states


async def test_cancelling_one_waiter_leaves_others() -> None:
    """Cancelling one waiter does not disturb another waiting on the same id."""
    relay = FakeRelay(ticks=5)
    async with make_client(relay) as mj:
        first = asyncio.ensure_future(mj.wait("c"))
        second = asyncio.ensure_future(mj.wait("c"))
        await asyncio.sleep(0.02)
        first.cancel()
        task = await second
        with pytest.raises(asyncio.CancelledError):
            await first
    assert TaskStatus.SUCCESS == task.status


async def test_close_fails_waiters_and_stops_the_loop() -> None:
    """Closing the client fails pending waiters with ClientClosedError; no task remains."""
    relay = FakeRelay(ticks=10_000)
    mj = make_client(relay)
    waiter = asyncio.ensure_future(mj.wait("forever"))
    await asyncio.sleep(0.03)
    assert mj.poller.running
    poller = mj.poller
    await mj.aclose()
    with pytest.raises(ClientClosedError):
        await waiter
    assert not poller.running
    names = {t.get_name() for t in asyncio.all_tasks()}
    assert "quickmj-poller" not in names
    with pytest.raises(ClientClosedError):
        await mj.wait("again")


async def test_idle_poller_makes_no_requests() -> None:
    """With nothing tracked the loop sleeps: no idle traffic."""
    relay = FakeRelay(ticks=1)
    async with make_client(relay) as mj:
        await mj.wait("one")
        calls = len(relay.list_calls)
        await asyncio.sleep(0.1)
        assert calls == len(relay.list_calls)


async def test_rate_limit_pauses_every_batch() -> None:
    """A 429 with Retry-After delays all polling, not just the failing batch."""
    from quickmj import RateLimitError

    relay = FakeRelay(ticks=1)
    hits = {"n": 0}

    def raise_for(ids: list[str]) -> BaseException | None:
        hits["n"] += 1
        return RateLimitError("slow down", retry_after=0.15) if hits["n"] == 1 else None

    relay.raise_for = raise_for
    loop = asyncio.get_running_loop()
    async with make_client(relay) as mj:
        started = loop.time()
        await mj.wait("z")
        elapsed = loop.time() - started
    assert elapsed >= 0.15


async def test_submit_with_wait_returns_final_task() -> None:
    """imagine(..., wait=True) submits once and returns the finished task (over HTTP)."""
    reads = {"n": 0}

    def listing(url: Any, **kwargs: Any) -> CallbackResult:
        reads["n"] += 1
        ids = kwargs["json"]["ids"]
        status = "SUCCESS" if reads["n"] >= 2 else "IN_PROGRESS"
        return CallbackResult(payload=[{"id": i, "status": status, "progress": "50%"} for i in ids])

    with aioresponses() as m:
        m.post(
            "http://relay.test/mj/submit/imagine",
            payload={"code": 1, "description": "ok", "result": 1730621826053455},
        )
        m.post("http://relay.test/mj/task/list-by-condition", callback=listing, repeat=True)
        async with AsyncClient("k", base_url="http://relay.test", poll=FAST) as mj:
            task = await mj.imagine("a cat", wait=True, timeout=5)
    assert "1730621826053455" == task.id
    assert TaskStatus.SUCCESS == task.status
    submits = [k for k in m.requests if k[1].path.endswith("/submit/imagine")]
    assert 1 == len(m.requests[submits[0]])


async def test_1000_tasks_over_http_cost_ceil_n_over_batch_per_tick() -> None:
    """Through real HTTP mocking: 1000 waiters -> 10 list-by-condition calls per tick."""
    reads: dict[str, int] = {}
    sizes: list[int] = []

    def listing(url: Any, **kwargs: Any) -> CallbackResult:
        ids = kwargs["json"]["ids"]
        sizes.append(len(ids))
        out = []
        for i in ids:
            reads[i] = reads.get(i, 0) + 1
            out.append({"id": i, "status": "SUCCESS" if reads[i] >= 2 else "IN_PROGRESS"})
        return CallbackResult(payload=out[::-1])

    policy = PollPolicy(interval=0.05, first_poll=0.02, batch_size=100)
    with aioresponses() as m:
        m.post(
            re.compile(r"http://relay\.test/mj/task/list-by-condition"),
            callback=listing,
            repeat=True,
        )
        async with AsyncClient("k", base_url="http://relay.test", poll=policy) as mj:
            ids = [str(1730621826053000 + i) for i in range(1000)]
            done = await asyncio.gather(*(mj.wait(i, timeout=10) for i in ids))
            ticks = mj.poller.stats["ticks"]
    assert ids == [t.id for t in done]
    assert 2 == ticks
    assert [100] * 20 == sizes


async def test_poller_errors_are_typed() -> None:
    """Every error a waiter can see is a QuickMJError."""
    relay = FakeRelay()
    relay.unknown = {"u"}
    async with make_client(relay) as mj:
        with pytest.raises(QuickMJError):
            await mj.wait("u")
