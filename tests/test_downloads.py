"""Downloads that survive link rot, loopback links and answers that are no image.

- Expired links (issue 19 #12): Discord CDN links carry ``ex=/is=/hm=`` and expire; the
  CDN then answers 403 "This content is no longer available.", and new-api's keyless
  ``/mj/image/{id}`` forwards that status (``relay/mjproxy_handler.go``,
  ``RelayMidjourneyImage``). Neither is the relay rejecting the key. A Task passed to
  ``download()`` is read again once and its fresh link used.
- Loopback links (issue 19 #13): new-api without ServerAddress writes
  ``http://localhost:3000/mj/image/{id}`` (QuantumNous/new-api#144); read through base_url.
- Not an image (issue 20 #2): a 200 answer that is an HTML page (whatever its label) or
  empty is never saved; the batch keeps such a row resumable.

The relays here are MockTransport handlers (every request seen, host included) and, where
the socket matters, small aiohttp servers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
from aiohttp import web
from conftest import Serve
from fakes import BASE, FAST, KEY, PNG, FakeRelay

from quickmj import (
    AsyncClient,
    AuthenticationError,
    BatchItem,
    DownloadError,
    ImageExpiredError,
    NotAnImageError,
    RetryPolicy,
    Task,
    TaskNotFoundError,
    TaskStatus,
    UnsafeURLError,
    run_batch,
)
from quickmj._files import download_url
from quickmj._journal import Phase
from quickmj.testing import MockTransport, Request, Response

CDN = "https://cdn.discordapp.com/attachments/1/2"
GONE = "This content is no longer available."
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 32
GIF = b"GIF89a" + b"\x00" * 32
WEBP = b"RIFF\x24\x00\x00\x00WEBPVP8 " + b"\x00" * 32
MP4 = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isommp41" + b"\x00" * 16
WEBM = b"\x1a\x45\xdf\xa3" + b"\x00" * 32
HTML = b"<!DOCTYPE html><html><head><title>Just a moment...</title></head><body></body></html>"


@attrs.frozen
class Answer:
    """One answer of an image host (a fresh Response is built for each request)."""

    status: int
    headers: dict[str, str]
    content: bytes


class Hosts:
    """Every host in one handler: the relay's fetch answers and image answers by URL.

    ``images[url]`` is a list of answers served in order (the last one repeats);
    ``tasks[id]`` a list of Tasks the relay's fetch answers in order (last repeats).
    """

    def __init__(self) -> None:
        self.images: dict[str, list[Answer]] = {}
        self.tasks: dict[str, list[Task]] = {}
        self.seen: list[Request] = []

    def image(self, url: str, *answers: Answer) -> None:
        self.images[url] = list(answers)

    def task(self, *tasks: Task) -> None:
        self.tasks[tasks[0].id] = list(tasks)

    def fetches(self) -> list[str]:
        return [r.path for r in self.seen if r.path.endswith("/fetch")]

    def gets(self, url: str) -> int:
        return sum(1 for r in self.seen if r.url == url)

    def __call__(self, request: Request) -> Response:
        self.seen.append(request)
        if request.path == "/mj/submit/imagine":  # the next task's id
            return Response(200, json={"code": 1, "result": next(iter(self.tasks))})
        if request.path.startswith("/mj/task/") and request.path.endswith("/fetch"):
            queue = self.tasks.get(request.path.split("/")[3])
            if not queue:
                return Response(400, json={"code": 4, "description": "task_no_found "})
            task = queue.pop(0) if len(queue) > 1 else queue[0]
            return Response(200, json=_wire(task))
        queue = self.images.get(request.url)
        if not queue:
            return Response(404, content=b"404 page not found")
        spec = queue.pop(0) if len(queue) > 1 else queue[0]
        return Response(spec.status, headers=spec.headers, content=spec.content)

    def client(self, **kwargs: Any) -> AsyncClient:
        kwargs.setdefault("base_url", BASE)
        kwargs.setdefault("retry", RetryPolicy(backoff=0, max_backoff=0, max_attempts=3))
        return AsyncClient(KEY, transport=MockTransport(self), **kwargs)


def _wire(task: Task) -> dict[str, Any]:
    out: dict[str, Any] = {"id": task.id, "status": task.status.value}
    if task.image_url:
        out["imageUrl"] = task.image_url
    if task.video_url:
        out["videoUrl"] = task.video_url
    return out


def png(content: bytes = PNG, mime: str = "image/png") -> Answer:
    return Answer(200, {"Content-Type": mime} if mime else {}, content)


def refused(status: int = 403, body: str = GONE) -> Answer:
    return Answer(status, {"Content-Type": "text/plain"}, body.encode())


def done(task_id: str, url: str) -> Task:
    return Task(id=task_id, status=TaskStatus.SUCCESS, image_url=url)


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


# ---- expired links (issue 19 #12) ----


async def test_an_expired_link_is_read_again_and_the_fresh_link_saved(tmp_path: Path) -> None:
    """An old Task's Discord link answers 403: the task is read once, its re-signed link
    saved; nothing blames the key."""
    old, new = f"{CDN}/a.png?ex=1&is=2&hm=old", f"{CDN}/a.png?ex=3&is=4&hm=new"
    hosts = Hosts()
    hosts.image(old, refused())
    hosts.image(new, png())
    hosts.task(done("1001", new))
    async with hosts.client() as mj:
        path = await mj.download(done("1001", old), tmp_path)
    assert tmp_path / "1001.png" == path and PNG == path.read_bytes()
    assert ["/mj/task/1001/fetch"] == hosts.fetches()
    assert (1, 1) == (hosts.gets(old), hosts.gets(new))  # a 403 is not retried as such
    assert ["1001.png"] == names(tmp_path)


@pytest.mark.parametrize("status", [403, 404, 410])
async def test_a_dead_link_without_a_fresher_one(tmp_path: Path, status: int) -> None:
    """The re-read gives the same link: ImageExpiredError that says so, names the task and
    the link (no signature), keeps the host's words; nothing on disk."""
    url = f"{CDN}/b.png?ex=1&is=2&hm=secret"
    hosts = Hosts()
    hosts.image(url, refused(status))
    hosts.task(done("1002", url))
    async with hosts.client() as mj:
        with pytest.raises(ImageExpiredError) as info:
            await mj.download(done("1002", url), tmp_path)
    err = info.value
    assert (status, "1002", f"{CDN}/b.png") == (err.status, err.task_id, err.url)
    assert "no fresher link" in str(err) and "task 1002" in str(err)
    assert GONE in str(err) and "secret" not in str(err)
    assert not isinstance(err, AuthenticationError)
    assert 1 == hosts.gets(url)  # the same dead link is not asked twice
    assert [] == names(tmp_path)


