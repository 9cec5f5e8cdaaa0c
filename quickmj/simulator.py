"""Removed in quickmj 0.2: the relay simulator is :mod:`quickmj.testing`.

This stub exists so that old code fails with a pointer instead of a bare "No module named"
(see the deprecation policy in docs/versioning.md). It imports nothing.
"""

raise ModuleNotFoundError(
    "quickmj.simulator was removed in quickmj 0.2: the relay simulator is quickmj.testing "
    "(from quickmj.testing import simulate, Simulator, SimulatorConfig, FaultConfig); "
    "relay.simulator.task(id) is now task_json(id) or task_status(id)",
    name="quickmj.simulator",
)
