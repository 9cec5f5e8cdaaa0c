"""Learning a relay's refresh beat, so the poller asks only when an answer can differ.

new-api (QuickRouter) serves task reads from its own database and refreshes that copy
from the upstream proxy in one loop every ~15 s. Polling every 2 s in between returns
the same data about seven times per refresh. When reports of tasks change only at times
that fit a lattice ``phase + k * period`` (and never between), the poller schedules its
checks just after the lattice points: one round per refresh instead of seven, and a
change is still seen at most ``margin`` after the round that follows it.

How it learns: each real change seen at a round at time ``hi``, for an entry last asked
at ``lo``, says "a refresh happened in (lo, hi]". With at least ``_MIN_WINDOWS`` such
windows whose spacing is a multiple of one period (>= 3 poll intervals) and whose
phases intersect, the beat is locked. Every few periods one extra "probe" round falls
half-way between two lattice points: a change seen there contradicts the lattice, and
the beat is forgotten (back to the plain interval) until it is learned again. A relay
without refresh lag (TrueAI, self-hosted proxies) changes at arbitrary times and never
locks.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections import OrderedDict
from typing import Protocol

__all__ = ("Rhythm",)

_MIN_WINDOWS = 4
_MAX_WINDOWS = 16
_MAX_PERIOD = 120.0
_PROBE_EVERY = 4  # periods
_MARGIN = 0.25  # seconds after a lattice point (the relay's loop takes a moment)


class _Policy(Protocol):
    @property
    def interval(self) -> float: ...


class Rhythm:
    """The relay's refresh beat as learned so far (``period`` is None until locked)."""

    def __init__(self, policy: _Policy) -> None:
        self._base = policy.interval
        self._windows: OrderedDict[float, float] = OrderedDict()  # hi -> lo
        self.period: float | None = None
        self._phase = 0.0  # a lattice point: refreshes happen at or just before phase + k*P

    def __repr__(self) -> str:
        if self.period is None:
            return "<Rhythm unlocked>"
        return f"<Rhythm period={self.period:.2f}s>"

    def saw_change(self, previous: float, at: float) -> None:
        """An entry asked at ``previous`` showed a real change at the round at ``at``."""
        lo = self._windows.get(at)
        if lo is None:
            self._learn()  # the previous round is complete: learn from it first
            self._windows[at] = previous
            while len(self._windows) > _MAX_WINDOWS:
                self._windows.popitem(last=False)
        elif previous > lo:
            self._windows[at] = previous  # the narrowest window of the round is the truth

    def round_done(self, at: float, changed_any: bool) -> None:
        """A chunk of the round at ``at`` was applied (``changed_any``: a real change)."""
        if changed_any and self.period is not None and self._is_probe(at):
            # A change half-way between lattice points: the lattice is wrong.
            self.forget()

    def forget(self) -> None:
        self._windows.clear()
        self.period = None

    def delay(self, now: float, base: float) -> float:
        """Seconds until the next useful check, given the plain ``base`` delay."""
        if self.period is None:
            return base
        period = self.period
        k = math.floor((now - self._phase) / period) + 1
        point = self._phase + k * period + _MARGIN
        if point - now < 0.05:
            point += period
        if k % _PROBE_EVERY == 0:
            probe = point - period / 2
            if probe - now >= 0.05:
                point = probe
        return point - now

    def _is_probe(self, at: float) -> bool:
        assert self.period is not None
        offset = (at - self._phase - _MARGIN) % self.period
        return abs(offset - self.period / 2) < self.period / 8

    def _learn(self) -> None:
        windows = list(self._windows.items())  # (hi, lo), oldest first
        if len(windows) < _MIN_WINDOWS:
            self.period = None
            return
        his = [hi for hi, _ in windows]
        gaps = [b - a for a, b in itertools.pairwise(his)]
        guess = statistics.median(gaps)
        if not 3 * self._base <= guess <= _MAX_PERIOD:
            self.period = None
            return
        span = his[-1] - his[0]
        period = span / max(1, round(span / guess))
        phase = _common_phase(windows, period, his[-1])
        if phase is None:
            self.period = None
            return
        self.period, self._phase = period, phase


def _common_phase(windows: list[tuple[float, float]], period: float, last: float) -> float | None:
    """The latest time t such that every window (lo, hi] holds t + k*period, or None."""
    tolerance = 0.05 * period
    low, high = -math.inf, math.inf
    for hi, lo in windows:
        shift = round((hi - last) / period) * period
        low = max(low, lo - shift - tolerance)
        high = min(high, hi - shift)
    return high if low < high else None
