"""What every dialect provides, and the helpers they share (times, media URLs, bodies)."""

from __future__ import annotations

import hashlib
import json
import math
import re
import types
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import attrs
from aiohttp import web

from .._config import SimulatorConfig
from .._engine import Engine
from .._state import FAILURE, IN_PROGRESS, MODAL, NOT_START, SUCCESS, Phase, SimTask

__all__ = (
    "Call",
    "Dialect",
    "Media",
    "Reply",
    "Route",
    "Times",
    "is_image",
    "times",
)

JSON = "application/json"


@attrs.frozen
class Reply:
    """An answer: status, body bytes and content type (None: no Content-Type header)."""

    status: int
    body: bytes = b""
    content_type: str | None = JSON
    headers: Mapping[str, str] = attrs.field(factory=dict)
    #: The job this answer created (for the after-create faults and tests).
    task: SimTask | None = None


@attrs.frozen
class Call:
    """One request as a dialect's handler sees it."""

    request: web.Request
    #: The authenticated key (account), or None on routes without auth.
    key: str | None
    #: FAST, RELAX, TURBO from the path prefix, or None.
    mode: str | None
    #: The path prefix the request used (``"/mj"``, ``"/mj-fast/mj"``).
    prefix: str
    params: Mapping[str, str]
    body: bytes
    #: The matched route's counter key and fault group.
    route_key: str = ""
    group: str = ""
    #: The fault drawn for this request (the quickrouter dialect acts on the relay ones).
    fault: Any = None


Handler = Callable[[Call], Awaitable[Reply]]


@attrs.frozen
class Route:
    """One route of a dialect, relative to its prefixes (``"/task/{id}/fetch"``)."""

    method: str
    path: str
    #: submit, fetch, list, seed, image, cancel or account (``FaultConfig.routes``).
    group: str
    handler: Handler
    auth: bool = True
    #: The counter key: ``"POST /submit/imagine"`` (method and path) unless given.
    key: str = attrs.field(
        kw_only=True, default=attrs.Factory(lambda r: f"{r.method} {r.path}", takes_self=True)
    )
    pattern: re.Pattern[str] = attrs.field(init=False)

    @pattern.default  # pyright: ignore[reportAttributeAccessIssue]  (attrs' decorator)
    def _compile(self) -> re.Pattern[str]:
        regex = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(self.path))
        return re.compile(f"^{regex}$")


@attrs.frozen
class Times:
    """submitTime, startTime and finishTime (epoch ms) of a job in one phase."""

    submit: int
    start: int | None
    finish: int | None


def times(engine: Engine, task: SimTask, phase: Phase) -> Times:
    """submitTime, startTime and finishTime (epoch ms) as the proxy has them in ``phase``."""
    status = phase[0]
    clock = engine.clock
    start = None
    if status not in (NOT_START, MODAL) and task.slot_start is not None:
        started = task.cancel_at is None or task.cancel_at >= task.slot_start
        start = clock.epoch_ms(task.slot_start) if started else None
    finish = None
    if status in (SUCCESS, FAILURE):
        at = engine.timeline.finished_at(task)
        finish = clock.epoch_ms(at) if at is not None else None
    return Times(task.submit_ms, start, finish)


def progress_text(engine: Engine, phase: Phase) -> str | None:
    """null, "0%", "NN%", "100%" or "" (failure), as the proxies write it."""
    status, step = phase
    if status == IN_PROGRESS:
        return f"{engine.config.progress_steps[step]}%"
    if status == SUCCESS:
        return "100%"
    if status == FAILURE:
        return ""
    if status in (NOT_START, MODAL):
        return None
    return "0%"


_DATA_URL = re.compile(r"^data:[\w.+/-]+;base64,[A-Za-z0-9+/=\s]+$", re.S)
_RAW_BASE64 = re.compile(r"^[A-Za-z0-9+/=\s]+$")


def is_image(value: Any, *, urls: bool = True, raw: bool = True) -> bool:
    """A data URL, an http(s) URL (``urls``) or bare base64 (``raw``)."""
    if not isinstance(value, str) or not value.strip():
        return False
    value = value.strip()
    if value.startswith("data:"):
        return bool(_DATA_URL.match(value))
    if value.lower().startswith("http"):
        return urls
    return raw and bool(_RAW_BASE64.match(value))


