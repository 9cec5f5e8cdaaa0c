"""The blocking facade: parity with AsyncClient and AsyncJob, threads, running loops, real
Ctrl-C, fork, close and cleanup."""

from __future__ import annotations

import asyncio
import gc
import inspect
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from conftest import load_fixture
from fakes import BASE, FAST, PNG, FakeRelay, make_sync

from quickmj import (
    AsyncClient,
    AsyncJob,
    Client,
    ClientClosedError,
    Job,
    PollPolicy,
    RetryPolicy,
    Task,
    TaskFailedError,
    TaskNotFoundError,
    TaskStatus,
    Timeouts,
    UsageError,
)
from quickmj.testing import Response

TESTS = str(Path(__file__).parent)
PIG_HASH = "3785da15-4f70-4034-9128-f3ff1ac634fa"
SUBMITS = (
    "imagine",
    "blend",
    "describe",
    "shorten",
    "action",
    "modal",
    "change",
    "simple_change",
    "video",
    "edits",
    "swap_face",
)


@pytest.fixture
def relay() -> FakeRelay:
    return FakeRelay(ticks=2)


@pytest.fixture
def sync(relay: FakeRelay) -> Iterator[Client]:
    with make_sync(relay) as client:
        yield client


def public(cls: type) -> dict[str, Any]:
    """Public attributes of a class: methods, properties and slots."""
    return {name: member for name, member in inspect.getmembers(cls) if not name.startswith("_")}


def is_attribute(member: Any) -> bool:
    return isinstance(member, property) or inspect.ismemberdescriptor(member)


def parameters(fn: Any) -> list[tuple[str, Any, Any, Any]]:
    return [
        (p.name, p.kind, p.default, p.annotation) for p in inspect.signature(fn).parameters.values()
    ]


@pytest.mark.parametrize(
    ("async_cls", "sync_cls", "renamed"),
    [(AsyncClient, Client, {"aclose": "close"}), (AsyncJob, Job, {})],
)
def test_every_public_method_and_property_has_a_blocking_twin(
    async_cls: type, sync_cls: type, renamed: dict[str, str]
) -> None:
    """Each public method and property of AsyncClient/AsyncJob exists on Client/Job: methods
    with the same parameters (aclose is close), never as coroutines; properties as
    properties."""
    async_members = public(async_cls)
    sync_members = public(sync_cls)
    assert len(async_members) > 8
    missing = [n for n in async_members if renamed.get(n, n) not in sync_members]
    assert [] == missing
    for name, member in async_members.items():
        twin = sync_members[renamed.get(name, name)]
        if is_attribute(member):
            assert isinstance(twin, property), name
            continue
        assert callable(twin), name
        assert parameters(member) == parameters(twin), name
        assert not inspect.iscoroutinefunction(twin), name
        assert not inspect.isasyncgenfunction(twin), name


def test_constructor_signature_matches() -> None:
    """Client(...) takes exactly AsyncClient's constructor arguments."""
    a = inspect.signature(AsyncClient.__init__)
    s = inspect.signature(Client.__init__)
    assert list(a.parameters.items()) == list(s.parameters.items())


def test_properties_read_the_async_twin() -> None:
    """Configuration reads back the same on the blocking client, without opening it."""
    timeouts, retry, poll = Timeouts(read=5), RetryPolicy(max_attempts=2), PollPolicy(interval=3)
    mj = Client("k", base_url=BASE, timeouts=timeouts, retry=retry, poll=poll, dialect="trueai")
    assert (BASE, None, "trueai", retry, timeouts, poll, False) == (
        mj.base_url,
        mj.mode,
        mj.dialect,
        mj.retry,
        mj.timeouts,
        mj.poll_policy,
        mj.is_closed,
    )
    assert poll == mj.poller.policy
    assert repr(mj).startswith("<Client base_url='http://relay.test' mode=None dialect='trueai'")
    mj.close()
    assert mj.is_closed


