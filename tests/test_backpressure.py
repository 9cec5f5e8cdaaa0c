"""Backpressure a relay may apply for ever (issue 19, items 4-6).

Retry-After from a hostile or broken relay is kept within 1 s to 60 s; the first Ctrl-C
stops a batch's submits; a relay that answers "queue full" to every submit ends the batch
within ``--timeout`` with the prompts left pending; ``Timeouts.total`` bounds one call
with all its retries. Counts are asserted, never wall time.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import math
import os
import signal
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from conftest import Serve
from fakes import BASE, FAST, FakeRelay, Script

from quickmj import (
    AccountPool,
    AdmissionPolicy,
    AsyncClient,
    BatchItem,
    BatchProgress,
    ConfigurationError,
    ConnectError,
    RateLimitError,
    RequestTimeoutError,
    RetryPolicy,
    Timeouts,
    run_batch,
)
from quickmj._budgets import Lease, LocalBudget
from quickmj._config import RETRY_AFTER_CAP, RETRY_AFTER_FLOOR, clamp_retry_after
from quickmj._progress import PlainReporter
from quickmj._protocol import parse_retry_after
from quickmj.testing import MockTransport, Request, Response

QUEUE_FULL = {"code": 23, "description": "队列已满，请稍后尝试", "result": None}


def unique_key() -> str:
    # Admission remembers what it learned per key for the life of the process.
    return f"sk-{uuid.uuid4().hex}"


def prompts(n: int) -> list[BatchItem]:
    return [BatchItem(f"prompt {i}") for i in range(n)]


# ---- Retry-After: one rule, a floor and a cap ----


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("0", RETRY_AFTER_FLOOR),
        ("-5", RETRY_AFTER_FLOOR),
        ("0.001", RETRY_AFTER_FLOOR),
        ("nan", RETRY_AFTER_FLOOR),
        ("Thu, 01 Jan 1970 00:00:00 GMT", RETRY_AFTER_FLOOR),
        ("3", 3.0),
        ("999999", RETRY_AFTER_CAP),
        ("inf", RETRY_AFTER_CAP),
        ("1e400", RETRY_AFTER_CAP),
        ("Fri, 31 Dec 9999 23:59:59 GMT", RETRY_AFTER_CAP),
    ],
)
def test_retry_after_is_kept_within_floor_and_cap(header: str, seconds: float) -> None:
    assert seconds == parse_retry_after(header)


def test_the_floor_and_cap_are_one_second_and_one_minute() -> None:
    assert (1.0, 60.0) == (RETRY_AFTER_FLOOR, RETRY_AFTER_CAP)
    soon = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 <= (parse_retry_after(soon) or 0) <= 30
    assert parse_retry_after("later, please") is None  # unreadable: the caller's backoff


@pytest.mark.parametrize("hint", [0.0, -3.0, math.nan, math.inf, 1e9])
def test_every_consumer_applies_the_same_rule(hint: float) -> None:
    """A RateLimitError built by hand (a custom transport, a test) is clamped too."""
    expected = clamp_retry_after(hint)
    assert RETRY_AFTER_FLOOR <= expected <= RETRY_AFTER_CAP
    assert min(expected, 30.0) == RetryPolicy(max_backoff=30.0).delay(1, hint)
    budget = LocalBudget("acct", AdmissionPolicy(max_backoff=600.0))
    assert expected == budget._pause_for(hint)


def test_no_setting_undoes_the_floor() -> None:
    """A max_backoff under a second caps the backoff, not the Retry-After floor."""
    assert RETRY_AFTER_FLOOR == RetryPolicy(max_backoff=0.1).delay(1, 0.0)
    budget = LocalBudget("acct", AdmissionPolicy(max_backoff=0.1))
    assert RETRY_AFTER_FLOOR == budget._pause_for(0.0)
    assert 5.0 == clamp_retry_after(20.0, 5.0)


async def test_a_429_with_retry_after_zero_pauses_the_account_a_second() -> None:
    budget = LocalBudget("acct", AdmissionPolicy())
    lease = await budget.take()
    assert isinstance(lease, Lease)
    before = time.monotonic()
    budget.refused(lease, retry_after=0.0, rate_limited=True)
    assert budget.paused_until - before >= RETRY_AFTER_FLOOR - 0.01
    assert await budget.take() is None  # no slot during the pause


async def test_adaptive_submits_under_retry_after_zero_are_paced() -> None:
    """Today's storm: 429 Retry-After: 0 answered to every submit re-sent it thousands of
    times a second. Now one submit waits a second after each refusal."""
    sent: list[float] = []

    def handle(request: Request) -> Response:
        sent.append(time.monotonic())
        return Response(429, headers={"Retry-After": "0"})

    async with AsyncClient(
        unique_key(), base_url=BASE, transport=MockTransport(handle), admission="adaptive"
    ) as mj:
        submit = asyncio.ensure_future(mj.imagine("a cat"))
        while not sent:  # noqa: ASYNC110 - waiting for the first refusal
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.5)
        submit.cancel()
        with pytest.raises(asyncio.CancelledError):
            await submit
    assert 1 == len(sent)  # before: thousands within the half second


async def test_one_key_answering_retry_after_zero_does_not_stall_a_pool(tmp_path: Path) -> None:
    """With several keys, a key that refuses everything with Retry-After: 0 is paused a
    second at a time while the others do the work."""
    relay = FakeRelay(ticks=1)
    bad, good = unique_key(), unique_key()
    refused: list[str] = []

    def handle(request: Request) -> Response:
        if "/submit/" in request.path and bad in request.headers.get("Authorization", ""):
            refused.append(request.path)
            return Response(429, headers={"Retry-After": "0"})
        return relay.handle(request)

    pool = AccountPool([bad, good], base_url=BASE, transport=MockTransport(handle), poll=FAST)
    async with pool:
        summary = await run_batch(pool, prompts(8), tmp_path / "out", download=False)
    assert summary.ok and 8 == len(relay.submits)
    assert len(refused) <= 6  # before: hundreds of refused submits on the bad key


# ---- the first Ctrl-C stops submitting ----


def _hostile_relay(answer: web.Response | None = None) -> tuple[web.Application, list[float]]:
    """Every submit is refused (429 Retry-After: 0 unless ``answer``); reads find nothing."""
    arrivals: list[float] = []

    async def submit(request: web.Request) -> web.Response:
        arrivals.append(time.monotonic())
        if answer is not None:
            return web.json_response(QUEUE_FULL)
        return web.json_response({"error": "slow down"}, status=429, headers={"Retry-After": "0"})

    async def listing(request: web.Request) -> web.Response:
        return web.json_response([])

    app = web.Application()
    app.router.add_post("/mj/submit/imagine", submit)
    app.router.add_post("/mj/task/list-by-condition", listing)
    return app, arrivals


async def _cli(base_url: str, cwd: Path, *args: str) -> asyncio.subprocess.Process:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUICKMJ_")}
    env.update({"QUICKMJ_API_KEY": unique_key(), "QUICKMJ_BASE_URL": base_url})
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "quickmj", "batch", "p.txt", "--out", "out", "--plain",
        "--dialect", "midjourney-proxy", *args, cwd=cwd, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


def _manifest(out: Path) -> list[dict[str, Any]]:
    text = (out / "manifest.jsonl").read_text("utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
async def test_the_first_ctrl_c_stops_submitting(serve: Serve, tmp_path: Path) -> None:
    """A real SIGINT to ``quickmj batch`` under 429 Retry-After: 0: no submit after it,
    exit 130 with a resume hint, every prompt still pending (nothing was created)."""
    app, arrivals = _hostile_relay()
    base = await serve(app)
    (tmp_path / "p.txt").write_text("".join(f"prompt {i}\n" for i in range(50)), "utf-8")
    proc = await _cli(base, tmp_path)
    try:
        for _ in range(300):  # until a round of refused submits came and went
            await asyncio.sleep(0.05)
            if arrivals and time.monotonic() - arrivals[-1] > 0.3:
                break
        assert arrivals, "the batch never submitted"
        signalled = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    after = [t for t in arrivals if t > signalled]
    assert [] == after  # before: 23,211 more submits
    assert 130 == proc.returncode
    assert "--resume" in err.decode()
    rows = _manifest(tmp_path / "out")
    assert 50 == len(rows) and {"pending"} == {r["status"] for r in rows}


# ---- queue full forever ----


def _queue_full_relay() -> tuple[MockTransport, list[str]]:
    relay = FakeRelay()
    sent: list[str] = []

    def handle(request: Request) -> Response:
        if "/submit/" in request.path:
            sent.append(request.path)
            return Response(200, json=QUEUE_FULL)
        return relay.handle(request)

    return MockTransport(handle), sent


async def test_queue_full_forever_ends_within_the_timeout(tmp_path: Path) -> None:
    """Every submit answered code 23: the run stops submitting once the relay has refused
    for ``timeout`` seconds, leaves every prompt pending and says why."""
    transport, sent = _queue_full_relay()
    seen: list[BatchProgress] = []
    async with AsyncClient(unique_key(), base_url=BASE, transport=transport, poll=FAST) as mj:
        summary = await run_batch(
            mj, prompts(5), tmp_path / "out", download=False, timeout=0.4, on_progress=seen.append
        )
    assert (5, 0) == (summary.pending, summary.succeeded)
    assert summary.stopped_submitting is not None
    assert "queue full" in summary.stopped_submitting
    assert sent and len(sent) < 20  # paced by the account's backoff, then stopped
    refused = [p for p in seen if p.refused_for is not None]
    assert refused and {"queue full"} == {p.refusal for p in refused}
    rows = _manifest(tmp_path / "out")
    assert {"pending"} == {r["status"] for r in rows}
    assert all("nothing was created" in (r["reason"] or "") for r in rows)


async def test_an_accepted_submit_ends_the_refusals(tmp_path: Path) -> None:
    """Queue full for a while, then room: the clock restarts, every prompt is sent."""
    relay = FakeRelay(ticks=1)
    refusals = iter(range(3))
    relay.submit_answer = lambda route, body: (
        Response(200, json=QUEUE_FULL) if next(refusals, None) is not None else None
    )
    async with AsyncClient(
        unique_key(), base_url=BASE, transport=MockTransport(relay.handle), poll=FAST
    ) as mj:
        summary = await run_batch(mj, prompts(4), tmp_path / "out", download=False, timeout=30)
    assert summary.ok and summary.stopped_submitting is None
    assert 7 == len(relay.submits)  # 3 refused + 4 accepted


def _progress(refused_for: float | None, refusal: str | None = "queue full") -> BatchProgress:
    return BatchProgress(
        total=3,
        queued=3,
        running=0,
        succeeded=0,
        failed=0,
        elapsed=1.0,
        refused_for=refused_for,
        refusal=refusal if refused_for is not None else None,
    )


def test_the_progress_says_the_relay_refuses_every_submit(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A notice after a minute, then at 2, 4, 8... minutes; a new streak starts over."""
    import io

    stream = io.StringIO()
    reporter = PlainReporter(stream, every=0)
    for seconds in (5.0, 59.0, 61.0, 100.0, 125.0, 130.0, None, 65.0):
        reporter(_progress(seconds))
    notes = [x for x in stream.getvalue().splitlines() if x.startswith("note:")]
    assert [
        "relay answers 'queue full' for every submit since 61 s",
        "relay answers 'queue full' for every submit since 2 min",
        "relay answers 'queue full' for every submit since 65 s",
    ] == [n.removeprefix("note: ").split(";")[0] for n in notes]
    assert "full 2 min" in stream.getvalue()  # in the progress line too


