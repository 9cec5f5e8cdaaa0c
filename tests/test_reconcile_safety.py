"""Reconcile never adopts a stranger's job (issue 20, items 4 and 5).

A state tag is visible to every user of a relay that lists everyone's tasks (TrueAI's
``/task/list``), so anyone can copy it. A listed task is adopted only when it carries the
row's tag, its prompt is the row's (as relays change prompts) and its submit time falls in
the row's send window, and only when one task does; a malformed listed task is skipped
and logged, never the end of reconcile.
"""

from __future__ import annotations

import io
import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest
from fakes import SIM_POLL as FAST
from fakes import Script
from fakes import sim_client as client

from quickmj import Task, reconcile
from quickmj._batch import Unsettled, _adopt, _same_prompt
from quickmj._cli import _Output, _print_unsettled
from quickmj._journal import Journal, Phase
from quickmj.testing import simulate

USER, STRANGER = "user-key", "stranger-key"
TAG = "qmj:run1:0"


def unknown_rows(out: Path, *prompts: str) -> None:
    """A journal whose rows were caught mid-submit: sent with tag ``qmj:run1:<i>``, no id."""
    journal = Journal(out / ".quickmj-journal.sqlite", create=True)
    journal.load_prompts([(p, {}) for p in prompts])
    for i in range(len(prompts)):
        journal.mark_submitting(i, f"qmj:run1:{i}")
        journal.set_phase(i, Phase.UNKNOWN, reason="the answer was lost")
    journal.end_run()
    journal.close()


def row(out: Path, index: int = 0) -> Any:
    with Journal(out / ".quickmj-journal.sqlite", create=False) as journal:
        return journal.row(index)


def trueai(**kwargs: Any) -> Any:
    return simulate(dialect="trueai", seed=5, api_keys=(USER, STRANGER), **kwargs)


# ---- item 4: a spoofed tag ----


async def test_a_strangers_copy_of_the_tag_is_not_adopted_the_users_job_is(
    tmp_path: Path,
) -> None:
    """The stranger's task is listed first (newest) with the copied tag and its own
    prompt: the row adopts the user's own job; on the old main it took the stranger's."""
    unknown_rows(tmp_path, "a red fox in the snow")
    async with trueai() as relay, client(relay, USER) as mj, client(relay, STRANGER) as other:
        own = await mj.imagine("a red fox in the snow", state=TAG)
        spoof = await other.imagine("a blue whale", state=TAG)
        summary = await reconcile(mj, tmp_path, download=False)
    assert () == summary.unsettled and summary.ok
    assert own.id == row(tmp_path).task_id != spoof.id


