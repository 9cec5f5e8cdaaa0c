"""The quickmj error hierarchy.

Every error the SDK raises derives from :class:`QuickMJError`, so one ``except`` catches them
all; the branches let callers react at the right level::

    QuickMJError
    ├── ConfigurationError (ValueError)      missing API key, bad mode or option
    ├── InvalidInputError (ValueError)       bad argument: image, blend count, empty prompt
    │   └── ButtonNotFoundError (LookupError)   no such button on the task
    ├── UsageError (RuntimeError)            misuse of the client
    │   └── ClientClosedError                 the client was closed
    ├── TransportError                       the request did not complete
    │   ├── ConnectError (ConnectionError)       could not connect: nothing reached the relay
    │   ├── RequestTimeoutError (TimeoutError)   no answer in time
    │   └── SubmitOutcomeUnknownError            a submit may or may not have created a job
    ├── APIError                             the relay answered with an error
    │   ├── HTTPStatusError                      by HTTP status
    │   │   ├── AuthenticationError (401/403, .reason)
    │   │   ├── NotFoundError (404)
    │   │   │   └── UnsupportedByRelayError          the relay does not serve this route
    │   │   ├── ModelUnavailableError (.model)       new-api has no channel for the model
    │   │   ├── RateLimitError (429, .retry_after)
    │   │   └── ServerError (5xx)
    │   └── SubmitRejectedError                  by relay code (.code, .description, .properties)
    │       ├── ValidationError (4)
    │       ├── RelatedTaskNotFoundError (3)
    │       ├── QueueFullError (23; 9 "queue full")
    │       │   └── NoAvailableAccountError (3)      the relay has no free (Discord) account
    │       └── BannedPromptError (24, .banned_word)
    ├── MalformedResponseError (ValueError)  non-JSON, HTML or wrong-shape body
    ├── DownloadError                        an image could not be saved
    │   ├── ImageExpiredError                    the image host refuses the link (403/404/410)
    │   ├── NotAnImageError                      a 200 answer that is no image (HTML, empty)
    │   └── UnsafeURLError (ValueError)          a URL the SDK refuses to follow
    ├── StorageError (OSError)               the disk is full or read-only
    ├── NoUsableAccountError                 every account of a pool is out of rotation
    ├── BatchError                           the batch job cannot go on
    │   ├── BatchLockedError                     another run owns the output directory
    │   ├── JournalError                         the journal is missing or damaged
    │   └── RelayUnreachableError                an outage: a run stopped early, waits gave up
    │                                            (also a TransportError)
    └── TaskError                            about one task
        ├── TaskFailedError                      the task ended in FAILURE (.task, .fail_reason)
        ├── TaskNeedsModalError                  the task waits in MODAL for ``modal()``
        ├── TaskNotFoundError (LookupError)      the relay does not know the id
        └── TaskTimeoutError (TimeoutError)      waiting gave up (.task_id, .last_task)
            └── TaskStalledError                     the task stopped changing (.stalled_for)

No error message ever contains the API key: the transport redacts it from any body excerpt.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping, Sequence
from typing import Any

if typing.TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack is 3.11+; only checkers read it

    from ._models import SubmitRequest, Task

__all__ = (
    "APIError",
    "AuthenticationError",
    "BannedPromptError",
    "BatchError",
    "BatchLockedError",
    "ButtonNotFoundError",
    "ClientClosedError",
    "ConfigurationError",
    "ConnectError",
    "DownloadError",
    "HTTPStatusError",
    "ImageExpiredError",
    "InvalidInputError",
    "JournalError",
    "MalformedResponseError",
    "ModelUnavailableError",
    "NoAvailableAccountError",
    "NoUsableAccountError",
    "NotAnImageError",
    "NotFoundError",
    "QueueFullError",
    "QuickMJError",
    "RateLimitError",
    "RelatedTaskNotFoundError",
    "RelayUnreachableError",
    "RequestTimeoutError",
    "ServerError",
    "StorageError",
    "SubmitOutcomeUnknownError",
    "SubmitRejectedError",
    "TaskError",
    "TaskFailedError",
    "TaskNeedsModalError",
    "TaskNotFoundError",
    "TaskStalledError",
    "TaskTimeoutError",
    "TransportError",
    "UnsafeURLError",
    "UnsupportedByRelayError",
    "UsageError",
    "ValidationError",
)

#: How much of a response body an error keeps (characters).
BODY_EXCERPT_LIMIT = 500


def excerpt(body: str | bytes | None, limit: int = BODY_EXCERPT_LIMIT) -> str:
    """Return a printable, truncated excerpt of a response body."""
    if body is None:
        return ""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    text = text.strip()
    if len(text) > limit:
        return text[:limit] + f"... [{len(text) - limit} more characters]"
    return text


class QuickMJError(Exception):
    """Base class of every error raised by quickmj.

    Every quickmj error pickles (a worker process can hand one back): it is rebuilt from
    its message and attributes, not by calling ``__init__`` again with its message alone.
    """

    def __reduce__(self) -> tuple[Any, ...]:
        state = dict(self.__dict__)
        if isinstance(self, OSError):
            state["errno"] = self.errno  # an OSError slot, not in __dict__
        return (_rebuild, (type(self), self.args), state)


def _rebuild(cls: type[QuickMJError], args: tuple[Any, ...]) -> QuickMJError:
    """An error of ``cls`` with ``args``, its attributes set afterwards by pickle."""
    error = cls.__new__(cls)
    error.args = args
    return error


class ConfigurationError(QuickMJError, ValueError):
    """The client is configured wrongly (for example no API key)."""


class InvalidInputError(QuickMJError, ValueError):
    """An argument is unusable: an unreadable image, a wrong blend count, an empty prompt."""


class ButtonNotFoundError(InvalidInputError, LookupError):
    """The task has no button matching the label or customId asked for.

    Attributes:
        wanted: the label, emoji or customId that was asked for.
        task_id: the task whose buttons were searched.
        available: the labels (or emoji) the task does have.
    """

    def __init__(self, wanted: str, task_id: str, available: Sequence[str]) -> None:
        self.wanted = wanted
        self.task_id = task_id
        self.available: tuple[str, ...] = tuple(available)
        shown = ", ".join(repr(a) for a in self.available) or "none"
        super().__init__(f"task {task_id} has no button {wanted!r} (available: {shown})")


class UsageError(QuickMJError, RuntimeError):
    """The client was used in a way it does not support."""


class ClientClosedError(UsageError):
    """The client was closed; pending waits fail with this, new calls too."""


class TransportError(QuickMJError):
    """The HTTP exchange did not complete (network, timeout, dropped connection).

    Attributes:
        method: the request's HTTP method (``""`` when unknown).
        path: the request's path below the base URL (``""`` when unknown).
    """

    def __init__(self, message: str, *, method: str = "", path: str = "") -> None:
        self.method = method
        self.path = path
        super().__init__(message)


class ConnectError(TransportError, ConnectionError):
    """No connection could be made; the request never reached the relay."""


class RequestTimeoutError(TransportError, TimeoutError):
    """The relay did not answer in time (an HTTP timeout, not a job timeout)."""


class SubmitOutcomeUnknownError(TransportError):
    """A submit was sent, but whether the relay created (and bills) a job is unknown.

    Raised when the connection drops or times out after the request went out, when a
    gateway answers 5xx or something unreadable, or when the relay says its own call
    upstream failed (new-api's code 5 ``do_request_failed``). quickmj never re-sends such
    a submit by itself: look the job up (by the ``state`` you passed; ``quickmj
    reconcile`` does it for batches) or decide to submit again.

    Attributes:
        request: the wire request that was sent (one of the ``quickmj._models`` request
            classes), when known.
        state: the ``state`` string the submit carried, to find the job by.
        status: the HTTP status of the answer (a gateway's 502), None when no answer came.
        headers: that answer's headers (redacted of the key); empty without an answer.
        request_id: the relay's (or gateway's) request id from that answer, when it sent
            one: quote it to the relay's operator to ask whether the job exists.
    """

    def __init__(
        self,
        message: str,
        *,
        method: str = "",
        path: str = "",
        request: SubmitRequest | None = None,
        state: str | None = None,
        status: int | None = None,
        headers: Mapping[str, str] | None = None,
        request_id: str | None = None,
    ) -> None:
        self.request = request
        self.state = state
        self.status = status
        self.headers: dict[str, str] = dict(headers or {})
        self.request_id = request_id
        super().__init__(message, method=method, path=path)


class APIError(QuickMJError):
    """The relay answered, and the answer is an error.

    ``status`` is the HTTP status, ``body`` a redacted excerpt of the answer, ``headers``
    the response headers and ``request_id`` the relay's request id when it sent one
    (``X-Request-Id``, ``X-Oneapi-Request-Id``, or the ``request id: ...`` new-api puts
    in its messages): quote it when you report a problem to the relay's operator.

    Attributes:
        status: the HTTP status.
        body: a redacted excerpt of the answer.
        path: the request's path below the base URL.
        headers: the response headers.
        request_id: the relay's request id, when it sent one.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int,
        body: str = "",
        path: str = "",
        headers: Mapping[str, str] | None = None,
        request_id: str | None = None,
    ) -> None:
        self.status = status
        self.body = body
        self.path = path
        self.headers: dict[str, str] = dict(headers or {})
        self.request_id = request_id
        super().__init__(message)


