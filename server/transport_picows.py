"""The ``picows`` adapter: the same connection core as ``transport_ws``, on a Cython transport.

picows parses frames and handles masking, opcodes, control-frame rules, per-frame size and
ping/pong in C, and hands each frame to a synchronous callback; it leaves the rest of RFC
6455 to the application. This module does that part, so the server behaves as it does on
``websockets``:

- **Messages from frames.** Fragments are joined (a data frame inside a fragmented message,
  or a continuation outside one, is a protocol error, 1002); reserved bits without an
  extension are 1002; a message over ``max_frame_bytes`` is 1009, and so is one of more
  fragments than ``websockets`` allows (its ``MAX_FRAGMENTS``, 4,096 unless
  ``WEBSOCKETS_MAX_FRAGMENTS`` says otherwise: the same limit on both transports); a text
  message that is not UTF-8 is 1007.
- **The closing handshake.** A close frame is answered with the same code (an invalid code
  or a 1-byte payload is 1002, a reason that is not UTF-8 is 1007) and the connection ends.
- **Order and backpressure.** Frames arrive in a callback, requests must be handled one at a
  time in order: each connection has an inbox, drained in the frame callback itself while
  each message has a sync handler (the hot path, see :class:`_GameListener`) and otherwise
  by the connection's pump task; before each message the outbound queue must be below its
  high-water mark (:meth:`Session.wait_writable`, as in the ``websockets`` pump), and the
  socket is not read while the inbox holds 32 messages (``websockets``' ``max_queue``).
- **Writes.** picows writes synchronously into the socket's buffer; while the buffer is over
  its high-water mark (``pause_writing``) a send waits, so the write watchdog sees a blocked
  write exactly as with ``websockets``. When several frames are queued for a client, they go
  out in one ``write`` (:meth:`PicowsTransport.send_batch`).
- **HTTP on the same port.** The handshake callback is synchronous, so it asks
  :func:`server.handshake.route` (health, readiness, metrics, 404, 503, the per-IP abuse
  limits, 400) like the ``websockets`` adapter does, and answers non-upgrade requests with
  picows' plain responses.
- **The front door first.** The listening socket's protocol is :class:`server.front.
  FrontDoor`, not picows': it reads the request head, serves POSTs itself, and hands a GET
  over to a ``WSProtocol`` built here as ``picows.ws_create_server`` builds one, with the
  bytes it read. ``WSProtocol`` is an internal of picows (pinned below 3); its
  constructor's arguments are those of picows 2.3.
- **Sockets per IP.** A game connection counts against its IP's allowance from
  ``on_ws_connected`` to ``on_ws_disconnected``; the allowance is checked by ``route`` in
  the same synchronous call that connects, so no other handshake comes in between.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from picows import (
    WSAutoPingStrategy,
    WSCloseCode,
    WSFrame,
    WSListener,
    WSMsgType,
    WSProtocolError,
    WSTransport,
    WSUpgradeRequest,
    WSUpgradeResponse,
    WSUpgradeResponseWithListener,
)
from picows.picows import WSProtocol  # type: ignore[attr-defined]  # not in picows' stubs
from websockets.asyncio.messages import MAX_FRAGMENTS

from protocol.codec import CODECS
from server.front import REQUEST_TIMEOUT_S, FrontDoor
from server.handshake import HttpAnswer, offered_subprotocols, route
from server.session import Session

if TYPE_CHECKING:
    from protocol.base import Request
    from server.app import App

log = logging.getLogger("gearhall.transport")

_WRITABLE = object()
"""Handed to the pump: wait until the session's outbound queue drains."""
INBOX_HIGH = 32
"""Stop reading a client's socket while this many of its messages wait to be handled."""
INBOX_LOW = 8
"""... and read again once no more than this many do."""
READ_BUFFER_BYTES = 2048
"""Initial read buffer per connection."""

_TEXT, _BINARY, _CONT, _CLOSE = (
    WSMsgType.TEXT,
    WSMsgType.BINARY,
    WSMsgType.CONTINUATION,
    WSMsgType.CLOSE,
)
# RFC 6455 7.4: codes an endpoint may send. 1004-1006 and 1015 are reserved, 1012-1014 are
# IANA-registered since and accepted as websockets accepts them.
_VALID_CLOSE = frozenset((1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014))


