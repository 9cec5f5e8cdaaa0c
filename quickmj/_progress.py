"""Batch progress display: a rich live bar on a terminal, plain periodic lines otherwise.

Both show the same counts as the summary (queued, running, succeeded, failed, rejected,
and timed out / incomplete / unknown when there are any), the percentage, the rate and an
ETA smoothed over recent completions, in at most 60 columns for the bar's text. At the
end, ``failures(manifest)`` prints a short table of the prompts that did not succeed.

When the relay refuses every submit (queue full, or 429) for a minute, both say so in a
line of its own (``relay answers 'queue full' for every submit since 2 min``), again at
2, 4, 8... minutes; with ``as_json`` that line is a ``{"notice": {...}}`` object, and
the progress lines are ``{"progress": {...}}`` objects (nothing else reaches stderr).
The rate and ETA appear after ``RATE_AFTER`` seconds (before that they are noise).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TextIO

from ._batch import BatchProgress, human_span

__all__ = ("make_reporter",)

_SHOWN = 10  # failed prompts listed at the end (the manifest has all of them)
#: No rate (nor ETA) before this many seconds: two prompts done in 0.3 s would otherwise
#: read as ``400000/min``.
RATE_AFTER = 5.0
#: Refusals shorter than this are routine backpressure: nothing is said about them.
NOTICE_AFTER = 60.0


def _fmt_eta(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = int(seconds)
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def counts(p: BatchProgress) -> str:
    """``q 3 · run 8 · ok 12 · fail 1`` plus the rarer outcomes when they occur."""
    parts = [f"q {p.queued}", f"run {p.running}", f"ok {p.succeeded}", f"fail {p.failed}"]
    if p.rejected:
        parts.append(f"rej {p.rejected}")
    if p.timed_out:
        parts.append(f"late {p.timed_out}")
    if p.incomplete:
        parts.append(f"inc {p.incomplete}")
    if p.unknown:
        parts.append(f"unk {p.unknown}")
    if p.refused_for is not None and p.refused_for >= NOTICE_AFTER / 6:
        kind = "429" if p.refusal and "429" in p.refusal else "full"
        parts.append(f"{kind} {human_span(p.refused_for)}")
    return " · ".join(parts)


def refusal_text(p: BatchProgress) -> str:
    """The line saying the relay refuses every submit (for ``p.refused_for`` seconds)."""
    return (
        f"relay answers '{p.refusal or 'queue full'}' for every submit since "
        f"{human_span(p.refused_for or 0.0)}; nothing was created for the waiting prompts "
        "(they stay pending if this lasts --timeout)"
    )


class _Notices:
    """Says once a minute, then at 2, 4, 8... minutes, that every submit is refused."""

    def __init__(self) -> None:
        self._next = NOTICE_AFTER

    def due(self, p: BatchProgress) -> str | None:
        """The notice to print for ``p``, or None (nothing new to say)."""
        if p.refused_for is None:
            self._next = NOTICE_AFTER  # accepted again: a new streak starts from scratch
            return None
        if p.refused_for < self._next:
            return None
        while self._next <= p.refused_for:
            self._next *= 2
        return refusal_text(p)


def notice_json(p: BatchProgress, text: str) -> str:
    """The refusal notice as ``--json`` prints it (one object per line)."""
    body = {
        "kind": "refused",
        "refusal": p.refusal,
        "seconds": round(p.refused_for or 0.0, 1),
        "message": text,
    }
    return json.dumps({"notice": body}, ensure_ascii=False)


def rate_text(p: BatchProgress) -> str | None:
    """``12/min`` (whole prompts), or None while too little time has passed to tell."""
    if not p.rate or p.elapsed < RATE_AFTER:
        return None
    per_minute = p.rate * 60
    return f"{per_minute:.0f}/min" if per_minute >= 1 else f"{per_minute:.1f}/min"


def _eta(p: BatchProgress) -> str:
    return _fmt_eta(p.eta if rate_text(p) else None)


def line(p: BatchProgress) -> str:
    percent = 100 * p.done // p.total if p.total else 100
    return (
        f"{p.done}/{p.total} ({percent}%)  {counts(p).replace(' · ', '  ')}  "
        f"{rate_text(p) or '-/min'}  eta {_eta(p)}"
    )


def progress_json(p: BatchProgress) -> str:
    """A progress line as ``--json`` prints it on stderr (one object per line)."""
    body = {
        "done": p.done,
        "total": p.total,
        "queued": p.queued,
        "running": p.running,
        "succeeded": p.succeeded,
        "failed": p.failed,
        "rejected": p.rejected,
        "timed_out": p.timed_out,
        "incomplete": p.incomplete,
        "unknown": p.unknown,
        "per_minute": round(p.rate * 60, 1) if rate_text(p) and p.rate else None,
        "eta_seconds": round(p.eta) if rate_text(p) and p.eta is not None else None,
    }
    return json.dumps({"progress": body}, ensure_ascii=False)


class _Failures:
    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def failures(self, manifest: Path) -> None:
        """A short table of the prompts that did not succeed (from the manifest)."""
        try:
            rows = [json.loads(x) for x in manifest.read_text("utf-8").splitlines() if x.strip()]
        except (OSError, ValueError):
            return
        bad = [r for r in rows if r.get("status") != "succeeded"]
        if not bad:
            return
        print(f"{len(bad)} prompt(s) did not succeed:", file=self.stream)
        for r in bad[:_SHOWN]:
            reason = " ".join(str(r.get("reason") or "").split())[:70]
            prompt = str(r.get("prompt", ""))[:30]
            print(
                f"  {r.get('index', 0) + 1:>5}  {r.get('status', ''):<10} {prompt:<30}  {reason}",
                file=self.stream,
            )
        if len(bad) > _SHOWN:
            print(f"  ... and {len(bad) - _SHOWN} more in {manifest}", file=self.stream)


class PlainReporter(_Failures):
    """Prints a status line at most every ``every`` seconds, and the last one always."""

    def __init__(self, stream: TextIO, every: float = 2.0, *, as_json: bool = False) -> None:
        super().__init__(stream)
        self.as_json = as_json
        self.notices = _Notices()
        self.every = every
        self._last = 0.0
        self._last_line = ""
        self._closed = False

    def __call__(self, p: BatchProgress) -> None:
        said = self.notices.due(p)
        if said is not None:
            self._print(notice_json(p, said) if self.as_json else f"note: {said}")
        now = time.monotonic()
        text = line(p)
        if text == self._last_line:
            return
        if now - self._last >= self.every or p.done == p.total:
            self._print(progress_json(p) if self.as_json else text)
            self._last = now
        self._last_line = text

    def _print(self, text: str) -> None:
        # A closed stderr (``2>&1 | head``) must not stop a batch that is paying for jobs.
        if self._closed:
            return
        try:
            print(text, file=self.stream, flush=True)
        except BrokenPipeError:
            self._closed = True

    def close(self) -> None:
        pass


class RichReporter(_Failures):  # pragma: no cover - needs a terminal
    """A live progress bar (the optional ``cli`` extra: rich)."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

        self._progress = Progress(
            BarColumn(bar_width=20),
            TaskProgressColumn(),
            TextColumn("{task.completed}/{task.total} {task.fields[rate]} eta {task.fields[eta]}"),
            TextColumn("{task.fields[counts]}"),
            console=Console(file=stream),
            transient=False,
        )
        self._task: object = None
        self._notices = _Notices()
        self._progress.start()

    def __call__(self, p: BatchProgress) -> None:
        said = self._notices.due(p)
        if said is not None:
            self._progress.console.print(f"note: {said}")
        rate = rate_text(p) or ""
        if self._task is None:
            self._task = self._progress.add_task(
                "batch", total=p.total, counts=counts(p), rate=rate, eta=_eta(p)
            )
        self._progress.update(
            self._task,  # type: ignore[arg-type]
            completed=p.done,
            counts=counts(p),
            rate=rate,
            eta=_eta(p),
        )

    def close(self) -> None:
        self._progress.stop()


def make_reporter(
    stream: TextIO | None = None, *, plain: bool = False, as_json: bool = False
) -> PlainReporter | RichReporter:
    """Rich bar when ``stream`` is a terminal and rich is installed; plain lines otherwise.

    ``as_json``: plain lines, and the refusal notice as a JSON object (``--json``).
    """
    out: TextIO = stream if stream is not None else sys.stderr
    if not plain and not as_json and out.isatty():
        try:
            import rich.progress  # noqa: F401
        except ImportError:
            print(
                "(install the 'cli' extra for a live progress bar: pip install 'quickmj[cli]')",
                file=out,
            )
        else:
            return RichReporter(out)
    return PlainReporter(out, as_json=as_json)
