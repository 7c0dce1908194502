"""Stand-in WebSocket servers that are not Gearhall, for what a client makes of their answers.

``gatekeeper`` refuses upgrades the way the layers in front of a Gearhall server (an auth
layer, an Origin check, a rate limiter) do, with the statuses, bodies and headers a client
must explain to its user.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Collection
from http import HTTPStatus
from typing import NamedTuple

from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol


class Gatekeeper(NamedTuple):
    url: str
    """``ws://127.0.0.1:PORT``, without a path: add ``/auth``, ``/busy`` or ``/``."""
    origins: list[str | None]
    """The ``Origin`` header of every upgrade request, in arrival order (None: not sent)."""


@contextlib.asynccontextmanager
async def gatekeeper(*, allowed_origins: Collection[str] = ()) -> AsyncIterator[Gatekeeper]:
    """A server refusing upgrades: by path, ``/auth`` with 401 ("token expired") and
    ``/busy`` with 429 (``Retry-After: 7``); elsewhere, an ``Origin`` header not in
    ``allowed_origins`` with 403 ("origin not allowed"). It speaks only an unrelated
    subprotocol, so an upgrade it lets through gets 400 from a Gearhall client's offer."""
    origins: list[str | None] = []

    def process_request(conn: ServerConnection, request: Request) -> Response | None:
        origin = request.headers.get("Origin")
        origins.append(origin)
        if request.path == "/auth":
            return conn.respond(HTTPStatus.UNAUTHORIZED, "token expired\n")
        if request.path == "/busy":
            return Response(
                429, "Too Many Requests", Headers([("Retry-After", "7"), ("Content-Length", "0")])
            )
        if origin is not None and origin not in allowed_origins:
            return conn.respond(HTTPStatus.FORBIDDEN, "origin not allowed\n")
        return None

    async def handler(conn: ServerConnection) -> None:
        await conn.close()

    async with serve(
        handler,
        "127.0.0.1",
        0,
        process_request=process_request,
        subprotocols=[Subprotocol("chat.v2")],
    ) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield Gatekeeper(f"ws://127.0.0.1:{port}", origins)
