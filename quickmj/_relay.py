"""The relay's endpoints as typed calls: send through ``_http``, read with ``_protocol``.

Every read (fetch, list-by-condition, image-seed, task list, downloads) goes through the
one retry loop; submits are retried only when nothing can have been created, and an
answer that leaves it open whether a job exists becomes SubmitOutcomeUnknownError.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import IO, Any
from urllib.parse import urlsplit

import attrs

from ._config import Dialect, RetryPolicy, Secret, Timeouts
from ._converter import structure_task, unstructure
from ._http import ClosedInFlight, Http
from ._images import media_type, what_came
from ._models import ListByIdsRequest, SubmitRequest, SubmitResult, Task, TaskStatus, UploadRequest
from ._protocol import (
    NEW_API_DIALECTS,
    STORE_LAG_ROUTES,
    find_request_id,
    merge_rows,
    outcome_unknown,
    read_answer,
    read_fetch,
    read_seed,
    read_submit,
    read_task_list,
    read_upload,
    retry_read,
    retry_submit,
    status_error,
    store_lag,
    task_path,
    task_unknown,
    with_mode_hint,
)
from ._retry import retrying
from ._transport import Answer
from ._urls import display_url
from .errors import (
    APIError,
    DownloadError,
    ImageExpiredError,
    MalformedResponseError,
    NotAnImageError,
    NotFoundError,
    QuickMJError,
    RateLimitError,
    SubmitOutcomeUnknownError,
    SubmitRejectedError,
    TaskNotFoundError,
    TransportError,
    UnsupportedByRelayError,
)

__all__ = ("Relay", "Submitted")

logger = logging.getLogger("quickmj")

#: Seconds before a change refused by a lagging store (``store_lag``) is sent again.
#: midjourney-proxy saves on a background executor, normally within milliseconds; its
#: users saw the same call pass when simply repeated (novicezk#252).
STORE_LAG_PAUSE = 1.5


@attrs.frozen
class Submitted:
    """An accepted submit: the relay's SubmitResult and what its answer said around it
    (the response headers, already redacted of the key, and the relay's request id)."""

    result: SubmitResult
    headers: Mapping[str, str] = attrs.field(factory=dict, repr=False)
    request_id: str | None = None


class Relay:
    """One client's view of the relay: an endpoint per method."""

    def __init__(self, http: Http, retry: RetryPolicy, dialect: Dialect) -> None:
        self.http = http
        self.retry = retry
        self.dialect = dialect
        self._loopback_logged = False  # the loopback-link rewrite is logged once

    def __repr__(self) -> str:
        return f"<Relay {self.http.base_url} dialect={self.dialect}>"

    # ---- plumbing ----

    async def _read(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        read_timeout: float | None = None,
        deadline: float | None = None,
    ) -> Any:
        """A read, retried per policy; returns the answer's JSON (or EMPTY)."""

        async def once() -> Any:
            answer = await self.http.exchange(
                method, path, body=body, read_timeout=read_timeout, deadline=deadline
            )
            return self._interpret(answer, path)

        return await retrying(
            once,
            policy=self.retry,
            may_retry=retry_read,
            sleep=self.http.sleep,
            what=f"{method} {path}",
            total=_call_total(self.http.timeouts, deadline),
        )

    def _interpret(self, answer: Answer, path: str, *, creates: bool = False) -> Any:
        try:
            return read_answer(answer, path, self.http.key, dialect=self.dialect, creates=creates)
        except UnsupportedByRelayError as exc:
            if self.http.prefix == "/mj":
                raise
            raise with_mode_hint(exc, self.http.prefix) from None

    # ---- submits ----

    async def submit(
        self, route: str, request: SubmitRequest, *, parent_succeeded: bool = False
    ) -> Submitted:
        """``POST <route>`` (``/submit/imagine``, ``/insight-face/swap``, ...), with the
        answer's request id and headers (a job handle shows them).

        Re-sent only when nothing can have been created (a failed connect; with
        ``RetryPolicy.retry_submits``, a 429 or queue-full answer too). A change whose
        parent the caller saw SUCCESS (``parent_succeeded``) is sent once more after
        ``STORE_LAG_PAUSE`` when midjourney-proxy's store lags behind (``store_lag``).
        """
        body = unstructure(request)
        policy = self.retry
        lag_retry = parent_succeeded and route in STORE_LAG_ROUTES

        async def send() -> Submitted:
            answer = await self.http.exchange("POST", route, body=body)
            result = read_submit(self._interpret(answer, route, creates=True), route)
            # The headers are already redacted of the key (Http._redacted).
            headers = dict(answer.headers)
            return Submitted(result, headers, find_request_id(headers))

        async def once() -> Submitted:
            nonlocal lag_retry
            try:
                return await send()
            except SubmitRejectedError as exc:
                if not (lag_retry and store_lag(exc)):
                    raise
                lag_retry = False  # once: a second such answer is the relay's word
                logger.info("POST %s: %s; the parent succeeded: sending again", route, exc)
            await self.http.sleep(STORE_LAG_PAUSE)
            return await send()

        try:
            answered = await retrying(
                once,
                policy=policy,
                may_retry=lambda exc: retry_submit(exc, backpressure=policy.retry_submits),
                sleep=self.http.sleep,
                what=f"POST {route}",
                total=self.http.timeouts.total,  # never cuts the attempt (creates=True)
                creates=True,
            )
        except ClosedInFlight as exc:
            raise self._unknown(
                route, request, "the client was closed before the answer came"
            ) from exc
        except QuickMJError as exc:
            if outcome_unknown(exc):
                raise self._unknown(route, request, _reason(exc, route), exc) from exc
            raise
        result = answered.result
        logger.info("POST %s -> task %s (code %d)", route, result.task_id, result.code)
        return answered

    @staticmethod
    def _unknown(
        route: str, request: SubmitRequest, reason: str, cause: BaseException | None = None
    ) -> SubmitOutcomeUnknownError:
        # A gateway's 502 still names its request id: keep what the cause saw of the answer.
        answered = cause if isinstance(cause, APIError) else None
        return SubmitOutcomeUnknownError(
            f"POST {route}: {reason}; the relay may or may not have created the job",
            method="POST",
            path=route,
            request=request,
            state=getattr(request, "state", None),
            status=answered.status if answered else None,
            headers=answered.headers if answered else None,
            request_id=answered.request_id if answered else None,
        )

    async def upload(self, request: UploadRequest) -> list[str]:
        """``POST /submit/upload-discord-images``: URLs of the uploaded images."""
        route = "/submit/upload-discord-images"
        answer = await self.http.exchange("POST", route, body=unstructure(request))
        return read_upload(self._interpret(answer, route), route)

    # ---- reads ----

    async def fetch(self, task_id: str) -> Task:
        """``GET /task/{id}/fetch``, the id checked; TaskNotFoundError for unknown ids.

        Where fetch is known to answer a stale row after a modal (new-api), a MODAL
        answer is checked against list-by-condition, which has the running row too.
        """
        path = task_path(task_id, "fetch")
        with _unknown_task(task_id):
            task = read_fetch(await self._read("GET", path), path)
        if task is None:
            raise TaskNotFoundError(task_id)
        _check_id(task, task_id, path)
        if task.status is TaskStatus.MODAL and self.dialect in NEW_API_DIALECTS:
            rows = await self.read_many([task_id])
            if task_id in rows:
                return structure_task(rows[task_id], task_id)
        return task

    async def list_raw(self, ids: Sequence[str]) -> list[Any]:
        """One ``POST /task/list-by-condition``, the answer left as JSON."""
        path = "/task/list-by-condition"
        body = unstructure(ListByIdsRequest(ids=tuple(ids)))
        return read_task_list(await self._read("POST", path, body), path)

    async def read_many(self, ids: Sequence[str]) -> dict[str, Any]:
        """Raw tasks by id for ``ids`` (one chunk): duplicates merged, strangers dropped.

        Relays may truncate an answer: ids left out are asked for again while re-asking
        makes progress. Ids still missing are simply absent from the result.
        """
        found: dict[str, Any] = {}
        asked = list(dict.fromkeys(ids))
        while asked:
            got = merge_rows(await self.list_raw(asked), asked)
            found.update(got)
            if not got:
                break
            asked = [i for i in asked if i not in found]
        return found

    async def image_seed(self, task_id: str) -> str:
        """``GET /task/{id}/image-seed``: the seed (TaskNotFoundError for unknown ids)."""
        path = task_path(task_id, "image-seed")
        seconds = self.http.timeouts.image_seed
        with _unknown_task(task_id):
            data = await self._read("GET", path, read_timeout=seconds, deadline=seconds + 15)
            return read_seed(data, path)

    async def task_list(self) -> list[Any]:
        """``GET /task/list`` (self-hosted proxies: the latest tasks of every user)."""
        path = "/task/list"
        return read_task_list(await self._read("GET", path), path)

    async def read_base(self, path: str, *, retry_rate_limit: bool = True) -> Any:
        """``GET <path>`` below the base URL itself, not ``/mj`` (new-api's billing and
        status routes: ``_billing``), retried like every read (a 429 only when
        ``retry_rate_limit``); its JSON (or EMPTY)."""
        http = self.http.at_base()

        async def once() -> Any:
            answer = await http.exchange("GET", path)
            return read_answer(answer, path, http.key, dialect=self.dialect)

        def may_retry(exc: QuickMJError) -> bool:
            return retry_read(exc) and (retry_rate_limit or not isinstance(exc, RateLimitError))

        return await retrying(
            once,
            policy=self.retry,
            may_retry=may_retry,
            sleep=http.sleep,
            what=f"GET {path}",
            total=_call_total(http.timeouts),
        )

    async def cancel(self, task_id: str) -> None:
        """``POST /task/{id}/cancel`` (TrueAI; admins only on a stock server)."""
        path = task_path(task_id, "cancel")
        with _unknown_task(task_id):
            self._interpret(await self.http.exchange("POST", path), path)

    # ---- downloads ----

    async def download(self, url: str, fh: IO[bytes], max_bytes: int) -> tuple[str, str]:
        """Stream ``url`` into ``fh`` (retried from the start).

        Returns the Content-Type and the media type the file's first bytes show. A link
        that is refused or gone (HTTP 403/404/410) is ImageExpiredError; a 200 answer that
        is no image or video (a web page, whatever its label; nothing at all) is
        NotAnImageError. Neither is retried here: ``AsyncClient.download`` re-reads the
        task for a fresher link instead.
        """
        target = self._through_relay(url)

        def on_error(answer: Answer, where: str, key_sent: bool) -> Exception:
            if answer.status in _GONE or (answer.status == 401 and not key_sent):
                return _gone(answer, where, self.http.key)
            error = status_error(answer, where, self.http.key)
            if isinstance(error, NotFoundError):  # not a missing route: a missing file
                return DownloadError(f"{where}: the image is not there (HTTP {answer.status})")
            return error

        async def once() -> tuple[str, str]:
            fh.seek(0)
            fh.truncate()
            got = await self.http.download(target, fh, max_bytes, on_error)
            mime = media_type(got.head) if got.size else None
            if mime is None:
                what = what_came(got.head, got.size, got.content_type)
                raise NotAnImageError(
                    f"{got.where}: expected an image, got {what}", url=got.where, got=what
                )
            return got.content_type, mime

        return await retrying(
            once,
            policy=self.retry,
            may_retry=retry_read,
            sleep=self.http.sleep,
            what="download",
            total=self.http.timeouts.download_total,  # a download's own bound, retries included
        )

    def _through_relay(self, url: str) -> str:
        """A loopback link to the relay's image route, read through the relay's origin.

        new-api without a ServerAddress writes ``http://localhost:3000/mj/image/{id}``
        (QuantumNous/new-api#144); that route is its own (no key needed), so the same path
        under ``base_url`` is the image. Other links are left as they are.
        """
        try:
            parts = urlsplit(url.strip())
            host = parts.hostname or ""
        except (AttributeError, ValueError):
            return url  # check_download_url refuses it in its own words
        if (
            parts.scheme not in ("http", "https")
            or not _loopback(host)
            or not _IMAGE_ROUTE.fullmatch(parts.path)
            or self.http.is_relay_origin(url)
            or parts.username is not None  # refused by check_download_url, not rewritten
        ):
            return url
        rewritten = self.http.base_url + parts.path + (f"?{parts.query}" if parts.query else "")
        if not self._loopback_logged:
            self._loopback_logged = True
            logger.info(
                "image link %s points at a loopback host (a new-api relay without a "
                "ServerAddress?): reading it through %s instead",
                self.http.key.redact(display_url(url)),
                self.http.key.redact(display_url(rewritten)),
            )
        return rewritten


def _call_total(timeouts: Timeouts, attempt: float | None = None) -> float | None:
    """``Timeouts.total`` for a call whose attempts may each take ``attempt`` (default
    ``request``) seconds: never less than one whole attempt, so a ``request`` raised above
    ``total`` still gets its full time once."""
    if timeouts.total is None:
        return None
    return max(timeouts.total, attempt or timeouts.request)


@contextlib.contextmanager
def _unknown_task(task_id: str) -> Iterator[None]:
    """The relay's "no such task" answers (any dialect) become TaskNotFoundError."""
    try:
        yield
    except QuickMJError as exc:
        if task_unknown(exc):
            raise TaskNotFoundError(task_id) from exc
        raise


def _check_id(task: Task, task_id: str, path: str) -> None:
    # A relay (or something pretending to be one) must not hand us another task.
    if task.id != task_id:
        raise MalformedResponseError(
            f"{path}: asked for task {task_id!r}, the answer is task {task.id[:40]!r}",
            path=path,
        )


#: What an image host answers for a link that is refused or gone (an expired signature,
#: a deleted attachment); new-api's /mj/image/{id} forwards the CDN's status as it is.
_GONE = frozenset({403, 404, 410})
#: The relay's own image route (new-api: ``/mj/image/:id`` and ``/:mode/mj/image/:id``).
_IMAGE_ROUTE = re.compile(r"(?:/[^/]+)?/mj/image/[^/]+/?")


def _loopback(host: str) -> bool:
    """localhost (and ``*.localhost``), 127.0.0.0/8, ::1, or the unspecified 0.0.0.0/::."""
    host = host.lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


def _gone(answer: Answer, where: str, key: Secret) -> ImageExpiredError:
    """A refused (401/403) or missing (404/410) image: the host's words kept, briefly."""
    status = answer.status
    said = _said(key.redact(answer.body.decode("utf-8", "replace")))
    detail = f"HTTP {status}: {said}" if said else f"HTTP {status}"
    if status in (401, 403):
        text = f"the image host refused the link ({detail}); it has probably expired"
    else:
        text = f"the image is not there any more ({detail})"
    return ImageExpiredError(f"{where}: {text}", url=where, status=status)


def _said(body: str) -> str:
    """What an error body says in one short line: a JSON ``error``/``message``, plain
    text; nothing for a web page."""
    text = body.strip()
    if not text or text.startswith("<"):
        return ""
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        found = data.get("error") or data.get("message") or data.get("description")
        if isinstance(found, dict):
            found = found.get("message")
        text = found if isinstance(found, str) else ""
    line = " ".join(text.split())
    return line[:160] + ("..." if len(line) > 160 else "")


def _reason(exc: QuickMJError, route: str) -> str:
    """The error's message without the route it already names."""
    text = str(exc)
    if isinstance(exc, TransportError):
        return text.removeprefix(f"{exc.method} {exc.path}: ")
    return text.removeprefix(f"{route}: ")