def test_the_notice_is_an_object_with_json() -> None:
    import io

    stream = io.StringIO()
    PlainReporter(stream, every=0, as_json=True)(_progress(130.0, "rate limited (HTTP 429)"))
    notice = json.loads(stream.getvalue().splitlines()[0])["notice"]
    assert ("refused", "rate limited (HTTP 429)", 130.0) == (
        notice["kind"],
        notice["refusal"],
        notice["seconds"],
    )
    assert "since 2 min" in notice["message"]


async def test_the_cli_says_why_it_stopped_submitting(serve: Serve, tmp_path: Path) -> None:
    """``quickmj batch --timeout 1`` against a relay that is always full: exit 1 (not every
    prompt succeeded), the prompts pending, a line saying why and how to go on."""
    app, arrivals = _hostile_relay(web.json_response(QUEUE_FULL))
    base = await serve(app)
    (tmp_path / "p.txt").write_text("a\nb\n", "utf-8")
    proc = await _cli(base, tmp_path, "--timeout", "1")
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    text = out.decode()
    assert 1 == proc.returncode
    assert "stopped submitting: the relay answered 'queue full' to every submit" in text
    assert "2 pending" in text and "--resume" in text
    assert arrivals


# ---- Timeouts.total: one call, one deadline ----


def test_timeouts_total_defaults_and_validation() -> None:
    assert 120.0 == Timeouts().total
    assert Timeouts(total=None).total is None
    for bad in (0, -1):
        with pytest.raises(ConfigurationError, match=r"Timeouts\.total"):
            Timeouts(total=bad)


