"""What both transports decide the same way before a WebSocket upgrade.

Each adapter parses the request with its own library and asks :func:`route`: an HTTP
answer (health, readiness, metrics, 404, 503 while draining, 400 for a missing or unknown
subprotocol), or an upgrade to the game protocol with the chosen subprotocol, or (test
only) to the echo endpoint. So the adapters differ in how they speak HTTP and WebSocket,
never in what they answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING

from protocol import SUBPROTOCOLS
from server import http

if TYPE_CHECKING:
    from server.app import App

ECHO_PATH = "/echo"
_TEXT = "text/plain; charset=utf-8"


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    status: HTTPStatus
    content_type: str
    body: bytes


@dataclass(frozen=True, slots=True)
class Upgrade:
    subprotocol: str | None
    """The game protocol's subprotocol; None for the echo endpoint."""
    echo: bool = False


def offered_subprotocols(header_values: Sequence[str]) -> list[str]:
    """The subprotocols a client offers, from its ``Sec-WebSocket-Protocol`` header(s)."""
    return [p.strip() for value in header_values for p in value.split(",") if p.strip()]


def route(app: App, path: str, is_upgrade: bool, offered: Sequence[str]) -> HttpAnswer | Upgrade:
    """The answer to a request for ``path`` (query string removed)."""
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
    for ours in SUBPROTOCOLS:  # our order of preference, as websockets negotiates
        if ours in offered:
            return Upgrade(ours)
    wanted = ", ".join(SUBPROTOCOLS)
    why = "missing subprotocol" if not offered else "invalid subprotocol"
    return HttpAnswer(HTTPStatus.BAD_REQUEST, _TEXT, f"{why}; expected one of {wanted}\n".encode())
