"""What the soaks (``benchmarks/_soak.py``, in-process and kill -9) found in the batch job.

Each test reproduces one finding deterministically: a process killed with SIGKILL at an
exact point (a small script, or ``quickmj batch`` killed while it waits), a run cancelled
with submits on the wire, a relay out of quota; then what the next run must do.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
from fakes import sim_client as client

from quickmj import AsyncClient, BatchItem, JournalError, UsageError, run_batch
from quickmj._journal import Journal, JournalRow, Phase
from quickmj.testing import FaultConfig, SimulatorConfig, simulate

JOURNAL = ".quickmj-journal.sqlite"
ITEMS = [BatchItem("a cat"), BatchItem("a dog")]

#: Opens the journal given as argv[1] as a batch run would, then dies by SIGKILL where
#: argv[2] says: "before-load" (created, prompts not yet recorded) or "after-begin" (a
#: row holds task argv[3] from an earlier run; this run began and wrote nothing yet).
_KILLED_RUN = """
import os, signal, sys
from quickmj._journal import Journal
journal = Journal(sys.argv[1], create=True)
if sys.argv[2] == "after-begin":
    journal.load_prompts([("a cat", {}), ("a dog", {})])
    journal.set_task(0, sys.argv[3])
    journal.begin_run()
os.kill(os.getpid(), signal.SIGKILL)
"""


async def _killed_run(journal: Path, where: str, task_id: str = "") -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _KILLED_RUN, str(journal), where, task_id
    )
    assert -9 == await asyncio.wait_for(proc.wait(), 60)


def imagined(relay: Any) -> list[str]:
    return [s.prompt for s in relay.simulator.submissions if s.endpoint == "/submit/imagine"]


async def test_a_run_killed_before_its_first_write_resumes(tmp_path: Path) -> None:
    """begin_run used to TRUNCATE the WAL: a run killed before its next write (in the
    preflight, or while it only waited) left "open" with an empty -wal file, which every
    later --resume took for a journal copied without its WAL, and refused forever."""
    async with simulate(SimulatorConfig(seed=1)) as relay, client(relay) as mj:
        cat = relay.simulator.submit_imagine("a cat")  # paid in an earlier run
        await _killed_run(tmp_path / JOURNAL, "after-begin", cat)
        summary = await run_batch(mj, ITEMS, tmp_path, resume=True, download=False)
    assert summary.ok
    assert ["a cat", "a dog"] == sorted(imagined(relay))  # the cat was followed, not re-sent


async def test_a_refused_resume_does_not_unlock_a_journal_without_its_wal(
    tmp_path: Path,
) -> None:
    """Journal.close() marked any journal it opened "closed": the first --resume of a
    journal copied without its -wal file was refused, but closed it, so the second one
    went ahead without the paid task ids the WAL held and paid for those prompts again."""
    async with simulate(SimulatorConfig(seed=1)) as relay, client(relay) as mj:
        cat = relay.simulator.submit_imagine("a cat")
        await _killed_run(tmp_path / JOURNAL, "after-begin", cat)
        copy = tmp_path / "copy"
        copy.mkdir()
        shutil.copy(tmp_path / JOURNAL, copy)  # without the -wal file
        for _ in range(2):
            with pytest.raises(JournalError, match="-wal file is missing"):
                await run_batch(mj, ITEMS, copy, resume=True, download=False)
        assert ["a cat"] == imagined(relay)  # nothing was sent
        summary = await run_batch(mj, ITEMS, tmp_path, resume=True, download=False)
    assert summary.ok and ["a cat", "a dog"] == imagined(relay)


async def test_a_mistaken_command_on_a_killed_run_does_not_spoil_its_resume(
    tmp_path: Path,
) -> None:
    """A fresh run (no --resume) or a resume with another prompts file on a killed run's
    directory is refused, and opening the journal to say so (SQLite folds the -wal file
    into the main file as it closes) must not make the right --resume refuse it."""
    async with simulate(SimulatorConfig(seed=1)) as relay, client(relay) as mj:
        cat = relay.simulator.submit_imagine("a cat")
        await _killed_run(tmp_path / JOURNAL, "after-begin", cat)
        with pytest.raises(UsageError, match="already holds a batch"):
            await run_batch(mj, ITEMS, tmp_path, download=False)
        with pytest.raises(UsageError, match="prompts differ"):
            await run_batch(mj, [*ITEMS, BatchItem("a fox")], tmp_path, resume=True)
        summary = await run_batch(mj, ITEMS, tmp_path, resume=True, download=False)
    assert summary.ok and ["a cat", "a dog"] == imagined(relay)


async def test_a_fresh_run_killed_before_recording_its_prompts_starts_again(
    tmp_path: Path,
) -> None:
    """Killed between creating the journal and recording the prompts: nothing was sent.
    --resume says so (and to run again without it); the fresh run then works, instead of
    both refusing for good."""
    await _killed_run(tmp_path / JOURNAL, "before-load")
    async with simulate(SimulatorConfig(seed=1)) as relay, client(relay) as mj:
        with pytest.raises(JournalError, match=r"nothing was submitted.*without resume=True"):
            await run_batch(mj, ITEMS, tmp_path, resume=True, download=False)
        summary = await run_batch(mj, ITEMS, tmp_path, download=False)
        again = await run_batch(mj, ITEMS, tmp_path, resume=True, download=False)
    assert summary.ok and again.ok
    assert ["a cat", "a dog"] == sorted(imagined(relay))  # concurrent submits: any order


async def test_upscale_on_midjourney_proxy_goes_through_change(tmp_path: Path) -> None:
    """novicezk's midjourney-proxy has no buttons and no /submit/action: --upscale used
    to end every prompt 'incomplete' (ButtonNotFoundError); it presses via /submit/change."""
    config = SimulatorConfig(dialect="midjourney-proxy", seed=1)
    async with simulate(config) as relay, client(relay) as mj:
        summary = await run_batch(mj, ITEMS, tmp_path, upscale=["U2"])
    assert summary.ok, summary
    counters = relay.simulator.counters
    assert 2 == counters["POST /submit/change"] and 0 == counters["POST /submit/action"]
    rows = [json.loads(line) for line in (tmp_path / "manifest.jsonl").read_text().splitlines()]
    assert all({"U2"} == set(r["upscale_task_ids"]) and r["files"] for r in rows)


async def test_starting_a_run_does_not_compare_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run counted finished rows with `row not in todo`: quadratic in the batch size
    (about 3 s of blocked event loop at 10,000 prompts, minutes at 100,000)."""
    journal = Journal(tmp_path / JOURNAL, create=True)
    journal.load_prompts([(f"prompt {i}", {}) for i in range(4)])
    for i in range(3):
        journal.mark_submitting(i, f"qmj:old:{i}")  # caught mid-submit: unknown, no network
    journal.set_phase(3, Phase.FAILED, reason="earlier")
    journal.end_run()
    journal.close()

    def no_comparing(self: JournalRow, other: object) -> bool:
        raise AssertionError("journal rows compared")

    monkeypatch.setattr(JournalRow, "__eq__", no_comparing)
    async with simulate(SimulatorConfig(seed=1)) as relay, client(relay) as mj:
        items = [BatchItem(f"prompt {i}") for i in range(4)]
        summary = await run_batch(mj, items, tmp_path, resume=True)
    assert (3, 1) == (summary.unknown, summary.failed)


