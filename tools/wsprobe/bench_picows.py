"""The picows engine of ``wsprobe bench``: each client a picows connection whose loop runs in
picows' frame callback (see ``bench_engine.py`` for what an engine does).

Why it is cheap. picows parses and masks frames in C and calls
:meth:`_Connection.on_ws_frame` for each frame; the rest of an exchange is done right there,
without a task, a future or a queue per message: the closed loop decodes the reply's head,
records it and sends the client's next request from inside the callback; the open loop has
one scheduler task per worker, and ``WSTransport.send`` writes synchronously (the socket's
buffer absorbs what the kernel does not take at once). What is left per exchange is the
generator's own work (plan, head decoding, histogram) and two system calls.

What ``websockets`` did for the other engine that is done here:

- **The handshake.** Offer exactly one Gearhall subprotocol and check that the response
  picked it; ``Origin`` when asked; TLS with ``--ca`` for ``wss://``. A refused upgrade is
  explained in the words of :func:`tools.wsprobe.client.explain_connect_error`.
- **Messages from frames.** Fragments are joined (the Gearhall server never fragments, but
  a proxy may); a continuation outside a fragmented message, or a data frame inside one, is
  a protocol error: the client closes with 1002 and says so on stderr. PINGs are answered by
  picows.
- **The closing handshake.** A server's close is answered with its code and the connection
  dropped: the client is down from that moment (requests outstanding are
  ``connection_closed``, ops scheduled later ``client_down``). At the end of a run each
  client sends a close and waits for the server's.

The hello (and the welcome the plans read) goes over the same connection, through an inbox
awaited by the setup code; once the run starts the callback does everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from picows import (
    WSCloseCode,
    WSFrame,
    WSHandshakeError,
    WSInvalidStatusError,
    WSInvalidURL,
    WSListener,
    WSMsgType,
    WSTransport,
    WSUpgradeRequest,
    WSUpgradeResponse,
    ws_connect,
)
from websockets.datastructures import Headers
from websockets.exceptions import InvalidStatus
from websockets.http11 import Response

from tools.wsprobe.bench_engine import (
    Recorder,
    Schedule,
    Setup,
    Window,
    greet,
    head_decoder,
    run_schedule,
)
from tools.wsprobe.bench_report import LoadConfig
from tools.wsprobe.client import (
    SUBPROTOCOL_BY_ENCODING,
    Encoding,
    ErrorReplyError,
    FrameCodec,
    HandshakeRefusedError,
    Message,
    ProbeError,
    client_ssl_context,
    explain_connect_error,
)
from tools.wsprobe.common import ConnectOptions
from tools.wsprobe.plans import MixPlan

log = logging.getLogger("wsprobe.bench")

_TEXT, _BINARY, _CONT, _CLOSE = (
    WSMsgType.TEXT,
    WSMsgType.BINARY,
    WSMsgType.CONTINUATION,
    WSMsgType.CLOSE,
)
CLOSE_TIMEOUT_S = 10.0
"""How long the server has to answer the clients' closes at the end (``websockets``')."""


def _ignore(message: bytes) -> None:
    return None


def _nothing() -> None:
    return None


# --- one connection ----------------------------------------------------------------------------


class _Connection(WSListener):
    """Frames in, whole messages out to :attr:`on_message`; the end of the connection (a
    close, a drop, a protocol error) to :attr:`on_down`, once, with the reason in
    :attr:`down`."""

    __slots__ = ("_parts", "down", "on_down", "on_message")

    def __init__(self) -> None:
        super().__init__()
        self._parts: list[bytes] | None = None
        self.down: str | None = None
        self.on_message: Callable[[bytes], None] = _ignore
        self.on_down: Callable[[], None] = _nothing

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        msg_type = frame.msg_type
        if frame.fin and self._parts is None and (msg_type is _TEXT or msg_type is _BINARY):
            self.on_message(frame.get_payload_as_bytes())
        else:
            self._other_frame(transport, frame, msg_type)

    def _other_frame(self, transport: WSTransport, frame: WSFrame, msg_type: WSMsgType) -> None:
        if msg_type is _CLOSE:
            code = frame.get_close_code()
            reason = frame.get_close_reason()
            said = f"{code.value} {reason}" if reason else str(code.value)
            self.lose(f"the server closed the connection ({said})")
            # Echo the code (a close without one gets 1000: picows always sends a code).
            transport.send_close(code if code is not WSCloseCode.NO_INFO else WSCloseCode.OK)
            transport.disconnect()
        elif msg_type is _CONT:
            if self._parts is None:
                self._violation(transport, "a continuation frame outside a fragmented message")
                return
            self._parts.append(frame.get_payload_as_bytes())
            if frame.fin:
                message = b"".join(self._parts)
                self._parts = None
                self.on_message(message)
        elif msg_type is _TEXT or msg_type is _BINARY:
            if self._parts is not None:
                self._violation(transport, "a data frame inside a fragmented message")
                return
            self._parts = [frame.get_payload_as_bytes()]  # not fin: the first fragment
        # PING: picows answers it (auto pong); PONG: nothing was asked.

    def _violation(self, transport: WSTransport, what: str) -> None:
        log.warning("wsprobe bench: the server sent %s; closing the connection (1002)", what)
        self.lose(f"protocol error: the server sent {what}")
        transport.send_close(WSCloseCode.PROTOCOL_ERROR, what.encode())
        transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.lose("the connection dropped")

    def lose(self, why: str) -> None:
        """The connection is over (or is being closed) for ``why``: say so once."""
        if self.down is None:
            self.down = why
            self.on_down()


def _listener(request: WSUpgradeRequest, response: WSUpgradeResponse) -> _Connection:
    return _Connection()


def _refusal(
    exc: WSHandshakeError, url: str, encoding: Encoding, origin: str | None
) -> HandshakeRefusedError:
    """A refused upgrade in the same words as the ``websockets`` engine's."""
    response = exc.response
    if isinstance(exc, WSInvalidStatusError) and response is not None:
        # explain_connect_error reads websockets' refusal: hand it this one in that form.
        refused = Response(
            int(response.status),
            response.status.phrase,
            Headers(list(response.headers.items())),
            exc.raw_body or b"",
        )
        return explain_connect_error(InvalidStatus(refused), url, encoding, origin)
    return HandshakeRefusedError(f"{url}: the WebSocket handshake failed: {exc}")


