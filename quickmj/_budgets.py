"""Budgets: how many jobs a relay account takes at once, learned from its answers.

A relay account runs a few jobs at once and keeps a few more waiting (midjourney-proxy's
``core-size`` 3 and ``queue-size`` 10); beyond that a submit is answered "queue full"
(code 23, TrueAI's code 9, new-api's HTTP 429). Those answers created nothing, so the
submit may be sent again, but only once the account has room. A *budget* per account and
speed mode counts the jobs alive and learns their limit; the gate that makes submits wait
for a slot of it is ``_admission.Admission``.

The model (see docs/throughput.md): a job holds one slot from the moment its submit is
sent until it is terminal. The relay's executor is ``C`` workers plus a queue of ``Q``;
a submit is refused exactly when ``Q`` jobs wait, which (workers never idle while a job
waits) is when ``C + Q`` jobs are alive. So one count, jobs alive, against one learned
limit, converging on ``C + Q``, is exact; a job moving from the queue to a worker
(IN_PROGRESS) changes nothing in that count, and no status has to be watched but the end.

How the limit is learned (AIMD with a remembered ceiling):

- it starts at ``AdmissionPolicy.initial_limit`` and grows by one per accepted submit
  (slow start) until the first refusal;
- a refusal (queue full, or a 429 without Retry-After) means the relay holds what we
  hold: the ceiling is the number of our other jobs alive, the limit drops to
  ``decrease`` times it, and the account pauses (a short growing backoff); refusals of
  submits sent before that drop do not drop it again. A 429 with Retry-After (a
  request-rate limiter) pauses the account that long and leaves the limit alone;
- but never below what the account has shown it holds (:func:`hold_floor`): the jobs
  of ours it accepted and that are still alive. A relay with no waiting place refuses
  every submit beyond its workers, so a drop to ``decrease`` x them would leave workers
  idle; held at them, nothing is sent before one of them ends, which is the pause. A
  refusal in a row (the account lost room to someone else) drops and pauses as above.
  Submits accepted after a drop raise the limit to the jobs alive, for the same reason;
- while a submit waits for a slot, the jobs holding slots are read around their
  expected ends (:meth:`Budget.expedite`, ``Poller.hurry``; the job lengths are learned
  per action and mode from the relay's timestamps, see ``_rhythm.JobLengths``): a slot
  is freed when its job ends, not up to a poll interval later;
- below the ceiling the limit regrows by ``1/limit`` per accepted submit sent with a full
  window, near it by ``probe_rate/limit``: it probes past the ceiling slowly, so a relay
  that grew is found and a steady one refuses rarely.

Only answers that created nothing are retried (``retry_submit``'s rule); a submit whose
outcome is unknown keeps its slot for about a job's lifetime, since the job may exist.
The limit learned for a key is remembered for the life of the process.
"""

from __future__ import annotations

import abc
import asyncio
import hashlib
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import attrs

from ._config import clamp_retry_after
from ._protocol import quota_exhausted
from .errors import (
    AuthenticationError,
    ConfigurationError,
    NoAvailableAccountError,
    SubmitRejectedError,
)

if TYPE_CHECKING:
    from ._poller import Poller

__all__ = (
    "AdmissionPolicy",
    "AdmissionSetting",
    "Budget",
    "BudgetFactory",
    "BudgetStats",
    "Lease",
    "LocalBudget",
    "LocalBudgets",
    "account_unusable",
    "budget_factory",
    "describe_budgets",
    "fingerprint",
    "grow",
    "hold_floor",
    "learned",
    "shrink",
)

logger = logging.getLogger("quickmj")

# AuthenticationError.reason -> what an account summary says (never the key).
_AUTH_WHY = {
    "exhausted": "the key has no quota left",
    "expired": "the key has expired",
    "disabled": "the key is disabled",
    "invalid": "the relay does not know the key",
    "model_forbidden": "the key may not use this action's model",
}


def fingerprint(api_key: str) -> str:
    """A short, non-secret name for a key (8 hex digits of a salted SHA-256).

    Files and logs name accounts by it; the key itself cannot be recovered from it.
    """
    return hashlib.sha256(f"quickmj-account:{api_key}".encode()).hexdigest()[:8]