def test_submits_return_blocking_jobs(sync: Client, relay: FakeRelay) -> None:
    """Every submit sends at once and returns a Job whose methods block."""
    calls: dict[str, Any] = {
        "imagine": lambda: sync.imagine("a fox"),
        "blend": lambda: sync.blend([PNG, PNG]),
        "describe": lambda: sync.describe(PNG),
        "shorten": lambda: sync.shorten("a long prompt"),
        "action": lambda: sync.action("1", "MJ::JOB::upsample::1::h"),
        "modal": lambda: sync.modal("1", prompt="x --zoom 2"),
        "change": lambda: sync.change("1", "V2"),
        "simple_change": lambda: sync.simple_change("1 U3"),
        "video": lambda: sync.video("a fox runs"),
        "edits": lambda: sync.edits("blue", PNG),
        "swap_face": lambda: sync.swap_face(PNG, PNG),
    }
    assert set(SUBMITS) == set(calls)
    jobs = {name: call() for name, call in calls.items()}
    assert all(isinstance(job, Job) for job in jobs.values())
    assert len(SUBMITS) == len(relay.submits)
    assert "/insight-face/swap" == jobs["swap_face"].route
    job = jobs["imagine"]
    assert f"<Job {job.id} /submit/imagine>" == repr(job)
    assert TaskStatus.SUCCESS == job.wait(timeout=5).status


def test_job_methods_block(sync: Client, relay: FakeRelay, tmp_path: Path) -> None:
    """A Job's properties mirror the AsyncJob; its methods block and return plain values."""
    job = sync.imagine("a pig", state="mine")
    assert (job.id, job.id, 1, "ok", "mine") == (
        job.task_id,
        job.result.task_id,
        job.code,
        job.description,
        job.state,
    )
    assert (None, False, None, None) == (job.queued, job.needs_modal, job.queue_position, job.last)
    assert "a pig" == job.request.prompt  # type: ignore[union-attr]
    states = [t.status for t in job.watch()]
    assert TaskStatus.SUCCESS == states[-1]
    assert job.fetch() is job.last and job.last.is_success
    assert tmp_path / f"{job.id}.png" == job.download(tmp_path)
    assert PNG == (tmp_path / f"{job.id}.png").read_bytes()
    assert "42" == job.image_seed()
    assert job.cancel() is None and [job.id] == relay.cancelled
    pig_like = {**load_fixture("task_pig"), "id": job.id}
    relay.fetch_answer = lambda task_id: Response(200, json=pig_like)
    job.fetch()
    upscale = job.action("U2")
    assert isinstance(upscale, Job)
    assert f"MJ::JOB::upsample::2::{PIG_HASH}" == relay.submits[-1]["customId"]
    zoom = upscale.modal(prompt="pig --zoom 2")
    assert isinstance(zoom, Job) and upscale.id == relay.submits[-1]["taskId"]


def test_wait_blocks_and_returns(sync: Client) -> None:
    """The blocking wait returns the finished task; `mj.imagine(p).wait()` is the one-liner."""
    assert TaskStatus.SUCCESS == sync.wait("a").status
    assert TaskStatus.SUCCESS == sync.imagine("a fox").wait().status


def test_waits_take_jobs_and_tasks(sync: Client) -> None:
    """wait, as_completed, watch and fetch_many accept ids, Tasks and (blocking) Jobs."""
    job = sync.imagine("a fox")
    refs: list[Any] = [job, Task(id="t"), "s"]
    assert [job.id, "t", "s"] == [sync.wait(r).id for r in refs]
    assert {job.id, "t", "s"} == {t.id for t in sync.as_completed(refs)}
    assert [job.id, "t", "s"] == [t.id for t in sync.fetch_many(refs)]
    assert job.id == list(sync.watch(job))[-1].id


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


def test_an_abandoned_iterator_releases_its_ids(relay: FakeRelay) -> None:
    """Breaking out of a blocking iterator closes it on the loop: nothing stays tracked."""
    relay.ticks = 10_000
    with make_sync(relay) as mj:
        stream = mj.watch("w")
        next(stream)
        stream.close()
        assert 0 == mj.poller.tracked


def test_watch_is_a_plain_iterator(sync: Client) -> None:
    """watch() yields each state change synchronously."""
    states = [t.status for t in sync.watch("w")]
    assert TaskStatus.SUCCESS == states[-1]


