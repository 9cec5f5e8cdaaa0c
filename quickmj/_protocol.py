"""The relay's rules, in one place: what an answer means, on every dialect.

- :func:`read_answer`: the HTTP status and body of any answer -> JSON data or the typed
  error (401/403, 429, 5xx, redirects, 4xx bodies with relay codes, new-api's own and
  OpenAI-shaped errors, routes a relay does not serve).
- :func:`rejection`: relay codes -> errors (3, 4, 9 queue-full, 23, 24, ``success:false``).
- :func:`task_unknown`: the single "this task id does not exist" rule (fetch, image-seed,
  actions), and :func:`read_fetch` for the "empty answer" forms of it.
- :func:`outcome_unknown`: when a submit's answer leaves it open whether a job exists.
- :func:`retry_read` / :func:`retry_submit`: what may be sent again; :func:`store_lag` for
  a change refused while midjourney-proxy's store lags behind a parent that succeeded.
- :func:`change_key`: the single "the task changed" rule; :func:`merge_rows` for the
  duplicate rows new-api answers after a modal.
- :func:`task_path`: ids as one safe path segment.
- ``ROUTES`` and :func:`serves`: which dialect's server has which route;
  ``NEW_API_DIALECTS``: where new-api's habits apply. ``TERMINAL_STATUSES`` and
  ``SUBMIT_OK`` are defined with the models that read them (``TaskStatus.is_terminal``,
  ``SubmitResult.ok``) and exported from here with the rules.

Nothing here does I/O: ``_relay.py`` sends requests and applies these rules.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Mapping
from typing import Any, Final

from ._config import Secret, clamp_retry_after
from ._converter import as_id, loads, structure, structure_task
from ._models import SUBMIT_OK, TERMINAL_STATUSES, FailureBody, SubmitResult, Task
from ._transport import Answer
from ._urls import display_url, segment
from .errors import (
    BODY_EXCERPT_LIMIT,
    AuthenticationError,
    BannedPromptError,
    ConnectError,
    HTTPStatusError,
    InvalidInputError,
    MalformedResponseError,
    ModelUnavailableError,
    NoAvailableAccountError,
    QueueFullError,
    QuickMJError,
    RateLimitError,
    RelatedTaskNotFoundError,
    RequestTimeoutError,
    ServerError,
    SubmitOutcomeUnknownError,
    SubmitRejectedError,
    TransportError,
    UnsupportedByRelayError,
    ValidationError,
    excerpt,
)

__all__ = (
    "CONFIRMS_MODAL",
    "EMPTY",
    "NEW_API_DIALECTS",
    "QUEUED_STATUSES",
    "ROUTES",
    "STORE_LAG_ROUTES",
    "SUBMIT_OK",
    "TERMINAL_STATUSES",
    "change_key",
    "merge_rows",
    "not_started",
    "outcome_unknown",
    "quota_exhausted",
    "read_answer",
    "read_fetch",
    "read_seed",
    "read_submit",
    "read_task_list",
    "read_upload",
    "rejection",
    "relay_words",
    "retry_read",
    "retry_submit",
    "serves",
    "status_error",
    "store_lag",
    "task_path",
    "task_unknown",
    "with_mode_hint",
)


class _Empty:
    """An answer with no body (204, empty 200): the relay's "not found" for fetch."""

    def __repr__(self) -> str:
        return "EMPTY"


EMPTY: Final = _Empty()

#: Routes (under ``/mj``) and the dialects whose servers have them (protocol.md §3).
ROUTES: dict[str, tuple[str, ...]] = {
    "POST /submit/imagine": ("quickrouter", "midjourney-proxy", "trueai"),
    "POST /submit/blend": ("quickrouter", "midjourney-proxy", "trueai"),
    "POST /submit/describe": ("quickrouter", "midjourney-proxy", "trueai"),
    "POST /submit/shorten": ("quickrouter", "trueai"),
    "POST /submit/action": ("quickrouter", "trueai"),
    "POST /submit/modal": ("quickrouter", "trueai"),
    "POST /submit/change": ("quickrouter", "midjourney-proxy"),
    # new-api registers it but routes it as model "mj_", which no channel serves (503).
    "POST /submit/simple-change": ("midjourney-proxy",),
    "POST /submit/video": ("quickrouter", "trueai"),
    "POST /submit/edits": ("quickrouter", "trueai"),
    "POST /submit/upload-discord-images": ("quickrouter", "trueai"),
    "POST /insight-face/swap": ("quickrouter", "trueai"),
    "GET /task/{id}/fetch": ("quickrouter", "midjourney-proxy", "trueai"),
    "POST /task/list-by-condition": ("quickrouter", "midjourney-proxy", "trueai"),
    "GET /task/{id}/image-seed": ("quickrouter", "trueai"),
    "GET /task/list": ("midjourney-proxy", "trueai"),
    "POST /task/{id}/cancel": ("trueai",),
    # new-api's billing routes, below the base URL itself rather than /mj (_billing.py).
    "GET /api/usage/token/": ("quickrouter",),
    "GET /dashboard/billing/subscription": ("quickrouter",),
    "GET /dashboard/billing/usage": ("quickrouter",),
}