async def test_new_api_image_route_forwards_the_cdn_403(tmp_path: Path) -> None:
    """new-api's /mj/image/{id} is on the relay's origin (the key goes there) but takes no
    key: its 403 is the CDN's, forwarded as {"error": "..."}: an expired link, not auth."""
    url = f"{BASE}/mj/image/1003"
    hosts = Hosts()
    hosts.image(
        url, Answer(403, {"Content-Type": "application/json"}, b'{"error":"%s"}' % GONE.encode())
    )
    hosts.task(done("1003", url))
    async with hosts.client() as mj:
        with pytest.raises(ImageExpiredError, match="no fresher link") as info:
            await mj.download(done("1003", url), tmp_path)
    assert f"HTTP 403: {GONE}" in str(info.value)


async def test_a_fresh_link_that_fails_too(tmp_path: Path) -> None:
    """The re-read brings another link that is dead as well: one try each, then the error."""
    old, new = f"{CDN}/c.png?hm=old", f"{CDN}/c.png?hm=new"
    hosts = Hosts()
    hosts.image(old, refused())
    hosts.image(new, refused(404, ""))
    hosts.task(done("1004", new))
    async with hosts.client() as mj:
        with pytest.raises(ImageExpiredError, match="failed too") as info:
            await mj.download(done("1004", old), tmp_path)
    assert 404 == info.value.status and isinstance(info.value.__cause__, ImageExpiredError)
    assert (1, 1) == (hosts.gets(old), hosts.gets(new))
    assert [] == names(tmp_path)


