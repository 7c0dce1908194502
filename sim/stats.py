"""Stats: base + equipment + active effects, and what follows from them. Pure.

``compute_stats`` is a function of (state, catalog, now); ``StatsCache`` keeps the last
result per player and recomputes when the player's version changes (every effect) or when
the earliest buff it counted expires — the only way stats change without an effect.
"""

from __future__ import annotations

import msgspec

from protocol.model import Encumbrance, PlayerState
from sim.templates import Catalog


class Stats(msgspec.Struct, frozen=True, kw_only=True):
    values: dict[str, int]
    carried_weight: int  # grams
    carry_capacity: int  # grams
    encumbrance: Encumbrance
    movement_speed: int  # percent
    valid_until_ms: int  # when the earliest counted buff runs out (2**63-1: never)


NEVER = 2**63 - 1


def item_weight(player: PlayerState, catalog: Catalog, item_id: int) -> int:
    item = player.items[item_id]
    tpl = catalog.get(item.template)
    return 0 if tpl is None else tpl.weight * item.qty


def carried_weight(player: PlayerState, catalog: Catalog) -> int:
    """Weight in carried compartments plus everything equipped."""
    total = 0
    for name, cells in player.compartments.items():
        spec = catalog.compartments.get(name)
        if spec is None or not spec.carried:
            continue
        for cell in cells:
            if cell is not None:
                total += item_weight(player, catalog, cell)
    for item_id in player.equipment.values():
        total += item_weight(player, catalog, item_id)
    return total


def compartment_weight(player: PlayerState, catalog: Catalog, name: str) -> int:
    return sum(
        item_weight(player, catalog, cell) for cell in player.compartments[name] if cell is not None
    )


def encumbrance_for(weight: int, capacity: int, catalog: Catalog) -> Encumbrance:
    spec = catalog.player
    if weight * 100 > capacity * spec.overloaded_above_pct:
        return "overloaded"
    if weight * 100 > capacity * spec.burdened_above_pct:
        return "burdened"
    return "normal"


def base_values(player: PlayerState, catalog: Catalog, now_ms: int) -> tuple[dict[str, int], int]:
    """Stat values (base + equipment + unexpired buffs) and when the first buff expires."""
    values = dict(catalog.player.base_stats)
    for item_id in player.equipment.values():
        tpl = catalog.get(player.items[item_id].template)
        if tpl is None:
            continue
        for stat, delta in tpl.stats.items():
            values[stat] = values.get(stat, 0) + delta
    valid_until = NEVER
    for effect in player.active_effects.values():
        if effect.expires_at_ms <= now_ms:
            continue
        valid_until = min(valid_until, effect.expires_at_ms)
        for stat, delta in effect.stats.items():
            values[stat] = values.get(stat, 0) + delta
    return values, valid_until


def compute_stats(player: PlayerState, catalog: Catalog, now_ms: int) -> Stats:
    values, valid_until = base_values(player, catalog, now_ms)
    spec = catalog.player
    capacity = spec.carry_capacity_base + max(0, values.get("strength", 0)) * (
        spec.carry_capacity_per_strength
    )
    weight = carried_weight(player, catalog)
    level = encumbrance_for(weight, capacity, catalog)
    speed_pct = {"normal": 100, "burdened": spec.burdened_speed_pct}.get(
        level, spec.overloaded_speed_pct
    )
    return Stats(
        values=values,
        carried_weight=weight,
        carry_capacity=capacity,
        encumbrance=level,
        movement_speed=spec.movement_speed * speed_pct // 100,
        valid_until_ms=valid_until,
    )


class StatsCache:
    """The last computed stats of each player, reused while still exact."""

    __slots__ = ("_catalog", "_entries")

    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog
        self._entries: dict[int, tuple[int, Stats]] = {}

    def get(self, player: PlayerState, now_ms: int) -> Stats:
        entry = self._entries.get(player.player_id)
        if entry is not None and entry[0] == player.version and now_ms < entry[1].valid_until_ms:
            return entry[1]
        stats = compute_stats(player, self._catalog, now_ms)
        self._entries[player.player_id] = (player.version, stats)
        return stats

    def forget(self, player_id: int) -> None:
        self._entries.pop(player_id, None)
