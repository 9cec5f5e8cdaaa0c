"""Model behaviour: progress, timestamps, buttons, open enums, submit results."""

from __future__ import annotations

import datetime as dt

import attrs
import pytest
from conftest import load_fixture

from quickmj import (
    BlendDimensions,
    BotType,
    Button,
    ButtonNotFoundError,
    InvalidInputError,
    SubmitResult,
    Task,
    TaskAction,
    TaskStatus,
)
from quickmj._converter import structure

PIG_HASH = "3785da15-4f70-4034-9128-f3ff1ac634fa"


@pytest.fixture
def pig() -> Task:
    return structure(load_fixture("task_pig"), Task)


# ---- progress, status, timestamps -----------------------------------------------------------


@pytest.mark.parametrize(
    ("progress", "status", "expected"),
    [
        ("0%", TaskStatus.SUBMITTED, 0),
        ("46%", TaskStatus.IN_PROGRESS, 46),
        ("100%", TaskStatus.SUCCESS, 100),
        (" 15 % ", TaskStatus.IN_PROGRESS, 15),
        ("62", TaskStatus.IN_PROGRESS, 62),
        ("46.9%", TaskStatus.IN_PROGRESS, 46),
        ("250%", TaskStatus.IN_PROGRESS, 100),
        ("", TaskStatus.FAILURE, None),
        (None, TaskStatus.NOT_START, None),
        ("stopped", TaskStatus.IN_PROGRESS, None),
        (None, TaskStatus.SUCCESS, 100),
        ("100%", TaskStatus.FAILURE, 100),
    ],
)
def test_progress_percent(progress: str | None, status: TaskStatus, expected: int | None) -> None:
    """``"46%"`` -> 46; blank or unparsable -> None; a SUCCESS without progress is 100."""
    assert expected == Task(id="1", progress=progress, status=status).progress_percent


@pytest.mark.parametrize(
    ("status", "done", "success", "failed", "modal"),
    [
        ("NOT_START", False, False, False, False),
        ("SUBMITTED", False, False, False, False),
        ("MODAL", False, False, False, True),
        ("IN_PROGRESS", False, False, False, False),
        ("SUCCESS", True, True, False, False),
        ("FAILURE", True, False, True, False),
        ("CANCEL", True, False, True, False),
        ("PAUSED", False, False, False, False),
    ],
)
def test_status_predicates(
    status: str, done: bool, success: bool, failed: bool, modal: bool
) -> None:
    """is_done / is_success / is_failed / needs_modal for each status (unknown: still running)."""
    task = structure({"id": "1", "status": status}, Task)
    assert (done, success, failed, modal) == (
        task.is_done,
        task.is_success,
        task.is_failed,
        task.needs_modal,
    )


def test_timestamps_are_aware_utc(pig: Task) -> None:
    """submitTime/startTime/finishTime (epoch ms) become aware UTC datetimes."""
    utc = dt.timezone.utc
    assert dt.datetime(2024, 11, 3, 8, 17, 6, 53000, tzinfo=utc) == pig.submitted_at
    assert dt.datetime(2024, 11, 3, 8, 17, 8, 24000, tzinfo=utc) == pig.started_at
    assert dt.datetime(2024, 11, 3, 8, 17, 35, 817000, tzinfo=utc) == pig.finished_at
    for value in (pig.submitted_at, pig.started_at, pig.finished_at):
        assert value is not None and dt.timedelta(0) == value.utcoffset()


def test_absent_or_zero_timestamps_are_none() -> None:
    """0 (the relay's 'not yet') and None both mean no datetime."""
    task = Task(id="1", submit_time=0, start_time=None)
    assert (None, None, None) == (task.submitted_at, task.started_at, task.finished_at)


def test_final_prompt(pig: Task) -> None:
    """final_prompt reads properties.finalPrompt, and only when it is a string."""
    assert "pig --v 6.1" == pig.final_prompt
    assert Task(id="1", properties={"finalPrompt": 5}).final_prompt is None
    assert Task(id="1").final_prompt is None


# ---- buttons --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wanted", "custom_id"),
    [
        ("U2", f"MJ::JOB::upsample::2::{PIG_HASH}"),
        ("u2", f"MJ::JOB::upsample::2::{PIG_HASH}"),
        (" U2 ", f"MJ::JOB::upsample::2::{PIG_HASH}"),
        ("V3", f"MJ::JOB::variation::3::{PIG_HASH}"),
        ("v4", f"MJ::JOB::variation::4::{PIG_HASH}"),
        ("🔄", f"MJ::JOB::reroll::0::{PIG_HASH}::SOLO"),
        (f"MJ::JOB::variation::1::{PIG_HASH}", f"MJ::JOB::variation::1::{PIG_HASH}"),
    ],
)
def test_task_button_lookup(pig: Task, wanted: str, custom_id: str) -> None:
    """Buttons are found by label (any case), emoji or exact customId."""
    assert custom_id == pig.button(wanted).custom_id


