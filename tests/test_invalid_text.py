"""Text that UTF-8 cannot carry (a lone surrogate, from a bad decode or a JSON ``\\ud800``)
is the caller's error, found before anything is sent: an InvalidInputError, never a bare
UnicodeEncodeError from deep in the request."""

from __future__ import annotations

import pytest

from quickmj import AsyncClient, InvalidInputError
from quickmj._http import _json_bytes
from quickmj.testing import simulate


@pytest.mark.parametrize("dialect", ["midjourney-proxy", "quickrouter", "trueai"])
async def test_a_prompt_with_a_lone_surrogate_is_refused_before_sending(dialect: str) -> None:
    """imagine() with "a \\ud800 cat": InvalidInputError saying where, nothing created."""
    async with simulate(dialect=dialect) as relay, AsyncClient(
        relay.api_key, base_url=relay.base_url, dialect=dialect
    ) as mj:  # fmt: skip
        with pytest.raises(InvalidInputError, match=r"character 3 is a lone surrogate \(U\+D800\)"):
            await mj.imagine("a \ud800 cat")
        task = await mj.imagine("a \U0001f600 cat")  # a valid pair is fine
    assert ["a \U0001f600 cat"] == [s.prompt for s in relay.simulator.submissions]
    assert task.id


def test_any_field_with_a_lone_surrogate_is_named() -> None:
    """Whatever field holds it (state, a nested list), the error names it, not its text."""
    with pytest.raises(InvalidInputError, match=r"^state is not valid text") as info:
        _json_bytes({"prompt": "ok", "state": "secret-ish \udc80 text"})
    assert "secret-ish" not in str(info.value)
    with pytest.raises(InvalidInputError, match=r"^base64Array is not valid text"):
        _json_bytes({"base64Array": ["ok", "\ud800"]})
    assert b'{"p": "\\u00e9"}' != _json_bytes({"p": "\u00e9"})  # raw UTF-8, as before
