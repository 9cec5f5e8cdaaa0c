"""A minimal relay for benchmarks: N in-progress tasks, pre-rendered JSON, nothing else.

Run as ``python benchmarks/_mini_relay.py N PORT_FILE``. It writes its port to PORT_FILE
and serves until killed. Task bodies are rendered once, so the server costs the same for
every client under test and the measurement is about the client.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys

from aiohttp import web

BASE_ID = 1730621826053000


def task_json(task_id: str) -> bytes:
    # The shape QuickRouter sends for a running job (see the relay's docs).
    return json.dumps(
        {
            "id": task_id,
            "action": "IMAGINE",
            "customId": "",
            "botType": "",
            "prompt": f"benchmark prompt {task_id} --v 6.1",
            "promptEn": f"benchmark prompt {task_id} --v 6.1",
            "description": "Submit success",
            "state": "",
            "submitTime": 1730621826053,
            "startTime": 1730621828024,
            "finishTime": 0,
            "imageUrl": f"https://cdn.example/attachments/{task_id}_grid_0.webp?ex=6728831f&is=6727319f",
            "status": "IN_PROGRESS",
            "progress": "46%",
            "failReason": "",
            "buttons": [],
            "maskBase64": "",
            "properties": {
                "finalPrompt": f"benchmark prompt {task_id} --v 6.1",
                "finalZhPrompt": "",
            },
        },
        ensure_ascii=False,
    ).encode()


def build_app(n: int) -> web.Application:
    bodies = {str(BASE_ID + i): task_json(str(BASE_ID + i)) for i in range(n)}
    rng = random.Random(0)

    async def list_by_condition(request: web.Request) -> web.Response:
        ids = (await request.json()).get("ids") or []
        found = [bodies[i] for i in dict.fromkeys(ids) if i in bodies]
        rng.shuffle(found)  # relays do not keep the order
        return web.Response(body=b"[" + b",".join(found) + b"]", content_type="application/json")

    async def fetch(request: web.Request) -> web.Response:
        body = bodies.get(request.match_info["id"], b"")
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_post("/mj/task/list-by-condition", list_by_condition)
    app.router.add_get("/mj/task/{id}/fetch", fetch)
    return app


async def main(n: int, port_file: str) -> None:
    runner = web.AppRunner(build_app(n), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    with open(port_file, "w") as fh:
        fh.write(str(port))
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2]))
