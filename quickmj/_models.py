"""Wire structures: frozen, slotted attrs classes with snake_case fields.

The models know nothing about JSON: camelCase names and type coercion live in
``_converter.py``. Enums are forward compatible: a value this version does not know (a new
status or action from a newer relay) becomes a pseudo-member whose ``.value`` is the raw
string and whose ``is_known`` is False, rather than an error or a wrong known value.
"""

from __future__ import annotations

import datetime as dt
import enum
import operator
import re
import typing
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final

import attrs

from .errors import ButtonNotFoundError

__all__ = (
    "FAILED_STATUSES",
    "REQUEST_CLASSES",
    "SNAKE_WIRE",
    "SUBMIT_OK",
    "TERMINAL_STATUSES",
    "ActionRequest",
    "BillingSubscription",
    "BillingUsage",
    "BlendDimensions",
    "BlendRequest",
    "BotType",
    "Button",
    "ChangeRequest",
    "DescribeRequest",
    "EditsRequest",
    "ImagineRequest",
    "ListByIdsRequest",
    "MediaUrl",
    "ModalRequest",
    "ShortenRequest",
    "SimpleChangeRequest",
    "SiteStatus",
    "SubmitRequest",
    "SubmitResult",
    "SwapFaceRequest",
    "Task",
    "TaskAction",
    "TaskStatus",
    "TokenUsage",
    "UploadRequest",
    "VideoRequest",
)


class _OpenEnum(str, enum.Enum):
    """A str enum that keeps unknown values as ``UNKNOWN`` pseudo-members."""

    @classmethod
    def _missing_(cls, value: object) -> Any:
        if not isinstance(value, str):
            return None
        # Not registered in _value2member_map_: unknown values cannot grow the enum.
        member = str.__new__(cls, value)
        member._name_ = "UNKNOWN"
        member._value_ = value
        return member

    @property
    def is_known(self) -> bool:
        """False for a value this version of quickmj does not know."""
        return self._name_ != "UNKNOWN"

    def __str__(self) -> str:
        return str(self.value)


#: Raw statuses of a job that ended without its result.
FAILED_STATUSES: Final = frozenset({"FAILURE", "CANCEL"})
#: Raw statuses after which a task never changes again (``_protocol`` rules read them too).
TERMINAL_STATUSES: Final = FAILED_STATUSES | {"SUCCESS"}


class TaskStatus(_OpenEnum):
    """Status of a task. Unknown values are kept (``TaskStatus("PAUSED").is_known is False``)."""

    NOT_START = "NOT_START"
    SUBMITTED = "SUBMITTED"
    MODAL = "MODAL"
    IN_PROGRESS = "IN_PROGRESS"
    FAILURE = "FAILURE"
    SUCCESS = "SUCCESS"
    CANCEL = "CANCEL"

    @property
    def is_terminal(self) -> bool:
        """SUCCESS, FAILURE and CANCEL: the task will not change any more."""
        return self in TERMINAL_STATUSES  # a str enum: hashed and compared as its value


class TaskAction(_OpenEnum):
    """What a task does. Relays add actions over time; unknown ones are kept."""

    IMAGINE = "IMAGINE"
    UPSCALE = "UPSCALE"
    VARIATION = "VARIATION"
    HIGH_VARIATION = "HIGH_VARIATION"
    LOW_VARIATION = "LOW_VARIATION"
    REROLL = "REROLL"
    ZOOM = "ZOOM"
    CUSTOM_ZOOM = "CUSTOM_ZOOM"
    PAN = "PAN"
    INPAINT = "INPAINT"
    OUTPAINT = "OUTPAINT"
    MODAL = "MODAL"
    DESCRIBE = "DESCRIBE"
    BLEND = "BLEND"
    SHORTEN = "SHORTEN"
    SHOW = "SHOW"
    ACTION = "ACTION"
    PIC_READER = "PIC_READER"
    SWAP_FACE = "SWAP_FACE"
    SWAP_VIDEO_FACE = "SWAP_VIDEO_FACE"
    VIDEO = "VIDEO"
    VIDEO_EXTEND = "VIDEO_EXTEND"
    EDIT = "EDIT"
    EDITS = "EDITS"
    RETEXTURE = "RETEXTURE"
    UPSCALE_HD = "UPSCALE_HD"
    UPLOAD = "UPLOAD"


