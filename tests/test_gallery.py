"""The gallery (OUT/index.html): structure, escaping, links, the CLI, batch --gallery, and a
real headless browser where one is installed."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import struct
import subprocess
import zlib
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

from quickmj import (
    AsyncClient,
    BatchItem,
    BatchLockedError,
    PollPolicy,
    UsageError,
    run_batch,
    write_gallery,
)
from quickmj._cli import main
from quickmj._gallery import _header_size, gallery_html, save_gallery
from quickmj._journal import Journal, JournalRow, Phase, read_snapshot
from quickmj._outdir import JOURNAL_NAME, BatchDir
from quickmj.testing import simulate

HOSTILE = '<script>alert("x")</script> & \'q\' "dq" <img src=x onerror=alert(1)> https://evil.example/a.png'
ODD_NAME = "images/a b#1?%20&.png"  # a space, '#', '?', '%' and '&' in a file name


def png(width: int, height: int, rgb: tuple[int, int, int] = (200, 60, 60)) -> bytes:
    """A real, decodable PNG (one colour)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


#: (prompt, phase, fields, files {relative name: (width, height)})
ROWS: list[tuple[str, Phase, dict[str, Any], dict[str, tuple[int, int]]]] = [
    (
        "a red fox",
        Phase.SUCCEEDED,
        {"status": "SUCCESS", "seed": "1234"},
        {"images/1.png": (30, 20)},
    ),
    ("a failword dog", Phase.FAILED, {"status": "FAILURE", "reason": "[Banned] failword"}, {}),
    (HOSTILE, Phase.SUCCEEDED, {"status": "SUCCESS"}, {ODD_NAME: (20, 30)}),
    ("lost on the wire", Phase.UNKNOWN, {"reason": "no answer to the submit"}, {}),
    ("a badword cat", Phase.REJECTED, {"reason": "banned", "code": 24}, {}),
    ("never sent", Phase.PENDING, {}, {}),
    ("a second fail", Phase.FAILED, {"reason": "boom"}, {}),
    ("a blue bird", Phase.SUCCEEDED, {}, {"images/3.png": (16, 16), "images/3-U1.png": (8, 8)}),
]


def make_batch(out: Path) -> Path:
    """A batch directory as a run leaves it: journal (closed), images, no page yet."""
    (out / "images").mkdir(parents=True)
    journal = Journal(out / JOURNAL_NAME, create=True)
    journal.load_prompts([(p, {}) for p, *_ in ROWS])
    journal.begin_run()
    for i, (_, phase, fields, files) in enumerate(ROWS):
        journal.mark_submitting(i, f"qmj:test:{i}")
        if phase not in (Phase.PENDING, Phase.REJECTED, Phase.UNKNOWN):
            journal.set_task(i, f"17000000000000{i:02d}")
        for name, size in files.items():
            (out / name).write_bytes(png(*size))
        journal.set_phase(i, phase, files=list(files), **fields)
    journal.set_upscale(7, "U1", "1700000000000099")
    journal.set_names(7, {"grid": "3", "U1": "3-U1"})
    journal.end_run()
    journal.close()
    return out


