"""pytest plugin: the ``quickmj_relay`` fixture, a running relay simulator per test.

Registered as the ``quickmj`` pytest11 entry point. Configure it per test with the
marker ``@pytest.mark.quickmj_relay(seed=3, max_queue=2, ...)`` (SimulatorConfig fields),
or for a whole module by overriding the ``quickmj_simulator_config`` fixture.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import pytest

from . import RunningSimulator, SimulatorConfig, simulate

if TYPE_CHECKING:
    from pytest_asyncio import fixture as _async_fixture
else:
    try:  # pytest-asyncio's fixture works in both its strict and auto modes
        from pytest_asyncio import fixture as _async_fixture
    except ImportError:  # pragma: no cover - another async plugin (e.g. anyio) runs it
        _async_fixture = pytest.fixture

__all__ = ("quickmj_relay", "quickmj_simulator_config")

_MARKER = "quickmj_relay"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{_MARKER}(**fields): SimulatorConfig fields for the quickmj_relay fixture",
    )


@pytest.fixture
def quickmj_simulator_config() -> SimulatorConfig:
    """The SimulatorConfig ``quickmj_relay`` starts from (override it to change defaults)."""
    return SimulatorConfig()


@_async_fixture
async def quickmj_relay(
    request: pytest.FixtureRequest, quickmj_simulator_config: SimulatorConfig
) -> AsyncIterator[RunningSimulator]:
    """A relay simulator serving on 127.0.0.1 for this test (``.base_url``, ``.api_key``,
    ``.simulator``)."""
    overrides: dict[str, Any] = {}
    for marker in reversed(list(request.node.iter_markers(_MARKER))):
        overrides.update(marker.kwargs)
    async with simulate(quickmj_simulator_config, **overrides) as relay:
        yield relay
