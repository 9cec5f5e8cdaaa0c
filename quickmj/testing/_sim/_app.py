"""The Simulator: one dialect's server state plus the aiohttp.web application serving it."""

from __future__ import annotations

import asyncio
import collections
import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from aiohttp import web

from . import _png
from ._accounts import AccountView
from ._catalogue import Result
from ._clock import Clock
from ._config import SimulatorConfig
from ._dialects import DIALECT_CLASSES
from ._dialects._base import MODE_PREFIXES, Call, Dialect, Media, Reply, Route
from ._engine import CreatedJob, Engine
from ._faults import Fault, FaultEvent, FaultInjector, abort, cut, gateway_page, rate_limited
from ._hooks import HookDelivery, HookDispatcher
from ._persist import load_state, save_state
from ._state import SUCCESS, SimTask

__all__ = ("MODE_PREFIXES", "Simulator")

_MAX_BODY = 64 * 1024 * 1024
_NOT_FOUND = Reply(404, b"404: Not Found", "text/plain; charset=utf-8")
#: Discord's CDN for a signed attachment link past its expiry.
_EXPIRED = Reply(404, b"This content is no longer available.", "text/plain; charset=utf-8")
_REVOKE_REASONS = ("disabled", "expired", "exhausted")


async def _never(call: Call) -> Reply:  # the CDN route is answered by Simulator._media
    raise AssertionError


_CDN = Route(
    "GET", "/attachments/{a}/{b}/{name}", "image", _never, auth=False, key="GET /attachments"
)


