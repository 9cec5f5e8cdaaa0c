"""Shared by the examples: the real relay when QUICKMJ_API_KEY is set, else the simulator.

Not part of quickmj; copy what you need.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import AsyncIterator, Iterator

from anyio.from_thread import start_blocking_portal

from quickmj import AsyncClient, Client, PollPolicy
from quickmj.testing import simulate

# Against the simulator jobs take well under a second: poll it briskly.
SIM_POLL = PollPolicy(interval=0.2, first_poll=0.05, near_done_interval=0.1)
#: The simulated relay: QuickRouter's by default, QUICKMJ_DIALECT=trueai for another one.
DIALECT = os.environ.get("QUICKMJ_DIALECT", "quickrouter")


def _note() -> None:
    print(
        "QUICKMJ_API_KEY is not set: running against the embedded relay simulator", file=sys.stderr
    )


@contextlib.asynccontextmanager
async def async_client() -> AsyncIterator[AsyncClient]:
    if os.environ.get("QUICKMJ_API_KEY"):
        async with AsyncClient(dialect=os.environ.get("QUICKMJ_DIALECT")) as mj:  # type: ignore[arg-type]
            yield mj
        return
    _note()
    async with (
        simulate(dialect=DIALECT) as relay,
        AsyncClient(relay.api_key, base_url=relay.base_url, dialect=DIALECT, poll=SIM_POLL) as mj,
    ):
        yield mj


@contextlib.contextmanager
def sync_client() -> Iterator[Client]:
    if os.environ.get("QUICKMJ_API_KEY"):
        with Client() as mj:
            yield mj
        return
    _note()
    # The simulator is an aiohttp server: give it its own loop thread while we block.
    with (
        start_blocking_portal() as portal,
        portal.wrap_async_context_manager(simulate(dialect=DIALECT)) as relay,
        Client(relay.api_key, base_url=relay.base_url, dialect=DIALECT, poll=SIM_POLL) as mj,
    ):
        yield mj