@pytest.mark.skipif(not hasattr(signal, "pthread_kill"), reason="needs pthread_kill")
def test_a_real_ctrl_c_interrupts_a_blocking_wait(relay: FakeRelay) -> None:
    """A real SIGINT during a wait on a task that never finishes: KeyboardInterrupt comes
    back at once, the wait is cancelled on the loop, and the client stays usable."""
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    relay.ticks = 10_000
    main = threading.main_thread().ident
    assert main is not None and threading.get_ident() == main
    with make_sync(relay) as mj:
        timer = threading.Timer(0.3, signal.pthread_kill, args=(main, signal.SIGINT))
        started = time.monotonic()
        timer.start()
        try:
            with pytest.raises(KeyboardInterrupt):
                mj.wait("forever")
            took = time.monotonic() - started
        finally:
            timer.cancel()
            timer.join()
        assert 0.25 < took < 2.0
        deadline = time.monotonic() + 2
        while mj.poller.tracked and time.monotonic() < deadline:
            time.sleep(0.01)
        assert 0 == mj.poller.tracked  # the cancelled waiter left no entry
        relay.ticks = 1
        assert TaskStatus.SUCCESS == mj.wait("after").status
        assert not mj.is_closed


def test_close_releases_the_thread(relay: FakeRelay) -> None:
    """After close() no portal thread is left; close is idempotent; calls then fail."""
    before = set(threading.enumerate())
    mj = make_sync(relay)
    mj.wait("x")
    assert len(set(threading.enumerate()) - before) >= 1
    mj.close()
    mj.close()
    assert set() == set(threading.enumerate()) - before
    with pytest.raises(ClientClosedError):
        mj.fetch("x")
    with pytest.raises(ClientClosedError):
        mj.imagine("x")
    with pytest.raises(ClientClosedError), mj:
        pass


def test_a_client_that_was_never_opened_closes_at_once() -> None:
    """Building a Client starts nothing; close() then has nothing to stop."""
    before = set(threading.enumerate())
    mj = Client("k", base_url=BASE)
    assert set() == set(threading.enumerate()) - before
    mj.close()
    assert mj.is_closed


def test_no_non_daemon_threads_while_open(sync: Client) -> None:
    """The loop thread never keeps the interpreter alive."""
    sync.wait("y")
    extra = [t for t in threading.enumerate() if t is not threading.main_thread()]
    assert extra and all(t.daemon for t in extra)


def test_callback_calling_the_sync_client_is_refused(relay: FakeRelay) -> None:
    """A progress callback that calls the blocking client (or closes it) gets UsageError,
    not a deadlock."""
    errors: list[BaseException] = []
    calls: list[Task] = []
    relay.ticks = 3
    with make_sync(relay) as mj:

        def callback(task: Task) -> None:
            calls.append(task)
            for call in (lambda: mj.fetch("other"), mj.close):
                try:
                    call()
                except UsageError as exc:
                    errors.append(exc)

        mj.wait("cb", on_progress=callback)
        assert not mj.is_closed
    assert calls and 2 * len(calls) == len(errors)


def test_close_ends_open_webhook_receivers(relay: FakeRelay) -> None:
    """close() first ends the webhook_receiver blocks still open: their port is released;
    leaving the block afterwards is harmless."""
    mj = make_sync(relay)
    receiver = mj.webhook_receiver()
    rx = receiver.__enter__()
    port = int(rx.url.split(":")[2].split("/")[0])
    # It serves (between calls, on the loop thread): a whole exchange, so that no accepted
    # connection is still unhandled at close() (CPython's Server.close race, gh-109564,
    # raises from a transport's __del__ on 3.12+ then).
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        assert conn.recv(12).startswith(b"HTTP/1.")
        while conn.recv(4096):
            pass
    mj.close()
    with socket.socket() as sock:
        assert 0 != sock.connect_ex(("127.0.0.1", port))
    receiver.__exit__(None, None, None)


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
    relay.fail = {"bad"}
    relay.unknown = {"ghost"}
    with make_sync(relay) as mj:
        with pytest.raises(TaskFailedError):
            mj.wait("bad")
        with pytest.raises(TaskNotFoundError):
            mj.fetch("ghost")
        with pytest.raises(TaskNotFoundError):
            mj.image_seed("ghost")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_cannot_use_the_client(relay: FakeRelay) -> None:
    """In a child forked from a process with an open Client, calls raise UsageError (the
    loop thread is not there) and close() returns at once; the parent is unaffected."""
    with make_sync(relay) as mj:
        mj.wait("x")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork() with threads
            pid = os.fork()
        if pid == 0:  # the child: report through the exit status only
            code = 10
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
            signal.alarm(5)  # a hang kills the child (the parent then sees a failure)
            try:
                try:
                    mj.fetch("x")
                except UsageError as exc:
                    code = 0 if "fork" in str(exc) else 11
                started = time.monotonic()
                mj.close()
                if time.monotonic() - started > 1 or not mj.is_closed:
                    code = 12
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert 0 == os.waitstatus_to_exitcode(status)
        assert "y" == mj.wait("y").id


