"""The batch poller: batching, robustness against real relay behaviour, waiting APIs, rhythm."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import pytest
from fakes import FAST, FakeRelay, Script, make_client

from quickmj import (
    ClientClosedError,
    InvalidInputError,
    MalformedResponseError,
    PollPolicy,
    QuickMJError,
    RateLimitError,
    RetryPolicy,
    ServerError,
    Task,
    TaskFailedError,
    TaskNeedsModalError,
    TaskNotFoundError,
    TaskStatus,
    TaskTimeoutError,
)
from quickmj._poller import Poller
from quickmj.testing import Request, Response


def policy(**kwargs: Any) -> PollPolicy:
    """FAST with some fields changed."""
    base = {
        "interval": 0.01,
        "first_poll": 0.005,
        "near_done_interval": 0.01,
        "miss_limit": 2,
        "adaptive": False,
    }
    return PollPolicy(**{**base, **kwargs})


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
    # first_poll is long enough for all 1000 subscriptions to share the first check
    # (0.6 s: on a loaded machine 1000 tasks may take more than 0.2 s to subscribe).
    async with make_client(relay, policy(interval=0.02, first_poll=0.6, batch_size=100)) as mj:
        ids = [f"t{i}" for i in range(1000)]
        tasks = await asyncio.gather(*(mj.wait(i) for i in ids))
        stats = dict(mj.poller.stats)
    assert ids == [t.id for t in tasks]
    assert all(len(c) <= 100 for c in relay.list_calls)
    assert 2000 == sum(len(c) for c in relay.list_calls)  # each task read twice, no more
    # ceil(1000/100) requests per round of reads: on a slow machine (coverage) the 1000
    # subscriptions may fall due over more than one round, each with one partial chunk.
    assert math.ceil(1000 / 100) * 2 <= len(relay.list_calls) <= 20 + stats["ticks"]


async def test_1000_tasks_over_http_cost_ceil_n_over_batch_per_tick() -> None:
    """Through the whole HTTP layer: 1000 waiters -> 10 list-by-condition calls per tick."""
    reads: dict[str, int] = {}
    sizes: list[int] = []

    def listing(request: Request) -> Response:
        ids = request.json()["ids"]
        sizes.append(len(ids))
        out = []
        for i in ids:
            reads[i] = reads.get(i, 0) + 1
            out.append({"id": i, "status": "SUCCESS" if reads[i] >= 2 else "IN_PROGRESS"})
        return Response(200, json=out[::-1])

    script = Script({"POST /mj/task/list-by-condition": listing})
    async with script.client(poll=policy(interval=0.05, first_poll=0.6, batch_size=100)) as mj:
        ids = [str(1730621826053000 + i) for i in range(1000)]
        done = await asyncio.gather(*(mj.wait(i, timeout=10) for i in ids))
        ticks = mj.poller.stats["ticks"]
    assert ids == [t.id for t in done]
    assert 2000 == sum(sizes) and max(sizes) == 100  # each task read twice, in chunks
    assert 20 <= len(sizes) <= 20 + ticks  # one partial chunk per round at most


async def test_submit_then_wait_over_http() -> None:
    """imagine(...).wait() submits once and returns the finished task (over the HTTP layer)."""
    reads = {"n": 0}

    def listing(request: Request) -> Response:
        reads["n"] += 1
        status = "SUCCESS" if reads["n"] >= 2 else "IN_PROGRESS"
        rows = [{"id": i, "status": status, "progress": "50%"} for i in request.json()["ids"]]
        return Response(200, json=rows)

    script = Script(
        {
            "POST /mj/submit/imagine": {
                "json": {"code": 1, "description": "ok", "result": 1730621826053455}
            },
            "POST /mj/task/list-by-condition": listing,
        }
    )
    async with script.client(poll=FAST) as mj:
        task = await mj.imagine("a cat").wait(timeout=5)
    assert "1730621826053455" == task.id
    assert TaskStatus.SUCCESS == task.status
    assert 1 == script.count("POST /mj/submit/imagine")


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
        assert 1 == mj.poller.stats["fetch_confirms"]
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


async def test_a_spoofed_confirm_never_resolves_a_waiter() -> None:
    """The list leaves an id out and its confirming fetch answers another task: the waiter
    never gets the stranger (a MalformedResponseError names the mix-up); others are served."""
    relay = FakeRelay(ticks=1)
    relay.unknown = {"a"}
    relay.fetch_answer = lambda task_id: Response(
        200, json={"id": "stranger", "status": "SUCCESS", "imageUrl": "https://evil.test/x.png"}
    )
    async with make_client(relay) as mj:
        other = await mj.wait("b", timeout=5)
        with pytest.raises(MalformedResponseError) as info:
            await mj.wait("a", timeout=5)
        assert mj.poller.running
    assert "b" == other.id
    assert "stranger" in str(info.value) and "evil" not in str(info.value)
    assert "a" in relay.fetch_calls


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
        assert not mj.poller.feed(stranger)  # a push for an untracked id changes nothing
    assert ["a", "b"] == [t.id for t in tasks]


async def test_duplicate_rows_after_a_modal_never_settle_on_modal() -> None:
    """new-api answers the stale MODAL row next to the running one: the running row wins,
    so the waiter sees progress, not TaskNeedsModalError (even with modal_timeout=0)."""
    relay = FakeRelay(ticks=3)

    def double(ids: list[str], rows: list[dict[str, Any]]) -> list[Any]:
        stale = [{"id": i, "status": "MODAL", "action": "CUSTOM_ZOOM"} for i in ids]
        return [*stale, *rows, *stale]

    relay.mangle_raw = double
    seen: list[str] = []
    async with make_client(relay, policy(modal_timeout=0)) as mj:
        task = await mj.wait("z", timeout=5, on_progress=lambda t: seen.append(t.status.value))
    assert TaskStatus.SUCCESS == task.status
    assert "MODAL" not in seen


async def test_confirmed_modal_rows_never_raise() -> None:
    """After modal() was sent, a MODAL report of that id is stale news: waiters keep
    waiting instead of raising TaskNeedsModalError."""
    relay = FakeRelay(ticks=4, modal={"m"})
    async with make_client(relay, policy(modal_timeout=0)) as mj:
        mj.poller.confirm_modal("m")
        waiter = asyncio.ensure_future(mj.wait("m", timeout=5))
        await asyncio.sleep(0.1)
        assert not waiter.done()
        relay.modal.clear()  # the relay's copy catches up
        task = await waiter
    assert TaskStatus.SUCCESS == task.status


async def test_rand_query_changes_fire_progress_once_per_real_state() -> None:
    """new-api appends a new ?rand= to a running task's imageUrl on every read: that is not
    a change, so on_progress fires once per real state (and watch yields once)."""
    relay = FakeRelay(ticks=12)
    reads = {"n": 0}

    def slow_progress(ids: list[str], tasks: list[Task]) -> list[Task]:
        reads["n"] += 1
        step = min(reads["n"] // 4, 2)  # the real state changes every fourth read
        status = TaskStatus.SUCCESS if reads["n"] >= 12 else TaskStatus.IN_PROGRESS
        progress = "100%" if status is TaskStatus.SUCCESS else f"{step * 30}%"
        return [Task(id=t.id, status=status, progress=progress) for t in tasks]

    def rand(ids: list[str], rows: list[dict[str, Any]]) -> list[Any]:
        for row in rows:
            row["imageUrl"] = f"https://relay.test/mj/image/{row['id']}?rand={reads['n']}"
        return rows

    relay.mangle = slow_progress
    relay.mangle_raw = rand
    seen: list[str | None] = []
    async with make_client(relay) as mj:
        task = await mj.wait("r", timeout=5, on_progress=lambda t: seen.append(t.progress))
        reads["n"] = 0
        watched = [t.progress async for t in mj.watch("w")]
    assert ["0%", "30%", "60%", "100%"] == seen == watched
    assert task.image_url is not None and "?rand=" in task.image_url


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
    once = RetryPolicy(max_attempts=1)  # the chunk itself fails (no retry inside the read)
    async with make_client(relay, policy(batch_size=2, max_error_backoff=0.02), retry=once) as mj:
        order: list[str] = []

        async def waiter(task_id: str) -> None:
            await mj.wait(task_id)
            order.append(task_id)

        await asyncio.gather(*(waiter(f"x{i}") for i in range(4)))
    assert 0 == failures["left"]
    assert {"x2", "x3"} == set(order[:2])  # the healthy batch finished first
    assert {"x0", "x1", "x2", "x3"} == set(order)


async def test_a_slow_chunk_never_delays_the_others() -> None:
    """Chunks run as independent tasks: while one chunk's request hangs, the other chunks
    keep their cadence and finish."""
    relay = FakeRelay(ticks=2)
    release = asyncio.Event()

    async def handler(request: Request) -> Response:
        if "slow" in ((request.json() or {}).get("ids") or []):
            await release.wait()
        return relay.handle(request)

    script = Script({"POST /mj/task/list-by-condition": handler})
    async with script.client(poll=policy(batch_size=2)) as mj:
        slow = asyncio.ensure_future(mj.wait("slow"))
        await asyncio.sleep(0.05)  # its chunk is in flight (and hangs)
        fast = await asyncio.wait_for(asyncio.gather(*(mj.wait(f"f{i}") for i in range(4))), 2)
        assert not slow.done()
        release.set()
        assert "slow" == (await asyncio.wait_for(slow, 2)).id
    assert [f"f{i}" for i in range(4)] == [t.id for t in fast]


async def test_per_task_trouble_stays_with_that_task() -> None:
    """A task whose report cannot be read fails only its own waiter (with a QuickMJError,
    never an ExceptionGroup); its chunk-mates and the loop carry on."""
    relay = FakeRelay(ticks=2)

    def garble(ids: list[str], rows: list[dict[str, Any]]) -> list[Any]:
        return [{"id": "bad", "status": {"x": 1}} if r["id"] == "bad" else r for r in rows]

    relay.mangle_raw = garble
    async with make_client(relay) as mj:
        results = await asyncio.gather(
            mj.wait("bad"), mj.wait("good"), mj.wait("also"), return_exceptions=True
        )
        assert mj.poller.running
        assert "later" == (await mj.wait("later")).id
    assert isinstance(results[0], MalformedResponseError)
    assert ["good", "also"] == [t.id for t in results[1:]]  # type: ignore[union-attr]


async def test_a_raising_callback_fails_only_its_own_wait() -> None:
    """on_progress runs in the waiter's task: if it raises, that wait raises it; the poller
    and the other waiters of the same id are untouched."""
    relay = FakeRelay(ticks=3)

    def boom(task: Task) -> None:
        raise ValueError("callback bug")

    async with make_client(relay) as mj:
        bad, good = await asyncio.gather(
            mj.wait("s", on_progress=boom), mj.wait("s"), return_exceptions=True
        )
        assert mj.poller.running
    assert isinstance(bad, ValueError)
    assert isinstance(good, Task) and good.is_success


async def test_a_bad_id_fails_only_its_caller() -> None:
    """A lone surrogate (or a control character) in an id: InvalidInputError for that
    caller at once; concurrent waiters and the loop are unaffected."""
    relay = FakeRelay(ticks=2)
    async with make_client(relay) as mj:
        good = asyncio.ensure_future(mj.wait("fine"))
        for bad in ("\ud800", "a\x00b"):
            with pytest.raises(InvalidInputError):
                await mj.wait(bad)
            with pytest.raises(InvalidInputError):
                async for _ in mj.as_completed(["fine2", bad]):
                    pass
            with pytest.raises(InvalidInputError):
                async for _ in mj.watch(bad):
                    pass
        assert "fine" == (await good).id
        assert "again" == (await mj.wait("again")).id
    assert all("\ud800" not in call for calls in relay.list_calls for call in calls)


async def test_out_of_order_and_regressions_never_move_backwards() -> None:
    """An older state reported after a newer one is ignored."""
    relay = FakeRelay(ticks=99)
    seen: list[str | None] = []
    async with make_client(relay, policy(interval=10, first_poll=10)) as mj:
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


async def test_a_verified_push_is_checked_with_one_read() -> None:
    """feed(task, verify=True) does not believe a pushed terminal state: the id is polled
    at once and the relay's own answer decides."""
    relay = FakeRelay(ticks=10_000)
    async with make_client(relay, policy(interval=30, first_poll=30)) as mj:
        waiter = asyncio.ensure_future(mj.wait("v", timeout=5))
        await asyncio.sleep(0.02)
        assert mj.poller.feed(Task(id="v", status=TaskStatus.SUCCESS), verify=True)
        await asyncio.sleep(0.1)
        assert 1 == relay.reads.get("v")  # polled at once, despite the 30 s interval
        assert not waiter.done()  # the relay says IN_PROGRESS: the push was not believed
        relay.ticks = 1
        assert mj.poller.feed(Task(id="v", status=TaskStatus.SUCCESS), verify=True)
        task = await waiter
    assert TaskStatus.SUCCESS == task.status