def test_button_by_position_when_labels_are_missing() -> None:
    """Relays that send no labels still find U1-U4 / V1-V4 by the customId."""
    task = Task(
        id="9",
        buttons=(
            Button(custom_id="MJ::JOB::variation::4::h"),
            Button(custom_id="MJ::JOB::upsample::4::h"),
        ),
    )
    assert "MJ::JOB::upsample::4::h" == task.button("U4").custom_id
    assert "MJ::JOB::variation::4::h" == task.button("v4").custom_id


def test_missing_button_lists_what_exists(pig: Task) -> None:
    """An unknown label raises ButtonNotFoundError naming the task and available buttons."""
    with pytest.raises(ButtonNotFoundError) as info:
        pig.button("Zoom Out 2x")
    err = info.value
    assert ("Zoom Out 2x", "1730621826053455") == (err.wanted, err.task_id)
    assert ("U1", "U2", "U3", "U4", "🔄", "V1", "V2", "V3", "V4") == err.available
    assert "'U1'" in str(err) and "'🔄'" in str(err) and "1730621826053455" in str(err)
    assert isinstance(err, LookupError) and isinstance(err, InvalidInputError)


def test_missing_button_on_a_task_without_buttons() -> None:
    """A task with no buttons says so (U5 is not a position either)."""
    with pytest.raises(ButtonNotFoundError, match="none"):
        Task(id="1").button("U1")
    with pytest.raises(ButtonNotFoundError):
        structure(load_fixture("task_pig"), Task).button("U5")


H = "3785da15-4f70-4034-9128-f3ff1ac634fa"


@pytest.mark.parametrize(
    ("custom_id", "kind", "index", "modal"),
    [
        (f"MJ::JOB::upsample::1::{H}", "upsample", 1, False),
        (f"MJ::JOB::upsample::4::{H}", "upsample", 4, False),
        (f"MJ::JOB::variation::2::{H}", "variation", 2, False),
        (f"MJ::JOB::reroll::0::{H}::SOLO", "reroll", None, False),
        (f"MJ::JOB::low_variation::1::{H}::SOLO", "low_variation", None, False),
        (f"MJ::JOB::high_variation::1::{H}::SOLO", "high_variation", None, False),
        (f"MJ::Inpaint::1::{H}::SOLO", "Inpaint", None, True),
        (f"MJ::Outpaint::50::1::{H}::SOLO", "Outpaint", None, False),
        (f"MJ::Outpaint::75::1::{H}::SOLO", "Outpaint", None, False),
        (f"MJ::CustomZoom::{H}", "CustomZoom", None, True),
        (f"MJ::CustomZoom::1::{H}", "CustomZoom", None, True),
        (f"MJ::JOB::pan_left::1::{H}::SOLO", "pan_left", None, False),
        (f"MJ::JOB::pan_right::1::{H}::SOLO", "pan_right", None, False),
        (f"MJ::JOB::pan_up::1::{H}::SOLO", "pan_up", None, False),
        (f"MJ::JOB::pan_down::1::{H}::SOLO", "pan_down", None, False),
        (f"MJ::JOB::upsample_v5_2x::1::{H}::SOLO", "upsample_v5_2x", None, False),
        (f"MJ::JOB::upsample_v5_4x::1::{H}::SOLO", "upsample_v5_4x", None, False),
        (f"MJ::JOB::upsample_v6_2x_subtle::1::{H}::SOLO", "upsample_v6_2x_subtle", None, False),
        (
            f"MJ::JOB::upsample_v6_2x_creative::1::{H}::SOLO",
            "upsample_v6_2x_creative",
            None,
            False,
        ),
        (
            f"MJ::JOB::upsample_v6r1_2x_subtle::1::{H}::SOLO",
            "upsample_v6r1_2x_subtle",
            None,
            False,
        ),
        (
            f"MJ::JOB::upsample_v7_2x_creative::1::{H}::SOLO",
            "upsample_v7_2x_creative",
            None,
            False,
        ),
        (f"MJ::JOB::animate_high::1::{H}::SOLO", "animate_high", None, False),
        (f"MJ::JOB::animate_low::1::{H}::SOLO", "animate_low", None, False),
        (f"MJ::JOB::animate_high_extend::1::{H}", "animate_high_extend", None, False),
        (f"MJ::JOB::animate_low_extend::1::{H}", "animate_low_extend", None, False),
        (f"MJ::JOB::video_virtual_upscale::3::{H}", "video_virtual_upscale", 3, False),
        ("MJ::Job::PicReader::1", "PicReader", 1, True),
        ("MJ::Job::PicReader::4", "PicReader", 4, True),
        ("MJ::Job::PicReader::all", "PicReader", None, True),
        ("MJ::Picread::Retry", "Picread", None, False),
        ("MJ::Job::PromptAnalyzer::2", "PromptAnalyzer", None, True),
        (f"MJ::BOOKMARK::{H}", "BOOKMARK", None, False),
        (f"MJ::JOB::video::1::{H}::manual", "video", None, False),
        (f"MJ::JOB::upsample::0::{H}", "upsample", None, False),
        (f"MJ::JOB::upsample::9::{H}", "upsample", None, False),
        (f"MJ::JOB::upsample::²::{H}", "upsample", None, False),  # isdigit(), but no number
        ("MJ::", "", None, False),
        ("something-else", "", None, False),
        ("", "", None, False),
    ],
)
def test_button_kind_and_index(custom_id: str, kind: str, index: int | None, modal: bool) -> None:
    """Button.kind / index / always_needs_modal for every customId pattern in protocol §5."""
    button = Button(custom_id=custom_id)
    assert (kind, index, modal) == (button.kind, button.index, button.always_needs_modal)


