"""The migrations runner against a real, fresh Postgres database."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from persistence.migrate import (
    MIGRATIONS_DIR,
    MigrationError,
    is_current,
    migrate,
    status,
)

SHIPPED = sorted(p.name for p in MIGRATIONS_DIR.glob("*.sql"))


@pytest.fixture
async def conn(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(dsn)
    yield connection
    await connection.close()


def copy_migrations(target: Path, names: list[str] | None = None) -> Path:
    target.mkdir(exist_ok=True)
    for name in SHIPPED if names is None else names:
        shutil.copy(MIGRATIONS_DIR / name, target / name)
    return target


async def states(conn: asyncpg.Connection, directory: Path = MIGRATIONS_DIR) -> dict[str, str]:
    return {s.name: s.state for s in await status(conn, directory)}


async def test_fresh_database_applies_everything_in_order(conn: asyncpg.Connection) -> None:
    assert len(SHIPPED) >= 3
    assert set((await states(conn)).values()) == {"pending"}
    assert not await is_current(conn)

    assert await migrate(conn) == SHIPPED

    rows = await conn.fetch("SELECT name, checksum, applied_at FROM schema_migrations")
    recorded = {r["name"]: r["checksum"] for r in rows}
    assert recorded == {
        name: hashlib.sha256(
            (MIGRATIONS_DIR / name).read_text(encoding="utf-8").encode()
        ).hexdigest()
        for name in SHIPPED
    }
    # One transaction each, in name order: applied_at (transaction start) follows the names.
    by_time = [r["name"] for r in sorted(rows, key=lambda r: (r["applied_at"], r["name"]))]
    assert by_time == SHIPPED
    # The schema they describe exists.
    for table in ("players", "journal", "snapshots"):
        assert await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", table)


async def test_second_run_applies_nothing(conn: asyncpg.Connection) -> None:
    await migrate(conn)
    before = await conn.fetch("SELECT name, checksum, applied_at FROM schema_migrations")
    assert await migrate(conn) == []
    after = await conn.fetch("SELECT name, checksum, applied_at FROM schema_migrations")
    assert sorted(map(tuple, after)) == sorted(map(tuple, before))
    assert await states(conn) == dict.fromkeys(SHIPPED, "applied")
    assert await is_current(conn)


async def test_pending_migrations_show_in_status_and_apply_alone(
    conn: asyncpg.Connection, tmp_path: Path
) -> None:
    directory = copy_migrations(tmp_path / "m", SHIPPED[:-1])
    assert await migrate(conn, directory) == SHIPPED[:-1]
    copy_migrations(directory, SHIPPED[-1:])
    expected = dict.fromkeys(SHIPPED[:-1], "applied") | {SHIPPED[-1]: "pending"}
    assert await states(conn, directory) == expected
    assert not await is_current(conn, directory)
    assert await migrate(conn, directory) == SHIPPED[-1:]
    assert await is_current(conn, directory)


async def test_edited_applied_migration_is_refused(
    conn: asyncpg.Connection, tmp_path: Path
) -> None:
    directory = copy_migrations(tmp_path / "m")
    await migrate(conn, directory)
    edited = directory / SHIPPED[1]
    edited.write_text(edited.read_text(encoding="utf-8") + "\n-- tweak\n", encoding="utf-8")
    # A new file next to it must not be applied either: nothing runs while one is edited.
    (directory / "9999_core_later.sql").write_text("CREATE TABLE later (id int);\n")

    with pytest.raises(MigrationError, match=SHIPPED[1]):
        await migrate(conn, directory)

    assert (await states(conn, directory))[SHIPPED[1]] == "changed"
    assert not await is_current(conn, directory)
    assert not await conn.fetchval("SELECT to_regclass('later') IS NOT NULL")
    assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == len(SHIPPED)


async def test_unknown_applied_migration_is_refused(
    conn: asyncpg.Connection, tmp_path: Path
) -> None:
    directory = copy_migrations(tmp_path / "m")
    await migrate(conn, directory)
    # The database is newer than this code: its last migration is not on disk.
    (directory / SHIPPED[-1]).unlink()

    with pytest.raises(MigrationError, match=SHIPPED[-1]):
        await migrate(conn, directory)

    assert (await states(conn, directory))[SHIPPED[-1]] == "unknown"
    assert not await is_current(conn, directory)


async def test_failing_migration_is_rolled_back_and_not_recorded(
    conn: asyncpg.Connection, tmp_path: Path
) -> None:
    directory = copy_migrations(tmp_path / "m")
    (directory / "9998_core_broken.sql").write_text(
        "CREATE TABLE half_done (id int);\nSELECT 1 / 0;\n", encoding="utf-8"
    )
    with pytest.raises(asyncpg.DivisionByZeroError):
        await migrate(conn, directory)
    assert (await states(conn, directory))["9998_core_broken.sql"] == "pending"
    assert not await conn.fetchval("SELECT to_regclass('half_done') IS NOT NULL")
    # The good ones before it did apply, and the lock was released: the next run proceeds.
    assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == len(SHIPPED)
    (directory / "9998_core_broken.sql").unlink()
    assert await migrate(conn, directory) == []


async def test_concurrent_runners_apply_each_migration_once(dsn: str) -> None:
    first, second = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
    try:
        results = await asyncio.gather(migrate(first), migrate(second))
    finally:
        await first.close()
        await second.close()
    assert sorted(results, key=len) == [[], SHIPPED]
