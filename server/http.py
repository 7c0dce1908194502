"""Plain HTTP on the WebSocket port: liveness, readiness and Prometheus metrics.

The routes are synchronous, so every transport can answer them inside its handshake
callback (picows' is synchronous). The one check that needs I/O, the database round trip of
``/readyz``, runs in :class:`DatabaseProbe`'s background task every second, and the route
reads its last result: ``/readyz`` is at most one probe period behind the database, and
draining and the journal's health are read live.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING

import asyncpg
from prometheus_client import CONTENT_TYPE_LATEST

from persistence.migrate import is_current

if TYPE_CHECKING:
    from server.app import App

HttpResult = tuple[HTTPStatus, str, bytes]
_TEXT = "text/plain; charset=utf-8"


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """A request with a body (``POST /auth/login``...), read whole by the front door."""

    method: str
    path: str  # without the query string
    headers: Mapping[str, str]  # names lower-cased; repeated headers joined with ", "
    body: bytes
    remote_ip: str  # the client's address (after trusted proxies)


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: HTTPStatus
    body: bytes
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


PostHandler = Callable[["App", HttpRequest], Awaitable[HttpResponse]]


class DatabaseProbe:
    """The database half of readiness: reachable within 2 s and migrations current,
    checked every ``period_s`` by a background task; :attr:`problem` is None when fine."""

    def __init__(self, app: App, period_s: float = 1.0) -> None:
        self._app = app
        self._period = period_s
        self.problem: str | None = "not checked yet"
        self._task: asyncio.Task[None] | None = None

    async def check(self) -> None:
        try:
            async with asyncio.timeout(2.0), self._app.pool.acquire() as conn:
                current = await is_current(conn)
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            self.problem = f"database: {type(exc).__name__}"
            return
        self.problem = None if current else "migrations pending"

    async def start(self) -> None:
        """Check once (so a server is ready as soon as it serves), then keep checking."""
        await self.check()
        self._task = asyncio.create_task(self._loop(), name="readiness-probe")

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._period)
            await self.check()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


def healthz(app: App) -> HttpResult:
    """The process is up and its event loop answers."""
    return HTTPStatus.OK, _TEXT, b"ok\n"


def readyz(app: App) -> HttpResult:
    """Ready for players: not draining, database reachable, migrations current, journal
    committing."""
    if app.draining:
        return HTTPStatus.SERVICE_UNAVAILABLE, _TEXT, b"draining\n"
    problem = app.db_probe.problem
    if problem is not None:
        return HTTPStatus.SERVICE_UNAVAILABLE, _TEXT, f"{problem}\n".encode()
    if not app.journal.healthy:
        return HTTPStatus.SERVICE_UNAVAILABLE, _TEXT, b"journal retrying\n"
    return HTTPStatus.OK, _TEXT, b"ready\n"


def metrics(app: App) -> HttpResult:
    app.metrics.db_pool_in_use.set(app.pool.get_size() - app.pool.get_idle_size())
    return HTTPStatus.OK, CONTENT_TYPE_LATEST, app.metrics.render()


ROUTES: dict[str, Callable[[App], HttpResult]] = {
    "/healthz": healthz,
    "/readyz": readyz,
    "/metrics": metrics,
}