def digits(seed: str, n: int = 19) -> str:
    """A stable ``n``-digit number derived from ``seed`` (Discord-style ids)."""
    value = int(hashlib.sha256(seed.encode()).hexdigest(), 16)
    low = 10 ** (n - 1)
    return str(low + value % (9 * low))


class Media:
    """The simulated CDN: URLs the proxies put in ``imageUrl``, served by the simulator.

    Files are named after the job (``sim_<id>.png``), under a Discord-like
    ``/attachments/<channel>/<message>/`` path, with Discord's signed ``ex``/``is``/``hm``
    query on final images. With ``link_lifetime`` the query is a real signature: ``is``
    is when it was issued and ``ex`` when it expires (hex Unix seconds, as Discord writes
    them), and final images, grid parts and videos all carry one. Links are re-issued
    every half lifetime, so whoever reads the task gets a link valid for at least half
    of it.
    """

    NAME = re.compile(
        r"^sim_(?P<id>\d+)(?:_(?P<part>[0-3])|_progress_(?P<pct>\d{1,3}))?\.(?P<ext>png|mp4)$"
    )

    def __init__(self, engine: Engine, base_url: Callable[[], str]) -> None:
        self.engine = engine
        self._base_url = base_url

    def channel(self, key: str) -> str:
        """The Discord channel (account instance id) jobs of ``key`` run on."""
        return digits(f"channel:{key}")

    def _dir(self, task: SimTask) -> str:
        return f"{self._base_url()}/attachments/{self.channel(task.key)}/{digits('msg:' + task.id)}"

    # ---- signed links ----

    def window(self, at: float | None = None) -> int | None:
        """Which signing period ``at`` (default: now) falls in; None when links never
        expire. Rendered task JSON is cached per period."""
        lifetime = self.engine.config.link_lifetime
        if lifetime is None:
            return None
        clock = self.engine.clock
        now = clock.now() if at is None else at
        return math.floor((now - clock.start) / (lifetime / 2))

    def _signature(self, path: str, ex: int, issued: int) -> str:
        secret = f"sim-cdn:{self.engine.config.seed}:{path}:{ex:x}:{issued:x}"
        return hashlib.sha256(secret.encode()).hexdigest()

    def _signed(self, path: str, at: float | None) -> str:
        """``base_url + path`` with a Discord-style query issued in ``at``'s period."""
        lifetime = self.engine.config.link_lifetime
        window = self.window(at)
        assert lifetime is not None and window is not None
        clock = self.engine.clock
        issued = clock.epoch_ms(clock.start + window * lifetime / 2) // 1000
        ex = issued + math.ceil(lifetime)
        query = f"ex={ex:x}&is={issued:x}&hm={self._signature(path, ex, issued)}&"
        return f"{self._base_url()}{path}?{query}"

    def link_valid(self, path: str, query: Mapping[str, str]) -> bool:
        """Whether a request for ``path`` carries a signature that is valid now."""
        try:
            ex, issued = int(query.get("ex", ""), 16), int(query.get("is", ""), 16)
        except ValueError:
            return False
        if query.get("hm") != self._signature(path, ex, issued):
            return False
        clock = self.engine.clock
        return clock.epoch_ms(clock.now()) < ex * 1000

    def _file(self, task: SimTask, name: str, at: float | None) -> str:
        path = self._dir(task).removeprefix(self._base_url()) + "/" + name
        if self.engine.config.link_lifetime is None:
            return self._base_url() + path
        return self._signed(path, at)

    # ---- the files of a job ----

    def final(self, task: SimTask, at: float | None = None) -> str:
        """The URL of the job's final image (with Discord-like signed query), as a read
        at clock time ``at`` (default: now) gets it."""
        if self.engine.config.link_lifetime is not None:
            return self._file(task, f"sim_{task.id}.png", at)
        digest = hashlib.sha256(f"sim-cdn:{task.id}".encode()).hexdigest()
        query = f"ex={digest[:8]}&is={digest[8:16]}&hm={digest[16:]}&"
        return f"{self._dir(task)}/sim_{task.id}.png?{query}"

    def preview(self, task: SimTask, percent: int) -> str:
        """The URL of the job's progress preview at ``percent`` (never signed)."""
        return f"{self._dir(task)}/sim_{task.id}_progress_{percent}.png"

    def part(self, task: SimTask, index: int, at: float | None = None) -> str:
        """The URL of one image (``index`` 0-3) of the job's grid."""
        return self._file(task, f"sim_{task.id}_{index}.png", at)

    def video(self, task: SimTask, index: int, at: float | None = None) -> str:
        """The URL of one video (``index``) of a video job."""
        return self._file(task, f"sim_{task.id}_{index}.mp4", at)


