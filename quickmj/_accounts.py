"""Several relay accounts in one run: ``AccountPool``, next to the single-key client.

Why a pool object and not ``AsyncClient(keys=[...])``: an :class:`~quickmj.AsyncClient`
is one account (one key, one relay, one poller, one budget), and every job handle already
carries the client that made it, so a pool of clients routes every later call of a job
(fetch, wait, actions, seed, download) to the account that owns it without a lookup, and
the single-key API stays exactly as it was. The pool adds what only several accounts
need: choosing an account for each new job (one with a free slot, least loaded first),
taking an account out of rotation when it answers 401/403 or "no quota" (one warning; the
others carry on), and per-account counters.

Accounts are named by a short fingerprint of their key (``AsyncClient.account``), in job
handles, journals, logs and summaries; the key itself is never shown.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl as ssl_module
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypedDict, cast

import attrs

from ._admission import Admission, SendPhase
from ._budgets import (
    AdmissionSetting,
    Budget,
    Lease,
    LocalBudgets,
    budget_factory,
    describe_budgets,
    fingerprint,
)
from ._client import AsyncClient
from ._config import (
    MODES,
    AuthScheme,
    Dialect,
    Mode,
    RetryPolicy,
    Secret,
    Timeouts,
    check_api_key,
    resolve_mode,
)
from ._jobs import AsyncJob, Submission, task_id_of
from ._models import BlendDimensions, BotType, Button, Task
from ._poller import PollPolicy
from ._transport import AsyncTransport
from ._types import ImageInput, ProgressCallback, TaskRef
from .errors import ConfigurationError, InvalidInputError, TaskNotFoundError, UsageError

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack is 3.11+; only checkers read it

    from ._aiohttp import BaseConnector, ClientSession, TraceConfig

__all__ = ("Account", "AccountPool", "Reservation", "read_keys")


class ClientOptions(TypedDict, total=False):
    """The :class:`~quickmj.AsyncClient` keyword arguments an :class:`AccountPool` passes
    to every account's client (typed, so a misspelt option is a type error, not a
    silently ignored one; at run time AsyncClient refuses it too)."""

    dialect: Dialect | None
    auth_scheme: AuthScheme | None
    timeouts: Timeouts | None
    retry: RetryPolicy | None
    poll: PollPolicy | None
    max_connections: int
    list_chunk_size: int
    transport: AsyncTransport | None
    proxy: str | None
    trust_env: bool
    ssl: ssl_module.SSLContext | bool | None
    headers: Mapping[str, str] | None
    user_agent: str | None
    session: ClientSession | None
    connector: BaseConnector | None
    trace_configs: Sequence[TraceConfig]


def _secret(value: str | Secret) -> Secret:
    return value if isinstance(value, Secret) else Secret(check_api_key(value))


@attrs.frozen(repr=False, eq=False)
class Account:
    """One relay account: its key, and optionally its own relay and speed mode.

    Args:
        api_key: the key (kept in a :class:`Secret`: never shown, never pickled).
        base_url: this account's relay (default: the pool's).
        mode: this account's speed mode (default: the pool's).
    """

    api_key: Secret = attrs.field(converter=_secret)
    base_url: str | None = None
    mode: Mode | None = attrs.field(default=None, converter=resolve_mode)

    def __repr__(self) -> str:
        return f"Account({self.fingerprint}, base_url={self.base_url!r}, mode={self.mode!r})"

    @property
    def fingerprint(self) -> str:
        """The key's short, non-secret name."""
        return fingerprint(self.api_key.get())


def read_keys(path: str | os.PathLike[str]) -> list[Account]:
    """Read a keys file: one key per line, optionally a base URL and a mode after it.

    Columns are separated by blanks or commas, in any order after the key (a column
    starting with ``http`` is the base URL, ``fast``/``relax``/``turbo`` the mode). Blank
    lines and ``#`` comments are skipped. Errors name the line, never the key.

    Returns:
        The accounts, in file order.

    Raises:
        InvalidInputError: the file is missing, empty, or a line is not understood.
    """
    name = os.fspath(path)
    try:
        text = Path(name).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInputError(
            f"{name}: cannot read the keys file ({type(exc).__name__})"
        ) from None
    accounts: list[Account] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        account = _parse_key_line(line, f"{name}:{number}")
        if account is None:
            continue
        label = f"{account.fingerprint}/{account.mode}"
        if label in seen:
            raise InvalidInputError(f"{name}:{number}: the same key as line {seen[label]}")
        seen[label] = number
        accounts.append(account)
    if not accounts:
        raise InvalidInputError(f"{name}: no keys")
    return accounts


