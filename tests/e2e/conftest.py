"""E2E support: server subprocesses that never outlive a test, and a closed-loop workload that
remembers exactly what each player was acknowledged.

The model (:class:`Player`) is the client's view of the durability contract (DESIGN.md §4):
``base`` is the first full state a welcome showed, ``history`` every effect acknowledged after
it, in order, and ``state`` their replay with the protocol's client mirror (``protocol.mirror``:
effects decoded from the reply dicts, applied to the welcome's state — never the server's own
code path). Each player has one connection and at most one request in flight (``inflight``).
After a crash the database may hold that request's effects — all of them, exactly as the rule
makes them — or none; anything else is a bug.

The workload covers every player intent the kit allows: equip (with swaps and the weapon
slots' equip cooldowns), unequip, move and swap in the backpack and the consumables-only belt,
split, merge, sort, and use (potions with a shared cooldown group, bread, the training manual's
charges, XP and level-ups, after which the iron helm's level requirement is met).
"""

from __future__ import annotations

import asyncio
import collections
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import pytest
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from protocol.errors import GearhallError
from protocol.messages import (
    ClientMessage,
    EquipItem,
    MergeStacks,
    MoveItem,
    SortCompartment,
    SplitStack,
    UnequipItem,
    UseItem,
)
from protocol.mirror import apply_all, decode_state, encode_state
from protocol.model import AnyEffect, ItemCreated, PlayerState
from sim.rules import RULES, RuleContext, grant_starter_kit
from sim.templates import DEFAULT_TEMPLATES, Catalog, load_templates
from tests.support.client import JSON, MSGPACK, Client
from tests.support.proc import ServerProcess

TICK_HZ = 20
TICK_MS = 1000 // TICK_HZ
CATALOG: Catalog = load_templates(DEFAULT_TEMPLATES)  # what the server loads by default
BACKPACK = "backpack"
BELT = "belt"
# Every e2e server: no rate limiting (closed loops exceed the default on a fast machine and
# the point here is durability), and a fixed tick so the model computes the same cooldowns.
BASE_ENV = {"GEARHALL_RATE_LIMIT_PER_S": "1000000", "GEARHALL_RATE_LIMIT_BURST": "1000000"}
WAIT_S = 20.0  # the bound on every wait for an event; reaching it fails the test

# Which kit items the workload puts where (the short sword fits either hand).
GEAR: dict[str, tuple[str, ...]] = {
    "head": ("cloth_cap", "iron_helm"),
    "chest": ("leather_vest",),
    "ring1": ("copper_ring",),
    "ring2": ("copper_ring",),
    "main_hand": ("short_sword",),
    "off_hand": ("short_sword", "buckler"),
}
# Intents whose in-flight effects the model can recompute after a crash.
WORKLOAD_INTENTS = (
    EquipItem,
    UnequipItem,
    MoveItem,
    SplitStack,
    MergeStacks,
    SortCompartment,
    UseItem,
)

_effect_decoder = msgspec.msgpack.Decoder(AnyEffect)


def new_player(player_id: int, name: str) -> PlayerState:
    """Version 0: what every player's history starts from."""
    return PlayerState(player_id=player_id, name=name)


def copy_state(state: PlayerState) -> PlayerState:
    return decode_state(encode_state(state))


def to_state(wire: dict[str, Any]) -> PlayerState:
    # JSON objects have string keys; ``items`` is keyed by int.
    return msgspec.convert(wire, PlayerState, str_keys=True)


def to_effects(wire: Iterable[dict[str, Any]]) -> list[AnyEffect]:
    return [msgspec.convert(e, AnyEffect) for e in wire]


def kit_state(player_id: int, name: str, item_ids: list[int]) -> PlayerState:
    """A new player after the starter kit with these ids, as the rules make it."""
    ctx = RuleContext(tick=0, tick_ms=TICK_MS, catalog=CATALOG)
    player = new_player(player_id, name)
    return apply_all(player, grant_starter_kit(player, ctx, item_ids))


