"""Inventory handlers: equip, unequip, move — each a pure rule run by the hub."""

from __future__ import annotations

from typing import TYPE_CHECKING

from protocol.messages import EffectsReply, EquipItem, MoveItem, Request, UnequipItem
from server.dispatch import HandlerMap
from sim import rules

if TYPE_CHECKING:
    from server.session import Session


async def _run(session: Session, msg: Request, rule: rules.Rule[Request]) -> EffectsReply:
    live = session.player
    assert live is not None  # dispatch refuses these before hello
    version, effects = await session.app.hub.run_intent(live, msg, rule, session)
    return EffectsReply(rid=msg.rid, version=version, effects=effects)


async def equip_item(session: Session, msg: EquipItem) -> EffectsReply:
    """Raises: see :func:`sim.rules.equip_item`."""
    return await _run(session, msg, rules.equip_item)  # type: ignore[arg-type]


async def unequip_item(session: Session, msg: UnequipItem) -> EffectsReply:
    """Raises: see :func:`sim.rules.unequip_item`."""
    return await _run(session, msg, rules.unequip_item)  # type: ignore[arg-type]


async def move_item(session: Session, msg: MoveItem) -> EffectsReply:
    """Raises: see :func:`sim.rules.move_item`."""
    return await _run(session, msg, rules.move_item)  # type: ignore[arg-type]


HANDLERS: HandlerMap = {EquipItem: equip_item, UnequipItem: unequip_item, MoveItem: move_item}
