"""Imitations of real third-party clients, written against the servers' public behaviour
with raw aiohttp, that must work against the simulator unchanged."""

from __future__ import annotations

import asyncio
import json
import struct
import time
import zlib
from typing import Any

import aiohttp
import pytest

from quickmj.testing._sim import RunningSimulator, simulate

FAST: dict[str, Any] = {"queue_seconds": 0.01, "run_seconds": 0.05}


# ---------------------------------------------------------------- a tiny PNG decoder


def decode_png(data: bytes) -> tuple[int, int, list[bytes]]:
    """(width, height, RGB rows) of an 8-bit RGB, non-interlaced PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height = 8, b"", 0, 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, chunk = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", chunk[:10])
            assert (depth, colour) == (8, 2)
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    raw, stride, rows, prev = zlib.decompress(idat), width * 3, [], bytes(width * 3)
    for y in range(height):
        kind, line = (
            raw[y * (stride + 1)],
            bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)]),
        )
        for x in range(stride):
            left = line[x - 3] if x >= 3 else 0
            up, corner = prev[x], prev[x - 3] if x >= 3 else 0
            if kind == 1:
                line[x] = (line[x] + left) & 0xFF
            elif kind == 2:
                line[x] = (line[x] + up) & 0xFF
            elif kind == 3:
                line[x] = (line[x] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                pred = left if pa <= pb and pa <= pc else up if pb <= pc else corner
                line[x] = (line[x] + pred) & 0xFF
        rows.append(bytes(line))
        prev = bytes(line)
    return width, height, rows


def split_grid(png: bytes) -> list[tuple[int, int, int]]:
    """The top-left pixel of each quadrant of a 2x2 grid, U1..U4 order."""
    width, height, rows = decode_png(png)
    half_w, half_h = width // 2, height // 2
    out = []
    for y, x in ((0, 0), (0, half_w), (half_h, 0), (half_h, half_w)):
        r, g, b = rows[y][x * 3 : x * 3 + 3]
        out.append((r, g, b))
    return out


# ---------------------------------------------------------------- (a) a chat bot


class ChatBot:
    """A Discord/Telegram-style bot: /imagine, wait, press U1 via /submit/change, send the
    four crops. Configured with the relay's base URL and auth header."""

    def __init__(self, base: str, headers: dict[str, str]) -> None:
        self.base = base.rstrip("/") + "/mj"
        self.headers = headers

    async def _json(self, resp: aiohttp.ClientResponse) -> Any:
        text = await resp.text()
        return json.loads(text) if text else None  # relays differ in content types

    async def submit(self, s: aiohttp.ClientSession, path: str, body: dict[str, Any]) -> str:
        async with s.post(self.base + path, json=body, headers=self.headers) as resp:
            answer = await self._json(resp)
        if answer.get("code") not in (1, 22):
            raise RuntimeError(answer.get("description"))
        return str(answer["result"])

    async def wait(self, s: aiohttp.ClientSession, task_id: str) -> dict[str, Any]:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            async with s.get(f"{self.base}/task/{task_id}/fetch", headers=self.headers) as resp:
                task = await self._json(resp)
            if task and task.get("status") == "SUCCESS":
                return dict(task)
            if task and task.get("status") == "FAILURE":
                raise RuntimeError(task.get("failReason"))
            await asyncio.sleep(0.02)
        raise TimeoutError(task_id)

    async def download(self, s: aiohttp.ClientSession, url: str) -> bytes:
        async with s.get(url) as resp:  # image URLs need no key
            resp.raise_for_status()
            return await resp.read()

    async def handle_imagine(self, prompt: str) -> dict[str, Any]:
        async with aiohttp.ClientSession() as s:
            grid = await self.wait(s, await self.submit(s, "/submit/imagine", {"prompt": prompt}))
            crops = split_grid(await self.download(s, grid["imageUrl"]))
            body = {"taskId": grid["id"], "action": "UPSCALE", "index": 1}
            upscale = await self.wait(s, await self.submit(s, "/submit/change", body))
            _, _, rows = decode_png(await self.download(s, upscale["imageUrl"]))
            return {"grid": grid, "crops": crops, "u1_pixel": tuple(rows[0][:3])}


@pytest.mark.parametrize("dialect", ["quickrouter", "midjourney-proxy"])
async def test_chat_bot(dialect: str) -> None:
    async with simulate(dialect=dialect, **FAST) as relay:
        bot = ChatBot(relay.base_url, relay.headers)
        result = await bot.handle_imagine("a lighthouse at dusk")
    assert 4 == len(set(result["crops"]))
    assert result["crops"][0] == result["u1_pixel"]  # U1 upscales the first quadrant
    assert 1 == relay.simulator.counters["POST /submit/change"]


# ---------------------------------------------------------------- (b) a web UI


class MidjourneyWebUI:
    """A TypeScript-style panel for a self-hosted proxy: sends ``Mj-Api-Secret``, offers
    U/V through ``/submit/change`` and ``/submit/simple-change``, renders ``/task/list``."""

    def __init__(self, base: str, secret: str) -> None:
        self.base = base + "/mj"
        self.headers = {"Mj-Api-Secret": secret, "Content-Type": "application/json"}

    async def request(
        self, s: aiohttp.ClientSession, method: str, path: str, body: Any = None
    ) -> Any:
        data = None if body is None else json.dumps(body)
        async with s.request(method, self.base + path, data=data, headers=self.headers) as resp:
            if resp.status != 200:
                raise RuntimeError(f"HTTP {resp.status}")
            text = await resp.text()
            return json.loads(text) if text else None

    async def gallery(self, s: aiohttp.ClientSession) -> list[str]:
        tasks = await self.request(s, "GET", "/task/list")
        return [f"{t['action']}:{t['status']}:{t['progress']}" for t in tasks]


