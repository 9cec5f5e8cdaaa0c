"""The batch job against the simulator: results, money safety, outages, poison, disks, CLI."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from fakes import NO_WAIT, can_mount_privately
from fakes import SIM_POLL as FAST
from fakes import sim_client as client

from quickmj import (
    AsyncClient,
    BatchItem,
    BatchLockedError,
    InvalidInputError,
    JournalError,
    RelayUnreachableError,
    StorageError,
    UsageError,
    read_prompts,
    reconcile,
    run_batch,
)
from quickmj._batch import parse_upscale
from quickmj._journal import Journal, Phase
from quickmj.testing import FaultConfig, Request, Response, SimulatorConfig, simulate


@pytest.fixture
async def relay() -> AsyncIterator[Any]:
    async with simulate(SimulatorConfig(seed=1)) as running:
        yield running


def prompts(n: int, word: str = "prompt") -> list[BatchItem]:
    return [BatchItem(f"{word} {i} --v 6.1") for i in range(n)]


def manifest(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def created(relay: Any, route: str = "/submit/imagine") -> Counter[str]:
    """How many jobs the relay created per prompt (or customId) on ``route``."""
    return Counter(s.prompt for s in relay.simulator.submissions if s.endpoint == route)


# ---- the ordinary run ----


async def test_batch_runs_to_completion_with_upscales(relay: Any, tmp_path: Path) -> None:
    """Every prompt ends succeeded with its upscaled image on disk and in the manifest."""
    async with client(relay) as mj:
        summary = await run_batch(mj, prompts(12), tmp_path, concurrency=4, upscale=["U1"])
    assert summary.ok and 12 == summary.succeeded
    rows = manifest(tmp_path)
    assert [f"prompt {i} --v 6.1" for i in range(12)] == [r["prompt"] for r in rows]
    for row in rows:
        assert "succeeded" == row["status"]
        assert 1 == len(row["files"])
        assert b"\x89PNG" == (tmp_path / row["files"][0]).read_bytes()[:4]
        assert {"U1"} == set(row["upscale_task_ids"])
        assert row["tag"] and row["sent_at"]
    assert {1} == set(created(relay).values()) and 12 == len(created(relay))


async def test_rejections_and_failures_are_recorded(tmp_path: Path) -> None:
    """Code 24 is 'rejected' (nothing created); a FAILURE is 'failed' with its reason."""
    async with simulate(dialect="midjourney-proxy") as relay, client(relay) as mj:
        items = [BatchItem("a badword cat"), BatchItem("a failword dog"), BatchItem("a fox")]
        summary = await run_batch(mj, items, tmp_path, download=False)
    assert (1, 1, 1) == (summary.succeeded, summary.rejected, summary.failed)
    by_status = {r["status"]: r for r in manifest(tmp_path)}
    assert 24 == by_status["rejected"]["code"] and by_status["rejected"]["task_id"] is None
    assert by_status["failed"]["reason"] and by_status["failed"]["task_id"]


async def test_queue_full_is_backed_off_without_duplicates(tmp_path: Path) -> None:
    """Queue-full answers (code 23) are backpressure: retried, each prompt created once."""
    config = SimulatorConfig(dialect="midjourney-proxy", concurrency=1, max_queue=1)
    async with simulate(config) as relay, client(relay) as mj:
        summary = await run_batch(mj, prompts(6), tmp_path, concurrency=6, download=False)
    assert summary.ok
    assert {1} == set(created(relay).values()) and 6 == len(created(relay))


async def test_state_tags_are_unique_and_keep_the_users_state(relay: Any, tmp_path: Path) -> None:
    """Each submit carries a tag unique to run and prompt, after the user's own state."""
    items = [BatchItem("a cat", {"state": "order-42"}), BatchItem("a dog")]
    async with client(relay) as mj:
        await run_batch(mj, items, tmp_path, upscale=["U2"], download=False)
    states = [s.state or "" for s in relay.simulator.submissions]
    tags = [s.split()[-1] for s in states]
    assert 4 == len(set(tags)) and all(t.startswith("qmj:") for t in tags)
    assert any(s.startswith("order-42 qmj:") for s in states)
    rows = manifest(tmp_path)
    assert "order-42" == rows[0]["state"]


