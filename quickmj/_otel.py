"""OpenTelemetry spans when the ``otel`` extra is installed; nothing at all otherwise.

- One CLIENT span per HTTP request, named by its route (``POST /mj/submit/imagine``,
  ``GET /mj/task/{id}/fetch``, ``GET`` for an image download): method, URL without its
  query string, server address and port, response status, ``error.type`` on failure.
  The key travels in a header and is never an attribute.
- One span per job (``quickmj.job imagine``), from its submit to the final state this
  client sees (``wait``, ``as_completed``, ``watch``): the submit's HTTP span is its child.
  Attributes: ``quickmj.action``, ``quickmj.task_id``, ``quickmj.account`` (the key's
  fingerprint), ``quickmj.status``, ``quickmj.fail_reason``. A job nobody waits for ends
  when the client closes (``quickmj.outcome = "unobserved"``).

Spans go to the TracerProvider the application configured (OpenTelemetry's global one);
with only the API installed they are no-ops. ``QUICKMJ_OTEL=off`` turns this off. Without
opentelemetry installed, a client pays one failed import per process and an ``is None``
check per request.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from typing import Any

from ._models import FAILED_STATUSES
from ._version import __version__

__all__ = ("Tracing", "request_span")

_OFF = ("0", "off", "false", "no")
_unavailable = False  # opentelemetry is not installed (or QUICKMJ_OTEL=off): checked once
_TASK_SEGMENT = re.compile(r"/task/[^/]+/")


def _api() -> Any:
    """The ``opentelemetry.trace`` module, or None."""
    global _unavailable
    if _unavailable:
        return None
    if os.environ.get("QUICKMJ_OTEL", "").strip().lower() in _OFF:
        _unavailable = True
        return None
    try:
        from opentelemetry import trace
    except ImportError:
        _unavailable = True
        return None
    return trace


def tracer() -> Any:
    """quickmj's tracer from the global provider, or None when tracing is off."""
    trace = _api()
    return None if trace is None else trace.get_tracer("quickmj", __version__)


def span_name(method: str, path: str) -> str:
    """``POST /mj/task/{id}/fetch``: one name per route, not per task."""
    return f"{method} {_TASK_SEGMENT.sub('/task/{id}/', path, count=1)}"


@contextlib.contextmanager
def request_span(
    tracer: Any, name: str, method: str, url: str, host: str | None, port: int | None
) -> Iterator[Any]:
    """A CLIENT span around one HTTP request; the caller sets the status code on it."""
    from opentelemetry.trace import SpanKind, Status, StatusCode

    attributes: dict[str, Any] = {"http.request.method": method, "url.full": url}
    if host:
        attributes["server.address"] = host
    if port:
        attributes["server.port"] = port
    with tracer.start_as_current_span(
        name,
        kind=SpanKind.CLIENT,
        attributes=attributes,
        record_exception=False,  # our own attributes only: nothing a relay wrote
        set_status_on_exception=False,
    ) as span:
        try:
            yield span
        except BaseException as exc:
            span.set_attribute("error.type", type(exc).__name__)
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            raise


def answered(span: Any, status: int) -> None:
    """Record an HTTP answer's status on a request span (4xx/5xx mark it an error)."""
    span.set_attribute("http.response.status_code", status)
    if status >= 400:
        from opentelemetry.trace import Status, StatusCode

        span.set_attribute("error.type", str(status))
        span.set_status(Status(StatusCode.ERROR))


class Tracing:
    """One client's job spans: started at a submit, ended at the final state or close."""

    def __init__(self, account: str) -> None:
        self.tracer: Any = tracer()
        self._account = account
        self._open: dict[str, Any] = {}  # task id -> its job span

    @property
    def on(self) -> bool:
        """Spans are being made."""
        return self.tracer is not None

    def start_job(self, route: str) -> Any:
        """A job span for a submit to ``route`` (None when off)."""
        if self.tracer is None:
            return None
        action = route.rsplit("/", 1)[-1]
        return self.tracer.start_span(
            f"quickmj.job {action}",
            attributes={"quickmj.action": action, "quickmj.account": self._account},
        )

    @contextlib.contextmanager
    def current(self, span: Any) -> Iterator[None]:
        """Make ``span`` the parent of the spans made inside (the submit's request)."""
        if span is None:
            yield
            return
        from opentelemetry.trace import use_span

        with use_span(span, end_on_exit=False):
            yield

    def submitted(self, span: Any, task_id: str) -> None:
        """The relay took the job: keep its span open until its final state."""
        if span is None:
            return
        span.set_attribute("quickmj.task_id", task_id)
        earlier = self._open.pop(task_id, None)
        if earlier is not None:  # a modal continues the same id: the first part ends here
            earlier.set_attribute("quickmj.outcome", "continued")
            earlier.end()
        self._open[task_id] = span

    def failed(self, span: Any, exc: BaseException) -> None:
        """The submit itself failed (rejected, unknown outcome, cancelled)."""
        if span is None:
            return
        from opentelemetry.trace import Status, StatusCode

        span.set_attribute("error.type", type(exc).__name__)
        span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
        span.end()

    def ended(self, task_id: str, status: str | None, fail_reason: str | None) -> None:
        """The final state of a job this client submitted (the poller calls this)."""
        span = self._open.pop(task_id, None)
        if span is None:
            return
        if status is not None:
            span.set_attribute("quickmj.status", status)
        if fail_reason:
            span.set_attribute("quickmj.fail_reason", fail_reason[:200])
        if status in FAILED_STATUSES or status is None:
            from opentelemetry.trace import Status, StatusCode

            span.set_status(Status(StatusCode.ERROR, status or "error"))
        span.end()

    def close(self) -> None:
        """End the spans of jobs nobody waited for."""
        spans, self._open = self._open, {}
        for span in spans.values():
            span.set_attribute("quickmj.outcome", "unobserved")
            span.end()
