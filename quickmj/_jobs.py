"""Job handles: what a submit gives back, and the calls that act on its job.

A submit method returns a :class:`Submission` at once. Awaiting it sends the request
(once: awaiting again returns the same job) and gives an :class:`AsyncJob`, the handle of
the job the relay created: its id from the first moment, the relay's answer (``code``,
``needs_modal``, ``queued``, ``queue_position``) and the calls that act on it. The common
case stays one line::

    task = await mj.imagine("a fox").wait()       # submit, then wait for the result
    job = await mj.imagine("a fox")               # or keep the handle
    print(job.id); task = await job.wait(timeout=600)

Why this shape (see the README's "Jobs" section): a ``wait=True`` flag needed a pair of
overloads per method to type its two results, silently ignored ``timeout``/``on_progress``
without it, and lost the id of a paid job when a wait timed out or was cancelled. Here
the id lives in the handle before any waiting starts; a timeout names it; a cancelled
wait leaves the job in the handle (and in the log, and in a note on the exception).

Sending is shielded from cancellation: once a submit starts, it runs to its answer even
if the awaiting code is cancelled, so the outcome (the task id, or why there is none) is
always recorded in ``Submission.job`` / ``Submission.error`` and logged.

Waiting (``wait``, ``as_completed``, ``watch``) lives in ``_waiting``; a handle's
``wait()`` and ``watch()`` call it.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Generator,
    Mapping,
)
from pathlib import Path
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any, Protocol

from ._models import Button, SubmitRequest, SubmitResult, Task
from ._poller import Poller
from ._protocol import NEW_API_DIALECTS
from ._types import ProgressCallback, TaskRef
from ._waiting import wait, watch
from .errors import (
    InvalidInputError,
    TaskNeedsModalError,
    UsageError,
)

if TYPE_CHECKING:
    from ._admission import SendPhase
    from ._budgets import Lease
    from ._types import ImageInput

__all__ = (
    "AsyncJob",
    "Submission",
    "task_id_of",
)

logger: logging.Logger = logging.getLogger("quickmj")

# Submits in flight: asyncio keeps only weak references to tasks, and a submit must run to
# its answer even when nobody awaits it any more.
_SENDING: set[asyncio.Task[Any]] = set()


class _Client(Protocol):
    """What a job handle needs from its client (AsyncClient)."""

    @property
    def dialect(self) -> str:
        """The client's dialect (``AsyncClient.dialect``)."""
        ...

    @property
    def poller(self) -> Poller:
        """The client's shared poller."""
        ...

    async def fetch(self, task: TaskRef) -> Task:
        """``AsyncClient.fetch``."""
        ...

    async def download(
        self,
        task: TaskRef,
        dest: str | os.PathLike[str],
        *,
        index: int | None = None,
        filename: str | None = None,
    ) -> Path:
        """``AsyncClient.download``."""
        ...

    def action(
        self,
        task: TaskRef,
        button: Button | str,
        *,
        choose_same_channel: bool = False,
        notify_hook: str | None = None,
        state: str | None = None,
    ) -> Submission:
        """``AsyncClient.action``."""
        ...

    def modal(
        self,
        task: TaskRef,
        *,
        prompt: str | None = None,
        mask: ImageInput | None = None,
        notify_hook: str | None = None,
        state: str | None = None,
    ) -> Submission:
        """``AsyncClient.modal``."""
        ...

    async def image_seed(self, task: TaskRef) -> str:
        """``AsyncClient.image_seed``."""
        ...

    async def cancel(self, task: TaskRef) -> None:
        """``AsyncClient.cancel``."""
        ...


def _current_task() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:  # no running loop: driven by hand
        return None


def task_id_of(ref: TaskRef) -> str:
    """The id behind a TaskRef, validated as a non-empty string."""
    if isinstance(ref, str):
        value = ref.strip()
    elif isinstance(ref, SubmitResult):
        value = ref.task_id
    else:
        found = getattr(ref, "id", None)
        if not isinstance(found, str):
            raise InvalidInputError(
                f"expected a task id, Task or job handle, got {type(ref).__name__}"
            )
        value = found
    if not value:
        raise InvalidInputError("empty task id")
    return value


# ---- submissions and handles ----


