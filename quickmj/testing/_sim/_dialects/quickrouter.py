"""QuickRouter: a new-api relay in front of a Plus-like proxy (protocol.md §8.1).

Sources, QuantumNous/new-api: ``router/relay-router.go`` (routes under ``/mj`` and
``/:mode/mj``; ``/image/:id`` before the auth middleware), ``router/web-router.go``
(unknown paths: the dashboard's ``index.html`` with 200, except ``/v1``, ``/api``,
``/assets``), ``middleware/auth.go`` ``TokenAuth`` (Bearer / raw key / ``mj-api-secret``;
401 ``无效的令牌``), ``middleware/distributor.go`` (parses the body and classifies the
action *before* the handler: its refusals are OpenAI-shaped 400s, an unservable model is
a 503), ``service/midjourney.go`` (``CoverPlusActionToNormalAction``,
``DoMidjourneyHttpRequest``: strips notifyHook/accountFilter, code-5 failures),
``relay/mjproxy_handler.go`` (``RelayMidjourneySubmit``: validation, quota, row insert,
``"code":21``/``"code":22`` rewrites, the upstream's bytes and status passed through;
``coverMidjourneyTaskDto``: the task shape, ``/mj/image/{id}?rand=``), ``controller/
relay.go`` ``RelayMidjourney`` (relay errors: 400 ``{code, description, type}``, 429 for
code 30), ``dto/midjourney.go`` (field order), ``controller/midjourney.go`` (refresher).

Where stock new-api differs from what a reader of protocol.md might expect, the simulator
follows the source: an unknown customId is refused by the *distributor* (HTTP 400,
``{"error": {"message": "无效的请求，unknown_action:<customId> (request id: …)"}}``), not
with ``{code: 4}``; ``/submit/simple-change`` is routed as ``RelayModeMidjourneyChange``,
so its model is ``mj_`` and the distributor answers 503 ``model_not_found`` (likewise a
``/submit/change`` without ``action``); ``content_parse_failed`` cannot be reached.

Deviations, on purpose:

- Every API key is its own account with its own executor (``concurrency``,
  ``max_queue``); behind a real relay all users share the upstream's accounts.
- Keys may contain dashes: the whole configured key is tried before new-api's
  ``<key>-<channel>`` split (real keys have no dashes).
- ``quotas`` count jobs created; new-api charges per model price and refunds failures,
  which ``quota_usd``, ``account_quota_usd`` and ``model_prices`` imitate (``_ledger``,
  and the billing routes outside ``/mj``: ``_newapi_billing``).
- ``saturate_429`` turns a full queue into new-api's code 30; in new-api that code comes
  from its channel rate limiter.
- ``/mj/image/{id}`` proxies the simulated CDN on 127.0.0.1, which new-api's SSRF
  protection would refuse; the upstream behind the relay is the TrueAI engine with
  Plus-like answers (``Submit success``, codes 23 and 24); its own task JSON (seen only
  in notifyHook bodies when ``notify_enabled``) is TrueAI's field set.
"""

from __future__ import annotations

import string
import time
from collections.abc import Callable
from typing import Any, NoReturn

from aiohttp import web

from .._catalogue import RelayPanic, relay_action
from .._engine import words_in
from .._faults import Fault
from .._ledger import Ledger, TokenLedger
from .._state import FAILURE, SUCCESS, SimTask
from .._wire import go_json, go_unmarshal, jackson_json, sorted_keys
from ._base import MODE_PREFIXES, Call, Dialect, Reply, Route
from ._newapi_billing import NewApiBilling
from ._proxy import PLUS, Answer, BodyError, ProxyCore
from ._relaydb import RelayDB, RelayRow
from ._relayview import RelayView
from ._taskinfo import taskinfo

__all__ = ("QuickRouterDialect",)

