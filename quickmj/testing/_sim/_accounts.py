"""Accounts: one per API key, each with its own worker slots, wait queue, quota and counters.

The servers run a bounded executor per (Discord) account: ``core-size`` jobs at once and
``queue-size`` waiting (novicezk ``DiscordInstanceImpl.submitTask``, TrueAI
``DiscordService.RedisEnqueue``). A submit answers code 1 when nothing waits *at that
moment* (even if every slot is busy), code 22 with ``numberOfQueues`` otherwise, and the
queue-full answer when ``queue-size`` jobs already wait. The simulator gives every API key
such an executor, so tests can exercise per-key limits.
"""

from __future__ import annotations

import collections
import heapq

import attrs

__all__ = ("Account", "Slot")


@attrs.frozen
class Slot:
    """When an activated job gets a worker, and how many waited ahead of it."""

    start: float
    ahead: int


class Account:
    """One key's scheduler and counters. Times are the simulator clock's monotonic seconds."""

    def __init__(
        self,
        key: str,
        *,
        concurrency: int | None,
        max_queue: int | None,
        quota: int | None,
        disabled: bool,
    ) -> None:
        self.key = key
        self.concurrency = concurrency
        self.max_queue = max_queue
        self.quota = quota
        self.disabled = disabled
        #: Jobs created for this key (what a quota counts).
        self.submitted = 0
        #: Submits refused for queue or quota limits.
        self.rejected = 0
        # Times at which each worker slot frees up (a min-heap), if limited.
        self._slots: list[float] = [0.0] * (concurrency or 0)
        # Start times of jobs still waiting for a slot, in order.
        self._waiting: collections.deque[float] = collections.deque()
        # End times of activated, unfinished jobs (a min-heap).
        self._ends: list[float] = []

    def __repr__(self) -> str:
        return (
            f"<Account {self.key!r} submitted={self.submitted} rejected={self.rejected}"
            f" quota={self.quota}>"
        )

    # ---- counts at a moment ----

    def waiting(self, now: float) -> int:
        """Jobs waiting for a slot (NOT_START)."""
        waiting = self._waiting
        while waiting and waiting[0] <= now:
            waiting.popleft()
        return len(waiting)

    def active(self, now: float) -> int:
        """Jobs activated and not finished (waiting or running)."""
        ends = self._ends
        while ends and ends[0] <= now:
            heapq.heappop(ends)
        return len(ends)

    def running_at(self, now: float) -> int:
        return self.active(now) - self.waiting(now)

    # ---- the executor ----

    def queue_full(self, now: float) -> bool:
        # With a waiting place or more, a job waits only while every worker is busy; with
        # none (max_queue 0) the test is the workers themselves.
        return (
            self.max_queue is not None
            and self.waiting(now) >= self.max_queue
            and not self._worker_free(now)
        )

    def _worker_free(self, now: float) -> bool:
        return not self.concurrency or self._slots[0] <= now

    def quota_left(self) -> int | None:
        return None if self.quota is None else max(0, self.quota - self.submitted)

    def take_slot(self, now: float) -> Slot:
        """Reserve the next free worker slot; call :meth:`finish_at` with the job's end."""
        ahead = self.waiting(now)
        start = now
        if self.concurrency:
            start = max(now, heapq.heappop(self._slots))
        if start > now:
            self._waiting.append(start)
        return Slot(start, ahead)

    def export(self, now: float) -> dict[str, object]:
        """The scheduler's state with times relative to ``now`` (for saving)."""
        return {
            "submitted": self.submitted,
            "rejected": self.rejected,
            "slots": [t - now for t in self._slots],
            "waiting": [t - now for t in self._waiting],
            "ends": [t - now for t in self._ends],
        }

    def restore(self, saved: dict[str, list[float] | int], now: float) -> None:
        """Undo :meth:`export` onto a fresh account (times relative to ``now``)."""
        submitted, rejected = saved["submitted"], saved["rejected"]
        assert isinstance(submitted, int) and isinstance(rejected, int)
        self.submitted, self.rejected = submitted, rejected

        def times(name: str) -> list[float]:
            value = saved[name]
            assert isinstance(value, list)
            return sorted(now + t for t in value)  # a sorted list is a valid heap

        if self.concurrency and saved["slots"]:
            self._slots = times("slots")
        self._waiting.extend(times("waiting"))
        self._ends = times("ends")

    def finish_at(self, end: float) -> None:
        if self.concurrency:
            heapq.heappush(self._slots, end)
        heapq.heappush(self._ends, end)


@attrs.define
class AccountView:
    """``sim.accounts[key]``: the counters of one key, read at the simulator's clock."""

    account: Account
    now: float

    @property
    def submitted(self) -> int:
        return self.account.submitted

    @property
    def rejected(self) -> int:
        return self.account.rejected

    @property
    def running(self) -> int:
        return self.account.running_at(self.now)

    @property
    def queued(self) -> int:
        return self.account.waiting(self.now)
