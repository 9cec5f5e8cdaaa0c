"""The cattrs converter against the relay's own JSON samples: parsing, round trips, drift."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import attrs
import cattrs
import pytest
from conftest import TASK_SAMPLES, load_fixture
from fakes import Script

from quickmj import (
    BlendDimensions,
    BotType,
    Button,
    MalformedResponseError,
    MediaUrl,
    SubmitResult,
    Task,
    TaskAction,
    TaskStatus,
)
from quickmj._converter import (
    as_id,
    loads,
    make_converter,
    repair_text,
    structure,
    to_camel,
    unstructure,
)
from quickmj._models import (
    ActionRequest,
    BlendRequest,
    ChangeRequest,
    DescribeRequest,
    EditsRequest,
    ImagineRequest,
    ListByIdsRequest,
    ModalRequest,
    ShortenRequest,
    SimpleChangeRequest,
    SwapFaceRequest,
    UploadRequest,
    VideoRequest,
)
from quickmj._protocol import read_task_list

Load = Callable[[str], Any]
PIG_HASH = "3785da15-4f70-4034-9128-f3ff1ac634fa"
CAT_HASH = "26d56b92-4ed6-45e2-8561-563797923135"


# ---- the relay's samples, parsed verbatim ---------------------------------------------------


def test_pig_sample_parses_verbatim(load: Load) -> None:
    """The fetch / list-by-condition / image-seed sample becomes a complete Task."""
    task = structure(load("task_pig"), Task)
    assert "1730621826053455" == task.id
    assert TaskStatus.SUCCESS is task.status
    assert TaskAction.IMAGINE is task.action
    assert "" == task.custom_id
    assert "" == task.bot_type
    assert "pig --v 6.1" == task.prompt == task.prompt_en
    assert "Submit success" == task.description
    assert "" == task.state
    assert (1730621826053, 1730621828024, 1730621855817) == (
        task.submit_time,
        task.start_time,
        task.finish_time,
    )
    assert task.image_url is not None and task.image_url.startswith("https://cdnmjp.oneabc.org/")
    assert "&hm=f6d70191" in task.image_url
    assert "100%" == task.progress
    assert "" == task.fail_reason
    assert "" == task.mask_base64
    assert ["U1", "U2", "U3", "U4", "", "V1", "V2", "V3", "V4"] == [b.label for b in task.buttons]
    assert (
        Button(
            custom_id=f"MJ::JOB::reroll::0::{PIG_HASH}::SOLO", emoji="🔄", label="", type=2, style=2
        )
        == task.buttons[4]
    )
    assert {"finalPrompt": "pig --v 6.1", "finalZhPrompt": ""} == task.properties
    assert () == task.image_urls


def test_cat_sample_keeps_properties_whole(load: Load) -> None:
    """The integration guide's task: huge numeric ids in properties are kept exactly."""
    raw = load("task_cat")
    task = structure(raw, Task)
    assert "1320098173412546" == task.id
    assert raw["properties"] == task.properties
    assert 8774786694361674000 == task.properties["discordChannelId"]
    assert 7415633538733103000 == task.properties["discordInstanceId"]
    assert isinstance(task.properties["discordChannelId"], int)
    assert "MID_JOURNEY" == task.properties["botType"]
    assert task.bot_type is None  # only inside properties in this sample
    assert task.custom_id is None
    assert "cat --v 6.1 --sref <https://s.mj.run/ktqQpnwPoPk>" == task.final_prompt
    assert "&is=67cda9d7&" in (task.image_url or "")  # the \u0026 escapes decoded
    assert f"MJ::JOB::upsample::1::{CAT_HASH}" == task.buttons[0].custom_id
    assert dt.datetime(2025, 3, 9, 14, 46, 18, 38000, tzinfo=dt.timezone.utc) == task.submitted_at


def test_template_sample_with_blank_status_parses(load: Load) -> None:
    """The all-blank response template: blank status/action mean 'not given'."""
    task = structure(load("task_template_empty"), Task)
    assert "" == task.id
    assert TaskStatus.NOT_START is task.status
    assert task.action is None
    assert task.progress_percent is None
    assert task.submitted_at is None and task.finished_at is None
    assert not task.is_done
    assert (Button(custom_id="", emoji="", label="", type=0, style=0),) == task.buttons
    assert {} == task.properties