JSON = "application/json; charset=utf-8"
#: What Go's http.DetectContentType calls a JSON body written without a Content-Type.
SNIFFED = "text/plain; charset=utf-8"
# new-api's RequestId middleware: one id per request, in the header and error messages.
_REQUEST_ID: Any = (
    web.RequestKey("sim_request_id", str) if hasattr(web, "RequestKey") else "sim_request_id"
)
_SATURATED = "当前分组负载已饱和，请稍后再试，或升级账户以提升服务质量。"
#: Models an MJ channel serves (``constant.MidjourneyModel2Action`` plus video/edits).
_MODELS = frozenset(
    {
        "mj_imagine",
        "mj_describe",
        "mj_blend",
        "mj_upscale",
        "mj_variation",
        "mj_reroll",
        "mj_modal",
        "mj_inpaint",
        "mj_zoom",
        "mj_custom_zoom",
        "mj_shorten",
        "mj_high_variation",
        "mj_low_variation",
        "mj_pan",
        "swap_face",
        "mj_upload",
        "mj_video",
        "mj_edits",
    }
)
#: Route -> (relay action the handler sets, or None to take it from the body).
_SUBMITS: dict[str, str | None] = {
    "/submit/imagine": "IMAGINE",
    "/submit/describe": "DESCRIBE",
    "/submit/blend": "BLEND",
    "/submit/shorten": "SHORTEN",
    "/submit/edits": "EDITS",
    "/submit/upload-discord-images": "UPLOAD",
    "/submit/video": "VIDEO",
    "/submit/modal": "MODAL",
    "/submit/action": None,
    "/submit/change": None,
    "/submit/simple-change": None,
}
# Go's encoding/json field types of dto.MidjourneyRequest (what the distributor binds).
_STRING_FIELDS = (
    "prompt",
    "customId",
    "botType",
    "notifyHook",
    "action",
    "state",
    "taskId",
    "content",
    "maskBase64",
)
_INDEX_PAGE = (
    '<!doctype html><html lang="zh"><head><meta charset="utf-8"/>'
    '<meta name="viewport" content="width=device-width,initial-scale=1"/>'
    "<title>New API</title></head><body><noscript>You need to enable JavaScript to run this "
    'app.</noscript><div id="root"></div></body></html>'
)


def _go_type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


class _Refused(Exception):
    """A relay-side refusal, carrying the finished reply."""

    def __init__(self, reply: Reply) -> None:
        super().__init__()
        self.reply = reply


