"""The Simulator: the relay's state plus the aiohttp.web application that serves it."""

from __future__ import annotations

import asyncio
import collections
import hmac
import json
import random
from collections.abc import Callable
from typing import Any

import attrs
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from .._models import Task
from ._config import SimulatorConfig
from ._faults import Fault, FaultEvent, FaultInjector, abort, cut, gateway_page, rate_limited
from ._hooks import HookDelivery, HookDispatcher
from ._relay import Relay, Reply, Submission, invalid
from ._render import Renderer
from ._state import SimTask, TaskStore

__all__ = ("MODE_PREFIXES", "Simulator")

#: Path prefixes the /mj routes are mounted under, and the speed mode each one requests.
MODE_PREFIXES: dict[str, str | None] = {
    "/mj": None,
    "/mj-fast/mj": "FAST",
    "/mj-relax/mj": "RELAX",
    "/mj-turbo/mj": "TURBO",
}

_SUBMITS = ("imagine", "blend", "describe", "shorten", "action", "modal")
_UNAUTHORISED = "Authorization header missing."
_MAX_BODY = 64 * 1024 * 1024


@attrs.frozen
class _Route:
    key: str  # the counter key, e.g. "POST /submit/imagine"
    group: str  # submit, fetch, list, seed or image (FaultConfig.routes)
    mode: str | None = None
    auth: bool = True


def _respond(reply: Reply) -> web.Response:
    if not reply.body:
        return web.Response(status=reply.status)
    return web.Response(
        status=reply.status,
        body=reply.body,
        content_type=reply.content_type,
        charset="utf-8" if reply.content_type == "application/json" else None,
    )


async def _read_json(request: web.Request) -> tuple[Any, web.Response | None]:
    """The request's JSON body (None when empty), or a code-4 answer for anything else."""
    raw = await request.read()
    if not raw.strip():
        return None, None
    try:
        return json.loads(raw), None
    except (ValueError, RecursionError):
        return None, _respond(invalid("请求体不是合法的 JSON", status=400))