KIT_VERSION = kit_state(0, "kit", list(range(1, len(CATALOG.starter_kit) + 1))).version


def same_state(a: PlayerState, b: PlayerState) -> bool:
    """Byte-identical, as the mirror contract says (``encode_state``), not merely equal."""
    return encode_state(a) == encode_state(b)


# --- the database's side ----------------------------------------------------------------------


@dataclass
class JournalRow:
    version: int
    tick: int
    effect: AnyEffect


@dataclass
class Facts:
    """What Postgres holds for one player while no server runs."""

    player_id: int | None
    rows: list[JournalRow]
    snapshot_version: int | None
    snapshot: PlayerState | None

    @property
    def version(self) -> int:
        top = self.rows[-1].version if self.rows else 0
        return max(top, self.snapshot_version or 0)

    def recovered(self, name: str) -> PlayerState:
        """Snapshot + journal above it, replayed here with the pure sim (not the server's
        loader), checking the journal is contiguous and continues the snapshot."""
        versions = [r.version for r in self.rows]
        if versions:
            assert versions == list(range(versions[0], versions[-1] + 1)), (
                f"{name}: journal has gaps: {versions}"
            )
        if self.snapshot is not None:
            assert self.snapshot.version == self.snapshot_version
            state = copy_state(self.snapshot)
        else:
            state = new_player(self.player_id or 0, name)
        above = [r for r in self.rows if r.version > state.version]
        if above:
            assert above[0].version == state.version + 1, (
                f"{name}: journal starts at {above[0].version}, state is at {state.version}"
            )
        assert not self.rows or self.rows[-1].version >= state.version, (
            f"{name}: snapshot v{state.version} is ahead of the journal (v{self.rows[-1].version})"
        )
        return apply_all(state, (r.effect for r in above))


async def wait_backends_gone(dsn: str) -> None:
    """Wait until no other session uses the database: a killed server's backends may still be
    finishing (committing) a statement it sent, and the facts must include that."""
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + WAIT_S
        while await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ):
            assert time.monotonic() < deadline, "a dead server's backends never went away"
            await asyncio.sleep(0.02)  # polling: Postgres has no "backend exited" event
    finally:
        await conn.close()


async def read_facts(dsn: str, names: list[str]) -> dict[str, Facts]:
    conn = await asyncpg.connect(dsn)
    try:
        ids = {
            r["name"]: int(r["id"])
            for r in await conn.fetch("SELECT id, name FROM players WHERE name = any($1)", names)
        }
        rows: dict[int, list[JournalRow]] = collections.defaultdict(list)
        for r in await conn.fetch(
            "SELECT player_id, version, tick, effect FROM journal WHERE player_id = any($1) "
            "ORDER BY player_id, version",
            list(ids.values()),
        ):
            rows[r["player_id"]].append(
                JournalRow(r["version"], r["tick"], _effect_decoder.decode(r["effect"]))
            )
        snaps = {
            r["player_id"]: (int(r["version"]), decode_state(r["state"]))
            for r in await conn.fetch(
                "SELECT player_id, version, state FROM snapshots WHERE player_id = any($1)",
                list(ids.values()),
            )
        }
    finally:
        await conn.close()
    facts = {}
    for name in names:
        pid = ids.get(name)
        snap = snaps.get(pid) if pid is not None else None
        facts[name] = Facts(
            player_id=pid,
            rows=rows.get(pid, []) if pid is not None else [],
            snapshot_version=snap[0] if snap else None,
            snapshot=snap[1] if snap else None,
        )
    return facts


# --- the client's side ------------------------------------------------------------------------


class Phase:
    """Shared by the players of one server lifetime: what the test did to the server, and
    events the test waits on (welcomes, acknowledgements) without sleeping."""

    def __init__(self) -> None:
        self.killed = False  # SIGKILL sent: abnormal closes and refused connects are expected
        self.stopping = False  # shutdown requested: `unavailable` and 1001 are expected
        self.welcomed = 0
        self.on_welcome: Callable[[int], None] | None = None
        # called when a client first sees the server draining (`unavailable` or a close)
        self.on_draining: Callable[[], None] | None = None
        self._changed = asyncio.Event()

    def changed(self) -> None:
        self._changed.set()

    async def wait_until(self, predicate: Callable[[], bool], what: str) -> None:
        try:
            async with asyncio.timeout(WAIT_S):
                while not predicate():
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"timed out after {WAIT_S}s waiting for {what}") from None


