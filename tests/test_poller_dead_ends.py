"""Waits that can never succeed end promptly, with the cause (issue 19, items 1-3, 5, 10).

A revoked key, a base URL without task routes, a task the relay lost, a hostile
Retry-After, and new-api's remix job whose MODAL only a read shows.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fakes import BASE, KEY, FakeRelay, make_client

from quickmj import (
    AsyncClient,
    AuthenticationError,
    BatchItem,
    ConfigurationError,
    ConnectError,
    HTTPStatusError,
    MalformedResponseError,
    PollPolicy,
    RateLimitError,
    RelayUnreachableError,
    RequestTimeoutError,
    RetryPolicy,
    ServerError,
    Task,
    TaskNeedsModalError,
    TaskStalledError,
    TaskStatus,
    TaskTimeoutError,
    TransportError,
    UnsupportedByRelayError,
    run_batch,
)
from quickmj._cli import EXIT_OUTAGE, _account_line, _exit_code
from quickmj._jobs import wait
from quickmj._poller import Poller
from quickmj.testing import MockTransport, Request, Response, simulate

EXHAUSTED = {
    "error": {
        "code": "",
        "message": "该令牌额度已用尽 (request id: 20261206abc)",
        "type": "new_api_error",
    }
}


def policy(**kwargs: Any) -> PollPolicy:
    base = {
        "interval": 0.01,
        "first_poll": 0.005,
        "near_done_interval": 0.01,
        "miss_limit": 2,
        "adaptive": False,
        "max_error_backoff": 0.04,
        "dead_end_grace": 0.0,
    }
    return PollPolicy(**{**base, **kwargs})


class Relay:
    """A MockTransport handler: ``reads`` answers the task reads (list and fetch)."""

    def __init__(self, reads: Callable[[Request], Response | None]) -> None:
        self.reads = reads
        self.fake = FakeRelay(ticks=3)
        self.list_requests = 0
        self.fetch_requests = 0

    def handle(self, request: Request) -> Response:
        path = request.path.removeprefix("/mj")
        if path == "/task/list-by-condition":
            self.list_requests += 1
        elif path.endswith("/fetch"):
            self.fetch_requests += 1
        if path.startswith("/task/"):
            answer = self.reads(request)
            if answer is not None:
                return answer
        return self.fake.handle(request)

    def client(self, poll: PollPolicy, **kwargs: Any) -> AsyncClient:
        return AsyncClient(
            KEY, base_url=BASE, poll=poll, transport=MockTransport(self.handle), **kwargs
        )


def refused(_: Request) -> Response:
    return Response(401, json=EXHAUSTED)


# ---- 1. a revoked, expired or exhausted key ----


async def test_a_refused_key_fails_every_waiter_after_the_grace(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """401 on every read: all waiters (several chunks) end with the relay's own words
    after ``dead_end_after`` rounds, one WARNING is logged, and the key is in neither."""
    relay = Relay(refused)
    caplog.set_level(logging.WARNING, logger="quickmj")
    async with relay.client(policy(batch_size=10)) as mj:
        ids = [str(1730621826053000 + i) for i in range(25)]
        results = await asyncio.gather(
            *(mj.wait(i, timeout=30) for i in ids), return_exceptions=True
        )
        assert 0 == mj.poller.tracked
    assert all(isinstance(r, AuthenticationError) for r in results)
    error = results[0]
    assert isinstance(error, AuthenticationError)
    assert "该令牌额度已用尽" in str(error)
    # Three chunks per round: parallel chunks of a round count once (three chunks of
    # one round never end it), and it ends within three rounds.
    assert 3 < relay.list_requests <= 3 * 3
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert 1 == len(warnings) and "该令牌额度已用尽" in warnings[0].getMessage()
    assert KEY not in caplog.text and KEY not in str(error)


async def test_one_refusal_then_success_fails_nobody() -> None:
    """A 401 streak shorter than the grace, then a good answer: the wait succeeds, and the
    count starts again (two more 401s later do not fail it either)."""
    answers = iter([401, 401, None, None, 401, 401])

    def flaky(_: Request) -> Response | None:
        status = next(answers, None)
        return Response(status, json=EXHAUSTED) if status else None

    relay = Relay(flaky)
    relay.fake.ticks = 4
    async with relay.client(policy()) as mj:
        task = await mj.wait("a", timeout=30)
    assert TaskStatus.SUCCESS == task.status


async def test_a_burst_of_refusals_shorter_than_the_grace_fails_nobody() -> None:
    """Five 403 challenge pages in a row (a WAF in front of the relay), then answers:
    more than dead_end_after, but within dead_end_grace, so every wait goes on."""
    challenge = Response(403, content=b"<!DOCTYPE html><title>Just a moment...</title>")
    refusals = iter([challenge] * 5)
    relay = Relay(lambda _: next(refusals, None))
    async with relay.client(policy(dead_end_grace=30.0)) as mj:
        job = await mj.imagine("a fox")
        task = await job.wait(timeout=30)
    assert task.is_success
    assert relay.list_requests > 5


async def test_refusals_must_also_last_the_grace() -> None:
    """dead_end_after answers are not enough on their own: the streak must last."""
    relay = Relay(refused)
    async with relay.client(policy(dead_end_grace=0.3)) as mj:
        with pytest.raises(AuthenticationError):
            await mj.wait("a", timeout=30)
    assert relay.list_requests > 3  # the interval is 0.01 s: many more than three


async def test_after_a_dead_end_a_new_waiter_fails_on_its_first_refusal() -> None:
    """Once the key was found refused, a later wait does not sit through the grace again."""
    relay = Relay(refused)
    async with relay.client(policy()) as mj:
        with pytest.raises(AuthenticationError):
            await mj.wait("a", timeout=30)
        before = relay.list_requests
        with pytest.raises(AuthenticationError):
            await mj.wait("b", timeout=30)
    assert 1 == relay.list_requests - before


async def test_the_confirming_fetch_counts_too() -> None:
    """The list leaves the id out, then the key dies: the fetch that confirms the missing
    id says 401 first, and it counts like a list answer."""

    def reads(request: Request) -> Response | None:
        if relay.list_requests == 1 and "list" in request.path:
            return Response(200, json=[])
        return Response(401, json=EXHAUSTED)

    relay = Relay(reads)
    async with relay.client(policy(miss_limit=1)) as mj:
        with pytest.raises(AuthenticationError):
            await mj.wait("a", timeout=30)
    assert 1 == relay.fetch_requests and 3 == relay.list_requests


async def test_a_batch_keeps_a_revoked_keys_jobs_and_names_the_account(tmp_path: Path) -> None:
    """The key is revoked after the submits: rows stay incomplete with their ids, and the
    summary names the account (never the key) with the relay's words."""
    state = {"revoked": False}

    def reads(_: Request) -> Response | None:
        return Response(401, json=EXHAUSTED) if state["revoked"] else None

    relay = Relay(reads)

    def submitted(route: str, body: dict[str, Any]) -> Response | None:
        state["revoked"] = True  # after the preflight read: the key dies mid-run
        return None

    relay.fake.submit_answer = submitted
    async with relay.client(policy()) as mj:
        items = [BatchItem(f"prompt {i}") for i in range(4)]
        summary = await run_batch(mj, items, tmp_path / "out", timeout=30, download=False)
    assert 4 == summary.incomplete and 4 == summary.resumable
    (account,) = summary.accounts
    assert account.key_rejected == "HTTP 401: 该令牌额度已用尽"
    assert 4 == account.incomplete
    line = _account_line(account)
    assert "key rejected (HTTP 401: 该令牌额度已用尽): 4 jobs kept" in line
    assert account.account in line and KEY not in line
    rows = (tmp_path / "out" / "manifest.jsonl").read_text(encoding="utf-8").splitlines()
    assert 4 == len(rows) and all('"task_id": "' in r for r in rows)