class _Answer(typing.TypedDict, total=False):
    """The keywords every APIError takes besides ``status`` (see :class:`APIError`):
    subclasses pass them on as ``**answer`` instead of repeating them."""

    body: str
    path: str
    headers: Mapping[str, str] | None
    request_id: str | None


class HTTPStatusError(APIError):
    """An HTTP error status without a relay code in the body."""


class AuthenticationError(HTTPStatusError):
    """HTTP 401/403: the key is missing, wrong, disabled or lacks permission.

    The message keeps the relay's own words, and ``reason`` says what they mean when the
    relay said which (new-api, TrueAI): ``"invalid"`` (unknown key), ``"expired"``,
    ``"exhausted"`` (a valid key whose quota is used up: top it up), ``"disabled"``,
    ``"model_forbidden"`` (the key may not use this action's model), or None.

    Attributes:
        reason: what the relay said is wrong with the key, or None when it did not say.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int,
        reason: str | None = None,
        **answer: Unpack[_Answer],
    ) -> None:
        self.reason = reason
        super().__init__(message, status=status, **answer)


class NotFoundError(HTTPStatusError):
    """HTTP 404 on a route (not a relay code 3)."""


class UnsupportedByRelayError(NotFoundError):
    """The relay does not serve this route (``route``); ``dialects`` lists those that do.

    For example ``GET /task/list`` exists on self-hosted midjourney-proxy and TrueAI
    servers, not on QuickRouter (new-api). A 404 without a relay body on a route every
    relay serves usually means a wrong ``base_url``.
    """

    def __init__(
        self,
        message: str,
        *,
        route: str,
        dialects: Sequence[str] = (),
        status: int = 404,
        **answer: Unpack[_Answer],
    ) -> None:
        self.route = route
        self.dialects: tuple[str, ...] = tuple(dialects)
        super().__init__(message, status=status, **answer)

    def reworded(self, message: str) -> UnsupportedByRelayError:
        """The same answer (route, status, body, ...) told with ``message``; it chains this one."""
        error = UnsupportedByRelayError(
            message,
            route=self.route,
            dialects=self.dialects,
            status=self.status,
            body=self.body,
            path=self.path,
            headers=self.headers,
            request_id=self.request_id,
        )
        error.__cause__ = self
        return error


class ModelUnavailableError(HTTPStatusError):
    """new-api has no channel for the model of this action in the key's group (HTTP 503,
    ``model_not_found``): the request was refused before it reached a Midjourney server, so
    nothing was created (for a submit too, although a 503 usually leaves that open).

    new-api prices and routes every action as a model (``mj_imagine``, ``mj_upscale``,
    ``mj_custom_zoom``, ...). The route exists, so this is not an UnsupportedByRelayError,
    and no retry helps until the relay's operator enables a channel for the model (new-api
    also disables a channel by itself after it answered "no available account"), so it is
    not a ServerError either. Catch it (or :class:`APIError`) to skip the action.

    Attributes:
        model: the model the relay named (``"mj_custom_zoom"``), or None.
        group: the key's group the relay named (``"default"``), or None.
    """

    def __init__(
        self,
        message: str,
        *,
        model: str | None = None,
        group: str | None = None,
        status: int = 503,
        **answer: Unpack[_Answer],
    ) -> None:
        self.model = model
        self.group = group
        super().__init__(message, status=status, **answer)


class RateLimitError(HTTPStatusError):
    """HTTP 429: slow down. ``retry_after`` is the relay's hint in seconds, if it gave one."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 429,
        retry_after: float | None = None,
        **answer: Unpack[_Answer],
    ) -> None:
        self.retry_after = retry_after
        super().__init__(message, status=status, **answer)