async def test_modal_task_is_reported_not_awaited_forever() -> None:
    """A task stuck in MODAL raises TaskNeedsModalError from wait(); as_completed and watch
    end with its MODAL state."""
    relay = FakeRelay(modal={"m"})
    async with make_client(relay, policy(modal_timeout=0.05)) as mj:
        with pytest.raises(TaskNeedsModalError) as info:
            await mj.wait("m", timeout=5)
        assert info.value.task is not None
        completed = [t async for t in mj.as_completed(["m"], timeout=5)]
        watched = [t.status async for t in mj.watch("m")]
    assert TaskStatus.MODAL == info.value.task.status
    assert [TaskStatus.MODAL] == [t.status for t in completed]
    assert [TaskStatus.MODAL] == watched


async def test_timeout_raises_and_keeps_last_state() -> None:
    """wait(timeout=...) raises TaskTimeoutError with the last seen task."""
    relay = FakeRelay(ticks=10_000)
    async with make_client(relay) as mj:
        with pytest.raises(TaskTimeoutError) as info:
            await mj.wait("slow", timeout=0.1)
        assert 0 == mj.poller.tracked  # the entry went away with its only waiter
    assert "slow" == info.value.task_id
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
    original = relay.state

    def state(task_id: str) -> Task:
        task = original(task_id)
        if task_id == "slow" and relay.reads[task_id] < 4:
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


