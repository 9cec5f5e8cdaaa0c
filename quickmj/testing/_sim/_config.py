"""The simulator's settings: dialect, accounts, timings, word lists and seeded fault rates."""

from __future__ import annotations

import types
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

__all__ = (
    "DIALECTS",
    "NEW_API_MJ_PRICES",
    "PRESETS",
    "ROUTE_GROUPS",
    "FaultConfig",
    "SimulatorConfig",
)

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


def _optional_count(_: Any, attribute: attrs.Attribute[int | None], value: int | None) -> None:
    if value is not None and value < 0:
        raise ValueError(f"{attribute.name} must be at least 0 (or None), got {value!r}")


def _optional_money(_: Any, attribute: attrs.Attribute[float | None], value: float | None) -> None:
    if value is not None and not value >= 0:
        raise ValueError(f"{attribute.name} must be at least 0 USD (or None), got {value!r}")


#: new-api's suggested fixed prices per call, USD (docs/channel/other_setting.md; mj_video
#: and mj_edits as its default ratio table has them). mj_inpaint and mj_custom_zoom cost 0:
#: the mj_modal that follows them pays.
NEW_API_MJ_PRICES: Mapping[str, float] = types.MappingProxyType(
    {
        "mj_imagine": 0.1,
        "mj_variation": 0.1,
        "mj_reroll": 0.1,
        "mj_blend": 0.1,
        "mj_modal": 0.1,
        "mj_zoom": 0.1,
        "mj_shorten": 0.1,
        "mj_high_variation": 0.1,
        "mj_low_variation": 0.1,
        "mj_pan": 0.1,
        "mj_edits": 0.1,
        "mj_inpaint": 0.0,
        "mj_custom_zoom": 0.0,
        "mj_describe": 0.05,
        "mj_upscale": 0.05,
        "mj_upload": 0.05,
        "swap_face": 0.05,
        "mj_video": 0.8,
    }
)