# ---- one writer per directory ----


async def test_a_second_run_on_the_same_directory_is_refused(tmp_path: Path) -> None:
    """While one run owns --out, another (fresh or resume) fails at once and sends nothing."""
    async with simulate(run_seconds=1.0) as relay, client(relay) as mj:
        first = asyncio.create_task(run_batch(mj, prompts(4), tmp_path, download=False))
        await asyncio.sleep(0.3)
        for resume in (False, True):
            with pytest.raises(BatchLockedError) as info:
                await run_batch(mj, prompts(4), tmp_path, resume=resume, download=False)
            assert f"pid {os.getpid()}" in str(info.value)
        summary = await first
        again = await run_batch(mj, prompts(4), tmp_path, resume=True, download=False)
    assert summary.ok and again.ok
    assert {1} == set(created(relay).values()) and 4 == len(created(relay))


async def _cli_proc(relay: Any, *args: str, cwd: Path) -> asyncio.subprocess.Process:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUICKMJ_")}
    env.update({"QUICKMJ_API_KEY": relay.api_key, "QUICKMJ_BASE_URL": relay.base_url})
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "quickmj", *args, "--dialect", relay.dialect, cwd=cwd, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def _cli(relay: Any, *args: str, cwd: Path) -> tuple[int, str, str]:
    proc = await _cli_proc(relay, *args, cwd=cwd)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_a_second_process_is_refused_and_kill_9_frees_the_directory(tmp_path: Path) -> None:
    """Two processes on one --out: the second stops with one line; after kill -9, resume."""
    (tmp_path / "p.txt").write_text("".join(f"prompt {i}\n" for i in range(6)), "utf-8")
    out = str(tmp_path / "out")
    async with simulate(run_seconds=3.0) as relay:
        first = await _cli_proc(relay, "batch", "p.txt", "--out", out, "--plain", cwd=tmp_path)
        for _ in range(100):  # until the first run holds the lock and has sent something
            await asyncio.sleep(0.1)
            if relay.simulator.submissions:
                break
        code, _, err = await _cli(relay, "batch", "p.txt", "--out", out, "--resume", cwd=tmp_path)
        assert 1 == code and 1 == len(err.strip().splitlines())
        assert f"pid {first.pid}" in err and "Traceback" not in err
        first.kill()
        await first.wait()
        code, _, err = await _cli(relay, "batch", "p.txt", "--out", out, "--resume", cwd=tmp_path)
    assert code in (0, 1), err  # 1 if a prompt was caught mid-submit (unknown), never twice
    assert {1} == set(created(relay).values())
    rows = manifest(Path(out))
    assert all(r["status"] in ("succeeded", "unknown") for r in rows)


# ---- the journal is the record of paid work ----


async def test_resume_without_a_usable_journal_refuses(relay: Any, tmp_path: Path) -> None:
    """No journal, an emptied one, or garbage: resume refuses and submits nothing."""
    async with client(relay) as mj:
        with pytest.raises(JournalError, match="nothing to resume"):
            await run_batch(mj, prompts(2), tmp_path / "none", resume=True)
        (tmp_path / "garbage").mkdir()
        (tmp_path / "garbage" / ".quickmj-journal.sqlite").write_bytes(b"not a database" * 100)
        with pytest.raises(JournalError, match="damaged"):
            await run_batch(mj, prompts(2), tmp_path / "garbage", resume=True)
        (tmp_path / "empty").mkdir()
        Journal(tmp_path / "empty" / ".quickmj-journal.sqlite", create=True).close()
        with pytest.raises(JournalError, match="empty"):
            await run_batch(mj, prompts(2), tmp_path / "empty", resume=True)
    assert 0 == relay.simulator.counters["POST /submit/imagine"]


