"""Inventory and item handlers: each runs a pure rule from ``sim.rules`` through the hub
(decide, apply, journal, reply when durable). Stats and admin grants live here too: they
read or change the same player state."""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING

import asyncpg

from persistence.players import player_name
from persistence.repos import accounts as accounts_repo
from protocol.base import Request
from protocol.errors import NotFoundError, UnavailableError
from protocol.messages import (
    DestroyItem,
    EffectsReply,
    EquipItem,
    GetStats,
    GrantItem,
    GrantItemReply,
    MergeStacks,
    MoveItem,
    SortCompartment,
    SplitStack,
    StatsReply,
    UnequipItem,
    UseItem,
)
from protocol.model import AnyEffect, ItemCreated
from server.dispatch import Done, HandlerMap, requires, requires_sync
from server.domains.accounts.rules import Permission as P  # noqa: N817
from sim.rules import CREATES_ITEMS, RULES

if TYPE_CHECKING:
    from server.session import Session

log = logging.getLogger("gearhall.inventory")


async def run_rule(session: Session, msg: Request) -> EffectsReply:
    """A player intent that creates items (ids are reserved first, which may wait for the
    database): its rule decides, the hub applies and journals, the reply waits until the
    effects are durable.

    Raises: whatever the intent's rule raises (see ``sim/inventory.py``); UnavailableError
    while shutting down.
    """
    live = session.player
    assert live is not None  # dispatch refuses these before hello
    version, effects = await session.app.hub.run_intent(live, msg, RULES[type(msg)], session)
    return EffectsReply(rid=msg.rid, version=version, effects=effects)


def run_rule_sync(session: Session, msg: Request, done: Done) -> EffectsReply | None:
    """Any other player intent, the hot path (a :data:`server.dispatch.SyncHandler`): the
    rule decides and the hub applies and journals at once; ``done`` gets the reply once the
    effects are durable. An intent that changes nothing is answered at once.

    Raises: whatever the intent's rule raises (see ``sim/equipment.py``,
    ``sim/inventory.py``, ``sim/use.py``); UnavailableError while shutting down.
    """
    live = session.player
    assert live is not None  # dispatch refuses these before hello
    hub = session.app.hub
    effects, tick = hub.decide(live, msg, RULES[type(msg)])
    if not effects:
        return EffectsReply(rid=msg.rid, version=live.state.version, effects=effects)
    then = functools.partial(_durable, done, msg.rid, effects)
    hub.commit_then(live, effects, session, tick, then)
    return None


def _durable(done: Done, rid: int, effects: list[AnyEffect], version: int) -> None:
    done(EffectsReply(rid=rid, version=version, effects=effects))


async def get_stats(session: Session, msg: GetStats) -> StatsReply:
    """Stats as of now; sent once the version they describe is durable."""
    live = session.player
    assert live is not None
    hub = session.app.hub
    state = live.state
    stats = hub.stats.get(state, session.app.tick() * hub.tick_ms)
    version, health, level = state.version, state.health, state.level
    await hub.wait_durable(live, version)
    return StatsReply(
        rid=msg.rid,
        stats=stats.values,
        carried_weight=stats.carried_weight,
        carry_capacity=stats.carry_capacity,
        encumbrance=stats.encumbrance,
        movement_speed=stats.movement_speed,
        health=health,
        level=level,
        version=version,
    )


async def grant_item(session: Session, msg: GrantItem) -> GrantItemReply:
    """Admin/service grant to any player, online or not; idempotent by key.

    Raises:
        NotFoundError: no such player or template.
        plus what ``sim.inventory.grant_item`` raises.
    """
    app = session.app
    try:
        async with app.pool.acquire() as conn:
            name = await player_name(conn, msg.player_id)
        if name is None:
            raise NotFoundError(f"no player {msg.player_id}", player_id=msg.player_id)
        target = await app.hub.acquire(msg.player_id, name)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise UnavailableError("player store unavailable", reason=type(exc).__name__) from None
    app.hub.pin(target)  # not evicted while the grant awaits ids or durability
    try:
        # origin None: the reply carries no effects, so every session of the target — the
        # granting one too, when an admin grants to themself — gets them as a delta.
        version, effects = await app.hub.run_intent(target, msg, RULES[GrantItem], None)
        if not effects:  # a replay: answer with the first grant's version
            version = target.state.grants[msg.idempotency_key]
            await app.hub.wait_durable(target, version)
    finally:
        app.hub.unpin(target)
    item_ids = [e.item.id for e in effects if isinstance(e, ItemCreated)]
    if effects:  # staff and services moving value are on record (a replay added nothing)
        await _audit_grant(session, msg, item_ids)
    return GrantItemReply(
        rid=msg.rid,
        player_id=msg.player_id,
        version=version,
        item_ids=item_ids,
        replayed=not effects,
    )


async def _audit_grant(session: Session, msg: GrantItem, item_ids: list[int]) -> None:
    """The audit entry of a grant, after it is durable. Best effort: the grant itself is
    acknowledged by the journal; a failed audit write is logged, not turned into an error
    for a grant that happened."""
    actor = session.principal
    assert actor is not None
    try:
        async with session.app.pool.acquire() as conn:
            await accounts_repo.audit(
                conn,
                "items_granted",
                **actor.audit_actor(),
                target_account_id=await accounts_repo.account_of_player(conn, msg.player_id),
                ip=session.client_ip,
                details={
                    "player_id": msg.player_id,
                    "template": msg.template,
                    "qty": msg.qty,
                    "item_ids": item_ids,
                    "idempotency_key": msg.idempotency_key,
                },
            )
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        log.exception("audit entry for grant %s not written", msg.idempotency_key)


INTENTS = (
    EquipItem, UnequipItem, MoveItem, SplitStack, MergeStacks, SortCompartment, DestroyItem,
    UseItem,
)  # fmt: skip
"""The player intents: a rule in ``sim.rules.RULES`` decides each."""

HANDLERS: HandlerMap = {
    **{
        intent: requires(P.GAME_PLAY, run_rule)
        if intent in CREATES_ITEMS  # ids are reserved first, which may wait
        else requires_sync(P.GAME_PLAY, run_rule_sync)
        for intent in INTENTS
    },
    GetStats: requires(P.GAME_PLAY, get_stats),
    GrantItem: requires(P.ITEMS_GRANT, grant_item),
}
