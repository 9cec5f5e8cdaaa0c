"""Models and the converter, checked against the relay's own JSON samples."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

import quickmj
from quickmj import (
    ActionRequest,
    BlendDimensions,
    BlendRequest,
    Button,
    ButtonNotFoundError,
    DescribeRequest,
    ImagineRequest,
    ListByIdsRequest,
    MalformedResponseError,
    ModalRequest,
    ShortenRequest,
    SubmitResult,
    Task,
    TaskAction,
    TaskStatus,
)
from quickmj._converter import make_converter, structure, unstructure

FIXTURES = Path(__file__).parent / "fixtures"


def load(name: str) -> Any:
    return json.loads((FIXTURES / f"{name}.json").read_text(encoding="utf-8"))


def test_quickrouter_task_sample_parses_verbatim() -> None:
    """The list-by-condition / fetch sample becomes a complete Task."""
    task = structure(load("task_pig"), Task)
    assert "1730621826053455" == task.id
    assert TaskStatus.SUCCESS == task.status
    assert TaskAction.IMAGINE == task.action
    assert 100 == task.progress_percent
    assert task.is_done and task.is_success and not task.is_failed
    assert dt.datetime(2024, 11, 3, 8, 17, 6, 53000, tzinfo=dt.timezone.utc) == task.submitted_at
    assert task.finished_at is not None and task.finished_at.tzinfo is dt.timezone.utc
    assert 9 == len(task.buttons)
    assert "pig --v 6.1" == task.final_prompt
    assert {"finalPrompt": "pig --v 6.1", "finalZhPrompt": ""} == task.properties


def test_integration_guide_sample_keeps_properties_whole() -> None:
    """The guide's task has big numeric properties and no customId: kept as sent."""
    raw = load("task_cat")
    task = structure(raw, Task)
    assert raw["properties"] == task.properties
    assert 8774786694361674000 == task.properties["discordChannelId"]
    assert task.custom_id is None
    assert "26d56b92-4ed6-45e2-8561-563797923135" == task.properties["messageHash"]


def test_empty_template_sample_parses() -> None:
    """The all-blank template answer parses; blank status/action mean 'not given'."""
    task = structure(load("task_template_empty"), Task)
    assert "" == task.id
    assert TaskStatus.NOT_START == task.status
    assert task.action is None
    assert task.progress_percent is None
    assert task.submitted_at is None


def test_submit_result_with_numeric_id() -> None:
    """A numeric ``result`` is kept as the same digits, as a string."""
    result = structure(load("submit_numeric_result"), SubmitResult)
    assert "1320098173412546" == result.task_id
    assert result.ok and not result.needs_modal and not result.queued


def test_strict_converter_finds_no_drift_in_quickrouter_samples() -> None:
    """Every field QuickRouter documents is modelled (no extra keys)."""
    strict = make_converter(forbid_extra_keys=True)
    strict.structure(load("task_pig"), Task)
    strict.structure(load("submit_numeric_result"), SubmitResult)


@pytest.mark.parametrize(
    ("fixture", "request_obj"),
    [
        ("request_imagine", ImagineRequest(prompt="Cat", base64_array=())),
        (
            "request_blend",
            BlendRequest(
                base64_array=("data:image/png;base64,xxx1", "data:image/png;base64,xxx2"),
                dimensions=BlendDimensions.SQUARE,
            ),
        ),
        ("request_describe", DescribeRequest(base64="data:image/png;base64,xxx")),
        ("request_shorten", ShortenRequest(prompt="Cat")),
        (
            "request_action",
            ActionRequest(
                task_id="14001934816969359",
                custom_id="MJ::JOB::upsample::2::3dbbd469-36af-4a0f-8f02-df6c579e7011",
                choose_same_channel=True,
                notify_hook="",
                state="",
            ),
        ),
        ("request_modal", ModalRequest(task_id="14001934816969359", prompt="", mask_base64="")),
    ],
)
def test_requests_unstructure_to_the_documented_bodies(fixture: str, request_obj: Any) -> None:
    """Each request class produces exactly the documented camelCase body."""
    assert load(fixture) == unstructure(request_obj)


def test_none_fields_are_omitted() -> None:
    """Unset optional fields are not sent as null."""
    assert {"prompt": "x"} == unstructure(ImagineRequest(prompt="x"))
    assert {"ids": ["1", "2"]} == unstructure(ListByIdsRequest(ids=("1", "2")))
    assert {"taskId": "1", "customId": "c", "chooseSameChannel": False} == unstructure(
        ActionRequest(task_id="1", custom_id="c")
    )


def test_task_round_trips_in_camel_case() -> None:
    """Task -> JSON -> Task is lossless for the documented fields."""
    task = structure(load("task_pig"), Task)
    data = unstructure(task)
    assert "imageUrl" in data and "image_url" not in data
    assert task == structure(data, Task)


def test_unknown_status_and_action_are_preserved() -> None:
    """New values from a newer relay are kept, not mapped to a known one."""
    task = structure({"id": "1", "status": "PAUSED", "action": "HOLOGRAM"}, Task)
    assert "PAUSED" == task.status.value
    assert not task.status.is_known
    assert not task.status.is_terminal
    assert "HOLOGRAM" == task.action.value if task.action else False
    assert "PAUSED" not in [s.value for s in TaskStatus]
    assert "PAUSED" == unstructure(task)["status"]


