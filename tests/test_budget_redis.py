"""Budgets shared across processes in Redis, against a real redis-server started here."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import socket
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from fakes import SIM_POLL as FAST

from quickmj import (
    AccountPool,
    AdmissionPolicy,
    AsyncClient,
    BatchItem,
    ConnectError,
    run_batch,
)
from quickmj._budgets import Lease
from quickmj.testing import SimulatorConfig, simulate

redis = pytest.importorskip("redis", reason="the redis extra is not installed (quickmj[redis])")
from quickmj import RedisBudgets  # noqa: E402
from quickmj._budget_redis import RedisBudget  # noqa: E402

SERVER = shutil.which("redis-server")
pytestmark = pytest.mark.skipif(
    SERVER is None,
    reason="redis-server is not installed (apt-get install -y redis-server); .ci/run installs it",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _redis_server(workdir: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A throwaway redis-server on a free loopback port: its URL and process, stopped
    (woken first, should a test have paused it) when the block ends."""
    assert SERVER is not None
    port = _free_port()
    args = [SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir",
            str(workdir)]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0", proc
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server shared by the module's tests."""
    with _redis_server(tmp_path_factory.mktemp("redis")) as (url, _):
        yield url


_prefixes = iter(range(10**6))


@pytest.fixture
async def budgets(redis_url: str) -> AsyncIterator[Any]:
    """A factory of independent RedisBudgets ("workers") sharing one key prefix."""
    prefix = f"test:{next(_prefixes)}:{time.time_ns()}"
    made: list[RedisBudgets] = []

    def worker(**options: Any) -> RedisBudgets:
        store = RedisBudgets(redis_url, prefix=prefix, **options)
        made.append(store)
        return store

    yield worker
    for store in made:
        await store.aclose()


def _budget(store: RedisBudgets, account: str = "acct") -> RedisBudget:
    made = store.budget(
        account=account, base_url="http://r", mode=None, label=account, rotates=False
    )
    assert isinstance(made, RedisBudget)
    return made


async def test_two_workers_share_one_account_budget(budgets: Any, tmp_path: Path) -> None:
    """Two workers (each its own Redis connection, as two processes would have) submit on
    one key: together they stay within the learned limit, every prompt is created once,
    and what one learned the other uses."""
    config = SimulatorConfig(
        dialect="midjourney-proxy", concurrency=2, max_queue=2, queue_seconds=0, run_seconds=0.06
    )
    async with simulate(config) as relay:
        a, b = budgets(), budgets()

        async def run(store: RedisBudgets, word: str, out: Path) -> Any:
            async with AsyncClient(
                relay.api_key, base_url=relay.base_url, dialect="midjourney-proxy", poll=FAST,
                admission=store,
            ) as mj:  # fmt: skip
                items = [BatchItem(f"{word} {i}") for i in range(12)]
                await run_batch(mj, items, out, download=False)
                return mj.admission.budgets[0] if mj.admission else None

        first, second = await asyncio.gather(
            run(a, "alpha", tmp_path / "a"), run(b, "beta", tmp_path / "b")
        )
    created = Counter(s.prompt for s in relay.simulator.submissions)
    assert 24 == len(created) and {1} == set(created.values())
    refused = first.stats.queue_full + second.stats.queue_full
    assert refused == relay.simulator.accounts[relay.api_key].rejected
    assert refused <= 6  # a shared limit: not two workers each probing their own
    assert 3.0 <= first.limit <= 5.0 and first.limit == pytest.approx(second.limit, abs=1.0)


async def test_a_crashed_workers_slots_come_back_when_its_leases_expire(budgets: Any) -> None:
    """A worker that stops renewing (killed) frees its slots after lease_ttl, no sooner."""
    policy = AdmissionPolicy(initial_limit=1)
    crashed = _budget(budgets(policy=policy, lease_ttl=0.4))
    alive = _budget(budgets(policy=policy, lease_ttl=0.4))
    lease = await crashed.take()
    assert lease is not None
    assert crashed._renewer is not None
    crashed._renewer.cancel()  # the worker dies: nobody renews, nobody releases
    crashed._leases.clear()
    assert await alive.take() is None
    await asyncio.sleep(0.6)
    taken = await alive.take()
    assert taken is not None
    alive.release(taken)


