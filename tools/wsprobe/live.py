"""One live connection: the socket's only reader, replies matched to their requests by ``rid``.

``websockets`` allows one ``recv`` at a time, and a client must see pushes while nobody
waits for anything, so a :class:`LiveConnection` has a reader task from the moment it is
made. For each message, in arrival order, the reader:

1. finds the request waiting for its ``rid`` (any JSON value can be a rid in a raw message,
   so rids are keyed by their JSON encoding); an ``error`` with ``rid`` null, which the server
   sends when it could not read a frame and so not its rid either, answers the one request
   in flight (callers have at most one);
2. feeds it to a ``MirrorTracker``: a full-state welcome (re)starts the mirror, a resumed one
   applies its effects, anything else is observed;
3. calls ``on_message`` with an :class:`Arrival` (what a user interface shows or records);
4. queues it if it is a push and pushes are kept (``next_push``);
5. completes the waiting request.

So when a request's reply is handed over, the mirror already holds its effects, and
``on_message`` has seen every message that came before it.

When the connection ends (closed by the server, dropped, or an unreadable frame without an
``on_unreadable`` handler), ``close_reason`` says how, ``closed`` is set and every request
still waiting fails with :class:`SessionClosedError`.

Used by ``repl`` (``connect``, ``record``) and ``script_run`` (``run``).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import msgspec
from websockets.exceptions import ConnectionClosed

from tools.wsprobe.client import Message, ProbeClient, ProbeError
from tools.wsprobe.mirror import MirrorTracker

T = TypeVar("T")


class SessionClosedError(ProbeError):
    """The server closed the connection (or it dropped, or sent what cannot be read); the
    message says how."""


@dataclass(frozen=True, slots=True)
class Arrival:
    """One message as it arrived, with what the connection made of it."""

    msg: Message
    rtt_ms: float | None
    """Set exactly when ``msg`` answered a waiting request: its round trip."""
    note: Message | None
    """What the caller attached to that request (the REPL: the request as the user wrote it)."""
    stray: bool
    """A reply (it has a ``rid``) that no request was waiting for: a late one, or a wrong rid."""
    mirror: Message | None
    """The mirror's status after ``msg``, when ``msg`` says something about the version."""
    mirror_error: str | None
    """Why the mirror could not take ``msg`` (it is then out of sync)."""


@dataclass(slots=True)
class _Pending:
    future: asyncio.Future[Message]
    sent_at: float
    note: Message | None


def _rid_key(rid: object) -> bytes:
    # Keyed by its encoding, an unhashable rid (a list in a raw message) still finds its reply.
    return msgspec.json.encode(rid)


