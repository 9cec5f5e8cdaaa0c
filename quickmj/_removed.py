"""Public names that were removed, and the error that says what replaced them.

The deprecation policy (docs/versioning.md) keeps a removed name answering with a pointer
for at least one minor release after its removal, instead of a bare "has no attribute".
"""

from __future__ import annotations

import opcode
import sys

_REQUESTS = (
    "submits take their arguments directly (mj.imagine(prompt, images=..., state=...)); "
    "the request classes are internal"
)

#: quickmj.<name> -> (the version that removed it, what to use instead)
REMOVED: dict[str, tuple[str, str]] = {
    **dict.fromkeys(
        (
            "ActionRequest",
            "BlendRequest",
            "DescribeRequest",
            "ImagineRequest",
            "ListByIdsRequest",
            "ModalRequest",
            "ShortenRequest",
        ),
        ("0.2", _REQUESTS),
    ),
}

_IMPORT_FROM = opcode.opmap["IMPORT_FROM"]


def _in_from_import(depth: int) -> bool:
    """Whether the Python frame ``depth`` levels up is running ``from quickmj import X``."""
    try:
        frame = sys._getframe(depth + 1)
    except ValueError:
        return False
    code = frame.f_code.co_code
    return 0 <= frame.f_lasti < len(code) and code[frame.f_lasti] == _IMPORT_FROM


def missing(module: str, name: str) -> AttributeError | ImportError:
    """The error for ``module.name`` that does not exist: a pointer if it was removed.

    ``from quickmj import X`` turns an AttributeError into a bare "cannot import name"
    and drops its message, so an import statement gets an ImportError with the pointer;
    attribute access (``getattr``, ``hasattr``) keeps its AttributeError. Called from the
    package's ``__getattr__``, whose caller is two frames up.
    """
    if name not in REMOVED:
        return AttributeError(f"module {module!r} has no attribute {name!r}")
    version, instead = REMOVED[name]
    message = f"{module}.{name} was removed in quickmj {version}: {instead}"
    if _in_from_import(2):
        return ImportError(message, name=module)
    return AttributeError(message)