@pytest.mark.parametrize("forget", [False, True])
def test_a_client_left_open_at_exit_shuts_down_quietly(forget: bool) -> None:
    """An open Client at interpreter exit is closed by the atexit hook; one that escaped it
    is finalised without starting a thread. Either way: exit code 0, nothing on stderr."""
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {TESTS!r})
        import quickmj._sync
        from fakes import FakeRelay, make_sync

        mj = make_sync(FakeRelay(ticks=1))
        mj.wait("x")
        cycle = [mj]
        cycle.append(cycle)
        if {forget}:
            quickmj._sync._open_clients.discard(mj)
        print("done")
        """
    )
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", script],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert (0, "done\n", "") == (result.returncode, result.stdout, result.stderr)


def test_fast_policy_is_used(relay: FakeRelay) -> None:
    """The fakes' FAST policy reaches the blocking client's poller."""
    with make_sync(relay) as mj:
        assert FAST == mj.poll_policy


def test_with_options_view_runs_on_the_original_client() -> None:
    """A blocking view uses the original's loop thread and poller; closing it closes both."""
    from quickmj import Timeouts

    relay = FakeRelay(ticks=1)
    mj = make_sync(relay)
    view = mj.with_options(timeouts=Timeouts(read=9))
    with view:
        task = view.imagine("cat").wait()
        assert task.is_success and view.timeouts.read == 9 and mj.timeouts.read != 9
        assert view.poller is mj.poller and not mj.is_closed
        assert repr(view) == repr(mj)
    assert mj.is_closed and view.is_closed
    assert all(r.read_timeout == 9 for r in relay.requests if "submit" in r.path)


def test_close_leaves_no_thread_from_file_work(tmp_path: Path) -> None:
    """Reading an image file and creating a download folder run in the loop's own
    executor, which the loop joins when it closes: right after ``close()`` no thread of
    the client is left (anyio's worker threads were only told to stop, and now and then
    outlived the close)."""
    from quickmj._images import to_data_url

    image = tmp_path / "a.png"
    image.write_bytes(PNG)
    for attempt in range(20):
        before = set(threading.enumerate())
        with Client("sk-test-0000", base_url=BASE) as mj:
            assert mj.run(to_data_url, image).startswith("data:image/png;base64,")
        assert set() == set(threading.enumerate()) - before, f"attempt {attempt}"


# ---- who drives the loop (quickmj._blocking.SharedLoop) ----


def _callback_threads(mj: Client, task_id: str) -> set[str]:
    """The names of the threads that ran ``wait``'s progress callback."""
    names: set[str] = set()
    mj.wait(task_id, on_progress=lambda _: names.add(threading.current_thread().name))
    return names


def test_an_uncontended_call_runs_its_callbacks_on_the_calling_thread(relay: FakeRelay) -> None:
    """A call that finds the loop free drives it itself: its progress callbacks run on the
    calling thread (the main thread here, and a worker thread below), not the loop thread."""
    relay.ticks = 3
    with make_sync(relay) as mj:
        assert {threading.current_thread().name} == _callback_threads(mj, "main")
        worker: list[set[str]] = []
        thread = threading.Thread(
            target=lambda: worker.append(_callback_threads(mj, "w")), name="worker"
        )
        thread.start()
        thread.join()
        assert [{"worker"}] == worker