async def test_a_journal_copied_without_its_wal_is_refused(relay: Any, tmp_path: Path) -> None:
    """After a kill the main file may lack recent commits: without -wal it is refused."""
    import shutil

    journal = Journal(tmp_path / ".quickmj-journal.sqlite", create=True)
    journal.load_prompts([(p.prompt, {}) for p in prompts(2)])
    journal.begin_run()  # a run that never ends (as if killed): its news sits in the WAL
    journal.set_task(0, "1730621826053455")
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(tmp_path / ".quickmj-journal.sqlite", copy)  # without the -wal file
    journal.close()
    async with client(relay) as mj:
        with pytest.raises(JournalError, match="-wal file is missing"):
            await run_batch(mj, prompts(2), copy, resume=True)
        summary = await run_batch(mj, prompts(2), tmp_path, resume=True, download=False)
    assert 1 == relay.simulator.counters["POST /submit/imagine"]  # only the unrecorded one
    assert 1 == summary.succeeded  # the recorded task id does not exist on this relay


async def test_a_fresh_run_into_another_runs_output_refuses(relay: Any, tmp_path: Path) -> None:
    """A manifest or images without a journal: someone's results; do not overwrite."""
    (tmp_path / "images").mkdir()
    async with client(relay) as mj:
        with pytest.raises(JournalError, match="no batch journal"):
            await run_batch(mj, prompts(1), tmp_path)
        with pytest.raises(UsageError, match="resume=True"):
            await run_batch(mj, prompts(1), tmp_path / "new")
            await run_batch(mj, prompts(1), tmp_path / "new")


async def test_resume_after_a_killed_run_submits_nothing_twice(relay: Any, tmp_path: Path) -> None:
    """Cancel a run midway; the resume finishes every prompt without a second submit."""
    async with client(relay) as mj:
        run = asyncio.create_task(run_batch(mj, prompts(20), tmp_path, concurrency=5))
        await asyncio.sleep(0.4)
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
        summary = await run_batch(mj, prompts(20), tmp_path, concurrency=5, resume=True)
    assert summary.ok
    assert {1} == set(created(relay).values()) and 20 == len(created(relay))


async def test_a_row_caught_mid_submit_is_unknown_not_resent(relay: Any, tmp_path: Path) -> None:
    """A row left 'submitting' without a task id may have been paid: unknown, not sent."""
    journal = Journal(tmp_path / ".quickmj-journal.sqlite", create=True)
    journal.load_prompts([("a cat", {}), ("a dog", {})])
    journal.mark_submitting(0, "qmj:old:0")
    journal.end_run()
    journal.close()
    async with client(relay) as mj:
        summary = await run_batch(
            mj, [BatchItem("a cat"), BatchItem("a dog")], tmp_path, resume=True
        )
    assert (1, 1) == (summary.unknown, summary.succeeded)
    assert {"a dog": 1} == created(relay)


async def test_resume_with_other_input_is_refused(relay: Any, tmp_path: Path) -> None:
    """The journal pins the input: another prompts file cannot resume it."""
    async with client(relay) as mj:
        await run_batch(mj, prompts(2), tmp_path, download=False)
        with pytest.raises(UsageError, match="prompts differ"):
            await run_batch(mj, prompts(3), tmp_path, resume=True)


# ---- paid jobs are never lost ----


async def test_jobs_over_the_wait_limit_are_timed_out_and_resumable(tmp_path: Path) -> None:
    """A client-side wait limit keeps the task id; the resume collects the job, no resend."""
    async with simulate(run_seconds=1.0) as relay, client(relay) as mj:
        first = await run_batch(mj, prompts(3), tmp_path, timeout=0.2)
        assert 3 == first.timed_out and 3 == first.resumable
        rows = manifest(tmp_path)
        assert all(r["status"] == "timed_out" and r["task_id"] for r in rows)
        second = await run_batch(mj, prompts(3), tmp_path, resume=True, timeout=30)
    assert second.ok
    assert {1} == set(created(relay).values())


# ---- outages stop early ----


async def test_an_unreachable_relay_stops_at_once_and_resume_submits_later(
    relay: Any, tmp_path: Path
) -> None:
    """A wrong base URL: one typed error in seconds, everything pending; fixed: resume."""
    items = prompts(40)
    # Retries without waits (the default backoff added 3.5 s here; the path is the same).
    async with AsyncClient(
        relay.api_key, base_url="http://127.0.0.1:9", poll=FAST, retry=NO_WAIT
    ) as bad:
        started = asyncio.get_running_loop().time()
        with pytest.raises(RelayUnreachableError) as info:
            await run_batch(bad, items, tmp_path)
        assert asyncio.get_running_loop().time() - started < 15
    assert 40 == info.value.not_submitted and "resume=True" in str(info.value)
    assert {"pending"} == {r["status"] for r in manifest(tmp_path)}
    async with client(relay) as mj:
        summary = await run_batch(mj, items, tmp_path, resume=True, download=False)
    assert summary.ok and {1} == set(created(relay).values())


