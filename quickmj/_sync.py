"""Client and Job: the blocking facade. Every method delegates to its async twin.

One event loop runs in one daemon thread (an anyio blocking portal) for the client's
life; the AsyncClient, its connections and its poller live there, so nothing is used
from a foreign loop. Calls from any thread are handed to that loop as tasks (a lean hop,
see ``Client.run``): Ctrl-C during a blocking call cancels that call and leaves the
client usable; a call from the loop thread itself is refused.
Nothing here calls ``asyncio.run``, so it also works where a loop already runs (Jupyter).

No logic lives here: each public method is generated from its async twin by ``_blocking``
(coroutines), ``_blocking_iter`` (async iterators), ``_blocking_submit`` (submits, which
return a blocking :class:`Job`) and ``_blocking_cm`` (async context managers).
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
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

import anyio
from anyio.from_thread import BlockingPortal

from ._admission import Admission, AdmissionSetting
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


@contextlib.contextmanager
def _loop_thread() -> Iterator[BlockingPortal]:
    """An event loop in a daemon thread, served through a portal (anyio's
    ``start_blocking_portal``), except that it never waits for a loop that cannot answer:
    in a process forked from this one (the loop's thread does not exist there) and at
    interpreter shutdown (daemon threads no longer run), that would hang for ever."""
    pid = os.getpid()
    started: concurrent.futures.Future[BlockingPortal] = concurrent.futures.Future()

    async def serve() -> None:
        async with BlockingPortal() as portal:
            started.set_result(portal)
            await portal.sleep_until_stopped()

    def run() -> None:
        try:
            anyio.run(serve)
        except BaseException as exc:
            if not started.done():
                started.set_exception(exc)

    thread = threading.Thread(target=run, name="quickmj-loop", daemon=True)
    thread.start()
    portal = started.result()
    try:
        yield portal
    finally:
        if os.getpid() == pid and not sys.is_finalizing():
            # The client is closed by now: a call still running is stuck in user code (a
            # slow progress callback): it is cancelled, and its caller told the client closed.
            with contextlib.suppress(RuntimeError):
                portal.call(portal.stop, True)
            thread.join()


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
    ``as_completed`` and ``watch`` return plain iterators. Progress callbacks run on the
    client's loop thread: keep them quick, and do not call the client from inside them.
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
        self._async = AsyncClient(
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
        self._lock = threading.Lock()
        self._state = _State.UNOPENED
        self._stack: contextlib.ExitStack | None = None
        self._portal: BlockingPortal | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
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
        """The background poller (lives on the client's loop thread)."""
        return self._async.poller

    @property
    def is_closed(self) -> bool:
        """True once ``close()`` ran."""
        return self._state is _State.CLOSED

    def with_options(
        self, *, timeouts: Timeouts | None = None, retry: RetryPolicy | None = None
    ) -> Client:
        """This client with other HTTP timeouts or another retry policy for some calls.

        The view runs on this client's loop thread and shares its connections, poller
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

    def _open(self) -> BlockingPortal:
        with self._lock:
            if self._state is _State.CLOSED:
                raise ClientClosedError("the client is closed")
            if os.getpid() != self._pid:
                raise UsageError(
                    "this Client was created in another process (before fork()); "
                    "create a new one in each process"
                )
            if self._portal is not None:
                return self._portal
            with contextlib.ExitStack() as stack:
                portal = stack.enter_context(_loop_thread())
                # Entered and exited in one task on the portal's loop, as aiohttp needs.
                stack.enter_context(portal.wrap_async_context_manager(self._async))
                self._thread = portal.call(threading.current_thread)
                self._loop = portal.call(asyncio.get_running_loop)
                self._stack = stack.pop_all()
            self._portal = portal
            self._state = _State.OPENED
            with _open_lock:
                _open_clients.add(self)
            return portal

    def close(self) -> None:
        """Close the client and stop its loop thread. Idempotent.

        Open ``webhook_receiver()`` blocks are ended first. In a process forked from
        the one that opened the client, this returns at once (the loop thread is not
        there).
        """
        if self._thread is not None and threading.current_thread() is self._thread:
            raise UsageError("close() cannot be called from the client's own loop (a callback)")
        with self._lock:
            if self._state is _State.CLOSED:
                return
            self._state = _State.CLOSED
            stack, self._stack, self._portal = self._stack, None, None
            self._loop = None
            contexts, self._contexts = set(self._contexts), set()
        with _open_lock:
            _open_clients.discard(self)
        if stack is None or os.getpid() != self._pid:
            return  # never opened, or inherited through fork(): nothing of ours runs here
        for ctx in contexts:
            with contextlib.suppress(Exception):
                ctx.__exit__(None, None, None)
        stack.close()  # closes the AsyncClient on its loop, then joins the thread

    def __del__(self) -> None:
        if getattr(self, "_stack", None) is None or sys.is_finalizing():
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

        The hop is a task started with ``call_soon_threadsafe`` and a lock released by its
        done callback: about 20 µs over a bare cross-thread round trip (the portal's own
        ``start_task_soon``, futures wrapped in futures, measured slower). Ctrl-C while
        blocked cancels the task; the client stays usable.
        """
        self._open()
        loop = self._loop
        if threading.current_thread() is self._thread or loop is None:
            raise UsageError(
                "the blocking Client was called from its own event loop (from a callback?); "
                "use the AsyncClient there"
            )
        call: _Call[R] = _Call(fn, args, kwargs)
        try:
            loop.call_soon_threadsafe(call.start, loop)
        except RuntimeError as exc:  # the loop stopped: close() ran meanwhile
            raise ClientClosedError("the client is closed") from exc
        try:
            call.done.acquire()  # interruptible: Ctrl-C lands here
        except BaseException:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(call.cancel)
            raise
        return call.outcome(self.is_closed)

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
                with contextlib.suppress(ClientClosedError):
                    self.run(close)

    def context(self, acm: AbstractAsyncContextManager[T]) -> AbstractContextManager[T]:
        """Enter and exit an async context manager in one task on the client's loop."""
        return _Context(self, acm)

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


class _Call(Generic[R]):
    """One blocking call's coroutine, run as a task on the client's loop."""

    __slots__ = ("args", "done", "fn", "kwargs", "task")

    def __init__(self, fn: Callable[..., Awaitable[R]], args: Any, kwargs: Any) -> None:
        self.fn, self.args, self.kwargs = fn, args, kwargs
        self.task: asyncio.Future[R] | None = None
        self.done = threading.Lock()
        self.done.acquire()  # released by the task's done callback

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """On the loop thread: start the task (or record why it could not start)."""
        try:
            self.task = asyncio.ensure_future(self.fn(*self.args, **self.kwargs), loop=loop)
        except BaseException as exc:
            failed: asyncio.Future[R] = loop.create_future()
            failed.set_exception(exc)
            self.task = failed
            self.done.release()
            return
        self.task.add_done_callback(lambda _: self.done.release())

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()

    def outcome(self, closed: bool) -> R:
        """The task's result, or its exception raised here."""
        assert self.task is not None
        if self.task.cancelled():
            if closed:
                raise ClientClosedError("the client was closed during the call")
            raise concurrent.futures.CancelledError()
        return self.task.result()


class _Context(AbstractContextManager[T]):
    """An async context manager driven from another thread; close() can end it early."""

    def __init__(self, client: Client, acm: AbstractAsyncContextManager[T]) -> None:
        self._client = client
        self._acm = acm
        self._inner: AbstractContextManager[T] | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> T:
        portal = self._client._open()
        self._inner = portal.wrap_async_context_manager(self._acm)
        value = self._inner.__enter__()
        self._client._contexts.add(self)
        return value

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        with self._lock:
            inner, self._inner = self._inner, None
        self._client._contexts.discard(self)
        return None if inner is None else inner.__exit__(exc_type, exc, tb)


class _ClientView(Client):
    """``Client.with_options()``: its own AsyncClient view, everything run by the original."""

    def __init__(self, root: Client, view: AsyncClient) -> None:
        # Not Client.__init__: the view owns no loop, thread or state of its own.
        self._root = root
        self._async = view

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
