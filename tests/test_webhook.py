"""notifyHook receiver: pushes resolve waiters; hostile or slow hooks change nothing."""

from __future__ import annotations

import asyncio
import io
import json
import threading
import time
from typing import Any, cast

import aiohttp
import pytest
from aiohttp import web
from conftest import Serve
from fakes import BASE, FakeRelay, make_client, make_sync

from quickmj import InvalidInputError, PollPolicy, Task, TaskStatus
from quickmj._converter import unstructure
from quickmj.webhook import WebhookReceiver

# Polling alone would take "forever" (10k reads); only pushes can finish these tasks fast.
POLICY = PollPolicy(interval=0.02, first_poll=0.01, safety_net_interval=0.3, adaptive=False)


def hook(task_id: str, status: str, progress: str = "", **extra: Any) -> dict[str, Any]:
    body = unstructure(Task(id=task_id, status=TaskStatus(status), progress=progress))
    return {**body, **extra}


async def post(url: str, body: Any, *, raw: bytes | None = None) -> int:
    async with aiohttp.ClientSession() as session:
        data = io.BytesIO(raw if raw is not None else json.dumps(body).encode())
        async with session.post(url, data=data, headers={"Content-Type": "application/json"}) as r:
            return r.status


class Feed:
    """Stands in for ``poller.feed``: records what it was handed."""

    def __init__(self, tracked: bool = True) -> None:
        self.calls: list[tuple[Task, bool]] = []
        self.tracked = tracked

    def __call__(self, task: Task, *, verify: bool = False) -> bool:
        self.calls.append((task, verify))
        return self.tracked


def port_of(receiver: WebhookReceiver) -> int:
    return int(receiver.url.split(":")[2].split("/")[0])


def path_of(receiver: WebhookReceiver) -> str:
    return "/" + receiver.url.split("/", 3)[3]


# ---- with a client ------------------------------------------------------------------------------


async def test_push_resolves_waiter_and_submits_carry_the_url() -> None:
    """A pushed SUCCESS wakes the waiter; submits send the receiver's URL as notifyHook
    while the block runs, and stop sending it afterwards."""
    relay = FakeRelay(ticks=10_000)
    async with make_client(relay, POLICY) as mj:
        async with mj.webhook_receiver() as rx:
            job = await mj.imagine("a fox")
            assert rx.url == relay.submits[-1]["notifyHook"]
            assert rx.url.startswith("http://127.0.0.1:")
            waiter = asyncio.ensure_future(job.wait())
            await asyncio.sleep(0.05)
            assert 200 == await post(rx.url, hook(job.id, "IN_PROGRESS", "50%"))
            reads = relay.reads.get(job.id, 0)
            relay.ticks = 1  # the relay has finished: the check agrees with the push
            assert 200 == await post(rx.url, hook(job.id, "SUCCESS", "100%"))
            task = await asyncio.wait_for(waiter, 2)
            assert TaskStatus.SUCCESS == task.status
            assert (1, 1) == (rx.stats["accepted"], rx.stats["verified"])
            assert reads + 1 == relay.reads[job.id]  # one read for the final push
        await mj.imagine("after the block")
    assert "notifyHook" not in relay.submits[-1]


async def test_explicit_notify_hook_wins() -> None:
    """A notify_hook argument overrides the receiver's URL."""
    relay = FakeRelay(ticks=10_000)
    async with make_client(relay, POLICY) as mj, mj.webhook_receiver():
        await mj.imagine("x", notify_hook="https://mine.example/h")
        await mj.action("1", "MJ::JOB::upsample::1::h")
    assert "https://mine.example/h" == relay.submits[0]["notifyHook"]
    assert relay.submits[1]["notifyHook"].startswith("http://127.0.0.1:")


async def test_use_webhook_with_a_public_url() -> None:
    """use_webhook(receiver) sends its public URL on every submit; None stops it."""
    relay = FakeRelay()
    async with make_client(relay) as mj:
        rx = WebhookReceiver(mj.poller.feed, public_url="https://me.example:8443/", token="t0k")
        mj.use_webhook(rx)
        await mj.imagine("x")
        mj.use_webhook(None)
        await mj.imagine("y")
    assert "https://me.example:8443/quickmj-hook/t0k" == relay.submits[0]["notifyHook"]
    assert "notifyHook" not in relay.submits[1]


