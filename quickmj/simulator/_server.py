"""Serving the simulator: ``simulate()`` for tests, ``run_server()`` for the CLI."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import attrs
from aiohttp import web

from ._app import Simulator
from ._config import SimulatorConfig

__all__ = ("RunningSimulator", "run_server", "simulate")


@attrs.frozen
class RunningSimulator:
    """A simulator serving on a local port."""

    #: ``http://127.0.0.1:PORT`` (give it to ``AsyncClient(base_url=...)``).
    base_url: str
    #: The key the simulator accepts.
    api_key: str
    #: The simulator itself: ``counters``, ``submissions``, ``tasks``, ``task(id)``.
    simulator: Simulator

    @property
    def headers(self) -> dict[str, str]:
        """``{"Authorization": "Bearer <key>"}`` for hand-written requests."""
        return {"Authorization": f"Bearer {self.api_key}"}

    def url(self, path: str, mode: str | None = None) -> str:
        """The URL of an /mj path: ``relay.url("/task/1/fetch", mode="fast")``."""
        prefix = f"/mj-{mode}/mj" if mode else "/mj"
        return f"{self.base_url}{prefix}{path}"


def _config(config: SimulatorConfig | None, overrides: dict[str, Any]) -> SimulatorConfig:
    base = config or SimulatorConfig()
    return attrs.evolve(base, **overrides) if overrides else base


async def _start(sim: Simulator, host: str, port: int) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(sim.app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound = runner.addresses[0][1]
    return runner, int(bound)


@contextlib.asynccontextmanager
async def simulate(
    config: SimulatorConfig | None = None, /, **config_overrides: Any
) -> AsyncIterator[RunningSimulator]:
    """Serve a fresh simulator on 127.0.0.1 (a free port) for the ``async with`` block.

    ``simulate(seed=3, faults=FaultConfig(drop_rate=0.1))`` overrides fields of ``config``
    (or of the defaults). On exit the server stops and pending notifyHook deliveries are
    cancelled.
    """
    sim = Simulator(_config(config, config_overrides))
    runner, port = await _start(sim, "127.0.0.1", 0)
    sim.base_url = f"http://127.0.0.1:{port}"
    try:
        yield RunningSimulator(base_url=sim.base_url, api_key=sim.config.api_key, simulator=sim)
    finally:
        await runner.cleanup()


async def run_server(
    host: str = "127.0.0.1",
    port: int = 8080,
    config: SimulatorConfig | None = None,
    *,
    ready: Callable[[RunningSimulator], object] | None = None,
) -> None:
    """Serve a simulator until cancelled (``quickmj simulate``).

    Prints the base URL and the key, or calls ``ready(running)`` instead when given.
    """
    sim = Simulator(config)
    runner, bound = await _start(sim, host, port)
    if host not in ("0.0.0.0", "::", ""):
        shown = f"[{host}]" if ":" in host else host
        sim.base_url = f"http://{shown}:{bound}"
    # On a wildcard address the first request's Host header sets the URLs in answers.
    shown_url = sim.base_url or f"http://127.0.0.1:{bound}"
    running = RunningSimulator(base_url=shown_url, api_key=sim.config.api_key, simulator=sim)
    try:
        if ready is not None:
            ready(running)
        else:
            print(f"quickmj relay simulator on {shown_url}", file=sys.stdout)
            print(f"  base_url: {shown_url}   api key: {running.api_key}", file=sys.stdout)
            print("  press Ctrl+C to stop", file=sys.stdout, flush=True)
        await asyncio.Event().wait()  # until cancelled
    finally:
        await runner.cleanup()
