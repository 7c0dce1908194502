"""The journal's group commit against a real Postgres.

To hold a commit "in flight" deterministically, a second connection takes a lock on the
journal table that the writer's INSERT must wait for; ``pg_stat_activity`` tells when the
writer is actually waiting on it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pytest

from persistence.journal import Journal, JournalMetrics
from persistence.migrate import migrate
from persistence.players import get_or_create_player

DEADLINE_S = 10.0


@dataclass
class Recorder:
    """Batches seen by the journal's metrics hook, and everything in the order it happened."""

    batches: list[int] = field(default_factory=list)
    retries: list[BaseException] = field(default_factory=list)
    events: list[Any] = field(default_factory=list)

    def metrics(self) -> JournalMetrics:
        def on_batch(rows: int, seconds: float) -> None:
            self.batches.append(rows)
            self.events.append(("batch", rows))

        return JournalMetrics(on_batch=on_batch, on_retry=self.retries.append)

    def callback(self, tag: object) -> Callable[[], None]:
        return lambda: self.events.append(tag)

    def fired(self) -> list[Any]:
        return [e for e in self.events if not (isinstance(e, tuple) and e[0] == "batch")]


@dataclass
class Db:
    dsn: str
    admin: asyncpg.Connection
    players: list[int]
    writer_pids: list[int] = field(default_factory=list)

    async def connect(self) -> asyncpg.Connection:
        """The journal's connect callable: remembers each writer connection's backend pid."""
        conn = await asyncpg.connect(self.dsn)
        self.writer_pids.append(conn.get_server_pid())
        return conn

    async def rows(self) -> list[tuple[int, int, bytes]]:
        records = await self.admin.fetch(
            "SELECT player_id, version, effect FROM journal ORDER BY player_id, version"
        )
        return [(r["player_id"], r["version"], bytes(r["effect"])) for r in records]

    async def wait_until_writer_blocked(self) -> None:
        pid = self.writer_pids[-1]
        deadline = time.monotonic() + DEADLINE_S
        while True:
            waiting = await self.admin.fetchval(
                "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", pid
            )
            if waiting:
                return
            assert time.monotonic() < deadline, "the journal writer never reached the lock"


@pytest.fixture
async def db(dsn: str) -> AsyncIterator[Db]:
    admin = await asyncpg.connect(dsn)
    await migrate(admin)
    players = [await get_or_create_player(admin, f"p{i}") for i in range(3)]
    yield Db(dsn, admin, players)
    await admin.close()


@pytest.fixture
async def make_journal(db: Db) -> AsyncIterator[Callable[..., Awaitable[Journal]]]:
    journals: list[Journal] = []

    async def make(**kwargs: Any) -> Journal:
        journal = Journal(db.connect, **kwargs)
        await journal.start()
        journals.append(journal)
        return journal

    yield make
    for journal in journals:
        await journal.close()


async def locked_journal_table(dsn: str) -> asyncpg.Connection:
    """A connection holding a lock that blocks INSERTs into ``journal`` until rollback."""
    locker = await asyncpg.connect(dsn)
    await locker.execute("BEGIN; LOCK TABLE journal IN EXCLUSIVE MODE")
    return locker


def effect(player: int, version: int) -> bytes:
    return f"effect {player}/{version}".encode()


async def test_callback_runs_only_after_the_rows_are_committed(
    db: Db, make_journal: Callable[..., Awaitable[Journal]]
) -> None:
    rec = Recorder()
    journal = await make_journal(metrics=rec.metrics())
    durable = asyncio.Event()
    player = db.players[0]
    locker = await locked_journal_table(db.dsn)
    try:
        journal.append(player, 1, 100, [effect(player, 1), effect(player, 2)], durable.set)
        assert not durable.is_set()  # never at append time in durable mode
        await db.wait_until_writer_blocked()
        # The commit is in flight and cannot finish: the callback has not run.
        assert not durable.is_set()
        assert await db.rows() == []
    finally:
        await locker.execute("ROLLBACK")
        await locker.close()
    async with asyncio.timeout(DEADLINE_S):
        await durable.wait()
    # Right after the callback, another connection sees every row.
    assert await db.rows() == [(player, 1, effect(player, 1)), (player, 2, effect(player, 2))]
    assert rec.batches == [2]
    assert journal.committed_rows == 2


async def test_appends_during_a_commit_are_grouped(
    db: Db, make_journal: Callable[..., Awaitable[Journal]]
) -> None:
    rec = Recorder()
    journal = await make_journal(metrics=rec.metrics())
    first = db.players[0]
    locker = await locked_journal_table(db.dsn)
    try:
        journal.append(first, 1, 1, [effect(first, 1)], rec.callback((first, 1)))
        await db.wait_until_writer_blocked()
        # 3 players x 30 appends of one row each, all while the first commit waits.
        expected = [(first, 1)]
        for version in range(2, 32):
            for player in db.players:
                v = version if player == first else version - 1
                journal.append(player, v, v, [effect(player, v)], rec.callback((player, v)))
                expected.append((player, v))
        assert rec.fired() == []
    finally:
        await locker.execute("ROLLBACK")
        await locker.close()
    async with asyncio.timeout(DEADLINE_S):
        await journal.flush()
    assert rec.batches == [1, 90]  # 91 appends, 2 commits
    assert rec.fired() == expected  # every callback once, in append order
    # Each callback ran after its batch was committed.
    assert rec.events.index(("batch", 1)) < rec.events.index((first, 1))
    assert rec.events.index(("batch", 90)) < rec.events.index((first, 2))
    rows = await db.rows()
    assert len(rows) == 91
    assert {(p, v) for p, v, _ in rows} == set(expected)