async def open_connection(options: ConnectOptions) -> tuple[WSTransport, _Connection]:
    """Connect on picows offering exactly one Gearhall subprotocol, as
    :func:`tools.wsprobe.client.open_connection` does on ``websockets``.

    Raises:
        HandshakeRefusedError: the connection or the upgrade failed; the message explains why.
    """
    url, encoding, origin = options.url, options.encoding, options.origin
    wanted = SUBPROTOCOL_BY_ENCODING[encoding]
    secure = url.startswith("wss://")
    if options.ca_file is not None and not secure:
        raise HandshakeRefusedError(f"{url}: --ca only applies to wss:// URLs")
    headers = [("Sec-WebSocket-Protocol", wanted)]
    if origin is not None:
        headers.append(("Origin", origin))
    try:
        async with asyncio.timeout(options.open_timeout):
            transport, listener = await ws_connect(
                _listener,
                url,
                ssl_context=client_ssl_context(options.ca_file) if secure else None,
                extra_headers=headers,
                websocket_handshake_timeout=options.open_timeout,
                max_redirects=0,
            )
    except WSHandshakeError as exc:
        raise _refusal(exc, url, encoding, origin) from exc
    except WSInvalidURL as exc:
        raise HandshakeRefusedError(f"{url}: not a ws:// or wss:// URL") from exc
    except (OSError, TimeoutError) as exc:
        raise explain_connect_error(exc, url, encoding, origin) from exc
    if not isinstance(listener, _Connection) or transport.is_disconnected:
        raise HandshakeRefusedError(f"{url}: the server closed the connection in the handshake")
    chosen = transport.response.headers.get("Sec-WebSocket-Protocol")
    if chosen != wanted:
        transport.disconnect()
        raise HandshakeRefusedError(
            f"{url}: the server chose subprotocol {chosen!r}, not {wanted!r}: "
            "not a Gearhall server, or another protocol version"
        )
    return transport, listener


@dataclass(slots=True, eq=False)
class _Ready:
    """A client that said hello and holds its plan, waiting for the run."""

    conn: _Connection
    transport: WSTransport
    codec: FrameCodec
    plan: MixPlan
    rids: itertools.count[int]

    @property
    def msg_type(self) -> WSMsgType:
        return _TEXT if self.codec.text else _BINARY