async def test_wrong_token_is_404_and_changes_nothing() -> None:
    """A hook to the wrong secret path is refused and not applied."""
    relay = FakeRelay(ticks=10_000)
    async with make_client(relay, POLICY) as mj, mj.webhook_receiver() as rx:
        waiter = asyncio.ensure_future(mj.wait("t2", timeout=0.3))
        await asyncio.sleep(0.03)
        bad = rx.url.rsplit("/", 1)[0] + "/not-the-token"
        assert 404 == await post(bad, hook("t2", "SUCCESS", "100%"))
        assert 404 == await post(rx.url.rsplit("/", 2)[0] + "/elsewhere", hook("t2", "SUCCESS"))
        with pytest.raises(TimeoutError):
            await waiter
        assert 2 == rx.stats["rejected"]
    assert "not-the-token" not in repr(rx) and rx.url.rsplit("/", 1)[1] not in repr(rx)


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"{not json", 400),
        (b"[1, 2, 3]", 400),
        (json.dumps({"id": {"x": 1}, "status": "SUCCESS"}).encode(), 400),
        (b"\xff\xfe", 400),
        (b"[" * 5000 + b"]" * 5000, 400),
        (b'{"id": "t3", "status": "SUCCESS", "prompt": "' + b"x" * (2 * 1024 * 1024) + b'"}', 413),
    ],
)
async def test_hostile_bodies_are_refused(raw: bytes, status: int) -> None:
    """Malformed, wrong-shaped, non-UTF-8, deeply nested or oversized bodies change nothing."""
    relay = FakeRelay(ticks=10_000)
    async with make_client(relay, POLICY) as mj, mj.webhook_receiver() as rx:
        sub = mj.poller.subscribe(["t3"], updates=True)
        assert status == await post(rx.url, None, raw=raw)
        await asyncio.sleep(0.05)
        last = sub.last("t3")
        assert last is None or last.status is TaskStatus.IN_PROGRESS
        assert mj.poller.running
        sub.close()


async def test_duplicate_and_reordered_hooks_never_move_backwards() -> None:
    """Late IN_PROGRESS after SUCCESS, and duplicates, are ignored."""
    relay = FakeRelay(ticks=10_000)
    seen: list[tuple[str, str | None]] = []
    async with make_client(relay, POLICY) as mj, mj.webhook_receiver(verify=False) as rx:
        waiter = asyncio.ensure_future(
            mj.wait("t4", on_progress=lambda t: seen.append((t.status.value, t.progress)))
        )
        await asyncio.sleep(0.03)
        for body in (
            hook("t4", "IN_PROGRESS", "62%"),
            hook("t4", "IN_PROGRESS", "31%"),  # older, arrives late
            hook("t4", "IN_PROGRESS", "62%"),  # duplicate
            hook("t4", "SUCCESS", "100%", imageUrl=f"{BASE}/img/t4.png"),
            hook("t4", "IN_PROGRESS", "93%"),  # after the end
        ):
            assert 200 == await post(rx.url, body)
        task = await asyncio.wait_for(waiter, 2)
    assert TaskStatus.SUCCESS == task.status
    assert ("IN_PROGRESS", "31%") not in seen
    assert 1 == seen.count(("IN_PROGRESS", "62%"))


async def test_unknown_task_is_ignored() -> None:
    """A hook for an id nobody waits on is accepted (200) and ignored."""
    async with make_client(FakeRelay(), POLICY) as mj, mj.webhook_receiver() as rx:
        assert 200 == await post(rx.url, hook("nobody", "SUCCESS", "100%"))
        assert 1 == rx.stats["unknown"]


async def test_pushed_ids_are_polled_only_as_safety_net_until_pushes_stop() -> None:
    """While pushes arrive the id is barely polled; when they stop, polling takes over."""
    relay = FakeRelay(ticks=10_000)
    async with make_client(relay, POLICY) as mj, mj.webhook_receiver() as rx:
        waiter = asyncio.ensure_future(mj.wait("t5", timeout=5))
        await asyncio.sleep(0.05)
        assert 200 == await post(rx.url, hook("t5", "IN_PROGRESS", "10%"))
        reads_at_push = relay.reads.get("t5", 0)
        await asyncio.sleep(0.2)  # < safety_net_interval: no polling of t5
        assert reads_at_push == relay.reads.get("t5", 0)
        relay.ticks = 1  # the relay now reports SUCCESS; only polling can see it
        task = await asyncio.wait_for(waiter, 3)  # pushes stopped: polling resumes
    assert TaskStatus.SUCCESS == task.status
    assert relay.reads["t5"] > reads_at_push