class Simulator:
    """An in-process imitation of a midjourney-proxy relay (see ``quickmj.simulator``).

    ``sim.app`` is the aiohttp application. Run it with :func:`simulate` (or any aiohttp
    runner); inspect ``counters``, ``submissions``, ``tasks`` and ``fault_log`` in tests.
    """

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self.config = config or SimulatorConfig()
        cfg = self.config
        master = random.Random(cfg.seed)
        # Independent streams, so e.g. list shuffles never shift the fault sequence.
        fault_rng = random.Random(master.getrandbits(64))
        list_rng = random.Random(master.getrandbits(64))
        job_rng = random.Random(master.getrandbits(64))
        #: Requests received per route, e.g. ``counters["POST /submit/imagine"]``.
        self.counters: collections.Counter[str] = collections.Counter()
        self.store = TaskStore(cfg, job_rng)
        self.renderer = Renderer(self.store)
        self.hooks = HookDispatcher(
            self.store,
            self.renderer.json,
            drop_rate=cfg.faults.hook_drop_rate,
            timeout=cfg.hook_timeout,
        )
        self.faults = FaultInjector(cfg.faults, fault_rng)
        self.relay = Relay(cfg, self.store, self.renderer, self.hooks, list_rng)
        self._routes: dict[web.AbstractRoute, _Route] = {}
        self.app = self._build_app()

    def __repr__(self) -> str:
        return f"<Simulator {self.base_url or '(not serving)'} tasks={len(self.store.tasks)}>"

    # ---- inspection ----

    @property
    def base_url(self) -> str:
        """Where the simulator serves (used in image URLs); set by ``simulate``."""
        return self.renderer.base_url

    @base_url.setter
    def base_url(self, value: str) -> None:
        self.renderer.base_url = value.rstrip("/")

    @property
    def submissions(self) -> list[Submission]:
        """Every job actually created: ``(endpoint, prompt or customId, state)``."""
        return self.relay.submissions

    @property
    def tasks(self) -> dict[str, SimTask]:
        """All tasks by id (internal records; use :meth:`task` for the relay's view)."""
        return self.store.tasks

    @property
    def fault_log(self) -> list[FaultEvent]:
        """Every fault injected so far, in order."""
        return self.faults.log

    @property
    def hook_deliveries(self) -> list[HookDelivery]:
        """notifyHook deliveries attempted: ``(task id, url, (status, step))``."""
        return self.hooks.sent

    def task(self, task_id: str) -> Task:
        """The task as fetch would show it now. KeyError for an unknown id."""
        sim_task = self.store.tasks[task_id]
        return self.renderer.task(sim_task, self.store.phase(sim_task, self.store.clock()))

    def submit_imagine(
        self, prompt: str, *, state: str | None = None, notify_hook: str | None = None
    ) -> str:
        """Create an imagine job directly (no HTTP, not counted); returns its id.

        Handy to preload thousands of tasks. Raises ValueError if the relay would refuse.
        Call it inside the running event loop when ``notify_hook`` is given.
        """
        body: dict[str, Any] = {"prompt": prompt}
        if state is not None:
            body["state"] = state
        if notify_hook is not None:
            body["notifyHook"] = notify_hook
        reply = self.relay.imagine(body, None)
        if reply.task is None:
            raise ValueError(f"imagine refused: {reply.body.decode()}")
        return reply.task.id

    # ---- the application ----

    def _build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._make_middleware()], client_max_size=_MAX_BODY)
        relay = self.relay
        for prefix, mode in MODE_PREFIXES.items():
            for name in _SUBMITS:
                self._add(
                    app,
                    "POST",
                    f"{prefix}/submit/{name}",
                    self._submit_handler(getattr(relay, name), mode),
                    _Route(f"POST /submit/{name}", "submit", mode),
                )
            self._add(
                app,
                "GET",
                f"{prefix}/task/{{id}}/fetch",
                self._fetch,
                _Route("GET /task/{id}/fetch", "fetch", mode),
            )
            self._add(
                app,
                "POST",
                f"{prefix}/task/list-by-condition",
                self._list,
                _Route("POST /task/list-by-condition", "list", mode),
            )
            self._add(
                app,
                "GET",
                f"{prefix}/task/{{id}}/image-seed",
                self._seed,
                _Route("GET /task/{id}/image-seed", "seed", mode),
            )
        self._add(
            app, "GET", "/images/{name}", self._image, _Route("GET /image", "image", None, False)
        )
        app.on_startup.append(self._on_startup)
        app.on_cleanup.append(self._on_cleanup)
        return app

    def _add(
        self, app: web.Application, method: str, path: str, handler: Handler, route: _Route
    ) -> None:
        self._routes[app.router.add_route(method, path, handler)] = route

    async def _on_startup(self, _: web.Application) -> None:
        await self.hooks.start()

    async def _on_cleanup(self, _: web.Application) -> None:
        await self.hooks.close()

    def _authorised(self, request: web.Request) -> bool:
        key = self.config.api_key.encode()
        offered: list[str] = []
        auth = request.headers.get("Authorization", "").strip()
        if auth:
            offered.append(auth)
            if auth[:7].lower() == "bearer ":
                offered.append(auth[7:].strip())
        secret = request.headers.get("mj-api-secret", "").strip()
        if secret:
            offered.append(secret)
        return any(hmac.compare_digest(value.encode(), key) for value in offered)

    def _make_middleware(self) -> Middleware:
        @web.middleware
        async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
            route = self._routes.get(request.match_info.route)
            if route is None:  # 404 / 405: aiohttp's own answer
                return await handler(request)
            self.counters[route.key] += 1
            if not self.renderer.base_url:
                self.base_url = str(request.url.origin())
            faults = self.faults.config
            if faults.latency and self.faults.applies(route.key, route.group):
                await asyncio.sleep(faults.latency)
            fault = self.faults.draw(route.key, route.group)
            if fault is Fault.ERROR_5XX:
                return gateway_page(502)
            if fault is Fault.RATE_LIMIT:
                return rate_limited(faults.retry_after)
            if fault is Fault.DROP and route.group == "submit":
                return abort(request)  # before the job exists
            if route.auth and not self._authorised(request):
                return web.Response(status=401, text=_UNAUTHORISED)
            response = await handler(request)
            if fault is Fault.ERROR_5XX_AFTER_CREATE:
                return gateway_page(504)
            if fault in (Fault.DROP, Fault.DROP_AFTER_CREATE) and isinstance(
                response, web.Response
            ):
                return await cut(request, response)
            return response

        return middleware

    # ---- handlers ----

    def _submit_handler(
        self, submit: Callable[[Any, str | None], Reply], mode: str | None
    ) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            body, error = await _read_json(request)
            if error is not None:
                return error
            return _respond(submit(body, mode))

        return handler

    async def _fetch(self, request: web.Request) -> web.StreamResponse:
        return _respond(self.relay.fetch(request.match_info["id"]))

    async def _list(self, request: web.Request) -> web.StreamResponse:
        body, error = await _read_json(request)
        if error is not None:
            return error
        route = self._routes[request.match_info.route]
        return _respond(
            self.relay.list_by_condition(
                body, lambda n: self.faults.truncate(route.key, route.group, n)
            )
        )

    async def _seed(self, request: web.Request) -> web.StreamResponse:
        task_id = request.match_info["id"]
        error = self.relay.seed_check(task_id)
        if error is not None:
            return _respond(error)
        if self.config.seed_delay:
            await asyncio.sleep(self.config.seed_delay)
        return _respond(self.relay.image_seed(task_id))

    async def _image(self, request: web.Request) -> web.StreamResponse:
        return _respond(self.relay.image(request.match_info["name"]))
