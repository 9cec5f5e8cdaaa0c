"""The one cattrs converter that maps every wire structure to and from JSON.

Rules (registered once, at import):

- camelCase on the wire, snake_case in Python, for every attrs class;
- unknown JSON fields are ignored; missing optional fields take their defaults;
- ``null`` for a field with a default means the default (relays send ``"buttons": null``);
- ids and other strings accept JSON numbers (some relays send ids as numbers) but never
  objects, lists or booleans;
- enums keep unknown values (see ``_models._OpenEnum``); ``""`` for an optional enum is None;
- ``properties`` is kept whole, as a plain dict;
- request classes omit fields that are None;
- a ``Task`` keeps the JSON object it came from (``Task.raw``, hence ``Task.extra``).

``loads`` turns the relay's bytes into JSON data and repairs text that is not valid
Unicode (undecodable bytes, lone surrogates from ``\\ud800``-style escapes) into U+FFFD, so
such text never reaches SQLite, a file name or a terminal raw.

Any structuring problem becomes :class:`quickmj.MalformedResponseError` naming the field.
"""

from __future__ import annotations

import importlib
import json
import math
import re
import types
import typing
from collections.abc import Callable
from typing import Any, TypeVar

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

from . import _models as m
from .errors import MalformedResponseError

__all__ = (
    "as_id",
    "converter",
    "loads",
    "make_converter",
    "repair_text",
    "structure",
    "to_camel",
    "unstructure",
)

T = TypeVar("T")

_REQUEST_CLASSES: frozenset[type] = frozenset(m.REQUEST_CLASSES)

# A JSON escape that makes a *lone* surrogate: a high one (\ud800-\udbff) not followed by a
# low one, or a low one (\udc00-\udfff) not after a high one. Valid pairs (emoji, which
# .NET relays escape) are joined by json.loads; only bodies with a lone one need the
# (slower) repair walk.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD]([89a-fA-F])[0-9a-fA-F]{2}")
_HIGH_DIGITS = frozenset(b"89abAB")


def _has_lone_surrogate(body: bytes) -> bool:
    """Whether ``body`` escapes a surrogate that is not half of a valid pair."""
    pending_high = -1  # end offset of a high surrogate still waiting for its low half
    for found in _SURROGATE_ESCAPE.finditer(body):
        high = found.group(1)[0] in _HIGH_DIGITS
        if pending_high >= 0:
            if high or found.start() != pending_high:
                return True  # the previous high one was not followed by a low one
            pending_high = -1
            continue
        if not high:
            return True  # a low one without its high half
        pending_high = found.end()
    return pending_high >= 0


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def repair_text(text: str) -> str:
    """``text`` with lone surrogates replaced by U+FFFD (valid text is returned as is)."""
    return _LONE_SURROGATE.sub("\ufffd", text)


def _repair(data: Any) -> Any:
    if isinstance(data, str):
        return repair_text(data)
    if isinstance(data, list):
        return [_repair(v) for v in data]
    if isinstance(data, dict):
        return {repair_text(k): _repair(v) for k, v in data.items()}
    return data


def _find_orjson() -> Callable[[bytes], Any] | None:
    # The ``speed`` extra: the same answers, parsed in about 40 % of the time. Imported by
    # name so type checkers pass with and without orjson installed.
    try:
        module = importlib.import_module("orjson")
    except ImportError:  # pragma: no cover - depends on the environment
        return None
    found: Callable[[bytes], Any] = module.loads
    return found


_orjson_loads = _find_orjson()

# orjson reads integers beyond 64 bits as floats where json reads them exactly: a body
# with a run of 20 digits anywhere goes to json (a cheap byte scan, not a parse).
_DIGIT_MAP = bytes(1 if 0x30 <= i <= 0x39 else 0 for i in range(256))
_LONG_NUMBER = b"\x01" * 20


def loads(body: bytes, *, plain: bool = False) -> Any:
    """Parse a JSON answer; invalid UTF-8 and lone surrogates become U+FFFD.

    With orjson installed (``quickmj[speed]``) it parses first, and anything it refuses
    (NaN, lone surrogates, invalid UTF-8, absurd nesting) or could read differently
    (integers beyond 64 bits) is left to json, so the result is the same either way.
    ``plain``: the caller already knows ``body`` escapes no lone surrogate (see
    ``Secret.redact_answer``), so the look for one is skipped.
    Raises ValueError (or RecursionError for absurd nesting) for text that is not JSON.
    """
    if _orjson_loads is not None and _LONG_NUMBER not in body.translate(_DIGIT_MAP):
        try:
            return _orjson_loads(body)
        except ValueError:
            pass  # json decides (and repairs what it can)
    data = json.loads(body.decode("utf-8", "replace"))
    if not plain and b"\\u" in body and _has_lone_surrogate(body):
        data = _repair(data)
    return data


