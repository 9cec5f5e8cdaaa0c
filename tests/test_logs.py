"""QUICKMJ_LOG: quickmj's log lines on stderr for the library and the CLI, never the key."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest

from quickmj import _logs

KEY = "sk-log-secret-0123456789"


@pytest.fixture
def fresh_logging() -> Iterator[None]:
    """Undo what configure() does to the quickmj logger and the once-per-process flag."""
    logger = logging.getLogger("quickmj")
    level, handlers, done = logger.level, list(logger.handlers), _logs._done
    _logs._done = False
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)
    _logs._done = done


def _ours(logger: logging.Logger) -> list[logging.Handler]:
    return [h for h in logger.handlers if h.get_name() == _logs._HANDLER]


@pytest.mark.usefixtures("fresh_logging")
def test_env_level_adds_one_stderr_handler_once() -> None:
    assert _logs.configure_from_env({"QUICKMJ_LOG": " Info "}) == "INFO"
    logger = logging.getLogger("quickmj")
    assert logger.level == logging.INFO and len(_ours(logger)) == 1
    _logs._done = False
    assert _logs.configure_from_env({"QUICKMJ_LOG": "debug"}) == "DEBUG"
    assert len(_ours(logger)) == 1  # not a second handler
    assert _logs.configure_from_env({"QUICKMJ_LOG": "error"}) is None  # once per process


@pytest.mark.usefixtures("fresh_logging")
def test_unset_or_empty_changes_nothing() -> None:
    logger = logging.getLogger("quickmj")
    before = (logger.level, list(logger.handlers))
    assert _logs.configure_from_env({}) is None
    assert _logs.configure_from_env({"QUICKMJ_LOG": "  "}) is None
    assert (logger.level, list(logger.handlers)) == before


@pytest.mark.usefixtures("fresh_logging")
def test_an_unknown_level_warns_and_is_ignored() -> None:
    logger = logging.getLogger("quickmj")
    with pytest.warns(UserWarning, match="QUICKMJ_LOG='loud' is not one of"):
        assert _logs.configure_from_env({"QUICKMJ_LOG": "loud"}) is None
    assert not _ours(logger)


@pytest.mark.usefixtures("fresh_logging")
def test_configure_writes_to_the_given_stream() -> None:
    stream = io.StringIO()
    _logs.configure("WARNING", stream)
    logging.getLogger("quickmj.test").warning("hello %s", "there")
    logging.getLogger("quickmj.test").info("not shown")
    assert "WARNING quickmj.test: hello there" in stream.getvalue()
    assert "not shown" not in stream.getvalue()


def test_a_library_user_sees_retries_at_info_without_the_key() -> None:
    """A script that never touches logging: QUICKMJ_LOG=info shows the retry, not the key."""
    script = textwrap.dedent(
        f"""
        import asyncio
        from quickmj import AsyncClient, RetryPolicy
        from quickmj.testing import MockTransport
        from quickmj import Response

        calls = []

        def handler(request):
            calls.append(request)
            if len(calls) == 1:
                return Response(502, content=b"bad gateway {KEY}")
            return Response(200, json={{"id": "1", "status": "SUCCESS"}})

        async def main():
            retry = RetryPolicy(backoff=0.01, max_backoff=0.01)
            async with AsyncClient({KEY!r}, retry=retry, transport=MockTransport(handler)) as mj:
                print((await mj.fetch("1")).status.value)

        asyncio.run(main())
        """
    )
    env = {"QUICKMJ_LOG": "info", "PATH": "", "PYTHONPATH": ":".join(sys.path)}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "SUCCESS"
    assert "INFO quickmj" in done.stderr and "retrying" in done.stderr, done.stderr
    assert "attempt 2 of" in done.stderr
    assert KEY not in done.stderr + done.stdout
