"""The batch job end to end against the embedded simulator: results, backoff, resume, CLI."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from quickmj import AsyncClient, InvalidInputError, PollPolicy, UsageError
from quickmj._batch import BatchItem, read_prompts, run_batch
from quickmj._journal import Journal, Phase
from quickmj.simulator import SimulatorConfig, simulate

FAST = PollPolicy(interval=0.05, first_poll=0.02, near_done_interval=0.02)


@pytest.fixture
async def relay() -> AsyncIterator[Any]:
    async with simulate(SimulatorConfig(seed=1)) as running:
        yield running


def prompts(n: int, word: str = "prompt") -> list[BatchItem]:
    return [BatchItem(f"{word} {i} --v 6.1") for i in range(n)]


def manifest(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def imagine_submissions(relay: Any) -> Counter[str]:
    return Counter(s[1] for s in relay.simulator.submissions if "imagine" in s[0])


async def test_batch_runs_to_completion_with_upscales(relay: Any, tmp_path: Path) -> None:
    """Every prompt ends SUCCEEDED with its upscaled image on disk and in the manifest."""
    async with AsyncClient(relay.api_key, base_url=relay.base_url, poll=FAST) as mj:
        summary = await run_batch(mj, prompts(12), tmp_path, concurrency=4, upscale=["U1"])
    assert summary.ok and 12 == summary.succeeded
    rows = manifest(tmp_path)
    assert [f"prompt {i} --v 6.1" for i in range(12)] == [r["prompt"] for r in rows]
    for row in rows:
        assert "succeeded" == row["status"]
        assert (
            1 == len(row["files"]) and (tmp_path / row["files"][0]).read_bytes()[:4] == b"\x89PNG"
        )
        assert set(row["upscale_task_ids"]) == {"U1"}
    assert all(n == 1 for n in imagine_submissions(relay).values())
    assert 12 == len(imagine_submissions(relay))


async def test_rejections_and_failures_are_recorded(tmp_path: Path) -> None:
    """A banned prompt is 'rejected' with its code; the summary is not ok."""
    async with (
        simulate(SimulatorConfig(banned_words=("forbidden",))) as relay,
        AsyncClient(relay.api_key, base_url=relay.base_url, poll=FAST) as mj,
    ):
        items = [*prompts(3), BatchItem("something forbidden")]
        summary = await run_batch(mj, items, tmp_path, concurrency=2)
    assert not summary.ok
    assert (3, 1) == (summary.succeeded, summary.rejected)
    rejected = [r for r in manifest(tmp_path) if r["status"] == "rejected"]
    assert 24 == rejected[0]["code"]


async def test_queue_full_is_backed_off_without_duplicates(tmp_path: Path) -> None:
    """With a tiny relay queue (code 23) everything still finishes, each submitted once."""
    async with simulate(SimulatorConfig(max_queue=2)) as relay:
        async with AsyncClient(relay.api_key, base_url=relay.base_url, poll=FAST) as mj:
            mj._transport.retry = mj.retry.__class__(backoff=0.01, max_backoff=0.05)
            summary = await run_batch(mj, prompts(10), tmp_path, concurrency=8, download=False)
        rejected_answers = relay.simulator.counters["POST /submit/imagine"] - 10
    assert summary.ok
    assert rejected_answers > 0  # the queue limit really was hit
    assert all(n == 1 for n in imagine_submissions(relay).values())


async def test_resume_after_a_killed_run_submits_nothing_twice(relay: Any, tmp_path: Path) -> None:
    """Cancel mid-way, resume: no prompt submitted twice, all finished, manifest complete."""
    items = prompts(16)
    async with AsyncClient(relay.api_key, base_url=relay.base_url, poll=FAST) as mj:
        run = asyncio.ensure_future(run_batch(mj, items, tmp_path, concurrency=4))
        while len(relay.simulator.submissions) < 6:  # noqa: ASYNC110 - polling a counter
            await asyncio.sleep(0.01)
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
    first = manifest(tmp_path)
    assert any(r["status"] != "succeeded" for r in first)  # it really stopped mid-way
    with pytest.raises(UsageError):
        async with AsyncClient(relay.api_key, base_url=relay.base_url) as mj:
            await run_batch(mj, items, tmp_path)  # without resume: refused
    async with AsyncClient(relay.api_key, base_url=relay.base_url, poll=FAST) as mj:
        summary = await run_batch(mj, items, tmp_path, concurrency=4, resume=True)
    assert summary.ok and 16 == summary.succeeded
    assert 16 == len(imagine_submissions(relay))
    assert all(n == 1 for n in imagine_submissions(relay).values())
    assert 16 == len(manifest(tmp_path))


async def test_interrupted_submit_is_unknown_not_resent(relay: Any, tmp_path: Path) -> None:
    """A row caught between 'submitting' and its task id is reported, never re-sent."""
    items = prompts(2)
    with Journal(tmp_path / ".quickmj-journal.sqlite") as journal:
        journal.load_prompts([(i.prompt, {}) for i in items])
        journal.mark_submitting(0)  # as if killed right after sending
    async with AsyncClient(relay.api_key, base_url=relay.base_url, poll=FAST) as mj:
        summary = await run_batch(mj, items, tmp_path, resume=True, download=False)
    assert (1, 1) == (summary.succeeded, summary.unknown)
    assert Phase.UNKNOWN == manifest(tmp_path)[0]["status"]
    assert {"prompt 1 --v 6.1": 1} == dict(imagine_submissions(relay))


async def test_resume_with_other_input_is_refused(relay: Any, tmp_path: Path) -> None:
    """Resuming with a different prompt file is an error, not a silent mix."""
    async with AsyncClient(relay.api_key, base_url=relay.base_url, poll=FAST) as mj:
        await run_batch(mj, prompts(2), tmp_path, download=False)
        with pytest.raises(UsageError, match="differ"):
            await run_batch(mj, prompts(3), tmp_path, resume=True)


def test_read_prompts(tmp_path: Path) -> None:
    """Plain lines and JSONL with options; comments skipped; bad JSONL is a clear error."""
    f = tmp_path / "p.txt"
    f.write_text('# c\n\na cat\n{"prompt": "a dog", "state": "s1"}\n', encoding="utf-8")
    assert [BatchItem("a cat"), BatchItem("a dog", {"state": "s1"})] == read_prompts(f)
    f.write_text('{"prompt": "x", "colour": "red"}\n', encoding="utf-8")
    with pytest.raises(InvalidInputError, match="unknown options"):
        read_prompts(f)


def _cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("QUICKMJ_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "quickmj", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_batch_with_simulator(tmp_path: Path) -> None:
    """`quickmj batch FILE --simulate --out DIR` runs end to end with exit code 0."""
    f = tmp_path / "prompts.txt"
    f.write_text("a cat\na dog\na fox\n", encoding="utf-8")
    done = _cli(
        "batch",
        str(f),
        "--simulate",
        "--out",
        str(tmp_path / "out"),
        "--upscale",
        "U2",
        cwd=tmp_path,
    )
    assert 0 == done.returncode, done.stderr
    assert "3/3 succeeded" in done.stdout
    assert 3 == len(list((tmp_path / "out" / "images").glob("*.png")))


def test_cli_one_shot_commands_with_simulator(tmp_path: Path) -> None:
    """imagine --wait --json prints the finished task as JSON."""
    done = _cli("imagine", "a cat", "--wait", "--json", "--simulate", cwd=tmp_path)
    assert 0 == done.returncode, done.stderr
    task = json.loads(done.stdout.splitlines()[0])
    assert "SUCCESS" == task["status"]


def test_cli_errors_are_one_line_without_key(tmp_path: Path) -> None:
    """No key: one clear line naming the variable, exit 1, no traceback."""
    done = _cli("fetch", "123", cwd=tmp_path)
    assert 1 == done.returncode
    assert "QUICKMJ_API_KEY" in done.stderr
    assert "Traceback" not in done.stderr
    secret = "sk-very-secret-cli-key"
    env = {"QUICKMJ_API_KEY": secret, "QUICKMJ_BASE_URL": "http://127.0.0.1:9"}
    done = _cli("fetch", "1", cwd=tmp_path, env=env)
    assert 1 == done.returncode
    assert done.stderr.startswith("error: ") and 1 == len(done.stderr.strip().splitlines())
    assert secret not in done.stderr + done.stdout


async def _acli(relay: Any, *args: str, cwd: Path) -> tuple[int, str, str]:
    """Run the CLI in a subprocess against ``relay`` while this loop keeps serving it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUICKMJ_")}
    env.update({"QUICKMJ_API_KEY": relay.api_key, "QUICKMJ_BASE_URL": relay.base_url})
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "quickmj",
        *args,
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_cli_commands_against_a_relay(relay: Any, tmp_path: Path) -> None:
    """imagine, wait, fetch, action (label), seed and errors through the real entry point."""
    code, out, _ = await _acli(relay, "imagine", "a cat", "--json", cwd=tmp_path)
    assert 0 == code
    task_id = json.loads(out)["result"]
    code, out, _ = await _acli(relay, "wait", task_id, "--json", cwd=tmp_path)
    assert 0 == code and "SUCCESS" == json.loads(out)["status"]
    code, out, _ = await _acli(relay, "fetch", task_id, cwd=tmp_path)
    assert 0 == code and f"{task_id}  SUCCESS" in out and "U1" in out
    code, out, _ = await _acli(
        relay, "action", task_id, "U1", "--download", str(tmp_path), cwd=tmp_path
    )
    assert 0 == code and ".png" in out
    code, out, _ = await _acli(relay, "seed", task_id, "--json", cwd=tmp_path)
    assert 0 == code and json.loads(out)["seed"].isdigit()
    code, _, err = await _acli(relay, "action", task_id, "Z9", cwd=tmp_path)
    assert 1 == code and err.startswith("error: ") and "no button 'Z9'" in err
    code, _, err = await _acli(relay, "fetch", "404404", cwd=tmp_path)
    assert 1 == code and "not found" in err
    assert relay.api_key not in err


async def test_garbled_submit_answer_is_unknown_not_rejected(tmp_path: Path) -> None:
    """A 200 with an HTML body on submit may hide a created job: 'unknown', never re-sent."""
    from aioresponses import aioresponses

    with aioresponses() as m:
        m.post("http://relay.test/mj/submit/imagine", body="<html>gateway</html>", repeat=True)
        async with AsyncClient("k", base_url="http://relay.test") as mj:
            summary = await run_batch(mj, [BatchItem("a cat")], tmp_path, download=False)
        sent = sum(len(v) for k, v in m.requests.items() if k[1].path.endswith("/imagine"))
    assert (0, 1) == (summary.rejected, summary.unknown)
    assert 1 == sent
