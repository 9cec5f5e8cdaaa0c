"""Reading the relay's answers: submit envelopes, relay codes, tasks and task lists."""

from __future__ import annotations

from typing import Any

from ._converter import structure
from ._models import FailureBody, SubmitResult, Task
from ._transport import EMPTY
from .errors import (
    BannedPromptError,
    MalformedResponseError,
    QueueFullError,
    RelatedTaskNotFoundError,
    SubmitRejectedError,
    TaskNotFoundError,
    ValidationError,
    excerpt,
)

__all__ = (
    "parse_submit",
    "parse_task_list",
    "parse_task_or_none",
    "raw_task_list",
    "rejection_from_body",
    "rejection_from_code",
)

# TrueAI answers "queue full" with code 9 and this text (OSS-Java uses code 23).
_QUEUE_FULL_MARKERS = ("队列已满", "queue is full", "queue full")

_CODE_ERRORS: dict[int, type[SubmitRejectedError]] = {
    3: RelatedTaskNotFoundError,
    4: ValidationError,
    23: QueueFullError,
    24: BannedPromptError,
}

_CODE_NAMES = {
    3: "related task or account not found",
    4: "invalid request",
    5: "relay error",
    9: "relay system error",
    23: "queue full, retry later",
    24: "banned prompt",
}


def rejection_from_code(
    code: int,
    description: str,
    properties: dict[str, Any] | None = None,
    *,
    status: int = 200,
    body: str = "",
    path: str = "",
) -> SubmitRejectedError:
    """The typed error for a relay rejection code."""
    cls = _CODE_ERRORS.get(code, SubmitRejectedError)
    if code == 9 and any(m in description.lower() for m in _QUEUE_FULL_MARKERS):
        cls = QueueFullError
    what = _CODE_NAMES.get(code, "rejected")
    detail = f": {description}" if description else ""
    if cls is BannedPromptError and properties and properties.get("bannedWord"):
        detail += f" (banned word: {properties['bannedWord']!r})"
    return cls(
        f"{path}: {what} (code {code}){detail}",
        code=code,
        description=description,
        properties=properties,
        status=status,
        body=body,
        path=path,
    )


def rejection_from_body(
    data: Any, *, status: int, body: str, path: str
) -> SubmitRejectedError | None:
    """If ``data`` is a relay error body (either shape), the matching error, else None."""
    if not isinstance(data, dict) or isinstance(data.get("code"), bool):
        return None
    if data.get("success") is False:
        try:
            failure = structure(data, FailureBody, what="failure", status=status)
        except MalformedResponseError:
            return None  # not the relay's failure shape after all ({"code": "E42"}, ...)
        return rejection_from_code(
            failure.code, failure.message, status=status, body=body, path=path
        )
    if isinstance(data.get("code"), int):
        result = structure(data, SubmitResult, what="submit result", status=status)
        if not result.ok:
            return rejection_from_code(
                result.code,
                result.description,
                result.properties,
                status=status,
                body=body,
                path=path,
            )
    return None


def parse_submit(data: Any, path: str) -> SubmitResult:
    """A submit's answer: the SubmitResult for codes 1/21/22, else the typed rejection."""
    body = excerpt(str(data)) if data is not EMPTY else ""
    if data is EMPTY or not isinstance(data, dict):
        raise MalformedResponseError(
            f"{path}: expected a submit result object, got {_describe(data)}", body=body, path=path
        )
    rejection = rejection_from_body(data, status=200, body=body, path=path)
    if rejection is not None:
        raise rejection
    if "code" not in data:
        # e.g. the OpenAI-shaped sample in the relay's docs for /submit/action.
        raise MalformedResponseError(
            f"{path}: expected {{code, description, result}}, got keys {sorted(data)[:8]}",
            body=body,
            path=path,
        )
    result = structure(data, SubmitResult, what="submit result")
    if not result.result:
        raise MalformedResponseError(
            f"{path}: code {result.code} but no task id in 'result'", body=body, path=path
        )
    return result


def parse_task_or_none(data: Any, path: str) -> Task | None:
    """A fetch answer: a Task, or None for the relay's "unknown id" answers."""
    if data is EMPTY or data is None:
        return None
    if isinstance(data, dict) and "id" not in data and "code" in data:
        # new-api answers an unknown id with {code: 4, description: "task_no_found"}; any
        # other relay error (upstream down, ...) is raised, not mistaken for "not found".
        rejection = rejection_from_body(data, status=200, body=excerpt(str(data)), path=path)
        if rejection is None or means_not_found(rejection):
            return None
        raise rejection
    return structure(data, Task, what="task")


def means_not_found(rejection: SubmitRejectedError) -> bool:
    """Whether a relay rejection says the task does not exist (code 3, ``task_no_found``)."""
    text = rejection.description.lower()
    return isinstance(rejection, RelatedTaskNotFoundError) or "found" in text or "不存在" in text


def raw_task_list(data: Any, path: str) -> list[Any]:
    """A list-by-condition answer as a JSON array, unstructured (null/empty means none)."""
    if data is EMPTY or data is None:
        return []
    if not isinstance(data, list):
        raise MalformedResponseError(
            f"{path}: expected a JSON array of tasks, got {_describe(data)}",
            body=excerpt(str(data)),
            path=path,
        )
    return data


def parse_task_list(data: Any, path: str) -> list[Task]:
    """A list-by-condition answer: a JSON array of tasks (null/empty means none)."""
    return structure(raw_task_list(data, path), list[Task], what="tasks")


def require_task(data: Any, path: str, task_id: str) -> Task:
    task = parse_task_or_none(data, path)
    if task is None:
        raise TaskNotFoundError(task_id)
    return task


def _describe(data: Any) -> str:
    if data is EMPTY:
        return "an empty body"
    if data is None:
        return "null"
    return type(data).__name__