async def test_a_stopped_run_records_the_submits_on_the_wire(tmp_path: Path) -> None:
    """A stop (outage breaker, full disk) cancels the run; the client finished the submits
    already sent, but the run stopped listening and left their rows 'submitting': each
    resumed as 'unknown', paid but unaccounted for (the in-process soak found this when
    random 502s tripped the breaker). The run now waits for those answers."""
    faults = FaultConfig(latency=0.5, routes=["submit"])
    async with simulate(SimulatorConfig(seed=1, faults=faults)) as relay, client(relay) as mj:
        run = asyncio.create_task(run_batch(mj, ITEMS, tmp_path, download=False))
        for _ in range(500):  # until both submits are on the wire
            await asyncio.sleep(0.01)
            if relay.simulator.counters["POST /submit/imagine"] == 2:
                break
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
        with Journal(tmp_path / JOURNAL, create=False) as journal:
            assert all(r.phase is Phase.RUNNING and r.task_id for r in journal.rows())
        summary = await run_batch(mj, ITEMS, tmp_path, resume=True, download=False)
    assert summary.ok and 0 == summary.unknown
    assert ["a cat", "a dog"] == sorted(imagined(relay))


async def test_a_refused_press_keeps_the_paid_grid_resumable(tmp_path: Path) -> None:
    """A press the relay refused (here: out of quota) made the whole row 'rejected', a
    final phase meant for "nothing was created", though its grid was paid: no resume
    would ever press again or save the grid. It is 'incomplete' now, and its resume
    presses again (not 'unknown': nothing was on the wire)."""
    config = SimulatorConfig(dialect="trueai", seed=1, quotas={"sim-key": 3})
    async with simulate(config) as relay, client(relay) as mj:
        first = await run_batch(mj, ITEMS, tmp_path, upscale=["U1"], concurrency=1)
        again = await run_batch(mj, ITEMS, tmp_path, upscale=["U1"], concurrency=1, resume=True)
        presses = relay.simulator.counters["POST /submit/action"]
    assert (1, 1) == (first.succeeded, first.incomplete)
    assert (1, 1, 0) == (again.succeeded, again.incomplete, again.unknown)
    assert 3 == presses  # the cat's U1, the dog's refused U1, and its retry on resume
    rows = [json.loads(line) for line in (tmp_path / "manifest.jsonl").read_text().splitlines()]
    assert rows[1]["task_id"] and rows[1]["reason"].startswith("U1 not sent: ")
    assert "总绘图次数已达上限" in rows[1]["reason"] and first.key_refused == "exhausted"


