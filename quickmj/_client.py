"""AsyncClient: configuration, lifecycle, and one method per relay endpoint.

The methods stay thin: ``_requests`` checks the arguments and builds the wire request,
``_relay`` sends it (``_protocol`` reads the answer), ``_jobs`` wraps the result in a
handle, ``_poller`` does the waiting and ``_files`` the saving.
"""

from __future__ import annotations

import contextlib
import copy
import enum
import logging
import os
import ssl as ssl_module
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio

from . import _requests as build
from ._admission import Admission, SendPhase, submit_with
from ._billing import Balance, read_balance
from ._budgets import AdmissionSetting, BudgetFactory, Lease, budget_factory, fingerprint
from ._config import (
    AuthScheme,
    Dialect,
    Mode,
    RetryPolicy,
    Timeouts,
    check_auth_scheme,
    default_auth_scheme,
    resolve_api_key,
    resolve_base_url,
    resolve_dialect,
    resolve_mode,
)
from ._converter import structure_task
from ._files import save_task_media
from ._http import Http
from ._jobs import AsyncJob, Submission, task_id_of
from ._logs import configure_from_env
from ._models import (
    BlendDimensions,
    BotType,
    Button,
    SubmitRequest,
    SubmitResult,
    Task,
    TaskStatus,
)
from ._otel import Tracing
from ._poller import Final, Poller, PollPolicy
from ._protocol import CONFIRMS_MODAL, ROUTES, check_task_id, serves
from ._relay import Relay, Submitted
from ._transport import AsyncTransport
from ._types import ImageInput, ProgressCallback, TaskRef
from ._waiting import as_completed, wait, watch
from .errors import (
    ClientClosedError,
    ConfigurationError,
    InvalidInputError,
    QuickMJError,
    TaskNotFoundError,
    UnsupportedByRelayError,
    UsageError,
)

if TYPE_CHECKING:
    from ._aiohttp import BaseConnector, ClientSession, TraceConfig
    from .webhook import WebhookReceiver

__all__ = ("AsyncClient",)

logger = logging.getLogger("quickmj")


class _State(enum.Enum):
    UNOPENED = 1  # built, no request made yet
    OPENED = 2  # entered or used
    CLOSED = 3  # aclose() ran; the client cannot be reused


class _Core:
    """What a client and its ``with_options()`` views share (one lifecycle, one poller)."""

    __slots__ = ("gate", "poller", "state", "webhook_url")

    def __init__(self) -> None:
        self.state = _State.UNOPENED
        self.poller: Poller | None = None
        self.gate: Admission | None = None
        self.webhook_url: str | None = None


