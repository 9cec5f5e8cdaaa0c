"""Client and Job: the blocking facade. Every method delegates to its async twin.

One event loop serves a client for its whole life (``_blocking.SharedLoop``); the
AsyncClient, its connections and its poller live on it, so nothing is used from a
foreign loop. A call runs that loop on the calling thread when no other thread drives it
(no hand-off between threads, the cheap case), and is handed to the driving thread
otherwise; the client's own daemon thread drives whenever no call does. So progress
callbacks run on whichever thread drives the loop (see docs/sync.md). Ctrl-C during a
blocking call cancels that call and leaves the client usable; a call from the loop itself
(a callback) is refused. A thread that already runs an event loop (Jupyter) never drives
this one: its calls are handed over, so the facade works there too.

No logic lives here: each public method is generated from its async twin by ``_blocking``
(coroutines), ``_blocking_iter`` (async iterators), ``_blocking_submit`` (submits, which
return a blocking :class:`Job`) and ``_blocking_cm`` (async context managers).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import enum
import functools
import inspect
import os
import sys
import threading
import warnings
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from types import TracebackType
from typing import TYPE_CHECKING, Any, Concatenate, Generic, ParamSpec, TypeVar

from ._admission import Admission
from ._blocking import SharedLoop
from ._budgets import AdmissionSetting
from ._client import AsyncClient
from ._config import AuthScheme, Dialect, Mode, RetryPolicy, Timeouts
from ._jobs import AsyncJob, Submission
from ._models import SubmitRequest, SubmitResult, Task
from ._poller import Poller, PollPolicy
from ._transport import AsyncTransport
from .errors import ClientClosedError, UsageError

if TYPE_CHECKING:
    import ssl as ssl_module

    from ._aiohttp import BaseConnector, ClientSession, TraceConfig
    from .webhook import WebhookReceiver

__all__ = ("Client", "Job")

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")
A = TypeVar("A")

# Clients that were never closed: their loops are stopped at interpreter exit.
_open_clients: weakref.WeakSet[Client] = weakref.WeakSet()
_open_lock = threading.Lock()


@atexit.register
def _close_forgotten() -> None:
    with _open_lock:
        clients = list(_open_clients)
    for client in clients:
        with contextlib.suppress(Exception):
            client.close()


class _State(enum.Enum):
    UNOPENED = 1
    OPENED = 2
    CLOSED = 3


class _Facade(Generic[A]):
    """What the generated methods need: the async twin and a way onto its loop."""

    _async: A

    def _runner(self) -> Client:
        raise NotImplementedError

    def _call(self, fn: Callable[..., Awaitable[R]], *args: Any, **kwargs: Any) -> R:
        return self._runner().run(fn, *args, **kwargs)


def _twin_signature(fn: Callable[..., Any], returns: Callable[[str], str]) -> inspect.Signature:
    """The async method's signature with the blocking twin's return annotation, so that
    ``help()`` and ``inspect.signature`` show what the blocking method really returns."""
    sig = inspect.signature(fn)
    annotation = sig.return_annotation
    if isinstance(annotation, str):
        sig = sig.replace(return_annotation=returns(annotation))
    return sig


def _blocking(
    fn: Callable[Concatenate[A, P], Awaitable[R]],
) -> Callable[Concatenate[_Facade[A], P], R]:
    """A blocking twin of an async method."""
    name = fn.__name__

    @functools.wraps(fn)
    def method(self: _Facade[A], /, *args: P.args, **kwargs: P.kwargs) -> R:
        bound: Callable[P, Awaitable[R]] = getattr(self._async, name)
        return self._call(bound, *args, **kwargs)

    method.__signature__ = _twin_signature(fn, lambda a: a)  # type: ignore[attr-defined]
    return method


def _blocking_iter(
    fn: Callable[Concatenate[A, P], AsyncIterator[T]],
) -> Callable[Concatenate[_Facade[A], P], Iterator[T]]:
    """A blocking iterator twin of a method that returns an async iterator."""
    name = fn.__name__

    @functools.wraps(fn)
    def method(self: _Facade[A], /, *args: P.args, **kwargs: P.kwargs) -> Iterator[T]:
        return self._runner().iterate(getattr(self._async, name)(*args, **kwargs))

    method.__signature__ = _twin_signature(  # type: ignore[attr-defined]
        fn, lambda a: a.replace("AsyncIterator", "Iterator")
    )
    return method


def _blocking_submit(
    fn: Callable[Concatenate[A, P], Submission],
) -> Callable[Concatenate[_Facade[A], P], Job]:
    """A blocking twin of a submit: sends at once and returns the blocking Job handle."""
    name = fn.__name__

    @functools.wraps(fn)
    def method(self: _Facade[A], /, *args: P.args, **kwargs: P.kwargs) -> Job:
        submission: Submission = getattr(self._async, name)(*args, **kwargs)

        async def send() -> AsyncJob:
            return await submission

        runner = self._runner()
        return Job(runner, runner.run(send))

    method.__signature__ = _twin_signature(fn, lambda _: "Job")  # type: ignore[attr-defined]
    return method


def _blocking_cm(
    fn: Callable[Concatenate[A, P], AbstractAsyncContextManager[T]],
) -> Callable[Concatenate[_Facade[A], P], AbstractContextManager[T]]:
    """A blocking twin of a method that returns an async context manager."""
    name = fn.__name__

    @functools.wraps(fn)
    def method(self: _Facade[A], /, *args: P.args, **kwargs: P.kwargs) -> AbstractContextManager[T]:
        return self._runner().context(getattr(self._async, name)(*args, **kwargs))

    method.__signature__ = _twin_signature(  # type: ignore[attr-defined]
        fn, lambda a: a.replace("AsyncIterator", "AbstractContextManager")
    )
    return method


class Client(_Facade[AsyncClient]):
    """Blocking client with the same methods, arguments, results and errors as AsyncClient.

    Use it as ``with Client() as mj: ...`` or call ``mj.close()``. Safe to share between
    threads. Submits return a blocking :class:`Job` (``mj.imagine(p).wait()``);
    ``as_completed`` and ``watch`` return plain iterators.

    A call runs the client's event loop on the calling thread when no other thread is
    driving it, and is handed to the driving thread otherwise (see docs/sync.md). So
    progress callbacks run on whichever thread drives the loop: the calling thread when
    it is alone, the client's loop thread (``quickmj-loop``) or another calling thread
    under contention or from a thread with a running event loop. Keep them quick and
    thread-safe, and do not call the blocking client from inside them.
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        mode: Mode | None = None,
        dialect: Dialect | None = None,
        auth_scheme: AuthScheme | None = None,
        timeouts: Timeouts | None = None,
        retry: RetryPolicy | None = None,
        poll: PollPolicy | None = None,
        max_connections: int = 64,
        list_chunk_size: int = 100,
        transport: AsyncTransport | None = None,
        proxy: str | None = None,
        trust_env: bool = True,
        ssl: ssl_module.SSLContext | bool | None = None,
        headers: Mapping[str, str] | None = None,
        user_agent: str | None = None,
        session: ClientSession | None = None,
        connector: BaseConnector | None = None,
        trace_configs: Sequence[TraceConfig] = (),
        admission: AdmissionSetting = None,
    ) -> None:
        # Built here so configuration errors surface at once; it opens nothing yet.
        self._attach(
            AsyncClient(
                api_key,
                base_url=base_url,
                mode=mode,
                dialect=dialect,
                auth_scheme=auth_scheme,
                timeouts=timeouts,
                retry=retry,
                poll=poll,
                max_connections=max_connections,
                list_chunk_size=list_chunk_size,
                transport=transport,
                proxy=proxy,
                trust_env=trust_env,
                ssl=ssl,
                headers=headers,
                user_agent=user_agent,
                session=session,
                connector=connector,
                trace_configs=trace_configs,
                admission=admission,
            )
        )

    def _attach(self, client: AsyncClient) -> None:
        """Every field of a Client around ``client``, unopened (``__init__``, and
        ``_ClientView``, whose lifecycle is its original's)."""
        self._async = client
        self._lock = threading.Lock()
        self._state = _State.UNOPENED
        self._shared: SharedLoop | None = None
        self._held: _Held[AsyncClient] | None = None  # the AsyncClient, entered
        self._contexts: set[_Context[Any]] = set()
        self._pid = os.getpid()

    def __repr__(self) -> str:
        return repr(self._async).replace("AsyncClient", "Client", 1)

    def _runner(self) -> Client:
        return self

    # ---- properties (read from the async twin) ----

    @property
    def base_url(self) -> str:
        """The relay's base URL (without ``/mj``)."""
        return self._async.base_url

    @property
    def mode(self) -> Mode | None:
        """The speed mode sent as a path prefix, or None for the key's default."""
        return self._async.mode

    @property
    def dialect(self) -> Dialect:
        """Which relay software this client expects."""
        return self._async.dialect

    @property
    def retry(self) -> RetryPolicy:
        """The retry policy for reads (and the narrow submit cases)."""
        return self._async.retry

    @property
    def timeouts(self) -> Timeouts:
        """The HTTP timeouts and deadlines."""
        return self._async.timeouts

    @property
    def poll_policy(self) -> PollPolicy:
        """How the background poller schedules its reads."""
        return self._async.poll_policy

    @property
    def account(self) -> str:
        """This client's account: a short fingerprint of its key (``/mode`` if set)."""
        return self._async.account

    @property
    def admission(self) -> Admission | None:
        """The admission gate (budgets, limits, counters), or None when it is off."""
        return self._async.admission

    @property
    def poller(self) -> Poller:
        """The background poller (lives on the client's event loop)."""
        return self._async.poller

    @property
    def is_closed(self) -> bool:
        """True once ``close()`` ran."""
        return self._state is _State.CLOSED

    def with_options(
        self, *, timeouts: Timeouts | None = None, retry: RetryPolicy | None = None
    ) -> Client:
        """This client with other HTTP timeouts or another retry policy for some calls.

        The view runs on this client's event loop and shares its connections, poller
        and lifecycle (closing either closes both). See ``AsyncClient.with_options``.

        Args:
            timeouts: HTTP timeouts and deadlines for the view's requests.
            retry: the retry policy for the view's reads.

        Returns:
            A Client view.
        """
        return _ClientView(self._runner(), self._async.with_options(timeouts=timeouts, retry=retry))

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

    def _open(self) -> SharedLoop:
        shared = self._shared  # the common case, without the lock
        if shared is not None and self._state is _State.OPENED and os.getpid() == self._pid:
            return shared
        with self._lock:
            if self._state is _State.CLOSED:
                raise ClientClosedError("the client is closed")
            if os.getpid() != self._pid:
                raise UsageError(
                    "this Client was created in another process (before fork()); "
                    "create a new one in each process"
                )
            if self._shared is not None:
                return self._shared
            shared = SharedLoop()
            # Entered and exited in one task on the loop, as aiohttp needs.
            held = _Held(shared, self._async)
            try:
                shared.call(held.enter)
            except BaseException:
                shared.close()
                raise
            self._shared, self._held = shared, held
            self._state = _State.OPENED
            with _open_lock:
                _open_clients.add(self)
            return shared

    def close(self) -> None:
        """Close the client and stop its loop thread. Idempotent.

        Open ``webhook_receiver()`` blocks are ended first. In a process forked from
        the one that opened the client, this returns at once (the loop thread is not
        there).
        """
        shared = self._shared
        if shared is not None and asyncio.events._get_running_loop() is shared.loop:
            raise UsageError("close() cannot be called from the client's own loop (a callback)")
        with self._lock:
            if self._state is _State.CLOSED:
                return
            self._state = _State.CLOSED
            shared, self._shared = self._shared, None
            held, self._held = self._held, None
            contexts, self._contexts = set(self._contexts), set()
        with _open_lock:
            _open_clients.discard(self)
        if shared is None or held is None or os.getpid() != self._pid:
            return  # never opened, or inherited through fork(): nothing of ours runs here
        for ctx in contexts:
            with contextlib.suppress(Exception):
                ctx.__exit__(None, None, None)
        try:
            shared.call(held.leave, None, None, None)  # closes the AsyncClient
        finally:
            shared.close()  # cancels calls still running, then joins the loop thread

    def __del__(self) -> None:
        if getattr(self, "_shared", None) is None or sys.is_finalizing():
            return
        if os.getpid() != getattr(self, "_pid", None):
            return
        warnings.warn(
            f"{self!r} was not closed; use 'with Client() as mj:' or call close()",
            ResourceWarning,
            stacklevel=2,
        )
        # Never join a thread from __del__: the loop stops from a helper thread.
        with contextlib.suppress(RuntimeError):  # "can't create new thread at shutdown"
            threading.Thread(target=self.close, name="quickmj-cleanup", daemon=True).start()

    # ---- plumbing ----

    def run(self, fn: Callable[..., Awaitable[R]], *args: Any, **kwargs: Any) -> R:
        """Run ``fn(*args, **kwargs)`` on the client's loop and return its result.

        When no other thread drives the loop, this thread runs it until the call is done
        (no hand-off); otherwise the call is handed to the driving thread as a task (see
        ``quickmj._blocking``). Ctrl-C while blocked cancels the call; the client stays
        usable.
        """
        return self._open().call(fn, *args, **kwargs)

    def iterate(self, agen: AsyncIterator[T]) -> Iterator[T]:
        """Drive an async iterator on the client's loop, one item per blocking step."""

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
                more, item = self.run(step)
                if not more:
                    return
                yield item  # type: ignore[misc]
        finally:
            if not self.is_closed:
                # UsageError: dropped on a thread that is driving the loop (collected in a
                # callback); the loop's async-generator hooks close it instead.
                with contextlib.suppress(ClientClosedError, UsageError):
                    self.run(close)

    def context(self, acm: AbstractAsyncContextManager[T]) -> AbstractContextManager[T]:
        """Enter and exit an async context manager in one task on the client's loop."""
        return _Context(self, acm)

    def _context_entered(self, ctx: _Context[Any]) -> None:
        """Internal API (``_Context``): ``close()`` ends ``ctx`` first while it is open."""
        self._contexts.add(ctx)

    def _context_left(self, ctx: _Context[Any]) -> None:
        """Internal API (``_Context``): ``ctx`` ended by itself."""
        self._contexts.discard(ctx)

    # ---- the API: one line per AsyncClient method ----

    imagine = _blocking_submit(AsyncClient.imagine)
    blend = _blocking_submit(AsyncClient.blend)
    describe = _blocking_submit(AsyncClient.describe)
    shorten = _blocking_submit(AsyncClient.shorten)
    action = _blocking_submit(AsyncClient.action)
    modal = _blocking_submit(AsyncClient.modal)
    change = _blocking_submit(AsyncClient.change)
    simple_change = _blocking_submit(AsyncClient.simple_change)
    video = _blocking_submit(AsyncClient.video)
    edits = _blocking_submit(AsyncClient.edits)
    swap_face = _blocking_submit(AsyncClient.swap_face)
    upload_images = _blocking(AsyncClient.upload_images)
    fetch = _blocking(AsyncClient.fetch)
    fetch_many = _blocking(AsyncClient.fetch_many)
    list_tasks = _blocking(AsyncClient.list_tasks)
    recent_tasks = _blocking(AsyncClient.recent_tasks)
    image_seed = _blocking(AsyncClient.image_seed)
    balance = _blocking(AsyncClient.balance)
    cancel = _blocking(AsyncClient.cancel)
    download = _blocking(AsyncClient.download)
    wait = _blocking(AsyncClient.wait)
    as_completed = _blocking_iter(AsyncClient.as_completed)
    watch = _blocking_iter(AsyncClient.watch)
    webhook_receiver = _blocking_cm(AsyncClient.webhook_receiver)

    def use_webhook(self, receiver: WebhookReceiver | None) -> None:
        """Send ``receiver.url`` as notifyHook on every submit (None stops it)."""
        self._async.use_webhook(receiver)


