# pyright: strict
"""User code that type checkers must accept: every public method, async and sync.

Checked by ``mypy --strict`` and ``pyright`` (``tests/test_ergonomics.py`` and ``.ci/run``);
never executed. ``assert_type`` pins the exact types users get back.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

from typing_extensions import assert_type

import quickmj
from quickmj import (
    AsyncClient,
    AsyncJob,
    BatchSummary,
    Button,
    Client,
    Job,
    PollPolicy,
    QuickMJError,
    RetryPolicy,
    Submission,
    SubmitOutcomeUnknownError,
    SubmitResult,
    Task,
    TaskFailedError,
    TaskStatus,
    TaskTimeoutError,
    Timeouts,
)
from quickmj.testing import MockTransport, Request, Response
from quickmj.webhook import WebhookReceiver


async def async_usage(flag: bool) -> None:
    async with AsyncClient(
        "key",
        base_url="https://relay.example",
        mode="fast",
        dialect="quickrouter",
        timeouts=Timeouts(request=60),
        retry=RetryPolicy(max_attempts=2),
        poll=PollPolicy(interval=3),
    ) as mj:
        assert_type(mj.imagine("a fox"), Submission)
        job = await mj.imagine("a fox", images=[b"png"], bot_type="niji", state="s")
        assert_type(job, AsyncJob)
        assert_type(job.id, str)
        assert_type(job.queued, bool | None)
        assert_type(job.queue_position, int | None)
        assert_type(job.needs_modal, bool)
        assert_type(job.result, SubmitResult)
        task = await mj.imagine("a fox").wait(timeout=600, on_progress=lambda t: None)
        assert_type(task, Task)
        assert_type(await job.wait(timeout=1.5 if flag else None), Task)
        up = await mj.action(task, "U1").wait()
        assert_type(up, Task)
        assert_type(await job.action(Button("MJ::JOB::upsample::1::h")), AsyncJob)
        assert_type(await job.modal(prompt="--zoom 2"), AsyncJob)
        assert_type(await mj.modal(job, prompt="x", mask=Path("m.png")), AsyncJob)
        assert_type(await mj.blend([b"a", b"b"], dimensions="SQUARE"), AsyncJob)
        assert_type(await mj.describe(Path("a.png")), AsyncJob)
        assert_type(await mj.shorten("a long prompt"), AsyncJob)
        assert_type(await mj.change(task, "U2"), AsyncJob)
        assert_type(await mj.simple_change(f"{task.id} V1"), AsyncJob)
        assert_type(await mj.video("waves", image=b"png", motion="low"), AsyncJob)
        assert_type(await mj.edits("add a hat", b"png"), AsyncJob)
        assert_type(await mj.swap_face(b"face", b"target"), AsyncJob)
        assert_type(await mj.upload_images([b"png"]), list[str])
        assert_type(await mj.fetch(job), Task)
        assert_type(await mj.fetch_many([job, task, "123"]), list[Task])
        assert_type(await mj.list_tasks(["1", "2"]), list[Task])
        assert_type(await mj.recent_tasks(), list[Task])
        assert_type(await mj.image_seed(task), str)
        assert_type(await mj.cancel("123"), None)
        assert_type(await mj.download(task, "out/", index=1, filename="x"), Path)
        assert_type(await mj.wait("123", timeout=5), Task)
        assert_type(mj.as_completed([job, "1"], timeout=60), AsyncIterator[Task])
        assert_type(mj.watch(job), AsyncIterator[Task])
        async for t in mj.watch(job):
            assert_type(t.status, TaskStatus)
        assert_type(await job.fetch(), Task)
        assert_type(await job.download("out/"), Path)
        assert_type(await job.image_seed(), str)
        assert_type(job.watch(), AsyncIterator[Task])
        async with mj.webhook_receiver("127.0.0.1", 0) as receiver:
            assert_type(receiver.url, str)
        summary = await quickmj.run_batch(mj, quickmj.read_prompts("p.txt"), "out/", upscale=["U1"])
        assert_type(summary, BatchSummary)
        assert_type(mj.base_url, str)
        assert_type(mj.is_closed, bool)
    try:
        await AsyncClient("k").imagine("x")
    except SubmitOutcomeUnknownError as exc:
        assert_type(exc.state, str | None)
    except TaskFailedError as exc:
        assert_type(exc.task, Task)
    except TaskTimeoutError as exc:
        assert_type(exc.task_id, str)
    except QuickMJError:
        pass


def sync_usage() -> None:
    with Client("key", dialect="trueai") as mj:
        job = mj.imagine("a fox", state="s")
        assert_type(job, Job)
        assert_type(mj.imagine("a fox").wait(timeout=60), Task)
        assert_type(job.id, str)
        assert_type(job.wait(), Task)
        assert_type(job.action("U1"), Job)
        assert_type(job.modal(prompt="--zoom 2"), Job)
        assert_type(job.watch(), Iterator[Task])
        assert_type(mj.blend([b"a", b"b"]), Job)
        assert_type(mj.describe(b"png"), Job)
        assert_type(mj.shorten("p"), Job)
        assert_type(mj.action("1", "U1"), Job)
        assert_type(mj.modal("1", prompt="p"), Job)
        assert_type(mj.change("1", "V1"), Job)
        assert_type(mj.simple_change("1 R"), Job)
        assert_type(mj.video("p"), Job)
        assert_type(mj.edits("p", b"png"), Job)
        assert_type(mj.swap_face(b"a", b"b"), Job)
        assert_type(mj.upload_images(b"png"), list[str])
        assert_type(mj.fetch(job), Task)
        assert_type(mj.fetch_many([job]), list[Task])
        assert_type(mj.list_tasks(["1"]), list[Task])
        assert_type(mj.recent_tasks(), list[Task])
        assert_type(mj.image_seed("1"), str)
        assert_type(mj.cancel("1"), None)
        assert_type(mj.download(job.wait(), "out/"), Path)
        assert_type(mj.wait(job, timeout=5), Task)
        assert_type(mj.as_completed([job, "1"]), Iterator[Task])
        assert_type(mj.watch("1"), Iterator[Task])
        assert_type(mj.webhook_receiver(), AbstractContextManager[WebhookReceiver])
        assert_type(mj.is_closed, bool)
    mj.close()


async def testing_usage() -> None:
    def handler(request: Request) -> Response:
        return Response(200, json={"id": "1", "status": "SUCCESS"})

    async with AsyncClient("k", transport=MockTransport(handler)) as mj:
        assert_type(await mj.fetch("1"), Task)
