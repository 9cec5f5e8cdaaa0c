"""The README's async and sync examples run as written against a live simulator."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from quickmj.simulator import SimulatorConfig, simulate

README = Path(__file__).resolve().parent.parent / "README.md"


def section_code(heading: str) -> str:
    """The first ```python block after ``## <heading>``."""
    text = README.read_text(encoding="utf-8")
    section = text.split(f"## {heading}\n", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, heading
    return match.group(1)


@pytest.mark.parametrize("heading", ["Async example", "Sync example"])
async def test_readme_example_runs(heading: str, tmp_path: Path) -> None:
    """Each example exits 0 with only QUICKMJ_API_KEY / QUICKMJ_BASE_URL set."""
    script = tmp_path / "example.py"
    script.write_text(section_code(heading), encoding="utf-8")
    async with simulate(SimulatorConfig(run_seconds=0.1)) as relay:
        env: dict[str, Any] = {k: v for k, v in os.environ.items() if not k.startswith("QUICKMJ_")}
        env.update({"QUICKMJ_API_KEY": relay.api_key, "QUICKMJ_BASE_URL": relay.base_url})
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(script),
            cwd=tmp_path,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert 0 == proc.returncode, err.decode()[-2000:]
    assert "SUCCESS" in out.decode()