async def _silent(request: Request) -> Response:
    await asyncio.sleep(3600)  # a relay that never finishes its answer
    raise AssertionError("unreachable")


async def test_a_read_ends_at_the_total_with_every_retry_counted() -> None:
    """Each attempt has its own 0.3 s; the call with its retries ends at 0.7 s."""
    calls: list[str] = []

    async def handle(request: Request) -> Response:
        calls.append(request.path)
        return await _silent(request)

    policy = RetryPolicy(max_attempts=10, backoff=0.05, jitter=0)
    timeouts = Timeouts(request=0.3, total=0.7)
    async with AsyncClient(
        unique_key(),
        base_url=BASE,
        transport=MockTransport(handle),
        retry=policy,
        timeouts=timeouts,
    ) as mj:
        with pytest.raises(RequestTimeoutError) as info:
            await mj.fetch("1")
    text = str(info.value)
    assert "Timeouts.total=0.7 s" in text
    assert 2 <= len(calls) <= 3  # not max_attempts=10: the total ended it
    assert f"({len(calls)} attempts" in text


async def test_the_total_never_cuts_a_call_short_of_one_attempt() -> None:
    """A request deadline raised above the total still gets its full time once."""
    calls: list[str] = []

    async def handle(request: Request) -> Response:
        calls.append(request.path)
        await asyncio.sleep(0.4)  # longer than total, within request
        return Response(200, json={"id": "1", "status": "SUCCESS"})

    timeouts = Timeouts(request=2.0, total=0.2)
    async with AsyncClient(
        unique_key(), base_url=BASE, transport=MockTransport(handle), timeouts=timeouts
    ) as mj:
        task = await mj.fetch("1")
    assert task.is_success and 1 == len(calls)