def test_a_thread_running_an_event_loop_hands_its_calls_over(relay: FakeRelay) -> None:
    """From a thread that runs an event loop (a notebook), the call is handed to the
    client's loop thread: the callbacks run there, and the notebook's loop is untouched."""
    relay.ticks = 3

    async def notebook_cell() -> set[str]:
        with make_sync(relay) as mj:
            return _callback_threads(mj, "nb")

    assert {"quickmj-loop"} == asyncio.run(notebook_cell())


def test_the_main_thread_guards_sigint_only_while_it_drives(relay: FakeRelay) -> None:
    """While the main thread runs the loop, SIGINT has the facade's handler (Ctrl-C cancels
    the call instead of interrupting the loop); the default handler is back after."""
    relay.ticks = 2
    seen: list[object] = []
    with make_sync(relay) as mj:
        mj.wait("g", on_progress=lambda _: seen.append(signal.getsignal(signal.SIGINT)))
    assert seen and all(h is not signal.default_int_handler for h in seen)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_custom_sigint_handler_is_left_alone(relay: FakeRelay) -> None:
    """With the application's own SIGINT handler set, the main thread does not drive the
    loop (that handler could raise inside it): the call goes to the loop thread, and the
    handler is never replaced."""
    relay.ticks = 2

    def mine(signum: int, frame: object) -> None:
        pass

    seen: list[object] = []
    previous = signal.signal(signal.SIGINT, mine)
    try:
        with make_sync(relay) as mj:
            names = set()

            def callback(_: Task) -> None:
                names.add(threading.current_thread().name)
                seen.append(signal.getsignal(signal.SIGINT))

            mj.wait("c", on_progress=callback)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert {"quickmj-loop"} == names
    assert seen and all(h is mine for h in seen)


def test_contending_threads_share_one_driver_at_a_time(relay: FakeRelay) -> None:
    """Under contention every callback runs on a thread that drives the loop: a calling
    thread or the loop thread, never two at once; all calls finish and leave nothing
    tracked by the one poller."""
    relay.ticks = 3
    running: list[str] = []
    overlaps: list[list[str]] = []
    names: set[str] = set()
    guard = threading.Lock()

    def callback(_: Task) -> None:
        me = threading.current_thread().name
        with guard:
            names.add(me)
            running.append(me)
            if len(running) > 1:
                overlaps.append(list(running))
        with guard:
            running.remove(me)

    with make_sync(relay) as mj:
        with ThreadPoolExecutor(6, thread_name_prefix="caller") as pool:
            done = list(pool.map(lambda i: mj.wait(f"c{i}", on_progress=callback).id, range(30)))
        assert 0 == mj.poller.tracked
    assert [f"c{i}" for i in range(30)] == done
    assert [] == overlaps
    assert names and all(n.startswith(("caller", "quickmj-loop")) for n in names)


def test_after_contention_calls_stay_with_the_loop_thread(relay: FakeRelay) -> None:
    """Once calls contended, later calls hop to the loop thread (no calling thread drives
    and serves the others) until QUIET passes without contention; then they drive again."""
    from quickmj._blocking import QUIET

    relay.ticks = 3
    with make_sync(relay) as mj:
        shared = mj._open()
        shared._contended = time.monotonic() + 3600  # contended "just now", for an hour
        assert {"quickmj-loop"} == _callback_threads(mj, "a")
        assert {"quickmj-loop"} == _callback_threads(mj, "b")
        shared._contended = time.monotonic() - QUIET
        assert {threading.current_thread().name} == _callback_threads(mj, "c")


def test_a_call_dropped_before_it_starts_never_runs() -> None:
    """A handed-over call whose caller left (Ctrl-C) before the driver started it is not
    started at all; calls queued together start in one wake-up of the loop."""
    from quickmj._blocking import SharedLoop, _Hop

    ran: list[str] = []

    async def work(name: str) -> None:
        ran.append(name)

    shared = SharedLoop()
    try:
        dropped: _Hop[None] = _Hop(shared, work, ("dropped",), {})
        kept: _Hop[None] = _Hop(shared, work, ("kept",), {})
        dropped.cancel()
        with shared._cv:
            shared._pending += 2
            shared._inbox += [dropped, kept]

        async def drive() -> None:
            shared._drain()
            assert kept.task is not None
            await kept.task

        shared.call(drive)
        assert dropped.task is not None and dropped.task.cancelled()
        assert ["kept"] == ran and 0 == shared._pending and [] == shared._inbox
    finally:
        shared.close()


