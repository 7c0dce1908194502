"""A small Gearhall protocol client: one connection, either encoding, rid correlation.

Messages go out as mappings (or protocol Structs) and come back as plain dicts, so the probe
can send anything the wire can carry — including messages the server must refuse — and show
exactly what came back. Replies are matched to requests by ``rid``; pushes (messages without
a ``rid``) are kept aside in :attr:`ProbeClient.pushes`, and a reply that arrives while
waiting for another ``rid`` (pipelined requests) is kept until it is asked for.

One coroutine reads at a time: ``websockets`` refuses concurrent ``recv`` calls, and the
correlation here assumes a single reader. The load generator (``load.py``) reuses the
connection and codec but reads with its own loop to stay cheap per request.
"""

from __future__ import annotations

import collections
import itertools
import ssl
from collections.abc import Callable, Mapping
from typing import Literal, Self

import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidHandshake, InvalidStatus, InvalidURI
from websockets.typing import Origin, Subprotocol

from protocol import SUBPROTOCOL_JSON, SUBPROTOCOL_MSGPACK

Encoding = Literal["json", "msgpack"]
Message = dict[str, object]

SUBPROTOCOL_BY_ENCODING: dict[Encoding, str] = {
    "json": SUBPROTOCOL_JSON,
    "msgpack": SUBPROTOCOL_MSGPACK,
}


class ProbeError(Exception):
    """The server did not answer as the protocol says it must."""


class ErrorReplyError(ProbeError):
    """The server answered with an ``error`` message; :attr:`reply` holds it."""

    def __init__(self, reply: Message) -> None:
        super().__init__(f"{reply.get('code')}: {reply.get('message')}")
        self.reply = reply


class FrameCodec:
    """Encoding of one subprotocol: JSON text frames or MessagePack binary frames."""

    __slots__ = ("_decode", "_encode", "encoding", "subprotocol", "text")

    def __init__(self, encoding: Encoding) -> None:
        self.encoding: Encoding = encoding
        self.subprotocol = SUBPROTOCOL_BY_ENCODING[encoding]
        self.text = encoding == "json"
        self._encode: Callable[[object], bytes]
        self._decode: Callable[[bytes], object]
        if encoding == "json":
            self._encode = msgspec.json.Encoder().encode
            self._decode = msgspec.json.Decoder().decode
        else:
            self._encode = msgspec.msgpack.Encoder().encode
            self._decode = msgspec.msgpack.Decoder().decode

    def encode(self, msg: Mapping[str, object] | msgspec.Struct) -> bytes:
        return self._encode(msg)

    def decode(self, frame: bytes | str) -> Message:
        """Decode one server frame into a dict.

        Raises:
            ProbeError: the frame is not a message object in this encoding.
        """
        if isinstance(frame, str):
            frame = frame.encode()
        try:
            msg = self._decode(frame)
        except msgspec.DecodeError as exc:
            raise ProbeError(f"undecodable {self.encoding} frame: {exc}") from None
        if not isinstance(msg, dict):
            raise ProbeError(f"server frame is not an object: {msg!r}")
        return msg


class HandshakeRefusedError(ProbeError):
    """The connection could not be opened; the message says why in the user's terms.

    :attr:`status` is the HTTP status of a refused upgrade (None for network and TLS
    failures) and :attr:`retry_after` the server's ``Retry-After`` header, if any.
    """

    def __init__(self, message: str, status: int | None = None, retry_after: str | None = None):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


_STATUS_HINTS = {
    400: "the server refused the upgrade: it speaks none of the offered subprotocols "
    "({offered}), or the request is not a WebSocket upgrade",
    401: "the server wants authentication before the upgrade (401): check the token or credentials",
    403: "the server forbids this connection (403): the Origin {origin} is not allowed, or "
    "the credentials lack the right",
    404: "nothing at this path (404): is the URL the game socket?",
    429: "too many connections or handshakes from this address (429){retry}",
    503: "the server is not accepting connections (503): it is starting or shutting down",
}


def explain_connect_error(
    exc: BaseException, url: str, encoding: Encoding, origin: str | None = None
) -> HandshakeRefusedError:
    """A :class:`HandshakeRefusedError` naming the likely cause of a failed connect."""
    if isinstance(exc, HandshakeRefusedError):
        return exc
    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        retry_after = exc.response.headers.get("Retry-After")
        retry = f"; retry after {retry_after} s" if retry_after else ""
        hint = _STATUS_HINTS.get(status, "the server refused the upgrade with HTTP {status}")
        body = (
            exc.response.body.decode("utf-8", "replace").strip()[:200] if exc.response.body else ""
        )
        text = hint.format(
            status=status,
            offered=SUBPROTOCOL_BY_ENCODING[encoding],
            origin=origin or "(none sent)",
            retry=retry,
        )
        if body:
            text += f"; it said: {body}"
        return HandshakeRefusedError(f"{url}: {text}", status, retry_after)
    if isinstance(exc, ssl.SSLCertVerificationError):
        return HandshakeRefusedError(
            f"{url}: TLS certificate not trusted ({exc.verify_message}); "
            "pass --ca FILE with the CA that signed it"
        )
    if isinstance(exc, ssl.SSLError):
        return HandshakeRefusedError(
            f"{url}: TLS failed ({exc.reason}); is the server speaking TLS?"
        )
    if isinstance(exc, InvalidURI):
        return HandshakeRefusedError(f"{url}: not a ws:// or wss:// URL")
    if isinstance(exc, ConnectionRefusedError):
        return HandshakeRefusedError(f"{url}: connection refused: is the server running?")
    if isinstance(exc, TimeoutError):
        return HandshakeRefusedError(f"{url}: no handshake within the timeout")
    if isinstance(exc, InvalidHandshake):
        return HandshakeRefusedError(f"{url}: the WebSocket handshake failed: {exc}")
    return HandshakeRefusedError(f"{url}: {type(exc).__name__}: {exc}")


