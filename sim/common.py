"""What every rule needs: the context, where items are, and the shared checks.

Every check raises a ``GearhallError`` subclass whose details tell the client what to fix;
nothing here mutates state.
"""

from __future__ import annotations

import msgspec

from protocol.errors import (
    BadRequestError,
    ConflictError,
    CooldownActiveError,
    ItemNotOwnedError,
    NotFoundError,
    OverloadedError,
    RequirementsNotMetError,
)
from protocol.model import EQUIPMENT, ItemInstance, Loc, PlayerState
from protocol.types import ItemId
from sim.stats import base_values, carried_weight, compartment_weight, item_weight
from sim.templates import Catalog, CompartmentSpec, ItemTemplate

# Fresh ids a single intent may use (a grant is split into at most this many stacks).
MAX_CREATED_PER_INTENT = 64


class RuleContext(msgspec.Struct, frozen=True):
    """What a rule may know besides the state and the intent.

    ``next_item_id`` is the first of a run of fresh, globally unique item ids the rule may
    use for items it creates (the hub reserves them and skips past the ones used).
    """

    tick: int
    tick_ms: int
    catalog: Catalog
    next_item_id: int = 0

    @property
    def now_ms(self) -> int:
        return self.tick * self.tick_ms


def ticks_for_ms(ms: int, tick_ms: int) -> int:
    """Whole ticks covering ``ms`` (rounded up, so a cooldown is never shorter than asked)."""
    return -(-ms // tick_ms)


def deadline_ms(ctx: RuleContext, duration_ms: int) -> int:
    """The tick boundary at least ``duration_ms`` from now, in Unix milliseconds."""
    return (ctx.tick + ticks_for_ms(duration_ms, ctx.tick_ms)) * ctx.tick_ms


# --- where things are --------------------------------------------------------------------


def locate(player: PlayerState, item_id: int) -> Loc | None:
    for name, cells in player.compartments.items():
        if item_id in cells:  # the scan in C: this runs for nearly every intent
            return (name, cells.index(item_id))
    for slot, occupant in player.equipment.items():
        if occupant == item_id:
            return (EQUIPMENT, slot)
    return None


def owned(player: PlayerState, item_id: int) -> ItemInstance:
    item = player.items.get(item_id)
    if item is None:
        raise ItemNotOwnedError(ItemId(item_id))
    return item


def template_of(ctx: RuleContext, item: ItemInstance) -> ItemTemplate:
    tpl = ctx.catalog.get(item.template)
    if tpl is None:
        raise ConflictError(
            f"item {item.id} has no template {item.template!r} any more",
            item_id=item.id,
            template=item.template,
        )
    return tpl


def usable_cells(
    player: PlayerState, ctx: RuleContext, compartment: str, index: int | None
) -> tuple[list[int | None], CompartmentSpec, int]:
    """The compartment's cells, its spec and how many cells are usable.

    Raises:
        NotFoundError: no such compartment.
        BadRequestError: ``index`` is outside the usable cells.
    """
    spec = ctx.catalog.compartments.get(compartment)
    cells = player.compartments.get(compartment)
    if spec is None or cells is None:
        raise NotFoundError(f"no compartment {compartment!r}", compartment=compartment)
    # Cells beyond the spec (a compartment the designer shrank) only hold items on their way
    # out; lost_and_found may grow past its spec so nothing is ever dropped.
    usable = len(cells) if compartment == "lost_and_found" else min(len(cells), spec.slots)
    if index is not None and not 0 <= index < usable:
        raise BadRequestError(
            f"index {index} is outside {compartment!r}",
            compartment=compartment,
            index=index,
            size=usable,
        )
    return cells, spec, usable


def first_free(cells: list[int | None], usable: int) -> int | None:
    for index in range(usable):
        if cells[index] is None:
            return index
    return None


# --- checks ------------------------------------------------------------------------------


def accepts(spec: CompartmentSpec, tpl: ItemTemplate | None) -> bool:
    return not spec.accepts or (tpl is not None and tpl.category in spec.accepts)


def check_can_place(
    ctx: RuleContext, compartment: str, spec: CompartmentSpec, item: ItemInstance
) -> None:
    """Raises ConflictError if a player may not put ``item`` into ``compartment``."""
    if not spec.player_can_place:
        raise ConflictError(f"items cannot be put into {compartment!r}", compartment=compartment)
    tpl = ctx.catalog.get(item.template)
    if not accepts(spec, tpl):
        raise ConflictError(
            f"{compartment!r} only accepts {', '.join(spec.accepts)}",
            compartment=compartment,
            accepts=list(spec.accepts),
            category=tpl.category if tpl else None,
        )


def check_cooldown(player: PlayerState, key: str, ctx: RuleContext) -> None:
    ready_at_ms = player.cooldowns.get(key, 0)
    now_ms = ctx.now_ms
    if ready_at_ms > now_ms:
        raise CooldownActiveError(key, ready_at_ms - now_ms, ready_at_ms)


def check_requirements(player: PlayerState, item: ItemInstance, tpl: ItemTemplate) -> None:
    """Raises RequirementsNotMetError naming each missing level."""
    missing: dict[str, object] = {}
    req = tpl.requires
    if player.level < req.level:
        missing["level"] = {"required": req.level, "current": player.level}
    skills = {
        skill: {"required": need, "current": player.skill_levels.get(skill, 1)}
        for skill, need in req.skills.items()
        if player.skill_levels.get(skill, 1) < need
    }
    if skills:
        missing["skills"] = skills
    if missing:
        raise RequirementsNotMetError(item.id, tpl.id, missing)


def is_carried(ctx: RuleContext, where: str) -> bool:
    if where == EQUIPMENT:
        return True
    spec = ctx.catalog.compartments.get(where)
    return spec is not None and spec.carried


def check_weight_gain(player: PlayerState, ctx: RuleContext, gain: int) -> None:
    """Refuse an action that adds ``gain`` grams to what the player carries if it would
    leave them overloaded: an overloaded player cannot pick up more."""
    if gain <= 0:
        return
    values, _ = base_values(player, ctx.catalog, ctx.now_ms)
    spec = ctx.catalog.player
    capacity = spec.carry_capacity_base + max(0, values.get("strength", 0)) * (
        spec.carry_capacity_per_strength
    )
    after = carried_weight(player, ctx.catalog) + gain
    if after * 100 > capacity * spec.overloaded_above_pct:
        raise OverloadedError(after, capacity, capacity * spec.overloaded_above_pct // 100)


def check_compartment_weight(
    player: PlayerState, ctx: RuleContext, compartment: str, spec: CompartmentSpec, gain: int
) -> None:
    if spec.max_weight is None or gain <= 0:
        return
    after = compartment_weight(player, ctx.catalog, compartment) + gain
    if after > spec.max_weight:
        raise ConflictError(
            f"{compartment!r} cannot hold that much weight",
            compartment=compartment,
            weight=after,
            max_weight=spec.max_weight,
        )


def weight_of(player: PlayerState, ctx: RuleContext, item_id: int | None) -> int:
    return 0 if item_id is None else item_weight(player, ctx.catalog, item_id)
