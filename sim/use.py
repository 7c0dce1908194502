"""Using items, and the XP and levels that follow. Pure rules.

Edge cases accepted on purpose:
- A heal at full health still uses the item (it is the player's choice).
- Using a buff again refreshes it (the new one replaces the old, it does not stack).
- XP can carry a skill across several levels at once: one ``skill_leveled_up`` effect with
  the final level. The character level follows total XP over all skills.
- Items in the bank or lost_and_found cannot be used: take them out first.
"""

from __future__ import annotations

from protocol.errors import ConflictError
from protocol.messages import UseItem
from protocol.model import (
    EQUIPMENT,
    ActiveEffect,
    ActiveEffectStarted,
    AnyEffect,
    ChargesChanged,
    CooldownStarted,
    HealthChanged,
    ItemDestroyed,
    PlayerLeveledUp,
    PlayerState,
    SkillLeveledUp,
    StackChanged,
    XpGained,
)
from sim.common import (
    RuleContext,
    check_cooldown,
    check_requirements,
    deadline_ms,
    is_carried,
    locate,
    owned,
    template_of,
)
from sim.stats import base_values
from sim.templates import level_for


def gain_xp(player: PlayerState, ctx: RuleContext, skill: str, amount: int) -> list[AnyEffect]:
    """The effects of ``amount`` XP in ``skill``: the gain, and any level-ups it causes."""
    total = player.skills.get(skill, 0) + amount
    effects: list[AnyEffect] = [XpGained(skill=skill, amount=amount, total=total)]
    level = level_for(total, ctx.catalog.skill_thresholds(skill))
    if level != player.skill_levels.get(skill, 1):
        effects.append(SkillLeveledUp(skill=skill, level=level))
    overall = sum(player.skills.values()) + amount
    char_level = level_for(overall, ctx.catalog.level_thresholds())
    if char_level != player.level:
        effects.append(PlayerLeveledUp(level=char_level))
    return effects


def use_item(player: PlayerState, intent: UseItem, ctx: RuleContext) -> list[AnyEffect]:
    """Use an item: check, consume a charge or one of the stack, apply the use effect,
    grant XP, start the cooldown (shared by the template's group).

    Raises:
        ItemNotOwnedError: no such item.
        ConflictError: it cannot be used, its template is gone, or it is in storage.
        RequirementsNotMetError: level or skill levels too low.
        CooldownActiveError: its cooldown (or its group's) is running; ``ready_in_ms``.
    """
    item = owned(player, intent.item_id)
    tpl = template_of(ctx, item)
    use = tpl.use
    if use is None:
        raise ConflictError(f"{tpl.name} cannot be used", item_id=item.id, template=tpl.id)
    loc = locate(player, item.id)
    if loc is None or not is_carried(ctx, loc[0]):
        raise ConflictError(
            "take the item out of storage to use it",
            item_id=item.id,
            compartment=loc[0] if loc else None,
        )
    check_requirements(player, item, tpl)
    check_cooldown(player, tpl.cooldown_key, ctx)

    effects: list[AnyEffect] = []
    if tpl.charges is not None:
        left = (item.charges if item.charges is not None else tpl.charges) - 1
        if left > 0:
            effects.append(ChargesChanged(item_id=item.id, charges=left))
        else:
            effects.append(ItemDestroyed(item_id=item.id, src=loc, reason="used_up"))
    elif tpl.category == "consumable" and loc[0] != EQUIPMENT:
        if item.qty > 1:
            effects.append(StackChanged(item_id=item.id, qty=item.qty - 1))
        else:
            effects.append(ItemDestroyed(item_id=item.id, src=loc, reason="used_up"))

    if use.kind == "heal":
        values, _ = base_values(player, ctx.catalog, ctx.now_ms)
        health = min(values.get("max_health", 0), player.health + use.amount)
        effects.append(HealthChanged(health=max(health, player.health)))
    elif use.kind == "buff":
        buff = ActiveEffect(
            source=tpl.id, stats=dict(use.stats), expires_at_ms=ctx.now_ms + use.duration_ms
        )
        effects.append(ActiveEffectStarted(effect=buff))
    if use.xp is not None:
        effects.extend(gain_xp(player, ctx, use.xp.skill, use.xp.amount))
    if tpl.use_cooldown_ms > 0:
        effects.append(
            CooldownStarted(key=tpl.cooldown_key, ready_at_ms=deadline_ms(ctx, tpl.use_cooldown_ms))
        )
    return effects
