"""The error hierarchy, its messages, and how relay codes map onto it."""

from __future__ import annotations

import errno
from typing import Any

import pytest
from fakes import Script

import quickmj.errors as errors_module
from quickmj import (
    APIError,
    AuthenticationError,
    BannedPromptError,
    BatchError,
    BatchLockedError,
    ButtonNotFoundError,
    ClientClosedError,
    ConfigurationError,
    ConnectError,
    DownloadError,
    HTTPStatusError,
    ImageExpiredError,
    InvalidInputError,
    JournalError,
    MalformedResponseError,
    ModelUnavailableError,
    NoAvailableAccountError,
    NotAnImageError,
    NotFoundError,
    NoUsableAccountError,
    QueueFullError,
    QuickMJError,
    RateLimitError,
    RelatedTaskNotFoundError,
    RelayUnreachableError,
    RequestTimeoutError,
    ServerError,
    StorageError,
    SubmitOutcomeUnknownError,
    SubmitRejectedError,
    Task,
    TaskError,
    TaskFailedError,
    TaskNeedsModalError,
    TaskNotFoundError,
    TaskStalledError,
    TaskStatus,
    TaskTimeoutError,
    TransportError,
    UnsafeURLError,
    UnsupportedByRelayError,
    UsageError,
    ValidationError,
)
from quickmj._protocol import rejection, task_unknown
from quickmj.errors import excerpt

# The tree in errors.py's docstring, as (class, its direct quickmj parent, builtin bases).
TREE: list[tuple[type, type | None, tuple[type, ...]]] = [
    (QuickMJError, None, (Exception,)),
    (ConfigurationError, QuickMJError, (ValueError,)),
    (InvalidInputError, QuickMJError, (ValueError,)),
    (ButtonNotFoundError, InvalidInputError, (LookupError, ValueError)),
    (UsageError, QuickMJError, (RuntimeError,)),
    (ClientClosedError, UsageError, (RuntimeError,)),
    (TransportError, QuickMJError, ()),
    (ConnectError, TransportError, (ConnectionError,)),
    (RequestTimeoutError, TransportError, (TimeoutError,)),
    (SubmitOutcomeUnknownError, TransportError, ()),
    (APIError, QuickMJError, ()),
    (HTTPStatusError, APIError, ()),
    (AuthenticationError, HTTPStatusError, ()),
    (NotFoundError, HTTPStatusError, ()),
    (UnsupportedByRelayError, NotFoundError, ()),
    (ModelUnavailableError, HTTPStatusError, ()),
    (RateLimitError, HTTPStatusError, ()),
    (ServerError, HTTPStatusError, ()),
    (SubmitRejectedError, APIError, ()),
    (ValidationError, SubmitRejectedError, ()),
    (RelatedTaskNotFoundError, SubmitRejectedError, ()),
    (QueueFullError, SubmitRejectedError, ()),
    (NoAvailableAccountError, QueueFullError, ()),
    (BannedPromptError, SubmitRejectedError, ()),
    (MalformedResponseError, QuickMJError, (ValueError,)),
    (DownloadError, QuickMJError, ()),
    (ImageExpiredError, DownloadError, ()),
    (NotAnImageError, DownloadError, ()),
    (UnsafeURLError, DownloadError, (ValueError,)),
    (StorageError, QuickMJError, (OSError,)),
    (NoUsableAccountError, QuickMJError, ()),
    (BatchError, QuickMJError, ()),
    (BatchLockedError, BatchError, ()),
    (JournalError, BatchError, ()),
    (RelayUnreachableError, BatchError, ()),
    (TaskError, QuickMJError, ()),
    (TaskFailedError, TaskError, ()),
    (TaskNeedsModalError, TaskError, ()),
    (TaskNotFoundError, TaskError, (LookupError,)),
    (TaskTimeoutError, TaskError, (TimeoutError,)),
    (TaskStalledError, TaskTimeoutError, (TimeoutError,)),
]


