"""novicezk/midjourney-proxy v2.6.x (Java, Spring Boot 2.6, Jackson).

Sources (HEAD ``0be95a9``): ``controller/SubmitController.java`` (validation and
descriptions), ``controller/TaskController.java`` (fetch from the running queue then the
store; list, queue, list-by-condition), ``controller/AccountController.java``,
``support/ApiAuthorizeInterceptor.java`` and ``spring/config/WebMvcConfig.java``
(``mj-api-secret`` on ``/submit/**``, ``/task/**``, ``/account/**``: 401, empty body),
``loadbalancer/DiscordInstanceImpl.java`` (code 1/22/23), ``support/Task.java`` and
``domain/DomainObject.java`` (fields; Jackson writes the superclass's ``id`` and
``properties`` first, nulls included, ``properties`` in ``HashMap`` order),
``wss/handle/*.java`` (which properties appear when), ``config/application.yml``
(context path ``/mj``). Unknown routes get Spring Boot's error JSON.

Deviations, on purpose: several ``api_keys`` are accepted (the real proxy has one
``mj.api-secret``), each running on its own simulated Discord account; a change with an
index outside 1..4 fails the job with ``[Invalid parameter] index N`` (Discord would
refuse the interaction; text invented); previews are PNG (Discord sends webp). Not
verified in a running server: Jackson's property order (superclass fields first) and the
page Tomcat serves outside the ``/mj`` context.
"""

from __future__ import annotations

import datetime
import types
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web

from .._catalogue import Result
from .._faults import Fault
from .._state import FAILURE, IN_PROGRESS, SUCCESS, Phase, SimTask
from .._wire import jackson_json, java_map
from ._base import Call, Dialect, Reply, Route, digits, is_image, progress_text, times

__all__ = ("MidjourneyProxyDialect",)

JSON = "application/json"
NOT_FOUND = "关联任务不存在或已失效"
BAD_STATUS = "关联任务状态错误"
_REASONS = {
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    500: "Internal Server Error",
}
_AUTH_PATHS = ("/mj/submit/", "/mj/task/", "/mj/account/")
_CHANGES = ("UPSCALE", "VARIATION", "REROLL")
_CHANGE_PARENTS = ("IMAGINE", "VARIATION", "REROLL", "BLEND")
_DIMENSIONS = ("PORTRAIT", "SQUARE", "LANDSCAPE")


