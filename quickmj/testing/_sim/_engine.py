"""The job engine every dialect shares: ids, accounts, creation, activation, result texts.

Dialects decide *whether* to create a job and how to answer; the engine owns the jobs,
the per-key executors and the seeded random streams, so the same seed and the same
requests give the same ids, hashes, failures and list orders whatever the dialect.
"""

from __future__ import annotations

import hashlib
import math
import random
import uuid
from collections.abc import Callable
from typing import Any, NamedTuple

from ._accounts import Account, Slot
from ._catalogue import Result
from ._clock import Clock
from ._config import SimulatorConfig
from ._faults import Fault, FaultInjector
from ._state import Phase, SimTask, Timeline

__all__ = ("CreatedJob", "Engine")

#: Discord's epoch (2015-01-01), for snowflake-looking ids.
_DISCORD_EPOCH_MS = 1_420_070_400_000

_WORDS = (
    "a watercolor fox",
    "soft morning light",
    "isometric city",
    "cinematic lighting",
    "pastel palette",
    "highly detailed",
    "studio ghibli style",
    "minimalist poster",
    "volumetric fog",
    "golden hour",
    "retro futurism",
    "ink sketch",
)


class CreatedJob(NamedTuple):
    """A job the simulator actually created."""

    endpoint: str  # "/submit/imagine", "/submit/action", ...
    prompt: str  # the prompt (imagine, blend, ...), the customId (action) or the content
    state: str | None
    key: str = ""  # the API key (account) that created it