def as_id(value: Any) -> str | None:
    """A task id as a string: strings as they are, whole numbers as digits, else None.

    The one place ids are normalised (some relays send 16-digit ids as JSON numbers).
    """
    if type(value) is str:
        return value
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        # A 16-digit id that went through a float parser still reads as the same digits.
        return str(int(value))
    return None


def to_camel(name: str) -> str:
    """``mask_base64`` -> ``maskBase64`` (``_buttons``, a lazily built field, -> ``buttons``)."""
    head, *rest = name.lstrip("_").split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def _structure_str(value: Any, _: type) -> str:
    text = as_id(value)
    if text is None:
        shown = repr(value) if isinstance(value, bool) else type(value).__name__
        raise TypeError(f"expected a string, got {shown}")
    return text


def _structure_int(value: Any, _: type) -> int:
    if isinstance(value, bool):
        raise TypeError(f"expected an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    raise TypeError(f"expected an integer, got {type(value).__name__}")


def _structure_opt_str(value: Any, _: type) -> str | None:
    # Registered for ``str | None`` so generated hooks skip cattrs' generic Optional path.
    if value is None or type(value) is str:
        return value
    return _structure_str(value, str)


def _structure_opt_int(value: Any, _: type) -> int | None:
    if value is None or type(value) is int:
        return value
    return _structure_int(value, int)


def _structure_float(value: Any, _: type) -> float:
    # JSON numbers only: not booleans, not numeric strings, not NaN or infinity (a relay's
    # "1e999" or a Python-made NaN would poison every sum made from it).
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"expected a number, got {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number):
        raise TypeError(f"expected a finite number, got {value!r}")
    return number


def _structure_opt_float(value: Any, _: type) -> float | None:
    return None if value is None else _structure_float(value, float)


def _structure_bool(value: Any, _: type) -> bool:
    if isinstance(value, bool):
        return value
    raise TypeError(f"expected a boolean, got {type(value).__name__}")


def _structure_properties(value: Any, _: type) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, dict):
        return dict(value)
    raise TypeError(f"expected an object, got {type(value).__name__}")


def _structure_media(value: Any, _: type) -> m.MediaUrl:
    # imageUrls come as ["url", ...] on some relays and [{"url", "thumbnail"}] on others.
    if isinstance(value, str):
        return m.MediaUrl(url=value)
    if isinstance(value, dict):
        url = value.get("url")
        thumb = value.get("thumbnail")
        if isinstance(url, str) and (thumb is None or isinstance(thumb, str)):
            return m.MediaUrl(url=url, thumbnail=thumb)
    raise TypeError(f"expected a URL or {{url, thumbnail}}, got {type(value).__name__}")


def _make_enum_hook(cls: type[m._OpenEnum]) -> Callable[[Any, type], Any]:
    known = cls._value2member_map_

    def hook(value: Any, _: type) -> Any:
        member = known.get(value) if type(value) is str else None
        if member is not None:
            return member  # the common case, without EnumMeta.__call__
        if not isinstance(value, str):
            raise TypeError(f"expected a string for {cls.__name__}, got {type(value).__name__}")
        return cls(value)

    return hook


def _optional_inner(tp: Any) -> Any:
    """For ``X | None`` return X, else None."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0]
    return None


_MISSING = object()


def _drop_defaulted(value: dict[str, Any], cleanup: tuple[tuple[str, bool], ...]) -> dict[str, Any]:
    """A copy of ``value`` without null (or blank-enum) fields that have defaults."""
    out = dict(value)
    for key, blank_is_default in cleanup:
        v = out.get(key, _MISSING)
        if v is None or (blank_is_default and v == ""):
            del out[key]
    return out


def _is_enum(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, m._OpenEnum)


def _wire_name(field: attrs.Attribute[Any]) -> str:
    """A field's public name (its init alias: ``buttons`` for ``_buttons``)."""
    return field.alias or field.name


