"""The gallery: ``OUT/index.html``, a static contact sheet of a batch.

One card per prompt: thumbnails of its saved images (relative links into ``images/``),
the prompt, its task ids, seed, state tag, status and failure reason. Failed and unknown
prompts come first. Radio buttons and CSS sibling selectors filter by status (no script);
nothing comes from the network, so the page works offline and from a copied directory.
Large batches: the images after the first ``EAGER_IMAGES`` load as they scroll into view
(a few lines of inline script, with a ``<noscript>`` fallback).

Everything shown is escaped (prompts are user text); links are percent-encoded paths
relative to the page. The page is written to a temporary file and renamed into place.

Who writes it: a batch run with ``gallery=True`` (``batch --gallery``) writes it itself,
as the directory's one writer, at the end and when stopped. :func:`write_gallery` reads a
journal without writing to it (:func:`~quickmj._journal.read_snapshot`) and takes the
directory's lock only for the moment it writes ``index.html`` there; a directory a run
holds is refused, and ``output=`` writes a snapshot elsewhere instead.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import html
import os
import struct
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath
from urllib.parse import quote

from ._files import PART_SUFFIX, storage_error
from ._journal import JournalRow, Phase, read_snapshot
from ._outdir import JOURNAL_NAME, BatchDir
from .errors import BatchLockedError, StorageError, UsageError

__all__ = ("EAGER_IMAGES", "GALLERY_NAME", "gallery_html", "save_gallery", "write_gallery")

#: The page's name inside a batch directory.
GALLERY_NAME = "index.html"

#: Display order: what needs attention first (failed and unknown), succeeded last.
_ORDER = (
    Phase.FAILED,
    Phase.UNKNOWN,
    Phase.REJECTED,
    Phase.TIMED_OUT,
    Phase.INCOMPLETE,
    Phase.SUBMITTING,
    Phase.RUNNING,
    Phase.PENDING,
    Phase.SUCCEEDED,
)
_RANK = {p: i for i, p in enumerate(_ORDER)}
_COLOURS = {
    Phase.FAILED: "#c62828",
    Phase.UNKNOWN: "#e65100",
    Phase.REJECTED: "#6a1b9a",
    Phase.TIMED_OUT: "#b28704",
    Phase.INCOMPLETE: "#b28704",
    Phase.SUBMITTING: "#455a64",
    Phase.RUNNING: "#1565c0",
    Phase.PENDING: "#616161",
    Phase.SUCCEEDED: "#2e7d32",
}
#: Images given a plain ``src``. Chrome ignores ``loading="lazy"`` for file:// pages
#: (crbug.com/1047909: only http(s) images wait), so a page opened from disk would read
#: every image of a large batch at once; the rest get ``data-src`` and ``_LAZY``.
EAGER_IMAGES = 200

#: Thumbnail height in CSS pixels; widths follow each image's aspect ratio (capped).
_THUMB = 160
_THUMB_MAX_WIDTH = 300
#: C0 controls (but tab and newline) and DEL: not allowed in HTML text; shown as U+FFFD.
_CONTROLS = dict.fromkeys((*range(0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F), "\ufffd")


def write_gallery(
    out_dir: str | os.PathLike[str], *, output: str | os.PathLike[str] | None = None
) -> Path:
    """Write the gallery of the batch in ``out_dir`` (the guide: "Gallery").

    The page is ``out_dir/index.html``: a static contact sheet of every prompt (its
    saved images, prompt, task ids, seed, state tag, status and failure reason), failed
    and unknown prompts first, filterable by status, readable offline. The journal is read
    without writing to it; the directory's lock is taken only while the page is written.

    Args:
        out_dir: a batch's output directory (``run_batch``'s ``out``, ``batch --out``).
        output: write the page here instead (a file, or a directory to hold
            ``index.html``; its image links point into ``out_dir``). Outside ``out_dir``,
            the way to look at a batch that is still running: its directory belongs to
            the run, and the page is a snapshot of that moment.

    Returns:
        The path of the page written.

    Raises:
        UsageError: ``out_dir`` is not a batch directory (it holds no batch journal).
        BatchLockedError: a run holds ``out_dir`` (and ``output`` is not outside it).
        JournalError: the journal is damaged.
        StorageError: the page could not be written (disk full, read-only, ...).
    """
    base = Path(out_dir)
    journal = base / JOURNAL_NAME
    if not base.is_dir() or not journal.is_file():
        raise UsageError(
            f"{str(base)!r} is not a batch directory (no {JOURNAL_NAME} in it): "
            "pass the out directory of a batch run"
        )
    page = base / GALLERY_NAME if output is None else Path(output)
    page = page / GALLERY_NAME if page.is_dir() else page
    if not _inside(page, base):
        snap = read_snapshot(journal)
        note = _RUNNING_NOTE if snap.run_open else None
        return save_gallery(snap.rows, base, page, note=note)
    # Writing into the batch directory: as its one writer, for that moment.
    try:
        bdir = BatchDir(base)
        bdir.acquire()
    except BatchLockedError as exc:
        raise BatchLockedError(
            f"{str(base)!r} belongs to a running batch ({_holder(exc)}): "
            "a run with gallery=True writes its page when it ends; for a snapshot now, "
            "write it outside the directory (output=FILE)",
            pid=exc.pid,
            host=exc.host,
            started=exc.started,
        ) from None
    try:
        snap = read_snapshot(journal)
        note = _KILLED_NOTE if snap.run_open else None
        return save_gallery(snap.rows, base, page, note=note)
    finally:
        bdir.release()


def _inside(page: Path, base: Path) -> bool:
    where, root = page.parent.resolve(), base.resolve()
    return where == root or root in where.parents


_RUNNING_NOTE = (
    "A run was writing this batch when this page was made: it shows where every prompt "
    "stood at that moment."
)
_KILLED_NOTE = (
    "The last run of this batch did not end (it was stopped without closing): "
    "continue it with batch --resume."
)


def _holder(exc: BatchLockedError) -> str:
    if exc.pid is None:
        return "another run"
    return f"pid {exc.pid} on {exc.host} since {exc.started}"


def save_gallery(
    rows: Sequence[JournalRow], base: Path, page: Path, *, note: str | None = None
) -> Path:
    """Write the page for ``rows`` (of the batch in ``base``) to ``page`` atomically."""
    text = gallery_html(rows, base, page.parent, note=note)
    # Lone surrogates (text that was never valid Unicode) become "?": never a crash.
    data = text.encode("utf-8", "replace")
    tmp = page.with_name(f".{page.name}.{os.getpid()}{PART_SUFFIX}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, page)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise storage_error(exc, page) or StorageError(
            f"cannot write the gallery {str(page)!r}: {exc.strerror or exc}",
            path=str(page),
            errno=exc.errno,
        ) from None
    return page


def gallery_html(
    rows: Sequence[JournalRow],
    base: Path,
    page_dir: Path,
    *,
    note: str | None = None,
    eager: int = EAGER_IMAGES,
) -> str:
    """The page itself: ``rows`` of the batch in ``base``, links relative to ``page_dir``;
    images after the first ``eager`` load as they scroll into view (see ``_LAZY``)."""
    counts = Counter(r.phase for r in rows)
    phases = [p for p in _ORDER if counts[p]]
    links = _Links(base, _prefix(base, page_dir), eager)
    ordered = sorted(rows, key=lambda r: (_RANK[r.phase], r.index))
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    title = _esc(f"quickmj gallery: {base.resolve().name or base}")
    parts = [
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width,initial-scale=1">'
        f'<meta name="referrer" content="no-referrer">'
        f"<title>{title}</title><style>{_css(phases)}</style></head><body>"
        f"<header><h1>{title}</h1><p>{_summary(counts, len(rows))}; written {when}</p>",
        f'<p class="note">{_esc(note)}</p>' if note else "",
        _open_note(rows),
        "</header>",
        *_radios(phases, counts, len(rows)),
        '<ul class="rows">',
        *(_card(r, links) for r in ordered),
        "</ul>",
        f"<script>{_LAZY}</script>" if links.deferred else "",
        "</body></html>\n",
    ]
    return "".join(parts)


#: The page's one script (progressive: without it, the <noscript> copies show): an image
#: gets its ``src`` when it comes within 1,000 px of the view. Filtering needs no script.
_LAZY = (
    "(()=>{const w=[...document.querySelectorAll('img[data-src]')];"
    "const go=i=>{i.src=i.dataset.src;i.removeAttribute('data-src')};"
    "if(!('IntersectionObserver' in window)){w.forEach(go);return}"
    "const o=new IntersectionObserver(es=>{for(const e of es)if(e.isIntersecting)"
    "{o.unobserve(e.target);go(e.target)}},{rootMargin:'1000px'});"
    "w.forEach(i=>o.observe(i))})();"
)


class _Links:
    """Where the page finds the batch's files, and how many images it has linked."""

    def __init__(self, base: Path, prefix: str, eager: int) -> None:
        self.base, self.prefix, self.eager = base, prefix, eager
        self.count = 0
        self.deferred = False

    def img(self, url: str, width: int, height: int, alt: str) -> str:
        self.count += 1
        attrs = f'loading="lazy" decoding="async" width="{width}" height="{height}" alt="{alt}"'
        if self.count <= self.eager:
            return f'<img src="{url}" {attrs}>'
        self.deferred = True
        return f'<img data-src="{url}" {attrs}><noscript><img src="{url}" {attrs}></noscript>'


