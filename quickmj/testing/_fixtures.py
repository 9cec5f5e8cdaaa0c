"""The fixtures of quickmj's pytest plugin (see ``pytest_plugin``)."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from ._sim import RunningSimulator, SimulatorConfig

    _async_fixture = pytest.fixture
elif "pytest_asyncio" in sys.modules:  # its fixture runs in both strict and auto mode
    from pytest_asyncio import fixture as _async_fixture
else:  # another async plugin (anyio's) runs async fixtures for its own tests
    _async_fixture = pytest.fixture

__all__ = ("quickmj_relay", "quickmj_simulator_config")

_MARKER = "quickmj_relay"


@pytest.fixture
def quickmj_simulator_config() -> SimulatorConfig:
    """The SimulatorConfig ``quickmj_relay`` starts from (override it to change defaults)."""
    from ._sim import SimulatorConfig

    return SimulatorConfig()


@_async_fixture
async def quickmj_relay(
    request: pytest.FixtureRequest, quickmj_simulator_config: SimulatorConfig
) -> AsyncIterator[RunningSimulator]:
    """A relay simulator serving on 127.0.0.1 for this test (``.base_url``, ``.api_key``,
    ``.auth_scheme``, ``.dialect``, ``.simulator``)."""
    from ._sim import simulate

    overrides: dict[str, Any] = {}
    for marker in reversed(list(request.node.iter_markers(_MARKER))):
        overrides.update(marker.kwargs)
    async with simulate(quickmj_simulator_config, **overrides) as relay:
        yield relay