class Submission(Coroutine[Any, Any, "AsyncJob"]):
    """A submit: await it for the :class:`AsyncJob`, or ``await s.wait()`` for the Task.

    The request is sent when first awaited, exactly once. ``job`` holds the handle once
    the relay answered (also if the awaiting code was cancelled meanwhile) and ``error``
    the failure, if the submit failed.

    A Submission is a coroutine too, so ``asyncio.create_task(mj.imagine(p))`` and
    ``TaskGroup.create_task(...)`` take it; it can still be awaited any number of times
    (each await gives the same job; the request goes out once).
    """

    __slots__ = (
        "_awaiters",
        "_closed",
        "_drivers",
        "_phase",
        "_send",
        "_task",
        "error",
        "job",
        "what",
    )

    def __init__(
        self,
        send: Callable[[], Awaitable[AsyncJob]],
        what: str,
        *,
        phase: SendPhase | None = None,
    ) -> None:
        self._send = send
        # With admission: whether the submit still waits for a slot (see _abandon).
        self._phase = phase
        self._awaiters = 0
        self._task: asyncio.Task[AsyncJob | None] | None = None
        # The coroutines send()/throw() drive, one per asyncio Task running this Submission
        # (create_task, gather, wait_for, each again): each is an await of the one submit.
        # Made on a task's first send, so an unused Submission leaves no "never awaited"
        # coroutine behind.
        self._drivers: dict[asyncio.Task[Any] | None, Coroutine[Any, Any, AsyncJob]] = {}
        self._closed = False  # close()d, or thrown into before sending: nothing to warn about
        self.what: str = what
        """What is submitted, for logs and reprs (``"POST /submit/imagine"``)."""
        self.job: AsyncJob | None = None
        """The job's handle, once the relay accepted the submit (None before)."""
        self.error: BaseException | None = None
        """Why the submit failed, if it did (None while pending and on success)."""

    def __repr__(self) -> str:
        state = f"job={self.job.id}" if self.job else ("sent" if self._task else "not sent")
        return f"<Submission {self.what} {state}>"

    def __await__(self) -> Generator[Any, None, AsyncJob]:
        return self._result().__await__()

    # ---- the coroutine protocol (asyncio.create_task, TaskGroup.create_task) ----

    def _driven(self) -> Coroutine[Any, Any, AsyncJob]:
        driver = _current_task()
        coro = self._drivers.get(driver)
        if coro is None:
            if self._closed:
                raise RuntimeError(f"cannot reuse a closed submission ({self.what})")
            coro = self._drivers[driver] = self._result()
        return coro

    def _step(self, advance: Callable[[Coroutine[Any, Any, AsyncJob]], Any]) -> Any:
        driver = _current_task()
        coro = self._driven()
        try:
            return advance(coro)
        except BaseException:  # StopIteration (the job) included: this driver is done
            self._drivers.pop(driver, None)
            raise

    def send(self, value: Any, /) -> Any:
        """Advance the submission as a coroutine (what an asyncio Task calls).

        Args:
            value: the value to send in (None to start or resume).

        Returns:
            What the submission waits on next; StopIteration carries the AsyncJob.
        """
        return self._step(lambda coro: coro.send(value))

    def throw(
        self,
        typ: type[BaseException] | BaseException,
        val: object = None,
        tb: TracebackType | None = None,
        /,
    ) -> Any:
        """Raise an exception inside the running submission (a Task's cancel).

        Args:
            typ: the exception (or its class).
            val: the exception's value (the old three-argument form).
            tb: a traceback for it (the old three-argument form).

        Returns:
            What the submission waits on next, if it handled the exception.
        """
        unsent = self._task is None
        try:
            if val is None and tb is None:
                return self._step(lambda coro: coro.throw(typ))
            # The old three-argument form, passed on as given.
            return self._step(lambda coro: coro.throw(typ, val, tb))  # type: ignore[arg-type]
        finally:
            if unsent and self._task is None:
                self._closed = True  # thrown into before sending (a task cancelled at once)

    # What inspect.getcoroutinestate() reads (anyio asks it of the tasks it cancels): the
    # state of the coroutines driving this Submission, or "closed" when none does.

    @property
    def cr_running(self) -> bool:
        """Whether a task is executing the submission right now."""
        return any(getattr(coro, "cr_running", False) for coro in self._drivers.values())

    @property
    def cr_suspended(self) -> bool:
        """Whether a task's run of the submission is suspended at an await."""
        return any(getattr(coro, "cr_suspended", False) for coro in self._drivers.values())

    @property
    def cr_frame(self) -> FrameType | None:
        """The frame of a run in progress (None before the first send and after the end)."""
        frames = (getattr(coro, "cr_frame", None) for coro in self._drivers.values())
        return next((frame for frame in frames if frame is not None), None)

    @property
    def cr_await(self) -> Any:
        """What a run in progress waits on (None when none is)."""
        waits = (getattr(coro, "cr_await", None) for coro in self._drivers.values())
        return next((what for what in waits if what is not None), None)

    def close(self) -> None:
        """Close the coroutine; a submit already on its way still runs to its answer."""
        self._closed = True
        drivers, self._drivers = list(self._drivers.values()), {}
        for coro in drivers:
            coro.close()

    async def _result(self) -> AsyncJob:
        if self._task is None:
            # A task of its own, shielded: cancelling the caller never cuts a submit
            # whose answer (the paid job's id) is on its way.
            self._task = asyncio.get_running_loop().create_task(self._run(), name=self.what)
            _SENDING.add(self._task)
            self._task.add_done_callback(_SENDING.discard)
        self._awaiters += 1
        try:
            job = await asyncio.shield(self._task)
        except asyncio.CancelledError:
            self._abandon()
            raise
        finally:
            self._awaiters -= 1
        if job is None:
            assert self.error is not None
            raise self.error
        return job

    def _abandon(self) -> None:
        """The only awaiter was cancelled while the submit still waited for a slot of the
        account's budget: nothing was sent, so the submit is dropped with it."""
        phase, task = self._phase, self._task
        if phase is not None and not phase.on_wire and task is not None and self._awaiters == 1:
            task.cancel()

    def _use_slot(self, lease: Lease) -> None:
        """Internal API (``AccountPool``): send with this slot, reserved beforehand
        (``AccountPool.reserve``), once; only before the submission is awaited."""
        if self._phase is None or self._task is not None or self._phase.lease is not None:
            raise UsageError(f"{self.what}: a reserved slot fits only an unsent submission")
        self._phase.lease = lease

    async def _run(self) -> AsyncJob | None:
        # The task itself never fails: its outcome is kept here for every awaiter, and
        # nothing is left "never retrieved" when the awaiting code was cancelled.
        try:
            self.job = await self._send()
        except Exception as exc:
            self.error = exc
            return None
        return self.job

    async def wait(
        self, *, timeout: float | None = None, on_progress: ProgressCallback | None = None
    ) -> Task:
        """Submit (if not yet sent), then wait for the job to finish.

        The same as ``(await submission).wait(...)``: see :meth:`AsyncJob.wait`. If the
        wait times out or is cancelled, the job stays in ``self.job`` (and its id in the
        error and the log): nothing paid for is lost.

        Args:
            timeout: seconds to wait for the result (None: no limit). The job itself goes
                on after a timeout.
            on_progress: called with the Task on each real change (status, progress,
                result); may be a coroutine function.

        Returns:
            The finished Task (status SUCCESS).

        Raises:
            SubmitRejectedError: the relay refused the submit (nothing was created).
            SubmitOutcomeUnknownError: the submit's answer was lost; the job may exist.
            TaskFailedError: the job ended in FAILURE or CANCEL (``.task`` has it).
            TaskTimeoutError: ``timeout`` passed first.
            TaskNeedsModalError: the job waits for :meth:`AsyncJob.modal`.
        """
        job = await self
        return await job.wait(timeout=timeout, on_progress=on_progress)

    def __del__(self) -> None:
        try:
            unsent = self._task is None and not self._closed
        except AttributeError:  # __init__ never ran (bad arguments): nothing was made
            return
        if unsent:
            import warnings

            warnings.warn(
                f"{self.what} was never awaited: nothing was submitted "
                "(write 'await mj.imagine(...)' or 'await mj.imagine(...).wait()')",
                RuntimeWarning,
                stacklevel=2,
            )