def _parse_key_line(line: str, where: str) -> Account | None:
    text = line.split(" #", 1)[0].split("\t#", 1)[0].strip()
    if not text or text.startswith("#"):
        return None
    key, *columns = text.replace(",", " ").split()
    base_url: str | None = None
    mode: str | None = None
    for column in columns:
        if column.lower().startswith(("http://", "https://")) and base_url is None:
            base_url = column
        elif column.lower() in MODES and mode is None:
            mode = column.lower()
        else:
            raise InvalidInputError(
                f"{where}: after the key, expected a base URL and/or a mode "
                f"(fast, relax, turbo); got a column of {len(column)} characters"
            )
    return Account(key, base_url, cast("Mode | None", mode))


@attrs.define(eq=False)
class Reservation:
    """A slot of one account, taken before anything is sent (``AccountPool.reserve``).

    Send exactly one submit of ``client`` with it: ``await slot.send(slot.client.imagine(p))``.
    """

    lease: Lease
    """The account's slot (given back when the submit is answered, or on ``release``)."""
    client: AsyncClient
    """The account's client: build the one submit with it."""
    pool: AccountPool
    """The pool the slot belongs to (it records which account owns the new job)."""
    used: bool = False
    """Whether ``send`` was called (a slot sends one submit)."""

    @property
    def account(self) -> str:
        """The account the slot belongs to (its fingerprint label)."""
        return self.client.account

    async def send(self, submission: Submission) -> AsyncJob:
        """Send ``submission`` (made by ``self.client``) with this slot.

        Returns:
            The job's handle.

        Raises:
            UsageError: the slot was used already.
            SubmitRejectedError, SubmitOutcomeUnknownError: as the submit itself raises
                them (a queue-full or 429 answer freed the slot; reserve again).
        """
        if self.used:
            raise UsageError("a reserved slot sends one submit")
        self.used = True
        return await self.pool._send_with(self.lease, self.client, submission)


