"""The batch poller: one background loop per client tracks every awaited task.

Theory of operation
-------------------
Every task id someone waits on (``wait``, ``watch``, ``as_completed``, a job handle) has
one ``_Entry``, shared by all its listeners. The loop takes the entries that are due,
asks the relay for them with ``list-by-condition`` in chunks of ``batch_size`` (at most
``max_concurrent_batches`` requests in flight), and hands each answer to the entries.
N tracked tasks therefore cost ``ceil(N / batch_size)`` requests per round, never N.

Chunks run as independent tasks: a slow or failing chunk delays only its own ids (with
exponential backoff, honouring Retry-After), never the other chunks' cadence, and every
request has the client's deadline (``Timeouts.request``). Any error while handling one
id fails only that id's listeners; the loop itself survives every per-id or per-chunk
error, so no ``ExceptionGroup`` ever reaches a user.

Answers are matched by id (relays answer in any order, leave unknown ids out, truncate,
and after a modal new-api answers two rows for one id: the one that got further wins);
only ids that were asked for are accepted. An id still missing after ``miss_limit``
rounds is confirmed with one ``fetch``; only a confirmed unknown id fails.

Scheduling: ids subscribed one at a time are first checked after ``first_poll`` (a burst
of submits shares one batch); ids subscribed in bulk (a whole batch at once) are due at
once. Then running ids every ``interval`` (``near_done_interval`` near the end), unless
``_rhythm`` learned that the relay refreshes its copy of tasks on a slower beat. Due
times live in a heap, so adding n ids one at a time costs O(n log n), not O(n^2). With
nothing tracked the loop sleeps on an event: no idle traffic.

Waits that can never succeed end instead of polling on: when ``dead_end_after`` answers
in a row say the key is refused (401/403) or the task routes are not served (a wrong
``base_url``), every waiter of the client fails with that error; a task whose reports
stop changing for ``stall_after`` (``stall_after_queued`` while queued) fails its waiters
with TaskStalledError. A relay's Retry-After pauses the loop for at most
``max_error_backoff``.

Listeners receive updates and a final result (a terminal Task, a task waiting in MODAL
for ``modal()``, or an exception) through their own small queue. User callbacks run in the
listener's own task, never in the loop, so a slow callback cannot stall polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import anyio
import attrs

from ._config import clamp_retry_after
from ._converter import structure_task, unstructure
from ._models import Task, TaskStatus
from ._protocol import (
    QUEUED_STATUSES,
    TERMINAL_STATUSES,
    change_key,
    check_task_id,
    how_far,
    not_started,
    outage_error,
    progress_of,
    route_of,
)
from ._relay import Relay
from ._rhythm import JobLengths, Rhythm
from .errors import (
    AuthenticationError,
    ClientClosedError,
    ConfigurationError,
    HTTPStatusError,
    MalformedResponseError,
    QuickMJError,
    RateLimitError,
    RelayUnreachableError,
    TaskNotFoundError,
    TaskStalledError,
    TransportError,
    UnsupportedByRelayError,
)

__all__ = ("Final", "PollPolicy", "Poller", "Subscription")

logger = logging.getLogger("quickmj")

# MODAL after a queued read is news (see _moves_back): new-api hides a remix's code 21.
_BEFORE_MODAL = QUEUED_STATUSES | {"MODAL"}
_TASK_ROUTES = frozenset({"POST /task/list-by-condition", "GET /task/{id}/fetch"})
#: Failed reads in a row (besides ``unreachable_after``) before waits end on an outage.
_UNREACHABLE_READS = 3


@attrs.frozen
class PollPolicy:
    """How the poller schedules its batched status reads (seconds unless noted)."""

    interval: float = 2.0
    """Between two checks of a running task. Relays refresh upstream about every 15 s;
    polling much faster than a couple of seconds only burns requests."""
    first_poll: float = 0.5
    """Delay before an id subscribed on its own is first checked (a burst of submits shares
    one batch). Ids subscribed in bulk are checked at once."""
    near_done_interval: float = 1.0
    """Check interval once progress reaches ``near_done_percent``."""
    near_done_percent: int = 80
    """The progress (percent) from which ``near_done_interval`` applies."""
    batch_size: int = 100
    """Ids per list-by-condition request."""
    max_concurrent_batches: int = 4
    """list-by-condition requests in flight at once."""
    miss_limit: int = 3
    """Rounds an id may be missing from answers before one ``fetch`` confirms it."""
    modal_timeout: float = 0.0
    """How long a task may sit in MODAL before waiters are told it needs ``modal``. 0 (the
    default): on the first read that shows it (new-api rewrites code 21 to 1, so that read
    is the only sign). A task confirmed with ``modal()`` is never reported: its MODAL rows
    are stale news."""
    max_error_backoff: float = 60.0
    """Upper bound of the backoff after failing requests, and of a pause a relay asks for
    with Retry-After (however long it asks for)."""
    dead_end_after: int = 3
    """Consecutive answers that say the wait can never succeed (the key is refused: 401/403;
    the task routes are not served: a 404 or a web page) after which every waiter of the
    client fails with that error. Counted across chunks and rounds; a request counts only if
    it was sent after the previous such answer arrived (a burst of parallel chunks is one
    answer), and any successful read starts again."""
    dead_end_grace: float = 10.0
    """...and (with ``dead_end_after``) for at least this many seconds since the first of
    them: a gateway that answers a few challenge pages (a WAF's 403) or 404s while a relay
    restarts does not end every wait. With the defaults waits end about 14 s after the first
    such answer (the backoff between failed reads is 2, 4, 8 s)."""
    unreachable_after: float | None = 300.0
    """When every read for this long (and at least 3 reads in a row, a round's parallel
    chunks counting once) found the relay out of reach (a refused connect, a name that no
    longer resolves, only 5xx or timeouts: ``_protocol.outage_error``, the batch breaker's
    rule), every waiter of the client fails with RelayUnreachableError; the jobs may still
    run and keep their ids. Any answer of the relay's own starts again (a cut connection
    neither counts nor does). 5 min outlasts a relay's restart or a gateway's short 5xx
    spell (reads back off up to ``max_error_backoff`` meanwhile), yet ends a wait on a
    relay that is gone long before its timeout (1 h by default). None: never."""
    stall_after: float | None = 600.0
    """A task whose reports have not changed for this long while it runs (IN_PROGRESS) fails
    its waiters with TaskStalledError (the relay lost it). midjourney-proxy and TrueAI fail
    a running task themselves after 5 min (``timeout-minutes``); 10 min leaves room for a
    raised server timeout. None: never (also for queued tasks)."""
    stall_after_queued: float | None = 4500.0
    """``stall_after`` for a task still queued (status "", NOT_START, SUBMITTED; or MODAL after
    ``modal()``): a relax job can wait long. new-api fails unfinished tasks after 1 h,
    TrueAI queued ones after 60 min: 75 min. None: queued tasks never stall."""
    safety_net_interval: float = 30.0
    """With push updates (notifyHook), how often pushed ids are still polled as a safety
    net."""
    adaptive: bool = True
    """Learn the relay's refresh beat from identical answers and poll on it (new-api
    refreshes every ~15 s: polling every 2 s in between returns the same data)."""

    def __attrs_post_init__(self) -> None:
        sizes = (self.batch_size, self.max_concurrent_batches, self.miss_limit)
        if min(*sizes, self.dead_end_after) < 1:
            raise ConfigurationError("PollPolicy sizes must be at least 1")
        for name in ("stall_after", "stall_after_queued", "unreachable_after"):
            value = getattr(self, name)
            if value is not None and not value > 0:  # also refuses NaN
                raise ConfigurationError(f"PollPolicy.{name} must be positive or None")
        if min(self.interval, self.first_poll, self.near_done_interval, self.dead_end_grace) < 0:
            raise ConfigurationError("PollPolicy intervals must be non-negative")

    def due_after(self, task: Task | None) -> float:
        """Seconds until the next check of ``task`` (shorter near the end of a job)."""
        return self.delay_for(task.progress_percent if task is not None else None)

    def delay_for(self, percent: int | None) -> float:
        """Seconds until the next check of a task at ``percent`` progress."""
        if percent is not None and percent >= self.near_done_percent:
            return min(self.interval, self.near_done_interval)
        return self.interval

    def stall_allowance(
        self, raw: Mapping[str, Any], *, confirmed_modal: bool = False
    ) -> float | None:
        """How long a task reported as ``raw`` may go unchanged before it counts as stalled.

        ``stall_after_queued`` while it has not started (see ``_protocol.not_started``,
        IN_PROGRESS at 0 % included) or sits in MODAL after ``modal()``, ``stall_after``
        once it runs, None when it is finished or waits for the user in MODAL.
        """
        status = raw.get("status")
        if self.stall_after is None or status in TERMINAL_STATUSES:
            return None
        if status == "MODAL":
            # Waits for the user (see modal_timeout), or queues again after modal().
            return self.stall_after_queued if confirmed_modal else None
        return self.stall_after_queued if not_started(raw) else self.stall_after


class Final:
    """What a listener ends with: a task (terminal, or stuck in MODAL) or an error."""

    __slots__ = ("error", "task")

    def __init__(self, task: Task | None = None, error: BaseException | None = None) -> None:
        self.task: Task | None = task
        self.error: BaseException | None = error


Item = Task | tuple[str, Final]


class Subscription:
    """One listener on one or more task ids; created by ``Poller.subscribe``.

    Holds a small queue of its own (lighter than asyncio.Queue: thousands of waiters each
    have one, so containers are created only when first needed): items are Task updates
    (only if ``updates``) or ``(task_id, Final)``.
    """

    __slots__ = ("_finished", "_items", "_last", "_poller", "_waiter", "ids", "updates")

    def __init__(self, poller: Poller, ids: tuple[str, ...], updates: bool) -> None:
        self._poller = poller
        self.ids: tuple[str, ...] = ids
        self.updates: bool = updates
        self._items: deque[Item] | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._last: dict[str, Task] | None = None
        self._finished: set[str] | None = None

    def last(self, task_id: str) -> Task | None:
        """The latest state seen for ``task_id``, if any."""
        for item in reversed(self._items or ()):  # a final that came as the time ran out
            if type(item) is tuple and item[0] == task_id and item[1].task is not None:
                return item[1].task
        seen = self._last.get(task_id) if self._last else None
        return seen if seen is not None else self._poller.peek(task_id)

    def _put(self, item: Item) -> None:
        if self._items is None:
            self._items = deque()
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _remember(self, task: Task) -> None:
        if self._last is None:
            self._last = {}
        self._last[task.id] = task

    def push_update(self, task: Task) -> None:
        """Hand a new state of one of the ids to this listener (the poller calls it)."""
        self._remember(task)
        if self.updates:
            self._put(task)

    def push_final(self, task_id: str, final: Final) -> None:
        """Hand an id's final result to this listener, once (the poller calls it)."""
        if self._finished is None:
            self._finished = set()
        elif task_id in self._finished:
            return
        self._finished.add(task_id)
        self._put((task_id, final))  # not remembered: as_completed over 100k ids stays lean

    def ready(self) -> bool:
        """An item is waiting: ``next()`` returns without suspending."""
        return bool(self._items)

    def pop(self) -> Item:
        """The next queued item (call only when ``ready()``)."""
        assert self._items
        return self._items.popleft()

    async def next(self) -> Item:
        """The next update or final result, waiting for one if none is queued."""
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.popleft()

    def waiter(self) -> asyncio.Future[None]:
        """A Future resolved when the next item is queued (check ``ready()`` first).

        ``wait()`` awaits it directly instead of ``next()``: one coroutine frame less for
        each of many thousands of concurrent waiters.
        """
        waiter = self._waiter
        if waiter is None or waiter.done():
            waiter = self._waiter = asyncio.get_running_loop().create_future()
        return waiter

    def close(self) -> None:
        """Stop listening; entries nobody listens to any more are dropped."""
        self._poller.unsubscribe(self)