def _close_code_ok(code: int) -> bool:
    return code in _VALID_CLOSE or 3000 <= code <= 4999


def frame_header(opcode: int, size: int) -> bytes:
    """The header of one unmasked, unfragmented server frame carrying ``size`` bytes."""
    first = 0x80 | opcode
    if size < 126:
        return bytes((first, size))
    if size < 65536:
        return bytes((first, 126)) + size.to_bytes(2, "big")
    return bytes((first, 127)) + size.to_bytes(8, "big")


class PicowsTransport:
    """:class:`server.session.Transport` over one picows connection."""

    __slots__ = ("_paused", "_resumed", "_ws", "close_timeout", "remote")

    def __init__(self, ws: WSTransport, close_timeout: float) -> None:
        self._ws = ws
        peer = ws.underlying_transport.get_extra_info("peername")
        self.remote = f"{peer[0]}:{peer[1]}" if peer else "?"
        self.close_timeout = close_timeout
        self._paused = False
        self._resumed = asyncio.Event()
        self._resumed.set()

    def pause(self) -> None:
        self._paused = True
        self._resumed.clear()

    def resume(self) -> None:
        self._paused = False
        self._resumed.set()

    def _check_open(self) -> None:
        if self._ws.is_disconnected or self._ws.is_close_frame_sent:
            raise ConnectionError("connection closed")

    async def send(self, frame: bytes, text: bool) -> None:
        if self._paused:
            await self._resumed.wait()
        self._check_open()
        self._ws.send(_TEXT if text else _BINARY, frame)

    def try_send(self, frame: bytes, text: bool) -> bool:
        if self._paused:
            return False
        ws = self._ws
        if ws.is_disconnected or ws.is_close_frame_sent:
            raise ConnectionError("connection closed")
        ws.send(_TEXT if text else _BINARY, frame)
        return True

    async def send_batch(self, frames: list[bytes], text: bool) -> None:
        """Several frames in one ``write`` (one syscall instead of one per frame)."""
        if self._paused:
            await self._resumed.wait()
        self._check_open()
        opcode = 0x1 if text else 0x2
        parts: list[bytes] = []
        for frame in frames:
            parts.append(frame_header(opcode, len(frame)))
            parts.append(frame)
        self._ws.underlying_transport.write(b"".join(parts))

    async def close(self, code: int, reason: str) -> None:
        ws = self._ws
        if ws.is_disconnected:
            return
        if not ws.is_close_frame_sent:
            ws.send_close(WSCloseCode(code), reason.encode())
        # The client answers with its close frame (which disconnects, see _on_close) or the
        # deadline does.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.close_timeout):
                await ws.wait_disconnected()
        ws.disconnect()

    def abort(self) -> None:
        self._ws.disconnect(graceful=False)


