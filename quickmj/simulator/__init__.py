"""An embedded midjourney-proxy relay for tests, examples and benchmarks: no key, no network.

It imitates the relay QuickRouter fronts (protocol.md): every submit endpoint with the
relay's return codes (1, 21, 22, 23, 24, 4, 3), the task lifecycle SUBMITTED ->
IN_PROGRESS -> SUCCESS/FAILURE with progress steps, buttons and the MODAL flow, fetch,
list-by-condition (unordered), image-seed, real PNG images, the mode prefixes
(``/mj-fast/mj`` ...), the three auth header styles, notifyHook callbacks and seeded
fault injection (5xx pages, 429, dropped connections, truncated lists, lost hooks).

Usage (inside a coroutine)::

    async with simulate(seed=1) as relay:
        async with AsyncClient(relay.api_key, base_url=relay.base_url) as mj:
            task = await mj.imagine("a cat", wait=True)
        assert relay.simulator.counters["POST /submit/imagine"] == 1

Route keys of ``Simulator.counters``: ``POST /submit/{imagine,blend,describe,shorten,
action,modal}``, ``GET /task/{id}/fetch``, ``POST /task/list-by-condition``,
``GET /task/{id}/image-seed`` and ``GET /image``.

The pytest plugin (``quickmj.simulator.pytest_plugin``) provides a ``quickmj_relay``
fixture; importing this package does not import pytest.
"""

from __future__ import annotations

from ._app import MODE_PREFIXES, Simulator
from ._config import ROUTE_GROUPS, FaultConfig, SimulatorConfig
from ._faults import Fault, FaultEvent
from ._relay import Submission
from ._server import RunningSimulator, run_server, simulate
from ._state import SimTask

__all__ = (
    "MODE_PREFIXES",
    "ROUTE_GROUPS",
    "Fault",
    "FaultConfig",
    "FaultEvent",
    "RunningSimulator",
    "SimTask",
    "Simulator",
    "SimulatorConfig",
    "Submission",
    "run_server",
    "simulate",
)