async def test_web_ui_for_midjourney_proxy() -> None:
    async with simulate(dialect="midjourney-proxy", **FAST) as relay, aiohttp.ClientSession() as s:
        ui = MidjourneyWebUI(relay.base_url, relay.api_key)
        first = await ui.request(s, "POST", "/submit/imagine", {"prompt": "a fox"})
        assert 1 == first["code"]
        await asyncio.sleep(0.1)
        v1 = await ui.request(
            s,
            "POST",
            "/submit/change",
            {"taskId": first["result"], "action": "VARIATION", "index": 1},
        )
        u2 = await ui.request(
            s, "POST", "/submit/simple-change", {"content": f"{first['result']} U2"}
        )
        assert (1, 1) == (v1["code"], u2["code"])
        assert await ui.request(s, "GET", "/task/404/fetch") is None  # empty body: not found
        await asyncio.sleep(0.1)
        gallery = await ui.gallery(s)
    assert ["UPSCALE:SUCCESS:100%", "VARIATION:SUCCESS:100%", "IMAGINE:SUCCESS:100%"] == gallery


# ---------------------------------------------------------------- (c) a button-driven UI


class ButtonUI:
    """A web UI that renders whatever media a task has and presses its buttons; code 21
    (or a task that sits in MODAL) opens the "confirm" dialog that calls /submit/modal."""

    def __init__(self, relay: RunningSimulator) -> None:
        self.relay = relay
        self.headers = relay.headers

    async def call(self, s: aiohttp.ClientSession, method: str, path: str, body: Any = None) -> Any:
        async with s.request(method, self.relay.url(path), json=body, headers=self.headers) as resp:
            text = await resp.text()
            return resp.status, (json.loads(text) if text else None)

    @staticmethod
    def render(task: dict[str, Any]) -> str:
        if task.get("videoUrls"):
            return f"video x{len(task['videoUrls'])}"
        if task.get("imageUrls"):
            return f"images x{len(task['imageUrls'])}"
        return "image" if task.get("imageUrl") else "nothing"

    async def settle(self, s: aiohttp.ClientSession, task_id: str, prompt: str) -> dict[str, Any]:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            _, task = await self.call(s, "POST", "/task/list-by-condition", {"ids": [task_id]})
            rows = [t for t in task if t["id"] == task_id]
            # A relay may list a task twice: the most advanced row wins.
            row = max(
                rows, key=lambda t: (t["status"] in ("SUCCESS", "FAILURE"), t["status"] != "MODAL")
            )
            if row["status"] == "SUCCESS":
                return dict(row)
            if row["status"] == "MODAL" and all(r["status"] == "MODAL" for r in rows):
                await self.confirm(s, task_id, prompt)
            await asyncio.sleep(0.02)
        raise TimeoutError(task_id)

    async def confirm(self, s: aiohttp.ClientSession, task_id: str, prompt: str) -> None:
        _, answer = await self.call(
            s, "POST", "/submit/modal", {"taskId": task_id, "prompt": prompt}
        )
        assert answer["code"] in (1, 22), answer

    async def press(
        self, s: aiohttp.ClientSession, task: dict[str, Any], label: str, **extra: Any
    ) -> dict[str, Any]:
        button = next(b for b in task["buttons"] if label in (b["label"], b["emoji"]))
        body = {"taskId": task["id"], "customId": button["customId"], **extra}
        status, answer = await self.call(s, "POST", "/submit/action", body)
        if status != 200:
            raise RuntimeError(answer)
        if answer["code"] == 21:
            await self.confirm(s, answer["result"], "a castle --zoom 2")
        return await self.settle(s, answer["result"], "a castle --zoom 2")

    async def imagine(self, s: aiohttp.ClientSession, prompt: str) -> dict[str, Any]:
        _, answer = await self.call(s, "POST", "/submit/imagine", {"prompt": prompt})
        return await self.settle(s, answer["result"], prompt)


async def test_button_ui_on_trueai() -> None:
    async with (
        simulate(dialect="trueai", fill_image_urls=True, **FAST) as relay,
        aiohttp.ClientSession() as s,
    ):
        ui = ButtonUI(relay)
        grid = await ui.imagine(s, "a castle")
        assert "images x4" == ui.render(grid)
        upscale = await ui.press(s, grid, "U1")
        assert "image" == ui.render(upscale)
        zoomed = await ui.press(s, upscale, "Custom Zoom")
        assert ("ZOOM", "image") == (zoomed["action"], "image" if zoomed["imageUrl"] else "")
        remixed = await ui.press(s, grid, "V1", enableRemix=True)
        assert "VARIATION" == remixed["action"]
        video = await ui.press(s, upscale, "Animate (Low motion)")
        assert "video x4" == ui.render(video)


async def test_button_ui_on_quickrouter() -> None:
    async with simulate(remix=True, **FAST) as relay, aiohttp.ClientSession() as s:
        ui = ButtonUI(relay)
        grid = await ui.imagine(s, "a castle")
        assert "image" == ui.render(grid)
        upscale = await ui.press(s, grid, "U1")
        zoomed = await ui.press(s, upscale, "Custom Zoom")  # code 21 arrives as is
        assert "SUCCESS" == zoomed["status"]
        varied = await ui.press(s, grid, "V1")  # code 21 rewritten to 1: found MODAL by polling
        assert "SUCCESS" == varied["status"]
        modal_rows = relay.simulator.dialect.db.rows[varied["id"]]  # type: ignore[attr-defined]
        assert ["VARIATION", "MODAL"] == [row.action for row in modal_rows]
        with pytest.raises(RuntimeError, match="unknown_action"):
            await ui.press(s, upscale, "Animate (Low motion)")
