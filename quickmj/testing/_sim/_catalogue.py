"""Buttons a finished job shows and what pressing one does (protocol.md §5).

Two classifiers live here because the servers disagree:

- :func:`plan_action` is TrueAI's ``SubmitController.Action`` (``src/Midjourney.API/
  Controllers/SubmitController.cs``): prefix checks in that order, unknown customIds are
  ``未知的 Action 类型``; PromptAnalyzer and BOOKMARK are rejected there.
- :func:`relay_action` is new-api's ``CoverPlusActionToNormalAction``
  (``service/midjourney.go``): substring checks on the second or third ``::`` segment.
"""

from __future__ import annotations

import enum
from typing import Any

import attrs

__all__ = (
    "Modal",
    "Plan",
    "RelayPanic",
    "Result",
    "buttons_for",
    "plan_action",
    "relay_action",
)

Button = dict[str, Any]


class Result(enum.Enum):
    """What a finished job shows."""

    GRID = "grid"  # four images, U/V buttons
    UPSCALE = "upscale"  # one image with vary/zoom/pan buttons
    UPSCALE_HD = "upscale_hd"  # one image, without the upscale variants
    DESCRIBE = "describe"  # four prompts, PicReader buttons
    SHORTEN = "shorten"  # five shortened prompts, PromptAnalyzer buttons
    FACE = "face"  # one image, no buttons (InsightFace)
    VIDEO = "video"  # four clips, video buttons


class Modal(enum.Enum):
    """Which ``/submit/modal`` a MODAL job waits for."""

    INPAINT = "inpaint"  # Vary (Region): mask
    ZOOM = "zoom"  # Custom Zoom: prompt with --zoom
    PROMPT = "prompt"  # describe follow-up or remix: a prompt


@attrs.frozen
class Plan:
    """What pressing a button creates (TrueAI's classification)."""

    action: str
    result: Result
    modal: Modal | None = None
    """Always a modal (code 21) whatever the account says."""
    remixable: bool = False
    """Becomes a modal when remix applies (``enableRemix`` or a remix account)."""
    index: int | None = None
    """The 1-4 quadrant an upscale shows, or the prompt a PicReader picks."""


def _b(custom_id: str, label: str = "", emoji: str = "") -> Button:
    # TrueAI's CustomComponentModel field order: customId, emoji, label, style, type.
    return {"customId": custom_id, "emoji": emoji, "label": label, "style": 2, "type": 2}


def grid_buttons(h: str) -> list[Button]:
    """U1-U4, reroll, V1-V4: the QuickRouter sample's order."""
    return [
        *(_b(f"MJ::JOB::upsample::{i}::{h}", f"U{i}") for i in range(1, 5)),
        _b(f"MJ::JOB::reroll::0::{h}::SOLO", "", "🔄"),
        *(_b(f"MJ::JOB::variation::{i}::{h}", f"V{i}") for i in range(1, 5)),
    ]


def upscale_buttons(h: str, *, hd: bool = False) -> list[Button]:
    """The v7 components under an upscaled image (``CreateUpscaleButtons``' labels)."""
    upscales = (
        []
        if hd
        else [
            _b(f"MJ::JOB::upsample_v7_2x_subtle::1::{h}::SOLO", "Upscale (Subtle)", "upscale_1"),
            _b(
                f"MJ::JOB::upsample_v7_2x_creative::1::{h}::SOLO", "Upscale (Creative)", "upscale_1"
            ),
        ]
    )
    return [
        *upscales,
        _b(f"MJ::JOB::low_variation::1::{h}::SOLO", "Vary (Subtle)", "🪄"),
        _b(f"MJ::JOB::high_variation::1::{h}::SOLO", "Vary (Strong)", "🪄"),
        _b(f"MJ::Inpaint::1::{h}::SOLO", "Vary (Region)", "🖌️"),
        _b(f"MJ::Outpaint::50::1::{h}::SOLO", "Zoom Out 2x", "🔍"),
        _b(f"MJ::Outpaint::75::1::{h}::SOLO", "Zoom Out 1.5x", "🔍"),
        _b(f"MJ::CustomZoom::{h}", "Custom Zoom", "🔍"),
        _b(f"MJ::JOB::pan_left::1::{h}::SOLO", "", "⬅️"),
        _b(f"MJ::JOB::pan_right::1::{h}::SOLO", "", "➡️"),
        _b(f"MJ::JOB::pan_up::1::{h}::SOLO", "", "⬆️"),
        _b(f"MJ::JOB::pan_down::1::{h}::SOLO", "", "⬇️"),
        _b(f"MJ::JOB::animate_high::1::{h}::SOLO", "Animate (High motion)", "🎞️"),
        _b(f"MJ::JOB::animate_low::1::{h}::SOLO", "Animate (Low motion)", "🎞️"),
    ]


