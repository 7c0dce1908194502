"""``apply(player, effect)``: the only way sim state changes.

Apply never fails and never validates: rules validated before the effect existed, and the
journal replays effects that were valid when they were made. It mutates ``player`` in place
(effects are applied at request rate; copying the state each time would dominate the cost)
and bumps ``version`` by one per effect.
"""

from __future__ import annotations

from collections.abc import Iterable

from protocol.model import (
    AnyEffect,
    CooldownStarted,
    ItemCreated,
    ItemEquipped,
    ItemMoved,
    ItemUnequipped,
    PlayerState,
)


def apply(player: PlayerState, effect: AnyEffect) -> PlayerState:
    """Apply one effect to ``player`` (in place) and return it."""
    if isinstance(effect, ItemEquipped):
        cells = player.compartments[effect.compartment]
        cells[effect.index] = effect.displaced
        player.equipment[effect.slot] = effect.item_id
    elif isinstance(effect, ItemUnequipped):
        del player.equipment[effect.slot]
        player.compartments[effect.compartment][effect.index] = effect.item_id
    elif isinstance(effect, ItemMoved):
        src = player.compartments[effect.from_compartment]
        dst = player.compartments[effect.to_compartment]
        src[effect.from_index] = effect.displaced
        dst[effect.to_index] = effect.item_id
    elif isinstance(effect, CooldownStarted):
        player.cooldowns[effect.group] = effect.ready_at_ms
    elif isinstance(effect, ItemCreated):
        player.items[effect.item.id] = effect.item
        player.compartments[effect.compartment][effect.index] = effect.item.id
    player.version += 1
    return player


def apply_all(player: PlayerState, effects: Iterable[AnyEffect]) -> PlayerState:
    for effect in effects:
        apply(player, effect)
    return player