async def test_several_matching_tasks_are_not_adopted_and_are_named(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A stranger who copies tag and prompt at once makes the row ambiguous: nothing is
    adopted, the row stays unknown and names both ids (also in the CLI's line)."""
    unknown_rows(tmp_path, "a red fox")
    async with trueai() as relay, client(relay, USER) as mj, client(relay, STRANGER) as other:
        own = await mj.imagine("a red fox", state=TAG)
        spoof = await other.imagine("a  red fox", state=f"mine {TAG}")
        with caplog.at_level(logging.WARNING, logger="quickmj"):
            summary = await reconcile(mj, tmp_path, download=False)
    (left,) = summary.unsettled
    assert {own.id, spoof.id} == set(left.matches) and 1 == summary.unknown
    assert left.reason.startswith("2 listed tasks match (ids ")
    assert left.reason.endswith("not adopted; check them by hand")
    assert row(tmp_path).task_id is None and row(tmp_path).phase is Phase.UNKNOWN
    assert any(own.id in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    shown = io.StringIO()
    _print_unsettled(summary.unsettled, _Output(False, shown))
    assert f"line 1 (state tag {TAG})" in shown.getvalue()
    assert own.id in shown.getvalue() and "check them by hand" in shown.getvalue()
    as_json = io.StringIO()
    _print_unsettled(summary.unsettled, _Output(True, as_json))
    line = json.loads(as_json.getvalue())["unsettled"]
    assert (left.reason, sorted(left.matches)) == (line["reason"], sorted(line["matches"]))


async def test_a_copy_outside_the_send_window_is_not_adopted(tmp_path: Path) -> None:
    """The user's submit never reached the relay; an hour later (the relay's clock) a
    stranger sends the same prompt with the tag: it is listed, and left alone."""
    unknown_rows(tmp_path, "a red fox")
    async with trueai() as relay, client(relay, STRANGER) as other, client(relay, USER) as mj:
        relay.simulator.advance(3600)
        spoof = await other.imagine("a red fox", state=TAG)
        summary = await reconcile(mj, tmp_path, download=False)
    (left,) = summary.unsettled
    assert (spoof.id,) == left.matches and "another prompt or submit time" in left.reason
    assert row(tmp_path).task_id is None


async def test_spoofing_run_counts_strangers_adopted(tmp_path: Path) -> None:
    """Five unknown rows whose jobs exist, each with a stranger's later copy of its tag
    (another prompt): every row adopts its own job, no stranger's task is adopted."""
    prompts = [f"prompt {i} --ar 3:2" for i in range(5)]
    unknown_rows(tmp_path, *prompts)
    async with trueai() as relay, client(relay, USER) as mj, client(relay, STRANGER) as other:
        own = [(await mj.imagine(p, state=f"qmj:run1:{i}")).id for i, p in enumerate(prompts)]
        spoofs = {(await other.imagine(f"stolen {i}", state=f"qmj:run1:{i}")).id for i in range(5)}
        summary = await reconcile(mj, tmp_path, download=False)
    adopted = [row(tmp_path, i).task_id for i in range(5)]
    assert own == adopted and not spoofs & set(adopted) and summary.ok


def test_relay_changes_to_a_prompt_still_match() -> None:
    """Uploaded image URLs before the prompt, ``--seed N`` and speed flags after it, and
    whitespace do not hide the user's own prompt; another prompt is not it."""
    prompt = "a cat  on a\nmat --ar 3:2"

    def listed(text: str, **kwargs: Any) -> Task:
        return Task(id="1730621826053455", prompt=text, **kwargs)

    for text in (
        "a cat on a mat --ar 3:2",
        "https://cdn.example/a.png a cat on a mat --ar 3:2 --seed 1234",
        "<https://cdn.example/a.png> a cat on a mat --ar 3:2 --fast",
        "a cat on a mat --ar 3:2 --relax --seed 77",
    ):
        assert _same_prompt(prompt, listed(text)), text
    assert _same_prompt(prompt, listed("", properties={"finalPrompt": "a cat on a mat --ar 3:2"}))
    for text in ("a cat on a hat --ar 3:2", "a cat", "a category on a mat --ar 3:2", ""):
        assert not _same_prompt(prompt, listed(text)), text
    assert not _same_prompt(prompt, Task(id="1730621826053455"))


def test_the_send_window_bounds_both_ways(tmp_path: Path) -> None:
    """A listed task stamped well before the send, or after the longest a submit can
    take to reach the relay, is not the row's job; one inside the window is."""
    unknown_rows(tmp_path, "a cat")
    journal = Journal(tmp_path / ".quickmj-journal.sqlite", create=False)
    sent = journal.row(0).sent_at
    assert sent is not None and abs(sent - time.time()) < 3600

    def at(offset: float, task_id: str) -> tuple[Task, str]:
        stamp = int((sent + offset) * 1000)
        return Task(id=task_id, prompt="a cat", state=TAG, submit_time=stamp), "acct"

    span = 210.0  # Timeouts.total + Timeouts.request, the defaults
    early, late = at(-600, "1000000000000001"), at(span + 600, "1000000000000002")
    (left,) = _adopt(journal, [early, late], span)
    assert isinstance(left, Unsettled) and 2 == len(left.matches)
    assert journal.row(0).task_id is None
    assert [] == _adopt(journal, [early, at(1.5, "1000000000000003"), late], span)
    assert "1000000000000003" == journal.row(0).task_id
    journal.close()


async def test_a_press_is_matched_as_a_child_of_its_grid(tmp_path: Path) -> None:
    """A press row (its grid known) adopts the listed task whose parent is that grid,
    whatever prompt the relay gave it; a copy under another grid is left alone."""
    journal = Journal(tmp_path / ".quickmj-journal.sqlite", create=True)
    journal.load_prompts([("a cat", {})])
    journal.mark_submitting(0, "qmj:run1:0")
    journal.set_task(0, "1730621826053455")
    journal.mark_submitting(0, "qmj:run1:0:U1", pressing="U1")
    journal.set_phase(0, Phase.UNKNOWN, reason="lost")
    sent = journal.row(0).sent_at
    assert sent is not None
    stamp = int(sent * 1000) + 500
    mine = Task(
        id="1730621826053999",
        state="qmj:run1:0:U1",
        submit_time=stamp,
        parent_id="1730621826053455",
    )
    stranger = Task(id="1730621826054000", state="qmj:run1:0:U1", submit_time=stamp, parent_id="99")
    assert [] == _adopt(journal, [(stranger, "a"), (mine, "a")], 210.0)
    assert {"U1": "1730621826053999"} == journal.row(0).upscales
    journal.close()


# ---- item 5: one malformed listed task ----


def _listed(task_id: str, **fields: Any) -> dict[str, Any]:
    return {"id": task_id, "status": "SUCCESS", "progress": "100%", **fields}


async def test_malformed_listed_tasks_are_skipped_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``submitTime: "yesterday"``, a missing id, wrong types and a non-object among the
    listed tasks: each skipped with one WARNING line (capped), and the row whose own job
    is listed and valid settles (it failed as a whole on the old main)."""
    unknown_rows(tmp_path, "a red fox")
    sent = row(tmp_path).sent_at
    assert sent is not None
    own = _listed(
        "1730621826053455",
        prompt="a red fox --seed 42",
        state=TAG,
        submitTime=int(sent * 1000) + 300,
        imageUrl="https://cdn.example/x.png",
    )
    broken: list[Any] = [
        _listed("1730621826053001", submitTime="yesterday", state=TAG),
        {"status": "SUCCESS", "state": TAG, "prompt": "a red fox"},
        _listed("1730621826053002", prompt=["a", "red", "fox"]),
        _listed("1730621826053003", buttons="none"),
        "not a task",
        None,
        _listed("1730621826053004", properties=[]),
        _listed("1730621826053005", finishTime={"t": 1}),
    ]
    script = Script(
        {
            "GET /mj/task/list": {"json": [*broken[:4], own, *broken[4:]]},
            "POST /mj/task/list-by-condition": {"json": [own]},
            "GET /mj/task/1730621826053455/fetch": {"json": own},
        }
    )
    with caplog.at_level(logging.WARNING, logger="quickmj"):
        async with script.client(dialect="trueai", poll=FAST) as mj:
            summary = await reconcile(mj, tmp_path, download=False)
    assert () == summary.unsettled and summary.ok
    assert "1730621826053455" == row(tmp_path).task_id
    lines = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert 6 == len(lines), lines  # five entries, then one line counting them all
    assert "listed task #1 skipped (malformed)" in lines[0] and "submitTime" in lines[0]
    assert lines[-1].startswith("reconcile: 8 malformed listed tasks skipped")
    assert all("\n" not in line for line in lines)


async def test_an_unreadable_listing_leaves_rows_unsettled_with_a_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A task list that is no list at all: a WARNING, and the rows stay unknown."""
    unknown_rows(tmp_path, "a red fox")
    script = Script({"GET /mj/task/list": {"json": {"oops": 1}}})
    with caplog.at_level(logging.WARNING, logger="quickmj"):
        async with script.client(dialect="trueai", poll=FAST) as mj:
            summary = await reconcile(mj, tmp_path, download=False)
    (left,) = summary.unsettled
    assert "does not list tasks" in left.reason and 1 == summary.unknown
    assert any("unreadable" in r.getMessage() for r in caplog.records)
