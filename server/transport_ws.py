"""The ``websockets`` adapter: handshake, HTTP endpoints, and the frame pump.

All it knows of the server is :class:`server.session.Session` (frames in, frames out) and
the HTTP routes in :mod:`server.http`. A second WebSocket library plugs in the same way.
What to answer before the upgrade (HTTP endpoints, 404, 503, the per-IP abuse limits, 400
for no shared subprotocol) is decided by :func:`server.handshake.route`, shared with the
picows adapter. Messages over ``max_frame_bytes`` close with 1009.

Every connection's first bytes go to the front door (:mod:`server.front`), through
websockets' ``create_connection`` hook: a ``ServerConnection`` subclass feeds the front
door until the request is known to be a GET, and websockets from then on, starting with
the bytes the front door read. A request the front door answers itself (a POST) never
reaches websockets' parser: its opening-handshake task waits for the connection to close,
finds no request and ends without a word. websockets' ``open_timeout`` is off, because it
would run from the accept, across a POST handler: the front door times the request, and
websockets gets a complete request head at once.

A game connection counts against its IP's socket allowance from the moment
``process_request`` accepts its upgrade until the TCP connection is lost, whether the
handshake then succeeds or not.
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
from server.front import REQUEST_TIMEOUT_S, FrontDoor
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
        # All frames into the protocol inside one send context; leaving it writes them
        # (GameConnection.send_data joins them into one write) and waits for the buffer
        # to drain below its high-water mark, as a single send does.
        conn = self._conn
        async with conn.send_context():
            send = conn.protocol.send_text if text else conn.protocol.send_binary
            for frame in frames:
                send(frame)

    def try_send(self, frame: bytes, text: bool) -> bool:
        # websockets' send() checks state, writes and drains in one coroutine; no split.
        return False

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
    limits = app.ip_limits
    # The route process_request chose, for select_subprotocol and the handler to follow;
    # weak, so a handshake that fails after process_request leaves nothing behind.
    upgrades: weakref.WeakKeyDictionary[ServerConnection, Upgrade] = weakref.WeakKeyDictionary()

    class FrontedConnection(ServerConnection):
        """A connection whose first bytes go through the front door (module docstring)."""

        front: FrontDoor | None = None
        """Until the request is a GET (then None: websockets has the connection)."""
        client_ip = ""
        counted = False
        """Whether this connection holds one of its IP's sockets."""
        lost = False

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            self.front = FrontDoor(app, self._hand_over)
            self.front.connection_made(transport)

        def _hand_over(self, transport: asyncio.Transport, data: bytes, client_ip: str) -> None:
            self.front = None
            self.client_ip = client_ip
            super().data_received(data)

        def data_received(self, data: bytes) -> None:
            if self.front is None:
                super().data_received(data)
            else:
                self.front.data_received(data)

        def eof_received(self) -> bool | None:  # type: ignore[override]
            if self.front is None:
                super().eof_received()
                return None
            return self.front.eof_received()

        def send_data(self) -> None:
            # websockets writes every frame it produced with a transport.write of its own
            # (a syscall each on uvloop): join them, so send_batch is one write. An empty
            # chunk means "half-close", handled as websockets handles it.
            run: list[bytes] = []
            for data in self.protocol.data_to_send():
                if data:
                    run.append(data)
                    continue
                if run:
                    self.transport.write(b"".join(run))
                    run = []
                if self.transport.can_write_eof():
                    with contextlib.suppress(Exception):  # what websockets does too
                        self.transport.write_eof()
                else:  # pragma: no cover - TLS
                    self.transport.close()
            if run:
                self.transport.write(b"".join(run))

        def hold_socket(self) -> None:
            """Count this connection against its IP's sockets until it is lost."""
            # process_request may run after the loss (websockets reads the request first)
            if not self.lost:
                limits.socket_opened(self.client_ip)
                self.counted = True

        def connection_lost(self, exc: Exception | None) -> None:
            self.lost = True
            if self.front is not None:
                self.front.connection_lost(exc)
            super().connection_lost(exc)
            if self.counted:
                limits.socket_closed(self.client_ip)
            # serve() binds our select_subprotocol to the protocol through a closure over
            # this connection: connection -> protocol -> bound method -> closure cell ->
            # connection. Left alone, every connection (~50 objects) is freed only by the
            # cyclic collector, in pauses that grow with connection churn
            # (docs/benchmarks.md, "Connection churn"). The handshake is long over: drop
            # the shadowing attribute (websockets < 18 stores it on the instance).
            self.protocol.__dict__.pop("select_subprotocol", None)

    async def process_request(conn: ServerConnection, request: Request) -> Response | None:
        assert isinstance(conn, FrontedConnection)
        path = request.path.split("?", 1)[0]
        is_upgrade = request.headers.get("Upgrade", "").lower() == "websocket"
        offered = offered_subprotocols(request.headers.get_all("Sec-WebSocket-Protocol"))
        origin = request.headers.get("Origin")
        decision = route(app, path, is_upgrade, offered, client_ip=conn.client_ip, origin=origin)
        if isinstance(decision, Upgrade):
            upgrades[conn] = decision
            if not decision.echo:
                conn.hold_socket()
            return None
        return Response(
            decision.status.value,
            decision.status.phrase,
            Headers(
                [
                    ("Content-Type", decision.content_type),
                    ("Content-Length", str(len(decision.body))),
                    ("Cache-Control", "no-store"),
                    *decision.headers,
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
                if not session.writable:
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
        open_timeout=None,  # the front door's REQUEST_TIMEOUT_S (module docstring)
        create_connection=FrontedConnection,
        ssl=app.tls,
        ssl_handshake_timeout=REQUEST_TIMEOUT_S if app.tls is not None else None,
    )
    return WebSocketsListener(server)
