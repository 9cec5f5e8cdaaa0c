"""Relay answers keep their meaning (issue 19, items 7, 8, 9 and 11).

The answers are the servers' own words, read from their sources: novicezk
midjourney-proxy (``TaskServiceImpl``, ``SubmitController.change``), TrueAI
(``TaskService.cs``), new-api (``middleware/distributor.go``, ``model/token.go``,
``relay/mjproxy_handler.go`` ``getMjRequestPath``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from fakes import BASE, KEY, FakeRelay, Script, make_client, spy_on

import quickmj._client as client_module
from quickmj import (
    AsyncClient,
    AuthenticationError,
    BatchItem,
    ConfigurationError,
    ModelUnavailableError,
    NoAvailableAccountError,
    QueueFullError,
    RelatedTaskNotFoundError,
    RetryPolicy,
    ServerError,
    SubmitOutcomeUnknownError,
    SubmitRejectedError,
    Task,
    TaskStatus,
    UnsupportedByRelayError,
    ValidationError,
    run_batch,
)
from quickmj._budgets import account_unusable
from quickmj._protocol import (
    CONFIRMS_MODAL,
    ROUTES,
    STORE_LAG_ROUTES,
    TERMINAL_STATUSES,
    outcome_unknown,
    rejection,
    retry_submit,
    serves,
    store_lag,
    task_unknown,
)
from quickmj._relay import STORE_LAG_PAUSE
from quickmj.testing import MockTransport, Request, Response

IMAGINE = "POST /mj/submit/imagine"
CHANGE = "POST /mj/submit/change"
NO_ACCOUNT = {"code": 3, "description": "无可用的账号实例", "result": None}
ACCEPTED = {"code": 1, "description": "提交成功", "result": "1730621826053455"}


# ---- item 7: code 3 is two things ----


@pytest.mark.parametrize(
    ("code", "text"),
    [
        (3, "无可用的账号实例"),  # novicezk TaskServiceImpl, TrueAI TaskService.cs
        (9, "无可用的账号实例"),  # TrueAI's admin routes answer it with FAILURE
        (3, "No available account instance"),  # new-api's English words for it
    ],
)
def test_no_account_is_its_own_error(code: int, text: str) -> None:
    """ "No free account" keeps the relay's words; a QueueFullError, not an unknown task."""
    err = rejection(code, text, path="/submit/imagine")
    assert type(err) is NoAvailableAccountError
    assert isinstance(err, QueueFullError) and not isinstance(err, RelatedTaskNotFoundError)
    assert (code, text) == (err.code, err.description)
    assert text in str(err) and "retry later" in str(err)
    assert not task_unknown(err)
    assert not outcome_unknown(err)  # the relay answered: nothing was created
    assert retry_submit(err, backpressure=True) and not retry_submit(err, backpressure=False)
    assert account_unusable(err) is None  # the relay's accounts, not the key


@pytest.mark.parametrize(
    ("code", "text", "error"),
    [
        # novicezk: the account that ran the parent is gone; waiting does not bring it back.
        (3, "账号不可用: 1118138338562560102", RelatedTaskNotFoundError),
        # TrueAI: no account can do this at all (video): not a queue to wait in.
        (4, "无可用的账号实例", ValidationError),
        # new-api's upstream call failed: whatever the words, the job may exist.
        (5, "do_request_failed: No available account instance", SubmitRejectedError),
    ],
)
def test_only_a_free_account_shortage_is_retried(
    code: int, text: str, error: type[SubmitRejectedError]
) -> None:
    """The words alone do not make "no free account": the code must say "retry later"."""
    err = rejection(code, text, path="/submit/change")
    assert type(err) is error
    assert not retry_submit(err, backpressure=True)


