"""Forward-only SQL migrations with checksums.

Each file in ``migrations/`` (``NNNN_<domain>_<what>.sql``) runs once, in name order, in its
own transaction, and is recorded with the SHA-256 of its text. A file edited after it was
applied is refused: the database would no longer match what the file says. A Postgres
advisory lock serialises concurrent runners (two nodes starting at once).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import asyncpg

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
_LOCK_KEY = 0x6765_6172_6861  # "gearha": any constant unique to this purpose

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    name       text        PRIMARY KEY,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


class MigrationError(RuntimeError):
    """The migrations on disk and in the database disagree; an operator must act."""


@dataclass(frozen=True)
class Migration:
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


@dataclass(frozen=True)
class MigrationStatus:
    name: str
    state: str  # "applied" | "pending" | "changed" | "unknown" (in the database, not on disk)


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    files = sorted(p for p in directory.glob("*.sql") if p.is_file())
    return [Migration(p.name, p.read_text(encoding="utf-8")) for p in files]


async def _applied(conn: asyncpg.Connection) -> dict[str, str]:
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return {}
    rows = await conn.fetch("SELECT name, checksum FROM schema_migrations")
    return {r["name"]: r["checksum"] for r in rows}


async def status(
    conn: asyncpg.Connection, directory: Path = MIGRATIONS_DIR
) -> list[MigrationStatus]:
    applied = await _applied(conn)
    result: list[MigrationStatus] = []
    on_disk = discover(directory)
    for m in on_disk:
        if m.name not in applied:
            result.append(MigrationStatus(m.name, "pending"))
        elif applied[m.name] != m.checksum:
            result.append(MigrationStatus(m.name, "changed"))
        else:
            result.append(MigrationStatus(m.name, "applied"))
    names = {m.name for m in on_disk}
    result.extend(MigrationStatus(n, "unknown") for n in sorted(applied) if n not in names)
    return result


async def is_current(conn: asyncpg.Connection, directory: Path = MIGRATIONS_DIR) -> bool:
    return all(s.state == "applied" for s in await status(conn, directory))


async def migrate(conn: asyncpg.Connection, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply pending migrations; return the names applied.

    Raises:
        MigrationError: an applied file was edited, or the database has migrations this
            code does not know (it is newer than the code).
    """
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
    try:
        await conn.execute(_CREATE_TABLE)
        applied = await _applied(conn)
        on_disk = discover(directory)
        for m in on_disk:
            if m.name in applied and applied[m.name] != m.checksum:
                raise MigrationError(
                    f"migration {m.name} was edited after it was applied "
                    f"(recorded checksum {applied[m.name][:12]}…, file {m.checksum[:12]}…); "
                    "migrations are forward-only: restore the file and add a new migration"
                )
        unknown = sorted(set(applied) - {m.name for m in on_disk})
        if unknown:
            raise MigrationError(
                f"the database has migrations this code does not know: {', '.join(unknown)}"
            )
        done: list[str] = []
        for m in on_disk:
            if m.name in applied:
                continue
            async with conn.transaction():
                await conn.execute(m.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (name, checksum) VALUES ($1, $2)",
                    m.name,
                    m.checksum,
                )
            done.append(m.name)
        return done
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
