"""The README's examples run as written: async and sync against a live simulator, and the
testing example as a user's own pytest suite."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from quickmj.testing import SimulatorConfig, simulate

README = Path(__file__).resolve().parent.parent / "README.md"


def section_code(heading: str) -> str:
    """The first ```python block after ``## <heading>``."""
    text = README.read_text(encoding="utf-8")
    section = text.split(f"## {heading}\n", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, heading
    return match.group(1)


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("QUICKMJ_", "PYTEST_"))}


@pytest.mark.parametrize("heading", ["Async example", "Sync example"])
async def test_readme_example_runs(heading: str, tmp_path: Path) -> None:
    """Each example exits 0 with only QUICKMJ_API_KEY / QUICKMJ_BASE_URL set."""
    script = tmp_path / "example.py"
    script.write_text(section_code(heading), encoding="utf-8")
    async with simulate(SimulatorConfig(run_seconds=0.1)) as relay:
        env: dict[str, Any] = _env()
        env.update({"QUICKMJ_API_KEY": relay.api_key, "QUICKMJ_BASE_URL": relay.base_url})
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(script), cwd=tmp_path, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert 0 == proc.returncode, err.decode()[-2000:]
    assert "SUCCESS" in out.decode()


def test_readme_testing_example_passes_as_a_users_suite(tmp_path: Path) -> None:
    """The "Testing your own code" block passes under pytest-asyncio's strict mode."""
    (tmp_path / "test_readme_user.py").write_text(section_code("Testing your own code"), "utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error",
         "-o", "asyncio_mode=strict", "-o", "asyncio_default_fixture_loop_scope=function",
         str(tmp_path)],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert 0 == done.returncode, done.stdout + done.stderr
    assert "2 passed" in done.stdout