async def test_an_id_is_not_read_twice(tmp_path: Path) -> None:
    """download('id') reads the task itself: its link is as fresh as the relay has."""
    url = f"{CDN}/d.png?hm=x"
    hosts = Hosts()
    hosts.image(url, refused())
    hosts.task(done("1005", url))
    async with hosts.client() as mj:
        with pytest.raises(ImageExpiredError, match="read just now"):
            await mj.download("1005", tmp_path)
    assert ["/mj/task/1005/fetch"] == hosts.fetches()


async def test_a_job_handle_with_an_old_state_is_read_again(tmp_path: Path) -> None:
    """AsyncJob.download uses the state it last saw: that one may be old, so re-read."""
    old, new = f"{CDN}/e.png?hm=old", f"{CDN}/e.png?hm=new"
    hosts = Hosts()
    hosts.image(old, refused())
    hosts.image(new, png())
    hosts.task(done("1006", old), done("1006", new))
    async with hosts.client() as mj:
        job = await mj.imagine("a fox")
        await job.fetch()  # the handle keeps this state (and its old link)
        path = await job.download(tmp_path)
    assert tmp_path / "1006.png" == path
    assert ["/mj/task/1006/fetch"] * 2 == hosts.fetches()


async def test_when_the_relay_forgot_the_task(tmp_path: Path) -> None:
    """The re-read itself fails: still the download's error, the re-read's as its cause."""
    url = f"{CDN}/f.png?hm=x"
    hosts = Hosts()
    hosts.image(url, refused())
    async with hosts.client() as mj:
        with pytest.raises(ImageExpiredError, match="reading the task again failed") as info:
            await mj.download(done("1007", url), tmp_path)
    assert isinstance(info.value.__cause__, TaskNotFoundError)


async def test_a_task_without_a_link_any_more(tmp_path: Path) -> None:
    url = f"{CDN}/g.png?hm=x"
    hosts = Hosts()
    hosts.image(url, refused())
    hosts.task(Task(id="1008", status=TaskStatus.SUCCESS))
    async with hosts.client() as mj:
        with pytest.raises(ImageExpiredError, match="has no such link"):
            await mj.download(done("1008", url), tmp_path)


async def test_401_is_the_key_only_where_the_key_went(tmp_path: Path) -> None:
    """A 401 from the relay's origin (the key was sent) is AuthenticationError, and no
    re-read is tried; a CDN's 401 is a refused link."""
    hosts = Hosts()
    hosts.image(f"{BASE}/files/h.png", refused(401, '{"error": {"message": "invalid token"}}'))
    hosts.image(f"{CDN}/h.png", refused(401, "no"))
    hosts.task(done("1009", f"{CDN}/h.png"))
    async with hosts.client() as mj:
        with pytest.raises(AuthenticationError):
            await mj.download(done("1009", f"{BASE}/files/h.png"), tmp_path)
        assert [] == hosts.fetches()
        with pytest.raises(ImageExpiredError):
            await mj.download(done("1009", f"{CDN}/h.png"), tmp_path)
    assert [] == names(tmp_path)


# ---- loopback links (issue 19 #13) ----


@pytest.mark.parametrize(
    "link",
    [
        "http://localhost:3000/mj/image/2001",
        "http://127.0.0.1:3000/mj/image/2001",
        "http://127.8.9.10/mj/image/2001",
        "http://[::1]:3000/mj/image/2001",
        "http://0.0.0.0:3000/mj/image/2001",
        "http://localhost:3000/mj-fast/mj/image/2001",
    ],
)
async def test_a_loopback_link_is_read_through_the_relay(
    tmp_path: Path, link: str, caplog: pytest.LogCaptureFixture
) -> None:
    """new-api without ServerAddress: the same path under base_url, the query kept."""
    caplog.set_level(logging.INFO, logger="quickmj")
    path = link.split("/", 3)[3]
    hosts = Hosts()
    hosts.image(f"{BASE}/{path}?rand=7", png())
    async with hosts.client() as mj:
        saved = await mj.download(Task(id="2001", image_url=f"{link}?rand=7"), tmp_path)
        again = await mj.download(Task(id="2001", image_url=f"{link}?rand=7"), tmp_path / "b")
    assert PNG == saved.read_bytes() == again.read_bytes()
    assert [f"{BASE}/{path}?rand=7"] * 2 == [r.url for r in hosts.seen]
    assert [] == hosts.fetches()
    lines = [r.getMessage() for r in caplog.records if "loopback" in r.getMessage()]
    assert 1 == len(lines) and "rand" not in lines[0]  # once, and without the query


