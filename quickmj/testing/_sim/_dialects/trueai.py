"""trueai-org/midjourney-proxy (C#, ASP.NET Core): routes, auth, errors, TaskInfo JSON.

Sources (HEAD ``ed32197``): ``src/Midjourney.API/SimpleAuthMiddleware.cs`` and
``WorkContext.cs`` (auth: the whole ``Authorization`` value, else ``Mj-Api-Secret``;
401 plain text), ``Controllers/SubmitController.cs``, ``TaskController.cs``,
``InsightFaceController.cs`` (routes, also under ``/mj-fast``, ``/mj-relax``,
``/mj-turbo``), ``Filters/CustomLogicExceptionFilterAttribute.cs`` and ``Program.cs``
(``InvalidModelStateResponseFactory``: ``{"success":false,"code":-1,...}`` with HTTP 200).
A null action result is ASP.NET's 204 (fetch of an unknown id); unknown routes are an
empty 404 (405 for a known path with the wrong method) once authorised.
As on a real server, every key sees every user's tasks (``TaskController.cs``: ``List``
takes the newest 100 of all users, ``ListByCondition`` and ``Fetch`` filter by id only),
``properties.notifyHook`` with a hook URL's secret included: not a leak of the simulator.

Deviations, on purpose: face swap works (real TrueAI needs Replicate configured, else
code 4 ``服务不支持``); ``POST /task/{id}/cancel`` is admin-only as on a real server
(``admin_keys``; ``admin_keys=None`` opens it to every key); ``remix=True`` makes reroll, variation,
pan and animate modal as a remix account would (TrueAI HEAD only does so on
``enableRemix``); a quota of N allows exactly N jobs (TrueAI's ``count > limit`` allows
N+1); VIDEO jobs always fill ``videoUrls``/``imageUrls`` (TrueAI: with
``EnableFillOfficialCdn`` or partner accounts); model-binding messages approximate
ASP.NET's wording; the Discord CDN is simulated on the same port.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from .._faults import Fault
from .._state import Phase, SimTask
from .._wire import dotnet_json
from ._base import MODE_PREFIXES, Call, Dialect, Reply, Route
from ._proxy import TRUEAI, Answer, BodyError, ProxyCore
from ._taskinfo import taskinfo

__all__ = ("TrueAIDialect",)

JSON = "application/json; charset=utf-8"
UNAUTHORISED = "Authorization header missing."

_DTOS = {
    "imagine": "SubmitImagineDTO",
    "describe": "SubmitDescribeDTO",
    "shorten": "SubmitImagineDTO",
    "blend": "SubmitBlendDTO",
    "action": "SubmitActionDTO",
    "modal": "SubmitModalDTO",
    "edits": "SubmitEditsDTO",
    "retexture": "SubmitEditsDTO",
    "video": "SubmitVideoDTO",
    "upload": "SubmitUploadDiscordDto",
    "swap": "InsightFaceSwapDto",
    "list": "TaskConditionDTO",
}


def ticks() -> str:
    """``DateTime.Now.Ticks``: 100 ns units since 0001-01-01, local time."""
    now = time.time()
    local = now + time.localtime(now).tm_gmtoff
    return str(int((local + 62_135_596_800) * 10_000_000))


def fail_result(message: str) -> dict[str, Any]:
    """``Result.Fail``: the global filter's and the model binder's answer shape."""
    return {"success": False, "code": -1, "message": message, "timestamp": ticks()}


def text_reply(status: int, text: str) -> Reply:
    # HttpResponse.WriteAsync without a content type: no Content-Type header at all.
    return Reply(status, text.encode(), None)


class TrueAIDialect(Dialect):
    name = "trueai"
    auth_scheme = "raw"
    server_header = "Kestrel"
    prefixes = MODE_PREFIXES

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.core = ProxyCore(self.engine, self.media, TRUEAI)

    # ---- auth ----

    def authenticate(self, request: web.Request) -> tuple[str | None, Reply | None]:
        headers = request.headers
        token = (
            headers["Authorization"]
            if "Authorization" in headers
            else headers.get("Mj-Api-Secret", "")
        )
        reason = self.engine.revoked.get(token)
        if reason == "exhausted":
            # TrueAI has no exhausted-token state: the user's draw limit refuses submits.
            account = self.engine.accounts[token]
            account.quota = min(account.quota or account.submitted, account.submitted)
            return token, None
        if reason is not None:
            self.engine.record(f"{request.method} {request.path}", Fault.TOKEN_REFUSED)
            # SimpleAuthMiddleware: a disabled user, or one outside its validity dates.
            if reason == "expired":
                return None, text_reply(403, "账号不可用")
            return None, text_reply(401, "账号已禁用")
        if token not in self.config.api_keys:
            return None, text_reply(401, UNAUTHORISED)
        return token, None

    def auth_headers(self, key: str) -> dict[str, str]:
        return {"Authorization": key}

    def unmatched(self, request: web.Request, other_methods: bool, prefixed: bool) -> Reply:
        _, refused = self.authenticate(request)
        if refused is not None:
            return refused
        return Reply(405 if other_methods else 404, b"", None)

    def preload(self, key: str, body: dict[str, Any]) -> SimTask:
        answer = self.core.imagine(key, body, None)
        if answer.task is None:
            raise ValueError(f"imagine refused: {answer.payload!r}")
        return answer.task

    # ---- rendering ----

    def render(self, task: SimTask, phase: Phase) -> bytes:
        key = ("trueai", phase, self.media.window())
        body = task.cache.get(key)
        if body is None:
            body = task.cache[key] = dotnet_json(taskinfo(task, phase, self.engine, self.media))
        return bytes(body)

    def _encode(self, answer: Answer, endpoint: str) -> Reply:
        if answer.logic:
            message = str(answer.payload)
            if endpoint == "imagine":  # the only controller that catches LogicException
                value: Any = {"code": 4, "description": message, "result": None, "properties": {}}
            else:
                value = fail_result(message)
            return Reply(200, dotnet_json(value), JSON)
        if answer.payload is None:
            return Reply(answer.status, b"", None, task=answer.task)
        if isinstance(answer.payload, str):
            return Reply(answer.status, answer.payload.encode(), "text/plain; charset=utf-8")
        return Reply(answer.status, dotnet_json(answer.payload), JSON, task=answer.task)

    def _bind(self, call: Call, dto: str) -> tuple[Any, Reply | None]:
        """The body for a ``[FromBody]`` DTO, or the model binder's refusal."""
        value, ok = self.parse_json(call.body)
        if not call.body.strip():
            return None, self._model_error("A non-empty request body is required.")
        if not ok:
            char = call.body.strip()[:1].decode(errors="replace")
            return None, self._model_error(
                f"'{char}' is an invalid start of a value. Path: $ | LineNumber: 0 |"
                " BytePositionInLine: 0."
            )
        if not isinstance(value, dict):
            return None, self._model_error(
                f"The JSON value could not be converted to Midjourney.Base.Dto.{dto}."
                " Path: $ | LineNumber: 0 | BytePositionInLine: 1."
            )
        return value, None

    def _model_error(self, message: str) -> Reply:
        return Reply(200, dotnet_json(fail_result(message)), JSON)

    # ---- routes ----

    def _submit(self, endpoint: str, run: Callable[[str, Any, str | None], Answer]) -> Any:
        async def handler(call: Call) -> Reply:
            body, error = self._bind(call, _DTOS[endpoint])
            if error is not None:
                return error
            assert call.key is not None
            # No free Discord account for this submit (FaultConfig.no_account_rate).
            self.core.no_account = call.fault is Fault.NO_ACCOUNT
            try:
                answer = run(call.key, body, call.mode)
            except BodyError as exc:
                return self._model_error(
                    f"The JSON value could not be converted to {exc.expected}."
                    f" Path: {exc.path} | LineNumber: 0 | BytePositionInLine: 1."
                )
            finally:
                self.core.no_account = False
            return self._encode(answer, endpoint)

        return handler

    def routes(self) -> list[Route]:
        core = self.core
        submits: list[tuple[str, str, Callable[[str, Any, str | None], Answer]]] = [
            ("/submit/imagine", "imagine", core.imagine),
            ("/submit/describe", "describe", core.describe),
            ("/submit/shorten", "shorten", core.shorten),
            ("/submit/blend", "blend", core.blend),
            ("/submit/action", "action", core.action),
            ("/submit/modal", "modal", core.modal),
            ("/submit/edits", "edits", core.edits),
            ("/submit/edit", "edits", core.edits),
            ("/submit/retexture", "retexture", lambda k, b, m: core.edits(k, b, m, retexture=True)),
            ("/submit/video", "video", core.video),
            ("/submit/upload-discord-images", "upload", lambda k, b, m: core.upload(k, b)),
            ("/insight-face/swap", "swap", core.swap),
        ]
        routes = [
            Route("POST", path, "submit", self._submit(name, run)) for path, name, run in submits
        ]
        routes += [
            Route("GET", "/task/{id}/fetch", "fetch", self._fetch),
            Route("POST", "/task/{id}/cancel", "cancel", self._cancel),
            Route("GET", "/task/{id}/image-seed", "seed", self._seed),
            Route("GET", "/task/list", "list", self._list),
            Route("POST", "/task/list-by-condition", "list", self._by_ids),
            Route("POST", "/task/list-by-ids", "list", self._by_ids),
        ]
        return routes

    async def _fetch(self, call: Call) -> Reply:
        task = self.engine.tasks.get(call.params["id"])
        if task is None:
            return Reply(204, b"", None)
        return Reply(200, self.fetch_body(task), JSON)

    async def _cancel(self, call: Call) -> Reply:
        assert call.key is not None
        return self._encode(self.core.cancel(call.key, call.params["id"]), "cancel")

    async def _seed(self, call: Call) -> Reply:
        return self._encode(await self.core.image_seed(call.params["id"]), "seed")

    def _array(self, tasks: list[SimTask]) -> Reply:
        now = self.engine.clock.now()
        phase = self.engine.timeline.phase
        parts = [self.render(t, phase(t, now)) for t in tasks]
        return Reply(200, b"[" + b",".join(parts) + b"]", JSON)

    async def _list(self, call: Call) -> Reply:
        # The latest 100 tasks of every user, newest first.
        tasks = sorted(self.engine.tasks.values(), key=lambda t: (t.submit_ms, t.ordinal))
        return self._array(tasks[::-1][:100])

    async def _by_ids(self, call: Call) -> Reply:
        body, error = self._bind(call, _DTOS["list"])
        if error is not None:
            return error
        ids = body.get("ids") if isinstance(body, dict) else None
        if ids is not None and (
            not isinstance(ids, list) or not all(isinstance(i, str) for i in ids)
        ):
            return self._model_error(
                "The JSON value could not be converted to System.Collections.Generic.List`1"
                "[System.String]. Path: $.ids | LineNumber: 0 | BytePositionInLine: 8."
            )
        wanted = dict.fromkeys(i.strip() for i in ids or () if i.strip())
        found = [t for t in map(self.engine.tasks.get, wanted) if t is not None]
        if self.config.shuffle_lists:
            self.engine.list_rng.shuffle(found)
        return self._array(self.limit(call, found))


Handler = Callable[[Call], Awaitable[Reply]]