class _Entry:
    __slots__ = (
        "busy",
        "confirmed_modal",
        "delay",
        "error_count",
        "key",
        "last",
        "listeners",
        "misses",
        "modal_since",
        "next_due",
        "polled_at",
        "pushed_at",
        "raw",
        "since",
    )

    def __init__(self, due: float) -> None:
        self.listeners: list[Subscription] = []
        self.last: Task | None = None
        self.raw: Mapping[str, Any] | None = None  # the report ``last`` came from
        self.key: tuple[Any, ...] | None = None  # change_key() of the last applied state
        self.delay = 0.0  # next check after this many seconds while nothing changes
        self.misses = 0
        self.error_count = 0
        self.next_due = due
        self.busy = False  # in a chunk being read right now
        self.polled_at: float | None = None  # when the last answer for it was asked for
        self.modal_since: float | None = None
        self.pushed_at: float | None = None  # last notifyHook push: poll only as a safety net
        self.confirmed_modal = False  # modal() was sent: a MODAL row is stale news
        self.since: float | None = None  # when the relay's report last really changed


class Poller:
    """Tracks task ids and resolves their listeners; see the module docstring."""

    def __init__(
        self,
        relay: Relay,
        policy: PollPolicy,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._relay = relay
        self.policy = policy
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._heap: list[tuple[float, str]] = []  # (due, id); stale items are skipped
        self._wakeup = asyncio.Event()
        self._sleep_until = math.inf  # when the sleeping loop wakes by itself
        self._loop_task: asyncio.Task[None] | None = None
        self._closed = False
        self._global_pause_until = 0.0
        self._first_due = 0.0
        self._limiter: anyio.CapacityLimiter | None = None
        self._confirmed_modals: set[str] = set()
        # Answers that say no wait can succeed (see PollPolicy.dead_end_after).
        self._sent = 0  # requests sent so far (each gets the next number)
        self._dead_kind: type[QuickMJError] | None = None
        self._dead_count = 0
        self._dead_since = 0.0  # when the first answer of the current streak came
        self._dead_barrier = 0  # requests up to this number were sent before the last one
        # Reads that found the relay out of reach (see PollPolicy.unreachable_after).
        self._down_since: float | None = None  # when the first of the current streak failed
        self._down_reads = 0
        self._down_barrier = 0
        self.rhythm: Rhythm = Rhythm(policy)
        #: How long this account's jobs run (see ``hurry``).
        self.lengths: JobLengths = JobLengths()
        # Ids a submit waits on (their end frees a slot): id -> when its submit was answered.
        self._hurried: dict[str, float] = {}
        #: Called with each id's final result as it is handed out (job spans end there).
        self.on_final: Callable[[str, Final], None] | None = None
        #: Counters for benchmarks and tests.
        self.stats: dict[str, int] = {"ticks": 0, "list_requests": 0, "fetch_confirms": 0}

    @property
    def tracked(self) -> int:
        """How many task ids are tracked right now."""
        return len(self._entries)

    @property
    def running(self) -> bool:
        """The background loop is alive."""
        return self._loop_task is not None and not self._loop_task.done()

    # ---- listeners ----

    def subscribe(self, ids: Iterable[str], *, updates: bool = False) -> Subscription:
        """Track ``ids`` for a new listener (InvalidInputError for an unusable id)."""
        if self._closed:
            raise ClientClosedError("the client is closed")
        unique = tuple(dict.fromkeys(ids))
        for task_id in unique:
            check_task_id(task_id)  # a bad id fails its caller here, never the loop
        sub = Subscription(self, unique, updates)
        now = self._clock()
        due = now if len(unique) >= self.policy.batch_size else self._burst_due(now)
        entries = self._entries
        for task_id in unique:
            entry = entries.get(task_id)
            if entry is None:
                entry = entries[task_id] = _Entry(due)
                entry.confirmed_modal = task_id in self._confirmed_modals
                self._push(task_id, due)
            entry.listeners.append(sub)
            if updates and entry.raw is not None:
                known = self.peek(task_id)  # a late listener starts from the latest state
                if known is not None:
                    sub.push_update(known)
        self._ensure_loop()
        return sub

    def _burst_due(self, now: float) -> float:
        # A burst of ids subscribed one by one shares one first check, hence one batch.
        if not self._first_due or self._first_due < now:
            self._first_due = now + self.policy.first_poll
        return self._first_due

    def unsubscribe(self, sub: Subscription) -> None:
        """Stop tracking for ``sub``; ids nobody listens to any more are dropped."""
        for task_id in sub.ids:
            entry = self._entries.get(task_id)
            if entry is None:
                continue
            if sub in entry.listeners:
                entry.listeners.remove(sub)
            if not entry.listeners:
                del self._entries[task_id]
                self._hurried.pop(task_id, None)

    # ---- slots refilled as jobs end (see _rhythm.JobLengths) ----

    def now(self) -> float:
        """The poller's clock (``hurry``'s ``since``)."""
        return self._clock()

    def hurry(self, task_id: str, since: float) -> None:
        """A submit waits for the slot ``task_id`` holds: read it around its expected end
        (and a little apart after that) until it ends, as well as on the usual schedule.

        Args:
            task_id: a tracked id (others are ignored).
            since: when its submit was answered (``now()`` then).
        """
        entry = self._entries.get(task_id)
        if entry is None:
            return
        self._hurried.setdefault(task_id, since)
        if not entry.busy:
            now = self._clock()
            due = now + self._hurry_delay(task_id, entry, now, math.inf)
            if due < entry.next_due:
                self._reschedule(task_id, entry, due)

    def _hurry_delay(self, task_id: str, entry: _Entry, now: float, delay: float) -> float:
        """``delay``, or less if ``task_id`` is hurried and expected to end sooner."""
        since = self._hurried.get(task_id)
        if since is None or (self.policy.adaptive and self.rhythm.period is not None):
            return delay  # on a locked beat nothing can change before the next refresh
        read_at = entry.polled_at
        expected = self.lengths.expected_end(entry.raw, since, read_at)
        if expected is None:
            return delay
        end, gap = expected
        at = end  # read at the expected end; if it was read then, at end + gap, + 3 gap, ...
        if read_at is not None and read_at >= end:
            at = end + gap * (2 ** (math.floor(math.log2((read_at - end) / gap + 1)) + 1) - 1)
        return min(delay, max(0.0, at - now))

    def confirm_modal(self, task_id: str) -> None:
        """``modal()`` was sent for ``task_id``: a MODAL report of it is stale from now on."""
        self._confirmed_modals.add(task_id)
        entry = self._entries.get(task_id)
        if entry is not None:
            entry.confirmed_modal = True
            entry.modal_since = None

    def feed(self, task: Task, *, pushed: bool = True, verify: bool = False) -> bool:
        """Apply a task state that arrived from elsewhere (a notifyHook).

        Returns False when nobody tracks the id. While pushes keep coming, a pushed id is
        polled only every ``safety_net_interval``; once they stop for that long, normal
        polling resumes by itself. With ``verify``, a pushed terminal state is not
        believed: the id is polled at once and the relay's own answer decides.
        """
        entry = self._entries.get(task.id)
        if entry is None:
            return False
        now = self._clock()
        if verify and task.status.is_terminal:
            # No push follows a real final one: if the read still shows the job running
            # (a gateway's lagging copy, or a forged push), normal polling takes over.
            entry.pushed_at = None
            self._reschedule(task.id, entry, now)
            return True
        raw = task.raw or unstructure(task)
        self._apply(task.id, entry, raw, now, task)
        if pushed and task.id in self._entries:
            # Even a stale push proves hooks flow: poll this id only as a safety net.
            entry.pushed_at = now
            self._schedule(task.id, entry, now)
        return True

    # ---- loop ----

    def _ensure_loop(self) -> None:
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.get_running_loop().create_task(
                self._run(), name="quickmj-poller"
            )

    def _push(self, task_id: str, due: float) -> None:
        heapq.heappush(self._heap, (due, task_id))
        if due < self._sleep_until:
            self._wakeup.set()  # only when it is sooner than the loop's own alarm

    async def aclose(self) -> None:
        """Stop the loop; fail every remaining listener with ClientClosedError."""
        self._closed = True
        task, self._loop_task = self._loop_task, None
        if task is not None:
            with anyio.CancelScope(shield=True):
                # On Python < 3.11 a cancel that lands as an anyio timeout fires can be
                # absorbed by that scope: keep cancelling until the loop really ended.
                while not task.done():
                    task.cancel()
                    self._wakeup.set()
                    await asyncio.wait({task}, timeout=0.1)
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    task.result()
        self._fail_all(ClientClosedError("the client was closed while waiting for the task"))

    def _fail_all(self, error: BaseException) -> None:
        entries, self._entries = self._entries, {}
        for task_id, entry in entries.items():
            for sub in entry.listeners:
                sub.push_final(task_id, Final(error=error))

    async def _run(self) -> None:
        self._limiter = anyio.CapacityLimiter(self.policy.max_concurrent_batches)
        try:
            async with anyio.create_task_group() as chunks:
                while not self._closed:
                    await self._turn(chunks)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # a bug must not leave waiters hanging forever
            logger.exception("quickmj poller stopped unexpectedly")
            self._fail_all(_leaf(exc))  # the error itself: never anyio's ExceptionGroup
            raise

    async def _turn(self, chunks: anyio.abc.TaskGroup) -> None:
        """One turn of the loop: sleep until something is due, then launch its chunks."""
        now = self._clock()
        start = max(self._earliest(), self._global_pause_until)
        if start > now:
            self._sleep_until = start
            self._wakeup.clear()
            with anyio.move_on_after(start - now if start < math.inf else math.inf):
                await self._wakeup.wait()
            self._sleep_until = math.inf
            return
        due = self._take_due(now + self.policy.interval / 4)
        if not due:
            return
        self.stats["ticks"] += 1
        size = self.policy.batch_size
        for i in range(0, len(due), size):
            # Numbered as launched: chunks of one round count as one answer (_dead_end).
            chunks.start_soon(self._poll_chunk, due[i : i + size], now, self._send_number())

    def _earliest(self) -> float:
        """The earliest due time of an idle entry (stale heap items are dropped)."""
        heap, entries = self._heap, self._entries
        while heap:
            due, task_id = heap[0]
            entry = entries.get(task_id)
            if entry is not None and not entry.busy and entry.next_due == due:
                return due
            heapq.heappop(heap)
        return math.inf

    def _take_due(self, horizon: float) -> list[str]:
        """Ids due by ``horizon`` (everything due soon shares this round's batches)."""
        heap, entries = self._heap, self._entries
        due: list[str] = []
        while heap and heap[0][0] <= horizon:
            when, task_id = heapq.heappop(heap)
            entry = entries.get(task_id)
            if entry is None or entry.busy or entry.next_due != when:
                continue  # gone, in flight, or rescheduled since
            entry.busy = True
            due.append(task_id)
        return due

    async def _poll_chunk(self, ids: list[str], started: float, seq: int) -> None:
        # Next checks are scheduled from the round's start, not from when each answer
        # came back, so ids polled together stay together in the next round's batches.
        assert self._limiter is not None
        async with self._limiter:
            try:
                self.stats["list_requests"] += 1
                rows = await self._relay.read_many(ids)
            except Exception as exc:  # the loop outlives any chunk's failure
                self._release(ids)
                self._chunk_failed(ids, exc, seq)
                return
            self._answered()
            self._release(ids)
            missing = self._apply_rows(ids, rows, started)
            for task_id in missing:
                await self._missed(task_id)

    def _release(self, ids: list[str]) -> None:
        entries = self._entries
        for task_id in ids:
            entry = entries.get(task_id)
            if entry is not None:
                entry.busy = False

    def _apply_rows(self, ids: list[str], rows: Mapping[str, Any], started: float) -> list[str]:
        """Hand a chunk's answer to its entries; returns the ids the answer left out."""
        entries = self._entries
        missing: list[str] = []
        for task_id in ids:
            entry = entries.get(task_id)
            if entry is None:
                continue
            raw = rows.get(task_id)
            if raw is None:
                missing.append(task_id)
                continue
            entry.error_count = entry.misses = 0
            previous, entry.polled_at = entry.polled_at, started
            try:
                changed = self._apply(task_id, entry, raw, started)
            except Exception as exc:  # one task's trouble stays with that task
                logger.warning("quickmj: task %s could not be handled: %r", task_id, exc)
                self._finish(task_id, Final(error=_as_quickmj(exc, task_id)))
                continue
            if changed and previous is not None:
                self.rhythm.saw_change(previous, started)
        return missing

    def _send_number(self) -> int:
        self._sent += 1
        return self._sent

    def _answered(self) -> None:
        """A read succeeded: the key works and the routes are served."""
        self._dead_kind, self._dead_count = None, 0
        self._down_since, self._down_reads = None, 0

    def _dead_end(self, exc: Exception, seq: int) -> bool:
        """Count an answer that says no wait can succeed; True once every waiter failed.

        Other errors (timeouts, 5xx) neither count nor break the streak: only a
        successful read does. A request sent before the previous such answer arrived
        is part of the same burst and does not count again.
        """
        kind = _dead_kind(exc)
        if kind is None or seq <= self._dead_barrier:
            return False
        self._dead_barrier = self._sent
        now, policy = self._clock(), self.policy
        if kind is not self._dead_kind:
            self._dead_kind, self._dead_count, self._dead_since = kind, 0, now
        self._dead_count += 1
        if self._dead_count == 1:
            logger.warning(
                "quickmj: %s (waits end if %d answers in a row over %g s say so)",
                exc,
                policy.dead_end_after,
                policy.dead_end_grace,
            )
        if (
            self._dead_count < policy.dead_end_after
            or now - self._dead_since < policy.dead_end_grace
        ):
            return False
        error = _dead_error(exc)
        for task_id in list(self._entries):
            self._finish(task_id, Final(error=error))
        return True

    def _unreachable(self, exc: QuickMJError, seq: int) -> bool:
        """Count a read that found the relay out of reach; True once every waiter failed
        (``PollPolicy.unreachable_after``). Any answer of the relay's own starts again; a
        cut connection is no answer, yet the batch breaker's rule does not count it
        either: it neither counts nor starts again. A request sent before the last
        counted failure arrived is part of the same burst and does not count again.
        Waits begun after the others ended get a whole window of their own."""
        after = self.policy.unreachable_after
        if not outage_error(exc):
            if not isinstance(exc, TransportError):
                self._down_since, self._down_reads = None, 0
            return False
        if after is None or seq <= self._down_barrier:
            return False
        self._down_barrier = self._sent
        now = self._clock()
        if self._down_since is None:
            self._down_since = now
        self._down_reads += 1
        down_for = now - self._down_since
        if self._down_reads < _UNREACHABLE_READS or down_for < after or not self._entries:
            return False
        error = _unreachable_error(tuple(self._entries), down_for, self._down_reads, exc)
        self._down_since, self._down_reads = None, 0
        logger.warning("quickmj: %s", error)
        for task_id in list(self._entries):
            self._finish(task_id, Final(error=error))
        return True

    def _chunk_failed(self, ids: list[str], exc: Exception, seq: int) -> None:
        now = self._clock()
        if not isinstance(exc, QuickMJError):
            logger.error("quickmj: a poll request failed unexpectedly: %r", exc)
        elif self._dead_end(exc, seq) or self._unreachable(exc, seq):
            return
        retry_after = exc.retry_after if isinstance(exc, RateLimitError) else None
        if retry_after is not None:
            # However long (or short) a hostile or broken relay asks for: the one rule.
            retry_after = clamp_retry_after(retry_after, self.policy.max_error_backoff)
            # The relay asked everyone to slow down, not just this chunk.
            self._global_pause_until = max(self._global_pause_until, now + retry_after)
        for task_id in ids:
            entry = self._entries.get(task_id)
            if entry is None:
                continue
            entry.error_count += 1
            backoff = min(
                self.policy.interval * 2 ** (entry.error_count - 1), self.policy.max_error_backoff
            )
            entry.next_due = now + max(backoff, retry_after or 0.0)
            self._push(task_id, entry.next_due)
        logger.debug("poll batch of %d ids failed (%s); backing off", len(ids), exc)

    async def _missed(self, task_id: str) -> None:
        entry = self._entries.get(task_id)
        if entry is None:
            return
        entry.misses += 1
        now = self._clock()
        if entry.misses < self.policy.miss_limit:
            entry.next_due = now + self.policy.interval
            self._push(task_id, entry.next_due)
            return
        # Confirm with a single fetch (which checks the answer is this id) first.
        self.stats["fetch_confirms"] += 1
        entry.busy = True
        seq = self._send_number()
        try:
            task = await self._relay.fetch(task_id)
        except (TaskNotFoundError, MalformedResponseError) as exc:
            # Unknown, or the relay answered with another task: only this id's waiters
            # hear of it (a stranger's state is never handed to them).
            if isinstance(exc, MalformedResponseError):
                logger.warning("quickmj: confirming task %s: %s", task_id, exc)
            self._finish(task_id, Final(error=exc))
            return
        except Exception as exc:
            entry.busy = False
            self._chunk_failed([task_id], exc, seq)
            return
        self._answered()
        entry.busy = False
        if task_id in self._entries:
            entry.misses = 0
            self._apply(task_id, entry, task.raw or unstructure(task), self._clock(), task)

    def _apply(
        self, task_id: str, entry: _Entry, raw: Any, now: float, task: Task | None = None
    ) -> bool:
        """Apply one report of a task; True if it was a real change.

        A state is structured into a Task only when someone needs one: a listener that
        asked for updates, or a final state. Running states nobody watches stay raw (a
        waiter that times out gets its last state structured then, see ``peek``).
        """
        first = entry.raw is None and task is None
        if first and raw.get("status") in TERMINAL_STATUSES and not self._watched(entry):
            return self._first_final(task_id, raw)
        key = change_key(raw)
        if key == entry.key and entry.modal_since is None:
            self._unchanged(task_id, entry, now)  # nothing to parse or tell
            return False
        if entry.raw is not None and self._moves_back(entry, raw):
            self._unchanged(task_id, entry, now)  # late or duplicated news never moves back
            return False
        changed = key != entry.key
        if changed:
            entry.since = now
        status = raw.get("status")
        final = status in TERMINAL_STATUSES
        watched = changed and self._watched(entry)
        if task is None and not changed:
            task = entry.last  # the same state (a MODAL that waits): listeners saw it already
        if task is None and (final or watched or status == "MODAL"):
            task = self._structured(task_id, raw)
            if task is None:
                return False
        entry.last, entry.key, entry.raw = task, key, raw
        if watched and task is not None:
            for sub in list(entry.listeners):
                sub.push_update(task)
        if task is not None and (task.status.is_terminal or self._modal_due(entry, task, now)):
            self._finish(task_id, Final(task=task))
            return changed
        if task is None or task.status is not TaskStatus.MODAL:
            entry.modal_since = None
        entry.delay = self.policy.delay_for(progress_of(raw))
        self._schedule(task_id, entry, now)
        return changed

    def _moves_back(self, entry: _Entry, raw: Any) -> bool:
        """``raw`` is older news than the entry's state (IN_PROGRESS after SUCCESS, new-api's
        stale MODAL row after ``modal()``)? A MODAL after a queued state is news, not a
        step back, for a task not confirmed with ``modal()``: new-api shows a remix job as
        queued until its first refresh brings the MODAL the rewritten code 21 hid."""
        assert entry.raw is not None
        if (
            raw.get("status") == "MODAL"
            and not entry.confirmed_modal
            and entry.raw.get("status") in _BEFORE_MODAL
        ):
            return False
        return _is_regression(entry.raw, raw)

    def _unchanged(self, task_id: str, entry: _Entry, now: float) -> None:
        """The report says what the last one said: schedule the next check, unless the
        task has said the same for longer than its stall allowance."""
        raw = entry.raw if entry.raw is not None else {}
        allowance = self.policy.stall_allowance(raw, confirmed_modal=entry.confirmed_modal)
        since = entry.since
        if allowance is None or since is None or now - since < allowance:
            self._schedule(task_id, entry, now)
            return
        error = TaskStalledError(task_id, now - since, self.peek(task_id), allowance=allowance)
        logger.warning("quickmj: %s", error)
        self._finish(task_id, Final(error=error))

    @staticmethod
    def _watched(entry: _Entry) -> bool:
        return any(sub.updates for sub in entry.listeners)

    def _first_final(self, task_id: str, raw: Any) -> bool:
        """The first report of an id is already final (as_completed over old jobs): there
        is nothing to compare it with and nobody to tell about the way there."""
        task = self._structured(task_id, raw)
        if task is None:
            return False
        self._finish(task_id, Final(task=task))
        return True

    def _structured(self, task_id: str, raw: Any) -> Task | None:
        """The Task for ``raw``; None once the id's waiters got the shape error instead."""
        try:
            return structure_task(raw, task_id)
        except MalformedResponseError as exc:
            self._finish(task_id, Final(error=exc))
            return None

    def peek(self, task_id: str) -> Task | None:
        """The latest state of a tracked id, structured now if it was kept raw."""
        entry = self._entries.get(task_id)
        if entry is None or entry.raw is None:
            return None
        if entry.last is None:
            try:
                entry.last = structure_task(dict(entry.raw), task_id)
            except MalformedResponseError:
                return None
        return entry.last

    def _modal_due(self, entry: _Entry, task: Task, now: float) -> bool:
        """A task waiting in MODAL (not one we confirmed) for ``modal_timeout``."""
        if task.status is not TaskStatus.MODAL or entry.confirmed_modal:
            entry.modal_since = None
            return False
        if entry.modal_since is None:
            entry.modal_since = now
            return self.policy.modal_timeout <= 0
        return now - entry.modal_since >= self.policy.modal_timeout

    def _schedule(self, task_id: str, entry: _Entry, now: float) -> None:
        delay = entry.delay
        if entry.pushed_at is not None:
            # Pushes arrive: only a safety-net poll, counted from the last push. When they
            # stop for a whole safety-net interval, fall back to normal polling.
            quiet_for = now - entry.pushed_at
            if quiet_for < self.policy.safety_net_interval:
                delay = max(delay, self.policy.safety_net_interval - quiet_for)
            else:
                entry.pushed_at = None
        elif self.policy.adaptive:
            delay = self.rhythm.delay(now, delay)
        if self._hurried:
            delay = self._hurry_delay(task_id, entry, now, delay)
        if entry.modal_since is not None:
            delay = min(delay, max(self.policy.modal_timeout - (now - entry.modal_since), 0.0))
        self._reschedule(task_id, entry, now + delay)

    def _reschedule(self, task_id: str, entry: _Entry, due: float) -> None:
        entry.next_due = due
        self._push(task_id, due)

    def _finish(self, task_id: str, final: Final) -> None:
        entry = self._entries.pop(task_id, None)
        if entry is None:
            return
        # Jobs are timed only where it is used (jobs holding slots): no cost elsewhere.
        if self._hurried.pop(task_id, None) is not None and final.task is not None:
            self.lengths.saw_final(final.task.raw)
        for sub in entry.listeners:
            sub.push_final(task_id, final)
        if self.on_final is not None:
            try:
                self.on_final(task_id, final)
            except Exception:  # an observer never breaks the loop
                logger.exception("quickmj: on_final failed for task %s", task_id)


def _is_regression(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """True if ``new`` is older news than ``old`` (e.g. IN_PROGRESS after SUCCESS)."""
    return how_far(new) < how_far(old)


def _dead_kind(exc: Exception) -> type[QuickMJError] | None:
    """The kind of answer that says no wait of this client can succeed, or None."""
    if isinstance(exc, AuthenticationError):
        return AuthenticationError  # the key is refused (disabled, expired, no quota)
    if isinstance(exc, UnsupportedByRelayError) and exc.route in _TASK_ROUTES:
        return UnsupportedByRelayError  # an HTML 404, a web app: a wrong base_url
    if (
        isinstance(exc, HTTPStatusError)
        and 300 <= exc.status < 400
        and route_of(exc.path) in _TASK_ROUTES
    ):
        return HTTPStatusError  # a redirect (never followed): http for https, a login page
    return None


def _dead_error(exc: Exception) -> QuickMJError:
    """What the waiters get: the relay's refusal as it came, or a route error that says
    what the user can do about it."""
    if not isinstance(exc, UnsupportedByRelayError):
        assert isinstance(exc, QuickMJError)
        return exc
    how = "a web page" if exc.status < 300 else f"HTTP {exc.status}"
    return exc.reworded(
        f"the relay does not serve the task routes ({exc.route} answered {how}), so no "
        "wait can end: check base_url; it must be the relay's root address, where it "
        "serves /mj/task/..."
    )


def _unreachable_error(
    ids: tuple[str, ...], down_for: float, reads: int, last: QuickMJError
) -> RelayUnreachableError:
    """What the waiters get when no read reached the relay for ``unreachable_after``."""
    head = ", ".join(ids[:10]) + (f", ... ({len(ids)} in all)" if len(ids) > 10 else "")
    jobs = "job may still be running; its id is"
    if len(ids) > 1:
        jobs = "jobs may still be running; their ids are"
    error = RelayUnreachableError(
        f"relay unreachable: every read failed for {down_for:.0f} s ({reads} in a row; "
        f"last: {type(last).__name__}: {last}); the {jobs} kept ({head}): wait again "
        "once the relay answers",
        task_ids=ids,
    )
    error.__cause__ = last
    return error


def _leaf(exc: BaseException) -> BaseException:
    """The first error inside (nested) exception groups: the loop's task group wraps a
    crash of the loop itself in one."""
    inner = getattr(exc, "exceptions", None)
    while inner:
        exc = inner[0]
        inner = getattr(exc, "exceptions", None)
    return exc


def _as_quickmj(exc: Exception, task_id: str) -> QuickMJError:
    if isinstance(exc, QuickMJError):
        return exc
    return MalformedResponseError(f"task {task_id}: {type(exc).__name__}: {exc}")
