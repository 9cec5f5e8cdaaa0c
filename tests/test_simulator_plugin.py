"""The ``quickmj_relay`` pytest fixture, run in a separate pytest (strict asyncio mode)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

USER_TESTS = """
import aiohttp
import pytest

from quickmj.simulator import RunningSimulator, SimulatorConfig


@pytest.mark.asyncio
async def test_default(quickmj_relay: RunningSimulator) -> None:
    async with aiohttp.ClientSession(headers=quickmj_relay.headers) as session:
        url = quickmj_relay.url("/submit/imagine")
        async with session.post(url, json={"prompt": "a cat"}) as resp:
            assert 1 == (await resp.json())["code"]
    assert 1 == quickmj_relay.simulator.counters["POST /submit/imagine"]
    assert "sim-key" == quickmj_relay.api_key


@pytest.mark.asyncio
@pytest.mark.quickmj_relay(api_key="from-marker", max_queue=1)
async def test_marker(quickmj_relay: RunningSimulator) -> None:
    assert "from-marker" == quickmj_relay.api_key
    assert 1 == quickmj_relay.simulator.config.max_queue


class TestOverride:
    @pytest.fixture
    def quickmj_simulator_config(self) -> SimulatorConfig:
        return SimulatorConfig(seed=99)

    @pytest.mark.asyncio
    async def test_config_fixture(self, quickmj_relay: RunningSimulator) -> None:
        assert 99 == quickmj_relay.simulator.config.seed
"""


def test_fixture_works_in_a_users_test_suite(tmp_path: Path) -> None:
    """Loaded by module name (entry point disabled so it is never registered twice)."""
    (tmp_path / "test_user.py").write_text(textwrap.dedent(USER_TESTS), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "QUICKMJ_"))}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:quickmj",
            "-p",
            "quickmj.simulator.pytest_plugin",
            "-p",
            "no:cacheprovider",
            "-W",
            "error",
            "--strict-markers",
            "-o",
            "asyncio_mode=strict",
            "-o",
            "asyncio_default_fixture_loop_scope=function",
            str(tmp_path),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert 0 == done.returncode, done.stdout + done.stderr
    assert "3 passed" in done.stdout


def test_importing_the_simulator_does_not_import_pytest() -> None:
    code = "import sys, quickmj.simulator; print('pytest' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "False" == done.stdout.strip(), done.stderr
