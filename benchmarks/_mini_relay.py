"""A minimal relay for benchmarks: N tasks, pre-rendered JSON, nothing else.

Run as ``python benchmarks/_mini_relay.py N PORT_FILE [--shape finished|running]
[--cost-ms C] [--cost-us-per-task U]``. It writes its port to PORT_FILE and serves until
killed. Task bodies are rendered once, so the server costs the same for every client under
test and the measurement is about the client. ``--cost-*`` adds a realistic server-side
cost per request (a relay reading its database), spent asleep so it does not take the
client's CPU.

Shapes: ``finished`` is a finished grid as TrueAI-style relays send it (9 buttons, 4 image
URLs, emoji escaped); ``running`` is a running task as new-api sends it (no buttons).
``quickrouter``, ``midjourney-proxy`` and ``trueai`` are each dialect's real answer for a
finished imagine, byte for byte as the relay simulator writes it (``_payloads.json``:
new-api's 20-field struct with 9 buttons; novicezk's Task without buttons; TrueAI's
~70-field TaskInfo with 9 buttons, 4 ``imageUrls`` and a full ``properties``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
from pathlib import Path

from aiohttp import web

BASE_ID = 1730621826053000
_HASH = "d0bb3932-3a76-4f9b-b94f-22117ee64b6b"


def finished_task(task_id: str) -> dict[str, object]:
    buttons = [
        *({"customId": f"MJ::JOB::upsample::{k}::{_HASH}", "emoji": "", "label": f"U{k}",
           "type": 2, "style": 2} for k in range(1, 5)),
        {"customId": f"MJ::JOB::reroll::0::{_HASH}::SOLO", "emoji": "🔄", "label": "",
         "type": 2, "style": 2},
        *({"customId": f"MJ::JOB::variation::{k}::{_HASH}", "emoji": "", "label": f"V{k}",
           "type": 2, "style": 2} for k in range(1, 5)),
    ]  # fmt: skip
    return {
        "id": task_id,
        "action": "IMAGINE",
        "customId": "",
        "botType": "MID_JOURNEY",
        "prompt": f"benchmark prompt {task_id} --v 6.1",
        "promptEn": f"benchmark prompt {task_id} --v 6.1",
        "description": "Submit success",
        "state": "",
        "submitTime": 1730621826053,
        "startTime": 1730621828024,
        "finishTime": 1730621888024,
        "imageUrl": f"https://cdn.example/attachments/{task_id}.png?ex=6728831f&is=6727319f",
        "imageUrls": [{"url": f"https://cdn.example/{task_id}_{k}.png"} for k in range(4)],
        "status": "SUCCESS",
        "progress": "100%",
        "failReason": "",
        "buttons": buttons,
        "maskBase64": "",
        "properties": {"finalPrompt": f"benchmark prompt {task_id}", "finalZhPrompt": ""},
    }


def running_task(task_id: str) -> dict[str, object]:
    return {
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
        "imageUrl": f"https://relay.example/mj/image/{task_id}?rand=1730621828024000000",
        "videoUrl": "",
        "videoUrls": None,
        "status": "IN_PROGRESS",
        "progress": "46%",
        "failReason": "",
        "buttons": None,
        "maskBase64": "",
        "properties": {"finalPrompt": f"benchmark prompt {task_id}", "finalZhPrompt": ""},
    }


DIALECT_SHAPES = ("quickrouter", "midjourney-proxy", "trueai")


def dialect_bodies(dialect: str, ids: list[str]) -> dict[str, bytes]:
    """Each id's task as ``dialect`` writes it (the captured template, id filled in)."""
    template = json.loads((Path(__file__).parent / "_payloads.json").read_text("utf-8"))[dialect]
    return {i: template.replace("{ID}", i).encode() for i in ids}


def build_app(n: int, shape: str, cost_ms: float, cost_us: float) -> web.Application:
    ids = [str(BASE_ID + i) for i in range(n)]
    if shape in DIALECT_SHAPES:
        bodies = dialect_bodies(shape, ids)
    else:
        make = finished_task if shape == "finished" else running_task
        bodies = {i: json.dumps(make(i)).encode() for i in ids}
    rng = random.Random(0)

    async def spend(count: int) -> None:
        seconds = cost_ms / 1000 + cost_us * count / 1e6
        if seconds:
            await asyncio.sleep(seconds)

    async def list_by_condition(request: web.Request) -> web.Response:
        ids = (await request.json()).get("ids") or []
        found = [bodies[i] for i in dict.fromkeys(ids) if i in bodies]
        rng.shuffle(found)  # relays do not keep the order
        await spend(len(found))
        return web.Response(body=b"[" + b",".join(found) + b"]", content_type="application/json")

    async def fetch(request: web.Request) -> web.Response:
        body = bodies.get(request.match_info["id"], b"")
        await spend(1)
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_post("/mj/task/list-by-condition", list_by_condition)
    app.router.add_get("/mj/task/{id}/fetch", fetch)
    return app


async def main(args: argparse.Namespace) -> None:
    app = build_app(args.n, args.shape, args.cost_ms, args.cost_us_per_task)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    await site.start()
    port = runner.addresses[0][1]
    with open(args.port_file, "w") as fh:
        fh.write(str(port))
    await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("n", type=int)
    parser.add_argument("port_file")
    shapes = ["finished", "running", *DIALECT_SHAPES]
    parser.add_argument("--shape", choices=shapes, default="running")
    parser.add_argument("--cost-ms", type=float, default=0.0)
    parser.add_argument("--cost-us-per-task", type=float, default=0.0)
    asyncio.run(main(parser.parse_args()))