#: Dialects whose server may be new-api (``auto``: it may be anything). new-api rewrites
#: code 22 "queued" to 1 (``AsyncJob.queued`` cannot tell) and keeps the stale MODAL row
#: of a modal's task beside the running one, which fetch may answer (``Relay.fetch``).
NEW_API_DIALECTS: Final = frozenset({"quickrouter", "auto"})

#: Submits (paths of ``ROUTES``) that confirm a task waiting in MODAL: the answer's id is
#: that task's, which runs on (``Poller.confirm_modal``).
CONFIRMS_MODAL: Final = frozenset({"/submit/modal"})
#: Submits naming a parent that midjourney-proxy's lagging store may still deny after the
#: caller saw it SUCCESS (``store_lag``): sent once more. ``simple_change()`` takes no
#: parent Task, so it is not one.
STORE_LAG_ROUTES: Final = frozenset({"/submit/change"})


def serves(dialect: str, route: str) -> bool:
    """May this dialect's server have ``route`` (a ``ROUTES`` key)? ``auto``: it may."""
    return dialect == "auto" or dialect in ROUTES.get(route, ())


# ---- relay codes ----

# SUBMIT_OK (codes 1, 21, 22: a task was created) is defined with SubmitResult.ok.
_CODE_ERRORS: dict[int, type[SubmitRejectedError]] = {
    3: RelatedTaskNotFoundError,
    4: ValidationError,
    23: QueueFullError,
    24: BannedPromptError,
}
_CODE_NAMES = {
    3: "not found",
    4: "invalid request",
    5: "relay error",
    9: "relay system error",
    23: "queue full, retry later",
    24: "banned prompt",
}
# TrueAI answers "queue full" with code 9 (or, from its per-user limits, code 4 / the
# success:false shape) and these texts; OSS-Java uses code 23.
_QUEUE_FULL_MARKERS = (
    "队列已满",
    "队列数已达上限",
    "并发数已达上限",
    "queue is full",
    "queue full",
)
# "No free Midjourney account": OSS-Java TaskServiceImpl and TrueAI TaskService answer code 3
# 无可用的账号实例 when no account instance is alive (TrueAI's admin routes use 9); new-api's
# English for it (its channel auto-ban log) is "No available account instance". Only with
# those codes: TrueAI's code 4 with the same words means "no account can do this" (video),
# which waiting does not cure, and a code 5 carrying them is new-api's upstream failure
# (the job may exist). OSS-Java's 3 账号不可用: <id> says the account that ran the *parent*
# is gone: that parent cannot be acted on any more (RelatedTaskNotFoundError).
_NO_ACCOUNT_MARKERS = ("无可用的账号实例", "no available account")
_NO_ACCOUNT_CODES = frozenset({3, 9})
# Code 3/4 answers to /submit/change whose parent the caller saw SUCCESS: midjourney-proxy
# saves tasks asynchronously (novicezk#252), so they may be its store lagging.
_STORE_LAG_MARKERS = ("关联任务不存在", "关联任务状态错误", "task_status_not_success")
# How relays say "this task id does not exist": new-api's own errors (with and without
# the trailing space it sends), and the proxies' 关联任务不存在或已失效 ("does not exist").
_UNKNOWN_TASK_MARKERS = ("task_no_found", "task_not_found", "不存在")
# new-api's code 5 family: its own call to the upstream proxy failed or came back
# unreadable, so a submit may have created a job upstream (protocol.md §8.1).
_UPSTREAM_FAILED_MARKERS = (
    "do_request_failed",
    "read_response_body_failed",
    "empty_response_body",
    "unmarshal_response_body_failed",
)
# new-api's RelayMidjourneySubmit when the key cannot pay this action's price.
_NEW_API_NO_QUOTA = "quota_not_enough"
# Messages of "this key has no quota left" answers: new-api's own errors, TrueAI's limits.
_QUOTA_MARKERS = (
    _NEW_API_NO_QUOTA,
    "insufficient_user_quota",
    "insufficient quota",
    "quota is not enough",
    "额度不足",
    "余额不足",
    "绘图次数已达上限",
)
_REQUEST_ID = re.compile(r"request id:\s*([A-Za-z0-9_.:-]{4,80})")


