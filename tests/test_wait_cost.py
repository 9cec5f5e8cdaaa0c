"""What one pending wait() holds: 100,000 of them at once must stay cheap (issue 23 §4).

A plain wait is one coroutine frame under AsyncClient.wait, suspended on one Future, with
one timer for its timeout: no nested coroutines and no cancel scope. (The bytes are
measured in benchmarks/scale.py; these tests pin the shape that makes them small.)
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import pytest
from fakes import FakeRelay, make_client

from quickmj import PollPolicy, TaskStatus, TaskTimeoutError, _waiting
from quickmj._converter import structure_task
from quickmj._poller import Final

#: Nothing is polled while a test looks at the pending waits.
IDLE = PollPolicy(interval=3600, first_poll=3600, near_done_interval=3600, adaptive=False)


def await_chain(task: asyncio.Task[Any]) -> tuple[list[str], Any]:
    """The coroutines a suspended task is inside, outermost first, and what the last awaits."""
    names: list[str] = []
    obj: Any = task.get_coro()
    while inspect.iscoroutine(obj):
        names.append(obj.cr_code.co_name)
        obj = obj.cr_await
    return names, obj


@pytest.fixture
def timers(monkeypatch: pytest.MonkeyPatch) -> list[asyncio.TimerHandle | None]:
    """The timer handles plain waits arm (None: no timeout)."""
    armed: list[asyncio.TimerHandle | None] = []
    real = _waiting._timer

    def spy(waiter: asyncio.Future[None], timeout: float | None) -> asyncio.TimerHandle | None:
        armed.append(real(waiter, timeout))
        return armed[-1]

    monkeypatch.setattr(_waiting, "_timer", spy)
    return armed


@pytest.mark.parametrize("timeout", [None, 600.0])
async def test_a_pending_wait_is_two_frames_on_one_future(
    timeout: float | None, timers: list[asyncio.TimerHandle | None]
) -> None:
    """AsyncClient.wait -> _waiting.wait -> a Future, with or without a timeout (the old
    path nested three more coroutines and, with a timeout, a cancel scope)."""
    async with make_client(FakeRelay(), IDLE) as mj:
        waiter = asyncio.ensure_future(mj.wait("a", timeout=timeout))
        await asyncio.sleep(0)
        names, innermost = await_chain(waiter)
        assert ["wait", "wait"] == names
        assert not inspect.iscoroutine(innermost)
        assert 1 == len(timers)
        assert (timers[0] is None) == (timeout is None)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
    if timers[0] is not None:
        assert timers[0].cancelled()  # a cancelled wait leaves no timer behind


async def test_a_finished_wait_cancels_its_timer(timers: list[asyncio.TimerHandle | None]) -> None:
    """The timer of a wait that got its task is cancelled, not left to fire later."""
    async with make_client(FakeRelay(ticks=1)) as mj:
        task = await mj.wait("a", timeout=600)
    assert TaskStatus.SUCCESS == task.status
    assert [True] == [t is not None and t.cancelled() for t in timers]


async def test_the_final_wins_when_it_comes_as_the_time_runs_out() -> None:
    """The timer fires, then the final arrives before the waiter runs: the task in hand is
    returned, not a TaskTimeoutError carrying it as ``last_task`` (what the cancel scope did
    in this one-loop-iteration race)."""
    async with make_client(FakeRelay(), IDLE) as mj:
        waiter = asyncio.ensure_future(mj.wait("a", timeout=600))
        await asyncio.sleep(0)
        sub = mj.poller._entries["a"].listeners[0]
        _waiting._wake(sub.waiter())  # the time is up...
        done = structure_task({"id": "a", "status": "SUCCESS", "progress": "100%"}, "a")
        mj.poller._finish("a", Final(task=done))  # ...and the final is in before it runs
        assert done is await waiter


async def test_an_expired_plain_wait_raises_with_the_id_and_frees_the_entry() -> None:
    """A timeout with nothing queued is a TaskTimeoutError; the id is no longer tracked."""
    async with make_client(FakeRelay(), IDLE) as mj:
        with pytest.raises(TaskTimeoutError) as caught:
            await mj.wait("a", timeout=0)
        assert "a" == caught.value.task_id
        assert 0 == mj.poller.tracked