def _open_note(rows: Sequence[JournalRow]) -> str:
    waiting = sum(not r.phase.is_final for r in rows)
    if not waiting:
        return ""
    return (
        f'<p class="note">{waiting} prompt{"s are" if waiting != 1 else " is"} not finished: '
        "batch --resume continues where the run stopped.</p>"
    )


def _summary(counts: Counter[Phase], total: int) -> str:
    shown = ", ".join(f"{counts[p]} {p.value.replace('_', ' ')}" for p in _ORDER if counts[p])
    return f"{total} prompt{'s' if total != 1 else ''}" + (f": {shown}" if shown else "")


def _radios(phases: Sequence[Phase], counts: Counter[Phase], total: int) -> Iterable[str]:
    """The filter: hidden radio inputs (siblings of the list, for the CSS) and their labels."""
    choices = [("all", "all", total)]
    problems = total - counts[Phase.SUCCEEDED]
    if problems and counts[Phase.SUCCEEDED]:
        choices.append(("problems", "not succeeded", problems))
    choices += [(p.value, p.value.replace("_", " "), counts[p]) for p in phases]
    for key, _, _ in choices:
        checked = " checked" if key == "all" else ""
        yield f'<input type="radio" name="f" class="f" id="f-{key}"{checked}>'
    yield '<nav aria-label="filter by status">show: '
    for key, label, n in choices:
        yield f'<label for="f-{key}" class="b-{key}">{label} <b>{n}</b></label>'
    yield "</nav>"