def _structure_attrs_factory(c: cattrs.Converter) -> Callable[[type], Any]:
    def factory(cls: type) -> Any:
        fields = [f for f in attrs.fields(cls) if _wire_name(f) != "raw"]
        overrides = {f.name: override(rename=to_camel(_wire_name(f))) for f in fields}
        keeps_raw = cls is m.Task
        # A strict converter (tests checking the shapes we know) takes the generated path.
        quick_path = keeps_raw and not getattr(c, "forbid_extra_keys", False)
        if keeps_raw:
            overrides["_raw"] = override(omit=True)
        inner: Callable[[Any, Any], Any] = make_dict_structure_fn(cls, c, **overrides)  # type: ignore[arg-type]
        # Fields whose null means "use the default" (relays send null for absent lists).
        defaulted = {
            to_camel(_wire_name(f))
            for f in fields
            if f.default is not attrs.NOTHING and _optional_inner(f.type) is None
        }
        # A blank enum ("status": "" in the relay's template sample) means "not given".
        optional_enums = {
            to_camel(_wire_name(f))
            for f in fields
            if f.default is not attrs.NOTHING and _is_enum(_optional_inner(f.type) or f.type)
        }

        cleanup = tuple((k, k in optional_enums) for k in sorted(defaulted | optional_enums))

        def structure(value: Any, _: type) -> Any:
            if type(value) is not dict:
                raise TypeError(
                    f"expected an object for {cls.__name__}, got {type(value).__name__}"
                )
            if quick_path:
                quick = fast_task(value)
                if quick is not None:
                    return quick
            source = value
            for key, blank_is_default in cleanup:
                v = value.get(key, _MISSING)
                if v is None or (blank_is_default and v == ""):
                    value = _drop_defaulted(value, cleanup)
                    break
            obj = inner(value, cls)
            if keeps_raw:
                # Frozen, so set once here: the source JSON, without a copy.
                object.__setattr__(obj, "_raw", source)
            return obj

        return structure

    return factory


def _unstructure_attrs_factory(c: cattrs.Converter) -> Callable[[type], Any]:
    def factory(cls: type) -> Any:
        overrides = {f.name: override(rename=to_camel(_wire_name(f))) for f in attrs.fields(cls)}
        if cls is m.Task:
            overrides["_raw"] = override(omit=True)
            for name in ("_buttons", "_image_urls", "_video_urls"):
                overrides[name] = override(
                    rename=to_camel(name), unstruct_hook=lambda v: [c.unstructure(x) for x in v]
                )
        inner: Callable[[Any], Any] = make_dict_unstructure_fn(cls, c, **overrides)  # type: ignore[arg-type]
        if cls is m.Task:

            def unstructure_task(obj: m.Task) -> dict[str, Any]:
                obj._resolve_all()  # the generated function reads the slots themselves
                return inner(obj)  # type: ignore[no-any-return]

            return unstructure_task
        if cls not in _REQUEST_CLASSES:
            return inner

        def unstructure(obj: Any) -> dict[str, Any]:
            return {k: v for k, v in inner(obj).items() if v is not None}

        return unstructure

    return factory


# ---- the fast path for the relay's common task shape ----
#
# Structuring a finished task (9 buttons, 4 image URLs) through the generated hooks costs
# several times json.loads itself; these hand-written readers take the common, well-typed
# shape in one pass and return None on anything unusual, so the generated hooks (with
# their field-naming errors and lenient coercions) still decide every odd case.

_STATUS_OF = m.TaskStatus._value2member_map_
_ACTION_OF = m.TaskAction._value2member_map_
_OPT_STR = (str, type(None))
_STR_TYPES = frozenset(_OPT_STR)
_INT_TYPES = frozenset((int, type(None)))


def _builder(cls: type[T]) -> Callable[..., T]:
    """A positional constructor for a frozen, slotted attrs class that sets each slot
    through its descriptor: about half the cost of the generated ``__init__``, for the
    objects the fast path has already checked (no defaults, no validators to run)."""
    names = [f.name for f in attrs.fields(cls)]  # type: ignore[arg-type]
    env = {f"_set_{n}": cls.__dict__[n].__set__ for n in names}
    env["_new"], env["_cls"] = object.__new__, cls
    body = "\n".join(f"    _set_{n}(obj, {n})" for n in names)
    code = f"def build({', '.join(names)}):\n    obj = _new(_cls)\n{body}\n    return obj\n"
    exec(code, env)  # the same technique attrs uses for its own generated methods
    return env["build"]  # type: ignore[no-any-return]


_new_button = _builder(m.Button)
_new_media = _builder(m.MediaUrl)


