"""The one dispatch point: message type -> registered handler, exception -> error reply.

Handlers are registered explicitly (each domain exports ``HANDLERS``), each with the
permission it needs (:func:`requires`) or marked :func:`public` (usable before
``session.hello``: login and sign-up). A registration without either does not exist, so
the default is deny; duplicates and client messages without a handler are refused at
start-up. The permission is checked on every message against the session's current
permissions (which change while it is open: a role granted or revoked applies to the next
message). This module is the only place
that turns an exception into an ``ErrorReply``: by the ``code`` its class declares
(``protocol.errors``), or ``internal`` for anything unexpected, which is logged with its
traceback and never described to the client.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from protocol.base import Request, ServerMessage, tag_of
from protocol.errors import ErrorCode, ForbiddenError, GearhallError, UnauthenticatedError
from protocol.messages import CLIENT_MESSAGES, ErrorReply
from server.domains.accounts.rules import Permission
from server.metrics import Metrics

if TYPE_CHECKING:
    from server.session import Session

log = logging.getLogger("gearhall.dispatch")

# A handler takes the session and one request type; Callable[..., ...] because each handler
# narrows the request parameter to its own type (contravariance forbids a common signature).
Handler = Callable[..., Awaitable[ServerMessage]]
SyncHandler = Callable[..., ServerMessage | None]
"""``handler(session, msg, done)``: returns the reply, or None and calls ``done(reply)``
exactly once later (when the effects it journaled are durable; possibly before it returns,
in write-behind mode). For the hot path: no coroutine, no future, no task hop."""
Done = Callable[[ServerMessage], None]


@dataclass(frozen=True, slots=True)
class Registration:
    handler: Handler | None
    permission: Permission | None
    """None: public, allowed before the session (sign-up, login, hello)."""
    sync: SyncHandler | None = None
    """Instead of ``handler``: see :data:`SyncHandler`."""


def requires(permission: Permission, handler: Handler) -> Registration:
    """Register ``handler`` for sessions holding ``permission``."""
    return Registration(handler, permission)


def requires_sync(permission: Permission, handler: SyncHandler) -> Registration:
    """:func:`requires` for a :data:`SyncHandler`."""
    return Registration(None, permission, handler)


def public(handler: Handler) -> Registration:
    """Register ``handler`` for anyone, signed in or not. Such a handler authenticates
    whatever it needs to itself."""
    return Registration(handler, None)


HandlerMap = Mapping[type[Request], Registration]


def merge_handlers(*maps: HandlerMap) -> dict[type[Request], Registration]:
    """Merge domain handler maps.

    Raises:
        ValueError: a message type is registered twice, or a client message has no handler.
    """
    merged: dict[type[Request], Registration] = {}
    for handlers in maps:
        for msg_type, handler in handlers.items():
            if msg_type in merged:
                raise ValueError(f"{msg_type.__name__} has two handlers")
            merged[msg_type] = handler
    missing = [m.__name__ for m in CLIENT_MESSAGES if m not in merged]
    if missing:
        raise ValueError(f"client messages without a handler: {', '.join(missing)}")
    return merged


class _Route:
    __slots__ = ("errors", "handler", "latency", "permission", "received", "sync", "tag")

    def __init__(self, tag: str, registration: Registration, metrics: Metrics) -> None:
        if (registration.handler is None) == (registration.sync is None):
            raise ValueError(f"{tag}: register either a handler or a sync handler")
        self.tag = tag
        self.handler = registration.handler
        self.sync = registration.sync
        self.permission = registration.permission
        self.received = metrics.messages_in.labels(tag)
        self.latency = metrics.request_latency.labels(tag)


class Dispatcher:
    def __init__(self, handlers: HandlerMap, metrics: Metrics) -> None:
        self._metrics = metrics
        self._routes = {t: _Route(tag_of(t), h, metrics) for t, h in handlers.items()}
        self._error_counters = {code: metrics.errors.labels(code.value) for code in ErrorCode}

    async def dispatch(self, session: Session, msg: Request) -> ServerMessage:
        """Run the handler for ``msg``; never raises."""
        route = self._routes[type(msg)]
        route.received.inc()
        started = time.perf_counter()
        try:
            self._check(route, session)
            if route.handler is not None:
                reply = await route.handler(session, msg)
            else:
                reply = await self._await_sync(route, session, msg)
        except Exception as exc:  # the one place exceptions become replies
            reply = self.error_reply(msg.rid, exc)
        route.latency.observe(time.perf_counter() - started)
        return reply

    def is_sync(self, msg: Request) -> bool:
        """``msg`` has a :data:`SyncHandler`: :meth:`dispatch_sync` can run it."""
        return self._routes[type(msg)].sync is not None

    def dispatch_sync(self, session: Session, msg: Request, done: Done) -> ServerMessage | None:
        """:meth:`dispatch` for a message with a sync handler (:meth:`is_sync`), without a
        coroutine: the reply, or None and ``done(reply)`` exactly once later. Never raises
        (nor does ``done``' caller: that is the handler's journal callback)."""
        route = self._routes[type(msg)]
        route.received.inc()
        started = time.perf_counter()
        sync = route.sync
        assert sync is not None
        try:
            self._check(route, session)
            reply = sync(session, msg, functools.partial(self._done, route, started, done))
        except Exception as exc:
            reply = self.error_reply(msg.rid, exc)
        if reply is not None:
            route.latency.observe(time.perf_counter() - started)
        return reply

    @staticmethod
    def _done(route: _Route, started: float, done: Done, reply: ServerMessage) -> None:
        route.latency.observe(time.perf_counter() - started)
        done(reply)

    @staticmethod
    def _check(route: _Route, session: Session) -> None:
        needed = route.permission
        if needed is not None and needed not in session.permissions:
            if session.principal is None:
                raise UnauthenticatedError("send session.hello first")
            raise ForbiddenError(f"{route.tag} needs the {needed} permission")

    @staticmethod
    async def _await_sync(route: _Route, session: Session, msg: Request) -> ServerMessage:
        """A sync handler on the coroutine path (the ``websockets`` adapter)."""
        assert route.sync is not None
        future: asyncio.Future[ServerMessage] = asyncio.get_running_loop().create_future()

        def done(reply: ServerMessage) -> None:
            if not future.done():  # cancelled: the connection went away meanwhile
                future.set_result(reply)

        reply = route.sync(session, msg, done)
        return reply if reply is not None else await future

    def error_reply(self, rid: int | None, exc: BaseException) -> ErrorReply:
        """The error reply for ``exc``, counted by code."""
        if isinstance(exc, GearhallError):
            reply = ErrorReply(rid=rid, code=exc.code, message=exc.message, details=exc.details)
        else:
            log.error("unhandled error (rid=%s)", rid, exc_info=exc)
            reply = ErrorReply(rid=rid, code=ErrorCode.INTERNAL, message="internal error")
        self._error_counters[reply.code].inc()
        return reply