async def test_every_pushed_final_state_is_verified() -> None:
    """By default a pushed SUCCESS (whatever host its image is on), FAILURE or CANCEL is
    checked with one read of the relay before any waiter believes it: here the relay
    says IN_PROGRESS, so none of the forged pushes ends a wait. A progress push costs
    no read."""
    relay = FakeRelay(ticks=10_000)
    slow = PollPolicy(interval=30, first_poll=30, safety_net_interval=30, adaptive=False)
    forged = {
        "v1": hook("v1", "SUCCESS", "100%", imageUrl="https://evil.example/x.png"),
        "v2": hook("v2", "SUCCESS", "100%", imageUrl=f"{BASE}/img/v2.png"),
        "v3": hook("v3", "FAILURE", failReason="forged"),
        "v4": hook("v4", "CANCEL"),
    }
    async with make_client(relay, slow) as mj, mj.webhook_receiver() as rx:
        waits = [asyncio.ensure_future(mj.wait(i, timeout=5)) for i in [*forged, "v5"]]
        await asyncio.sleep(0.02)
        for body in forged.values():
            assert 200 == await post(rx.url, body)
        assert 200 == await post(rx.url, hook("v5", "IN_PROGRESS", "40%"))
        await asyncio.sleep(0.1)
        # Polled at once, despite the 30 s interval: one read per final push.
        assert dict.fromkeys(forged, 1) == relay.reads
        assert not any(w.done() for w in waits)
        assert (4, 1) == (rx.stats["verified"], rx.stats["accepted"])
        for w in waits:
            w.cancel()
        await asyncio.gather(*waits, return_exceptions=True)


async def test_a_forged_failure_does_not_end_a_wait_whose_job_succeeds() -> None:
    """Someone who read the hook URL (TrueAI lists it to every user) pushes FAILURE for a
    running job: the waiter is not told; the job then succeeds and the waiter gets
    SUCCESS. On the old main it ended with TaskFailedError."""
    relay = FakeRelay(ticks=10_000)
    async with make_client(relay, POLICY) as mj, mj.webhook_receiver() as rx:
        job = await mj.imagine("a fox")
        waiter = asyncio.ensure_future(job.wait(timeout=5))
        await asyncio.sleep(0.05)
        reads = relay.reads.get(job.id, 0)
        forged = hook(job.id, "FAILURE", failReason="Banned prompt detected")
        assert 200 == await post(rx.url, forged)
        await asyncio.sleep(0.1)
        assert not waiter.done() and relay.reads[job.id] > reads
        relay.ticks = 1  # the relay finishes the job
        assert 200 == await post(rx.url, hook(job.id, "SUCCESS", "100%"))
        task = await asyncio.wait_for(waiter, 3)
    assert TaskStatus.SUCCESS == task.status
    # The forged FAILURE was checked; the SUCCESS push is checked too unless polling (every
    # 20 ms here) saw the end first, and then no waiter is left to check it for.
    assert rx.stats["verified"] in (1, 2) and relay.reads[job.id] > reads


async def test_a_final_push_ahead_of_the_relays_copy_ends_by_normal_polling() -> None:
    """A gateway that serves reads from its own copy may still say IN_PROGRESS when the
    final push arrives: the check does not believe the push, and normal polling (not
    the 30 s safety net that progress pushes set) finds the end."""
    relay = FakeRelay(ticks=10_000)
    policy = PollPolicy(interval=0.02, first_poll=0.01, safety_net_interval=30, adaptive=False)
    async with make_client(relay, policy) as mj, mj.webhook_receiver() as rx:
        waiter = asyncio.ensure_future(mj.wait("lag", timeout=20))
        await asyncio.sleep(0.05)
        assert 200 == await post(rx.url, hook("lag", "IN_PROGRESS", "60%"))
        assert 200 == await post(rx.url, hook("lag", "SUCCESS", "100%"))
        await asyncio.sleep(0.05)
        assert not waiter.done()  # the relay's copy still says IN_PROGRESS
        relay.ticks = 1  # the copy catches up
        task = await asyncio.wait_for(waiter, 3)  # long before the 30 s safety net
    assert TaskStatus.SUCCESS == task.status