async def test_as_completed_of_nothing() -> None:
    """No ids: nothing yielded, nothing sent."""
    relay = FakeRelay()
    async with make_client(relay) as mj:
        assert [] == [t async for t in mj.as_completed([])]
    assert [] == relay.list_calls


async def test_watch_yields_changes_until_terminal() -> None:
    """watch() yields each change and ends with the final state (a failure too)."""
    relay = FakeRelay(ticks=3, fail={"f"})
    async with make_client(relay) as mj:
        states = [(t.status, t.progress) async for t in mj.watch("w")]
        failed = [t.status async for t in mj.watch("f")]
    assert [
        (TaskStatus.IN_PROGRESS, "20%"),
        (TaskStatus.IN_PROGRESS, "40%"),
        (TaskStatus.SUCCESS, "100%"),
    ] == states
    assert TaskStatus.FAILURE == failed[-1]


async def test_bulk_subscriptions_are_due_at_once() -> None:
    """Ids subscribed in bulk (at least batch_size of them) are read at once; an id waited
    on alone waits first_poll (so a burst of submits shares one batch)."""
    relay = FakeRelay(ticks=1)
    async with make_client(relay, policy(first_poll=0.5, batch_size=4)) as mj:
        started = time.monotonic()
        got = [t.id async for t in mj.as_completed(["a", "b", "c", "d"])]
        bulk = time.monotonic() - started
        started = time.monotonic()
        await asyncio.gather(mj.wait("x"), mj.wait("y"))
        alone = time.monotonic() - started
    assert {"a", "b", "c", "d"} == set(got)
    assert bulk < 0.3 <= 0.45 <= alone
    assert [["x", "y"]] == [sorted(c) for c in relay.list_calls[-1:]]  # one shared batch


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
        assert 0 == mj.poller.tracked


