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

:class:`JobLengths` learns the other clock: how long a job runs, per action and speed
mode, from the relay's own timestamps of finished jobs (``finishTime - startTime`` and
``startTime - submitTime``, differences on the relay's clock, so the client's polling
lag never counts). When a submit waits for a slot of an account, the poller reads the
jobs holding that account's slots around their expected ends (``Poller.hurry``): a slot
is freed when its job ends, not up to a poll interval later. On a relay whose beat is
locked nothing is hurried (no answer can change before the next refresh, and the beat
already reads right after it).
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections import OrderedDict, deque
from collections.abc import Mapping
from typing import Any, Protocol

from ._protocol import TERMINAL_STATUSES, not_started, progress_of

__all__ = ("JobLengths", "Rhythm")

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


_KEPT = 15  # finished jobs remembered per kind (the median of these is the estimate)
_MAX_LENGTH = 3600.0  # seconds: a longer "run" is a broken timestamp, not a job
_GAP_SHARE = 0.05  # after an expected end: read again after this share of the run ...
_MIN_GAP = 0.1  # ... but at least this many seconds apart (doubling each time)
_MODE_FLAGS = ("--relax", "--fast", "--turbo")

#: (action, speed mode) of a job: what its length depends on.
Kind = tuple[str | None, str | None]


def _kind(raw: Mapping[str, Any]) -> Kind:
    action = raw.get("action")
    mode = raw.get("mode")  # TrueAI names it; elsewhere the prompt's flag says it
    if type(mode) is not str:
        prompt = raw.get("prompt")
        text = prompt.lower() if type(prompt) is str else ""
        mode = next((f[2:] for f in _MODE_FLAGS if f in text), None)
    return (action if type(action) is str else None, mode.lower() if mode else None)


def _ms(raw: Mapping[str, Any], name: str) -> int | None:
    value = raw.get(name)
    return value if type(value) is int and value > 0 else None


class JobLengths:
    """How long jobs take on one account, per action and speed mode (see the module
    docstring): the median of the last few finished jobs of each kind."""

    def __init__(self) -> None:
        self._runs: dict[Kind, deque[float]] = {}
        self._waits: dict[Kind, deque[float]] = {}

    def __repr__(self) -> str:
        runs = {k: self.run(k) for k in self._runs}
        return f"<JobLengths {runs}>"

    def saw_final(self, raw: Mapping[str, Any]) -> None:
        """Learn from a finished job (only a SUCCESS with the relay's three timestamps)."""
        if raw.get("status") != "SUCCESS":
            return  # a failure ends early (a banned prompt) or late (a timeout)
        submit, start, finish = (_ms(raw, n) for n in ("submitTime", "startTime", "finishTime"))
        if submit is None or start is None or finish is None or not submit <= start < finish:
            return
        run, wait = (finish - start) / 1000, (start - submit) / 1000
        if run > _MAX_LENGTH or wait > _MAX_LENGTH:
            return
        kind = _kind(raw)
        self._runs.setdefault(kind, deque(maxlen=_KEPT)).append(run)
        self._waits.setdefault(kind, deque(maxlen=_KEPT)).append(wait)

    def run(self, kind: Kind) -> float | None:
        """Seconds a job of ``kind`` runs once started (None: none seen yet)."""
        runs = self._runs.get(kind)
        return statistics.median(runs) if runs else None

    def expected_end(
        self, raw: Mapping[str, Any] | None, since: float, read_at: float | None
    ) -> tuple[float, float] | None:
        """When the job last reported as ``raw`` is expected to end, and how far apart
        to read it after that; None if there is nothing to expect.

        Args:
            raw: its latest report (None before the first read: its kind is unknown).
            since: when its submit was answered (the caller's clock).
            read_at: when ``raw`` was asked for (the same clock).
        """
        if raw is None or read_at is None or raw.get("status") in TERMINAL_STATUSES:
            return None
        kind = _kind(raw)
        run = self.run(kind)
        if run is None:
            return None
        gap = max(_MIN_GAP, _GAP_SHARE * run)
        submit, start = _ms(raw, "submitTime"), _ms(raw, "startTime")
        if submit is not None and start is not None and start >= submit:
            # Started: the relay's clock says how long after the submit (no clock offset).
            return since + (start - submit) / 1000 + run, gap
        if not_started(raw):
            waits = self._waits.get(kind)
            wait = statistics.median(waits) if waits else 0.0
            return max(since + wait, read_at) + run, gap
        # Running, with no start time: the progress says how much is left.
        return read_at + (1 - progress_of(raw) / 100) * run, gap
