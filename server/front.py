"""The front door of the game port: the first bytes of every connection.

Both WebSocket libraries accept only GET requests without a body, but the game port also
serves POST endpoints with JSON bodies (``App.post_routes``: sign-up, login...). So every
connection starts here. The request head is parsed with h11 (at most
:data:`MAX_HEAD_BYTES`: 431), and then

- **a GET** (a WebSocket upgrade, ``/healthz``...) is handed, with every byte read so far,
  untouched, to the transport's WebSocket library, which behaves as if it had read them
  itself: what it answers is :func:`server.handshake.route`'s decision, as before;
- **anything else** is answered here, once, with ``Connection: close``. A POST to a
  registered path has its whole body read (``Content-Length`` or chunked, at most
  ``http_body_max_bytes``: 413) and its handler called; an OPTIONS is the CORS preflight of
  one; other methods get 405, unknown paths 404. POSTs pass the same per-IP abuse limits
  as upgrades (:mod:`server.abuse`: 403 for a foreign ``Origin``, 429 with
  ``Retry-After``), and are not started while the server drains (503); a running one
  holds the shutdown like an in-flight WebSocket request does.

Each adapter uses one :class:`FrontDoor` per connection: picows as the connection's asyncio
protocol, replaced by picows' own on a GET (:mod:`server.transport_picows`), websockets
from a ``ServerConnection`` subclass that feeds it until the request is a GET
(:mod:`server.transport_ws`).

Time is bounded at every step, since the libraries' own handshake timeouts now start only
at the handover: the request (head, and body of a POST) must arrive within
:data:`REQUEST_TIMEOUT_S` (408), a handler must answer within :data:`HANDLER_TIMEOUT_S`
(503). After an answer the connection is closed gracefully: the write side is shut and
what the client still sends is read and dropped for up to :data:`LINGER_S`, so that closing
with unread bytes (a refused body still arriving) does not reset the connection before the
client has read the answer.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import TYPE_CHECKING, cast

import h11
import msgspec

from protocol.errors import ErrorCode
from server.abuse import Refusal
from server.http import HttpRequest, HttpResponse, PostHandler

if TYPE_CHECKING:
    from server.app import App

log = logging.getLogger("gearhall.front")

MAX_HEAD_BYTES = 16 * 1024
"""The largest request head (request line and headers), as picows allows."""
REQUEST_TIMEOUT_S = 10.0
"""From accept (after TLS) until the request has arrived: the head, and a POST's body."""
HANDLER_TIMEOUT_S = 30.0
"""A POST handler's time to answer."""
LINGER_S = 2.0
"""After an answer: how long the client may take to close before we do."""

CORS_MAX_AGE_S = 600
"""How long a browser may cache a preflight's answer."""

Handover = Callable[[asyncio.Transport, bytes, str], None]
"""Gives a GET connection to the WebSocket library: the transport, the bytes read so far,
and the client's IP (after trusted proxies)."""

_JSON = "application/json"
_DATA_ALLOWED = frozenset({"POST", "OPTIONS"})
# Keeps running handlers referenced: the event loop holds tasks only weakly.
_RUNNING: set[asyncio.Task[None]] = set()


class _State(enum.Enum):
    HEAD = enum.auto()  # reading the request head
    BODY = enum.auto()  # reading a POST's body
    SERVING = enum.auto()  # the handler runs; reading is paused
    LINGER = enum.auto()  # answered: waiting for the client to close
    HANDED_OVER = enum.auto()  # a GET: the WebSocket library owns the connection
    CLOSED = enum.auto()


def http_response(
    status: HTTPStatus,
    body: bytes,
    content_type: str,
    headers: Iterable[tuple[str, str]],
    server: str,
) -> bytes:
    """One complete ``Connection: close`` response.

    Raises:
        ValueError: a header name or value holds a line break.
        UnicodeEncodeError: a header is not Latin-1.
    """
    lines = [f"HTTP/1.1 {status.value} {status.phrase}"]
    if status is not HTTPStatus.NO_CONTENT:  # a 204 has no body, so no body headers
        lines += [f"Content-Type: {content_type}", f"Content-Length: {len(body)}"]
    lines += ["Connection: close", "Cache-Control: no-store", f"Server: {server}"]
    for name, value in headers:
        if "\r" in name or "\n" in name or "\r" in value or "\n" in value:
            raise ValueError(f"line break in response header {name!r}")
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def error_body(code: ErrorCode, message: str) -> bytes:
    return msgspec.json.encode({"code": code.value, "message": message, "details": {}})


