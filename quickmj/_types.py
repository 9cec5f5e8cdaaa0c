"""The type aliases of the public API, in one place: what a parameter accepts.

Aliases private to one module (``_poller.Item``, ``_spend.Key``, ...) stay beside their
only users; :data:`~quickmj._budgets.AdmissionSetting` stays with the budgets, since it
names their policy and factory types and ``budget_factory`` reads it (importing them here
would make an import cycle).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Protocol, TypeAlias, Union

from ._models import SubmitResult, Task

__all__ = ("HasTaskId", "ImageInput", "ProgressCallback", "TaskRef")

#: What the SDK accepts wherever an image is expected.
ImageInput = Union[bytes, bytearray, memoryview, str, "os.PathLike[str]"]


class HasTaskId(Protocol):
    """Anything with a task ``id``: a Task, an AsyncJob, a (sync) Job."""

    @property
    def id(self) -> str: ...


TaskRef: TypeAlias = "str | HasTaskId | SubmitResult"
"""Wherever a task is expected: its id, a Task, a job handle, or a SubmitResult."""

ProgressCallback: TypeAlias = Callable[[Task], Any]
"""Called with each new state of a task (a real change of status, progress, result);
may be a coroutine function."""