def test_numeric_submit_result_keeps_the_digits(load: Load) -> None:
    """``"result": 1320098173412546`` (a JSON number) becomes the same digits as a string."""
    result = structure(load("submit_numeric_result"), SubmitResult)
    assert SubmitResult(code=1, description="提交成功", result="1320098173412546") == result
    assert "1320098173412546" == result.task_id
    assert result.ok and not result.needs_modal and not result.queued


async def test_pig_sample_in_a_list_answer(load: Load) -> None:
    """list-by-condition answers are a bare JSON array of the same task objects."""
    rows = [load("task_pig"), load("task_cat")]
    assert rows == read_task_list(rows, "/task/list-by-condition")
    script = Script({"POST /mj/task/list-by-condition": {"json": rows}})
    async with script.client() as mj:
        tasks = await mj.list_tasks(["1730621826053455", "1320098173412546"])
    assert ["1730621826053455", "1320098173412546"] == [t.id for t in tasks]
    assert [structure(row, Task) for row in rows] == tasks


# ---- request bodies -------------------------------------------------------------------------

REQUESTS: list[tuple[str, Any]] = [
    ("request_imagine", ImagineRequest(prompt="Cat", base64_array=())),
    ("request_imagine_curl", ImagineRequest(prompt="black cat", base64_array=())),
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
    ("request_list_by_condition", ListByIdsRequest(ids=("1743326750223591",))),
]


@pytest.mark.parametrize(("fixture", "request_obj"), REQUESTS, ids=[r[0] for r in REQUESTS])
def test_requests_unstructure_to_the_documented_bodies(
    fixture: str, request_obj: Any, load: Load
) -> None:
    """Each request class produces exactly the documented camelCase body."""
    assert load(fixture) == unstructure(request_obj)


@pytest.mark.parametrize(("fixture", "request_obj"), REQUESTS, ids=[r[0] for r in REQUESTS])
def test_documented_bodies_structure_strictly(fixture: str, request_obj: Any, load: Load) -> None:
    """Every documented request field is modelled: a strict converter reads each sample back."""
    strict = make_converter(forbid_extra_keys=True)
    assert request_obj == strict.structure(load(fixture), type(request_obj))


def test_guide_action_sample_plus_choose_same_channel(load: Load) -> None:
    """The guide's two-field action body; chooseSameChannel (required by QuickRouter) is added."""
    body = unstructure(
        ActionRequest(
            task_id="14001934816969359",
            custom_id="MJ::JOB::upsample::2::3dbbd469-36af-4a0f-8f02-df6c579e7011",
        )
    )
    assert {**load("request_action_guide"), "chooseSameChannel": False} == body


def test_none_fields_are_omitted() -> None:
    """Unset optional fields are not sent as null; enums travel as their string values."""
    assert {"prompt": "x"} == unstructure(ImagineRequest(prompt="x"))
    assert {"prompt": "x", "botType": "NIJI_JOURNEY", "state": "s"} == unstructure(
        ImagineRequest(prompt="x", bot_type=BotType.NIJI_JOURNEY, state="s")
    )
    assert {"base64Array": ["a", "b"]} == unstructure(BlendRequest(base64_array=("a", "b")))
    assert {"base64": "d"} == unstructure(DescribeRequest(base64="d"))
    assert {"prompt": "p"} == unstructure(ShortenRequest(prompt="p"))
    assert {"taskId": "1"} == unstructure(ModalRequest(task_id="1"))
    assert {"taskId": "1", "customId": "c", "chooseSameChannel": False} == unstructure(
        ActionRequest(task_id="1", custom_id="c")
    )
    assert {"notifyHook": "http://h/", "prompt": "x"} == unstructure(
        ImagineRequest(prompt="x", notify_hook="http://h/")
    )


