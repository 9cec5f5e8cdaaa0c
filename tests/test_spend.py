"""Spend: prices, dry-run plans, the --max-spend cap under concurrency, resume, reports."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from fakes import sim_client

import quickmj._spend as spend_module
from quickmj import (
    BatchItem,
    InvalidInputError,
    PollPolicy,
    UsageError,
    parse_prices,
    plan_batch,
    run_batch,
)
from quickmj._cli import main
from quickmj._outdir import JOURNAL_NAME
from quickmj._spend import SPEND_NAME, Ledger, PriceBook, SpendFile
from quickmj.testing import FaultConfig, SimulatorConfig, simulate

FAST = PollPolicy(interval=0.02, first_poll=0.01, near_done_interval=0.01, adaptive=False)
PRICES = {"imagine": 0.10, "upscale": 0.05}


@pytest.fixture
async def relay() -> AsyncIterator[Any]:
    config = SimulatorConfig(seed=3, queue_seconds=0.0, run_seconds=0.02)
    async with simulate(config) as running:
        yield running


def prompts(n: int) -> list[BatchItem]:
    return [BatchItem(f"cat {i}") for i in range(n)]


def submits(relay: Any) -> Counter[str]:
    """Jobs the simulator created, per route."""
    return Counter(s.endpoint for s in relay.simulator.submissions)


def manifest(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


# ---- prices ----


def test_prices_parse_actions_modes_and_new_api_names() -> None:
    """``ACTION=USD`` with new-api's ``mj_`` names, a mode, a dollar sign; a mapping too."""
    parsed = parse_prices(["imagine=0.1", "MJ_UPSCALE=$0.05", "imagine/relax=0.02"])
    assert {"imagine": 0.1, "upscale": 0.05, "imagine/relax": 0.02} == parsed
    book = PriceBook(parsed)
    assert 0.02 == book.get("imagine", "relax")
    assert 0.1 == book.get("imagine", "fast")
    assert book.get("variation") is None
    assert {"imagine": 1.0} == parse_prices({"imagine": 1})


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("imagne=0.1", "unknown action 'imagne'"),
        ("imagine=ten", "not a number of USD"),
        ("imagine=-1", "not negative"),
        ("imagine=nan", "finite"),
        ("imagine", "ACTION=USD"),
        ("imagine/slow=0.1", "unknown mode"),
    ],
)
def test_bad_prices_are_refused_with_what_is_wrong(value: str, words: str) -> None:
    with pytest.raises(InvalidInputError, match=words):
        parse_prices([value])


@pytest.mark.parametrize("value", ["bogus=1", "imagine=abc", "imagine=-0.5"])
def test_cli_bad_price_is_a_usage_error(
    value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "p.txt").write_text("a cat\n")
    argv = ["batch", str(tmp_path / "p.txt"), "--out", str(tmp_path / "out"), "--dry-run"]
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--price", value])
    assert 2 == exc.value.code
    assert "--price" in capsys.readouterr().err


# ---- dry runs ----


def test_plan_counts_imagines_upscales_and_modes(tmp_path: Path) -> None:
    """Each prompt is an imagine plus one press per label, grouped by the job's mode."""
    items = [BatchItem("a cat --relax"), BatchItem("a dog"), BatchItem("a fox --fast --turbo")]
    plan = plan_batch(items, tmp_path / "out", upscale=["U1,U3"], prices=PRICES, mode="fast")
    got = {(line.action, line.mode): line.submits for line in plan.lines}
    assert {
        ("imagine", "fast"): 1,
        ("imagine", "relax"): 1,
        ("imagine", "turbo"): 1,
        ("upscale", "fast"): 2,
        ("upscale", "relax"): 2,
        ("upscale", "turbo"): 2,
    } == got
    assert (9, 3, 3) == (plan.submits, plan.prompts, plan.open)
    assert plan.usd == pytest.approx(3 * 0.10 + 6 * 0.05)
    assert not (tmp_path / "out").exists()  # nothing written, not even the directory


def test_plan_without_a_price_says_which_is_missing(tmp_path: Path) -> None:
    plan = plan_batch(prompts(4), tmp_path, upscale=["all"], prices={"imagine": 0.1})
    assert ("upscale",) == plan.missing and plan.usd is None
    assert 20 == plan.submits