async def test_verify_false_believes_pushes() -> None:
    """The documented opt-out: a pushed final state is believed without a read."""
    relay = FakeRelay(ticks=10_000)
    slow = PollPolicy(interval=30, first_poll=30, safety_net_interval=30, adaptive=False)
    async with make_client(relay, slow) as mj, mj.webhook_receiver(verify=False) as rx:
        waiter = asyncio.ensure_future(mj.wait("o1", timeout=5))
        await asyncio.sleep(0.02)
        assert 200 == await post(rx.url, hook("o1", "SUCCESS", "100%"))
        task = await asyncio.wait_for(waiter, 2)
    assert TaskStatus.SUCCESS == task.status and "o1" not in relay.reads


def test_sync_entry_point() -> None:
    """Client.webhook_receiver works as a blocking context manager."""
    relay = FakeRelay(ticks=10_000)
    with make_sync(relay, POLICY) as mj, mj.webhook_receiver(verify=False) as rx:
        assert rx.url.startswith("http://127.0.0.1:")
        pusher = threading.Thread(
            target=lambda: asyncio.run(_push_later(rx.url, hook("t6", "SUCCESS", "100%")))
        )
        pusher.start()
        task = mj.wait("t6", timeout=3)
        pusher.join(3)
    assert TaskStatus.SUCCESS == task.status


async def _push_later(url: str, body: dict[str, Any]) -> None:
    await asyncio.sleep(0.1)
    await post(url, body)


async def test_end_to_end_with_simulator_hooks() -> None:
    """The simulator's notifyHooks finish every wait; polling hardly runs at all."""
    from quickmj import AsyncClient
    from quickmj.testing import SimulatorConfig, simulate

    # Polling this slowly could never finish in time: only the pushes can.
    policy = PollPolicy(interval=30, first_poll=30, safety_net_interval=30)
    config = SimulatorConfig(dialect="trueai", queue_seconds=0.05, run_seconds=0.3)
    async with (
        simulate(config) as relay,
        AsyncClient(
            relay.api_key,
            base_url=relay.base_url,
            dialect="trueai",
            auth_scheme=relay.auth_scheme,
            poll=policy,
        ) as mj,
        mj.webhook_receiver(verify=False) as rx,
    ):
        jobs = [await mj.imagine(f"hooked {i}") for i in range(10)]
        tasks = await asyncio.wait_for(asyncio.gather(*(job.wait() for job in jobs)), 10)
        lists = relay.simulator.counters["POST /task/list-by-condition"]
    assert all(t.status is TaskStatus.SUCCESS for t in tasks)
    assert 0 == lists
    assert rx.stats["accepted"] >= 10


async def test_trueai_shows_a_users_hook_url_to_every_user() -> None:
    """Why a push alone is never believed: as on a real TrueAI (TaskController.List and
    ListByCondition do not filter by user), another key reads the hook URL, secret token
    included, from the task list and from list-by-condition."""
    from quickmj import AsyncClient
    from quickmj.testing import simulate

    async with (
        simulate(dialect="trueai", api_keys=("user", "other")) as relay,
        AsyncClient("user", base_url=relay.base_url, dialect="trueai") as mj,
        AsyncClient("other", base_url=relay.base_url, dialect="trueai") as other,
    ):
        url = "http://127.0.0.1:9/quickmj-hook/secret-token"  # nobody listens there
        job = await mj.imagine("a fox", notify_hook=url)
        listed = {t.id: t for t in await other.recent_tasks()}
        (by_id,) = await other.fetch_many([job.id])
    assert url == listed[job.id].properties["notifyHook"] == by_id.properties["notifyHook"]


async def test_verifying_costs_one_read_per_final_push_with_simulator_hooks() -> None:
    """The default (every pushed final state verified) against the simulator's hooks:
    every wait ends by its push plus one read of the relay, at most one read request
    per job (reads of ids due together share a list-by-condition)."""
    from quickmj import AsyncClient
    from quickmj.testing import SimulatorConfig, simulate

    policy = PollPolicy(interval=30, first_poll=30, safety_net_interval=30)
    config = SimulatorConfig(dialect="trueai", queue_seconds=0.05, run_seconds=0.3)
    async with (
        simulate(config) as relay,
        AsyncClient(relay.api_key, base_url=relay.base_url, dialect="trueai", poll=policy) as mj,
        mj.webhook_receiver() as rx,
    ):
        waits = []
        for i in range(10):
            job = await mj.imagine(f"hooked {i}")
            waits.append(asyncio.ensure_future(job.wait()))
        tasks = await asyncio.wait_for(asyncio.gather(*waits), 10)
        counters = relay.simulator.counters
        reads = sum(n for k, n in counters.items() if "list-by-condition" in k or "fetch" in k)
    assert all(t.status is TaskStatus.SUCCESS for t in tasks)
    assert 10 == rx.stats["verified"]
    assert 1 <= reads <= 10, dict(counters)


