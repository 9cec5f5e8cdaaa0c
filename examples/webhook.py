"""Push updates: a notifyHook receiver wakes waiters as soon as the relay reports.

    python examples/webhook.py

With a real relay, pass the address it can reach, e.g.
``mj.webhook_receiver("0.0.0.0", 8099, public_url="https://me.example:8099")``
(QuickRouter and other billing gateways may strip notifyHook; polling then carries on).
"""

from __future__ import annotations

import asyncio
import os
import time

# The simulated TrueAI proxy delivers hooks (QuickRouter strips notifyHook by default).
os.environ.setdefault("QUICKMJ_DIALECT", "trueai")

from _relay import async_client


async def main() -> None:
    async with async_client() as mj, mj.webhook_receiver() as receiver:
        print("hook URL:", receiver.url.rsplit("/", 1)[0] + "/<secret>")
        started = time.perf_counter()
        results = [await mj.imagine(p) for p in ("a fox", "a crane", "a koi pond")]
        async for task in mj.as_completed(results, timeout=900):
            print(f"{task.id} {task.status.value} after {time.perf_counter() - started:.2f} s")
        print("pushes received:", receiver.stats["accepted"])


if __name__ == "__main__":
    asyncio.run(main())
