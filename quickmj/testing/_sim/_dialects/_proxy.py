"""The submit logic of a TrueAI-style proxy, shared by the trueai dialect and by the
Plus-like upstream behind the quickrouter relay.

Sources: trueai-org/midjourney-proxy ``src/Midjourney.API/Controllers/SubmitController.cs``
(validation order and messages), ``TaskController.cs`` (image-seed, cancel),
``InsightFaceController.cs`` (swap), ``src/Midjourney.Services/TaskService.cs``
(``SubmitAction``: the modal cases, PicReader) and ``DiscordService.cs`` (``RedisEnqueue``:
code 1 when nothing waits, 22 with ``numberOfQueues``, 9 when the queue is full, upscales
never refused). A :class:`Flavor` holds where the Plus-like upstream differs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import attrs

from .._catalogue import Modal, Plan, Result, plan_action
from .._engine import Engine
from .._state import MODAL, NOT_START, SUCCESS, SimTask
from ._base import Media, is_image

__all__ = ("PLUS", "TRUEAI", "Answer", "Body", "BodyError", "Flavor", "ProxyCore")

NOT_FOUND = "关联任务不存在或已失效"
BAD_STATUS = "关联任务状态错误"
NO_ACCOUNT = "无可用的账号实例"


@attrs.frozen
class Flavor:
    """Where the proxies differ."""

    ok: str
    queue_full_code: int
    queue_full: str
    #: Banned words refused at submit with code 24 (Plus docs) instead of failing the job.
    banned_at_submit: bool
    #: Property names are case-insensitive (ASP.NET's System.Text.Json web defaults).
    case_insensitive: bool
    #: ``EnableDiscordAppendSeed``: imagine/blend/video prompts get a ``--seed``.
    append_seed: bool = True


TRUEAI = Flavor("提交成功", 9, "提交失败，队列已满，请稍后重试", False, True)
#: QuickRouter's upstream: its answers say "Submit success" (the task sample's
#: ``description``, which new-api copies from the submit answer); queue-full is code 23
#: and banned prompts are code 24 as the Plus docs (``docs/api.md``) document.
PLUS = Flavor("Submit success", 23, "队列已满，请稍后尝试", True, False, append_seed=False)

_ASPECT = {"PORTRAIT": "2:3", "SQUARE": "1:1", "LANDSCAPE": "3:2"}
_BOTS = {"niji": "NIJI_JOURNEY", "NIJI_JOURNEY": "NIJI_JOURNEY"}


@attrs.frozen
class Answer:
    """A proxy's answer before encoding: HTTP status and the value to serialize."""

    status: int
    #: A SubmitResultVO dict, a list, None (empty body) or text.
    payload: Any
    task: SimTask | None = None
    #: The payload is a LogicException message (each endpoint wraps it its own way).
    logic: bool = False


class BodyError(Exception):
    """A property of the wrong JSON type (model binding fails)."""

    def __init__(self, path: str, expected: str) -> None:
        super().__init__(path)
        self.path = path
        self.expected = expected


def result(code: int, description: str, value: Any = None, **props: Any) -> dict[str, Any]:
    """A SubmitResultVO: code, description, result, properties (C# declaration order)."""
    return {"code": code, "description": description, "result": value, "properties": props}


class Body:
    """Typed access to a JSON request body, as the DTO binder would read it."""

    def __init__(self, value: Any, *, case_insensitive: bool) -> None:
        if not isinstance(value, dict):
            raise BodyError("$", "object")
        self._raw: Mapping[str, Any] = value
        self._folded = {k.lower(): v for k, v in value.items()} if case_insensitive else None

    def has(self, name: str) -> bool:
        if self._folded is not None:
            return name.lower() in self._folded
        return name in self._raw

    def get(self, name: str) -> Any:
        if self._folded is not None:
            return self._folded.get(name.lower())
        return self._raw.get(name)

    def text(self, name: str) -> str | None:
        value = self.get(name)
        if value is None or isinstance(value, str):
            return value
        raise BodyError(f"$.{name}", "System.String")

    def texts(self, name: str) -> list[str] | None:
        value = self.get(name)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise BodyError(f"$.{name}", "System.Collections.Generic.List`1[System.String]")
        return value

    def flag(self, name: str) -> bool:
        value = self.get(name)
        if value is None or isinstance(value, bool):
            return bool(value)
        raise BodyError(f"$.{name}", "System.Boolean")

    def number(self, name: str) -> int | None:
        value = self.get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise BodyError(f"$.{name}", "System.Int32")
        return value