@pytest.mark.parametrize(("cls", "parent", "builtins"), TREE, ids=[c.__name__ for c, _, _ in TREE])
def test_hierarchy(cls: type, parent: type | None, builtins: tuple[type, ...]) -> None:
    """Each error sits where the documented tree puts it, with its builtin bases."""
    assert issubclass(cls, QuickMJError)
    if parent is not None:
        assert issubclass(cls, parent)
        nearest = next(b for b in cls.__mro__[1:] if issubclass(b, QuickMJError))
        assert parent is nearest
    for base in builtins:
        assert issubclass(cls, base)
    assert cls.__doc__


def test_tree_covers_every_public_error() -> None:
    """Every name in errors.__all__ is in the tree above, and the module docstring draws it."""
    assert {c.__name__ for c, _, _ in TREE} == set(errors_module.__all__)
    doc = errors_module.__doc__ or ""
    assert [] == [c.__name__ for c, _, _ in TREE if c.__name__ not in doc]


def test_branches_do_not_overlap() -> None:
    """Transport failures, API answers, bad bodies, task, batch and disk errors are separate."""
    branches = [
        TransportError,
        APIError,
        MalformedResponseError,
        TaskError,
        DownloadError,
        StorageError,
        BatchError,
    ]
    for a in branches:
        for b in branches:
            assert (a is b) == issubclass(a, b)
    assert not issubclass(SubmitOutcomeUnknownError, APIError)
    assert not issubclass(TaskNotFoundError, NotFoundError)
    assert not issubclass(UnsupportedByRelayError, TaskNotFoundError)


def test_errors_keep_their_module() -> None:
    """Errors report quickmj.errors as their module (public classes elsewhere say quickmj)."""
    assert {"quickmj.errors"} == {c.__module__ for c, _, _ in TREE}


# ---- messages and attributes ----------------------------------------------------------------


def test_task_not_found_messages() -> None:
    """One id or many (the list is cut after ten); found tasks travel along."""
    one = TaskNotFoundError("42")
    assert ("task 42 not found", "42", ("42",)) == (str(one), one.task_id, one.task_ids)
    many = TaskNotFoundError([f"t{i}" for i in range(12)], found=[Task(id="a")])
    assert str(many).startswith("12 tasks not found: t0, t1,")
    assert str(many).endswith("t9, ...")
    assert ("t0", 12, (Task(id="a"),)) == (many.task_id, len(many.task_ids), many.found)


def test_task_failed_error() -> None:
    """TaskFailedError carries the task and its reason."""
    task = Task(id="7", status=TaskStatus.FAILURE, fail_reason="可能包含敏感词")
    err = TaskFailedError(task)
    assert (task, "可能包含敏感词") == (err.task, err.fail_reason)
    assert "task 7 ended in FAILURE: 可能包含敏感词" == str(err)
    assert "no reason given" in str(TaskFailedError(Task(id="8", status=TaskStatus.CANCEL)))


def test_task_timeout_error() -> None:
    """The timeout message names the task, the limit and the last status seen."""
    last = Task(id="5", status=TaskStatus.IN_PROGRESS)
    err = TaskTimeoutError("5", 300, last)
    assert "task 5 did not finish within 300 s (last seen IN_PROGRESS)" == str(err)
    assert ("5", 300, last, ("5",)) == (err.task_id, err.timeout, err.last_task, err.pending)
    several = TaskTimeoutError("a", 1.5, pending=["a", "b"])
    assert "2 tasks did not finish within 1.5 s" == str(several)


def test_task_needs_modal_error() -> None:
    """The message tells the caller what to call next."""
    err = TaskNeedsModalError("77")
    assert "modal('77'" in str(err) and err.task is None


def test_banned_word() -> None:
    """banned_word comes from properties.bannedWord, when present."""
    word = BannedPromptError("x", code=24, properties={"bannedWord": "gore", "promptEn": "p"})
    assert "gore" == word.banned_word
    assert BannedPromptError("x", code=24).banned_word is None


def test_rejection_copies_properties() -> None:
    """properties is the error's own dict, not the caller's."""
    props = {"a": 1}
    err = SubmitRejectedError("x", code=9, properties=props)
    props["a"] = 2
    assert {"a": 1} == err.properties


