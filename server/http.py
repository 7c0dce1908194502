"""Plain HTTP on the WebSocket port: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import TYPE_CHECKING

import asyncpg
from prometheus_client import CONTENT_TYPE_LATEST

from persistence.migrate import is_current

if TYPE_CHECKING:
    from server.app import App

HttpResult = tuple[HTTPStatus, str, bytes]
_TEXT = "text/plain; charset=utf-8"


async def healthz(app: App) -> HttpResult:
    """The process is up and its event loop answers."""
    return HTTPStatus.OK, _TEXT, b"ok\n"


async def readyz(app: App) -> HttpResult:
    """Ready for players: not draining, database reachable, migrations current, journal
    committing."""
    if app.draining:
        return HTTPStatus.SERVICE_UNAVAILABLE, _TEXT, b"draining\n"
    try:
        async with asyncio.timeout(2.0), app.pool.acquire() as conn:
            current = await is_current(conn)
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        return HTTPStatus.SERVICE_UNAVAILABLE, _TEXT, f"database: {type(exc).__name__}\n".encode()
    if not current:
        return HTTPStatus.SERVICE_UNAVAILABLE, _TEXT, b"migrations pending\n"
    if not app.journal.healthy:
        return HTTPStatus.SERVICE_UNAVAILABLE, _TEXT, b"journal retrying\n"
    return HTTPStatus.OK, _TEXT, b"ready\n"


async def metrics(app: App) -> HttpResult:
    app.metrics.db_pool_in_use.set(app.pool.get_size() - app.pool.get_idle_size())
    return HTTPStatus.OK, CONTENT_TYPE_LATEST, app.metrics.render()


ROUTES: dict[str, Callable[[App], Awaitable[HttpResult]]] = {
    "/healthz": healthz,
    "/readyz": readyz,
    "/metrics": metrics,
}
