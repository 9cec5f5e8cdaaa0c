"""Saving a simulator's state to a JSON file and loading it back.

Separate ``quickmj --simulate`` runs can then continue each other's jobs. Clock times are
stored relative to the moment of saving (with that moment's epoch time), so a loaded
simulator resumes where the saved one stopped: jobs that were running keep running, the
relay's rows keep their lag, ids keep increasing.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import attrs

from ._catalogue import Modal, Result
from ._config import FaultConfig, SimulatorConfig
from ._engine import CreatedJob
from ._state import SimTask

if TYPE_CHECKING:
    from collections import Counter

    from ._clock import Clock
    from ._engine import Engine


class _Simulator(Protocol):
    """What saving and loading touch (``Simulator``; a protocol avoids an import cycle)."""

    engine: Engine
    clock: Clock
    config: SimulatorConfig
    dialect: Any
    counters: Counter[str]


S = TypeVar("S", bound=_Simulator)

__all__ = ("load_state", "save_state")

VERSION = 1
_TIMES = ("activated_at", "slot_start", "run_start", "end", "cancel_at")


def _config_dict(config: SimulatorConfig) -> dict[str, Any]:
    data = attrs.asdict(config, recurse=False)
    faults = attrs.asdict(config.faults)
    faults["routes"] = sorted(faults["routes"]) if faults["routes"] is not None else None
    data["faults"] = faults
    data["quotas"] = dict(config.quotas)
    data["model_prices"] = dict(config.model_prices)
    return data


def _config_from(data: dict[str, Any]) -> SimulatorConfig:
    data = dict(data)
    data["faults"] = FaultConfig(**data["faults"])
    return SimulatorConfig(**data)


def _rng_state(rng: random.Random) -> list[Any]:
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def _set_rng(rng: random.Random, state: list[Any]) -> None:
    rng.setstate((state[0], tuple(state[1]), state[2]))


def save_state(sim: _Simulator, path: str | Path) -> None:
    """Write ``sim``'s jobs, accounts, relay rows and generators to ``path``."""
    engine = sim.engine
    now = sim.clock.now()

    def rel(value: float | None) -> float | None:
        return None if value is None else value - now

    tasks = []
    for task in engine.tasks.values():
        item = attrs.asdict(task, recurse=False)
        item.pop("cache")
        item["result"] = task.result.value
        item["modal"] = task.modal.value if task.modal else None
        item["texts"] = list(task.texts)
        for name in _TIMES:
            item[name] = rel(item[name])
        tasks.append(item)
    accounts = {key: a.export(now) for key, a in engine.accounts.items()}
    rows = []
    db = getattr(sim.dialect, "db", None)
    if db is not None:
        for group in db.rows.values():
            for row in group:
                item = attrs.asdict(row, recurse=False)
                item.pop("cache")
                item["inserted_at"] = rel(row.inserted_at)
                item["requested_at"] = rel(row.requested_at)
                rows.append(item)
    state = {
        "version": VERSION,
        "config": _config_dict(sim.config),
        "epoch": sim.clock.epoch_ms(now) / 1000,
        "last_id": engine.last_id,
        "ordinal": engine.ordinal,
        "rngs": [
            _rng_state(r)
            for r in (engine.fault_rng, engine.list_rng, engine.job_rng, engine.misc_rng)
        ],
        "tasks": tasks,
        "submissions": [list(s) for s in engine.submissions],
        "accounts": accounts,
        "rows": rows,
        "counters": dict(sim.counters),
        "revoked": dict(engine.revoked),
        "channel_disabled": bool(getattr(sim.dialect, "channel_disabled", False)),
    }
    Path(path).write_text(json.dumps(state, ensure_ascii=False), encoding="utf-8")


def load_state(path: str | Path, simulator_class: Callable[..., S]) -> S:
    """A simulator continuing the state saved in ``path``."""
    state = json.loads(Path(path).read_text(encoding="utf-8"))
    if state.get("version") != VERSION:
        raise ValueError(f"unsupported simulator state version {state.get('version')!r}")
    sim = simulator_class(_config_from(state["config"]), epoch=state["epoch"])
    engine = sim.engine
    now = sim.clock.now()

    def back(value: float | None) -> float | None:
        return None if value is None else now + value

    engine.last_id = state["last_id"]
    engine.ordinal = state["ordinal"]
    rngs = (engine.fault_rng, engine.list_rng, engine.job_rng, engine.misc_rng)
    for rng, rng_state in zip(rngs, state["rngs"], strict=True):
        _set_rng(rng, rng_state)
    for item in state["tasks"]:
        item = dict(item)
        item["result"] = Result(item["result"])
        item["modal"] = Modal(item["modal"]) if item["modal"] else None
        item["texts"] = tuple(item["texts"])
        for name in _TIMES:
            item[name] = back(item[name])
        task = SimTask(**item)
        engine.tasks[task.id] = task
    engine.submissions.extend(CreatedJob(*s) for s in state["submissions"])
    for key, saved in state["accounts"].items():
        account = engine.accounts.get(key)
        if account is not None:
            account.restore(saved, now)
    db = getattr(sim.dialect, "db", None)
    if db is not None:
        from ._dialects._relaydb import RelayRow

        for item in state["rows"]:
            item = dict(item)
            item["inserted_at"] = back(item["inserted_at"])
            item["requested_at"] = back(item["requested_at"])
            db.insert(RelayRow(**item))
    sim.counters.update(state["counters"])
    engine.revoked.update(state.get("revoked", {}))
    if state.get("channel_disabled"):
        sim.dialect.channel_disabled = True
    return sim
