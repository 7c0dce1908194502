"""Equip and unequip: pure rules.

Edge cases accepted on purpose:
- Equipping into an occupied slot swaps: the occupant takes the cell (or slot) the new item
  left, if it fits there, else the first free backpack cell; one ``items_moved`` effect.
- A two-handed item sits in ``main_hand`` and keeps ``off_hand`` empty: equipping it
  displaces both hands; equipping anything into ``off_hand`` displaces a two-hander.
- An equip cooldown belongs to the slot (``equip:<slot>``) and blocks equip and unequip in
  that slot; it is started by templates with ``equip_cooldown_ms > 0``. A two-hander starts
  and checks both hands.
- Requirements are checked on equip only: a player whose level would no longer allow an
  item keeps wearing it.
"""

from __future__ import annotations

from protocol.errors import (
    ConflictError,
    InventoryFullError,
    NotFoundError,
    SlotIncompatibleError,
)
from protocol.messages import EquipItem, UnequipItem
from protocol.model import (
    EQUIPMENT,
    AnyEffect,
    CooldownStarted,
    ItemBound,
    ItemsMoved,
    Loc,
    Move,
    PlayerState,
)
from protocol.types import ItemId
from sim.common import (
    RuleContext,
    accepts,
    check_can_place,
    check_compartment_weight,
    check_cooldown,
    check_requirements,
    check_weight_gain,
    deadline_ms,
    first_free,
    is_carried,
    locate,
    owned,
    template_of,
    usable_cells,
    weight_of,
)
from sim.stats import compartment_weight


def _is_two_handed(player: PlayerState, ctx: RuleContext, item_id: int | None) -> bool:
    if item_id is None:
        return False
    tpl = ctx.catalog.get(player.items[item_id].template)
    return tpl is not None and tpl.two_handed


def equip_item(player: PlayerState, intent: EquipItem, ctx: RuleContext) -> list[AnyEffect]:
    """Equip an item from a compartment or another slot; occupants swap out atomically.

    Raises:
        ItemNotOwnedError: the player has no such item.
        SlotIncompatibleError: the template does not fit ``slot``.
        ConflictError: already in that slot; its template is gone; a displaced item would
            overfill a compartment's weight limit.
        RequirementsNotMetError: level or skill levels too low (details say which).
        CooldownActiveError: the equip cooldown of the slot (or of the slot the item leaves)
            is running.
        InventoryFullError: a displaced item has nowhere to go.
        OverloadedError: equipping from the bank (net of what goes back) would overload
            the player.
    """
    item = owned(player, intent.item_id)
    tpl = template_of(ctx, item)
    slot = intent.slot
    if slot not in tpl.slots:
        raise SlotIncompatibleError(ItemId(item.id), slot, list(tpl.slots))
    src = locate(player, item.id)
    if src is None:  # owned items are always somewhere: a broken invariant, not input
        raise ConflictError(f"item {item.id} is nowhere", item_id=item.id)
    if src == (EQUIPMENT, slot):
        raise ConflictError(f"item {item.id} is already in {slot!r}", item_id=item.id, slot=slot)
    check_requirements(player, item, tpl)
    hands = ("main_hand", "off_hand") if tpl.two_handed else (slot,)
    for hand in hands:
        check_cooldown(player, f"equip:{hand}", ctx)
    if src[0] == EQUIPMENT:  # leaving a slot is unequipping it: its cooldown applies too
        check_cooldown(player, f"equip:{src[1]}", ctx)

    # Who leaves: the slot's occupant; for a two-hander both hands; for off_hand a two-hander.
    leaving: list[int] = []
    for hand in hands:
        occupant = player.equipment.get(hand)
        if occupant is not None and occupant != item.id:
            leaving.append(occupant)
    if slot == "off_hand":
        main = player.equipment.get("main_hand")
        if main is not None and _is_two_handed(player, ctx, main) and main not in leaving:
            leaving.append(main)

    moves = [Move(item.id, src, (EQUIPMENT, slot))]
    backpack, _, usable = usable_cells(player, ctx, "backpack", None)
    free = [i for i in range(usable) if backpack[i] is None]
    if src[0] == "backpack":  # the cell the new item leaves is free for the displaced
        free = sorted([*free, int(src[1])])
    for position, occupant in enumerate(leaving):
        # The first displaced item takes the place the new item left, if it fits there;
        # the rest (a two-hander displacing both hands) take free backpack cells in order.
        dst = _home_for(player, ctx, occupant, src, item.id) if position == 0 else None
        if dst is not None and dst[0] == "backpack":
            free.remove(int(dst[1]))
        if dst is None:
            if not free:
                raise InventoryFullError("backpack")
            dst = ("backpack", free.pop(0))
        moves.append(Move(occupant, (EQUIPMENT, _slot_of(player, occupant)), dst))
    _check_weight_caps(player, ctx, moves)

    # What the player carries afterwards counts: swapping lighter gear in from the bank is
    # fine even when overloaded.
    check_weight_gain(player, ctx, _carried_change(player, ctx, moves))
    effects: list[AnyEffect] = [ItemsMoved(reason="swap" if leaving else "equip", moves=moves)]
    if tpl.bind == "on_equip" and not item.bound:
        effects.append(ItemBound(item_id=item.id))
    if tpl.equip_cooldown_ms > 0:
        ready = deadline_ms(ctx, tpl.equip_cooldown_ms)
        effects.extend(CooldownStarted(key=f"equip:{hand}", ready_at_ms=ready) for hand in hands)
    return effects


