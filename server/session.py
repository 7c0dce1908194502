"""The connection core: frames in, frames out, independent of the WebSocket library.

A transport adapter (``server/transport_ws.py`` for ``websockets``, ``transport_picows.py``
for picows) feeds received messages
to :meth:`Session.on_frame` one at a time, in order, and implements :class:`Transport`
(the picows adapter calls its two halves itself: :meth:`Session.admit`, then
:meth:`Session.handle_sync` for a request with a sync handler, else :meth:`Session.handle`).
Everything the server sends goes through :meth:`Session.send`: one bounded queue per
connection drained by one writer task with a write deadline. A client that stops reading
blows the write deadline (or, through pushes, fills the queue) and is aborted — the tick and
other clients never wait for it (``websockets`` alone would leave such a peer stuck in
CLOSING). Replies apply backpressure instead: while the queue is above half its bound the
adapter stops reading from that client (:meth:`Session.wait_writable`), so a client that
pipelines requests and reads its replies is slowed down, never mistaken for a dead one.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from protocol.base import Request, ServerMessage
from protocol.codec import Codec, FrameDecodeError
from protocol.errors import RateLimitedError, UnavailableError
from server.ratelimit import TokenBucket

if TYPE_CHECKING:
    from server.app import App
    from server.domains.accounts.principal import Principal
    from server.domains.accounts.rules import Permission
    from server.hub import LivePlayer

log = logging.getLogger("gearhall.session")

CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
MAX_BATCH = 64
"""Frames the writer hands to the transport at once."""


class Transport(Protocol):
    remote: str

    async def send(self, frame: bytes, text: bool) -> None:
        """Send one frame; may wait while the peer's buffers are full."""

    async def send_batch(self, frames: list[bytes], text: bool) -> None:
        """Send several frames, in order; in one write where the library allows it."""

    def try_send(self, frame: bytes, text: bool) -> bool:
        """Send one frame now, without waiting, if the transport can take it at once;
        False if it cannot (then :meth:`send`). Raises like :meth:`send` once closed."""

    async def close(self, code: int, reason: str) -> None:
        """Close with a close frame (waits for the handshake, bounded by the adapter)."""

    def abort(self) -> None:
        """Drop the connection now, without a closing handshake."""


