"""Compartments and stacks: move, split, merge, sort, destroy, grant, the starter kit, and
``reconcile`` — the migration path when the designer changes the catalog.

Edge cases accepted on purpose:
- Moving onto an occupied cell swaps, even with a stack of the same template: merging is
  its own intent, so a move never changes quantities.
- Moving onto the item's own cell, or sorting an already sorted compartment, is a no-op:
  no effects, no version bump, no error.
- Bound and unbound stacks never merge (that would unbind or bind items silently).
- Quest items cannot be destroyed; items whose template is gone can (that is the only way
  out of lost_and_found for them).
- Grant idempotency keys are remembered in the player's state for the last
  ``GRANT_KEYS_KEPT`` grants; a replay older than that would grant again.
"""

from __future__ import annotations

from collections.abc import Sequence

from protocol.errors import (
    BadRequestError,
    ConflictError,
    ForbiddenError,
    InventoryFullError,
    NotFoundError,
)
from protocol.messages import (
    DestroyItem,
    GrantItem,
    MergeStacks,
    MoveItem,
    SortCompartment,
    SplitStack,
)
from protocol.model import (
    EQUIPMENT,
    LOST_AND_FOUND,
    AnyEffect,
    CompartmentResized,
    GrantRecorded,
    HealthChanged,
    ItemCreated,
    ItemDestroyed,
    ItemInstance,
    ItemsMoved,
    Loc,
    Move,
    PlayerState,
    StackChanged,
)
from sim.common import (
    MAX_CREATED_PER_INTENT,
    RuleContext,
    accepts,
    check_can_place,
    check_compartment_weight,
    check_weight_gain,
    is_carried,
    locate,
    owned,
    template_of,
    usable_cells,
    weight_of,
)
from sim.stats import base_values

_CATEGORY_ORDER = ("weapon", "shield", "armor", "jewelry", "consumable", "material", "quest")


def _in_compartment(player: PlayerState, item_id: int, what: str) -> tuple[str, int]:
    src = locate(player, item_id)
    if src is None or src[0] == EQUIPMENT:
        raise ConflictError(
            f"item {item_id} is equipped; unequip it before you {what} it",
            item_id=item_id,
            slot=src[1] if src else None,
        )
    return src[0], int(src[1])


def _weight_change(ctx: RuleContext, src: str, dst: str, grams: int) -> int:
    """Grams added to what the player carries by moving ``grams`` from ``src`` to ``dst``."""
    return (grams if is_carried(ctx, dst) else 0) - (grams if is_carried(ctx, src) else 0)


def move_item(player: PlayerState, intent: MoveItem, ctx: RuleContext) -> list[AnyEffect]:
    """Move an item between compartment cells; an occupied target swaps.

    Raises:
        ItemNotOwnedError: the player has no such item.
        ConflictError: the item is equipped; a compartment does not take the item (or the
            swapped item); too heavy for the compartment.
        NotFoundError: the compartment does not exist.
        BadRequestError: the index is outside the compartment.
        OverloadedError: taking it out of the bank would overload the player.
    """
    item = owned(player, intent.item_id)
    src_name, src_index = _in_compartment(player, item.id, "move")
    cells, spec, _ = usable_cells(player, ctx, intent.compartment, intent.index)
    if (src_name, src_index) == (intent.compartment, intent.index):
        return []
    check_can_place(ctx, intent.compartment, spec, item)
    other = cells[intent.index]
    moves = [Move(item.id, (src_name, src_index), (intent.compartment, intent.index))]
    gain = _weight_change(ctx, src_name, intent.compartment, weight_of(player, ctx, item.id))
    # Within one compartment its weight does not change: only moves between two are checked.
    across = src_name != intent.compartment
    if other is not None:
        src_spec = ctx.catalog.compartments[src_name]
        check_can_place(ctx, src_name, src_spec, player.items[other])
        moves.append(Move(other, (intent.compartment, intent.index), (src_name, src_index)))
        gain += _weight_change(ctx, intent.compartment, src_name, weight_of(player, ctx, other))
        if across:
            check_compartment_weight(
                player,
                ctx,
                src_name,
                src_spec,
                weight_of(player, ctx, other) - weight_of(player, ctx, item.id),
            )
    if across:
        check_compartment_weight(
            player, ctx, intent.compartment, spec,
            weight_of(player, ctx, item.id) - weight_of(player, ctx, other),
        )  # fmt: skip
    check_weight_gain(player, ctx, gain)
    return [ItemsMoved(reason="swap" if other is not None else "move", moves=moves)]