def test_api_error_attributes() -> None:
    """APIError keeps status, body, path, its own copy of the headers and the request id."""
    headers = {"X-Request-Id": "r1"}
    err = ServerError(
        "boom", status=502, body="<html>", path="/x", headers=headers, request_id="r1"
    )
    headers["X-Request-Id"] = "changed"
    assert (502, "<html>", "/x", {"X-Request-Id": "r1"}, "r1") == (
        err.status,
        err.body,
        err.path,
        err.headers,
        err.request_id,
    )
    assert ({}, None) == (
        HTTPStatusError("x", status=400).headers,
        APIError("x", status=1).request_id,
    )


def test_unsupported_by_relay_error() -> None:
    """The route and the dialects that serve it travel with the error (a 404 by default)."""
    err = UnsupportedByRelayError("no", route="GET /task/list", dialects=["trueai"])
    assert ("GET /task/list", ("trueai",), 404) == (err.route, err.dialects, err.status)


def test_storage_batch_and_transport_errors() -> None:
    """StorageError names the path and errno (its str is the message alone); batch errors
    carry what a resume needs; transport errors name the request."""
    disk = StorageError("cannot write '/x': no space left", path="/x", errno=errno.ENOSPC)
    assert ("/x", errno.ENOSPC, "cannot write '/x': no space left") == (
        disk.path,
        disk.errno,
        str(disk),
    )
    locked = BatchLockedError("busy", pid=42, host="h", started="t")
    assert (42, "h", "t") == (locked.pid, locked.host, locked.started)
    assert 7 == RelayUnreachableError("down", not_submitted=7).not_submitted
    sent = SubmitOutcomeUnknownError("lost", method="POST", path="/submit/imagine", state="s")
    assert ("POST", "/submit/imagine", "s", None) == (
        sent.method,
        sent.path,
        sent.state,
        sent.request,
    )


def test_excerpt() -> None:
    """Bodies are decoded, stripped and cut with a note of what was dropped."""
    assert "" == excerpt(None)
    assert "hi" == excerpt(b"  hi \n")
    assert "\ufffd" == excerpt(b"\xff")
    assert "abc... [7 more characters]" == excerpt("abcdefghij", limit=3)


# ---- relay codes -> errors ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "description", "error"),
    [
        (3, "关联任务不存在或已失效", RelatedTaskNotFoundError),
        (3, "无可用的账号实例", NoAvailableAccountError),
        (4, "prompt不能为空", ValidationError),
        (4, "task_no_found ", RelatedTaskNotFoundError),
        (4, "task_not_found", RelatedTaskNotFoundError),
        (4, "task_status_not_success", ValidationError),
        (4, "当前用户队列数已达上限", QueueFullError),
        (5, "upstream error", SubmitRejectedError),
        (9, "提交失败，队列已满，请稍后重试", QueueFullError),
        (9, "The queue is full", QueueFullError),
        (9, "视频功能未启用", SubmitRejectedError),
        (23, "队列已满，请稍后尝试", QueueFullError),
        (24, "可能包含敏感词", BannedPromptError),
        (42, "", SubmitRejectedError),
        (-1, "并发数已达上限", QueueFullError),
        (-1, "今日绘图次数已达上限", SubmitRejectedError),
    ],
)
def test_rejection(code: int, description: str, error: type) -> None:
    """Every relay code (and the queue-full texts) gets its own error class, exactly."""
    err = rejection(code, description, {"k": "v"}, path="/submit/x")
    assert type(err) is error
    assert (code, description, {"k": "v"}) == (err.code, err.description, err.properties)
    assert f"(code {code})" in str(err)