class BotType(_OpenEnum):
    """Which Discord bot runs the job."""

    MID_JOURNEY = "MID_JOURNEY"
    NIJI_JOURNEY = "NIJI_JOURNEY"


class BlendDimensions(_OpenEnum):
    """Aspect ratio of a blend: PORTRAIT 2:3, SQUARE 1:1, LANDSCAPE 3:2."""

    PORTRAIT = "PORTRAIT"
    SQUARE = "SQUARE"
    LANDSCAPE = "LANDSCAPE"


# Button kinds whose customId carries a meaningful 1-4 position ("U2", "V3", ...).
_INDEXED_KINDS = frozenset({"upsample", "variation", "video_virtual_upscale", "PicReader"})
# Buttons that always open a modal (protocol.md §5): the action answers code 21.
_MODAL_KINDS = frozenset({"CustomZoom", "Inpaint", "PicReader", "PromptAnalyzer"})


@attrs.frozen
class Button:
    """A button of a finished task, pressed with ``AsyncClient.action``."""

    custom_id: str
    """What pressing it sends (``MJ::JOB::upsample::1::<hash>``): pass the button, or this,
    to ``AsyncClient.action``."""
    emoji: str = ""
    """The emoji shown on it (``"🔄"``), or ``""``."""
    label: str = ""
    """The text shown on it (``"U1"``, ``"V2"``), or ``""``."""
    type: int = 2
    """The Discord component type (2: a button)."""
    style: int = 2
    """The Discord button style (1 primary/blue, 2 secondary/grey, ...)."""

    @property
    def kind(self) -> str:
        """The action name inside ``customId``: ``upsample``, ``variation``, ``reroll``,
        ``pan_left``, ``Outpaint``, ``CustomZoom``, ``Inpaint``, ... (``""`` if unparsable)."""
        parts = self.custom_id.split("::")
        if len(parts) < 2 or parts[0] != "MJ":
            return ""
        if parts[1] in ("JOB", "Job") and len(parts) > 2:
            return parts[2]
        return parts[1]

    @property
    def index(self) -> int | None:
        """The image position 1-4 for U/V-style buttons, else None."""
        parts = self.custom_id.split("::")
        if self.kind in _INDEXED_KINDS and len(parts) > 3 and parts[3].isdecimal():
            n = int(parts[3])
            return n if 1 <= n <= 4 else None
        return None

    @property
    def always_needs_modal(self) -> bool:
        """True for buttons whose action always waits for ``modal`` (custom zoom, vary region)."""
        return self.kind in _MODAL_KINDS

    @property
    def display(self) -> str:
        """The label, or the emoji when the label is empty (the reroll button is ``🔄``)."""
        return self.label or self.emoji or self.custom_id


@attrs.frozen
class MediaUrl:
    """One of several result files (``imageUrls`` / ``videoUrls`` on relays that send them)."""

    url: str
    """The file's address."""
    thumbnail: str | None = None
    """A smaller preview's address, when the relay sends one."""


def _ms_to_datetime(ms: int | None) -> dt.datetime | None:
    if not ms:
        return None
    try:
        return dt.datetime.fromtimestamp(ms / 1000, tz=dt.timezone.utc)
    except (ValueError, OverflowError, OSError):
        return None  # a timestamp no calendar can show: treat it as absent


_PERCENT = re.compile(r"^\s*(\d{1,3})(?:\.\d+)?\s*%?\s*$")


class Lazy:
    """Stands in a Task's ``buttons``/``image_urls``/``video_urls`` slot until first read:
    the tuple is then built from the task's own JSON (``raw[key]``) and replaces it.

    One shared instance per field (no object per task: a finished task read costs an
    allocation less per list, and the collector has fewer objects to walk). The
    converter sets ``make`` (it builds model objects; this module cannot import it).
    """

    __slots__ = ("key", "make", "name")

    def __init__(self, key: str, name: str) -> None:
        self.key = key
        self.name = name
        self.make: Any = None

    def __reduce__(self) -> str:
        return self.name  # pickled by reference: the same shared instance comes back

    def __repr__(self) -> str:
        return f"<not built yet: {self.key}>"


LAZY_BUTTONS = Lazy("buttons", "LAZY_BUTTONS")
LAZY_IMAGE_URLS = Lazy("imageUrls", "LAZY_IMAGE_URLS")
LAZY_VIDEO_URLS = Lazy("videoUrls", "LAZY_VIDEO_URLS")


