"""Testing helpers: an embedded relay simulator, ``MockTransport`` and a pytest plugin.

- :func:`simulate` serves a simulated relay on 127.0.0.1 (one per dialect: QuickRouter's
  new-api, self-hosted midjourney-proxy, TrueAI) for your tests, examples and demos; it
  writes its JSON from its own tables, never through quickmj's models, so it can catch
  quickmj's mistakes as well as yours;
- :class:`MockTransport` answers requests from a function, for unit tests that need
  exact control (as ``httpx.MockTransport`` does);
- the pytest plugin (installed with quickmj) provides the ``quickmj_relay`` fixture.

Names are imported on first use: importing this package loads neither aiohttp nor pytest.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .._transport import Request, Response
    from ._mock import Handler, MockTransport
    from ._sim import (
        DIALECTS,
        MODE_PREFIXES,
        PRESETS,
        ROUTE_GROUPS,
        CreatedJob,
        Fault,
        FaultConfig,
        FaultEvent,
        RunningSimulator,
        SimTask,
        Simulator,
        SimulatorConfig,
        run_server,
        simulate,
    )

_SOURCES = {
    "Request": ".._transport",
    "Response": ".._transport",
    "Handler": "._mock",
    "MockTransport": "._mock",
    **dict.fromkeys(
        (
            "DIALECTS",
            "MODE_PREFIXES",
            "PRESETS",
            "ROUTE_GROUPS",
            "Fault",
            "FaultConfig",
            "FaultEvent",
            "RunningSimulator",
            "SimTask",
            "Simulator",
            "SimulatorConfig",
            "CreatedJob",
            "run_server",
            "simulate",
        ),
        "._sim",
    ),
}

__all__ = (
    "DIALECTS",
    "MODE_PREFIXES",
    "PRESETS",
    "ROUTE_GROUPS",
    "CreatedJob",
    "Fault",
    "FaultConfig",
    "FaultEvent",
    "Handler",
    "MockTransport",
    "Request",
    "Response",
    "RunningSimulator",
    "SimTask",
    "Simulator",
    "SimulatorConfig",
    "run_server",
    "simulate",
)


def __getattr__(name: str) -> Any:
    module = _SOURCES.get(name)
    if module is None:
        raise AttributeError(f"module 'quickmj.testing' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