class _MessageListener(WSListener):
    """Frames to messages, and the closing handshake (see the module docstring)."""

    def __init__(self, max_message: int) -> None:
        super().__init__()
        self._max = max_message
        self._parts: list[bytes] = []
        self._size = 0
        self._fragmented: WSMsgType | None = None
        self.ws: WSTransport | None = None

    def on_message(self, data: bytes | str, text: bool) -> None:
        raise NotImplementedError

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if frame.rsv1 or frame.rsv2 or frame.rsv3:  # no extension is ever negotiated
            raise WSProtocolError(WSCloseCode.PROTOCOL_ERROR, "reserved bits set")
        if kind is _TEXT or kind is _BINARY or kind is _CONT:
            if kind is _CONT:
                if self._fragmented is None:
                    raise WSProtocolError(WSCloseCode.PROTOCOL_ERROR, "unexpected continuation")
            elif self._fragmented is not None:
                raise WSProtocolError(WSCloseCode.PROTOCOL_ERROR, "expected a continuation")
            if frame.fin and kind is not _CONT:
                self._whole(kind, frame)
            else:
                self._fragment(kind, frame)
        elif kind is _CLOSE:
            self._on_close(transport, frame)
        # PING is answered by picows (enable_auto_pong); a PONG needs nothing.

    def _whole(self, kind: WSMsgType, frame: WSFrame) -> None:
        if kind is _TEXT:
            try:
                text = frame.get_payload_as_utf8_text()
            except UnicodeDecodeError:
                raise WSProtocolError(WSCloseCode.INVALID_TEXT, "invalid UTF-8") from None
            self.on_message(text, True)
        else:
            self.on_message(frame.get_payload_as_bytes(), False)

    def _fragment(self, kind: WSMsgType, frame: WSFrame) -> None:
        if kind is not _CONT:
            self._fragmented = kind
        payload = frame.get_payload_as_bytes()
        self._size += len(payload)
        if self._size > self._max:
            raise WSProtocolError(WSCloseCode.MESSAGE_TOO_BIG, "message too big")
        if len(self._parts) >= MAX_FRAGMENTS:
            raise WSProtocolError(WSCloseCode.MESSAGE_TOO_BIG, "too many fragments")
        self._parts.append(payload)
        if not frame.fin:
            return
        data = b"".join(self._parts)
        text = self._fragmented is _TEXT
        self._parts, self._size, self._fragmented = [], 0, None
        if text:
            try:
                self.on_message(data.decode(), True)
            except UnicodeDecodeError:
                raise WSProtocolError(WSCloseCode.INVALID_TEXT, "invalid UTF-8") from None
        else:
            self.on_message(data, False)

    def _on_close(self, transport: WSTransport, frame: WSFrame) -> None:
        payload = frame.get_payload_as_bytes()
        code = 1000
        if len(payload) == 1:
            code = 1002
        elif payload:
            received = int.from_bytes(payload[:2], "big")
            try:
                payload[2:].decode()
            except UnicodeDecodeError:
                code = 1007
            else:
                code = received if _close_code_ok(received) else 1002
        if not transport.is_close_frame_sent:
            # picows' enum lists the common codes only; its C signature takes any int.
            transport.send_close(
                WSCloseCode(code) if code in _PICOWS_CODES else cast(WSCloseCode, code)
            )
        transport.disconnect()


_PICOWS_CODES = frozenset(c.value for c in WSCloseCode)