def split_stack(player: PlayerState, intent: SplitStack, ctx: RuleContext) -> list[AnyEffect]:
    """Take ``qty`` off a stack into a new item at an empty cell.

    Raises:
        ItemNotOwnedError, ConflictError (equipped, target occupied or refuses the item),
        NotFoundError, BadRequestError (``qty`` must leave at least one behind).
        OverloadedError: splitting into a carried compartment from the bank.
    """
    item = owned(player, intent.item_id)
    src_name, _ = _in_compartment(player, item.id, "split")
    if intent.qty >= item.qty:
        raise BadRequestError(
            f"cannot split {intent.qty} off a stack of {item.qty}",
            item_id=item.id,
            qty=item.qty,
        )
    cells, spec, _ = usable_cells(player, ctx, intent.compartment, intent.index)
    if cells[intent.index] is not None:
        raise ConflictError(
            f"cell {intent.compartment}/{intent.index} is occupied",
            compartment=intent.compartment,
            index=intent.index,
            occupant=cells[intent.index],
        )
    check_can_place(ctx, intent.compartment, spec, item)
    tpl = template_of(ctx, item)
    moved_grams = tpl.weight * intent.qty
    if src_name != intent.compartment:  # within one compartment its weight is unchanged
        check_compartment_weight(player, ctx, intent.compartment, spec, moved_grams)
    check_weight_gain(player, ctx, _weight_change(ctx, src_name, intent.compartment, moved_grams))
    new = ItemInstance(
        id=ctx.next_item_id, template=item.template, qty=intent.qty, bound=item.bound
    )
    return [
        StackChanged(item_id=item.id, qty=item.qty - intent.qty),
        ItemCreated(item=new, dst=(intent.compartment, intent.index)),
    ]


def merge_stacks(player: PlayerState, intent: MergeStacks, ctx: RuleContext) -> list[AnyEffect]:
    """Move as much of one stack onto another of the same template as fits.

    Raises:
        ItemNotOwnedError; BadRequestError (same item twice); ConflictError (different
        templates, bound and unbound, equipped, target in lost_and_found, target stack
        already full, compartment weight); OverloadedError.
    """
    item = owned(player, intent.item_id)
    into = owned(player, intent.into_item_id)
    if item.id == into.id:
        raise BadRequestError("cannot merge a stack into itself", item_id=item.id)
    src_name, src_index = _in_compartment(player, item.id, "merge")
    dst_name, _ = _in_compartment(player, into.id, "merge into")
    if item.template != into.template:
        raise ConflictError(
            "only stacks of the same item merge",
            item_id=item.id,
            template=item.template,
            into_template=into.template,
        )
    if item.bound != into.bound:
        raise ConflictError("bound and unbound stacks do not merge", item_id=item.id)
    dst_spec = ctx.catalog.compartments[dst_name]
    # Merging puts items into the target's compartment: lost_and_found takes none.
    check_can_place(ctx, dst_name, dst_spec, item)
    tpl = template_of(ctx, item)
    room = tpl.max_stack - into.qty
    if room <= 0:
        raise ConflictError(f"stack {into.id} is full", item_id=into.id, max_stack=tpl.max_stack)
    moved = min(room, item.qty)
    grams = tpl.weight * moved
    if src_name != dst_name:  # within one compartment its weight is unchanged
        check_compartment_weight(player, ctx, dst_name, dst_spec, grams)
    check_weight_gain(player, ctx, _weight_change(ctx, src_name, dst_name, grams))
    effects: list[AnyEffect] = [StackChanged(item_id=into.id, qty=into.qty + moved)]
    if moved == item.qty:
        effects.append(ItemDestroyed(item_id=item.id, src=(src_name, src_index), reason="merged"))
    else:
        effects.append(StackChanged(item_id=item.id, qty=item.qty - moved))
    return effects


