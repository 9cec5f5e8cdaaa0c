# pyright: strict
"""A user's blocking program: checked by ``mypy --strict`` and ``pyright --strict`` with
no ignores (``.ci/run``), and run by ``tests/test_ergonomics.py``."""

from __future__ import annotations

import sys

from quickmj import Client, Job, Task


def main(base_url: str, api_key: str) -> str:
    with Client(api_key, base_url=base_url, dialect="quickrouter") as mj:
        task: Task = mj.imagine("a red fox").wait()
        job: Job = mj.action(task, "U1")
        request_id: str | None = job.request_id
        print(job.id, request_id, file=sys.stderr)
        upscaled: Task = job.wait(timeout=600)
        return upscaled.id


if __name__ == "__main__":
    print(main(sys.argv[1], sys.argv[2]))
