"""The SDK end to end against every relay dialect the simulator speaks.

The simulator writes each server's own JSON (never through quickmj's converter), so these
tests catch quickmj disagreeing with QuickRouter (new-api), midjourney-proxy or TrueAI.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from fakes import SIM_POLL as FAST
from fakes import sim_client as client

from quickmj import (
    Client,
    PollPolicy,
    SubmitOutcomeUnknownError,
    SubmitRejectedError,
    Task,
    TaskFailedError,
    TaskNeedsModalError,
    TaskNotFoundError,
    TaskStatus,
    UnsupportedByRelayError,
)
from quickmj.testing import FaultConfig, RunningSimulator, SimulatorConfig, simulate

DIALECTS = ("quickrouter", "midjourney-proxy", "trueai")
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 32


@pytest.fixture(params=DIALECTS)
def quickmj_simulator_config(request: pytest.FixtureRequest) -> SimulatorConfig:
    """The shipped ``quickmj_relay`` fixture (quickmj's pytest plugin) serves each dialect."""
    return SimulatorConfig(dialect=request.param, seed=7)


@pytest.fixture
def relay(quickmj_relay: RunningSimulator) -> RunningSimulator:
    return quickmj_relay


async def test_imagine_upscale_download(relay: Any, tmp_path: Path) -> None:
    """The main path on every dialect: imagine, wait, upscale the first image, save it."""
    async with client(relay) as mj:
        job = await mj.imagine("a red fox in snow --v 6.1")
        assert job.id.isdigit() and 1 == job.code
        grid = await job.wait(timeout=10)
        assert TaskStatus.SUCCESS == grid.status and grid.image_url
        if relay.dialect == "midjourney-proxy":  # OSS-Java has no buttons: change instead
            up = await mj.change(grid, "U1").wait(timeout=10)
        else:
            up = await job.action("U1").wait(timeout=10)
        path = await mj.download(up, tmp_path)
    assert TaskStatus.SUCCESS == up.status
    assert b"\x89PNG" == path.read_bytes()[:4]


async def test_many_jobs_as_completed_and_fetch_many(relay: Any) -> None:
    """Handles, ids and tasks mix in as_completed and fetch_many, in input order."""
    async with client(relay) as mj:
        jobs = [await mj.imagine(f"prompt {i}") for i in range(12)]
        done = [t async for t in mj.as_completed(jobs, timeout=20)]
        assert {j.id for j in jobs} == {t.id for t in done}
        fetched = await mj.fetch_many([jobs[0], done[3], jobs[5].id])
    assert [jobs[0].id, done[3].id, jobs[5].id] == [t.id for t in fetched]
    assert all(t.is_success for t in fetched)


async def test_progress_fires_once_per_real_state(relay: Any) -> None:
    """on_progress sees each distinct state once (new-api's ?rand= is not a change)."""
    seen: list[tuple[str, str | None]] = []
    async with client(relay) as mj:
        await mj.imagine("a cat").wait(
            timeout=10, on_progress=lambda t: seen.append((t.status.value, t.progress))
        )
    assert len(seen) == len(set(seen)), seen
    assert ("SUCCESS", "100%") == seen[-1]


async def test_unknown_ids_are_not_found_everywhere(relay: Any) -> None:
    """One not-found rule: fetch, image-seed, waiting, on every dialect's own answer."""
    async with client(relay) as mj:
        with pytest.raises(TaskNotFoundError):
            await mj.fetch("1730621826053455")
        with pytest.raises(TaskNotFoundError):
            await mj.wait("1730621826053455", timeout=10)
        if relay.dialect != "midjourney-proxy":
            with pytest.raises(TaskNotFoundError):
                await mj.image_seed("1730621826053455")


async def test_failures_and_bans_are_typed(relay: Any) -> None:
    """A failing job raises TaskFailedError with its reason; a banned prompt is refused
    at submit (code 24) or fails as a task (TrueAI), never silently."""
    async with client(relay) as mj:
        with pytest.raises(TaskFailedError) as failed:
            await mj.imagine("a failword cat").wait(timeout=10)
        assert failed.value.fail_reason
        with pytest.raises((TaskFailedError, SubmitRejectedError)) as banned:
            await mj.imagine("a badword cat").wait(timeout=10)
    assert banned.value is not None


async def test_routes_a_relay_lacks_are_named(relay: Any) -> None:
    """A route the relay does not serve is UnsupportedByRelayError naming who serves it."""
    lacking = {
        "quickrouter": ("recent_tasks", ()),
        "midjourney-proxy": ("image_seed", ("1",)),
        "trueai": ("change", ("1", "U1")),
    }
    name, args = lacking[relay.dialect]
    async with client(relay) as mj:
        with pytest.raises(UnsupportedByRelayError) as info:
            result = getattr(mj, name)(*args)
            await result
    assert info.value.dialects and relay.dialect not in info.value.dialects


@pytest.mark.parametrize("dialect", ["trueai", "quickrouter"])
async def test_custom_zoom_confirmed_later_finishes(dialect: str) -> None:
    """Custom zoom: code 21, a pause, modal() -> the same id runs to SUCCESS, even where
    new-api keeps a stale MODAL row that fetch answers (refresh lag on)."""
    config: dict[str, Any] = {"dialect": dialect, "seed": 2}
    if dialect == "quickrouter":
        config["refresh_interval"] = 0.3
    policy = PollPolicy(interval=0.05, first_poll=0.01, modal_timeout=0.2, adaptive=False)
    async with simulate(**config) as relay, client(relay, poll=policy) as mj:
        grid = await mj.imagine("a fox").wait(timeout=20)
        up = await mj.action(grid, "U1").wait(timeout=20)
        zoom = await mj.action(up, "Custom Zoom")
        assert zoom.needs_modal
        with pytest.raises(TaskNeedsModalError):
            await zoom.wait(timeout=5)
        await asyncio.sleep(0.5)  # the human pause
        confirmed = await zoom.modal(prompt="a fox --zoom 1.5")
        assert zoom.id == confirmed.id
        done = await confirmed.wait(timeout=20)
        fresh = await mj.fetch(zoom.id)
    assert TaskStatus.SUCCESS == done.status and TaskStatus.SUCCESS == fresh.status


async def test_queued_is_truthful_per_dialect() -> None:
    """Code 22 says queued where the relay says it; new-api hides it: None, not False."""
    for dialect, expected in (("midjourney-proxy", True), ("quickrouter", None)):
        async with simulate(dialect=dialect, concurrency=1) as relay, client(relay) as mj:
            jobs = [await mj.imagine(f"p{i}") for i in range(3)]
            assert expected in {j.queued for j in jobs[1:]}
            if expected:
                assert any(j.queue_position for j in jobs)
            async for _ in mj.as_completed(jobs, timeout=20):
                pass


async def test_relay_upstream_failure_on_submit_is_an_unknown_outcome() -> None:
    """new-api's code 5 do_request_failed: the job may exist upstream. Never a rejection."""
    faults = FaultConfig(relay_request_failed_after_create_rate=1.0, routes=["submit"])
    async with simulate(faults=faults) as relay, client(relay) as mj:
        with pytest.raises(SubmitOutcomeUnknownError) as info:
            await mj.imagine("a cat")
    assert 1 == relay.simulator.counters["POST /submit/imagine"]
    assert info.value.request is not None


async def test_unknown_fields_are_kept(relay: Any) -> None:
    """Fields quickmj has no attribute for stay reachable in Task.raw and Task.extra."""
    async with client(relay) as mj:
        task = await mj.imagine("a cat").wait(timeout=10)
    assert task.raw["id"] == task.id
    if relay.dialect == "trueai":
        assert {"thumbnailUrl", "jobId", "mode"} & set(task.extra)


def test_sync_client_end_to_end(tmp_path: Path) -> None:
    """The blocking facade on the same path (its own loop thread; the relay in another)."""
    from anyio.from_thread import start_blocking_portal

    with (
        start_blocking_portal() as portal,
        portal.wrap_async_context_manager(simulate(dialect="trueai")) as relay,
        Client(relay.api_key, base_url=relay.base_url, dialect="trueai", poll=FAST) as mj,
    ):
        job = mj.imagine("a cat")
        grid = job.wait(timeout=10)
        up = job.action("U2").wait(timeout=10)
        path = mj.download(up, tmp_path)
        tasks = list(mj.as_completed([mj.imagine("a dog"), mj.imagine("a fox")], timeout=10))
    assert isinstance(grid, Task) and b"\x89PNG" == path.read_bytes()[:4]
    assert 2 == len(tasks)


async def test_other_endpoints(relay: Any) -> None:
    """describe, shorten, blend, video, upload on the dialects that serve them."""
    async with client(relay) as mj:
        blend = await mj.blend([PNG, PNG]).wait(timeout=10)
        assert blend.is_success
        described = await mj.describe(PNG).wait(timeout=10)
        assert described.final_prompt or described.prompt
        if relay.dialect == "midjourney-proxy":
            return
        shortened = await mj.shorten("a very long prompt with many words").wait(timeout=10)
        assert shortened.is_success
        urls = await mj.upload_images([PNG])
        assert 1 == len(urls) and urls[0].startswith("http")
        video = await mj.video("waves", image=PNG).wait(timeout=10)
        assert video.video_url or video.video_urls