def rejection(
    code: int,
    description: str,
    properties: Mapping[str, Any] | None = None,
    *,
    status: int = 200,
    body: str = "",
    path: str = "",
    headers: Mapping[str, str] | None = None,
    request_id: str | None = None,
) -> SubmitRejectedError:
    """The typed error for a relay rejection code."""
    text = description.lower()
    cls = _CODE_ERRORS.get(code, SubmitRejectedError)
    what = _CODE_NAMES.get(code, "rejected")
    if code in _NO_ACCOUNT_CODES and any(m in text for m in _NO_ACCOUNT_MARKERS):
        # Code 3 is two things: this one created nothing and passes (retry later).
        cls, what = NoAvailableAccountError, "no free relay account, retry later"
    elif any(m in text for m in _QUEUE_FULL_MARKERS):
        cls = QueueFullError
    elif code == 4 and any(m in text for m in _UNKNOWN_TASK_MARKERS):
        cls = RelatedTaskNotFoundError  # new-api says 4 where the proxies say 3
    detail = f": {description.strip()}" if description.strip() else ""
    if cls is BannedPromptError and properties and properties.get("bannedWord"):
        detail += f" (banned word: {properties['bannedWord']!r})"
    if cls is QueueFullError:
        # Nothing was created: the fix is to send fewer at once, which quickmj can do.
        detail += (
            "; nothing was created: AsyncClient(admission='adaptive') or an AccountPool "
            "queues submits until the account has room"
        )
    elif _NEW_API_NO_QUOTA in text:
        detail += "; nothing was created: the account's quota cannot pay for it (top it up)"
    return cls(
        f"{path}: {what} (code {code}){detail}",
        code=code,
        description=description,
        properties=properties,
        status=status,
        body=body,
        path=path,
        headers=headers,
        request_id=request_id or find_request_id(headers or {}, body),
    )


def quota_exhausted(exc: SubmitRejectedError) -> bool:
    """The relay refused because the key has no quota left (new-api, TrueAI's limits)."""
    text = exc.description.lower()
    return any(m in text for m in _QUOTA_MARKERS)


def task_unknown(exc: BaseException) -> bool:
    """The relay says the task id does not exist (the one rule for every call).

    TrueAI: HTTP 404 with code 3; new-api: HTTP 400 code 4 ``task_no_found``; the
    proxies: code 3 ``关联任务不存在或已失效``. Not: code 3 "no usable account" or
    image-seed's HTTP 200 code 3 "no seed found".
    """
    if not isinstance(exc, SubmitRejectedError) or isinstance(exc, NoAvailableAccountError):
        return False
    text = exc.description.lower()
    if any(m in text for m in _UNKNOWN_TASK_MARKERS):
        return True
    return exc.code == 3 and exc.status == 404


def find_request_id(headers: Mapping[str, str], text: str = "") -> str | None:
    """The relay's request id, from a header or new-api's ``(request id: ...)`` text."""
    for name in ("X-Request-Id", "X-Oneapi-Request-Id", "X-Trace-Id"):
        value = headers.get(name)
        if value:
            return value[:80]
    m = _REQUEST_ID.search(text)
    return m.group(1) if m else None


# ---- reading answers ----


def read_answer(
    answer: Answer, path: str, key: Secret, *, dialect: str = "auto", creates: bool = False
) -> Any:
    """The JSON of a 2xx answer (EMPTY when it has no body), or the error it means.

    ``creates``: the request may create a job (a submit), so an unreadable 2xx is never
    taken for "not served" unless the dialect's server certainly lacks the route.
    """
    data: Any = EMPTY
    parse_error: Exception | None = None
    if answer.status != 204 and answer.body.strip():
        try:
            data = loads(answer.body, plain=answer.plain)
        except (ValueError, RecursionError) as exc:
            parse_error = exc
    if 200 <= answer.status < 300 and parse_error is None:
        return data
    if answer.status < 300:
        raise _unreadable(answer, path, key, dialect, creates)
    raise status_error(answer, path, key, data=data)