def describe_buttons() -> list[Button]:
    keycaps = ("1\ufe0f\u20e3", "2\ufe0f\u20e3", "3\ufe0f\u20e3", "4\ufe0f\u20e3")
    return [
        *(_b(f"MJ::Job::PicReader::{i}", "", keycaps[i - 1]) for i in range(1, 5)),
        _b("MJ::Picread::Retry", "", "🔄"),
        _b("MJ::Job::PicReader::all", "Imagine all", "🎉"),
    ]


def shorten_buttons() -> list[Button]:
    keycaps = ("1\ufe0f\u20e3", "2\ufe0f\u20e3", "3\ufe0f\u20e3", "4\ufe0f\u20e3", "5\ufe0f\u20e3")
    return [_b(f"MJ::Job::PromptAnalyzer::{i}", "", keycaps[i - 1]) for i in range(1, 6)]


def video_buttons(h: str) -> list[Button]:
    return [
        *(_b(f"MJ::JOB::video_virtual_upscale::{i}::{h}", f"U{i}") for i in range(1, 5)),
        _b(f"MJ::JOB::animate_high_extend::1::{h}", "Extend (High motion)", "🎞️"),
        _b(f"MJ::JOB::animate_low_extend::1::{h}", "Extend (Low motion)", "🎞️"),
        _b(f"MJ::JOB::reroll::0::{h}::SOLO", "", "🔄"),
    ]


def buttons_for(result: Result, h: str) -> list[Button]:
    """The buttons of a SUCCESS job whose result is ``result`` and messageHash ``h``."""
    if result is Result.GRID:
        return grid_buttons(h)
    if result is Result.UPSCALE:
        return upscale_buttons(h)
    if result is Result.UPSCALE_HD:
        return upscale_buttons(h, hd=True)
    if result is Result.DESCRIBE:
        return describe_buttons()
    if result is Result.SHORTEN:
        return shorten_buttons()
    if result is Result.VIDEO:
        return video_buttons(h)
    return []


#: Parent actions a reroll may repeat (TrueAI's switch); UPSCALE parents become IMAGINE.
REROLL_PARENTS = frozenset(
    {
        "IMAGINE",
        "VARIATION",
        "DESCRIBE",
        "BLEND",
        "PAN",
        "ZOOM",
        "SHORTEN",
        "VIDEO",
        "EDIT",
        "UPSCALE_HD",
        "RETEXTURE",
    }
)

_UPSCALE_RESULTS = {Result.GRID: Result.UPSCALE, Result.VIDEO: Result.VIDEO}


def _index(custom_id: str, prefix: str) -> int | None:
    rest = custom_id[len(prefix) :].split("::", 1)[0]
    return int(rest) if rest.isdigit() and int(rest) > 0 else None


