"""Branches no other test reached (issue 24 §8), each with a cheap scripted relay.

The relay refusing connections mid-run after the batch's preflight, a client closed while
a submit is on the wire, a pool's failover once a key leaves the rotation, a caller
cancelled mid-send, a late ``watch()`` on an id already tracked, the poller's loop
crashing (its waiters get the error, never a hang) and an ``on_final`` observer raising
(the other listeners are unaffected).
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import attrs
import pytest
from fakes import BASE, FAST, KEY, NO_WAIT, FakeRelay, make_client

from quickmj import (
    AccountPool,
    AsyncClient,
    BatchItem,
    ClientClosedError,
    ConnectError,
    RelayUnreachableError,
    SubmitOutcomeUnknownError,
    Task,
    TaskStatus,
    run_batch,
)
from quickmj._cli import EXIT_OUTAGE, _error_line, _exit_code
from quickmj._jobs import wait
from quickmj._poller import Poller
from quickmj.testing import MockTransport, Request, Response


def _rows(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


# ---- the relay refuses connections mid-run, after the preflight ----


class _GoesDown:
    """FakeRelay's answers until ``accepted`` submits were accepted; then no connection."""

    def __init__(self, relay: FakeRelay, accepted: int) -> None:
        self.relay = relay
        self.accepted = accepted
        self.down = True
        self.refused: list[str] = []  # the paths of the requests it refused
        self.tried: set[str] = set()  # the prompts of the submits it refused

    def __call__(self, request: Request) -> Response:
        if self.down and len(self.relay.submits) >= self.accepted:
            self.refused.append(request.path)
            if request.path.endswith("/submit/imagine"):
                self.tried.add((request.json() or {})["prompt"])
            raise ConnectError("connection refused", method=request.method, path=request.path)
        return self.relay.handle(request)


async def test_a_relay_that_goes_down_mid_run_stops_it_resumably(tmp_path: Path) -> None:
    """The preflight passed and two jobs were accepted, then every connection is refused:
    the run stops with RelayUnreachableError (not after every prompt failed), the paid
    jobs keep their ids, the refused prompts are pending, and a resume submits each
    remaining prompt once."""
    relay = FakeRelay(ticks=2)
    handler = _GoesDown(relay, accepted=2)
    items = [BatchItem(f"prompt {i}") for i in range(12)]
    # A key of its own: admission limits learned by other tests (per relay and key, for
    # the process) must not leave the two running jobs holding every slot.
    key = "sk-relay-goes-down-mid-run"
    transport = MockTransport(handler)
    async with AsyncClient(key, base_url=BASE, poll=FAST, retry=NO_WAIT, transport=transport) as mj:
        with pytest.raises(RelayUnreachableError) as info:
            await run_batch(mj, items, tmp_path, concurrency=4, download=False, timeout=30)
    assert any(p.endswith("/submit/imagine") for p in handler.refused)  # mid-run, not preflight
    rows = _rows(tmp_path)
    paid = {r["task_id"] for r in rows if r.get("task_id")}
    assert {"1001", "1002"} == paid
    pending = [r for r in rows if r["status"] == "pending"]
    assert len(pending) == info.value.not_submitted == 10
    assert 3 <= len(handler.tried) < 10  # stopped early: some prompts were never tried
    handler.down = False
    async with AsyncClient(key, base_url=BASE, poll=FAST, transport=MockTransport(handler)) as mj:
        summary = await run_batch(mj, items, tmp_path, resume=True, download=False, timeout=30)
    assert summary.ok and 12 == summary.succeeded
    sent = [s["prompt"] for s in relay.submits]
    assert sorted(sent) == sorted(i.prompt for i in items)  # each prompt once, in all


# ---- a client closed while a submit is on the wire ----


async def test_closing_the_client_during_a_submit_makes_its_outcome_unknown() -> None:
    """aclose() ends the exchange: the submit raises SubmitOutcomeUnknownError (the job
    may exist; caused by the close), and nothing is sent again."""
    arrived = asyncio.Event()
    submits: list[str] = []

    async def handler(request: Request) -> Response:
        submits.append(request.path)
        arrived.set()
        await asyncio.sleep(30)  # the relay never answers in time
        return Response(200, json={"code": 1, "result": "1"})

    mj = AsyncClient(KEY, base_url=BASE, retry=NO_WAIT, transport=MockTransport(handler))
    submission = mj.imagine("a fox")
    sending = asyncio.ensure_future(submission)
    await arrived.wait()
    await mj.aclose()
    with pytest.raises(SubmitOutcomeUnknownError, match="closed before the answer") as info:
        await sending
    assert isinstance(info.value.__cause__, ClientClosedError)
    assert submission.error is info.value and submission.job is None
    assert ["/mj/submit/imagine"] == submits