async def test_flush_waits_for_everything(
    db: Db, make_journal: Callable[..., Awaitable[Journal]]
) -> None:
    rec = Recorder()
    journal = await make_journal(metrics=rec.metrics(), max_batch_rows=10)
    await journal.flush()  # nothing pending: returns at once
    player = db.players[1]
    # One append bigger than a batch: split on row boundaries, one callback after all of it.
    journal.append(player, 1, 7, [effect(player, v) for v in range(1, 26)], rec.callback("big"))
    for version in range(26, 31):
        journal.append(player, version, 7, [effect(player, version)], rec.callback(version))
    async with asyncio.timeout(DEADLINE_S):
        await journal.flush()
    # Three commits of at most 10 rows; the callbacks ride with the tail, after all of them.
    assert rec.events == [("batch", 10)] * 3 + ["big", *range(26, 31)]
    assert [v for _, v, _ in await db.rows()] == list(range(1, 31))
    assert journal.committed_rows == 30


async def test_write_behind_fires_callbacks_before_commit(
    db: Db, make_journal: Callable[..., Awaitable[Journal]]
) -> None:
    rec = Recorder()
    journal = await make_journal(mode="write-behind", metrics=rec.metrics())
    player = db.players[2]
    locker = await locked_journal_table(db.dsn)
    try:
        journal.append(player, 1, 1, [effect(player, 1)], rec.callback("acked"))
        assert rec.fired() == ["acked"]  # acknowledged at append time: not durable
        await db.wait_until_writer_blocked()
        assert rec.batches == []
        assert await db.rows() == []
    finally:
        await locker.execute("ROLLBACK")
        await locker.close()
    async with asyncio.timeout(DEADLINE_S):
        await journal.flush()
    assert await db.rows() == [(player, 1, effect(player, 1))]
    assert rec.batches == [1]


async def test_retry_after_lost_connection_commits_exactly_once(
    db: Db, make_journal: Callable[..., Awaitable[Journal]]
) -> None:
    rec = Recorder()
    journal = await make_journal(metrics=rec.metrics())
    player = db.players[0]
    locker = await locked_journal_table(db.dsn)
    try:
        journal.append(player, 1, 1, [effect(player, 1), effect(player, 2)], rec.callback(1))
        await db.wait_until_writer_blocked()
        killed = db.writer_pids[-1]
        assert await db.admin.fetchval("SELECT pg_terminate_backend($1)", killed)
        # More work arrives while the writer is reconnecting.
        journal.append(player, 3, 1, [effect(player, 3)], rec.callback(3))
    finally:
        await locker.execute("ROLLBACK")
        await locker.close()
    async with asyncio.timeout(DEADLINE_S):
        await journal.flush()
    assert rec.retries, "the lost connection was not retried"
    assert len(db.writer_pids) >= 2 and db.writer_pids[-1] != killed
    assert rec.fired() == [1, 3]
    assert await db.rows() == [(player, v, effect(player, v)) for v in (1, 2, 3)]
    assert journal.committed_rows == 3
    assert journal.healthy


class _AckLostConnection:
    """A real connection whose first INSERT commits but whose reply is lost on the way."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn
        self.lost = 0

    async def execute(self, query: str, *args: object) -> str:
        result: str = await self._conn.execute(query, *args)
        if not self.lost:
            self.lost += 1
            raise ConnectionResetError("reply lost after commit")
        return result

    def is_closed(self) -> bool:
        return bool(self._conn.is_closed())

    def terminate(self) -> None:
        self._conn.terminate()

    async def close(self) -> None:
        await self._conn.close()


async def test_retry_of_a_commit_whose_ack_was_lost_does_not_duplicate(db: Db) -> None:
    rec = Recorder()
    connections: list[_AckLostConnection] = []

    async def connect() -> _AckLostConnection:
        wrapped = _AckLostConnection(await db.connect())
        if connections:  # only the first connection loses its acknowledgement
            wrapped.lost = 1
        connections.append(wrapped)
        return wrapped

    journal = Journal(connect, metrics=rec.metrics())
    await journal.start()
    try:
        player = db.players[1]
        journal.append(player, 1, 1, [effect(player, 1), effect(player, 2)], rec.callback(1))
        async with asyncio.timeout(DEADLINE_S):
            await journal.flush()
        assert len(rec.retries) == 1
        assert rec.fired() == [1]
        journal.append(player, 3, 1, [effect(player, 3)], rec.callback(3))
        async with asyncio.timeout(DEADLINE_S):
            await journal.flush()
        assert rec.fired() == [1, 3]
        assert await db.rows() == [(player, v, effect(player, v)) for v in (1, 2, 3)]
        assert journal.committed_rows == 3
    finally:
        await journal.close()


async def test_close_commits_pending_then_refuses_appends(
    db: Db, make_journal: Callable[..., Awaitable[Journal]]
) -> None:
    rec = Recorder()
    journal = await make_journal(metrics=rec.metrics())
    player = db.players[0]
    journal.append(player, 1, 1, [effect(player, 1)], rec.callback(1))
    await journal.close()
    assert rec.fired() == [1]
    assert await db.rows() == [(player, 1, effect(player, 1))]
    with pytest.raises(RuntimeError):
        journal.append(player, 2, 1, [effect(player, 2)], rec.callback(2))
