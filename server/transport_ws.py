"""The ``websockets`` adapter: handshake, HTTP endpoints, and the frame pump.

All it knows of the server is :class:`server.session.Session` (frames in, frames out) and
the HTTP routes in :mod:`server.http`. A second WebSocket library plugs in the same way.
What to answer before the upgrade (HTTP endpoints, 404, 503, 400 for no shared subprotocol)
is decided by :func:`server.handshake.route`, shared with the picows adapter. Messages over
``max_frame_bytes`` close with 1009.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from protocol.codec import CODECS
from server.handshake import Upgrade, offered_subprotocols, route
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

    async def send_batch(self, frames: list[bytes], text: bool) -> None:
        # websockets writes each frame on its own; there is no multi-frame send.
        for frame in frames:
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


class WebSocketsListener:
    """The listening socket of the websockets adapter (see :class:`server.app.Listener`)."""

    def __init__(self, server: Server) -> None:
        self._server = server

    @property
    def port(self) -> int:
        port: int = next(iter(self._server.sockets)).getsockname()[1]
        return port

    def stop_accepting(self) -> None:
        self._server.close(close_connections=False)

    async def close(self) -> None:
        self._server.close()
        await self._server.wait_closed()


async def _echo(conn: ServerConnection) -> None:
    """Test only (``echo_endpoint``): send every message back as it came, text or binary."""
    with contextlib.suppress(ConnectionClosed):
        async for message in conn:
            await conn.send(message)


async def start_server(app: App) -> WebSocketsListener:
    settings = app.settings
    # The route process_request chose, for select_subprotocol and the handler to follow;
    # weak, so a handshake that fails after process_request leaves nothing behind.
    upgrades: weakref.WeakKeyDictionary[ServerConnection, Upgrade] = weakref.WeakKeyDictionary()

    async def process_request(conn: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        is_upgrade = request.headers.get("Upgrade", "").lower() == "websocket"
        offered = offered_subprotocols(request.headers.get_all("Sec-WebSocket-Protocol"))
        decision = route(app, path, is_upgrade, offered)
        if isinstance(decision, Upgrade):
            upgrades[conn] = decision
            return None
        return Response(
            decision.status.value,
            decision.status.phrase,
            Headers(
                [
                    ("Content-Type", decision.content_type),
                    ("Content-Length", str(len(decision.body))),
                    ("Cache-Control", "no-store"),
                ]
            ),
            decision.body,
        )

    def select_subprotocol(
        conn: ServerConnection, subprotocols: Sequence[Subprotocol]
    ) -> Subprotocol | None:
        decision = upgrades.get(conn)
        if decision is None or decision.subprotocol is None:
            return None
        return Subprotocol(decision.subprotocol)

    async def handler(conn: ServerConnection) -> None:
        decision = upgrades.pop(conn)
        if decision.echo:
            await _echo(conn)
            return
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

    server = await serve(
        handler,
        settings.host,
        settings.port,
        select_subprotocol=select_subprotocol,
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
    return WebSocketsListener(server)
