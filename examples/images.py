"""From images: blend two pictures, describe one, and shorten a long prompt.

    QUICKMJ_API_KEY=sk-... python examples/images.py first.png second.png

Without arguments it draws two small PNGs itself. Without QUICKMJ_API_KEY it runs
against the embedded relay simulator.
"""

from __future__ import annotations

import asyncio
import struct
import sys
import zlib
from pathlib import Path

from _relay import async_client

from quickmj import QuickMJError


def tiny_png(rgb: tuple[int, int, int], size: int = 16) -> bytes:
    """A solid-colour PNG, so the example needs no files."""
    row = b"\x00" + bytes(rgb) * size
    raw = zlib.compress(row * size)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


async def main(images: list[bytes]) -> int:
    async with async_client() as mj:
        try:
            blended = await mj.blend(images[:5], dimensions="LANDSCAPE").wait(timeout=900)
            print("blend ->", blended.id, blended.image_url)
            described = await mj.describe(images[0]).wait(timeout=900)
            print("describe ->", described.final_prompt or described.prompt)
            long_prompt = (
                "a very detailed cinematic photograph of a red fox standing in deep fresh "
                "snow at golden hour, shallow depth of field"
            )
            short = await mj.shorten(long_prompt).wait(timeout=900)
            print("shorten ->", (short.final_prompt or short.description or "")[:200])
        except QuickMJError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    given = [Path(p).read_bytes() for p in sys.argv[1:]]
    sys.exit(asyncio.run(main(given or [tiny_png((200, 60, 40)), tiny_png((30, 90, 200))])))
