"""The command line never hides a paid id, never pays twice for a finished batch, and says
what happened with its documented exit code (issue 21, items 1 to 5)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from quickmj import AccountSummary, BatchProgress, QueueFullError
from quickmj._cli import _account_line, _parser
from quickmj._completion import script
from quickmj._outdir import BatchDir
from quickmj._progress import line, progress_json
from quickmj._protocol import rejection
from quickmj.testing import simulate

pytestmark = pytest.mark.timeout(120)


def _env(**extra: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("QUICKMJ_")}
    return {**clean, **extra}


def _run(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "quickmj", *args], cwd=cwd, env=_env(**env),
        capture_output=True, text=True, timeout=100,
    )  # fmt: skip


def _relay_env(relay: Any) -> dict[str, str]:
    return _env(QUICKMJ_API_KEY=relay.api_key, QUICKMJ_BASE_URL=relay.base_url)


async def _acli(relay: Any, *args: str, cwd: Path) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "quickmj", *args, "--dialect", relay.dialect, cwd=cwd,
        env=_relay_env(relay), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 100)
    return proc.returncode or 0, out.decode(), err.decode()


# ---- 1. the id of a paid job is said at once, and again on Ctrl-C ----


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
async def test_ctrl_c_while_waiting_names_the_running_job(tmp_path: Path, as_json: bool) -> None:
    """imagine --wait: the id on stderr when accepted; Ctrl-C says 'quickmj wait ID', 130."""
    flags = ["--json"] if as_json else []
    async with simulate(run_seconds=60.0) as relay:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "quickmj", "imagine", "a fox", "--wait", *flags,
            "--dialect", relay.dialect, cwd=tmp_path, env=_relay_env(relay),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert proc.stderr is not None
        first = (await asyncio.wait_for(proc.stderr.readline(), 60)).decode()
        assert relay.simulator.submissions  # the line comes after the relay took the submit
        proc.send_signal(signal.SIGINT)
        out, rest = await asyncio.wait_for(proc.communicate(), 60)
    err = first + rest.decode()
    assert 130 == proc.returncode, err
    if as_json:
        task_id = json.loads(first)["submitted"]["id"]
        error = json.loads(rest.decode())["error"]
        assert [task_id] == error["running"] and f"quickmj wait {task_id}" in error["message"]
    else:
        task_id = first.split("task ", 1)[1].split()[0]
        assert f"submitted: task {task_id} (quickmj wait {task_id})" == first.strip()
        assert f"pick it up with 'quickmj wait {task_id}'" in rest.decode()
    assert "Traceback" not in err and b"" == out


async def test_every_submit_says_its_id_on_stderr(tmp_path: Path) -> None:
    """Without --wait too: stdout keeps the result, stderr gets the id line."""
    async with simulate() as relay:
        code, out, err = await _acli(relay, "imagine", "a cat", cwd=tmp_path)
    assert 0 == code, err
    task_id = out.split()[1]
    assert f"submitted: task {task_id} (quickmj wait {task_id})" == err.strip()


# ---- 2. a finished batch run again pays nothing ----


async def test_rerunning_a_finished_batch_pays_nothing(tmp_path: Path) -> None:
    """Same prompts, same --out: 'complete, nothing sent', exit 0; other prompts: exit 2."""
    (tmp_path / "p.txt").write_text("a cat\na dog\n", "utf-8")
    batch = ("batch", "p.txt", "--out", "out", "--no-download", "--plain")
    async with simulate() as relay:
        code, out, err = await _acli(relay, *batch, cwd=tmp_path)
        assert 0 == code, err
        sent = len(relay.simulator.submissions)
        code, out, err = await _acli(relay, *batch, cwd=tmp_path)
        assert 0 == code, err
        assert "out already holds this batch, complete: 2/2 succeeded; nothing sent" in out
        code, out, _ = await _acli(relay, *batch, "--json", cwd=tmp_path)
        summary = json.loads(out)["summary"]
        assert 0 == code and summary["nothing_sent"] and 2 == summary["succeeded"]
        (tmp_path / "p.txt").write_text("a cat\na cow\n", "utf-8")
        code, _, err = await _acli(relay, *batch, cwd=tmp_path)
        assert 2 == code and "already holds a batch" in err
        assert sent == len(relay.simulator.submissions)


def test_an_unfinished_batch_with_the_same_prompts_asks_for_resume(tmp_path: Path) -> None:
    """The same prompts, not finished: refused (exit 2) with --resume named; nothing sent."""
    (tmp_path / "p.txt").write_text("a cat\na dog\n", "utf-8")
    with BatchDir(tmp_path / "out") as bdir:
        bdir.open_journal([("a cat", {}), ("a dog", {})], resume=False).close()
    done = _run("batch", "p.txt", "--out", "out", "--simulate", cwd=tmp_path)
    assert 2 == done.returncode, done.stderr
    assert "holds this batch, not finished (2 of 2 prompts open)" in done.stderr
    assert "--resume" in done.stderr and "" == done.stdout


# ---- 3. exit codes and clean output ----


def test_imagine_against_an_unreachable_relay_exits_3(tmp_path: Path) -> None:
    done = _run("imagine", "x", cwd=tmp_path, QUICKMJ_API_KEY="sk-cli-secret-1234",
                QUICKMJ_BASE_URL="http://127.0.0.1:9")  # fmt: skip
    assert 3 == done.returncode, done.stderr
    assert "cannot connect" in done.stderr and "sk-cli-secret-1234" not in done.stderr


def test_cancel_of_an_unknown_id_fails(tmp_path: Path) -> None:
    """TrueAI answers success to a cancel of any id: the CLI asks first, and says so."""
    done = _run("--simulate", "--dialect", "trueai", "cancel", "123", cwd=tmp_path)
    assert 1 == done.returncode, done.stderr
    assert "error: task 123 not found" == done.stderr.strip()


@pytest.mark.parametrize("args", [["completion", "bash"], ["--help"]], ids=["completion", "help"])
def test_a_closed_stdout_is_no_traceback(tmp_path: Path, args: list[str]) -> None:
    """`quickmj completion bash | head -1`: the reader is gone before the write, quietly."""
    read, write = os.pipe()
    os.close(read)  # every write now fails with EPIPE, deterministically
    try:
        done = subprocess.run(
            [sys.executable, "-m", "quickmj", *args], cwd=tmp_path, env=_env(),
            stdout=write, stderr=subprocess.PIPE, text=True, timeout=100,
        )  # fmt: skip
    finally:
        os.close(write)
    assert "" == done.stderr
    assert done.returncode in (0, 1)


def test_json_usage_errors_are_json(tmp_path: Path) -> None:
    for args in (["--json", "batch"], ["imagine", "--json"], ["--json", "nosuch"]):
        done = _run(*args, cwd=tmp_path)
        assert 2 == done.returncode
        error = json.loads(done.stderr)["error"]
        assert "UsageError" == error["type"] and error["message"].startswith("quickmj")
    assert "usage:" in _run("batch", cwd=tmp_path).stderr  # without --json: argparse's own


def test_a_json_batch_prints_only_json_on_stderr(tmp_path: Path) -> None:
    (tmp_path / "p.txt").write_text("a cat\na dog\n", "utf-8")
    done = _run("batch", "p.txt", "--out", "o", "--simulate", "--json", cwd=tmp_path)
    assert 0 == done.returncode, done.stderr
    lines = done.stderr.splitlines()
    assert lines and all(json.loads(x).keys() == {"progress"} for x in lines)
    assert 2 == json.loads(lines[-1])["progress"]["succeeded"]
    assert 2 == json.loads(done.stdout)["summary"]["succeeded"]


def test_summary_counts_prompts_and_jobs_apart() -> None:
    account = AccountSummary("4a56960a", 100, 50, 0, 0, 0, 3.0)
    text = _account_line(account)
    assert "100 jobs sent; its prompts: 50 succeeded, 0 failed" in text
    assert "submitted" not in text


def test_no_rate_before_five_seconds() -> None:
    """Two prompts in 0.3 s are no rate (not '400000/min'); later a whole number is shown."""
    early = BatchProgress(total=10, queued=8, running=0, succeeded=2, failed=0, elapsed=0.3,
                          rate=2 / 0.3)  # fmt: skip
    assert "-/min  eta --:--" in line(early)
    assert json.loads(progress_json(early))["progress"]["per_minute"] is None
    later = BatchProgress(total=10, queued=2, running=0, succeeded=8, failed=0, elapsed=60.0,
                          rate=8 / 60)  # fmt: skip
    assert "  8/min  eta 0:00:15" in line(later)
    slow = BatchProgress(total=10, queued=9, running=0, succeeded=1, failed=0, elapsed=100.0,
                         rate=0.005)  # fmt: skip
    assert "0.3/min" in line(slow)


def test_an_unusable_out_before_any_submit_promises_no_resume(tmp_path: Path) -> None:
    (tmp_path / "p.txt").write_text("a cat\n", "utf-8")
    (tmp_path / "f").write_text("", "utf-8")
    done = _run("batch", "p.txt", "--out", "f/out", "--simulate", cwd=tmp_path)
    assert 1 == done.returncode, done.stderr
    assert "nothing was submitted" in done.stderr
    assert "paid jobs" not in done.stderr and "--resume" not in done.stderr


# ---- 4. help and completion ----


def test_help_says_each_default_once() -> None:
    parser = _parser()
    pages = {"": parser.format_help()}
    for name in ("imagine", "batch", "simulate", "wait", "completion"):
        pages[name] = _find(parser, name).format_help()
    for name, text in pages.items():
        flat = " ".join(text.split())
        assert "(default: None)" not in flat and "(default: False)" not in flat, name
        assert ") (default:" not in flat, name
    batch = " ".join(pages["batch"].split())
    assert "--out DIR images, manifest and journal --concurrency" in batch
    simulate_help = " ".join(pages["simulate"].split())
    assert "--host HOST the address to listen on" in simulate_help
    assert "--port PORT the port to listen on (default: 8080)" in simulate_help
    assert "wait limit in seconds (default: 1800)" in " ".join(pages["imagine"].split())


def _find(parser: Any, name: str) -> Any:
    """A subcommand's parser (the test may read argparse internals; the CLI does not)."""
    for action in parser._actions:
        if isinstance(action.choices, dict) and name in action.choices:
            return action.choices[name]
    raise AssertionError(name)


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize(
    ("words", "expected"),
    [
        (["quickmj", "--json", "ima"], "imagine"),
        (["quickmj", "--api-key", "k", "ima"], "imagine"),
        (["quickmj", "batch", "p.txt", "--upscale", ""], "U1 U2 U3 U4 all"),
        (["quickmj", "--json", "batch", "--pl"], "--plain"),
        (["quickmj", "imagine", "--mode", ""], "fast relax turbo"),
        (["quickmj", "completion", ""], "bash zsh fish"),
    ],
)
def test_bash_completion(tmp_path: Path, words: list[str], expected: str) -> None:
    """After global options, for option values and for positional choices."""
    (tmp_path / "complete.bash").write_text(script("bash", _parser()), "utf-8")
    quoted = " ".join(f"'{w}'" for w in words)
    program = (
        f"source complete.bash; COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}; "
        '_quickmj; echo "${COMPREPLY[*]}"'
    )
    done = subprocess.run(["bash", "-c", program], cwd=tmp_path, capture_output=True,
                          text=True, timeout=30)  # fmt: skip
    assert expected == done.stdout.strip(), done.stderr


def test_fish_completion_offers_upscale_labels() -> None:
    text = script("fish", _parser())
    assert "-l upscale -x -a 'U1 U2 U3 U4 all'" in text
    assert "__fish_seen_subcommand_from batch" in text


# ---- 5. a full queue says what to do ----


def test_queue_full_suggests_admission() -> None:
    exc = rejection(23, "队列已满，请稍后尝试", path="/mj/submit/imagine")
    assert isinstance(exc, QueueFullError)
    assert "admission='adaptive'" in str(exc) and "AccountPool" in str(exc)
    assert "nothing was created" in str(exc)


def test_cli_choices_are_the_library_s() -> None:
    """The CLI spells the dialects and modes itself (no attrs import for --version): the
    same values as the library's, so no choice is offered that AsyncClient refuses."""
    from quickmj import _cli, _config

    assert _config.DIALECTS == _cli._DIALECTS
    assert _config.MODES == _cli._MODES