async def _hello(
    transport: WSTransport,
    conn: _Connection,
    codec: FrameCodec,
    rids: itertools.count[int],
    token: str,
) -> Message:
    """Say hello; return the welcome.

    Raises:
        ErrorReplyError: the server refused the hello.
        ProbeError: the connection ended first, or a frame was not a message.
    """
    inbox: asyncio.Queue[bytes | None] = asyncio.Queue()
    conn.on_message = inbox.put_nowait
    conn.on_down = functools.partial(inbox.put_nowait, None)
    try:
        if conn.down is not None:
            raise ProbeError(conn.down)
        rid = next(rids)
        hello = {"t": "session.hello", "token": token, "rid": rid}
        transport.send(_TEXT if codec.text else _BINARY, codec.encode(hello))
        while True:
            payload = await inbox.get()
            if payload is None:
                raise ProbeError(conn.down)
            msg = codec.decode(payload)
            if "rid" not in msg:  # a push
                continue
            # An error without a rid: the server could not read the hello (see ProbeClient).
            if msg["rid"] == rid or (msg["rid"] is None and msg.get("t") == "error"):
                break
    finally:
        conn.on_message, conn.on_down = _ignore, _nothing
    if msg.get("t") != "session.welcome":
        raise ErrorReplyError(msg)
    return msg


# --- the loops ---------------------------------------------------------------------------------


class _Countdown:
    """Set :attr:`zero` once :meth:`one` has been called ``n`` times."""

    __slots__ = ("left", "zero")

    def __init__(self, n: int) -> None:
        self.left = n
        self.zero = asyncio.Event()
        if n <= 0:
            self.zero.set()

    def one(self) -> None:
        self.left -= 1
        if self.left == 0:
            self.zero.set()


class _ClosedClient:
    """One request outstanding: each reply sends the next, from picows' frame callback."""

    __slots__ = (
        "_conn", "_decode", "_done", "_end", "_kind", "_msg_type", "_observes", "_plan",
        "_rec", "_rid", "_rids", "_send", "_sent", "_start", "finished", "in_flight_measured",
    )  # fmt: skip

    def __init__(self, client: _Ready, window: Window, rec: Recorder, done: _Countdown) -> None:
        self._conn = client.conn
        self._send = client.transport.send
        self._msg_type = client.msg_type
        self._decode = head_decoder(client.codec.text)
        self._plan, self._rids = client.plan, client.rids
        self._observes = client.plan.observes
        self._rec, self._done = rec, done
        self._start, self._end = window.start, window.end
        self._rid = self._kind = 0
        self._sent = 0.0
        self.in_flight_measured = False
        """The request awaiting its reply was sent inside the window."""
        self.finished = False

    def start(self) -> None:
        if self._conn.down is not None:  # died before the run: nothing to send
            self._finish()
            return
        self._conn.on_message = self._reply
        self._conn.on_down = self._lost
        self._send_next()

    def _send_next(self) -> None:
        sent = time.monotonic()
        if sent >= self._end:
            self._finish()
            return
        rid = next(self._rids)
        self._kind, request = self._plan.next(rid)
        self._rid, self._sent = rid, sent
        self.in_flight_measured = sent >= self._start
        try:
            self._send(self._msg_type, request)
        except (OSError, RuntimeError) as exc:  # the socket is gone under picows
            self._conn.lose(f"the connection failed: {exc}")

    def _reply(self, message: bytes) -> None:
        head = self._decode(message)
        if head.rid != self._rid:  # pushes (no rid) are skipped
            return
        done = time.monotonic()
        measured = self.in_flight_measured
        self.in_flight_measured = False
        if self._observes:
            self._plan.observe(self._rid, message)
        if measured:
            self._rec.reply(head, self._kind, done - self._sent, None)
        self._send_next()

    def _lost(self) -> None:
        if self.in_flight_measured:
            self.in_flight_measured = False
            self._rec.error("connection_closed")
        self._finish()

    def _finish(self) -> None:
        if not self.finished:
            self.finished = True
            self._conn.on_message, self._conn.on_down = _ignore, _nothing
            self._done.one()


