"""JSON exactly as each server's serializer writes it: Go, .NET and Jackson conventions.

- Go ``encoding/json`` (new-api): compact, non-ASCII raw, but ``<``, ``>``, ``&``,
  U+2028 and U+2029 escaped as ``\\u003c`` ... (its default HTML-safe escaping); ``gin.H``
  maps have their keys sorted.
- .NET ``System.Text.Json`` with the default ``JavaScriptEncoder`` (TrueAI, which only adds
  ``JsonStringEnumConverter`` in ``src/Midjourney.API/Program.cs``): every non-ASCII
  character and ``<>&'+`\\u0060"`` escaped as ``\\uXXXX`` with upper-case hex.
- Jackson (novicezk's midjourney-proxy): compact, non-ASCII raw, ``java.util.HashMap``
  iteration order for map-typed fields (``properties``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = (
    "dotnet_json",
    "go_json",
    "go_unmarshal",
    "jackson_json",
    "java_hash_order",
    "java_map",
    "sorted_keys",
)

_GO_ESCAPES = (
    ("<", "\\u003c"),
    (">", "\\u003e"),
    ("&", "\\u0026"),
    ("\u2028", "\\u2028"),
    ("\u2029", "\\u2029"),
)


def go_json(value: Any) -> bytes:
    """Go ``json.Marshal``: compact, UTF-8, HTML-safe; text that is not valid Unicode (a
    lone surrogate) is coerced to U+FFFD, as Go does with invalid UTF-8."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    # These characters can only occur inside string literals, so a global replace is safe.
    for raw, escaped in _GO_ESCAPES:
        if raw in text:
            text = text.replace(raw, escaped)
    return (text if text.isascii() else _SURROGATE.sub("\ufffd", text)).encode()


def go_unmarshal(raw: bytes) -> Any:
    """Go ``json.Unmarshal`` into strings: a lone surrogate escape (``\\ud800``) becomes
    U+FFFD (``encoding/json``'s ``unquote``), so no such text is ever stored."""
    return _replace_lone_surrogates(json.loads(raw))


def _replace_lone_surrogates(value: Any) -> Any:
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {_replace_lone_surrogates(k): _replace_lone_surrogates(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace_lone_surrogates(v) for v in value]
    return value


# Jackson's UTF8JsonGenerator writes every UTF-16 surrogate as a \uXXXX escape in upper-case
# hex (``_outputMultiByteChar``: "outside of BMP; add an escape"): a character beyond the
# BMP as its escaped pair, and a lone surrogate (Java strings may hold one: its parser
# reads ``"\\ud800"`` as it is) as itself, escaped.
_SURROGATE = re.compile("[\ud800-\udfff]")
_JACKSON_ESCAPED = re.compile("[\ud800-\udfff\U00010000-\U0010ffff]")


def _jackson_escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code <= 0xFFFF:
        return f"\\u{code:04X}"
    code -= 0x10000
    return f"\\u{0xD800 + (code >> 10):04X}\\u{0xDC00 + (code & 0x3FF):04X}"


def jackson_json(value: Any) -> bytes:
    """Jackson's ``ObjectMapper.writeValueAsString``: compact, UTF-8, surrogates escaped."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    if not text.isascii():
        text = _JACKSON_ESCAPED.sub(_jackson_escape, text)
    return text.encode()


# After json.dumps(ensure_ascii=True): fix hex case, escape what .NET escapes in addition.
_DOTNET_FIX = re.compile(r'\\(?:u([0-9a-f]{4})|(["\\/bfnrt]))|([<>&\'+`])')


def _dotnet_fix(match: re.Match[str]) -> str:
    hexdigits, short, raw = match.groups()
    if hexdigits is not None:
        return "\\u" + hexdigits.upper()
    if short == '"':
        return "\\u0022"
    if short is not None:
        return "\\" + short
    return f"\\u{ord(raw):04X}"


def dotnet_json(value: Any) -> bytes:
    """System.Text.Json with its default encoder."""
    text = json.dumps(value, ensure_ascii=True, separators=(",", ":"))
    return _DOTNET_FIX.sub(_dotnet_fix, text).encode()


def _java_string_hash(text: str) -> int:
    h = 0
    for unit in text.encode("utf-16-be").hex(" ", 2).split():
        h = (31 * h + int(unit, 16)) & 0xFFFFFFFF
    return h


def java_hash_order(keys: Iterable[str]) -> list[str]:
    """The order a ``java.util.HashMap`` iterates ``keys`` inserted in the given order.

    Buckets are ``(h ^ h >>> 16) & (capacity - 1)`` with the capacity doubling from 16
    while size exceeds 3/4 of it; a resize keeps the relative order within a bucket, so
    entries sharing a bucket stay in insertion order (treeified buckets never occur here).
    """
    keys = list(keys)
    capacity = 16
    while len(keys) > capacity * 3 // 4:
        capacity *= 2

    def bucket(key: str) -> int:
        h = _java_string_hash(key)
        return (h ^ (h >> 16)) & (capacity - 1)

    return sorted(keys, key=bucket)  # sorted() is stable: insertion order within a bucket


def java_map(items: Mapping[str, Any]) -> dict[str, Any]:
    """``items`` re-ordered as a Java HashMap would serialize them."""
    return {k: items[k] for k in java_hash_order(items)}


def sorted_keys(items: Mapping[str, Any]) -> dict[str, Any]:
    """Go's order for maps (``gin.H``): keys sorted."""
    return {k: items[k] for k in sorted(items)}