def test_request_classes_cover_every_field_in_camel_case() -> None:
    """No request class leaks a snake_case key onto the wire."""
    full = [
        ImagineRequest(prompt="p", base64_array=("a",), bot_type=BotType.MID_JOURNEY, **_common()),
        BlendRequest(
            base64_array=("a",),
            dimensions=BlendDimensions.PORTRAIT,
            bot_type=BotType.NIJI_JOURNEY,
            **_common(),
        ),
        DescribeRequest(base64="a", bot_type=BotType.MID_JOURNEY, **_common()),
        ShortenRequest(prompt="p", bot_type=BotType.MID_JOURNEY, **_common()),
        ActionRequest(task_id="1", custom_id="c", choose_same_channel=True, **_common()),
        ModalRequest(task_id="1", prompt="p", mask_base64="m", **_common()),
        ChangeRequest(task_id="1", action="UPSCALE", index=2, **_common()),
        SimpleChangeRequest(content="1 U2", **_common()),
        VideoRequest(
            prompt="p",
            image="i",
            end_image="e",
            motion="low",
            loop=True,
            action="extend",
            index=1,
            task_id="1",
            video_type="vid_1.1_i2v_480",
            batch_size=1,
            **_common(),
        ),
        EditsRequest(prompt="p", image="i", **_common()),
        SwapFaceRequest(source_base64="s", target_base64="t", **_common()),
        UploadRequest(base64_array=("a",)),
        ListByIdsRequest(ids=("1",)),
    ]
    for obj in full:
        body = unstructure(obj)
        expected = {to_camel(f.name) for f in attrs.fields(type(obj))}
        assert expected == set(body), type(obj).__name__
        assert all("_" not in k for k in body)


def _common() -> dict[str, Any]:
    return {"notify_hook": "http://hook/", "state": "s"}


# ---- Task round trips -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["task_pig", "task_cat"])
def test_task_round_trips_in_camel_case(name: str, load: Load) -> None:
    """Task -> JSON gives back every documented field unchanged, and JSON -> Task is lossless."""
    raw = load(name)
    task = structure(raw, Task)
    data = unstructure(task)
    assert all("_" not in k for k in data)
    assert raw == {k: data[k] for k in raw}
    assert task == structure(data, Task)


def test_unknown_enum_values_round_trip() -> None:
    """A status or action this version does not know goes back out as the same string."""
    data = unstructure(structure({"id": "1", "status": "PAUSED", "action": "HOLOGRAM"}, Task))
    assert ("PAUSED", "HOLOGRAM") == (data["status"], data["action"])


# ---- leniency and its limits ----------------------------------------------------------------


def test_unknown_fields_ignored_and_missing_defaulted() -> None:
    """Extra fields are ignored; a minimal task gets defaults."""
    task = structure({"id": "7", "brandNewField": {"x": 1}, "isCompleted": True}, Task)
    assert Task(id="7") == task
    assert TaskStatus.NOT_START is task.status
    assert (task.progress, task.image_url, task.buttons, task.properties) == (None, None, (), {})


def test_nulls_mean_defaults() -> None:
    """``null`` for lists, properties and optional fields is accepted (relays send it)."""
    raw = dict.fromkeys(("buttons", "properties", "imageUrls", "videoUrls", "progress"))
    raw.update({"id": "1", "status": None, "action": None, "submitTime": None})
    task = structure(raw, Task)
    assert Task(id="1") == task


def test_blank_enums_mean_not_given() -> None:
    """``"status": ""`` and ``"action": ""`` are 'not given', not unknown values."""
    task = structure({"id": "1", "status": "", "action": ""}, Task)
    assert TaskStatus.NOT_START is task.status
    assert task.action is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"id": 1730621826053455}, "1730621826053455"),
        ({"id": 1.730621826053455e15}, "1730621826053455"),
        ({"id": "1", "parentId": 42}, "42"),
    ],
)
def test_numeric_ids_become_strings(raw: dict[str, Any], expected: str) -> None:
    """Ids sent as JSON numbers are kept as their digits."""
    task = structure(raw, Task)
    assert expected == (task.parent_id if "parentId" in raw else task.id)


