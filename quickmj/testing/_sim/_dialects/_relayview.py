"""How new-api shows its rows: ``coverMidjourneyTaskDto`` + Go's ``json.Marshal``.

Source: QuantumNous/new-api ``relay/mjproxy_handler.go`` (``coverMidjourneyTaskDto``:
``imageUrl`` rewritten to ``{server}/mj/image/{id}`` with ``?rand=<UnixNano>`` until
SUCCESS, buttons and properties decoded into ``dto.ActionButton`` / ``dto.Properties``)
and ``dto/midjourney.go`` (``MidjourneyDto``'s field order, no ``omitempty``). What a row
holds comes from ``controller/midjourney.go``'s refresher (see ``_relaydb``); a failure is
stored with progress ``"100%"`` and a row older than an hour that has not finished turns
into ``上游任务超时（超过1小时）``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .._engine import Engine
from .._state import FAILURE, SUCCESS, SimTask
from .._wire import go_json
from ._base import Media
from ._relaydb import RelayDB, RelayRow
from ._taskinfo import taskinfo

__all__ = ("RelayView",)

_RAND = "__SIM_RAND__"


class RelayView:
    """Rows rendered as the relay answers them, cached per refreshed phase."""

    def __init__(
        self, engine: Engine, media: Media, db: RelayDB, base_url: Callable[[], str]
    ) -> None:
        self.engine = engine
        self.media = media
        self.db = db
        self.base_url = base_url
        self._last_rand = 0

    def _rand(self) -> bytes:
        value = max(self.engine.clock.epoch_ns(self.engine.clock.now()), self._last_rand + 1)
        self._last_rand = value
        return str(value).encode()

    def row_body(self, task: SimTask | None, rows: list[RelayRow], k: int) -> bytes:
        """Row ``k`` as ``coverMidjourneyTaskDto`` + ``json.Marshal`` write it now."""
        row = rows[k]
        now = self.engine.clock.now()
        at = None if task is None else self.db.snapshot_time(task, rows, k, now)
        phase = None if task is None or at is None else self.engine.timeline.phase(task, at)
        timed_out = False
        if task is not None and at is not None and phase is not None:
            final = phase[0] in (SUCCESS, FAILURE)
            # new-api fails rows still unfinished an hour after submit.
            # (A stalled row is one the upstream's answers no longer reach: the timeout
            # is applied to answered rows only.)
            timed_out = (
                not final
                and not row.stalled
                and self.engine.clock.epoch_ms(at) - task.submit_ms > 3_600_000
            )
        signed = None if task is None or at is None else self.db.links_signed_at(task, row, at)
        cache_key = (phase, timed_out, self.media.window(signed))
        cached = row.cache.get(cache_key)
        if cached is None:
            dto = self._dto(task, row, phase, timed_out, signed)
            encoded = go_json(dto)
            if _RAND.encode() in encoded:
                first, rest = encoded.split(_RAND.encode(), 1)
                cached = (first, rest)
            else:
                cached = (encoded, None)
            row.cache[cache_key] = cached
        head, tail = cached
        # The ?rand= value changes on every read: splice it in between the cached halves.
        return head if tail is None else head + self._rand() + tail

    def stored_image(self, task: SimTask, rows: list[RelayRow], k: int) -> str:
        """The upstream imageUrl the row holds (what ``/mj/image/{id}`` fetches)."""
        at = self.db.snapshot_time(task, rows, k, self.engine.clock.now())
        if at is None:
            return ""
        info = taskinfo(
            task,
            self.engine.timeline.phase(task, at),
            self.engine,
            self.media,
            previews=True,
            signed_at=self.db.links_signed_at(task, rows[k], at),
        )
        return str(info["imageUrl"] or "")

    def _dto(
        self,
        task: SimTask | None,
        row: RelayRow,
        phase: tuple[str, int] | None,
        timed_out: bool,
        at: float | None = None,
    ) -> dict[str, Any]:
        dto: dict[str, Any] = {
            "id": row.task_id,
            "action": row.action,
            "customId": "",
            "botType": "",
            "prompt": row.prompt,
            "promptEn": "",
            "description": row.description,
            "state": "",
            "submitTime": row.submit_ms,
            "startTime": row.start_ms,
            "finishTime": 0,
            "imageUrl": "",
            "videoUrl": "",
            "videoUrls": None,
            "status": "",
            "progress": "0%",
            "failReason": "",
            "buttons": None,
            "maskBase64": "",
            "properties": None,
        }
        if task is None or phase is None:
            return dto
        info = taskinfo(task, phase, self.engine, self.media, previews=True, signed_at=at)
        status = str(info["status"])
        fail = str(info["failReason"] or "")
        if timed_out:
            status, fail = FAILURE, "上游任务超时（超过1小时）"
        progress = str(info["progress"] or "")
        if (progress != "100%" and fail) or (progress == "100%" and status == FAILURE):
            progress = "100%"
        image = str(info["imageUrl"] or "")
        if image and self.engine.config.forward_image_urls:
            # system_setting.ServerAddress (new-api's default: http://localhost:3000).
            server = self.engine.config.server_address or self.base_url()
            image = f"{server.rstrip('/')}/mj/image/{row.task_id}"
            if status != SUCCESS:
                image += "?rand=" + _RAND
        props = info["properties"]
        buttons = [
            {k: b[k] for k in ("customId", "emoji", "label", "type", "style")}
            for b in info["buttons"]
        ]
        dto.update(
            promptEn=info["promptEn"] or "",
            state=info["state"] or "",
            submitTime=info["submitTime"] or 0,
            startTime=info["startTime"] or 0,
            finishTime=info["finishTime"] or 0,
            imageUrl=image,
            videoUrl=info["videoUrl"] or "",
            videoUrls=[{"url": v["url"]} for v in info["videoUrls"]] if info["videoUrls"] else None,
            status=status,
            progress=progress,
            failReason=fail,
            buttons=buttons,
            properties={
                "finalPrompt": props.get("finalPrompt") or "",
                "finalZhPrompt": props.get("finalZhPrompt") or "",
            },
        )
        return dto

    def status(self, row: RelayRow) -> str:
        """The status the relay's copy in ``row`` shows now ("" before a refresh)."""
        task = self.engine.tasks.get(row.task_id)
        rows = self.db.rows.get(row.task_id, [])
        if task is None or row not in rows:
            return ""
        at = self.db.snapshot_time(task, rows, rows.index(row), self.engine.clock.now())
        return "" if at is None else self.engine.timeline.phase(task, at)[0]