# A plain dict (never mutated: `raw` hands out read-only views) so a Task pickles.
_NO_JSON: Mapping[str, Any] = {}


@attrs.frozen(repr=False, eq=False)  # __eq__/__hash__ below
class Task:
    """A Midjourney job as the relay reports it (fetch, list-by-condition, notifyHook).

    ``buttons``, ``image_urls`` and ``video_urls`` are built from the relay's JSON when
    first used (most reads of a task never look at them). Their entries are type-checked
    when the task is read, so a malformed one raises MalformedResponseError, naming the
    field, there and then, never later at the attribute.
    """

    id: str
    """The task id the relay gave at submit."""
    status: TaskStatus = TaskStatus.NOT_START
    """Where the task stands (NOT_START, SUBMITTED, MODAL, IN_PROGRESS, SUCCESS, FAILURE,
    CANCEL); a status quickmj does not know is kept as sent."""
    action: TaskAction | None = None
    """What kind of job it is (IMAGINE, UPSCALE, VARIATION, ...); None if the relay sent
    none."""
    progress: str | None = None
    """The relay's progress text (``"46%"``); ``progress_percent`` reads it as a number."""
    prompt: str | None = None
    """The prompt as submitted."""
    prompt_en: str | None = None
    """The prompt as sent to Midjourney (translated to English, links and flags added)."""
    description: str | None = None
    """The relay's one-line description (``"Submit success"``, ``"/imagine a cat"``)."""
    state: str | None = None
    """The ``state`` string given at submit, handed back unchanged."""
    custom_id: str | None = None
    """The button's ``customId`` an action task was created from (new-api and QuickRouter
    send it)."""
    bot_type: str | None = None
    """``MID_JOURNEY`` or ``NIJI_JOURNEY`` (``INSIGHT_FACE`` for a face swap), when sent."""
    submit_time: int | None = None
    """When the relay accepted the submit, in Unix milliseconds (``submitted_at`` as a
    datetime)."""
    start_time: int | None = None
    """When the job started running, in Unix milliseconds (``started_at``)."""
    finish_time: int | None = None
    """When the job ended, in Unix milliseconds (``finished_at``)."""
    image_url: str | None = None
    """The result image (a grid for imagine); None until the task has one."""
    _image_urls: tuple[MediaUrl, ...] = attrs.field(default=(), alias="image_urls", hash=False)
    video_url: str | None = None
    """The result video, for video actions."""
    _video_urls: tuple[MediaUrl, ...] = attrs.field(default=(), alias="video_urls", hash=False)
    fail_reason: str | None = None
    """Why the task failed, in the relay's words (None or ``""`` otherwise)."""
    _buttons: tuple[Button, ...] = attrs.field(default=(), alias="buttons", hash=False)
    mask_base64: str | None = None
    """The mask a vary-region (inpaint) task was given, as the relay echoes it."""
    parent_id: str | None = None
    """The task whose button created this one (None for a new prompt)."""
    seed: str | None = None
    """The job's Midjourney seed, on relays that report it."""
    properties: dict[str, Any] = attrs.field(factory=dict, hash=False)
    """The relay's ``properties`` object (``finalPrompt``, ...), as sent."""
    _raw: Mapping[str, Any] = attrs.field(default=_NO_JSON, alias="raw", eq=False, hash=False)

    @property
    def raw(self) -> Mapping[str, Any]:
        """The JSON object exactly as the relay sent it, read-only (empty for a Task built
        by hand). Not part of equality."""
        return MappingProxyType(self._raw) if type(self._raw) is dict else self._raw

    @property
    def buttons(self) -> tuple[Button, ...]:
        """The buttons of a finished task (press one with ``AsyncClient.action``)."""
        return self._resolve("_buttons")

    @property
    def image_urls(self) -> tuple[MediaUrl, ...]:
        """The separate result images, on relays that send them (TrueAI)."""
        return self._resolve("_image_urls")

    @property
    def video_urls(self) -> tuple[MediaUrl, ...]:
        """The result videos, on relays that send them."""
        return self._resolve("_video_urls")

    def _resolve(self, name: str) -> tuple[Any, ...]:
        value = getattr(self, name)
        if type(value) is not Lazy:
            return value  # type: ignore[no-any-return]
        # The converter put Lazy here after checking raw[key]'s entries, so building
        # cannot fail (a malformed entry was reported when the task was read).
        resolved = value.make(self._raw[value.key])
        object.__setattr__(self, name, resolved)  # frozen: set once, as attrs' own init does
        return resolved  # type: ignore[no-any-return]

    def _resolve_all(self) -> None:
        """Build every lazy list now (before anything reads the slots directly)."""
        self._resolve("_buttons")
        self._resolve("_image_urls")
        self._resolve("_video_urls")

    # Equality and hash by hand (attrs' generated ones see only a slot's value, and a Lazy
    # slot needs its task's JSON): the same fields as before, lists compared as tuples.
    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return _TASK_EQ_KEY(self) == _TASK_EQ_KEY(other)

    def __ne__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return _TASK_EQ_KEY(self) != _TASK_EQ_KEY(other)

    def __hash__(self) -> int:
        return hash(_TASK_HASH_KEY(self))

    def __repr__(self) -> str:
        names = (f.alias or f.name for f in _TASK_FIELDS)
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in names if name != "raw")
        return f"Task({shown})"

    @property
    def extra(self) -> dict[str, Any]:
        """Top-level fields quickmj has no attribute for (``thumbnailUrl``, ``jobId``,
        ``mode``, ``useTime``, ... on TrueAI), as the relay sent them."""
        return {k: v for k, v in self._raw.items() if k not in _TASK_WIRE_FIELDS}

    @property
    def is_done(self) -> bool:
        """The task reached a terminal status (SUCCESS, FAILURE or CANCEL)."""
        return self.status.is_terminal

    @property
    def is_success(self) -> bool:
        """The task ended in SUCCESS."""
        return self.status is TaskStatus.SUCCESS

    @property
    def is_failed(self) -> bool:
        """FAILURE or CANCEL."""
        return self.status in FAILED_STATUSES

    @property
    def needs_modal(self) -> bool:
        """The task waits in MODAL for ``AsyncClient.modal`` (custom zoom, vary region, remix)."""
        return self.status is TaskStatus.MODAL

    @property
    def progress_percent(self) -> int | None:
        """Progress as an int 0-100 (``"46%"`` -> 46); None when the relay gave none."""
        if self.progress:
            m = _PERCENT.match(self.progress)
            if m:
                return min(int(m.group(1)), 100)
        return 100 if self.status is TaskStatus.SUCCESS else None

    @property
    def submitted_at(self) -> dt.datetime | None:
        """``submitTime`` as an aware UTC datetime (None when absent or 0)."""
        return _ms_to_datetime(self.submit_time)

    @property
    def started_at(self) -> dt.datetime | None:
        """``startTime`` as an aware UTC datetime (None when absent or 0)."""
        return _ms_to_datetime(self.start_time)

    @property
    def finished_at(self) -> dt.datetime | None:
        """``finishTime`` as an aware UTC datetime (None when absent or 0)."""
        return _ms_to_datetime(self.finish_time)

    @property
    def final_prompt(self) -> str | None:
        """The prompt as Midjourney ran it (``properties.finalPrompt``), when given."""
        value = self.properties.get("finalPrompt")
        return value if isinstance(value, str) else None

    def button(self, wanted: str) -> Button:
        """Find a button by label (``"U2"``), emoji (``"🔄"``) or exact customId.

        Labels match case-insensitively; ``"U1"``-``"U4"`` and ``"V1"``-``"V4"`` also match
        by customId when a relay sends buttons without labels.

        Args:
            wanted: a label, an emoji or a customId.

        Returns:
            The first matching button (pass it to ``AsyncClient.action``).

        Raises:
            ButtonNotFoundError: no button matches (``.available`` lists the labels).
        """
        key = wanted.strip()
        for b in self.buttons:
            if key == b.custom_id or (b.label and key.casefold() == b.label.casefold()):
                return b
        for b in self.buttons:
            if b.emoji and key == b.emoji:
                return b
        m = re.fullmatch(r"([UuVv])([1-4])", key)
        if m:
            kind = "upsample" if m.group(1) in "Uu" else "variation"
            for b in self.buttons:
                if b.kind == kind and b.index == int(m.group(2)):
                    return b
        raise ButtonNotFoundError(wanted, self.id, [b.display for b in self.buttons])


