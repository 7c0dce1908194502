"""Live players: the in-memory state of everyone online, and the shell around the pure rules.

The request path for a sim intent (DESIGN.md §2): the rule decides against the in-memory
state, the effects are applied at once (arrival order is the one order: asyncio is a
single writer), appended to the journal, and the reply waits until they are durable. What
other sessions see — deltas, resume effects, a welcome's full state — is only ever durable
state: ``recent`` holds only committed effects and a welcome waits for the state it shows.

The tick (``on_tick``) never awaits: it flushes deltas, picks players to snapshot (their
bytes are taken in the tick, written by a background task) and evicts idle players.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import gc
import itertools
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import asyncpg
import msgspec

from persistence import players as repo
from persistence.journal import Journal
from protocol.base import Request
from protocol.errors import UnavailableError
from protocol.messages import CooldownReady, PlayerDelta
from protocol.model import AnyEffect, CooldownStarted, ItemCreated, PlayerState
from sim.apply import apply
from sim.common import MAX_CREATED_PER_INTENT
from sim.rules import CREATES_ITEMS, RuleContext, grant_starter_kit, reconcile
from sim.state import decode_state, encode_state
from sim.stats import StatsCache
from sim.templates import Catalog

if TYPE_CHECKING:
    from server.config import Settings
    from server.metrics import Metrics
    from server.session import Session

log = logging.getLogger("gearhall.hub")

_effect_encoder = msgspec.msgpack.Encoder()
_effect_decoder = msgspec.msgpack.Decoder(AnyEffect)


class LivePlayer:
    __slots__ = (
        "durable_version",
        "idle_since",
        "pending_pushes",
        "pinned",
        "player_id",
        "recent",
        "sessions",
        "snapshot_in_flight",
        "snapshot_scheduled",
        "snapshot_version",
        "state",
        "waiters",
    )

    def __init__(self, state: PlayerState, snapshot_version: int, resume_buffer: int) -> None:
        self.player_id = state.player_id
        self.state = state
        self.durable_version = state.version
        self.snapshot_version = snapshot_version
        self.snapshot_in_flight = False
        self.snapshot_scheduled = False  # has an entry in PlayerHub._snapshot_due
        # The msgpack of the last durable effects, for resuming sessions, newest last: the
        # newest is version ``durable_version``, the ones before it count down by one.
        # Bytes alone, no (version, bytes) tuples: a tuple is a container the collector
        # tracks, and one per effect made most of the young generation (50,000 of 54,000
        # objects at 10,000 ops/s, 14-22 ms per young collection; docs/benchmarks.md).
        self.recent: collections.deque[bytes] = collections.deque(maxlen=resume_buffer)
        self.sessions: list[Session] = []
        # (origin session, effects, version after them), flushed to other sessions on tick
        self.pending_pushes: list[tuple[Session | None, list[AnyEffect], int]] = []
        self.waiters: list[tuple[int, asyncio.Future[None]]] = []
        self.idle_since: float | None = None
        # Requests working on this player without being one of its sessions (admin grants):
        # while non-zero the player is not evicted under them.
        self.pinned = 0


class PlayerHub:
    def __init__(
        self,
        *,
        settings: Settings,
        catalog: Catalog,
        journal: Journal,
        pool: asyncpg.Pool,
        metrics: Metrics,
        tick: Callable[[], int],
        tick_ms: int,
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.journal = journal
        self.pool = pool
        self.metrics = metrics
        self._tick = tick
        self.tick_ms = tick_ms
        self.players: dict[int, LivePlayer] = {}
        self._loading: dict[int, asyncio.Future[LivePlayer]] = {}
        self._snapshot_queue: list[tuple[LivePlayer, int, bytes]] = []
        # Work the tick must do, kept as it arises so a tick never scans every player:
        # players with deltas to push, snapshot deadlines in due order (the interval is
        # constant, so appending keeps the deque sorted) and players whose last session left.
        self._pushes: dict[int, LivePlayer] = {}
        self._snapshot_due: collections.deque[tuple[float, LivePlayer]] = collections.deque()
        self._idle_due: collections.deque[tuple[float, LivePlayer]] = collections.deque()
        self._snapshot_wake = asyncio.Event()
        self._snapshot_task: asyncio.Task[None] | None = None
        # Fresh item ids: a run [_id_next, _id_end) from a hi/lo block (persistence.players).
        self._id_next = 0
        self._id_end = 0
        # gc.freeze() of newly loaded players (_freeze_loaded)
        self._loaded_since_freeze = False
        self._next_freeze = 0.0
        # Running cooldowns of loaded players, soonest first: (ready_at_ms, player_id, key).
        # Running cooldowns of loaded players by the tick they end on (deadlines are tick
        # aligned): {ready_tick: {(player_id, key): ready_at_ms}}. A timing wheel, O(1) per
        # cooldown; the same cooldown registered twice (a player evicted and loaded again)
        # collapses into one entry. ``_cooldowns_done`` is the last tick announced.
        self._cooldowns: dict[int, dict[tuple[int, str], int]] = {}
        self._cooldowns_done = tick()
        self.stats = StatsCache(catalog)
        self._loop = asyncio.get_running_loop()  # cached: 3.11's lookup calls getpid()
        self._snapshots_idle = asyncio.Event()
        self._snapshots_idle.set()

    def start(self) -> None:
        self._snapshot_task = asyncio.create_task(self._snapshot_loop(), name="snapshots")

    async def stop(self) -> None:
        if self._snapshot_task is not None:
            self._snapshot_task.cancel()
            await asyncio.gather(self._snapshot_task, return_exceptions=True)

    def context(self) -> RuleContext:
        return RuleContext(
            tick=self._tick(),
            tick_ms=self.tick_ms,
            catalog=self.catalog,
            next_item_id=self._id_next,
        )

    # --- loading ----------------------------------------------------------------------------

    async def acquire(self, player_id: int, name: str) -> LivePlayer:
        """The live player, loaded from snapshot + journal if needed (once, however many
        sessions ask at the same moment); a new player gets the starter kit, durably."""
        live = self.players.get(player_id)
        if live is not None:
            return live
        pending = self._loading.get(player_id)
        if pending is not None:
            live = await asyncio.shield(pending)
            # A tick may have run between the load finishing and this waiter resuming, and
            # evicted the player (idle, and released by whoever loaded it): load it again.
            # Callers attach or pin synchronously after this returns, so it stays.
            if self.players.get(player_id) is live:
                return live
            return await self.acquire(player_id, name)
        future: asyncio.Future[LivePlayer] = asyncio.get_running_loop().create_future()
        self._loading[player_id] = future
        try:
            async with self.pool.acquire() as conn:
                loaded = await repo.load_player(conn, player_id, name)
            live = LivePlayer(loaded.state, loaded.snapshot_version, self.settings.resume_buffer)
            self.players[player_id] = live
            self.metrics.players_online.set(len(self.players))
            if live.state.version == 0:
                await self._ensure_ids(len(self.catalog.starter_kit))
                ids = range(self._id_next, self._id_next + len(self.catalog.starter_kit))
                self._id_next = ids.stop
                await self.commit(live, grant_starter_kit(live.state, self.context(), ids), None)
            # The catalog may have changed since this player was last loaded: new or grown
            # compartments, and items whose template or slot is gone, go where they belong.
            fixes = reconcile(live.state, self.context())
            if fixes:
                log.info(
                    "player %d: reconciled with the catalog (%d effects)", player_id, len(fixes)
                )
                await self.commit(live, fixes, None)
            now_ms = self._tick() * self.tick_ms
            for key, ready_at in live.state.cooldowns.items():
                if ready_at > now_ms:
                    self._watch_cooldown(player_id, key, ready_at)
            future.set_result(live)
            self._loaded_since_freeze = True
            return live
        except BaseException as exc:
            self.players.pop(player_id, None)
            future.set_exception(exc)
            future.exception()  # mark retrieved: the caller gets it re-raised below
            raise
        finally:
            del self._loading[player_id]

    async def _ensure_ids(self, n: int) -> None:
        """Make sure ``n`` consecutive fresh ids are available at ``_id_next``."""
        if self._id_end - self._id_next >= n:
            return
        async with self.pool.acquire() as conn:
            block = await repo.allocate_item_block(conn)
        if len(block) < n:  # pragma: no cover - blocks are 1000, intents create <= 64
            raise RuntimeError("item id block smaller than one intent needs")
        self._id_next, self._id_end = max(block.start, 1), block.stop

    def attach(self, live: LivePlayer, session: Session) -> None:
        live.sessions.append(session)
        live.idle_since = None

    def detach(self, live: LivePlayer, session: Session) -> None:
        if session in live.sessions:
            live.sessions.remove(session)
        if not live.sessions:
            live.idle_since = time.monotonic()
            self._idle_due.append((live.idle_since, live))

    # --- the request path -------------------------------------------------------------------

    async def commit(
        self,
        live: LivePlayer,
        effects: list[AnyEffect],
        origin: Session | None,
        tick: int | None = None,
    ) -> int:
        """Apply ``effects`` now, journal them, and return the version once they are durable.
        Every session of the player but ``origin`` (whose reply carries them) gets them as
        a delta on the next tick. ``tick``: the tick they were decided in (default: now).

        Raises:
            UnavailableError: the journal is closing (shutdown).
        """
        version = self._journal(live, effects, origin, tick, None)
        if live.durable_version < version:  # wait_durable, inlined: this is the hot path
            future: asyncio.Future[None] = self._loop.create_future()
            live.waiters.append((version, future))
            await future
        return version

    def commit_then(
        self,
        live: LivePlayer,
        effects: list[AnyEffect],
        origin: Session | None,
        tick: int,
        then: Callable[[int], None],
    ) -> None:
        """:meth:`commit` without a coroutine: apply and journal ``effects`` now and call
        ``then(version)`` once they are durable — from the journal writer (or at once, in
        write-behind mode, before this returns). ``then`` must not raise.

        Raises:
            UnavailableError: the journal is closing (shutdown); nothing was applied.
        """
        self._journal(live, effects, origin, tick, then)

    def _journal(
        self,
        live: LivePlayer,
        effects: list[AnyEffect],
        origin: Session | None,
        tick: int | None,
        then: Callable[[int], None] | None,
    ) -> int:
        """Apply ``effects`` to the live state and append them to the journal; return the
        version they bring the player to."""
        if not self.journal.accepting:
            # Refuse before applying: memory must never run ahead of what can be journaled.
            raise UnavailableError("server is shutting down")
        state = live.state
        first = state.version + 1
        for effect in effects:
            apply(state, effect)
        version = state.version

        # Encoded once: the journal stores these bytes, and so does the resume buffer
        # (bytes are invisible to the garbage collector; effect objects kept for minutes
        # were most of what its collections traversed).
        encoded = [_effect_encoder.encode(e) for e in effects]
        self.journal.append(
            live.player_id,
            first,
            self._tick() if tick is None else tick,
            encoded,
            functools.partial(self._on_durable, live, version, effects, encoded, origin, then),
        )
        return version

    def _on_durable(  # noqa: PLR0917  (bound once per commit by a partial: positional)
        self,
        live: LivePlayer,
        version: int,
        effects: list[AnyEffect],
        encoded: list[bytes],
        origin: Session | None,
        then: Callable[[int], None] | None,
    ) -> None:
        """The journal committed ``effects`` (the last of them is ``version``)."""
        live.durable_version = version
        live.recent.extend(encoded)  # versions version - len + 1 .. version
        sessions = live.sessions
        # Another session than the origin exists (sessions are distinct objects).
        if len(sessions) > 1 or (sessions and sessions[0] is not origin):
            live.pending_pushes.append((origin, effects, version))
            self._pushes[live.player_id] = live
        if not live.snapshot_scheduled:
            self._schedule_snapshot(live, time.monotonic() + self.settings.snapshot_interval_s)
        for effect in effects:
            if type(effect) is CooldownStarted:
                self._watch_cooldown(live.player_id, effect.key, effect.ready_at_ms)
        if live.waiters:
            self._release_waiters(live)
        if then is not None:
            then(version)

    def decide(
        self, live: LivePlayer, intent: Request, rule: Callable[..., list[AnyEffect]]
    ) -> tuple[list[AnyEffect], int]:
        """Run ``rule`` on the live state: its effects (not applied yet) and the tick it
        decided in. An intent that creates items needs ids reserved first
        (:meth:`run_intent` does that)."""
        ctx = self.context()
        effects = rule(live.state, intent, ctx)
        for effect in effects:
            if type(effect) is ItemCreated and effect.item.id >= self._id_next:
                self._id_next = effect.item.id + 1
        return effects, ctx.tick

    async def run_intent(
        self,
        live: LivePlayer,
        intent: Request,
        rule: Callable[..., list[AnyEffect]],
        origin: Session | None,
    ) -> tuple[int, list[AnyEffect]]:
        if type(intent) in CREATES_ITEMS:
            await self._ensure_ids(MAX_CREATED_PER_INTENT)
        effects, tick = self.decide(live, intent, rule)
        if not effects:
            return live.state.version, effects
        return await self.commit(live, effects, origin, tick), effects

    async def durable_copy(self, live: LivePlayer) -> PlayerState:
        """A copy of the state as of now, returned once that version is durable."""
        snapshot = decode_state(encode_state(live.state))
        await self.wait_durable(live, snapshot.version)
        return snapshot

    async def wait_durable(self, live: LivePlayer, version: int) -> None:
        if live.durable_version >= version:
            return
        future: asyncio.Future[None] = self._loop.create_future()
        live.waiters.append((version, future))
        await future

    def _release_waiters(self, live: LivePlayer) -> None:
        waiters = live.waiters
        if not waiters:
            return
        durable = live.durable_version
        if len(waiters) == 1:  # one request in flight: the usual case
            version, future = waiters[0]
            if version <= durable:
                live.waiters = []
                if not future.done():
                    future.set_result(None)
            return
        keep = []
        for version, future in waiters:
            if version <= durable:
                if not future.done():
                    future.set_result(None)
            else:
                keep.append((version, future))
        live.waiters = keep

    async def effects_since(self, live: LivePlayer, version: int) -> list[AnyEffect] | None:
        """The durable effects after ``version`` (from memory, else the journal), or None."""
        durable = live.durable_version
        if version > durable:
            return None
        if version == durable:
            return []
        recent = live.recent
        oldest = durable - len(recent) + 1  # the version of recent[0]
        if recent and oldest <= version + 1:
            missed = itertools.islice(recent, version + 1 - oldest, None)
            return [_effect_decoder.decode(data) for data in missed]
        async with self.pool.acquire() as conn:
            return await repo.effects_since(conn, live.player_id, version, durable)

    # --- the tick ---------------------------------------------------------------------------

    def _freeze_loaded(self, now: float) -> None:
        """Move players loaded since the last time (and everything else still alive) into
        the collector's permanent generation, at most every ``gc_freeze_loaded_s``.

        A player is a few hundred tracked objects that live as long as it is online. Left
        to the collector, a burst of logins is traversed by a gen-1 collection and then by
        every full collection: pauses of hundreds of milliseconds. A young collection first
        (``gc.collect(1)``: small, because this runs often) clears whatever cyclic garbage
        exists right now, so none is frozen; frozen objects are still freed by reference
        counting when a player is evicted.
        """
        interval = self.settings.gc_freeze_loaded_s
        if not self._loaded_since_freeze or not interval or now < self._next_freeze:
            return
        self._loaded_since_freeze = False
        self._next_freeze = now + interval
        gc.collect(1)
        gc.freeze()

    def on_tick(self, tick: int) -> None:
        """Push deltas, start due snapshots, evict idle players. Never awaits."""
        if self._pushes:
            pushes, self._pushes = self._pushes, {}
            for live in pushes.values():
                self._flush_pushes(live)
        if self._cooldowns:
            self._announce_ready_cooldowns(tick)
        self._cooldowns_done = max(self._cooldowns_done, tick)
        now = time.monotonic()
        due = self._snapshot_due
        while due and due[0][0] <= now:
            _, live = due.popleft()
            live.snapshot_scheduled = False
            if (
                self.players.get(live.player_id) is live
                and live.state.version > live.snapshot_version
            ):
                if live.snapshot_in_flight:  # the write in progress reschedules on completion
                    continue
                self._queue_snapshot(live)
        idle = self._idle_due
        evict_after = self.settings.evict_after_s
        evicted = False
        while idle and idle[0][0] <= now:
            _, live = idle.popleft()
            if live.sessions or self.players.get(live.player_id) is not live:
                continue  # back online, or already gone
            if live.state.version > live.snapshot_version and not live.snapshot_in_flight:
                self._queue_snapshot(live)  # checkpoint as soon as a player leaves
            assert live.idle_since is not None
            if (
                now - live.idle_since >= evict_after
                and live.snapshot_version == live.state.version
                and not live.snapshot_in_flight
                and not live.waiters
                and not live.pinned
            ):
                del self.players[live.player_id]
                self.stats.forget(live.player_id)
                evicted = True
            else:
                idle.append((max(now + 1.0, live.idle_since + evict_after), live))
        if evicted:
            self.metrics.players_online.set(len(self.players))
        self._freeze_loaded(now)

    def _watch_cooldown(self, player_id: int, key: str, ready_at_ms: int) -> None:
        # A deadline in a tick already announced (possible only for a cooldown started
        # within the current tick) is announced on the next one.
        ready_tick = max(-(-ready_at_ms // self.tick_ms), self._cooldowns_done + 1)
        self._cooldowns.setdefault(ready_tick, {})[(player_id, key)] = ready_at_ms

    def _announce_ready_cooldowns(self, tick: int) -> None:
        """Push ``player.cooldown_ready`` for every cooldown that ended by ``tick`` (ticks
        skipped by an overrun included)."""
        wheel = self._cooldowns
        start = self._cooldowns_done + 1
        # Normally one tick; after a long stall, visit the buckets rather than every tick.
        dues = (
            range(start, tick + 1)
            if tick - start < len(wheel)
            else sorted(t for t in wheel if t <= tick)
        )
        for due in dues:
            bucket = wheel.pop(due, None)
            if not bucket:
                continue
            for (player_id, key), ready_at in bucket.items():
                live = self.players.get(player_id)
                # Skip cooldowns restarted since (their new deadline has its own entry)
                # and players no longer loaded.
                if live is None or live.state.cooldowns.get(key) != ready_at:
                    continue
                for session in live.sessions:
                    session.send(
                        CooldownReady(seq=live.durable_version, key=key, ready_at_ms=ready_at)
                    )

    def pin(self, live: LivePlayer) -> None:
        """Keep ``live`` in memory while a request without a session of its own (an admin
        grant) works on it. Call right after :meth:`acquire`, without awaiting in between."""
        live.pinned += 1

    def unpin(self, live: LivePlayer) -> None:
        """Undo :meth:`pin`; a player nobody is attached to then becomes idle (evictable)."""
        live.pinned -= 1
        if not live.pinned and not live.sessions and live.idle_since is None:
            live.idle_since = time.monotonic()
            self._idle_due.append((live.idle_since, live))

    def _schedule_snapshot(self, live: LivePlayer, at: float) -> None:
        live.snapshot_scheduled = True
        self._snapshot_due.append((at, live))

    def _flush_pushes(self, live: LivePlayer) -> None:
        pushes, live.pending_pushes = live.pending_pushes, []
        for session in live.sessions:
            for origin, effects, version in pushes:
                if origin is not session:
                    session.send(PlayerDelta(seq=version, effects=effects))

    def _queue_snapshot(self, live: LivePlayer) -> None:
        """Take the state's bytes now; the writer stores them once that version is durable."""
        live.snapshot_in_flight = True
        self._snapshot_queue.append((live, live.state.version, encode_state(live.state)))
        self._snapshots_idle.clear()
        self._snapshot_wake.set()

    def snapshot_all(self) -> None:
        """Queue a snapshot of every player with unsnapshotted durable changes (shutdown)."""
        for live in self.players.values():
            if live.state.version > live.snapshot_version and not live.snapshot_in_flight:
                self._queue_snapshot(live)

    async def checkpoint_all(self) -> None:
        """Snapshot every player at its final durable version (graceful shutdown).

        A snapshot of an older version may be in flight when this starts: wait for it, then
        queue again, until no player's snapshot is behind. Bound it with a timeout: if the
        database fails every write this loops (one attempt per round) until cancelled.
        """
        while True:
            await self.drain_snapshots()
            self.snapshot_all()
            if self._snapshots_idle.is_set():
                return

    async def drain_snapshots(self) -> None:
        """Wait until every queued snapshot is written (or has failed)."""
        await self._snapshots_idle.wait()

    async def _snapshot_loop(self) -> None:
        while True:
            await self._snapshot_wake.wait()
            self._snapshot_wake.clear()
            batch, self._snapshot_queue = self._snapshot_queue, []
            if not batch:
                self._snapshots_idle.set()
                continue
            for live, version, _ in batch:
                # Never store a state that is not durable yet: a crash would otherwise
                # leave a snapshot ahead of the journal. Nearly always already true.
                await self.wait_durable(live, version)
            started = time.perf_counter()
            try:
                async with self.pool.acquire() as conn:
                    await repo.save_snapshots(
                        conn,
                        [(live.player_id, version, data) for live, version, data in batch],
                        self.settings.journal_keep_versions,
                    )
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.error("snapshot batch of %d failed: %s", len(batch), exc)
                retry_at = time.monotonic() + self.settings.snapshot_interval_s
                for live, _, _ in batch:
                    live.snapshot_in_flight = False
                    if not live.snapshot_scheduled:  # back off one interval
                        self._schedule_snapshot(live, retry_at)
                if not self._snapshot_queue:
                    self._snapshots_idle.set()
                continue
            self.metrics.snapshot_duration.observe(time.perf_counter() - started)
            next_at = time.monotonic() + self.settings.snapshot_interval_s
            for live, version, _ in batch:
                live.snapshot_version = max(live.snapshot_version, version)
                live.snapshot_in_flight = False
                if live.durable_version > live.snapshot_version and not live.snapshot_scheduled:
                    self._schedule_snapshot(live, next_at)
            if not self._snapshot_queue:
                self._snapshots_idle.set()