@pytest.mark.parametrize(
    ("error", "unknown"),
    [
        (rejection(4, "task_no_found ", status=400), True),
        (rejection(4, "task_not_found", status=400), True),
        (rejection(3, "关联任务不存在或已失效", status=404), True),
        (rejection(3, "关联任务不存在或已失效", status=200), True),
        (rejection(3, "no such thing", status=404), True),
        (rejection(3, "无可用的账号实例", status=200), False),
        (rejection(3, "未找到 seed", status=200), False),
        (rejection(4, "quota_not_enough", status=400), False),
        (rejection(5, "do_request_failed", status=400), False),
        (NotFoundError("route", status=404), False),
        (UnsupportedByRelayError("route", route="GET /task/list"), False),
        (ServerError("x", status=500), False),
    ],
)
def test_task_unknown_rule(error: QuickMJError, unknown: bool) -> None:
    """The single "no such task" rule: new-api's task_no_found, the proxies' 不存在, TrueAI's
    404 code 3; never a missing account, a missing seed, a bare 404 or a server error."""
    assert unknown == task_unknown(error)


@pytest.mark.parametrize(
    ("body", "error", "in_message"),
    [
        (
            {"code": 24, "description": "banned", "properties": {"bannedWord": "gore"}},
            BannedPromptError,
            "'gore'",
        ),
        ({"code": 23, "description": "队列已满，请稍后尝试", "result": None}, QueueFullError, "23"),
        ({"code": 9, "description": "提交失败，队列已满，请稍后重试"}, QueueFullError, "code 9"),
        ({"code": 4, "description": "base64格式错误"}, ValidationError, "base64格式错误"),
        ({"code": 3, "description": "无可用的账号实例"}, NoAvailableAccountError, "code 3"),
        ({"code": 9, "description": "system error"}, SubmitRejectedError, "system error"),
        (
            {"success": False, "code": -1, "message": "并发数已达上限", "timestamp": "t"},
            QueueFullError,
            "并发数已达上限",
        ),
        (
            {"success": False, "code": -1, "message": "今日绘图次数已达上限", "timestamp": "t"},
            SubmitRejectedError,
            "今日绘图次数已达上限",
        ),
        ({"success": False, "message": "操作失败"}, SubmitRejectedError, "操作失败"),
    ],
)
async def test_submit_codes_raise_their_errors(
    body: dict[str, Any], error: type[SubmitRejectedError], in_message: str
) -> None:
    """A rejected submit raises its typed error carrying code, description and properties."""
    script = Script({"POST /mj/submit/imagine": {"json": body}})
    async with script.client() as mj:
        with pytest.raises(error) as info:
            await mj.imagine("x")
    err = info.value
    assert type(err) is error
    assert in_message in str(err)
    assert body.get("code", -1) == err.code
    assert body.get("description", body.get("message")) == err.description
    assert body.get("properties", {}) == err.properties
    assert (200, "/submit/imagine") == (err.status, err.path)
    if isinstance(err, BannedPromptError):
        assert "gore" == err.banned_word


@pytest.mark.parametrize("endpoint", ["describe", "blend", "shorten", "action", "modal"])
async def test_failure_shape_on_other_endpoints(endpoint: str) -> None:
    """TrueAI's {success:false, code:-1} body on non-imagine submits is a rejection, not a crash."""
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 8
    calls = {
        "describe": lambda mj: mj.describe(png),
        "blend": lambda mj: mj.blend([png, png]),
        "shorten": lambda mj: mj.shorten("p"),
        "action": lambda mj: mj.action("1", "MJ::JOB::upsample::1::h"),
        "modal": lambda mj: mj.modal("1"),
    }
    body = {"success": False, "code": -1, "message": "今日绘图次数已达上限", "timestamp": "t"}
    script = Script({f"POST /mj/submit/{endpoint}": {"json": body}})
    async with script.client() as mj:
        with pytest.raises(SubmitRejectedError, match="今日绘图次数已达上限") as info:
            await calls[endpoint](mj)
    assert -1 == info.value.code