# ---- 2. a base URL without task routes ----


@pytest.mark.parametrize(
    ("status", "page"),
    [
        (404, b"<html><body>Not Found</body></html>"),
        (200, b"<!doctype html><html><div id=root></div></html>"),
    ],
    ids=["html-404", "web-app-page"],
)
async def test_a_base_url_without_task_routes_ends_waits(status: int, page: bytes) -> None:
    """Every read is a 404 page or new-api's web app: a typed error that says so."""
    relay = Relay(lambda _: Response(status, content=page))
    async with relay.client(policy()) as mj:
        with pytest.raises(UnsupportedByRelayError) as info:
            await mj.wait("a", timeout=30)
    text = str(info.value)
    assert "does not serve the task routes" in text and "base_url" in text
    assert 3 == relay.list_requests


def plain_web_server(request: Request) -> Response:
    """What ``python -m http.server`` answers: 501 to a POST, a 404 page to a GET."""
    if request.method == "POST":
        return Response(501, content=b"<html><body>Unsupported method ('POST')</body></html>")
    return Response(404, content=b"<html><body>File not found</body></html>")


async def test_a_plain_web_server_at_base_url_ends_waits() -> None:
    """405/501 without a relay body mean "no such route" as a bare 404 does."""
    relay = Relay(plain_web_server)
    async with relay.client(policy()) as mj:
        with pytest.raises(UnsupportedByRelayError) as info:
            await mj.wait("a", timeout=30)
    assert "check base_url" in str(info.value)
    assert 501 == info.value.status


