"""Pure rules: ``decide(player, intent, ctx) -> list[effect]`` or raise a ``GearhallError``.

A rule reads the state and the intent, validates, and describes the change as effects; it
never mutates anything, never reads a clock (``ctx.tick`` is the time), never does I/O.
Applying the returned effects in order with ``sim.apply.apply`` is the change.

Edge cases accepted on purpose:
- Moving an item onto its own cell is a no-op: no effects, no version bump, no error.
- An item equipped in one slot cannot be equipped into another directly (ring1 -> ring2):
  unequip first. The game-model issue adds slot-to-slot moves.
- An equip cooldown belongs to the slot (``equip:<slot>``) and blocks equip and unequip in
  that slot only; it is started by items whose template has ``equip_cooldown_ms > 0``.
- Cooldown deadlines are rounded up to a tick boundary and stored in milliseconds, so they
  mean the same after a restart at a different tick rate.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import msgspec

from protocol.errors import (
    BadRequestError,
    ConflictError,
    CooldownActiveError,
    InventoryFullError,
    ItemNotOwnedError,
    NotFoundError,
    SlotIncompatibleError,
)
from protocol.messages import EquipItem, MoveItem, Request, UnequipItem
from protocol.model import (
    AnyEffect,
    CooldownStarted,
    ItemCreated,
    ItemEquipped,
    ItemInstance,
    ItemMoved,
    ItemUnequipped,
    PlayerState,
)
from protocol.types import ItemId
from sim.state import first_free
from sim.templates import Catalog, ItemTemplate


class RuleContext(msgspec.Struct, frozen=True):
    """What a rule may know besides the state and the intent."""

    tick: int
    tick_ms: int
    catalog: Catalog


def ticks_for_ms(ms: int, tick_ms: int) -> int:
    """Whole ticks covering ``ms`` (rounded up, so a cooldown is never shorter than asked)."""
    return -(-ms // tick_ms)


def _locate(player: PlayerState, item_id: int) -> tuple[str, int] | None:
    for name, cells in player.compartments.items():
        for index, cell in enumerate(cells):
            if cell == item_id:
                return name, index
    return None


def _equipped_slot(player: PlayerState, item_id: int) -> str | None:
    for slot, occupant in player.equipment.items():
        if occupant == item_id:
            return slot
    return None


def _owned(player: PlayerState, item_id: int) -> ItemInstance:
    item = player.items.get(item_id)
    if item is None:
        raise ItemNotOwnedError(ItemId(item_id))
    return item


def _template(ctx: RuleContext, item: ItemInstance) -> ItemTemplate:
    tpl = ctx.catalog.get(item.template)
    if tpl is None:
        raise ConflictError(f"item {item.id} has no template {item.template!r}", item_id=item.id)
    return tpl


def _check_cooldown(player: PlayerState, group: str, ctx: RuleContext) -> None:
    ready_at_ms = player.cooldowns.get(group, 0)
    now_ms = ctx.tick * ctx.tick_ms
    if ready_at_ms > now_ms:
        raise CooldownActiveError(group, ready_at_ms - now_ms, ready_at_ms)


def _cells(player: PlayerState, compartment: str, index: int | None) -> list[int | None]:
    cells = player.compartments.get(compartment)
    if cells is None:
        raise NotFoundError(f"no compartment {compartment!r}", compartment=compartment)
    # Negative indexes too: the wire forbids them, but an effect holding one would index from
    # the end when applied and could never be decoded from the journal again.
    if index is not None and not 0 <= index < len(cells):
        raise BadRequestError(
            f"index {index} is outside {compartment!r}",
            compartment=compartment,
            index=index,
            size=len(cells),
        )
    return cells


def equip_item(player: PlayerState, intent: EquipItem, ctx: RuleContext) -> list[AnyEffect]:
    """Equip an item from a compartment; an occupied slot swaps in one effect.

    Raises:
        ItemNotOwnedError: the player has no such item.
        SlotIncompatibleError: the template does not fit ``slot``.
        ConflictError: the item is already equipped, or its template is gone.
        CooldownActiveError: the slot's equip cooldown is running.
    """
    item = _owned(player, intent.item_id)
    tpl = _template(ctx, item)
    if intent.slot not in tpl.slots:
        raise SlotIncompatibleError(ItemId(item.id), intent.slot, list(tpl.slots))
    equipped_in = _equipped_slot(player, item.id)
    if equipped_in is not None:
        raise ConflictError(
            f"item {item.id} is already equipped in {equipped_in!r}",
            item_id=item.id,
            slot=equipped_in,
        )
    group = f"equip:{intent.slot}"
    _check_cooldown(player, group, ctx)
    where = _locate(player, item.id)
    if where is None:  # owned items are always somewhere; a violated invariant, not input
        raise ConflictError(f"item {item.id} is not in a compartment", item_id=item.id)
    compartment, index = where
    effects: list[AnyEffect] = [
        ItemEquipped(
            item_id=item.id,
            slot=intent.slot,
            compartment=compartment,
            index=index,
            displaced=player.equipment.get(intent.slot),
        )
    ]
    if tpl.equip_cooldown_ms > 0:
        ready_tick = ctx.tick + ticks_for_ms(tpl.equip_cooldown_ms, ctx.tick_ms)
        effects.append(CooldownStarted(group=group, ready_at_ms=ready_tick * ctx.tick_ms))
    return effects


def unequip_item(player: PlayerState, intent: UnequipItem, ctx: RuleContext) -> list[AnyEffect]:
    """Move the item in ``slot`` to a compartment cell (the first free one if none given).

    Raises:
        NotFoundError: the slot is empty or the compartment does not exist.
        BadRequestError: the index is outside the compartment.
        ConflictError: the target cell is occupied.
        InventoryFullError: no free cell and no index given.
        CooldownActiveError: the slot's equip cooldown is running.
    """
    item_id = player.equipment.get(intent.slot)
    if item_id is None:
        raise NotFoundError(f"nothing is equipped in {intent.slot!r}", slot=intent.slot)
    _check_cooldown(player, f"equip:{intent.slot}", ctx)
    cells = _cells(player, intent.compartment, intent.index)
    index = intent.index
    if index is None:
        index = first_free(cells)
        if index is None:
            raise InventoryFullError(intent.compartment)
    elif cells[index] is not None:
        raise ConflictError(
            f"cell {intent.compartment}/{index} is occupied",
            compartment=intent.compartment,
            index=index,
            occupant=cells[index],
        )
    return [
        ItemUnequipped(
            item_id=item_id, slot=intent.slot, compartment=intent.compartment, index=index
        )
    ]


def move_item(player: PlayerState, intent: MoveItem, ctx: RuleContext) -> list[AnyEffect]:
    """Move an item between compartment cells; an occupied target swaps.

    Raises:
        ItemNotOwnedError: the player has no such item.
        ConflictError: the item is equipped (unequip it instead).
        NotFoundError: the compartment does not exist.
        BadRequestError: the index is outside the compartment.
    """
    item = _owned(player, intent.item_id)
    cells = _cells(player, intent.compartment, intent.index)
    where = _locate(player, item.id)
    if where is None:
        raise ConflictError(
            f"item {item.id} is equipped; unequip it instead",
            item_id=item.id,
            slot=_equipped_slot(player, item.id),
        )
    if where == (intent.compartment, intent.index):
        return []
    return [
        ItemMoved(
            item_id=item.id,
            from_compartment=where[0],
            from_index=where[1],
            to_compartment=intent.compartment,
            to_index=intent.index,
            displaced=cells[intent.index],
        )
    ]


def grant_starter_kit(
    player: PlayerState, ctx: RuleContext, item_ids: Sequence[int]
) -> list[AnyEffect]:
    """The starter kit for a player at version 0, with ids allocated by the caller.

    Raises:
        ConflictError: the player is not new, or too few ids were supplied.
        InventoryFullError: the kit does not fit the backpack.
    """
    kit = ctx.catalog.starter_kit
    if player.version != 0:
        raise ConflictError("starter kit is only granted to new players")
    if len(item_ids) < len(kit):
        raise ConflictError("not enough item ids for the starter kit", needed=len(kit))
    if len(set(item_ids[: len(kit)])) != len(kit) or any(i in player.items for i in item_ids):
        raise ConflictError("starter kit item ids must be fresh and distinct")
    cells = player.compartments["backpack"]
    if len(kit) > len(cells):
        raise InventoryFullError("backpack")
    return [
        ItemCreated(
            item=ItemInstance(id=item_id, template=entry.template, qty=entry.qty),
            compartment="backpack",
            index=index,
        )
        for index, (entry, item_id) in enumerate(zip(kit, item_ids, strict=False))
    ]


_R = TypeVar("_R", bound=Request)
Rule = Callable[[PlayerState, _R, RuleContext], list[AnyEffect]]

# Intent type -> rule. The server's inventory handlers look rules up here.
RULES: dict[type[Request], Rule[EquipItem] | Rule[UnequipItem] | Rule[MoveItem]] = {
    EquipItem: equip_item,
    UnequipItem: unequip_item,
    MoveItem: move_item,
}