class ServerError(HTTPStatusError):
    """HTTP 5xx (gateways often answer with an HTML page)."""


class SubmitRejectedError(APIError):
    """The relay rejected the request with a code in the body (nothing was created).

    Attributes:
        code: the relay's code (3, 4, 23, 24, ...).
        description: the relay's text, for humans (often Chinese).
        properties: the answer's ``properties`` object.
    """

    def __init__(
        self,
        message: str,
        *,
        code: int,
        description: str = "",
        properties: Mapping[str, Any] | None = None,
        status: int = 200,
        **answer: Unpack[_Answer],
    ) -> None:
        self.code = code
        self.description = description
        self.properties: dict[str, Any] = dict(properties or {})
        super().__init__(message, status=status, **answer)


class ValidationError(SubmitRejectedError):
    """Code 4: the relay found the request invalid (prompt, image, parent state, ...)."""


class RelatedTaskNotFoundError(SubmitRejectedError):
    """Code 3 ``关联任务不存在或已失效``: the relay does not know the parent task.

    (Code 3 "no available account" is :class:`NoAvailableAccountError` instead.)
    """


class QueueFullError(SubmitRejectedError):
    """Code 23 (or 9 with a queue-full message): nothing was created; retry later."""


class NoAvailableAccountError(QueueFullError):
    """Code 3 ``无可用的账号实例`` ("no available account instance"): the relay has no free
    Midjourney (Discord) account right now. Nothing was created; retry later.

    A QueueFullError because it means the same to a caller: the relay is out of capacity,
    so adaptive admission, ``RetryPolicy.retry_submits`` and the batch treat it as queue
    full (the prompt stays pending). It concerns the relay's own accounts, not your keys
    (compare ``NoUsableAccountError``). The relay's words are in ``description``.
    """