def _buttons_of(raw: list[Any]) -> tuple[m.Button, ...]:
    """Build a task's buttons from the relay's list (when first read)."""
    new = _new_button
    out = []
    for b in raw:
        if type(b) is not dict:
            return _strict(raw, tuple[m.Button, ...], "Task.buttons")  # type: ignore[no-any-return]
        get = b.get
        custom_id, emoji, label, kind, style = (
            get("customId"), get("emoji"), get("label"), get("type"), get("style")
        )  # fmt: skip
        emoji = "" if emoji is None else emoji
        label = "" if label is None else label
        kind = 2 if kind is None else kind
        style = 2 if style is None else style
        if (
            type(custom_id) is not str
            or type(emoji) is not str
            or type(label) is not str
            or type(kind) is not int
            or type(style) is not int
        ):
            return _strict(raw, tuple[m.Button, ...], "Task.buttons")  # type: ignore[no-any-return]
        out.append(new(custom_id, emoji, label, kind, style))
    return tuple(out)


def _media_of(raw: list[Any], what: str = "Task.imageUrls") -> tuple[m.MediaUrl, ...]:
    """Build a task's image or video URLs from the relay's list (when first read)."""
    new = _new_media
    out = []
    for item in raw:
        if type(item) is str:
            out.append(new(item, None))
            continue
        url = item.get("url") if type(item) is dict else None
        thumb = item.get("thumbnail") if type(item) is dict else None
        if type(url) is not str or type(thumb) not in _OPT_STR:
            return _strict(raw, tuple[m.MediaUrl, ...], what)  # type: ignore[no-any-return]
        out.append(new(url, thumb))
    return tuple(out)


def _videos_of(raw: list[Any]) -> tuple[m.MediaUrl, ...]:
    return _media_of(raw, "Task.videoUrls")


def _strict(raw: list[Any], cls: Any, what: str) -> Any:
    """The generated hooks decide an unusual list (lenient coercions, named errors)."""
    return structure(raw, cls, what=what)


_OPT_INT = (int, type(None))


def _plain_buttons(raw: list[Any]) -> bool:
    """Every entry has the usual types, so building them later cannot fail."""
    for b in raw:
        if type(b) is not dict:
            return False
        get = b.get
        if (
            type(get("customId")) is not str
            or type(get("label")) not in _OPT_STR
            or type(get("emoji")) not in _OPT_STR
            or type(get("type")) not in _OPT_INT
            or type(get("style")) not in _OPT_INT
        ):
            return False
    return True


def _plain_media(raw: list[Any]) -> bool:
    for item in raw:
        if type(item) is str:
            continue
        if (
            type(item) is not dict
            or type(item.get("url")) is not str
            or type(item.get("thumbnail")) not in _OPT_STR
        ):
            return False
    return True


m.LAZY_BUTTONS.make = _buttons_of
m.LAZY_IMAGE_URLS.make = _media_of
m.LAZY_VIDEO_URLS.make = _videos_of


def _deferred(value: Any, plain: Callable[[list[Any]], bool], lazy: m.Lazy) -> Any:
    """``()`` for null or ``[]``; ``lazy`` (built from ``Task.raw`` on first read) for a
    list of entries with the usual types (checked now, so a malformed entry is reported
    by ``structure`` itself, naming the field; only the building waits for the first
    read); ``False`` for anything else."""
    if value is None or value == []:
        return ()
    if type(value) is list and plain(value):
        return lazy
    return False


def _fast_enum(table: Any, value: Any) -> Any:
    """A known member, None for absent/blank, or ``False`` (let the hooks decide)."""
    if value is None or value == "":
        return None
    return table.get(value, False) if type(value) is str else False


_TEXT_FIELDS = (
    "progress",
    "prompt",
    "promptEn",
    "description",
    "state",
    "customId",
    "botType",
    "imageUrl",
    "videoUrl",
    "failReason",
    "maskBase64",
    "parentId",
    "seed",
)
_TIME_FIELDS = ("submitTime", "startTime", "finishTime")


_new_task = _builder(m.Task)