@dataclass
class Player:
    name: str
    subprotocol: str
    rng: random.Random
    player_id: int | None = None
    base: PlayerState | None = None  # the first welcome's full state
    history: list[AnyEffect] = field(default_factory=list)  # acknowledged since base
    state: PlayerState | None = None  # base + history: the last acknowledged state
    inflight: dict[str, Any] | None = None  # sent, not answered (one at most)
    kit: list[AnyEffect] | None = None  # a starter kit found durable before any welcome
    acks: int = 0
    changed_by: collections.Counter[str] = field(default_factory=collections.Counter)  # by tag
    # in-flight requests found after a crash: fully durable / not durable at all
    inflight_durable: int = 0
    inflight_lost: int = 0
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    close_code: int | None = None
    after_stop: list[str] = field(default_factory=list)  # outcomes of requests sent then

    @property
    def version(self) -> int:
        return self.state.version if self.state is not None else 0

    # --- choosing the next request from the acknowledged state ------------------------------
    #
    # Every request is valid in the acknowledged state (the only connection of this player
    # sees every change), so the only error a reply may carry is `cooldown_active`.

    def next_request(self) -> dict[str, Any]:
        choices: list[tuple[float, Callable[[], dict[str, Any] | None]]] = [
            (0.25, self._gear),
            (0.20, self._move),
            (0.15, self._use),
            (0.15, self._split),
            (0.15, self._merge),
            (0.10, self._sort),
        ]
        weights = [weight for weight, _ in choices]
        [(_, choose)] = self.rng.choices(choices, weights)
        return choose() or self._move() or self._sort()

    def _where(self) -> dict[int, tuple[str, int]]:
        """Compartment cell of every item in the backpack or the belt."""
        assert self.state is not None
        return {
            item_id: (name, index)
            for name in (BACKPACK, BELT)
            for index, item_id in enumerate(self.state.compartments[name])
            if item_id is not None
        }

    def _template(self, item_id: int) -> str:
        assert self.state is not None
        return self.state.items[item_id].template

    def _fits(self, compartment: str, item_id: int | None) -> bool:
        """The belt takes only consumables; the backpack anything."""
        if item_id is None or compartment == BACKPACK:
            return True
        return CATALOG.templates[self._template(item_id)].category == "consumable"

    def _gear(self) -> dict[str, Any] | None:
        state = self.state
        assert state is not None
        slot = self.rng.choice(list(GEAR))
        candidates = [
            item_id
            for item_id, (name, _) in self._where().items()
            if name == BACKPACK
            and self._template(item_id) in GEAR[slot]
            and self._may_wear(item_id)
        ]
        occupied = slot in state.equipment
        if occupied and (not candidates or self.rng.random() < 0.4):
            return {"t": "inventory.unequip_item", "slot": slot}
        if candidates:
            item_id = self.rng.choice(candidates)
            return {"t": "inventory.equip_item", "item_id": item_id, "slot": slot}
        return None

    def _may_wear(self, item_id: int) -> bool:
        state = self.state
        assert state is not None
        req = CATALOG.templates[self._template(item_id)].requires
        return state.level >= req.level and all(
            state.skill_levels.get(skill, 1) >= level for skill, level in req.skills.items()
        )

    def _move(self) -> dict[str, Any] | None:
        state = self.state
        assert state is not None
        where = self._where()
        if not where:
            return None
        item_id = self.rng.choice(list(where))
        src, _ = where[item_id]
        dst = self.rng.choice([BACKPACK, BELT]) if self._fits(BELT, item_id) else BACKPACK
        index = self.rng.randrange(len(state.compartments[dst]))
        if not self._fits(src, state.compartments[dst][index]):  # the swap would not fit
            dst, index = src, self.rng.randrange(len(state.compartments[src]))
        # (a move onto its own cell is a valid no-op: no effects)
        return {"t": "inventory.move_item", "item_id": item_id, "compartment": dst, "index": index}

    def _use(self) -> dict[str, Any] | None:
        usable = [i for i in self._where() if CATALOG.templates[self._template(i)].use is not None]
        if not usable:
            return None
        return {"t": "inventory.use_item", "item_id": self.rng.choice(usable)}

    def _split(self) -> dict[str, Any] | None:
        state = self.state
        assert state is not None
        where = self._where()
        stacks = [i for i in where if state.items[i].qty > 1]
        if not stacks:
            return None
        item_id = self.rng.choice(stacks)
        src, _ = where[item_id]
        targets = [
            (name, index)
            for name in dict.fromkeys((src, BACKPACK))
            for index, cell in enumerate(state.compartments[name])
            if cell is None
        ]
        if not targets:
            return None
        name, index = self.rng.choice(targets)
        return {
            "t": "inventory.split_stack",
            "item_id": item_id,
            "qty": self.rng.randint(1, state.items[item_id].qty - 1),
            "compartment": name,
            "index": index,
        }

    def _merge(self) -> dict[str, Any] | None:
        state = self.state
        assert state is not None
        items = state.items
        pairs = [
            (a, b)
            for a in self._where()
            for b in self._where()
            if a != b
            and items[a].template == items[b].template
            and items[a].bound == items[b].bound
            and items[b].qty < CATALOG.templates[items[b].template].max_stack
        ]
        if not pairs:
            return None
        item_id, into = self.rng.choice(pairs)
        return {"t": "inventory.merge_stacks", "item_id": item_id, "into_item_id": into}

    def _sort(self) -> dict[str, Any]:
        return {"t": "inventory.sort_compartment", "compartment": self.rng.choice([BACKPACK, BELT])}

    def _on_reply(self, reply: dict[str, Any], phase: Phase) -> None:
        assert self.state is not None
        if reply["t"] == "effects":
            effects = to_effects(reply["effects"])
            assert reply["version"] == self.state.version + len(effects), (
                f"{self.name}: reply v{reply['version']} after v{self.state.version} "
                f"with {len(effects)} effects"
            )
            apply_all(self.state, effects)
            self.history.extend(effects)
            self.acks += 1
            if phase.stopping:
                self.after_stop.append("effects")
            return
        assert reply["t"] == "error", reply
        code = reply["code"]
        self.errors[code] += 1
        if code == "unavailable" and phase.stopping:
            self.after_stop.append("unavailable")
            if phase.on_draining is not None:
                phase.on_draining()
            return
        assert code == "cooldown_active", f"{self.name}: unexpected error {reply}"

    # --- one connection's life ----------------------------------------------------------------

    async def run(self, url: str, phase: Phase, max_acks: int | None = None) -> None:
        """Connect, hello, check the welcome against the model, then loop until the
        connection ends (or ``max_acks`` acknowledgements in this run)."""
        client = await self.connect(url, phase)
        if client is None:
            return
        try:
            acks = self.acks
            while max_acks is None or self.acks - acks < max_acks:
                if not await self.step(client, phase):
                    return
        finally:
            await client.close()

    async def connect(self, url: str, phase: Phase) -> Client | None:
        """A connection whose welcome matched the model, or None if the server went away."""
        try:
            client = await Client.open(url, self.subprotocol, open_timeout=WAIT_S)
        except (OSError, InvalidHandshake, ConnectionClosed, TimeoutError):
            assert phase.killed, f"{self.name}: could not connect to a live server"
            return None
        try:
            welcome = await client.hello(self.name)
            assert welcome["t"] == "session.welcome", welcome
            self.check_welcome(welcome)
        except ConnectionClosed as exc:
            await client.close()
            self._closed(exc, phase)
            return None
        except BaseException:
            await client.close()
            raise
        phase.welcomed += 1
        phase.changed()
        if phase.on_welcome is not None:
            phase.on_welcome(phase.welcomed)
        return client

    async def step(self, client: Client, phase: Phase) -> bool:
        """One request and its reply; False once the connection is closed."""
        msg = self.next_request()
        self.inflight = msg
        try:
            reply = await client.request(**msg)
        except ConnectionClosed as exc:
            if phase.stopping:
                self.after_stop.append("closed")
            self._closed(exc, phase)
            return False
        self.inflight = None
        self._on_reply(reply, phase)
        if reply.get("effects"):
            self.changed_by[msg["t"]] += 1
        phase.changed()
        if reply.get("code") == "unavailable":
            # A client told the server is going away stops asking and waits for the close,
            # which must follow; nothing else may arrive meanwhile.
            try:
                extra = await client.recv()
            except ConnectionClosed as exc:
                self._closed(exc, phase)
                return False
            raise AssertionError(f"{self.name}: {extra} after `unavailable`")
        return True

    def _closed(self, exc: ConnectionClosed, phase: Phase) -> None:
        self.close_code = exc.rcvd.code if exc.rcvd is not None else None
        assert phase.killed or phase.stopping, f"{self.name}: connection lost: {exc!r}"
        if phase.stopping and phase.on_draining is not None:
            phase.on_draining()

    def check_welcome(self, welcome: dict[str, Any]) -> None:
        """The welcome shows exactly the modelled state (after :meth:`reconcile`), byte for
        byte; a new player's first welcome shows exactly the starter kit."""
        assert welcome["resumed"] is False
        shown = to_state(welcome["state"])
        assert welcome["version"] == shown.version
        self.player_id = welcome["player_id"]
        if self.base is None:
            assert shown.version == KIT_VERSION, f"{self.name}: new player at v{shown.version}"
            used: collections.Counter[str] = collections.Counter()
            kit_ids = []
            for entry in CATALOG.starter_kit:
                item_id = shown.compartments[entry.compartment][used[entry.compartment]]
                assert item_id is not None, f"{self.name}: kit item {entry} missing: {shown}"
                used[entry.compartment] += 1
                kit_ids.append(item_id)
            expected = kit_state(shown.player_id, self.name, kit_ids)
            assert same_state(shown, expected), f"{self.name}: kit {shown}\nexpected {expected}"
            if self.kit is not None:  # the kit was durable before this welcome
                durable = apply_all(new_player(shown.player_id, self.name), self.kit)
                assert same_state(shown, durable), f"{self.name}: {shown}\nkit was {durable}"
            self.base, self.state, self.kit = copy_state(shown), shown, None
            return
        assert self.state is not None
        assert same_state(shown, self.state), (
            f"{self.name}: welcome shows v{shown.version}, the model is at v{self.version}\n"
            f"shown: {shown}\nmodel: {self.state}"
        )

    # --- after the server died ----------------------------------------------------------------

    def reconcile(self, facts: Facts, *, graceful: bool) -> None:
        """Check what Postgres holds against the model and adopt the in-flight request's
        effects if (all of) they were committed.

        Crash: the durable version is the last acknowledged one, or that plus every effect
        of the one request in flight, exactly as its rule makes them. Graceful: exactly the
        last acknowledged one.
        """
        recovered = facts.recovered(self.name)
        if self.base is None:  # never welcomed: the starter kit is all or nothing
            assert facts.version in (0, KIT_VERSION), f"{self.name}: partial kit v{facts.version}"
            self.kit = [r.effect for r in facts.rows] if facts.version else None
            return
        assert self.state is not None
        acked = self.state.version
        assert facts.version >= acked, (
            f"{self.name}: acknowledged v{acked} but Postgres holds v{facts.version}"
        )
        base_version = self.base.version
        for row in facts.rows:  # acknowledged effects are journaled as acknowledged
            if base_version < row.version <= acked:
                assert row.effect == self.history[row.version - base_version - 1], (
                    f"{self.name}: journal v{row.version} differs from the acknowledged effect"
                )
        extra = [r for r in facts.rows if r.version > acked]
        if extra:
            assert not graceful, (
                f"{self.name}: graceful shutdown left v{facts.version} durable but only "
                f"v{acked} acknowledged (unanswered effects {[r.effect for r in extra]})"
            )
            assert self.inflight is not None, (
                f"{self.name}: v{acked + 1}..v{facts.version} durable with no request in flight"
            )
            effects = [r.effect for r in extra]
            assert effects in self._possible_effects(extra), (
                f"{self.name}: journal after v{acked} holds {effects}, which is not the whole "
                f"effect list of the in-flight request {self.inflight}"
            )
            apply_all(self.state, effects)
            self.history.extend(effects)
            self.inflight_durable += 1
        elif self.inflight is not None:
            self.inflight_lost += 1
        assert same_state(recovered, self.state), (
            f"{self.name}: Postgres recovers to {recovered}\nthe model says {self.state}"
        )
        if facts.snapshot is not None:  # a checkpoint is a state the model passed through
            assert same_state(facts.snapshot, self.state_at(facts.snapshot.version)), (
                f"{self.name}: snapshot v{facts.snapshot.version} is no state the model passed"
            )
        self.inflight = None

    def _possible_effects(self, journaled: list[JournalRow]) -> list[list[AnyEffect]]:
        """The effect lists the in-flight request's rule makes at the tick it ran: the one
        journaled, or one earlier (the rule's context and the journal read the clock apart).
        An item the request created (a split) has the id the server chose: the rule is given
        that id, and must then make exactly the journaled effects."""
        assert self.inflight is not None and self.state is not None
        intent = msgspec.convert(self.inflight | {"rid": 0}, ClientMessage)
        assert isinstance(intent, WORKLOAD_INTENTS), intent
        created = [r.effect.item.id for r in journaled if isinstance(r.effect, ItemCreated)]
        if created:
            assert created[0] not in self.state.items, f"{self.name}: id {created[0]} reused"
        rule = RULES[type(intent)]
        out = []
        for tick in (journaled[0].tick, journaled[0].tick - 1):
            ctx = RuleContext(
                tick=tick,
                tick_ms=TICK_MS,
                catalog=CATALOG,
                next_item_id=created[0] if created else 0,
            )
            try:
                out.append(rule(copy_state(self.state), intent, ctx))
            except GearhallError:  # e.g. the cooldown still ran at that tick: not a candidate
                continue
        return out

    def state_at(self, version: int) -> PlayerState:
        assert self.base is not None
        steps = version - self.base.version
        assert 0 <= steps <= len(self.history), f"{self.name}: no modelled state at v{version}"
        return apply_all(copy_state(self.base), self.history[:steps])


def make_players(names: list[str], seed: int) -> list[Player]:
    """Half JSON, half MessagePack; each with its own seeded choice of requests."""
    return [
        Player(name, (JSON, MSGPACK)[i % 2], random.Random(f"{seed}:{name}"))
        for i, name in enumerate(names)
    ]


async def run_all(runs: Sequence[Awaitable[None]]) -> None:
    """Run player loops to their end; the first failure is raised (after all finished)."""
    async with asyncio.timeout(WAIT_S):
        results = await asyncio.gather(*runs, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


Spawn = Callable[..., Awaitable[ServerProcess]]


@pytest.fixture
async def spawn(tmp_path: Path, dsn: str) -> AsyncIterator[Spawn]:
    """Start ``gearhall serve`` subprocesses on the test's database; teardown SIGKILLs any
    still running, so a failing test never leaks a server."""
    started: list[ServerProcess] = []

    async def start(**env: str) -> ServerProcess:
        proc = ServerProcess(dsn, tmp_path / "server.log", {**BASE_ENV, **env})
        started.append(proc)
        await proc.start(tick_hz=TICK_HZ)
        return proc

    try:
        yield start
    finally:
        for proc in started:
            await proc.kill()
