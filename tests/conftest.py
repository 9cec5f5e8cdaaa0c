"""Shared test setup: relay samples and tiny local HTTP servers."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

FIXTURES = Path(__file__).parent / "fixtures"

#: The relay samples in tests/fixtures, copied verbatim from the relay's docs.
TASK_SAMPLES = ("task_pig", "task_cat", "task_template_empty")


def load_fixture(name: str) -> Any:
    """Parse ``tests/fixtures/<name>.json``."""
    return json.loads((FIXTURES / f"{name}.json").read_text(encoding="utf-8"))


@pytest.fixture
def load() -> Callable[[str], Any]:
    """The fixture loader (a fresh parse each call, so tests may mutate the result)."""
    return load_fixture


Serve = Callable[..., Awaitable[str]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Start aiohttp.web apps on a free port; ``await serve(app, host)`` returns the origin."""
    runners: list[web.AppRunner] = []

    async def start(app: web.Application, host: str = "127.0.0.1") -> str:
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await runner.setup()
        site = web.TCPSite(runner, host, 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        return f"http://{host}:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()