def _card(r: JournalRow, links: _Links) -> str:
    ok = " ok" if r.phase is Phase.SUCCEEDED else ""
    facts = [("line", str(r.index + 1))]
    if r.task_id:
        facts.append(("task", r.task_id))
    facts += [(label, task) for label, task in sorted(r.upscales.items())]
    if r.seed:
        facts.append(("seed", r.seed))
    if r.tag:
        facts.append(("state tag", r.tag))
    if r.status:
        facts.append(("relay status", r.status))
    if r.reason:
        facts.append(("reason", r.reason + (f" (code {r.code})" if r.code is not None else "")))
    elif r.code is not None:
        facts.append(("code", str(r.code)))
    # One text node (labels aligned in monospace): a page of 10,000 prompts stays quick
    # to lay out and to filter (every element counts there).
    width = max(len(k) for k, _ in facts) + 1
    text = "\n".join(f"{k.ljust(width)}{v}" for k, v in facts)
    return (
        f'<li class="r s-{r.phase.value}{ok}" id="r{r.index + 1}">'
        f'<div class="t">{_thumbs(r, links)}</div>'
        f'<span class="b b-{r.phase.value}">{r.phase.value.replace("_", " ")}</span>'
        f'<p class="p" dir="auto">{_esc(r.prompt)}</p><p class="m">{_esc(text)}</p></li>'
    )


def _thumbs(r: JournalRow, links: _Links) -> str:
    if not r.files:
        return '<span class="none">no image saved</span>'
    labels = {stem: label for label, stem in r.names.items()}
    out = []
    for name in r.files:
        rel = PurePosixPath(name)
        alt = _esc(labels.get(rel.stem, rel.name))
        path = links.base / rel
        if rel.is_absolute() or ".." in rel.parts or not path.is_file():
            out.append(f'<span class="none" title="{_esc(name)}">{alt}: file missing</span>')
            continue
        width, height = _thumb_size(_image_size(path))
        url = quote(links.prefix + rel.as_posix(), safe="/")
        out.append(f'<a href="{url}">{links.img(url, width, height, alt)}</a>')
    return "".join(out)


def _prefix(base: Path, page_dir: Path) -> str:
    """How the page reaches ``base`` ("" when it sits in it), as a URL path."""
    rel = os.path.relpath(base.resolve(), page_dir.resolve())
    return "" if rel == "." else PurePosixPath(Path(rel)).as_posix() + "/"


def _esc(text: str) -> str:
    return html.escape(text.translate(_CONTROLS), quote=True)


def _thumb_size(size: tuple[int, int] | None) -> tuple[int, int]:
    if size is None or size[0] <= 0 or size[1] <= 0:
        return _THUMB, _THUMB  # unknown: a square box (the CSS keeps the image's shape)
    width = max(1, min(_THUMB_MAX_WIDTH, round(_THUMB * size[0] / size[1])))
    return width, _THUMB


