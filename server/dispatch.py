"""The one dispatch point: message type -> registered handler, exception -> error reply.

Handlers are registered explicitly (each domain exports ``HANDLERS``); duplicates and
client messages without a handler are refused at start-up. This module is the only place
that turns an exception into an ``ErrorReply``: by the ``code`` its class declares
(``protocol.errors``), or ``internal`` for anything unexpected, which is logged with its
traceback and never described to the client.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING

from protocol.errors import ErrorCode, GearhallError, UnauthenticatedError
from protocol.messages import (
    CLIENT_MESSAGES,
    ErrorReply,
    Request,
    ServerMessage,
    SessionHello,
    tag_of,
)
from server.metrics import Metrics

if TYPE_CHECKING:
    from server.session import Session

log = logging.getLogger("gearhall.dispatch")

# A handler takes the session and one request type; Callable[..., ...] because each handler
# narrows the request parameter to its own type (contravariance forbids a common signature).
Handler = Callable[..., Awaitable[ServerMessage]]
HandlerMap = Mapping[type[Request], Handler]

# Messages a connection may send before it has a session.
PRE_SESSION: frozenset[type[Request]] = frozenset({SessionHello})


def merge_handlers(*maps: HandlerMap) -> dict[type[Request], Handler]:
    """Merge domain handler maps.

    Raises:
        ValueError: a message type is registered twice, or a client message has no handler.
    """
    merged: dict[type[Request], Handler] = {}
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
    __slots__ = ("errors", "handler", "latency", "received", "tag")

    def __init__(self, tag: str, handler: Handler, metrics: Metrics) -> None:
        self.tag = tag
        self.handler = handler
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
            if session.player is None and type(msg) not in PRE_SESSION:
                raise UnauthenticatedError("send session.hello first")
            reply = await route.handler(session, msg)
        except Exception as exc:  # the one place exceptions become replies
            reply = self.error_reply(msg.rid, exc)
        route.latency.observe(time.perf_counter() - started)
        return reply

    def error_reply(self, rid: int | None, exc: BaseException) -> ErrorReply:
        """The error reply for ``exc``, counted by code."""
        if isinstance(exc, GearhallError):
            reply = ErrorReply(rid=rid, code=exc.code, message=exc.message, details=exc.details)
        else:
            log.error("unhandled error (rid=%s)", rid, exc_info=exc)
            reply = ErrorReply(rid=rid, code=ErrorCode.INTERNAL, message="internal error")
        self._error_counters[reply.code].inc()
        return reply