def test_button_display() -> None:
    """display is the label, else the emoji, else the customId."""
    assert "U1" == Button(custom_id="c", label="U1", emoji="x").display
    assert "🔄" == Button(custom_id="c", emoji="🔄").display
    assert "c" == Button(custom_id="c").display


# ---- open enums -----------------------------------------------------------------------------


def test_unknown_status_is_preserved_not_registered() -> None:
    """A new status is kept with its raw value, flagged unknown, and never joins the enum."""
    before = list(TaskStatus)
    status = TaskStatus("PAUSED")
    assert "PAUSED" == status.value == str(status)
    assert status.is_known is False
    assert not status.is_terminal
    assert "PAUSED" == status  # still a str
    assert before == list(TaskStatus)
    assert "PAUSED" not in [s.value for s in TaskStatus]
    assert TaskStatus("PAUSED") == status and hash(TaskStatus("PAUSED")) == hash(status)


@pytest.mark.parametrize("enum_cls", [TaskStatus, TaskAction, BotType, BlendDimensions])
def test_known_members_are_known(enum_cls: type[TaskStatus]) -> None:
    """Every declared member reports is_known and is returned as the singleton."""
    for member in enum_cls:
        assert member.is_known
        assert member is enum_cls(member.value)


def test_unknown_action_from_the_wire() -> None:
    """A task with a new action and status parses and keeps both values."""
    task = structure({"id": "1", "status": "PAUSED", "action": "HOLOGRAM"}, Task)
    assert task.action is not None
    assert ("PAUSED", "HOLOGRAM") == (task.status.value, task.action.value)
    assert (False, False) == (task.status.is_known, task.action.is_known)
    assert "HOLOGRAM" not in [a.value for a in TaskAction]


def test_new_actions_from_relays_are_known() -> None:
    """Actions the relays document (protocol §4.1, §4.3) are modelled."""
    for value in ("SWAP_FACE", "VIDEO", "UPSCALE_HD", "CUSTOM_ZOOM", "INPAINT", "EDITS"):
        assert TaskAction(value).is_known, value


def test_non_string_enum_value_is_rejected() -> None:
    """Only strings become pseudo-members."""
    with pytest.raises(ValueError):
        TaskStatus(5)


# ---- SubmitResult ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "ok", "queued", "modal"),
    [
        (1, True, False, False),
        (21, True, False, True),
        (22, True, True, False),
        (3, False, False, False),
        (4, False, False, False),
        (23, False, False, False),
        (24, False, False, False),
        (9, False, False, False),
    ],
)
def test_submit_result_codes(code: int, ok: bool, queued: bool, modal: bool) -> None:
    """Codes 1/21/22 create a task; 21 needs a modal; 22 is queued."""
    result = SubmitResult(code=code, result="1")
    assert (ok, queued, modal) == (result.ok, result.queued, result.needs_modal)


