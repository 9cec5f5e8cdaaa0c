"""TrueAI's ``TaskInfo`` as System.Text.Json writes it (``src/Midjourney.Base/Models/
TaskInfo.cs`` and ``DomainObject.cs``).

System.Text.Json ignores Newtonsoft's ``[JsonIgnore]``, so every public property is
written, computed ones included (``isCompleted``, ``displays``, ``useTime`` ...), derived
class properties first and ``DomainObject``'s ``id`` and ``properties`` last (issue
trueai-org/midjourney-proxy#55 shows that order). Nulls are written. The quickrouter
dialect reads the same fields as its (hidden) upstream's task.
"""

from __future__ import annotations

import re
import time
from typing import Any

from .._catalogue import Result, buttons_for
from .._engine import Engine
from .._state import FAILURE, IN_PROGRESS, MODAL, NOT_START, SUCCESS, Phase, SimTask
from ._base import Media, digits, progress_text, times

__all__ = ("taskinfo", "user_id")

_SPEED = {"FAST": "fast", "RELAX": "relax", "TURBO": "turbo"}


_VERSION = re.compile(r"--(v|version|niji)\s+(\d+(?:\.\d+)?)")


def version(prompt: str | None) -> str:
    """``TaskInfo.GetVersion``: ``"v 6.1"``, ``"niji 6"``; MJ's default model otherwise."""
    match = _VERSION.search(prompt or "")
    if match is None:
        return "niji 6" if "--niji" in (prompt or "") else "v 7"
    kind = "niji" if match.group(1) == "niji" else "v"
    return f"{kind} {match.group(2)}"


def user_id(key: str) -> str:
    """The TrueAI ``User.Id`` behind an API key (a 32-digit hex id)."""
    return digits("user:" + key, 32)


def _when(ms: int | None) -> str | None:
    # TaskInfo.Displays: ToDateTimeString(), server local time.
    if ms is None:
        return None
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000))


def _final_prompt(task: SimTask, phase: Phase, engine: Engine) -> str | None:
    status = phase[0]
    base = task.prompt_en if task.prompt_en is not None else task.prompt
    if task.result is Result.DESCRIBE and status == SUCCESS:
        return "\r\n".join(f"{n}\ufe0f\u20e3 {t}" for n, t in enumerate(task.texts, start=1))
    if task.result is Result.SHORTEN and status == SUCCESS:
        return shorten_report(task)
    if status == IN_PROGRESS and task.seed:
        return f"{base} --seed {task.seed}"  # the seed is stripped again on success
    return base


def shorten_report(task: SimTask) -> str:
    tokens = "\n".join(f"{w} " for w in (task.prompt or "").split()[:5])
    shortened = "\n\n".join(f"{n}\ufe0f\u20e3 {t}" for n, t in enumerate(task.texts, start=1))
    return f"## Important tokens\n{tokens}\n## Shortened prompts\n{shortened}"


def properties(task: SimTask, phase: Phase, engine: Engine, media: Media) -> dict[str, Any]:
    """``TaskInfo.Properties`` in insertion order (a .NET Dictionary keeps it)."""
    status = phase[0]
    channel = media.channel(task.key)
    props: dict[str, Any] = {
        "notifyHook": task.notify_hook,
        "nonce": task.nonce,
        "botType": task.bot_type,
    }
    if task.custom_id:
        props["custom_id"] = task.custom_id
        if task.image_index:
            props["action_index"] = task.image_index
    props["discordInstanceId"] = channel
    props["discordChannelId"] = channel
    if status in (IN_PROGRESS, SUCCESS) or (status == FAILURE and phase_ran(task)):
        props["progressMessageId"] = digits("progress:" + task.id)
        props["finalPrompt"] = _final_prompt(task, phase, engine)
    if status == SUCCESS:
        final = props["finalPrompt"]
        props["messageId"] = digits("msg:" + task.id)
        props["flags"] = 0
        props["messageHash"] = task.message_hash
        speed = _SPEED.get(task.mode or "FAST", "fast")
        props["messageContent"] = f"**{final}** - <@{digits('bot:' + task.key)}> ({speed})"
    return props


def phase_ran(task: SimTask) -> bool:
    """Whether a failed job got as far as running (its failure came mid-run)."""
    return (
        task.fail_reason is not None
        and task.forced_failure is None
        and (task.random_failure or task.hang)
    )


def _media_fields(
    task: SimTask, phase: Phase, engine: Engine, media: Media, previews: bool, at: float | None
) -> tuple[str | None, list[dict[str, str]] | None, str | None, list[dict[str, str]] | None]:
    """(imageUrl, imageUrls, videoUrl, videoUrls) for ``phase``, links signed at ``at``."""
    percent = engine.timeline.percent(phase)
    if previews and phase[0] == IN_PROGRESS and percent > 0 and task.result is Result.GRID:
        return media.preview(task, percent), None, None, None
    if phase[0] != SUCCESS or task.result is Result.SHORTEN:
        return None, None, None, None
    if task.result is Result.VIDEO:
        clips = [
            {"url": media.video(task, i, at), "thumbnail": media.part(task, i, at)}
            for i in range(4)
        ]
        return media.final(task, at), clips, clips[0]["url"], clips
    image_urls = None
    if engine.config.fill_image_urls and task.result is Result.GRID:
        image_urls = [
            {"url": media.part(task, i, at), "thumbnail": media.part(task, i, at)} for i in range(4)
        ]
    return media.final(task, at), image_urls, None, None