def spring_error(status: int, path: str) -> Reply:
    """Spring Boot's ``BasicErrorController`` body (2.6: no message, no trace)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    stamp = now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}+00:00"
    body = {"timestamp": stamp, "status": status, "error": _REASONS[status], "path": path}
    return Reply(status, jackson_json(body), JSON)


def submit_result(code: int, description: str, result: str | None = None, **props: Any) -> bytes:
    """``SubmitResultVO``: code, description, result, properties (a HashMap)."""
    value = {
        "code": code,
        "description": description,
        "result": result,
        "properties": java_map(props),
    }
    return jackson_json(value)


class _BadBody(Exception):
    """Jackson could not bind the body (Spring answers 400)."""


def _text(value: Any) -> str | None:
    # Jackson coerces scalars to String fields; objects and arrays fail.
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    raise _BadBody


class MidjourneyProxyDialect(Dialect):
    name = "midjourney-proxy"
    auth_scheme = "mj-api-secret"
    prefixes: Mapping[str, str | None] = types.MappingProxyType({"/mj": None})

    # ---- auth and unknown routes ----

    def authenticate(self, request: web.Request) -> tuple[str | None, Reply | None]:
        secret = request.headers.get("mj-api-secret")
        if secret is not None and secret in self.engine.revoked:
            # One mj.api-secret per server: a revoked key is simply a wrong secret.
            self.engine.record(f"{request.method} {request.path}", Fault.TOKEN_REFUSED)
            return None, Reply(401, b"", None)
        if secret is None or secret not in self.config.api_keys:
            return None, Reply(401, b"", None)
        return secret, None

    def auth_headers(self, key: str) -> dict[str, str]:
        return {"mj-api-secret": key}

    def unmatched(self, request: web.Request, other_methods: bool, prefixed: bool) -> Reply:
        path = request.path
        if not (path == "/mj" or path.startswith("/mj/")):
            # Outside the servlet context: Tomcat's own page (UNVERIFIED detail).
            page = (
                '<!doctype html><html lang="en"><head><title>HTTP Status 404 – Not Found'
                "</title></head><body><h1>HTTP Status 404 – Not Found</h1></body></html>"
            )
            return Reply(404, page.encode(), "text/html;charset=utf-8")
        if other_methods:
            return spring_error(405, path)
        if path.startswith(_AUTH_PATHS):
            # The interceptor also guards the resource handler unmatched paths fall to.
            _, refused = self.authenticate(request)
            if refused is not None:
                return refused
        return spring_error(404, path)

    def preload(self, key: str, body: dict[str, Any]) -> SimTask:
        reply = self.imagine(key, body)
        if reply.task is None:
            raise ValueError(f"imagine refused: {reply.body.decode()}")
        return reply.task

    # ---- rendering ----

    def _properties(self, task: SimTask, phase: Phase) -> dict[str, Any]:
        status = phase[0]
        props: dict[str, Any] = {
            "notifyHook": task.notify_hook,
            "nonce": task.nonce,
            "discordInstanceId": self.media.channel(task.key),
        }
        props.update(task.extra.get("change_props", {}))
        ran = status in (IN_PROGRESS, SUCCESS) or (
            status == FAILURE and (task.random_failure or task.hang)
        )
        if ran:
            props["progressMessageId"] = digits("progress:" + task.id)
            props["finalPrompt"] = self._final_prompt(task, phase)
        if (status == IN_PROGRESS and self.engine.timeline.percent(phase) > 0) or status == SUCCESS:
            props["messageHash"] = task.message_hash
        if status == SUCCESS:
            props["messageId"] = digits("msg:" + task.id)
            props["flags"] = 0
        return java_map(props)

    def _final_prompt(self, task: SimTask, phase: Phase) -> str | None:
        if task.result is Result.DESCRIBE and phase[0] == SUCCESS:
            return describe_text(task)
        return task.prompt_en

    def task_fields(self, task: SimTask, phase: Phase) -> dict[str, Any]:
        status = phase[0]
        t = times(self.engine, task, phase)
        image_url = None
        percent = self.engine.timeline.percent(phase)
        if status == IN_PROGRESS and percent > 0 and task.result is not Result.DESCRIBE:
            image_url = self.media.preview(task, percent)
        elif status == SUCCESS:
            image_url = self.media.final(task)
        prompt, prompt_en = task.prompt, task.prompt_en
        if task.result is Result.DESCRIBE and status == SUCCESS:
            prompt = prompt_en = describe_text(task)
        failure = None
        if status == FAILURE:
            failure = self.engine.timeline.failure_reason(task, self.engine.clock.now())
        return {
            "id": task.id,
            "properties": self._properties(task, phase),
            "action": task.action,
            "status": status,
            "prompt": prompt,
            "promptEn": prompt_en,
            "description": task.description,
            "state": task.state,
            "submitTime": t.submit,
            "startTime": t.start,
            "finishTime": t.finish,
            "imageUrl": image_url,
            "progress": progress_text(self.engine, phase),
            "failReason": failure,
        }

    def render(self, task: SimTask, phase: Phase) -> bytes:
        key = ("midjourney-proxy", phase, self.media.window())
        body = task.cache.get(key)
        if body is None:
            body = task.cache[key] = jackson_json(self.task_fields(task, phase))
        return bytes(body)

    # ---- request bodies ----

    def _bind(self, call: Call) -> dict[str, Any]:
        value, ok = self.parse_json(call.body)
        if not ok or not isinstance(value, dict):
            raise _BadBody
        return value

    def _handler(self, run: Callable[[str, dict[str, Any]], Reply]) -> Any:
        async def handler(call: Call) -> Reply:
            # No free Discord account for this submit (FaultConfig.no_account_rate).
            self._no_account = call.fault is Fault.NO_ACCOUNT
            self._route = call.route_key
            try:
                body = self._bind(call)
                assert call.key is not None
                return run(call.key, body)
            except _BadBody:
                return spring_error(400, call.request.path)
            finally:
                self._no_account = False

        return handler

    _no_account = False
    _route = ""

    # ---- submit steps ----

    def _start(self, task: SimTask) -> Reply:
        slot = self.engine.activate(task)
        channel = self.media.channel(task.key)
        if slot.ahead:
            body = submit_result(
                22,
                f"排队中，前面还有{slot.ahead}个任务",
                task.id,
                numberOfQueues=slot.ahead,
                discordInstanceId=channel,
            )
        else:
            body = submit_result(1, "提交成功", task.id, discordInstanceId=channel)
        return Reply(200, body, JSON, task=task)

    def _full(self, key: str, instance: str | None = None) -> Reply | None:
        """The refusal before a job is queued: no free account, or a full queue."""
        if self._no_account:
            # TaskServiceImpl: chooseInstance() found none; a change needs its parent's
            # account (``instance``) alive.
            text = "无可用的账号实例" if instance is None else f"账号不可用: {instance}"
            return self._fail(3, text)
        account = self.engine.accounts[key]
        if not account.queue_full(self.engine.clock.now()):
            return None
        account.rejected += 1
        channel = self.media.channel(key)
        return Reply(
            200, submit_result(23, "队列已满，请稍后尝试", None, discordInstanceId=channel), JSON
        )

    def _create(
        self, key: str, endpoint: str, label: str, body: dict[str, Any], **fields: Any
    ) -> SimTask:
        hook = _text(body.get("notifyHook"))
        return self.engine.create(
            key,
            endpoint,
            label,
            state=_text(body.get("state")),
            notify_hook=hook if hook and hook.strip() else None,
            **fields,
        )

    @staticmethod
    def _fail(code: int, description: str) -> Reply:
        return Reply(200, submit_result(code, description), JSON)

    # ---- submits ----

    def imagine(self, key: str, body: dict[str, Any]) -> Reply:
        prompt = _text(body.get("prompt"))
        images = body.get("base64Array") or []
        if not isinstance(images, list):
            raise _BadBody
        single = _text(body.get("base64"))
        if prompt is None or not prompt.strip():
            return self._fail(4, "prompt不能为空")
        prompt = prompt.strip()
        if banned := self.engine.banned_word(prompt):
            body_ = submit_result(24, "可能包含敏感词", None, promptEn=prompt, bannedWord=banned)
            return Reply(200, body_, JSON)
        if single and single.strip():
            images = [*images, single]
        if not all(is_image(i, urls=False, raw=False) for i in images):
            return self._fail(4, "base64格式错误")
        if full := self._full(key):
            return full
        shown = " ".join([*(self.engine.upload_url(i) for i in images), prompt])
        task = self._create(
            key,
            "/submit/imagine",
            prompt,
            body,
            action="IMAGINE",
            result=Result.GRID,
            prompt=shown,
            prompt_en=shown,
            description=f"/imagine {shown}",
        )
        return self._start(task)

    def describe(self, key: str, body: dict[str, Any]) -> Reply:
        base64 = _text(body.get("base64"))
        if base64 is None or not base64.strip():
            return self._fail(4, "base64不能为空")
        if not is_image(base64, urls=False, raw=False):
            return self._fail(4, "base64格式错误")
        if full := self._full(key):
            return full
        task = self._create(
            key,
            "/submit/describe",
            self.engine.upload_url(base64),
            body,
            action="DESCRIBE",
            result=Result.DESCRIBE,
            prompt=None,
            texts=self.engine.describe_texts(),
        )
        task.description = f"/describe {task.id}.png"
        return self._start(task)

    def blend(self, key: str, body: dict[str, Any]) -> Reply:
        images = body.get("base64Array")
        if images is not None and not isinstance(images, list):
            raise _BadBody
        # SubmitBlendDTO: `private BlendDimensions dimensions = BlendDimensions.SQUARE;`
        # so an absent field is SQUARE and only an explicit null fails the check.
        dims = body.get("dimensions", "SQUARE")
        if dims is not None and dims not in _DIMENSIONS:
            raise _BadBody  # Jackson cannot bind the enum
        if images is None or not 2 <= len(images) <= 5:
            return self._fail(4, "base64List参数错误")
        if dims is None:
            return self._fail(4, "dimensions参数错误")
        if not all(is_image(i, urls=False, raw=False) for i in images):
            return self._fail(4, "base64格式错误")
        if full := self._full(key):
            return full
        task = self._create(
            key, "/submit/blend", "blend", body, action="BLEND", result=Result.GRID, prompt=None
        )
        task.description = f"/blend {task.id} {len(images)}"
        return self._start(task)

    def change(self, key: str, body: dict[str, Any]) -> Reply:
        task_id = _text(body.get("taskId"))
        action = body.get("action")
        index = body.get("index")
        if action is not None and action not in (
            "IMAGINE",
            "UPSCALE",
            "VARIATION",
            "REROLL",
            "DESCRIBE",
            "BLEND",
        ):
            raise _BadBody  # not a TaskAction constant
        if index is not None and (isinstance(index, bool) or not isinstance(index, int)):
            raise _BadBody
        if task_id is None or not task_id.strip():
            return self._fail(4, "taskId不能为空")
        if action not in _CHANGES:
            return self._fail(4, "action参数错误")
        parent = self.engine.tasks.get(task_id)
        if parent is None:
            return self._fail(3, NOT_FOUND)
        if lagging := self._store_lag(parent):
            return lagging
        if self.engine.phase(parent)[0] != SUCCESS:
            return self._fail(4, BAD_STATUS)
        if parent.action not in _CHANGE_PARENTS:
            return self._fail(4, "关联任务不允许执行变化")
        if action != "REROLL" and index is None:
            # submitUpscale(..., int index, ...) unboxes null: a NullPointerException.
            return spring_error(500, "/mj/submit/change")
        if full := self._full(key, self.media.channel(parent.key)):
            return full
        label = "R" if action == "REROLL" else f"{action[0]}{index}"
        parent_message = digits("msg:" + parent.id)
        task = self._create(
            key,
            "/submit/change",
            f"{task_id} {label}",
            body,
            action=action,
            result=Result.UPSCALE if action == "UPSCALE" else Result.GRID,
            prompt=parent.prompt,
            prompt_en=parent.prompt_en,
            description=f"/up {task_id} {label}",
            parent_id=parent.id,
            image_key=parent.image_key,
            image_index=index if action == "UPSCALE" else None,
            extra={
                "change_props": {
                    "finalPrompt": parent.prompt_en,
                    "progressMessageId": parent_message,
                    "referencedMessageId": parent_message,
                }
            },
        )
        if index is not None and not 1 <= index <= 4:
            task.forced_failure = f"[Invalid parameter] index {index}"
        return self._start(task)

    def _store_lag(self, parent: SimTask) -> Reply | None:
        """Code 4 for a parent that finished less than ``store_lag`` ago.

        ``taskStoreService.get`` reads what the last ``asyncSaveAndNotify`` wrote (the
        parent still running), while fetch reads the live task from the running queue
        and already says SUCCESS (novicezk#252). The store got the task at submit, so the
        lag never makes it unknown (code 3).
        """
        lag = self.config.store_lag
        now = self.engine.clock.now()
        done = self.engine.timeline.finished_at(parent)
        if not lag or done is None or not done <= now < done + lag:
            return None
        self.engine.record(self._route, Fault.STORE_LAG)
        return self._fail(4, BAD_STATUS)

    def simple_change(self, key: str, body: dict[str, Any]) -> Reply:
        content = _text(body.get("content")) or ""
        parsed = parse_change(content)
        if parsed is None:
            return self._fail(4, "content参数错误")
        task_id, action, index = parsed
        change = {"taskId": task_id, "action": action, "index": index}
        change.update({k: body[k] for k in ("state", "notifyHook") if k in body})
        return self.change(key, change)

    # ---- routes ----

    def routes(self) -> list[Route]:
        submits = {
            "/submit/imagine": self.imagine,
            "/submit/simple-change": self.simple_change,
            "/submit/change": self.change,
            "/submit/describe": self.describe,
            "/submit/blend": self.blend,
        }
        routes = [
            Route("POST", path, "submit", self._handler(run)) for path, run in submits.items()
        ]
        routes += [
            Route("GET", "/task/{id}/fetch", "fetch", self._fetch),
            Route("GET", "/task/queue", "list", self._queue),
            Route("GET", "/task/list", "list", self._list),
            Route("POST", "/task/list-by-condition", "list", self._by_ids),
            Route("GET", "/account/{id}/fetch", "account", self._account),
            Route("GET", "/account/list", "account", self._accounts),
        ]
        return routes

    def _array(self, tasks: list[SimTask]) -> Reply:
        now = self.engine.clock.now()
        phase = self.engine.timeline.phase
        return Reply(
            200, b"[" + b",".join(self.render(t, phase(t, now)) for t in tasks) + b"]", JSON
        )

    def _in_queue(self, task: SimTask, now: float) -> bool:
        # DiscordInstanceImpl.queueTasks: from submit until the job ends.
        return task.end is not None and now < task.end

    async def _fetch(self, call: Call) -> Reply:
        task = self.engine.tasks.get(call.params["id"])
        if task is None:
            return Reply(200, b"", None)  # Spring writes nothing for a null result
        return Reply(200, self.fetch_body(task), JSON)

    async def _queue(self, call: Call) -> Reply:
        now = self.engine.clock.now()
        tasks = [t for t in self.engine.tasks.values() if self._in_queue(t, now)]
        return self._array(sorted(tasks, key=lambda t: (t.submit_ms, t.ordinal)))

    async def _list(self, call: Call) -> Reply:
        tasks = sorted(self.engine.tasks.values(), key=lambda t: (t.submit_ms, t.ordinal))
        return self._array(tasks[::-1])

    async def _by_ids(self, call: Call) -> Reply:
        try:
            body = self._bind(call)
        except _BadBody:
            return spring_error(400, call.request.path)
        ids = body.get("ids")
        if ids is None:
            return Reply(200, b"[]", JSON)
        if not isinstance(ids, list):
            return spring_error(400, call.request.path)
        now = self.engine.clock.now()
        wanted = [str(i) for i in ids if i is not None]
        found = [t for t in map(self.engine.tasks.get, dict.fromkeys(wanted)) if t is not None]
        # Running and queued tasks first, then the store's (protocol.md §3.3).
        queued = [t for t in found if self._in_queue(t, now)]
        stored = [t for t in found if not self._in_queue(t, now)]
        if self.config.shuffle_lists:
            self.engine.list_rng.shuffle(queued)
            self.engine.list_rng.shuffle(stored)
        return self._array(self.limit(call, queued + stored))

    def _account_json(self, key: str) -> dict[str, Any]:
        channel = self.media.channel(key)
        return {
            "id": channel,
            "properties": {},
            "guildId": digits("guild:" + key),
            "channelId": channel,
            "userToken": "MT" + digits("token:" + key, 24) + ".sim.token",
            "userAgent": (
                "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like"
                " Gecko) Chrome/112.0.0.0 Safari/537.36"
            ),
            "enable": key not in self.config.disabled_keys,
            "coreSize": self.config.concurrency or 3,
            "queueSize": 10 if self.config.max_queue is None else self.config.max_queue,
            "timeoutMinutes": 5,
        }

    async def _account(self, call: Call) -> Reply:
        for key in self.config.api_keys:
            if self.media.channel(key) == call.params["id"]:
                return Reply(200, jackson_json(self._account_json(key)), JSON)
        return Reply(200, b"", None)

    async def _accounts(self, call: Call) -> Reply:
        accounts = [self._account_json(k) for k in self.config.api_keys]
        return Reply(200, jackson_json(accounts), JSON)


def describe_text(task: SimTask) -> str:
    """The describe embed's text: ``1️⃣ prompt\\n\\n2️⃣ prompt ...``."""
    return "\n\n".join(f"{n}\ufe0f\u20e3 {t}" for n, t in enumerate(task.texts, start=1))


def parse_change(content: str) -> tuple[str, str, int | None] | None:
    """``ConvertUtils.convertChangeParams``: ``"<id> U1..U4|V1..V4|R"``."""
    parts = content.split(" ")  # Hutool's split keeps empty parts
    if len(parts) != 2:
        return None
    task_id, action = parts[0], parts[1].lower()
    if action == "r":
        return task_id, "REROLL", None
    kind = {"u": "UPSCALE", "v": "VARIATION"}.get(action[:1])
    if kind is None or len(action) < 2 or not action[1].isdigit():
        return None
    index = int(action[1])
    return (task_id, kind, index) if 1 <= index <= 4 else None