async def test_rate_limit_pauses_every_batch() -> None:
    """A 429 with Retry-After pauses all polling, not just the failing batch: an id
    subscribed meanwhile is not read before the pause ends."""
    relay = FakeRelay(ticks=1)
    loop = asyncio.get_running_loop()
    calls: list[tuple[float, list[str]]] = []

    def raise_for(ids: list[str]) -> BaseException | None:
        calls.append((loop.time(), list(ids)))
        return RateLimitError("slow down", retry_after=0.2) if len(calls) == 1 else None

    relay.raise_for = raise_for
    async with make_client(relay, retry=RetryPolicy(max_attempts=1)) as mj:
        first = asyncio.ensure_future(mj.wait("z1"))
        while not calls:  # noqa: ASYNC110 - waiting for the first (limited) request
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.02)
        await asyncio.gather(first, mj.wait("z2"))
    limited_at = calls[0][0]
    assert [] == [t - limited_at for t, _ in calls[1:] if t < limited_at + 0.19]
    assert any("z2" in ids for _, ids in calls[1:])


async def test_poller_errors_are_typed() -> None:
    """Every error a waiter can see is a QuickMJError."""
    relay = FakeRelay()
    relay.unknown = {"u"}
    async with make_client(relay) as mj:
        with pytest.raises(QuickMJError):
            await mj.wait("u")