class BannedPromptError(SubmitRejectedError):
    """Code 24: the prompt contains a banned word (``banned_word`` when the relay says which)."""

    @property
    def banned_word(self) -> str | None:
        """The word the relay objected to (``properties.bannedWord``), if it said."""
        word = self.properties.get("bannedWord")
        return str(word) if word is not None else None


class MalformedResponseError(QuickMJError, ValueError):
    """The relay's answer is not what the protocol promises (HTML, bad JSON, wrong shape).

    Attributes:
        status: the HTTP status, when there was an answer.
        body: a redacted excerpt of the answer.
        path: the request's path below the base URL.
    """

    def __init__(
        self, message: str, *, status: int | None = None, body: str = "", path: str = ""
    ) -> None:
        self.status = status
        self.body = body
        self.path = path
        super().__init__(message)


class DownloadError(QuickMJError):
    """An image could not be downloaded or saved."""


class ImageExpiredError(DownloadError):
    """The image host refuses the task's link (HTTP 403, 404 or 410), and re-reading the
    task gave no link that works.

    Discord's CDN links carry ``ex=/is=/hm=`` signatures and expire; new-api's
    ``/mj/image/{id}`` forwards the CDN's refusal. Not an AuthenticationError: the image
    route takes no key. ``download()`` re-reads the task once for a fresher link before it
    raises this.

    Attributes:
        url: the link, without its query string (the signature).
        status: the HTTP status the host answered.
        task_id: the task whose image it is ("" when unknown).
    """

    def __init__(self, message: str, *, url: str = "", status: int = 0, task_id: str = "") -> None:
        super().__init__(message)
        self.url = url
        self.status = status
        self.task_id = task_id