# ---- the receiver on its own: its server, deadlines, limits ----


def test_receiver_configuration() -> None:
    """public_url must be http(s); the URL exists once there is an address to give."""
    with pytest.raises(InvalidInputError, match="public_url"):
        WebhookReceiver(Feed(), public_url="me.example")
    with pytest.raises(InvalidInputError, match="serve it first"):
        _ = WebhookReceiver(Feed()).url
    rx = WebhookReceiver(Feed(), public_url="https://me.example/base/", token="abc")
    assert "https://me.example/base/quickmj-hook/abc" == rx.url
    assert "abc" not in repr(rx)


@pytest.mark.parametrize(
    ("verify", "body", "expected"),
    [
        (True, hook("1", "SUCCESS") | {"imageUrl": "https://cdn.example/1.png"}, True),
        (True, hook("1", "SUCCESS") | {"imageUrl": "http://relay.test/mj/image/1"}, True),
        (True, hook("1", "SUCCESS"), True),
        (True, hook("1", "FAILURE"), True),
        (True, hook("1", "CANCEL"), True),
        (cast(bool, None), hook("1", "FAILURE"), True),  # the former default checks too
        (True, hook("1", "IN_PROGRESS") | {"imageUrl": "https://cdn.example/1.png"}, False),
        (True, hook("1", "MODAL"), False),
        (False, hook("1", "SUCCESS") | {"imageUrl": "https://cdn.example/1.png"}, False),
        (False, hook("1", "FAILURE"), False),
    ],
)
def test_what_is_verified(verify: bool, body: dict[str, Any], expected: bool) -> None:
    """By default (True) every pushed final state is checked, progress is not; False
    checks nothing. The feed is told which."""
    feed = Feed()
    rx = WebhookReceiver(
        feed, public_url="http://me.test", relay_url=BASE, verify=verify, token="t"
    )
    assert 200 == rx.receive("/quickmj-hook/t", json.dumps(body).encode())
    ((task, verified),) = feed.calls
    assert ("1", expected) == (task.id, verified)


def test_a_failing_feed_still_answers_200() -> None:
    """A feed that raises (a closed client) gets the relay its 200; the hook is dropped."""

    def broken(task: Task, *, verify: bool = False) -> bool:
        raise RuntimeError("closed")

    rx = WebhookReceiver(broken, public_url="http://me.test", token="t")
    assert 200 == rx.receive("/quickmj-hook/t", json.dumps(hook("1", "SUCCESS")).encode())
    assert 1 == rx.stats["unknown"]


async def test_serve_binds_a_free_port_and_reads_it_back() -> None:
    """serve() on port 0 binds first and reads the bound port into the URL."""
    feed = Feed()
    rx = WebhookReceiver(feed)
    async with rx.serve("127.0.0.1", 0) as served:
        assert served is rx
        assert port_of(rx) > 0
        assert 200 == await post(rx.url, hook("1", "SUCCESS"))
    assert ["1"] == [t.id for t, _ in feed.calls]
    with pytest.raises(OSError):  # closed: nothing listens any more
        await asyncio.open_connection("127.0.0.1", port_of(rx))


