"""Client: the blocking facade. Every method delegates to AsyncClient on a private loop.

One event loop runs in one daemon thread (an anyio blocking portal) for the client's life;
the AsyncClient, its aiohttp session and its poller live there, so a session is never used
from a foreign loop. Calls from any thread are marshalled onto that loop, which also makes
the facade usable where the caller's thread already runs a loop (Jupyter): nothing here
calls ``asyncio.run``.

No logic lives here: each public method is generated from its AsyncClient twin by
``_blocking`` / ``_blocking_iter`` (signatures, overloads and docstrings carry over).
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import enum
import functools
import os
import threading
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, TypeVar

from anyio.from_thread import BlockingPortal, start_blocking_portal

from ._client import AsyncClient
from ._config import AuthScheme, Mode, RetryPolicy, Timeouts
from ._poller import PollPolicy
from .errors import ClientClosedError, UsageError

__all__ = ("Client",)

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

# Portals of clients that were never closed: shut down at interpreter exit.
_open_stacks: set[contextlib.ExitStack] = set()
_open_lock = threading.Lock()


@atexit.register
def _close_forgotten() -> None:
    with _open_lock:
        stacks = list(_open_stacks)
        _open_stacks.clear()
    for stack in stacks:
        with contextlib.suppress(Exception):
            stack.close()


async def _as_coroutine(fn: Callable[..., Awaitable[R]], args: Any, kwargs: Any) -> R:
    return await fn(*args, **kwargs)


class _State(enum.Enum):
    UNOPENED = 1
    OPENED = 2
    CLOSED = 3


def _blocking(
    fn: Callable[Concatenate[AsyncClient, P], Awaitable[R]],
) -> Callable[Concatenate[Client, P], R]:
    """Make a blocking twin of an AsyncClient coroutine method."""
    name = fn.__name__

    @functools.wraps(fn)
    def method(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> R:
        bound: Callable[P, Awaitable[R]] = getattr(self._async, name)
        return self._call(bound, *args, **kwargs)

    return method


def _blocking_iter(
    fn: Callable[Concatenate[AsyncClient, P], AsyncIterator[T]],
) -> Callable[Concatenate[Client, P], Iterator[T]]:
    """Make a blocking iterator twin of an AsyncClient async-generator method."""
    name = fn.__name__

    @functools.wraps(fn)
    def method(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> Iterator[T]:
        return self._iterate(getattr(self._async, name)(*args, **kwargs))

    return method


def _blocking_cm(
    fn: Callable[Concatenate[AsyncClient, P], AbstractAsyncContextManager[T]],
) -> Callable[Concatenate[Client, P], AbstractContextManager[T]]:
    """Make a blocking twin of an AsyncClient method that returns an async context manager."""
    name = fn.__name__

    @functools.wraps(fn)
    def method(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> AbstractContextManager[T]:
        self._open()
        assert self._portal is not None
        # Entered and exited in one task on the client's loop.
        return self._portal.wrap_async_context_manager(getattr(self._async, name)(*args, **kwargs))

    return method


class Client:
    """Blocking client with the same methods, arguments, results and errors as AsyncClient.

    Use it as ``with Client() as mj: ...`` or call ``mj.close()``. Safe to share between
    threads. ``as_completed`` and ``watch`` return plain iterators that yield as results
    arrive. Progress callbacks run on the client's loop thread: keep them quick, and do
    not call the client from inside them.
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        mode: Mode | None = None,
        auth_scheme: AuthScheme = "bearer",
        timeouts: Timeouts | None = None,
        retry: RetryPolicy | None = None,
        max_connections: int = 64,
        list_chunk_size: int = 100,
        poll: PollPolicy | None = None,
    ) -> None:
        # Built here so configuration errors surface at once; it opens nothing yet.
        self._async = AsyncClient(
            api_key,
            base_url=base_url,
            mode=mode,
            auth_scheme=auth_scheme,
            timeouts=timeouts,
            retry=retry,
            max_connections=max_connections,
            list_chunk_size=list_chunk_size,
            poll=poll,
        )
        self._lock = threading.Lock()
        self._state = _State.UNOPENED
        self._stack: contextlib.ExitStack | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._portal: BlockingPortal | None = None
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    def __repr__(self) -> str:
        return repr(self._async).replace("AsyncClient", "Client", 1)

    @property
    def base_url(self) -> str:
        return self._async.base_url

    @property
    def mode(self) -> Mode | None:
        return self._async.mode

    @property
    def is_closed(self) -> bool:
        return self._state is _State.CLOSED

    # ---- lifecycle ----

    def __enter__(self) -> Client:
        self._open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _open(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._state is _State.CLOSED:
                raise ClientClosedError("the client is closed")
            if os.getpid() != self._pid:
                raise UsageError("a Client cannot be used across fork(); create one per process")
            if self._loop is not None:
                return self._loop
            with contextlib.ExitStack() as stack:
                portal = stack.enter_context(start_blocking_portal("asyncio"))
                # Entered and exited in one task on the portal's loop, as aiohttp needs.
                stack.enter_context(portal.wrap_async_context_manager(self._async))
                self._thread = portal.call(threading.current_thread)
                loop = portal.call(asyncio.get_running_loop)
                self._stack = stack.pop_all()
            self._loop = loop
            self._portal = portal
            self._state = _State.OPENED
            with _open_lock:
                _open_stacks.add(self._stack)
            return loop

    def close(self) -> None:
        """Close the session and stop the loop thread. Idempotent."""
        if self._thread is not None and threading.current_thread() is self._thread:
            raise UsageError("close() cannot be called from the client's own loop (a callback)")
        with self._lock:
            if self._state is _State.CLOSED:
                return
            self._state = _State.CLOSED
            stack, self._stack, self._loop, self._portal = self._stack, None, None, None
        if stack is not None:
            with _open_lock:
                _open_stacks.discard(stack)
            stack.close()  # closes the AsyncClient on its loop, then joins the thread

    def __del__(self) -> None:
        stack = getattr(self, "_stack", None)
        if stack is None or getattr(self, "_state", None) is _State.CLOSED:
            return
        warnings.warn(
            f"{self!r} was not closed; use 'with Client() as mj:' or call close()",
            ResourceWarning,
            stacklevel=2,
        )
        with _open_lock:
            _open_stacks.discard(stack)
        # Never join a thread from __del__: shut the portal down from a helper thread.
        threading.Thread(target=stack.close, name="quickmj-cleanup", daemon=True).start()

    # ---- plumbing ----

    def _call(self, fn: Callable[..., Awaitable[R]], *args: Any, **kwargs: Any) -> R:
        loop = self._open()
        if threading.current_thread() is self._thread:
            raise UsageError(
                "the blocking Client was called from its own event loop (from a callback?); "
                "use the AsyncClient there"
            )
        # run_coroutine_threadsafe is the lightest hop onto the loop; the portal only owns
        # the loop's lifetime. Cancelling the concurrent future cancels the task.
        future = asyncio.run_coroutine_threadsafe(_as_coroutine(fn, args, kwargs), loop)
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            # Only the loop's shutdown cancels it: close() ran in another thread meanwhile.
            if self.is_closed:
                raise ClientClosedError("the client was closed during the call") from None
            raise
        except BaseException:
            # Ctrl-C (or any interruption) cancels the coroutine; the client stays usable.
            future.cancel()
            raise

    def _iterate(self, agen: AsyncIterator[T]) -> Iterator[T]:
        async def step() -> tuple[bool, T | None]:
            try:
                return True, await agen.__anext__()
            except StopAsyncIteration:
                return False, None

        async def close() -> None:
            aclose = getattr(agen, "aclose", None)
            if aclose is not None:
                await aclose()

        try:
            while True:
                more, item = self._call(step)
                if not more:
                    return
                yield item  # type: ignore[misc]
        finally:
            if not self.is_closed:
                with contextlib.suppress(ClientClosedError):
                    self._call(close)

    # ---- the API: one line per AsyncClient method ----

    imagine = _blocking(AsyncClient.imagine)
    blend = _blocking(AsyncClient.blend)
    describe = _blocking(AsyncClient.describe)
    shorten = _blocking(AsyncClient.shorten)
    action = _blocking(AsyncClient.action)
    modal = _blocking(AsyncClient.modal)
    fetch = _blocking(AsyncClient.fetch)
    fetch_many = _blocking(AsyncClient.fetch_many)
    list_tasks = _blocking(AsyncClient.list_tasks)
    image_seed = _blocking(AsyncClient.image_seed)
    download = _blocking(AsyncClient.download)
    wait = _blocking(AsyncClient.wait)
    as_completed = _blocking_iter(AsyncClient.as_completed)
    watch = _blocking_iter(AsyncClient.watch)
    webhook_receiver = _blocking_cm(AsyncClient.webhook_receiver)