class Session:
    """One client connection: decode, rate-limit, dispatch, reply, push."""

    def __init__(self, app: App, transport: Transport, codec: Codec) -> None:
        self.app = app
        self.transport = transport
        self.codec = codec
        self.player: LivePlayer | None = None
        # Who this connection acts for (set by session.hello) and what it may do now: the
        # dispatcher checks ``permissions`` per message; the auth bus updates or empties
        # it when roles change or the login session is revoked.
        self.principal: Principal | None = None
        self.permissions: frozenset[Permission] = frozenset()
        # The client's address (the transport may replace it with a trusted proxy's
        # X-Forwarded-For) and User-Agent, for throttles, login sessions and the audit log.
        self.client_ip = transport.remote.rsplit(":", 1)[0].strip("[]")
        self.user_agent = ""
        settings = app.settings
        self._bucket = TokenBucket(
            settings.rate_limit_per_s, settings.rate_limit_burst, time.monotonic()
        )
        self._queue: collections.deque[bytes] = collections.deque()
        self._queue_max = settings.outbound_queue_max
        self._write_timeout = settings.write_timeout_s
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._high_water = max(1, self._queue_max // 2)
        self._writable = asyncio.Event()
        self._writable.set()
        self._text = not codec.binary
        # monotonic time the current write began; 0.0 while no write is in progress
        self.send_started = 0.0
        self._writer: asyncio.Task[None] | None = None
        self._hello_timer: asyncio.TimerHandle | None = None
        self._closing = False
        self.aborted = False
        self._handling = 0  # requests in progress (one at a time, unless a test pipelines)
        self._close_after: tuple[int, str] | None = None

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        self._writer = asyncio.create_task(
            self._write_loop(), name=f"writer {self.transport.remote}"
        )
        self._hello_timer = asyncio.get_running_loop().call_later(
            self.app.settings.hello_timeout_s, self._hello_overdue
        )

    def _hello_overdue(self) -> None:
        if self.principal is None and not self._closing:
            log.info("closing %s: no session.hello in time", self.transport.remote)
            asyncio.get_running_loop().create_task(
                self.close(CLOSE_POLICY, "no session.hello in time")
            )

    async def finish(self) -> None:
        """The transport is gone: stop the writer and leave the player."""
        self._closing = True
        if self._hello_timer is not None:
            self._hello_timer.cancel()
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
        if self.player is not None:
            self.app.hub.detach(self.player, self)
            self.player = None
        self.app.auth_bus.forget(self)

    async def close(self, code: int, reason: str) -> None:
        """Send what is queued (bounded by the write deadline), then a close frame."""
        self._closing = True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._write_timeout):
                await self._drained.wait()
        if not self.aborted:
            await self.transport.close(code, reason)

    def authenticate(self, principal: Principal) -> None:
        """From now on this connection acts for ``principal``."""
        self.principal = principal
        self.permissions = principal.permissions
        self.app.auth_bus.track(self)
        if self._hello_timer is not None:
            self._hello_timer.cancel()

    # --- inbound ----------------------------------------------------------------------------

    async def on_frame(self, frame: bytes | str) -> None:
        """Handle one received frame; replies are queued, never raised."""
        msg = self.admit(frame)
        if msg is not None:
            await self.handle(msg)

    def admit(self, frame: bytes | str) -> Request | None:
        """The first half of :meth:`on_frame`, which never waits: decode, rate-limit, and
        refuse while draining. The request to handle, or None if it was answered already
        (an error reply queued) or dropped."""
        app = self.app
        now = time.monotonic()
        driver = app.driver
        if now >= driver.due:  # the loop's timer runs late under load (sim/driver.py)
            driver.step()
        try:
            msg = self.codec.decode(frame)
        except FrameDecodeError as exc:
            self._refuse_if_limited(exc.rid, now)
            self.send(app.dispatcher.error_reply(exc.rid, exc))
            return None
        if self._refuse_if_limited(msg.rid, now):
            return None
        if app.draining:
            self.send(
                app.dispatcher.error_reply(msg.rid, UnavailableError("server is shutting down"))
            )
            return None
        return msg

    async def handle(self, msg: Request) -> None:
        """The second half of :meth:`on_frame`: dispatch and reply."""
        app = self.app
        app.request_started()
        self._handling += 1
        try:
            reply = await app.dispatcher.dispatch(self, msg)
        finally:
            app.request_finished()
            self._handling -= 1
        waiting = self._reply_now(reply)
        if waiting is not None:
            await self._reply_wait(waiting)
        close = self._close_due()
        if close is not None:
            await self.close(*close)

    def handle_sync(self, msg: Request, done: Callable[[], None]) -> bool:
        """:meth:`handle` without a coroutine, for a request with a sync handler
        (``dispatcher.is_sync(msg)``; the hot path of the picows adapter). True if the
        reply went out before this returns; False if ``done()`` will be called once it has
        (after the journal commit its effects wait for). Never raises.

        A reply the transport cannot take at once is queued for the writer instead of
        awaited: the adapter checks :attr:`writable` before it admits the next request,
        which is the same backpressure.
        """
        self.app.request_started()
        self._handling += 1
        reply = self.app.dispatcher.dispatch_sync(
            self, msg, functools.partial(self._replied_later, done)
        )
        if reply is None:
            return False
        self._reply_sync(reply)
        return True

    def _replied_later(self, done: Callable[[], None], reply: ServerMessage) -> None:
        # Called by the journal writer: nothing may escape into it.
        try:
            self._reply_sync(reply)
        except Exception:
            log.exception("reply to %s failed", self.transport.remote)
        done()

    def _reply_sync(self, reply: ServerMessage) -> None:
        self.app.request_finished()
        self._handling -= 1
        frame = self._reply_now(reply)
        if frame is not None:
            self.send_frame(frame)  # the writer sends it, still in order: nothing was queued
        close = self._close_due()
        if close is not None:
            asyncio.get_running_loop().create_task(self.close(*close))

    def _close_due(self) -> tuple[int, str] | None:
        """The close :meth:`revoke` deferred, once no request is in progress (taken)."""
        close = self._close_after
        if close is None or self._handling:
            return None
        self._close_after = None
        return close

    def revoke(self, code: int, reason: str) -> None:
        """The principal lost its right to this connection (logout, ban, revoked key): no
        further message is allowed, and the socket is closed — after the reply to the
        request in progress, if any (``auth.logout`` is answered, then closed)."""
        self.permissions = frozenset()
        if self._handling:
            self._close_after = (code, reason)
        else:
            asyncio.get_running_loop().create_task(self.close(code, reason))

    def _refuse_if_limited(self, rid: int | None, now: float) -> bool:
        retry_after_ms = self._bucket.take(now)
        if not retry_after_ms:
            return False
        self.app.metrics.rate_limited.inc()
        if self._bucket.refused_in_row > self._bucket.burst:
            # Still flooding after a whole burst of refusals: abuse, not a burst.
            log.warning("closing %s: rate limit abuse", self.transport.remote)
            self._closing = True
            asyncio.get_running_loop().create_task(
                self.transport.close(CLOSE_POLICY, "rate limit exceeded")
            )
            return True
        self.send(self.app.dispatcher.error_reply(rid, RateLimitedError(retry_after_ms)))
        return True

    @property
    def writable(self) -> bool:
        """The outbound queue is below its high-water mark (else :meth:`wait_writable`)."""
        return len(self._queue) < self._high_water

    async def wait_writable(self) -> None:
        """Return when the outbound queue is below its high-water mark. The adapter awaits
        this before reading the next frame: reading is how a client adds to the queue."""
        if len(self._queue) >= self._high_water:
            self._writable.clear()
            await self._writable.wait()

    # --- outbound ---------------------------------------------------------------------------

    def _reply_now(self, msg: ServerMessage) -> bytes | None:
        """Send a reply from the request path, without awaiting where possible.

        When nothing is queued or being written, the frame is written here directly if the
        transport takes it at once: no hop through the writer task. Otherwise it joins the
        queue, which keeps replies and pushes in order. Returns the frame if the transport
        could not take it: :meth:`handle` then awaits the write (:meth:`_reply_wait`), so
        the client's own request path is what waits if its socket is full (natural
        backpressure); :meth:`handle_sync` queues it."""
        if self.aborted:
            return None
        self.app.metrics.sent(type(msg))
        frame = self.codec.encode(msg)
        if self._queue or self.send_started:
            self.send_frame(frame)
            return None
        try:
            if self.transport.try_send(frame, self._text):
                return None
        except Exception:  # transport closed under us: the reader side will finish
            return None
        return frame

    async def _reply_wait(self, frame: bytes) -> None:
        await self._write(frame)
        if self._queue:
            self._wake.set()

    def send(self, msg: ServerMessage) -> None:
        """Queue a message (pushes, errors outside a request). A full queue means the client
        is not reading: abort it."""
        if self.aborted:
            return
        self.app.metrics.sent(type(msg))
        self.send_frame(self.codec.encode(msg))

    def send_frame(self, frame: bytes) -> None:
        if self.aborted:
            return
        if len(self._queue) >= self._queue_max:
            self.abort_slow("outbound queue full")
            return
        self._queue.append(frame)
        self._drained.clear()
        self._wake.set()

    def abort_slow(self, why: str) -> None:
        if self.aborted:
            return
        self.aborted = True
        self._queue.clear()
        self._drained.set()
        self._writable.set()  # release a reader paused on backpressure; recv() then fails
        self.app.metrics.slow_consumer_aborts.inc()
        log.warning("aborting slow consumer %s: %s", self.transport.remote, why)
        self.transport.abort()

    def check_write_deadline(self, now: float) -> None:
        """Called by the app's watchdog: abort if one write has been blocked too long.

        A watchdog instead of a timeout around every send: the deadline only matters for
        writes that block, and arming a timer per frame cost more than the rest of the
        write path.
        """
        started = self.send_started
        if started and now - started > self._write_timeout:
            self.abort_slow(f"write blocked for more than {self._write_timeout}s")

    async def _write(self, frame: bytes) -> bool:
        """Write one frame, marking the write for the deadline watchdog. False if the
        transport is gone."""
        self.send_started = time.monotonic()
        try:
            await self.transport.send(frame, self._text)
        except Exception:  # transport closed under us: the reader side will finish
            return False
        finally:
            self.send_started = 0.0
        return True

    async def _write_batch(self, frames: list[bytes]) -> bool:
        """:meth:`_write` for several frames at once."""
        self.send_started = time.monotonic()
        try:
            await self.transport.send_batch(frames, self._text)
        except Exception:
            return False
        finally:
            self.send_started = 0.0
        return True

    async def _write_loop(self) -> None:
        queue = self._queue
        while True:
            if not queue or self.send_started:
                if not queue:
                    self._drained.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            if len(queue) == 1:
                frame = queue.popleft()
                if len(queue) < self._high_water:
                    self._writable.set()
                if not await self._write(frame):
                    return
                continue
            # Several frames ready (a tick's pushes, pipelined replies): one write for up
            # to MAX_BATCH of them.
            batch = [queue.popleft() for _ in range(min(len(queue), MAX_BATCH))]
            if len(queue) < self._high_water:
                self._writable.set()
            if not await self._write_batch(batch):
                return
