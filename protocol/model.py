"""Game state and effects as they appear on the wire and in the journal.

An effect is a small typed fact about one player. It is the redo log (journal rows hold
its MessagePack bytes), the client delta stream and the change-feed source, so its shape
is part of the protocol contract: add fields with defaults, never repurpose one.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from protocol.types import CompartmentIndex, WireItemId

EquipSlot = Literal[
    "head",
    "neck",
    "shoulders",
    "chest",
    "back",
    "wrists",
    "hands",
    "waist",
    "legs",
    "feet",
    "ring1",
    "ring2",
    "trinket1",
    "trinket2",
    "main_hand",
    "off_hand",
]
EQUIP_SLOTS: tuple[EquipSlot, ...] = EquipSlot.__args__  # type: ignore[attr-defined]

CompartmentName = Literal["backpack"]
COMPARTMENTS: tuple[CompartmentName, ...] = CompartmentName.__args__  # type: ignore[attr-defined]


class ItemInstance(msgspec.Struct, frozen=True, kw_only=True):
    """One item a player owns. ``id`` is global and unique across all players."""

    id: WireItemId
    template: str
    qty: int = 1


class PlayerState(msgspec.Struct, kw_only=True):
    """Everything the simulation knows about one player.

    ``version`` counts the effects applied since the player was created; it is the
    optimistic-lock value, the snapshot position and the client's resume point.
    ``compartments`` maps a compartment name to its fixed list of cells (``None`` = empty);
    ``equipment`` maps an occupied slot to an item id; ``cooldowns`` maps a cooldown group
    to the Unix time in milliseconds at which it is ready again (deadlines, never
    countdowns). Milliseconds, not tick numbers: a tick number's meaning depends on the tick
    rate, and a deadline must survive a restart at another rate.
    """

    player_id: int
    name: str
    version: int = 0
    items: dict[int, ItemInstance] = msgspec.field(default_factory=dict)
    compartments: dict[str, list[int | None]] = msgspec.field(default_factory=dict)
    equipment: dict[str, int] = msgspec.field(default_factory=dict)
    cooldowns: dict[str, int] = msgspec.field(default_factory=dict)


class Effect(msgspec.Struct, frozen=True, kw_only=True, tag_field="e"):
    """Base of every effect. The tag field is ``e`` so effects nest inside messages."""


class ItemCreated(Effect, tag="item_created", frozen=True):
    """A new item appeared in a compartment cell (grant, starter kit)."""

    item: ItemInstance
    compartment: str
    index: CompartmentIndex


class ItemEquipped(Effect, tag="item_equipped", frozen=True):
    """``item_id`` moved from a compartment cell into ``slot``.

    If the slot was occupied, the previous occupant (``displaced``) moved into the cell the
    new item left: an equip into an occupied slot is one atomic swap.
    """

    item_id: WireItemId
    slot: EquipSlot
    compartment: str
    index: CompartmentIndex
    displaced: WireItemId | None = None


class ItemUnequipped(Effect, tag="item_unequipped", frozen=True):
    """``item_id`` left ``slot`` for an empty compartment cell."""

    item_id: WireItemId
    slot: EquipSlot
    compartment: str
    index: CompartmentIndex


class ItemMoved(Effect, tag="item_moved", frozen=True):
    """``item_id`` moved between compartment cells; an occupant of the target swapped back."""

    item_id: WireItemId
    from_compartment: str
    from_index: CompartmentIndex
    to_compartment: str
    to_index: CompartmentIndex
    displaced: WireItemId | None = None


class CooldownStarted(Effect, tag="cooldown_started", frozen=True):
    """Cooldown ``group`` is not ready again before ``ready_at_ms`` (Unix milliseconds, always
    on a tick boundary)."""

    group: str
    ready_at_ms: int


AnyEffect = ItemCreated | ItemEquipped | ItemUnequipped | ItemMoved | CooldownStarted
EFFECT_TYPES: tuple[type[Effect], ...] = AnyEffect.__args__
