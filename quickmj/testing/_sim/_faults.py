"""Seeded fault injection: gateway errors, rate limits, dropped connections, short lists.

The gateway faults sit *in front of* the server (an nginx or CDN answering instead of
it), so they strike before authentication and look the same in every dialect. The
``RELAY_*`` faults are new-api's own answers when its upstream call fails; the
quickrouter dialect turns them into code-5 bodies.
"""

from __future__ import annotations

import enum
import random

import attrs
from aiohttp import web

from ._config import FaultConfig

__all__ = (
    "Fault",
    "FaultEvent",
    "FaultInjector",
    "abort",
    "cut",
    "gateway_page",
    "rate_limited",
)


class Fault(enum.Enum):
    """A kind of injected fault, as recorded in ``Simulator.fault_log`` (``FaultEvent.fault``).

    Which ones can strike, and how often, is set by :class:`FaultConfig`; the value is a
    short label for logs.
    """

    ERROR_5XX = "502"
    """A gateway answered 502 with an HTML page (on a submit: before the job existed)."""
    RATE_LIMIT = "429"
    """429 with ``Retry-After`` and an empty body (on a submit: nothing was created)."""
    DROP = "drop"
    """The connection was closed: before the job existed on a submit, part-way through
    the real answer on other routes."""
    ERROR_5XX_AFTER_CREATE = "504-after-create"
    """The submit created the job, then a gateway answered 504 with an HTML page."""
    DROP_AFTER_CREATE = "drop-after-create"
    """The submit created the job, then the connection was cut mid-answer."""
    TRUNCATE = "truncate"
    """A list answer kept only a prefix of the matching tasks."""
    RELAY_REQUEST_FAILED = "relay-do_request_failed"
    """quickrouter: new-api's ``do_request_failed`` (code 5); nothing was created."""
    RELAY_REQUEST_FAILED_AFTER_CREATE = "relay-do_request_failed-after-create"
    """quickrouter: ``do_request_failed`` after the upstream created the job (the relay
    never recorded it, so fetch says ``task_no_found``)."""
    RELAY_EMPTY_BODY = "relay-empty_response_body"
    """quickrouter: new-api's ``empty_response_body`` (code 5); nothing was created."""
    NO_ACCOUNT = "no-account"
    """A submit answered code 3 ``无可用的账号实例`` (no free Discord account); nothing was
    created (``FaultConfig.no_account_rate``)."""
    HANG = "hang"
    """A job was created that will hang and be failed by the server's timeout
    (``FaultConfig.hang_rate``, ``hang_words``); logged when it is created."""
    RELAY_STALL = "relay-stall"
    """quickrouter: the relay recorded a job whose copy will stop refreshing
    (``FaultConfig.relay_stall_rate``, ``stall_words``); logged when it is recorded."""
    STORE_LAG = "store-lag"
    """midjourney-proxy: a change was refused because the task store still had the
    parent's old state (``SimulatorConfig.store_lag``)."""
    LINK_EXPIRED = "link-expired"
    """An image link past its ``ex`` (or with a wrong signature) was refused
    (``SimulatorConfig.link_lifetime``)."""
    TOKEN_REFUSED = "token-refused"
    """A request with a disabled, expired, exhausted or revoked key was refused
    (``disabled_keys``, ``expired_keys``, ``exhausted_keys``, ``Simulator.revoke_key``)."""
    MISSING_CHANNEL = "missing-channel"
    """quickrouter: the distributor found no channel for the submit's model (503
    ``model_not_found``: ``missing_models``, or the channel was auto-banned)."""
    CHANNEL_DISABLED = "channel-disabled"
    """quickrouter: an upstream code 3 made new-api disable its MJ channel
    (``channel_auto_ban``); logged once, when it happens."""


@attrs.frozen
class FaultEvent:
    """One injected fault: the request's number (from 1, per simulator), route and kind."""

    request: int
    """The request's number, counted from 1 per simulator."""
    route: str
    """The route it struck (``"POST /submit/imagine"``)."""
    fault: Fault
    """What was injected."""