class AsyncJob:
    """The handle of a job the relay accepted: its id, the relay's answer, and actions.

    ``id`` is known from the moment the relay answered; ``result`` is that answer
    (a SubmitResult). ``last`` is the latest state this handle has seen.
    """

    __slots__ = (
        "_client",
        "account",
        "id",
        "last",
        "request",
        "request_id",
        "response_headers",
        "result",
        "route",
    )

    def __init__(
        self,
        client: _Client,
        route: str,
        request: SubmitRequest,
        result: SubmitResult,
        *,
        request_id: str | None = None,
        response_headers: Mapping[str, str] | None = None,
    ) -> None:
        self._client = client
        self.id: str = result.task_id
        """The task id the relay gave the job."""
        self.route: str = route
        """The submit route that created the job (``"/submit/imagine"``)."""
        self.request: SubmitRequest = request
        """The wire request that was sent (one of the ``quickmj._models`` request classes)."""
        self.result: SubmitResult = result
        """The relay's answer to the submit (``code``, ``description``, the task id)."""
        self.request_id: str | None = request_id
        """The relay's request id for the submit that created the job (``X-Request-Id``,
        ``X-Oneapi-Request-Id``), when its answer had one: quote it to the relay's operator."""
        self.response_headers: dict[str, str] = dict(response_headers or {})
        """The headers of that answer (any echo of the key redacted)."""
        self.last: Task | None = None
        """The latest state of the task this handle has seen (None before any read)."""
        self.account: str | None = getattr(client, "account", None)
        """The account that owns the job (its key's fingerprint, ``/mode`` if one was set):
        every later call for the job goes to it. Never the key itself."""

    def __repr__(self) -> str:
        extra = " needs_modal" if self.needs_modal else ""
        return f"<AsyncJob {self.id} {self.route}{extra}>"

    # ---- the relay's answer ----

    @property
    def task_id(self) -> str:
        """The same as ``id``."""
        return self.id

    @property
    def code(self) -> int:
        """The relay's code: 1 accepted, 21 waits for ``modal()``, 22 queued."""
        return self.result.code

    @property
    def description(self) -> str:
        """The relay's text (often Chinese), for humans; do not parse it."""
        return self.result.description

    @property
    def needs_modal(self) -> bool:
        """Code 21: the job waits in MODAL until you call ``modal(prompt=..., mask=...)``."""
        return self.result.needs_modal

    @property
    def queued(self) -> bool | None:
        """True if the relay queued the job behind others; None where it cannot say.

        new-api relays (QuickRouter) rewrite "queued" (22) to "accepted" (1), so a
        code 1 from them means accepted, queued or not: None.
        """
        if self.result.queued:
            return True
        return None if self._client.dialect in NEW_API_DIALECTS else False

    @property
    def queue_position(self) -> int | None:
        """Jobs ahead of this one, when the relay said (code 22)."""
        return self.result.queue_position

    @property
    def state(self) -> str | None:
        """The ``state`` string this job was submitted with (echoed on its Task)."""
        return getattr(self.request, "state", None)

    # ---- acting on the job ----

    async def wait(
        self, *, timeout: float | None = None, on_progress: ProgressCallback | None = None
    ) -> Task:
        """Wait until the job finishes; returns its Task (status SUCCESS).

        Waiting goes through the client's shared poller (many waits cost a few batched
        reads), and the final Task is also kept in ``last``.

        Args:
            timeout: seconds to wait (None: no limit). The job itself goes on after a
                timeout: wait again later.
            on_progress: called with the Task on each real change (status, progress,
                result); may be a coroutine function.

        Returns:
            The finished Task (status SUCCESS).

        Raises:
            TaskFailedError: the job ended in FAILURE or CANCEL (``.task`` has it).
            TaskTimeoutError: ``timeout`` passed first (``.last_task`` is the last state).
            TaskStalledError: the job stopped changing for ``PollPolicy.stall_after``
                (a TaskTimeoutError: the relay has probably lost it).
            TaskNeedsModalError: the job waits for :meth:`modal` (code 21, or a read
                shows it in MODAL).
            TaskNotFoundError: the relay does not know the id.
            AuthenticationError: the relay kept refusing the key
                (``PollPolicy.dead_end_after`` answers in a row).
            UnsupportedByRelayError: the relay does not serve the task routes (check
                ``base_url``).
        """
        if self.needs_modal:
            raise TaskNeedsModalError(self.id)
        self.last = await wait(
            self._client.poller, self.id, timeout=timeout, on_progress=on_progress
        )
        return self.last

    def watch(self) -> AsyncIterator[Task]:
        """Yield the job's state on each real change, ending with its final state.

        A FAILURE is yielded, not raised; a job waiting in MODAL ends the iteration with
        its MODAL state (see ``PollPolicy.modal_timeout``); a stalled job raises
        TaskStalledError. Use it as ``async for task in job.watch(): ...``.
        """
        return watch(self._client.poller, self.id)

    async def fetch(self) -> Task:
        """Read the job's current state (one request) and keep it in ``last``.

        Raises:
            TaskNotFoundError: the relay does not know the id.
        """
        self.last = await self._client.fetch(self.id)
        return self.last

    async def download(
        self,
        dest: str | os.PathLike[str],
        *,
        index: int | None = None,
        filename: str | None = None,
    ) -> Path:
        """Save the job's image (a video job's video) into directory ``dest``.

        Uses the state in ``last`` when there is one, else reads the job first. The file is
        named after the task id and appears only when complete (see
        ``AsyncClient.download``).

        Args:
            dest: the directory to save into.
            index: which of the task's ``image_urls`` to save (1-based); None saves the
                main image.
            filename: the file's stem instead of the task id (sanitised; the extension
                comes from the file).

        Returns:
            The path of the saved file.

        Raises:
            DownloadError: the job has no image yet, or it could not be fetched.
            InvalidInputError: ``index`` is out of range.
            StorageError: the disk refused the write.
        """
        return await self._client.download(
            self.last or self.id, dest, index=index, filename=filename
        )

    def action(
        self,
        button: Button | str,
        *,
        choose_same_channel: bool = False,
        notify_hook: str | None = None,
        state: str | None = None,
    ) -> Submission:
        """Press a button of the finished job: upscale, variation, reroll, zoom, pan, ...

        A label is looked up in the buttons of ``last`` (or of a fresh read when the handle
        has not seen the job finish).

        Args:
            button: a Button, a label (``"U1"``, ``"V2"``, ``"🔄"``) or a raw customId.
            choose_same_channel: let the relay run the press on any account in the same
                Discord channel (False: only the account that ran this job).

        See :class:`~quickmj.AsyncClient` for ``notify_hook`` and ``state`` and the errors
        every submit can raise.

        Returns:
            A Submission for the new job: ``await`` it for its AsyncJob.

        Raises:
            ButtonNotFoundError: no button matches (when the Submission is awaited).
        """
        return self._client.action(
            self.last or self.id,
            button,
            choose_same_channel=choose_same_channel,
            notify_hook=notify_hook,
            state=state,
        )

    def modal(
        self,
        *,
        prompt: str | None = None,
        mask: ImageInput | None = None,
        notify_hook: str | None = None,
        state: str | None = None,
    ) -> Submission:
        """Confirm this job's modal, when it waits in MODAL (``needs_modal``).

        For custom zoom pass a prompt with ``--zoom 1..2``; for vary region pass ``mask``
        and optionally a new prompt. The job keeps its id.

        Args:
            prompt: the prompt to continue with (custom zoom, remix, vary region).
            mask: vary region: a PNG, white where to repaint (bytes, a path, a ``data:``
                URL or an http(s) URL).

        See :class:`~quickmj.AsyncClient` for ``notify_hook`` and ``state`` and the errors
        every submit can raise.

        Returns:
            A Submission: ``await`` it for the confirmed AsyncJob.
        """
        return self._client.modal(
            self.id, prompt=prompt, mask=mask, notify_hook=notify_hook, state=state
        )

    async def image_seed(self) -> str:
        """Ask the relay for the Midjourney seed of the finished job.

        Some relays block for up to a minute while the bot answers
        (``Timeouts.image_seed``).
        """
        return await self._client.image_seed(self.id)

    async def cancel(self) -> None:
        """Cancel the job, where the relay offers it (TrueAI; admins only on a stock server).

        Raises:
            UnsupportedByRelayError: the relay has no cancel route.
        """
        await self._client.cancel(self.id)