async def test_dry_run_sends_nothing_and_resume_plans_only_what_is_left(
    relay: Any, tmp_path: Path
) -> None:
    """A capped run stops; the plan of its resume counts the prompts left and what the
    directory has spent; planning sends no request at all."""
    out = tmp_path / "out"
    async with sim_client(relay, poll=FAST) as mj:
        first = await run_batch(
            mj, prompts(10), out, upscale=["U2"], prices=PRICES, max_spend=0.60, concurrency=3
        )
    assert (4, 6) == (first.succeeded, first.pending)
    before = dict(relay.simulator.counters)
    plan = plan_batch(prompts(10), out, upscale=["U2"], resume=True)
    assert dict(relay.simulator.counters) == before  # not one request
    assert {("imagine", None): 6, ("upscale", None): 6} == {
        (x.action, x.mode): x.submits for x in plan.lines
    }
    assert 6 == plan.open
    assert plan.usd == pytest.approx(0.90)  # the prices were kept in spend.json
    assert plan.spent is not None and plan.spent.usd == pytest.approx(0.60)
    assert {"imagine": "given", "upscale": "given"} == plan.price_sources
    with pytest.raises(UsageError, match=r"resume=True"):  # (the CLI says --resume)
        plan_batch(prompts(10), out, upscale=["U2"])


def test_cli_dry_run_needs_no_key_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("QUICKMJ_API_KEY", raising=False)
    (tmp_path / "p.txt").write_text("a cat\na dog --relax\n")
    out = tmp_path / "out"
    argv = ["batch", str(tmp_path / "p.txt"), "--out", str(out), "--upscale", "U1", "--dry-run"]
    assert 0 == main([*argv, "--price", "imagine=0.1", "--price", "upscale=0.05"])
    text = capsys.readouterr().out
    assert "nothing sent" in text and "4 submits" in text and "0.30 USD" in text
    assert not out.exists()
    assert 0 == main([*argv, "--json"])
    plan = json.loads(capsys.readouterr().out)["plan"]
    assert (4, None, ["imagine", "upscale"]) == (
        plan["submits"],
        plan["usd"],
        plan["missing_prices"],
    )


# ---- the cap ----


async def test_cap_is_never_crossed_with_16_in_flight(relay: Any, tmp_path: Path) -> None:
    """With 16 prompts in progress, the run starts exactly the prompts whose whole cost
    (imagine and press) fits: spent <= cap, the rest pending, nothing sent for them."""
    async with sim_client(relay, poll=FAST) as mj:
        summary = await run_batch(
            mj,
            prompts(40),
            tmp_path,
            upscale=["U1"],
            prices=PRICES,
            max_spend=1.0,
            concurrency=16,
        )
    assert summary.spend is not None and summary.spend.usd is not None
    assert summary.spend.usd <= 1.0 + 1e-9
    assert (6, 34) == (summary.succeeded, summary.pending)  # 6 x 0.15 = 0.90; a 7th: 1.05
    assert {"/submit/imagine": 6, "/submit/action": 6} == submits(relay)
    assert summary.stopped_submitting is not None
    assert "would cross max_spend 1.00 USD" in summary.stopped_submitting
    assert {"imagine": 6, "upscale": 6} == summary.spend.submits_by_action
    assert summary.spend.by_action == pytest.approx({"imagine": 0.6, "upscale": 0.3})
    assert [summary.accounts[0].account] == list(summary.spend.by_account)
    rows = manifest(tmp_path)
    paid = [r for r in rows if r["status"] == "succeeded"]
    assert all(r["submits"] == {"imagine": 1, "upscale": 1} for r in paid)
    assert all(r["usd"] == pytest.approx(0.15) for r in paid)
    left = [r for r in rows if r["status"] == "pending"]
    assert all(r["submits"] == {} and r["usd"] == 0 for r in left)
    assert all("a resume with a higher max_spend" in r["reason"] for r in left)