def _unreadable(
    answer: Answer, path: str, key: Secret, dialect: str, creates: bool
) -> QuickMJError:
    text = _excerpt(answer.body, key)
    html = answer.body.lstrip()[:1] == b"<"
    route = route_of(path)
    if html and (not creates or not serves(dialect, route)):
        # new-api answers routes it lacks with its web app (a 200 HTML page): for a read,
        # or a route this dialect's server lacks, that page means "not served here".
        common: dict[str, Any] = {"status": answer.status, "body": text, "path": path}
        return _not_served(path, common, web_page=True)
    kind = "an HTML page" if html else "invalid JSON"
    return MalformedResponseError(
        f"{path}: expected JSON, got {kind} (HTTP {answer.status}): {text[:200]}",
        status=answer.status,
        body=text,
        path=path,
    )


def _excerpt(body: bytes, key: Secret) -> str:
    return key.redact(excerpt(body[: 4 * BODY_EXCERPT_LIMIT]))


def status_error(answer: Answer, path: str, key: Secret, *, data: Any = EMPTY) -> QuickMJError:
    """The error an HTTP status >= 300 means (with the relay's body, if it sent one)."""
    status, headers = answer.status, answer.headers
    body = _excerpt(answer.body, key)
    if data is EMPTY and answer.body.strip():
        try:
            data = loads(answer.body)
        except (ValueError, RecursionError):
            data = EMPTY
    common: dict[str, Any] = {
        "status": status,
        "body": body,
        "path": path,
        "headers": dict(headers),
        "request_id": find_request_id(headers, body),
    }
    if status == 429:
        retry_after = parse_retry_after(headers.get("Retry-After"))
        hint = f"; retry after {retry_after:g} s" if retry_after is not None else ""
        return RateLimitError(
            f"{path}: rate limited (HTTP 429){hint}", retry_after=retry_after, **common
        )
    if _openai_code(data) == "model_not_found":
        # new-api's distributor found no channel for the route's model: refused before
        # anything was forwarded upstream, so nothing was created.
        return _model_unavailable(path, _openai_message(data) or body[:200], common)
    if status in (405, 501) and relay_error(data, common) is None:
        # "No such method here": a web server or app that is not the relay (no relay route
        # answers these), so the route is not served, as with a bare 404.
        return _not_served(path, common)
    if status >= 500:
        return ServerError(f"{path}: relay error HTTP {status}: {body[:200]}", **common)
    if status < 400:
        # Redirects are not followed (the key must not travel on); never read as "empty".
        location = key.redact(headers.get("Location", ""))
        shown = display_url(location) if location else "no location"
        return HTTPStatusError(
            f"{path}: the relay answered a redirect (HTTP {status}) to {shown}; check base_url",
            **common,
        )
    if status in (401, 403):
        return _auth_error(path, status, data, body, common)
    found = relay_error(data, common)
    if found is not None:
        return found
    if status == 404:
        return _not_served(path, common)
    return HTTPStatusError(f"{path}: HTTP {status}: {body[:200]}", **common)


def _auth_error(
    path: str, status: int, data: Any, body: str, common: dict[str, Any]
) -> QuickMJError:
    # Only the relay's own answers come here: an image host's 401/403 (no key went there,
    # or new-api's keyless image route passing on the CDN's) is Relay.download's
    # ImageExpiredError.
    message = _mask_key_hint(_relay_message(data) or body[:200] or "no detail")
    common["body"] = _mask_key_hint(common.get("body", ""))
    reason = _auth_reason(message)
    return AuthenticationError(
        f"{path}: authentication failed (HTTP {status}): {message}; {_AUTH_HINTS[reason]}",
        reason=reason,
        **common,
    )