def sort_compartment(
    player: PlayerState, intent: SortCompartment, ctx: RuleContext
) -> list[AnyEffect]:
    """Compact a compartment to its front, ordered by category, template, larger stacks
    first, then item id (a total order: sorting twice changes nothing).

    Raises:
        NotFoundError: no such compartment.
    """
    cells, _, usable = usable_cells(player, ctx, intent.compartment, None)

    def key(item_id: int) -> tuple[int, str, int, int]:
        item = player.items[item_id]
        tpl = ctx.catalog.get(item.template)
        rank = _CATEGORY_ORDER.index(tpl.category) if tpl else len(_CATEGORY_ORDER)
        return (rank, item.template, -item.qty, item.id)

    present = [cell for cell in cells[:usable] if cell is not None]
    ordered = sorted(present, key=key)
    where = {cell: index for index, cell in enumerate(cells[:usable]) if cell is not None}
    moves = [
        Move(item_id, (intent.compartment, where[item_id]), (intent.compartment, index))
        for index, item_id in enumerate(ordered)
        if where[item_id] != index
    ]
    return [ItemsMoved(reason="sort", moves=moves)] if moves else []


def destroy_item(player: PlayerState, intent: DestroyItem, ctx: RuleContext) -> list[AnyEffect]:
    """Destroy an item or part of its stack.

    Raises:
        ItemNotOwnedError; ConflictError (equipped); ForbiddenError (quest items);
        BadRequestError (more than the stack holds).
    """
    item = owned(player, intent.item_id)
    src = _in_compartment(player, item.id, "destroy")
    tpl = ctx.catalog.get(item.template)
    if tpl is not None and tpl.category == "quest":
        raise ForbiddenError("quest items cannot be destroyed", item_id=item.id)
    qty = item.qty if intent.qty is None else intent.qty
    if qty > item.qty:
        raise BadRequestError(
            f"cannot destroy {qty} of a stack of {item.qty}", item_id=item.id, qty=item.qty
        )
    if qty == item.qty:
        return [ItemDestroyed(item_id=item.id, src=src)]
    return [StackChanged(item_id=item.id, qty=item.qty - qty)]


def _target_compartment(
    player: PlayerState, ctx: RuleContext, category: str, wanted: str | None, stacks: int
) -> str:
    """The compartment a grant goes to: the one asked for, else the first carried one (in
    catalog order) that takes the category and has a free cell for every stack; if none
    has room, the backpack (whose InventoryFullError then names it)."""
    if wanted is not None:
        return wanted
    for name, spec in ctx.catalog.compartments.items():
        if (
            spec.player_can_place
            and spec.carried
            and (not spec.accepts or category in spec.accepts)
        ):
            cells, _, usable = usable_cells(player, ctx, name, None)
            if sum(1 for i in range(usable) if cells[i] is None) >= stacks:
                return name
    return "backpack"


