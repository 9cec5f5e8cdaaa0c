# pyright: strict
"""A user's async program, as the README writes it: checked by ``mypy --strict`` and
``pyright --strict`` (``.ci/run``, ``tests/test_ergonomics.py``) with no ignores, and run
by ``tests/test_ergonomics.py`` against the simulator."""

from __future__ import annotations

import asyncio
import sys

from quickmj import AccountPool, AsyncClient, AsyncJob, Submission, Task
from quickmj.testing import simulate


async def main() -> list[str]:
    async with (
        simulate(dialect="midjourney-proxy") as relay,
        AsyncClient(
            relay.api_key,
            base_url=relay.base_url,
            dialect=relay.dialect,
            auth_scheme=relay.auth_scheme,
        ) as mj,
    ):
        task: Task = await mj.imagine("a red fox").wait()
        job: AsyncJob = await mj.imagine("a blue fox")
        request_id: str | None = job.request_id
        headers: dict[str, str] = job.response_headers
        submission: Submission = mj.imagine("a green fox")
        scheduled: asyncio.Task[AsyncJob] = asyncio.create_task(submission)
        jobs = [await scheduled]
        if sys.version_info >= (3, 11):
            async with asyncio.TaskGroup() as group:
                more = [group.create_task(mj.imagine(f"fox {i}")) for i in range(2)]
            jobs += [t.result() for t in more]
        del request_id, headers
    async with (
        simulate() as relay,
        AccountPool(
            [relay.api_key], base_url=relay.base_url, dialect=relay.dialect, timeouts=None
        ) as pool,
    ):
        pooled: Task = await pool.imagine("a pooled fox", state="mine").wait()
    return [task.id, job.id, pooled.id, *(j.id for j in jobs)]


if __name__ == "__main__":
    print(asyncio.run(main()))