def _image_size(path: Path) -> tuple[int, int] | None:
    """Width and height from the file's header (PNG, GIF, WebP, JPEG); None if unknown."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(64 * 1024)
    except OSError:
        return None
    try:
        return _header_size(head)
    except (struct.error, IndexError):
        return None


def _header_size(head: bytes) -> tuple[int, int] | None:
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        w, h = struct.unpack(">II", head[16:24])
        return int(w), int(h)
    if head[:6] in (b"GIF87a", b"GIF89a"):
        w, h = struct.unpack("<HH", head[6:10])
        return int(w), int(h)
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return _webp_size(head)
    if head[:3] == b"\xff\xd8\xff":
        return _jpeg_size(head)
    return None


def _webp_size(head: bytes) -> tuple[int, int] | None:
    chunk = head[12:16]
    if chunk == b"VP8X":
        w = int.from_bytes(head[24:27], "little") + 1
        h = int.from_bytes(head[27:30], "little") + 1
        return w, h
    if chunk == b"VP8L":
        bits = int.from_bytes(head[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 ":
        w, h = struct.unpack("<HH", head[26:30])
        return int(w) & 0x3FFF, int(h) & 0x3FFF
    return None


def _jpeg_size(head: bytes) -> tuple[int, int] | None:
    at = 2
    while at + 9 < len(head):
        if head[at] != 0xFF:
            return None
        marker = head[at + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length field
            at += 2
            continue
        length = struct.unpack(">H", head[at + 2 : at + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a frame header
            h, w = struct.unpack(">HH", head[at + 5 : at + 9])
            return int(w), int(h)
        at += 2 + length
    return None


def _css(phases: Sequence[Phase]) -> str:
    keys = ["problems", *(p.value for p in phases)]
    rules = [_BASE_CSS]
    for key in keys:
        hide = ".r.ok" if key == "problems" else f".r:not(.s-{key})"
        rules.append(
            f"#f-{key}:checked~.rows {hide}{{display:none}}"
            f"#f-{key}:checked~nav [for=f-{key}]{{outline:2px solid #222}}"
            f"#f-{key}:focus-visible~nav [for=f-{key}]{{outline:3px dashed #222}}"
        )
    rules.append("#f-all:checked~nav [for=f-all]{outline:2px solid #222}")
    rules.append("#f-all:focus-visible~nav [for=f-all]{outline:3px dashed #222}")
    for phase in phases:
        rules.append(f".b-{phase.value}{{background:{_COLOURS[phase]};color:#fff}}")
    return "".join(rules)


_BASE_CSS = (
    "body{font:14px/1.4 system-ui,sans-serif;margin:0;background:#f4f4f6;color:#222}"
    "header{padding:12px 16px 4px}h1{font-size:20px;margin:0 0 4px}"
    "header p{margin:2px 0}.note{background:#fff3cd;padding:4px 8px;border-radius:4px}"
    ".f{position:absolute;opacity:0;width:1px;height:1px}"
    "nav{padding:6px 16px 10px;display:flex;flex-wrap:wrap;gap:6px;align-items:center}"
    "nav label{cursor:pointer;padding:3px 10px;border-radius:12px;background:#ddd;color:#222}"
    # Inline blocks, not a grid or flex layout: Chrome re-lays out 10,000 grid or flex
    # items for seconds when the filter hides most of them; inline blocks take ~50 ms.
    ".rows{list-style:none;margin:0;padding:0 10px 16px}"
    ".r{display:inline-block;vertical-align:top;box-sizing:border-box;width:calc(100% - 12px);"
    "margin:6px;"
    "background:#fff;border-radius:6px;padding:8px;box-shadow:0 1px 2px #0002;"
    "border-top:4px solid #ccc;content-visibility:auto;contain-intrinsic-size:auto 300px}"
    ".r:not(.ok){border-top-color:#c62828}.s-unknown{border-top-color:#e65100!important}"
    ".t{display:flex;gap:4px;overflow-x:auto;min-height:40px}"
    # As many 320 px (or wider) columns as fit: 2 from 684 px, 3 from 1016 px, ...
    + "".join(
        f"@media (min-width:{20 + 332 * n}px){{.r{{width:calc({100 / n:.4f}% - 12px)}}}}"
        for n in range(2, 7)
    )
    + "@media (scripting:none){img[data-src]{display:none}}"
    ".t img{height:160px;width:auto;max-width:300px;object-fit:contain;background:#eee;"
    "display:block;border-radius:3px}"
    ".none{display:inline-block;padding:8px;color:#666;background:#eee;border-radius:3px}"
    ".b{display:inline-block;margin-top:6px;padding:1px 8px;border-radius:10px;"
    "font-size:12px;background:#888;color:#fff}"
    ".p{margin:6px 0;overflow-wrap:anywhere;white-space:pre-wrap;font-weight:500}"
    ".m{margin:0;font:12px/1.35 ui-monospace,monospace;color:#333;white-space:pre-wrap;"
    "overflow-wrap:anywhere}"
)
