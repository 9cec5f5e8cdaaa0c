"""Blocking callers and the event loop: file work run off the loop, and the loop that the
blocking ``Client``'s callers share (:class:`SharedLoop`).

How a blocking call reaches the loop, and what it costs
--------------------------------------------------------
Handing every call to a loop thread costs two thread wake-ups and their CPU (the loop
thread's, then the caller's): about +50-80 µs per ``fetch`` on a 2-core VM, 1.3x the
AsyncClient. So the loop is not owned by a thread but by whoever holds its *driver* role:

* **inline** - a call that finds the loop free takes the role and runs the loop itself
  (``run_forever`` until its task is done), like ``asyncio.run`` would, but on the one
  shared loop: no hand-off, no wake-up. Everything else due on the loop (the poller,
  admission, other threads' calls, webhook receivers) runs meanwhile on this thread.
* **the loop thread** - after a call, the loop thread takes the role back once no call
  has driven the loop for ``HOLD`` (2 ms; it looks every 2 to 16 ms while calls keep
  coming, so background work waits at most that long once they stop); and at once when
  calls are waiting for it. While it drives, a call from a thread that
  has not contended lately *claims* the loop (one hand-off) and then drives inline.
* **hop** - a call that finds another driver (callers contend), or that comes from a
  thread already running an event loop (Jupyter), or from the main thread while a custom
  SIGINT handler is set, is handed to the current driver as a task, as before. Once calls
  contend, every call hops until ``QUIET`` (50 ms) passes without contention, so the loop
  thread takes the loop and keeps it: a calling thread that drove would run the others'
  calls and then hand the loop back (the first version did: 1.6x the AsyncClient from 8
  threads, against 1.3x now). Calls handed over before the loop runs next share one
  wake-up of it (one self-pipe write, which also releases the GIL).

What this changes for users: progress callbacks run on whichever thread drives the loop
(usually the calling thread itself; under contention the loop thread or another calling
thread), and while the main thread drives, Ctrl-C is caught by a temporary SIGINT handler
(as ``asyncio.Runner`` does) that cancels the call, which then raises KeyboardInterrupt,
instead of interrupting whatever the loop was running.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import Any, Generic, TypeVar

from .errors import ClientClosedError, UsageError

__all__ = ("HOLD", "SharedLoop", "off_loop")

T = TypeVar("T")
R = TypeVar("R")

HOLD = 0.002  # seconds the loop thread leaves the loop to callers after an inline call
_POLL_MAX = 0.016  # the loop thread's longest look-away while calls keep coming
QUIET = 0.05  # seconds without contention before calls drive inline again
_BG = -1  # the driver id of the loop thread (thread idents are positive)


async def off_loop(fn: Callable[[], T]) -> T:
    """``fn()`` in the running loop's default executor.

    Not ``anyio.to_thread``: asyncio joins its default executor's threads when the loop
    closes, while anyio's worker threads are only told to stop, so a closed blocking
    ``Client`` could leave one behind for a moment.
    """
    return await asyncio.get_running_loop().run_in_executor(None, fn)


# The C functions under ``signal`` (CPython's ``_signal``, which ``signal`` imports), without
# its enum conversions: 2 µs a call, and a guarded call makes three.
_signal_c: Any = sys.modules.get("_signal", signal)
_getsignal: Callable[[int], object] = _signal_c.getsignal
_setsignal: Callable[[int, Any], object] = _signal_c.signal


def _sigint_guard() -> bool | None:
    """True: the default handler (KeyboardInterrupt), guarded while driving; None: no
    Python handler runs on SIGINT (ignored or the OS default); False: a custom handler."""
    handler = _getsignal(signal.SIGINT)
    if handler is signal.default_int_handler:
        return True
    if handler == signal.SIG_IGN or handler == signal.SIG_DFL:
        return None
    return False


class _Sigint:
    """The main thread's SIGINT handler during a blocking call (what ``asyncio.Runner``
    does): the first Ctrl-C cancels the call's task between two steps of the loop, and the
    call then raises KeyboardInterrupt; a second one raises wherever the thread is.

    While the thread takes or gives back the loop (``defer``), a Ctrl-C is only counted:
    raising there could leave the loop with a driver that is gone.
    """

    __slots__ = ("count", "defer", "loop", "task")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.count = 0
        self.defer = True
        self.task: asyncio.Future[Any] | None = None

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        task = self.task
        if self.count == 1 and task is not None and not task.done():
            task.cancel()
            self.loop.call_soon_threadsafe(_nothing)  # wake the selector
        elif not self.defer:
            raise KeyboardInterrupt()

    def watch(self, task: asyncio.Future[Any]) -> None:
        """The call runs as ``task``: a Ctrl-C counted before cancels it now."""
        self.task = task
        if self.count:
            task.cancel()
        self.defer = False

    def allow(self) -> None:
        """The call was handed over: Ctrl-C raises from now on (also one counted before)."""
        self.defer = False
        if self.count:
            self.count = 0
            raise KeyboardInterrupt()

    def raise_if_missed(self) -> None:
        """After the handler is restored: a Ctrl-C counted before the call started (it
        failed to, or never did) raises now. One that came while the call ran has cancelled
        it (KeyboardInterrupt) or came too late: the call's result is kept, as
        ``asyncio.Runner`` keeps it."""
        if self.count and self.task is None and self.defer:
            raise KeyboardInterrupt()


class _Claim:
    """A caller waiting for the loop thread to hand the loop over."""

    __slots__ = ("granted", "ident", "lock")

    def __init__(self, ident: int) -> None:
        self.ident = ident
        self.granted = False
        self.lock = threading.Lock()
        self.lock.acquire()  # released by the loop thread when it stops driving


class _Hop(Generic[R]):
    """One call handed to the loop's current driver as a task."""

    __slots__ = ("args", "done", "dropped", "fn", "kwargs", "owner", "task")

    def __init__(
        self, owner: SharedLoop, fn: Callable[..., Awaitable[R]], args: Any, kwargs: Any
    ) -> None:
        self.owner = owner
        self.fn, self.args, self.kwargs = fn, args, kwargs
        self.task: asyncio.Future[R] | None = None
        self.dropped = False  # its caller left (Ctrl-C) before the task started
        self.done = threading.Lock()
        self.done.acquire()  # released when the task is done

    def start(self) -> None:
        """On the driving thread: start the task (or record why it could not start)."""
        loop = self.owner.loop
        try:
            if self.owner.closing or self.dropped:  # never started
                raise asyncio.CancelledError()
            self.task = self.owner.start(self.fn(*self.args, **self.kwargs))
        except BaseException as exc:
            failed: asyncio.Future[R] = loop.create_future()
            if isinstance(exc, asyncio.CancelledError):
                failed.cancel()
            else:
                failed.set_exception(exc)
            self.task = failed
            self.finished(failed)
            return
        self.task.add_done_callback(self.finished)

    def finished(self, _: object) -> None:
        self.owner.hop_done()
        self.done.release()

    def cancel(self) -> None:
        self.dropped = True
        if self.task is not None:
            self.task.cancel()

    def fail_closed(self) -> None:
        """The loop closed before the task could start: the call sees a cancelled task."""
        failed: asyncio.Future[R] = asyncio.Future(loop=self.owner.loop)
        failed.cancel()
        self.task = failed
        self.finished(failed)


