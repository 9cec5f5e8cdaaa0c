"""Fault-injection soak: no prompt lost, none paid twice, nothing escapes untyped.

The run and its invariants live in ``quickmj.simulator._soak`` (shared with
``benchmarks/soak.py``). The size comes from ``QUICKMJ_SOAK_PROMPTS`` (default 200, a few
seconds); ``pytest -m soak -s`` prints the one-line summary.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from quickmj.simulator._soak import soak

PROMPTS = int(os.environ.get("QUICKMJ_SOAK_PROMPTS", "200"))

pytestmark = pytest.mark.soak


@pytest.mark.timeout(max(120, PROMPTS // 10))
async def test_batch_survives_faults_without_lost_or_duplicated_jobs(tmp_path: Path) -> None:
    """run_batch at concurrency 32 against 502s, 429s, drops, ambiguous submits, truncated
    lists, a full queue and 10% failing jobs: every prompt is accounted for exactly once,
    no prompt is created twice, every 'unknown' is an ambiguous answer the relay really
    gave, run_batch returns, and memory stays bounded."""
    report = await soak(PROMPTS, tmp_path, concurrency=32)
    print(f"\n{report.summary()}")
    assert [] == list(report.problems)
    assert 0 == report.duplicates
    assert PROMPTS == report.succeeded + report.failed + report.rejected + report.unknown
    # The faults really happened (each is expected many times at this size).
    assert {"502", "429", "drop"} <= set(report.faults), report.faults
    assert report.queue_full > 0 and report.ambiguous_submits > 0
    assert report.failed > 0 and report.rejected > 0
    assert report.peak_traced is not None and report.peak_traced < 32 * 2**20 + PROMPTS * 32 * 1024


@pytest.mark.timeout(120)
async def test_upscale_presses_meet_the_faults_too(tmp_path: Path) -> None:
    """The same with one U1 press per grid: no action submitted twice or lost either."""
    report = await soak(min(PROMPTS, 60), tmp_path, concurrency=32, upscale=("U1",))
    print(f"\n{report.summary()}")
    assert [] == list(report.problems)
    assert report.requests.get("POST /submit/action", 0) > 0
