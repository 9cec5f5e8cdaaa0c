"""AsyncClient: one method per relay endpoint, plus batch reads and downloads."""

from __future__ import annotations

import contextlib
import enum
import inspect
import logging
import math
import os
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, overload
from urllib.parse import quote

import anyio

from ._config import (
    AuthScheme,
    Mode,
    RetryPolicy,
    Timeouts,
    check_auth_scheme,
    resolve_api_key,
    resolve_base_url,
    resolve_mode,
)
from ._converter import structure, unstructure
from ._download import download_url, safe_stem
from ._images import ImageInput, to_data_url, to_wire_images
from ._models import (
    ActionRequest,
    BlendDimensions,
    BlendRequest,
    BotType,
    Button,
    DescribeRequest,
    ImagineRequest,
    ListByIdsRequest,
    ModalRequest,
    ShortenRequest,
    SubmitRequest,
    SubmitResult,
    Task,
)
from ._poller import Poller, PollPolicy, Subscription, _Final
from ._responses import (
    means_not_found,
    parse_submit,
    parse_task_or_none,
    raw_task_list,
)
from ._transport import Transport
from .errors import (
    ClientClosedError,
    DownloadError,
    InvalidInputError,
    MalformedResponseError,
    NotFoundError,
    QueueFullError,
    QuickMJError,
    RelatedTaskNotFoundError,
    SubmitRejectedError,
    TaskFailedError,
    TaskNeedsModalError,
    TaskNotFoundError,
    TaskTimeoutError,
    UsageError,
)

if TYPE_CHECKING:
    from .webhook import WebhookReceiver

__all__ = ("AsyncClient", "ProgressCallback", "TaskRef")

logger = logging.getLogger("quickmj")

#: Wherever a task is expected: a Task, the SubmitResult that created it, or its id.
TaskRef: TypeAlias = "Task | SubmitResult | str"

#: Called with each new state of a task (status or progress change); may be async.
ProgressCallback: TypeAlias = Callable[[Task], Any]

_BLEND_MIN, _BLEND_MAX = 2, 5


class _State(enum.Enum):
    UNOPENED = 1  # built, no request made yet
    OPENED = 2  # a session exists
    CLOSED = 3  # aclose() ran; the client cannot be reused


def task_id_of(ref: TaskRef) -> str:
    """The id behind a TaskRef, validated as a non-empty string."""
    if isinstance(ref, Task):
        value = ref.id
    elif isinstance(ref, SubmitResult):
        value = ref.task_id
    elif isinstance(ref, str):
        value = ref.strip()
    else:
        raise InvalidInputError(
            f"expected a Task, SubmitResult or task id, got {type(ref).__name__}"
        )
    if not value:
        raise InvalidInputError("empty task id")
    return value


def _id_path(task_id: str) -> str:
    # Quoted as one path segment: an id can never reach another route.
    return quote(task_id, safe="")


