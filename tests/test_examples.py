"""Every example runs as written with no key (against the embedded simulator)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize(
    "script",
    [
        "async_single_job.py",
        "sync_script.py",
        "batch_100.py",
        "webhook.py",
        "buttons_and_modal.py",
        "images.py",
        "video.py",
    ],
)
def test_example_runs_without_a_key(script: str, tmp_path: Path) -> None:
    """The example exits 0 and says it used the simulator."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUICKMJ_")}
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert 0 == done.returncode, done.stderr[-2000:]
    assert "embedded relay simulator" in done.stderr
    assert "Traceback" not in done.stderr
