"""A relay simulator per server dialect, written from the servers' own sources.

It imitates, on the wire, the three server families quickmj talks to:

- ``"quickrouter"`` (default): QuickRouter, a new-api relay (QuantumNous/new-api) in front
  of a Plus-like midjourney-proxy: Bearer auth, the relay's task copy refreshed every
  ``refresh_interval`` seconds, ``/mj/image/{id}?rand=`` URLs, the code-21/22 rewrites,
  modal double rows, the relay's own errors;
- ``"midjourney-proxy"``: novicezk's Java proxy v2.6 (``mj-api-secret``, change and
  simple-change, no buttons, Jackson JSON);
- ``"trueai"``: trueai-org's C# proxy (raw ``Authorization`` token, buttons, modal flow,
  video, edits, cancel, System.Text.Json escaping).

It writes every byte from its own tables and never imports quickmj's SDK modules, so it
can disagree with the SDK and catch its mistakes. Each behaviour's docstring names the
source file it comes from.

Usage (inside a coroutine)::

    async with simulate(dialect="trueai", seed=1) as relay:
        ...  # relay.base_url, relay.headers, relay.url("/submit/imagine")
        assert relay.simulator.counters["POST /submit/imagine"] == 1

Importing this package does not import pytest.
"""

from __future__ import annotations

from ._app import MODE_PREFIXES, Simulator
from ._config import DIALECTS, PRESETS, ROUTE_GROUPS, FaultConfig, SimulatorConfig
from ._engine import CreatedJob
from ._faults import Fault, FaultEvent
from ._server import RunningSimulator, run_server, simulate
from ._state import SimTask

__all__ = (
    "DIALECTS",
    "MODE_PREFIXES",
    "PRESETS",
    "ROUTE_GROUPS",
    "CreatedJob",
    "Fault",
    "FaultConfig",
    "FaultEvent",
    "RunningSimulator",
    "SimTask",
    "Simulator",
    "SimulatorConfig",
    "run_server",
    "simulate",
)
