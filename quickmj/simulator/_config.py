"""The simulator's settings: timings, limits, word lists and seeded fault rates."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import attrs

__all__ = ("ROUTE_GROUPS", "FaultConfig", "SimulatorConfig")

#: Route groups a fault can be limited to (``FaultConfig.routes``).
ROUTE_GROUPS = frozenset({"submit", "fetch", "list", "seed", "image"})


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


@attrs.frozen
class FaultConfig:
    """Seeded fault injection. Every rate is a probability per request (0 to 1).

    A request draws once from the simulator's seeded generator, so the same seed and the
    same sequence of requests give the same faults. On submit routes ``error_5xx_rate``,
    ``rate_limit_rate`` and ``drop_rate`` strike *before* the job is created; the
    ``*_after_create_rate`` faults strike after it was created (the ambiguous "maybe paid"
    case). On other routes ``drop_rate`` cuts the real answer part-way through.
    """

    #: Answer 502 with an HTML gateway page.
    error_5xx_rate: float = attrs.field(default=0.0, validator=_rate)
    #: Answer 429 with ``Retry-After`` and an empty body.
    rate_limit_rate: float = attrs.field(default=0.0, validator=_rate)
    #: The ``Retry-After`` value (seconds) sent with a 429. Fractions (``0.2``) are sent as
    #: written, which quickmj honours; whole seconds are what real gateways send.
    retry_after: float = attrs.field(default=1.0, validator=_non_negative)
    #: Close the connection instead of answering.
    drop_rate: float = attrs.field(default=0.0, validator=_rate)
    #: Submits only: create the job, then answer 504 with an HTML page.
    submit_5xx_after_create_rate: float = attrs.field(default=0.0, validator=_rate)
    #: Submits only: create the job, then cut the connection mid-answer.
    drop_after_create_rate: float = attrs.field(default=0.0, validator=_rate)
    #: list-by-condition answers only a prefix of the matching tasks.
    truncate_list_rate: float = attrs.field(default=0.0, validator=_rate)
    #: notifyHook deliveries silently skipped.
    hook_drop_rate: float = attrs.field(default=0.0, validator=_rate)
    #: Seconds added to every request on the fault routes (after counting, before answering).
    latency: float = attrs.field(default=0.0, validator=_non_negative)
    #: Route groups (``submit``, ``fetch``, ``list``, ``seed``, ``image``) or route keys
    #: (``"POST /submit/imagine"``) the request faults apply to; None means all.
    routes: frozenset[str] | None = attrs.field(default=None, converter=_to_routes)

    def __attrs_post_init__(self) -> None:
        total = (
            self.error_5xx_rate
            + self.rate_limit_rate
            + self.drop_rate
            + self.submit_5xx_after_create_rate
            + self.drop_after_create_rate
        )
        if total > 1.0 + 1e-9:
            raise ValueError("the request fault rates add up to more than 1")


@attrs.frozen
class SimulatorConfig:
    """How the simulated relay behaves. All randomness derives from ``seed``."""

    #: The key clients must send (``Bearer``, bare ``Authorization`` or ``mj-api-secret``).
    api_key: str = "sim-key"
    #: Seconds a job spends in SUBMITTED (progress ``"0%"``).
    queue_seconds: float = attrs.field(default=0.05, validator=_non_negative)
    #: Seconds a job spends in IN_PROGRESS, walking through ``progress_steps``.
    run_seconds: float = attrs.field(default=0.2, validator=_non_negative)
    #: Percentages shown during IN_PROGRESS, evenly spaced in time; SUCCESS is ``"100%"``.
    progress_steps: tuple[int, ...] = attrs.field(
        default=(0, 15, 31, 46, 62, 78, 93), converter=tuple
    )
    #: Seeds every random choice: faults, list order, hashes, job failures.
    seed: int = 0
    faults: FaultConfig = FaultConfig()
    #: Non-terminal jobs beyond which submits answer code 23 (nothing is created).
    max_queue: int | None = attrs.field(default=None, validator=_optional_positive)
    #: Jobs running at once; later ones wait in NOT_START and submits answer code 22
    #: (``numberOfQueues``) while others wait. None: every job starts at once.
    concurrency: int | None = attrs.field(default=None, validator=_optional_positive)
    #: An imagine prompt containing one of these is refused with code 24.
    banned_words: tuple[str, ...] = attrs.field(default=("badword",), converter=_words)
    #: A job whose prompt contains one of these ends in FAILURE.
    fail_words: tuple[str, ...] = attrs.field(default=("failword",), converter=_words)
    #: Probability that any other job ends in FAILURE.
    failure_rate: float = attrs.field(default=0.0, validator=_rate)
    #: Width and height of generated images in pixels (a grid is 2x2 of half this).
    image_size: int = 64
    #: Seconds image-seed waits before answering (relays block while the bot answers).
    seed_delay: float = attrs.field(default=0.0, validator=_non_negative)
    #: POST the task to a submit's ``notifyHook`` as it changes.
    hooks_enabled: bool = True
    #: Total timeout of one notifyHook delivery.
    hook_timeout: float = 5.0

    def __attrs_post_init__(self) -> None:
        if not self.progress_steps or any(not 0 <= p <= 100 for p in self.progress_steps):
            raise ValueError("progress_steps must be percentages between 0 and 100")
        if not 2 <= self.image_size <= 4096:
            raise ValueError("image_size must be between 2 and 4096")
        if not self.api_key:
            raise ValueError("api_key must not be empty")