class NotAnImageError(DownloadError):
    """A download answered 200 with something that is no image or video: a web page (a
    gateway's or Cloudflare's, whatever its Content-Type says), JSON, or nothing at all.
    Nothing is saved; ``download()`` re-reads the task once for a fresher link first.

    Attributes:
        url: the link, without its query string.
        got: what came back, in words ("an HTML page (5120 bytes, labelled image/png)").
        task_id: the task whose image it is ("" when unknown).
    """

    def __init__(self, message: str, *, url: str = "", got: str = "", task_id: str = "") -> None:
        super().__init__(message)
        self.url = url
        self.got = got
        self.task_id = task_id


class UnsafeURLError(DownloadError, ValueError):
    """A URL quickmj refuses to fetch (not http/https, or otherwise unsafe)."""


class StorageError(QuickMJError, OSError):
    """The disk refused a write: out of space, read-only, or no permission.

    ``path`` is the file or directory concerned. A batch keeps such prompts resumable
    (download them with ``--resume`` once there is room). ``unjournaled`` holds the task
    ids of paid jobs a batch could not even record (the message names their rows): a
    resume will not know them, so wait on them by id (``quickmj wait ID``).
    """

    def __init__(
        self,
        message: str,
        *,
        path: str = "",
        errno: int | None = None,
        unjournaled: tuple[str, ...] = (),
    ) -> None:
        super().__init__(message)
        self.path = path
        self.errno = errno
        self.unjournaled = unjournaled

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class NoUsableAccountError(QuickMJError):
    """Every account of a pool was taken out of rotation (401/403 or no quota): nothing
    more can be submitted. Nothing was sent for the submit that raised it."""


class BatchError(QuickMJError):
    """The batch job cannot start or go on (the run stops; finished work is kept)."""


class BatchLockedError(BatchError):
    """Another run (``pid`` on ``host``, started at ``started``) owns the output directory."""

    def __init__(self, message: str, *, pid: int | None, host: str, started: str) -> None:
        self.pid = pid
        self.host = host
        self.started = started
        super().__init__(message)


class JournalError(BatchError):
    """The batch journal (the record of paid work) is missing, unreadable or damaged."""


class RelayUnreachableError(BatchError, TransportError):
    """The relay stayed unreachable (connect failures, or only 5xx and timeouts): a batch
    run stopped early, or waits gave up (``PollPolicy.unreachable_after``). Also a
    :class:`TransportError`, so code that handles network trouble around ``wait()``
    catches it without knowing about batches.

    ``not_submitted`` prompts were never sent (nothing was created): a ``--resume``
    submits them once the relay (or ``QUICKMJ_BASE_URL``) is fixed.

    From a wait, ``task_ids`` are the jobs the poller was following: paid, and possibly
    still running on the relay. Nothing about them is lost: wait on them again (or resume
    the batch) once the relay answers.
    """

    def __init__(
        self, message: str, *, not_submitted: int = 0, task_ids: Sequence[str] = ()
    ) -> None:
        self.not_submitted = not_submitted
        self.task_ids: tuple[str, ...] = tuple(task_ids)
        super().__init__(message)


class TaskError(QuickMJError):
    """Base class of errors about one task."""


class TaskFailedError(TaskError):
    """The task ended in FAILURE (or CANCEL).

    Attributes:
        task: the task's final state.
        fail_reason: the relay's reason (``""`` when it gave none).
    """

    def __init__(self, task: Task) -> None:
        self.task = task
        self.fail_reason: str = task.fail_reason or ""
        reason = self.fail_reason or "no reason given"
        super().__init__(f"task {task.id} ended in {task.status.value}: {reason}")


