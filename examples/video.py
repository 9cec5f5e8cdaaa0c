"""Animate an image (``/submit/video``: TrueAI and newer QuickRouter relays).

    QUICKMJ_API_KEY=sk-... QUICKMJ_DIALECT=trueai python examples/video.py first_frame.png

Without QUICKMJ_API_KEY it runs against the embedded relay simulator (TrueAI's dialect
unless QUICKMJ_DIALECT says otherwise). A relay without the route answers with
UnsupportedByRelayError, naming the relays that have it.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

os.environ.setdefault("QUICKMJ_DIALECT", "trueai")

from _relay import async_client
from images import tiny_png

from quickmj import QuickMJError


async def main(frame: bytes) -> int:
    async with async_client() as mj:
        try:
            video = await mj.video("gentle waves, slow camera pan", image=frame, motion="low").wait(
                timeout=1800
            )
            print("video ->", video.id, video.video_url or [v.url for v in video.video_urls])
            print("saved", await mj.download(video, "out/"))
        except QuickMJError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    first = Path(sys.argv[1]).read_bytes() if len(sys.argv) > 1 else tiny_png((40, 160, 90))
    sys.exit(asyncio.run(main(first)))
