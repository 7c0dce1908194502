"""App wiring: database, journal, hub, tick driver, dispatch and transport, and the order
they start and stop in (graceful shutdown is DESIGN.md §4)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import socket
import ssl
import time
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Protocol

import asyncpg

from persistence.catalog import active_or_store, read_catalog_file, store_catalog
from persistence.embedded import EmbeddedPostgres, start_embedded
from persistence.journal import Journal, JournalMetrics
from persistence.migrate import migrate
from server.abuse import IpLimits
from server.config import Settings
from server.dispatch import Dispatcher, merge_handlers
from server.domains.accounts.bus import AuthBus
from server.domains.accounts.handlers import HANDLERS as ACCOUNTS
from server.domains.accounts.http import ROUTES as ACCOUNT_ROUTES
from server.domains.accounts.oidc import HANDLERS as OIDC
from server.domains.accounts.oidc import HTTP_ROUTES as OIDC_ROUTES
from server.domains.accounts.service import Accounts
from server.domains.inventory.handlers import HANDLERS as INVENTORY
from server.domains.session.handlers import HANDLERS as SESSION
from server.http import DatabaseProbe, PostHandler
from server.hub import PlayerHub
from server.metrics import GcPauses, Metrics
from server.session import CLOSE_GOING_AWAY, Session
from server.transport_ws import server_ssl_context
from sim.driver import TickDriver
from sim.templates import DEFAULT_TEMPLATES, Catalog

log = logging.getLogger("gearhall")


class Listener(Protocol):
    """The listening socket of a transport adapter."""

    @property
    def port(self) -> int: ...

    def stop_accepting(self) -> None:
        """Refuse new connections; open ones go on."""

    async def close(self) -> None:
        """Close the socket (and whatever connections are left) and wait until done."""


async def start_listener(app: App) -> Listener:
    """The transport named by ``settings.transport``, listening."""
    if app.settings.transport == "picows":
        from server.transport_picows import start_server as start_picows

        return await start_picows(app)
    from server.transport_ws import start_server as start_websockets

    return await start_websockets(app)


def server_version() -> str:
    try:
        return package_version("gearhall")
    except PackageNotFoundError:  # running from a source tree without an install
        return "0.0.0"


class App:
    """One Gearhall node. ``await start()``, serve, ``await stop()``."""

    catalog: Catalog  # set by __init__ when given, else by start()

    def __init__(self, settings: Settings, catalog: Catalog | None = None) -> None:
        self.settings = settings
        self.version = server_version()
        # A catalog given here (tests) is used as is; otherwise start() reads the active one
        # from Postgres (see _load_catalog).
        self._given_catalog = catalog
        if catalog is not None:
            self.catalog = catalog
        self.metrics = Metrics()
        self._gc_pauses = GcPauses(self.metrics.gc_pause)
        self.sessions: set[Session] = set()
        self.draining = False
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.embedded: EmbeddedPostgres | None = None
        self.dsn = ""
        self._server: Listener | None = None
        self.tls: ssl.SSLContext | None = None
        self._driver_task: asyncio.Task[None] | None = None
        # POST endpoints on the game port (server/front.py serves them), by path
        self.post_routes: dict[str, PostHandler] = {**ACCOUNT_ROUTES, **OIDC_ROUTES}
        self.ip_limits = IpLimits(settings)  # abuse limits before the upgrade, per client IP
        self.accounts = Accounts(self)
        self.auth_bus = AuthBus(self)

    # --- start ------------------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        # Read the certificate first: a bad path fails before anything is started.
        if s.tls_cert_file is not None and s.tls_key_file is not None:
            self.tls = server_ssl_context(s.tls_cert_file, s.tls_key_file)
        if s.database_url:
            self.dsn = s.database_url
        else:
            self.embedded = await asyncio.to_thread(start_embedded, Path(s.data_dir))
            self.dsn = self.embedded.dsn()
        conn = await asyncpg.connect(self.dsn)
        try:
            applied = await migrate(conn)
            if applied:
                log.info("applied migrations: %s", ", ".join(applied))
            self.catalog = await self._load_catalog(conn)
        finally:
            await conn.close()
        self.pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=s.db_pool_size)
        m = self.metrics
        batch_rows, commit_latency = m.journal_batch_rows, m.journal_commit_latency

        def on_batch(rows: int, seconds: float) -> None:
            batch_rows.observe(rows)
            commit_latency.observe(seconds)

        self.journal = Journal(
            lambda: asyncpg.connect(self.dsn),
            mode=s.durability,
            metrics=JournalMetrics(on_batch=on_batch, on_retry=lambda exc: m.journal_retries.inc()),
        )
        await self.journal.start()
        self.driver = TickDriver(
            s.tick_hz,
            self._on_tick,
            on_overrun=m.tick_overruns.inc,
            on_late=m.tick_lateness.observe,
        )
        self.hub = PlayerHub(
            settings=s,
            catalog=self.catalog,
            journal=self.journal,
            pool=self.pool,
            metrics=m,
            tick=self.tick,
            tick_ms=self.driver.tick_ms,
        )
        self.hub.start()
        self.dispatcher = Dispatcher(merge_handlers(SESSION, INVENTORY, ACCOUNTS, OIDC), m)
        await self.auth_bus.start()
        self.db_probe = DatabaseProbe(self)
        await self.db_probe.start()
        self._server = await start_listener(self)
        self._driver_task = asyncio.create_task(self.driver.run(), name="tick-driver")
        self._watchdog_task = asyncio.create_task(self._write_watchdog(), name="write-watchdog")
        # Everything allocated so far lives for the whole run: move it out of the collector's
        # sight, and collect the young generation less often (see Settings.gc_gen0_threshold).
        gc.collect()
        gc.freeze()
        _, gen1, gen2 = gc.get_threshold()
        gc.set_threshold(s.gc_gen0_threshold, gen1, gen2)
        gc.callbacks.append(self._gc_pauses)
        mode = "" if s.durability == "durable" else " [WRITE-BEHIND: acks are NOT durable]"
        log.info(
            "gearhall %s listening on %s://%s:%d (%s, tick %d Hz, database %s)%s",
            self.version,
            "ws" if s.tls_cert_file is None else "wss",
            s.host,
            self.port,
            s.transport,
            s.tick_hz,
            "embedded" if self.embedded else "external",
            mode,
        )
        if s.echo_endpoint:
            log.warning("TEST ONLY: echo endpoint enabled at /echo (echo_endpoint)")
        if s.dev_auth:
            log.warning(
                "DEVELOPMENT ONLY: dev auth is on; anyone can connect as any player with "
                "dev:<name> tokens (GEARHALL_DEV_AUTH)"
            )

    async def _load_catalog(self, conn: asyncpg.Connection) -> Catalog:
        """The catalog this node runs: the one given to ``App``; else the ``templates``
        file, stored and activated for every node; else the active one in Postgres; else
        (first start) the shipped file, stored and activated.

        Raises:
            TemplateError: the file is unreadable or invalid, or the stored one no longer
                parses.
        """
        if self._given_catalog is not None:
            catalog = self._given_catalog
            log.info(
                "catalog %s (%d templates, given by the caller)",
                catalog.digest[:12],
                len(catalog.templates),
            )
            return catalog
        loaded_by = f"gearhall {self.version} serve on {socket.gethostname()}"
        if self.settings.templates:
            path = Path(self.settings.templates)
            stored = await store_catalog(conn, read_catalog_file(path), str(path), loaded_by)
            how = f"from {path}, {'stored as new version' if stored.created else 'already stored'}"
        else:
            text = read_catalog_file(DEFAULT_TEMPLATES)
            stored = await active_or_store(conn, text, str(DEFAULT_TEMPLATES), loaded_by)
            how = "shipped default, stored" if stored.created else "active in the database"
        log.info(
            "catalog #%d %s (%d templates, %s)",
            stored.catalog_id,
            stored.catalog.digest[:12],
            len(stored.catalog.templates),
            how,
        )
        return stored.catalog

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.port

    async def _write_watchdog(self) -> None:
        """Abort sessions whose current write has been blocked past the write deadline."""
        period = min(1.0, self.settings.write_timeout_s / 4)
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for session in list(self.sessions):
                session.check_write_deadline(now)

    def request_started(self) -> None:
        self.in_flight += 1
        self._idle.clear()

    def request_finished(self) -> None:
        self.in_flight -= 1
        if not self.in_flight:
            self._idle.set()

    def tick(self) -> int:
        return self.driver.now_tick()

    def _on_tick(self, tick: int) -> None:
        started = self.metrics.tick_duration.time()
        with started:
            try:
                self.hub.on_tick(tick)
            except Exception:  # a bug: keep ticking, and never fail the request it ran in
                log.exception("tick %d failed", tick)

    # --- stop -------------------------------------------------------------------------------

    async def stop(self) -> None:
        """Graceful shutdown: stop accepting, finish in-flight requests, flush the journal,
        snapshot everyone, close sockets with 1001."""
        if self.draining:
            return
        self.draining = True
        timeout = self.settings.shutdown_timeout_s
        log.info("shutting down: %d connections", len(self.sessions))
        if self._server is not None:
            self._server.stop_accepting()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        await self.journal.flush()
        self.hub.on_tick(self.driver.now_tick())  # push the last deltas
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self.hub.checkpoint_all()
        if self.sessions:
            await asyncio.gather(
                *(s.close(CLOSE_GOING_AWAY, "server shutting down") for s in list(self.sessions)),
                return_exceptions=True,
            )
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._server.close()
        self.driver.stop()
        if self._driver_task is not None:
            await self._driver_task
        self._watchdog_task.cancel()
        await asyncio.gather(self._watchdog_task, return_exceptions=True)
        await self.db_probe.stop()
        await self.auth_bus.stop()
        self.accounts.close()
        await self.journal.close()
        await self.hub.stop()
        await self.pool.close()
        if self.embedded is not None:
            await asyncio.to_thread(self.embedded.stop)
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self._gc_pauses)
        log.info("shutdown complete")
