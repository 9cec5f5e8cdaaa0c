"""The relay's protocol logic: validate submits, create jobs, answer reads. No HTTP here.

Every method takes the parsed JSON body (anything at all: bad bodies get code 4, never
an exception) and returns a :class:`Reply`, which ``_app`` turns into a response.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

import attrs

from .._converter import structure, unstructure
from .._models import (
    ActionRequest,
    BlendDimensions,
    BlendRequest,
    BotType,
    DescribeRequest,
    ImagineRequest,
    ModalRequest,
    ShortenRequest,
    SubmitResult,
    TaskAction,
)
from ..errors import MalformedResponseError
from . import _png
from ._catalogue import Modal, Result, buttons_for, plan_action
from ._config import SimulatorConfig
from ._hooks import HookDispatcher
from ._render import DISCORD_INSTANCE_ID, Renderer, dumps
from ._state import MODAL_PHASE, SUCCESS_PHASE, SimTask, TaskStore

__all__ = ("Relay", "Reply", "Submission")

T = TypeVar("T")

NOT_FOUND = "关联任务不存在或已失效"
BAD_STATUS = "关联任务状态错误"

_ASPECT = {
    BlendDimensions.PORTRAIT: "2:3",
    BlendDimensions.SQUARE: "1:1",
    BlendDimensions.LANDSCAPE: "3:2",
}
_WORDS = (
    "a watercolor fox",
    "soft morning light",
    "isometric city",
    "cinematic lighting",
    "pastel palette",
    "highly detailed",
    "studio ghibli style",
    "minimalist poster",
    "volumetric fog",
    "golden hour",
    "retro futurism",
    "ink sketch",
)
_DATA_URL = re.compile(r"^data:[\w.+/-]+;base64,[A-Za-z0-9+/=\s]*$", re.S)
_RAW_BASE64 = re.compile(r"^[A-Za-z0-9+/=\s]+$")
_ZOOM = re.compile(r"--zoom\s+(\d+(?:\.\d+)?)")
_IMAGE_NAME = re.compile(
    r"^(?P<id>[0-9]{1,32})(?:_(?P<part>[0-3])|_progress_(?P<pct>\d{1,3}))?\.png$"
)


class Submission(NamedTuple):
    """A job the simulator actually created."""

    endpoint: str  # "/submit/imagine", "/submit/action", ...
    prompt: str  # the prompt (imagine, blend, describe, shorten) or the customId (action)
    state: str | None


@attrs.frozen
class Reply:
    """An answer: HTTP status, body and content type."""

    status: int
    body: bytes
    content_type: str = "application/json"
    #: The job this answer created or started, if any.
    task: SimTask | None = None


def submit_reply(
    code: int,
    description: str,
    result: str | None = None,
    properties: dict[str, Any] | None = None,
    *,
    status: int = 200,
    task: SimTask | None = None,
) -> Reply:
    answer = SubmitResult(
        code=code, description=description, result=result, properties=properties or {}
    )
    return Reply(status, dumps(unstructure(answer)), task=task)


def invalid(description: str, *, status: int = 200) -> Reply:
    return submit_reply(4, description, status=status)


def not_found() -> Reply:
    return submit_reply(3, NOT_FOUND, status=404)


def _valid_image(value: str, *, allow_url: bool = True) -> bool:
    value = value.strip()
    if not value:
        return False
    if value.startswith("data:"):
        return bool(_DATA_URL.match(value))
    if value.startswith(("http://", "https://")):
        return allow_url
    return bool(_RAW_BASE64.match(value))


def _upload_url(image: str) -> str:
    """Where the relay would have put an uploaded reference image (Discord-style short link)."""
    return "https://s.mj.run/" + hashlib.sha256(image.encode()).hexdigest()[:11]


def _bot(value: BotType | None) -> str:
    if value is not None and value.value.upper() in ("NIJI_JOURNEY", "NIJI"):
        return BotType.NIJI_JOURNEY.value
    return BotType.MID_JOURNEY.value


class Relay:
    """Submits, fetch, list-by-condition, image-seed and images, on top of the task store."""

    def __init__(
        self,
        config: SimulatorConfig,
        store: TaskStore,
        renderer: Renderer,
        hooks: HookDispatcher,
        rng: random.Random,
    ) -> None:
        self.config = config
        self.store = store
        self.renderer = renderer
        self.hooks = hooks
        self._rng = rng
        self.submissions: list[Submission] = []

    # ---- shared submit steps ----

    def _parse(self, body: Any, cls: type[T]) -> T | Reply:
        if not isinstance(body, dict):
            return invalid("请求参数错误: expected a JSON object")
        try:
            return structure(body, cls, what="body")
        except MalformedResponseError as exc:
            detail = str(exc).removeprefix("unexpected response shape: ")
            return invalid(f"请求参数错误: {detail}")

    @staticmethod
    def _check_common(state: str | None, notify_hook: str | None) -> Reply | None:
        if state is not None and len(state) > 255:
            return invalid("state长度不能超过255")
        if notify_hook and (
            len(notify_hook) > 2000 or not notify_hook.startswith(("http://", "https://"))
        ):
            return invalid("notifyHook格式错误")
        return None

    def _queue_full(self, now: float) -> Reply | None:
        limit = self.config.max_queue
        if limit is not None and self.store.active_count(now) >= limit:
            return submit_reply(23, "队列已满，请稍后尝试")
        return None

    def _fail_word(self, prompt: str) -> str | None:
        lowered = prompt.casefold()
        return next((w for w in self.config.fail_words if w.casefold() in lowered), None)

    def _create(self, endpoint: str, label: str, now: float, **fields: Any) -> SimTask:
        task = self.store.create(endpoint=endpoint, now=now, **fields)
        self.submissions.append(Submission(endpoint, label, task.state))
        return task

    def _start(self, task: SimTask, now: float) -> Reply:
        ahead = self.store.activate(task, now, self._fail_word(task.prompt))
        if self.config.hooks_enabled:
            self.hooks.schedule(task)
        props: dict[str, Any] = {"discordInstanceId": DISCORD_INSTANCE_ID}
        if ahead:
            props["numberOfQueues"] = ahead
            return submit_reply(22, f"排队中，前面还有{ahead}个任务", task.id, props, task=task)
        return submit_reply(1, "提交成功", task.id, props, task=task)

    def _admit(self, endpoint: str, key: str, req: Any, mode: str | None, **create: Any) -> Reply:
        """The shared tail of the new-job routes: queue limit, create, start."""
        now = self.store.clock()
        if full := self._queue_full(now):
            return full
        task = self._create(
            endpoint,
            key,
            now,
            state=req.state,
            notify_hook=req.notify_hook,
            mode=mode,
            bot_type=_bot(req.bot_type),
            **create,
        )
        return self._start(task, now)

    # ---- submits ----

    def imagine(self, body: Any, mode: str | None) -> Reply:
        if not isinstance(body, dict) or not str(body.get("prompt") or "").strip():
            return invalid("prompt不能为空")
        req = self._parse(body, ImagineRequest)
        if isinstance(req, Reply):
            return req
        prompt = req.prompt.strip()
        images = req.base64_array or ()
        if not all(_valid_image(i) for i in images):
            return invalid("base64格式错误")
        if error := self._check_common(req.state, req.notify_hook):
            return error
        lowered = prompt.casefold()
        for word in self.config.banned_words:
            if word.casefold() in lowered:
                props = {"promptEn": prompt, "bannedWord": word}
                return submit_reply(24, f"可能包含敏感词: {word}", None, props)
        full_prompt = " ".join([*(_upload_url(i) for i in images), prompt])
        return self._admit(
            "/submit/imagine",
            prompt,
            req,
            mode,
            action=TaskAction.IMAGINE,
            result=Result.GRID,
            prompt=full_prompt,
        )

    def blend(self, body: Any, mode: str | None) -> Reply:
        req = self._parse(body, BlendRequest)
        if isinstance(req, Reply):
            return req
        if isinstance(body, dict) and "dimensions" in body and body["dimensions"] is None:
            return invalid("dimensions参数错误")
        dims = req.dimensions or BlendDimensions.SQUARE
        if not dims.is_known:
            return invalid("dimensions参数错误")
        if not 2 <= len(req.base64_array) <= 5:
            return invalid("base64List参数错误")
        if not all(_valid_image(i) for i in req.base64_array):
            return invalid("base64格式错误")
        if error := self._check_common(req.state, req.notify_hook):
            return error
        prompt = " ".join([*(_upload_url(i) for i in req.base64_array), f"--ar {_ASPECT[dims]}"])
        return self._admit(
            "/submit/blend",
            prompt,
            req,
            mode,
            action=TaskAction.BLEND,
            result=Result.GRID,
            prompt=prompt,
        )

    def describe(self, body: Any, mode: str | None) -> Reply:
        if isinstance(body, dict) and not body.get("base64") and isinstance(body.get("link"), str):
            body = {**body, "base64": body["link"]}
        if not isinstance(body, dict) or not body.get("base64"):
            return invalid("base64不能为空")
        req = self._parse(body, DescribeRequest)
        if isinstance(req, Reply):
            return req
        if not _valid_image(req.base64):
            return invalid("base64格式错误")
        if error := self._check_common(req.state, req.notify_hook):
            return error
        texts = tuple(f"{t} --ar 1:1" for t in self.store.random_texts(4, _WORDS))
        url = _upload_url(req.base64)
        return self._admit(
            "/submit/describe",
            url,
            req,
            mode,
            action=TaskAction.DESCRIBE,
            result=Result.DESCRIBE,
            prompt=url,
            texts=texts,
        )

    def shorten(self, body: Any, mode: str | None) -> Reply:
        if not isinstance(body, dict) or not str(body.get("prompt") or "").strip():
            return invalid("prompt不能为空")
        req = self._parse(body, ShortenRequest)
        if isinstance(req, Reply):
            return req
        if error := self._check_common(req.state, req.notify_hook):
            return error
        prompt = req.prompt.strip()
        words = prompt.split()
        texts = tuple(" ".join(words[: max(1, len(words) * k // 6)]) for k in range(5, 0, -1))
        return self._admit(
            "/submit/shorten",
            prompt,
            req,
            mode,
            action=TaskAction.SHORTEN,
            result=Result.SHORTEN,
            prompt=prompt,
            texts=texts,
        )

    def action(self, body: Any, mode: str | None) -> Reply:
        req = self._parse(body, ActionRequest)
        if isinstance(req, Reply):
            return req
        parent = self.store.tasks.get(req.task_id.strip())
        if parent is None:
            return not_found()
        now = self.store.clock()
        if self.store.phase(parent, now) != SUCCESS_PHASE:
            return invalid(BAD_STATUS)
        plan = plan_action(req.custom_id, parent.action)
        if plan is None:
            return invalid("未知的 Action 类型")
        if req.custom_id not in {
            b.custom_id for b in buttons_for(parent.result, parent.message_hash)
        }:
            return invalid("customId 与关联任务的按钮不匹配")
        if error := self._check_common(req.state, req.notify_hook):
            return error
        prompt = parent.prompt
        if plan.modal is Modal.PROMPT and plan.index and plan.index <= len(parent.texts):
            prompt = parent.texts[plan.index - 1]
        elif plan.modal is Modal.INPAINT:
            prompt = ""
        elif plan.modal is Modal.ZOOM:
            prompt = f"{parent.prompt} --zoom 2"
        fields: dict[str, Any] = {
            "action": plan.action,
            "result": plan.result,
            "prompt": prompt,
            "custom_id": req.custom_id,
            "parent_id": parent.id,
            "state": req.state,
            "notify_hook": req.notify_hook,
            "mode": mode,
            "bot_type": parent.bot_type,
        }
        if plan.result is Result.UPSCALE:
            fields.update(image_key=parent.image_key, image_index=plan.index)
        elif plan.result is Result.UPSCALE_HD:
            fields.update(image_key=parent.image_key, image_index=parent.image_index)
        elif plan.result is Result.DESCRIBE:
            texts = tuple(f"{t} --ar 1:1" for t in self.store.random_texts(4, _WORDS))
            fields.update(image_key=parent.image_key, texts=texts)
        if plan.modal is not None:
            task = self._create("/submit/action", req.custom_id, now, modal=plan.modal, **fields)
            props = {"finalPrompt": prompt, "remix": True}
            return submit_reply(21, "Waiting for window confirm", task.id, props, task=task)
        if full := self._queue_full(now):
            return full
        task = self._create("/submit/action", req.custom_id, now, **fields)
        return self._start(task, now)

    def modal(self, body: Any, mode: str | None) -> Reply:
        req = self._parse(body, ModalRequest)
        if isinstance(req, Reply):
            return req
        task = self.store.tasks.get(req.task_id.strip())
        if task is None:
            return not_found()
        now = self.store.clock()
        if self.store.phase(task, now) != MODAL_PHASE:
            return invalid(BAD_STATUS)
        prompt = (req.prompt or "").strip() or task.prompt
        if task.modal is Modal.INPAINT:
            if not req.mask_base64 or not _valid_image(req.mask_base64, allow_url=False):
                return invalid("maskBase64不能为空")
            if not prompt and task.parent_id in self.store.tasks:
                prompt = self.store.tasks[task.parent_id].prompt
        elif task.modal is Modal.ZOOM:
            m = _ZOOM.search(prompt)
            if m is None or not 1.0 <= float(m.group(1)) <= 2.0:
                return invalid("prompt 需要 --zoom 1~2")
        if not prompt:
            return invalid("prompt不能为空")
        if error := self._check_common(req.state, req.notify_hook):
            return error
        if full := self._queue_full(now):
            return full
        task.prompt = prompt
        if req.state is not None:
            task.state = req.state
        if req.notify_hook:
            task.notify_hook = req.notify_hook
        if mode and not task.mode:
            task.mode = mode
        return self._start(task, now)

    # ---- reads ----

    def fetch(self, task_id: str) -> Reply:
        task = self.store.tasks.get(task_id)
        if task is None:
            return Reply(200, b"")  # OSS-Java: 200 with an empty body
        return Reply(200, self.renderer.json(task, self.store.phase(task, self.store.clock())))

    def list_by_condition(self, body: Any, truncate: Callable[[int], int | None]) -> Reply:
        ids = body.get("ids") if isinstance(body, dict) else None
        if not ids:
            return Reply(200, b"[]")
        if not isinstance(ids, list):
            return invalid("ids参数错误", status=400)
        tasks = self.store.tasks
        wanted = dict.fromkeys(
            str(i).strip() for i in ids if isinstance(i, (str, int)) and not isinstance(i, bool)
        )
        found = [t for t in map(tasks.get, wanted) if t is not None]
        self._rng.shuffle(found)  # relays do not keep the order
        keep = truncate(len(found))
        if keep is not None:
            found = found[:keep]
        now = self.store.clock()
        phase, render = self.store.phase, self.renderer.json
        return Reply(200, b"[" + b",".join(render(t, phase(t, now)) for t in found) + b"]")

    def seed_check(self, task_id: str) -> Reply | None:
        """The error answer for image-seed, or None when the seed can be given."""
        task = self.store.tasks.get(task_id)
        if task is None:
            return not_found()
        if self.store.phase(task, self.store.clock()) != SUCCESS_PHASE:
            return invalid(BAD_STATUS, status=400)
        return None

    def image_seed(self, task_id: str) -> Reply:
        error = self.seed_check(task_id)
        if error is not None:
            return error
        task = self.store.tasks[task_id]
        digest = hashlib.sha256(f"{self.config.seed}:{task.message_hash}".encode()).digest()
        seed = int.from_bytes(digest[:4], "big") % 4_294_967_295
        return submit_reply(1, "成功", str(seed))

    def image(self, name: str) -> Reply:
        """A PNG of a task: ``{id}.png`` (final), ``{id}_{0-3}.png``, ``{id}_progress_{n}.png``."""
        m = _IMAGE_NAME.match(name)
        task = self.store.tasks.get(m.group("id")) if m else None
        if m is None or task is None:
            return Reply(404, b"404: Not Found", "text/plain")
        size = self.config.image_size
        colours = _png.colours_for(task.image_key)
        if m.group("pct") is not None:
            return Reply(200, _png.preview_png(colours, size, int(m.group("pct"))), "image/png")
        if self.store.phase(task, self.store.clock()) != SUCCESS_PHASE:
            return Reply(404, b"404: Not Found", "text/plain")
        if m.group("part") is not None:
            if task.result is not Result.GRID:
                return Reply(404, b"404: Not Found", "text/plain")
            return Reply(200, _png.single_png(colours[int(m.group("part"))], size), "image/png")
        if task.result is Result.GRID:
            return Reply(200, _png.grid_png(colours, size), "image/png")
        if task.result is Result.SHORTEN:
            return Reply(404, b"404: Not Found", "text/plain")
        index = (task.image_index or 1) - 1
        return Reply(200, _png.single_png(colours[index], size), "image/png")
