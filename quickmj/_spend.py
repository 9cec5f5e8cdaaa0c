"""What a batch costs: prices, the spend of a batch directory, plans and the spend cap.

Relays charge per submit, by action (new-api's models ``mj_imagine``, ``mj_upscale``...;
each has its own fixed price). A batch makes two kinds of submits: an imagine per prompt
and a press per ``--upscale`` label. So the spend of a batch directory is the count of its
paid submits, by action (and mode), times their prices, and it is read from the journal:
a submit with a task id is paid; one whose outcome is unknown (or that a killed run left
on the wire) may be, and is counted as paid; one the relay refused created nothing.

Prices come from ``--price ACTION=USD`` or from ``spend.json`` in the batch directory,
where a run keeps the prices it was given and those it learned from the balance (the
first submit of an action sent alone between two balance reads). A relay does not tell
a key its prices (new-api's public ``/api/pricing`` lists prices and group ratios but
not the group the key bills in), so quickmj never guesses them.

The cap (``max_spend``) is kept by reservation: before a prompt's first submit in a run,
the run holds the price of every submit the prompt may still make (its imagine and its
upscales); the hold becomes spend as each submit is sent, and what is left is given back
when the prompt ends. A prompt is started only if the directory's spend plus every hold
plus its own cost fits under the cap, so submits in flight are always counted and the
cap is never crossed at the prices used (an overshoot can only come from a relay
charging more than those prices).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import math
import os
import re
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio
import attrs

from ._billing import Balance
from ._journal import JournalRow, Phase
from .errors import InvalidInputError, QuickMJError, StorageError

__all__ = (
    "ACTIONS",
    "SPEND_NAME",
    "BalanceWatch",
    "BatchPlan",
    "Ledger",
    "PriceBook",
    "SpendLine",
    "SpendReport",
    "paid_submits",
    "parse_prices",
    "plan_rows",
    "spend_report",
    "usd_moved",
)

logger = logging.getLogger("quickmj")

#: The file in a batch directory that keeps its prices (and submits resent by
#: ``--resubmit-unknown``, which the journal no longer shows).
SPEND_NAME = "spend.json"

#: Midjourney actions a relay prices (new-api's model names without ``mj_``).
ACTIONS = frozenset(
    {
        "imagine",
        "upscale",
        "variation",
        "high_variation",
        "low_variation",
        "reroll",
        "blend",
        "describe",
        "shorten",
        "modal",
        "zoom",
        "custom_zoom",
        "pan",
        "inpaint",
        "swap_face",
        "upload",
        "video",
        "edits",
    }
)
_MODES = ("fast", "relax", "turbo")
#: Speed flags in a prompt (the last one applies): they choose the job's mode.
_MODE_FLAG = re.compile(r"(?:^|\s)--(fast|relax|turbo)(?=\s|$)")
#: Float slack when comparing sums of prices with the cap (prices are cents).
_EPS = 1e-9

#: (action, mode, account): the key of a count of submits.
Key = tuple[str, str | None, str | None]


# ---- prices ----


def _action(text: str) -> str:
    name = text.strip().lower().replace("-", "_")
    name = name.removeprefix("mj_")
    if name not in ACTIONS:
        known = ", ".join(sorted(ACTIONS))
        raise InvalidInputError(f"prices: unknown action {text!r} (one of: {known})")
    return name


def _price_key(text: str) -> str:
    """``imagine``, ``mj_imagine``, ``imagine/relax`` -> ``imagine`` or ``imagine/relax``."""
    action, _, mode = text.partition("/")
    key = _action(action)
    if mode:
        if mode.strip().lower() not in _MODES:
            raise InvalidInputError(
                f"prices: unknown mode {mode!r} in {text!r} (fast, relax or turbo)"
            )
        key = f"{key}/{mode.strip().lower()}"
    return key


def _usd(text: str, where: str) -> float:
    try:
        value = float(text.strip().removeprefix("$"))
    except ValueError:
        raise InvalidInputError(f"{where}: not a number of USD: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise InvalidInputError(f"{where}: USD must be finite and not negative: {text!r}")
    return value


def parse_prices(values: Iterable[str] | Mapping[str, float] | None) -> dict[str, float]:
    """Prices from ``ACTION=USD`` strings (``--price``) or a mapping, checked.

    ``ACTION`` is a Midjourney action as relays price it (``imagine``, ``upscale``,
    ``variation``...; new-api's ``mj_`` model names too), optionally with a speed mode
    (``imagine/relax=0.05``: that price for relax jobs only).

    Raises:
        InvalidInputError: an unknown action or mode, or a price that is not a finite,
            non-negative number.
    """
    if not values:
        return {}
    pairs: list[tuple[str, Any]] = []
    if isinstance(values, Mapping):
        pairs = list(values.items())
    else:
        for text in values:
            name, sep, price = str(text).partition("=")
            if not sep or not name.strip():
                raise InvalidInputError(f"prices: ACTION=USD (imagine=0.10), not {text!r}")
            pairs.append((name, price))
    out: dict[str, float] = {}
    for name, price in pairs:
        key = _price_key(str(name))
        if isinstance(price, (int, float)) and not isinstance(price, bool):
            out[key] = _usd(str(float(price)), f"prices[{key!r}]")
        else:
            out[key] = _usd(str(price), f"prices[{key!r}]")
    return out


def mode_of(prompt: str, account_mode: str | None) -> str | None:
    """A job's speed mode: the prompt's last speed flag, else its account's (None: the
    key's default)."""
    flags = _MODE_FLAG.findall(prompt)
    return flags[-1] if flags else account_mode


def account_mode(account: str | None) -> str | None:
    """The mode in an account label (``fingerprint/relax``), if any."""
    if account and "/" in account:
        mode = account.rsplit("/", 1)[1]
        return mode if mode in _MODES else None
    return None


@attrs.frozen
class PriceBook:
    """Known prices in USD (``"imagine"`` or ``"imagine/relax"`` -> USD) and where each
    came from (``"given"``, ``"learned <when>"``)."""

    prices: Mapping[str, float] = attrs.field(factory=dict)
    sources: Mapping[str, str] = attrs.field(factory=dict)

    def get(self, action: str, mode: str | None = None) -> float | None:
        """The price of one submit (a mode's own price first), or None if unknown."""
        if mode is not None and f"{action}/{mode}" in self.prices:
            return self.prices[f"{action}/{mode}"]
        return self.prices.get(action)

    def with_prices(self, prices: Mapping[str, float], source: str) -> PriceBook:
        """These prices added (they win over the known ones)."""
        return PriceBook(
            {**self.prices, **prices}, {**self.sources, **dict.fromkeys(prices, source)}
        )

    def missing(self, actions: Iterable[str]) -> tuple[str, ...]:
        """The actions among ``actions`` without a price (a mode's own price is not
        enough: the mode of a job is known only once an account takes it)."""
        return tuple(sorted({a for a in actions if a not in self.prices}))


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


@attrs.define
class SpendFile:
    """``spend.json`` in a batch directory: its prices and its resent submits. Written
    (atomically) only by the run that owns the directory."""

    path: Path
    book: PriceBook = attrs.field(factory=PriceBook)
    resent: Counter[Key] = attrs.field(factory=Counter)
    """Submits of ``unknown`` outcome sent again by ``--resubmit-unknown``: the journal then
    shows only the new attempt, but the first may have been paid."""

    @classmethod
    def load(cls, out: str | os.PathLike[str]) -> SpendFile:
        """The directory's file (empty if there is none).

        Raises:
            InvalidInputError: the file is not what quickmj writes (edited by hand?).
        """
        path = Path(out) / SPEND_NAME
        try:
            data = json.loads(path.read_text("utf-8"))
        except (FileNotFoundError, NotADirectoryError):  # (--out itself is checked later)
            return cls(path)
        except (OSError, ValueError) as exc:
            raise InvalidInputError(
                f"{str(path)!r}: unreadable ({exc}); fix or remove it"
            ) from None
        try:
            entries = data.get("prices", {})
            prices = parse_prices({k: v["usd"] for k, v in entries.items()})
            sources = {_price_key(k): str(v.get("source", "stored")) for k, v in entries.items()}
            resent: Counter[Key] = Counter()
            for item in data.get("resent_unknown", []):
                key = (_action(item["action"]), item.get("mode"), item.get("account"))
                resent[key] += int(item["submits"])
        except (AttributeError, KeyError, TypeError, ValueError, InvalidInputError) as exc:
            raise InvalidInputError(
                f"{str(path)!r}: not a quickmj spend file ({exc}); fix or remove it"
            ) from None
        return cls(path, PriceBook(prices, sources), resent)

    def save(self) -> None:
        """Write the file atomically (a temporary file renamed over it)."""
        body = {
            "unit": "USD",
            "prices": {
                k: {"usd": v, "source": self.book.sources.get(k, "stored")}
                for k, v in sorted(self.book.prices.items())
            },
            "resent_unknown": [
                {"action": a, "mode": m, "account": acct, "submits": n}
                for (a, m, acct), n in sorted(self.resent.items(), key=str)
            ],
        }
        tmp = self.path.with_name(f".{self.path.name}.part")
        try:
            tmp.write_text(json.dumps(body, indent=1, sort_keys=True) + "\n", "utf-8")
            os.replace(tmp, self.path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise StorageError(
                f"cannot write {str(self.path)!r}: {exc.strerror or exc}",
                path=str(self.path),
                errno=exc.errno,
            ) from None


# ---- the spend of a directory ----


@attrs.frozen
class SpendLine:
    """Submits of one action, mode and account, and what they cost."""

    action: str
    """The submit's action (``"imagine"``, ``"upscale"``, ...)."""
    mode: str | None
    """``"fast"``, ``"relax"``, ``"turbo"``, or None: the key's default mode."""
    account: str | None
    """The account (its key's fingerprint label); None in a plan or when not recorded."""
    submits: int
    """How many such submits (paid, or maybe paid)."""
    usd: float | None
    """Their cost in USD (None: no price known for the action)."""


def _lines(counts: Mapping[Key, int], book: PriceBook) -> tuple[SpendLine, ...]:
    out = []
    for (action, mode, account), n in sorted(counts.items(), key=str):
        if n:
            price = book.get(action, mode)
            usd = None if price is None else round(price * n, 10)
            out.append(SpendLine(action, mode, account, n, usd))
    return tuple(out)


def _total(lines: Sequence[SpendLine]) -> float | None:
    if any(line.usd is None for line in lines):
        return None
    return round(sum(line.usd or 0.0 for line in lines), 10)


def _grouped(lines: Sequence[SpendLine], field: str) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for line in lines:
        name = str(getattr(line, field) or "?")
        have = out.get(name, 0.0)
        out[name] = None if have is None or line.usd is None else round(have + line.usd, 10)
    return out


class _Totals:
    """``submits`` and ``usd`` over ``lines``: shared by what was spent and what a plan
    would spend."""

    __slots__ = ()
    lines: tuple[SpendLine, ...]

    @property
    def submits(self) -> int:
        """Submits in all (spent: paid or maybe paid; a plan: those it would make)."""
        return sum(line.submits for line in self.lines)

    @property
    def usd(self) -> float | None:
        """Their cost in USD (None when an action's price is unknown)."""
        return _total(self.lines)


@attrs.frozen
class SpendReport(_Totals):
    """What a batch directory has spent (whole directory, every run), by action and
    account; maybe-paid submits (unknown outcomes) count as paid."""

    lines: tuple[SpendLine, ...] = ()
    """The submits by action, mode and account, and what each group cost."""
    cap: float | None = None
    """The cap the run kept (USD), if any."""
    stopped: str | None = None
    """Why the cap stopped the run from starting more prompts (None: it did not)."""
    prices: Mapping[str, float] = attrs.field(factory=dict)
    """The prices used (``"imagine"`` or ``"imagine/relax"`` -> USD)."""
    beyond_prices: float = 0.0
    """USD the relay charged this run beyond those prices, as the key's balance showed (a
    capped run reads it): a price is too low. Not in ``usd``."""

    @property
    def by_action(self) -> dict[str, float | None]:
        """USD per action (None where its price is unknown)."""
        return _grouped(self.lines, "action")

    @property
    def by_account(self) -> dict[str, float | None]:
        """USD per account (``"?"``: submits whose account was not recorded)."""
        return _grouped(self.lines, "account")

    @property
    def submits_by_action(self) -> dict[str, int]:
        """Paid (or maybe paid) submits per action."""
        out: Counter[str] = Counter()
        for line in self.lines:
            out[line.action] += line.submits
        return dict(out)

    def as_json(self) -> dict[str, Any]:
        """A JSON-ready dict (the CLI's ``--json`` and the summary)."""
        return {
            "usd": self.usd,
            "submits": self.submits,
            "by_action": self.by_action,
            "by_account": self.by_account,
            "submits_by_action": self.submits_by_action,
            "cap": self.cap,
            "stopped": self.stopped,
            "prices": dict(self.prices),
            "beyond_prices": self.beyond_prices,
            "lines": [attrs.asdict(line) for line in self.lines],
        }


def paid_submits(row: JournalRow) -> list[Key]:
    """The submits of a row that are (or may be) paid: its grid once it has a task id,
    or while its submit's outcome is unknown; each pressed upscale, and a press on the
    wire or of unknown outcome."""
    mode = mode_of(row.prompt, account_mode(row.account))
    out: list[Key] = []
    if row.task_id is not None or row.phase in (Phase.SUBMITTING, Phase.UNKNOWN):
        out.append(("imagine", mode, row.account))
    presses = len(row.upscales)
    if row.pressing and row.pressing not in row.upscales and row.task_id is not None:
        presses += 1
    out.extend([("upscale", mode, row.account)] * presses)
    return out


def spend_counts(rows: Iterable[JournalRow], resent: Mapping[Key, int]) -> Counter[Key]:
    """The directory's paid (or maybe paid) submits by action, mode and account."""
    counts: Counter[Key] = Counter(resent)
    for row in rows:
        counts.update(paid_submits(row))
    return counts


def row_usd(row: JournalRow, book: PriceBook) -> float | None:
    """What one prompt's submits cost (None: a price is unknown)."""
    return _total(_lines(Counter(paid_submits(row)), book))


def spend_report(
    rows: Iterable[JournalRow],
    book: PriceBook,
    resent: Mapping[Key, int] | None = None,
    *,
    cap: float | None = None,
    stopped: str | None = None,
    beyond_prices: float = 0.0,
) -> SpendReport:
    """The spend of a journal's rows at ``book``'s prices."""
    counts = spend_counts(rows, resent or {})
    return SpendReport(
        _lines(counts, book), cap, stopped, dict(book.prices), round(beyond_prices, 10)
    )


# ---- plans ----


@attrs.frozen
class BatchPlan(_Totals):
    """What a run would do, computed without sending anything (``quickmj batch
    --dry-run``): its submits by action and mode, and their cost where prices are known."""

    prompts: int
    """Prompts in the input."""
    open: int
    """Prompts the run would work on (all of them; on a resume only those left)."""
    lines: tuple[SpendLine, ...]
    """Submits the run would make, by action and mode (``account`` is None)."""
    prices: Mapping[str, float] = attrs.field(factory=dict)
    """The prices known (``"imagine"`` -> USD)."""
    price_sources: Mapping[str, str] = attrs.field(factory=dict)
    """Where each of those prices came from (``"given"``, ``"learned <when>"``, ``"stored"``)."""
    spent: SpendReport | None = None
    """What the directory has spent already (a resume), None for a fresh run."""
    unknown: int = 0
    """Prompts whose outcome is unknown and that the run leaves alone (settle them with
    ``quickmj reconcile``, or resend them with ``--resubmit-unknown``)."""
    cap: float | None = None
    """A cap to check the plan against (USD), if given."""

    @property
    def missing(self) -> tuple[str, ...]:
        """Actions the run would submit whose price is unknown."""
        return tuple(sorted({line.action for line in self.lines if line.usd is None}))

    def as_json(self) -> dict[str, Any]:
        """A JSON-ready dict (the CLI's ``--json``)."""
        return {
            "prompts": self.prompts,
            "open": self.open,
            "submits": self.submits,
            "usd": self.usd,
            "missing_prices": list(self.missing),
            "lines": [attrs.asdict(line) for line in self.lines],
            "prices": dict(self.prices),
            "price_sources": dict(self.price_sources),
            "spent": None if self.spent is None else self.spent.as_json(),
            "unknown": self.unknown,
            "cap": self.cap,
        }


def remaining_submits(
    row: JournalRow, upscale: Sequence[str], *, resubmit_unknown: bool = False
) -> tuple[int, int]:
    """(imagines, upscales) a run would still send for ``row``."""
    if row.phase is Phase.UNKNOWN and not resubmit_unknown:
        return (0, 0)
    if row.phase.is_final and row.phase is not Phase.UNKNOWN:
        return (0, 0)
    if row.phase is Phase.SUBMITTING and row.task_id is None:
        return (0, 0)  # killed mid-submit: the run marks it unknown and sends nothing
    if row.task_id is None:
        return (1, len(upscale))
    # A paid grid: the presses not made yet (one of unknown outcome is sent again).
    return (0, sum(1 for label in upscale if label not in row.upscales))


def plan_rows(
    rows: Sequence[JournalRow],
    upscale: Sequence[str],
    book: PriceBook,
    *,
    mode: str | None = None,
    resubmit_unknown: bool = False,
) -> tuple[tuple[SpendLine, ...], int, int]:
    """The submits a run over ``rows`` would make (lines, open prompts, unknown left)."""
    counts: Counter[Key] = Counter()
    open_rows = unknown = 0
    for row in rows:
        imagines, ups = remaining_submits(row, upscale, resubmit_unknown=resubmit_unknown)
        if row.phase is Phase.UNKNOWN and not resubmit_unknown:
            unknown += 1
        if not row.phase.is_final or (row.phase is Phase.UNKNOWN and resubmit_unknown):
            open_rows += 1
        job_mode = mode_of(row.prompt, account_mode(row.account) or mode)
        counts[("imagine", job_mode, None)] += imagines
        counts[("upscale", job_mode, None)] += ups
    return _lines(counts, book), open_rows, unknown


# ---- the cap ----


def usd_moved(before: Balance, after: Balance) -> float | None:
    """USD the balance moved by between two reads (what was charged meanwhile): the
    remainder's fall, or (an unlimited key) the usage's rise; None: not in USD."""
    if before.remaining_usd is not None and after.remaining_usd is not None:
        return before.remaining_usd - after.remaining_usd
    if before.used_usd is not None and after.used_usd is not None:
        return after.used_usd - before.used_usd
    return None


class Ledger:
    """A run's spend and its cap: the directory's spend so far, plus holds of the prompts
    in progress (see the module docstring). One per run; used from the run's event loop
    only, so a check and its hold happen with no await between them."""

    def __init__(
        self,
        book: PriceBook,
        counts: Counter[Key],
        *,
        cap: float | None = None,
        learn: Iterable[str] = (),
    ) -> None:
        self.book = book
        self.cap = cap
        self.counts: Counter[Key] = Counter(counts)
        self.spent = self._priced()
        self.held: dict[int, float] = {}
        self.stopped: str | None = None
        self._changed = anyio.Event()
        #: The most ever spent plus held at once (the benchmark reads it).
        self.peak = self.spent
        #: Actions whose price the run learns from the balance (with a cap only): until
        #: they are known one prompt (``learner``) runs alone, so the balance moves only
        #: by its submits.
        self.unknown = set(learn) if cap is not None else set()
        self.learner: int | None = None
        #: USD the relay charged this run beyond what the prices say (``observe``):
        #: counted as spent, so wrong prices cannot run far past the cap.
        self.extra = 0.0
        self._run_counts: Counter[Key] = Counter()  # submits this run sent
        #: The prices of the submits on the wire now (sent, not answered yet): the
        #: relay may have charged them already.
        self.on_wire = 0.0

    def _priced(self, counts: Counter[Key] | None = None) -> float:
        counts = self.counts if counts is None else counts
        return sum((self.book.get(a, m) or 0.0) * n for (a, m, _), n in counts.items())

    @property
    def sent_this_run(self) -> int:
        """Submits this run sent (accepted, or of unknown outcome)."""
        return sum(self._run_counts.values())

    def price(self, action: str, mode: str | None) -> float:
        return self.book.get(action, mode) or 0.0

    @property
    def exposure(self) -> float:
        """Spent plus held: the most the directory can have spent once every prompt in
        progress ends."""
        return self.spent + sum(self.held.values())

    async def admit(self, index: int, cost: Callable[[], float], what: str) -> bool:
        """Hold ``cost()`` USD (at the prices known then) for prompt ``index`` if it fits
        under the cap; while other prompts hold money that may come back, wait for them.
        False: it does not fit (``stopped`` says why), and no prompt is started after."""
        if self.cap is None:
            return True
        while self.stopped is None:
            if self.unknown and self.learner not in (None, index):
                await self._changed.wait()  # another prompt is learning a price
                continue
            need = cost()
            if self.unknown:
                return self._learner(index, need)
            if self.exposure + need <= self.cap + _EPS:
                self.held[index] = self.held.get(index, 0.0) + need
                self.peak = max(self.peak, self.exposure)
                return True
            if not self.held:
                self.stopped = (
                    f"the next {what} would cross max_spend {self.cap:.2f} USD "
                    f"(spent {self.spent:.2f} USD, it needs {need:.2f} USD)"
                )
                self._wake()
                break
            changed = self._changed
            await changed.wait()
        return False

    def _learner(self, index: int, need: float) -> bool:
        """The prompt that runs alone while a price is learned (``need``: the prices
        known of its submits). Its submits of unknown price are sent before that price is
        known: they may cross the cap, by at most those submits."""
        if self.cap is not None and self.spent + need >= self.cap - _EPS:
            self.stopped = (
                f"max_spend {self.cap:.2f} USD is spent (spent {self.spent:.2f} USD) before "
                f"the price of {' and '.join(sorted(self.unknown))} could be learned"
            )
            self._wake()
            return False
        self.learner = index
        self.held[index] = self.held.get(index, 0.0) + need
        return True

    def learns(self, action: str) -> bool:
        """Whether the submit of ``action`` about to be sent teaches its price."""
        return action in self.unknown

    def learned(self, action: str, usd: float) -> None:
        """The balance moved by ``usd`` for one submit of ``action``: its price."""
        self.book = self.book.with_prices({action: round(usd, 6)}, f"learned {_now()}")
        self.unknown.discard(action)
        self.spent = self._priced() + self.extra
        self.peak = max(self.peak, self.exposure)
        self._wake()

    def observe(self, charged: float) -> None:
        """The relay says this run was charged ``charged`` USD so far (balance reads).
        What it charged beyond this run's spend at the prices used, and beyond the
        submits on the wire (the relay may have charged them before they are counted),
        is spent too: a price given too low is caught within a few reads."""
        priced = self._priced(self._run_counts)
        gap = charged - priced - self.on_wire
        if gap > self.extra + _EPS:
            self.spent += gap - self.extra
            self.extra = gap
            self.peak = max(self.peak, self.exposure)

    def cannot_learn(self, action: str, why: str) -> None:
        """The price of ``action`` could not be learned: no prompt is started after."""
        self.stopped = f"the price of {action} could not be learned from the balance ({why})"
        self._wake()

    def commit(self, index: int, action: str, mode: str | None, account: str | None) -> None:
        """A submit was sent (accepted, or its outcome is unknown): its price is spent,
        out of the prompt's hold."""
        price = self.price(action, mode)
        self.counts[(action, mode, account)] += 1
        self._run_counts[(action, mode, account)] += 1
        self.spent += price
        if index in self.held:
            self.held[index] = max(0.0, self.held[index] - price)
        self.peak = max(self.peak, self.exposure)

    def release(self, index: int) -> None:
        """The prompt ended (for this run): what it still holds comes back (a learner
        that ended before its prices were learned hands over to the next prompt)."""
        if self.learner == index:
            self.learner = None
            self._wake()
        if self.held.pop(index, None) is not None:
            self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()


#: A capped run reads the keys' balances every ``WATCH_SECONDS``, or after
#: ``WATCH_SUBMITS`` submits, or every ``WATCH_GAP`` seconds while the last read found the
#: relay charging beyond the prices; never sooner than ``WATCH_GAP`` after the last read,
#: and at most ``WATCH_READS`` GETs per ``WATCH_WINDOW`` seconds over all its keys:
#: new-api lets a client IP read ``/api/usage/token/`` 20 times per 20 minutes (its
#: CriticalRateLimit); the rest is left to learning prices and to the user.
WATCH_SECONDS = 60.0
WATCH_GAP = 15.0
WATCH_SUBMITS = 50
WATCH_READS = 15
WATCH_WINDOW = 1200.0


class BalanceWatch:
    """Reads the run's keys' balances at a modest rate and tells the ledger what the
    relay charged (``Ledger.observe``): a safety net under prices given too low."""

    def __init__(
        self,
        readers: Sequence[Callable[[], Awaitable[Balance]]],
        ledger: Ledger,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.readers = list(readers)
        self.ledger = ledger
        self.clock = clock
        self.start: list[Balance] = []
        self._reading: anyio.Event | None = None  # set when the read under way ends
        self._last = 0.0
        self._at_submits = 0
        self._spacing = WATCH_SECONDS  # shorter after a surprise
        self.reads: deque[float] = deque()  # when each balance GET of the window went out
        self.latest: list[Balance] = []  # each key's last balance read
        self._turn = 0  # the key read first next time (in turn, when not all fit)

    async def begin(self) -> bool:
        """The balances before the run's first submit; False: they cannot be read (no
        billing, a refused key, not in USD): the run goes on without the watch."""
        self._spend_reads(len(self.readers))
        try:
            self.start = [await read() for read in self.readers]
        except QuickMJError as exc:
            logger.info("the balance is not watched during this run: %s", exc)
            return False
        if any(usd_moved(b, b) is None for b in self.start):
            logger.info("the balance is not watched during this run: it is not in USD")
            return False
        self._last = self.clock()
        self.latest = list(self.start)
        return True

    def _sent(self) -> int:
        return self.ledger.sent_this_run

    def _room(self) -> int:
        """The GETs left in the window's allowance."""
        now, reads = self.clock(), self.reads
        while reads and now - reads[0] >= WATCH_WINDOW:
            reads.popleft()
        return max(0, WATCH_READS - len(reads))

    def _spend_reads(self, n: int) -> None:
        self.reads.extend([self.clock()] * n)

    def _due(self) -> bool:
        waited = self.clock() - self._last
        if waited < WATCH_GAP:
            return False
        busy = self._sent() - self._at_submits >= WATCH_SUBMITS
        return (waited >= self._spacing or busy) and self._room() > 0

    async def check(self) -> None:
        """Read the balances if it is time; a prompt admitted meanwhile waits for the
        read under way (one GET per account now and then: no real delay)."""
        if self._reading is not None:
            await self._reading.wait()
            return
        if not self._due():
            return
        reading = self._reading = anyio.Event()
        self._last, self._at_submits = self.clock(), self._sent()
        # Every key, or as many as the window allows, in turn (the others' last reads
        # stand: a stale balance can only under-count what the relay charged).
        keys = len(self.readers)
        picks = [(self._turn + k) % keys for k in range(min(keys, self._room()))]
        self._turn = (self._turn + len(picks)) % keys
        self._spend_reads(len(picks))
        try:
            for i in picks:
                self.latest[i] = await self.readers[i]()
        except QuickMJError as exc:
            logger.info("balance read skipped: %s", exc)
            return
        finally:
            self._reading = None
            reading.set()
        moved = [usd_moved(a, b) for a, b in zip(self.start, self.latest, strict=True)]
        extra = self.ledger.extra
        self.ledger.observe(sum(m for m in moved if m is not None))
        # A surprise (charged beyond the prices): read sooner while it lasts.
        surprised = self.ledger.extra > extra + _EPS
        self._spacing = WATCH_GAP if surprised else WATCH_SECONDS
