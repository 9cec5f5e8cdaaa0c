"""The simulators' answers against recorded, real-shaped samples of each server.

The samples in ``tests/fixtures/dialects/<dialect>/`` were written from protocol.md §8.1,
the servers' sources and their docs (each names its source), not from the simulator or
the SDK. Answers are compared field by field: the same keys (in the same order where the
serializer's order is fixed), the same JSON types, the same null / "" / 0 conventions and
the same values once ids, times, hashes, hosts and durations are blanked out.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from quickmj.testing._sim import DIALECTS, simulate

FIXTURES = Path(__file__).parent / "fixtures" / "dialects"

#: The prompt each dialect's samples use (scenarios submit the same one).
PROMPTS = {
    "quickrouter": ("pig --v 6.1", "a failword pig"),
    "midjourney-proxy": ("猫猫", "a failword"),
    "trueai": ("pig --v 6.1", "a badword pig"),
}
#: The progress each dialect's "running" sample shows.
RUNNING = {"quickrouter": 46, "midjourney-proxy": 46, "trueai": 32}
#: Dialects whose serializer writes object keys in a fixed order we reproduce.
ORDERED = {"quickrouter", "trueai"}
#: Values that are opaque per server (random or derived): only their type and emptiness.
OPAQUE = {"userId", "nonce", "clientIp", "seed"}
#: URL-valued keys: both must be URLs (or both empty / null); no further comparison.
URLS = {"imageUrl", "url", "proxyUrl", "videoUrl", "thumbnail"}
_BLANKS = [
    (re.compile(r"\(request id: [^)]*\)"), "(request id: <rid>)"),
    (re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"), "<uuid>"),
    (re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"), "<datetime>"),
    (re.compile(r"^\d+\.\d\d s$"), "<duration>"),
    (re.compile(r"\d{6,}"), "<n>"),
]
_RELAY_IMAGE = re.compile(r"^https?://[^/]+/mj/image/\d{16}(\?rand=\d+)?$")


def blank(text: str) -> str:
    for pattern, replacement in _BLANKS:
        text = pattern.sub(replacement, text)
    return text


def compare(expected: Any, actual: Any, path: str, *, ordered: bool, dialect: str) -> None:
    """Assert ``actual`` has ``expected``'s shape and conventions (see module docstring)."""
    key = path.rsplit(".", 1)[-1]
    if expected is None:
        assert actual is None, f"{path}: expected null, got {actual!r}"
    elif isinstance(expected, dict):
        assert isinstance(actual, dict), f"{path}: expected an object, got {actual!r}"
        if ordered:
            assert list(expected) == list(actual), f"{path}: keys {list(actual)}"
        else:
            assert set(expected) == set(actual), f"{path}: keys {sorted(actual)}"
        for name, value in expected.items():
            compare(value, actual[name], f"{path}.{name}", ordered=ordered, dialect=dialect)
    elif isinstance(expected, list):
        assert isinstance(actual, list), f"{path}: expected an array, got {actual!r}"
        assert len(expected) == len(actual), f"{path}: {len(actual)} items"
        for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
            compare(e, a, f"{path}[{i}]", ordered=ordered, dialect=dialect)
    elif isinstance(expected, bool):
        assert expected is actual, f"{path}: expected {expected!r}, got {actual!r}"
    elif isinstance(expected, int):
        assert type(actual) is int, f"{path}: expected a number, got {actual!r}"
        assert (expected == 0) == (actual == 0), f"{path}: expected {expected}, got {actual}"
        if key in ("code", "numberOfQueues", "flags", "type", "style"):
            assert expected == actual, f"{path}: expected {expected}, got {actual}"
    else:
        assert isinstance(actual, str), f"{path}: expected a string, got {actual!r}"
        assert (expected == "") == (actual == ""), f"{path}: expected {expected!r}, got {actual!r}"
        if key in OPAQUE or expected == "":
            return
        if key in URLS:
            assert actual.startswith(("http://", "https://")), f"{path}: {actual!r}"
            if dialect == "quickrouter" and key == "imageUrl":
                e, a = _RELAY_IMAGE.match(expected), _RELAY_IMAGE.match(actual)
                assert e and a, f"{path}: {actual!r}"
                assert bool(e.group(1)) == bool(a.group(1)), f"{path}: ?rand differs: {actual!r}"
            return
        assert blank(expected) == blank(actual), f"{path}: expected {expected!r}, got {actual!r}"