class AsyncClient:
    """Async client for a midjourney-proxy style relay (QuickRouter by default).

    Use it as ``async with AsyncClient() as mj: ...`` or call ``await mj.aclose()``. The
    aiohttp session is created on first use, inside the running event loop.

    Args:
        api_key: the relay key; defaults to ``$QUICKMJ_API_KEY``.
        base_url: defaults to ``$QUICKMJ_BASE_URL`` or ``https://api.quickrouter.ai``.
        mode: ``"fast"``, ``"relax"``, ``"turbo"`` or None (the key's default), also from
            ``$QUICKMJ_MODE``; sent as the ``/mj-fast``-style path prefix.
        auth_scheme: ``"bearer"`` (QuickRouter), ``"mj-api-secret"`` or ``"raw"`` for
            self-hosted midjourney-proxy servers.
        timeouts: HTTP timeouts (never job timeouts).
        retry: backoff policy for reads; submits are never re-sent blindly.
        max_connections: size of the connection pool.
        list_chunk_size: ids per list-by-condition request in ``fetch_many``.
        poll: how the background poller batches status reads for ``wait`` and friends.
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
        if max_connections < 1:
            raise InvalidInputError("max_connections must be at least 1")
        if list_chunk_size < 1:
            raise InvalidInputError("list_chunk_size must be at least 1")
        self._mode = resolve_mode(mode)
        self._transport = Transport(
            api_key=resolve_api_key(api_key),
            base_url=resolve_base_url(base_url),
            mode=self._mode,
            auth_scheme=check_auth_scheme(auth_scheme),
            timeouts=timeouts or Timeouts(),
            retry=retry or RetryPolicy(),
            max_connections=max_connections,
        )
        self._auth_scheme = auth_scheme
        self._list_chunk_size = list_chunk_size
        self._max_connections = max_connections
        self._state = _State.UNOPENED
        self._poll_policy = poll or PollPolicy()
        self._poller: Poller | None = None
        self._webhook: WebhookReceiver | None = None

    def __repr__(self) -> str:
        return (
            f"<AsyncClient base_url={self.base_url!r} mode={self._mode!r} "
            f"auth_scheme={self._auth_scheme!r}>"
        )

    @property
    def base_url(self) -> str:
        return self._transport.base_url

    @property
    def mode(self) -> Mode | None:
        return self._mode

    @property
    def retry(self) -> RetryPolicy:
        return self._transport.retry

    @property
    def is_closed(self) -> bool:
        return self._state is _State.CLOSED

    # ---- lifecycle ----

    async def __aenter__(self) -> AsyncClient:
        if self._state is _State.CLOSED:
            raise UsageError("cannot reopen a closed client; create a new one")
        self._state = _State.OPENED
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the session. Idempotent; further calls raise ClientClosedError."""
        if self._state is _State.CLOSED:
            return
        self._state = _State.CLOSED
        await self._close_hooks()
        await self._transport.aclose()

    async def _close_hooks(self) -> None:
        # The poller stops first: its requests need the session.
        if self._poller is not None:
            await self._poller.aclose()

    @property
    def poller(self) -> Poller:
        """The background poller (created on first use; its loop starts with the first wait)."""
        if self._state is _State.CLOSED:
            raise ClientClosedError("the client is closed")
        if self._poller is None:
            self._poller = Poller(self._list_raw, self.fetch, self._poll_policy)
        return self._poller

    # ---- submits ----
    #
    # Each submit returns the SubmitResult; with ``wait=True`` it waits for the job through
    # the poller and returns the finished Task instead (``timeout`` and ``on_progress`` as
    # in ``wait``). The overloads only tell type checkers which one comes back.

    @overload
    async def imagine(
        self,
        prompt: str,
        *,
        images: Sequence[ImageInput] = ...,
        bot_type: BotType | str | None = ...,
        notify_hook: str | None = ...,
        state: str | None = ...,
        wait: Literal[False] = ...,
    ) -> SubmitResult: ...
    @overload
    async def imagine(
        self,
        prompt: str,
        *,
        images: Sequence[ImageInput] = ...,
        bot_type: BotType | str | None = ...,
        notify_hook: str | None = ...,
        state: str | None = ...,
        wait: Literal[True],
        timeout: float | None = ...,
        on_progress: ProgressCallback | None = ...,
    ) -> Task: ...
    async def imagine(
        self,
        prompt: str,
        *,
        images: Sequence[ImageInput] = (),
        bot_type: BotType | str | None = None,
        notify_hook: str | None = None,
        state: str | None = None,
        wait: bool = False,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> SubmitResult | Task:
        """Submit an /imagine job. ``images`` are reference images (bytes, paths, URLs)."""
        if not prompt or not prompt.strip():
            raise InvalidInputError("prompt must not be empty")
        if isinstance(images, (str, bytes, bytearray, memoryview, os.PathLike)):
            images = [images]  # one image, not a sequence of characters or bytes
        wire = await to_wire_images(tuple(images)) if images else None
        request = ImagineRequest(
            prompt=prompt.strip(),
            base64_array=wire,
            bot_type=_bot_type(bot_type),
            notify_hook=self._hook_url(notify_hook),
            state=state,
        )
        return await self._submit_and_maybe_wait("imagine", request, wait, timeout, on_progress)

    @overload
    async def blend(
        self,
        images: Sequence[ImageInput],
        *,
        dimensions: BlendDimensions | str | None = ...,
        bot_type: BotType | str | None = ...,
        notify_hook: str | None = ...,
        state: str | None = ...,
        wait: Literal[False] = ...,
    ) -> SubmitResult: ...
    @overload
    async def blend(
        self,
        images: Sequence[ImageInput],
        *,
        dimensions: BlendDimensions | str | None = ...,
        bot_type: BotType | str | None = ...,
        notify_hook: str | None = ...,
        state: str | None = ...,
        wait: Literal[True],
        timeout: float | None = ...,
        on_progress: ProgressCallback | None = ...,
    ) -> Task: ...
    async def blend(
        self,
        images: Sequence[ImageInput],
        *,
        dimensions: BlendDimensions | str | None = None,
        bot_type: BotType | str | None = None,
        notify_hook: str | None = None,
        state: str | None = None,
        wait: bool = False,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> SubmitResult | Task:
        """Blend 2 to 5 images; ``dimensions`` is PORTRAIT, SQUARE or LANDSCAPE."""
        if isinstance(images, (str, bytes)) or not _BLEND_MIN <= len(images) <= _BLEND_MAX:
            raise InvalidInputError(f"blend takes {_BLEND_MIN} to {_BLEND_MAX} images")
        dims = BlendDimensions(dimensions.upper()) if isinstance(dimensions, str) else dimensions
        if dims is not None and not dims.is_known:
            raise InvalidInputError("dimensions must be PORTRAIT, SQUARE or LANDSCAPE")
        request = BlendRequest(
            base64_array=await to_wire_images(tuple(images)),
            dimensions=dims,
            bot_type=_bot_type(bot_type),
            notify_hook=self._hook_url(notify_hook),
            state=state,
        )
        return await self._submit_and_maybe_wait("blend", request, wait, timeout, on_progress)

    @overload
    async def describe(
        self,
        image: ImageInput,
        *,
        bot_type: BotType | str | None = ...,
        notify_hook: str | None = ...,
        state: str | None = ...,
        wait: Literal[False] = ...,
    ) -> SubmitResult: ...
    @overload
    async def describe(
        self,
        image: ImageInput,
        *,
        bot_type: BotType | str | None = ...,
        notify_hook: str | None = ...,
        state: str | None = ...,
        wait: Literal[True],
        timeout: float | None = ...,
        on_progress: ProgressCallback | None = ...,
    ) -> Task: ...
    async def describe(
        self,
        image: ImageInput,
        *,
        bot_type: BotType | str | None = None,
        notify_hook: str | None = None,
        state: str | None = None,
        wait: bool = False,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> SubmitResult | Task:
        """Ask Midjourney for four prompts that describe ``image`` (``Task.final_prompt``)."""
        request = DescribeRequest(
            base64=await to_data_url(image, allow_url=False),
            bot_type=_bot_type(bot_type),
            notify_hook=self._hook_url(notify_hook),
            state=state,
        )
        return await self._submit_and_maybe_wait("describe", request, wait, timeout, on_progress)

    @overload
    async def shorten(
        self,
        prompt: str,
        *,
        bot_type: BotType | str | None = ...,
        notify_hook: str | None = ...,
        state: str | None = ...,
        wait: Literal[False] = ...,
    ) -> SubmitResult: ...
    @overload
    async def shorten(
        self,
        prompt: str,
        *,
        bot_type: BotType | str | None = ...,
        notify_hook: str | None = ...,
        state: str | None = ...,
        wait: Literal[True],
        timeout: float | None = ...,
        on_progress: ProgressCallback | None = ...,
    ) -> Task: ...
    async def shorten(
        self,
        prompt: str,
        *,
        bot_type: BotType | str | None = None,
        notify_hook: str | None = None,
        state: str | None = None,
        wait: bool = False,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> SubmitResult | Task:
        """Analyse a prompt and suggest shorter versions."""
        if not prompt or not prompt.strip():
            raise InvalidInputError("prompt must not be empty")
        request = ShortenRequest(
            prompt=prompt.strip(),
            bot_type=_bot_type(bot_type),
            notify_hook=self._hook_url(notify_hook),
            state=state,
        )
        return await self._submit_and_maybe_wait("shorten", request, wait, timeout, on_progress)

    @overload
    async def action(
        self,
        task: TaskRef,
        button: Button | str,
        *,
        choose_same_channel: bool = ...,
        notify_hook: str | None = ...,
        state: str | None = ...,
        wait: Literal[False] = ...,
    ) -> SubmitResult: ...
    @overload
    async def action(
        self,
        task: TaskRef,
        button: Button | str,
        *,
        choose_same_channel: bool = ...,
        notify_hook: str | None = ...,
        state: str | None = ...,
        wait: Literal[True],
        timeout: float | None = ...,
        on_progress: ProgressCallback | None = ...,
    ) -> Task: ...
    async def action(
        self,
        task: TaskRef,
        button: Button | str,
        *,
        choose_same_channel: bool = False,
        notify_hook: str | None = None,
        state: str | None = None,
        wait: bool = False,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> SubmitResult | Task:
        """Press a button of a finished task (upscale, variation, reroll, zoom, pan, ...).

        ``button`` is a Button, a raw customId (``"MJ::JOB::upsample::2::..."``) or a label
        such as ``"U2"``, ``"V3"`` or ``"🔄"`` looked up on the task (fetched if you pass an
        id). If the answer ``needs_modal`` (custom zoom, vary region), finish with
        ``modal(result.task_id, ...)``; with ``wait=True`` that case raises
        TaskNeedsModalError.
        """
        task_id = task_id_of(task)
        request = ActionRequest(
            task_id=task_id,
            custom_id=await self._resolve_custom_id(task, button),
            choose_same_channel=choose_same_channel,
            notify_hook=self._hook_url(notify_hook),
            state=state,
        )
        return await self._submit_and_maybe_wait("action", request, wait, timeout, on_progress)

    @overload
    async def modal(
        self,
        task: TaskRef,
        *,
        prompt: str | None = ...,
        mask: ImageInput | None = ...,
        notify_hook: str | None = ...,
        state: str | None = ...,
        wait: Literal[False] = ...,
    ) -> SubmitResult: ...
    @overload
    async def modal(
        self,
        task: TaskRef,
        *,
        prompt: str | None = ...,
        mask: ImageInput | None = ...,
        notify_hook: str | None = ...,
        state: str | None = ...,
        wait: Literal[True],
        timeout: float | None = ...,
        on_progress: ProgressCallback | None = ...,
    ) -> Task: ...
    async def modal(
        self,
        task: TaskRef,
        *,
        prompt: str | None = None,
        mask: ImageInput | None = None,
        notify_hook: str | None = None,
        state: str | None = None,
        wait: bool = False,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> SubmitResult | Task:
        """Confirm a task waiting in MODAL (after an ``action`` answered ``needs_modal``).

        For custom zoom pass a prompt with ``--zoom 1..2``; for vary region pass ``mask`` (a
        PNG, white where to repaint) and optionally a new prompt.
        """
        request = ModalRequest(
            task_id=task_id_of(task),
            prompt=prompt,
            mask_base64=await to_data_url(mask, allow_url=False) if mask is not None else None,
            notify_hook=self._hook_url(notify_hook),
            state=state,
        )
        return await self._submit_and_maybe_wait("modal", request, wait, timeout, on_progress)

    def _hook_url(self, notify_hook: str | None) -> str | None:
        """The notifyHook to send: the caller's, else an active receiver's (if any)."""
        if notify_hook is None and self._webhook is not None:
            return self._webhook.url
        return notify_hook

    def use_webhook(self, receiver: WebhookReceiver | None) -> None:
        """Send ``receiver.url`` as notifyHook on every submit (None stops it)."""
        self._webhook = receiver

    @contextlib.asynccontextmanager
    async def webhook_receiver(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        public_url: str | None = None,
    ) -> AsyncIterator[WebhookReceiver]:
        """Serve a notifyHook receiver while the block runs; submits carry its URL.

        ``public_url`` is the address the relay can reach (default ``http://host:port``).
        See ``quickmj.webhook`` for mounting it into your own aiohttp app instead.
        """
        from .webhook import WebhookReceiver

        if port == 0 and public_url is None:
            port = _free_port(host)
        receiver = WebhookReceiver(self, public_url=public_url or f"http://{host}:{port}")
        async with receiver.serve(host, port):
            self.use_webhook(receiver)
            try:
                yield receiver
            finally:
                self.use_webhook(None)

    async def _submit_and_maybe_wait(
        self,
        endpoint: str,
        request: SubmitRequest,
        wait: bool,
        timeout: float | None,
        on_progress: ProgressCallback | None,
    ) -> SubmitResult | Task:
        result = await self._submit(endpoint, request)
        if not wait:
            return result
        if result.needs_modal:
            raise TaskNeedsModalError(result.task_id)
        return await self.wait(result, timeout=timeout, on_progress=on_progress)

    async def _resolve_custom_id(self, task: TaskRef, button: Button | str) -> str:
        if isinstance(button, Button):
            return button.custom_id
        if not isinstance(button, str) or not button.strip():
            raise InvalidInputError("button must be a Button, a customId or a label")
        if button.startswith("MJ::"):
            return button  # a raw customId, known to us or not
        resolved = task if isinstance(task, Task) else await self.fetch(task)
        return resolved.button(button).custom_id

    async def _submit(self, endpoint: str, request: SubmitRequest) -> SubmitResult:
        path = f"/submit/{endpoint}"
        body = unstructure(request)
        policy = self._transport.retry
        attempt = 0
        while True:
            attempt += 1
            try:
                data = await self._transport.request_json(
                    "POST", path, body=body, idempotent=False, request=request, state=request.state
                )
                result = parse_submit(data, path)
            except QueueFullError:
                # Nothing was created, so a retry cannot pay twice; only when asked for.
                if not policy.retry_submits or attempt >= policy.max_attempts:
                    raise
                await self._transport.sleep(policy.delay(attempt))
                continue
            logger.debug("%s -> task %s (code %d)", path, result.task_id, result.code)
            return result

    # ---- reads ----

    async def fetch(self, task: TaskRef) -> Task:
        """The task's current state. Unknown id -> TaskNotFoundError."""
        task_id = task_id_of(task)
        path = f"/task/{_id_path(task_id)}/fetch"
        try:
            data = await self._transport.request_json("GET", path, idempotent=True)
        except NotFoundError as exc:
            raise TaskNotFoundError(task_id) from exc
        except SubmitRejectedError as exc:
            if means_not_found(exc):  # code 3, task_no_found, ...
                raise TaskNotFoundError(task_id) from exc
            raise
        found = parse_task_or_none(data, path)
        if found is None:
            raise TaskNotFoundError(task_id)
        return found

    async def list_tasks(self, ids: Iterable[str]) -> list[Task]:
        """One list-by-condition request, as the relay answers it: any order, unknown ids
        left out. Most callers want ``fetch_many``."""
        return structure(await self._list_raw(ids), list[Task], what="tasks")

    async def _list_raw(self, ids: Iterable[str]) -> list[Any]:
        """list-by-condition, answer left as JSON (the poller structures only changes)."""
        unique = tuple(dict.fromkeys(ids))
        if not unique:
            return []
        path = "/task/list-by-condition"
        data = await self._transport.request_json(
            "POST", path, body=unstructure(ListByIdsRequest(ids=unique)), idempotent=True
        )
        return raw_task_list(data, path)

    async def fetch_many(self, tasks: Iterable[TaskRef], *, max_concurrency: int = 4) -> list[Task]:
        """Fetch many tasks with list-by-condition, ``list_chunk_size`` ids per request.

        Returns tasks in input order (duplicates repeated). Ids the relay does not return
        are asked for again (relays may truncate); any still missing raise TaskNotFoundError
        with ``missing ids`` in ``task_ids`` and the tasks that were found in ``found``.
        """
        ids = [task_id_of(t) for t in tasks]
        found: dict[str, Task] = {}
        pending = list(dict.fromkeys(ids))
        limiter = anyio.CapacityLimiter(max(1, max_concurrency))

        errors: list[BaseException] = []

        async def run_chunk(chunk: list[str], scope: anyio.CancelScope) -> None:
            async with limiter:
                try:
                    answer = await self.list_tasks(chunk)
                except QuickMJError as exc:
                    # Raise the error itself, not an ExceptionGroup: stop the other chunks.
                    errors.append(exc)
                    scope.cancel()
                    return
                for t in answer:
                    if t.id in wanted:
                        found[t.id] = t

        while pending:
            wanted = set(pending)
            before = len(found)
            async with anyio.create_task_group() as tg:
                for i in range(0, len(pending), self._list_chunk_size):
                    tg.start_soon(
                        run_chunk, pending[i : i + self._list_chunk_size], tg.cancel_scope
                    )
            if errors:
                raise errors[0]
            pending = [i for i in pending if i not in found]
            if len(found) == before:
                break  # no progress: what is left is unknown to the relay
        missing = [i for i in dict.fromkeys(ids) if i not in found]
        if missing:
            raise TaskNotFoundError(missing, found=[found[i] for i in ids if i in found])
        return [found[i] for i in ids]

    # ---- waiting (through the shared poller) ----

    async def wait(
        self,
        task: TaskRef,
        *,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> Task:
        """Wait until the task finishes and return it (status SUCCESS).

        Raises TaskFailedError (with ``.task``) on FAILURE/CANCEL, TaskTimeoutError after
        ``timeout`` seconds (the job itself goes on), TaskNotFoundError for an unknown id,
        TaskNeedsModalError if it sits in MODAL. ``on_progress(task)`` is called on each
        status or progress change. Concurrent waits on one id share one tracked entry.
        """
        task_id = task_id_of(task)
        sub = self.poller.subscribe([task_id], updates=on_progress is not None)
        try:
            final = await self._next_final(sub, task_id, timeout, on_progress)
        finally:
            sub.close()
        done = _settle(task_id, final)
        if done.is_failed:
            raise TaskFailedError(done)
        return done

    async def _next_final(
        self,
        sub: Subscription,
        task_id: str,
        timeout: float | None,
        on_progress: ProgressCallback | None,
    ) -> _Final:
        if timeout is None:  # no cancel scope: thousands of waiters stay cheap
            return await _drain(sub, on_progress)
        with anyio.move_on_after(timeout):
            return await _drain(sub, on_progress)
        raise TaskTimeoutError(task_id, timeout, sub.last(task_id))

    async def as_completed(
        self, tasks: Iterable[TaskRef], *, timeout: float | None = None
    ) -> AsyncIterator[Task]:
        """Yield each task as it reaches a terminal state, in completion order.

        Failed tasks are yielded too (check ``task.is_failed``); nothing is raised for them.
        A task stuck in MODAL is yielded as it is once ``PollPolicy.modal_timeout`` passes.
        Unknown ids raise TaskNotFoundError after every other task was yielded; ``timeout``
        bounds the whole iteration (TaskTimeoutError lists what is still pending).
        """
        ids = list(dict.fromkeys(task_id_of(t) for t in tasks))
        if not ids:
            return
        sub = self.poller.subscribe(ids)
        pending = set(ids)
        missing: list[str] = []
        deadline = anyio.current_time() + (math.inf if timeout is None else timeout)
        try:
            while pending:
                item = None
                with anyio.move_on_after(deadline - anyio.current_time()):
                    item = await sub.next()
                if item is None:
                    first = next(i for i in ids if i in pending)
                    raise TaskTimeoutError(
                        first,
                        timeout or 0.0,
                        sub.last(first),
                        pending=[i for i in ids if i in pending],
                    )
                if isinstance(item, Task):
                    continue
                task_id, final = item
                pending.discard(task_id)
                if isinstance(final.error, TaskNotFoundError):
                    missing.append(task_id)
                    continue
                yield _settle(task_id, final, modal_ok=True)
        finally:
            sub.close()
        if missing:
            raise TaskNotFoundError(missing)

    async def watch(self, task: TaskRef) -> AsyncIterator[Task]:
        """Yield the task on each status or progress change, ending with its final state.

        A FAILURE is yielded, not raised. A task stuck in MODAL ends the iteration (after
        ``PollPolicy.modal_timeout``) with its MODAL state.
        """
        task_id = task_id_of(task)
        sub = self.poller.subscribe([task_id], updates=True)
        last: Task | None = None
        try:
            while True:
                item = await sub.next()
                if isinstance(item, Task):
                    last = item
                    yield item
                    continue
                done = _settle(task_id, item[1], modal_ok=True)
                if done is not last:
                    yield done
                return
        finally:
            sub.close()

    async def image_seed(self, task: TaskRef) -> str:
        """The Midjourney seed of a finished task (may take up to a minute on some relays)."""
        task_id = task_id_of(task)
        path = f"/task/{_id_path(task_id)}/image-seed"
        try:
            data = await self._transport.request_json(
                "GET", path, idempotent=True, read_timeout=self._transport.timeouts.image_seed
            )
        except RelatedTaskNotFoundError as exc:
            if exc.status == 404:  # an unknown task; a 200 with code 3 means "no seed found"
                raise TaskNotFoundError(task_id) from exc
            raise
        if isinstance(data, dict) and "code" not in data and "id" in data:
            # The relay's docs show a Task here (a copy error): refuse clearly.
            raise MalformedResponseError(
                f"{path}: expected {{code, result}} with the seed, got a task object", path=path
            )
        # Codes other than 1 raise their rejection (code 9: seed error, 3: no seed found).
        # parse_submit guarantees a non-empty `result`, which here carries the seed.
        answer = parse_submit(data, path)
        return answer.result or ""

    async def download(
        self,
        task: TaskRef,
        dest: str | os.PathLike[str],
        *,
        index: int | None = None,
        filename: str | None = None,
    ) -> Path:
        """Save the task's image into directory ``dest`` and return the file's path.

        The name is derived from the task id (``<id>.png``, or ``<id>-<index>.png`` for one
        of ``image_urls``), never from the URL; ``filename`` overrides the stem and is
        sanitised too. The file appears only when complete (atomic rename).
        """
        resolved = task if isinstance(task, Task) else await self.fetch(task)
        if index is None:
            url = resolved.image_url
            stem = safe_stem(filename or resolved.id)
        else:
            if not 1 <= index <= len(resolved.image_urls):
                raise InvalidInputError(
                    f"task {resolved.id} has {len(resolved.image_urls)} image_urls; "
                    f"index {index} is out of range"
                )
            url = resolved.image_urls[index - 1].url
            stem = safe_stem(filename or f"{resolved.id}-{index}")
        if not url:
            raise DownloadError(f"task {resolved.id} has no image yet (status {resolved.status})")
        return await download_url(self._transport, url, dest, stem)


def _bot_type(value: BotType | str | None) -> BotType | None:
    if value is None or isinstance(value, BotType):
        return value
    aliases = {"mj": "MID_JOURNEY", "midjourney": "MID_JOURNEY", "niji": "NIJI_JOURNEY"}
    return BotType(aliases.get(value.lower(), value.upper()))


def _settle(task_id: str, final: _Final, *, modal_ok: bool = False) -> Task:
    """The task a listener ended with, or the error it ended with, raised."""
    if final.error is not None:
        raise final.error
    assert final.task is not None
    if final.task.needs_modal and not modal_ok:
        raise TaskNeedsModalError(task_id, final.task)
    return final.task


async def _drain(sub: Subscription, on_progress: ProgressCallback | None) -> _Final:
    """Feed updates to ``on_progress`` until the subscription's final result arrives."""
    while True:
        item = await sub.next()
        if isinstance(item, Task):
            await _call(on_progress, item)
        else:
            return item[1]


async def _call(callback: ProgressCallback | None, task: Task) -> None:
    if callback is not None:
        result = callback(task)
        if inspect.isawaitable(result):
            await result


def _free_port(host: str) -> int:
    """An unused TCP port on ``host`` (so the hook URL is known before serving)."""
    import socket

    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