@pytest.mark.parametrize(
    ("properties", "expected"),
    [
        ({"numberOfQueues": 3}, 3),
        ({"numberOfQueues": "7"}, 7),
        ({"numberOfQueues": 0}, 0),
        ({"numberOfQueues": True}, None),
        ({"numberOfQueues": "many"}, None),
        ({"numberOfQueues": "²"}, None),
        ({}, None),
    ],
)
def test_queue_position(properties: dict[str, object], expected: int | None) -> None:
    """queue_position reads properties.numberOfQueues when it is a count."""
    result = structure({"code": 22, "result": "1", "properties": properties}, SubmitResult)
    assert expected == result.queue_position


def test_modal_submit_result_from_the_wire() -> None:
    """Code 21 (TrueAI's 'Waiting for window confirm') gives the MODAL task's id."""
    raw = {
        "code": 21,
        "description": "Waiting for window confirm",
        "result": 1730621826053999,
        "properties": {"finalPrompt": "cat", "remix": True},
    }
    result = structure(raw, SubmitResult)
    assert result.needs_modal and result.ok
    assert "1730621826053999" == result.task_id
    assert {"finalPrompt": "cat", "remix": True} == result.properties


def test_submit_result_without_result() -> None:
    """A rejection has no id; task_id is then empty, not None."""
    assert "" == SubmitResult(code=4).task_id


# ---- immutability ---------------------------------------------------------------------------


def test_models_are_frozen_and_hashable(pig: Task) -> None:
    """Wire structures are immutable; a Task hashes without its properties dict."""
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        pig.id = "2"  # type: ignore[misc]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        pig.buttons[0].label = "x"  # type: ignore[misc]
    assert hash(pig) == hash(attrs.evolve(pig))
    assert pig != attrs.evolve(pig, progress="99%")


def test_absurd_timestamps_read_as_none() -> None:
    """A timestamp outside the datetime range does not make a property raise."""
    from quickmj import Task

    task = Task(id="1", submit_time=253402300800000, finish_time=-(10**18))
    assert task.submitted_at is None
    assert task.finished_at is None


def test_video_and_seed_fields() -> None:
    """Video jobs carry videoUrl/videoUrls; TrueAI tasks may carry their seed."""
    task = structure(
        {
            "id": "v",
            "action": "VIDEO",
            "status": "SUCCESS",
            "videoUrl": "https://cdn.test/v.mp4",
            "videoUrls": [{"url": "https://cdn.test/0.mp4"}, "https://cdn.test/1.mp4"],
            "seed": 123,
        },
        Task,
    )
    assert TaskAction.VIDEO is task.action
    assert "https://cdn.test/v.mp4" == task.video_url
    assert ["https://cdn.test/0.mp4", "https://cdn.test/1.mp4"] == [v.url for v in task.video_urls]
    assert "123" == task.seed


def test_nested_lists_read_later_equal_the_same_task_built_by_hand(pig: Task) -> None:
    """Buttons and image URLs built on first read: equal, hashed, shown and copied as if eager."""
    import copy
    import pickle

    by_hand = attrs.evolve(pig, buttons=tuple(pig.buttons), image_urls=tuple(pig.image_urls))
    fresh = structure(load_fixture("task_pig"), Task)
    assert fresh == by_hand and hash(fresh) == hash(by_hand)
    assert repr(fresh) == repr(by_hand) and "label='U1'" in repr(fresh)
    assert pickle.loads(pickle.dumps(fresh)) == pig == copy.deepcopy(fresh)
    assert attrs.evolve(fresh, progress="5%").buttons == pig.buttons
    assert fresh.buttons is fresh.buttons  # built once


def test_nested_lists_not_read_yet_survive_pickle_and_unstructure(pig: Task) -> None:
    """Before their first read the lists live only in the task's JSON (no object per
    task): pickling, unstructuring and comparing such a task still see them whole."""
    import pickle

    from quickmj._converter import unstructure

    def fresh() -> Task:
        return structure(load_fixture("task_pig"), Task)

    copied = pickle.loads(pickle.dumps(fresh()))
    assert copied.buttons == pig.buttons and copied.image_urls == pig.image_urls
    assert unstructure(fresh())["buttons"] == unstructure(pig)["buttons"] != []
    assert fresh() != attrs.evolve(pig, buttons=pig.buttons[:1])


def test_a_task_built_by_hand_keeps_what_it_was_given() -> None:
    """A Task from Python (not the relay) has no JSON and returns its own lists."""
    buttons = (Button("MJ::JOB::upsample::1::x", label="U1"),)
    task = Task(id="1", buttons=buttons)
    assert task.buttons is buttons and task.image_urls == () and dict(task.raw) == {}