async def test_renewed_leases_outlive_their_ttl(budgets: Any) -> None:
    """A live worker's renewals keep its slot taken past lease_ttl."""
    policy = AdmissionPolicy(initial_limit=1)
    holder = _budget(budgets(policy=policy, lease_ttl=0.3))
    other = _budget(budgets(policy=policy, lease_ttl=0.3))
    lease = await holder.take()
    assert lease is not None
    await asyncio.sleep(0.7)
    assert await other.take() is None
    holder.release(lease)
    await asyncio.sleep(0.05)
    again = await other.take()
    assert again is not None
    other.release(again)


async def test_a_refusal_shrinks_the_shared_limit_once_per_window(budgets: Any) -> None:
    """Refusals of slots taken before the drop do not drop it again, in any worker."""
    policy = AdmissionPolicy(initial_limit=4)
    one, two = _budget(budgets(policy=policy)), _budget(budgets(policy=policy))
    leases: list[Lease] = []
    for budget in (one, two, one, two):
        lease = await budget.take()
        assert lease is not None
        leases.append(lease)
    assert await one.take() is None  # 4 of 4 taken, across the two workers
    one.refused(leases[0], retry_after=0.0, rate_limited=False)
    two.refused(leases[1], retry_after=0.0, rate_limited=False)
    await asyncio.sleep(0.1)
    state = await one.store.redis.hgetall(one.keys[0])
    assert b"3" == state[b"ceiling"] and 1 == int(state[b"epoch"])
    assert pytest.approx(0.7 * 3) == float(state[b"limit"])
    for lease, budget in zip(leases[2:], (one, two), strict=True):
        budget.release(lease)


async def test_a_pool_on_shared_budgets(budgets: Any, tmp_path: Path) -> None:
    """An AccountPool takes a RedisBudgets as its admission; keys never reach Redis."""
    config = SimulatorConfig(api_keys=("sk-k1", "sk-k2"), concurrency=1, max_queue=1)
    store = budgets()
    async with simulate(config) as relay, AccountPool(
        ["sk-k1", "sk-k2"], admission=store, base_url=relay.base_url,
        dialect=relay.dialect, poll=FAST,
    ) as pool:  # fmt: skip
        items = [BatchItem(f"p {i}") for i in range(8)]
        summary = await run_batch(pool, items, tmp_path, download=False)
        names = [k.decode() for k in await store.redis.keys("*")]
    assert summary.ok and 2 == len(summary.accounts)
    assert names and not any("k1" in n or "k2" in n for n in names)


async def test_an_unreachable_store_sends_nothing() -> None:
    """Without its shared budget a submit is not sent: ConnectError, nothing created."""
    config = SimulatorConfig(dialect="midjourney-proxy")
    dead = f"redis://127.0.0.1:{_free_port()}/0"
    async with simulate(config) as relay, RedisBudgets(dead) as store, AsyncClient(
        relay.api_key, base_url=relay.base_url, dialect="midjourney-proxy", admission=store
    ) as mj:  # fmt: skip
        with pytest.raises(ConnectError, match="shared budget store is unreachable"):
            await mj.imagine("a cat")
    assert [] == relay.simulator.submissions


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A redis-server of this test's own (it gets stopped): its URL and its process."""
    with _redis_server(tmp_path) as server:
        yield server


