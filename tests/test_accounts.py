"""Several accounts: AccountPool routing, rotation, the batch journal's owners, --keys."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from fakes import SIM_POLL as FAST

from quickmj import (
    Account,
    AccountPool,
    BatchItem,
    InvalidInputError,
    NoUsableAccountError,
    read_keys,
    run_batch,
)
from quickmj._budgets import fingerprint
from quickmj._journal import Journal
from quickmj.testing import SimulatorConfig, simulate


def pool_on(relay: Any, keys: list[str], **kwargs: Any) -> AccountPool:
    return AccountPool(keys, base_url=relay.base_url, dialect=relay.dialect, poll=FAST, **kwargs)


def items(n: int) -> list[BatchItem]:
    return [BatchItem(f"prompt {i}") for i in range(n)]


def created(relay: Any) -> Counter[str]:
    return Counter(s.prompt for s in relay.simulator.submissions if s.endpoint == "/submit/imagine")


def test_read_keys(tmp_path: Path) -> None:
    """Keys, then a base URL and/or a mode in any order; comments and blanks skipped."""
    path = tmp_path / "keys.txt"
    path.write_text(
        "# accounts\nsk-one\n\nsk-two  relax  https://relay.example  # team B\n"
        "sk-three,http://other.example\n",
        encoding="utf-8",
    )
    one, two, three = read_keys(path)
    assert (None, None) == (one.base_url, one.mode)
    assert ("https://relay.example", "relax") == (two.base_url, two.mode)
    assert ("http://other.example", None) == (three.base_url, three.mode)
    assert fingerprint("sk-two") == two.fingerprint and "sk-two" not in repr(two)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("sk-secret-1\nsk-secret-1\n", "keys.txt:2: the same key as line 1"),
        ("sk-secret-1 slow\n", "keys.txt:1: after the key"),
        ("# nothing\n\n", "no keys"),
    ],
)
def test_read_keys_errors_name_the_line_not_the_key(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "keys.txt"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(InvalidInputError, match=match) as info:
        read_keys(path)
    assert "secret" not in str(info.value)


async def test_new_jobs_spread_and_later_calls_go_to_the_owner() -> None:
    """Each submit goes to the least loaded account; fetch, wait, press and seed of a job
    go to the key that created it (the relay only shows a key its own tasks)."""
    config = SimulatorConfig(api_keys=("sk-a", "sk-b"), concurrency=2, max_queue=2)
    async with simulate(config) as relay, pool_on(relay, ["sk-a", "sk-b"]) as pool:
        jobs = await asyncio.gather(*(pool.imagine(f"fox {i}") for i in range(8)))
        owners = Counter(job.account for job in jobs)
        for job in jobs:
            assert (
                relay.simulator.tasks[job.id].key
                == {
                    fingerprint("sk-a"): "sk-a",
                    fingerprint("sk-b"): "sk-b",
                }[job.account or ""]
            )
        grid = await pool.wait(jobs[0].id)
        up = await pool.action(jobs[0], "U1").wait()
        assert grid.id == (await pool.fetch(jobs[0].id)).id
        assert relay.simulator.tasks[up.id].key == relay.simulator.tasks[grid.id].key
        done = [t.id async for t in pool.as_completed(jobs, timeout=30)]
    assert 8 == sum(owners.values()) and min(owners.values()) >= 3  # least loaded first
    assert sorted(done) == sorted(j.id for j in jobs)


async def test_a_refused_key_leaves_the_rotation_once_and_the_rest_carry_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A disabled key (401) is found before anything is paid; the run uses the others."""
    config = SimulatorConfig(api_keys=("sk-good",), disabled_keys=("sk-off",))
    caplog.set_level(logging.WARNING, "quickmj")
    async with simulate(config) as relay, pool_on(relay, ["sk-off", "sk-good"]) as pool:
        summary = await run_batch(pool, items(6), tmp_path, download=False)
    assert summary.ok
    off, good = summary.accounts
    assert off.disabled and "401" in off.disabled and 0 == off.submitted
    assert 6 == good.submitted == good.succeeded
    warnings = [r for r in caplog.records if "out of rotation" in r.getMessage()]
    assert 1 == len(warnings) and "sk-off" not in caplog.text