async def test_without_a_total_only_the_attempts_bound_a_read() -> None:
    calls: list[str] = []

    async def handle(request: Request) -> Response:
        calls.append(request.path)
        return await _silent(request)

    policy = RetryPolicy(max_attempts=3, backoff=0, jitter=0)
    async with AsyncClient(
        unique_key(),
        base_url=BASE,
        transport=MockTransport(handle),
        retry=policy,
        timeouts=Timeouts(request=0.1, total=None),
    ) as mj:
        with pytest.raises(RequestTimeoutError, match=r"within 0\.1 s"):
            await mj.fetch("1")
    assert 3 == len(calls)


async def test_a_retry_that_would_end_past_the_total_is_not_made() -> None:
    """A 429 asking for more time than is left ends the read at once, as a timeout."""
    script = Script({"GET /mj/task/1/fetch": {"status": 429, "headers": {"Retry-After": "5"}}})
    async with script.client(
        retry=RetryPolicy(max_attempts=5), timeouts=Timeouts(request=1, total=2)
    ) as mj:
        with pytest.raises(RequestTimeoutError, match=r"\(1 attempt; the last: RateLimitError\)"):
            await mj.fetch("1")
    assert 1 == script.count("GET /mj/task/1/fetch")


async def test_a_submit_keeps_its_own_error_at_the_total() -> None:
    """A submit whose connect retries meet the total ends with the ConnectError itself
    (nothing was sent), never a timeout that would read as an unknown outcome."""
    script = Script({"POST /mj/submit/imagine": ConnectError("refused", method="POST")})
    policy = RetryPolicy(max_attempts=10, backoff=0.2, jitter=0)
    async with script.client(retry=policy, timeouts=Timeouts(total=0.5)) as mj:
        with pytest.raises(ConnectError):
            await mj.imagine("a cat")
    assert 2 <= script.count("POST /mj/submit/imagine") <= 3


async def test_a_rate_limit_error_is_kept_for_submits_with_retry_submits() -> None:
    """With ``retry_submits``, a 429 past the total stays a RateLimitError (nothing was
    created), its hint already clamped."""
    script = Script({"POST /mj/submit/imagine": {"status": 429, "headers": {"Retry-After": "0"}}})
    policy = RetryPolicy(max_attempts=10, retry_submits=True)
    async with script.client(retry=policy, timeouts=Timeouts(total=0.5)) as mj:
        with pytest.raises(RateLimitError) as info:
            await mj.imagine("a cat")
    assert RETRY_AFTER_FLOOR == info.value.retry_after
    assert 1 == script.count("POST /mj/submit/imagine")