# ---- a pool's failover once a key leaves the rotation ----


async def test_a_pool_fails_over_when_the_first_key_is_refused() -> None:
    """The first account's key answers 401 to the submit: it leaves the rotation and the
    same submit goes to the next account (nothing was created by the refusal)."""
    seen: list[str] = []

    def handler(request: Request) -> Response:
        key = request.headers.get("Authorization", "").removeprefix("Bearer ")
        seen.append(key)
        if key == "sk-refused":
            return Response(401, json={"message": "invalid token"})
        return Response(200, json={"code": 1, "description": "ok", "result": "7"})

    async with AccountPool(
        ["sk-refused", "sk-good"], base_url=BASE, retry=NO_WAIT, transport=MockTransport(handler)
    ) as pool:
        job = await pool.imagine("a fox")
        refused, good = pool.budgets
    assert ["sk-refused", "sk-good"] == seen  # one submit each: the refused one, then the other
    assert "7" == job.id and job.account == good.label
    assert refused.disabled is not None and good.disabled is None


# ---- a caller cancelled mid-send ----


async def test_a_caller_cancelled_mid_send_keeps_the_job_and_its_slot() -> None:
    """With admission, a submit already on the wire runs to its answer when its caller is
    cancelled: the job is recorded on the Submission, and its slot stays held (the job
    runs on the relay) until the job ends."""
    gate = asyncio.Event()
    arrived = asyncio.Event()
    relay = FakeRelay(ticks=1)

    async def handler(request: Request) -> Response:
        if request.path.endswith("/submit/imagine"):
            arrived.set()
            await gate.wait()
        return relay.handle(request)

    async with AsyncClient(
        KEY, base_url=BASE, poll=FAST, admission="adaptive", transport=MockTransport(handler)
    ) as mj:
        submission = mj.imagine("a fox")
        caller = asyncio.ensure_future(submission)
        await arrived.wait()
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        gate.set()
        job = await submission  # the same submit: its answer, not a second request
        assert submission.job is job and 1 == len(relay.submits)
        (budget,) = mj.admission.budgets if mj.admission else ()
        assert 1 == budget.held  # the accepted job holds its slot
        await job.wait(timeout=10)
        for _ in range(100):
            if budget.held == 0:
                break
            await asyncio.sleep(0.01)
        assert 0 == budget.held


async def test_a_send_cancelled_on_the_wire_counts_as_unknown() -> None:
    """The send itself cancelled while on the wire (as when the event loop shuts down
    under it): its slot is accounted as an unknown outcome (the job may exist), and the
    cancellation reaches the caller."""
    arrived = asyncio.Event()

    async def handler(request: Request) -> Response:
        arrived.set()
        await asyncio.sleep(30)
        return Response(200, json={"code": 1, "result": "1"})

    async with AsyncClient(
        KEY, base_url=BASE, admission="adaptive", retry=NO_WAIT, transport=MockTransport(handler)
    ) as mj:
        caller = asyncio.ensure_future(mj.imagine("a fox"))
        await arrived.wait()
        (send,) = [t for t in asyncio.all_tasks() if t.get_name() == "POST /submit/imagine"]
        send.cancel()  # what asyncio.run does to the tasks left when its main() returns
        with pytest.raises(asyncio.CancelledError):
            await caller
        (budget,) = mj.admission.budgets if mj.admission else ()
        assert (1, 0) == (budget.stats.unknown, budget.held)


# ---- a late watch() on a tracked id ----


async def test_a_late_watch_starts_from_the_latest_state() -> None:
    """watch() on an id a wait already tracks yields the state the poller last read at
    once (no extra read), then each change to the end."""
    relay = FakeRelay(ticks=4)
    async with make_client(relay) as mj:
        waiting = asyncio.ensure_future(mj.wait("w"))
        for _ in range(500):
            if mj.poller.peek("w") is not None:
                break
            await asyncio.sleep(0.005)
        known = mj.poller.peek("w")
        assert known is not None and known.status is TaskStatus.IN_PROGRESS
        reads = relay.reads["w"]
        states = mj.watch("w")
        first = await anext(states)
        assert relay.reads["w"] == reads  # handed over, not read again
        assert (known.status, known.progress) == (first.status, first.progress)
        rest = [t async for t in states]
        finished = await waiting
    assert rest and rest[-1].status is TaskStatus.SUCCESS and finished.is_success


# ---- the poller's loop crashes ----


