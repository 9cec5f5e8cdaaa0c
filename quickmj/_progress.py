"""Batch progress display: a rich live bar on a terminal, plain periodic lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from ._batch import BatchProgress

__all__ = ("make_reporter",)


def _fmt_eta(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = int(seconds)
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def line(p: BatchProgress) -> str:
    return (
        f"{p.done}/{p.total} done  queued {p.queued}  running {p.running}  "
        f"succeeded {p.succeeded}  failed {p.failed}  elapsed {p.elapsed:.0f}s  "
        f"eta {_fmt_eta(p.eta)}"
    )


class PlainReporter:
    """Prints a status line at most every ``every`` seconds, and the last one always."""

    def __init__(self, stream: TextIO, every: float = 2.0) -> None:
        self.stream = stream
        self.every = every
        self._last = 0.0
        self._last_line = ""

    def __call__(self, p: BatchProgress) -> None:
        now = time.monotonic()
        text = line(p)
        if text == self._last_line:
            return
        if now - self._last >= self.every or p.done == p.total:
            print(text, file=self.stream, flush=True)
            self._last = now
        self._last_line = text

    def close(self) -> None:
        pass


class RichReporter:  # pragma: no cover - needs a terminal
    """A live progress bar with counts and ETA (the optional ``cli`` extra: rich)."""

    def __init__(self, rich_progress: Any, stream: TextIO) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("[bold]batch"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TextColumn("{task.fields[counts]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(file=stream),
            transient=False,
        )
        self._task: Any = None
        self._progress.start()

    def __call__(self, p: BatchProgress) -> None:
        counts = f"queued {p.queued} · running {p.running} · ok {p.succeeded} · failed {p.failed}"
        if self._task is None:
            self._task = self._progress.add_task("batch", total=p.total, counts=counts)
        self._progress.update(self._task, completed=p.done, counts=counts)

    def close(self) -> None:
        self._progress.stop()


def make_reporter(
    stream: TextIO | None = None, *, plain: bool = False
) -> PlainReporter | RichReporter:
    """Rich bar when ``stream`` is a terminal and rich is installed; plain lines otherwise."""
    stream = stream or sys.stderr
    if not plain and stream.isatty():
        try:
            import rich.progress
        except ImportError:
            pass
        else:
            return RichReporter(rich.progress, stream)
    return PlainReporter(stream)