async def test_a_relay_answering_only_5xx_stops_the_run_early(tmp_path: Path) -> None:
    """After a few submits lost to 5xx the run stops: the rest stay pending, not burnt."""
    faults = FaultConfig(submit_5xx_after_create_rate=1.0, routes=["submit"])
    async with simulate(faults=faults) as relay, client(relay) as mj:
        with pytest.raises(RelayUnreachableError):
            await run_batch(mj, prompts(30), tmp_path, concurrency=2, download=False)
    rows = manifest(tmp_path)
    statuses = Counter(r["status"] for r in rows)
    assert statuses["unknown"] <= 4 and statuses["pending"] >= 26
    assert all(r["tag"] for r in rows if r["status"] == "unknown")


# ---- one prompt's trouble stays with that prompt ----


class _Poisoning:
    """A transport that hands the simulator's answers through, poisoning chosen tasks."""

    def __init__(self, inner: Any, poison: Any) -> None:
        self.inner = inner
        self.poison = poison

    async def handle_request(self, request: Request) -> Response:
        response = await self.inner.handle_request(request)
        if "list-by-condition" not in request.url and "/fetch" not in request.url:
            return response
        body = b"".join([c async for c in response.aiter_raw()])
        await response.aclose()
        return Response(response.status, content=self.poison(body))

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_poisoned_tasks_stay_on_their_rows(relay: Any, tmp_path: Path) -> None:
    """A bad image URL or invalid text in one task: that row records it, others finish."""
    from quickmj._aiohttp import AiohttpTransport

    def poison(body: bytes) -> bytes:
        data = json.loads(body)
        for task in data if isinstance(data, list) else [data]:
            if "URLBAD" in task.get("prompt", "") and task.get("imageUrl"):
                task["imageUrl"] = "http://127.0.0.1:99999/x.png"
            if "failword" in task.get("prompt", "") and task.get("status") == "FAILURE":
                task["failReason"] = "\ud800 lone surrogate"
        return json.dumps(data).encode()

    items = [BatchItem("a cat"), BatchItem("URLBAD dog"), BatchItem("a failword fox")]
    transport = _Poisoning(AiohttpTransport(), poison)
    async with client(relay, transport=transport) as mj:
        summary = await run_batch(mj, items, tmp_path)
    rows = manifest(tmp_path)
    assert "succeeded" == rows[0]["status"]
    assert rows[1]["status"] in ("incomplete", "succeeded")
    assert "failed" == rows[2]["status"]
    assert "running" not in {r["status"] for r in rows}
    assert 3 == summary.total


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
async def test_disk_trouble_stops_the_run_and_keeps_paid_jobs(
    relay: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    """A full or read-only disk: one StorageError, nothing paid marked failed; resume saves."""
    import tempfile

    real = tempfile.mkstemp

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(tempfile, "mkstemp", broken)
    async with client(relay) as mj:
        with pytest.raises(StorageError):
            await run_batch(mj, prompts(3), tmp_path, concurrency=3)
        assert all(r["task_id"] for r in manifest(tmp_path))
        assert not {"failed", "rejected"} & {r["status"] for r in manifest(tmp_path)}
        monkeypatch.setattr(tempfile, "mkstemp", real)
        summary = await run_batch(mj, prompts(3), tmp_path, resume=True)
    assert summary.ok and {1} == set(created(relay).values())


@pytest.mark.skipif(not can_mount_privately(), reason="needs unshare -rm and tmpfs (Linux)")
def test_a_real_full_filesystem(tmp_path: Path) -> None:
    """On a real tmpfs that runs out of room (the kernel answers ENOSPC): one StorageError,
    no paid job lost or marked failed, and a resume once there is room finishes every
    prompt without a second submit; the CLI says it in one line with exit code 1."""
    script = Path(__file__).parent / "fixtures" / "full_disk_batch.py"
    done = subprocess.run(
        ["unshare", "-rm", sys.executable, str(script), str(tmp_path), "12", "12"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert 0 == done.returncode, done.stderr
    report = json.loads(done.stdout)
    assert report["first"].startswith("StorageError: ") and "no space left" in report["first"]
    assert report["resumed_ok"] and {"succeeded": 12} == report["statuses"]
    assert 12 == report["images"] and [] == report["leftovers"]
    assert 12 == len(report["jobs_per_prompt"]) and {1} == set(report["jobs_per_prompt"].values())
    assert 1 == report["cli_exit"]
    errors = [line for line in report["cli_stderr"].splitlines() if line.startswith("error:")]
    assert 1 == len(errors) and "no space left" in errors[0] and "--resume" in errors[0]
    assert "Traceback" not in report["cli_stderr"]


async def test_stale_part_files_go_and_files_follow_the_umask(relay: Any, tmp_path: Path) -> None:
    """A resume removes partial downloads; final files get the mode open() would give."""
    async with client(relay) as mj:
        await run_batch(mj, prompts(1), tmp_path, name="{line:03d}-{slug}")
        stale = tmp_path / "images" / ".dead.part"
        stale.write_bytes(b"half")
        await run_batch(mj, prompts(1), tmp_path, resume=True)
    assert not stale.exists()
    (image,) = (tmp_path / "images").glob("*.png")
    assert "001-prompt-0-v-6-1.png" == image.name
    mask = os.umask(0)
    os.umask(mask)
    assert 0o666 & ~mask == image.stat().st_mode & 0o777


# ---- unknown outcomes can be settled ----


async def test_reconcile_adopts_unknown_jobs_by_their_tag(tmp_path: Path) -> None:
    """Where the relay lists tasks, unknown rows are found by tag and finished, not resent."""
    faults = FaultConfig(drop_after_create_rate=0.5, routes=["POST /submit/imagine"])
    async with simulate(dialect="trueai", seed=3, faults=faults) as relay, client(relay) as mj:
        first = await run_batch(mj, prompts(6), tmp_path, download=False)
        assert first.unknown >= 1
        summary = await reconcile(mj, tmp_path, download=False)
    assert () == summary.unsettled and summary.ok
    assert {1} == set(created(relay).values())


async def test_reconcile_lists_what_a_relay_cannot_settle(relay: Any, tmp_path: Path) -> None:
    """QuickRouter cannot list tasks: unknown rows come back with tag and send time."""
    journal = Journal(tmp_path / ".quickmj-journal.sqlite", create=True)
    journal.load_prompts([("a cat", {})])
    journal.mark_submitting(0, "qmj:gone:0")
    journal.set_phase(0, Phase.UNKNOWN, reason="lost")
    journal.end_run()
    journal.close()
    async with client(relay) as mj:
        summary = await reconcile(mj, tmp_path)
    (unsettled,) = summary.unsettled
    assert ("qmj:gone:0", "a cat") == (unsettled.tag, unsettled.prompt)
    assert unsettled.sent_at is not None and 1 == summary.unknown
    assert 0 == relay.simulator.counters["POST /submit/imagine"]


async def test_resubmit_unknown_sends_a_lost_press_again(tmp_path: Path) -> None:
    """A press cut by a kill (the grid is paid and known) is sent again on request."""
    async with simulate(seed=4) as relay, client(relay) as mj:
        first = await run_batch(mj, [BatchItem("a cat")], tmp_path, download=False)
        assert first.ok
        journal = Journal(tmp_path / ".quickmj-journal.sqlite", create=False)
        journal.mark_submitting(0, "qmj:old:0:U1", pressing="U1")
        journal.set_phase(0, Phase.UNKNOWN, reason="stopped while pressing U1")
        journal.end_run()
        journal.close()
        summary = await run_batch(
            mj, [BatchItem("a cat")], tmp_path, upscale=["U1"], resume=True,
            resubmit_unknown=True, download=False,
        )  # fmt: skip
    assert summary.ok
    assert {"a cat": 1} == created(relay)
    assert 1 == relay.simulator.counters["POST /submit/action"]


async def test_resubmit_unknown_sends_those_prompts_again(relay: Any, tmp_path: Path) -> None:
    """--resubmit-unknown is the explicit way to pay again for unknown outcomes."""
    journal = Journal(tmp_path / ".quickmj-journal.sqlite", create=True)
    journal.load_prompts([("a cat", {})])
    journal.set_phase(0, Phase.UNKNOWN, reason="lost")
    journal.end_run()
    journal.close()
    async with client(relay) as mj:
        summary = await run_batch(
            mj, [BatchItem("a cat")], tmp_path, resume=True, resubmit_unknown=True
        )
    assert summary.ok and {"a cat": 1} == created(relay)


# ---- input ----


def test_read_prompts(tmp_path: Path) -> None:
    """Lines are prompts unless JSON objects with a prompt; BOM, comments, permutations."""
    f = tmp_path / "p.txt"
    f.write_bytes(
        "\ufeffa cat\n# comment\n\n{red, green} bird --v 6.1\n"
        '{"prompt": "a fox", "state": "s1", "bot_type": "NIJI_JOURNEY"}\n{"x": 1}\n'.encode()
    )
    items = read_prompts(f)
    assert ["a cat", "{red, green} bird --v 6.1", "a fox", '{"x": 1}'] == [i.prompt for i in items]
    assert {"state": "s1", "bot_type": "NIJI_JOURNEY"} == items[2].options
    with pytest.raises(InvalidInputError, match="no such file"):
        read_prompts(tmp_path / "missing.txt")
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9\n")
    with pytest.raises(InvalidInputError, match="not UTF-8"):
        read_prompts(tmp_path / "latin1.txt")
    with pytest.raises(InvalidInputError, match="unknown options"):
        read_prompts_from(tmp_path, '{"prompt": "x", "colour": "red"}\n')


def read_prompts_from(tmp_path: Path, text: str) -> list[BatchItem]:
    f = tmp_path / "q.txt"
    f.write_text(text, "utf-8")
    return read_prompts(f)


def test_upscale_values_add_up() -> None:
    """Repeated --upscale values add up; 'all' expands; bad labels are refused."""
    assert ("U1", "U3") == parse_upscale(["U1", "U3"])
    assert ("U1", "U2", "U3", "U4") == parse_upscale(["all", "U2"])
    assert ("U2", "U4") == parse_upscale(["2,4"])
    with pytest.raises(InvalidInputError):
        parse_upscale(["U5"])


# ---- the command line ----


def _run(
    *args: str, cwd: Path, stdin: str | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("QUICKMJ_")}
    return subprocess.run(
        [sys.executable, "-m", "quickmj", *args], cwd=cwd, env={**clean, **env}, input=stdin,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_cli_batch_with_simulator_and_stdin(tmp_path: Path) -> None:
    """`quickmj batch - --simulate` reads stdin and runs end to end with exit code 0."""
    done = _run("batch", "-", "--simulate", "--out", "out", "--upscale", "U2", "--plain",
                cwd=tmp_path, stdin="a cat\na dog\na fox\n")  # fmt: skip
    assert 0 == done.returncode, done.stderr
    assert "3/3 succeeded" in done.stdout
    assert 3 == len(list((tmp_path / "out" / "images").glob("*.png")))


@pytest.mark.parametrize(
    ("setup", "args", "code", "words"),
    [
        ("", ["batch", "missing.txt", "--out", "o"], 2, "no such file"),
        ("latin1", ["batch", "p.txt", "--out", "o"], 2, "not UTF-8"),
        ("file-out", ["batch", "ok.txt", "--out", "ok.txt"], 2, "is a file"),
        ("garbage", ["batch", "ok.txt", "--out", "g", "--resume"], 1, "damaged"),
        ("", ["batch", "ok.txt", "--out", "o", "--resume"], 1, "nothing to resume"),
        ("", ["batch", "ok.txt", "--out", "o", "--upscale", "U9"], 2, "U1..U4"),
        ("", ["batch", "ok.txt", "--out", "o", "--reconcile"], 2, "--resume"),
    ],
)
def test_cli_errors_are_one_line(
    tmp_path: Path, setup: str, args: list[str], code: int, words: str
) -> None:
    """Every CLI error is one line on stderr with its exit code; no traceback, no key."""
    (tmp_path / "ok.txt").write_text("a cat\n", "utf-8")
    if setup == "latin1":
        (tmp_path / "p.txt").write_bytes(b"caf\xe9\n")
    if setup == "garbage":
        (tmp_path / "g").mkdir()
        (tmp_path / "g" / ".quickmj-journal.sqlite").write_bytes(b"x" * 500)
    done = _run(*args, "--simulate", cwd=tmp_path)
    assert code == done.returncode, done.stderr
    assert 1 == len(done.stderr.strip().splitlines()), done.stderr
    assert words in done.stderr and "Traceback" not in done.stderr


def test_cli_outage_has_its_own_exit_code(tmp_path: Path) -> None:
    """An unreachable relay: exit 3, one line saying what to do, nothing submitted."""
    (tmp_path / "ok.txt").write_text("a cat\na dog\n", "utf-8")
    key = "sk-cli-secret-123456"
    done = _run("batch", "ok.txt", "--out", "o", "--plain", cwd=tmp_path,
                QUICKMJ_API_KEY=key, QUICKMJ_BASE_URL="http://127.0.0.1:9")  # fmt: skip
    assert 3 == done.returncode, done.stderr
    assert "relay unreachable" in done.stderr and "--resume" in done.stderr
    assert key not in done.stderr + done.stdout


def test_cli_json_errors(tmp_path: Path) -> None:
    """With --json, errors are JSON objects on stderr too."""
    done = _run("fetch", "1", "--json", cwd=tmp_path)
    assert 1 == done.returncode
    error = json.loads(done.stderr)["error"]
    assert "ConfigurationError" == error["type"] and "QUICKMJ_API_KEY" in error["message"]


async def test_cli_commands_against_a_relay(relay: Any, tmp_path: Path) -> None:
    """imagine, wait, fetch, action, change, seed and errors through the real entry point."""
    code, out, _ = await _cli(relay, "imagine", "a cat", "--json", cwd=tmp_path)
    assert 0 == code
    task_id = json.loads(out)["job"]["id"]
    code, out, _ = await _cli(relay, "wait", task_id, "--json", cwd=tmp_path)
    assert 0 == code and "SUCCESS" == json.loads(out)["task"]["status"]
    code, out, _ = await _cli(relay, "fetch", task_id, cwd=tmp_path)
    assert 0 == code and f"{task_id}  SUCCESS" in out and "U1" in out
    code, out, _ = await _cli(relay, "action", task_id, "U1", "--download", "dl", cwd=tmp_path)
    assert 0 == code and ".png" in out
    code, out, _ = await _cli(relay, "change", task_id, "V2", "--wait", cwd=tmp_path)
    assert 0 == code and "SUCCESS" in out
    code, out, _ = await _cli(relay, "seed", task_id, "--json", cwd=tmp_path)
    assert 0 == code and json.loads(out)["seed"].isdigit()
    code, _, err = await _cli(relay, "action", task_id, "Z9", cwd=tmp_path)
    assert 2 == code and err.startswith("error: ") and "no button 'Z9'" in err
    code, _, err = await _cli(relay, "fetch", "404404", cwd=tmp_path)
    assert 1 == code and "not found" in err
    assert relay.api_key not in err


async def test_garbled_submit_answer_is_unknown_not_rejected(tmp_path: Path) -> None:
    """A 200 with an HTML body to a submit may hide a created job: unknown, never resent."""
    from quickmj.testing import MockTransport

    sent: list[str] = []

    def handler(request: Request) -> Response:
        if request.path.endswith("/submit/imagine"):
            sent.append(request.path)
            return Response(200, content=b"<html>gateway</html>")
        return Response(200, json=[])

    async with AsyncClient(
        "k", base_url="http://relay.test", transport=MockTransport(handler)
    ) as mj:
        summary = await run_batch(mj, [BatchItem("a cat")], tmp_path, download=False)
    assert (0, 1) == (summary.rejected, summary.unknown)
    assert 1 == len(sent)


def test_journal_phases_are_an_enum() -> None:
    """Phases are a str enum with a clear notion of 'final'."""
    assert "timed_out" == Phase.TIMED_OUT.value and not Phase.TIMED_OUT.is_final
    assert Phase.UNKNOWN.is_final and Phase("succeeded") is Phase.SUCCEEDED
    assert isinstance(sqlite3.sqlite_version, str)
