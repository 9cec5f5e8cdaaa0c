"""Learning a relay's refresh beat: the poller asks when an answer can differ."""

from __future__ import annotations

import random
from typing import Any

from quickmj import AsyncClient, PollPolicy
from quickmj._rhythm import JobLengths, Rhythm
from quickmj.testing import simulate


def _observe(rhythm: Rhythm, refreshes: list[float], interval: float, until: float) -> None:
    """Poll every ``interval``; report a change in every window holding a refresh."""
    previous = 0.0
    t = interval
    while t <= until:
        if any(previous < r <= t for r in refreshes):
            rhythm.saw_change(previous, t)
        previous = t
        t += interval


def test_a_regular_beat_is_learned() -> None:
    """Changes only every 15 s (phase 3 s): the period and the next check are learned."""
    rhythm = Rhythm(PollPolicy(interval=2.0))
    refreshes = [3.0 + 15 * k for k in range(8)]
    _observe(rhythm, refreshes, 2.0, 100.0)
    assert rhythm.period is not None
    assert abs(15.0 - rhythm.period) < 1.0
    # The next check comes right after the next refresh (108 s), not 2 s from now.
    delay = rhythm.delay(100.0, 2.0)
    assert 108.0 <= 100.0 + delay <= 111.0


def test_arbitrary_changes_never_lock() -> None:
    """A relay without refresh lag changes at random times: the plain interval stays."""
    rng = random.Random(1)
    rhythm = Rhythm(PollPolicy(interval=2.0))
    refreshes = sorted(rng.uniform(0, 300) for _ in range(40))
    _observe(rhythm, refreshes, 2.0, 300.0)
    assert rhythm.period is None
    assert 2.0 == rhythm.delay(300.0, 2.0)


def test_fast_changes_are_not_a_beat() -> None:
    """Changes every few seconds (closer than 3 poll intervals) are no refresh loop."""
    rhythm = Rhythm(PollPolicy(interval=2.0))
    _observe(rhythm, [1.0 + 4 * k for k in range(30)], 2.0, 120.0)
    assert rhythm.period is None


def test_a_change_off_the_beat_forgets_it() -> None:
    """Once locked, a change in a window that holds no refresh time drops the beat."""
    rhythm = Rhythm(PollPolicy(interval=2.0))
    _observe(rhythm, [3.0 + 15 * k for k in range(8)], 2.0, 100.0)
    assert rhythm.period is not None
    rhythm.saw_change(101.0, 103.0)  # refreshes are at 93 and 108: none in (101, 103]
    assert rhythm.period is None


async def test_the_poller_asks_less_on_a_refreshing_relay() -> None:
    """Against a relay refreshing every 0.25 s, the adaptive poller sends clearly fewer
    list requests than the fixed schedule for the same jobs, and still sees them end."""
    counts = {}
    for adaptive in (False, True):  # each run takes as long as a job: 1.5 s
        policy = PollPolicy(
            interval=0.025, first_poll=0.01, near_done_interval=0.025, adaptive=adaptive
        )
        async with (
            simulate(refresh_interval=0.25, run_seconds=1.5, queue_seconds=0.05) as relay,
            AsyncClient(
                relay.api_key, base_url=relay.base_url, dialect="quickrouter", poll=policy
            ) as mj,
        ):
            jobs = [await mj.imagine(f"p{i}") for i in range(5)]
            done = [t async for t in mj.as_completed(jobs, timeout=30)]
            assert 5 == len(done) and all(t.is_success for t in done)
            counts[adaptive] = mj.poller.stats["list_requests"]
    assert counts[True] < 0.75 * counts[False], counts


# ---- job lengths (the poller reads a job holding a slot around its expected end) ----


def _done(run_ms: int, wait_ms: int = 0, **extra: Any) -> dict[str, Any]:
    start = 10_000 + wait_ms
    times = {"submitTime": 10_000, "startTime": start, "finishTime": start + run_ms}
    return {"status": "SUCCESS", "action": "IMAGINE", **times, **extra}


def test_job_lengths_are_learned_from_the_relays_timestamps() -> None:
    """The median run of finished jobs per action and mode; failures and jobs without
    timestamps teach nothing; other kinds stay unknown."""
    lengths = JobLengths()
    for run in (40_000, 50_000, 45_000):
        lengths.saw_final(_done(run))
    lengths.saw_final({**_done(1_000), "status": "FAILURE"})
    lengths.saw_final({"status": "SUCCESS", "action": "IMAGINE"})
    lengths.saw_final(_done(9_000, action="UPSCALE"))
    lengths.saw_final(_done(90_000, prompt="a cat --relax"))
    assert 45.0 == lengths.run(("IMAGINE", None))
    assert 9.0 == lengths.run(("UPSCALE", None))
    assert 90.0 == lengths.run(("IMAGINE", "relax"))
    assert lengths.run(("BLEND", None)) is None


def test_the_expected_end_of_a_running_job() -> None:
    """Started: submit answered + (start - submit) on the relay's clock + the run. Queued:
    not before the read that showed it queued. Running without a start time: what the
    progress leaves. Nothing before a job of its kind finished, nor once it ended."""
    lengths = JobLengths()
    running = {"status": "IN_PROGRESS", "action": "IMAGINE", "progress": "50%"}
    assert lengths.expected_end(running, 100.0, 101.0) is None
    lengths.saw_final(_done(20_000, wait_ms=2_000))
    started = {**running, "submitTime": 5_000, "startTime": 8_000}
    assert (100.0 + 3.0 + 20.0, 1.0) == lengths.expected_end(started, 100.0, 101.0)
    queued = {"status": "SUBMITTED", "action": "IMAGINE"}
    assert (110.0 + 20.0, 1.0) == lengths.expected_end(queued, 100.0, 110.0)
    assert (101.0 + 10.0, 1.0) == lengths.expected_end(running, 100.0, 101.0)
    assert lengths.expected_end({**started, "status": "SUCCESS"}, 100.0, 101.0) is None
    assert lengths.expected_end(None, 100.0, None) is None