def blank(value: str | None) -> bool:
    return value is None or not value.strip()


class ProxyCore:
    """Submits, image-seed and cancel of a TrueAI-style proxy (no HTTP here)."""

    def __init__(self, engine: Engine, media: Media, flavor: Flavor) -> None:
        self.engine = engine
        self.media = media
        self.flavor = flavor
        self.config = engine.config
        #: Set by the dialect for one submit: no Discord account is free for it.
        self.no_account = False

    def body(self, value: Any) -> Body:
        return Body(value, case_insensitive=self.flavor.case_insensitive)

    # ---- shared steps ----

    def _logic(self, key: str, body: Body) -> str | None:
        """``SubmitController.NewTask``'s LogicExceptions (checked before anything else)."""
        state = body.text("state")
        hook = body.text("notifyHook")
        if state is not None and len(state) > 255:
            return "State参数过长，最大255字符"
        if hook is not None and len(hook) > 2000:
            return "NotifyHook参数过长，最大2000字符"
        account = self.engine.accounts[key]
        if account.quota is not None and account.quota_left() == 0:
            account.rejected += 1
            return "总绘图次数已达上限"
        return None

    def _channel_props(self, key: str) -> dict[str, Any]:
        channel = self.media.channel(key)
        return {"discordInstanceId": channel, "discordChannelId": channel}

    def _full(self, key: str, *, upscale: bool = False) -> Answer | None:
        """The refusal before a job is queued: no free account, or a full queue."""
        if self.no_account:
            # TaskService: ChooseInstance found none (HTTP 200, nothing created).
            return Answer(200, result(3, NO_ACCOUNT))
        account = self.engine.accounts[key]
        if upscale or not account.queue_full(self.engine.clock.now()):
            return None
        account.rejected += 1
        code, text = self.flavor.queue_full_code, self.flavor.queue_full
        return Answer(200, result(code, text, **self._channel_props(key)))

    def _start(self, task: SimTask) -> Answer:
        """``RedisEnqueue``'s answer once the job is saved and queued."""
        slot = self.engine.activate(task)
        props = self._channel_props(task.key)
        if slot.ahead:
            text = f"排队中，前面还有{slot.ahead}个任务"
            value = result(22, text, task.id, numberOfQueues=slot.ahead, **props)
            return Answer(200, value, task)
        return Answer(200, result(1, self.flavor.ok, task.id, **props), task)

    def _new(
        self, key: str, endpoint: str, label: str, body: Body, mode: str | None, **fields: Any
    ) -> SimTask:
        modes = [mode] if mode else []
        fields.setdefault(
            "extra",
            {
                "account_filter": {
                    "instanceId": None,
                    "modes": modes,
                    "remix": None,
                    "nijiRemix": None,
                    "remixAutoConsidered": None,
                    "remark": None,
                }
            },
        )
        return self.engine.create(
            key,
            endpoint,
            label,
            state=body.text("state"),
            notify_hook=body.text("notifyHook") or None,
            mode=mode,
            **fields,
        )

    @staticmethod
    def _bot(body: Body) -> str:
        return _BOTS.get(body.text("botType") or "", "MID_JOURNEY")

    def _seed(self) -> str | None:
        if not self.flavor.append_seed:
            return None
        return str(self.engine.job_rng.randrange(4_294_967_295))

    # ---- submits ----

    def imagine(self, key: str, raw: Any, mode: str | None) -> Answer:
        body = self.body(raw)
        prompt = body.text("prompt")
        if blank(prompt):
            return Answer(200, result(4, "prompt不能为空"))
        assert prompt is not None
        images = body.texts("base64Array") or []
        if error := self._logic(key, body):
            return Answer(200, error, logic=True)
        prompt = prompt.strip()
        banned = self.engine.banned_word(prompt)
        if banned and self.flavor.banned_at_submit:
            props = {"promptEn": prompt, "bannedWord": banned}
            return Answer(200, result(24, "可能包含敏感词", None, **props))
        if not all(is_image(i) for i in images):
            return Answer(200, result(4, "base64格式错误"))
        if full := self._full(key):
            return full
        video = "--video" in prompt
        shown = " ".join([*(self.engine.upload_url(i) for i in images), prompt])
        task = self._new(
            key,
            "/submit/imagine",
            prompt,
            body,
            mode,
            action="VIDEO" if video else "IMAGINE",
            result=Result.VIDEO if video else Result.GRID,
            prompt=shown,
            prompt_en=shown,
            description=f"/imagine {prompt}",
            bot_type=self._bot(body),
            seed=self._seed(),
            forced_failure="可能包含敏感词" if banned else None,
        )
        return self._start(task)

    def describe(self, key: str, raw: Any, mode: str | None) -> Answer:
        body = self.body(raw)
        base64, link = body.text("base64"), body.text("link")
        if blank(base64) and blank(link):
            return Answer(200, result(4, "base64或link不能为空"))
        if not blank(link) and not (link or "").lower().startswith(("http://", "https://")):
            return Answer(200, result(4, "链接格式错误"))
        if not blank(base64) and not is_image(base64):
            return Answer(200, result(4, "base64格式错误"))
        if error := self._logic(key, body):
            return Answer(200, error, logic=True)
        if full := self._full(key):
            return full
        source = base64 if not blank(base64) else link
        task = self._new(
            key,
            "/submit/describe",
            self.engine.upload_url(source or ""),
            body,
            mode,
            action="DESCRIBE",
            result=Result.DESCRIBE,
            prompt=None,
            description="/describe",
            bot_type=self._bot(body),
            texts=self.engine.describe_texts(),
        )
        return self._start(task)

    def shorten(self, key: str, raw: Any, mode: str | None) -> Answer:
        body = self.body(raw)
        prompt = body.text("prompt")  # TrueAI does not check it
        if error := self._logic(key, body):
            return Answer(200, error, logic=True)
        if full := self._full(key):
            return full
        task = self._new(
            key,
            "/submit/shorten",
            prompt or "",
            body,
            mode,
            action="SHORTEN",
            result=Result.SHORTEN,
            prompt=prompt,
            prompt_en=prompt,
            description=f"/shorten {prompt or ''}",
            bot_type=self._bot(body),
            texts=self.engine.shorten_texts(prompt or ""),
        )
        return self._start(task)

    def blend(self, key: str, raw: Any, mode: str | None) -> Answer:
        body = self.body(raw)
        images = body.texts("base64Array")
        if images is None or not 2 <= len(images) <= 5:
            return Answer(200, result(4, "图片参数错误，2~5张图片"))
        dims = body.get("dimensions") if body.has("dimensions") else "SQUARE"
        if dims is None:
            return Answer(200, result(4, "dimensions参数错误"))
        if dims not in _ASPECT:
            raise BodyError("$.dimensions", "Midjourney.Base.BlendDimensions")
        if not all(is_image(i) for i in images):
            return Answer(200, result(4, "base64格式错误"))
        if error := self._logic(key, body):
            return Answer(200, error, logic=True)
        if full := self._full(key):
            return full
        prompt = " ".join([*(self.engine.upload_url(i) for i in images), f"--ar {_ASPECT[dims]}"])
        task = self._new(
            key,
            "/submit/blend",
            prompt,
            body,
            mode,
            action="BLEND",
            result=Result.GRID,
            prompt=prompt,
            prompt_en=prompt,
            bot_type=self._bot(body),
            seed=self._seed(),
        )
        task.description = f"/blend {task.id} {len(images)}"
        return self._start(task)

    def edits(self, key: str, raw: Any, mode: str | None, *, retexture: bool = False) -> Answer:
        body = self.body(raw)
        image, prompt = body.text("image"), body.text("prompt")
        if blank(image) or blank(prompt):
            return Answer(200, result(4, "image或prompt不能为空"))
        assert image is not None and prompt is not None
        if not is_image(image):
            return Answer(200, result(4, "base64格式错误"))
        if error := self._logic(key, body):
            return Answer(200, error, logic=True)
        if full := self._full(key):
            return full
        name = "retexture" if retexture else "edit"
        task = self._new(
            key,
            "/submit/retexture" if retexture else "/submit/edits",
            prompt,
            body,
            mode,
            action="RETEXTURE" if retexture else "EDIT",
            result=Result.GRID,
            prompt=prompt,
            prompt_en=prompt,
            description=f"/{name} {prompt}",
        )
        return self._start(task)

    def video(self, key: str, raw: Any, mode: str | None) -> Answer:
        body = self.body(raw)
        prompt = body.text("prompt")
        if blank(prompt):
            return Answer(200, result(4, "Prompt 不能为空"))
        assert prompt is not None
        for name in ("image", "endImage"):
            value = body.text(name)
            if not blank(value) and not is_image(value):
                return Answer(200, result(4, "base64格式错误"))
        if error := self._logic(key, body):
            return Answer(200, error, logic=True)
        parent = None
        parent_id = body.text("taskId")
        if not blank(parent_id):
            if body.text("action") != "extend":
                return Answer(200, result(4, "任务类型错误"))
            parent = self.engine.tasks.get(parent_id or "")
            if parent is None:
                return Answer(404, result(3, NOT_FOUND))
            if self.engine.phase(parent)[0] != SUCCESS:
                return Answer(200, result(4, BAD_STATUS))
        if full := self._full(key):
            return full
        task = self._new(
            key,
            "/submit/video",
            prompt,
            body,
            mode,
            action="VIDEO",
            result=Result.VIDEO,
            prompt=prompt,
            prompt_en=prompt,
            description=f"/video {prompt}",
            parent_id=parent.id if parent else None,
            image_key=parent.image_key if parent else "",
            seed=self._seed(),
            extra={
                "account_filter": {
                    "instanceId": None,
                    "modes": [],
                    "remix": None,
                    "nijiRemix": None,
                    "remixAutoConsidered": None,
                    "remark": None,
                },
                "video_type": body.text("videoType") or "vid_1.1_i2v_480",
            },
        )
        return self._start(task)

    def upload(self, key: str, raw: Any) -> Answer:
        body = self.body(raw)
        images = body.texts("base64Array") or []
        if not images:
            return Answer(200, result(4, "base64 参数错误"))
        if not all(is_image(i) for i in images):
            return Answer(200, result(4, "base64格式错误"))
        urls = [self.engine.upload_url(i) for i in images]
        return Answer(200, result(1, "提交成功", urls))

    def swap(self, key: str, raw: Any, mode: str | None) -> Answer:
        body = self.body(raw)
        source = body.text("sourceBase64") or body.text("sourceUrl")
        target = body.text("targetBase64") or body.text("targetUrl")
        if blank(source):
            return Answer(200, result(4, "人脸图片不能为空"))
        if blank(target):
            return Answer(200, result(4, "目标图片不能为空"))
        if source == target:
            return Answer(200, result(4, "人脸图片和目标图片不能相同"))
        if error := self._logic(key, body):
            return Answer(200, error, logic=True)
        if full := self._full(key):
            return full
        task = self._new(
            key,
            "/insight-face/swap",
            "InsightFace",
            body,
            mode,
            action="SWAP_FACE",
            result=Result.FACE,
            prompt=None,
            bot_type="INSIGHT_FACE",
        )
        return self._start(task)

    # ---- buttons ----

    def action(self, key: str, raw: Any, mode: str | None) -> Answer:
        body = self.body(raw)
        parent_id, custom_id = body.text("taskId"), body.text("customId")
        if blank(parent_id) or blank(custom_id):
            return Answer(200, result(4, "参数错误"))
        assert parent_id is not None and custom_id is not None
        parent = self.engine.tasks.get(parent_id)
        if parent is None:
            return Answer(404, result(3, NOT_FOUND))
        if self.engine.phase(parent)[0] != SUCCESS:
            return Answer(200, result(4, BAD_STATUS))
        if error := self._logic(key, body):
            return Answer(200, error, logic=True)
        plan = plan_action(custom_id, parent.action, parent.result)
        if isinstance(plan, str):
            return Answer(200, result(4, plan))
        remix = body.flag("enableRemix") or self.config.remix
        if plan.modal is Modal.PROMPT:
            return self._picreader(key, body, mode, parent, custom_id, plan)
        if plan.modal is not None or (remix and plan.remixable):
            return self._modal_task(key, body, mode, parent, custom_id, plan)
        if full := self._full(key, upscale=plan.action == "UPSCALE"):
            return full
        return self._start(self._child(key, body, mode, parent, custom_id, plan))

    def _parent_prompt(self, parent: SimTask) -> str:
        # TaskService.SubmitAction: the parent's finalPrompt without speed flags.
        base = parent.prompt_en if parent.prompt_en is not None else parent.prompt or ""
        for flag in ("--fast", "--relax", "--turbo"):
            base = base.replace(flag, "")
        return base.strip()

    def _child(
        self,
        key: str,
        body: Body,
        mode: str | None,
        parent: SimTask,
        custom_id: str,
        plan: Plan,
        **fields: Any,
    ) -> SimTask:
        image_index = plan.index if plan.result is Result.UPSCALE else parent.image_index
        fields.setdefault("prompt", parent.prompt)
        fields.setdefault("prompt_en", self._parent_prompt(parent))
        fields.setdefault(
            "description", "Waiting for window confirm" if plan.modal is Modal.ZOOM else None
        )
        return self.engine.create(
            key,
            "/submit/action",
            custom_id,
            action=plan.action,
            result=plan.result,
            state=body.text("state"),
            notify_hook=body.text("notifyHook") or None,
            mode=mode,
            bot_type=parent.bot_type,
            custom_id=custom_id,
            parent_id=parent.id,
            image_key=parent.image_key,
            image_index=image_index,
            texts=self.engine.describe_texts() if plan.result is Result.DESCRIBE else (),
            seed=self._seed() if plan.action in ("IMAGINE", "BLEND", "VIDEO") else None,
            **fields,
        )

    def _modal_task(
        self, key: str, body: Body, mode: str | None, parent: SimTask, custom_id: str, plan: Plan
    ) -> Answer:
        """A MODAL job waiting for ``/submit/modal``: code 21 ("Waiting for window confirm")."""
        fields: dict[str, Any] = {}
        if plan.modal is Modal.INPAINT:
            fields = {"prompt": "", "prompt_en": ""}
        task = self._child(
            key, body, mode, parent, custom_id, plan, modal=plan.modal or Modal.PROMPT, **fields
        )
        value = result(21, "Waiting for window confirm", task.id)
        value["properties"] = {"finalPrompt": task.prompt_en, "remix": True}
        return Answer(200, value, task)

    def _picreader(
        self, key: str, body: Body, mode: str | None, parent: SimTask, custom_id: str, plan: Plan
    ) -> Answer:
        lines = [line.strip() for line in parent_prompts(parent) if line.strip()]
        if plan.index is None:  # MJ::Job::PicReader::all: children whose modals auto-submit
            ids = []
            for i, line in enumerate(lines[:4], start=1):
                state = f"{body.text('state') or ''}::{i}"
                prompt = line[line.find(" ") :].strip()
                child = self._child(
                    key, body, mode, parent, custom_id, plan, prompt=prompt, prompt_en=prompt
                )
                child.state = state
                self.engine.activate(child)
                ids.append(child.id)
            return Answer(200, result(1, "成功", ",".join(ids)))
        if plan.index > len(lines):
            return Answer(200, result(4, "无效的 PicReader 索引"))
        line = lines[plan.index - 1]
        return self._picreader_modal(key, body, mode, parent, custom_id, plan, line)

    def _picreader_modal(
        self,
        key: str,
        body: Body,
        mode: str | None,
        parent: SimTask,
        custom_id: str,
        plan: Plan,
        line: str,
    ) -> Answer:
        task = self._child(
            key,
            body,
            mode,
            parent,
            custom_id,
            plan,
            prompt=line,
            prompt_en=line,
            modal=Modal.PROMPT,
        )
        value = result(21, "Waiting for window confirm", task.id)
        value["properties"] = {"finalPrompt": line, "remix": True}
        return Answer(200, value, task)

    def modal(self, key: str, raw: Any, mode: str | None) -> Answer:
        body = self.body(raw)
        task_id = body.text("taskId")
        if blank(task_id):
            return Answer(200, result(4, "参数错误"))
        task = self.engine.tasks.get(task_id or "")
        if task is None:
            return Answer(404, result(3, NOT_FOUND))
        prompt = body.text("prompt")
        parent = self.engine.tasks.get(task.parent_id or "")
        if blank(prompt) and parent is not None:
            prompt = parent.prompt or self._parent_prompt(parent)
        if blank(prompt):
            return Answer(200, result(4, "prompt不能为空"))
        if full := self._full(task.key):
            return full
        # TrueAI re-queues whatever task it is given; it does not check for MODAL.
        task.prompt = task.prompt_en = prompt
        task.extra["remix_auto_submit"] = True
        if body.text("state") is not None:
            task.state = body.text("state")
        return self._start(task)

    def change(self, key: str, raw: Any, mode: str | None) -> Answer:
        """``/submit/change`` as the Plus docs (and novicezk's controller) describe it."""
        body = self.body(raw)
        parent_id = body.text("taskId")
        action = body.get("action")
        index = body.number("index")
        if blank(parent_id):
            return Answer(200, result(4, "taskId不能为空"))
        if action not in ("UPSCALE", "VARIATION", "REROLL"):
            return Answer(200, result(4, "action参数错误"))
        parent = self.engine.tasks.get(parent_id or "")
        if parent is None:
            return Answer(200, result(3, NOT_FOUND))
        if self.engine.phase(parent)[0] != SUCCESS:
            return Answer(200, result(4, BAD_STATUS))
        if parent.action not in ("IMAGINE", "VARIATION", "REROLL", "BLEND"):
            return Answer(200, result(4, "关联任务不允许执行变化"))
        if error := self._logic(key, body):
            return Answer(200, error, logic=True)
        if full := self._full(key, upscale=action == "UPSCALE"):
            return full
        kind = {"UPSCALE": "upsample", "VARIATION": "variation", "REROLL": "reroll"}[action]
        label = "R" if action == "REROLL" else f"{action[0]}{index}"
        plan = Plan(action, Result.UPSCALE if action == "UPSCALE" else Result.GRID, index=index)
        task = self._child(
            key,
            body,
            mode,
            parent,
            f"MJ::JOB::{kind}::{index or 0}::{parent.message_hash}",
            plan,
            description=f"/up {parent.id} {label}",
        )
        if action != "REROLL" and (index is None or not 1 <= index <= 4):
            task.forced_failure = f"[Invalid parameter] index {index}"
        return self._start(task)

    # ---- task routes ----

    async def image_seed(self, task_id: str) -> Answer:
        task = self.engine.tasks.get(task_id)
        if task is None:
            return Answer(404, result(3, NOT_FOUND))
        started = self.engine.phase(task)[0] not in (NOT_START, MODAL)
        if task.seed and started:
            return Answer(200, result(1, "成功", task.seed))
        if self.engine.phase(task)[0] != SUCCESS:
            return Answer(400, result(4, BAD_STATUS))
        if self.config.seed_delay:
            await asyncio.sleep(self.config.seed_delay)
        return Answer(200, result(1, "成功", self.engine.seed_value(task)))

    def cancel(self, key: str, task_id: str) -> Answer:
        admins = self.config.admin_keys
        if admins is not None and key not in admins:
            return Answer(400, "演示模式，禁止操作")
        task = self.engine.tasks.get(task_id)
        if task is not None and self.engine.phase(task)[0] not in ("SUCCESS", "FAILURE"):
            now = self.engine.clock.now()
            if task.activated_at is None:
                self.engine.timeline.schedule(task, now, now, None)
            task.cancel_at = now
            task.cache.clear()
        return Answer(200, None)


def parent_prompts(parent: SimTask) -> list[str]:
    """A describe parent's prompt lines (``PromptEn.Split('\\n')``)."""
    return [f"{n}\ufe0f\u20e3 {t}" for n, t in enumerate(parent.texts, start=1)]