def client_ssl_context(ca_file: str | None) -> ssl.SSLContext:
    """Verification on, with ``ca_file``'s CAs added to the system's when given."""
    context = ssl.create_default_context()
    if ca_file is not None:
        context.load_verify_locations(cafile=ca_file)
    return context


async def open_connection(
    url: str,
    encoding: Encoding,
    *,
    open_timeout: float = 10.0,
    ca_file: str | None = None,
    origin: str | None = None,
) -> ClientConnection:
    """Connect offering exactly one Gearhall subprotocol.

    ``ca_file`` trusts a CA for ``wss://`` (self-signed test servers); ``origin`` sends an
    ``Origin`` header as a browser would.

    Raises:
        HandshakeRefusedError: the connection or the upgrade failed; the message explains why.
    """
    wanted = SUBPROTOCOL_BY_ENCODING[encoding]
    secure = url.startswith("wss://")
    if ca_file is not None and not secure:
        raise HandshakeRefusedError(f"{url}: --ca only applies to wss:// URLs")
    try:
        ws = await connect(
            url,
            subprotocols=[Subprotocol(wanted)],
            compression=None,
            proxy=None,
            open_timeout=open_timeout,
            max_size=None,
            # The probe must never be the slow consumer: read everything the server sends.
            max_queue=None,
            origin=Origin(origin) if origin is not None else None,
            ssl=client_ssl_context(ca_file) if secure else None,
        )
    except (OSError, InvalidHandshake, InvalidURI, TimeoutError) as exc:
        raise explain_connect_error(exc, url, encoding, origin) from exc
    if ws.subprotocol != wanted:
        await ws.close()
        raise HandshakeRefusedError(
            f"{url}: the server chose subprotocol {ws.subprotocol!r}, not {wanted!r}: "
            "not a Gearhall server, or another protocol version"
        )
    return ws


class ProbeClient:
    """One connection: send mappings, receive dicts, correlate replies by ``rid``."""

    def __init__(self, ws: ClientConnection, encoding: Encoding) -> None:
        self.ws = ws
        self.codec = FrameCodec(encoding)
        self.pushes: collections.deque[Message] = collections.deque()
        self._unclaimed: dict[object, Message] = {}
        self._rids = itertools.count(1)

    @classmethod
    async def connect(
        cls,
        url: str,
        encoding: Encoding = "json",
        *,
        open_timeout: float = 10.0,
        ca_file: str | None = None,
        origin: str | None = None,
    ) -> Self:
        """Raises: see :func:`open_connection`."""
        ws = await open_connection(
            url, encoding, open_timeout=open_timeout, ca_file=ca_file, origin=origin
        )
        return cls(ws, encoding)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def next_rid(self) -> int:
        return next(self._rids)

    async def send_frame(self, frame: bytes) -> None:
        """Send one already encoded frame (text for JSON, binary for MessagePack)."""
        await self.ws.send(frame, text=self.codec.text)

    async def recv_frame(self) -> bytes:
        frame = await self.ws.recv(decode=False)
        assert isinstance(frame, bytes)  # decode=False always returns bytes
        return frame

    async def send(self, msg: Mapping[str, object]) -> object:
        """Send ``msg``, adding a fresh ``rid`` unless it has one; return the ``rid``."""
        if "rid" not in msg:
            msg = {**msg, "rid": self.next_rid()}
        await self.send_frame(self.codec.encode(msg))
        return msg["rid"]

    async def receive(self) -> Message:
        """The next message the server sends, reply or push, in arrival order."""
        return self.codec.decode(await self.recv_frame())

    async def reply(self, rid: object) -> Message:
        """The reply carrying ``rid``; pushes and other replies read meanwhile are kept.

        Bound the wait with ``asyncio.timeout`` around the call.

        Raises:
            ProbeError: an undecodable frame arrived.
            websockets.exceptions.ConnectionClosed: the connection closed first.
        """
        found = self._unclaimed.pop(rid, None)
        if found is not None:
            return found
        while True:
            msg = await self.receive()
            if "rid" not in msg:
                self.pushes.append(msg)
            elif msg["rid"] == rid:
                return msg
            elif msg["rid"] is None and msg.get("t") == "error":
                # The server could not read our frame, so not its rid either: with one
                # reader waiting, this error is the answer it is waiting for.
                return msg
            else:
                self._unclaimed[msg["rid"]] = msg

    async def request(self, msg: Mapping[str, object]) -> Message:
        """Send ``msg`` and return its reply (an ``error`` reply is returned, not raised).

        Raises: see :meth:`reply`.
        """
        return await self.reply(await self.send(msg))

    async def hello(self, token: str, resume: int | None = None) -> Message:
        """Open the session; returns the ``session.welcome`` reply.

        Raises:
            ErrorReplyError: the server refused the hello.
            ProbeError, ConnectionClosed: see :meth:`reply`.
        """
        msg: Message = {"t": "session.hello", "token": token}
        if resume is not None:
            msg["resume"] = resume
        reply = await self.request(msg)
        if reply.get("t") != "session.welcome":
            raise ErrorReplyError(reply)
        return reply

    async def close(self) -> None:
        await self.ws.close()