class FaultInjector:
    """Decides, per request, whether and how it fails. One seeded generator, one draw each."""

    def __init__(self, config: FaultConfig, rng: random.Random) -> None:
        self.config = config
        self._rng = rng
        self._requests = 0
        #: Every fault injected, in order.
        self.log: list[FaultEvent] = []

    def applies(self, route: str, group: str) -> bool:
        """Whether the request faults may strike this route (``FaultConfig.routes``)."""
        routes = self.config.routes
        return routes is None or route in routes or group in routes

    def draw(self, route: str, group: str, *, relay: bool = False) -> Fault | None:
        """The fault for this request, if any (counts the request either way)."""
        self._requests += 1
        cfg = self.config
        if not self.applies(route, group):
            return None
        u = self._rng.random()
        choices: list[tuple[float, Fault]] = [
            (cfg.error_5xx_rate, Fault.ERROR_5XX),
            (cfg.rate_limit_rate, Fault.RATE_LIMIT),
            (cfg.drop_rate, Fault.DROP),
        ]
        if group == "submit":
            choices += [
                (cfg.submit_5xx_after_create_rate, Fault.ERROR_5XX_AFTER_CREATE),
                (cfg.drop_after_create_rate, Fault.DROP_AFTER_CREATE),
            ]
            if not route.endswith("/upload-discord-images"):  # creates no job
                choices.append((cfg.no_account_rate, Fault.NO_ACCOUNT))
        if group == "submit" and relay:
            choices += [
                (cfg.relay_request_failed_rate, Fault.RELAY_REQUEST_FAILED),
                (
                    cfg.relay_request_failed_after_create_rate,
                    Fault.RELAY_REQUEST_FAILED_AFTER_CREATE,
                ),
                (cfg.relay_empty_body_rate, Fault.RELAY_EMPTY_BODY),
            ]
        edge = 0.0
        for rate, fault in choices:
            edge += rate
            if u < edge:
                self.log.append(FaultEvent(self._requests, route, fault))
                return fault
        return None

    def record(self, route: str, fault: Fault) -> None:
        """Log a fault a dialect applied itself (numbered as the current request)."""
        self.log.append(FaultEvent(self._requests, route, fault))

    def truncate(self, route: str, group: str, matches: int) -> int | None:
        """How many of ``matches`` tasks a list answer keeps, or None to keep all."""
        rate = self.config.truncate_list_rate
        if not rate or not self.applies(route, group):
            return None
        if self._rng.random() >= rate or matches == 0:
            return None
        keep = self._rng.randrange(matches)
        self.log.append(FaultEvent(self._requests, route, Fault.TRUNCATE))
        return keep


_PAGES = {
    502: "Bad Gateway",
    503: "Service Temporarily Unavailable",
    504: "Gateway Time-out",
}


def gateway_page(status: int) -> web.Response:
    """An nginx-style HTML error page, as gateways send instead of JSON."""
    title = f"{status} {_PAGES.get(status, 'Error')}"
    html = (
        f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n"
        f"<center><h1>{title}</h1></center>\r\n<hr><center>nginx</center>\r\n"
        "</body>\r\n</html>\r\n"
    )
    return web.Response(status=status, text=html, content_type="text/html")


def rate_limited(retry_after: float) -> web.Response:
    """429 with ``Retry-After`` and an empty body (TrueAI's IP rate limiter)."""
    return web.Response(status=429, headers={"Retry-After": f"{retry_after:g}"})


def abort(request: web.Request) -> web.Response:
    """Close the connection before answering: the client sees the server disconnect."""
    if request.transport is not None:
        request.transport.close()
    return web.Response(status=200)


async def cut(request: web.Request, response: web.Response) -> web.StreamResponse:
    """Send the headers and part of ``response``'s body, then close the connection.

    The client sees a payload error (the body is shorter than its Content-Length).
    """
    body = response.body if isinstance(response.body, bytes) else b""
    stream = web.StreamResponse(status=response.status)
    stream.content_type = response.content_type
    stream.content_length = max(len(body), 2)
    await stream.prepare(request)
    await stream.write(body[: len(body) // 2])
    if request.transport is not None:
        request.transport.close()
    return stream