class Page(HTMLParser):
    """What the structural checks need from the page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.rows: list[dict[str, str]] = []  # li.r: id and class
        self.tags: list[str] = []
        self.urls: list[tuple[str, str]] = []  # (attribute, value) of src/href
        self.imgs: list[dict[str, str | None]] = []
        self.prompts: list[str] = []
        self.radios: list[str] = []
        self._in_prompt = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append(tag)
        cls = (a.get("class") or "").split()
        if tag == "li" and "r" in cls:
            self.rows.append({"id": a.get("id") or "", "class": a.get("class") or ""})
        for key in ("src", "href", "action", "srcset", "poster"):
            if a.get(key) is not None:
                self.urls.append((key, a[key] or ""))
        if tag == "img":
            self.imgs.append(a)
        if tag == "input" and a.get("type") == "radio":
            self.radios.append(a.get("id") or "")
        self._in_prompt = tag == "p" and "p" in cls

    def handle_data(self, data: str) -> None:
        if self._in_prompt:
            self.prompts.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "p":
            self._in_prompt = False


def parse(page: Path) -> Page:
    parser = Page()
    parser.feed(page.read_text("utf-8"))
    parser.close()
    return parser


@pytest.fixture
def batch(tmp_path: Path) -> Path:
    return make_batch(tmp_path / "out")


def test_every_prompt_is_a_row_failed_and_unknown_first(batch: Path) -> None:
    """One row per prompt; failed, then unknown, then the rest, succeeded last."""
    page = parse(write_gallery(batch))
    assert sorted(f"r{i + 1}" for i in range(len(ROWS))) == sorted(r["id"] for r in page.rows)
    statuses = [r["class"].split()[1].removeprefix("s-") for r in page.rows]
    assert ["failed", "failed", "unknown", "rejected", "pending"] == statuses[:5]
    assert {"succeeded"} == set(statuses[5:])
    assert ["r2", "r7"] == [r["id"] for r in page.rows[:2]]  # input order within a status
    assert {"f-all", "f-problems", "f-failed", "f-unknown", "f-succeeded"} <= set(page.radios)


def test_user_text_is_escaped_and_nothing_is_fetched(batch: Path) -> None:
    """A hostile prompt is text: no script, no extra element, no external URL."""
    index = write_gallery(batch)
    page = parse(index)
    assert "script" not in page.tags
    assert HOSTILE in page.prompts  # shown exactly as typed
    assert len(page.imgs) == 4  # the images saved, not the prompt's <img>
    raw = index.read_text("utf-8")
    assert "<script" not in raw and "<img src=x" not in raw
    for _, url in page.urls:
        assert not url.lower().startswith(("http:", "https:", "//", "javascript:", "data:")), url
    assert "https://evil.example/a.png" in raw  # only inside the escaped prompt text
    assert raw.count("https://") == 1


def test_image_links_are_relative_encoded_and_exist(batch: Path) -> None:
    """Every thumbnail links a saved file by a percent-encoded relative path, lazily,
    with width and height (the image's shape)."""
    page = parse(write_gallery(batch))
    srcs = [str(img["src"]) for img in page.imgs]
    assert all((batch / unquote(src)).is_file() for src in srcs)
    assert "images/a%20b%231%3F%2520%26.png" in srcs
    for img in page.imgs:
        assert "lazy" == img["loading"] and img["width"] and img["height"]
    shapes = {
        unquote(str(i["src"])): (int(str(i["width"])), int(str(i["height"]))) for i in page.imgs
    }
    assert (240, 160) == shapes["images/1.png"]  # 30x20 shown 160 high
    assert (107, 160) == shapes[ODD_NAME]
    assert {"grid", "U1"} <= {str(i["alt"]) for i in page.imgs}


def test_written_atomically_without_touching_the_journal(batch: Path) -> None:
    """The page replaces itself whole; the journal is read, not written (no -wal/-shm)."""
    journal = batch / JOURNAL_NAME
    before = (journal.read_bytes(), journal.stat().st_mtime_ns)
    (batch / "index.html").write_text("old", "utf-8")
    write_gallery(batch)
    assert before == (journal.read_bytes(), journal.stat().st_mtime_ns)
    left = sorted(p.name for p in batch.iterdir())
    assert [".quickmj-journal.sqlite", ".quickmj-lock", "images", "index.html"] == left
    assert (batch / "index.html").read_text("utf-8").startswith("<!doctype html>")


def test_a_running_batch_is_refused_and_a_snapshot_goes_elsewhere(
    batch: Path, tmp_path: Path
) -> None:
    """A directory a run holds gets no page; --output writes a snapshot with working links."""
    journal = Journal(batch / JOURNAL_NAME, create=False)
    journal.begin_run()  # a run is open (its -wal file exists)
    with BatchDir(batch):
        with pytest.raises(BatchLockedError, match=r"output=FILE"):  # (CLI: --output FILE)
            write_gallery(batch)
        with pytest.raises(BatchLockedError):  # --output inside it is refused too
            write_gallery(batch, output=batch / "images" / "snap.html")
    assert not (batch / "index.html").exists()
    assert not (batch / "images" / "snap.html").exists()
    snap = tmp_path / "elsewhere"
    snap.mkdir()
    journal.set_phase(5, Phase.RUNNING)  # a change the snapshot must see
    page_path = write_gallery(batch, output=snap)
    journal.close()
    assert snap / "index.html" == page_path
    page = parse(page_path)
    assert all((snap / unquote(str(img["src"]))).is_file() for img in page.imgs)
    raw = page_path.read_text("utf-8")
    assert "A run was writing this batch" in raw and "s-running" in raw


def test_not_a_batch_directory(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not a batch directory"):
        write_gallery(tmp_path)
    with pytest.raises(UsageError, match="not a batch directory"):
        write_gallery(tmp_path / "missing")


def test_text_that_is_not_valid_unicode_and_controls(tmp_path: Path) -> None:
    """Lone surrogates and control characters never crash the page or reach it raw."""
    row = JournalRow(index=0, prompt="bad \udcff text\x00\x1b end", options={}, phase=Phase.FAILED,
                     reason="why \ud800")  # fmt: skip
    page = save_gallery([row], tmp_path, tmp_path / "index.html")
    raw = page.read_bytes().decode("utf-8")  # valid UTF-8
    assert "\x00" not in raw and "\x1b" not in raw and "bad ? text\ufffd\ufffd end" in raw


def test_header_sizes() -> None:
    """Width and height from PNG, GIF, WebP (three kinds) and JPEG headers."""
    jpeg = b"\xff\xd8\xff\xe0\x00\x04ab\xff\xc0\x00\x11\x08\x01\x2c\x02\x58" + b"\x00" * 12
    size = (639).to_bytes(3, "little") + (479).to_bytes(3, "little")
    vp8x = b"RIFF\0\0\0\0WEBPVP8X" + b"\0" * 8 + size
    vp8l = b"RIFF\0\0\0\0WEBPVP8L\0\0\0\0\x2f" + (99 | (49 << 14)).to_bytes(4, "little")
    vp8 = b"RIFF\0\0\0\0WEBPVP8 " + b"\0" * 10 + struct.pack("<HH", 300, 200)
    assert (600, 300) == _header_size(jpeg)
    assert (640, 480) == _header_size(vp8x)
    assert (100, 50) == _header_size(vp8l)
    assert (300, 200) == _header_size(vp8)
    assert (7, 9) == _header_size(b"GIF89a" + struct.pack("<HH", 7, 9))
    assert (5, 4) == _header_size(png(5, 4))
    assert _header_size(b"not an image") is None


def test_cli_gallery(batch: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`quickmj gallery OUT` writes the page; a directory without a batch is one error line,
    exit 2."""
    assert 0 == main(["gallery", str(batch)])
    assert f"gallery: {batch / 'index.html'}" in capsys.readouterr().out
    assert 2 == main(["gallery", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert 1 == len(err) and err[0].startswith("error: ") and "not a batch directory" in err[0]
    assert 0 == main(["gallery", str(batch), "--json", "--output", str(tmp_path / "x.html")])
    assert {"gallery": str(tmp_path / "x.html")} == json.loads(capsys.readouterr().out)


FAST = PollPolicy(interval=0.05, first_poll=0.02, near_done_interval=0.02, adaptive=False)


async def test_batch_writes_its_gallery_at_the_end_and_when_stopped(tmp_path: Path) -> None:
    """run_batch(gallery=True): the page at the end; cancelled (the CLI's Ctrl-C), a page
    showing where every prompt stood."""
    async with (
        simulate(dialect="midjourney-proxy") as relay,
        AsyncClient(relay.api_key, base_url=relay.base_url, poll=FAST, dialect=relay.dialect) as mj,
    ):
        items = [BatchItem("a fox"), BatchItem("a failword dog"), BatchItem("a cat")]
        await run_batch(mj, items, tmp_path / "done", gallery=True)
        first = asyncio.Event()
        many = [BatchItem(f"prompt {i}") for i in range(40)]
        run = asyncio.create_task(
            run_batch(mj, many, tmp_path / "stopped", gallery=True, concurrency=2,
                      on_progress=lambda p: first.set() if p.succeeded else None)
        )  # fmt: skip
        await first.wait()
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
    done = parse(tmp_path / "done" / "index.html")
    assert ["r2", "r1", "r3"] == [r["id"] for r in done.rows]
    assert 2 == len(done.imgs)
    stopped = (tmp_path / "stopped" / "index.html").read_text("utf-8")
    assert 40 == stopped.count('<li class="r ') and "not finished" in stopped
    assert "s-succeeded" in stopped and "s-pending" in stopped


# ---- a real browser ----

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

#: Appended to a copy of the page: waits for every image (those the page's script loads
#: as they come into view too), then tries the filter through its labels (what a click
#: does) and reports on <body data-probe>.
PROBE = """<script>
addEventListener('load', async () => {
  const imgs = [...document.querySelectorAll('.t img')];
  const deferred = imgs.filter(i => i.dataset.src).length;
  const ready = () => imgs.every(i => i.complete && i.naturalWidth > 0);
  for (let k = 0; k < 50 && !ready(); k++) await new Promise(r => setTimeout(r, 100));
  const shown = () => [...document.querySelectorAll('li.r')]
    .filter(li => getComputedStyle(li).display !== 'none' && li.getClientRects().length)
    .map(li => li.id);
  const pick = k => document.querySelector('label[for="f-' + k + '"]').click();
  const out = {images: imgs.length, loaded: imgs.filter(i => i.naturalWidth > 0).length,
               deferred, all: shown()};
  pick('failed'); out.failed = shown();
  pick('problems'); out.problems = shown();
  pick('all'); out.again = shown();
  document.body.dataset.probe = JSON.stringify(out);
});
</script></body>"""


class BodyProbe(HTMLParser):
    """The ``data-probe`` attribute of the dumped DOM's <body>."""

    probe: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "body":
            self.probe = dict(attrs).get("data-probe")


def find_browser() -> str | None:
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.mark.skipif(find_browser() is None, reason="no chromium/chromium-browser/google-chrome")
def test_in_a_headless_browser(batch: Path, tmp_path: Path) -> None:
    """Chromium loads every thumbnail from disk (the first directly, the others through
    the page's load-on-scroll script), and choosing a status hides the others."""
    rows = read_snapshot(batch / JOURNAL_NAME).rows
    page = gallery_html(rows, batch, batch, eager=1)
    probe = batch / "probe.html"  # where index.html would be: the same relative links
    probe.write_text(page.replace("</body>", PROBE), "utf-8")
    command = [
        str(find_browser()), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=5000", "--dump-dom", probe.as_uri(),
    ]  # fmt: skip
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, start_new_session=True,
                            env={**os.environ, "TMPDIR": str(tmp_path)})  # fmt: skip
    try:
        dom, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    shutil.rmtree(tmp_path / "profile", ignore_errors=True)
    body = BodyProbe()
    body.feed(dom)
    assert body.probe, dom[:500]
    seen = json.loads(body.probe)
    found = Page()
    found.feed(page)
    rows = found.rows
    everyone = [r["id"] for r in rows]
    failed = [r["id"] for r in rows if "s-failed" in r["class"]]
    assert (4, 4, 3) == (seen["images"], seen["loaded"], seen["deferred"])
    assert everyone == seen["all"] == seen["again"]
    assert ["r2", "r7"] == failed == seen["failed"]
    assert [r for r in everyone if r not in ("r1", "r3", "r8")] == seen["problems"]


def test_large_batches_defer_images_past_the_first(batch: Path) -> None:
    """Past ``eager`` images, a thumbnail waits in data-src (with a <noscript> copy); the
    page then has its one inline script, and no script at all otherwise."""
    rows = read_snapshot(batch / JOURNAL_NAME).rows
    page = Page()
    page.feed(gallery_html(rows, batch, batch, eager=1))
    # html.parser reads <noscript> as markup: its 3 copies count here, with the one direct.
    assert 4 == sum(1 for img in page.imgs if img.get("src"))
    assert 3 == sum(1 for img in page.imgs if img.get("data-src"))
    assert 1 == page.tags.count("script") and 3 == page.tags.count("noscript")
    assert "script" not in parse(write_gallery(batch)).tags


def test_cli_batch_gallery(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`batch --gallery` ends with the page and says where; a re-run of the finished batch
    with --gallery (nothing sent) writes it again."""
    prompts = tmp_path / "p.txt"
    prompts.write_text("a fox\na failword dog\n", "utf-8")
    out = tmp_path / "out"
    args = ["batch", str(prompts), "--simulate", "--dialect", "midjourney-proxy", "--out",
            str(out), "--plain", "--gallery"]  # fmt: skip
    assert 1 == main(args)  # one prompt failed
    assert f"gallery: {out / 'index.html'}" in capsys.readouterr().out
    assert ["r2", "r1"] == [r["id"] for r in parse(out / "index.html").rows]
    (out / "index.html").unlink()
    assert 1 == main(args)
    assert "nothing sent" in capsys.readouterr().out and (out / "index.html").is_file()