class AccountPool:
    """Several relay accounts used as one: each new job goes to an account with a free
    slot (least loaded first); every later call for a job goes to the account that owns it.

    Args:
        accounts: :class:`Account` objects or bare keys.
        admission: how each account's budget is kept: ``"adaptive"`` (default: learned
            in this process), an :class:`~quickmj.AdmissionPolicy`, or a budget factory
            such as ``quickmj.RedisBudgets`` (shared across processes).
        base_url: the relay of accounts that do not name their own.
        mode: the speed mode of accounts that do not name their own.
        **client_options: passed to every :class:`~quickmj.AsyncClient` (``dialect``,
            ``timeouts``, ``retry``, ``poll``, ``transport``, ...).

    Raises:
        ConfigurationError: no accounts, or the same key (and mode) twice.
    """

    def __init__(
        self,
        accounts: Sequence[Account | str],
        *,
        admission: AdmissionSetting = "adaptive",
        base_url: str | None = None,
        mode: Mode | None = None,
        **client_options: Unpack[ClientOptions],
    ) -> None:
        factory = budget_factory(admission)
        if factory is None:
            raise ConfigurationError("an AccountPool needs admission (the default 'adaptive')")
        if not accounts:
            raise ConfigurationError("an AccountPool needs at least one account")
        clients = []
        for item in accounts:
            account = item if isinstance(item, Account) else Account(item)
            client = AsyncClient(
                account.api_key.get(),
                base_url=account.base_url or base_url,
                mode=account.mode or mode,
                **client_options,
            )
            client._set_admission(factory, rotates=True)
            clients.append(client)
        self._setup(clients, owned=True, lent=None)

    @classmethod
    def _of(
        cls, clients: list[AsyncClient], *, owned: bool, lent: AsyncClient | None
    ) -> AccountPool:
        """Internal alternate constructor: a pool of clients made already (:meth:`wrap`);
        ``__init__`` makes its clients from keys. Both set the pool up with :meth:`_setup`."""
        pool = cls.__new__(cls)
        pool._setup(clients, owned=owned, lent=lent)
        return pool

    def _setup(self, clients: list[AsyncClient], *, owned: bool, lent: AsyncClient | None) -> None:
        """Every field of a pool, from its clients (each with admission on)."""
        self._clients = {c.account: c for c in clients}
        if len(self._clients) != len(clients):
            raise ConfigurationError("the same key (and mode) appears twice in the pool")
        self._owned = owned
        self._by_budget = {_budget_of(c): c for c in clients}
        self._gate = Admission(list(self._by_budget))
        self._owners: dict[str, AsyncClient] = {}
        self._lent = lent  # a wrapped client whose admission we lent (restore() ends it)

    @classmethod
    def wrap(cls, client: AsyncClient) -> AccountPool:
        """A pool of one client you keep owning (``run_batch`` uses it).

        Admission is turned on for the pool's life if the client has none (and turned
        off again by :meth:`restore`). With one account there is no rotation: a key that
        answers 401/403 or "no quota" keeps answering each submit, as without a pool.
        """
        lent = None
        if client.admission is None:
            client._set_admission(LocalBudgets(), rotates=False)
            lent = client
        return cls._of([client], owned=False, lent=lent)

    def __repr__(self) -> str:
        return f"<AccountPool {', '.join(self._clients)}>"

    # ---- lifecycle ----

    async def __aenter__(self) -> AccountPool:
        for client in self._clients.values():
            if self._owned:
                await client.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def restore(self) -> None:
        """Give a wrapped client its own admission setting back: off again, if it was
        (its jobs' slots are forgotten with the budget). Idempotent."""
        client, self._lent = self._lent, None
        gate = None if client is None else client._drop_admission()
        if gate is not None:
            await gate.aclose()

    async def aclose(self) -> None:
        """Close the clients the pool made (a wrapped client stays open); idempotent."""
        await self.restore()
        if self._owned:
            for client in self._clients.values():
                await client.aclose()

    # ---- accounts ----

    @property
    def accounts(self) -> list[str]:
        """The accounts' labels (key fingerprints, ``/mode`` where one is set)."""
        return list(self._clients)

    @property
    def clients(self) -> list[AsyncClient]:
        """One client per account, in the pool's order."""
        return list(self._clients.values())

    @property
    def budgets(self) -> list[Budget]:
        """Each account's budget: ``limit``, ``held``, ``stats``, ``disabled``."""
        return list(self._by_budget)

    def client(self, account: str | None = None) -> AsyncClient:
        """The client of ``account`` (a label or a bare fingerprint); None: the first.

        Raises:
            InvalidInputError: no such account in the pool.
        """
        if account is None:
            return next(iter(self._clients.values()))
        found = self._clients.get(account)
        if found is None:
            matches = [c for label, c in self._clients.items() if label.split("/")[0] == account]
            if len(matches) != 1:
                raise InvalidInputError(f"account {account!r} is not in the pool")
            found = matches[0]
        return found

    def disable(self, account: str, reason: str) -> None:
        """Take ``account`` out of rotation (its jobs can still be followed)."""
        _budget_of(self.client(account)).disable(reason)

    def owner(self, task: TaskRef) -> AsyncClient:
        """The client of the account that owns ``task`` (a handle knows; ids made through
        the pool are remembered; with one account, that one).

        Raises:
            InvalidInputError: the owner cannot be told (pass a job handle, or use
                ``pool.client(account)``).
        """
        if isinstance(task, AsyncJob) and task.account in self._clients:
            return self._clients[task.account or ""]
        found = self._owners.get(task_id_of(task))
        if found is not None:
            return found
        if len(self._clients) == 1:
            return self.client()
        raise InvalidInputError(
            f"task {task_id_of(task)}: which account owns it is unknown; pass its job "
            "handle or use pool.client(account)"
        )

    def stats(self) -> list[dict[str, Any]]:
        """Per account: slots sent, accepted, queue-full and 429 answers, the limit."""
        return describe_budgets(self.budgets)

    # ---- new jobs: an account with a free slot ----

    @contextlib.asynccontextmanager
    async def reserve(self, account: str | None = None) -> AsyncIterator[Reservation]:
        """Wait for a free slot (of ``account``, or of the least loaded account).

        Nothing is sent while waiting, so a caller can record the submit (a journal)
        after the slot is taken and before it goes out. An unused slot is given back.

        Raises:
            NoUsableAccountError: every account is out of rotation.
        """
        if account is None:
            lease = await self._gate.acquire()
            client = self._by_budget[lease.budget]
        else:
            client = self.client(account)
            gate = client.admission
            assert gate is not None
            lease = await gate.acquire()
        slot = Reservation(lease, client, self)
        try:
            yield slot
        finally:
            if not slot.used:
                lease.budget.release(lease)

    async def _send_with(
        self, lease: Lease, client: AsyncClient, submission: Submission
    ) -> AsyncJob:
        """Internal (``Reservation.send``, :meth:`_route`): send ``submission``, made by
        ``client``, with ``lease`` of its budget, and remember ``client`` owns the job."""
        submission._use_slot(lease)
        job = await submission
        self._owners[job.id] = client
        return job

    def _route(self, what: str, make: Callable[[AsyncClient], Submission]) -> Submission:
        phase = SendPhase()

        async def send() -> AsyncJob:
            async def attempt(lease: Lease) -> AsyncJob:
                client = self._by_budget[lease.budget]
                return await self._send_with(lease, client, make(client))

            return await self._gate.run(attempt, phase)

        return Submission(send, what, phase=phase)

    def imagine(
        self,
        prompt: str,
        *,
        images: Sequence[ImageInput] | ImageInput = (),
        bot_type: BotType | str | None = None,
        notify_hook: str | None = None,
        state: str | None = None,
    ) -> Submission:
        """:meth:`AsyncClient.imagine` on an account with a free slot."""
        return self._route(
            "POST /submit/imagine",
            lambda c: c.imagine(
                prompt, images=images, bot_type=bot_type, notify_hook=notify_hook, state=state
            ),
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
        """:meth:`AsyncClient.blend` on an account with a free slot."""
        return self._route(
            "POST /submit/blend",
            lambda c: c.blend(
                images,
                dimensions=dimensions,
                bot_type=bot_type,
                notify_hook=notify_hook,
                state=state,
            ),
        )

    def describe(
        self,
        image: ImageInput,
        *,
        bot_type: BotType | str | None = None,
        notify_hook: str | None = None,
        state: str | None = None,
    ) -> Submission:
        """:meth:`AsyncClient.describe` on an account with a free slot."""
        return self._route(
            "POST /submit/describe",
            lambda c: c.describe(image, bot_type=bot_type, notify_hook=notify_hook, state=state),
        )

    def shorten(
        self,
        prompt: str,
        *,
        bot_type: BotType | str | None = None,
        notify_hook: str | None = None,
        state: str | None = None,
    ) -> Submission:
        """:meth:`AsyncClient.shorten` on an account with a free slot."""
        return self._route(
            "POST /submit/shorten",
            lambda c: c.shorten(prompt, bot_type=bot_type, notify_hook=notify_hook, state=state),
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
        """:meth:`AsyncClient.video` on an account with a free slot."""
        return self._route(
            "POST /submit/video",
            lambda c: c.video(
                prompt,
                image=image,
                end_image=end_image,
                motion=motion,
                loop=loop,
                notify_hook=notify_hook,
                state=state,
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
        """:meth:`AsyncClient.edits` on an account with a free slot."""
        return self._route(
            "POST /submit/edits",
            lambda c: c.edits(prompt, image, notify_hook=notify_hook, state=state),
        )

    def swap_face(
        self,
        source: ImageInput,
        target: ImageInput,
        *,
        notify_hook: str | None = None,
        state: str | None = None,
    ) -> Submission:
        """:meth:`AsyncClient.swap_face` on an account with a free slot."""
        return self._route(
            "POST /insight-face/swap",
            lambda c: c.swap_face(source, target, notify_hook=notify_hook, state=state),
        )

    # ---- a job's later calls: the account that owns it ----

    def action(
        self,
        task: TaskRef,
        button: Button | str,
        *,
        choose_same_channel: bool = False,
        notify_hook: str | None = None,
        state: str | None = None,
    ) -> Submission:
        """:meth:`AsyncClient.action` on the account that owns ``task``."""
        return self.owner(task).action(
            task,
            button,
            choose_same_channel=choose_same_channel,
            notify_hook=notify_hook,
            state=state,
        )

    def modal(
        self,
        task: TaskRef,
        *,
        prompt: str | None = None,
        mask: ImageInput | None = None,
        notify_hook: str | None = None,
        state: str | None = None,
    ) -> Submission:
        """:meth:`AsyncClient.modal` on the account that owns ``task``."""
        return self.owner(task).modal(
            task, prompt=prompt, mask=mask, notify_hook=notify_hook, state=state
        )

    def change(
        self,
        task: TaskRef,
        label: str,
        *,
        notify_hook: str | None = None,
        state: str | None = None,
    ) -> Submission:
        """:meth:`AsyncClient.change` on the account that owns ``task``."""
        return self.owner(task).change(task, label, notify_hook=notify_hook, state=state)

    async def fetch(self, task: TaskRef) -> Task:
        """:meth:`AsyncClient.fetch` on the account that owns ``task``."""
        return await self.owner(task).fetch(task)

    async def wait(
        self,
        task: TaskRef,
        *,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> Task:
        """:meth:`AsyncClient.wait` on the account that owns ``task``."""
        return await self.owner(task).wait(task, timeout=timeout, on_progress=on_progress)

    async def download(
        self,
        task: TaskRef,
        dest: str | os.PathLike[str],
        *,
        index: int | None = None,
        filename: str | None = None,
    ) -> Path:
        """:meth:`AsyncClient.download` on the account that owns ``task``."""
        return await self.owner(task).download(task, dest, index=index, filename=filename)

    async def image_seed(self, task: TaskRef) -> str:
        """:meth:`AsyncClient.image_seed` on the account that owns ``task``."""
        return await self.owner(task).image_seed(task)

    async def cancel(self, task: TaskRef) -> None:
        """:meth:`AsyncClient.cancel` on the account that owns ``task``."""
        await self.owner(task).cancel(task)

    async def as_completed(
        self, tasks: Iterable[TaskRef], *, timeout: float | None = None
    ) -> AsyncIterator[Task]:
        """Each task as it ends, across accounts (see :meth:`AsyncClient.as_completed`).

        Raises:
            TaskNotFoundError: after the others, for ids their account does not know.
            TaskTimeoutError: ``timeout`` passed (per account).
        """
        groups: dict[AsyncClient, list[TaskRef]] = {}
        for task in tasks:
            groups.setdefault(self.owner(task), []).append(task)
        queue: asyncio.Queue[Task | BaseException | None] = asyncio.Queue()

        async def feed(client: AsyncClient, refs: list[TaskRef]) -> None:
            try:
                async for done in client.as_completed(refs, timeout=timeout):
                    await queue.put(done)
            except Exception as exc:  # handed to the consumer, raised there
                await queue.put(exc)
            await queue.put(None)

        feeders = [asyncio.create_task(feed(c, refs)) for c, refs in groups.items()]
        try:
            async for item in _drain(queue, len(feeders)):
                yield item
        finally:
            for feeder in feeders:
                feeder.cancel()
            await asyncio.gather(*feeders, return_exceptions=True)


async def _drain(
    queue: asyncio.Queue[Task | BaseException | None], feeders: int
) -> AsyncIterator[Task]:
    """Tasks from ``feeders`` producers until each said None; their errors at the end."""
    errors: list[BaseException] = []
    while feeders:
        item = await queue.get()
        if item is None:
            feeders -= 1
        elif isinstance(item, BaseException):
            errors.append(item)
        else:
            yield item
    if errors:
        others = [e for e in errors if not isinstance(e, TaskNotFoundError)]
        if others:
            raise others[0]
        raise TaskNotFoundError([i for e in errors for i in cast(TaskNotFoundError, e).task_ids])


def _budget_of(client: AsyncClient) -> Budget:
    gate = client.admission
    if gate is None:
        raise UsageError("the client has no admission budget")
    return gate.budgets[0]