def grant_item(player: PlayerState, intent: GrantItem, ctx: RuleContext) -> list[AnyEffect]:
    """Give items (split into stacks of at most ``max_stack``), once per idempotency key.

    A key already granted returns no effects: the caller answers with the recorded version.

    Raises:
        NotFoundError: no such template or compartment.
        ConflictError: the compartment does not take this category.
        InventoryFullError: not enough free cells for every stack.
        OverloadedError: into a carried compartment, it would overload the player.
    """
    if intent.idempotency_key in player.grants:
        return []
    tpl = ctx.catalog.get(intent.template)
    if tpl is None:
        raise NotFoundError(f"no template {intent.template!r}", template=intent.template)
    stacks = [tpl.max_stack] * (intent.qty // tpl.max_stack)
    if intent.qty % tpl.max_stack:
        stacks.append(intent.qty % tpl.max_stack)
    if len(stacks) > MAX_CREATED_PER_INTENT:
        raise BadRequestError(
            f"a grant makes at most {MAX_CREATED_PER_INTENT} stacks",
            stacks=len(stacks),
            max_stack=tpl.max_stack,
        )
    name = _target_compartment(player, ctx, tpl.category, intent.compartment, len(stacks))
    cells, spec, usable = usable_cells(player, ctx, name, None)
    if not accepts(spec, tpl):
        raise ConflictError(f"{name!r} only accepts {', '.join(spec.accepts)}", compartment=name)
    free = [i for i in range(usable) if cells[i] is None]
    if len(free) < len(stacks):
        raise InventoryFullError(name)
    grams = tpl.weight * intent.qty
    check_compartment_weight(player, ctx, name, spec, grams)
    if spec.carried:
        check_weight_gain(player, ctx, grams)
    effects: list[AnyEffect] = [
        ItemCreated(
            item=ItemInstance(
                id=ctx.next_item_id + n,
                template=tpl.id,
                qty=qty,
                charges=tpl.charges,
                bound=tpl.bind == "on_pickup",
            ),
            dst=(name, free[n]),
            grant_key=intent.idempotency_key,
        )
        for n, qty in enumerate(stacks)
    ]
    effects.append(
        GrantRecorded(key=intent.idempotency_key, version=player.version + len(effects) + 1)
    )
    return effects


def grant_starter_kit(
    player: PlayerState, ctx: RuleContext, item_ids: Sequence[int]
) -> list[AnyEffect]:
    """A new player's compartments, full health and the starter kit (ids from the caller).

    Raises:
        ConflictError: the player is not new, or the ids are too few or not fresh.
        InventoryFullError: the kit does not fit its compartments.
    """
    kit = ctx.catalog.starter_kit
    if player.version != 0:
        raise ConflictError("starter kit is only granted to new players")
    ids = list(item_ids[: len(kit)])
    if len(ids) < len(kit):
        raise ConflictError("not enough item ids for the starter kit", needed=len(kit))
    if len(set(ids)) != len(ids):  # a version-0 player owns nothing, so distinct is fresh
        raise ConflictError("starter kit item ids must be distinct")
    effects: list[AnyEffect] = [
        CompartmentResized(compartment=name, size=spec.slots)
        for name, spec in ctx.catalog.compartments.items()
    ]
    used: dict[str, int] = {}
    for entry, item_id in zip(kit, ids, strict=True):
        tpl = ctx.catalog.templates[entry.template]
        index = used.get(entry.compartment, 0)
        if index >= ctx.catalog.compartments[entry.compartment].slots:
            raise InventoryFullError(entry.compartment)
        used[entry.compartment] = index + 1
        item = ItemInstance(
            id=item_id,
            template=tpl.id,
            qty=entry.qty,
            charges=tpl.charges,
            bound=tpl.bind == "on_pickup",
        )
        effects.append(ItemCreated(item=item, dst=(entry.compartment, index)))
    values, _ = base_values(player, ctx.catalog, ctx.now_ms)
    effects.append(HealthChanged(health=values.get("max_health", 0)))
    return effects


def reconcile(player: PlayerState, ctx: RuleContext) -> list[AnyEffect]:
    """Bring a player in line with the current catalog (run on load).

    Compartments new in the catalog, or grown, are created or grown. Items whose template is
    gone, that sit in a slot their template no longer allows (or beside a two-hander), in a
    compartment that no longer takes them or no longer exists, or in cells beyond a shrunk
    compartment, move to lost_and_found — which grows if it must. Nothing is deleted.
    """
    catalog = ctx.catalog
    effects: list[AnyEffect] = []
    sizes = {name: len(cells) for name, cells in player.compartments.items()}
    for name, spec in catalog.compartments.items():
        if sizes.get(name, -1) < spec.slots:
            effects.append(CompartmentResized(compartment=name, size=spec.slots))
            sizes[name] = spec.slots

    def misplaced(loc: Loc, item_id: int) -> bool:
        where, key = loc
        tpl = catalog.get(player.items[item_id].template)
        if where == LOST_AND_FOUND:
            return False
        if tpl is None:
            return True
        if where == EQUIPMENT:
            if key not in tpl.slots:
                return True
            main = player.equipment.get("main_hand")
            main_tpl = catalog.get(player.items[main].template) if main is not None else None
            return key == "off_hand" and main_tpl is not None and main_tpl.two_handed
        spec = catalog.compartments.get(where)
        return spec is None or not accepts(spec, tpl) or int(key) >= spec.slots

    lost: list[tuple[Loc, int]] = []
    for name, cells in player.compartments.items():
        lost.extend(((name, i), cell) for i, cell in enumerate(cells) if cell is not None)
    lost.extend(((EQUIPMENT, slot), item_id) for slot, item_id in player.equipment.items())
    lost = [(loc, item_id) for loc, item_id in lost if misplaced(loc, item_id)]
    if not lost:
        return effects
    cells = player.compartments.get(LOST_AND_FOUND, [])
    size = sizes[LOST_AND_FOUND]
    free = [i for i in range(size) if i >= len(cells) or cells[i] is None]
    if len(free) < len(lost):
        grown = size + len(lost) - len(free)
        effects.append(CompartmentResized(compartment=LOST_AND_FOUND, size=grown))
        free.extend(range(size, grown))
    moves = [
        Move(item_id, loc, (LOST_AND_FOUND, index))
        for (loc, item_id), index in zip(lost, free, strict=False)
    ]
    effects.append(ItemsMoved(reason="lost_and_found", moves=moves))
    return effects
