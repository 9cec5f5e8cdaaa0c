"""Budgets shared across processes, in Redis (the ``quickmj[redis]`` extra).

Several workers (processes, hosts) submitting on the same keys each see only their own
jobs; learning each account's limit apart, they overshoot it together (see
docs/throughput.md). Here an account's budget lives in Redis: the learned limit (the
same AIMD state as :class:`~quickmj._budgets.LocalBudget`, updated by Lua scripts so
every change is atomic) and one *lease* per slot in a sorted set, scored by its expiry.
A worker renews its leases while it holds them; a worker that dies stops renewing, and
its slots come back when the leases expire (``lease_ttl``). Time is Redis's own
(``TIME``), so the workers' clocks need not agree.

Usage::

    async with RedisBudgets("redis://localhost:6379/0") as budgets:
        async with AsyncClient(key, admission=budgets) as mj: ...
        # or AccountPool(keys, admission=budgets)
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import uuid
from collections.abc import Awaitable
from types import TracebackType
from typing import Any, TypeVar

import anyio

from ._budgets import AdmissionPolicy, Budget, Lease, _capacity
from .errors import ConfigurationError, ConnectError

__all__ = ("RedisBudget", "RedisBudgets")

logger = logging.getLogger("quickmj")
T = TypeVar("T")

_NOW = "local t = redis.call('TIME') local now = t[1] * 1000 + math.floor(t[2] / 1000)\n"
_READ = """
local limit = tonumber(redis.call('HGET', KEYS[1], 'limit') or ARGV[2])
local epoch = tonumber(redis.call('HGET', KEYS[1], 'epoch') or '0')
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
"""
# ARGV: token, initial limit, lease ttl (ms). -> {taken, epoch, limit, wait ms}
_ACQUIRE = (
    _NOW
    + _READ
    + """
local paused = tonumber(redis.call('HGET', KEYS[1], 'paused_until') or '0')
if now < paused then return {0, epoch, tostring(limit), paused - now} end
if redis.call('ZCARD', KEYS[2]) >= math.floor(limit) then
  return {0, epoch, tostring(limit), 0}
end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[1])
return {1, epoch, tostring(limit), 0}
"""
)
# ARGV: token, initial limit, max limit, probe rate. -> limit
_ACCEPT = (
    _NOW
    + _READ
    + """
local ceiling = tonumber(redis.call('HGET', KEYS[1], 'ceiling') or '-1')
local slow = (redis.call('HGET', KEYS[1], 'slow') or '1') == '1'
if redis.call('ZCARD', KEYS[2]) >= math.floor(limit) then
  local step = tonumber(ARGV[4]) / limit
  if slow then step = 1 elseif ceiling < 0 or limit + 1 <= ceiling then step = 1 / limit end
  limit = math.min(tonumber(ARGV[3]), limit + step)
  redis.call('HSET', KEYS[1], 'limit', tostring(limit))
end
return tostring(limit)
"""
)
# ARGV: token, initial limit, lease epoch, pause (ms), min limit, decrease. -> limit
_REFUSE = (
    _NOW
    + _READ
    + """
if tonumber(ARGV[3]) == epoch then
  local in_use = redis.call('ZCARD', KEYS[2]) - 1
  local floor = tonumber(ARGV[5])
  limit = math.min(limit, math.max(floor, tonumber(ARGV[6]) * in_use))
  redis.call('HSET', KEYS[1], 'limit', tostring(limit), 'ceiling', math.max(in_use, floor),
             'slow', '0', 'epoch', epoch + 1)
end
local until_ = now + tonumber(ARGV[4])
if until_ > tonumber(redis.call('HGET', KEYS[1], 'paused_until') or '0') then
  redis.call('HSET', KEYS[1], 'paused_until', until_)
end
redis.call('ZREM', KEYS[2], ARGV[1])
return tostring(limit)
"""
)
# ARGV: lease ttl (ms), initial limit, tokens... -> {restored tokens, tokens left out}
# A lease missing here was lost by Redis (restarted empty, flushed) or expired while its
# holder was late: it is put back while the limit has room, so that a Redis that forgot
# every lease does not let the other workers take the same slots again.
_RENEW = (
    _NOW
    + _READ
    + """
