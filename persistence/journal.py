"""The journal: effects made durable with group commit.

Callers :meth:`Journal.append` rows with a callback; the writer takes everything pending,
inserts it in one statement (one transaction, one fsync), and only then runs the callbacks
— which is where replies are released. While a batch commits, the next one fills, so a
lone request waits for one commit, not for a timer, and under load the batch grows with
the load.

**Lanes.** With ``lanes`` > 1 the writer keeps up to that many commits in flight, each on
a connection of its own: a batch is taken as soon as a lane is free. One commit that
stalls (its backend not scheduled, a lock) then holds up only the players in it, not
every request appended behind it. One rule keeps this safe: a player's rows are never in
two commits at once — a player with rows in flight has its new rows wait for that commit.
So each player's versions are committed in order, a crash can never leave a gap in a
player's journal (recovery replays versions in order), and each callback still runs only
after everything before it for that player is durable. Different players' commits may
land in any order; nothing orders players against each other (each acknowledgement is
about one player's state). ``lanes=1`` is the single writer: batches commit in append
order.

``durable`` (the default) runs callbacks after the commit. ``write-behind`` runs them at
append time and commits afterwards: acknowledged is then *not* durable; it exists only so
benchmarks can show what durability costs, and must be named wherever its numbers appear.

A failed commit is retried with backoff on a fresh connection, in order, forever: the rows
are already applied in memory and acknowledging anything later would break the contract.
If the lost attempt actually committed, the retry hits the primary key and the batch is
known to be durable.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

import asyncpg

log = logging.getLogger("gearhall.journal")

DurabilityMode = Literal["durable", "write-behind"]

_INSERT = """
INSERT INTO journal (player_id, version, tick, effect)
SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bytea[])
"""


@dataclass(slots=True)
class JournalMetrics:
    """Hooks the server wires to Prometheus; plain callables keep this module standalone."""

    on_batch: Callable[[int, float], None] = lambda rows, seconds: None
    on_retry: Callable[[BaseException], None] = lambda exc: None


@dataclass(slots=True)
class _Entry:
    """One append: consecutive versions of one player, and what runs once they are durable
    (None in write-behind mode, where it ran at append time)."""

    player_id: int
    first_version: int
    tick: int
    effects: list[bytes]
    callback: Callable[[], None] | None


@dataclass(slots=True)
class _Batch:
    player_ids: list[int] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    ticks: list[int] = field(default_factory=list)
    effects: list[bytes] = field(default_factory=list)
    callbacks: list[Callable[[], None]] = field(default_factory=list)
    players: set[int] = field(default_factory=set)


class Journal:
    def __init__(
        self,
        connect: Callable[[], Awaitable[asyncpg.Connection]],
        mode: DurabilityMode = "durable",
        metrics: JournalMetrics | None = None,
        max_batch_rows: int = 10_000,
        lanes: int = 1,
    ) -> None:
        if lanes < 1:
            raise ValueError("a journal needs at least one lane")
        self._connect = connect
        self.mode: DurabilityMode = mode
        self._metrics = metrics or JournalMetrics()
        self._max_rows = max_batch_rows
        self._pending: collections.deque[_Entry] = collections.deque()
        # Players with rows in a commit in flight: their later entries wait for it, so one
        # player's rows are never in two commits at once (see the module docstring).
        self._busy: set[int] = set()
        self._conns: list[asyncpg.Connection | None] = [None] * lanes
        self._in_flight = 0
        self._wakeup = asyncio.Event()  # work appended, or rows no longer held back
        self._idle = asyncio.Event()
        self._idle.set()
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self.committed_rows = 0
        self.healthy = True

    @property
    def accepting(self) -> bool:
        """False once :meth:`close` has begun; :meth:`append` would raise."""
        return not self._closing

    def append(
        self,
        player_id: int,
        first_version: int,
        tick: int,
        effects: list[bytes],
        on_durable: Callable[[], None],
    ) -> None:
        """Queue ``effects`` (versions ``first_version``, ``first_version+1``...) of one player.

        ``on_durable`` runs once they are committed (durable mode) or right away
        (write-behind). It must not raise.
        """
        if self._closing:
            raise RuntimeError("journal is closed")
        if self.mode == "write-behind":
            on_durable()
            self._pending.append(_Entry(player_id, first_version, tick, effects, None))
        else:
            self._pending.append(_Entry(player_id, first_version, tick, effects, on_durable))
        self._idle.clear()
        self._wakeup.set()

    async def start(self) -> None:
        self._conns[0] = await self._connect()  # the others connect on their first commit
        self._tasks = [
            asyncio.create_task(self._lane(lane), name=f"journal-lane-{lane}")
            for lane in range(len(self._conns))
        ]

    async def flush(self) -> None:
        """Wait until everything appended so far is committed."""
        await self._idle.wait()

    async def close(self) -> None:
        """Commit what is pending, then stop the writer and close its connections."""
        await self.flush()
        self._closing = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for conn in self._conns:
            if conn is not None:
                await conn.close()

    async def _lane(self, lane: int) -> None:
        """One lane: take a batch, commit it on this lane's connection, run its callbacks,
        and take the next at once (no hop through another task between commits)."""
        while True:
            batch = self._take()
            if batch is None:
                if not self._pending and not self._in_flight:
                    self._idle.set()
                self._wakeup.clear()  # no await between the take and the wait: no lost wake
                await self._wakeup.wait()
                continue
            if self._pending:  # more than this batch took: another lane may take it
                self._wakeup.set()
            self._in_flight += 1
            await self._commit(lane, batch)
            self._busy.difference_update(batch.players)
            for callback in batch.callbacks:
                callback()
            self._in_flight -= 1
            if self._pending:  # rows held back for these players may go now, on any lane
                self._wakeup.set()

    def _take(self) -> _Batch | None:
        """The next batch: pending entries in order, skipping players in flight, up to
        ``max_batch_rows`` rows (an entry may be split; its callback rides with its last
        row). Entries left behind keep their order."""
        batch = _Batch()
        busy, room = self._busy, self._max_rows
        left: collections.deque[_Entry] = collections.deque()
        pending = self._pending
        while pending:
            entry = pending.popleft()
            player = entry.player_id
            if room <= 0 or (player in busy and player not in batch.players):
                left.append(entry)
                continue
            rows = entry.effects
            n = len(rows)
            if n > room:  # split: the head goes now, the rest waits for it
                head, rows = rows[:room], rows[room:]
                left.append(
                    _Entry(player, entry.first_version + room, entry.tick, rows, entry.callback)
                )
                rows, n, callback = head, room, None
                room = 0
            else:
                room -= n
                callback = entry.callback
            batch.player_ids.extend([player] * n)
            batch.versions.extend(range(entry.first_version, entry.first_version + n))
            batch.ticks.extend([entry.tick] * n)
            batch.effects.extend(rows)
            if callback is not None:
                batch.callbacks.append(callback)
            batch.players.add(player)
            busy.add(player)
            if room <= 0:
                left.extend(pending)
                pending.clear()
        self._pending = left
        if not batch.players:
            return None
        return batch

    async def _commit(self, lane: int, batch: _Batch) -> None:
        delay = 0.05
        while True:
            started = time.perf_counter()
            try:
                conn = self._conns[lane]
                if conn is None or conn.is_closed():
                    conn = self._conns[lane] = await self._connect()
                await conn.execute(
                    _INSERT, batch.player_ids, batch.versions, batch.ticks, batch.effects
                )
            except asyncpg.UniqueViolationError:
                # Only a retry after a commit whose acknowledgement was lost can collide:
                # versions are assigned by the one process that owns the player.
                log.warning("journal batch already committed by a lost attempt")
                break
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                self.healthy = False
                self._metrics.on_retry(exc)
                log.error("journal commit failed, retrying in %.2fs: %s", delay, exc)
                conn = self._conns[lane]
                if conn is not None and not conn.is_closed():
                    conn.terminate()
                self._conns[lane] = None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            self._metrics.on_batch(len(batch.versions), time.perf_counter() - started)
            break
        self.healthy = True
        self.committed_rows += len(batch.versions)