#: The camelCase keys Task has attributes for (``Task.extra`` holds the others).
_TASK_WIRE_FIELDS = frozenset(
    {
        "id", "status", "action", "progress", "prompt", "promptEn", "description", "state",
        "customId", "botType", "submitTime", "startTime", "finishTime", "imageUrl",
        "imageUrls", "videoUrl", "videoUrls", "failReason", "buttons", "maskBase64",
        "parentId", "seed", "properties",
    }
)  # fmt: skip

#: Relay codes that created a task: 1 accepted, 21 waits for a modal, 22 queued.
SUBMIT_OK: Final = frozenset({1, 21, 22})


@attrs.frozen
class SubmitResult:
    """The relay's answer to a submit (and to image-seed): ``{code, description, result}``."""

    code: int
    """The relay's code: 1 accepted, 21 waits for a modal, 22 queued; anything else refused."""
    description: str = ""
    """The relay's words about it (``"Submit success"``, ``"queue full"``...)."""
    result: str | None = None
    """The new task's id (``task_id``), or None when nothing was created."""
    properties: dict[str, Any] = attrs.field(factory=dict, hash=False)
    """The relay's ``properties`` object (``discordInstanceId``, ...), as sent."""

    @property
    def task_id(self) -> str:
        """The new task's id (for code 21, the id of the MODAL task to pass to ``modal``)."""
        return self.result or ""

    @property
    def ok(self) -> bool:
        """Codes 1, 21 and 22 create a task; anything else is a rejection."""
        return self.code in SUBMIT_OK

    @property
    def needs_modal(self) -> bool:
        """Code 21: the new task waits in MODAL until you call ``modal(result.task_id, ...)``."""
        return self.code == 21

    @property
    def queued(self) -> bool:
        """Code 22: accepted, but queued behind other jobs.

        new-api relays (QuickRouter) rewrite 22 to 1, so there a queued job reads False;
        ``AsyncJob.queued`` says None ("unknown") in that case.
        """
        return self.code == 22

    @property
    def queue_position(self) -> int | None:
        """For code 22, how many jobs are ahead (``properties.numberOfQueues``)."""
        value = self.properties.get("numberOfQueues")
        if isinstance(value, bool):
            return None
        if isinstance(value, int):
            return value
        if isinstance(value, str) and value.isdecimal():
            return int(value)
        return None


