"""The capped run's balance reads fit new-api's limit on ``/api/usage/token/`` (20 per
20 minutes per client IP), and come sooner after a read found the prices too low."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Awaitable, Callable

import pytest

from quickmj import Balance
from quickmj._spend import (
    WATCH_GAP,
    WATCH_READS,
    WATCH_SECONDS,
    WATCH_SUBMITS,
    WATCH_WINDOW,
    BalanceWatch,
    Ledger,
    PriceBook,
)


def balance(used_usd: float) -> Balance:
    return Balance(
        remaining=100 - used_usd,
        used=used_usd,
        granted=100,
        unit="USD",
        units_per_usd=1.0,
        remaining_usd=100 - used_usd,
        used_usd=used_usd,
        unlimited=False,
        expires_at=None,
        source="test",
    )


class Relay:
    """Each key's balance (the charge split evenly); ``rate`` USD per submit; every GET's
    time in ``gets``."""

    def __init__(self, ledger: Ledger, rate: float, keys: int, now: list[float]) -> None:
        self.ledger, self.rate, self.reads = ledger, rate, [0] * keys
        self.now, self.gets = now, list[float]()

    def reader(self, i: int) -> Callable[[], Awaitable[Balance]]:
        async def read() -> Balance:
            self.reads[i] += 1
            self.gets.append(self.now[0])
            return balance(self.ledger.sent_this_run * self.rate / len(self.reads))

        return read


async def run(
    rate: float, seconds: int, per_second: int = 10, keys: int = 2
) -> tuple[list[float], Relay]:
    """A run of ``per_second`` submits a second, each admission asking the watch."""
    now = [0.0]
    ledger = Ledger(PriceBook().with_prices({"imagine": 0.1}, "given"), Counter(), cap=1e9)
    relay = Relay(ledger, rate, keys, now)
    readers = [relay.reader(i) for i in range(keys)]
    watch = BalanceWatch(readers, ledger, clock=lambda: now[0])
    assert await watch.begin()
    times = [0.0]
    for _ in range(seconds):
        now[0] += 1.0
        for _ in range(per_second):
            ledger.commit(0, "imagine", None, "acct")
        before = sum(relay.reads)
        await watch.check()
        if sum(relay.reads) > before:
            times.append(now[0])
    return times, relay


@pytest.mark.parametrize("keys", [1, 2, 10])
async def test_reads_stay_within_new_apis_limit_per_window(keys: int) -> None:
    times, relay = await run(rate=0.1, seconds=3600, keys=keys)
    assert WATCH_READS <= 18  # room left of new-api's 20 for learning and the user
    gets = relay.gets
    for t in gets:  # every window of WATCH_WINDOW seconds: at most WATCH_READS GETs
        assert len([x for x in gets if t <= x < t + WATCH_WINDOW]) <= max(WATCH_READS, keys)
    assert len(gets) >= 3 * WATCH_READS - keys  # and it keeps reading, window after window
    assert min(relay.reads) >= 3  # every key in turn, even when not all fit at once
    assert len(times) >= 3  # (reads of every key, or some keys in turn)


async def test_calm_reads_are_spaced_and_a_surprise_brings_them_sooner() -> None:
    busy, _ = await run(rate=0.1, seconds=600)  # 10 submits a second: a read per gap
    calm, _ = await run(rate=0.1, seconds=600, per_second=1, keys=1)  # prices right
    surprised, _ = await run(rate=0.3, seconds=600, per_second=1, keys=1)  # 3x the prices
    for times in (busy, calm, surprised):
        assert min(b - a for a, b in itertools.pairwise(times)) >= WATCH_GAP
    # calm: every WATCH_SECONDS, or every WATCH_SUBMITS submits (one a second here)
    assert {b - a for a, b in itertools.pairwise(calm)} == {min(WATCH_SECONDS, WATCH_SUBMITS)}
    assert surprised[2] - surprised[1] == WATCH_GAP  # the first read found the surprise
    assert len(surprised) > len(calm)


async def test_a_quiet_run_reads_every_watch_seconds() -> None:
    now = [0.0]
    ledger = Ledger(PriceBook().with_prices({"imagine": 0.1}, "given"), Counter(), cap=1e9)
    relay = Relay(ledger, 0.1, 1, now)
    watch = BalanceWatch([relay.reader(0)], ledger, clock=lambda: now[0])
    assert await watch.begin()
    for _ in range(int(WATCH_SECONDS * 3)):  # one submit a second: no submit trigger
        now[0] += 1.0
        ledger.commit(0, "imagine", None, "acct")
        await watch.check()
    assert 1 + 3 == relay.reads[0]