class _Context(AbstractContextManager[T]):
    """An async context manager driven from another thread; close() can end it early."""

    def __init__(self, client: Client, acm: AbstractAsyncContextManager[T]) -> None:
        self._client = client
        self._acm = acm
        self._inner: tuple[SharedLoop, _Held[T]] | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> T:
        shared = self._client._open()
        held = _Held(shared, self._acm)
        value = shared.call(held.enter)
        self._inner = (shared, held)
        self._client._context_entered(self)
        return value

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        with self._lock:
            inner, self._inner = self._inner, None
        self._client._context_left(self)
        if inner is None:
            return None
        shared, held = inner
        return shared.call(held.leave, exc_type, exc, tb)


class _Held(Generic[T]):
    """An async context manager entered and exited in one task on the client's loop (as
    aiohttp's sessions and anyio's cancel scopes need), driven by two blocking calls."""

    def __init__(self, shared: SharedLoop, acm: AbstractAsyncContextManager[T]) -> None:
        self._shared = shared
        self._acm = acm
        self._task: asyncio.Future[bool | None] | None = None
        self._exit: asyncio.Future[_ExcInfo] | None = None

    async def enter(self) -> T:
        loop = asyncio.get_running_loop()
        entered: asyncio.Future[T] = loop.create_future()
        self._exit = loop.create_future()
        # Held by the shared loop (whose thread outlives a client lost at exit), so the
        # task is never garbage while it waits.
        self._task = self._shared.start(self._hold(entered))
        try:
            return await entered
        except BaseException:
            self._task.cancel()  # the caller gave up (Ctrl-C) or entering failed
            raise

    async def _hold(self, entered: asyncio.Future[T]) -> bool | None:
        try:
            value = await self._acm.__aenter__()
        except BaseException as exc:
            if not entered.done():
                if isinstance(exc, asyncio.CancelledError):
                    entered.cancel()
                else:
                    entered.set_exception(exc)
            return None
        if entered.done():  # the caller stopped waiting: leave at once
            return await self._acm.__aexit__(None, None, None)
        entered.set_result(value)
        assert self._exit is not None
        return await self._acm.__aexit__(*await self._exit)

    async def leave(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        if self._task is None or self._exit is None:
            return None
        if not self._exit.done():
            self._exit.set_result((exc_type, exc, tb))
        return await self._task


_ExcInfo = tuple[type[BaseException] | None, BaseException | None, TracebackType | None]


class _ClientView(Client):
    """``Client.with_options()``: its own AsyncClient view, everything run by the original."""

    def __init__(self, root: Client, view: AsyncClient) -> None:
        # Client.__init__ would build an AsyncClient from settings: the view has one.
        # Its own lifecycle fields stay unopened: every lifecycle call goes to ``root``.
        self._attach(view)
        self._root = root

    def __repr__(self) -> str:
        return repr(self._root)

    def _runner(self) -> Client:
        return self._root

    @property
    def is_closed(self) -> bool:
        """True once the original client closed."""
        return self._root.is_closed

    def __enter__(self) -> Client:
        self._root._open()
        return self

    def close(self) -> None:
        """Close the original client (the view has nothing of its own)."""
        self._root.close()

    def run(self, fn: Callable[..., Awaitable[R]], *args: Any, **kwargs: Any) -> R:
        """Run ``fn`` on the original client's loop."""
        return self._root.run(fn, *args, **kwargs)

    def context(self, acm: AbstractAsyncContextManager[T]) -> AbstractContextManager[T]:
        """Enter ``acm`` on the original client's loop."""
        return self._root.context(acm)

    def __del__(self) -> None:
        pass  # the original warns if it is never closed


class Job(_Facade[AsyncJob]):
    """The blocking twin of :class:`~quickmj.AsyncJob`: a job the relay accepted."""

    def __init__(self, client: Client, job: AsyncJob) -> None:
        self._client = client
        self._async = job

    def __repr__(self) -> str:
        return repr(self._async).replace("AsyncJob", "Job", 1)

    def _runner(self) -> Client:
        return self._client

    @property
    def id(self) -> str:
        """The task id."""
        return self._async.id

    @property
    def task_id(self) -> str:
        """The same as ``id``."""
        return self._async.id

    @property
    def account(self) -> str | None:
        """The account that owns the job (its key's fingerprint); never the key."""
        return self._async.account

    @property
    def result(self) -> SubmitResult:
        """The relay's answer to the submit."""
        return self._async.result

    @property
    def route(self) -> str:
        """The route that created the job (``/submit/imagine``, ...)."""
        return self._async.route

    @property
    def request(self) -> SubmitRequest:
        """The wire request that was sent."""
        return self._async.request

    @property
    def request_id(self) -> str | None:
        """The relay's request id for the submit that created the job, when it sent one."""
        return self._async.request_id

    @property
    def response_headers(self) -> dict[str, str]:
        """The headers of the submit's answer (any echo of the key redacted)."""
        return self._async.response_headers

    @property
    def code(self) -> int:
        """The relay's code: 1 accepted, 21 waits for ``modal()``, 22 queued."""
        return self._async.code

    @property
    def description(self) -> str:
        """The relay's text, for humans."""
        return self._async.description

    @property
    def needs_modal(self) -> bool:
        """Code 21: the job waits in MODAL until you call ``modal(...)``."""
        return self._async.needs_modal

    @property
    def queued(self) -> bool | None:
        """True if queued behind others; None where the relay cannot say (new-api)."""
        return self._async.queued

    @property
    def queue_position(self) -> int | None:
        """Jobs ahead of this one, when the relay said."""
        return self._async.queue_position

    @property
    def state(self) -> str | None:
        """The ``state`` string the job was submitted with."""
        return self._async.state

    @property
    def last(self) -> Task | None:
        """The latest state this handle has seen."""
        return self._async.last

    wait = _blocking(AsyncJob.wait)
    watch = _blocking_iter(AsyncJob.watch)
    fetch = _blocking(AsyncJob.fetch)
    download = _blocking(AsyncJob.download)
    image_seed = _blocking(AsyncJob.image_seed)
    cancel = _blocking(AsyncJob.cancel)
    action = _blocking_submit(AsyncJob.action)
    modal = _blocking_submit(AsyncJob.modal)


# A forked child inherits Client objects whose loop thread does not exist there.
if hasattr(os, "register_at_fork"):

    def _forget_in_child() -> None:
        global _open_lock
        _open_lock = threading.Lock()  # the parent may have held it at fork time
        _open_clients.clear()

    os.register_at_fork(after_in_child=_forget_in_child)