async def test_a_base_url_that_redirects_every_read_ends_waits() -> None:
    """http:// for an https:// relay, or a login page: redirects are never followed."""
    relay = Relay(lambda _: Response(301, headers={"Location": "https://relay.test/mj/"}))
    async with relay.client(policy()) as mj:
        with pytest.raises(HTTPStatusError) as info:
            await mj.wait("a", timeout=30)
    assert "redirect" in str(info.value) and "check base_url" in str(info.value)
    assert 3 == relay.list_requests


# ---- 3. a task that never changes again ----


def frozen(status: str, progress: str = "") -> Callable[[Request], Response | None]:
    def reads(request: Request) -> Response:
        row = {"id": "s", "status": status, "progress": progress}
        return Response(200, json=[row] if "list" in request.path else row)

    return reads


async def test_a_running_task_that_stops_changing_is_stalled() -> None:
    """IN_PROGRESS 40% for longer than stall_after: TaskStalledError, a TaskTimeoutError
    with the id, the last state and how long it was unchanged."""
    relay = Relay(frozen("IN_PROGRESS", "40%"))
    async with relay.client(policy(stall_after=0.05)) as mj:
        with pytest.raises(TaskStalledError) as info:
            await mj.wait("s", timeout=30)
    error = info.value
    assert isinstance(error, TaskTimeoutError)
    assert "s" == error.task_id and ("s",) == error.pending
    assert error.last_task is not None and TaskStatus.IN_PROGRESS == error.last_task.status
    assert error.stalled_for >= 0.05 and 0.05 == error.timeout
    assert "stalled" in str(error) and "40%" in str(error)


async def test_queued_tasks_have_their_own_allowance() -> None:
    """A queued task is not stalled by the running allowance; stall_after_queued=None lets
    it wait (until the wait's own timeout), and stall_after=None turns stalls off."""
    relay = Relay(frozen("NOT_START", "0%"))
    for poll in (
        policy(stall_after=0.02, stall_after_queued=None),
        policy(stall_after=None, stall_after_queued=0.02),
    ):
        async with relay.client(poll) as mj:
            with pytest.raises(TaskTimeoutError) as info:
                await mj.wait("s", timeout=0.3)
        assert not isinstance(info.value, TaskStalledError)
    async with relay.client(policy(stall_after=10, stall_after_queued=0.05)) as mj:
        with pytest.raises(TaskStalledError):
            await mj.wait("s", timeout=30)


async def test_progress_keeps_a_slow_task_alive() -> None:
    """A task whose progress moves is never stalled, however long it takes in all."""
    relay = FakeRelay(ticks=40)
    async with make_client(relay, policy(stall_after=0.05)) as mj:
        task = await mj.wait("slow", timeout=30)
    assert TaskStatus.SUCCESS == task.status