class TaskNeedsModalError(TaskError):
    """The task waits in MODAL: finish it with ``modal(task_id, prompt=..., mask=...)``.

    Raised by waits on a task a read shows in MODAL (at once by default; after
    ``PollPolicy.modal_timeout`` if set) and by ``job.wait()`` on a job the relay answered
    with code 21 (new-api answers 1 instead: then the read tells). ``task`` is None when
    only the id is known.
    """

    def __init__(self, task_id: str, task: Task | None = None) -> None:
        self.task_id = task_id
        self.task = task
        super().__init__(
            f"task {task_id} waits in MODAL: call modal({task_id!r}, prompt=..., mask=...) "
            "to continue it"
        )


class TaskNotFoundError(TaskError, LookupError):
    """The relay does not know this task id (or these ids).

    Attributes:
        task_id: the (first) unknown id.
        task_ids: every unknown id.
        found: the tasks that were found, in input order, when several ids were asked
            for (``fetch_many``).
    """

    def __init__(
        self,
        task_ids: str | Sequence[str],
        *,
        found: Sequence[Task] = (),
    ) -> None:
        ids = (task_ids,) if isinstance(task_ids, str) else tuple(task_ids)
        self.task_ids: tuple[str, ...] = ids
        self.task_id: str = ids[0] if ids else ""
        self.found: tuple[Task, ...] = tuple(found)
        if len(ids) == 1:
            message = f"task {ids[0]} not found"
        else:
            head = ", ".join(ids[:10]) + (", ..." if len(ids) > 10 else "")
            message = f"{len(ids)} tasks not found: {head}"
        super().__init__(message)


class TaskTimeoutError(TaskError, TimeoutError):
    """Waiting gave up. The task itself may still finish on the relay: wait again later.

    Attributes:
        task_id: the (first) unfinished id.
        timeout: the timeout that passed, in seconds.
        last_task: the last state seen of ``task_id``, if any.
        pending: every unfinished id (several for ``as_completed``).
    """

    def __init__(
        self,
        task_id: str,
        timeout: float,
        last_task: Task | None = None,
        *,
        pending: Sequence[str] = (),
    ) -> None:
        self.task_id = task_id
        self.timeout = timeout
        self.last_task = last_task
        self.pending: tuple[str, ...] = tuple(pending) or (task_id,)
        super().__init__(self._message())

    def _what(self) -> str:
        return f"task {self.task_id}" if len(self.pending) == 1 else f"{len(self.pending)} tasks"

    def _message(self) -> str:
        last = self.last_task
        where = f" (last seen {last.status.value})" if last is not None else ""
        return f"{self._what()} did not finish within {self.timeout:g} s{where}"


class TaskStalledError(TaskTimeoutError):
    """The task's reports stopped changing: the relay has most likely lost it.

    Raised for a task that is neither finished nor waiting in MODAL when nothing about it
    (status, progress, result) changed for ``PollPolicy.stall_after`` seconds (queued
    tasks: ``PollPolicy.stall_after_queued``). Relays lose tasks: new-api's copy can stop
    refreshing, midjourney-proxy tasks hang IN_PROGRESS. The task may still finish on the
    relay: wait again later, or look it up. A ``TaskTimeoutError``, so code that handles
    timeouts handles this too (a batch keeps such a prompt ``timed_out``, resumable).

    Attributes:
        task_id: the (first) stalled id.
        timeout: the allowance that passed (``stall_after`` or ``stall_after_queued``).
        stalled_for: how long the task had been unchanged, in seconds.
        last_task: its last state.
        pending: every stalled id (several for ``as_completed``).
    """

    def __init__(
        self,
        task_id: str,
        stalled_for: float,
        last_task: Task | None = None,
        *,
        allowance: float,
        pending: Sequence[str] = (),
    ) -> None:
        self.stalled_for = stalled_for
        super().__init__(task_id, allowance, last_task, pending=pending)

    def _message(self) -> str:
        last, where = self.last_task, ""
        if last is not None:
            progress = f" {last.progress}" if last.progress else ""
            where = f" (last seen {last.status.value or 'queued'}{progress})"
        return (
            f"{self._what()} stalled: unchanged for {self.stalled_for:.0f} s{where}; the relay "
            f"has probably lost it (PollPolicy.stall_after {self.timeout:g} s). It may still "
            "finish: wait again later or check it on the relay"
        )