async def test_a_code_5_no_account_answer_is_never_sent_again() -> None:
    """new-api's code 5 may follow a job created upstream: an unknown outcome, one send."""
    sent: list[Request] = []

    def handle(request: Request) -> Response:
        sent.append(request)
        return Response(
            200, json={"code": 5, "description": "do_request_failed: No available account"}
        )

    retry = RetryPolicy(retry_submits=True, backoff=0.0)
    async with AsyncClient(KEY, base_url=BASE, transport=MockTransport(handle), retry=retry) as mj:
        with pytest.raises(SubmitOutcomeUnknownError):
            await mj.imagine("a cat")
    assert 1 == len(sent)


def test_related_task_not_found_stays_what_it_was() -> None:
    """关联任务不存在或已失效 is still RelatedTaskNotFoundError, and an unknown task."""
    err = rejection(3, "关联任务不存在或已失效", status=404)
    assert type(err) is RelatedTaskNotFoundError and task_unknown(err)
    assert "related task or account" not in str(err)


async def test_no_account_on_a_submit_is_raised_with_the_relays_words() -> None:
    """Without backpressure retries the caller gets it at once; one request, no job."""
    script = Script({IMAGINE: {"json": NO_ACCOUNT}})
    async with script.client(dialect="midjourney-proxy") as mj:
        with pytest.raises(NoAvailableAccountError, match="无可用的账号实例") as info:
            await mj.imagine("a cat")
    assert 1 == script.count(IMAGINE) and 3 == info.value.code


async def test_no_account_is_retried_as_backpressure() -> None:
    """With ``retry_submits`` it is re-sent like queue full (nothing was created)."""
    retry = RetryPolicy(backoff=0, max_backoff=0, max_attempts=3, retry_submits=True)
    script = Script({IMAGINE: [{"json": NO_ACCOUNT}, {"json": ACCEPTED}]})
    async with script.client(retry=retry) as mj:
        job = await mj.imagine("a cat")
    assert ("1730621826053455", 2) == (job.id, script.count(IMAGINE))


async def test_adaptive_admission_treats_no_account_like_queue_full() -> None:
    """The budget counts it as a refusal (and shrinks), then sends again."""
    script = Script({IMAGINE: [{"json": NO_ACCOUNT}, {"json": ACCEPTED}]})
    async with script.client(admission="adaptive") as mj:
        job = await mj.imagine("a cat")
        assert mj.admission is not None
        stats = mj.admission.budgets[0].stats
    assert "1730621826053455" == job.id
    assert (1, 1, 0) == (stats.queue_full, stats.accepted, stats.rejected)


async def test_batch_leaves_a_no_account_prompt_pending_then_submits_it(tmp_path: Path) -> None:
    """In a batch it is backpressure: the prompt is not 'rejected', it is sent again."""
    relay = FakeRelay(ticks=1)
    refusals = [Response(200, json=NO_ACCOUNT)]

    def answer(route: str, body: dict[str, Any]) -> Response | None:
        return refusals.pop() if refusals else None

    relay.submit_answer = answer
    async with make_client(relay) as mj:
        summary = await run_batch(mj, [BatchItem("a fox")], tmp_path, download=False)
    assert (1, 0) == (summary.succeeded, summary.rejected)
    assert 2 == len(relay.submits)  # the refused submit created nothing; one job


# ---- item 8: new-api's distributor and token messages ----

DISTRIBUTOR_OLD = "当前分组 default 下对于模型 mj_custom_zoom 无可用渠道"
DISTRIBUTOR_ZH = "分组 vip 下模型 mj_upscale 无可用渠道（distributor）"
DISTRIBUTOR_EN = "No available channel for model mj_imagine under group auto(default) (distributor)"