class FrontDoor(asyncio.Protocol):
    """One connection until its request is known (see the module docstring).

    An asyncio protocol: picows' adapter gives it the connection directly, websockets'
    forwards its callbacks to it until :attr:`handed_over`.
    """

    def __init__(self, app: App, handover: Handover) -> None:
        self._app = app
        self._handover = handover
        self._server = f"gearhall/{app.version}"
        self._parser = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        self._received: list[bytes] = []  # the raw bytes, for a GET's handover
        self._received_size = 0
        self._state = _State.HEAD
        self._transport: asyncio.Transport | None = None
        self._tls = False
        self._timer: asyncio.TimerHandle | None = None
        self._peer = ""
        self.client_ip = ""
        """The client's IP (after trusted proxies), known with the head."""
        # a POST being read
        self._path = ""
        self._handler: PostHandler | None = None
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._body_size = 0

    @property
    def handed_over(self) -> bool:
        """A GET: the WebSocket library has the connection, this object is done."""
        return self._state is _State.HANDED_OVER

    # --- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self._peer = peer[0] if isinstance(peer, tuple) else ""
        self._tls = transport.get_extra_info("sslcontext") is not None
        self._timer = asyncio.get_running_loop().call_later(REQUEST_TIMEOUT_S, self._too_slow)

    def data_received(self, data: bytes) -> None:
        state = self._state
        if state is _State.HEAD:
            self._received.append(data)
            self._received_size += len(data)
        elif state is not _State.BODY:
            return  # answered or answering: what else the client sends is dropped
        self._parser.receive_data(data)
        self._read()

    def eof_received(self) -> bool:
        if self._state is _State.HEAD or self._state is _State.BODY:
            self._parser.receive_data(b"")
            self._read()
        # Keep a half-closed connection open while its answer is being made (TLS cannot:
        # the peer's close_notify ends it).
        return self._state is _State.SERVING and not self._tls

    def connection_lost(self, exc: Exception | None) -> None:
        if self._state is not _State.HANDED_OVER:
            self._state = _State.CLOSED
        self._cancel_timer()

    # --- reading -----------------------------------------------------------------------------

    def _read(self) -> None:
        """Act on what the parser has: the head, body data, the end of the body."""
        while self._state is _State.HEAD or self._state is _State.BODY:
            try:
                event = self._parser.next_event()
            except h11.RemoteProtocolError as exc:
                if exc.error_status_hint == HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE:
                    self._head_too_large()
                else:
                    self._error(HTTPStatus.BAD_REQUEST, ErrorCode.BAD_REQUEST, "malformed request")
                return
            if event is h11.NEED_DATA:
                return
            if isinstance(event, h11.Request):
                self._on_head(event)
            elif isinstance(event, h11.Data):
                self._body.append(bytes(event.data))
                self._body_size += len(event.data)
                if self._body_size > self._app.settings.http_body_max_bytes:
                    self._too_large()
            elif isinstance(event, h11.EndOfMessage):
                self._start_handler()
            else:  # ConnectionClosed before a request: nothing to answer
                self._close()

    def _on_head(self, request: h11.Request) -> None:
        # h11 bounds an incomplete head only: one that arrived whole may be larger.
        if self._received_size - len(self._parser.trailing_data[0]) > MAX_HEAD_BYTES:
            self._head_too_large()
            return
        app = self._app
        headers: dict[str, str] = {}
        for raw_name, raw_value in request.headers:
            name, value = raw_name.decode("latin-1"), raw_value.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        self.client_ip = app.ip_limits.client_ip(self._peer, headers.get("x-forwarded-for"))
        method = request.method.decode("latin-1")
        if method == "GET":
            self._hand_over()
            return
        path = request.target.decode("latin-1").split("?", 1)[0]
        handler = app.post_routes.get(path)
        self._path = path
        if method not in _DATA_ALLOWED:
            allow = "GET" if handler is None else "POST, OPTIONS"
            status = HTTPStatus.METHOD_NOT_ALLOWED
            self._error(status, ErrorCode.BAD_REQUEST, "method not allowed", (("Allow", allow),))
            return
        if handler is None:
            self._error(HTTPStatus.NOT_FOUND, ErrorCode.NOT_FOUND, "no such endpoint")
            return
        limits = app.ip_limits
        origin = headers.get("origin")
        refusal = limits.origin_refusal(origin)
        if refusal is not None:
            self._refuse(refusal)
            return
        if method == "OPTIONS":
            self._preflight(origin)
            return
        if app.draining:
            self._error(HTTPStatus.SERVICE_UNAVAILABLE, ErrorCode.UNAVAILABLE, "shutting down")
            return
        refusal = limits.rate_refusal(self.client_ip)
        if refusal is not None:
            self._refuse(refusal)
            return
        length = headers.get("content-length")  # h11 has checked it is a number
        if length is not None and int(length) > app.settings.http_body_max_bytes:
            self._too_large()
            return
        self._handler = handler
        self._headers = headers
        self._state = _State.BODY
        if self._parser.they_are_waiting_for_100_continue and self._transport is not None:
            self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _hand_over(self) -> None:
        self._cancel_timer()
        self._state = _State.HANDED_OVER
        data = b"".join(self._received)
        self._received.clear()
        assert self._transport is not None
        self._handover(self._transport, data, self.client_ip)

    def _too_slow(self) -> None:
        self._timer = None
        if self._state is _State.HEAD or self._state is _State.BODY:
            self._error(HTTPStatus.REQUEST_TIMEOUT, ErrorCode.BAD_REQUEST, "request too slow")

    # --- answering ---------------------------------------------------------------------------

    def _start_handler(self) -> None:
        self._cancel_timer()
        self._state = _State.SERVING
        assert self._transport is not None and self._handler is not None
        self._transport.pause_reading()
        request = HttpRequest(
            method="POST",
            path=self._path,
            headers=self._headers,
            body=b"".join(self._body),
            remote_ip=self.client_ip,
        )
        self._body.clear()
        task = asyncio.get_running_loop().create_task(
            self._serve(self._handler, request), name=f"POST {self._path}"
        )
        _RUNNING.add(task)
        task.add_done_callback(_RUNNING.discard)

    async def _serve(self, handler: PostHandler, request: HttpRequest) -> None:
        app = self._app
        app.request_started()
        try:
            async with asyncio.timeout(HANDLER_TIMEOUT_S):
                response: HttpResponse = await handler(app, request)
            status = response.status
            data = http_response(
                status,
                response.body,
                response.content_type,
                (*response.headers, *self._cors(request.headers.get("origin"))),
                self._server,
            )
        except TimeoutError:
            log.warning("POST %s: no answer within %.0f s", request.path, HANDLER_TIMEOUT_S)
            status = HTTPStatus.SERVICE_UNAVAILABLE
            data = self._json_error(status, ErrorCode.UNAVAILABLE, "timed out")
        except Exception:
            log.exception("POST %s failed", request.path)
            status = HTTPStatus.INTERNAL_SERVER_ERROR
            data = self._json_error(status, ErrorCode.INTERNAL, "internal error")
        finally:
            app.request_finished()
        self._send(status, data)

    def _cors(self, origin: str | None) -> tuple[tuple[str, str], ...]:
        """The CORS headers of an answer to an allowed browser origin."""
        if origin is None or not self._app.ip_limits.origin_allowed(origin):
            return ()
        return (("Access-Control-Allow-Origin", origin), ("Vary", "Origin"))

    def _preflight(self, origin: str | None) -> None:
        headers: tuple[tuple[str, str], ...] = (("Allow", "POST, OPTIONS"),)
        if origin is not None:  # allowed, or it would have been refused
            headers += (
                *self._cors(origin),
                ("Access-Control-Allow-Methods", "POST"),
                ("Access-Control-Allow-Headers", "Content-Type, Authorization"),
                ("Access-Control-Max-Age", str(CORS_MAX_AGE_S)),
            )
        status = HTTPStatus.NO_CONTENT
        self._send(status, http_response(status, b"", _JSON, headers, self._server))

    def _refuse(self, refusal: Refusal) -> None:
        self._app.metrics.handshakes_refused.labels(refusal.reason).inc()
        forbidden = refusal.status == HTTPStatus.FORBIDDEN
        code = ErrorCode.FORBIDDEN if forbidden else ErrorCode.RATE_LIMITED
        self._error(refusal.status, code, refusal.message, refusal.headers)

    def _head_too_large(self) -> None:
        status = HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE
        self._error(status, ErrorCode.BAD_REQUEST, "request head too large")

    def _too_large(self) -> None:
        limit = self._app.settings.http_body_max_bytes
        message = f"body larger than {limit} bytes"
        self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, ErrorCode.BAD_REQUEST, message)

    def _error(
        self,
        status: HTTPStatus,
        code: ErrorCode,
        message: str,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self._send(status, self._json_error(status, code, message, headers))

    def _json_error(
        self,
        status: HTTPStatus,
        code: ErrorCode,
        message: str,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> bytes:
        return http_response(status, error_body(code, message), _JSON, headers, self._server)

    def _send(self, status: HTTPStatus, data: bytes) -> None:
        """Write the answer, shut the write side, and linger (see the module docstring)."""
        path = self._path if self._path in self._app.post_routes else "other"
        self._app.metrics.front_door_responses.labels(path, str(status.value)).inc()
        self._cancel_timer()
        transport = self._transport
        if self._state is _State.CLOSED or transport is None or transport.is_closing():
            return
        self._state = _State.LINGER
        transport.write(data)
        if transport.can_write_eof():
            transport.write_eof()
        transport.resume_reading()
        self._timer = asyncio.get_running_loop().call_later(LINGER_S, self._close)

    def _close(self) -> None:
        self._timer = None
        if self._transport is not None:
            self._transport.close()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