def account_unusable(exc: BaseException) -> str | None:
    """Why ``exc`` takes an account out of rotation (401/403, no quota left), or None."""
    if isinstance(exc, AuthenticationError):
        # new-api says why (model/token.go): an exhausted key is valid but spent.
        why = _AUTH_WHY.get(exc.reason or "", "the relay refused the key")
        return f"{why} (HTTP {exc.status})"
    if isinstance(exc, NoAvailableAccountError):
        return None  # the relay's own accounts are busy: it passes, like a full queue
    if isinstance(exc, SubmitRejectedError) and quota_exhausted(exc):
        return f"the key has no quota left ({exc.description.strip()[:80]})"
    return None


@attrs.frozen
class AdmissionPolicy:
    """How a budget learns an account's limit (the guide: "Throughput and accounts").

    Args:
        initial_limit: jobs allowed before anything is learned (an account runs ~3).
        min_limit: the limit never drops below this.
        max_limit: nor grows above this.
        decrease: after a refusal the limit becomes this fraction of the jobs alive.
        probe_rate: growth per accepted submit near the ceiling, in ``1/limit`` units.
        backoff: first pause after a refusal without Retry-After (doubles per refusal
            in a row, with jitter).
        max_backoff: upper bound of a pause, Retry-After included.
    """

    initial_limit: int = 3
    min_limit: int = 1
    max_limit: int = 100
    decrease: float = 0.7
    probe_rate: float = 0.25
    backoff: float = 0.5
    max_backoff: float = 30.0

    def __attrs_post_init__(self) -> None:
        if not 1 <= self.min_limit <= self.initial_limit <= self.max_limit:
            raise ConfigurationError(
                "AdmissionPolicy needs 1 <= min_limit <= initial_limit <= max_limit"
            )
        if not 0 < self.decrease < 1 or not 0 < self.probe_rate <= 1:
            raise ConfigurationError("AdmissionPolicy.decrease and probe_rate must be in (0, 1)")
        if min(self.backoff, self.max_backoff) < 0:
            raise ConfigurationError("AdmissionPolicy times must be non-negative")


def _capacity(retry_after: float | None, rate_limited: bool) -> bool:
    """Whether a refusal says the account is full (shrink) or only "not so fast" (pause).

    Queue full is about jobs alive; so is a 429 without Retry-After (new-api's code 30,
    "saturated"). A 429 with Retry-After is a request-rate limiter naming its own pause:
    the window is not at fault, and shrinking it on every such answer would keep it far
    below the account's capacity.
    """
    return not (rate_limited and retry_after is not None)


def grow(limit: float, ceiling: float | None, slow_start: bool, policy: AdmissionPolicy) -> float:
    """The limit after an accepted submit that was sent with a full window.

    Returns:
        ``limit + 1`` in slow start, ``+ 1/limit`` below the ceiling (less one), else
        ``+ probe_rate/limit``; at most ``max_limit``.
    """
    if slow_start:
        step = 1.0
    elif ceiling is None or limit + 1 <= ceiling:
        step = 1.0 / limit
    else:
        step = policy.probe_rate / limit
    return min(float(policy.max_limit), limit + step)


def shrink(in_use: int, policy: AdmissionPolicy) -> float:
    """The limit after a refusal while ``in_use`` other jobs of ours were alive."""
    return max(float(policy.min_limit), policy.decrease * in_use)


def hold_floor(alive: int, in_use: int, strikes: int) -> float:
    """The least the limit drops to after a refusal: the jobs the account holds for us.

    ``alive`` of our jobs were accepted and have not ended (as far as the poller saw):
    the account has shown it holds that many, so a refusal means "no more than these",
    not "fewer" (a relay with no waiting place refuses every submit beyond its workers;
    dropping to ``decrease`` x them would leave workers idle until the limit regrew).
    Capped by ``in_use`` (the other jobs alive, submits on the wire included), and none
    after a refusal in a row (``strikes``, before this one): an account refusing again
    has less room than it showed (another user took some), and the plain decrease
    applies.
    """
    return 0.0 if strikes else float(min(alive, in_use))