def _prices(value: Mapping[str, float] | None) -> Mapping[str, float]:
    # Given prices replace the defaults model by model; read-only like the quota table.
    table = {**NEW_API_MJ_PRICES, **(value or {})}
    if any(not (isinstance(v, (int, float)) and v >= 0) for v in table.values()):
        raise ValueError("model_prices must be USD amounts of at least 0")
    return types.MappingProxyType({k: float(v) for k, v in table.items()})


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
    no_account_rate: float = attrs.field(default=0.0, validator=_rate)
    """Submits answered code 3 ``无可用的账号实例`` (no free Discord account: nothing was
    created; novicezk ``TaskServiceImpl``, TrueAI ``TaskService.cs``). On quickrouter the
    upstream's answer passes through, and with ``channel_auto_ban`` new-api then disables
    its MJ channel."""
    hang_rate: float = attrs.field(default=0.0, validator=_rate)
    """Jobs that hang: they stop progressing part-way (IN_PROGRESS) and the server fails
    them after ``SimulatorConfig.task_timeout`` (novicezk ``TaskTimeoutSchedule``: ``任务超时``;
    TrueAI ``DiscordService``: ``执行超时 N 分钟``). Decided per job, not per request; prompts
    with one of ``SimulatorConfig.hang_words`` always hang."""
    relay_stall_rate: float = attrs.field(default=0.0, validator=_rate)
    """quickrouter: jobs whose copy in the relay stops refreshing for good (the upstream
    finishes, the relay never learns it; QuantumNous/new-api#1673). Decided per job;
    prompts with one of ``SimulatorConfig.stall_words`` always stall."""
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
            + self.no_account_rate
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
    max_queue: int | None = attrs.field(default=None, validator=_optional_count)
    """Jobs allowed to wait per account beyond the running ones; a submit beyond it gets
    the dialect's queue-full answer (code 23, or 9 on trueai). Needs ``concurrency``.
    0: no waiting place, so a submit while every worker is busy is refused (a
    ``queue-size`` 0 executor: Java's SynchronousQueue hands off or rejects)."""
    saturate_429: bool = False
    """quickrouter only: a full queue is answered by the relay as HTTP 429 code 30 (new-api's
    "group saturated") instead of passing the upstream's code 23 through."""
    quotas: Mapping[str, int] = attrs.field(factory=dict, converter=_quotas)
    """Jobs each key may create in total; beyond it the dialect's "insufficient quota"
    answer. Keys not listed are unlimited. (midjourney-proxy has no quotas.)"""
    disabled_keys: tuple[str, ...] = attrs.field(default=(), converter=_keys)
    """Keys that exist but are disabled (401/403 the way the dialect says so; quickrouter:
    401 ``该令牌状态不可用``). :meth:`Simulator.revoke_key` disables one at run time."""
    expired_keys: tuple[str, ...] = attrs.field(default=(), converter=_keys)
    """Keys that exist but have expired: quickrouter 401 ``该令牌已过期`` on every route
    (new-api ``model/token.go``), trueai 403 ``账号不可用``, midjourney-proxy 401."""
    exhausted_keys: tuple[str, ...] = attrs.field(default=(), converter=_keys)
    """Keys whose quota is used up: quickrouter 401 ``该令牌额度已用尽 TokenStatusExhausted[sk-…]``
    on every route (new-api ``model/token.go``); trueai refuses their submits with
    ``总绘图次数已达上限``; midjourney-proxy 401."""
    quota_usd: float | None = attrs.field(default=None, validator=_optional_money)
    """quickrouter: each key's own quota (new-api's token ``remain_quota``) in USD; None: an
    unlimited token. Every accepted submit is charged its model's price (``model_prices``)
    after the upstream accepted it, so the last one may take the key below zero; from then
    on every route answers 401 ``该令牌额度已用尽`` (``/api/usage/token/`` still answers)."""
    account_quota_usd: float | None = attrs.field(default=None, validator=_optional_money)
    """quickrouter: each key's account (new-api's user quota) in USD; None: unlimited. A
    submit the account cannot pay is refused with code 4 ``quota_not_enough``. Failed jobs
    are refunded here (not to the key), when the relay's refresh sees the failure."""
    model_prices: Mapping[str, float] = attrs.field(factory=dict, converter=_prices)
    """quickrouter: USD per call by model (``mj_imagine``, ``mj_upscale``, ...); the models
    given replace new-api's suggested defaults (``NEW_API_MJ_PRICES``)."""
    quota_per_unit: float = attrs.field(default=500_000.0)
    """quickrouter: new-api's ``QuotaPerUnit``, quota units per USD (``/api/status``)."""
    quota_display_type: str = "USD"
    """quickrouter: the site's display unit (``USD``, ``CNY`` or ``TOKENS``): what the
    OpenAI-compatible ``/dashboard/billing/*`` routes and ``/v1/credits`` report in."""
    usd_exchange_rate: float = attrs.field(default=7.3)
    """quickrouter: yuan per USD, for ``quota_display_type="CNY"``."""
    usage_rate_limit: int | None = attrs.field(default=None, validator=_optional_positive)
    """quickrouter: reads of ``/api/usage/token/`` allowed per 20 minutes (new-api's
    ``CriticalRateLimit``, per client IP: 20, the ``realistic`` preset's); beyond it a 429
    with ``Retry-After: 1200`` and no body. None: no limit."""
    admin_keys: tuple[str, ...] | None = attrs.field(default=(), converter=_optional_keys)
    """trueai: keys allowed to cancel tasks (``POST /task/{id}/cancel``). As on a real
    server (``TaskController.cs``), only admins may: by default no key is one, and others
    get 400 ``演示模式，禁止操作``. None treats every key as an admin (the opt-in)."""
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
    server_address: str | None = None
    """quickrouter: new-api's ``ServerAddress``, the origin written into forwarded image
    links (``{server_address}/mj/image/{id}``). None: the simulator's own URL.
    ``"http://localhost:3000"`` (new-api's default) imitates a relay whose operator never
    set it: links point at a port where nothing listens (QuantumNous/new-api#144)."""
    missing_models: tuple[str, ...] = attrs.field(default=(), converter=_words)
    """quickrouter: models without a channel in the key's group (``"mj_custom_zoom"``,
    ``"mj_imagine"``, ...): their submits get new-api's distributor 503 ``model_not_found``
    ``当前分组 default 下对于模型 <model> 无可用渠道``."""
    channel_auto_ban: bool = False
    """quickrouter: new-api disables its MJ channel when the upstream answers code 3
    (``relay/mjproxy_handler.go``, auto-ban on). Afterwards every submit gets the
    distributor's 503 ``model_not_found``, actions on existing tasks and image-seed
    ``该任务所属渠道已被禁用``; task reads keep working. ``Simulator.channel_disabled``."""
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
    task_timeout: float = attrs.field(default=300.0, validator=_non_negative)
    """Seconds after its start a hanging job is failed by the server (the account's
    ``timeoutMinutes``/``TimeoutMinutes``, 5 minutes on both servers). midjourney-proxy
    checks every 30 s (``任务超时``), TrueAI every 3 s (``执行超时 N 分钟``, N whole minutes)."""
    store_lag: float = attrs.field(default=0.0, validator=_non_negative)
    """midjourney-proxy: seconds the task store lags behind a finished job (novicezk saves
    tasks asynchronously, ``asyncSaveAndNotify``): ``/submit/change`` and
    ``/submit/simple-change`` on a parent that finished less than this ago answer code 4
    ``关联任务状态错误`` (code 3 ``关联任务不存在或已失效`` if the store has no copy yet;
    novicezk/midjourney-proxy#252) while fetch already shows SUCCESS."""
    link_lifetime: float | None = attrs.field(default=None)
    """Seconds a signed image link (``?ex=<hex>&is=<hex>&hm=<sig>&``, Discord's CDN)
    stays valid; None: links never expire. Links are re-signed every half lifetime, so a
    fresh read of the task gives a working link; an expired or forged one gets 404
    ``This content is no longer available.`` (quickrouter: the relay's stored link expires
    with the last refresh, as in new-api)."""
    seed: int = 0
    """Seeds every random choice: faults, list order, hashes, job failures."""
    faults: FaultConfig = FaultConfig()
    """Seeded fault injection (gateway errors, rate limits, drops, ...): see FaultConfig."""
    banned_words: tuple[str, ...] = attrs.field(default=("badword",), converter=_words)
    """midjourney-proxy refuses these at submit (code 24), trueai fails the job
    (``可能包含敏感词``), quickrouter's Plus-like upstream refuses them (code 24)."""
    fail_words: tuple[str, ...] = attrs.field(default=("failword",), converter=_words)
    """A job whose prompt contains one of these ends in FAILURE."""
    hang_words: tuple[str, ...] = attrs.field(default=("hangword",), converter=_words)
    """A job whose prompt contains one of these hangs (see ``FaultConfig.hang_rate``)."""
    stall_words: tuple[str, ...] = attrs.field(default=("stallword",), converter=_words)
    """quickrouter: the relay's copy of a job whose prompt contains one of these stops
    refreshing (see ``FaultConfig.relay_stall_rate``)."""
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
        if not self.quota_per_unit > 0 or not self.usd_exchange_rate > 0:
            raise ValueError("quota_per_unit and usd_exchange_rate must be positive")
        if self.quota_display_type not in ("USD", "CNY", "TOKENS"):
            raise ValueError("quota_display_type must be USD, CNY or TOKENS")
        if self.link_lifetime is not None and not self.link_lifetime > 0:
            raise ValueError("link_lifetime must be positive seconds (or None)")
        if self.server_address is not None and not self.server_address.startswith(
            ("http://", "https://")
        ):
            raise ValueError("server_address must be an http(s) origin")

    @property
    def api_key(self) -> str:
        """The primary key (the first of ``api_keys``)."""
        return self.api_keys[0]

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> SimulatorConfig:
        """A config from one of :data:`PRESETS`, with ``overrides`` applied on top.

        ``SimulatorConfig.preset("realistic", dialect="trueai")`` gives a server that
        behaves with production timings (``quickmj simulate --preset realistic``).

        Args:
            name: a key of :data:`PRESETS` (``"fast"`` or ``"realistic"``).
            **overrides: SimulatorConfig fields to set as well.

        Returns:
            The new config.

        Raises:
            ValueError: ``name`` is not a preset, or an override is not a valid value.
            TypeError: an override names no SimulatorConfig field.
        """
        if name not in PRESETS:
            raise ValueError(f"unknown simulator preset {name!r}: use one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})


PRESETS: Mapping[str, Mapping[str, Any]] = types.MappingProxyType(
    {
        "fast": types.MappingProxyType({}),
        "realistic": types.MappingProxyType(
            {
                # new-api refreshes its copies every 15 s (controller/midjourney.go).
                "refresh_interval": 15.0,
                # A fast-mode grid: a few seconds waiting for the bot, ~45 s drawing.
                "queue_seconds": 5.0,
                "run_seconds": 45.0,
                # Both proxies' account defaults: core-size 3, queue-size 10.
                "concurrency": 3,
                "max_queue": 10,
                # Discord's CDN signs attachment links for 24 hours.
                "link_lifetime": 86_400.0,
                # novicezk saves tasks asynchronously: a short store lag.
                "store_lag": 0.5,
                # image-seed waits for the bot's DM.
                "seed_delay": 2.0,
                # new-api's CriticalRateLimit on /api/usage/token/: 20 per 20 minutes.
                "usage_rate_limit": 20,
            }
        ),
    }
)
"""Named settings for :meth:`SimulatorConfig.preset` and ``quickmj simulate --preset``:
``"fast"`` is the defaults (jobs finish in a quarter second, the relay is always current:
what tests and ``quickmj batch --simulate`` use); ``"realistic"`` has production timings
(new-api's 15 s refresh lag and its empty first status, ~50 s jobs, three jobs at a time
per account and ten waiting, 24-hour links, the Java store's lag, a slow image-seed)."""