class Simulator:
    """An in-process imitation of one midjourney-proxy server family.

    ``sim.app`` is the aiohttp application; serve it with :func:`simulate` (or any aiohttp
    runner) and inspect ``counters``, ``submissions``, ``accounts``, ``fault_log`` and
    ``hook_deliveries`` in tests. ``clock`` (a callable giving monotonic seconds) replaces
    ``time.monotonic``; :meth:`advance` moves the simulator's time forward.

    Args:
        config: the server's settings (default: ``SimulatorConfig()``).
        clock: a callable giving monotonic seconds (default ``time.monotonic``); a fake
            clock makes job timelines independent of real time.
        epoch: the Unix time the clock's start stands for, used for the ``submitTime``
            family of fields (default: now).
    """

    def __init__(
        self,
        config: SimulatorConfig | None = None,
        *,
        clock: Callable[[], float] | None = None,
        epoch: float | None = None,
    ) -> None:
        self.config: SimulatorConfig = config or SimulatorConfig()
        cfg = self.config
        # epoch: the Unix time the clock's start stands for (default: now).
        self.clock: Clock = Clock(clock or time.monotonic, epoch)
        self.engine: Engine = Engine(cfg, self.clock)
        self._base_url = ""
        self.media: Media = Media(self.engine, self._get_base_url)
        self.dialect: Dialect = DIALECT_CLASSES[cfg.dialect](
            self.engine, self.media, self._get_base_url
        )
        self.counters: collections.Counter[str] = collections.Counter()
        """Requests received per route, e.g. ``counters["POST /submit/imagine"]``."""
        self.faults: FaultInjector = FaultInjector(cfg.faults, self.engine.fault_rng)
        self.engine.faults = self.faults
        self.dialect.truncate = self.faults.truncate
        if hasattr(self.dialect, "media_reply"):
            # the quickrouter dialect serves its /mj/image/{id} route from the CDN
            self.dialect.media_reply = self._media_url  # pyright: ignore[reportAttributeAccessIssue]
        self.hooks: HookDispatcher = HookDispatcher(
            self.clock,
            self.engine.timeline,
            self.dialect.render,
            drop_rate=cfg.faults.hook_drop_rate,
            timeout=cfg.hook_timeout,
        )
        self.engine.on_activate.append(self._schedule_hooks)
        self._exact: dict[tuple[str, str], Route] = {}
        self._patterns: list[Route] = []
        for route in self.dialect.routes():
            if "{" in route.path:
                self._patterns.append(route)
            else:
                self._exact[(route.method, route.path)] = route
        self._prefixes = sorted(self.dialect.prefixes, key=len, reverse=True)
        self._root = {(r.method, r.path): r for r in self.dialect.root_routes()}
        self.app: web.Application = self._build_app()

    def __repr__(self) -> str:
        where = self.base_url or "(not serving)"
        return f"<Simulator {self.config.dialect} {where} tasks={len(self.engine.tasks)}>"

    # ---- inspection ----

    def _get_base_url(self) -> str:
        return self._base_url

    @property
    def base_url(self) -> str:
        """Where the simulator serves (used in image URLs); set by ``simulate``."""
        return self._base_url

    @base_url.setter
    def base_url(self, value: str) -> None:
        self._base_url = value.rstrip("/")

    @property
    def submissions(self) -> list[CreatedJob]:
        """Every job actually created: ``(endpoint, prompt or customId, state, key)``."""
        return self.engine.submissions

    @property
    def tasks(self) -> dict[str, SimTask]:
        """All jobs by id (internal records; :meth:`task_json` gives the wire view)."""
        return self.engine.tasks

    @property
    def accounts(self) -> Mapping[str, AccountView]:
        """Per-key counters: ``sim.accounts[key].submitted / running / queued / rejected``."""
        now = self.clock.now()
        return {key: AccountView(account, now) for key, account in self.engine.accounts.items()}

    @property
    def fault_log(self) -> list[FaultEvent]:
        """Every fault injected so far, in order."""
        return self.faults.log

    @property
    def hook_deliveries(self) -> list[HookDelivery]:
        """notifyHook deliveries attempted: ``(task id, url, (status, step))``."""
        return self.hooks.sent

    def task_json(self, task_id: str) -> Any:
        """Exactly what ``GET /task/{id}/fetch`` would show now, parsed from JSON.

        Args:
            task_id: the job's id.

        Returns:
            The task as this dialect writes it (camelCase keys, its own quirks).

        Raises:
            KeyError: no job has this id.
        """
        return json.loads(self.dialect.fetch_body(self.engine.tasks[task_id]))

    def task_status(self, task_id: str) -> str:
        """The ``status`` fetch would show now (quickrouter: the relay's copy, maybe ``""``).

        Args:
            task_id: the job's id.

        Raises:
            KeyError: no job has this id.
        """
        return str(self.task_json(task_id)["status"])

    def advance(self, seconds: float) -> None:
        """Move the simulator's clock forward (jobs, relay refreshes and hooks follow).

        Args:
            seconds: how far to move (not negative).

        Raises:
            ValueError: ``seconds`` is negative (the clock only moves forward).
        """
        self.clock.advance(seconds)

    def revoke_key(self, key: str, reason: str = "disabled") -> None:
        """Refuse ``key`` from now on, as the server refuses an unusable key.

        quickrouter answers every route, task reads included, 401 with new-api's words
        (``该令牌状态不可用``, ``该令牌已过期``, ``该令牌额度已用尽 …``); trueai 401
        ``账号已禁用`` or 403 ``账号不可用`` (an exhausted key: its submits are refused for
        the draw limit); midjourney-proxy 401. Jobs already created keep running.

        Args:
            key: one of the configured keys.
            reason: ``"disabled"``, ``"expired"`` or ``"exhausted"``.

        Raises:
            ValueError: an unknown key or reason.
        """
        if reason not in _REVOKE_REASONS:
            raise ValueError(f"reason must be one of {_REVOKE_REASONS}, got {reason!r}")
        if key not in self.engine.accounts:
            raise ValueError("revoke_key: not a key this simulator knows")
        self.engine.revoked[key] = reason

    def restore_key(self, key: str) -> None:
        """Accept ``key`` again (undoes :meth:`revoke_key` and the ``*_keys`` settings).

        Args:
            key: one of the configured keys.

        Raises:
            ValueError: an unknown key.
        """
        if key not in self.engine.accounts:
            raise ValueError("restore_key: not a key this simulator knows")
        self.engine.revoked.pop(key, None)
        self.engine.accounts[key].quota = self.config.quotas.get(key)

    @property
    def channel_disabled(self) -> bool:
        """quickrouter: whether new-api disabled its MJ channel (``channel_auto_ban``).

        Set it to False to re-enable the channel (as an admin would), or True to
        disable it without a code 3. Always False on the other dialects.
        """
        return bool(getattr(self.dialect, "channel_disabled", False))

    @channel_disabled.setter
    def channel_disabled(self, value: bool) -> None:
        if not hasattr(self.dialect, "channel_disabled"):
            raise ValueError("only the quickrouter dialect has a channel to disable")
        self.dialect.channel_disabled = value  # pyright: ignore[reportAttributeAccessIssue]

    def submit_imagine(
        self,
        prompt: str,
        *,
        state: str | None = None,
        notify_hook: str | None = None,
        key: str | None = None,
    ) -> str:
        """Create an imagine job directly (no HTTP, not counted); returns its id.

        Handy to preload thousands of tasks. Call it inside the running event loop when
        ``notify_hook`` is given (deliveries are scheduled on it).

        Args:
            prompt: the job's prompt (banned and fail words apply as on the wire).
            state: the ``state`` string echoed on the task.
            notify_hook: a URL the simulator POSTs the task's changes to.
            key: the account (API key) that submits it (default: the primary key).

        Returns:
            The new job's id.

        Raises:
            ValueError: the server would refuse this submit (a banned word, a full
                queue, an exhausted quota, ...).
        """
        body: dict[str, Any] = {"prompt": prompt}
        if state is not None:
            body["state"] = state
        if notify_hook is not None:
            body["notifyHook"] = notify_hook
        return self.dialect.preload(key or self.config.api_key, body).id

    def save(self, path: str | Path) -> None:
        """Write the simulator's state to a JSON file (see :meth:`load`).

        Saved: the config, jobs (with timelines relative to now), accounts, the relay's
        rows, counters and the random generators, so a loaded simulator goes on exactly
        where this one stands.

        Args:
            path: the file to write (replaced if it exists).
        """
        save_state(self, path)

    @classmethod
    def load(cls, path: str | Path) -> Simulator:
        """A simulator that continues the state :meth:`save` wrote to ``path``.

        Args:
            path: a file written by :meth:`save`.

        Returns:
            A new simulator (not serving yet) with the saved config, jobs and counters.

        Raises:
            ValueError: the file was written by an incompatible simulator version.
        """
        return load_state(path, cls)

    # ---- hooks ----

    def _schedule_hooks(self, task: SimTask) -> None:
        if self.config.hooks_enabled:
            self.hooks.schedule(task, self.dialect.hook_url(task))

    # ---- the application ----

    def _build_app(self) -> web.Application:
        app = web.Application(client_max_size=_MAX_BODY)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        app.on_startup.append(self._on_startup)
        app.on_cleanup.append(self._on_cleanup)
        return app

    async def _on_startup(self, _: web.Application) -> None:
        await self.hooks.start()

    async def _on_cleanup(self, _: web.Application) -> None:
        await self.hooks.close()

    def _resolve(
        self, method: str, path: str
    ) -> tuple[Route | None, str, str | None, dict[str, str], bool]:
        """(route, prefix, mode, params, other_methods) for a request path."""
        if path.startswith("/attachments/"):
            match = _CDN.pattern.match(path)
            if match and method == "GET":
                return _CDN, "", None, match.groupdict(), False
        prefix = next((p for p in self._prefixes if path.startswith(p + "/")), None)
        mode = self.dialect.prefixes.get(prefix) if prefix else None
        if prefix is None:
            prefix = self.dialect.extra_prefix(path)
        if prefix is None:
            return self._root.get((method, path)), "", None, {}, False
        rest = path[len(prefix) :]
        route = self._exact.get((method, rest))
        if route is not None:
            return route, prefix, mode, {}, False
        other = any(m != method and p == rest for m, p in self._exact)
        for candidate in self._patterns:
            match = candidate.pattern.match(rest)
            if match is None:
                continue
            if candidate.method == method:
                return candidate, prefix, mode, match.groupdict(), False
            other = True
        return None, prefix, mode, {}, other

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        route, prefix, mode, params, other = self._resolve(request.method, request.path)
        if not self._base_url:
            self.base_url = str(request.url.origin())
        if route is None:
            self.counters["unmatched"] += 1
            return self._respond(self.dialect.unmatched(request, other, bool(prefix)))
        self.counters[route.key] += 1
        injector = self.faults
        if injector.config.latency and injector.applies(route.key, route.group):
            await asyncio.sleep(injector.config.latency)
        relay = self.config.dialect == "quickrouter"
        fault = injector.draw(route.key, route.group, relay=relay)
        if fault is Fault.ERROR_5XX:
            return gateway_page(502)
        if fault is Fault.RATE_LIMIT:
            return rate_limited(injector.config.retry_after)
        if fault is Fault.DROP and route.group == "submit":
            return abort(request)  # before the job exists
        if route is _CDN:
            reply = self._media(params["name"], request.path, request.query)
            return await self._finish(request, reply, fault)
        key = None
        if route.auth:
            key, refused = self.dialect.authenticate(request)
            if refused is not None:
                return self._respond(refused)
        body = await request.read()
        call = Call(request, key, mode, prefix, params, body, route.key, route.group, fault)
        reply = await route.handler(call)
        if fault is Fault.ERROR_5XX_AFTER_CREATE:
            return gateway_page(504)
        return await self._finish(request, reply, fault)

    def _respond(self, reply: Reply) -> web.Response:
        return _Response(reply, self.dialect.server_header)

    async def _finish(
        self, request: web.Request, reply: Reply, fault: Fault | None
    ) -> web.StreamResponse:
        response = self._respond(reply)
        if fault in (Fault.DROP, Fault.DROP_AFTER_CREATE):
            return await cut(request, response)
        return response

    # ---- the simulated CDN ----

    def _media_url(self, url: str) -> Reply:
        parts = urlsplit(url)
        match = _CDN.pattern.match(parts.path)
        if match is None:
            return _NOT_FOUND
        query = dict(parse_qsl(parts.query))
        return self._media(match.group("name"), parts.path, query)

    def _media(self, name: str, path: str = "", query: Mapping[str, str] | None = None) -> Reply:
        """A file of a job: ``sim_<id>.png`` (final), ``_<n>`` parts, ``_progress_<pct>``."""
        m = Media.NAME.match(name)
        task = self.engine.tasks.get(m.group("id")) if m else None
        if m is None or task is None:
            return _NOT_FOUND
        signed = self.config.link_lifetime is not None and m.group("pct") is None
        if signed and not self.media.link_valid(path, query or {}):
            # cdn.discordapp.com past the link's ``ex`` (or with a forged ``hm``).
            self.engine.record("GET /attachments", Fault.LINK_EXPIRED)
            return _EXPIRED
        size = self.config.image_size
        colours = _png.colours_for(task.image_key)
        if m.group("pct") is not None:
            return Reply(200, _png.preview_png(colours, size, int(m.group("pct"))), "image/png")
        if self.engine.phase(task)[0] != SUCCESS:
            return _NOT_FOUND
        if m.group("ext") == "mp4":
            return Reply(200, _png.mp4_stub(name), "video/mp4")
        if m.group("part") is not None:
            return Reply(200, _png.single_png(colours[int(m.group("part"))], size), "image/png")
        if task.result in (Result.GRID, Result.DESCRIBE):
            return Reply(200, _png.grid_png(colours, size), "image/png")
        index = (task.image_index or 1) - 1
        return Reply(200, _png.single_png(colours[index % 4], size), "image/png")


class _Response(web.Response):
    """A response whose Content-Type and Server headers are exactly the server's."""

    def __init__(self, reply: Reply, server: str | None) -> None:
        super().__init__(status=reply.status, body=reply.body, headers=dict(reply.headers))
        self._sim_type = reply.content_type
        self._sim_server = server
        if reply.content_type is not None:
            self.headers["Content-Type"] = reply.content_type

    async def _prepare_headers(self) -> None:
        await super()._prepare_headers()
        # aiohttp adds application/octet-stream to any typed-less body and names itself;
        # the real servers send no Content-Type on their plain answers (WriteAsync,
        # Spring's null body) and their own Server header, if any.
        if self._sim_type is None:
            self.headers.pop("Content-Type", None)
        self.headers.pop("Server", None)
        if self._sim_server:
            self.headers["Server"] = self._sim_server