local restored, missing = {}, {}
for i = 3, #ARGV do
  if redis.call('ZSCORE', KEYS[2], ARGV[i]) then
    redis.call('ZADD', KEYS[2], 'XX', now + tonumber(ARGV[1]), ARGV[i])
  elseif redis.call('ZCARD', KEYS[2]) < math.floor(limit) then
    redis.call('ZADD', KEYS[2], now + tonumber(ARGV[1]), ARGV[i])
    restored[#restored + 1] = ARGV[i]
  else
    missing[#missing + 1] = ARGV[i]
  end
end
return {restored, missing}
"""
)


class RedisBudgets:
    """A budget factory whose budgets live in Redis (``AsyncClient(admission=...)``).

    Args:
        url: the Redis server (``redis://host:6379/0``); or pass ``client``.
        policy: how the shared limit is learned.
        prefix: the keys' prefix (``<prefix>:<relay>:<account>:<mode>``).
        lease_ttl: seconds a slot stays taken after its holder stopped renewing it (a
            crashed worker's slots come back after this long).
        poll: seconds between two tries for a slot while the budget is full (other
            workers' releases are not announced).
        timeout: seconds one Redis operation may take. A client made here gets it as its
            socket and connect timeouts; every operation (on any client) is also bounded
            by it, so a stalled Redis (stopped, or a network that drops packets) gives a
            :class:`~quickmj.ConnectError` instead of freezing the batch, and
            :meth:`aclose` returns within a few of these.
        client: a ``redis.asyncio.Redis`` to use (not closed by :meth:`aclose`). Its own
            timeouts are left as they are (redis-py before 6 has none by default); the
            bound above applies to it too.

    Raises:
        ConfigurationError: the ``redis`` package is missing (``pip install 'quickmj[redis]'``).
    """

    def __init__(
        self,
        url: str = "redis://localhost:6379/0",
        *,
        policy: AdmissionPolicy | None = None,
        prefix: str = "quickmj:budget",
        lease_ttl: float = 60.0,
        poll: float = 0.25,
        timeout: float = 5.0,
        client: Any = None,
    ) -> None:
        try:
            import redis.asyncio as aioredis
        except ImportError:  # pragma: no cover - the extra is installed in the tests
            raise ConfigurationError(
                "shared budgets need the redis package: pip install 'quickmj[redis]'"
            ) from None
        if lease_ttl <= 0 or poll <= 0 or timeout <= 0:
            raise ConfigurationError("lease_ttl, poll and timeout must be positive")
        self.policy: AdmissionPolicy = policy or AdmissionPolicy()
        """How the shared limits are learned."""
        self.prefix: str = prefix
        """The Redis keys' prefix."""
        self.lease_ttl: float = lease_ttl
        """Seconds a slot outlives its holder's last renewal."""
        self.poll: float = poll
        """Seconds between two tries for a slot while a budget is full."""
        self.timeout: float = timeout
        """Seconds one Redis operation may take before the store counts as unreachable."""
        self._owned = client is None
        self.redis: Any = (
            aioredis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
            if client is None
            else client
        )
        """The ``redis.asyncio.Redis`` client."""
        self.scripts: dict[str, Any] = {
            name: self.redis.register_script(text)
            for name, text in (
                ("acquire", _ACQUIRE),
                ("accept", _ACCEPT),
                ("refuse", _REFUSE),
                ("renew", _RENEW),
            )
        }
        self._budgets: list[RedisBudget] = []

    def __repr__(self) -> str:
        return f"<RedisBudgets prefix={self.prefix!r} budgets={len(self._budgets)}>"

    def budget(
        self, *, account: str, base_url: str, mode: str | None, label: str, rotates: bool
    ) -> Budget:
        """The shared budget of one key (by fingerprint) on one relay, in one mode."""
        relay = hashlib.sha256(base_url.encode()).hexdigest()[:8]
        name = f"{self.prefix}:{relay}:{account}:{mode or 'default'}"
        made = RedisBudget(self, name, label, rotates=rotates)
        self._budgets.append(made)
        return made

    async def __aenter__(self) -> RedisBudgets:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Give back every slot still held and close the connection (if made here).

        Against a stalled Redis this returns after about ``timeout`` seconds (twice that
        at most): the slots not given back come back when their leases expire.
        """
        await asyncio.gather(*(budget.aclose() for budget in self._budgets))
        if self._owned:
            with anyio.move_on_after(self.timeout):
                await self.redis.aclose()

    async def call(self, work: Awaitable[T]) -> T:
        """``work`` (one Redis operation), bounded by :attr:`timeout`.

        Raises:
            TimeoutError: Redis did not answer in time (a stopped server, dropped packets).
        """
        with anyio.fail_after(self.timeout):
            return await work


class RedisBudget(Budget):
    """One account's budget in Redis; see :class:`RedisBudgets`."""

    def __init__(self, store: RedisBudgets, name: str, label: str, *, rotates: bool) -> None:
        super().__init__(label, store.policy, rotates=rotates)
        self.store: RedisBudgets = store
        """The factory (and connection) this budget lives in."""
        self.keys: list[str] = [f"{name}:state", f"{name}:leases"]
        """The Redis keys: the AIMD state (a hash) and the leases (a sorted set)."""
        self._limit = float(store.policy.initial_limit)
        self._leases: set[Lease] = set()
        self._next_try = 0.0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._renewer: asyncio.Task[None] | None = None

    @property
    def limit(self) -> float:
        return self._limit

    @property
    def held(self) -> int:
        return len(self._leases)

    async def take(self) -> Lease | None:
        if self.disabled:
            return None
        policy, ttl_ms = self.policy, int(self.store.lease_ttl * 1000)
        token = uuid.uuid4().hex
        try:
            taken, epoch, limit, wait_ms = await self.store.call(
                self.store.scripts["acquire"](
                    keys=self.keys, args=[token, policy.initial_limit, ttl_ms]
                )
            )
        except Exception as exc:  # redis.RedisError, OSError, a stall: nothing was sent
            if isinstance(exc, TimeoutError):  # a stalled Redis may yet run the script
                self._spawn(self._remove(token))
            raise ConnectError(
                f"the shared budget store is unreachable ({_why(exc, self.store.timeout)}); "
                "nothing was submitted"
            ) from None
        self._limit = float(limit)
        if not taken:
            wait = max(int(wait_ms) / 1000, self.store.poll)
            self._next_try = time.monotonic() + wait
            return None
        lease = Lease(self, int(epoch), time.monotonic(), token=token)
        self._leases.add(lease)
        self.stats.sent += 1
        self._ensure_renewer()
        return lease

    def retry_at(self) -> float | None:
        return self._next_try if self._next_try > time.monotonic() else None

    def accepted(self, lease: Lease, task_id: str) -> None:
        lease.task_id = task_id
        self.stats.accepted += 1
        self._strikes = 0
        p = self.policy
        args = [lease.token, p.initial_limit, p.max_limit, p.probe_rate]
        self._spawn(self._update("accept", args))

    def refused(self, lease: Lease, *, retry_after: float | None, rate_limited: bool) -> None:
        if rate_limited:
            self.stats.rate_limited += 1
        else:
            self.stats.queue_full += 1
        p = self.policy
        pause_ms = int(self._pause_for(retry_after) * 1000)
        epoch = lease.epoch if _capacity(retry_after, rate_limited) else -1  # -1: no drop
        args = [lease.token, p.initial_limit, epoch, pause_ms, p.min_limit, p.decrease]
        self._drop(lease)
        self._spawn(self._update("refuse", args))

    def release(self, lease: Lease) -> None:
        if lease.done:
            return
        self._drop(lease)
        self._ended(lease)
        self._spawn(self._remove(lease.token or ""))

    # ---- plumbing ----

    def _drop(self, lease: Lease) -> None:
        lease.done = True
        self._leases.discard(lease)

    async def _update(self, script: str, args: list[Any]) -> None:
        answer = await self.store.call(self.store.scripts[script](keys=self.keys, args=args))
        self._limit = float(answer)
        self.notify()

    async def _remove(self, token: str) -> None:
        await self.store.call(self.store.redis.zrem(self.keys[1], token))
        self.notify()

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(_logged(work, self.label, self.store.timeout))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _ensure_renewer(self) -> None:
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.get_running_loop().create_task(self._renew())

    async def _renew(self) -> None:
        """Extend the leases held here every third of their life, while there are any."""
        ttl = self.store.lease_ttl
        while self._leases:
            await asyncio.sleep(ttl / 3)
            await _logged(self.renew(), self.label, self.store.timeout)

    async def renew(self) -> int:
        """Extend the leases held here once; put back those Redis lost (a restart without
        persistence, a flush) while the shared limit has room.

        Returns:
            How many leases held here are not counted in Redis (no room to put them
            back): the shared count is short by that much until they end.
        """
        tokens = [lease.token or "" for lease in self._leases]
        if not tokens:
            return 0
        args = [int(self.store.lease_ttl * 1000), self.policy.initial_limit, *tokens]
        restored, missing = await self.store.call(
            self.store.scripts["renew"](keys=self.keys, args=args)
        )
        held = {lease.token for lease in self._leases}
        for token in restored:  # released while the renewal was on its way: not ours now
            if (name := token.decode() if isinstance(token, bytes) else token) not in held:
                self._spawn(self._remove(name))
        if restored or missing:
            logger.warning(
                "shared budget of %s: Redis had lost %d of the %d leases held here "
                "(restarted or flushed?); %d put back, %d left out for want of room",
                self.label, len(restored) + len(missing), len(tokens), len(restored),
                len(missing),
            )  # fmt: skip
        return len(missing)

    async def aclose(self) -> None:
        """Give every lease held here back and wait for pending updates."""
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
        for lease in list(self._leases):
            self.release(lease)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


async def _logged(work: Awaitable[Any], label: str, timeout: float) -> None:
    """Run a Redis update; a failure is logged (the lease's expiry repairs the count)."""
    try:
        await work
    except Exception as exc:
        logger.warning("shared budget of %s: a Redis update failed: %s", label, _why(exc, timeout))


def _why(exc: BaseException, timeout: float) -> str:
    """What went wrong with Redis, in a few words."""
    if isinstance(exc, TimeoutError) and not str(exc):  # anyio's deadline
        return f"no answer within {timeout:g} s: is Redis stopped or the network down?"
    return f"{type(exc).__name__}: {exc}"
