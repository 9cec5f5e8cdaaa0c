"""The simulator's settings: dialect, accounts, timings, word lists and seeded fault rates."""

from __future__ import annotations

import types
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

__all__ = ("DIALECTS", "ROUTE_GROUPS", "FaultConfig", "SimulatorConfig")

DIALECTS: tuple[str, ...] = ("quickrouter", "midjourney-proxy", "trueai")
"""The server families the simulator imitates (``SimulatorConfig.dialect``)."""

ROUTE_GROUPS = frozenset({"submit", "fetch", "list", "seed", "image", "cancel", "account"})
"""Route groups a fault can be limited to (``FaultConfig.routes``)."""


def _rate(_: Any, attribute: attrs.Attribute[float], value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{attribute.name} must be between 0 and 1, got {value!r}")


def _non_negative(_: Any, attribute: attrs.Attribute[float], value: float) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name} must not be negative, got {value!r}")


def _optional_positive(_: Any, attribute: attrs.Attribute[int | None], value: int | None) -> None:
    if value is not None and value < 1:
        raise ValueError(f"{attribute.name} must be at least 1 (or None), got {value!r}")


def _to_routes(value: Iterable[str] | None) -> frozenset[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = (value,)
    routes = frozenset(value)
    unknown = sorted(r for r in routes if r not in ROUTE_GROUPS and " /" not in r)
    if unknown:
        raise ValueError(
            f"unknown fault routes {unknown}: use route groups {sorted(ROUTE_GROUPS)} "
            'or route keys such as "POST /submit/imagine"'
        )
    return routes


def _words(value: Iterable[str]) -> tuple[str, ...]:
    if isinstance(value, str):
        value = (value,)
    return tuple(w for w in value if w)


def _keys(value: Iterable[str] | None) -> tuple[str, ...]:
    if isinstance(value, str):
        value = (value,)
    return tuple(dict.fromkeys(value or ()))


def _optional_keys(value: Iterable[str] | None) -> tuple[str, ...] | None:
    return None if value is None else _keys(value)


def _quotas(value: Mapping[str, int] | None) -> Mapping[str, int]:
    # A read-only view: the config is frozen, so its quota table must not change either.
    return types.MappingProxyType(dict(value or {}))


@attrs.frozen
class FaultConfig:
    """Seeded fault injection. Every rate is a probability per request (0 to 1).

    A request draws once from the simulator's seeded generator, so the same seed and the
    same sequence of requests give the same faults. On submit routes ``error_5xx_rate``,
    ``rate_limit_rate`` and ``drop_rate`` strike *before* the job is created; the
    ``*_after_create_rate`` faults strike after it was created (the ambiguous "maybe paid"
    case). On other routes ``drop_rate`` cuts the real answer part-way through.

    The ``relay_*`` rates apply to the ``quickrouter`` dialect's submits only and imitate
    new-api's own failures talking to its upstream (``service/midjourney.go``
    ``DoMidjourneyHttpRequest``): ``relay_request_failed_rate`` is ``do_request_failed``
    before the upstream saw the request, ``relay_request_failed_after_create_rate`` the
    same answer after the upstream created the job (it runs upstream, but the relay never
    recorded it, so fetch says ``task_no_found``), ``relay_empty_body_rate`` is
    ``empty_response_body`` (an upstream gateway answered without a body).
    """

    error_5xx_rate: float = attrs.field(default=0.0, validator=_rate)
    """Answer 502 with an HTML gateway page."""
    rate_limit_rate: float = attrs.field(default=0.0, validator=_rate)
    """Answer 429 with ``Retry-After`` and an empty body."""
    retry_after: float = attrs.field(default=1.0, validator=_non_negative)
    """The ``Retry-After`` value (seconds) sent with a 429."""
    drop_rate: float = attrs.field(default=0.0, validator=_rate)
    """Close the connection instead of answering."""
    submit_5xx_after_create_rate: float = attrs.field(default=0.0, validator=_rate)
    """Submits only: create the job, then answer 504 with an HTML page."""
    drop_after_create_rate: float = attrs.field(default=0.0, validator=_rate)
    """Submits only: create the job, then cut the connection mid-answer."""
    relay_request_failed_rate: float = attrs.field(default=0.0, validator=_rate)
    """quickrouter submits: new-api's ``do_request_failed`` (code 5), nothing created."""
    relay_request_failed_after_create_rate: float = attrs.field(default=0.0, validator=_rate)
    """quickrouter submits: ``do_request_failed`` after the upstream created the job."""
    relay_empty_body_rate: float = attrs.field(default=0.0, validator=_rate)
    """quickrouter submits: ``empty_response_body`` (code 5), nothing created."""
    truncate_list_rate: float = attrs.field(default=0.0, validator=_rate)
    """list answers only a prefix of the matching tasks."""
    hook_drop_rate: float = attrs.field(default=0.0, validator=_rate)
    """notifyHook deliveries silently skipped."""
    latency: float = attrs.field(default=0.0, validator=_non_negative)
    """Seconds added to every request on the fault routes (after counting, before answering)."""
    routes: frozenset[str] | None = attrs.field(default=None, converter=_to_routes)
    """Route groups (``ROUTE_GROUPS``) or route keys (``"POST /submit/imagine"``) the
    request faults apply to; None means all."""

    def __attrs_post_init__(self) -> None:
        total = (
            self.error_5xx_rate
            + self.rate_limit_rate
            + self.drop_rate
            + self.submit_5xx_after_create_rate
            + self.drop_after_create_rate
            + self.relay_request_failed_rate
            + self.relay_request_failed_after_create_rate
            + self.relay_empty_body_rate
        )
        if total > 1.0 + 1e-9:
            raise ValueError("the request fault rates add up to more than 1")


@attrs.frozen
class SimulatorConfig:
    """How the simulated server behaves. All randomness derives from ``seed``."""

    dialect: str = "quickrouter"
    """``"quickrouter"`` (new-api relay in front of a Plus-like proxy), ``"midjourney-proxy"``
    (novicezk's Java proxy) or ``"trueai"`` (trueai-org's C# proxy)."""
    api_keys: tuple[str, ...] = attrs.field(default=("sim-key",), converter=_keys)
    """Keys the server accepts; every key is a separate account (queue, quota, counters)."""
    concurrency: int | None = attrs.field(default=None, validator=_optional_positive)
    """Jobs running at once per account; later ones wait in NOT_START. None: unlimited."""
    max_queue: int | None = attrs.field(default=None, validator=_optional_positive)
    """Jobs allowed to wait per account beyond the running ones; a submit beyond it gets
    the dialect's queue-full answer (code 23, or 9 on trueai). Needs ``concurrency``."""
    saturate_429: bool = False
    """quickrouter only: a full queue is answered by the relay as HTTP 429 code 30 (new-api's
    "group saturated") instead of passing the upstream's code 23 through."""
    quotas: Mapping[str, int] = attrs.field(factory=dict, converter=_quotas)
    """Jobs each key may create in total; beyond it the dialect's "insufficient quota"
    answer. Keys not listed are unlimited. (midjourney-proxy has no quotas.)"""
    disabled_keys: tuple[str, ...] = attrs.field(default=(), converter=_keys)
    """Keys that exist but are disabled (401/403 the way the dialect says so)."""
    admin_keys: tuple[str, ...] | None = attrs.field(default=None, converter=_optional_keys)
    """trueai: keys allowed to cancel tasks (``POST /task/{id}/cancel``). Real TrueAI lets
    only admins cancel; None (the default) treats every key as an admin."""
    queue_seconds: float = attrs.field(default=0.05, validator=_non_negative)
    """Seconds a job spends in SUBMITTED (progress ``"0%"``)."""
    run_seconds: float = attrs.field(default=0.2, validator=_non_negative)
    """Seconds a job spends in IN_PROGRESS, walking through ``progress_steps``."""
    progress_steps: tuple[int, ...] = attrs.field(
        default=(0, 15, 31, 46, 62, 78, 93), converter=tuple
    )
    """Percentages shown during IN_PROGRESS, evenly spaced in time; SUCCESS is ``"100%"``."""
    refresh_interval: float = attrs.field(default=0.0, validator=_non_negative)
    """quickrouter: seconds between the relay's bulk refreshes of its task copies (the real
    relay uses 15). 0 means the relay's copy is always current."""
    notify_enabled: bool = False
    """quickrouter: new-api's ``MjNotifyEnabled``; off means notifyHook is stripped."""
    forward_image_urls: bool = True
    """quickrouter: new-api's ``MjForwardUrlEnabled`` (default on): ``imageUrl`` becomes
    ``{server}/mj/image/{id}`` (plus ``?rand=`` until SUCCESS). Off: the upstream's URL."""
    remix: bool = False
    """The executing account has remix on (without auto-submit): reroll, variation, pan
    and animate answer code 21 and wait for ``/submit/modal`` (trueai and quickrouter)."""
    fill_image_urls: bool = False
    """trueai: ``EnableFillOfficialCdn``: SUCCESS grids carry ``imageUrls``."""
    shuffle_lists: bool = True
    """Shuffle list answers (the servers promise no order)."""
    seed: int = 0
    """Seeds every random choice: faults, list order, hashes, job failures."""
    faults: FaultConfig = FaultConfig()
    """Seeded fault injection (gateway errors, rate limits, drops, ...): see FaultConfig."""
    banned_words: tuple[str, ...] = attrs.field(default=("badword",), converter=_words)
    """midjourney-proxy refuses these at submit (code 24), trueai fails the job
    (``可能包含敏感词``), quickrouter's Plus-like upstream refuses them (code 24)."""
    fail_words: tuple[str, ...] = attrs.field(default=("failword",), converter=_words)
    """A job whose prompt contains one of these ends in FAILURE."""
    failure_rate: float = attrs.field(default=0.0, validator=_rate)
    """Probability that any other job ends in FAILURE."""
    image_size: int = 64
    """Width and height of generated images in pixels (a grid is 2x2 of half this)."""
    seed_delay: float = attrs.field(default=0.0, validator=_non_negative)
    """Seconds image-seed waits before answering (relays block while the bot answers)."""
    hooks_enabled: bool = True
    """POST the task to a submit's ``notifyHook`` as it changes."""
    hook_timeout: float = 5.0
    """Total timeout of one notifyHook delivery."""

    def __attrs_post_init__(self) -> None:
        if self.dialect not in DIALECTS:
            raise ValueError(f"dialect must be one of {DIALECTS}, got {self.dialect!r}")
        if not self.api_keys or not all(self.api_keys):
            raise ValueError("api_keys must hold at least one non-empty key")
        if not self.progress_steps or any(not 0 <= p <= 100 for p in self.progress_steps):
            raise ValueError("progress_steps must be percentages between 0 and 100")
        if not 2 <= self.image_size <= 4096:
            raise ValueError("image_size must be between 2 and 4096")
        if self.max_queue is not None and self.concurrency is None:
            raise ValueError("max_queue counts jobs waiting for a slot: set concurrency too")
        if self.dialect == "midjourney-proxy" and self.quotas:
            raise ValueError("midjourney-proxy has no per-key quotas")
        if any(v < 0 for v in self.quotas.values()):
            raise ValueError("quotas must not be negative")

    @property
    def api_key(self) -> str:
        """The primary key (the first of ``api_keys``)."""
        return self.api_keys[0]
