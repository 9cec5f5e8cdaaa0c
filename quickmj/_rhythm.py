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
half-way between two lattice points; any change seen in a window that holds no lattice
point contradicts the lattice, and the beat is forgotten (back to the plain interval)
until it is learned again. A relay without refresh lag (TrueAI, self-hosted proxies)
changes at arbitrary times and never locks.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections import OrderedDict
from typing import Protocol

__all__ = ("Rhythm",)

_MIN_WINDOWS = 3
_MAX_WINDOWS = 16
_MAX_PERIOD = 120.0
_PROBE_EVERY = 4  # periods
_GRID = 100  # periods tried on each side of the median gap, within +-10 %
_MARGIN = 0.25  # seconds after a lattice point (the relay's loop takes a moment)
_MARGIN_SHARE = 0.05  # ... but never more than this share of a (short) period


class _Policy(Protocol):
    """What Rhythm reads of a PollPolicy."""

    @property
    def interval(self) -> float: ...


class Rhythm:
    """The relay's refresh beat as learned so far (``period`` is None until locked)."""

    def __init__(self, policy: _Policy) -> None:
        self._base = policy.interval
        self._windows: OrderedDict[float, float] = OrderedDict()  # hi -> lo
        self._dirty = False
        self._period: float | None = None
        self._phase = 0.0  # a lattice point: refreshes happen at or just before phase + k*P

    @property
    def period(self) -> float | None:
        """The learned refresh period in seconds, or None (no beat, or not yet learned)."""
        if self._dirty:
            self._learn()
        return self._period

    def __repr__(self) -> str:
        if self.period is None:
            return "<Rhythm unlocked>"
        return f"<Rhythm period={self.period:.2f}s>"

    def saw_change(self, previous: float, at: float) -> None:
        """An entry asked at ``previous`` showed a real change at the round at ``at``."""
        if self._period is not None and not self._holds_point(previous, at):
            self.forget()  # a change between two refreshes: there is no such beat
        lo = self._windows.get(at)
        if lo is None:
            self._windows[at] = previous
            while len(self._windows) > _MAX_WINDOWS:
                self._windows.popitem(last=False)
            self._dirty = True
        elif previous > lo:
            self._windows[at] = previous  # the narrowest window of the round is the truth
            self._dirty = True

    def forget(self) -> None:
        """Drop what was learned (the beat broke): back to the plain delays."""
        self._windows.clear()
        self._period = None
        self._dirty = False

    def delay(self, now: float, base: float) -> float:
        """Seconds until the next useful check, given the plain ``base`` delay."""
        period = self.period
        if period is None:
            return base
        k = math.floor((now - self._phase) / period) + 1
        point = self._phase + k * period + min(_MARGIN, _MARGIN_SHARE * period)
        if point - now < 0.05:
            point += period
        if k % _PROBE_EVERY == 0:
            probe = point - period / 2
            if probe - now >= 0.05:
                point = probe
        return point - now

    def _holds_point(self, lo: float, hi: float) -> bool:
        """Does (lo, hi] hold a lattice point (with a little tolerance)?"""
        period = self._period
        assert period is not None
        tolerance = 0.05 * period
        k = math.ceil((lo - tolerance - self._phase) / period)
        return self._phase + k * period <= hi + tolerance

    def _learn(self) -> None:
        self._dirty = False
        windows = [(lo, hi) for hi, lo in self._windows.items()]  # oldest first
        self._period = None
        if len(windows) < _MIN_WINDOWS:
            return
        his = [hi for _, hi in windows]
        guess = statistics.median(b - a for a, b in itertools.pairwise(his))
        if not 3 * self._base <= guess <= _MAX_PERIOD:
            return
        best = _fit(windows, guess)
        if best is not None:
            self._period, self._phase = best


def _fit(windows: list[tuple[float, float]], guess: float) -> tuple[float, float] | None:
    """The period near ``guess`` whose lattice runs through every window most centrally,
    and its latest consistent phase; None if no period fits them all."""
    last = windows[-1][1]
    best: tuple[float, float, float] | None = None  # (slack, period, phase)
    for step in range(-_GRID, _GRID + 1):
        period = guess * (1 + 0.1 * step / _GRID)
        low, high = -math.inf, math.inf
        for lo, hi in windows:
            shift = round((hi - last) / period) * period
            low, high = max(low, lo - shift), min(high, hi - shift)
        if low < high and (best is None or high - low > best[0]):
            best = (high - low, period, high)
    return None if best is None else (best[1], best[2])
