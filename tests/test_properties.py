"""Property-based: whatever a relay sends, quickmj reads a model or raises a typed error."""

from __future__ import annotations

import contextlib
from typing import Any

import attrs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quickmj import (
    InvalidInputError,
    MalformedResponseError,
    QuickMJError,
    SubmitRejectedError,
    SubmitResult,
    Task,
)
from quickmj._config import Secret
from quickmj._converter import loads, structure, to_camel
from quickmj._protocol import (
    change_key,
    check_task_id,
    how_far,
    merge_rows,
    outcome_unknown,
    raw_id,
    read_answer,
    read_fetch,
    read_seed,
    read_submit,
    read_task_list,
    read_upload,
    task_unknown,
)
from quickmj._transport import Answer

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)

TASK_KEYS = [to_camel(f.name) for f in attrs.fields(Task) if f.name != "raw"]
SUBMIT_KEYS = [to_camel(f.name) for f in attrs.fields(SubmitResult)]
STATUSES = st.sampled_from(
    ["", "NOT_START", "SUBMITTED", "MODAL", "IN_PROGRESS", "SUCCESS", "FAILURE", "CANCEL", "X"]
)


def objects(keys: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Objects mixing the model's own keys (with arbitrary values) and random extra keys."""
    known = st.dictionaries(st.sampled_from(keys), json_values, max_size=len(keys))
    extra = st.dictionaries(st.text(max_size=10), json_values, max_size=3)
    return st.builds(lambda a, b: {**b, **a}, known, extra)


SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KEY = Secret("sk-property-key-123")


@SETTINGS
@given(objects(TASK_KEYS))
def test_task_structures_or_raises_malformed(raw: dict[str, Any]) -> None:
    """Any object: a Task, or MalformedResponseError — never another exception."""
    try:
        task = structure(raw, Task)
    except MalformedResponseError:
        return
    assert isinstance(task.id, str)
    assert task.progress_percent is None or 0 <= task.progress_percent <= 100
    _ = (task.is_done, task.submitted_at, task.finished_at, task.final_prompt, task.extra)


@SETTINGS
@given(st.one_of(json_values, st.lists(objects(TASK_KEYS), max_size=3)))
def test_task_answers_parse_or_raise_typed(data: Any) -> None:
    """fetch and list answers: parsed, None, or a typed error."""
    with contextlib.suppress(MalformedResponseError, SubmitRejectedError):
        read_fetch(data, "/x")
    with contextlib.suppress(MalformedResponseError, SubmitRejectedError):
        assert isinstance(read_task_list(data, "/x"), list)


@SETTINGS
@given(st.one_of(objects(SUBMIT_KEYS), json_values))
def test_submit_answers_parse_or_raise_typed(data: Any) -> None:
    """A submit, image-seed or upload answer: a result, a relay rejection, or
    MalformedResponseError."""
    for read in (read_submit, read_seed, read_upload):
        with contextlib.suppress(QuickMJError):
            read(data, "/submit/x")


@SETTINGS
@given(st.integers(min_value=100, max_value=599), st.binary(max_size=200))
def test_any_answer_is_data_or_a_typed_error(status: int, body: bytes) -> None:
    """Any status with any bytes: JSON data, or a QuickMJError (whose outcome and
    not-found rules never raise themselves)."""
    answer = Answer(status, {"Retry-After": "x"}, body)
    try:
        read_answer(answer, "/task/1/fetch", KEY, creates=status % 2 == 0)
    except QuickMJError as exc:
        assert isinstance(task_unknown(exc), bool)
        assert isinstance(outcome_unknown(exc), bool)


@SETTINGS
@given(st.binary(max_size=300))
def test_loads_only_raises_value_errors(body: bytes) -> None:
    """Any bytes: JSON data (text repaired) or ValueError/RecursionError."""
    with contextlib.suppress(ValueError, RecursionError):
        loads(body)


@SETTINGS
@given(objects(TASK_KEYS))
def test_poller_fast_path_never_raises(raw: dict[str, Any]) -> None:
    """The poller's pre-checks on raw tasks (id, change key, how far) tolerate any shape."""
    task_id = raw_id(raw)
    assert task_id is None or isinstance(task_id, str)
    assert change_key(raw) == change_key(dict(raw))  # compared by equality only
    stage, percent = how_far(raw)
    assert 0 <= stage <= 4 and 0 <= percent <= 100


@SETTINGS
@given(
    st.lists(
        st.one_of(
            json_values,
            st.fixed_dictionaries(
                {"id": st.sampled_from(["a", "b", "c", 7]), "status": STATUSES},
                optional={"progress": st.one_of(st.text(max_size=5), st.none())},
            ),
        ),
        max_size=8,
    )
)
def test_merge_rows_keeps_the_furthest_row_per_asked_id(rows: list[Any]) -> None:
    """Duplicates merge to the row that got furthest; ids nobody asked for are dropped."""
    merged = merge_rows(rows, ["a", "b"])
    assert set(merged) <= {"a", "b"}
    for task_id, row in merged.items():
        same = [r for r in rows if isinstance(r, dict) and raw_id(r) == task_id]
        assert row in same
        assert how_far(row) == max(how_far(r) for r in same)


@SETTINGS
@given(st.text(max_size=60))
def test_task_ids_are_checked_or_refused(task_id: str) -> None:
    """Any text: a usable id, or InvalidInputError (never an encoding error)."""
    with contextlib.suppress(InvalidInputError):
        assert task_id == check_task_id(task_id)


@SETTINGS
@given(st.text(min_size=4, max_size=12), st.text(max_size=40))
def test_redaction_removes_every_plain_occurrence(key: str, text: str) -> None:
    """After redaction the key is gone from any text that held it."""
    secret = Secret(key)
    assert key not in secret.redact(f"{text}{key}{text}")