@pytest.mark.parametrize(
    ("body", "dialect", "queued", "queue_position", "needs_modal"),
    [
        ({"code": 1, "result": "1"}, "quickrouter", None, None, False),
        ({"code": 1, "result": "1"}, "auto", None, None, False),
        ({"code": 1, "result": "1"}, "trueai", False, None, False),
        ({"code": 1, "result": "1"}, "midjourney-proxy", False, None, False),
        ({"code": 22, "description": "排队中，前面还有2个任务", "result": "1",
          "properties": {"numberOfQueues": 2}}, "trueai", True, 2, False),
        ({"code": 22, "result": "1", "properties": {"numberOfQueues": 5}}, "auto", True, 5, False),
        ({"code": 21, "description": "Waiting for window confirm", "result": "1",
          "properties": {"finalPrompt": "cat", "remix": True}}, "trueai", False, None, True),
    ],
)  # fmt: skip
async def test_success_codes_are_not_errors(
    body: dict[str, Any],
    dialect: Any,
    queued: bool | None,
    queue_position: int | None,
    needs_modal: bool,
) -> None:
    """1, 22 (queued) and 21 (modal needed) give a job handle. ``queued`` is None where
    new-api may have hidden a 22 inside its 1 (quickrouter, auto)."""
    # midjourney-proxy has no /submit/action: its answers are read on /submit/change.
    route = "change" if dialect == "midjourney-proxy" else "action"
    script = Script({f"POST /mj/submit/{route}": {"json": body}})
    async with script.client(dialect=dialect) as mj:
        if route == "change":
            job = await mj.change("9", "U1")
        else:
            job = await mj.action("9", "MJ::CustomZoom::h")
        if needs_modal:
            with pytest.raises(TaskNeedsModalError, match="modal"):
                await job.wait()
    assert job.result.ok and "1" == job.id == job.task_id
    assert (body["code"], queued, queue_position, needs_modal) == (
        job.code,
        job.queued,
        job.queue_position,
        job.needs_modal,
    )
    assert [f"POST /mj/submit/{route}"] == script.calls  # a modal job is not polled


async def test_related_task_404_on_action() -> None:
    """HTTP 404 carrying code 3 is RelatedTaskNotFoundError with status 404."""
    script = Script(
        {
            "POST /mj/submit/action": {
                "status": 404,
                "json": {"code": 3, "description": "关联任务不存在或已失效"},
            }
        }
    )
    async with script.client() as mj:
        with pytest.raises(RelatedTaskNotFoundError) as info:
            await mj.action("9", "MJ::JOB::upsample::1::h")
    assert (404, 3) == (info.value.status, info.value.code)


def _pickle_samples() -> list[QuickMJError]:
    task = Task(id="1", status=TaskStatus.IN_PROGRESS, progress="40%")
    http = {"status": 401, "body": "无效的令牌", "path": "/task/1/fetch", "request_id": "r1"}
    return [
        AuthenticationError("refused", reason="exhausted", **http),
        rejection(3, "无可用的账号实例", path="/submit/imagine"),
        rejection(24, "banned", {"bannedWord": "x"}, path="/submit/imagine"),
        ModelUnavailableError("no channel", model="mj_x", group="default", status=503),
        UnsupportedByRelayError("gone", route="GET /task/list", dialects=("trueai",)),
        RateLimitError("slow", retry_after=2.0, status=429),
        SubmitOutcomeUnknownError("lost", method="POST", path="/submit/imagine", state="s"),
        TaskTimeoutError("1", 30.0, task, pending=["1", "2"]),
        TaskStalledError("1", 700.0, task, allowance=600.0),
        TaskNotFoundError(["1", "2"]),
        TaskFailedError(Task(id="1", status=TaskStatus.FAILURE, fail_reason="banned")),
        ImageExpiredError("expired", url="https://cdn.test/a.png", status=403, task_id="1"),
        StorageError("disk full", path="/tmp/x", errno=errno.ENOSPC),
        ButtonNotFoundError("U9", "1", ["U1", "U2"]),
    ]


@pytest.mark.parametrize("error", _pickle_samples(), ids=lambda e: type(e).__name__)
def test_every_error_pickles_with_its_attributes(error: QuickMJError) -> None:
    """A worker process can hand any quickmj error back: type, message and fields."""
    import pickle

    back = pickle.loads(pickle.dumps(error))
    assert type(back) is type(error)
    assert str(back) == str(error) and back.args == error.args
    assert vars(back) == vars(error)
    assert getattr(back, "errno", None) == getattr(error, "errno", None)