async def test_resume_with_a_higher_cap_goes_on_and_counts_the_whole_directory(
    relay: Any, tmp_path: Path
) -> None:
    async with sim_client(relay, poll=FAST) as mj:
        first = await run_batch(mj, prompts(12), tmp_path, prices=PRICES, max_spend=0.5)
        assert (5, 7) == (first.succeeded, first.pending)
        # The cap counts what the directory spent: 0.5 more than 0.5 allows nothing.
        again = await run_batch(mj, prompts(12), tmp_path, resume=True, max_spend=0.5)
        assert (5, 7) == (again.succeeded, again.pending)
        last = await run_batch(mj, prompts(12), tmp_path, resume=True, max_spend=5.0)
    assert last.ok and last.stopped_submitting is None
    assert {"/submit/imagine": 12} == submits(relay)
    assert last.spend is not None and last.spend.usd == pytest.approx(1.2)


async def test_without_prices_the_first_prompt_runs_alone_and_teaches_them(
    tmp_path: Path,
) -> None:
    """--max-spend without prices on a relay with a balance: the first prompt's imagine
    and press are sent alone between balance reads; then the cap holds as usual."""
    config = SimulatorConfig(seed=3, queue_seconds=0.0, run_seconds=0.02, quota_usd=20.0)
    async with simulate(config) as relay, sim_client(relay, poll=FAST) as mj:
        summary = await run_batch(
            mj, prompts(20), tmp_path, upscale=["U1"], max_spend=1.0, concurrency=16
        )
        first = relay.simulator.submissions[:3]
    assert ["/submit/imagine", "/submit/action"] == [s.endpoint for s in first[:2]]
    assert first[0].state.split(":")[-1] == first[1].state.split(":")[-2]  # one prompt
    assert (6, 14) == (summary.succeeded, summary.pending)
    assert summary.spend is not None and summary.spend.usd == pytest.approx(0.9)
    stored = json.loads((tmp_path / SPEND_NAME).read_text())["prices"]
    assert stored["imagine"]["usd"] == pytest.approx(0.1)
    assert stored["upscale"]["usd"] == pytest.approx(0.05)
    assert stored["imagine"]["source"].startswith("learned ")
    paid = [r for r in manifest(tmp_path) if r["status"] == "succeeded"]
    assert all(r["usd"] == pytest.approx(0.15) for r in paid)  # at the learned prices


async def test_max_spend_without_a_price_is_refused_where_there_is_no_balance(
    tmp_path: Path,
) -> None:
    """A self-hosted midjourney-proxy keeps no balance: nothing to learn from."""
    out = tmp_path / "out"
    config = SimulatorConfig(dialect="midjourney-proxy", queue_seconds=0.0, run_seconds=0.02)
    async with simulate(config) as relay, sim_client(relay, poll=FAST) as mj:
        with pytest.raises(InvalidInputError, match="price of upscale"):
            await run_batch(
                mj, prompts(3), out, upscale=["U1"], prices={"imagine": 0.1}, max_spend=1
            )
        assert 0 == len(submits(relay))
    assert not (out / JOURNAL_NAME).exists()


