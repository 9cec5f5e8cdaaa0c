"""Adaptive admission: learning an account's limit, waiting for slots, the money rules."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import pytest
from fakes import SIM_POLL as FAST
from fakes import sim_client as client

from quickmj import AdmissionPolicy, AsyncClient, QueueFullError, SubmitOutcomeUnknownError
from quickmj._admission import Admission
from quickmj._budgets import LocalBudget, fingerprint, grow, hold_floor, shrink
from quickmj.testing import MockTransport, Request, Response, SimulatorConfig, simulate

POLICY = AdmissionPolicy()
_KEYS = iter(range(10**6))


def unique_key() -> str:
    """A key no earlier test used: the learned limits are remembered per key."""
    return f"sk-admission-{next(_KEYS)}-{time.time_ns()}"


def test_window_rules() -> None:
    """Slow start adds one; below the ceiling 1/limit; near it probe_rate/limit; a refusal
    keeps `decrease` of what was in use, never below min_limit."""
    assert 4.0 == grow(3.0, None, True, POLICY)
    assert pytest.approx(8.125) == grow(8.0, 12.0, False, POLICY)
    assert pytest.approx(12.0 + 0.25 / 12) == grow(12.0, 12.0, False, POLICY)
    assert 100.0 == grow(100.0, None, True, POLICY)
    assert pytest.approx(7.0) == shrink(10, POLICY)
    assert 1.0 == shrink(0, POLICY)


def test_policy_is_validated() -> None:
    with pytest.raises(ValueError, match="min_limit"):
        AdmissionPolicy(initial_limit=0)
    with pytest.raises(ValueError, match="decrease"):
        AdmissionPolicy(decrease=1.5)


async def test_learns_the_limit_and_callers_wait_instead_of_failing() -> None:
    """30 concurrent imagines on an account taking 2 + 3: none fails, each prompt is
    created once, a few queue-full answers teach the budget a limit near 5."""
    config = SimulatorConfig(
        dialect="midjourney-proxy", concurrency=2, max_queue=3, queue_seconds=0, run_seconds=0.06
    )
    async with simulate(config) as relay, client(relay, admission="adaptive") as mj:
        tasks = await asyncio.gather(*(mj.imagine(f"fox {i}").wait() for i in range(30)))
        assert mj.admission is not None
        (budget,) = mj.admission.budgets
    assert 30 == len(tasks)
    created = Counter(s.prompt for s in relay.simulator.submissions)
    assert 30 == len(created) and {1} == set(created.values())
    refused = relay.simulator.accounts[relay.api_key].rejected
    assert 1 <= budget.stats.queue_full == refused <= 8
    assert 3.0 <= budget.limit <= 6.0 and 0 == budget.held


async def test_admission_is_off_by_default() -> None:
    """Without admission= a full queue raises at once, exactly as before."""
    config = SimulatorConfig(dialect="midjourney-proxy", concurrency=1, max_queue=1, run_seconds=5)
    async with simulate(config) as relay, client(relay) as mj:
        assert mj.admission is None
        await mj.imagine("a")
        await mj.imagine("b")
        with pytest.raises(QueueFullError):
            await mj.imagine("c")
    assert 2 == len(relay.simulator.submissions)


def _scripted(answers: list[Response]) -> tuple[MockTransport, list[float]]:
    """A relay answering submits from ``answers`` and every task as finished."""
    sent: list[float] = []

    def handler(request: Request) -> Response:
        if "/submit/" in request.url:
            sent.append(time.monotonic())
            return answers.pop(0)
        return Response(200, json=[{"id": "1", "status": "SUCCESS", "progress": "100%"}])

    return MockTransport(handler), sent


async def test_a_429_is_retried_after_its_retry_after() -> None:
    """A 429 created nothing: sent again once Retry-After passed, and only then."""
    transport, sent = _scripted(
        [
            Response(429, headers={"Retry-After": "0.4"}),
            Response(200, json={"code": 1, "description": "ok", "result": "1"}),
        ]
    )
    async with AsyncClient(
        unique_key(), transport=transport, poll=FAST, admission="adaptive"
    ) as mj:
        job = await mj.imagine("a cat")
        assert mj.admission is not None
        stats = mj.admission.budgets[0].stats
    assert "1" == job.id and 2 == len(sent)
    assert sent[1] - sent[0] >= 0.4
    assert (1, 1, 0) == (stats.rate_limited, stats.accepted, stats.queue_full)


async def test_an_unknown_outcome_is_never_sent_again() -> None:
    """A 502 after sending leaves it open whether a job exists: raised, never resent."""
    transport, sent = _scripted([Response(502, content=b"<html>bad gateway</html>")])
    async with AsyncClient(
        unique_key(), transport=transport, poll=FAST, admission="adaptive"
    ) as mj:
        with pytest.raises(SubmitOutcomeUnknownError):
            await mj.imagine("a cat")
        assert mj.admission is not None
        assert 1 == mj.admission.budgets[0].stats.unknown
    assert 1 == len(sent)


async def test_a_caller_cancelled_while_waiting_for_a_slot_sends_nothing() -> None:
    """Waiting for a slot is not sending: cancelling the caller drops the submit, so it
    is not sent when the slot frees later."""
    config = SimulatorConfig(dialect="midjourney-proxy", run_seconds=0.4)
    policy = AdmissionPolicy(initial_limit=1, max_limit=1)
    async with simulate(config) as relay, client(relay, admission=policy) as mj:
        first = await mj.imagine("runs first")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(mj.imagine("waits for a slot").wait(), 0.15)
        await first.wait()
        await asyncio.sleep(0.3)  # the slot is free again: a live waiter would send now
        assert mj.admission is not None
        assert 0 == mj.admission.budgets[0].held
    assert ["runs first"] == [s.prompt for s in relay.simulator.submissions]


async def test_a_slot_is_held_until_the_job_ends() -> None:
    """The relay counts running and waiting jobs: the slot frees only at the end."""
    config = SimulatorConfig(dialect="midjourney-proxy", run_seconds=0.6)
    async with simulate(config) as relay, client(relay, admission="adaptive") as mj:
        job = await mj.imagine("a fox")
        assert mj.admission is not None
        budget = mj.admission.budgets[0]
        await asyncio.sleep(0.3)
        assert 1 == budget.held  # IN_PROGRESS: still taken
        await job.wait()
        for _ in range(50):
            if budget.held == 0:
                break
            await asyncio.sleep(0.02)
    assert 0 == budget.held


async def test_the_limit_is_remembered_per_key_and_mode() -> None:
    """A new client on a key starts from what this process learned for it (per mode)."""
    key = unique_key()
    config = SimulatorConfig(
        api_keys=(key,),
        dialect="trueai",
        concurrency=1,
        max_queue=2,
        queue_seconds=0,
        run_seconds=0.05,
    )
    async with simulate(config) as relay:
        async with client(relay, key=key, admission="adaptive") as mj:
            await asyncio.gather(*(mj.imagine(f"p {i}").wait() for i in range(12)))
            assert mj.admission is not None
            learned = mj.admission.budgets[0].limit
        async with client(relay, key=key, admission="adaptive") as again:
            assert again.admission is not None
            assert learned == again.admission.budgets[0].limit
        async with client(relay, key=key, mode="relax", admission="adaptive") as relax:
            assert relax.admission is not None
            assert 3.0 == relax.admission.budgets[0].limit
    assert learned < 6.0


async def test_accounts_are_named_by_a_fingerprint_never_the_key() -> None:
    key = "sk-very-secret-key-0123456789"
    async with AsyncClient(key, base_url="http://relay.test", admission="adaptive") as mj:
        shown = f"{mj.account} {mj.admission!r} {mj.admission.budgets if mj.admission else ''}"
    assert fingerprint(key) == mj.account and 8 == len(mj.account)
    assert key not in shown and "secret" not in shown


async def test_refusals_of_one_window_shrink_it_once() -> None:
    """Several refusals of submits sent before the drop count as one."""
    budget = LocalBudget("t", AdmissionPolicy(initial_limit=6, backoff=0))
    leases = [await budget.take() for _ in range(6)]
    assert all(leases) and await budget.take() is None
    for lease in leases[:3]:
        assert lease is not None
        budget.refused(lease, retry_after=None, rate_limited=False)
    assert pytest.approx(0.7 * 5) == budget.limit and 5.0 == budget.ceiling
    assert 3 == budget.stats.queue_full and 3 == budget.held


# ---- a limit the account has shown it holds; slots refilled as jobs end ----


async def test_a_refusal_keeps_the_limit_at_the_jobs_the_account_holds() -> None:
    """Four accepted jobs alive, a fifth refused (an account with 4 workers and no
    waiting place): the limit stays at 4, not 0.7 x 4, and nothing pauses (nothing is
    sent before one of the four ends). Refused again in a row: the plain decrease."""
    budget = LocalBudget("t", AdmissionPolicy(initial_limit=5))
    leases = [await budget.take() for _ in range(4)]
    for i, lease in enumerate(leases):
        assert lease is not None
        budget.accepted(lease, f"t{i}")
    fifth = await budget.take()
    assert fifth is not None
    budget.refused(fifth, retry_after=None, rate_limited=False)
    assert 4.0 == budget.limit and budget.retry_at() is None

    assert leases[0] is not None
    budget.release(leases[0])
    again = await budget.take()
    assert again is not None
    budget.refused(again, retry_after=None, rate_limited=False)
    assert pytest.approx(0.7 * 3) == budget.limit
    assert budget.retry_at() is not None


def test_hold_floor_rules() -> None:
    """The floor is the accepted jobs alive, at most the jobs in use, none in a row."""
    assert 4.0 == hold_floor(4, 5, 0)
    assert 3.0 == hold_floor(4, 3, 0)
    assert 0.0 == hold_floor(4, 5, 1)


async def test_submits_accepted_after_a_drop_raise_the_limit_to_what_is_held() -> None:
    """Six sent at once, one refused first (the drop to 0.7 x 5), then five accepted: the
    account holds five, so the limit is five."""
    budget = LocalBudget("t", AdmissionPolicy(initial_limit=6, backoff=0))
    leases = [lease for _ in range(6) if (lease := await budget.take()) is not None]
    assert 6 == len(leases)
    budget.refused(leases[0], retry_after=None, rate_limited=False)
    assert pytest.approx(3.5) == budget.limit
    for i, lease in enumerate(leases[1:]):
        budget.accepted(lease, f"t{i}")
    assert 5 == int(budget.limit)  # (and a probe's step past it: the window was full)


class _Poller:
    """Records what the gate asks of a poller."""

    def __init__(self) -> None:
        self.hurried: list[tuple[str, float]] = []

    def now(self) -> float:
        return 7.0

    def hurry(self, task_id: str, since: float) -> None:
        self.hurried.append((task_id, since))


async def test_a_waiting_submit_has_the_held_jobs_read_as_they_end() -> None:
    """A job holding a slot is hurried only while a submit waits for one (and the next
    job of that submit too)."""
    budget = LocalBudget("t", AdmissionPolicy(initial_limit=1, max_limit=1))
    gate = Admission([budget])
    poller: Any = _Poller()
    lease = await gate.acquire()
    budget.accepted(lease, "t1")
    budget.watch(lease, poller, "t1")
    assert [] == poller.hurried  # nobody waits
    waiting = asyncio.create_task(gate.acquire())
    for _ in range(3):
        await asyncio.sleep(0)
    assert [("t1", 7.0)] == poller.hurried
    budget.unwatch(lease)
    budget.release(lease)
    second = await waiting
    budget.accepted(second, "t2")
    budget._lifetime = 60.0  # jobs live a minute: the wait that just ended is recent
    budget.watch(second, poller, "t2")
    assert ("t2", 7.0) == poller.hurried[-1]


async def test_a_relay_without_a_waiting_place_refuses_when_every_worker_is_busy() -> None:
    """The simulator's max_queue=0: two workers, the third submit is refused (code 23)
    until a job ends."""
    config = SimulatorConfig(
        dialect="midjourney-proxy", concurrency=2, max_queue=0, queue_seconds=0, run_seconds=5
    )
    async with simulate(config) as relay, client(relay) as mj:
        await mj.imagine("a")
        await mj.imagine("b")
        with pytest.raises(QueueFullError):
            await mj.imagine("c")
        relay.simulator.advance(5.5)
        await mj.imagine("d")
    assert ["a", "b", "d"] == [s.prompt for s in relay.simulator.submissions]
