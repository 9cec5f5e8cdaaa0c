"""Property-based: whatever JSON a relay sends, parsing gives a model or a typed error."""

from __future__ import annotations

import contextlib
from typing import Any

import attrs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quickmj import MalformedResponseError, SubmitRejectedError, SubmitResult, Task
from quickmj._converter import raw_task_id, state_key, structure, to_camel
from quickmj._responses import parse_submit, parse_task_list, parse_task_or_none

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

TASK_KEYS = [to_camel(f.name) for f in attrs.fields(Task)]
SUBMIT_KEYS = [to_camel(f.name) for f in attrs.fields(SubmitResult)]


def objects(keys: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Objects mixing the model's own keys (with arbitrary values) and random extra keys."""
    known = st.dictionaries(st.sampled_from(keys), json_values, max_size=len(keys))
    extra = st.dictionaries(st.text(max_size=10), json_values, max_size=3)
    return st.builds(lambda a, b: {**b, **a}, known, extra)


SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


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
    _ = (task.is_done, task.submitted_at, task.finished_at, task.final_prompt)


@SETTINGS
@given(st.one_of(json_values, st.lists(objects(TASK_KEYS), max_size=3)))
def test_task_answers_parse_or_raise_malformed(data: Any) -> None:
    """fetch and list-by-condition answers: parsed, None, or a typed error."""
    for parse in (parse_task_or_none, parse_task_list):
        with contextlib.suppress(MalformedResponseError, SubmitRejectedError):
            parse(data, "/x")


@SETTINGS
@given(st.one_of(objects(SUBMIT_KEYS), json_values))
def test_submit_answers_parse_or_raise_typed(data: Any) -> None:
    """A submit answer: SubmitResult, a relay rejection, or MalformedResponseError."""
    from quickmj import QuickMJError

    with contextlib.suppress(QuickMJError):
        parse_submit(data, "/submit/x")


@SETTINGS
@given(objects(TASK_KEYS))
def test_poller_fast_path_never_raises(raw: dict[str, Any]) -> None:
    """The poller's pre-check on raw tasks tolerates any shape."""
    task_id = raw_task_id(raw)
    assert task_id is None or isinstance(task_id, str)
    state_key(raw)