@pytest.mark.parametrize(
    ("message", "model", "group"),
    [
        (DISTRIBUTOR_OLD, "mj_custom_zoom", "default"),
        (DISTRIBUTOR_ZH, "mj_upscale", "vip"),
        (DISTRIBUTOR_EN, "mj_imagine", "auto(default)"),
        ("no channel at all", None, None),
    ],
)
async def test_model_not_found_is_a_typed_refusal(
    message: str, model: str | None, group: str | None
) -> None:
    """The 503 keeps the relay's message, names the model, and created nothing."""
    body = {"error": {"message": message, "type": "new_api_error", "code": "model_not_found"}}
    script = Script({IMAGINE: {"status": 503, "json": body}})
    async with script.client(dialect="quickrouter") as mj:
        with pytest.raises(ModelUnavailableError) as info:
            await mj.imagine("a cat")
    err = info.value
    assert (model, group, 503) == (err.model, err.group, err.status)
    assert message in str(err) and "nothing was created" in str(err)
    assert not isinstance(err, (UnsupportedByRelayError, ServerError, SubmitOutcomeUnknownError))
    assert not outcome_unknown(err)
    assert 1 == script.count(IMAGINE)  # a 503 is otherwise a gateway's: never re-sent here


async def test_model_not_found_names_the_action_of_a_custom_zoom() -> None:
    """A custom zoom's model is named in the error (``mj_custom_zoom``)."""
    body = {
        "error": {"message": DISTRIBUTOR_OLD, "type": "new_api_error", "code": "model_not_found"}
    }
    script = Script({"POST /mj/submit/action": {"status": 503, "json": body}})
    async with script.client(dialect="quickrouter") as mj:
        with pytest.raises(ModelUnavailableError, match="model mj_custom_zoom"):
            await mj.action("1", "MJ::CustomZoom::abc")


def _auth_body(message: str) -> dict[str, Any]:
    return {
        "error": {"code": "", "message": f"{message} (request id: 2026X)", "type": "new_api_error"}
    }


# new-api model/token.go ValidateUserToken (older: its own texts; newer: i18n token.*).
EXHAUSTED = "该令牌额度已用尽 TokenStatusExhausted[sk-abc***xyz]"
EXHAUSTED_OLD = "[sk-abc***xyz] 该令牌额度已用尽 !token.UnlimitedQuota && token.RemainQuota = 0"
EXHAUSTED_EN = "This token quota is exhausted TokenStatusExhausted[sk-abc***xyz]"
INVALID = {"error": {"message": "无效的令牌", "type": "new_api_error"}}
CHECK_KEY = "check the API key"


@pytest.mark.parametrize(
    ("status", "body", "reason", "hint"),
    [
        (401, _auth_body(EXHAUSTED), "exhausted", "top it up"),
        (401, _auth_body(EXHAUSTED_OLD), "exhausted", "quota is used up"),
        (401, _auth_body(EXHAUSTED_EN), "exhausted", "top it up"),
        (401, _auth_body("该令牌已过期"), "expired", "has expired"),
        (401, _auth_body("This token has expired"), "expired", "renew it"),
        (401, _auth_body("该令牌状态不可用"), "disabled", "is disabled"),
        (401, INVALID, "invalid", CHECK_KEY),
        (403, _auth_body("该令牌无权访问模型 mj_upscale"), "model_forbidden", "action's model"),
        (401, "账号已禁用", "disabled", "is disabled"),  # TrueAI SimpleAuthMiddleware, plain text
        (401, "", None, CHECK_KEY),  # OSS-Java: an empty 401
    ],
)
async def test_token_messages_keep_their_meaning(
    status: int, body: Any, reason: str | None, hint: str
) -> None:
    """The relay's words stay in AuthenticationError, with a hint that does not mislead."""
    spec = (
        {"status": status, "json": body}
        if isinstance(body, dict)
        else {"status": status, "body": body}
    )
    script = Script({"GET /mj/task/1/fetch": spec})
    async with script.client() as mj:
        with pytest.raises(AuthenticationError) as info:
            await mj.fetch("1")
    err = info.value
    text = str(err)
    assert (reason, status) == (err.reason, err.status)
    assert hint in text
    if reason in ("exhausted", "expired", "disabled"):
        assert "check the API key" not in text
    relay_words = body["error"]["message"] if isinstance(body, dict) else body
    for word in ("该令牌额度已用尽", "该令牌已过期", "该令牌状态不可用", "账号已禁用", "2026X"):
        if word in relay_words:
            assert word in text
    assert "abc" not in text and "xyz" not in text and "abc" not in err.body  # no key fragments