def taskinfo(
    task: SimTask,
    phase: Phase,
    engine: Engine,
    media: Media,
    *,
    previews: bool = False,
    signed_at: float | None = None,
) -> dict[str, Any]:
    """Every TaskInfo property, in System.Text.Json's order, for ``task`` in ``phase``.

    ``previews``: show the progress preview in ``imageUrl`` while running (a Plus-like
    upstream does; TrueAI only with ``EnableSaveIntermediateImage``, off by default).
    ``signed_at``: when the image links were issued (default: now; the relay's copy
    holds the links of its last refresh).
    """
    status, _ = phase
    t = times(engine, task, phase)
    started = status not in (NOT_START, MODAL)
    running_or_done = status in (IN_PROGRESS, SUCCESS) or (status == FAILURE and phase_ran(task))
    success = status == SUCCESS
    done = status in (SUCCESS, FAILURE)
    channel = media.channel(task.key)
    image_url, image_urls, video_url, video_urls = _media_fields(
        task, phase, engine, media, previews, signed_at
    )
    progress_msg = digits("progress:" + task.id)
    final_msg = digits("msg:" + task.id)
    size = engine.config.image_size if success and task.result is not Result.SHORTEN else None
    prompt, prompt_en = task.prompt, task.prompt_en
    if task.result is Result.DESCRIBE and success:
        prompt = prompt_en = _final_prompt(task, phase, engine)
    mode = task.mode or ("FAST" if success else None)
    duration = (
        (t.finish - t.start) / 1000.0 if t.start is not None and t.finish is not None else None
    )
    fields: dict[str, Any] = {
        "parentId": task.parent_id,
        "botType": task.bot_type,
        "realBotType": None,
        "userId": user_id(task.key),
        "isWhite": False,
        "nonce": task.nonce,
        "interactionMetadataId": digits("interaction:" + task.id) if started else None,
        "messageId": (final_msg if success else progress_msg) if running_or_done else None,
        "remixModalMessageId": None,
        "remixAutoSubmit": bool(task.extra.get("remix_auto_submit", False)),
        "remixModaling": False,
        "instanceId": channel,
        "subInstanceId": None,
        "messageIds": ([progress_msg, final_msg] if success else [progress_msg])
        if running_or_done
        else [],
        "action": task.action,
        "status": status,
        "isCompleted": done,
        "prompt": prompt,
        "promptEn": prompt_en,
        "promptFull": _final_prompt(task, phase, engine) if running_or_done else None,
        "description": task.description,
        "language": None,
        "state": task.state,
        "submitTime": t.submit,
        "startTime": t.start,
        "finishTime": t.finish,
        "imageUrl": image_url,
        "baseImageUrl": None,
        "imageUrls": image_urls,
        "thumbnailUrl": None,
        "progress": progress_text(engine, phase),
        "failReason": engine.timeline.failure_reason(task, engine.clock.now())
        if status == FAILURE
        else None,
        "hasAIReviewRetried": False,
        "isThirdParty": False,
        "isPartner": False,
        "isPartnerRelax": False,
        "partnerTaskId": None,
        "partnerTaskInfo": None,
        "isOfficial": False,
        "officialTaskId": None,
        "officialTaskInfo": None,
        "isDiscord": True,
        "buttons": buttons_for(task.result, task.message_hash) if success else [],
        "displays": {
            "status": status,
            "submitTime": _when(t.submit),
            "startTime": _when(t.start),
            "finishTime": _when(t.finish),
            "action": task.action,
            "discordInstanceId": channel,
        },
        "seed": task.seed if started else None,
        "seedError": None,
        "seedMessageId": None,
        "clientIp": task.extra.get("client_ip", "127.0.0.1"),
        "jobId": task.message_hash if success else None,
        "isReplicate": task.result is Result.FACE,
        "replicateSource": None,
        "replicateTarget": None,
        "mode": mode,
        "requestMode": task.mode,
        "accountFilter": task.extra.get("account_filter"),
        "url": image_url,
        "proxyUrl": image_url,
        "height": size,
        "width": size,
        "size": None,
        "contentType": ("video/mp4" if task.result is Result.VIDEO else "image/png")
        if size
        else None,
        "imageHeight": size,
        "imageWidth": size,
        "videoGenOriginImageUrl": None,
        "videoDuration": 5 if video_url else None,
        "frameCount": None,
        "videoUrl": video_url,
        "videoUrls": video_urls,
        "useTime": f"{max(duration, 0):.2f} s" if duration is not None else "-",
        "version": version(prompt_en or prompt) if success else None,
        "storageOption": None,
        "videoType": task.extra.get("video_type"),
        "isHdVideo": task.extra.get("video_type") == "vid_1.1_i2v_720",
        "id": task.id,
        "properties": properties(task, phase, engine, media),
    }
    return fields
