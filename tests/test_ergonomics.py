"""Types and ergonomics from the user's seat (issue 21, items 10-13).

- the user programs in tests/typing pass mypy --strict (pyright --strict in .ci/run), and
  misspelt keyword arguments of AccountPool fail type checking and at run time;
- a Submission is a coroutine: asyncio.create_task and TaskGroup.create_task take it,
  awaiting it twice gives one job and one request;
- SubmitOutcomeUnknownError keeps a gateway answer's status, headers and request id; a
  job handle keeps the request id and headers of the answer that created it;
- MockTransport answers the list route wait() polls from a fetch-only handler, and an
  unanswered route fails loudly, naming itself.
"""

from __future__ import annotations

import asyncio
import collections.abc
import gc
import importlib.util
import inspect
import re
import shutil
import subprocess
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fakes import FAST

from quickmj import (
    AccountPool,
    AsyncClient,
    RetryPolicy,
    SubmitOutcomeUnknownError,
    TaskNotFoundError,
)
from quickmj.testing import MockTransport, Request, Response, RunningSimulator, simulate

HERE = Path(__file__).parent
TYPING = HERE / "typing"
KEY = "sk-ergonomics-secret-0123456789"
ACCEPTED = {"code": 1, "description": "Submit success", "result": "42"}
DONE = {"id": "42", "status": "SUCCESS", "progress": "100%", "imageUrl": "https://x/42.png"}