def load(dialect: str, name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / dialect / f"{name}.json").read_text(encoding="utf-8"))


async def check(dialect: str, name: str, resp: aiohttp.ClientResponse) -> None:
    sample = load(dialect, name)
    raw = await resp.read()
    assert sample["status"] == resp.status, (name, raw)
    assert sample["content_type"] == resp.headers.get("Content-Type"), name
    if "text" in sample:
        assert sample["text"].encode() == raw
        return
    compare(sample["body"], json.loads(raw), name, ordered=dialect in ORDERED, dialect=dialect)


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_answers_match_the_recorded_samples(dialect: str) -> None:
    """Submit, fresh, running, success, failure, unknown fetch and auth failure."""
    now = [0.0]
    prompt, failing = PROMPTS[dialect]
    config: dict[str, Any] = {
        "dialect": dialect,
        "clock": lambda: now[0],
        "progress_steps": (0, RUNNING[dialect]),
        "queue_seconds": 1.0,
        "run_seconds": 40.0,
        "refresh_interval": 15.0,  # quickrouter's relay copies lag behind (others ignore it)
    }
    async with simulate(**config) as relay, aiohttp.ClientSession(headers=relay.headers) as s:
        sim = relay.simulator

        async def fetch(task_id: str) -> aiohttp.ClientResponse:
            return await s.get(relay.url(f"/task/{task_id}/fetch"))

        async with s.post(relay.url("/submit/imagine"), json={"prompt": prompt}) as resp:
            task_id = json.loads(await resp.read())["result"]
            await check(dialect, "submit_imagine", resp)
        async with await fetch(task_id) as resp:
            await check(dialect, "task_fresh", resp)
        sim.advance(30)  # a refresh tick; the run (1 s to 41 s) is past its halfway step
        async with await fetch(task_id) as resp:
            await check(dialect, "task_running", resp)
        sim.advance(15)
        async with await fetch(task_id) as resp:
            await check(dialect, "task_success", resp)
        async with s.post(relay.url("/submit/imagine"), json={"prompt": failing}) as resp:
            failed_id = json.loads(await resp.read())["result"]
        sim.advance(15)
        async with await fetch(failed_id) as resp:
            await check(dialect, "task_failure", resp)
        async with await fetch("1730000000000000") as resp:
            await check(dialect, "fetch_unknown", resp)
        url = relay.url(f"/task/{task_id}/fetch")
        async with aiohttp.ClientSession() as anonymous, anonymous.get(url) as resp:
            await check(dialect, "auth_failure", resp)


def test_samples_exist_for_every_dialect() -> None:
    names = {
        "submit_imagine",
        "task_fresh",
        "task_running",
        "task_success",
        "task_failure",
        "fetch_unknown",
        "auth_failure",
    }
    for dialect in DIALECTS:
        found = {p.stem for p in (FIXTURES / dialect).glob("*.json")}
        assert names <= found, dialect
        for name in found:
            assert load(dialect, name)["source"]


def test_the_simulator_imports_nothing_of_the_sdk() -> None:
    """quickmj.testing._sim stands alone: no models, converter or errors of the SDK."""
    code = (
        "import sys, quickmj.testing._sim as sim\n"
        "sim.Simulator(sim.SimulatorConfig()).submit_imagine('x')\n"
        "bad = sorted(m for m in sys.modules if m.startswith('quickmj.')"
        " and not m.startswith(('quickmj.testing', 'quickmj._version')))\n"
        "print(bad, 'pytest' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert "[] False" == out