class SharedLoop:
    """One event loop for a blocking client, driven by its callers when they can and by
    its own daemon thread otherwise (see the module docstring)."""

    def __init__(self, name: str = "quickmj-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self._cv = threading.Condition(threading.Lock())
        self._driver: int | None = None  # who runs the loop: a thread ident, _BG or nobody
        self._drives = 0  # inline drives so far: tells the loop thread a long one from many
        self._pending = 0  # hopped calls not finished yet
        self._released = 0.0  # when an inline caller last stopped driving
        self._contended = -QUIET  # when a call last had to hop because another drove
        self._claim: _Claim | None = None
        self._closing = False
        self._bg_idle = False  # the loop thread waits for a caller's release, untimed
        self._tasks: set[asyncio.Future[Any]] = set()  # calls' tasks, cancelled by close
        self._finishing = False
        # Calls handed over and not started yet. One wake-up of the loop (one write to its
        # self-pipe, which also releases the GIL) serves all that arrive before it runs.
        self._inbox: list[_Hop[Any]] = []
        self._inbox_armed = False
        self.thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self.thread.start()

    # ---- callers ----

    def call(self, fn: Callable[..., Awaitable[R]], *args: Any, **kwargs: Any) -> R:
        """``fn(*args, **kwargs)`` run to completion on the loop; its result or exception.

        Raises:
            UsageError: called from this loop (a callback).
            ClientClosedError: the loop is closed or closing.
        """
        running = asyncio.events._get_running_loop()
        if running is self.loop:
            raise UsageError(
                "the blocking Client was called from its own event loop (from a callback?); "
                "use the AsyncClient there"
            )
        me = threading.get_ident()
        # Only the main thread runs signal handlers (asked each time: after fork() from
        # another thread, the child's main thread is that thread).
        main = me == threading.main_thread().ident
        guard = _sigint_guard() if running is None and main else None
        if guard is not True:
            return self._call(me, running is None and guard is None, None, fn, args, kwargs)
        sigint = _Sigint(self.loop)
        previous = _setsignal(signal.SIGINT, sigint)
        try:
            return self._call(me, True, sigint, fn, args, kwargs)
        finally:
            _setsignal(signal.SIGINT, previous)
            sigint.raise_if_missed()

    def _call(
        self,
        me: int,
        inline: bool,
        sigint: _Sigint | None,
        fn: Callable[..., Awaitable[R]],
        args: Any,
        kwargs: Any,
    ) -> R:
        how = self._enter(me, inline=inline)
        if how is None:
            return self._hop(fn, args, kwargs, sigint)
        if isinstance(how, _Claim):
            self._wait_for(how)
        return self._drive(me, sigint, fn, args, kwargs)

    def _enter(self, me: int, *, inline: bool) -> _Claim | bool | None:
        """Under the lock: True to drive at once, a claim to wait for, None to hop."""
        with self._cv:
            if self._closing:
                raise ClientClosedError("the client is closed")
            now = time.monotonic()
            # After calls contended, they keep hopping to the loop thread until QUIET
            # passes without contention: a caller that drove would serve the others'
            # calls and then hand the loop back, two extra hand-offs each time.
            if inline and not self._pending and now - self._contended >= QUIET:
                if self._driver is None:
                    self._driver = me
                    self._drives += 1
                    return True
                if self._driver == _BG and self._claim is None:
                    self._claim = _Claim(me)
                    return self._claim
            if inline:
                self._contended = now
            self._pending += 1
            if self._driver is None:
                self._cv.notify_all()  # the loop thread takes over at once
            return None

    def _wait_for(self, claim: _Claim) -> None:
        """Ask the loop thread to stop driving and wait until this thread drives."""
        try:
            self.loop.call_soon_threadsafe(self._yield)
            claim.lock.acquire()  # interruptible: Ctrl-C lands here
        except BaseException as exc:
            with self._cv:
                if self._claim is claim:
                    self._claim = None
                elif claim.granted:
                    self._release()
            if isinstance(exc, RuntimeError):  # the loop closed meanwhile
                raise ClientClosedError("the client is closed") from exc
            raise
        if not claim.granted:  # the loop thread stopped driving to close
            raise ClientClosedError("the client is closed")

    def _yield(self) -> None:
        """On the loop thread, while it drives: stop so that the claimant can drive."""
        if self._claim is not None and threading.current_thread() is self.thread:
            self.loop.stop()

    def _drive(
        self,
        me: int,
        sigint: _Sigint | None,
        fn: Callable[..., Awaitable[R]],
        args: Any,
        kwargs: Any,
    ) -> R:
        """Run the loop on this thread until ``fn``'s task is done, then give the role back."""
        loop = self.loop
        task: asyncio.Future[R] | None = None

        def stop(_: object) -> None:
            if threading.get_ident() == me:
                loop.stop()

        try:
            task = self.start(fn(*args, **kwargs))
            task.add_done_callback(stop)
            if sigint is not None:
                sigint.watch(task)
            try:
                while not task.done():
                    loop.run_forever()
            finally:
                if sigint is not None:
                    sigint.defer = True  # a Ctrl-C now must not skip the release below
                task.remove_done_callback(stop)
        except BaseException:
            if task is not None and not task.done():
                task.cancel()  # it finishes on the next driver
            raise
        finally:
            with self._cv:
                self._release()
        if sigint is not None and sigint.count and task.cancelled():
            sigint.count = 0
            raise KeyboardInterrupt()
        return self._outcome(task)

    def _release(self) -> None:
        """Under the lock: this caller stops driving."""
        self._driver = None
        self._released = time.monotonic()
        if self._pending or self._bg_idle or self._closing:
            self._cv.notify_all()

    def _hop(
        self, fn: Callable[..., Awaitable[R]], args: Any, kwargs: Any, sigint: _Sigint | None
    ) -> R:
        hop: _Hop[R] = _Hop(self, fn, args, kwargs)
        with self._cv:
            self._inbox.append(hop)
            wake, self._inbox_armed = not self._inbox_armed, True
        if wake:
            try:
                self.loop.call_soon_threadsafe(self._drain)
            except RuntimeError:  # the loop closed meanwhile: no call queued can start
                with self._cv:
                    orphans, self._inbox, self._inbox_armed = self._inbox, [], False
                for orphan in orphans:
                    orphan.fail_closed()
        try:
            if sigint is not None:
                sigint.allow()  # Ctrl-C raises from here on, as without the guard
            hop.done.acquire()  # interruptible: Ctrl-C lands here
        except BaseException:
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(hop.cancel)
            raise
        assert hop.task is not None
        return self._outcome(hop.task)

    def _drain(self) -> None:
        """On the driving thread: start the calls handed over since the last wake-up."""
        with self._cv:
            hops, self._inbox, self._inbox_armed = self._inbox, [], False
        for hop in hops:
            hop.start()

    def hop_done(self) -> None:
        with self._cv:
            self._pending -= 1

    def start(self, coro: Awaitable[R]) -> asyncio.Future[R]:
        """On the driving thread: ``coro`` as a task that close() cancels."""
        task = asyncio.ensure_future(coro, loop=self.loop)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    @property
    def closing(self) -> bool:
        """True once close() started."""
        return self._closing

    def _outcome(self, task: asyncio.Future[R]) -> R:
        if task.cancelled() and self._closing:
            raise ClientClosedError("the client was closed during the call")
        return task.result()

    # ---- the loop thread ----

    def _serve(self) -> None:
        loop = self.loop
        try:
            while self._take():
                try:
                    loop.run_forever()
                finally:
                    self._give_back()
        finally:
            self._finish()

    def _take(self) -> bool:
        """Wait until the loop thread should drive; False when it is closing (it then
        holds the loop for good).

        While callers drive, it looks now and then (every HOLD, then less often up to
        _POLL_MAX while calls keep coming): short calls one after another then cost no
        wake-up each, and background work waits at most that long once they stop. When it
        finds the same call still driving, it sleeps until that call ends (one wake-up
        for a long call).
        """
        seen = -1
        poll = HOLD
        with self._cv:
            while True:
                if self._driver is None:
                    wait = self._released + HOLD - time.monotonic()
                    if self._closing or self._pending or wait <= 0:
                        self._driver = _BG
                        return not self._closing
                    self._cv.wait(wait)
                elif self._drives != seen:
                    seen = self._drives
                    self._cv.wait(poll)
                    poll = min(2 * poll, _POLL_MAX)
                else:
                    self._bg_idle = True
                    self._cv.wait()
                    self._bg_idle = False

    def _give_back(self) -> None:
        with self._cv:
            claim, self._claim = self._claim, None
            self._driver = None
            if claim is not None:
                if not self._closing:
                    claim.granted = True
                    self._driver = claim.ident
                claim.lock.release()

    def _finish(self) -> None:
        """On the loop thread, closing: cancel what is left, then close the loop."""
        loop = self.loop
        self._finishing = True
        try:
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            while True:  # a call handed over just before close() must hear of it
                with self._cv:
                    if not self._pending:
                        break
                loop.run_until_complete(asyncio.sleep(0.001))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            loop.close()

    def close(self) -> None:
        """Cancel the calls still running, stop the loop thread and close the loop.

        Must not be called from the loop (a callback) or from a forked child.
        """
        with self._cv:
            if self._closing:
                already = True
            else:
                already, self._closing = False, True
                self._cv.notify_all()
        if not already:
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(self._cancel_all)
        if not sys.is_finalizing():
            self.thread.join()

    def _cancel_all(self) -> None:
        """On the driving thread: cancel every call; stop the loop thread if it drives."""
        for task in list(self._tasks):
            task.cancel()
        if threading.current_thread() is self.thread and not self._finishing:
            self.loop.stop()


def _nothing() -> None:
    return None