class _OpenClient:
    """Sends when the scheduler says; replies are matched to ``pending`` in the callback."""

    __slots__ = (
        "_conn", "_decode", "_done", "_msg_type", "_observes", "_plan", "_rec", "_rids",
        "_send", "dead", "finished", "pending", "sending",
    )  # fmt: skip

    def __init__(self, client: _Ready, rec: Recorder, done: _Countdown) -> None:
        self._conn = client.conn
        self._send = client.transport.send
        self._msg_type = client.msg_type
        self._decode = head_decoder(client.codec.text)
        self._plan, self._rids = client.plan, client.rids
        self._observes = client.plan.observes
        self._rec, self._done = rec, done
        # rid -> (time the op is timed from, actual send time, kind, measured)
        self.pending: dict[int, tuple[float, float, int, bool]] = {}
        self.sending = True
        self.finished = False
        self.dead = client.conn.down is not None
        if self.dead:  # died before the run: its ops will be ``client_down``
            self._finish()
        else:
            self._conn.on_message = self._reply
            self._conn.on_down = self._lost

    async def send_at(self, timed_from: float, now: float, measured: bool) -> None:
        """Open loop (:func:`bench_engine.run_schedule`): send the next request now."""
        rid = next(self._rids)
        kind, request = self._plan.next(rid)
        self.pending[rid] = (timed_from, now, kind, measured)
        try:
            self._send(self._msg_type, request)
        except (OSError, RuntimeError) as exc:  # the socket is gone under picows
            self._conn.lose(f"the connection failed: {exc}")

    def _reply(self, message: bytes) -> None:
        head = self._decode(message)
        rid = head.rid
        if rid is None:
            return
        times = self.pending.pop(rid, None)
        if times is None:
            return
        done = time.monotonic()
        if self._observes:
            self._plan.observe(rid, message)
        intended, sent, kind, measured = times
        if measured:
            self._rec.reply(head, kind, done - intended, done - sent)
        if not self.sending and not self.pending:
            self._finish()

    def stop_sending(self) -> None:
        """The schedule is over: finished once nothing is outstanding."""
        self.sending = False
        if not self.pending:
            self._finish()

    def _lost(self) -> None:
        self.dead = True
        lost = sum(1 for *_, measured in self.pending.values() if measured)
        self.pending.clear()
        if lost:
            self._rec.error("connection_closed", lost)
        self._finish()

    def _finish(self) -> None:
        if not self.finished:
            self.finished = True
            self._conn.on_message, self._conn.on_down = _ignore, _nothing
            self._done.one()


class PicowsPool:
    """:class:`tools.wsprobe.bench_engine.Pool` on picows."""

    def __init__(self, config: LoadConfig) -> None:
        self.config = config
        self.clients: list[_Ready] = []
        self.connected = 0

    async def connect(self, indices: range, setup: Setup) -> None:
        gate = asyncio.Semaphore(self.config.connect_concurrency)
        opened = await asyncio.gather(*(self._open(i, gate, setup) for i in indices))
        self.clients = [c for c in opened if c is not None]
        self.connected = len(self.clients)

    async def _open(self, index: int, gate: asyncio.Semaphore, setup: Setup) -> _Ready | None:
        async with gate:
            try:
                transport, conn = await open_connection(self.config.connect)
            except ProbeError as exc:  # HandshakeRefusedError: the message says why
                setup.fail("connect_failed", str(exc))
                return None
            codec = FrameCodec(self.config.connect.encoding)
            rids = itertools.count(1)
            hello = functools.partial(_hello, transport, conn, codec, rids)
            plan = await greet(self.config, index, codec, hello, setup)
            if plan is None:
                transport.send_close(WSCloseCode.OK)
                transport.disconnect()
                return None
            return _Ready(conn, transport, codec, plan, rids)

    async def _drain(self, done: _Countdown) -> None:
        """Wait for every client to finish, up to the drain timeout; then stop listening."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.config.drain_timeout_s):
                await done.zero.wait()
        for client in self.clients:  # replies from now on are too late to count
            client.conn.on_message, client.conn.on_down = _ignore, _nothing

    async def run_closed(self, window: Window, rec: Recorder) -> None:
        done = _Countdown(len(self.clients))
        clients = [_ClosedClient(c, window, rec, done) for c in self.clients]
        for client in clients:
            client.start()
        await asyncio.sleep(max(0.0, window.end - time.monotonic()))
        await self._drain(done)
        lost = sum(1 for c in clients if c.in_flight_measured)
        if lost:
            rec.error("no_reply", lost)

    async def run_open(self, schedule: Schedule, rec: Recorder) -> None:
        done = _Countdown(len(self.clients))
        clients = [_OpenClient(c, rec, done) for c in self.clients]
        await run_schedule(clients, schedule, rec)
        for client in clients:
            client.stop_sending()
        await self._drain(done)
        lost = sum(1 for c in clients for *_, m in c.pending.values() if m)
        if lost:
            rec.error("no_reply", lost)

    async def close(self) -> None:
        """Send every client's close and wait for the server's answers (or drop them)."""
        for client in self.clients:
            client.transport.send_close(WSCloseCode.OK)
        waits = [c.transport.wait_disconnected() for c in self.clients]
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await asyncio.gather(*waits, return_exceptions=True)
        except TimeoutError:
            for client in self.clients:
                client.transport.disconnect()
