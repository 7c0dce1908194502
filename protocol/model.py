"""Game state and effects as they appear on the wire and in the journal.

An effect is a small typed fact about one player. It is the redo log (journal rows hold
its MessagePack bytes), the client delta stream and the change-feed source, so its shape
is part of the protocol contract: add fields with defaults, never repurpose one. An effect
carries everything needed to apply it — applying never consults the item catalog — so a
client mirror (``protocol/mirror.py``) applies exactly what the server applies.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from protocol.types import WireItemId

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

Encumbrance = Literal["normal", "burdened", "overloaded"]

EQUIPMENT = "equipment"
LOST_AND_FOUND = "lost_and_found"

# A place an item can be: ["backpack", 3] (a compartment cell) or ["equipment", "head"].
Loc = tuple[str, int | str]


class ItemInstance(msgspec.Struct, frozen=True, kw_only=True):
    """One item a player owns. ``id`` is global and unique across all players.

    ``charges`` counts the uses left of a multi-use item (None: not a charged item);
    ``bound`` is set when the item binds to its owner (it can then never be traded).
    """

    id: WireItemId
    template: str
    qty: int = 1
    charges: int | None = None
    bound: bool = False


class ActiveEffect(msgspec.Struct, frozen=True, kw_only=True):
    """A timed stat modifier (a buff). Active while ``now_ms < expires_at_ms``."""

    source: str
    stats: dict[str, int]
    expires_at_ms: int


class PlayerState(msgspec.Struct, kw_only=True):
    """Everything the simulation knows about one player.

    ``version`` counts the effects applied since the player was created; it is the
    optimistic-lock value, the snapshot position and the client's resume point.
    ``compartments`` maps a compartment name to its cells (``None`` = empty);
    ``equipment`` maps an occupied slot to an item id (a two-handed item sits in
    ``main_hand`` and keeps ``off_hand`` empty). ``cooldowns`` maps a cooldown key to the
    Unix time in milliseconds at which it is ready again: deadlines, never countdowns, and
    milliseconds rather than tick numbers so a deadline survives a restart at another tick
    rate. ``skills`` holds XP per skill and ``skill_levels`` the level it gives (kept in the
    state by ``SkillLeveledUp`` effects so a client needs no XP curve); ``level`` likewise.
    ``grants`` remembers recent idempotency keys of grants, newest last, with the version
    after the grant (bounded: see ``GRANT_KEYS_KEPT``).
    """

    player_id: int
    name: str
    version: int = 0
    items: dict[int, ItemInstance] = msgspec.field(default_factory=dict)
    compartments: dict[str, list[int | None]] = msgspec.field(default_factory=dict)
    equipment: dict[str, int] = msgspec.field(default_factory=dict)
    cooldowns: dict[str, int] = msgspec.field(default_factory=dict)
    skills: dict[str, int] = msgspec.field(default_factory=dict)
    skill_levels: dict[str, int] = msgspec.field(default_factory=dict)
    level: int = 1
    health: int = 0
    active_effects: dict[str, ActiveEffect] = msgspec.field(default_factory=dict)
    grants: dict[str, int] = msgspec.field(default_factory=dict)


GRANT_KEYS_KEPT = 256


class Move(msgspec.Struct, frozen=True, array_like=True):
    """One item changing place: ``[item_id, src, dst]``."""

    item_id: WireItemId
    src: Loc
    dst: Loc


class Effect(msgspec.Struct, frozen=True, kw_only=True, tag_field="e"):
    """Base of every effect. The tag field is ``e`` so effects nest inside messages."""


MoveReason = Literal["equip", "unequip", "move", "swap", "sort", "lost_and_found"]


class ItemsMoved(Effect, tag="items_moved", frozen=True):
    """Items changed place, all at once: every ``src`` is vacated, then every ``dst`` filled.

    One effect per intent, so a swap, a two-handed equip that displaces both hands, or a
    whole-compartment sort is atomic for every observer.
    """

    reason: MoveReason
    moves: list[Move]


class ItemCreated(Effect, tag="item_created", frozen=True):
    """A new item appeared at ``dst`` (starter kit, grant, split)."""

    item: ItemInstance
    dst: Loc
    grant_key: str | None = None


class ItemDestroyed(Effect, tag="item_destroyed", frozen=True):
    """An item left the game from ``src`` (destroyed, used up, merged away)."""

    item_id: WireItemId
    src: Loc
    reason: Literal["destroyed", "used_up", "merged"] = "destroyed"


class StackChanged(Effect, tag="stack_changed", frozen=True):
    """An item's stack size is now ``qty`` (split, merge, use)."""

    item_id: WireItemId
    qty: int


class ChargesChanged(Effect, tag="charges_changed", frozen=True):
    item_id: WireItemId
    charges: int


class ItemBound(Effect, tag="item_bound", frozen=True):
    """The item is bound to its owner from now on."""

    item_id: WireItemId


class CompartmentResized(Effect, tag="compartment_resized", frozen=True):
    """A compartment now has ``size`` cells (created when it did not exist). Only ever
    grows: shrinking moves items to lost_and_found first, then resizes."""

    compartment: str
    size: int


class CooldownStarted(Effect, tag="cooldown_started", frozen=True):
    """Cooldown ``key`` is not ready again before ``ready_at_ms`` (Unix milliseconds, always
    on a tick boundary). Keys: a shared group name, or ``item:<template>`` for per-item."""

    key: str
    ready_at_ms: int


class HealthChanged(Effect, tag="health_changed", frozen=True):
    health: int


class ActiveEffectStarted(Effect, tag="active_effect_started", frozen=True):
    """A buff started (replacing any earlier one from the same source)."""

    effect: ActiveEffect


class XpGained(Effect, tag="xp_gained", frozen=True):
    """``amount`` XP in ``skill``; ``total`` is the skill's XP afterwards."""

    skill: str
    amount: int
    total: int


class SkillLeveledUp(Effect, tag="skill_leveled_up", frozen=True):
    skill: str
    level: int


class PlayerLeveledUp(Effect, tag="player_leveled_up", frozen=True):
    level: int


class GrantRecorded(Effect, tag="grant_recorded", frozen=True):
    """A grant with this idempotency key is done; ``version`` is the player's version after
    it. The oldest key beyond ``GRANT_KEYS_KEPT`` is forgotten."""

    key: str
    version: int


AnyEffect = (
    ItemsMoved
    | ItemCreated
    | ItemDestroyed
    | StackChanged
    | ChargesChanged
    | ItemBound
    | CompartmentResized
    | CooldownStarted
    | HealthChanged
    | ActiveEffectStarted
    | XpGained
    | SkillLeveledUp
    | PlayerLeveledUp
    | GrantRecorded
)
EFFECT_TYPES: tuple[type[Effect], ...] = AnyEffect.__args__
