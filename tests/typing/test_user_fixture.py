# pyright: strict
"""A user's pytest test with the plugin's ``quickmj_relay`` fixture: checked by
``mypy --strict`` and ``pyright --strict`` with no ignores (``.ci/run``), and run by the
suite (it is a real test)."""

from __future__ import annotations

import pytest

from quickmj import AsyncClient, Task
from quickmj.testing import MockTransport, Request, Response, RunningSimulator


@pytest.mark.quickmj_relay(dialect="trueai")
async def test_a_fox(quickmj_relay: RunningSimulator) -> None:
    async with AsyncClient(
        quickmj_relay.api_key,
        base_url=quickmj_relay.base_url,
        dialect=quickmj_relay.dialect,
        auth_scheme=quickmj_relay.auth_scheme,
    ) as mj:
        task: Task = await mj.imagine("a fox").wait()
        assert task.is_success
        assert quickmj_relay.simulator.counters["POST /submit/imagine"] == 1


def handler(request: Request) -> Response | None:
    if request.path.endswith("/submit/imagine"):
        return Response(200, json={"code": 1, "description": "ok", "result": "7"})
    if request.path.endswith("/task/7/fetch"):
        return Response(200, json={"id": "7", "status": "SUCCESS", "progress": "100%"})
    return None  # the list route wait() polls is answered from /fetch


async def test_with_a_mock() -> None:
    async with AsyncClient("key", transport=MockTransport(handler)) as mj:
        assert (await mj.imagine("a fox").wait(timeout=30)).is_success
