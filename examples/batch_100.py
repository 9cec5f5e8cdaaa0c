"""A batch of 100 prompts from Python: bounded concurrency, upscales, manifest, resume.

    python examples/batch_100.py [OUT_DIR]

The same runner as ``quickmj batch``. Run it twice with the same OUT_DIR: the second run
resumes from the journal and submits nothing that was already submitted.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from _relay import async_client

from quickmj import BatchProgress, read_prompts, run_batch

HERE = Path(__file__).parent


def show(p: BatchProgress) -> None:
    print(f"\r{p.done}/{p.total} done, {p.running} running, {p.failed} failed", end="", flush=True)


async def main(out: str) -> int:
    items = read_prompts(HERE / "prompts_100.txt")
    async with async_client() as mj:
        resume = (Path(out) / ".quickmj-journal.sqlite").exists()  # a second run resumes
        summary = await run_batch(
            mj, items, out, concurrency=16, upscale=["U1"], resume=resume, on_progress=show
        )
    print(f"\n{summary.succeeded}/{summary.total} succeeded; manifest: {summary.manifest}")
    return 0 if summary.ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "out/batch-100")))