async def test_as_completed_and_watch_on_a_stalled_task() -> None:
    """as_completed yields what finishes, then raises TaskStalledError listing the stalled
    ids; watch raises it like wait."""

    def reads(request: Request) -> Response | None:
        if "list" not in request.path:
            return None
        ids = request.json()["ids"]
        if "s" not in ids:
            return None
        rows = [{"id": "s", "status": "IN_PROGRESS", "progress": "10%"}]
        for other in (i for i in ids if i != "s"):
            n = relay.fake.reads[other] = relay.fake.reads.get(other, 0) + 1
            rows.append({"id": other, "status": "SUCCESS" if n >= 3 else "IN_PROGRESS"})
        return Response(200, json=rows)

    relay = Relay(reads)
    async with relay.client(policy(stall_after=0.05)) as mj:
        done: list[str] = []
        with pytest.raises(TaskStalledError) as info:
            async for task in mj.as_completed(["s", "a", "b"], timeout=30):
                done.append(task.id)
        with pytest.raises(TaskStalledError):
            async for _ in mj.watch("s"):
                pass
    assert ["a", "b"] == sorted(done)
    assert ("s",) == info.value.pending


def test_stall_allowance_by_status() -> None:
    """Running states use stall_after, queued ones stall_after_queued, MODAL none (unless
    modal() was sent: then it is queued again), finished ones none."""
    p = PollPolicy(stall_after=600, stall_after_queued=4500)

    def allowance(status: Any, progress: str = "", **kwargs: Any) -> float | None:
        return p.stall_allowance({"status": status, "progress": progress}, **kwargs)

    assert 600 == allowance("IN_PROGRESS", "12%")
    assert 600 == allowance("PAUSED")  # a status no relay documents
    assert 4500 == allowance("") == allowance("NOT_START")
    assert 4500 == allowance("SUBMITTED") == allowance(None)
    # midjourney-proxy: IN_PROGRESS on "(Waiting to start)": a relax job in MJ's queue.
    assert 4500 == allowance("IN_PROGRESS", "0%") == allowance("IN_PROGRESS")
    assert allowance("MODAL") is None
    assert 4500 == allowance("MODAL", confirmed_modal=True)
    assert allowance("SUCCESS") is None
    assert PollPolicy(stall_after=None).stall_allowance({"status": "NOT_START"}) is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"stall_after": 0},
        {"stall_after_queued": -1},
        {"stall_after": math.nan},
        {"dead_end_after": 0},
    ],
)
def test_policy_refuses_unusable_values(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        PollPolicy(**kwargs)


# ---- Retry-After: the poller caps it by itself ----


@pytest.mark.parametrize("hint", [999999.0, math.inf, math.nan, -5.0, 0.0])
def test_a_retry_after_pause_is_capped(hint: float) -> None:
    """However long (or strange) the relay's hint: the loop pauses at most
    max_error_backoff, and never into the past."""
    now = 1000.0
    poller = Poller(relay=None, policy=PollPolicy(max_error_backoff=60), clock=lambda: now)  # type: ignore[arg-type]
    poller._chunk_failed([], RateLimitError("429", retry_after=hint), 1)
    assert now <= poller._global_pause_until <= now + 60


async def test_a_huge_retry_after_does_not_pause_every_wait() -> None:
    """``429 Retry-After: 999999`` on the list: waits go on after max_error_backoff."""
    calls = {"n": 0}

    def reads(request: Request) -> Response | None:
        calls["n"] += 1
        if calls["n"] == 1:
            return Response(429, headers={"Retry-After": "999999"}, json={})
        return None

    relay = Relay(reads)
    async with relay.client(policy(), retry=RetryPolicy(max_attempts=1)) as mj:
        task = await mj.wait("a", timeout=30)
    assert TaskStatus.SUCCESS == task.status


# ---- 10. remix on new-api: MODAL on the first read that shows it ----


async def test_a_modal_task_is_reported_on_its_first_read() -> None:
    """A task whose first read is MODAL: TaskNeedsModalError after one read (default
    modal_timeout 0), not after a grace period."""
    relay = FakeRelay(modal={"m"})
    async with make_client(relay, policy(modal_timeout=PollPolicy().modal_timeout)) as mj:
        with pytest.raises(TaskNeedsModalError) as info:
            await mj.wait("m", timeout=30)
    assert info.value.task is not None and TaskStatus.MODAL == info.value.task.status
    assert 1 == len(relay.list_calls)


async def test_modal_after_a_queued_read_is_news_not_a_step_back() -> None:
    """new-api shows a remix job NOT_START until its first refresh brings MODAL: that MODAL
    is reported (it used to be dropped as older news, and the wait never ended)."""
    relay = FakeRelay(ticks=100)
    relay.mangle = lambda ids, tasks: [
        Task(id=t.id, status=TaskStatus.NOT_START if relay.reads[t.id] < 3 else TaskStatus.MODAL)
        for t in tasks
    ]
    async with make_client(relay, policy()) as mj:
        with pytest.raises(TaskNeedsModalError):
            await mj.wait("r", timeout=30)
    assert 3 == relay.reads["r"]


async def test_a_stale_modal_row_after_modal_is_still_ignored() -> None:
    """After modal() the queued row runs; new-api's stale MODAL row alone is old news."""
    relay = FakeRelay(ticks=6)
    relay.mangle = lambda ids, tasks: [
        Task(id=t.id, status=TaskStatus.MODAL) if relay.reads[t.id] in (3, 4) else t for t in tasks
    ]
    async with make_client(relay, policy()) as mj:
        mj.poller.confirm_modal("c")
        task = await mj.wait("c", timeout=30)
    assert TaskStatus.SUCCESS == task.status


@pytest.mark.parametrize("refresh", [0.0, 0.3])
async def test_remix_on_quickrouter_is_reported_at_once(refresh: float) -> None:
    """The simulator's new-api with remix on: V1 answers code 1, the first read that shows
    the job (after the relay's refresh) says MODAL, and modal() then finishes it."""
    fast = PollPolicy(interval=0.05, first_poll=0.01, adaptive=False)
    config = {"dialect": "quickrouter", "seed": 2, "remix": True, "refresh_interval": refresh}
    async with (
        simulate(**config) as relay,
        AsyncClient(relay.api_key, base_url=relay.base_url, dialect=relay.dialect, poll=fast) as mj,
    ):
        grid = await mj.imagine("a fox").wait(timeout=20)
        job = await mj.action(grid, "V1")
        assert not job.needs_modal  # code 21 was rewritten to 1
        with pytest.raises(TaskNeedsModalError):
            await job.wait(timeout=20)
        done = await (await job.modal(prompt="a fox, blue")).wait(timeout=20)
    assert TaskStatus.SUCCESS == done.status


# ---- against the simulator's production faults ----


def sim_client(relay: Any, poll: PollPolicy) -> AsyncClient:
    return AsyncClient(relay.api_key, base_url=relay.base_url, dialect=relay.dialect, poll=poll)


async def test_a_job_the_relay_stopped_refreshing_is_stalled() -> None:
    """new-api's copy of a job stops refreshing (new-api#1673): TaskStalledError, with the
    id and the last state the relay showed."""
    poll = PollPolicy(interval=0.05, first_poll=0.01, adaptive=False, stall_after=0.6)
    config = {"dialect": "quickrouter", "seed": 4, "refresh_interval": 0.1, "run_seconds": 3.0}
    async with simulate(**config) as relay, sim_client(relay, poll) as mj:
        job = await mj.imagine("a stallword fox")
        with pytest.raises(TaskStalledError) as info:
            await job.wait(timeout=30)
    assert job.id == info.value.task_id and info.value.last_task is not None


@pytest.mark.parametrize("dialect", ["quickrouter", "trueai", "midjourney-proxy"])
async def test_a_key_revoked_while_jobs_run_ends_their_waits(dialect: str) -> None:
    """The simulator revokes the key mid-job: every wait ends with AuthenticationError."""
    poll = PollPolicy(
        interval=0.05, first_poll=0.01, adaptive=False, max_error_backoff=0.2, dead_end_grace=0.5
    )
    config = {"dialect": dialect, "seed": 5, "run_seconds": 60}
    async with simulate(**config) as relay, sim_client(relay, poll) as mj:
        jobs = [await mj.imagine(f"a fox {i}") for i in range(3)]
        waits = [asyncio.ensure_future(j.wait(timeout=30)) for j in jobs]
        await asyncio.sleep(0.2)
        relay.simulator.revoke_key(relay.api_key, "disabled")
        results = await asyncio.gather(*waits, return_exceptions=True)
    assert all(isinstance(r, AuthenticationError) for r in results), results


async def test_a_batch_records_a_stalled_job_as_timed_out(tmp_path: Path) -> None:
    """The batch keeps a stalled job's id, ``timed_out`` with a reason that says so."""

    def reads(request: Request) -> Response | None:
        if "list" not in request.path:
            return None
        ids = [i for i in request.json()["ids"] if i != "quickmj-preflight"]
        return Response(
            200, json=[{"id": i, "status": "IN_PROGRESS", "progress": "7%"} for i in ids]
        )

    relay = Relay(reads)
    async with relay.client(policy(stall_after=0.05)) as mj:
        summary = await run_batch(mj, [BatchItem("a fox")], tmp_path / "out", download=False)
    assert 1 == summary.timed_out and 1 == summary.resumable
    (row,) = (tmp_path / "out" / "manifest.jsonl").read_text(encoding="utf-8").splitlines()
    assert '"status": "timed_out"' in row and "stalled: unchanged for" in row


# ---- a relay out of reach (PollPolicy.unreachable_after) ----

LIST = "/mj/task/list-by-condition"


def _outage(kind: str) -> Exception:
    """A read that found the relay out of reach, as the transport reports it."""
    if kind == "refused":
        return ConnectError("connection refused", method="POST", path=LIST)
    if kind == "502":
        return ServerError("HTTP 502: Bad Gateway", status=502, path=LIST)
    return RequestTimeoutError("no answer in 30 s", method="POST", path=LIST)


class _Reads:
    """The relay side of a Poller on a clock that jumps: each read takes ``step`` more
    seconds (the loop's short sleeps between reads pass in real time) and raises the next
    scripted error (None: it answers, every task finished)."""

    def __init__(self, errors: list[Exception | None], step: float) -> None:
        self.errors = errors
        self.step = step
        self.reads = 0

    def clock(self) -> float:
        return time.monotonic() + self.reads * self.step

    async def read_many(self, ids: list[str]) -> dict[str, Any]:
        self.reads += 1
        error = self.errors.pop(0) if self.errors else None
        if error is not None:
            raise error
        url = f"{BASE}/img/x.png"
        return {i: {"id": i, "status": "SUCCESS", "progress": "100%", "imageUrl": url} for i in ids}

    async def fetch(self, task_id: str) -> Task:  # pragma: no cover - never missing
        raise AssertionError(task_id)


def _window(after: float | None = 60.0) -> PollPolicy:
    # Backoffs are on the fake clock: the real sleeps between reads stay tiny.
    return policy(first_poll=0.0, max_error_backoff=0.02, unreachable_after=after)


async def _waits(reads: _Reads, poll: PollPolicy, ids: tuple[str, ...]) -> list[Any]:
    poller = Poller(reads, poll, clock=reads.clock)  # type: ignore[arg-type]
    try:
        waits = [wait(poller, i, timeout=None) for i in ids]
        return await asyncio.wait_for(asyncio.gather(*waits, return_exceptions=True), 20)
    finally:
        await poller.aclose()


@pytest.mark.parametrize("kind", ["refused", "502", "timeout"])
async def test_reads_failing_for_the_whole_window_end_every_wait(kind: str) -> None:
    """Every read finds the relay out of reach (15 s each on the fake clock): at the
    first failed read 60 s after the first, every wait ends with RelayUnreachableError,
    which names the ids (the jobs may still run) and chains the last read's error."""
    reads = _Reads([_outage(kind)] * 100, step=15.0)
    results = await _waits(reads, _window(60.0), ("1001", "1002"))
    assert 5 == reads.reads  # failed at 15 (the first), 30, 45, 60 and 75 s
    error = results[0]
    assert isinstance(error, RelayUnreachableError) and results[1] is error
    assert ("1001", "1002") == error.task_ids and 0 == error.not_submitted
    assert type(error.__cause__) is type(_outage(kind))
    assert "every read failed for 60 s" in str(error) and "may still be running" in str(error)
    assert "1001, 1002" in str(error) and EXIT_OUTAGE == _exit_code(error)


@pytest.mark.parametrize(
    ("failures", "step"),
    [(4, 15.0), (2, 100.0)],
    ids=["a 45 s blip of four reads", "two reads 100 s apart"],
)
async def test_an_outage_shorter_than_the_window_or_too_few_reads_ends_nothing(
    failures: int, step: float
) -> None:
    """Both gates hold: four failed reads within 45 s (a relay restarting), and two
    failed reads however far apart; then the relay answers and the wait succeeds."""
    reads = _Reads([_outage("refused")] * failures, step=step)
    (task,) = await _waits(reads, _window(60.0), ("1001",))
    assert isinstance(task, Task) and task.is_success
    assert failures + 1 == reads.reads


async def test_an_answer_of_the_relay_own_starts_the_window_again() -> None:
    """A garbled answer (the relay was reached) between failed reads starts the window
    again: 30 s steps, failing at 30, 60 | 90 (answered) | 120, 150 never add up to 60 s
    of failures in a row; without the restart the read at 120 s would end the wait."""
    garbled = MalformedResponseError("an HTML page", status=200, path=LIST)
    errors: list[Exception | None] = [_outage("refused")] * 2 + [garbled]
    reads = _Reads(errors + [_outage("502")] * 2, step=30.0)
    (task,) = await _waits(reads, _window(60.0), ("1001",))
    assert isinstance(task, Task) and task.is_success and 6 == reads.reads


async def test_a_cut_connection_neither_counts_nor_starts_the_window_again() -> None:
    """A connection cut mid-outage (no answer, and not the breaker's kind of failure):
    failing at 30, 60 | 90 (cut) | 120 s, the window still runs from 30 s and the read at
    120 s ends the wait (three failures counted over 90 s)."""
    cut = TransportError("the relay closed the connection", method="POST", path=LIST)
    refused = _outage("refused")
    reads = _Reads([refused, refused, cut, refused, refused], step=30.0)
    (error,) = await _waits(reads, _window(60.0), ("1001",))
    assert isinstance(error, RelayUnreachableError) and 4 == reads.reads
    assert "(3 in a row;" in str(error)


async def test_unreachable_after_none_keeps_polling_through_an_outage() -> None:
    """``unreachable_after=None``: ten failed reads over 150 s end nothing."""
    reads = _Reads([_outage("refused")] * 10, step=15.0)
    (task,) = await _waits(reads, _window(None), ("1001",))
    assert isinstance(task, Task) and task.is_success and 11 == reads.reads
    with pytest.raises(ConfigurationError, match="unreachable_after"):
        PollPolicy(unreachable_after=0)


async def test_a_job_whose_relay_went_down_keeps_its_id() -> None:
    """Through the client: the relay answers the submit, then refuses every connection.
    ``job.wait()`` ends with RelayUnreachableError instead of polling until its timeout;
    the handle keeps the id, and a wait once the relay is back gets the job's result."""
    down = False

    def reads(request: Request) -> Response | None:
        if down:
            raise ConnectError("connection refused", method=request.method, path=request.path)
        return None

    relay = Relay(reads)
    poll = policy(unreachable_after=0.05)
    async with relay.client(poll, retry=RetryPolicy(backoff=0, max_backoff=0)) as mj:
        job = await mj.imagine("a fox")
        down = True
        with pytest.raises(RelayUnreachableError) as info:
            await job.wait(timeout=20)
        assert (job.id,) == info.value.task_ids and 0 == mj.poller.tracked
        assert relay.list_requests >= 3
        down = False
        assert (await job.wait(timeout=20)).is_success