def plan_action(custom_id: str, parent_action: str, parent_result: Result) -> Plan | str:
    """TrueAI's reading of ``custom_id``: a Plan, or the code-4 description refusing it."""
    c = custom_id
    if c.startswith("MJ::JOB::upsample::"):
        index = _index(c, "MJ::JOB::upsample::")
        return Plan("UPSCALE", _UPSCALE_RESULTS.get(parent_result, Result.UPSCALE), index=index)
    if c.startswith("MJ::JOB::video_virtual_upscale"):
        return Plan("UPSCALE", Result.UPSCALE, index=_index(c, "MJ::JOB::video_virtual_upscale::"))
    if c.startswith("MJ::JOB::variation::"):
        index = _index(c, "MJ::JOB::variation::")
        return Plan("VARIATION", Result.GRID, remixable=True, index=index)
    if c.startswith("MJ::JOB::reroll::"):
        if parent_action == "UPSCALE":
            return Plan("IMAGINE", Result.GRID, remixable=True)
        if parent_action not in REROLL_PARENTS:
            return "该任务不支持重新生成"
        result = parent_result if parent_result is not Result.UPSCALE_HD else Result.UPSCALE_HD
        return Plan(parent_action, result, remixable=True)
    if c.startswith(("MJ::JOB::high_variation::", "MJ::JOB::low_variation::")):
        return Plan("VARIATION", Result.GRID, remixable=True)
    if c.startswith("MJ::Outpaint::"):
        return Plan("ZOOM", Result.GRID)
    if c.startswith("MJ::JOB::pan_"):
        return Plan("PAN", Result.GRID, remixable=True)
    if c.startswith("MJ::JOB::upsample_"):
        return Plan("UPSCALE_HD", Result.UPSCALE_HD)
    if c.startswith("MJ::CustomZoom::"):
        return Plan("ZOOM", Result.GRID, modal=Modal.ZOOM)
    if c.startswith("MJ::Inpaint::"):
        return Plan("VARIATION", Result.GRID, modal=Modal.INPAINT)
    if c.startswith("MJ::JOB::animate_"):
        return Plan("VIDEO", Result.VIDEO, remixable=True)
    if "MJ::Picread::Retry" in c:
        return Plan("DESCRIBE", Result.DESCRIBE)
    if c.startswith("MJ::Job::PicReader"):
        index = None if c.endswith("::all") else _index(c, "MJ::Job::PicReader::")
        return Plan("IMAGINE", Result.GRID, modal=Modal.PROMPT, index=index)
    return "未知的 Action 类型"


class RelayPanic(Exception):
    """new-api indexes past the end of ``strings.Split(customId, "::")`` and panics."""


@attrs.frozen
class RelayAction:
    """new-api's classification: the relay-side action and the index it parsed."""

    action: str  # "" when a *variation* customId matches no branch (new-api leaves it unset)
    index: int


def relay_action(custom_id: str) -> RelayAction | str:
    """new-api's reading of ``custom_id``: a RelayAction or its error description.

    Raises RelayPanic where the Go code would index out of range.
    """
    if custom_id == "":
        return "custom_id_is_required"
    splits = custom_id.split("::")

    def part(i: int) -> str:
        if i >= len(splits):
            raise RelayPanic(f"runtime error: index out of range [{i}] with length {len(splits)}")
        return splits[i]

    action = part(2) if part(1) == "JOB" else part(1)
    if action == "":
        return "unknown_action"
    if "upsample" in action:
        index = part(3)
        return RelayAction("UPSCALE", int(index)) if _go_atoi(index) else "index_parse_failed"
    if "variation" in action:
        if action == "variation":
            index = part(3)
            return RelayAction("VARIATION", int(index)) if _go_atoi(index) else "index_parse_failed"
        named = {"low_variation": "LOW_VARIATION", "high_variation": "HIGH_VARIATION"}
        return RelayAction(named.get(action, ""), 1)
    if "pan" in action:
        return RelayAction("PAN", 1)
    if "reroll" in action:
        return RelayAction("REROLL", 1)
    fixed = {"Outpaint": "ZOOM", "CustomZoom": "CUSTOM_ZOOM", "Inpaint": "INPAINT"}
    if action in fixed:
        return RelayAction(fixed[action], 1)
    return "unknown_action:" + custom_id


def _go_atoi(text: str) -> bool:
    body = text[1:] if text[:1] in "+-" else text
    return body.isascii() and body.isdigit()
