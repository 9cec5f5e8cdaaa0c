"""The ``quickmj_relay`` pytest fixture in a user's own suite, and what loading it costs."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

USER_TESTS = """
import aiohttp
import pytest

from quickmj.testing import RunningSimulator, SimulatorConfig


@pytest.mark.asyncio
async def test_default(quickmj_relay: RunningSimulator) -> None:
    async with aiohttp.ClientSession(headers=quickmj_relay.headers) as session:
        url = quickmj_relay.url("/submit/imagine")
        async with session.post(url, json={"prompt": "a cat"}) as resp:
            assert 1 == (await resp.json(content_type=None))["code"]
    assert 1 == quickmj_relay.simulator.counters["POST /submit/imagine"]
    assert "quickrouter" == quickmj_relay.dialect


@pytest.mark.asyncio
@pytest.mark.quickmj_relay(dialect="trueai", api_key="from-marker", concurrency=1, max_queue=1)
async def test_marker(quickmj_relay: RunningSimulator) -> None:
    assert "from-marker" == quickmj_relay.api_key
    assert "trueai" == quickmj_relay.dialect
    assert 1 == quickmj_relay.simulator.config.max_queue


class TestOverride:
    @pytest.fixture
    def quickmj_simulator_config(self) -> SimulatorConfig:
        return SimulatorConfig(seed=99)

    @pytest.mark.asyncio
    async def test_config_fixture(self, quickmj_relay: RunningSimulator) -> None:
        assert 99 == quickmj_relay.simulator.config.seed
"""


def _pytest(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "QUICKMJ_"))}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error",
         "--strict-markers", "-o", "asyncio_mode=strict",
         "-o", "asyncio_default_fixture_loop_scope=function", *args, str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_fixture_works_in_a_users_test_suite(tmp_path: Path) -> None:
    """The installed entry point provides the fixture under pytest-asyncio's strict mode."""
    (tmp_path / "test_user.py").write_text(textwrap.dedent(USER_TESTS), encoding="utf-8")
    done = _pytest(tmp_path)
    assert 0 == done.returncode, done.stdout + done.stderr
    assert "3 passed" in done.stdout


def test_loading_the_plugin_costs_almost_nothing() -> None:
    """Importing the plugin imports neither aiohttp, the simulator nor the SDK's client."""
    code = (
        "import sys, time; t = time.perf_counter(); import quickmj.testing.pytest_plugin; "
        "print(sorted(m for m in ('aiohttp', 'quickmj.testing._sim', 'quickmj._client') "
        "if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "[]" == done.stdout.strip(), done.stderr


def test_importing_the_simulator_does_not_import_pytest() -> None:
    """quickmj.testing is usable outside pytest."""
    code = "import sys, quickmj.testing as t; t.simulate; print('pytest' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "False" == done.stdout.strip(), done.stderr