def _slot_of(player: PlayerState, item_id: int) -> str:
    return next(slot for slot, occupant in player.equipment.items() if occupant == item_id)


def _home_for(
    player: PlayerState, ctx: RuleContext, occupant: int, vacated: Loc, new_item: int
) -> Loc | None:
    """Where a displaced item goes: the place ``new_item`` left, if it fits there (slot,
    category, placement and weight limit)."""
    where, key = vacated
    occupant_tpl = ctx.catalog.get(player.items[occupant].template)
    if where == EQUIPMENT:
        return vacated if occupant_tpl is not None and key in occupant_tpl.slots else None
    spec = ctx.catalog.compartments.get(where)
    if spec is None or not spec.player_can_place or not accepts(spec, occupant_tpl):
        return None
    if spec.max_weight is not None:  # the occupant's weight replaces the new item's there
        grams = weight_of(player, ctx, occupant) - weight_of(player, ctx, new_item)
        if compartment_weight(player, ctx.catalog, where) + grams > spec.max_weight:
            return None
    return vacated


def _carried_change(player: PlayerState, ctx: RuleContext, moves: list[Move]) -> int:
    """Grams the moves add to what the player carries (negative: they carry less)."""
    return sum(
        weight_of(player, ctx, move.item_id)
        * (is_carried(ctx, move.dst[0]) - is_carried(ctx, move.src[0]))
        for move in moves
    )


def _check_weight_caps(player: PlayerState, ctx: RuleContext, moves: list[Move]) -> None:
    """Raises ConflictError if the moves overfill a compartment with a weight limit."""
    change: dict[str, int] = {}
    for move in moves:
        grams = weight_of(player, ctx, move.item_id)
        if move.dst[0] != EQUIPMENT:
            change[move.dst[0]] = change.get(move.dst[0], 0) + grams
        if move.src[0] != EQUIPMENT:
            change[move.src[0]] = change.get(move.src[0], 0) - grams
    for name, grams in change.items():
        spec = ctx.catalog.compartments.get(name)
        if spec is not None:
            check_compartment_weight(player, ctx, name, spec, grams)


def unequip_item(player: PlayerState, intent: UnequipItem, ctx: RuleContext) -> list[AnyEffect]:
    """Move the item in ``slot`` to a compartment cell (the first free one if none given).

    Raises:
        NotFoundError: the slot is empty or the compartment does not exist.
        BadRequestError: the index is outside the compartment.
        ConflictError: the target cell is occupied, or the compartment does not take it.
        InventoryFullError: no free cell and no index given.
        CooldownActiveError: the slot's equip cooldown is running.
    """
    item_id = player.equipment.get(intent.slot)
    if item_id is None:
        raise NotFoundError(f"nothing is equipped in {intent.slot!r}", slot=intent.slot)
    check_cooldown(player, f"equip:{intent.slot}", ctx)
    cells, spec, usable = usable_cells(player, ctx, intent.compartment, intent.index)
    check_can_place(ctx, intent.compartment, spec, player.items[item_id])
    index = intent.index
    if index is None:
        index = first_free(cells, usable)
        if index is None:
            raise InventoryFullError(intent.compartment)
    elif cells[index] is not None:
        raise ConflictError(
            f"cell {intent.compartment}/{index} is occupied",
            compartment=intent.compartment,
            index=index,
            occupant=cells[index],
        )
    check_compartment_weight(player, ctx, intent.compartment, spec, weight_of(player, ctx, item_id))
    move = Move(item_id, (EQUIPMENT, intent.slot), (intent.compartment, index))
    return [ItemsMoved(reason="unequip", moves=[move])]