async def raw_exchange(rx: WebhookReceiver, *parts: bytes, gap: float = 0.0) -> bytes:
    """Send ``parts`` on one connection (``gap`` seconds apart); the whole answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(rx))
    try:
        for part in parts:
            writer.write(part)
            await writer.drain()
            if gap:
                await asyncio.sleep(gap)
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
        await writer.wait_closed()


def request(path: str, body: bytes, *, method: str = "POST", length: bool = True) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    if length:
        head += f"Content-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


async def test_a_body_in_several_segments_is_read_whole() -> None:
    """Headers and body arriving in many small TCP segments, slowly, are read completely."""
    feed = Feed()
    body = json.dumps(hook("seg", "IN_PROGRESS", "46%")).encode()
    async with WebhookReceiver(feed, body_timeout=5).serve() as rx:
        data = request(path_of(rx), body)
        pieces = [data[i : i + 7] for i in range(0, len(data), 7)]
        answer = await raw_exchange(rx, *pieces, gap=0.002)
    assert answer.startswith(b"HTTP/1.1 200 OK")
    assert [("seg", "46%")] == [(t.id, t.progress) for t, _ in feed.calls]


@pytest.mark.parametrize(
    ("build", "status"),
    [
        (lambda rx: request(path_of(rx), b"{}", method="GET"), b"404"),
        (lambda rx: request(path_of(rx), b"{}", length=False), b"411"),
        (lambda rx: request(path_of(rx), b"").replace(b"th: 0", b"th: \xb9"), b"411"),  # '¹'
        (lambda rx: request(path_of(rx), b"").replace(b"th: 0", b"th: 9999999"), b"413"),
        (
            lambda rx: request("/quickmj-hook/wrong", json.dumps(hook("1", "SUCCESS")).encode()),
            b"404",
        ),
        (lambda rx: request(path_of(rx), b"not json"), b"400"),
    ],
)
async def test_bad_requests_get_plain_answers(build: Any, status: bytes) -> None:
    """Wrong method, no length, too long, wrong token or a bad body: a plain HTTP error, and
    the feed never sees anything."""
    feed = Feed()
    async with WebhookReceiver(feed).serve() as rx:
        answer = await raw_exchange(rx, build(rx))
    assert answer.startswith(b"HTTP/1.1 " + status)
    assert [] == feed.calls


async def test_slow_headers_and_slow_bodies_are_cut() -> None:
    """A client that never finishes its headers, or its body, is disconnected at the
    deadline, and nothing reaches the feed."""
    feed = Feed()
    async with WebhookReceiver(feed, header_timeout=0.2, body_timeout=0.2).serve() as rx:
        started = time.monotonic()
        assert b"" == await raw_exchange(rx, b"POST /quickmj-hook/x HTTP/1.1\r\nHost: x\r\n")
        body = json.dumps(hook("1", "SUCCESS")).encode()
        assert b"" == await raw_exchange(rx, request(path_of(rx), body)[:-5])
        took = time.monotonic() - started
        assert 2 == rx.stats["dropped"]
    assert 0.35 < took < 3
    assert [] == feed.calls


async def test_connections_beyond_the_limit_are_closed() -> None:
    """At most max_connections are served at once; more are closed at once (the served
    ones are unaffected)."""
    feed = Feed()
    async with WebhookReceiver(feed, max_connections=2, header_timeout=2).serve() as rx:
        idle = [await asyncio.open_connection("127.0.0.1", port_of(rx)) for _ in range(2)]
        await asyncio.sleep(0.05)
        extra_reader, extra_writer = await asyncio.open_connection("127.0.0.1", port_of(rx))
        assert b"" == await asyncio.wait_for(extra_reader.read(), 2)  # closed without a word
        extra_writer.close()
        await extra_writer.wait_closed()
        assert 1 == rx.stats["dropped"]
        _, first = idle[0]
        first.write(request(path_of(rx), json.dumps(hook("1", "SUCCESS")).encode()))
        assert (await asyncio.wait_for(idle[0][0].read(), 2)).startswith(b"HTTP/1.1 200")
        for _, writer in idle:
            writer.close()
            await writer.wait_closed()
    assert ["1"] == [t.id for t, _ in feed.calls]


async def test_mount_into_an_aiohttp_app(serve: Serve) -> None:
    """mount(app) adds the receiver's route to your own aiohttp application: same token
    check, same caps, same judging of bodies."""
    feed = Feed()
    rx = WebhookReceiver(feed, token="secret-token", max_body=1000)
    app = web.Application()
    rx.mount(app)
    origin = await serve(app)
    url = f"{origin}/quickmj-hook/secret-token"
    assert 200 == await post(url, hook("1", "IN_PROGRESS", "10%"))
    assert 404 == await post(f"{origin}/quickmj-hook/other", hook("1", "SUCCESS"))
    assert 400 == await post(url, None, raw=b"[1]")
    assert 413 == await post(url, None, raw=b"x" * 5000)
    async with aiohttp.ClientSession() as session:

        async def chunks() -> Any:
            for _ in range(3):
                yield b"y" * 600

        async with session.post(url, data=chunks()) as r:  # no Content-Length: streamed
            assert 413 == r.status
    assert [("1", "10%")] == [(t.id, t.progress) for t, _ in feed.calls]