def test_account_summaries_say_what_is_wrong_with_a_key() -> None:
    """A pool takes an exhausted key out of rotation saying so (never the key)."""
    spent = AuthenticationError("x", status=401, reason="exhausted")
    assert "the key has no quota left (HTTP 401)" == account_unusable(spent)
    assert "the relay refused the key (HTTP 403)" == account_unusable(
        AuthenticationError("x", status=403)
    )


# ---- item 9: speed modes ----


@pytest.mark.parametrize("where", ["argument", "environment"])
def test_mode_on_midjourney_proxy_is_a_configuration_error(
    where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """midjourney-proxy serves /mj only: a mode prefix could only ever be a 404."""
    kwargs: dict[str, Any] = {"dialect": "midjourney-proxy", "base_url": BASE}
    if where == "argument":
        kwargs["mode"] = "relax"
    else:
        monkeypatch.setenv("QUICKMJ_MODE", "relax")
    with pytest.raises(ConfigurationError, match="midjourney-proxy serves no speed-mode prefix"):
        AsyncClient(KEY, transport=MockTransport(Script()), **kwargs)


def test_mode_on_new_api_warns_once(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """new-api drops the prefix before forwarding: one WARNING per process, not per client."""
    monkeypatch.setattr(client_module, "_MODE_WARNED", set())
    caplog.set_level(logging.WARNING, logger="quickmj")
    for _ in range(3):
        AsyncClient(
            KEY,
            base_url=BASE,
            dialect="quickrouter",
            mode="fast",
            transport=MockTransport(Script()),
        )
    AsyncClient(
        KEY, base_url=BASE, dialect="trueai", mode="fast", transport=MockTransport(Script())
    )
    AsyncClient(KEY, base_url=BASE, dialect="quickrouter", transport=MockTransport(Script()))
    warnings = [r for r in caplog.records if "prefix" in r.getMessage()]
    assert 1 == len(warnings)
    assert "--fast" in warnings[0].getMessage() and KEY not in warnings[0].getMessage()


async def test_prefix_404_on_an_unknown_relay_names_the_prefix() -> None:
    """On ``auto``, a 404 under /mj-fast blames the prefix too, not only the route."""
    script = Script({"POST /mj-fast/mj/submit/imagine": {"status": 404, "body": "Not Found"}})
    async with script.client(mode="fast") as mj:
        with pytest.raises(UnsupportedByRelayError) as info:
            await mj.imagine("a cat")
    assert "/mj-fast/mj/submit/imagine" in str(info.value) and "mode=None" in str(info.value)
    assert "POST /submit/imagine" == info.value.route


# ---- item 11: midjourney-proxy's store lag; action() on that dialect ----


@pytest.mark.parametrize(
    ("button", "advice"),
    [
        ("U1", "change(task, 'U1')"),
        ("v3", "change(task, 'V3')"),
        ("🔄", "change(task, 'R')"),
        ("MJ::JOB::variation::2::abc", "change(task, 'V2')"),
        ("MJ::JOB::reroll::0::abc::SOLO", "change(task, 'R')"),
        ("MJ::JOB::pan_left::1::abc", "change(task, 'U1'..'U4', 'V1'..'V4', 'R')"),
    ],
)
async def test_action_on_midjourney_proxy_points_to_change(button: str, advice: str) -> None:
    """No /submit/action there: a clear error at once, nothing sent."""
    script = Script()
    async with script.client(dialect="midjourney-proxy") as mj:
        with pytest.raises(UnsupportedByRelayError) as info:
            mj.action("1730621826053455", button)
    assert advice in str(info.value) and "nothing was sent" in str(info.value)
    assert ("quickrouter", "trueai") == info.value.dialects
    assert [] == script.calls


def _succeeded() -> Task:
    return Task(id="1730621826053455", status=TaskStatus.SUCCESS, progress="100%")


@pytest.mark.parametrize(
    "lag",
    [
        {"code": 3, "description": "关联任务不存在或已失效"},  # not saved yet
        {"code": 4, "description": "关联任务状态错误"},  # the IN_PROGRESS copy is saved
    ],
)
async def test_change_after_success_is_sent_again_once(lag: dict[str, Any]) -> None:
    """The parent is known SUCCESS: the lagging store's answer is retried after a pause."""
    script = Script({CHANGE: [{"json": lag}, {"json": ACCEPTED}]})
    async with script.client(dialect="midjourney-proxy") as mj:
        spy = spy_on(mj)
        job = await mj.change(_succeeded(), "U1")
    assert "1730621826053455" == job.id
    assert 2 == script.count(CHANGE) and [STORE_LAG_PAUSE] == spy.delays
    assert script.bodies(CHANGE)[0] == script.bodies(CHANGE)[1]


async def test_change_lag_retry_is_once_only() -> None:
    """A second such answer is the relay's word: raised (two requests, nothing created)."""
    lag = {"code": 3, "description": "关联任务不存在或已失效"}
    script = Script({CHANGE: {"json": lag}})
    async with script.client(dialect="midjourney-proxy") as mj:
        spy_on(mj)
        with pytest.raises(RelatedTaskNotFoundError):
            await mj.change(_succeeded(), "V2")
    assert 2 == script.count(CHANGE)


@pytest.mark.parametrize(
    "parent",
    [
        "1730621826053455",  # only an id: the state is not known
        Task(id="1730621826053455", status=TaskStatus.IN_PROGRESS),  # not finished
    ],
)
async def test_change_of_a_parent_not_seen_succeeding_is_not_retried(parent: Any) -> None:
    """Without a SUCCESS seen, code 3 means what it says: one request."""
    script = Script({CHANGE: {"json": {"code": 4, "description": "关联任务状态错误"}}})
    async with script.client(dialect="midjourney-proxy") as mj:
        with pytest.raises(ValidationError, match="关联任务状态错误"):
            await mj.change(parent, "U1")
    assert 1 == script.count(CHANGE)


async def test_job_handle_that_saw_success_counts_as_known() -> None:
    """A job whose last read was SUCCESS is a parent known to have succeeded."""
    relay = FakeRelay(ticks=1)
    lagged: list[str] = []

    def answer(route: str, body: dict[str, Any]) -> Response | None:
        if route == "/submit/change" and not lagged:
            lagged.append(route)
            return Response(200, json={"code": 3, "description": "关联任务不存在或已失效"})
        return None

    relay.submit_answer = answer
    async with make_client(relay, dialect="midjourney-proxy") as mj:
        spy_on(mj)
        grid = await mj.imagine("a cat")
        await grid.wait()
        upscale = await mj.change(grid, "U2")
    assert upscale.id != grid.id
    assert 2 == sum(1 for s in relay.submits if s["route"] == "/submit/change")


def test_store_lag_rule() -> None:
    """Only the parent-missing / parent-status answers, never "no account"."""
    assert store_lag(rejection(3, "关联任务不存在或已失效"))
    assert store_lag(rejection(4, "关联任务状态错误"))
    assert store_lag(rejection(4, "task_status_not_success"))
    assert not store_lag(rejection(3, "无可用的账号实例"))
    assert not store_lag(rejection(4, "prompt不能为空"))
    assert not store_lag(rejection(24, "关联任务状态错误"))
    assert isinstance(rejection(4, "关联任务状态错误"), SubmitRejectedError)


def test_route_facts_come_from_the_route_table() -> None:
    """The routes the rules single out are submit routes of ROUTES; serves() reads it."""
    submits = {r.split(" ", 1)[1] for r in ROUTES if r.startswith("POST /submit/")}
    assert CONFIRMS_MODAL | STORE_LAG_ROUTES <= submits
    assert not serves("midjourney-proxy", "POST /submit/action")
    assert serves("trueai", "POST /submit/action") and serves("auto", "POST /submit/action")
    assert TERMINAL_STATUSES == {s.value for s in TaskStatus if s.is_terminal}