# ---- the relay's refresh beat (PollPolicy.adaptive; Rhythm itself: test_rhythm.py) -----------


async def test_a_relay_without_refresh_lag_is_polled_at_the_interval() -> None:
    """A relay whose tasks change on every read (TrueAI, self-hosted proxies) never locks a
    beat: adaptive polling then is plain polling."""
    relay = FakeRelay(ticks=6)
    async with make_client(relay, policy(adaptive=True)) as mj:
        await mj.wait("t", timeout=5)
        assert mj.poller.rhythm.period is None
    assert 6 == relay.reads["t"]


async def test_the_poller_schedules_on_the_learned_beat() -> None:
    """Fed rounds every 2 s of a relay whose copy changes every 15 s (new-api), the poller
    locks the beat and schedules the next check just after the next refresh instead of
    2 s later; with adaptive=False it keeps the plain interval."""
    now = [1000.0]

    def row(t: float) -> dict[str, Any]:
        return {"id": "a", "status": "IN_PROGRESS", "progress": f"{int((t - 1000.5) // 15)}%"}

    results: dict[bool, tuple[float | None, float]] = {}
    async with make_client(FakeRelay()) as mj:
        for adaptive in (True, False):
            rounds = policy(interval=2, first_poll=1000, near_done_interval=2, adaptive=adaptive)
            poller = Poller(mj._relay, rounds, clock=lambda: now[0])
            sub = poller.subscribe(["a"])
            entry = poller._entries["a"]
            for step in range(40):
                now[0] = t = 1000.0 + 2 * step
                poller._apply_rows(["a"], {"a": row(t)}, t)
            results[adaptive] = (poller.rhythm.period, entry.next_due - now[0])
            sub.close()
            await poller.aclose()
    period, wait = results[True]
    assert period == pytest.approx(15, rel=0.05)
    until_refresh = 1000.5 + 15 * math.ceil((now[0] - 1000.5) / 15) - now[0]
    # Not 2 s later, and never later than the round after the next refresh would be
    # (a probe half a period early is allowed).
    assert 2.0 < wait <= until_refresh + 2 + 0.25
    assert 2.0 == results[False][1]  # adaptive=False: the plain interval, whatever it saw


# ---- slots refilled as jobs end (Poller.hurry; JobLengths: test_rhythm.py) -------------


async def test_a_hurried_job_is_read_at_its_expected_end_then_a_little_apart() -> None:
    """A finished job that held a slot teaches the run (20 s); a job a submit waits on is
    then read at its expected end, then after 1 s, 3 s, ... (a 30 s interval otherwise);
    not on a locked refresh beat, and an id nobody hurries keeps the plain schedule."""
    now = [1000.0]
    times = {"submitTime": 5_000, "startTime": 5_000}

    def row(task_id: str, status: str = "IN_PROGRESS", **more: Any) -> dict[str, Any]:
        return {"id": task_id, "status": status, "action": "IMAGINE", **times, **more}

    slow = policy(interval=30, first_poll=1000, near_done_interval=30, adaptive=True)
    async with make_client(FakeRelay()) as mj:
        poller = Poller(mj._relay, slow, clock=lambda: now[0])
        subs = [poller.subscribe([i]) for i in ("old", "a", "b")]
        poller.hurry("old", 980.0)  # timed: it held a slot
        poller._apply_rows(["old"], {"old": row("old", "SUCCESS", finishTime=25_000)}, 1000.0)
        poller.hurry("a", 1000.0)
        poller._apply_rows(["a", "b"], {"a": row("a"), "b": row("b")}, 1001.0)
        a, b = poller._entries["a"], poller._entries["b"]
        assert (1020.0, 1031.0) == (a.next_due, b.next_due)
        dues = []
        for t in (1020.0, 1021.0, 1023.0):
            now[0] = t
            poller._apply_rows(["a"], {"a": row("a", progress="93%")}, t)
            dues.append(a.next_due)
        assert [1021.0, 1023.0, 1027.0] == dues
        poller.rhythm._period = 15.0  # a locked beat: reads follow it, not the job
        poller._apply_rows(["a"], {"a": row("a", progress="94%")}, 1027.0)
        assert a.next_due > 1027.0 + 1.0
        for sub in subs:
            sub.close()
        await poller.aclose()