@pytest.mark.parametrize(
    ("base", "link"),
    [
        (BASE, "http://localhost:3000/img/2002.png"),  # not the relay's image route
        (BASE, "https://images.example/mj/image/2002"),  # not a loopback host
        ("http://localhost:3000", "http://localhost:3000/mj/image/2002"),  # the relay itself
    ],
)
async def test_other_links_are_left_alone(tmp_path: Path, base: str, link: str) -> None:
    hosts = Hosts()
    hosts.image(link, png())
    async with hosts.client(base_url=base) as mj:
        await mj.download(Task(id="2002", image_url=link), tmp_path)
    assert [link] == [r.url for r in hosts.seen]


async def test_the_key_never_goes_to_a_foreign_origin(tmp_path: Path) -> None:
    """The key goes with the rewritten request (the relay's own origin) only."""
    hosts = Hosts()
    hosts.image(f"{BASE}/mj/image/2003", png())
    hosts.image("http://localhost:3000/img/2003.png", png())
    async with hosts.client() as mj:
        await mj.download(
            Task(id="2003", image_url="http://localhost:3000/mj/image/2003"), tmp_path
        )
        await mj.download(Task(id="x", image_url="http://localhost:3000/img/2003.png"), tmp_path)
    auth = [r.headers.get("Authorization") for r in hosts.seen]
    assert [f"Bearer {KEY}", None] == auth


async def test_a_loopback_link_with_credentials_is_refused_not_rewritten(tmp_path: Path) -> None:
    """user:pass@ in a link is refused as everywhere else, never dropped by the rewrite."""
    hosts = Hosts()
    async with hosts.client() as mj:
        with pytest.raises(UnsafeURLError):
            await mj.download(
                Task(id="2004", image_url="http://u:p@localhost:3000/mj/image/2004"), tmp_path
            )
    assert [] == hosts.seen


async def test_loopback_rewrite_on_a_real_socket(serve: Serve, tmp_path: Path) -> None:
    """A real relay on 127.0.0.1 whose task says localhost:1 (nothing listens there)."""
    served: list[str] = []

    async def image(request: web.Request) -> web.Response:
        served.append(request.path_qs)
        return web.Response(body=PNG, content_type="image/png")

    app = web.Application()
    app.router.add_get("/mj/image/{id}", image)
    relay = await serve(app)
    async with AsyncClient(KEY, base_url=relay) as mj:
        path = await mj.download(
            Task(id="2004", image_url="http://localhost:1/mj/image/2004"), tmp_path
        )
    assert ["/mj/image/2004"] == served and PNG == path.read_bytes()


# ---- answers that are no image (issue 20 #2) ----


@pytest.mark.parametrize(
    ("body", "mime", "words"),
    [
        (HTML, "image/png", "an HTML page"),
        (b"\xef\xbb\xbf\n  <html><body>Attention Required!</body></html>", "image/png", "HTML"),
        (HTML, "text/html; charset=utf-8", "an HTML page"),
        (HTML, "", "without a Content-Type"),
        (b"", "image/png", "an empty answer"),
        (b'{"error": "midjourney_task_not_found"}', "image/png", "a JSON text"),
        (b"%PDF-1.4 junk", "application/pdf", "no image or video"),
    ],
)
async def test_an_answer_that_is_no_image_is_never_saved(
    tmp_path: Path, body: bytes, mime: str, words: str
) -> None:
    """200 with a web page (labelled image/png or not), nothing, JSON or junk: nothing at
    the target name, no .part; the URL is named without its query; not retried."""
    url = f"{CDN}/i.png?ex=1&hm=secret"
    hosts = Hosts()
    hosts.image(url, png(body, mime))
    hosts.task(done("3001", url))
    async with hosts.client() as mj:
        with pytest.raises(NotAnImageError) as info:
            await mj.download("3001", tmp_path)
    err = info.value
    assert words in str(err) and words in err.got
    assert f"{CDN}/i.png" == err.url and "secret" not in str(err)
    assert isinstance(err, DownloadError)
    assert 1 == hosts.gets(url)
    assert [] == names(tmp_path)


