"""The simulator's clock: a monotonic source plus an offset tests can push forward."""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ("Clock",)


class Clock:
    """Monotonic seconds for the lifecycle arithmetic, epoch milliseconds for the wire.

    Every timeline (queue, run, relay refresh ticks) is arithmetic on :meth:`now`, so
    :meth:`advance` moves all of them at once without sleeping. Listeners are told about
    every jump so that sleepers (notifyHook deliveries) can wake up early.
    """

    def __init__(
        self, source: Callable[[], float] = time.monotonic, epoch: float | None = None
    ) -> None:
        self._source = source
        self._offset = 0.0
        self.start: float = source()
        self._epoch0 = time.time() if epoch is None else epoch
        self._listeners: list[Callable[[], None]] = []

    def now(self) -> float:
        """Monotonic seconds, including every :meth:`advance`."""
        return self._source() + self._offset

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds`` (never backwards)."""
        if seconds < 0:
            raise ValueError("the clock only moves forward")
        self._offset += seconds
        for listener in list(self._listeners):
            listener()

    def on_advance(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after every :meth:`advance`."""
        self._listeners.append(listener)

    def epoch_ms(self, mono: float) -> int:
        """A monotonic time as epoch milliseconds (submitTime and friends)."""
        return int((self._epoch0 + (mono - self.start)) * 1000)

    def epoch_ns(self, mono: float) -> int:
        """A monotonic time as epoch nanoseconds."""
        return int((self._epoch0 + (mono - self.start)) * 1_000_000_000)

    @property
    def offset(self) -> float:
        """Seconds added by :meth:`advance` so far."""
        return self._offset
