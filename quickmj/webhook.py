"""notifyHook receiver: task updates pushed by the relay resolve waiters without polling.

Run it standalone::

    async with mj.webhook_receiver("0.0.0.0", 8099, public_url="https://me.example:8099"):
        task = await mj.imagine("a fox", wait=True)   # submitted with notifyHook set

or mount it into your own aiohttp application::

    receiver = WebhookReceiver(mj, public_url="https://me.example")
    receiver.mount(app)                 # adds POST /quickmj-hook/<secret token>
    mj.use_webhook(receiver)            # submits now carry the hook URL

While a receiver is active, every submit carries its URL as ``notifyHook`` (a ``notify_hook=``
argument still wins). Pushed tasks feed the client's poller; pushed ids are polled only as a
slow safety net (``PollPolicy.safety_net_interval``) and normally again once pushes stop.

Hooks are untrusted input: the URL carries a random secret token (compared in constant
time; a wrong one gets 404 and nothing is processed), bodies are capped, malformed JSON or a
wrong shape gets 400 with nothing changed, unknown ids are ignored, and duplicated or
out-of-order hooks never move a task backwards.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import secrets
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from aiohttp import web

from ._converter import structure
from ._models import Task
from .errors import InvalidInputError, MalformedResponseError

if TYPE_CHECKING:
    from ._client import AsyncClient

__all__ = ("MAX_HOOK_BYTES", "WebhookReceiver")

logger = logging.getLogger("quickmj")

#: Largest hook body accepted (a Task with buttons and properties is a few KiB).
MAX_HOOK_BYTES = 1024 * 1024
_ROUTE = "/quickmj-hook/{token}"


class WebhookReceiver:
    """Receives notifyHook POSTs for one client and feeds them to its poller."""

    def __init__(
        self,
        client: AsyncClient,
        *,
        public_url: str,
        token: str | None = None,
        max_body: int = MAX_HOOK_BYTES,
    ) -> None:
        if not public_url.startswith(("http://", "https://")):
            raise InvalidInputError("public_url must be the http(s) address the relay can reach")
        self._client = client
        self._token = token or secrets.token_urlsafe(24)
        self._public_url = public_url.rstrip("/")
        self.max_body = max_body
        #: Counters for tests and benchmarks.
        self.stats = {"accepted": 0, "rejected": 0, "unknown": 0}

    def __repr__(self) -> str:
        return f"<WebhookReceiver {self._public_url}{_ROUTE.format(token='***')}>"

    @property
    def url(self) -> str:
        """The notifyHook URL to give the relay (contains the secret token)."""
        return f"{self._public_url}{_ROUTE.format(token=self._token)}"

    def mount(self, app: web.Application) -> None:
        """Add the receiver's route to an aiohttp application."""
        app.router.add_post(_ROUTE, self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        """The POST handler: authenticate, cap, parse, feed."""
        if not hmac.compare_digest(
            request.match_info.get("token", "").encode(), self._token.encode()
        ):
            self.stats["rejected"] += 1
            raise web.HTTPNotFound()
        if request.content_length is not None and request.content_length > self.max_body:
            self.stats["rejected"] += 1
            raise web.HTTPRequestEntityTooLarge(
                max_size=self.max_body, actual_size=request.content_length
            )
        body = await request.content.read(self.max_body + 1)
        if len(body) > self.max_body:
            self.stats["rejected"] += 1
            raise web.HTTPRequestEntityTooLarge(max_size=self.max_body, actual_size=len(body))
        try:
            task = structure(json.loads(body), Task, what="hook")
        except (ValueError, RecursionError, MalformedResponseError) as exc:
            self.stats["rejected"] += 1
            logger.debug("rejected a malformed notifyHook body: %s", type(exc).__name__)
            raise web.HTTPBadRequest(text="expected a task object") from None
        if self._client.is_closed or not self._client.poller.feed(task):
            self.stats["unknown"] += 1
            logger.debug("notifyHook for untracked task %s ignored", task.id)
        else:
            self.stats["accepted"] += 1
        return web.Response(text="ok")

    @contextlib.asynccontextmanager
    async def serve(self, host: str, port: int) -> AsyncIterator[WebhookReceiver]:
        """Run a small aiohttp server for this receiver only."""
        app = web.Application(client_max_size=self.max_body + 1)
        self.mount(app)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
            yield self
        finally:
            await runner.cleanup()