def test_unknown_fields_ignored_and_missing_defaulted() -> None:
    """Extra fields are ignored; a minimal task gets defaults; null lists are empty."""
    task = structure(
        {"id": 7, "brandNewField": {"x": 1}, "buttons": None, "properties": None}, Task
    )
    assert "7" == task.id
    assert () == task.buttons
    assert {} == task.properties
    assert TaskStatus.NOT_START == task.status


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"id": {"a": 1}}, "Task.id"),
        ({"id": "1", "status": 5}, "Task.status"),
        ({"id": "1", "buttons": [{"customId": "x", "type": "two"}]}, "Task.buttons[0].type"),
        ({"id": "1", "properties": [1, 2]}, "Task.properties"),
        ({"status": "SUCCESS"}, "Task.id"),
        ([1, 2], "Task"),
    ],
)
def test_wrong_shapes_raise_malformed_naming_the_field(raw: Any, field: str) -> None:
    """A wrong shape becomes MalformedResponseError that says which field."""
    with pytest.raises(MalformedResponseError) as info:
        structure(raw, Task)
    assert field in str(info.value)


def test_progress_percent() -> None:
    """'46%' -> 46, '' and None -> None (100 once SUCCESS)."""
    assert 46 == Task(id="1", progress="46%").progress_percent
    assert Task(id="1", progress="").progress_percent is None
    assert Task(id="1").progress_percent is None
    assert 100 == Task(id="1", status=TaskStatus.SUCCESS).progress_percent


@pytest.mark.parametrize(
    ("custom_id", "kind", "index", "modal"),
    [
        ("MJ::JOB::upsample::2::3785da15", "upsample", 2, False),
        ("MJ::JOB::variation::4::3785da15", "variation", 4, False),
        ("MJ::JOB::reroll::0::3785da15::SOLO", "reroll", None, False),
        ("MJ::JOB::low_variation::1::h::SOLO", "low_variation", None, False),
        ("MJ::JOB::pan_left::1::h::SOLO", "pan_left", None, False),
        ("MJ::JOB::upsample_v6_2x_subtle::1::h::SOLO", "upsample_v6_2x_subtle", None, False),
        ("MJ::Outpaint::50::1::h::SOLO", "Outpaint", None, False),
        ("MJ::CustomZoom::h", "CustomZoom", None, True),
        ("MJ::Inpaint::1::h::SOLO", "Inpaint", None, True),
        ("MJ::Job::PicReader::3", "PicReader", 3, True),
        ("something-else", "", None, False),
    ],
)
def test_button_kind_and_index(custom_id: str, kind: str, index: int | None, modal: bool) -> None:
    """Button.kind / index / always_needs_modal come from the customId."""
    button = Button(custom_id=custom_id)
    assert kind == button.kind
    assert index == button.index
    assert modal == button.always_needs_modal


def test_task_button_lookup() -> None:
    """Buttons are found by label, emoji, customId and U/V position."""
    task = structure(load("task_pig"), Task)
    assert (
        "MJ::JOB::upsample::2::3785da15-4f70-4034-9128-f3ff1ac634fa" == task.button("U2").custom_id
    )
    assert (
        "MJ::JOB::variation::3::3785da15-4f70-4034-9128-f3ff1ac634fa" == task.button("v3").custom_id
    )
    assert "reroll" == task.button("🔄").kind
    cid = task.buttons[0].custom_id
    assert task.buttons[0] == task.button(cid)
    unlabeled = Task(id="9", buttons=(Button(custom_id="MJ::JOB::upsample::4::h"),))
    assert "MJ::JOB::upsample::4::h" == unlabeled.button("U4").custom_id


def test_missing_button_lists_what_exists() -> None:
    """An unknown label raises ButtonNotFoundError naming the available buttons."""
    task = structure(load("task_pig"), Task)
    with pytest.raises(ButtonNotFoundError) as info:
        task.button("Zoom Out 2x")
    assert "U1" in str(info.value) and "🔄" in str(info.value)
    assert isinstance(info.value, LookupError)


def test_submit_result_codes() -> None:
    """22 exposes the queue position; 21 says a modal is needed."""
    queued = structure(
        {"code": 22, "result": "1", "properties": {"numberOfQueues": 3}}, SubmitResult
    )
    assert queued.queued and queued.ok and 3 == queued.queue_position
    modal = structure(
        {"code": 21, "result": "2", "description": "Waiting for window confirm"}, SubmitResult
    )
    assert modal.needs_modal and modal.ok


def test_models_are_frozen() -> None:
    """Wire structures are immutable."""
    task = Task(id="1")
    with pytest.raises(AttributeError):
        task.id = "2"  # type: ignore[misc]


def test_public_exports() -> None:
    """__all__ is sorted, unique and importable; errors come from both places."""
    names = list(quickmj.__all__)
    assert len(names) == len(set(names))
    for name in names:
        assert hasattr(quickmj, name), name
    for name in quickmj.errors.__all__:
        assert getattr(quickmj, name) is getattr(quickmj.errors, name)
