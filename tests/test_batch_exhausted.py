"""A key that runs out of quota in the middle of a batch (new-api: 401 "exhausted"), or
whose account cannot pay (new-api: code 4 ``quota_not_enough``).

The refused submit created nothing, so its prompt stays pending, the run stops
submitting on that key instead of sending (and losing) every remaining prompt once,
and a resume after a top-up sends them.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from fakes import sim_client

from quickmj import BatchItem, PollPolicy, run_batch
from quickmj._cli import _Output, _print_summary
from quickmj._journal import Journal, Phase
from quickmj.testing import SimulatorConfig, simulate

# A refused key ends the waits after 3 refusals over 0.2 s (not 10 s: a cheap test).
FAST = PollPolicy(
    interval=0.05, first_poll=0.02, near_done_interval=0.02, adaptive=False, dead_end_grace=0.2
)
ITEMS = [BatchItem(f"fox {i}") for i in range(12)]


def top_up(relay: Any, usd: float) -> None:
    """Give the simulated new-api key more quota (the operator's top-up)."""
    ledger = relay.simulator.dialect.ledger
    token = ledger.of(relay.api_key)
    token.remain += ledger.quota(usd)
    token.marked_exhausted = False


def phases(out: Path) -> list[Phase]:
    with Journal(out / ".quickmj-journal.sqlite", create=False) as journal:
        return [r.phase for r in journal.rows()]


async def test_an_exhausted_key_stops_submitting_and_leaves_prompts_pending(
    tmp_path: Path,
) -> None:
    # 0.25 USD at 0.10 a grid: three grids are created (the third takes the key below
    # zero, as new-api does), the fourth submit is refused with 401 and creates nothing.
    # The third grid cannot be read by the spent key: incomplete, its id kept.
    config = SimulatorConfig(quota_usd=0.25, run_seconds=0.05)
    async with simulate(config) as relay, sim_client(relay, poll=FAST) as mj:
        summary = await run_batch(mj, ITEMS, tmp_path, concurrency=1, download=False)
        sent = relay.simulator.counters["POST /submit/imagine"]
        assert (3, 4) == (len(relay.simulator.submissions), sent)  # one refusal, not nine
        assert (2, 1, 0, 9) == (
            summary.succeeded,
            summary.incomplete,
            summary.rejected,
            summary.pending,
        )
        assert summary.key_refused == "exhausted" and not summary.ok
        assert summary.stopped_submitting is not None
        assert "refuses this key" in summary.stopped_submitting
        assert "no quota" in summary.stopped_submitting
        assert phases(tmp_path)[3:] == [Phase.PENDING] * 9
        manifest = (tmp_path / "manifest.jsonl").read_text().splitlines()
        rows = [json.loads(x) for x in manifest]
        assert "nothing was created" in rows[3]["reason"] and rows[3]["task_id"] is None
        assert rows[2]["task_id"] and rows[2]["status"] != "rejected"

        stream = io.StringIO()
        _print_summary(summary, _Output(stream=stream, as_json=False), None)
        lines = [x for x in stream.getvalue().splitlines() if x.startswith("stopped:")]
        assert 1 == len(lines) and lines[0].endswith("top it up, then --resume")
        assert "9 prompt(s) pending" in lines[0] and "note: run again" not in stream.getvalue()

        # Topped up: the resume reads the third grid and sends the nine prompts left.
        top_up(relay, 5.0)
        again = await run_batch(mj, ITEMS, tmp_path, download=False, resume=True)
        assert 12 == len(relay.simulator.submissions)
    assert again.ok and again.key_refused is None and again.stopped_submitting is None


async def test_paid_jobs_the_exhausted_key_cannot_read_stay_resumable(tmp_path: Path) -> None:
    # Four in flight: the key is spent by the third grid, so the fourth submit is refused
    # and the grids still running cannot be read any more (new-api's TokenAuth refuses
    # every /mj route): they end incomplete with their ids, never lost.
    config = SimulatorConfig(quota_usd=0.25, run_seconds=0.3)
    async with simulate(config) as relay, sim_client(relay, poll=FAST) as mj:
        summary = await run_batch(mj, ITEMS[:6], tmp_path, concurrency=4, download=False)
        created = len(relay.simulator.submissions)
    assert 3 == created and 0 == summary.rejected
    assert summary.key_refused == "exhausted" and 3 == summary.pending
    with Journal(tmp_path / ".quickmj-journal.sqlite", create=False) as journal:
        rows = journal.rows()
    assert created == len({r.task_id for r in rows if r.task_id})
    assert all(r.phase in (Phase.SUCCEEDED, Phase.INCOMPLETE) for r in rows if r.task_id)
    assert all(r.phase is Phase.PENDING for r in rows if not r.task_id)


def account_top_up(relay: Any, usd: float) -> None:
    """Give the simulated new-api key's account (the user's quota) more money."""
    ledger = relay.simulator.dialect.ledger
    ledger.of(relay.api_key).account += ledger.quota(usd)


async def test_an_account_that_cannot_pay_stops_submitting_like_a_spent_key(
    tmp_path: Path,
) -> None:
    # An unlimited token whose account holds 0.25 USD: two grids at 0.10, then new-api
    # answers the third submit "quota_not_enough" (code 4) before asking the upstream:
    # nothing created. That prompt and the nine after it stay pending (not "rejected",
    # which a resume would never send), and no further submit is sent.
    config = SimulatorConfig(account_quota_usd=0.25, run_seconds=0.05)
    async with simulate(config) as relay, sim_client(relay, poll=FAST) as mj:
        summary = await run_batch(mj, ITEMS, tmp_path, concurrency=1, download=False)
        sent = relay.simulator.counters["POST /submit/imagine"]
        assert (2, 3) == (len(relay.simulator.submissions), sent)  # one refusal, not ten
        assert (2, 0, 0, 10) == (
            summary.succeeded,
            summary.incomplete,
            summary.rejected,
            summary.pending,
        )
        assert summary.key_refused == "exhausted" and not summary.ok
        assert summary.stopped_submitting is not None
        assert "quota cannot pay" in summary.stopped_submitting
        assert "quota_not_enough" in summary.stopped_submitting
        assert phases(tmp_path)[2:] == [Phase.PENDING] * 10
        rows = [json.loads(x) for x in (tmp_path / "manifest.jsonl").read_text().splitlines()]
        assert all("nothing was created" in r["reason"] and not r["task_id"] for r in rows[2:])

        stream = io.StringIO()
        _print_summary(summary, _Output(stream=stream, as_json=False), None)
        lines = [x for x in stream.getvalue().splitlines() if x.startswith("stopped:")]
        assert 1 == len(lines) and lines[0].endswith("top it up, then --resume")
        assert lines[0].startswith("stopped: the account's quota cannot pay")
        assert "10 prompt(s) pending" in lines[0] and "note: run again" not in stream.getvalue()

        account_top_up(relay, 5.0)
        again = await run_batch(mj, ITEMS, tmp_path, download=False, resume=True)
        assert 12 == len(relay.simulator.submissions)
        assert 13 == relay.simulator.counters["POST /submit/imagine"]  # 12 + the refusal
    assert again.ok and again.key_refused is None and again.stopped_submitting is None


async def test_a_press_the_account_cannot_pay_leaves_its_paid_grid_incomplete(
    tmp_path: Path,
) -> None:
    # 0.12 USD: the first grid (0.10) is paid, its U1 (0.05) is not: the grid's row is
    # incomplete with its task id (a resume presses again), the other prompts pending.
    config = SimulatorConfig(account_quota_usd=0.12, run_seconds=0.05)
    items = ITEMS[:4]
    async with simulate(config) as relay, sim_client(relay, poll=FAST) as mj:
        summary = await run_batch(
            mj, items, tmp_path, concurrency=1, upscale=["U1"], download=False
        )
        assert 1 == relay.simulator.counters["POST /submit/action"]
        assert 1 == relay.simulator.counters["POST /submit/imagine"]
        assert (0, 1, 0, 3) == (
            summary.succeeded,
            summary.incomplete,
            summary.rejected,
            summary.pending,
        )
        assert summary.key_refused == "exhausted"
        rows = [json.loads(x) for x in (tmp_path / "manifest.jsonl").read_text().splitlines()]
        assert rows[0]["task_id"] and rows[0]["reason"].startswith("U1 not sent: ")
        account_top_up(relay, 5.0)
        again = await run_batch(mj, items, tmp_path, upscale=["U1"], download=False, resume=True)
        assert 8 == len(relay.simulator.submissions)  # 4 grids, 4 presses: none twice
    assert again.ok


def test_library_messages_name_parameters_and_the_cli_words_them_as_flags() -> None:
    """The library says what happened in its own terms (``resume=True``, ``max_spend``);
    the CLI's one error line says the flag."""
    from quickmj import InvalidInputError, RelayUnreachableError
    from quickmj._batch import check_name_template, parse_upscale
    from quickmj._cli import _error_line, _flag_words
    from quickmj._spend import parse_prices

    errors = []
    for bad in (lambda: parse_upscale("U5"), lambda: check_name_template("{nope}")):
        try:
            bad()
        except InvalidInputError as exc:
            errors.append(exc)
    assert [e for e in errors if "--" in str(e)] == [] and 2 == len(errors)
    assert _error_line(errors[0]).startswith("--upscale takes U1..U4 or all")
    assert _error_line(errors[1]).startswith("--name '{nope}'")
    try:
        parse_prices(["imagine=ten"])
    except InvalidInputError as exc:
        assert "--" not in str(exc)
        assert _error_line(exc).startswith("--price imagine: not a number of USD")
    outage = RelayUnreachableError("relay down; run again with resume=True", not_submitted=1)
    assert _error_line(outage).endswith("run again with --resume")
    assert "would cross --max-spend 1.00 USD" == _flag_words("would cross max_spend 1.00 USD")
    assert "choose a new --out" == _flag_words("choose a new out directory")
    locked = "a run with gallery=True writes its page; write it outside (output=FILE)"
    assert "batch --gallery writes its page; write it outside with --output FILE" == (
        _flag_words(locked)
    )
