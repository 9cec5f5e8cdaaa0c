"""From what callers pass to what the relay reads: input checks and wire requests.

Each builder validates its arguments (InvalidInputError names the problem), turns images
(bytes, paths, data URLs, http URLs) into wire strings, and returns one of the frozen
request classes of ``_models``. Nothing here talks to the network. Every submit's
builder is a coroutine function (those reading images await them), so the submit path
awaits them all alike.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import cast

from ._images import to_data_url, to_wire_images
from ._models import (
    BlendDimensions,
    BlendRequest,
    BotType,
    ChangeRequest,
    DescribeRequest,
    EditsRequest,
    ImagineRequest,
    ModalRequest,
    ShortenRequest,
    SimpleChangeRequest,
    SwapFaceRequest,
    UploadRequest,
    VideoRequest,
)
from ._types import ImageInput
from .errors import InvalidInputError

__all__ = (
    "blend",
    "bot_type",
    "change",
    "describe",
    "edits",
    "imagine",
    "modal",
    "prompt_text",
    "shorten",
    "simple_change",
    "swap_face",
    "upload",
    "video",
)

_BLEND_MIN, _BLEND_MAX = 2, 5
_MAX_STATE = 255  # TrueAI refuses longer states; other relays store them as they are
_CHANGE = re.compile(r"^\s*([UuVv])([1-4])\s*$|^\s*([Rr]|🔄)\s*$")
_CHANGE_ACTIONS = {"U": "UPSCALE", "V": "VARIATION"}


def prompt_text(prompt: str, what: str = "prompt") -> str:
    if not isinstance(prompt, str) or not prompt.strip():
        raise InvalidInputError(f"{what} must not be empty")
    for at, char in enumerate("" if prompt.isascii() else prompt):
        if 0xD800 <= ord(char) <= 0xDFFF:  # UTF-8 cannot carry it: the request would fail
            raise InvalidInputError(
                f"{what} is not valid text: character {at + 1} is a lone surrogate "
                f"(U+{ord(char):04X}), from a bad decode or a JSON '\\u{ord(char):04x}'"
            )
    return prompt.strip()


def state_text(state: str | None) -> str | None:
    if state is not None and (not isinstance(state, str) or len(state) > _MAX_STATE):
        raise InvalidInputError(f"state must be a string of at most {_MAX_STATE} characters")
    return state


def bot_type(value: BotType | str | None) -> BotType | None:
    if value is None or isinstance(value, BotType):
        return value
    aliases = {"mj": "MID_JOURNEY", "midjourney": "MID_JOURNEY", "niji": "NIJI_JOURNEY"}
    return BotType(aliases.get(value.lower(), value.upper()))


def _as_images(images: Sequence[ImageInput] | ImageInput) -> tuple[ImageInput, ...]:
    if isinstance(images, (str, bytes, bytearray, memoryview, os.PathLike)):
        return (cast(ImageInput, images),)  # one image, not a sequence of characters or bytes
    return tuple(images)


async def imagine(
    prompt: str,
    images: Sequence[ImageInput] | ImageInput,
    bot: BotType | str | None,
    notify_hook: str | None,
    state: str | None,
) -> ImagineRequest:
    items = _as_images(images)
    return ImagineRequest(
        prompt=prompt_text(prompt),
        base64_array=await to_wire_images(items) if items else None,
        bot_type=bot_type(bot),
        notify_hook=notify_hook,
        state=state_text(state),
    )


async def blend(
    images: Sequence[ImageInput],
    dimensions: BlendDimensions | str | None,
    bot: BotType | str | None,
    notify_hook: str | None,
    state: str | None,
) -> BlendRequest:
    if isinstance(images, (str, bytes)) or not _BLEND_MIN <= len(images) <= _BLEND_MAX:
        raise InvalidInputError(f"blend takes {_BLEND_MIN} to {_BLEND_MAX} images")
    dims = BlendDimensions(dimensions.upper()) if isinstance(dimensions, str) else dimensions
    if dims is not None and not dims.is_known:
        raise InvalidInputError("dimensions must be PORTRAIT, SQUARE or LANDSCAPE")
    return BlendRequest(
        base64_array=await to_wire_images(tuple(images)),
        dimensions=dims,
        bot_type=bot_type(bot),
        notify_hook=notify_hook,
        state=state_text(state),
    )


async def describe(
    image: ImageInput, bot: BotType | str | None, notify_hook: str | None, state: str | None
) -> DescribeRequest:
    return DescribeRequest(
        base64=await to_data_url(image, allow_url=False),
        bot_type=bot_type(bot),
        notify_hook=notify_hook,
        state=state_text(state),
    )


async def shorten(
    prompt: str, bot: BotType | str | None, notify_hook: str | None, state: str | None
) -> ShortenRequest:
    return ShortenRequest(
        prompt=prompt_text(prompt),
        bot_type=bot_type(bot),
        notify_hook=notify_hook,
        state=state_text(state),
    )


async def modal(
    task_id: str,
    prompt: str | None,
    mask: ImageInput | None,
    notify_hook: str | None,
    state: str | None,
) -> ModalRequest:
    return ModalRequest(
        task_id=task_id,
        prompt=prompt,
        mask_base64=await to_data_url(mask, allow_url=False) if mask is not None else None,
        notify_hook=notify_hook,
        state=state_text(state),
    )


async def change(
    task_id: str, label: str, notify_hook: str | None, state: str | None
) -> ChangeRequest:
    """``"U1"``-``"U4"``, ``"V1"``-``"V4"`` or ``"R"`` (reroll) as /submit/change."""
    m = _CHANGE.match(label) if isinstance(label, str) else None
    if m is None:
        raise InvalidInputError(f"change takes U1-U4, V1-V4 or R (reroll), not {label!r}")
    if m.group(1):
        action, index = _CHANGE_ACTIONS[m.group(1).upper()], int(m.group(2))
        return ChangeRequest(task_id, action, index, notify_hook, state_text(state))
    return ChangeRequest(task_id, "REROLL", None, notify_hook, state_text(state))


async def simple_change(
    content: str, notify_hook: str | None, state: str | None
) -> SimpleChangeRequest:
    """``"<task id> U1"`` as /submit/simple-change."""
    parts = content.split() if isinstance(content, str) else []
    if len(parts) != 2 or _CHANGE.match(parts[1]) is None:
        raise InvalidInputError(f"simple-change takes '<task id> U1..U4|V1..V4|R', not {content!r}")
    return SimpleChangeRequest(" ".join(parts), notify_hook, state_text(state))


async def video(
    prompt: str,
    image: ImageInput | None,
    end_image: ImageInput | None,
    motion: str | None,
    loop: bool | None,
    notify_hook: str | None,
    state: str | None,
) -> VideoRequest:
    if motion is not None and motion not in ("low", "high"):
        raise InvalidInputError("motion must be 'low' or 'high'")
    return VideoRequest(
        prompt=prompt_text(prompt),
        image=await to_data_url(image) if image is not None else None,
        end_image=await to_data_url(end_image) if end_image is not None else None,
        motion=motion,
        loop=loop,
        notify_hook=notify_hook,
        state=state_text(state),
    )


async def edits(
    prompt: str, image: ImageInput, notify_hook: str | None, state: str | None
) -> EditsRequest:
    return EditsRequest(
        prompt=prompt_text(prompt),
        image=await to_data_url(image),
        notify_hook=notify_hook,
        state=state_text(state),
    )


async def swap_face(
    source: ImageInput, target: ImageInput, notify_hook: str | None, state: str | None
) -> SwapFaceRequest:
    return SwapFaceRequest(
        source_base64=await to_data_url(source, allow_url=False),
        target_base64=await to_data_url(target, allow_url=False),
        notify_hook=notify_hook,
        state=state_text(state),
    )


async def upload(images: Sequence[ImageInput] | ImageInput) -> UploadRequest:
    items = _as_images(images)
    if not items:
        raise InvalidInputError("upload needs at least one image")
    return UploadRequest(base64_array=await to_wire_images(items))
