"""Fault-injection soak: no prompt lost, none paid twice, nothing escapes untyped.

The harness is ``benchmarks/_soak.py`` (shared with ``benchmarks/soak.py``; not part of
the package). In-process runs use ``QUICKMJ_SOAK_PROMPTS`` prompts (default 200, a few
seconds); the kill soak runs ``quickmj batch`` processes and kills them with SIGKILL.
``pytest -m soak -s`` prints the one-line summaries.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

_BENCHMARKS = str(Path(__file__).resolve().parents[1] / "benchmarks")
if _BENCHMARKS not in sys.path:
    sys.path.insert(0, _BENCHMARKS)

from _soak import SoakReport, soak, soak_kills  # noqa: E402

PROMPTS = int(os.environ.get("QUICKMJ_SOAK_PROMPTS", "200"))

pytestmark = pytest.mark.soak


def _accounted(report: SoakReport) -> int:
    """Rows in a phase a finished run may leave (the checks flag any other; ``pending``
    only where the key's quota ran out and the relay created nothing for the row)."""
    return (
        report.succeeded
        + report.failed
        + report.rejected
        + report.unknown
        + report.timed_out
        + report.incomplete
        + report.pending
    )


@pytest.mark.timeout(max(120, PROMPTS // 10))
async def test_batch_survives_faults_without_lost_or_duplicated_jobs(tmp_path: Path) -> None:
    """run_batch at concurrency 32 against 502s, 429s, drops, ambiguous submits, truncated
    lists, a full queue and 10% failing jobs: every prompt is accounted for exactly once,
    no prompt is created twice, no paid job is lost, every 'unknown' is an ambiguous
    answer the relay really gave, run_batch returns, and memory stays bounded."""
    # Room for 12 running + 2 waiting: adaptive admission starts at 3 and grows by one
    # per accepted submit until the relay says "queue full", so that answer really occurs
    # (with more room the learned budget may never reach the relay's limit).
    report = await soak(PROMPTS, tmp_path, concurrency=32, workers=12, max_queue=2)
    print(f"\n{report.summary()}")
    assert [] == list(report.problems)
    assert (0, 0) == (report.duplicates, report.lost_paid_jobs)
    assert PROMPTS == _accounted(report)
    # The faults really happened (each is expected many times at this size).
    assert {"502", "429", "drop"} <= set(report.faults), report.faults
    assert report.queue_full > 0 and report.ambiguous_submits > 0
    assert report.unknown == report.ambiguous_submits
    assert report.failed > 0 and report.rejected > 0
    assert report.peak_traced is not None and report.peak_traced < 32 * 2**20 + PROMPTS * 32 * 1024


@pytest.mark.timeout(120)
@pytest.mark.parametrize("dialect", ["quickrouter", "midjourney-proxy", "trueai"])
async def test_upscale_presses_meet_the_faults_too(tmp_path: Path, dialect: str) -> None:
    """The same with one U1 press per grid on every dialect (buttons, or /submit/change on
    midjourney-proxy): no press sent twice or lost. Where the relay lists tasks,
    reconcile then adopts the unknown outcomes whose job exists, by their tag; where it
    has quotas, the key runs out midway: the run stops submitting, the prompts it did not
    create stay pending (a resume sends them after a top-up, none rejected), and refused
    or unsent presses leave their grids incomplete."""
    n = min(PROMPTS, 40)
    settle = dialect != "quickrouter"
    quota = None if dialect == "midjourney-proxy" else n
    report = await soak(n, tmp_path, dialect=dialect, upscale=("U1",), settle=settle, quota=quota)
    print(f"\n{report.summary()}")
    assert [] == list(report.problems)
    assert (0, 0) == (report.duplicates, report.lost_paid_jobs)
    assert n == _accounted(report)
    presses = report.requests.get("POST /submit/action", 0)
    presses += report.requests.get("POST /submit/change", 0)
    assert presses > 0 and report.succeeded > 0
    if quota is None:
        assert (0, None) == (report.pending, report.key_refused)
    else:  # the quota ran out: submitting stopped, the rest pending, presses incomplete
        assert report.key_refused == "exhausted" and report.quota_refusals > 0
        assert report.pending > 0 and report.incomplete > 0 and report.rejected == 0
        # Only the submits already on their way met the refusal (not every prompt left).
        assert report.sent_after_refusal <= 32
        assert report.quota_refusals <= 32


@pytest.mark.timeout(180)
async def test_kill_9_at_random_points_and_concurrent_resumes(tmp_path: Path) -> None:
    """`quickmj batch` processes killed with SIGKILL at seeded points (at start, after a
    delay, with submits on the wire, mid-download), each followed by a --resume, some
    while a second run tries the directory (refused: exit 1, one line, no request); the
    last resume runs to its end. Across all rounds: nothing created twice, no paid job
    lost, every row accounted for, unknown rows exactly the cut and ambiguous submits."""
    report = await soak_kills(
        40, tmp_path, kills=6, dialect="quickrouter", upscale=("U1",), seed=3, time_limit=150
    )
    print(f"\n{report.summary()}")
    print("\n".join(report.log))
    assert [] == list(report.problems)
    assert (0, 0) == (report.duplicates, report.lost_paid_jobs)
    assert 40 == _accounted(report)
    assert report.total_kills >= 5
    assert report.kills["submit"] >= 1 and report.kills["download"] >= 1
    assert report.interrupted_submits > 0  # a kill caught submits on the wire
    assert report.intruders_refused >= 1
