"""Players, snapshots and recovery against a real Postgres, and replay through the server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import msgspec
import pytest

from persistence.migrate import migrate
from persistence.players import (
    CorruptJournalError,
    effects_since,
    get_or_create_player,
    load_player,
    save_snapshots,
)
from protocol.model import (
    AnyEffect,
    CompartmentResized,
    ItemCreated,
    ItemInstance,
    ItemsMoved,
    Move,
    PlayerState,
)
from server.app import App
from server.config import Settings
from sim.apply import apply
from sim.state import encode_state, new_player
from tests.support.client import MSGPACK, Client

_encode = msgspec.msgpack.Encoder().encode


def chain(n: int) -> list[AnyEffect]:
    """``n`` valid effects in order: a backpack, three items created, one equipped, then one
    shuffled around the backpack."""
    effects: list[AnyEffect] = [CompartmentResized(compartment="backpack", size=24)]
    effects.extend(
        ItemCreated(item=ItemInstance(id=1000 + i, template="cloth_cap"), dst=("backpack", i))
        for i in range(3)
    )
    effects.append(
        ItemsMoved(reason="equip", moves=[Move(1000, ("backpack", 0), ("equipment", "head"))])
    )
    position = 1
    while len(effects) < n:
        target = 3 + len(effects) % 20  # free cells 3..22, never the one it is in
        effects.append(
            ItemsMoved(
                reason="move", moves=[Move(1001, ("backpack", position), ("backpack", target))]
            )
        )
        position = target
    return effects[:n]


@pytest.fixture
async def conn(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(dsn)
    await migrate(connection)
    yield connection
    await connection.close()


async def journal_rows(
    conn: asyncpg.Connection, player_id: int, effects: list[AnyEffect], versions: list[int]
) -> None:
    await conn.executemany(
        "INSERT INTO journal (player_id, version, tick, effect) VALUES ($1, $2, 0, $3)",
        [(player_id, v, _encode(effects[v - 1])) for v in versions],
    )


async def versions_in_journal(conn: asyncpg.Connection, player_id: int) -> list[int]:
    rows = await conn.fetch(
        "SELECT version FROM journal WHERE player_id = $1 ORDER BY version", player_id
    )
    return [r["version"] for r in rows]


def state_after(player_id: int, effects: list[AnyEffect], name: str = "p") -> bytes:
    state = new_player(player_id, name)
    for e in effects:
        apply(state, e)
    return encode_state(state)


async def test_new_player_loads_empty(conn: asyncpg.Connection) -> None:
    pid = await get_or_create_player(conn, "nobody")
    assert await get_or_create_player(conn, "nobody") == pid  # same name, same id
    loaded = await load_player(conn, pid, "nobody")
    assert loaded.snapshot_version == 0
    assert encode_state(loaded.state) == encode_state(new_player(pid, "nobody"))


async def test_load_is_snapshot_plus_journal_above_it(conn: asyncpg.Connection) -> None:
    pid = await get_or_create_player(conn, "p")
    effects = chain(5)
    await journal_rows(conn, pid, effects, [1, 2, 3, 4, 5])
    # The snapshot carries a mark the journal cannot produce, so using it is visible.
    await save_snapshots(conn, [(pid, 3, state_after(pid, effects[:3], "from-snapshot"))], 10)

    loaded = await load_player(conn, pid, "p")

    assert loaded.snapshot_version == 3
    assert loaded.state.version == 5
    assert loaded.state.name == "from-snapshot"
    assert encode_state(loaded.state) == state_after(pid, effects, "from-snapshot")


async def test_journal_alone_replays_from_version_zero(conn: asyncpg.Connection) -> None:
    pid = await get_or_create_player(conn, "p")
    effects = chain(7)
    await journal_rows(conn, pid, effects, list(range(1, 8)))
    loaded = await load_player(conn, pid, "p")
    assert loaded.snapshot_version == 0
    assert encode_state(loaded.state) == state_after(pid, effects)


async def test_save_snapshots_prunes_below_version_minus_keep(conn: asyncpg.Connection) -> None:
    pid = await get_or_create_player(conn, "p")
    other = await get_or_create_player(conn, "other")
    effects = chain(10)
    await journal_rows(conn, pid, effects, list(range(1, 11)))
    await journal_rows(conn, other, effects, list(range(1, 11)))

    await save_snapshots(conn, [(pid, 8, state_after(pid, effects[:8]))], 3)
    assert await versions_in_journal(conn, pid) == [6, 7, 8, 9, 10]  # > 8 - 3 kept
    assert await versions_in_journal(conn, other) == list(range(1, 11))  # not its snapshot

    await save_snapshots(conn, [(pid, 9, state_after(pid, effects[:9]))], 0)
    assert await versions_in_journal(conn, pid) == [10]
    # An older snapshot never replaces a newer one.
    await save_snapshots(conn, [(pid, 4, state_after(pid, effects[:4]))], 0)
    assert await conn.fetchval("SELECT version FROM snapshots WHERE player_id = $1", pid) == 9
    loaded = await load_player(conn, pid, "p")
    assert loaded.snapshot_version == 9
    assert encode_state(loaded.state) == state_after(pid, effects)


async def test_effects_since(conn: asyncpg.Connection) -> None:
    pid = await get_or_create_player(conn, "p")
    effects = chain(10)
    await journal_rows(conn, pid, effects, list(range(1, 11)))
    await save_snapshots(conn, [(pid, 8, state_after(pid, effects[:8]))], 3)  # keeps 6..10

    assert await effects_since(conn, pid, 5, 10) == effects[5:10]
    assert await effects_since(conn, pid, 7, 9) == effects[7:9]
    assert await effects_since(conn, pid, 10, 10) == []
    assert await effects_since(conn, pid, 4, 10) is None  # version 5 was pruned
    assert await effects_since(conn, pid, 0, 10) is None


async def test_gap_in_journal_is_corrupt(conn: asyncpg.Connection) -> None:
    pid = await get_or_create_player(conn, "p")
    effects = chain(5)
    await journal_rows(conn, pid, effects, [1, 2, 4, 5])
    with pytest.raises(CorruptJournalError, match="from version 2 to 4"):
        await load_player(conn, pid, "p")
    assert await effects_since(conn, pid, 1, 5) is None


async def test_journal_not_continuing_the_snapshot_is_corrupt(conn: asyncpg.Connection) -> None:
    pid = await get_or_create_player(conn, "p")
    effects = chain(6)
    await save_snapshots(conn, [(pid, 3, state_after(pid, effects[:3]))], 0)
    await journal_rows(conn, pid, effects, [5, 6])
    with pytest.raises(CorruptJournalError):
        await load_player(conn, pid, "p")


def state_bytes(welcome: dict[str, Any]) -> bytes:
    """The welcome's state in the canonical snapshot encoding (field and key order count)."""
    return encode_state(msgspec.convert(welcome["state"], PlayerState))