def test_background_work_runs_between_calls(sync: Client) -> None:
    """After a call returns, the loop thread takes the loop back: a timer scheduled during
    the call fires while no call is running."""
    fired = threading.Event()

    async def schedule() -> None:
        asyncio.get_running_loop().call_later(0.01, fired.set)

    sync.run(schedule)
    assert fired.wait(timeout=10)


def test_close_from_another_thread_ends_a_driving_call(relay: FakeRelay) -> None:
    """A call driving the loop on its own thread while another thread closes the client
    ends with ClientClosedError; close() returns and no thread is left."""
    relay.ticks = 10_000
    before = set(threading.enumerate())
    mj = make_sync(relay)
    mj.fetch("warm")
    started = threading.Event()
    timer = threading.Thread(target=lambda: (started.wait(10), mj.close()))
    timer.start()
    try:
        with pytest.raises(ClientClosedError):
            mj.wait("forever", on_progress=lambda _: started.set())
    finally:
        timer.join()
    assert mj.is_closed
    assert set() == set(threading.enumerate()) - before


@pytest.mark.skipif(not hasattr(signal, "pthread_kill"), reason="needs pthread_kill")
def test_ctrl_c_while_another_thread_drives(relay: FakeRelay) -> None:
    """Ctrl-C on the main thread while its call was handed to another calling thread that
    drives the loop: KeyboardInterrupt at once, that call cancelled, the driver's own call
    unaffected."""
    relay.ticks = 10_000
    main = threading.main_thread().ident
    assert main is not None and threading.get_ident() == main
    with make_sync(relay) as mj:
        driving = threading.Event()
        other: list[BaseException] = []

        def drive() -> None:
            try:
                mj.wait("theirs", on_progress=lambda _: driving.set(), timeout=30)
            except BaseException as exc:
                other.append(exc)

        thread = threading.Thread(target=drive)
        thread.start()
        assert driving.wait(10)
        timer = threading.Timer(0.2, signal.pthread_kill, args=(main, signal.SIGINT))
        timer.start()
        try:
            with pytest.raises(KeyboardInterrupt):
                mj.wait("mine")
        finally:
            timer.join()
        assert thread.is_alive() and not other
        mj.cancel("theirs")
        relay.ticks = 1
        relay.reads.clear()
        thread.join(10)
        assert not thread.is_alive()


def test_a_ctrl_c_while_the_loop_changes_hands_is_deferred_not_lost() -> None:
    """The main thread's SIGINT handler (quickmj._blocking._Sigint) only counts a Ctrl-C
    while the thread takes or gives back the loop (raising there could leave the loop with
    a driver that is gone); the counted one then cancels the call as it starts, raises
    when the call was handed over instead, or raises after the handler is restored if no
    call started. A second one while the call runs raises at once."""
    from quickmj._blocking import _Sigint

    loop = asyncio.new_event_loop()
    try:
        early = _Sigint(loop)
        early(signal.SIGINT, None)  # deferred: counted, nothing raised
        task = loop.create_task(asyncio.sleep(10))
        early.watch(task)
        loop.run_until_complete(asyncio.sleep(0))
        assert task.cancelled()
        early.raise_if_missed()  # the call acted on it: nothing more

        handed = _Sigint(loop)
        handed(signal.SIGINT, None)
        with pytest.raises(KeyboardInterrupt):
            handed.allow()

        never = _Sigint(loop)
        never(signal.SIGINT, None)
        with pytest.raises(KeyboardInterrupt):
            never.raise_if_missed()

        running = _Sigint(loop)
        second = loop.create_task(asyncio.sleep(10))
        running.watch(second)
        running(signal.SIGINT, None)  # first: cancels the call, raises nothing
        with pytest.raises(KeyboardInterrupt):
            running(signal.SIGINT, None)
        loop.run_until_complete(asyncio.sleep(0))
        assert second.cancelled()
    finally:
        loop.close()