class _Reads:
    """The relay side of a Poller: every task is still running."""

    async def read_many(self, ids: list[str]) -> dict[str, Any]:
        return {i: {"id": i, "status": "IN_PROGRESS", "progress": "10%"} for i in ids}

    async def fetch(self, task_id: str) -> Task:  # pragma: no cover - never missing
        raise AssertionError(task_id)


async def test_a_crashed_poller_loop_fails_its_waiters_instead_of_hanging(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A bug inside the loop itself (here: its clock breaks after the first round) ends
    every wait with that error, logged once; nobody waits forever."""
    broken = False
    calls = 0

    def clock() -> float:
        nonlocal calls
        calls += 1
        if broken and calls > 3:
            raise RuntimeError("the clock broke")
        return calls * 0.01

    poller = Poller(_Reads(), FAST, clock=clock)  # type: ignore[arg-type]
    try:
        waits = [asyncio.ensure_future(wait(poller, i, timeout=None)) for i in ("a", "b")]
        await asyncio.sleep(0)
        broken = True
        with caplog.at_level(logging.ERROR, logger="quickmj"):
            results = await asyncio.wait_for(
                asyncio.gather(*waits, return_exceptions=True), timeout=10
            )
    finally:
        await poller.aclose()
    assert [RuntimeError, RuntimeError] == [type(r) for r in results], results
    assert all("clock broke" in str(r) for r in results)
    assert not poller.running
    assert 1 == sum("poller stopped unexpectedly" in r.getMessage() for r in caplog.records)


# ---- an on_final observer raises ----


async def test_a_raising_on_final_observer_does_not_break_the_waits(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The observer's error is logged for each id; every waiter still gets its task and
    the loop goes on polling the others."""
    relay = FakeRelay(ticks=2, fail={"f"})
    observed: list[str] = []

    def observer(task_id: str, final: Any) -> None:
        observed.append(task_id)
        raise ValueError("observer bug")

    async with make_client(relay) as mj:
        mj.poller.on_final = observer
        with caplog.at_level(logging.ERROR, logger="quickmj"):
            done = [t async for t in mj.as_completed(["a", "b", "f"], timeout=10)]
            again = await mj.wait("c", timeout=10)  # the loop still serves new waits
    assert {"a", "b", "f"} == {t.id for t in done}
    assert {"a", "b", "c", "f"} == set(observed) and again.is_success
    failed = [r for r in caplog.records if "on_final failed" in r.getMessage()]
    assert 4 == len(failed)


# ---- the relay goes down while every slot is held by a running job ----


async def test_a_relay_down_while_every_slot_is_held_stops_the_run_resumably(
    tmp_path: Path,
) -> None:
    """Both slots hold running jobs when the relay starts refusing connections, so no
    submit is tried and the submit breaker cannot trip: the waits end after
    ``unreachable_after`` and the run stops with RelayUnreachableError (exit 3, "run
    again with --resume"), the paid ids kept on their rows (timed_out), the prompts
    never sent pending; a resume waits on the paid jobs and sends only those."""
    relay = FakeRelay(ticks=2)
    handler = _GoesDown(relay, accepted=2)
    items = [BatchItem(f"prompt {i}") for i in range(4)]
    key = "sk-relay-goes-down-slots-held"  # a key of its own (see the test above)
    poll = attrs.evolve(FAST, unreachable_after=0.05, max_error_backoff=0.02)
    transport = MockTransport(handler)
    async with AsyncClient(key, base_url=BASE, poll=poll, retry=NO_WAIT, transport=transport) as mj:
        with pytest.raises(RelayUnreachableError) as info:
            await run_batch(mj, items, tmp_path, concurrency=2, download=False, timeout=20)
    assert not handler.tried  # no submit was tried: the waits ended the run
    assert 2 == info.value.not_submitted and EXIT_OUTAGE == _exit_code(info.value)
    line = _error_line(info.value)
    assert line.startswith("relay unreachable") and line.endswith("run again with --resume")
    rows = _rows(tmp_path)
    paid = {r["task_id"]: r["status"] for r in rows if r.get("task_id")}
    assert {"1001": "timed_out", "1002": "timed_out"} == paid
    assert 2 == sum(r["status"] == "pending" for r in rows)
    handler.down = False
    async with AsyncClient(key, base_url=BASE, poll=FAST, transport=MockTransport(handler)) as mj:
        summary = await run_batch(mj, items, tmp_path, resume=True, download=False, timeout=30)
    assert summary.ok and 4 == summary.succeeded
    assert sorted(s["prompt"] for s in relay.submits) == sorted(i.prompt for i in items)
