"""What both transports decide the same way before a WebSocket upgrade.

Each adapter parses the GET request the front door (:mod:`server.front`) handed it with its
own library and asks :func:`route`: an HTTP answer (health, readiness, metrics, 404, 503
while draining, the per-IP abuse limits of :mod:`server.abuse` — 403 for a foreign
``Origin``, 429 for too many handshakes or sockets — and 400 for a missing or unknown
subprotocol), or an upgrade to the game protocol with the chosen subprotocol, or (test
only) to the echo endpoint. So the adapters differ in how they speak HTTP and WebSocket,
never in what they answer.

The health endpoints are exempt from the abuse limits (a Prometheus scrape or a load
balancer's probe must not be refused), and so is the test-only echo endpoint (the Autobahn
testsuite opens hundreds of connections from one address).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING

from protocol import SUBPROTOCOLS
from server import http
from server.abuse import Refusal

if TYPE_CHECKING:
    from server.app import App

ECHO_PATH = "/echo"
_TEXT = "text/plain; charset=utf-8"


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    status: HTTPStatus
    content_type: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()
    """Sent besides the adapter's own (``Retry-After`` of a 429)."""


@dataclass(frozen=True, slots=True)
class Upgrade:
    subprotocol: str | None
    """The game protocol's subprotocol; None for the echo endpoint."""
    echo: bool = False


def offered_subprotocols(header_values: Sequence[str]) -> list[str]:
    """The subprotocols a client offers, from its ``Sec-WebSocket-Protocol`` header(s)."""
    return [p.strip() for value in header_values for p in value.split(",") if p.strip()]


def refused(app: App, refusal: Refusal) -> HttpAnswer:
    """The answer to a request refused by the abuse limits, counted."""
    app.metrics.handshakes_refused.labels(refusal.reason).inc()
    return HttpAnswer(refusal.status, _TEXT, f"{refusal.message}\n".encode(), refusal.headers)


def route(
    app: App,
    path: str,
    is_upgrade: bool,
    offered: Sequence[str],
    *,
    client_ip: str,
    origin: str | None,
) -> HttpAnswer | Upgrade:
    """The answer to a GET for ``path`` (query string removed) from ``client_ip`` (after
    trusted proxies), with its ``Origin`` header if it has one.

    An upgrade to the game protocol takes one of ``client_ip``'s handshake tokens, and
    needs a free socket of its allowance: the adapter counts the socket from then on
    (:meth:`server.abuse.IpLimits.socket_opened`) until the connection ends.
    """
    handler = http.ROUTES.get(path)
    if handler is not None:
        status, content_type, body = handler(app)
        return HttpAnswer(status, content_type, body)
    if not is_upgrade:
        return HttpAnswer(HTTPStatus.NOT_FOUND, _TEXT, b"not found\n")
    if app.draining:
        return HttpAnswer(HTTPStatus.SERVICE_UNAVAILABLE, _TEXT, b"shutting down\n")
    if path == ECHO_PATH and app.settings.echo_endpoint:
        return Upgrade(None, echo=True)
    limits = app.ip_limits
    refusal = (
        limits.origin_refusal(origin)
        or limits.rate_refusal(client_ip)
        or limits.socket_refusal(client_ip)
    )
    if refusal is not None:
        return refused(app, refusal)
    for ours in SUBPROTOCOLS:  # our order of preference, as websockets negotiates
        if ours in offered:
            return Upgrade(ours)
    wanted = ", ".join(SUBPROTOCOLS)
    why = "missing subprotocol" if not offered else "invalid subprotocol"
    return HttpAnswer(HTTPStatus.BAD_REQUEST, _TEXT, f"{why}; expected one of {wanted}\n".encode())