class QuickRouterDialect(NewApiBilling, Dialect):
    name = "quickrouter"
    auth_scheme = "bearer"
    prefixes = MODE_PREFIXES

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.upstream = ProxyCore(self.engine, self.media, PLUS)
        self.db = RelayDB(self.engine, self.config.refresh_interval)
        self.view = RelayView(self.engine, self.media, self.db, self.base_url)
        known = (*self.config.api_keys, *self.engine.revoked)
        self._tokens = {k.removeprefix("sk-"): k for k in known}
        #: new-api disabled its MJ channel after an upstream code 3 (``channel_auto_ban``).
        self.channel_disabled = False
        #: Token and account quota per key, prices, charges and refunds (``_ledger``).
        self.ledger = Ledger(self.config)

    # ---- request ids and error shapes ----

    def request_id(self, request: web.Request) -> str:
        rid = request.get(_REQUEST_ID)
        if rid is None:
            now = time.time_ns()
            stamp = time.strftime("%Y%m%d%H%M%S", time.localtime(now / 1e9))
            tail = "".join(self.engine.misc_rng.choices(string.ascii_letters + string.digits, k=8))
            rid = request[_REQUEST_ID] = f"{stamp}{now % 1_000_000_000}{tail}"
        return str(rid)

    def _headers(self, request: web.Request) -> dict[str, str]:
        return {"X-Oneapi-Request-Id": self.request_id(request)}

    def openai_error(
        self, request: web.Request, status: int, message: str, code: str = ""
    ) -> Reply:
        """``abortWithOpenAiMessage``: ``{"error": {code, message (request id), type}}``."""
        rid = self.request_id(request)
        body = {
            "error": {
                "code": code,
                "message": f"{message} (request id: {rid})",
                "type": "new_api_error",
            }
        }
        return Reply(status, go_json(body), JSON, self._headers(request))

    def relay_error(
        self, request: web.Request, code: int, description: str, result: str = ""
    ) -> Reply:
        """``controller.RelayMidjourney``'s answer for a handler's MidjourneyResponse."""
        status = 400
        if code == 30:
            status, result = 429, _SATURATED
        body = sorted_keys(
            {"code": code, "description": f"{description} {result}", "type": "upstream_error"}
        )
        return Reply(status, go_json(body), JSON, self._headers(request))

    # ---- auth ----

    def authenticate(self, request: web.Request) -> tuple[str | None, Reply | None]:
        headers = request.headers
        key = headers.get("Authorization", "")
        if key.startswith(("Bearer ", "bearer ")):
            key = key[7:].strip()
        if key in ("", "midjourney-proxy"):
            key = headers.get("mj-api-secret", "")
            if key.startswith(("Bearer ", "bearer ")):
                key = key[7:].strip()
        key = key.removeprefix("sk-")
        token, pinned = key, False
        if token not in self._tokens:
            # "<token>-<channel id>": an admin-only channel pin (simulated keys may contain
            # dashes, so the whole configured key is tried first).
            head = next((t for t in self._tokens if key.startswith(t + "-")), None)
            token, pinned = (head, True) if head else (key.split("-")[0], False)
        if token not in self._tokens:
            return None, self.openai_error(request, 401, "无效的令牌")
        reason = self.engine.revoked.get(self._tokens[token])
        if reason is not None:
            self.engine.record(f"{request.method} {request.path}", Fault.TOKEN_REFUSED)
            return None, self.openai_error(request, 401, _token_refusal(reason, token))
        money = self.ledger.of(self._tokens[token])
        if money.exhausted:  # charged below zero by its last submit (quota_usd)
            self.engine.record(f"{request.method} {request.path}", Fault.TOKEN_REFUSED)
            return None, self.openai_error(request, 401, _exhausted_words(money, token))
        if pinned:
            return None, self.openai_error(request, 403, "普通用户不支持指定渠道")
        return self._tokens[token], None

    def auth_headers(self, key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    def extra_prefix(self, path: str) -> str | None:
        # router.Group("/:mode/mj"): any one path segment before /mj.
        parts = path.split("/", 3)
        if len(parts) >= 4 and parts[1] and parts[2] == "mj":
            return f"/{parts[1]}/mj"
        return None

    def unmatched(self, request: web.Request, other_methods: bool, prefixed: bool) -> Reply:
        uri = request.raw_path
        if uri.startswith(("/v1", "/api", "/assets")):
            message = f"Invalid URL ({request.method} {request.path})"
            err = {"code": "", "message": message, "param": "", "type": "invalid_request_error"}
            return Reply(404, go_json({"error": err}), JSON, self._headers(request))
        headers = {**self._headers(request), "Cache-Control": "no-cache"}
        return Reply(200, _INDEX_PAGE.encode(), "text/html; charset=utf-8", headers)

    # ---- the upstream's view (hooks, task_json of a job) ----

    def render(self, task: SimTask, phase: tuple[str, int]) -> bytes:
        key = ("upstream", phase, self.media.window())
        body = task.cache.get(key)
        if body is None:
            body = task.cache[key] = jackson_json(
                taskinfo(task, phase, self.engine, self.media, previews=True)
            )
        return bytes(body)

    def hook_url(self, task: SimTask) -> str | None:
        return task.notify_hook if self.config.notify_enabled else None

    # ---- relay rows ----

    def fetch_body(self, task: SimTask) -> bytes:
        rows = self.db.of(task.id, task.key)
        if not rows:  # created upstream but never recorded by the relay
            return self.render(task, self.engine.phase(task))
        return self.view.row_body(task, rows, 0)

    # ---- routes ----

    def routes(self) -> list[Route]:
        routes = [Route("POST", path, "submit", self._submit_handler(path)) for path in _SUBMITS]
        routes += [
            Route("POST", "/insight-face/swap", "submit", self._swap),
            Route("GET", "/task/{id}/fetch", "fetch", self._fetch),
            Route("GET", "/task/{id}/image-seed", "seed", self._seed),
            Route("POST", "/task/list-by-condition", "list", self._list),
            Route("GET", "/image/{id}", "image", self._image, auth=False),
        ]
        return routes

    # ---- the distributor ----

    def _bind(self, call: Call) -> dict[str, Any]:
        """``UnmarshalBodyReusable`` into ``dto.MidjourneyRequest``."""
        request = call.request
        raw = call.body
        if not raw.strip():
            self._distributor_refuses(request, "无效的midjourney请求，unexpected end of JSON input")
        try:
            value = go_unmarshal(raw)  # a lone surrogate escape reads as U+FFFD
        except (ValueError, RecursionError):
            char = raw.strip()[:1].decode(errors="replace")
            self._distributor_refuses(
                request,
                f"无效的midjourney请求，invalid character '{char}' looking for beginning of value",
            )
        if value is None:
            return {}
        if not isinstance(value, dict):
            self._distributor_refuses(
                request,
                f"无效的midjourney请求，json: cannot unmarshal {_go_type(value)} into Go value of"
                " type dto.MidjourneyRequest",
            )
        for name, expected in [(n, "string") for n in _STRING_FIELDS] + [("index", "int")]:
            field = value.get(name)
            ok = (
                field is None
                or (expected == "string" and isinstance(field, str))
                or (expected == "int" and isinstance(field, int) and not isinstance(field, bool))
            )
            if not ok:
                self._distributor_refuses(
                    request,
                    f"无效的midjourney请求，json: cannot unmarshal {_go_type(field)} into Go struct"
                    f" field MidjourneyRequest.{name} of type {expected}",
                )
        return dict(value)

    def _distributor_refuses(self, request: web.Request, error: str) -> NoReturn:
        raise _Refused(self.openai_error(request, 400, f"无效的请求，{error}"))

    def _model(self, call: Call, path: str, body: dict[str, Any]) -> tuple[str, int]:
        """``GetMjRequestModel``: the relay action and index, or a distributor refusal."""
        fixed = _SUBMITS[path]
        if fixed is not None:
            return fixed, 0
        if path == "/submit/action":
            try:
                classified = relay_action(body.get("customId") or "")
            except RelayPanic as exc:
                message = (
                    f"Panic detected, error: {exc}. Please submit a issue here: "
                    "https://github.com/QuantumNous/new-api"
                )
                error = {"error": {"message": message, "type": "new_api_panic"}}
                raise _Refused(
                    Reply(500, go_json(error), JSON, self._headers(call.request))
                ) from None
            if isinstance(classified, str):
                self._distributor_refuses(call.request, classified)
            return classified.action, classified.index
        # change and simple-change are both RelayModeMidjourneyChange: the action comes
        # from the body's "action" (simple-change bodies have none).
        return str(body.get("action") or ""), int(body.get("index") or 0)

    def _select_channel(self, request: web.Request, action: str) -> None:
        """``CacheGetRandomSatisfiedChannel`` failing: 503 ``model_not_found``."""
        model = "swap_face" if action == "SWAP_FACE" else "mj_" + action.lower()
        served = model in _MODELS and model not in self.config.missing_models
        if served and not self.channel_disabled:
            return
        self.engine.record(f"{request.method} {request.path}", Fault.MISSING_CHANNEL)
        message = f"当前分组 default 下对于模型 {model} 无可用渠道"
        raise _Refused(self.openai_error(request, 503, message, "model_not_found"))

    # ---- submits ----

    def _submit_handler(self, path: str) -> Callable[[Call], Any]:
        async def handler(call: Call) -> Reply:
            try:
                return self._submit(call, path)
            except _Refused as refused:
                return refused.reply

        return handler

    def _submit(self, call: Call, path: str) -> Reply:
        request = call.request
        assert call.key is not None
        body = self._bind(call)
        action, index = self._model(call, path, body)
        self._select_channel(request, action)
        prompt = body.get("prompt") or ""
        task_id = body.get("taskId") or ""
        if path == "/submit/imagine" and prompt == "":
            return self.relay_error(request, 4, "prompt_is_required")
        if (
            path
            in (
                "/submit/action",
                "/submit/change",
                "/submit/simple-change",
                "/submit/modal",
                "/submit/video",
            )
            and task_id
        ):
            if path in ("/submit/change", "/submit/simple-change"):
                if action == "":
                    return self.relay_error(request, 4, "action_is_required")
                if index == 0:
                    return self.relay_error(request, 4, "index_is_required")
            origin = self.db.first(task_id, call.key)
            if origin is None:
                return self.relay_error(request, 4, "task_not_found")
            if path != "/submit/modal" and self.view.status(origin) != SUCCESS:
                return self.relay_error(request, 4, "task_status_not_success")
            prompt = origin.prompt
        charged = action not in ("INPAINT", "CUSTOM_ZOOM")
        account = self.engine.accounts[call.key]
        if charged and account.quota is not None and account.quota_left() == 0:
            account.rejected += 1
            return self.relay_error(request, 4, "quota_not_enough")
        if charged and not self.ledger.can_pay(call.key, action, self._failed(call.key)):
            account.rejected += 1  # the account (user quota) cannot pay: account_quota_usd
            return self.relay_error(request, 4, "quota_not_enough")
        return self._forward(call, path, body, action, prompt)

    def _failed(self, key: str) -> Callable[[str], bool]:
        """Whether the relay's copy of a job now shows FAILURE (what its refund waits for)."""

        def failed(task_id: str) -> bool:
            row = self.db.first(task_id, key)
            return row is not None and self.view.status(row) == FAILURE

        return failed

    def _upstream(self, call: Call, path: str, body: dict[str, Any]) -> Answer | None:
        """The upstream's answer, or None when it has no such route (an empty 404)."""
        if call.prefix != "/mj" and "/mj-" not in call.request.path:
            return None  # getMjRequestPath only strips "/mj-..." prefixes
        forwarded = {k: v for k, v in body.items() if k != "accountFilter"}
        if not self.config.notify_enabled:
            forwarded.pop("notifyHook", None)
        core = self.upstream
        key = call.key
        assert key is not None
        # The upstream has no free Discord account for this one (FaultConfig.no_account_rate).
        core.no_account = call.fault is Fault.NO_ACCOUNT
        runs: dict[str, Callable[[], Answer]] = {
            "/submit/imagine": lambda: core.imagine(key, forwarded, None),
            "/submit/describe": lambda: core.describe(key, forwarded, None),
            "/submit/blend": lambda: core.blend(key, forwarded, None),
            "/submit/shorten": lambda: core.shorten(key, forwarded, None),
            "/submit/edits": lambda: core.edits(key, forwarded, None),
            "/submit/upload-discord-images": lambda: core.upload(key, forwarded),
            "/submit/video": lambda: core.video(key, forwarded, None),
            "/submit/modal": lambda: core.modal(key, forwarded, None),
            "/submit/action": lambda: core.action(key, forwarded, None),
            "/submit/change": lambda: core.change(key, forwarded, None),
            "/submit/simple-change": lambda: Answer(404, None),  # not a Plus route we know
            "/insight-face/swap": lambda: core.swap(key, forwarded, None),
        }
        try:
            return runs[path]()
        except BodyError:
            # The Java upstream cannot bind the body: Spring's 400 error JSON, which new-api
            # decodes as code 0 and passes through.
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000+00:00", time.gmtime())
            error = {
                "timestamp": stamp,
                "status": 400,
                "error": "Bad Request",
                "path": "/mj" + path,
            }
            return Answer(400, error)
        finally:
            core.no_account = False

    def _forward(
        self, call: Call, path: str, body: dict[str, Any], action: str, prompt: str
    ) -> Reply:
        request = call.request
        fault = call.fault
        if fault is Fault.RELAY_REQUEST_FAILED:
            return self.relay_error(request, 5, "do_request_failed")
        if fault is Fault.RELAY_EMPTY_BODY:
            return self.relay_error(request, 5, "empty_response_body")
        if self.config.saturate_429 and self.engine.accounts[call.key or ""].queue_full(
            self.engine.clock.now()
        ):
            self.engine.accounts[call.key or ""].rejected += 1
            return self.relay_error(request, 30, "当前分组上游负载已饱和，请稍后再试")
        requested = self.engine.clock.now()
        answer = self._upstream(call, path, body)
        if answer is None or answer.payload is None:
            return self.relay_error(request, 5, "empty_response_body")
        if fault is Fault.RELAY_REQUEST_FAILED_AFTER_CREATE:
            return self.relay_error(request, 5, "do_request_failed", "")
        payload = answer.payload
        if answer.logic:  # the Plus-like upstream answers limits as code 4
            payload = {"code": 4, "description": str(payload), "result": None, "properties": {}}
        raw = jackson_json(payload).decode()
        code = int(payload.get("code", 0))
        result = payload.get("result")
        task_id = result if isinstance(result, str) else ""
        if path == "/insight-face/swap":
            raw = go_json(
                {
                    "code": code,
                    "description": payload.get("description", ""),
                    "properties": sorted_keys(payload.get("properties") or {}),
                    "result": task_id,
                }
            ).decode()
        accepted = code == 1 if path == "/insight-face/swap" else code in (1, 21, 22)
        # PostConsumeQuota after an accepted answer; INPAINT and CUSTOM_ZOOM: mj_modal pays.
        if answer.status == 200 and accepted and action not in ("INPAINT", "CUSTOM_ZOOM"):
            self.ledger.charge(call.key or "", action, task_id)
        if code == 3 and self.config.channel_auto_ban and not self.channel_disabled:
            # "无实例账号自动禁用渠道": any code 3 bans the channel (auto-ban on).
            self.channel_disabled = True
            self.engine.record(call.route_key, Fault.CHANNEL_DISABLED)
        if code == 21 and action not in ("INPAINT", "CUSTOM_ZOOM"):
            raw = raw.replace('"code":21', '"code":1')
        if task_id:
            now = self.engine.clock.now()
            submit_ms = self.engine.clock.epoch_ms(now)
            self.db.insert(
                RelayRow(
                    task_id=task_id,
                    key=call.key or "",
                    action="SWAP_FACE" if path == "/insight-face/swap" else action,
                    prompt="InsightFace" if path == "/insight-face/swap" else prompt,
                    description=str(payload.get("description", "")),
                    submit_ms=submit_ms,
                    inserted_at=now,
                    start_ms=submit_ms if path == "/insight-face/swap" else 0,
                    requested_at=requested,
                    stalled=self._stalls(answer.task, task_id, prompt, call.route_key),
                )
            )
        if code == 22:
            raw = raw.replace('"code":22', '"code":1')
        return Reply(answer.status, raw.encode(), SNIFFED, self._headers(request), task=answer.task)

    def _stalls(self, task: SimTask | None, task_id: str, prompt: str, route: str) -> bool:
        """Whether the relay's copy of this job will stop refreshing (logged once)."""
        if task is None:
            return False
        rate = self.config.faults.relay_stall_rate
        stalled = self.engine.chosen("stall", task.ordinal, rate) or bool(
            words_in(self.config.stall_words, prompt)
        )
        if stalled and task_id not in self.db.rows:
            self.engine.record(route, Fault.RELAY_STALL)
        return stalled

    def preload(self, key: str, body: dict[str, Any]) -> SimTask:
        forwarded = dict(body)
        if not self.config.notify_enabled:
            forwarded.pop("notifyHook", None)
        answer = self.upstream.imagine(key, forwarded, None)
        if answer.task is None:
            raise ValueError(f"imagine refused: {answer.payload!r}")
        now = self.engine.clock.now()
        self.db.insert(
            RelayRow(
                task_id=answer.task.id,
                key=key,
                action="IMAGINE",
                prompt=str(body.get("prompt") or ""),
                description=str(answer.payload["description"]),
                submit_ms=self.engine.clock.epoch_ms(now),
                inserted_at=now,
                stalled=self._stalls(
                    answer.task, answer.task.id, str(body.get("prompt") or ""), "preload"
                ),
            )
        )
        return answer.task

    async def _swap(self, call: Call) -> Reply:
        try:
            body = self._bind(call)
        except _Refused as refused:
            return refused.reply
        source, target = body.get("sourceBase64"), body.get("targetBase64")
        if not source or not target:
            return self.relay_error(call.request, 4, "sour_base64_and_target_base64_is_required")
        account = self.engine.accounts[call.key or ""]
        if account.quota is not None and account.quota_left() == 0:
            account.rejected += 1
            return self.relay_error(call.request, 4, "quota_not_enough")
        if not self.ledger.can_pay(call.key or "", "SWAP_FACE", self._failed(call.key or "")):
            account.rejected += 1
            return self.relay_error(call.request, 4, "quota_not_enough")
        return self._forward(call, "/insight-face/swap", body, "SWAP_FACE", "InsightFace")

    # ---- reads ----

    async def _fetch(self, call: Call) -> Reply:
        rows = self.db.of(call.params["id"], call.key or "")
        if not rows:
            return self.relay_error(call.request, 4, "task_no_found")
        task = self.engine.tasks.get(call.params["id"])
        body = self.view.row_body(task, rows, 0)
        return Reply(200, body, "application/json", self._headers(call.request))

    async def _list(self, call: Call) -> Reply:
        request = call.request
        value, ok = self.parse_json(call.body)
        ids = value.get("ids") if isinstance(value, dict) else None
        if (
            not ok
            or not call.body.strip()
            or not isinstance(value, dict)
            or (
                ids is not None
                and (not isinstance(ids, list) or not all(isinstance(i, str) for i in ids))
            )
        ):
            return self.relay_error(request, 4, "do_request_failed")
        groups: list[list[bytes]] = []
        tasks = self.engine.tasks
        for task_id in dict.fromkeys(ids or ()):
            rows = self.db.of(task_id, call.key or "")
            task = tasks.get(task_id)
            if rows:
                groups.append([self.view.row_body(task, rows, k) for k in range(len(rows))])
        if self.config.shuffle_lists:
            self.engine.list_rng.shuffle(groups)
        items = self.limit(call, [body for group in groups for body in group])
        return Reply(
            200, b"[" + b",".join(items) + b"]", "application/json", self._headers(request)
        )

    async def _seed(self, call: Call) -> Reply:
        request = call.request
        if self.db.first(call.params["id"], call.key or "") is None:
            return self.relay_error(request, 4, "task_no_found")
        if self.channel_disabled:
            return self.relay_error(request, 4, "该任务所属渠道已被禁用")
        answer = await self.upstream.image_seed(call.params["id"])
        payload = answer.payload
        body = go_json(
            {
                "code": payload["code"],
                "description": payload["description"],
                "properties": sorted_keys(payload.get("properties") or {}),
                "result": payload.get("result") or "",
            }
        )
        # IOCopyBytesGracefully(c, nil, ...) writes 200 whatever the upstream said.
        return Reply(200, body, SNIFFED, self._headers(request))

    async def _image(self, call: Call) -> Reply:
        """``RelayMidjourneyImage``: any user's first row; proxies the stored imageUrl."""
        task_id = call.params["id"]
        row = self.db.first(task_id)
        task = self.engine.tasks.get(task_id)
        headers = self._headers(call.request)
        if row is None or task is None:
            return Reply(400, go_json({"error": "midjourney_task_not_found"}), JSON, headers)
        rows = self.db.rows[task_id]
        url = self.view.stored_image(task, rows, rows.index(row))
        if not url:
            return Reply(500, go_json({"error": "http_get_image_failed"}), JSON, headers)
        reply = self.media_reply(url)
        if reply.status != 200:
            return Reply(reply.status, go_json({"error": reply.body.decode()}), JSON, headers)
        return Reply(200, reply.body, reply.content_type, headers)

    #: Set by the app: serve a simulated-CDN URL (status, bytes, content type).
    media_reply: Callable[[str], Reply] = staticmethod(lambda url: Reply(404, b"404: Not Found"))


def _token_refusal(reason: str, token: str) -> str:
    """``model.ValidateUserToken``'s error for a token that exists but is unusable.

    new-api before its i18n rewrite said which (later versions answer ``无效的令牌`` for
    all); the exhausted message shows the key's first and last three characters.
    """
    if reason == "expired":
        return "该令牌已过期"
    if reason == "exhausted":
        return f"该令牌额度已用尽 TokenStatusExhausted[sk-{token[:3]}***{token[-3:]}]"
    return "该令牌状态不可用"


def _exhausted_words(money: TokenLedger, token: str) -> str:
    """``ValidateUserToken`` for a token charged down to zero or below: the first refusal
    names the remainder and marks the token exhausted; later ones say so (new-api before
    its i18n rewrite, without Redis; later versions answer ``无效的令牌``)."""
    hint = f"sk-{token[:3]}***{token[-3:]}"
    if money.marked_exhausted:
        return f"该令牌额度已用尽 TokenStatusExhausted[{hint}]"
    money.marked_exhausted = True
    return f"[{hint}] 该令牌额度已用尽 !token.UnlimitedQuota && token.RemainQuota = {money.remain}"