MODE_PREFIXES: Mapping[str, str | None] = types.MappingProxyType(
    {
        "/mj": None,
        "/mj-fast/mj": "FAST",
        "/mj-relax/mj": "RELAX",
        "/mj-turbo/mj": "TURBO",
    }
)
"""Path prefixes and the speed mode each requests (quickrouter and trueai; the
midjourney-proxy dialect has ``/mj`` only)."""


class Dialect:
    """A server family: its routes, auth, task rendering and error answers."""

    #: ``SimulatorConfig.dialect`` name.
    name = ""
    #: The name quickmj uses for the auth header this server wants.
    auth_scheme = ""
    #: Path prefixes routes are mounted under, and the speed mode each requests.
    prefixes: Mapping[str, str | None] = types.MappingProxyType({"/mj": None})
    #: The ``Server`` response header the real server sends (None: none).
    server_header: str | None = None

    def __init__(self, engine: Engine, media: Media, base_url: Callable[[], str]) -> None:
        self.engine = engine
        self.config: SimulatorConfig = engine.config
        self.media = media
        self.base_url = base_url

    # ---- to implement ----

    def routes(self) -> list[Route]:
        """Every route the server serves (relative to ``prefixes``)."""
        raise NotImplementedError

    def root_routes(self) -> list[Route]:
        """Routes outside ``prefixes``, by their full path (new-api's billing routes)."""
        return []

    def authenticate(self, request: web.Request) -> tuple[str | None, Reply | None]:
        """The account key the request carries, or the server's refusal."""
        raise NotImplementedError

    def unmatched(self, request: web.Request, other_methods: bool, prefixed: bool) -> Reply:
        """The server's answer for a path (or method) it has no route for."""
        raise NotImplementedError

    def render(self, task: SimTask, phase: Phase) -> bytes:
        """The task's JSON (what fetch shows, and notifyHook bodies) in ``phase``."""
        raise NotImplementedError

    def fetch_body(self, task: SimTask) -> bytes:
        """What ``GET /task/{id}/fetch`` answers for ``task`` now."""
        return self.render(task, self.engine.phase(task))

    def hook_url(self, task: SimTask) -> str | None:
        """Where the job's notifyHook deliveries go (None: nowhere)."""
        return task.notify_hook

    def auth_headers(self, key: str) -> dict[str, str]:
        """The header carrying ``key`` the way this server reads it."""
        raise NotImplementedError

    def preload(self, key: str, body: dict[str, Any]) -> SimTask:
        """Create an imagine job as a submit would, without HTTP (``submit_imagine``)."""
        raise NotImplementedError

    def extra_prefix(self, path: str) -> str | None:
        """A prefix outside ``prefixes`` the server still answers under (new-api's
        ``/:mode/mj``), or None."""
        return None

    # ---- shared ----

    #: Set by the app: how many of ``n`` list items a truncate-list fault keeps (None: all).
    truncate: Callable[[str, str, int], int | None] = staticmethod(lambda key, group, n: None)

    def limit(self, call: Call, items: list[Any]) -> list[Any]:
        """``items`` shortened when the truncate-list fault strikes this request."""
        keep = self.truncate(call.route_key, call.group, len(items))
        return items if keep is None else items[:keep]

    @staticmethod
    def parse_json(raw: bytes) -> tuple[Any, bool]:
        """(value, ok): the JSON body, or ok=False when it is not JSON at all."""
        if not raw.strip():
            return None, True
        try:
            return json.loads(raw), True
        except (ValueError, RecursionError):
            return None, False