async def test_a_key_without_quota_leaves_the_rotation_mid_run(tmp_path: Path) -> None:
    """'quota_not_enough' created nothing: that prompt goes to another key, once."""
    config = SimulatorConfig(api_keys=("sk-poor", "sk-rich"), quotas={"sk-poor": 2})
    async with simulate(config) as relay, pool_on(relay, ["sk-poor", "sk-rich"]) as pool:
        summary = await run_batch(pool, items(10), tmp_path, download=False)
    assert summary.ok and {1} == set(created(relay).values()) and 10 == len(created(relay))
    poor, rich = summary.accounts
    assert poor.disabled and "quota" in poor.disabled and 2 == poor.submitted
    assert 8 == rich.submitted


async def test_when_every_key_is_out_the_run_stops_with_prompts_pending(tmp_path: Path) -> None:
    config = SimulatorConfig(api_keys=("sk-a", "sk-b"), quotas={"sk-a": 1, "sk-b": 1})
    async with simulate(config) as relay, pool_on(relay, ["sk-a", "sk-b"]) as pool:
        with pytest.raises(NoUsableAccountError, match="no account left in rotation"):
            await run_batch(pool, items(5), tmp_path, download=False)
    with Journal(tmp_path / ".quickmj-journal.sqlite", create=False) as journal:
        rows = journal.rows()
    assert 2 == sum(1 for r in rows if r.task_id) == len(relay.simulator.submissions)
    assert 3 == sum(1 for r in rows if r.phase.value == "pending")  # --resume sends them


async def test_resume_follows_each_job_on_the_key_that_created_it(tmp_path: Path) -> None:
    """The journal records each job's account: a resume with the keys in another order
    waits on every job with its own key and submits nothing again."""
    config = SimulatorConfig(api_keys=("sk-a", "sk-b"), run_seconds=1.0)
    async with simulate(config) as relay:
        async with pool_on(relay, ["sk-a", "sk-b"]) as pool:
            first = await run_batch(pool, items(6), tmp_path, download=False, timeout=0.1)
        assert 6 == first.timed_out
        async with pool_on(relay, ["sk-b", "sk-a"]) as pool:
            again = await run_batch(pool, items(6), tmp_path, download=False, resume=True)
    assert again.ok and {1} == set(created(relay).values())
    lines = [json.loads(x) for x in (tmp_path / "manifest.jsonl").read_text().splitlines()]
    by_key = {fingerprint("sk-a"): "sk-a", fingerprint("sk-b"): "sk-b"}
    for line in lines:
        assert relay.simulator.tasks[line["task_id"]].key == by_key[line["account"]]
    assert {"sk-a", "sk-b"} == {by_key[line["account"]] for line in lines}


async def test_a_job_whose_key_is_missing_is_kept_for_a_later_resume(tmp_path: Path) -> None:
    config = SimulatorConfig(api_keys=("sk-a", "sk-b"), run_seconds=1.0)
    async with simulate(config) as relay:
        async with pool_on(relay, ["sk-a"]) as pool:
            await run_batch(pool, items(2), tmp_path, download=False, timeout=0.05)
        async with pool_on(relay, ["sk-b"]) as pool:
            again = await run_batch(pool, items(2), tmp_path, download=False, resume=True)
    assert 2 == again.incomplete and 2 == len(relay.simulator.submissions)


def test_cli_batch_with_a_keys_file(tmp_path: Path) -> None:
    """quickmj batch --keys FILE: per-account lines in the summary, never a key."""
    keys = tmp_path / "keys.txt"
    keys.write_text("# two accounts\nsk-cli-first-secret\nsk-cli-second-secret relax\n")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"prompt {i}\n" for i in range(6)))
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "quickmj", "batch", str(prompts), "--keys", str(keys),
         "--simulate", "--out", str(out), "--no-download", "--plain"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert 0 == done.returncode, done.stderr
    assert f"account {fingerprint('sk-cli-first-secret')}:" in done.stdout
    assert f"account {fingerprint('sk-cli-second-secret')}/relax:" in done.stdout
    written = "".join(p.read_bytes().decode("latin-1") for p in out.rglob("*") if p.is_file())
    assert "secret" not in done.stdout + done.stderr + written


def test_pool_configuration_errors() -> None:
    with pytest.raises(ValueError, match="at least one account"):
        AccountPool([])
    with pytest.raises(ValueError, match="twice"):
        AccountPool(["sk-x", Account("sk-x")], base_url="http://relay.test")
    with pytest.raises(ValueError, match="needs admission"):
        AccountPool(["sk-x"], admission=None, base_url="http://relay.test")
