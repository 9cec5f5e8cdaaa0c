"""Buttons a finished task shows, and what pressing each one does (protocol.md §5)."""

from __future__ import annotations

import enum

import attrs

from .._models import Button, TaskAction

__all__ = (
    "GRID_ACTIONS",
    "Modal",
    "Plan",
    "Result",
    "buttons_for",
    "plan_action",
)

#: Actions whose result is a 2x2 grid with U1-U4, reroll and V1-V4.
GRID_ACTIONS = frozenset(
    {
        TaskAction.IMAGINE,
        TaskAction.VARIATION,
        TaskAction.REROLL,
        TaskAction.BLEND,
        TaskAction.ZOOM,
        TaskAction.PAN,
    }
)


class Result(enum.Enum):
    """What a finished task shows."""

    GRID = "grid"  # four images, U/V buttons
    UPSCALE = "upscale"  # one image with vary/zoom/pan buttons
    UPSCALE_HD = "upscale_hd"  # one image, the same buttons without upscale variants
    DESCRIBE = "describe"  # four prompts, PicReader buttons
    SHORTEN = "shorten"  # five shortened prompts, PromptAnalyzer buttons


class Modal(enum.Enum):
    """Which ``/submit/modal`` a MODAL task waits for."""

    INPAINT = "inpaint"  # needs maskBase64
    ZOOM = "zoom"  # needs a prompt with --zoom 1..2
    PROMPT = "prompt"  # describe/shorten follow-up: needs a prompt


@attrs.frozen
class Plan:
    """What pressing a button creates."""

    action: TaskAction
    result: Result
    modal: Modal | None = None
    #: The 1-4 quadrant an upscale shows, or the 1-5 prompt a PicReader/PromptAnalyzer uses.
    index: int | None = None


def _b(custom_id: str, label: str = "", emoji: str = "") -> Button:
    return Button(custom_id=custom_id, emoji=emoji, label=label, type=2, style=2)


def grid_buttons(h: str) -> tuple[Button, ...]:
    """U1-U4, 🔄, V1-V4, exactly as the relay's sample shows them."""
    return (
        *(_b(f"MJ::JOB::upsample::{i}::{h}", f"U{i}") for i in range(1, 5)),
        _b(f"MJ::JOB::reroll::0::{h}::SOLO", "", "🔄"),
        *(_b(f"MJ::JOB::variation::{i}::{h}", f"V{i}") for i in range(1, 5)),
    )


def upscale_buttons(h: str, *, hd: bool = False) -> tuple[Button, ...]:
    """The buttons under an upscaled image (v6 style)."""
    upscales = (
        ()
        if hd
        else (
            _b(f"MJ::JOB::upsample_v6_2x_subtle::1::{h}::SOLO", "Upscale (Subtle)"),
            _b(f"MJ::JOB::upsample_v6_2x_creative::1::{h}::SOLO", "Upscale (Creative)"),
        )
    )
    return (
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
    )


def describe_buttons() -> tuple[Button, ...]:
    return (
        *(_b(f"MJ::Job::PicReader::{i}", str(i)) for i in range(1, 5)),
        _b("MJ::Picread::Retry", "", "🔄"),
    )


def shorten_buttons() -> tuple[Button, ...]:
    return tuple(_b(f"MJ::Job::PromptAnalyzer::{i}", str(i)) for i in range(1, 6))


def buttons_for(result: Result, h: str) -> tuple[Button, ...]:
    """The buttons of a SUCCESS task whose result is ``result`` and messageHash ``h``."""
    if result is Result.GRID:
        return grid_buttons(h)
    if result is Result.UPSCALE:
        return upscale_buttons(h)
    if result is Result.UPSCALE_HD:
        return upscale_buttons(h, hd=True)
    if result is Result.DESCRIBE:
        return describe_buttons()
    return shorten_buttons()


def plan_action(custom_id: str, parent_action: TaskAction | None) -> Plan | None:
    """What ``custom_id`` creates, or None for a customId the relay does not know."""
    parts = custom_id.split("::")
    if len(parts) < 2 or parts[0] != "MJ":
        return None
    if parts[1] == "JOB" and len(parts) >= 4:
        kind, n = parts[2], parts[3]
        if kind == "upsample" and n in ("1", "2", "3", "4"):
            return Plan(TaskAction.UPSCALE, Result.UPSCALE, index=int(n))
        if kind.startswith("upsample_v"):
            return Plan(TaskAction.UPSCALE_HD, Result.UPSCALE_HD)
        if kind == "variation" and n in ("1", "2", "3", "4"):
            return Plan(TaskAction.VARIATION, Result.GRID, index=int(n))
        if kind in ("low_variation", "high_variation"):
            return Plan(TaskAction.VARIATION, Result.GRID)
        if kind == "reroll":
            same = parent_action if parent_action in GRID_ACTIONS else TaskAction.IMAGINE
            return Plan(same or TaskAction.IMAGINE, Result.GRID)
        if kind in ("pan_left", "pan_right", "pan_up", "pan_down"):
            return Plan(TaskAction.PAN, Result.GRID)
        return None
    if parts[1] == "Inpaint":
        return Plan(TaskAction.VARIATION, Result.GRID, modal=Modal.INPAINT)
    if parts[1] == "Outpaint":
        return Plan(TaskAction.ZOOM, Result.GRID)
    if parts[1] == "CustomZoom":
        return Plan(TaskAction.ZOOM, Result.GRID, modal=Modal.ZOOM)
    if parts[1] == "Job" and len(parts) == 4 and parts[3].isdigit():
        if parts[2] in ("PicReader", "PromptAnalyzer"):
            return Plan(TaskAction.IMAGINE, Result.GRID, modal=Modal.PROMPT, index=int(parts[3]))
        return None
    if parts[1] == "Picread" and parts[2:] == ["Retry"]:
        return Plan(TaskAction.DESCRIBE, Result.DESCRIBE)
    return None