@attrs.define
class BudgetStats:
    """Counters of one budget since it was made (for summaries and benchmarks)."""

    sent: int = 0
    """Submits sent with a slot of this budget."""
    accepted: int = 0
    """Submits that created a job."""
    queue_full: int = 0
    """Answered queue full (code 23, or 9 "queue full")."""
    rate_limited: int = 0
    """Answered HTTP 429."""
    unknown: int = 0
    """Submits whose outcome is unknown (the job may exist)."""
    rejected: int = 0
    """Other answers that created nothing (a banned prompt, a bad key, ...)."""


@attrs.define(eq=False)
class Lease:
    """One slot of a budget, from its submit until the job ends (or the slot is given back)."""

    budget: Budget
    epoch: int
    taken_at: float
    task_id: str | None = None
    """Set once the relay accepted the submit."""
    done: bool = False
    token: str | None = None
    """The shared store's name for it (RedisBudget)."""


# ---- budgets ----


class Budget(abc.ABC):
    """The jobs one account (in one speed mode) may have alive, and what it learned."""

    def __init__(self, label: str, policy: AdmissionPolicy, *, rotates: bool = False) -> None:
        self.label: str = label
        """The account's name (its key's fingerprint, ``/mode`` if one is set)."""
        self.policy: AdmissionPolicy = policy
        """How the limit is learned."""
        self.rotates: bool = rotates
        """Take the account out of rotation when it answers 401/403 or "no quota"."""
        self.stats: BudgetStats = BudgetStats()
        """What the budget's submits met since it was made."""
        self.disabled: str | None = None
        """Why the account is out of rotation (None while usable)."""
        self._listeners: list[Callable[[], None]] = []
        self._strikes = 0  # refusals in a row
        self._lifetime: float | None = None  # smoothed seconds from submit to end
        # Accepted jobs holding slots: lease -> (its poller, its id, when it was accepted).
        self._watched: dict[Lease, tuple[Poller, str, float]] = {}
        self._demand = 0  # gates waiting for a slot of this budget right now
        self._wanted_at = -math.inf  # when the last of them stopped waiting

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.label} limit={self.limit:.1f} held={self.held}>"

    # ---- what the gate reads ----

    @property
    @abc.abstractmethod
    def limit(self) -> float:
        """The learned limit: jobs this account may have alive."""

    @property
    @abc.abstractmethod
    def held(self) -> int:
        """Slots this process holds now."""

    def load(self) -> float:
        """How full the budget is (held / limit), for least-loaded-first routing."""
        return self.held / max(self.limit, 1.0)

    @abc.abstractmethod
    async def take(self) -> Lease | None:
        """A slot if one is free now, else None (never waits)."""

    @abc.abstractmethod
    def retry_at(self) -> float | None:
        """When a take may succeed though nothing changed here (a pause ends), or None."""

    # ---- feedback ----

    @abc.abstractmethod
    def accepted(self, lease: Lease, task_id: str) -> None:
        """The relay created the job: the slot stays taken until :meth:`release`."""

    @abc.abstractmethod
    def refused(self, lease: Lease, *, retry_after: float | None, rate_limited: bool) -> None:
        """Queue full or 429: nothing was created; shrink, pause and free the slot."""

    @abc.abstractmethod
    def release(self, lease: Lease) -> None:
        """Free the slot (the job ended, or the submit created nothing). Idempotent."""

    def rejected(self, lease: Lease, exc: BaseException) -> None:
        """Another answer that created nothing: free the slot (and rotate out, if due)."""
        self.stats.rejected += 1
        reason = account_unusable(exc)
        if reason is not None and self.rotates:
            self.disable(reason)
        self.release(lease)

    def unknown(self, lease: Lease) -> None:
        """The submit's outcome is unknown: the job may exist and take room on the relay,
        so its slot stays taken for as long as this budget's jobs have lived on average
        (freed at once before any was measured: a wrong guess costs one queue-full
        answer, which creates nothing; a long hold would stall a small budget)."""
        self.stats.unknown += 1
        if self._lifetime is None:
            self.release(lease)
            return
        asyncio.get_running_loop().call_later(self._lifetime, self.release, lease)

    # ---- slots refilled as jobs end ----

    def watch(self, lease: Lease, poller: Poller, task_id: str) -> None:
        """``lease``'s job is followed by ``poller``: while a submit waits for a slot,
        the poller reads it around its expected end (``Poller.hurry``)."""
        since = poller.now()
        self._watched[lease] = (poller, task_id, since)
        # Also the job of the submit that just got a slot (its wait ended a moment ago):
        # the last jobs of a batch are read as they end too.
        recently = time.monotonic() - self._wanted_at < (self._lifetime or 0.0)
        if self._demand or recently:
            poller.hurry(task_id, since)

    def unwatch(self, lease: Lease) -> None:
        self._watched.pop(lease, None)

    def expedite(self) -> None:
        """A submit waits for a slot: have the jobs holding them read as they end."""
        for poller, task_id, since in list(self._watched.values()):
            poller.hurry(task_id, since)

    def waiter_arrived(self) -> None:
        """A gate starts waiting for a slot of this budget (``Admission``): until it
        leaves, the jobs holding the slots are read as they end."""
        self._demand += 1
        self.expedite()

    def waiter_left(self, now: float) -> None:
        """That wait ended at ``now`` (``time.monotonic()``): jobs accepted within about a
        job's lifetime of it are still read as they end (see :meth:`watch`)."""
        self._demand -= 1
        self._wanted_at = now

    def disable(self, reason: str) -> None:
        """Take the account out of rotation (one warning)."""
        if self.disabled is None:
            self.disabled = reason
            logger.warning("account %s is out of rotation: %s", self.label, reason)
            self.notify()

    async def aclose(self) -> None:  # noqa: B027 - a hook, empty by default
        """Give back what the budget holds outside this process (nothing, here)."""

    # ---- shared plumbing ----

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` whenever a slot may have become free."""
        self._listeners.append(listener)

    def notify(self) -> None:
        for listener in list(self._listeners):
            listener()

    def _pause_for(self, retry_after: float | None) -> float:
        """Seconds to pause after a refusal: Retry-After, else a growing backoff."""
        policy = self.policy
        self._strikes += 1
        if retry_after is not None:  # kept within 1 s to 60 s: never a 0-second storm
            return clamp_retry_after(retry_after, policy.max_backoff)
        base = min(policy.backoff * 2.0 ** (self._strikes - 1), policy.max_backoff)
        return base * random.uniform(0.5, 1.0)

    def _ended(self, lease: Lease) -> None:
        """Count a job's lifetime (for how long an unknown outcome holds its slot)."""
        if lease.task_id is None:
            return
        seconds = time.monotonic() - lease.taken_at
        old = self._lifetime
        self._lifetime = seconds if old is None else 0.8 * old + 0.2 * seconds


#: What each (base URL, key fingerprint, mode) learned, for the life of the process.
_LEARNED: dict[tuple[str, str, str | None], tuple[float, float | None]] = {}
_LEARNED_LOCK = threading.Lock()


def learned(memory: tuple[str, str, str | None]) -> tuple[float, float | None] | None:
    """The (limit, ceiling) remembered for an account and mode, if any."""
    with _LEARNED_LOCK:
        return _LEARNED.get(memory)


class LocalBudget(Budget):
    """A budget kept in this process: the plain AIMD state (see the module docstring)."""

    def __init__(
        self,
        label: str,
        policy: AdmissionPolicy,
        *,
        memory: tuple[str, str, str | None] | None = None,
        rotates: bool = False,
    ) -> None:
        super().__init__(label, policy, rotates=rotates)
        self._memory = memory
        known = learned(memory) if memory is not None else None
        self._limit = float(policy.initial_limit) if known is None else known[0]
        self.ceiling: float | None = None if known is None else known[1]
        """Our jobs alive at the last refusal (None before one)."""
        self.slow_start: bool = known is None
        """Growing by one per accepted submit, until the first refusal."""
        self._held = 0
        self._alive = 0  # accepted jobs holding slots: the account holds them right now
        self.epoch: int = 0
        """Counts the drops: a refusal of a slot taken before the last drop is stale."""
        self.paused_until: float = 0.0
        """``time.monotonic()`` before which no slot is handed out."""
        self._timer: asyncio.TimerHandle | None = None

    @property
    def limit(self) -> float:
        return self._limit

    @property
    def held(self) -> int:
        return self._held

    async def take(self) -> Lease | None:
        now = time.monotonic()
        if self.disabled or now < self.paused_until or self._held >= int(self._limit):
            return None
        self._held += 1
        self.stats.sent += 1
        return Lease(self, self.epoch, now)

    def retry_at(self) -> float | None:
        return self.paused_until if self.paused_until > time.monotonic() else None

    def accepted(self, lease: Lease, task_id: str) -> None:
        lease.task_id = task_id
        self.stats.accepted += 1
        self._strikes = 0
        self._alive += 1
        if self._alive > self._limit:
            # Submits sent before a drop were accepted after it: the account has shown it
            # holds this many of our jobs, so the limit is at least that (``hold_floor``).
            self._limit = min(float(self._alive), float(self.policy.max_limit))
            self._remember()
        if self._held >= int(self._limit):  # sent with a full window: room to learn
            before = int(self._limit)
            self._limit = grow(self._limit, self.ceiling, self.slow_start, self.policy)
            self._remember()
            if int(self._limit) > before:
                self.notify()

    def refused(self, lease: Lease, *, retry_after: float | None, rate_limited: bool) -> None:
        if rate_limited:
            self.stats.rate_limited += 1
        else:
            self.stats.queue_full += 1
        held_back = False
        if _capacity(retry_after, rate_limited) and lease.epoch == self.epoch:
            # one drop per window, not one per refusal
            in_use = self._held - 1
            self.ceiling = float(max(in_use, self.policy.min_limit))
            low = max(shrink(in_use, self.policy), hold_floor(self._alive, in_use, self._strikes))
            self._limit = min(self._limit, low)
            self.slow_start = False
            self.epoch += 1
            self._remember()
            # Held at the jobs alive: nothing is sent before one of them ends, which is
            # the pause a full account needs (a refusal in a row pauses as before).
            held_back = self._limit >= in_use
        pause = self._pause_for(retry_after)
        if not held_back:
            self.paused_until = max(self.paused_until, time.monotonic() + pause)
            self._arm_timer()
        self.release(lease)

    def release(self, lease: Lease) -> None:
        if lease.done:
            return
        lease.done = True
        self._held -= 1
        if lease.task_id is not None:
            self._alive -= 1
        self._ended(lease)
        self.notify()

    def _arm_timer(self) -> None:
        """Wake the waiters when the pause ends."""
        if self._timer is not None:
            self._timer.cancel()
        delay = max(0.0, self.paused_until - time.monotonic())
        self._timer = asyncio.get_running_loop().call_later(delay, self.notify)

    def _remember(self) -> None:
        if self._memory is not None:
            with _LEARNED_LOCK:
                _LEARNED[self._memory] = (self._limit, self.ceiling)


@runtime_checkable
class BudgetFactory(Protocol):
    """Makes the budget of an account: where its slots live (this process, Redis, ...)."""

    def budget(
        self, *, account: str, base_url: str, mode: str | None, label: str, rotates: bool
    ) -> Budget:
        """The budget for one key (by fingerprint) on one relay, in one speed mode."""
        ...


@attrs.frozen
class LocalBudgets:
    """Budgets kept in this process (the default): ``AsyncClient(admission="adaptive")``."""

    policy: AdmissionPolicy = AdmissionPolicy()

    def budget(
        self, *, account: str, base_url: str, mode: str | None, label: str, rotates: bool
    ) -> Budget:
        """A :class:`LocalBudget` starting from what this process learned for the key."""
        return LocalBudget(label, self.policy, memory=(base_url, account, mode), rotates=rotates)


#: What ``AsyncClient(admission=...)`` takes.
AdmissionSetting = Literal["adaptive"] | AdmissionPolicy | BudgetFactory | None


def budget_factory(setting: AdmissionSetting) -> BudgetFactory | None:
    """The factory an ``admission=`` argument stands for (None: admission off)."""
    if setting is None:
        return None
    if setting == "adaptive":
        return LocalBudgets()
    if isinstance(setting, AdmissionPolicy):
        return LocalBudgets(setting)
    if isinstance(setting, BudgetFactory):
        return setting
    raise ConfigurationError(
        "admission must be None, 'adaptive', an AdmissionPolicy or a budget factory"
    )


def describe_budgets(budgets: Sequence[Budget]) -> list[dict[str, Any]]:
    """Per-budget counters and limits, as plain data (CLI JSON, benchmarks)."""
    return [
        {
            "account": b.label,
            **attrs.asdict(b.stats),
            "limit": round(b.limit, 2),
            "disabled": b.disabled,
        }
        for b in budgets
    ]