@attrs.frozen
class FailureBody:
    """``{"success": false, "code": -1, "message": ...}``, sent by some relays on errors."""

    success: bool
    code: int = -1
    message: str = ""


# ---- requests (None fields are omitted from the JSON body) ----
# Wire structures only: users call AsyncClient methods, which build these.


@attrs.frozen
class ImagineRequest:
    """Body of ``POST /submit/imagine``."""

    prompt: str
    base64_array: tuple[str, ...] | None = None
    bot_type: BotType | None = None
    notify_hook: str | None = None
    state: str | None = None


@attrs.frozen
class BlendRequest:
    """Body of ``POST /submit/blend``."""

    base64_array: tuple[str, ...]
    dimensions: BlendDimensions | None = None
    bot_type: BotType | None = None
    notify_hook: str | None = None
    state: str | None = None


@attrs.frozen
class DescribeRequest:
    """Body of ``POST /submit/describe``."""

    base64: str
    bot_type: BotType | None = None
    notify_hook: str | None = None
    state: str | None = None


@attrs.frozen
class ShortenRequest:
    """Body of ``POST /submit/shorten``."""

    prompt: str
    bot_type: BotType | None = None
    notify_hook: str | None = None
    state: str | None = None


@attrs.frozen
class ActionRequest:
    """Body of ``POST /submit/action``."""

    task_id: str
    custom_id: str
    # QuickRouter documents this as required; False = only the task's own account.
    choose_same_channel: bool = False
    notify_hook: str | None = None
    state: str | None = None


@attrs.frozen
class ModalRequest:
    """Body of ``POST /submit/modal``."""

    task_id: str
    prompt: str | None = None
    mask_base64: str | None = None
    notify_hook: str | None = None
    state: str | None = None


@attrs.frozen
class ChangeRequest:
    """Body of ``POST /submit/change``: ``action`` UPSCALE, VARIATION or REROLL."""

    task_id: str
    action: str
    index: int | None = None
    notify_hook: str | None = None
    state: str | None = None