class Engine:
    """Jobs by id, the accounts, and the seeded generators."""

    def __init__(self, config: SimulatorConfig, clock: Clock) -> None:
        self.config = config
        self.clock = clock
        master = random.Random(config.seed)
        # Independent streams, so e.g. list shuffles never shift the fault sequence.
        self.fault_rng: random.Random = random.Random(master.getrandbits(64))
        self.list_rng: random.Random = random.Random(master.getrandbits(64))
        self.job_rng: random.Random = random.Random(master.getrandbits(64))
        self.misc_rng: random.Random = random.Random(master.getrandbits(64))
        hang_end, hang_reason = _server_timeout(config, clock)
        self.timeline: Timeline = Timeline(
            config.queue_seconds,
            config.run_seconds,
            config.progress_steps,
            hang_end=hang_end,
            hang_reason=hang_reason,
        )
        self.tasks: dict[str, SimTask] = {}
        self.submissions: list[CreatedJob] = []
        self.accounts: dict[str, Account] = {}
        #: Keys refused at authentication, and why: "disabled", "expired" or "exhausted".
        self.revoked: dict[str, str] = {}
        for reason, keys in (
            ("disabled", config.disabled_keys),
            ("expired", config.expired_keys),
            ("exhausted", config.exhausted_keys),
        ):
            self.revoked.update(dict.fromkeys(keys, reason))
        for key in (*config.api_keys, *self.revoked):
            self.accounts[key] = Account(
                key,
                concurrency=config.concurrency,
                max_queue=config.max_queue,
                quota=config.quotas.get(key),
                disabled=key in config.disabled_keys,
            )
        #: Set by the app: where faults that strike outside the request draw are logged.
        self.faults: FaultInjector | None = None
        self.last_id: int = 0
        self.ordinal: int = 0
        #: Called with every activated job (the hook dispatcher subscribes).
        self.on_activate: list[Any] = []

    # ---- ids ----

    def new_id(self) -> str:
        """Epoch milliseconds plus three digits: a 16-digit string, unique and increasing."""
        ms = self.clock.epoch_ms(self.clock.now())
        candidate = ms * 1000 + self.job_rng.randrange(1000)
        if candidate <= self.last_id:
            candidate = self.last_id + 1
        self.last_id = candidate
        return str(candidate)

    def snowflake(self) -> str:
        """A Discord-style snowflake (message ids, nonces)."""
        ms = self.clock.epoch_ms(self.clock.now()) - _DISCORD_EPOCH_MS
        return str((ms << 22) | self.misc_rng.getrandbits(22))

    # ---- jobs ----

    def create(
        self,
        key: str,
        endpoint: str,
        label: str,
        *,
        action: str,
        result: Result,
        prompt: str | None,
        **fields: Any,
    ) -> SimTask:
        """A new job (not yet activated), counted against ``key``'s account."""
        now = self.clock.now()
        task = SimTask(
            id=self.new_id(),
            ordinal=self.ordinal,
            key=key,
            endpoint=endpoint,
            action=action,
            result=result,
            prompt=prompt,
            message_hash=str(uuid.UUID(int=self.job_rng.getrandbits(128), version=4)),
            nonce=self.snowflake(),
            submit_ms=self.clock.epoch_ms(now),
            random_failure=self.job_rng.random() < self.config.failure_rate,
            hook_seed=self.job_rng.getrandbits(64),
            **fields,
        )
        if not task.image_key:
            task.image_key = task.id
        task.hang = self.chosen("hang", task.ordinal, self.config.faults.hang_rate) or bool(
            words_in(self.config.hang_words, prompt or label)
        )
        if task.hang:
            self.record(f"POST {endpoint}", Fault.HANG)
        self.ordinal += 1
        self.tasks[task.id] = task
        self.accounts[key].submitted += 1
        self.submissions.append(CreatedJob(endpoint, label, task.state, key))
        return task

    def activate(self, task: SimTask) -> Slot:
        """Give ``task`` a worker slot and fix its timeline; returns the slot."""
        now = self.clock.now()
        account = self.accounts[task.key]
        slot = account.take_slot(now)
        end = self.timeline.schedule(task, now, slot.start, self.fail_word(task.prompt or ""))
        account.finish_at(end)
        for listener in self.on_activate:
            listener(task)
        return slot

    def phase(self, task: SimTask, at: float | None = None) -> Phase:
        """``task``'s status and progress step at clock time ``at`` (default: now)."""
        return self.timeline.phase(task, self.clock.now() if at is None else at)

    def chosen(self, kind: str, ordinal: int, rate: float) -> bool:
        """Whether the ``ordinal``-th job is picked for a per-job fault of ``rate``.

        Derived from the seed and the creation order (not from a random stream), so
        enabling one fault shifts no other random choice.
        """
        if rate <= 0:
            return False
        digest = hashlib.sha256(f"{self.config.seed}:{kind}:{ordinal}".encode()).digest()
        return int.from_bytes(digest[:8], "big") < rate * 2**64

    def record(self, route: str, fault: Fault) -> None:
        """Log a fault that struck outside the per-request draw (``Simulator.fault_log``)."""
        if self.faults is not None:
            self.faults.record(route, fault)

    def fail_word(self, prompt: str) -> str | None:
        """The first of ``fail_words`` in ``prompt`` (case-insensitive), or None."""
        lowered = prompt.casefold()
        return next((w for w in self.config.fail_words if w.casefold() in lowered), None)

    def banned_word(self, prompt: str) -> str | None:
        """The first of ``banned_words`` in ``prompt`` (case-insensitive), or None."""
        lowered = prompt.casefold()
        return next((w for w in self.config.banned_words if w.casefold() in lowered), None)

    # ---- results ----

    def describe_texts(self) -> tuple[str, ...]:
        """Four prompts a describe produces."""
        out = []
        for _ in range(4):
            picked = self.job_rng.sample(_WORDS, k=3)
            out.append(", ".join(picked) + " --ar 1:1")
        return tuple(out)

    @staticmethod
    def shorten_texts(prompt: str) -> tuple[str, ...]:
        """Five ever shorter versions of ``prompt`` (what a shorten job produces)."""
        words = prompt.split() or ["prompt"]
        return tuple(" ".join(words[: max(1, len(words) * k // 6)]) for k in range(5, 0, -1))

    def seed_value(self, task: SimTask) -> str:
        """The job's Midjourney seed (image-seed): stable for a config seed and job."""
        digest = hashlib.sha256(f"{self.config.seed}:{task.message_hash}".encode()).digest()
        return str(int.from_bytes(digest[:4], "big"))

    @staticmethod
    def upload_url(image: str) -> str:
        """Where a proxy would have put an uploaded reference image (Discord short link)."""
        return "https://s.mj.run/" + hashlib.sha256(image.encode()).hexdigest()[:11]


def words_in(words: tuple[str, ...], text: str) -> str | None:
    """The first of ``words`` in ``text`` (case-insensitive), or None."""
    lowered = text.casefold()
    return next((w for w in words if w.casefold() in lowered), None)


def _server_timeout(config: SimulatorConfig, clock: Clock) -> tuple[Callable[[float], float], str]:
    """When the server fails a hanging job that started at a time, and with what reason.

    novicezk ``TaskTimeoutSchedule``: every 30 s (from start-up) a job running longer
    than ``timeoutMinutes`` fails with ``任务超时``. TrueAI ``DiscordService``: the job's
    own loop checks every 3 s and fails it with ``执行超时 {TimeoutMinutes} 分钟``; the
    quickrouter dialect's upstream is that engine too.
    """
    limit = config.task_timeout
    if config.dialect == "midjourney-proxy":

        def tick(start: float) -> float:
            ticks = math.floor((start + limit - clock.start) / 30.0) + 1
            return clock.start + 30.0 * ticks

        return tick, "任务超时"
    minutes = int(limit // 60)
    return (lambda start: start + 3.0 * (math.floor(limit / 3.0) + 1)), f"执行超时 {minutes} 分钟"