def test_image_urls_in_both_shapes() -> None:
    """imageUrls may be plain URLs or ``{url, thumbnail}`` objects."""
    task = structure(
        {"id": "1", "imageUrls": ["https://a/0.png", {"url": "https://a/1.png", "thumbnail": "t"}]},
        Task,
    )
    assert (MediaUrl("https://a/0.png"), MediaUrl("https://a/1.png", "t")) == task.image_urls


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"id": {"a": 1}}, "Task.id"),
        ({"id": True}, "Task.id"),
        ({"id": "1", "status": 5}, "Task.status"),
        ({"id": "1", "progress": ["1%"]}, "Task.progress"),
        ({"id": "1", "submitTime": "soon"}, "Task.submitTime"),
        ({"id": "1", "buttons": {"customId": "x"}}, "Task.buttons"),
        ({"id": "1", "buttons": [{"customId": "x", "type": "two"}]}, "Task.buttons[0].type"),
        ({"id": "1", "buttons": [{"label": "U1"}]}, "Task.buttons[0].customId"),
        ({"id": "1", "imageUrls": [7]}, "Task.imageUrls[0]"),
        ({"id": "1", "properties": [1, 2]}, "Task.properties"),
        ({"status": "SUCCESS"}, "Task.id"),
        ([1, 2], "Task"),
        ("task", "Task"),
    ],
)
def test_wrong_shapes_raise_malformed_naming_the_field(raw: Any, field: str) -> None:
    """A wrong shape becomes MalformedResponseError that names the field path."""
    with pytest.raises(MalformedResponseError) as info:
        structure(raw, Task)
    assert field in str(info.value)


async def test_wrong_shape_in_a_list_names_the_task() -> None:
    """In a list-by-condition answer the bad task is named by its id, and the field too."""
    rows = [{"id": "1"}, {"id": "2", "status": 9}]
    script = Script({"POST /mj/task/list-by-condition": {"json": rows}})
    async with script.client() as mj:
        with pytest.raises(MalformedResponseError) as info:
            await mj.list_tasks(["1", "2"])
    assert "task 2.status" in str(info.value)


def test_submit_result_wrong_shapes() -> None:
    """A SubmitResult with a non-numeric code or an object result is malformed."""
    for raw, field in [({"code": "one"}, "code"), ({"code": 1, "result": {"id": 1}}, "result")]:
        with pytest.raises(MalformedResponseError, match=field):
            structure(raw, SubmitResult)


# ---- drift detector -------------------------------------------------------------------------


@pytest.mark.parametrize("name", TASK_SAMPLES)
def test_strict_converter_finds_no_drift_in_task_samples(name: str) -> None:
    """Every field in the relay's task samples is modelled (no extra keys anywhere)."""
    strict = make_converter(forbid_extra_keys=True)
    assert structure(load_fixture(name), Task) == strict.structure(load_fixture(name), Task)


def test_strict_converter_accepts_the_submit_sample() -> None:
    """The submit envelope sample has only modelled fields."""
    strict = make_converter(forbid_extra_keys=True)
    strict.structure(load_fixture("submit_numeric_result"), SubmitResult)


def test_strict_converter_does_detect_drift() -> None:
    """The detector can fail: a field we do not model is reported by name."""
    strict = make_converter(forbid_extra_keys=True)
    raw = {**load_fixture("task_pig"), "displays": {}}
    with pytest.raises(cattrs.BaseValidationError) as info:
        strict.structure(raw, Task)
    assert "displays" in "; ".join(cattrs.transform_error(info.value))


def test_strict_converter_rejects_the_openai_shaped_action_answer() -> None:
    """The doc's OpenAI-shaped /submit/action answer is not a SubmitResult at all."""
    with pytest.raises(MalformedResponseError, match="code"):
        structure(load_fixture("action_openai_shaped"), SubmitResult)


# ---- the newer request bodies -----------------------------------------------------------------