def fast_task(d: dict[str, Any]) -> m.Task | None:
    """The Task for the common, well-typed task JSON, or None (use the generated hooks)."""
    get = d.get
    task_id = get("id")
    if type(task_id) is not str:
        return None
    status = _fast_enum(_STATUS_OF, get("status"))
    action = _fast_enum(_ACTION_OF, get("action"))
    if status is False or action is False:
        return None
    texts = list(map(get, _TEXT_FIELDS))
    times = list(map(get, _TIME_FIELDS))
    # map/issuperset run in C: this check is on every task read.
    if not _STR_TYPES.issuperset(map(type, texts)) or not _INT_TYPES.issuperset(map(type, times)):
        return None
    properties = get("properties")
    if properties is not None and type(properties) is not dict:
        return None
    buttons = _deferred(get("buttons"), _plain_buttons, m.LAZY_BUTTONS)
    image_urls = _deferred(get("imageUrls"), _plain_media, m.LAZY_IMAGE_URLS)
    video_urls = _deferred(get("videoUrls"), _plain_media, m.LAZY_VIDEO_URLS)
    if buttons is False or image_urls is False or video_urls is False:
        return None
    progress, prompt, prompt_en, description, state, custom_id, bot_type = texts[:7]
    image_url, video_url, fail_reason, mask, parent_id, seed = texts[7:]
    return _new_task(
        task_id,
        status if status is not None else m.TaskStatus.NOT_START,
        action,
        progress,
        prompt,
        prompt_en,
        description,
        state,
        custom_id,
        bot_type,
        times[0],
        times[1],
        times[2],
        image_url,
        image_urls,
        video_url,
        video_urls,
        fail_reason,
        buttons,
        mask,
        parent_id,
        seed,
        properties if properties is not None else {},
        d,
    )


def configure_converter(c: cattrs.Converter) -> None:
    """Register quickmj's hooks on ``c`` (primitives first, then enums, then classes)."""
    c.register_structure_hook(str, _structure_str)
    c.register_structure_hook(int, _structure_int)
    c.register_structure_hook(bool, _structure_bool)
    c.register_structure_hook_func(lambda t: t == (str | None), _structure_opt_str)
    c.register_structure_hook_func(lambda t: t == (int | None), _structure_opt_int)
    c.register_structure_hook(float, _structure_float)
    c.register_structure_hook_func(lambda t: t == (float | None), _structure_opt_float)
    c.register_structure_hook_func(lambda t: t == dict[str, Any], _structure_properties)
    c.register_structure_hook(m.MediaUrl, _structure_media)
    for enum_cls in (m.TaskStatus, m.TaskAction, m.BotType, m.BlendDimensions):
        c.register_structure_hook(enum_cls, _make_enum_hook(enum_cls))
    c.register_unstructure_hook(tuple, list)
    c.register_structure_hook_factory(attrs.has, _structure_attrs_factory(c))
    c.register_unstructure_hook_factory(attrs.has, _unstructure_attrs_factory(c))
    for snake in m.SNAKE_WIRE:
        # new-api's Go structs: the JSON keys are the field names, not camelCase.
        c.register_structure_hook(snake, make_dict_structure_fn(snake, c))


def make_converter(**kwargs: Any) -> cattrs.Converter:
    """Build a converter configured for quickmj (tests build a strict one from this)."""
    c = cattrs.Converter(**kwargs)
    configure_converter(c)
    return c


#: The converter every module uses. Hooks are generated once per class and cached.
converter = make_converter()


def structure(data: Any, cls: type[T], *, what: str = "", status: int | None = None) -> T:
    """Structure JSON data into ``cls`` or raise MalformedResponseError naming the field."""
    try:
        return converter.structure(data, cls)
    except (cattrs.BaseValidationError, TypeError, ValueError, KeyError) as exc:
        if isinstance(exc, cattrs.BaseValidationError):
            root = what or cls.__name__
            messages = cattrs.transform_error(exc, path=root)
            detail = "; ".join(_wire_path(msg, root) for msg in messages)
        else:
            detail = f"{what or cls.__name__}: {exc}"
        raise MalformedResponseError(f"unexpected response shape: {detail}", status=status) from exc


def structure_task(data: Any, task_id: str | None = None) -> m.Task:
    """``structure(data, Task)``, the usual shape read without the converter's dispatch
    (every task read goes through here); errors name ``task <id>``."""
    if type(data) is dict:
        quick = fast_task(data)
        if quick is not None:
            return quick
    return structure(data, m.Task, what="task" if task_id is None else f"task {task_id}")


def _wire_path(message: str, root: str) -> str:
    """Name fields in a cattrs error path by their JSON keys (``imageUrls``, not ``image_urls``)."""
    text, sep, path = message.rpartition(" @ ")
    if not sep or not path.startswith(root):
        return message
    rest = re.sub(r"\.(\w+)", lambda f: "." + to_camel(f.group(1)), path[len(root) :])
    return f"{text} @ {root}{rest}"


def unstructure(obj: Any) -> Any:
    """Unstructure a wire structure into JSON-ready data (camelCase keys)."""
    return converter.unstructure(obj)