async def test_balance_reads_catch_a_price_given_too_low(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Prices given at half the relay's: reading the balance (here before every
    admission) counts what the relay charged beyond them, so the run stops near the cap
    instead of at twice it; the error is bounded by the prompts in flight."""
    monkeypatch.setattr(spend_module, "WATCH_SUBMITS", 1)
    monkeypatch.setattr(spend_module, "WATCH_GAP", 0.0)  # (the rate is tested apart)
    config = SimulatorConfig(seed=3, queue_seconds=0.0, run_seconds=0.02, quota_usd=20.0)
    async with simulate(config) as relay, sim_client(relay, poll=FAST) as mj:
        before = await mj.balance()
        summary = await run_batch(
            mj, prompts(40), tmp_path, prices={"imagine": 0.05}, max_spend=1.0, concurrency=4
        )
        after = await mj.balance()
    charged = (after.used_usd or 0) - (before.used_usd or 0)
    assert charged <= 1.0 + 4 * 0.05 + 1e-6  # at most the 4 in flight, at the error
    assert summary.pending >= 27  # without the reads: 20 prompts, 2.00 USD charged
    assert summary.spend is not None and summary.spend.beyond_prices > 0.3


async def test_unknown_outcomes_count_as_paid_and_stay_counted_when_resent(
    tmp_path: Path,
) -> None:
    """A submit whose answer was lost may be paid: counted. Sent again with
    --resubmit-unknown, the first attempt stays counted (spend.json), the new one too."""
    lost = FaultConfig(drop_after_create_rate=1.0, routes=frozenset({"submit"}))
    config = SimulatorConfig(seed=3, queue_seconds=0.0, run_seconds=0.02, faults=lost)
    async with simulate(config) as relay, sim_client(relay, poll=FAST) as mj:
        first = await run_batch(mj, prompts(2), tmp_path, prices=PRICES, download=False)
    assert 2 == first.unknown
    assert first.spend is not None and first.spend.usd == pytest.approx(0.2)
    clean = SimulatorConfig(queue_seconds=0.0, run_seconds=0.02)
    async with simulate(clean) as relay, sim_client(relay, poll=FAST) as mj:
        again = await run_batch(
            mj, prompts(2), tmp_path, resume=True, resubmit_unknown=True, download=False
        )
    assert again.ok
    assert again.spend is not None and again.spend.usd == pytest.approx(0.4)
    assert 2 == sum(SpendFile.load(tmp_path).resent.values())


async def test_ledger_holds_in_flight_and_waits_for_money_that_may_come_back() -> None:
    """A prompt that does not fit waits while others hold money; a hold given back (a
    rejected submit) lets it in; once nothing is held it is refused for good."""
    ledger = Ledger(PriceBook({"imagine": 1.0}), Counter(), cap=2.0)
    one = lambda: 1.0  # noqa: E731
    assert await ledger.admit(0, one, "prompt") and await ledger.admit(1, one, "prompt")
    got: list[bool] = []

    async def third() -> None:
        got.append(await ledger.admit(2, one, "prompt"))

    async with anyio.create_task_group() as tg:
        tg.start_soon(third)
        await anyio.wait_all_tasks_blocked()
        assert [] == got  # waiting: prompts 0 and 1 hold 2.0
        ledger.commit(0, "imagine", None, "acct")
        ledger.release(0)  # spent: nothing came back
        await anyio.wait_all_tasks_blocked()
        assert [] == got
        ledger.release(1)  # prompt 1 sent nothing (rejected): its 1.0 comes back
    assert [True] == got
    assert 2.0 == ledger.exposure and 2.0 == ledger.peak
    ledger.commit(2, "imagine", None, "acct")
    ledger.release(2)
    assert not await ledger.admit(3, one, "prompt")
    assert ledger.stopped is not None and "spent 2.00 USD" in ledger.stopped


# ---- the CLI ----


def test_cli_cap_stops_with_one_line_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "p.txt").write_text("".join(f"cat {i}\n" for i in range(5)))
    out = tmp_path / "out"
    base = ["batch", str(tmp_path / "p.txt"), "--out", str(out), "--simulate", "--plain"]
    code = main([*base, "--price", "imagine=0.10", "--max-spend", "0.25", "--no-download"])
    text = capsys.readouterr().out
    assert 1 == code
    assert "stopped: the next prompt would cross --max-spend 0.25 USD (spent 0.20 USD" in text
    assert "spend: 0.20 USD" in text
    stored = json.loads((out / SPEND_NAME).read_text())
    assert 0.1 == stored["prices"]["imagine"]["usd"]
    assert 0 == main([*base, "--resume", "--max-spend", "1", "--no-download"])
    assert "spend: 0.50 USD" in capsys.readouterr().out


def test_cli_max_spend_without_price_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "p.txt").write_text("a cat\n")
    out = tmp_path / "out"
    argv = ["batch", str(tmp_path / "p.txt"), "--out", str(out), "--simulate"]
    code = main([*argv, "--dialect", "midjourney-proxy", "--max-spend", "1"])
    assert 2 == code
    assert "--price imagine=USD" in capsys.readouterr().err
    assert not (out / JOURNAL_NAME).exists()


def test_spend_file_resent_unknowns_round_trip(tmp_path: Path) -> None:
    spend = SpendFile.load(tmp_path)
    spend.book = spend.book.with_prices({"imagine": 0.1}, "given")
    spend.resent[("imagine", None, "ab12")] += 1
    spend.save()
    again = SpendFile.load(tmp_path)
    assert {"imagine": 0.1} == dict(again.book.prices)
    assert Counter({("imagine", None, "ab12"): 1}) == again.resent
    (tmp_path / SPEND_NAME).write_text('{"prices": {"imagine": {"usd": "x"}}}')
    with pytest.raises(InvalidInputError, match="spend file"):
        SpendFile.load(tmp_path)
