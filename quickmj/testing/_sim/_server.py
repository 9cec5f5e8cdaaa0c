"""Serving the simulator: ``simulate()`` for tests, ``run_server()`` for the CLI."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

import attrs
from aiohttp import web

from ._app import Simulator
from ._config import SimulatorConfig

__all__ = ("RunningSimulator", "run_server", "simulate")

# The same spellings as quickmj.Dialect / quickmj.AuthScheme (a subset of them), written out
# here because the simulator imports nothing of the SDK; a Literal subset is assignable, so
# AsyncClient(dialect=relay.dialect, auth_scheme=relay.auth_scheme) type-checks.
SimDialect = Literal["quickrouter", "midjourney-proxy", "trueai"]
SimAuthScheme = Literal["bearer", "mj-api-secret", "raw"]
_SIM_DIALECTS: tuple[SimDialect, ...] = ("quickrouter", "midjourney-proxy", "trueai")
_SIM_SCHEMES: tuple[SimAuthScheme, ...] = ("bearer", "mj-api-secret", "raw")


def _one_of(value: str, choices: tuple[Any, ...], what: str) -> Any:
    for choice in choices:
        if choice == value:
            return choice
    raise ValueError(f"the simulator has no {what} {value!r}")  # a new dialect not listed above


@attrs.frozen
class RunningSimulator:
    """A simulator serving on a local port."""

    base_url: str
    """``http://127.0.0.1:PORT`` (the server's origin; the API lives under ``/mj``)."""
    api_key: str
    """The primary key the simulator accepts."""
    simulator: Simulator
    """The simulator itself: ``counters``, ``submissions``, ``accounts``, ``task_json(id)``."""
    dialect: SimDialect
    """``"quickrouter"``, ``"midjourney-proxy"`` or ``"trueai"``."""

    @property
    def headers(self) -> dict[str, str]:
        """The auth header this dialect wants, for hand-written requests."""
        return self.simulator.dialect.auth_headers(self.api_key)

    @property
    def auth_scheme(self) -> SimAuthScheme:
        """quickmj's name for that header: ``"bearer"``, ``"mj-api-secret"`` or ``"raw"``."""
        scheme: SimAuthScheme = _one_of(
            self.simulator.dialect.auth_scheme, _SIM_SCHEMES, "auth scheme"
        )
        return scheme

    def url(self, path: str, mode: str | None = None) -> str:
        """The full URL of an API path: ``relay.url("/task/1/fetch", mode="fast")``.

        Args:
            path: the path below ``/mj`` (``"/submit/imagine"``).
            mode: a speed mode (``"fast"``, ``"relax"``, ``"turbo"``) for its path prefix
                (``/mj-fast/mj``); None for plain ``/mj``.

        Returns:
            ``base_url`` + prefix + ``path``.

        Raises:
            ValueError: the dialect has no prefix for ``mode`` (midjourney-proxy has none).
        """
        if mode is None:
            return f"{self.base_url}/mj{path}"
        prefix = f"/mj-{mode.lower()}/mj"
        if prefix not in self.simulator.dialect.prefixes:
            raise ValueError(f"the {self.dialect} dialect has no {prefix!r} prefix")
        return f"{self.base_url}{prefix}{path}"


def _config(config: SimulatorConfig | None, overrides: dict[str, Any]) -> SimulatorConfig:
    base = config or SimulatorConfig()
    overrides = dict(overrides)
    if "api_key" in overrides:  # the old single-key spelling
        overrides["api_keys"] = (overrides.pop("api_key"),)
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


def _running(sim: Simulator, base_url: str) -> RunningSimulator:
    dialect: SimDialect = _one_of(sim.config.dialect, _SIM_DIALECTS, "dialect")
    return RunningSimulator(
        base_url=base_url, api_key=sim.config.api_key, simulator=sim, dialect=dialect
    )


@contextlib.asynccontextmanager
async def simulate(
    config: SimulatorConfig | None = None, /, **config_overrides: Any
) -> AsyncIterator[RunningSimulator]:
    """Serve a fresh simulator on 127.0.0.1 (a free port) for the ``async with`` block.

    ``simulate(dialect="trueai", seed=3)`` overrides fields of ``config`` (or of the
    defaults). On exit the server stops and pending notifyHook deliveries are cancelled::

        async with simulate(dialect="quickrouter") as relay, AsyncClient(
            relay.api_key, base_url=relay.base_url, dialect=relay.dialect
        ) as mj:
            task = await mj.imagine("a cat").wait()
            assert relay.simulator.counters["POST /submit/imagine"] == 1

    Args:
        config: the settings to start from (default: ``SimulatorConfig()``); positional.
        **config_overrides: SimulatorConfig fields to change (``dialect=``, ``seed=``,
            ``faults=``, ...), and ``clock=``: a callable giving monotonic seconds that
            replaces the simulator's clock.

    Yields:
        The running simulator: ``base_url``, ``api_key``, ``dialect``, ``headers``,
        ``simulator``.

    Raises:
        ValueError: an override is not a valid SimulatorConfig value.
        TypeError: an override names no SimulatorConfig field.
    """
    clock = config_overrides.pop("clock", None)
    sim = Simulator(_config(config, config_overrides), clock=clock)
    runner, port = await _start(sim, "127.0.0.1", 0)
    sim.base_url = f"http://127.0.0.1:{port}"
    try:
        yield _running(sim, sim.base_url)
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

    Prints the base URL and the key, or calls ``ready(running)`` instead when given. On
    a wildcard address (``0.0.0.0``) the first request's Host header decides the URLs
    the simulator writes into its answers.

    Args:
        host: the address to listen on.
        port: the port to listen on (0: a free one).
        config: the simulator's settings (default: ``SimulatorConfig()``).
        ready: called once with the RunningSimulator when the server is up, instead of
            printing its address.

    Raises:
        OSError: the address cannot be bound.
    """
    sim = Simulator(config)
    runner, bound = await _start(sim, host, port)
    if host not in ("0.0.0.0", "::", ""):
        shown = f"[{host}]" if ":" in host else host
        sim.base_url = f"http://{shown}:{bound}"
    # On a wildcard address the first request's Host header sets the URLs in answers.
    shown_url = sim.base_url or f"http://127.0.0.1:{bound}"
    running = _running(sim, shown_url)
    try:
        if ready is not None:
            ready(running)
        else:
            print(f"quickmj relay simulator ({sim.config.dialect}) on {shown_url}", file=sys.stdout)
            print(f"  base_url: {shown_url}   api key: {running.api_key}", file=sys.stdout)
            print("  press Ctrl+C to stop", file=sys.stdout, flush=True)
        await asyncio.Event().wait()  # until cancelled
    finally:
        await runner.cleanup()