class _GameListener(_MessageListener):
    """One game client: messages go to its :class:`Session`, one at a time, in order.

    A message whose handler is synchronous (``Dispatcher.is_sync``: ping and the player
    intents, the hot path) is handled right in picows' callback, :meth:`_advance`, with no
    task, coroutine or future: its reply goes out from the journal's commit callback, which
    then lets the next message in. Any other message, or a wait for the outbound queue to
    drain, is handed to the pump task, which awaits it and hands back. Either way exactly
    one message is in progress at a time (:attr:`_busy`).
    """

    def __init__(self, app: App, subprotocol: str, client_ip: str) -> None:
        super().__init__(app.settings.max_frame_bytes)
        self._app = app
        self._subprotocol = subprotocol
        self._client_ip = client_ip
        self._inbox: collections.deque[bytes | str] = collections.deque()
        self._busy = False
        """A message is being handled (synchronously awaiting its commit, or by the pump)."""
        self._advancing = False
        """:meth:`_advance` is running (so :meth:`_replied` need not schedule it)."""
        self._handoff: Request | object | None = None
        """What the pump is to do next: a request to await, or :data:`_WRITABLE`."""
        # The pump's wake-up while it has nothing to do: a bare future, cheaper than an Event.
        self._waiter: asyncio.Future[None] | None = None
        self._reading = True
        self._gone = False
        self.transport: PicowsTransport | None = None
        self.session: Session | None = None
        self._pump_task: asyncio.Task[None] | None = None

    def on_ws_connected(self, ws: WSTransport) -> None:
        app = self._app
        self.ws = ws
        self.transport = PicowsTransport(ws, min(5.0, app.settings.write_timeout_s))
        self.session = Session(app, self.transport, CODECS[self._subprotocol])
        app.ip_limits.socket_opened(self._client_ip)
        app.sessions.add(self.session)
        app.metrics.connections.inc()
        app.metrics.connections_total.inc()
        self.session.start()
        self._pump_task = asyncio.get_running_loop().create_task(self._pump())

    def on_message(self, data: bytes | str, text: bool) -> None:
        inbox = self._inbox
        inbox.append(data)
        if not self._busy:
            self._advance()
        if len(inbox) >= INBOX_HIGH and self._reading and self.ws is not None:
            self._reading = False
            self.ws.underlying_transport.pause_reading()

    def _advance(self) -> None:
        """Handle queued messages in order for as long as each is answered at once; stop at
        one that waits (its commit, or the pump)."""
        session, inbox = self.session, self._inbox
        assert session is not None and self.ws is not None
        is_sync = self._app.dispatcher.is_sync
        self._advancing = True
        try:
            while inbox and not self._busy and not self._gone:
                if not session.writable:
                    self._hand_to_pump(_WRITABLE)
                    return
                data = inbox.popleft()
                if not self._reading and len(inbox) <= INBOX_LOW:
                    self._reading = True
                    self.ws.underlying_transport.resume_reading()
                msg = session.admit(data)
                if msg is None:  # answered (an error) or dropped
                    continue
                if not is_sync(msg):
                    self._hand_to_pump(msg)
                    return
                self._busy = True
                if session.handle_sync(msg, self._replied):
                    self._busy = False
                # else _replied clears _busy, maybe already (write-behind answers at once)
        finally:
            self._advancing = False

    def _replied(self) -> None:
        """The reply to the message in progress went out: from the journal's callback, or
        from inside :meth:`_advance` (write-behind answers at once; it carries on itself)."""
        self._busy = False
        if self._inbox and not self._gone and not self._advancing:
            # Not from inside the journal's callback loop: the next message may be slow.
            asyncio.get_running_loop().call_soon(self._advance)

    def _hand_to_pump(self, what: Request | object) -> None:
        self._busy = True
        self._handoff = what
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _pump(self) -> None:
        session = self.session
        assert session is not None
        loop = asyncio.get_running_loop()
        while not self._gone:
            what = self._handoff
            if what is None:
                self._waiter = loop.create_future()
                await self._waiter
                self._waiter = None
                continue
            self._handoff = None
            if what is _WRITABLE:
                await session.wait_writable()
                if self._is_gone():  # disconnected while waiting
                    return
            else:
                await session.handle(cast("Request", what))
            self._busy = False
            self._advance()

    def _is_gone(self) -> bool:  # a call: mypy would narrow the attribute across the await
        return self._gone

    def pause_writing(self) -> None:
        if self.transport is not None:
            self.transport.pause()

    def resume_writing(self) -> None:
        if self.transport is not None:
            self.transport.resume()

    def on_ws_disconnected(self, ws: WSTransport) -> None:
        self._gone = True
        self._wake()
        if self.transport is not None:
            self.transport.resume()  # a send waiting for the buffer fails on the closed check
        session = self.session
        if session is None:
            return
        app = self._app
        app.ip_limits.socket_closed(self._client_ip)
        app.sessions.discard(session)
        app.metrics.connections.dec()
        asyncio.get_running_loop().create_task(self._finish(session))

    async def _finish(self, session: Session) -> None:
        if self._pump_task is not None:
            self._pump_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump_task
        await session.finish()


class _EchoListener(_MessageListener):
    """Test only (``echo_endpoint``): every message back as it came, for Autobahn."""

    def on_ws_connected(self, ws: WSTransport) -> None:
        self.ws = ws

    def on_message(self, data: bytes | str, text: bool) -> None:
        assert self.ws is not None
        self.ws.send(_TEXT if text else _BINARY, data.encode() if isinstance(data, str) else data)


class PicowsListener:
    """The listening socket of the picows adapter (see :class:`server.app.Listener`)."""

    def __init__(self, server: asyncio.Server) -> None:
        self._server = server

    @property
    def port(self) -> int:
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    def stop_accepting(self) -> None:
        self._server.close()

    async def close(self) -> None:
        self._server.close()
        # Python 3.12+ waits here for every connection; 3.11 returns at once. Sessions are
        # closed by the app before this.
        await self._server.wait_closed()


