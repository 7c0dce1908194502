"""Players, snapshots and state recovery."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg
import msgspec

from protocol.model import AnyEffect, PlayerState
from sim.apply import apply
from sim.state import decode_state, new_player, share_strings

_effect_decoder = msgspec.msgpack.Decoder(AnyEffect)

ITEM_ID_BLOCK = 1000


class CorruptJournalError(RuntimeError):
    """A player's journal has a gap or does not continue its snapshot: operator action."""


async def get_or_create_player(conn: asyncpg.Connection, name: str) -> int:
    row = await conn.fetchval(
        """
        INSERT INTO players (name) VALUES ($1)
        ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name
        RETURNING id
        """,
        name,
    )
    return int(row)


async def player_name(conn: asyncpg.Connection, player_id: int) -> str | None:
    name = await conn.fetchval("SELECT name FROM players WHERE id = $1", player_id)
    return None if name is None else str(name)


async def allocate_item_block(conn: asyncpg.Connection) -> range:
    """A fresh block of ``ITEM_ID_BLOCK`` globally unique item ids."""
    block = int(await conn.fetchval("SELECT nextval('item_id_blocks')"))
    return range(block * ITEM_ID_BLOCK, (block + 1) * ITEM_ID_BLOCK)


@dataclass(frozen=True)
class Loaded:
    state: PlayerState
    snapshot_version: int


async def load_player(conn: asyncpg.Connection, player_id: int, name: str) -> Loaded:
    """Latest snapshot + the journal rows above it, applied in order.

    Raises:
        CorruptJournalError: the journal skips a version.
    """
    snap = await conn.fetchrow(
        "SELECT version, state FROM snapshots WHERE player_id = $1", player_id
    )
    if snap is None:
        state, snapshot_version = new_player(player_id, name), 0
    else:
        state, snapshot_version = decode_state(snap["state"]), int(snap["version"])
    rows = await conn.fetch(
        "SELECT version, effect FROM journal WHERE player_id = $1 AND version > $2 "
        "ORDER BY version",
        player_id,
        state.version,
    )
    for row in rows:
        if row["version"] != state.version + 1:
            raise CorruptJournalError(
                f"player {player_id}: journal jumps from version {state.version} "
                f"to {row['version']}"
            )
        apply(state, _effect_decoder.decode(row["effect"]))
    share_strings(state)
    return Loaded(state, snapshot_version)


async def effects_since(
    conn: asyncpg.Connection, player_id: int, after_version: int, up_to: int
) -> list[AnyEffect] | None:
    """Effects with versions ``after_version+1 .. up_to``, or None if any were pruned."""
    rows = await conn.fetch(
        "SELECT version, effect FROM journal WHERE player_id = $1 AND version > $2 "
        "AND version <= $3 ORDER BY version",
        player_id,
        after_version,
        up_to,
    )
    if len(rows) != up_to - after_version or (rows and rows[0]["version"] != after_version + 1):
        return None
    return [_effect_decoder.decode(r["effect"]) for r in rows]


async def save_snapshots(
    conn: asyncpg.Connection,
    snapshots: Sequence[tuple[int, int, bytes]],
    keep_journal: int,
) -> None:
    """Upsert ``(player_id, version, state)`` snapshots and prune journal rows they cover,
    keeping the newest ``keep_journal`` versions below each snapshot for resume."""
    if not snapshots:
        return
    ids = [s[0] for s in snapshots]
    versions = [s[1] for s in snapshots]
    states = [s[2] for s in snapshots]
    async with conn.transaction():
        await conn.execute(
            """
            INSERT INTO snapshots (player_id, version, state, taken_at)
            SELECT p, v, s, now() FROM unnest($1::bigint[], $2::bigint[], $3::bytea[]) AS u(p, v, s)
            ON CONFLICT (player_id) DO UPDATE
                SET version = EXCLUDED.version, state = EXCLUDED.state, taken_at = now()
                WHERE snapshots.version < EXCLUDED.version
            """,
            ids,
            versions,
            states,
        )
        await conn.execute(
            """
            DELETE FROM journal j USING unnest($1::bigint[], $2::bigint[]) AS u(p, v)
            WHERE j.player_id = u.p AND j.version <= u.v - $3
            """,
            ids,
            versions,
            keep_journal,
        )
