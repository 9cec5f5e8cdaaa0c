"""The blocking facade: parity with AsyncClient, threads, running loops, interrupts, cleanup."""

from __future__ import annotations

import _thread
import asyncio
import gc
import inspect
import threading
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from fakes import FAST, FakeRelay

from quickmj import AsyncClient, Client, ClientClosedError, Task, TaskStatus, UsageError
from quickmj._poller import PollPolicy


def make_sync(relay: FakeRelay, policy: PollPolicy = FAST) -> Client:
    client = Client("k", base_url="http://relay.test", poll=policy)
    client._async.list_tasks = relay.list_tasks  # type: ignore[method-assign]
    client._async._list_raw = relay.list_raw  # type: ignore[method-assign]
    client._async.fetch = relay.fetch  # type: ignore[method-assign]
    return client


@pytest.fixture
def relay() -> FakeRelay:
    return FakeRelay(ticks=2)


@pytest.fixture
def sync(relay: FakeRelay) -> Iterator[Client]:
    with make_sync(relay) as client:
        yield client


def _public_async_methods() -> dict[str, object]:
    return {
        name: member
        for name, member in inspect.getmembers(AsyncClient)
        if not name.startswith("_")
        and (inspect.iscoroutinefunction(member) or inspect.isasyncgenfunction(member))
        and name != "aclose"
    }


def test_every_async_method_has_a_sync_twin_with_the_same_signature() -> None:
    """Each public coroutine / async-generator method of AsyncClient exists on Client."""
    methods = _public_async_methods()
    assert {"imagine", "wait", "as_completed", "watch", "download", "fetch_many"} <= set(methods)
    for name, async_method in methods.items():
        twin = getattr(Client, name, None)
        assert twin is not None, f"Client.{name} is missing"
        assert inspect.signature(async_method) == inspect.signature(twin), name  # type: ignore[arg-type]
        assert not inspect.iscoroutinefunction(twin), name


def test_constructor_signature_matches() -> None:
    """Client(...) takes exactly AsyncClient's constructor arguments."""
    a = inspect.signature(AsyncClient.__init__)
    s = inspect.signature(Client.__init__)
    assert list(a.parameters.items()) == list(s.parameters.items())


def test_wait_blocks_and_returns(sync: Client) -> None:
    """The blocking wait returns the finished task."""
    task = sync.wait("a")
    assert TaskStatus.SUCCESS == task.status


def test_from_inside_a_running_loop(relay: FakeRelay) -> None:
    """Works in a thread that already runs an event loop (a notebook cell)."""

    async def notebook_cell() -> Task:
        with make_sync(relay) as mj:
            return mj.wait("in-loop")

    task = asyncio.run(notebook_cell())
    assert "in-loop" == task.id


def test_many_threads_share_one_client(sync: Client, relay: FakeRelay) -> None:
    """Calls from several threads at once are all served by the one loop."""
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: sync.wait(f"t{i}").id, range(40)))
    assert [f"t{i}" for i in range(40)] == results


def test_iterators_stream_results(relay: FakeRelay) -> None:
    """as_completed yields the first result before the slow task finishes."""
    relay.ticks = 1
    original = relay.state

    def state(task_id: str) -> Task:
        if task_id == "slow" and relay.reads.get(task_id, 0) < 30:
            relay.reads[task_id] = relay.reads.get(task_id, 0) + 1
            return Task(id=task_id, status=TaskStatus.IN_PROGRESS, progress="5%")
        return original(task_id)

    relay.state = state  # type: ignore[method-assign]
    with make_sync(relay) as mj:
        stream = mj.as_completed(["slow", "fast"])
        first = next(stream)
        slow_reads_at_first = relay.reads.get("slow", 0)
        rest = list(stream)
    assert "fast" == first.id
    assert slow_reads_at_first < 30
    assert ["slow"] == [t.id for t in rest]


def test_watch_is_a_plain_iterator(sync: Client) -> None:
    """watch() yields each state change synchronously."""
    states = [t.status for t in sync.watch("w")]
    assert TaskStatus.SUCCESS == states[-1]


def test_keyboard_interrupt_cancels_wait_and_client_stays_usable(relay: FakeRelay) -> None:
    """Ctrl-C during a blocking wait cancels it; the client keeps working."""
    relay.ticks = 10_000
    with make_sync(relay) as mj:
        timer = threading.Timer(0.1, _thread.interrupt_main)
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            mj.wait("forever")
        timer.join()
        deadline = time.monotonic() + 2
        while mj._async.poller.tracked and time.monotonic() < deadline:
            time.sleep(0.01)
        assert 0 == mj._async.poller.tracked  # the cancelled waiter left no entry
        relay.ticks = 1
        assert TaskStatus.SUCCESS == mj.wait("after").status


def test_close_releases_the_thread(relay: FakeRelay) -> None:
    """After close() no portal thread is left; close is idempotent."""
    before = set(threading.enumerate())
    mj = make_sync(relay)
    mj.wait("x")
    assert len(set(threading.enumerate()) - before) >= 1
    mj.close()
    mj.close()
    assert set() == set(threading.enumerate()) - before
    with pytest.raises(ClientClosedError):
        mj.fetch("x")


def test_no_non_daemon_threads_while_open(sync: Client) -> None:
    """The loop thread never keeps the interpreter alive."""
    sync.wait("y")
    extra = [t for t in threading.enumerate() if t is not threading.main_thread()]
    assert extra and all(t.daemon for t in extra)


def test_callback_calling_the_sync_client_is_refused(relay: FakeRelay) -> None:
    """A progress callback that calls the blocking client gets UsageError, not a deadlock."""
    errors: list[BaseException] = []
    relay.ticks = 3
    with make_sync(relay) as mj:

        def callback(task: Task) -> None:
            try:
                mj.fetch("other")
            except UsageError as exc:
                errors.append(exc)

        mj.wait("cb", on_progress=callback)
    assert errors


def test_forgotten_client_warns_and_cleans_up(relay: FakeRelay) -> None:
    """A client dropped without close() warns and its thread goes away."""
    before = set(threading.enumerate())
    mj = make_sync(relay)
    mj.wait("z")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del mj
        gc.collect()
    assert any(issubclass(w.category, ResourceWarning) for w in caught)
    deadline = time.monotonic() + 5
    while set(threading.enumerate()) - before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert set() == set(threading.enumerate()) - before


def test_errors_are_the_same_types(relay: FakeRelay) -> None:
    """The facade raises exactly what AsyncClient raises."""
    from quickmj import TaskFailedError

    relay.fail = {"bad"}
    with make_sync(relay) as mj, pytest.raises(TaskFailedError):
        mj.wait("bad")
