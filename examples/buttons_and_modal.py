"""Buttons and the modal flow: upscale, vary, reroll, zoom out, then a custom zoom.

    QUICKMJ_API_KEY=sk-... python examples/buttons_and_modal.py "a red fox in snow"

Custom Zoom (and Vary Region) wait for ``modal()``: the job answers ``needs_modal`` and
finishes only once you confirm it with a prompt (``--zoom 1..2``) or a mask. On relays
whose routes are the older change API (self-hosted midjourney-proxy) use ``mj.change``.
Without QUICKMJ_API_KEY it runs against the embedded relay simulator.
"""

from __future__ import annotations

import asyncio
import sys

from _relay import async_client

from quickmj import QuickMJError


async def main(prompt: str) -> int:
    async with async_client() as mj:
        try:
            grid = await mj.imagine(prompt).wait(timeout=900)
            print("grid", grid.id, "buttons:", ", ".join(b.display for b in grid.buttons))
            variation = await mj.action(grid, "V2").wait(timeout=900)
            print("V2 ->", variation.id, variation.status.value)
            up = await mj.action(grid, "U1").wait(timeout=900)
            print("U1 ->", up.id, "buttons:", ", ".join(b.display for b in up.buttons))
            zoom = await mj.action(up, "Custom Zoom")
            print("custom zoom", zoom.id, "needs a modal:", zoom.needs_modal)
            zoomed = await zoom.modal(prompt=f"{prompt} --zoom 1.5").wait(timeout=900)
            print("zoomed ->", zoomed.id, zoomed.status.value, zoomed.image_url)
            print("saved", await mj.download(zoomed, "out/"))
        except QuickMJError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(" ".join(sys.argv[1:]) or "a red fox in snow --v 6.1")))
