"""Shared test setup."""

from __future__ import annotations

import inspect
from typing import Any
from unittest import mock

import aiohttp
import aioresponses.core

# aioresponses 0.7.9 builds aiohttp.ClientResponse objects without the `stream_writer`
# argument that aiohttp 3.14 requires. Until it catches up, hand it a subclass that
# supplies a stand-in writer (only the response side is mocked, nothing is written).
if "stream_writer" in inspect.signature(aiohttp.ClientResponse.__init__).parameters:

    class _CompatClientResponse(aiohttp.ClientResponse):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("stream_writer", mock.Mock(output_size=0))
            super().__init__(*args, **kwargs)

    aioresponses.core.ClientResponse = _CompatClientResponse  # type: ignore[misc]