@attrs.frozen
class SimpleChangeRequest:
    """Body of ``POST /submit/simple-change``: ``content`` is ``"<task id> U1"``."""

    content: str
    notify_hook: str | None = None
    state: str | None = None


@attrs.frozen
class VideoRequest:
    """Body of ``POST /submit/video`` (TrueAI and newer new-api)."""

    prompt: str
    image: str | None = None
    end_image: str | None = None
    motion: str | None = None
    loop: bool | None = None
    action: str | None = None
    index: int | None = None
    task_id: str | None = None
    video_type: str | None = None
    batch_size: int | None = None
    notify_hook: str | None = None
    state: str | None = None


@attrs.frozen
class EditsRequest:
    """Body of ``POST /submit/edits`` (TrueAI and newer new-api)."""

    prompt: str
    image: str
    notify_hook: str | None = None
    state: str | None = None


@attrs.frozen
class UploadRequest:
    """Body of ``POST /submit/upload-discord-images``: no task, the answer is URLs."""

    base64_array: tuple[str, ...]


@attrs.frozen
class SwapFaceRequest:
    """Body of ``POST /insight-face/swap``."""

    source_base64: str
    target_base64: str
    notify_hook: str | None = None
    state: str | None = None


@attrs.frozen
class ListByIdsRequest:
    """Body of ``POST /task/list-by-condition``."""

    ids: tuple[str, ...]


SubmitRequest = (
    ImagineRequest
    | BlendRequest
    | DescribeRequest
    | ShortenRequest
    | ActionRequest
    | ModalRequest
    | ChangeRequest
    | SimpleChangeRequest
    | VideoRequest
    | EditsRequest
    | SwapFaceRequest
)
REQUEST_CLASSES: tuple[type, ...] = (
    *typing.get_args(SubmitRequest),
    UploadRequest,
    ListByIdsRequest,
)


# Resolve the string annotations now, while this module is their namespace: the public
# classes report ``quickmj`` as their module later, and cattrs reads these types.
for _cls in (Button, MediaUrl, Task, SubmitResult, FailureBody, *REQUEST_CLASSES):
    attrs.resolve_types(_cls)

_TASK_FIELDS = attrs.fields(Task)
# What Task equality and hash compare (raw is in neither; lists, properties not hashed);
# the lists through their properties, so a Lazy slot is built first.
_TASK_EQ_KEY = operator.attrgetter(*(f.alias or f.name for f in _TASK_FIELDS if f.eq))
_TASK_HASH_KEY = operator.attrgetter(
    *(f.name for f in _TASK_FIELDS if f.eq and f.hash is not False)
)


# ---- new-api's billing routes (snake_case on the wire: see _converter.SNAKE_WIRE) ----


@attrs.frozen
class TokenUsage:
    """``data`` of new-api's ``GET /api/usage/token/`` (``controller.GetTokenUsage``), in
    raw quota units; ``expires_at`` is unix seconds, 0 for never."""

    object: str | None = None
    name: str | None = None
    total_granted: float | None = None
    total_used: float | None = None
    total_available: float | None = None
    unlimited_quota: bool | None = None
    expires_at: float | None = None


@attrs.frozen
class BillingSubscription:
    """new-api's ``GET /dashboard/billing/subscription`` (OpenAI-compatible): the key's
    total (left + used) in the site's display unit; ``access_until`` unix seconds or 0."""

    object: str | None = None
    hard_limit_usd: float | None = None
    soft_limit_usd: float | None = None
    access_until: float | None = None


@attrs.frozen
class BillingUsage:
    """new-api's ``GET /dashboard/billing/usage``: used, in display-unit cents (x 100)."""

    object: str | None = None
    total_usage: float | None = None


@attrs.frozen
class SiteStatus:
    """``data`` of new-api's public ``GET /api/status``: how the site counts money."""

    quota_per_unit: float | None = None
    quota_display_type: str | None = None
    usd_exchange_rate: float | None = None
    display_in_currency: bool | None = None


#: Wire classes whose JSON keys are the snake_case field names (new-api's Go structs).
SNAKE_WIRE: tuple[type, ...] = (TokenUsage, BillingSubscription, BillingUsage, SiteStatus)
for _cls in SNAKE_WIRE:
    attrs.resolve_types(_cls)