async def play(url: str, name: str) -> dict[str, Any]:
    """Drive a new player through equips, a move, a swap, an unequip, a healing potion, a
    training manual (XP, a skill level-up) and a granted elixir (a buff); return the last
    reply."""
    client = await Client.open(url, MSGPACK)
    admin = await Client.open(url, MSGPACK)
    try:
        welcome = await client.hello(name)
        await admin.request("session.hello", token="dev-admin:granter")
        grant = await admin.request(
            "admin.grant_item",
            player_id=welcome["player_id"],
            template="elixir_of_might",
            idempotency_key="restart-test-elixir",
        )
        assert grant["t"] == "admin.grant_item_reply", grant
        cells = welcome["state"]["compartments"]["backpack"]
        potion = welcome["state"]["compartments"]["belt"][0]
        steps: list[tuple[str, dict[str, Any]]] = [
            ("inventory.equip_item", {"item_id": cells[0], "slot": "head"}),
            ("inventory.move_item", {"item_id": cells[7], "compartment": "backpack", "index": 20}),
            ("inventory.equip_item", {"item_id": cells[5], "slot": "main_hand"}),  # a cooldown
            ("inventory.equip_item", {"item_id": cells[3], "slot": "ring1"}),
            ("inventory.equip_item", {"item_id": cells[4], "slot": "ring1"}),  # a swap
            ("inventory.unequip_item", {"slot": "head", "index": 23}),
            ("inventory.use_item", {"item_id": potion}),  # heal, alchemy XP, group cooldown
            ("inventory.use_item", {"item_id": cells[8]}),  # manual: a charge, a level-up
            ("inventory.use_item", {"item_id": grant["item_ids"][0]}),  # a buff
        ]
        for t, fields in steps:
            reply = await client.request(t, **fields)
            assert reply["t"] == "effects", (t, reply)
        return reply
    finally:
        await client.close()
        await admin.close()


@pytest.mark.parametrize("drop_snapshot", [False, True], ids=["snapshot", "journal-only"])
async def test_restart_replays_to_the_same_state(
    app: App, url: str, make_settings: Callable[..., Settings], dsn: str, drop_snapshot: bool
) -> None:
    reply = await play(url, "replayer")
    observer = await Client.open(url, MSGPACK)
    before = await observer.hello("replayer")
    assert before["version"] == reply["version"]
    await observer.close()
    state = before["state"]
    # What the restart must bring back is really there.
    assert set(state["cooldowns"]) == {
        "healing_potion",
        "item:training_manual",
        "item:elixir_of_might",
        "equip:main_hand",
    }, state["cooldowns"]
    assert state["skills"] == {"alchemy": 5, "swordsmanship": 150}
    assert state["skill_levels"] == {"swordsmanship": 2}
    assert state["health"] == 100
    assert list(state["active_effects"]) == ["elixir_of_might"]
    assert sorted(state["equipment"]) == ["main_hand", "ring1"]

    await app.stop()  # graceful: flushes the journal and snapshots everyone

    conn = await asyncpg.connect(dsn)
    try:
        snap = await conn.fetchval(
            "SELECT version FROM snapshots WHERE player_id = $1", before["player_id"]
        )
        assert snap == before["version"]
        if drop_snapshot:
            await conn.execute("DELETE FROM snapshots")
    finally:
        await conn.close()

    restarted = App(make_settings())
    await restarted.start()
    try:
        again = await Client.open(f"ws://127.0.0.1:{restarted.port}/", MSGPACK)
        after = await again.hello("replayer")
        assert after["player_id"] == before["player_id"]
        assert after["version"] == before["version"]
        assert state_bytes(after) == state_bytes(before)
        await again.close()
    finally:
        await restarted.stop()