# What a relay's 401/403 text says is wrong with the key (new-api model/token.go
# ValidateUserToken and its i18n token.* / distributor.* messages, TrueAI's
# SimpleAuthMiddleware), first match wins; None: it did not say.
_AUTH_REASONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("exhausted", ("额度已用尽", "quota is exhausted", "tokenstatusexhausted")),
    ("expired", ("已过期", "has expired")),
    ("disabled", ("状态不可用", "status is unavailable", "账号已禁用", "账号不可用")),
    ("model_forbidden", ("无权访问模型", "no access to model")),
    ("invalid", ("无效的令牌", "invalid token", "未提供令牌", "token not provided")),
)
_AUTH_HINTS: dict[str | None, str] = {
    "exhausted": "the key is valid but its quota is used up: top it up on the relay",
    "expired": "the key has expired: renew it (or make a new one) on the relay",
    "disabled": "the key (or its account) is disabled: enable it on the relay",
    "model_forbidden": "the key may not use this action's model: allow it on the relay",
    "invalid": "check the API key and the auth_scheme",
    None: "check the API key and the auth_scheme",
}
# new-api quotes a key as [sk-abc***xyz] in its "exhausted" message: not the key, but
# no part of it is repeated either.
_KEY_HINT = re.compile(r"sk-[A-Za-z0-9]{1,12}\*{3}[A-Za-z0-9]{1,12}")


def _auth_reason(message: str) -> str | None:
    text = message.lower()
    for reason, markers in _AUTH_REASONS:
        if any(m in text for m in markers):
            return reason
    return None


def _mask_key_hint(text: str) -> str:
    return _KEY_HINT.sub("sk-***", text)


_REQUEST_ID_NOTE = re.compile(r"\s*\(request id: [^)]*\)")


def relay_words(body: str) -> str:
    """What the relay said in an error ``body`` (its JSON message, else the text), without
    new-api's ``(request id: ...)`` note: for one-line summaries."""
    data: Any = None
    with contextlib.suppress(ValueError, RecursionError):
        data = loads(body.encode())
    return _REQUEST_ID_NOTE.sub("", _relay_message(data) or body).strip()


def _relay_message(data: Any) -> str | None:
    """new-api's ``{"error": {"message"}}``, or a ``{"success": false, "message"}`` body."""
    found = _openai_message(data)
    if found is None and isinstance(data, dict) and isinstance(data.get("message"), str):
        found = data["message"]
    return found


# new-api's distributor names the model and the group: "当前分组 default 下对于模型
# mj_custom_zoom 无可用渠道" (older), "分组 default 下模型 mj_x 无可用渠道（distributor）",
# "No available channel for model mj_x under group default (distributor)".
_MODEL_NAMED = re.compile(r"(?:模型\s*|\bmodel\s+)([A-Za-z0-9_.:/-]+)", re.IGNORECASE)
_GROUP_NAMED = re.compile(r"(?:分组\s*|\bgroup\s+)([A-Za-z0-9_.:/()-]+)", re.IGNORECASE)


def _model_unavailable(path: str, message: str, common: dict[str, Any]) -> ModelUnavailableError:
    model = _MODEL_NAMED.search(message)
    group = _GROUP_NAMED.search(message)
    name = model.group(1) if model else None
    what = f"model {name}" if name else "the model of this action"
    return ModelUnavailableError(
        f"{path}: the relay has no channel for {what} in your key's group (HTTP "
        f"{common.get('status', 503)} model_not_found): {message.strip()}; nothing was "
        "created; ask the relay's operator to enable it",
        model=name,
        group=group.group(1) if group else None,
        **common,
    )


def _not_served(path: str, common: dict[str, Any], *, web_page: bool = False) -> QuickMJError:
    # No real relay answers a bare 404 for an unknown task (protocol.md §3.3): a 404
    # without a relay body means the route itself is not there.
    route = route_of(path)
    dialects = ROUTES.get(route, ())
    if len(dialects) == 3:
        where = "; every relay serves it: check base_url"
    else:
        where = f"; relays that serve it: {', '.join(dialects)}" if dialects else ""
    how = "answered a web page" if web_page else f"HTTP {common.get('status', 404)}"
    return UnsupportedByRelayError(
        f"{path}: this relay does not serve {route} ({how}){where}",
        route=route,
        dialects=dialects,
        **common,
    )


def route_of(path: str) -> str:
    """``/task/123/fetch`` -> ``GET /task/{id}/fetch`` style keys (method from the table)."""
    bare = re.sub(r"^(?:GET|POST) ", "", path)
    shape = re.sub(r"^/task/[^/]+/(fetch|image-seed|cancel)$", r"/task/{id}/\1", bare)
    for route in ROUTES:
        if route.split(" ", 1)[1] == shape:
            return route
    return path