def load(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---- 10. types ----


def _mypy(*paths: Path) -> tuple[str, int]:
    api = pytest.importorskip("mypy.api")
    out, err, status = api.run(["--strict", "--no-incremental", *map(str, paths)])
    return out + err, status


MISSPELT = HERE / "typing_errors" / "reject_misspelt.py"


@pytest.fixture(scope="module")
def mypy_run() -> tuple[str, int]:
    """One mypy run over the user programs and the misspelt one (a run costs seconds;
    each file's errors are reported under its own name)."""
    return _mypy(*sorted(TYPING.glob("*.py")), MISSPELT)


def test_the_user_programs_pass_mypy_strict(mypy_run: tuple[str, int]) -> None:
    programs = sorted(TYPING.glob("*.py"))
    assert {p.name for p in programs} >= {
        "async_program.py",
        "sync_program.py",
        "test_user_fixture.py",
    }
    for program in programs:
        assert "type: ignore" not in program.read_text()
    out, status = mypy_run
    assert status in (0, 1), out  # 2: mypy itself failed
    checked = re.search(r"checked (\d+) source files", out)
    assert checked is not None and len(programs) + 1 == int(checked.group(1)), out
    theirs = [line for line in out.splitlines() if ": error:" in line]
    assert [] == [line for line in theirs if Path(line.split(":")[0]).name != MISSPELT.name], out


def test_misspelt_keywords_fail_type_checking(mypy_run: tuple[str, int]) -> None:
    lines = MISSPELT.read_text().splitlines()
    wanted = {n for n, line in enumerate(lines, 1) if line.endswith("# E")}
    out, status = mypy_run
    assert status == 1
    found = {int(m.group(1)) for m in re.finditer(r"reject_misspelt\.py:(\d+): error", out)}
    assert wanted == found, out
    assert "timeoutz" in out and '"stat"' in out


def _pyright() -> str:
    found = shutil.which("pyright", path=str(Path(sys.executable).parent)) or shutil.which(
        "pyright"
    )
    if found is None:
        pytest.skip("pyright is not installed (.ci/run installs it)")
    return found


def test_pyright_strict_accepts_the_programs_and_rejects_misspellings() -> None:
    pyright = _pyright()
    programs = sorted(TYPING.glob("*.py"))
    assert all(p.read_text().startswith("# pyright: strict") for p in programs)
    # One run over both (pyright's start-up and the stdlib cost seconds); its report
    # names each error's file: every one must be the misspelt program's, and 3 of them.
    run = [pyright, "--pythonpath", sys.executable]
    both = subprocess.run(
        [*run, *map(str, programs), str(MISSPELT)], capture_output=True, text=True
    )
    assert 1 == both.returncode and "3 errors" in both.stdout, both.stdout[-3000:]
    files = re.findall(r"^(/\S+\.py)$", both.stdout, re.MULTILINE)
    assert [str(MISSPELT)] == files, both.stdout[-3000:]


def test_the_simulator_speaks_the_sdk_literals() -> None:
    hints = RunningSimulator.__annotations__
    assert "SimDialect" == hints["dialect"]
    assert "SimAuthScheme" in RunningSimulator.auth_scheme.fget.__annotations__["return"]  # type: ignore[attr-defined]


async def test_the_simulator_dialect_and_scheme_values() -> None:
    for dialect, scheme in (
        ("quickrouter", "bearer"),
        ("midjourney-proxy", "mj-api-secret"),
        ("trueai", "raw"),
    ):
        async with (
            simulate(dialect=dialect) as relay,
            AsyncClient(
                relay.api_key,
                base_url=relay.base_url,
                dialect=relay.dialect,
                auth_scheme=relay.auth_scheme,
                poll=FAST,
            ) as mj,
        ):
            assert (relay.dialect, relay.auth_scheme) == (dialect, scheme)
            assert (await mj.imagine("a fox").wait(timeout=60)).is_success


async def test_misspelt_pool_keywords_fail_at_run_time_too() -> None:
    with pytest.raises(TypeError, match="timeoutz"):
        AccountPool(["key-1"], timeoutz=5)  # type: ignore[call-arg]
    pool = AccountPool(["key-1"], transport=MockTransport(lambda r: Response(500)))
    async with pool:
        with pytest.raises(TypeError, match="stat"):
            pool.imagine("a fox", stat="s")  # type: ignore[call-arg]


async def test_the_async_user_program_runs() -> None:
    ids = await load(TYPING / "async_program.py").main()
    assert len(ids) == len(set(ids)) == (6 if sys.version_info >= (3, 11) else 4)


@pytest.fixture
def served() -> Iterator[RunningSimulator]:
    """A simulator on a loop of its own thread, for the blocking Client."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    context = simulate()
    relay = asyncio.run_coroutine_threadsafe(context.__aenter__(), loop).result(30)
    try:
        yield relay
    finally:
        asyncio.run_coroutine_threadsafe(context.__aexit__(None, None, None), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()


def test_the_sync_user_program_runs(served: RunningSimulator) -> None:
    assert load(TYPING / "sync_program.py").main(served.base_url, served.api_key)
    assert 2 == len(served.simulator.submissions)


# ---- 11. a Submission is a coroutine ----


def mock(answer: dict[str, Any] | None = None) -> tuple[MockTransport, list[str]]:
    submits: list[str] = []

    def handler(request: Request) -> Response | None:
        if "/submit/" in request.path:
            submits.append(request.path)
            return Response(200, json=answer or ACCEPTED, headers={"X-Request-Id": "req-1"})
        if request.path.endswith("/task/42/fetch"):
            return Response(200, json=DONE)
        return None

    return MockTransport(handler), submits


async def test_create_task_takes_a_submission() -> None:
    transport, submits = mock()
    async with AsyncClient(KEY, transport=transport, poll=FAST) as mj:
        submission = mj.imagine("a fox")
        assert isinstance(submission, collections.abc.Coroutine)
        assert asyncio.iscoroutine(submission)
        job = await asyncio.create_task(submission)
        assert job is await submission is submission.job
        assert (await job.wait(timeout=30)).is_success
    assert ["/mj/submit/imagine"] == submits


async def test_awaiting_twice_and_a_task_share_one_submit() -> None:
    transport, submits = mock()
    async with AsyncClient(KEY, transport=transport, poll=FAST) as mj:
        submission = mj.imagine("a fox")
        task = asyncio.create_task(submission)
        first, second, third = await asyncio.gather(submission, task, submission)
        assert first is second is third is await submission
        again = await asyncio.wait_for(submission, 30)  # a new task, once more
        assert again is first is await asyncio.create_task(submission)
    assert 1 == len(submits)


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.TaskGroup is 3.11+")
async def test_a_task_group_takes_submissions() -> None:
    transport, submits = mock()
    async with AsyncClient(KEY, transport=transport, poll=FAST) as mj:
        async with asyncio.TaskGroup() as group:  # type: ignore[attr-defined,unused-ignore]
            tasks = [group.create_task(mj.imagine(f"fox {i}")) for i in range(3)]
        assert all(t.result().id == "42" for t in tasks)
    assert 3 == len(submits)


async def test_anyio_task_groups_take_submit_methods() -> None:
    import anyio
    import anyio._backends._asyncio as backend

    if getattr(backend, "iscoroutine", None) is inspect.iscoroutine:
        # anyio before 4.6-ish accepts only native coroutine objects in start_soon.
        pytest.skip("this anyio's start_soon takes native coroutines only (await it instead)")

    gate = asyncio.Event()
    submits: list[str] = []

    async def handler(request: Request) -> Response | None:
        if "/submit/" in request.path:
            submits.append(request.path)
            if "slow" in (request.content or b"").decode():
                await gate.wait()
            return Response(200, json=ACCEPTED)
        return None

    async with AsyncClient(KEY, transport=MockTransport(handler), poll=FAST) as mj:
        async with anyio.create_task_group() as group:
            group.start_soon(mj.imagine, "a fox")
            group.start_soon(mj.imagine, "a cat")
        slow: list[Any] = []
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as group:
                slow.append(mj.imagine("a slow fox"))
                group.start_soon(lambda: slow[0])
                await anyio.sleep(0.05)  # the submit is on the wire, its task suspended
                scope.cancel()  # older anyio reads the coroutine state of the task it cancels
        gate.set()
        job = await slow[0]  # the shielded submit ran to its answer: the id is kept
    assert "42" == job.id and 3 == len(submits)


async def test_a_submission_reports_its_coroutine_state() -> None:
    import inspect

    transport, _ = mock()
    async with AsyncClient(KEY, transport=transport, poll=FAST) as mj:
        submission = mj.imagine("a fox")
        assert inspect.CORO_CLOSED == inspect.getcoroutinestate(submission)  # no run yet
        task = asyncio.create_task(submission)
        await asyncio.sleep(0)
        assert inspect.CORO_SUSPENDED == inspect.getcoroutinestate(submission)
        assert submission.cr_await is not None and submission.cr_frame is not None
        await task
        assert inspect.CORO_CLOSED == inspect.getcoroutinestate(submission)


async def test_a_task_cancelled_before_it_ran_sends_nothing_and_stays_quiet() -> None:
    transport, submits = mock()
    async with AsyncClient(KEY, transport=transport, poll=FAST) as mj:
        submission = mj.imagine("a fox")
        task = asyncio.create_task(submission)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            del submission, task
            gc.collect()
    assert [] == submits


async def test_close_before_sending_is_quiet_and_an_unused_submission_still_warns() -> None:
    transport, submits = mock()
    async with AsyncClient(KEY, transport=transport, poll=FAST) as mj:
        closed = mj.imagine("a fox")
        closed.close()
        with pytest.raises(RuntimeError, match="closed submission"):
            closed.send(None)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            del closed
            gc.collect()
        forgotten = mj.imagine("a cat")
        with pytest.warns(RuntimeWarning, match="never awaited"):
            del forgotten
            gc.collect()
    assert [] == submits


async def test_cancelling_a_task_mid_submit_keeps_the_job() -> None:
    gate = asyncio.Event()

    async def handler(request: Request) -> Response | None:
        if "/submit/" in request.path:
            await gate.wait()
            return Response(200, json=ACCEPTED)
        return None

    async with AsyncClient(KEY, transport=MockTransport(handler), poll=FAST) as mj:
        submission = mj.imagine("a fox")
        task = asyncio.create_task(submission)
        await asyncio.sleep(0.01)
        task.cancel()
        gate.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        job = await submission  # the submit ran to its answer: the paid id is kept
        assert "42" == job.id


# ---- 12. request ids and headers ----


async def test_an_unknown_outcome_keeps_the_gateways_request_id() -> None:
    def handler(request: Request) -> Response:
        headers = {"X-Request-Id": "gw-502-abc", "X-Echo": f"Bearer {KEY}"}
        return Response(502, headers=headers, content=b"<html>Bad Gateway</html>")

    async with AsyncClient(
        KEY, transport=MockTransport(handler), retry=RetryPolicy(max_attempts=3)
    ) as mj:
        with pytest.raises(SubmitOutcomeUnknownError) as info:
            await mj.imagine("a fox", state="mine")
    exc = info.value
    assert (502, "gw-502-abc", "mine") == (exc.status, exc.request_id, exc.state)
    assert "gw-502-abc" == exc.headers["X-Request-Id"]
    assert KEY not in repr(exc.headers) and KEY not in str(exc) and KEY not in repr(exc)


async def test_an_unknown_outcome_without_an_answer_has_no_status() -> None:
    from quickmj import ConnectError

    calls = 0

    def handler(request: Request) -> Response:
        nonlocal calls
        calls += 1
        raise asyncio.TimeoutError if calls else ConnectError("x")

    async with AsyncClient(KEY, transport=MockTransport(handler)) as mj:
        with pytest.raises(SubmitOutcomeUnknownError) as info:
            await mj.imagine("a fox")
    assert (None, None, {}) == (info.value.status, info.value.request_id, info.value.headers)


@pytest.mark.parametrize("admission", [None, "adaptive"])
async def test_a_job_keeps_the_request_id_of_its_answer(admission: Any) -> None:
    def handler(request: Request) -> Response | None:
        if "/submit/" in request.path:
            headers = {"X-Oneapi-Request-Id": "one-7", "X-Echo": KEY}
            return Response(200, json=ACCEPTED, headers=headers)
        return None

    async with AsyncClient(KEY, transport=MockTransport(handler), admission=admission) as mj:
        job = await mj.imagine("a fox")
    assert "one-7" == job.request_id
    assert "one-7" == job.response_headers["X-Oneapi-Request-Id"]
    assert KEY not in repr(job.response_headers)
    assert KEY not in repr(job)


async def test_a_pooled_job_keeps_its_request_id() -> None:
    transport, _ = mock()
    async with AccountPool(["key-a", "key-b"], transport=transport) as pool:
        job = await pool.imagine("a fox")
    assert "req-1" == job.request_id


async def test_the_simulators_request_id_reaches_the_handle() -> None:
    async with (
        simulate() as relay,
        AsyncClient(relay.api_key, base_url=relay.base_url, dialect=relay.dialect) as mj,
    ):
        job = await mj.imagine("a fox")
    assert job.request_id and job.request_id == job.response_headers.get("X-Oneapi-Request-Id")


# ---- 13. MockTransport ----


async def test_a_fetch_only_handler_answers_wait() -> None:
    def handler(request: Request) -> Response | None:
        if request.path.endswith("/task/42/fetch"):
            return Response(200, json=DONE)
        return None

    transport = MockTransport(handler)
    async with AsyncClient(KEY, transport=transport, poll=FAST) as mj:
        assert (await mj.wait("42", timeout=30)).is_success
        assert (await mj.fetch("42")).is_success
    assert any(r.path.endswith("/task/list-by-condition") for r in transport.requests)


async def test_an_unanswered_route_is_named() -> None:
    transport = MockTransport(lambda request: None)
    with pytest.raises(TypeError, match=r"did not answer GET /mj/task/9/image-seed"):
        await transport.handle_request(Request("GET", "http://relay/mj/task/9/image-seed"))
    with pytest.raises(TypeError, match=r"returned int, not Response, for GET"):
        await MockTransport(lambda r: 3).handle_request(  # type: ignore[arg-type,return-value]
            Request("GET", "http://relay/mj/task/9/fetch")
        )


async def test_from_tasks_serves_fetch_and_the_list_route() -> None:
    states = {"42": {"id": "42", "status": "IN_PROGRESS", "progress": "10%"}}

    def fallback(request: Request) -> Response:
        states["42"] = DONE
        return Response(200, json=ACCEPTED)

    transport = MockTransport.from_tasks(lambda i: states.get(i), fallback=fallback)
    async with AsyncClient(KEY, transport=transport, poll=FAST) as mj:
        assert "IN_PROGRESS" == (await mj.fetch("42")).status.value
        assert (await mj.imagine("a fox").wait(timeout=30)).is_success
        with pytest.raises(TaskNotFoundError):
            await mj.fetch("43")
    plain = MockTransport.from_tasks({"42": DONE})
    with pytest.raises(TypeError, match="did not answer POST /mj/submit/imagine"):
        await plain.handle_request(Request("POST", "http://relay/mj/submit/imagine"))