def feed(protocol: asyncio.BufferedProtocol, transport: asyncio.Transport, data: bytes) -> None:
    """Give ``data`` to ``protocol`` as if it had been read from the socket: a buffered
    protocol's buffer may be smaller than ``data`` (picows grows its own as it fills).

    Raises:
        RuntimeError: the protocol offers no room at all.
    """
    view = memoryview(data)
    while view and not transport.is_closing():  # closed: it has answered, the rest is moot
        with memoryview(protocol.get_buffer(len(view))) as buffer:
            size = min(len(buffer), len(view))
            if not size:
                raise RuntimeError("the protocol's read buffer is full")
            buffer[:size] = view[:size]
        protocol.buffer_updated(size)
        view = view[size:]


async def start_server(app: App) -> PicowsListener:
    settings = app.settings
    server_header = f"gearhall/{app.version}"
    picows_logger = logging.getLogger("picows.gearhall.picows")

    def answer(decision: HttpAnswer) -> WSUpgradeResponseWithListener:
        status = decision.status
        headers = {
            "Content-Type": decision.content_type,
            "Cache-Control": "no-store",
            "Server": server_header,
            **dict(decision.headers),
        }
        if status >= 400:
            response = WSUpgradeResponse.create_error_response(status, decision.body, headers)
        else:
            response = WSUpgradeResponse.create_ok_response(decision.body, headers)
            response.status = status
        return WSUpgradeResponseWithListener(response, None)

    def router(client_ip: str) -> Callable[[WSUpgradeRequest], WSUpgradeResponseWithListener]:
        """picows' listener factory for one connection from ``client_ip``."""

        def listener_factory(request: WSUpgradeRequest) -> WSUpgradeResponseWithListener:
            path = request.path.decode("latin-1").split("?", 1)[0]
            headers = request.headers
            is_upgrade = headers.get("Upgrade", "").lower() == "websocket"
            offered = offered_subprotocols(headers.getall("Sec-WebSocket-Protocol", []))
            origin = headers.get("Origin")
            decision = route(app, path, is_upgrade, offered, client_ip=client_ip, origin=origin)
            if isinstance(decision, HttpAnswer):
                return answer(decision)
            extra = {"Server": server_header}
            if decision.echo:
                listener: _MessageListener = _EchoListener(settings.max_frame_bytes)
            else:
                assert decision.subprotocol is not None
                extra["Sec-WebSocket-Protocol"] = decision.subprotocol
                listener = _GameListener(app, decision.subprotocol, client_ip)
            response = WSUpgradeResponse.create_101_response(extra)
            return WSUpgradeResponseWithListener(response, listener)

        return listener_factory

    def hand_over(transport: asyncio.Transport, data: bytes, client_ip: str) -> None:
        # What picows.ws_create_server's protocol factory builds, argument for argument.
        protocol: Any = WSProtocol(
            None,  # host and port: a client's
            None,  # path: a client's
            False,  # is_client_side
            router(client_ip),
            picows_logger,
            True,  # disconnect_on_exception
            REQUEST_TIMEOUT_S,  # websocket_handshake_timeout: the head is all there
            True,  # enable_auto_ping
            settings.ping_interval_s,  # auto_ping_idle_timeout: the period
            settings.ping_timeout_s,  # auto_ping_reply_timeout
            WSAutoPingStrategy.PING_PERIODICALLY,
            True,  # enable_auto_pong
            settings.max_frame_bytes,
            None,  # extra_headers: a client's
            # picows' default is 16 KiB per connection, allocated up front; game messages
            # are small and the buffer grows when one is not (benchmarks/idle_bench.py).
            READ_BUFFER_BYTES,
        )
        protocol.connection_made(transport)
        # asyncio and uvloop both switch to reading into get_buffer for a buffered protocol
        transport.set_protocol(protocol)
        feed(protocol, transport, data)

    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: FrontDoor(app, hand_over),
        settings.host,
        settings.port,
        ssl=app.tls,
        ssl_handshake_timeout=REQUEST_TIMEOUT_S if app.tls is not None else None,
    )
    return PicowsListener(server)