async def test_a_web_page_then_a_fresh_link(tmp_path: Path) -> None:
    """A challenge page on an old link: the re-read's link is saved."""
    old, new = f"{CDN}/j.png?hm=old", f"{CDN}/j.png?hm=new"
    hosts = Hosts()
    hosts.image(old, png(HTML))
    hosts.image(new, png())
    hosts.task(done("3002", new))
    async with hosts.client() as mj:
        path = await mj.download(done("3002", old), tmp_path)
    assert PNG == path.read_bytes() and ["3002.png"] == names(tmp_path)


@pytest.mark.parametrize(
    ("body", "mime", "name"),
    [
        (PNG, "image/png", "m.png"),
        (JPEG, "image/jpeg", "m.jpg"),
        (GIF, "image/gif", "m.gif"),
        (WEBP, "image/webp", "m.webp"),
        (MP4, "video/mp4", "m.mp4"),
        (WEBM, "video/webm", "m.webm"),
        (PNG, "application/octet-stream", "m.png"),  # storage without a real label
        (PNG, "", "m.png"),
        (WEBP, "image/png", "m.webp"),  # an image labelled as another image: the bytes
        (PNG, "image/jpeg", "m.png"),
        (PNG, "video/mp4", "m.png"),  # a thumbnail labelled as the video: the bytes
    ],
)
async def test_images_and_videos_are_saved(
    tmp_path: Path, body: bytes, mime: str, name: str
) -> None:
    url = f"{CDN}/m"
    hosts = Hosts()
    hosts.image(url, png(body, mime))
    async with hosts.client() as mj:
        path = await mj.download(Task(id="m", image_url=url), tmp_path)
    assert [name] == names(tmp_path) and body == path.read_bytes()


async def test_html_labelled_png_on_a_real_socket(serve: Serve, tmp_path: Path) -> None:
    """A real server's HTML labelled image/png: NotAnImageError, the directory left empty."""

    async def page(request: web.Request) -> web.Response:
        return web.Response(body=HTML, headers={"Content-Type": "image/png"})

    app = web.Application()
    app.router.add_get("/img/{name}", page)
    cdn = await serve(app, "localhost")
    async with AsyncClient(KEY, base_url="http://relay.invalid") as mj:
        with pytest.raises(NotAnImageError, match="an HTML page"):
            await download_url(mj._relay, f"{cdn}/img/k.png", tmp_path, "k")
    assert [] == names(tmp_path)


# ---- the batch keeps such a row resumable (issue 20 #2) ----


def _html_images(relay: FakeRelay, serve_html: Callable[[], bool]) -> Callable[[Request], Response]:
    def handler(request: Request) -> Response:
        if request.path.startswith("/img/") and serve_html():
            relay.requests.append(request)
            return png(HTML)
        return relay.handle(request)

    return handler


async def test_batch_row_with_a_web_page_is_incomplete_then_resumed(tmp_path: Path) -> None:
    """The image host answers a challenge page: the row is incomplete (id kept, nothing in
    images/); a resume downloads it properly without a new submit."""
    relay = FakeRelay(ticks=1)
    html = {"on": True}
    transport = MockTransport(_html_images(relay, lambda: html["on"]))

    def mj() -> AsyncClient:
        return AsyncClient(KEY, base_url=BASE, poll=FAST, transport=transport)

    items = [BatchItem("a red fox")]
    async with mj() as client:
        first = await run_batch(client, items, tmp_path)
    assert (0, 1) == (first.succeeded, first.incomplete)
    images = tmp_path / "images"
    assert [] == [n for n in names(images) if not n.startswith(".")]
    assert [] == [n for n in names(images) if n.endswith(".part")]
    html["on"] = False
    async with mj() as client:
        again = await run_batch(client, items, tmp_path, resume=True)
    assert (1, 0) == (again.succeeded, again.incomplete)
    assert 1 == len(relay.submits)
    saved = [p for p in images.iterdir() if p.suffix == ".png"]
    assert 1 == len(saved) and PNG == saved[0].read_bytes()
    assert Phase.SUCCEEDED.value in (tmp_path / "manifest.jsonl").read_text()