async def _cli(relay: Any, *args: str, cwd: Path) -> asyncio.subprocess.Process:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUICKMJ_")}
    env.update({"QUICKMJ_API_KEY": relay.api_key, "QUICKMJ_BASE_URL": relay.base_url})
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "quickmj", *args, "--dialect", relay.dialect, cwd=cwd, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def _holds_lock(out: Path, proc: asyncio.subprocess.Process) -> None:
    for _ in range(300):
        try:
            if json.loads((out / ".quickmj-lock").read_text() or "{}").get("pid") == proc.pid:
                return
        except (OSError, ValueError):
            pass
        await asyncio.sleep(0.02)
    raise AssertionError("the run never took the directory")


async def test_cli_resume_killed_while_it_only_waits_resumes_again(tmp_path: Path) -> None:
    """The soak's finding end to end: `quickmj batch` killed after submitting, its
    --resume killed while it waits on the jobs (no journal write since it began), and
    the next --resume finishes the batch: nothing refused, nothing submitted twice."""
    (tmp_path / "p.txt").write_text("a cat\na dog\n", "utf-8")
    out = tmp_path / "out"
    batch = ("batch", "p.txt", "--out", str(out), "--plain")
    async with simulate(SimulatorConfig(dialect="midjourney-proxy", run_seconds=3.0)) as relay:
        first = await _cli(relay, *batch, cwd=tmp_path)
        for _ in range(300):
            await asyncio.sleep(0.02)
            if len(relay.simulator.submissions) == 2:
                break
        await asyncio.sleep(0.3)  # the task ids are written
        first.kill()
        await first.communicate()
        waiting = await _cli(relay, *batch, "--resume", cwd=tmp_path)
        await _holds_lock(out, waiting)
        await asyncio.sleep(0.3)  # it began its run and waits: nothing to write yet
        waiting.kill()
        await waiting.communicate()
        last = await _cli(relay, *batch, "--resume", cwd=tmp_path)
        stdout, stderr = await asyncio.wait_for(last.communicate(), 60)
    assert 0 == last.returncode, stderr.decode()
    assert "2/2 succeeded" in stdout.decode()
    assert ["a cat", "a dog"] == sorted(imagined(relay))


@pytest.mark.parametrize("ends", ["grid-unreadable", "over-budget"])
async def test_a_press_cut_by_a_kill_ends_unknown_whatever_else_ends_the_row(
    tmp_path: Path, ends: str
) -> None:
    """The kill soak's finding: a run killed with a U1 press on the wire left the row
    'pressing U1'; its resume looked at that only after following the grid and admitting
    the press, so a grid wait that failed (or a cap that no longer fits) ended the row
    'incomplete', "U1 not sent", with the press's tag and without its job, which may be
    paid: never listed for reconcile. It ends 'unknown' first, before anything else."""
    journal = Journal(tmp_path / JOURNAL, create=True)
    journal.load_prompts([("a cat", {})])
    async with simulate(SimulatorConfig(seed=1)) as relay, client(relay) as mj:
        grid = "999999" if ends == "grid-unreadable" else relay.simulator.submit_imagine("a cat")
        journal.set_task(0, grid)
        journal.mark_submitting(0, "qmj:old:0:U1", pressing="U1")  # then kill -9
        journal.close()
        cap = {"max_spend": 0.01, "prices": {"upscale": 0.05}} if ends == "over-budget" else {}
        summary = await run_batch(
            mj, [BatchItem("a cat")], tmp_path, resume=True, upscale=["U1"], **cap
        )
        presses = relay.simulator.counters["POST /submit/action"]
    with Journal(tmp_path / JOURNAL, create=False) as journal:
        row = journal.row(0)
    assert (Phase.UNKNOWN, "qmj:old:0:U1", "U1") == (row.phase, row.tag, row.pressing)
    assert (1, 0) == (summary.unknown, presses)


async def test_an_unexpected_error_during_a_press_leaves_the_row_unknown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unexpected error (a bug) while a press is on the wire ended the row 'incomplete'
    with the press's tag and no job; the press may have reached the relay, so 'unknown'
    (the next resume said so anyway; now the run that saw it does too)."""

    def broken(self: AsyncClient, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug after sending")

    monkeypatch.setattr(AsyncClient, "action", broken)
    async with simulate(SimulatorConfig(seed=1)) as relay, client(relay) as mj:
        summary = await run_batch(mj, [BatchItem("a cat")], tmp_path, upscale=["U1"])
    with Journal(tmp_path / JOURNAL, create=False) as journal:
        row = journal.row(0)
    assert (Phase.UNKNOWN, "U1", {}) == (row.phase, row.pressing, row.upscales)
    assert row.tag and row.tag.endswith(":0:U1") and 1 == summary.unknown
