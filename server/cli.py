"""``gearhall``: serve, migrate, config show, protocol schema, templates check/load."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg

from persistence.embedded import start_embedded
from persistence.migrate import MigrationError, migrate, status
from server.config import ConfigError, Settings, load_settings, render
from server.logs import configure

log = logging.getLogger("gearhall")


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {
        "host": getattr(args, "host", None),
        "port": getattr(args, "port", None),
        "data_dir": getattr(args, "data_dir", None),
        "tick_hz": getattr(args, "tick_hz", None),
        "log_level": getattr(args, "log_level", None),
        "log_format": getattr(args, "log_format", None),
        "durability": getattr(args, "durability", None),
        "dev_auth": True if getattr(args, "dev_auth", False) else None,
        "transport": getattr(args, "transport", None),
        "echo_endpoint": True if getattr(args, "echo_endpoint", False) else None,
        "tls_cert_file": getattr(args, "tls_cert_file", None),
        "tls_key_file": getattr(args, "tls_key_file", None),
    }
    return load_settings(overrides, config_file=getattr(args, "config", None))


async def _serve(settings: Settings) -> int:
    from server.app import App

    app = App(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await app.start()
    await stop.wait()
    await app.stop()
    return 0


@contextlib.asynccontextmanager
async def _database(settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    """A connection to ``database_url``, else to the embedded Postgres under ``data_dir``."""
    dsn = settings.database_url
    if not dsn:
        embedded = await asyncio.to_thread(start_embedded, Path(settings.data_dir))
        dsn = embedded.dsn()
    conn = await asyncpg.connect(dsn)
    try:
        yield conn
    finally:
        await conn.close()


async def _migrate(settings: Settings, show_status: bool) -> int:
    async with _database(settings) as conn:
        if show_status:
            for st in await status(conn):
                print(f"{st.state:8} {st.name}")
            return 0
        applied = await migrate(conn)
        print("\n".join(f"applied  {n}" for n in applied) or "up to date")
        return 0


async def _templates_load(settings: Settings, path: Path) -> int:
    """Validate ``path`` first (no database needed to refuse a bad file), then migrate,
    store and activate it.

    Raises:
        TemplateError: the file is unreadable or invalid; nothing was written.
        MigrationError: see ``persistence.migrate.migrate``.
    """
    from persistence.catalog import read_catalog_file, store_catalog
    from sim.templates import parse_templates

    text = read_catalog_file(path)
    parse_templates(text, str(path))
    async with _database(settings) as conn:
        await migrate(conn)
        loaded_by = f"gearhall templates load on {socket.gethostname()}"
        stored = await store_catalog(conn, text, str(path), loaded_by)
    state = "new version" if stored.created else "already stored, activated again"
    print(
        f"catalog #{stored.catalog_id} {stored.catalog.digest[:12]}: "
        f"{len(stored.catalog.templates)} templates from {path} ({state}); "
        "servers use it from their next start"
    )
    return 0


def _run(coro: object) -> int:
    import uvloop

    result: int = uvloop.run(coro)  # type: ignore[arg-type]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gearhall", description=__doc__)
    parser.add_argument("--config", type=Path, help="TOML configuration file")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the server")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--data-dir", help="embedded Postgres lives under DATA_DIR/pg")
    serve.add_argument("--tick-hz", type=int)
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    serve.add_argument("--log-format", choices=["console", "json"])
    serve.add_argument(
        "--durability",
        choices=["durable", "write-behind"],
        help="write-behind acknowledges before commit: benchmarking only",
    )
    serve.add_argument("--dev-auth", action="store_true", help="accept dev:<name> tokens")
    serve.add_argument(
        "--tls-cert", dest="tls_cert_file", help="PEM certificate chain: serve wss://"
    )
    serve.add_argument("--transport", choices=["websockets", "picows"],
                       help="WebSocket library (default websockets)")  # fmt: skip
    serve.add_argument("--echo-endpoint", action="store_true",
                       help="TEST ONLY: echo at /echo for the Autobahn testsuite")  # fmt: skip
    serve.add_argument("--tls-key", dest="tls_key_file", help="PEM private key of --tls-cert")

    mig = sub.add_parser("migrate", help="apply pending migrations")
    mig.add_argument("--status", action="store_true", help="list migrations and their state")
    mig.add_argument("--data-dir")

    cfg = sub.add_parser("config", help="configuration")
    cfg.add_argument("action", choices=["show"])

    proto = sub.add_parser("protocol", help="protocol tools")
    proto.add_argument("action", choices=["schema"])
    proto.add_argument("--format", choices=["jsonschema", "asyncapi"], default="jsonschema")
    proto.add_argument("--output", type=Path, help="write here instead of stdout")

    tpl = sub.add_parser(
        "templates",
        help="item templates",
        description="check: validate FILE (no database). load: validate FILE, store it in "
        "Postgres and make it the active catalog (servers pick it up when they start).",
    )
    tpl.add_argument("action", choices=["check", "load"])
    tpl.add_argument("file", type=Path)
    tpl.add_argument("--data-dir", help="embedded Postgres lives under DATA_DIR/pg (load)")

    args = parser.parse_args(argv)
    try:
        settings = _settings(args)
    except ConfigError as exc:
        print(f"gearhall: {exc}", file=sys.stderr)
        return 2
    configure(settings.log_level, settings.log_format)

    if args.command == "serve":
        from sim.templates import TemplateError

        try:
            return _run(_serve(settings))
        except (TemplateError, MigrationError) as exc:
            print(f"gearhall serve: {exc}", file=sys.stderr)
            return 1
    if args.command == "migrate":
        try:
            return _run(_migrate(settings, args.status))
        except MigrationError as exc:
            print(f"gearhall migrate: {exc}", file=sys.stderr)
            return 1
    if args.command == "config":
        print(render(settings))
        return 0
    if args.command == "protocol":
        from protocol.schema import render as render_schema

        text = render_schema(args.format)
        if args.output:
            args.output.write_text(text + "\n", encoding="utf-8")
        else:
            print(text)
        return 0
    if args.command == "templates":
        from sim.templates import TemplateError, load_templates

        try:
            if args.action == "load":
                return _run(_templates_load(settings, args.file))
            catalog = load_templates(args.file)
        except (TemplateError, MigrationError) as exc:
            print(f"gearhall templates: {exc}", file=sys.stderr)
            return 1
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            print(f"gearhall templates: database unavailable: {exc}", file=sys.stderr)
            return 1
        print(f"{args.file}: {len(catalog.templates)} templates OK ({catalog.digest[:12]})")
        return 0
    parser.error(f"unknown command {args.command}")  # exits


if __name__ == "__main__":
    sys.exit(main())
