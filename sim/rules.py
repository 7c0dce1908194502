"""The rule registry: intent type -> pure rule ``(state, intent, ctx) -> effects``.

Rules live by domain — ``sim/equipment.py``, ``sim/inventory.py``, ``sim/use.py`` — and
share ``sim/common.py``. A rule reads the state and the intent, validates, and describes the
change as effects; it never mutates anything, never reads a clock (``ctx.tick`` is the
time), never does I/O. Applying the returned effects in order with ``sim.apply.apply`` is
the change.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from protocol.base import Request
from protocol.messages import (
    DestroyItem,
    EquipItem,
    GrantItem,
    MergeStacks,
    MoveItem,
    SortCompartment,
    SplitStack,
    UnequipItem,
    UseItem,
)
from protocol.model import AnyEffect, PlayerState
from sim.common import RuleContext, ticks_for_ms
from sim.equipment import equip_item, unequip_item
from sim.inventory import (
    destroy_item,
    grant_item,
    grant_starter_kit,
    merge_stacks,
    move_item,
    reconcile,
    sort_compartment,
    split_stack,
)
from sim.use import gain_xp, use_item

# Each rule narrows the intent to its own type; Any keeps one registry type for all.
Rule = Callable[[PlayerState, Any, RuleContext], list[AnyEffect]]

RULES: dict[type[Request], Rule] = {
    EquipItem: equip_item,
    UnequipItem: unequip_item,
    MoveItem: move_item,
    SplitStack: split_stack,
    MergeStacks: merge_stacks,
    SortCompartment: sort_compartment,
    DestroyItem: destroy_item,
    UseItem: use_item,
    GrantItem: grant_item,
}

# Rules that may create items and so need fresh ids in ``ctx.next_item_id``.
CREATES_ITEMS: frozenset[type[Request]] = frozenset({SplitStack, GrantItem})

__all__ = [
    "CREATES_ITEMS",
    "RULES",
    "Rule",
    "RuleContext",
    "destroy_item",
    "equip_item",
    "gain_xp",
    "grant_item",
    "grant_starter_kit",
    "merge_stacks",
    "move_item",
    "reconcile",
    "sort_compartment",
    "split_stack",
    "ticks_for_ms",
    "unequip_item",
    "use_item",
]
