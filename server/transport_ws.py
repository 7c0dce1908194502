"""The ``websockets`` adapter: handshake, HTTP endpoints, and the frame pump.

All it knows of the server is :class:`server.session.Session` (frames in, frames out) and
the HTTP routes in :mod:`server.http`. A second WebSocket library plugs in the same way.
Subprotocol negotiation is ``websockets``' own: a client offering none of ours (or none at
all) gets HTTP 400 before the upgrade. Frames over ``max_frame_bytes`` close with 1009.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from http import HTTPStatus
from typing import TYPE_CHECKING

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from protocol import SUBPROTOCOLS
from protocol.codec import CODECS
from server import http
from server.session import Session

if TYPE_CHECKING:
    from server.app import App

log = logging.getLogger("gearhall.transport")


class WebSocketsTransport:
    __slots__ = ("_conn", "remote")

    def __init__(self, conn: ServerConnection) -> None:
        self._conn = conn
        peer = conn.remote_address
        self.remote = f"{peer[0]}:{peer[1]}" if peer else "?"

    async def send(self, frame: bytes, text: bool) -> None:
        await self._conn.send(frame, text=text)

    async def close(self, code: int, reason: str) -> None:
        with contextlib.suppress(Exception):
            await self._conn.close(code, reason)

    def abort(self) -> None:
        self._conn.transport.abort()


def server_ssl_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """TLS for the game port: the default server context (TLS 1.2+, no compression).

    Raises:
        OSError, ssl.SSLError: the certificate or key cannot be read or do not match.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return context


async def start_server(app: App) -> Server:
    settings = app.settings

    async def process_request(conn: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        route = http.ROUTES.get(path)
        if route is not None:
            status, content_type, body = await route(app)
            return Response(
                status.value,
                status.phrase,
                Headers(
                    [
                        ("Content-Type", content_type),
                        ("Content-Length", str(len(body))),
                        ("Cache-Control", "no-store"),
                    ]
                ),
                body,
            )
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return conn.respond(HTTPStatus.NOT_FOUND, "not found\n")
        if app.draining:
            return conn.respond(HTTPStatus.SERVICE_UNAVAILABLE, "shutting down\n")
        return None

    async def handler(conn: ServerConnection) -> None:
        codec = CODECS[conn.subprotocol or ""]
        session = Session(app, WebSocketsTransport(conn), codec)
        app.sessions.add(session)
        app.metrics.connections.inc()
        app.metrics.connections_total.inc()
        session.start()
        try:
            while True:
                await session.wait_writable()
                frame = await conn.recv(decode=False)
                await session.on_frame(frame)
        except ConnectionClosed:
            pass
        except asyncio.CancelledError:
            raise
        finally:
            app.sessions.discard(session)
            app.metrics.connections.dec()
            await session.finish()

    return await serve(
        handler,
        settings.host,
        settings.port,
        subprotocols=list(SUBPROTOCOLS),  # type: ignore[arg-type]
        process_request=process_request,
        max_size=settings.max_frame_bytes,
        max_queue=32,
        ping_interval=settings.ping_interval_s,
        ping_timeout=settings.ping_timeout_s,
        close_timeout=min(5.0, settings.write_timeout_s),
        compression=None,
        server_header=f"gearhall/{app.version}",
        ssl=app.tls,
    )
