"""The journal: effects made durable with group commit.

One writer task owns one connection. Callers :meth:`Journal.append` rows with a callback;
the writer takes everything pending, inserts it in one statement (one transaction, one
fsync), and only then runs the callbacks — which is where replies are released. While a
batch commits, the next one fills, so a lone request waits for one commit, not for a timer,
and under load the batch grows with the load.

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
import logging
import time
from collections.abc import Callable
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
class _Batch:
    player_ids: list[int] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    ticks: list[int] = field(default_factory=list)
    effects: list[bytes] = field(default_factory=list)
    callbacks: list[Callable[[], None]] = field(default_factory=list)


class Journal:
    def __init__(
        self,
        connect: Callable[[], asyncpg.Connection],
        mode: DurabilityMode = "durable",
        metrics: JournalMetrics | None = None,
        max_batch_rows: int = 10_000,
    ) -> None:
        self._connect = connect
        self.mode: DurabilityMode = mode
        self._metrics = metrics or JournalMetrics()
        self._max_rows = max_batch_rows
        self._pending = _Batch()
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._conn: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None
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
        batch = self._pending
        for offset, effect in enumerate(effects):
            batch.player_ids.append(player_id)
            batch.versions.append(first_version + offset)
            batch.ticks.append(tick)
            batch.effects.append(effect)
        if self.mode == "write-behind":
            on_durable()
        else:
            batch.callbacks.append(on_durable)
        self._idle.clear()
        self._wakeup.set()

    async def start(self) -> None:
        self._conn = await self._connect()
        self._task = asyncio.create_task(self._run(), name="journal-writer")

    async def flush(self) -> None:
        """Wait until everything appended so far is committed."""
        await self._idle.wait()

    async def close(self) -> None:
        """Commit what is pending, then stop the writer and close its connection."""
        await self.flush()
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._conn is not None:
            await self._conn.close()

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            batch = self._take()
            if batch is None:
                self._idle.set()
                continue
            await self._commit(batch)
            for callback in batch.callbacks:
                callback()
            if not self._pending.versions:
                self._idle.set()

    def _take(self) -> _Batch | None:
        batch = self._pending
        if not batch.versions and not batch.callbacks:
            return None
        if len(batch.versions) > self._max_rows:
            # Split on a row boundary; callbacks stay with the tail so nothing is
            # acknowledged before all of its rows are in.
            head = _Batch(
                batch.player_ids[: self._max_rows],
                batch.versions[: self._max_rows],
                batch.ticks[: self._max_rows],
                batch.effects[: self._max_rows],
                [],
            )
            del batch.player_ids[: self._max_rows]
            del batch.versions[: self._max_rows]
            del batch.ticks[: self._max_rows]
            del batch.effects[: self._max_rows]
            self._wakeup.set()
            return head
        self._pending = _Batch()
        return batch

    async def _commit(self, batch: _Batch) -> None:
        if not batch.versions:
            return
        delay = 0.05
        while True:
            started = time.perf_counter()
            try:
                if self._conn is None or self._conn.is_closed():
                    self._conn = await self._connect()
                await self._conn.execute(
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
                if self._conn is not None and not self._conn.is_closed():
                    self._conn.terminate()
                self._conn = None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            self._metrics.on_batch(len(batch.versions), time.perf_counter() - started)
            break
        self.healthy = True
        self.committed_rows += len(batch.versions)
