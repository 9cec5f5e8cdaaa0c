"""One imagine job with live progress, an upscale, and the image saved to disk.

    QUICKMJ_API_KEY=sk-... python examples/async_single_job.py "a red fox in snow"

Without QUICKMJ_API_KEY it runs against the embedded relay simulator.
"""

from __future__ import annotations

import asyncio
import sys

from _relay import async_client

from quickmj import QuickMJError, Task


def show(task: Task) -> None:
    print(f"  {task.id} {task.status.value:<12} {task.progress or ''}", flush=True)


async def main(prompt: str) -> int:
    async with async_client() as mj:
        try:
            job = await mj.imagine(prompt)
            print("submitted", job.id)
            grid = await job.wait(timeout=900, on_progress=show)
            print("buttons:", ", ".join(b.display for b in grid.buttons))
            upscaled = await mj.action(grid, "U1").wait(timeout=600, on_progress=show)
            path = await mj.download(upscaled, "out/")
        except QuickMJError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    print("saved", path)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(" ".join(sys.argv[1:]) or "a red fox in snow --v 6.1")))