class LiveConnection:
    """One connection's reader, pending requests, mirror and (optionally) push queue."""

    def __init__(
        self,
        client: ProbeClient,
        *,
        on_message: Callable[[Arrival], None] | None = None,
        on_unreadable: Callable[[ProbeError], None] | None = None,
        keep_pushes: bool = False,
        name: str = "wsprobe reader",
    ) -> None:
        """``on_message`` hears every message (see the module docstring for when);
        ``on_unreadable`` hears a frame that does not decode, and reading goes on (without
        it, such a frame ends the connection); ``keep_pushes`` queues pushes for
        :meth:`next_push`."""
        self.client = client
        self.tracker: MirrorTracker | None = None
        self.mirror_error: str | None = None
        """Why the mirror stopped following the player; cleared by a full-state welcome."""
        self.pushes: deque[Message] = deque()
        self.closed = asyncio.Event()
        self.close_reason = "the connection is closed"
        self._on_message = on_message
        self._on_unreadable = on_unreadable
        self._keep_pushes = keep_pushes
        self._pending: dict[bytes, _Pending] = {}
        self._arrived = asyncio.Event()
        self._reader = asyncio.create_task(self._read(), name=name)

    # --- what the player looks like ------------------------------------------------------

    @property
    def player_id(self) -> object:
        return self.tracker.player_id if self.tracker is not None else None

    def state(self) -> dict[str, object] | None:
        """The mirrored state as plain values (what ``@refs`` resolve against), None before
        a welcome."""
        if self.tracker is None:
            return None
        state = msgspec.to_builtins(self.tracker.mirror.state)
        assert isinstance(state, dict)
        return state

    # --- sending ---------------------------------------------------------------------------

    def with_rid(self, msg: Mapping[str, object]) -> Message:
        """``msg`` with a fresh ``rid`` unless it has one."""
        return dict(msg) if "rid" in msg else {**msg, "rid": self.client.next_rid()}

    async def request(self, msg: Mapping[str, object], *, note: Message | None = None) -> Message:
        """Send ``msg`` (a fresh ``rid`` added unless it has one) and return its reply; bound
        the wait with ``asyncio.timeout``. ``note`` is handed to ``on_message`` with the reply.

        Raises:
            SessionClosedError: the connection ended first.
        """
        wire = self.with_rid(msg)
        return await self.exchange(wire["rid"], self.client.codec.encode(wire), note=note)

    async def exchange(self, rid: object, frame: bytes, *, note: Message | None = None) -> Message:
        """Send an encoded ``frame`` and return the reply carrying ``rid`` (or an error with
        ``rid`` null).

        Raises: see :meth:`request`.
        """
        if self.closed.is_set():
            raise SessionClosedError(self.close_reason)
        key = _rid_key(rid)
        pending = _Pending(asyncio.get_running_loop().create_future(), time.perf_counter(), note)
        self._pending[key] = pending
        try:
            await self.client.send_frame(frame)
            return await pending.future  # the reader fails it if the connection ends
        except ConnectionClosed:
            await self.closed.wait()  # the reader saw it too, and says why
            raise SessionClosedError(self.close_reason) from None
        finally:
            if self._pending.get(key) is pending:
                del self._pending[key]

    # --- waiting ---------------------------------------------------------------------------

    async def next_push(self, accept: Callable[[Message], bool]) -> Message:
        """Take the oldest queued push ``accept`` takes, waiting for one to arrive (bound the
        wait with ``asyncio.timeout``); the pushes it passes over stay queued, in order.
        Only with ``keep_pushes``.

        Raises:
            SessionClosedError: the connection ended first.
        """
        assert self._keep_pushes, "pushes are not kept on this connection"
        while True:
            for index, msg in enumerate(self.pushes):
                if accept(msg):
                    del self.pushes[index]
                    return msg
            if self.closed.is_set():
                raise SessionClosedError(self.close_reason)
            self._arrived.clear()
            await self._arrived.wait()

    async def until_closed(self, work: Awaitable[T]) -> T:
        """``work``'s result, unless the connection ends first (then ``work`` is cancelled).

        Raises:
            SessionClosedError: the connection ended first.
        """
        task = asyncio.ensure_future(work)
        closed = asyncio.ensure_future(self.closed.wait())
        try:
            await asyncio.wait({task, closed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closed.cancel()
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if task.cancelled():
            raise SessionClosedError(self.close_reason)
        return task.result()

    async def close(self) -> None:
        await self.client.close()
        await self._reader

    # --- the reader ------------------------------------------------------------------------

    async def _read(self) -> None:
        try:
            while True:
                frame = await self.client.recv_frame()
                arrived = time.perf_counter()
                try:
                    msg = self.client.codec.decode(frame)
                except ProbeError as exc:
                    if self._on_unreadable is None:
                        self.close_reason = f"the server sent what no client can read: {exc}"
                        return
                    self._on_unreadable(exc)
                    continue
                self._take(msg, arrived)
        except ConnectionClosed as exc:
            if exc.rcvd is not None:
                reason = f": {exc.rcvd.reason}" if exc.rcvd.reason else ""
                self.close_reason = (
                    f"the server closed the connection (code {exc.rcvd.code}{reason})"
                )
            else:
                self.close_reason = "the connection dropped without a close frame (1006)"
        except Exception as exc:  # a bug here must end the session loudly, not hang it
            self.close_reason = f"wsprobe's reader failed: {type(exc).__name__}: {exc}"
        finally:
            self.closed.set()
            for pending in self._pending.values():
                if not pending.future.done():
                    pending.future.set_exception(SessionClosedError(self.close_reason))
            self._pending.clear()
            self._arrived.set()

    def _take(self, msg: Message, arrived: float) -> None:
        pending: _Pending | None = None
        if "rid" in msg:
            pending = self._pending.pop(_rid_key(msg["rid"]), None)
            if pending is None and msg["rid"] is None and msg.get("t") == "error":
                # The server could not read a frame, so not its rid either: it answers the
                # one request in flight (there is at most one).
                pending = next(iter(self._pending.values()), None)
                self._pending.clear()
        status, error = self._mirror(msg)
        if self._on_message is not None:
            self._on_message(
                Arrival(
                    msg,
                    rtt_ms=(arrived - pending.sent_at) * 1000 if pending is not None else None,
                    note=pending.note if pending is not None else None,
                    stray="rid" in msg and pending is None,
                    mirror=status,
                    mirror_error=error,
                )
            )
        if "rid" not in msg and self._keep_pushes:
            self.pushes.append(msg)
        self._arrived.set()
        if pending is not None and not pending.future.done():
            pending.future.set_result(msg)

    def _mirror(self, msg: Message) -> tuple[Message | None, str | None]:
        """The mirror's status after ``msg`` and why it could not take it (either may be
        None)."""
        try:
            if msg.get("t") == "session.welcome":
                if isinstance(msg.get("state"), dict):
                    self.tracker, self.mirror_error = MirrorTracker(msg), None
                    return None, None
                return (self.tracker.resumed(msg) if self.tracker is not None else None), None
            return (self.tracker.observe(msg) if self.tracker is not None else None), None
        except ProbeError as exc:
            self.mirror_error = str(exc)
            if self.tracker is not None:
                self.tracker.in_sync = False
            return None, self.mirror_error