def test_newer_request_bodies() -> None:
    """change, simple-change, video, edits, swap-face and upload bodies in camelCase, None
    fields left out."""
    assert {"taskId": "1", "action": "UPSCALE", "index": 2} == unstructure(
        ChangeRequest(task_id="1", action="UPSCALE", index=2)
    )
    assert {"taskId": "1", "action": "REROLL"} == unstructure(
        ChangeRequest(task_id="1", action="REROLL")
    )
    assert {"content": "1 V3"} == unstructure(SimpleChangeRequest(content="1 V3"))
    assert {"prompt": "p", "image": "i", "endImage": "e", "motion": "high", "loop": False} == (
        unstructure(VideoRequest(prompt="p", image="i", end_image="e", motion="high", loop=False))
    )
    assert {"prompt": "p", "image": "i"} == unstructure(EditsRequest(prompt="p", image="i"))
    assert {"sourceBase64": "s", "targetBase64": "t"} == unstructure(
        SwapFaceRequest(source_base64="s", target_base64="t")
    )
    assert {"base64Array": ["a", "b"]} == unstructure(UploadRequest(base64_array=("a", "b")))


# ---- the source JSON is kept ------------------------------------------------------------------


def test_task_keeps_its_source_json(load: Load) -> None:
    """Task.raw is the relay's object, read-only; Task.extra holds the fields quickmj has no
    attribute for (TrueAI's thumbnailUrl, jobId, mode, ...). Neither takes part in equality."""
    raw = {**load("task_pig"), "thumbnailUrl": "https://t/1.webp", "jobId": "j", "mode": "FAST"}
    task = structure(raw, Task)
    assert raw == dict(task.raw)
    assert {"thumbnailUrl": "https://t/1.webp", "jobId": "j", "mode": "FAST"} == task.extra
    with pytest.raises(TypeError):
        task.raw["id"] = "2"  # type: ignore[index]
    assert task == structure(load("task_pig"), Task)
    assert {} == dict(Task(id="1").raw) == Task(id="1").extra
    assert "raw" not in unstructure(task)


def test_new_api_task_shape_parses() -> None:
    """new-api's fixed struct: "" for unset strings, 0 for unset times, null buttons and
    properties, videoUrls as objects, no imageUrls."""
    raw = {
        "id": "1730621826053455", "action": "IMAGINE", "customId": "", "botType": "",
        "prompt": "a fox", "promptEn": "", "description": "", "state": "", "submitTime": 1,
        "startTime": 0, "finishTime": 0, "imageUrl": "https://r/mj/image/1?rand=42",
        "videoUrl": "", "videoUrls": None, "status": "", "progress": "0%", "failReason": "",
        "buttons": None, "maskBase64": "", "properties": None,
    }  # fmt: skip
    task = structure(raw, Task)
    assert (TaskStatus.NOT_START, 0, (), {}, ()) == (
        task.status,
        task.progress_percent,
        task.buttons,
        task.properties,
        task.video_urls,
    )
    assert task.started_at is None
    video = structure({"id": "2", "videoUrls": [{"url": "https://v/0.mp4"}]}, Task)
    assert (MediaUrl("https://v/0.mp4"),) == video.video_urls


def test_loads_repairs_invalid_text() -> None:
    """Undecodable bytes and lone surrogate escapes become U+FFFD; valid pairs stay."""
    assert {"p": "a\ufffdb"} == loads(b'{"p": "a\xffb"}')
    assert {"p": "x\ufffdy", "\ufffd": 1} == loads(b'{"p": "x\\ud800y", "\\udfff": 1}')
    assert {"p": "😀"} == loads(b'{"p": "\\ud83d\\ude00"}')
    assert "ok \ufffd" == repair_text("ok \udc80")
    with pytest.raises(ValueError):
        loads(b"{nope")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1730621826053455", "1730621826053455"),
        (1730621826053455, "1730621826053455"),
        (1.730621826053455e15, "1730621826053455"),
        (1.5, None),
        (float("inf"), None),
        (True, None),
        (None, None),
        ({"id": 1}, None),
    ],
)
def test_as_id(value: Any, expected: str | None) -> None:
    """Ids are strings; whole numbers (even through a float) become their digits."""
    assert expected == as_id(value)
