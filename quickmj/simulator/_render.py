"""A simulated job as the relay shows it: a ``quickmj.Task``, and its JSON through the converter."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from .._converter import unstructure
from .._models import Button, MediaUrl, Task, TaskStatus
from ._catalogue import Result, buttons_for
from ._state import Phase, SimTask, TaskStore

__all__ = ("DISCORD_INSTANCE_ID", "Renderer")

#: The "account" every job runs on (relays name the executing Discord channel).
DISCORD_INSTANCE_ID = "1118138338562560102"


def dumps(data: Any) -> bytes:
    """Compact UTF-8 JSON, as the relays send it (CJK text unescaped)."""
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()


def _signature(task_id: str) -> str:
    """Discord-style ``ex``/``is``/``hm`` query, deterministic per task."""
    digest = hashlib.sha256(f"sim-cdn:{task_id}".encode()).hexdigest()
    return f"ex={digest[:8]}&is={digest[8:16]}&hm={digest[16:]}&"


class Renderer:
    """Turns (task, phase) into a Task, and caches the JSON of each task's last phase."""

    def __init__(self, store: TaskStore) -> None:
        self.store = store
        self.base_url = ""

    # ---- URLs served by the simulator's image route ----

    def image_url(self, task: SimTask) -> str:
        return f"{self.base_url}/images/{task.id}.png?{_signature(task.id)}"

    def part_url(self, task: SimTask, index: int) -> str:
        return f"{self.base_url}/images/{task.id}_{index}.png"

    def preview_url(self, task: SimTask, percent: int) -> str:
        return f"{self.base_url}/images/{task.id}_progress_{percent}.png"

    # ---- tasks ----

    def task(self, task: SimTask, phase: Phase) -> Task:
        """The relay's view of ``task`` in ``phase``."""
        status, step = phase
        store = self.store
        props: dict[str, Any] = {
            "discordInstanceId": DISCORD_INSTANCE_ID,
            "discordChannelId": DISCORD_INSTANCE_ID,
            "finalZhPrompt": "",
        }
        if task.notify_hook:
            props["notifyHook"] = task.notify_hook
        if task.mode:
            props["mode"] = task.mode
        prompt = task.prompt
        description = "Submit success"
        progress: str | None = None
        image_url: str | None = None
        image_urls: tuple[MediaUrl, ...] = ()
        start_ms: int | None = None
        finish_ms: int | None = None
        fail_reason: str | None = None
        buttons: tuple[Button, ...] = ()
        if status is TaskStatus.MODAL:
            props["finalPrompt"] = task.prompt
            props["remix"] = True
        if task.slot_start is not None and status not in (
            TaskStatus.MODAL,
            TaskStatus.NOT_START,
        ):
            start_ms = store.epoch_ms(task.slot_start)
        if status is TaskStatus.SUBMITTED:
            progress = "0%"
        elif status is TaskStatus.IN_PROGRESS:
            percent = store.config.progress_steps[step]
            progress = f"{percent}%"
            props["finalPrompt"] = task.prompt
            if task.result is Result.GRID:
                image_url = self.preview_url(task, percent)
        elif status in (TaskStatus.SUCCESS, TaskStatus.FAILURE):
            assert task.end is not None
            finish_ms = store.epoch_ms(task.end)
            props["finalPrompt"] = task.prompt
            if status is TaskStatus.FAILURE:
                progress = ""
                fail_reason = task.fail_reason or "failed"
            else:
                progress = "100%"
                fail_reason = ""
                if task.result is not Result.SHORTEN:
                    image_url = self.image_url(task)
                buttons = buttons_for(task.result, task.message_hash)
                props["messageHash"] = task.message_hash
                if task.result is Result.GRID:
                    image_urls = tuple(MediaUrl(url=self.part_url(task, i)) for i in range(4))
                elif task.result is Result.DESCRIBE:
                    text = "\n\n".join(
                        f"{n}\ufe0f\u20e3 {t}" for n, t in enumerate(task.texts, start=1)
                    )
                    prompt = text
                    props["finalPrompt"] = text
                elif task.result is Result.SHORTEN:
                    text = _shorten_report(task)
                    description = text
                    props["finalPrompt"] = text
        return Task(
            id=task.id,
            status=status,
            action=task.action,
            progress=progress,
            prompt=prompt,
            prompt_en=prompt,
            description=description,
            state=task.state if task.state is not None else "",
            custom_id=task.custom_id or "",
            bot_type=task.bot_type,
            submit_time=task.submit_ms,
            start_time=start_ms,
            finish_time=finish_ms,
            image_url=image_url,
            image_urls=image_urls,
            fail_reason=fail_reason,
            buttons=buttons,
            mask_base64="",
            parent_id=task.parent_id,
            properties=props,
        )

    def json(self, task: SimTask, phase: Phase) -> bytes:
        """The task's JSON in ``phase``; cached until the phase changes."""
        if task.cached_phase == phase:
            return task.cached_json
        body = dumps(unstructure(self.task(task, phase)))
        task.cached_phase = phase
        task.cached_json = body
        return body


def _shorten_report(task: SimTask) -> str:
    tokens = "\n".join(f"{w} " for w in task.prompt.split()[:5])
    shortened = "\n\n".join(f"{n}\ufe0f\u20e3 {t}" for n, t in enumerate(task.texts, start=1))
    return f"## Important tokens\n{tokens}\n## Shortened prompts\n{shortened}"
