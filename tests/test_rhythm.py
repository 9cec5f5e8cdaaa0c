"""Learning a relay's refresh beat: the poller asks when an answer can differ."""

from __future__ import annotations

import random

from quickmj import AsyncClient, PollPolicy
from quickmj._rhythm import Rhythm
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
    """Against a relay refreshing every 0.5 s, the adaptive poller sends clearly fewer
    list requests than the fixed schedule for the same jobs, and still sees them end."""
    counts = {}
    for adaptive in (False, True):
        policy = PollPolicy(
            interval=0.05, first_poll=0.01, near_done_interval=0.05, adaptive=adaptive
        )
        async with (
            simulate(refresh_interval=0.5, run_seconds=3.0, queue_seconds=0.1) as relay,
            AsyncClient(
                relay.api_key, base_url=relay.base_url, dialect="quickrouter", poll=policy
            ) as mj,
        ):
            jobs = [await mj.imagine(f"p{i}") for i in range(5)]
            done = [t async for t in mj.as_completed(jobs, timeout=30)]
            assert 5 == len(done) and all(t.is_success for t in done)
            counts[adaptive] = mj.poller.stats["list_requests"]
    assert counts[True] < 0.75 * counts[False], counts