@pytest.mark.parametrize("users_client", [False, True], ids=["client made here", "user's client"])
async def test_a_stalled_redis_is_an_error_not_a_freeze(
    own_redis: tuple[str, subprocess.Popen[bytes]], users_client: bool
) -> None:
    """A stopped Redis (SIGSTOP: the socket stays open, nothing answers) makes take() a
    ConnectError after ``timeout`` and aclose() return, with redis-py's own timeouts or
    none (a user's client; redis-py before 6 has none); once Redis runs again the same
    connection pool answers the next take() rightly (no stale reply)."""
    url, proc = own_redis
    client = redis.asyncio.Redis.from_url(url) if users_client else None
    store = RedisBudgets(url, client=client, timeout=0.3, policy=AdmissionPolicy(initial_limit=4))
    budget = _budget(store)
    held = await budget.take()
    assert held is not None
    proc.send_signal(signal.SIGSTOP)
    try:
        with pytest.raises(ConnectError, match=r"no answer within 0\.3 s"):
            await budget.take()
        with pytest.raises(ConnectError, match="shared budget store"):
            await budget.take()  # each operation bounded, not only the first
    finally:
        proc.send_signal(signal.SIGCONT)
    second = await budget.take()  # 1 held + at most 2 the stalled Redis ran late, of 4
    assert second is not None and held is not second
    assert True is await store.redis.ping()
    leases = {t.decode() for t in await store.redis.zrange(budget.keys[1], 0, -1)}
    assert {held.token, second.token} <= leases and len(leases) <= 4
    proc.send_signal(signal.SIGSTOP)
    try:
        await store.aclose()  # returns: the leases come back when they expire
    finally:
        proc.send_signal(signal.SIGCONT)
    if client is not None:
        await client.aclose()


async def test_a_stalled_redis_stops_a_batch(
    own_redis: tuple[str, subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    """A batch whose shared store stops answering ends with ConnectError (the batch's
    stop for a store that is down) and sends nothing more."""
    url, proc = own_redis
    config = SimulatorConfig(dialect="midjourney-proxy")
    async with simulate(config) as relay, RedisBudgets(url, timeout=0.3) as store, AsyncClient(
        relay.api_key, base_url=relay.base_url, dialect="midjourney-proxy", admission=store,
        poll=FAST,
    ) as mj:  # fmt: skip
        proc.send_signal(signal.SIGSTOP)
        try:
            with pytest.raises(ConnectError, match="shared budget store"):
                await run_batch(mj, [BatchItem("a cat")], tmp_path, download=False)
        finally:
            proc.send_signal(signal.SIGCONT)
    assert [] == relay.simulator.submissions


async def test_leases_lost_by_a_redis_restart_are_put_back(budgets: Any) -> None:
    """Redis restarted empty (FLUSHALL): the holder's next renewal puts its leases back,
    so another worker cannot take the same slots again (3 of 3 in all, not 6)."""
    policy = AdmissionPolicy(initial_limit=3)
    holder, other = _budget(budgets(policy=policy)), _budget(budgets(policy=policy))
    leases = [await holder.take() for _ in range(3)]
    assert all(leases)
    await holder.store.redis.flushall()
    assert 0 == await holder.renew()
    taken = [await other.take() for _ in range(3)]
    assert [None, None, None] == taken
    assert 3 == await holder.store.redis.zcard(holder.keys[1])
    for lease in leases:
        assert lease is not None
        holder.release(lease)


async def test_only_room_is_restored(budgets: Any) -> None:
    """If others took the slots before the renewal, only what the limit still allows is
    put back, and the renewal says how many are left out."""
    policy = AdmissionPolicy(initial_limit=3)
    holder, other = _budget(budgets(policy=policy)), _budget(budgets(policy=policy))
    mine = [await holder.take() for _ in range(2)]
    await holder.store.redis.flushall()
    theirs = [await other.take() for _ in range(2)]
    assert all(mine) and all(theirs)
    assert 1 == await holder.renew()
    assert 3 == await holder.store.redis.zcard(holder.keys[1])
    for budget, lease in [(holder, mine[0]), (holder, mine[1]), (other, theirs[0]),
                          (other, theirs[1])]:  # fmt: skip
        assert lease is not None
        budget.release(lease)


async def test_a_lease_released_during_its_renewal_is_not_kept(budgets: Any) -> None:
    """A release whose removal reaches Redis before a renewal that still listed the lease:
    the renewal's put-back is undone, the slot is free again."""
    policy = AdmissionPolicy(initial_limit=1)
    holder = _budget(budgets(policy=policy))
    lease = await holder.take()
    assert lease is not None
    token = lease.token or ""
    await holder.store.redis.zrem(holder.keys[1], token)  # the release's removal, first
    renewal = asyncio.ensure_future(holder.renew())
    await asyncio.sleep(0)  # the renewal has listed the lease and is on its way
    holder._drop(lease)  # ...and the release lands in between
    assert 0 == await renewal
    await asyncio.gather(*holder._tasks)
    assert 0 == await holder.store.redis.zcard(holder.keys[1])