def relay_error(data: Any, common: Mapping[str, Any]) -> SubmitRejectedError | None:
    """If ``data`` is an error body in any relay's shape, the matching error, else None.

    Shapes: ``{code, description}`` (codes other than 1/21/22), TrueAI's
    ``{success: false, code, message}``, and older new-api's ``{error: {message, type}}``.
    """
    if not isinstance(data, dict):
        return None
    code = data.get("code")
    if data.get("success") is False:
        try:
            failure = structure(data, FailureBody, what="failure")
        except MalformedResponseError:
            return None  # not the relay's failure shape after all ({"code": "E42"}, ...)
        return rejection(failure.code, failure.message, **common)
    if isinstance(code, int) and not isinstance(code, bool):
        if code in SUBMIT_OK:
            return None
        result = structure(data, SubmitResult, what="error body")
        return rejection(result.code, result.description, result.properties, **common)
    message = _openai_message(data)
    if message is not None:
        # new-api before it answered MJ-shaped errors: {"error": {"message": "task_no_found"}}
        return rejection(4, message, **common)
    return None


def _openai_code(data: Any) -> Any:
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        return data["error"].get("code")
    return None


def _openai_message(data: Any) -> str | None:
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        message = data["error"].get("message")
        if isinstance(message, str):
            return message
    return None


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds (a number or an HTTP date), within 1 s to 60 s.

    None when absent or unreadable (the caller's own backoff applies). Every value read
    is clamped by ``clamp_retry_after`` (0, negative, NaN and past dates: 1 s; ``inf``,
    ``999999`` and far dates: 60 s), so ``RateLimitError.retry_after`` is always sane.
    """
    import email.utils
    import time

    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - time.time()
    return clamp_retry_after(seconds)


# ---- per-call answers ----


def read_submit(data: Any, path: str) -> SubmitResult:
    """A submit's answer: the SubmitResult for codes 1/21/22, else the typed rejection.

    An answer that cannot be read raises MalformedResponseError; the caller treats it
    as an unknown outcome (the submit was sent).
    """
    shown = excerpt(str(data)) if data is not EMPTY else ""
    if not isinstance(data, dict):
        raise MalformedResponseError(
            f"{path}: expected a submit result object, got {_describe(data)}", body=shown, path=path
        )
    found = relay_error(data, {"status": 200, "body": shown, "path": path})
    if found is not None:
        raise found
    if "code" not in data:
        # e.g. the OpenAI-shaped sample in the relay's docs for /submit/action.
        raise MalformedResponseError(
            f"{path}: expected {{code, description, result}}, got keys {sorted(data)[:8]}",
            body=shown,
            path=path,
        )
    result = structure(data, SubmitResult, what="submit result")
    if not result.result:
        raise MalformedResponseError(
            f"{path}: code {result.code} but no task id in 'result'", body=shown, path=path
        )
    return result


def read_fetch(data: Any, path: str) -> Task | None:
    """A fetch answer: the Task, or None for the relay's "unknown id" answers."""
    if data is EMPTY or data is None:
        return None  # OSS-Java: an empty 200; TrueAI: 204
    if isinstance(data, dict) and "id" not in data:
        found = relay_error(data, {"status": 200, "body": excerpt(str(data)), "path": path})
        if found is not None:
            if task_unknown(found):
                return None
            raise found
    return structure_task(data)


def read_task_list(data: Any, path: str) -> list[Any]:
    """A list answer as a JSON array, left raw (null or empty means none)."""
    if data is EMPTY or data is None:
        return []
    if not isinstance(data, list):
        found = relay_error(data, {"status": 200, "body": excerpt(str(data)), "path": path})
        if found is not None:
            raise found
        raise MalformedResponseError(
            f"{path}: expected a JSON array of tasks, got {_describe(data)}",
            body=excerpt(str(data)),
            path=path,
        )
    return data


def read_seed(data: Any, path: str) -> str:
    """image-seed's answer: the seed string (codes other than 1 raise their rejection)."""
    if isinstance(data, dict) and "code" not in data and "id" in data:
        # The relay's docs show a Task here (a copy error): refuse clearly.
        raise MalformedResponseError(
            f"{path}: expected {{code, result}} with the seed, got a task object", path=path
        )
    return read_submit(data, path).result or ""


def read_upload(data: Any, path: str) -> list[str]:
    """upload-discord-images' answer: ``result`` is an array of URLs."""
    if isinstance(data, dict) and isinstance(data.get("result"), list):
        found = relay_error(data, {"status": 200, "body": excerpt(str(data)), "path": path})
        if found is not None:
            raise found
        urls = [u for u in data["result"] if isinstance(u, str)]
        if len(urls) == len(data["result"]):
            return urls
    if isinstance(data, dict) and isinstance(data.get("result"), str):
        return [read_submit(data, path).result or ""]
    found = relay_error(data, {"status": 200, "body": excerpt(str(data)), "path": path})
    if found is not None:
        raise found
    raise MalformedResponseError(f"{path}: expected {{code, result: [urls]}}", path=path)


def _describe(data: Any) -> str:
    if data is EMPTY:
        return "an empty body"
    if data is None:
        return "null"
    return type(data).__name__


# ---- submits: what may be sent again, and what is an unknown outcome ----


def outcome_unknown(exc: QuickMJError) -> bool:
    """After a submit was sent, does ``exc`` leave it open whether a job was created?

    Yes for a lost or cut answer, a timeout, a gateway's 5xx, an unreadable 2xx (HTML,
    empty, garbled) and new-api's code 5 "my call upstream failed". No for a failed
    connect (nothing was sent) and for every rejection the relay itself answered.
    """
    if isinstance(exc, ConnectError):
        return False
    if isinstance(exc, (TransportError, ServerError, MalformedResponseError)):
        return True
    if isinstance(exc, SubmitRejectedError):
        text = exc.description.lower()
        return exc.code == 5 or any(m in text for m in _UPSTREAM_FAILED_MARKERS)
    return False


def outage_error(exc: BaseException) -> bool:
    """Does ``exc`` say the relay is out of reach: nothing reached it (a refused connect,
    a name that no longer resolves), or only a gateway's 5xx or silence came back?

    The one rule behind both outage stops: the batch's breaker counts such submits, the
    poller such reads (``PollPolicy.unreachable_after``). A connection cut by a relay that
    otherwise answers does not count, nor does any answer of the relay's own (4xx, 429, a
    rejection). A SubmitOutcomeUnknownError counts by what caused it.
    """
    if isinstance(exc, SubmitOutcomeUnknownError):
        return isinstance(exc.__cause__, (ConnectError, ServerError, RequestTimeoutError))
    return isinstance(exc, (ConnectError, ServerError, RequestTimeoutError))


def retry_read(exc: QuickMJError) -> bool:
    """Reads (fetch, list, image-seed, downloads) are retried on these."""
    if isinstance(exc, (TransportError, ServerError, RateLimitError)):
        return True
    return isinstance(exc, SubmitRejectedError) and exc.code == 5  # the relay's upstream hiccup


def retry_submit(exc: QuickMJError, *, backpressure: bool) -> bool:
    """Submits are retried only when nothing can have been created.

    Always after a failed connect; after a 429 or a queue-full answer only when
    ``backpressure`` (``RetryPolicy.retry_submits``) allows it.
    """
    if isinstance(exc, ConnectError):
        return True
    if outcome_unknown(exc):
        return False  # whatever its words, a job may exist: never sent again
    return backpressure and isinstance(exc, (RateLimitError, QueueFullError))


def store_lag(exc: QuickMJError) -> bool:
    """Could ``exc``, answered to ``/submit/change`` for a parent seen SUCCESS, be the store lag?

    midjourney-proxy saves task updates on a background executor (``DiscordInstanceImpl``
    ``asyncSaveAndNotify``) and ``SubmitController.change`` reads its store: right after
    the parent succeeded it can answer code 3 关联任务不存在或已失效 or code 4 关联任务状态错误
    (novicezk#252); new-api relays those, or says ``task_status_not_success`` itself. Such
    an answer created nothing, so the change may be sent once more after a pause.
    """
    if not isinstance(exc, SubmitRejectedError) or isinstance(exc, NoAvailableAccountError):
        return False
    text = exc.description.lower()
    return exc.code in (3, 4) and any(m in text for m in _STORE_LAG_MARKERS)


def with_mode_hint(exc: UnsupportedByRelayError, prefix: str) -> UnsupportedByRelayError:
    """A "route not served" error for a request under a speed-mode prefix, saying so.

    A server without ``/mj-fast``-style routes (self-hosted midjourney-proxy) answers
    every prefixed path 404: the prefix, not the route, is then what it lacks.
    """
    return exc.reworded(
        f"{exc}; the request went to {prefix}{exc.path}: this relay may serve no speed-mode "
        "prefix (midjourney-proxy serves none): try mode=None"
    )


# ---- tasks: ids, changes, duplicate rows ----


def task_path(task_id: str, tail: str) -> str:
    """``/task/<id>/<tail>`` with the id as one encoded segment."""
    try:
        return f"/task/{segment(task_id)}/{tail}"
    except UnicodeEncodeError:
        raise InvalidInputError("task id is not valid text (it holds a lone surrogate)") from None


_PLAIN_ID = re.compile(r"[\w.~-]{1,200}", re.ASCII).fullmatch


def check_task_id(task_id: str) -> str:
    """Validate an id before it is tracked or sent (one typed error, for its caller only)."""
    if type(task_id) is str and _PLAIN_ID(task_id):  # the usual digits, checked in C
        return task_id
    task_path(task_id, "")
    if len(task_id) > 200 or any(ord(c) < 32 for c in task_id):
        raise InvalidInputError(f"not a task id: {task_id[:40]!r}")
    return task_id


def raw_id(raw: Any) -> str | None:
    """The id of a raw JSON task (numbers become strings), or None if it has none."""
    return as_id(raw.get("id")) if type(raw) is dict else None


def _bare(url: Any) -> Any:
    # new-api appends ?rand=<ns> to a running task's imageUrl on every read, and Discord
    # re-signs links (ex/is/hm): the query string says nothing about the task.
    return url.partition("?")[0] if type(url) is str and "?" in url else url


def _count(value: Any) -> int:
    return len(value) if type(value) is list else 0


def change_key(raw: Mapping[str, Any]) -> tuple[Any, ...]:
    """What makes two reports of a task different (the one "the task changed" rule).

    Status, progress, fail reason, the image and video URLs without their query
    string, and how many buttons and result files it shows. Two reads with equal keys
    are the same state: no callback fires and nothing is parsed again.
    """
    get = raw.get
    return (
        get("status"),
        get("progress"),
        get("failReason"),
        _bare(get("imageUrl")),
        _bare(get("videoUrl")),
        _count(get("buttons")),
        _count(get("imageUrls")),
        _count(get("videoUrls")),
    )


_STAGE = {"MODAL": 0, "": 1, "NOT_START": 1, "SUBMITTED": 2, "IN_PROGRESS": 3}
# TERMINAL_STATUSES (SUCCESS, FAILURE, CANCEL) is defined with TaskStatus.is_terminal.
#: Raw statuses of a job that has not started (new-api's "" before its first refresh).
QUEUED_STATUSES = frozenset({"", "NOT_START", "SUBMITTED"})


def not_started(raw: Mapping[str, Any]) -> bool:
    """The job waits to start: a queued status, or IN_PROGRESS at 0 % (midjourney-proxy
    sets IN_PROGRESS on Midjourney's "(Waiting to start)", so a relax job sitting in
    Midjourney's own queue reads that way), or no status string at all."""
    status = raw.get("status")
    if type(status) is not str or status in QUEUED_STATUSES:
        return True
    return status == "IN_PROGRESS" and progress_of(raw) == 0


def progress_of(raw: Mapping[str, Any]) -> int:
    text = raw.get("progress")
    if type(text) is str:
        digits = text.strip().rstrip("%").split(".", 1)[0]
        if digits.isdecimal():  # not isdigit(): int() refuses '¹'
            return min(int(digits), 100)
    return 0


def how_far(raw: Mapping[str, Any]) -> tuple[int, int]:
    """How far a report says the job got: terminal > running > queued > MODAL, then %."""
    status = raw.get("status")
    if type(status) is not str:
        status = ""  # null, or a shape no relay sends ({}, []): not a status
    stage = 4 if status in TERMINAL_STATUSES else _STAGE.get(status, 2)
    return (stage, progress_of(raw))


def merge_rows(rows: Iterable[Any], wanted: Iterable[str] | None = None) -> dict[str, Any]:
    """Raw tasks by id; for an id answered twice, the row that got furthest.

    After ``/submit/modal`` new-api keeps two rows with one id: the stale MODAL one and
    the one that runs. Rows without an id, or with an id nobody asked for, are dropped.
    """
    lookup = None if wanted is None else set(wanted)
    out: dict[str, Any] = {}
    for row in rows:
        task_id = row.get("id") if type(row) is dict else None
        if type(task_id) is not str:
            task_id = raw_id(row)
        if task_id is None or (lookup is not None and task_id not in lookup):
            continue
        seen = out.get(task_id)
        if seen is None or how_far(row) > how_far(seen):
            out[task_id] = row
    return out