class AsyncClient:
    """Async client for a midjourney-proxy style relay (QuickRouter by default).

    Use it as ``async with AsyncClient() as mj: ...`` or call ``await mj.aclose()``.
    Submits return a :class:`~quickmj.Submission`: ``await mj.imagine(p)`` gives the job
    handle, ``await mj.imagine(p).wait()`` the finished Task.

    Args:
        api_key: the relay key; defaults to ``$QUICKMJ_API_KEY``.
        base_url: defaults to ``$QUICKMJ_BASE_URL`` or ``https://api.quickrouter.ai``.
        mode: ``"fast"``, ``"relax"``, ``"turbo"`` or None (the key's default), also from
            ``$QUICKMJ_MODE``; sent as the ``/mj-fast``-style path prefix.
        dialect: which relay software answers: ``"quickrouter"`` (new-api), ``"trueai"``,
            ``"midjourney-proxy"`` or ``"auto"``; by default QuickRouter's own host means
            ``quickrouter`` and anything else ``auto``. See the README's "Relays".
        auth_scheme: ``"bearer"`` (QuickRouter), ``"mj-api-secret"`` or ``"raw"``; by
            default the one the dialect's server reads.
        timeouts: HTTP timeouts and deadlines (never job timeouts).
        retry: backoff policy for reads; submits are never re-sent blindly.
        poll: how the background poller batches status reads.
        max_connections: size of the connection pool.
        list_chunk_size: ids per list-by-condition request in ``fetch_many``.
        transport: an :class:`~quickmj.AsyncTransport` to use instead of aiohttp (for
            example ``quickmj.testing.MockTransport``). The options below are then unused.
        proxy: a proxy URL for every request; by default proxies come from the
            environment (``HTTP_PROXY``/``HTTPS_PROXY``/``NO_PROXY``) when ``trust_env``.
        trust_env: read proxy settings from the environment (default True).
        ssl: an ``ssl.SSLContext`` or False (no certificate checks: never in production).
        headers: extra headers sent with every request.
        user_agent: appended to quickmj's User-Agent (``myapp/1.2``).
        session: your own ``aiohttp.ClientSession`` (quickmj never closes it).
        connector: your own ``aiohttp.BaseConnector`` (quickmj never closes it).
        trace_configs: ``aiohttp.TraceConfig`` objects for request tracing.
        admission: None (default: every submit is sent at once, as the caller says),
            ``"adaptive"`` (submits wait for a slot of the account's learned budget and
            are sent again after a queue-full or 429 answer, which created nothing), an
            :class:`~quickmj.AdmissionPolicy`, or a budget factory such as
            ``quickmj.RedisBudgets`` (budgets shared across processes). See
            docs/throughput.md.

    Common submit arguments:
        Every submit (:meth:`imagine`, :meth:`blend`, :meth:`describe`, :meth:`shorten`,
        :meth:`action`, :meth:`modal`, :meth:`change`, :meth:`simple_change`,
        :meth:`video`, :meth:`edits`, :meth:`swap_face`) takes these keywords too:

        - ``notify_hook``: a URL the relay POSTs task updates to (a running
          ``webhook_receiver`` sets it for you).
        - ``state``: your own string (at most 255 characters), echoed on the task.

        Besides the errors its own docstring lists, every submit can raise:

        - ``InvalidInputError``: a bad argument (before anything is sent).
        - ``SubmitRejectedError``: the relay refused, so nothing was created
          (``BannedPromptError``, ``QueueFullError``, ...).
        - ``SubmitOutcomeUnknownError``: sent, but the answer was lost: the job may exist.
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
        configure_from_env()  # QUICKMJ_LOG, applied once per process
        if max_connections < 1:
            raise InvalidInputError("max_connections must be at least 1")
        if list_chunk_size < 1:
            raise InvalidInputError("list_chunk_size must be at least 1")
        url = resolve_base_url(base_url)
        self._mode: Mode | None = resolve_mode(mode)
        self._dialect: Dialect = resolve_dialect(dialect, url)
        _check_mode(self._mode, self._dialect, url)
        self._auth_scheme: AuthScheme = check_auth_scheme(
            auth_scheme or default_auth_scheme(self._dialect)
        )
        if transport is None:
            from ._aiohttp import AiohttpTransport  # aiohttp is imported when first needed

            transport = AiohttpTransport(
                max_connections=max_connections,
                trust_env=trust_env,
                proxy=proxy,
                ssl=ssl,
                session=session,
                connector=connector,
                trace_configs=trace_configs,
            )
        self._http = Http(
            transport,
            api_key=resolve_api_key(api_key),
            base_url=url,
            mode=self._mode,
            auth_scheme=self._auth_scheme,
            timeouts=timeouts or Timeouts(),
            headers=headers,
            user_agent=user_agent,
        )
        self._relay = Relay(self._http, retry or RetryPolicy(), self._dialect)
        self._list_chunk_size = list_chunk_size
        self._core = _Core()
        self._poll_policy = poll or PollPolicy()
        self._init_admission(admission)

    def _init_admission(self, admission: AdmissionSetting) -> None:
        self._fingerprint = fingerprint(self._http.key.get())  # never the key itself
        self._account = self._fingerprint + (f"/{self._mode}" if self._mode else "")
        self._tracing = Tracing(self._account)  # OpenTelemetry job spans, if installed
        factory = budget_factory(admission)
        if factory is not None:
            self._set_admission(factory, rotates=False)

    def _drop_admission(self) -> Admission | None:
        """Internal API (``AccountPool.restore``): take the admission gate away, for the
        caller to close; submits go out without waiting for slots again."""
        gate, self._core.gate = self._core.gate, None
        return gate

    def _set_admission(self, factory: BudgetFactory, *, rotates: bool) -> Admission:
        """Internal API (``AccountPool``, ``AccountPool.wrap`` for ``run_batch``): submits
        wait for slots of a budget made by ``factory`` for this client's key and mode."""
        budget = factory.budget(
            account=self._fingerprint,
            base_url=self.base_url,
            mode=self._mode,
            label=self._account,
            rotates=rotates,
        )
        self._core.gate = Admission([budget])
        return self._core.gate

    def with_options(
        self, *, timeouts: Timeouts | None = None, retry: RetryPolicy | None = None
    ) -> AsyncClient:
        """This client with other HTTP timeouts or another retry policy for some calls.

        The view shares everything else: connections, key, poller, admission budget,
        webhook receiver and lifecycle (closing either closes both; close the original).
        Its own calls (submits, fetches, downloads) use the new settings; the shared
        poller's status reads keep the client's.

        Args:
            timeouts: HTTP timeouts and deadlines for the view's requests.
            retry: the retry policy for the view's reads.

        Returns:
            An AsyncClient view, as cheap as a copy of a few references.

        Example:
            ``await mj.with_options(timeouts=Timeouts(request=300)).download(task, "out")``
        """
        view = copy.copy(self)
        if timeouts is not None:
            view._http = self._http.with_timeouts(timeouts)
        view._relay = Relay(view._http, retry or self._relay.retry, self._dialect)
        return view

    def __repr__(self) -> str:
        return (
            f"<AsyncClient base_url={self.base_url!r} mode={self._mode!r} "
            f"dialect={self._dialect!r} auth_scheme={self._auth_scheme!r}>"
        )

    @property
    def base_url(self) -> str:
        """The relay's base URL (without ``/mj``)."""
        return self._http.base_url

    @property
    def mode(self) -> Mode | None:
        """The speed mode sent as a path prefix, or None for the key's default."""
        return self._mode

    @property
    def dialect(self) -> Dialect:
        """Which relay software this client expects (see the constructor)."""
        return self._dialect

    @property
    def retry(self) -> RetryPolicy:
        """The retry policy for reads (and the narrow submit cases)."""
        return self._relay.retry

    @property
    def timeouts(self) -> Timeouts:
        """The HTTP timeouts and deadlines."""
        return self._http.timeouts

    @property
    def poll_policy(self) -> PollPolicy:
        """How the background poller schedules its reads."""
        return self._poll_policy

    @property
    def account(self) -> str:
        """This client's account: a short fingerprint of its key (``/mode`` if one is set).

        Job handles, batch journals and logs name accounts by it; it never shows the key.
        """
        return self._account

    @property
    def admission(self) -> Admission | None:
        """The admission gate (``budgets[0].limit``, ``.stats``), or None when it is off."""
        return self._core.gate

    @property
    def is_closed(self) -> bool:
        """True once ``aclose()`` ran."""
        return self._core.state is _State.CLOSED

    @property
    def poller(self) -> Poller:
        """The background poller (created on first use; its loop starts with the first wait)."""
        if self._core.state is _State.CLOSED:
            raise ClientClosedError("the client is closed")
        if self._core.poller is None:
            self._core.poller = Poller(self._relay, self._poll_policy)
            if self._tracing.on:
                self._core.poller.on_final = self._job_ended
        return self._core.poller

    def _job_ended(self, task_id: str, final: Final) -> None:
        task = final.task
        status = None if task is None else task.status.value
        self._tracing.ended(task_id, status, None if task is None else task.fail_reason)

    # ---- lifecycle ----

    async def __aenter__(self) -> AsyncClient:
        if self._core.state is _State.CLOSED:
            raise UsageError("cannot reopen a closed client; create a new one")
        self._core.state = _State.OPENED
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the client: fail waiters, end requests in flight, close connections.

        Idempotent; later calls raise ClientClosedError.
        """
        if self._core.state is _State.CLOSED:
            return
        self._core.state = _State.CLOSED
        if self._core.poller is not None:
            await self._core.poller.aclose()  # first: its requests need the connections
        if self._core.gate is not None:
            await self._core.gate.aclose()
        await self._http.aclose()
        self._tracing.close()

    # ---- submits ----

    def _submission(
        self,
        route: str,
        build_request: Callable[[], Awaitable[SubmitRequest]],
        *,
        parent_succeeded: bool = False,
    ) -> Submission:
        if self._core.state is _State.CLOSED:
            raise ClientClosedError("the client is closed")
        gate = self._core.gate
        if gate is not None:
            return self._admitted(gate, route, build_request, parent_succeeded)

        async def send() -> AsyncJob:
            request = await build_request()
            answered = await self._relay.submit(route, request, parent_succeeded=parent_succeeded)
            return self._job(route, request, answered)

        return Submission(self._traced(route, send), f"POST {route}")

    def _admitted(
        self,
        gate: Admission,
        route: str,
        build_request: Callable[[], Awaitable[SubmitRequest]],
        parent_succeeded: bool = False,
    ) -> Submission:
        """A submit that waits for a slot of the account's budget (see ``_admission``)."""
        phase = SendPhase()

        async def send() -> AsyncJob:
            request = await build_request()

            async def attempt(lease: Lease) -> Submitted:
                answered: list[Submitted] = []  # the answer's headers, for the job handle

                async def submit() -> SubmitResult:
                    answered.append(
                        await self._relay.submit(route, request, parent_succeeded=parent_succeeded)
                    )
                    return answered[-1].result

                await submit_with(lease, submit, self._hold)
                return answered[-1]

            return self._job(route, request, await gate.run(attempt, phase))

        return Submission(self._traced(route, send), f"POST {route}", phase=phase)

    def _traced(
        self, route: str, send: Callable[[], Awaitable[AsyncJob]]
    ) -> Callable[[], Awaitable[AsyncJob]]:
        """``send`` inside a job span (from the submit to the final state), if tracing."""
        tracing = self._tracing
        if not tracing.on:
            return send

        async def traced() -> AsyncJob:
            span = tracing.start_job(route)
            try:
                with tracing.current(span):
                    job = await send()
            except BaseException as exc:
                tracing.failed(span, exc)
                raise
            tracing.submitted(span, job.id)
            return job

        return traced

    def _hold(self, task_id: str, lease: Lease) -> None:
        if self._core.gate is None or self._core.state is _State.CLOSED:
            lease.budget.release(lease)
            return
        self._core.gate.hold(self.poller, task_id, lease)

    def _job(self, route: str, request: SubmitRequest, answered: Submitted) -> AsyncJob:
        result = answered.result
        if route in CONFIRMS_MODAL and self._core.state is not _State.CLOSED:
            # Also before the first wait: the poller remembers it for later listeners.
            self.poller.confirm_modal(result.task_id)
        return AsyncJob(
            self,
            route,
            request,
            result,
            request_id=answered.request_id,
            response_headers=answered.headers,
        )

    def imagine(
        self,
        prompt: str,
        *,
        images: Sequence[ImageInput] | ImageInput = (),
        bot_type: BotType | str | None = None,
        notify_hook: str | None = None,
        state: str | None = None,
    ) -> Submission:
        """Submit an /imagine job.

        Args:
            prompt: the Midjourney prompt, parameters included (``--ar 16:9 --v 6.1``).
            images: reference images: bytes, file paths, ``data:`` URLs or http(s) URLs.
            bot_type: ``"MID_JOURNEY"`` (default) or ``"NIJI_JOURNEY"`` (``"niji"``).

        See :class:`~quickmj.AsyncClient` for ``notify_hook`` and ``state`` and the errors
        every submit can raise.

        Returns:
            A Submission: ``await`` it for the AsyncJob, ``await ....wait()`` for the Task.

        Raises:
            InvalidInputError: an empty prompt or an unreadable image (before sending).
        """
        return self._submission(
            "/submit/imagine",
            lambda: build.imagine(prompt, images, bot_type, self._hook(notify_hook), state),
        )

    def blend(
        self,
        images: Sequence[ImageInput],
        *,
        dimensions: BlendDimensions | str | None = None,
        bot_type: BotType | str | None = None,
        notify_hook: str | None = None,
        state: str | None = None,
    ) -> Submission:
        """Blend 2 to 5 images into one new grid (``/submit/blend``).

        Args:
            images: 2 to 5 images: bytes, file paths, ``data:`` URLs or http(s) URLs.
            dimensions: the aspect ratio: ``"PORTRAIT"`` (2:3), ``"SQUARE"`` (1:1) or
                ``"LANDSCAPE"`` (3:2); None for the relay's default.
            bot_type: ``"MID_JOURNEY"`` (default) or ``"NIJI_JOURNEY"`` (``"niji"``).

        See :class:`~quickmj.AsyncClient` for ``notify_hook`` and ``state`` and the errors
        every submit can raise.

        Returns:
            A Submission: ``await`` it for the AsyncJob, ``await ....wait()`` for the Task.

        """
        return self._submission(
            "/submit/blend",
            lambda: build.blend(images, dimensions, bot_type, self._hook(notify_hook), state),
        )

    def describe(
        self,
        image: ImageInput,
        *,
        bot_type: BotType | str | None = None,
        notify_hook: str | None = None,
        state: str | None = None,
    ) -> Submission:
        """Ask for four prompts that describe ``image`` (``/submit/describe``).

        The prompts arrive in the finished task's ``final_prompt``.

        Args:
            image: the image: bytes, a file path or a ``data:`` URL (not an http URL).
            bot_type: ``"MID_JOURNEY"`` (default) or ``"NIJI_JOURNEY"`` (``"niji"``).

        See :class:`~quickmj.AsyncClient` for ``notify_hook`` and ``state`` and the errors
        every submit can raise.

        Returns:
            A Submission: ``await`` it for the AsyncJob, ``await ....wait()`` for the Task.

        """
        return self._submission(
            "/submit/describe",
            lambda: build.describe(image, bot_type, self._hook(notify_hook), state),
        )

    def shorten(
        self,
        prompt: str,
        *,
        bot_type: BotType | str | None = None,
        notify_hook: str | None = None,
        state: str | None = None,
    ) -> Submission:
        """Analyse a prompt and suggest shorter versions (``/submit/shorten``).

        The suggestions arrive in the finished task's ``final_prompt``.

        Args:
            prompt: the prompt to analyse.
            bot_type: ``"MID_JOURNEY"`` (default) or ``"NIJI_JOURNEY"`` (``"niji"``).

        See :class:`~quickmj.AsyncClient` for ``notify_hook`` and ``state`` and the errors
        every submit can raise.

        Returns:
            A Submission: ``await`` it for the AsyncJob, ``await ....wait()`` for the Task.

        """
        return self._submission(
            "/submit/shorten",
            lambda: build.shorten(prompt, bot_type, self._hook(notify_hook), state),
        )

    def action(
        self,
        task: TaskRef,
        button: Button | str,
        *,
        choose_same_channel: bool = False,
        notify_hook: str | None = None,
        state: str | None = None,
    ) -> Submission:
        """Press a button of a finished task (upscale, variation, reroll, zoom, pan, ...).

        If the new job ``needs_modal`` (custom zoom, vary region), finish it with
        ``job.modal(...)``.

        Args:
            task: the finished task (its id, the Task, or a job handle).
            button: a Button, a raw customId (``"MJ::JOB::upsample::2::..."``, even one
                quickmj does not know) or a label such as ``"U2"``, ``"V3"`` or ``"🔄"``,
                looked up on the task (fetched first if you pass an id).
            choose_same_channel: let the relay run the press on any account in the same
                Discord channel (False: only the account that ran the task).

        See :class:`~quickmj.AsyncClient` for ``notify_hook`` and ``state`` and the errors
        every submit can raise.

        Returns:
            A Submission: ``await`` it for the AsyncJob, ``await ....wait()`` for the Task.

        Raises:
            ButtonNotFoundError: no button of the task matches ``button``.
            UnsupportedByRelayError: the dialect is ``midjourney-proxy``, which has no
                ``/submit/action`` (raised at once, nothing sent): use :meth:`change`.
        """
        from ._models import ActionRequest

        if not serves(self._dialect, "POST /submit/action"):
            raise _no_action_route(button)

        async def request() -> ActionRequest:
            return ActionRequest(
                task_id=task_id_of(task),
                custom_id=await self._custom_id(task, button),
                choose_same_channel=choose_same_channel,
                notify_hook=self._hook(notify_hook),
                state=build.state_text(state),
            )

        return self._submission("/submit/action", request)

    def modal(
        self,
        task: TaskRef,
        *,
        prompt: str | None = None,
        mask: ImageInput | None = None,
        notify_hook: str | None = None,
        state: str | None = None,
    ) -> Submission:
        """Confirm a task waiting in MODAL (after an action that ``needs_modal``).

        For custom zoom pass a prompt with ``--zoom 1..2``; for vary region pass ``mask``
        and optionally a new prompt. The job keeps its id.

        Args:
            task: the task waiting in MODAL (its id, the Task, or a job handle).
            prompt: the prompt to continue with (custom zoom, remix, vary region).
            mask: vary region: a PNG, white where to repaint (bytes, a file path or a
                ``data:`` URL).

        See :class:`~quickmj.AsyncClient` for ``notify_hook`` and ``state`` and the errors
        every submit can raise.

        Returns:
            A Submission: ``await`` it for the AsyncJob, ``await ....wait()`` for the Task.

        """
        return self._submission(
            "/submit/modal",
            lambda: build.modal(task_id_of(task), prompt, mask, self._hook(notify_hook), state),
        )

    def change(
        self,
        task: TaskRef,
        label: str,
        *,
        notify_hook: str | None = None,
        state: str | None = None,
    ) -> Submission:
        """Upscale, vary or reroll a grid with ``/submit/change``.

        The older route (midjourney-proxy, QuickRouter); ``action`` works on buttons.
        midjourney-proxy saves task updates in the background, so right after the grid
        succeeded it can answer "related task not found" (code 3) or "related task status
        wrong" (code 4); when ``task`` is a Task (or a job handle) seen in SUCCESS, such an
        answer, which created nothing, is sent once more after 1.5 s.

        Args:
            task: the finished grid (its id, the Task, or a job handle).
            label: ``"U1"``-``"U4"`` (upscale), ``"V1"``-``"V4"`` (variation) or ``"R"``
                (reroll).

        See :class:`~quickmj.AsyncClient` for ``notify_hook`` and ``state`` and the errors
        every submit can raise.

        Returns:
            A Submission: ``await`` it for the AsyncJob, ``await ....wait()`` for the Task.

        """
        return self._submission(
            "/submit/change",
            lambda: build.change(task_id_of(task), label, self._hook(notify_hook), state),
            parent_succeeded=_seen_succeeded(task),
        )

    def simple_change(
        self, content: str, *, notify_hook: str | None = None, state: str | None = None
    ) -> Submission:
        """Upscale, vary or reroll with ``/submit/simple-change``.

        Args:
            content: ``"<task id> <label>"``, such as ``"1730621826053455 U2"`` (labels as
                in :meth:`change`).

        See :class:`~quickmj.AsyncClient` for ``notify_hook`` and ``state`` and the errors
        every submit can raise.

        Returns:
            A Submission: ``await`` it for the AsyncJob, ``await ....wait()`` for the Task.

        """
        return self._submission(
            "/submit/simple-change",
            lambda: build.simple_change(content, self._hook(notify_hook), state),
        )

    def video(
        self,
        prompt: str,
        *,
        image: ImageInput | None = None,
        end_image: ImageInput | None = None,
        motion: str | None = None,
        loop: bool | None = None,
        notify_hook: str | None = None,
        state: str | None = None,
    ) -> Submission:
        """Animate an image (``/submit/video``; TrueAI and newer QuickRouter/new-api).

        The finished task's ``video_url``/``video_urls`` hold the videos.

        Args:
            prompt: the prompt guiding the animation.
            image: the first frame: bytes, a file path, a ``data:`` URL or an http(s) URL.
            end_image: an optional last frame (same forms).
            motion: ``"low"`` or ``"high"``; None for the relay's default.
            loop: make the video loop (end where it starts); None for the default.

        See :class:`~quickmj.AsyncClient` for ``notify_hook`` and ``state`` and the errors
        every submit can raise.

        Returns:
            A Submission: ``await`` it for the AsyncJob, ``await ....wait()`` for the Task.

        """
        return self._submission(
            "/submit/video",
            lambda: build.video(
                prompt, image, end_image, motion, loop, self._hook(notify_hook), state
            ),
        )

    def edits(
        self,
        prompt: str,
        image: ImageInput,
        *,
        notify_hook: str | None = None,
        state: str | None = None,
    ) -> Submission:
        """Edit ``image`` following ``prompt`` (``/submit/edits``; TrueAI, newer new-api).

        Args:
            prompt: what to change.
            image: the image to edit: bytes, a file path, a ``data:`` URL or an http(s) URL.

        See :class:`~quickmj.AsyncClient` for ``notify_hook`` and ``state`` and the errors
        every submit can raise.

        Returns:
            A Submission: ``await`` it for the AsyncJob, ``await ....wait()`` for the Task.

        """
        return self._submission(
            "/submit/edits",
            lambda: build.edits(prompt, image, self._hook(notify_hook), state),
        )

    def swap_face(
        self,
        source: ImageInput,
        target: ImageInput,
        *,
        notify_hook: str | None = None,
        state: str | None = None,
    ) -> Submission:
        """Put the face of ``source`` onto ``target`` (``/insight-face/swap``).

        Args:
            source: the image with the face: bytes, a file path or a ``data:`` URL.
            target: the image that receives it (same forms).

        See :class:`~quickmj.AsyncClient` for ``notify_hook`` and ``state`` and the errors
        every submit can raise.

        Returns:
            A Submission: ``await`` it for the AsyncJob, ``await ....wait()`` for the Task.

        """
        return self._submission(
            "/insight-face/swap",
            lambda: build.swap_face(source, target, self._hook(notify_hook), state),
        )

    async def upload_images(self, images: Sequence[ImageInput] | ImageInput) -> list[str]:
        """Upload images for use in prompts (no task is created).

        Args:
            images: one image or several: bytes, file paths or ``data:`` URLs.

        Returns:
            The URLs the relay stored them at, in order.

        Raises:
            InvalidInputError: no image, or one that cannot be read.
        """
        return await self._relay.upload(await build.upload(images))

    # ---- notifyHook ----

    def _hook(self, notify_hook: str | None) -> str | None:
        """The notifyHook to send: the caller's, else an active receiver's (if any)."""
        return self._core.webhook_url if notify_hook is None else notify_hook

    def use_webhook(self, receiver: WebhookReceiver | None) -> None:
        """Send ``receiver.url`` as notifyHook on every later submit.

        For a receiver mounted in your own aiohttp application; ``webhook_receiver`` does
        this for you. A ``notify_hook=`` argument still wins.

        Args:
            receiver: the receiver whose URL to send; None stops sending one.

        Raises:
            InvalidInputError: the receiver has no public URL yet.
        """
        self._core.webhook_url = None if receiver is None else receiver.url

    @contextlib.asynccontextmanager
    async def webhook_receiver(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        public_url: str | None = None,
        verify: bool = True,
    ) -> AsyncIterator[WebhookReceiver]:
        """Serve a notifyHook receiver while the block runs; submits carry its URL.

        Pushed tasks resolve waits without polling (ids are still polled slowly as a safety
        net). See ``quickmj.webhook``.

        Args:
            host: the address to listen on (``"0.0.0.0"`` to accept hooks from elsewhere).
            port: the port to listen on; 0 picks a free one.
            public_url: the address the relay can reach (default: the bound address).
            verify: True (default) checks every pushed final state with one read of the
                relay before a waiter is woken; False believes pushes as they come (unsafe
                when others can see the hook URL: TrueAI lists it to every user).

        Yields:
            The serving WebhookReceiver (``url``, ``stats``).
        """
        from .webhook import WebhookReceiver

        receiver = WebhookReceiver(
            self.poller.feed, public_url=public_url, relay_url=self.base_url, verify=verify
        )
        async with receiver.serve(host, port):
            self.use_webhook(receiver)
            try:
                yield receiver
            finally:
                self.use_webhook(None)

    async def _custom_id(self, task: TaskRef, button: Button | str) -> str:
        if isinstance(button, Button):
            return button.custom_id
        if not isinstance(button, str) or not button.strip():
            raise InvalidInputError("button must be a Button, a customId or a label")
        if button.startswith("MJ::"):
            return button  # a raw customId, known to us or not
        resolved = task if isinstance(task, Task) else await self.fetch(task)
        return resolved.button(button).custom_id

    # ---- reads ----

    async def fetch(self, task: TaskRef) -> Task:
        """Read the task's current state (one request).

        After a modal, new-api's fetch can answer a stale MODAL row: quickmj then reads the
        task through list-by-condition, which has the running row too.

        Args:
            task: the task's id, a Task, or a job handle.

        Returns:
            The task as the relay reports it now.

        Raises:
            TaskNotFoundError: the relay does not know the id.
        """
        return await self._relay.fetch(check_task_id(task_id_of(task)))

    async def list_tasks(self, ids: Iterable[str]) -> list[Task]:
        """One list-by-condition request, as the relay answers it.

        Any order, unknown ids left out, duplicate rows merged. Most callers want
        :meth:`fetch_many`.

        Args:
            ids: the task ids to read.

        Returns:
            The tasks the relay returned.
        """
        unique = [check_task_id(i) for i in dict.fromkeys(ids)]
        if not unique:
            return []
        rows = await self._relay.read_many(unique)
        return [structure_task(rows[i], i) for i in unique if i in rows]

    async def fetch_many(self, tasks: Iterable[TaskRef], *, max_concurrency: int = 4) -> list[Task]:
        """Fetch many tasks with list-by-condition, ``list_chunk_size`` ids per request.

        Args:
            tasks: task ids, Tasks or job handles.
            max_concurrency: list requests in flight at once.

        Returns:
            The tasks in input order (duplicates repeated).

        Raises:
            TaskNotFoundError: some ids were not returned; they are in ``task_ids``, the
                tasks that were found in ``found``.
        """
        ids = [check_task_id(task_id_of(t)) for t in tasks]
        unique = list(dict.fromkeys(ids))
        size = self._list_chunk_size
        chunks = [unique[i : i + size] for i in range(0, len(unique), size)]
        found: dict[str, Task] = {}
        limiter = anyio.Semaphore(max(1, max_concurrency))

        async def read(chunk: list[str]) -> None:
            async with limiter:
                rows = await self._relay.read_many(chunk)
            # Structured as each answer arrives, while its parsed JSON is still in the
            # CPU's cache (about 1 µs a task cheaper than all at the end).
            found.update({i: structure_task(raw, i) for i, raw in rows.items()})

        await _first_error(read, chunks)
        missing = [i for i in unique if i not in found]
        if missing:
            raise TaskNotFoundError(missing, found=[found[i] for i in ids if i in found])
        return [found[i] for i in ids]

    async def recent_tasks(self) -> list[Task]:
        """``GET /task/list``: the relay's latest tasks (self-hosted midjourney-proxy,
        TrueAI). QuickRouter does not serve it (UnsupportedByRelayError)."""
        return [structure_task(raw) for raw in await self._recent_entries()]

    async def _recent_entries(self) -> list[Any]:
        """Internal API (batch reconcile): ``GET /task/list`` as raw entries, for a caller
        that reads each one itself and skips the malformed (another user's, say)."""
        return await self._relay.task_list()

    async def balance(self) -> Balance:
        """What the key has left and has used (new-api / QuickRouter billing routes).

        Amounts come in the relay's units (``Balance.unit``; raw quota for new-api's
        ``/api/usage/token``) and in USD where the relay says how to convert. Sends no
        submit and costs nothing; an exhausted key can still read its balance.

        Returns:
            The key's Balance.

        Raises:
            UnsupportedByRelayError: the relay keeps no billing (self-hosted
                midjourney-proxy and TrueAI: count jobs instead).
            AuthenticationError: the relay refused the key (``reason`` says why).
        """
        return await read_balance(self._relay)

    async def image_seed(self, task: TaskRef) -> str:
        """Ask for the Midjourney seed of a finished task.

        Some relays block for up to a minute while the bot answers (``Timeouts.image_seed``).

        Args:
            task: the task's id, a Task, or a job handle.

        Returns:
            The seed, as the relay wrote it.

        Raises:
            TaskNotFoundError: the relay does not know the id.
        """
        return await self._relay.image_seed(check_task_id(task_id_of(task)))

    async def cancel(self, task: TaskRef) -> None:
        """Cancel a task (``/task/{id}/cancel``: TrueAI; admins only on a stock server).

        Args:
            task: the task's id, a Task, or a job handle.

        Raises:
            UnsupportedByRelayError: the relay has no cancel route.
            TaskNotFoundError: the relay does not know the id.
        """
        await self._relay.cancel(check_task_id(task_id_of(task)))

    async def download(
        self,
        task: TaskRef,
        dest: str | os.PathLike[str],
        *,
        index: int | None = None,
        filename: str | None = None,
    ) -> Path:
        """Save the task's image (a video job's video) into directory ``dest``.

        The name is derived from the task id (``<id>.png``, or ``<id>-<index>.png`` for one
        of ``image_urls``), never from the URL. The file appears only when complete (atomic
        rename).

        A 200 answer that is no image or video (an HTML page, whatever its Content-Type;
        an empty body) is never saved. When the link is refused or gone (HTTP 403/404/410:
        signed Discord links expire) or serves no image, a Task passed in is read again
        once and its link tried if it changed. A loopback link to the relay's image route
        (new-api without ServerAddress: ``http://localhost:3000/mj/image/{id}``) is read
        through ``base_url``.

        Args:
            task: the task (a Task is used as it is; an id or handle is fetched first).
            dest: the directory to save into.
            index: which of the task's ``image_urls`` to save (1-based); None saves the main
                image (or video).
            filename: the file's stem instead of the task id (sanitised too).

        Returns:
            The path of the saved file.

        Raises:
            ImageExpiredError: the link is refused or gone and the relay has no fresher one.
            NotAnImageError: the link answers something that is no image (nothing saved).
            DownloadError: the task has no image yet, or it could not be fetched.
            InvalidInputError: ``index`` is out of range.
            StorageError: the disk refused the write.
        """
        if isinstance(task, Task):
            # A Task may be old (its signed link expired): a dead link re-reads it once.
            return await save_task_media(
                self._relay, task, dest, index=index, filename=filename, reread=self.fetch
            )
        resolved = await self.fetch(task)
        return await save_task_media(
            self._relay, resolved, dest, index=index, filename=filename, reread=None
        )

    # ---- waiting (through the shared poller) ----

    async def wait(
        self,
        task: TaskRef,
        *,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> Task:
        """Wait until the task finishes and return it (status SUCCESS).

        Concurrent waits on one id share one tracked entry of the poller.

        Args:
            task: the task's id, a Task, or a job handle.
            timeout: seconds to wait (None: no limit). The job itself goes on after a
                timeout.
            on_progress: called with the Task on each real change (status, progress,
                result); may be a coroutine function.

        Returns:
            The finished Task.

        Raises:
            TaskFailedError: the task ended in FAILURE or CANCEL (``.task`` has it).
            TaskTimeoutError: ``timeout`` passed first.
            TaskNotFoundError: the relay does not know the id.
            TaskNeedsModalError: the task sits in MODAL, waiting for :meth:`modal`.
        """
        return await wait(self.poller, task_id_of(task), timeout=timeout, on_progress=on_progress)

    def as_completed(
        self, tasks: Iterable[TaskRef], *, timeout: float | None = None
    ) -> AsyncIterator[Task]:
        """Yield each task as it reaches a terminal state, in completion order.

        Failed tasks are yielded too (check ``task.is_failed``); a task waiting in MODAL is
        yielded as it is; stalled ones raise TaskStalledError after the others
        (``PollPolicy.stall_after``).

        Args:
            tasks: task ids, Tasks or job handles (duplicates are waited for once).
            timeout: seconds for the whole iteration (None: no limit).

        Yields:
            Each finished Task.

        Raises:
            TaskNotFoundError: some ids are unknown (raised after the others were yielded).
            TaskTimeoutError: ``timeout`` passed; ``pending`` lists the unfinished ids.
        """
        return as_completed(self.poller, [task_id_of(t) for t in tasks], timeout=timeout)

    def watch(self, task: TaskRef) -> AsyncIterator[Task]:
        """Yield the task on each real change of state, ending with its final state.

        A FAILURE is yielded, not raised.

        Args:
            task: the task's id, a Task, or a job handle.

        Yields:
            The task's states, the final one last.
        """
        return watch(self.poller, task_id_of(task))


#: (base URL, mode) pairs already warned about: the warning is logged once per process.
_MODE_WARNED: set[tuple[str, str]] = set()


def _check_mode(mode: Mode | None, dialect: Dialect, base_url: str) -> None:
    """Refuse a speed mode a dialect cannot serve; warn once where it is dropped.

    A self-hosted midjourney-proxy is served under ``/mj`` only, so every ``/mj-fast``
    request would be a 404. new-api (QuickRouter) serves ``/{mode}/mj`` but strips the
    prefix before it forwards (``getMjRequestPath``): the key's default speed applies.
    """
    if mode is None:
        return
    if dialect == "midjourney-proxy":
        raise ConfigurationError(
            f"mode={mode!r}: midjourney-proxy serves no speed-mode prefix (/mj-{mode}/mj is a "
            f"404 there); use mode=None and put --{mode} in the prompt"
        )
    if dialect == "quickrouter" and (base_url, mode) not in _MODE_WARNED:
        _MODE_WARNED.add((base_url, mode))
        logger.warning(
            "quickmj: mode=%r: new-api relays such as QuickRouter drop the /mj-%s prefix before "
            "forwarding, so the key's default speed likely applies; put --%s in the prompt "
            "instead (unless the relay strips speed flags)",
            mode,
            mode,
            mode,
        )


def _seen_succeeded(task: TaskRef) -> bool:
    """``task`` is a Task in SUCCESS, or a job handle whose last state seen was."""
    seen = task if isinstance(task, Task) else getattr(task, "last", None)
    return isinstance(seen, Task) and seen.status is TaskStatus.SUCCESS


# customId kinds /submit/change can do instead (midjourney-proxy has no /submit/action).
_CHANGE_LABEL = {"upsample": "U", "variation": "V", "reroll": "R"}


def _no_action_route(button: Button | str) -> UnsupportedByRelayError:
    """midjourney-proxy answers /submit/action 404: say so, and what to call instead."""
    if isinstance(button, str) and not button.startswith("MJ::"):
        wanted = button.strip()
        label = {"🔄": "R"}.get(wanted, wanted.upper())
    else:
        pressed = button if isinstance(button, Button) else Button(custom_id=str(button))
        letter = _CHANGE_LABEL.get(pressed.kind, "")
        label = letter + (str(pressed.index) if pressed.index and letter != "R" else "")
    if label == "R" or (len(label) == 2 and label[0] in "UV" and label[1] in "1234"):
        how = f"use change(task, {label!r}) instead"
    else:
        how = "it can only upscale, vary or reroll, with change(task, 'U1'..'U4', 'V1'..'V4', 'R')"
    return UnsupportedByRelayError(
        f"/submit/action: midjourney-proxy has no /submit/action route (nothing was sent); {how}",
        route="POST /submit/action",
        dialects=ROUTES["POST /submit/action"],
        path="/submit/action",
    )


async def _first_error(fn: Callable[[Any], Awaitable[None]], items: Sequence[Any]) -> None:
    """Run ``fn`` over ``items`` concurrently; the first QuickMJError stops the rest and is
    raised itself (not wrapped in an ExceptionGroup)."""
    errors: list[QuickMJError] = []

    async def guarded(item: Any, scope: anyio.CancelScope) -> None:
        try:
            await fn(item)
        except QuickMJError as exc:
            errors.append(exc)
            scope.cancel()

    async with anyio.create_task_group() as tg:
        for item in items:
            tg.start_soon(guarded, item, tg.cancel_scope)
    if errors:
        raise errors[0]
