"""OpenTelemetry: a span per HTTP request and per job when installed; nothing otherwise."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import pytest
from fakes import FAST, KEY, Script

from quickmj import BannedPromptError, _otel

sdk = pytest.importorskip("opentelemetry.sdk.trace")
from opentelemetry import trace  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)
from opentelemetry.trace import StatusCode  # noqa: E402

IMAGINE = "POST /mj/submit/imagine"
LIST = "POST /mj/task/list-by-condition"
OK = {"code": 1, "description": "ok", "result": "42", "properties": {}}
DONE = [{"id": "42", "status": "SUCCESS", "progress": "100%", "imageUrl": "https://cdn.test/42.png"}]

@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """quickmj's tracer bound to an in-memory exporter for this test."""
    exporter = InMemorySpanExporter()  # one per test: shutting the provider down stops it
    provider = sdk.TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(_otel, "_unavailable", False)
    monkeypatch.delenv("QUICKMJ_OTEL", raising=False)
    monkeypatch.setattr(trace, "get_tracer", provider.get_tracer)
    yield exporter
    provider.shutdown()


def _by_name(exporter: InMemorySpanExporter) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for span in exporter.get_finished_spans():
        out.setdefault(span.name, []).append(span)
    return out


def _no_key_anywhere(exporter: InMemorySpanExporter) -> None:
    for span in exporter.get_finished_spans():
        assert KEY not in repr(dict(span.attributes or {})), span.name


async def test_a_job_span_holds_its_requests_and_ends_with_the_final_state(
    spans: InMemorySpanExporter,
) -> None:
    script = Script({IMAGINE: {"json": OK}, LIST: {"json": DONE}})
    async with script.client(poll=FAST) as mj:
        task = await (await mj.imagine("cat")).wait()
    assert task.is_success
    named = _by_name(spans)
    (job,) = named["quickmj.job imagine"]
    (submit,) = named["POST /mj/submit/imagine"]
    assert submit.parent is not None and submit.parent.span_id == job.context.span_id
    assert job.attributes["quickmj.task_id"] == "42"
    assert job.attributes["quickmj.status"] == "SUCCESS"
    assert job.attributes["quickmj.account"] == mj.account
    assert job.status.status_code is not StatusCode.ERROR
    assert submit.kind is trace.SpanKind.CLIENT
    assert submit.attributes["http.request.method"] == "POST"
    assert submit.attributes["http.response.status_code"] == 200
    assert submit.attributes["url.full"] == "http://relay.test/mj/submit/imagine"
    assert submit.attributes["server.address"] == "relay.test"
    assert named[LIST]  # the poller's reads are spans too
    _no_key_anywhere(spans)


async def test_a_refused_submit_ends_its_job_span_as_an_error(spans: InMemorySpanExporter) -> None:
    banned = {"code": 24, "description": "banned prompt", "properties": {"bannedWord": "x"}}
    script = Script({IMAGINE: {"json": banned}})
    async with script.client(poll=FAST) as mj:
        with pytest.raises(BannedPromptError):
            await mj.imagine("x")
    (job,) = _by_name(spans)["quickmj.job imagine"]
    assert job.status.status_code is StatusCode.ERROR
    assert job.attributes["error.type"] == "BannedPromptError"


async def test_a_job_nobody_waits_for_ends_when_the_client_closes(
    spans: InMemorySpanExporter,
) -> None:
    script = Script({IMAGINE: {"json": OK}})
    async with script.client(poll=FAST) as mj:
        await mj.imagine("cat")
        assert "quickmj.job imagine" not in _by_name(spans)  # still open
    (job,) = _by_name(spans)["quickmj.job imagine"]
    assert job.attributes["quickmj.outcome"] == "unobserved"


async def test_an_error_status_marks_the_request_span(spans: InMemorySpanExporter) -> None:
    script = Script({"GET /mj/task/7/fetch": {"status": 500, "body": b"boom"}})
    async with script.client(poll=FAST) as mj:
        with pytest.raises(Exception):  # noqa: B017 - ServerError after the retries
            await mj.fetch("7")
    fetches = _by_name(spans)["GET /mj/task/{id}/fetch"]
    assert len(fetches) == 3  # one span per attempt (NO_WAIT allows 3)
    assert all(s.attributes["http.response.status_code"] == 500 for s in fetches)
    assert all(s.status.status_code is StatusCode.ERROR for s in fetches)
    assert all(s.attributes["url.full"] == "http://relay.test/mj/task/7/fetch" for s in fetches)


async def test_quickmj_otel_off_makes_no_spans(
    spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QUICKMJ_OTEL", "off")
    script = Script({IMAGINE: {"json": OK}})
    async with script.client(poll=FAST) as mj:
        await mj.imagine("cat")
    assert not spans.get_finished_spans()


def test_without_opentelemetry_nothing_is_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_otel, "_unavailable", False)
    monkeypatch.setitem(sys.modules, "opentelemetry", None)  # import fails as if absent
    assert _otel.tracer() is None
    assert _otel._unavailable  # and it is not tried again
    assert not _otel.Tracing("acct").on


def test_span_names_do_not_carry_task_ids() -> None:
    assert _otel.span_name("GET", "/mj/task/123/fetch") == "GET /mj/task/{id}/fetch"
    assert _otel.span_name("POST", "/mj-fast/mj/task/list-by-condition") == (
        "POST /mj-fast/mj/task/list-by-condition"
    )
