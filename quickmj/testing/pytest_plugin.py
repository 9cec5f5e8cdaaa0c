"""pytest plugin: the ``quickmj_relay`` fixture, a running relay simulator per test.

Registered as the ``quickmj`` pytest11 entry point. Loading it costs almost nothing: the
fixtures live in ``_fixtures`` (registered once pytest is configured, so the async
plugin in use is known) and import the simulator only when a test asks for one.

Configure it per test with ``@pytest.mark.quickmj_relay(dialect="trueai", seed=3, ...)``
(SimulatorConfig fields), or for a module by overriding ``quickmj_simulator_config``.
"""

from __future__ import annotations

from typing import Any

__all__ = ("pytest_configure",)

_MARKER = "quickmj_relay"


def pytest_configure(config: Any) -> None:
    """Register the ``quickmj_relay`` marker and the plugin's fixtures (pytest hook)."""
    config.addinivalue_line(
        "markers",
        f"{_MARKER}(**fields): SimulatorConfig fields for the quickmj_relay fixture",
    )
    from . import _fixtures

    config.pluginmanager.register(_fixtures, "quickmj-fixtures")
