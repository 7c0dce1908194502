"""Table-driven tests for every rule: one row per behaviour or error path, outputs only.

Every row starts from a player holding the test kit (``support.py``), plays ``setup`` from
tick ``SETUP`` (``Wait`` moves that clock on), then decides ``intent`` at ``tick`` against
``catalog`` and compares the effects, or the error's exact class and the details the client
gets. Every row also checks that deciding left the state byte-identical, and every row that
succeeds applies its effects and checks the state invariants (``check_invariants``).

Kit layout: backpack 0 cap, 1 helm, 2 girdle, 3 ring A, 4 ring B, 5 sword, 6 dagger,
7 greatsword, 8 shield, 9 potion x3, 10 elixir x2, 11 tome (12..15 free); belt 0 potion x2,
1 big potion; quest 0 relic. The kit weighs 12,000 g; capacity is 20,000 g (burdened above),
overloaded above 30,000 g; ore weighs 1,000 g. New items get ids 1001, 1002, ...
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec
import pytest

from protocol.errors import (
    BadRequestError,
    ConflictError,
    CooldownActiveError,
    ForbiddenError,
    GearhallError,
    InventoryFullError,
    ItemNotOwnedError,
    NotFoundError,
    OverloadedError,
    RequirementsNotMetError,
    SlotIncompatibleError,
)
from protocol.messages import (
    DestroyItem,
    EquipItem,
    MergeStacks,
    MoveItem,
    SortCompartment,
    SplitStack,
    UnequipItem,
    UseItem,
)
from protocol.model import (
    ActiveEffect,
    ActiveEffectStarted,
    AnyEffect,
    ChargesChanged,
    CompartmentResized,
    CooldownStarted,
    GrantRecorded,
    HealthChanged,
    ItemBound,
    ItemCreated,
    ItemDestroyed,
    ItemInstance,
    ItemsMoved,
    Loc,
    Move,
    MoveReason,
    PlayerLeveledUp,
    PlayerState,
    SkillLeveledUp,
    StackChanged,
    XpGained,
)
from sim.apply import apply_all
from sim.rules import RULES
from sim.state import encode_state, new_player
from sim.stats import StatsCache, compute_stats
from sim.templates import Catalog
from tests.sim.support import (
    BELT_POTION,
    BIG_POTION,
    CAP,
    CATALOG,
    DAGGER,
    ELIXIR,
    FIRST_NEW_ID,
    GIRDLE,
    GREATSWORD,
    HELM,
    KIT_IDS,
    KIT_VERSION,
    PLAYER_ID,
    POTION,
    RELIC,
    RING_A,
    RING_B,
    SHIELD,
    SWORD,
    TICK_MS,
    TOME,
    UNOWNED,
    GainXp,
    Reconcile,
    StarterKit,
    Step,
    check_invariants,
    decide,
    grant,
    play,
    starter,
    with_compartment,
    with_template,
    without_compartment,
    without_template,
)

SETUP = 1_000  # tick the setup starts at
LATER = 20_000  # default tick of the intent: every setup cooldown and buff is over
BP = "backpack"
LAF = "lost_and_found"
NEW, NEW2, NEW3 = FIRST_NEW_ID, FIRST_NEW_ID + 1, FIRST_NEW_ID + 2


def ms(tick: int) -> int:
    return tick * TICK_MS


# --- row vocabulary ----------------------------------------------------------------------


class Wait(msgspec.Struct, frozen=True):
    """In a setup: the following steps happen ``ticks`` later."""

    ticks: int


@dataclass(frozen=True)
class Raises:
    error: type[GearhallError]
    details: dict[str, object] = field(default_factory=dict)  # must be among the details


@dataclass(frozen=True)
class Case:
    description: str
    setup: tuple[Step | Wait | AnyEffect, ...]
    intent: Step
    expect: list[AnyEffect] | Raises
    tick: int = LATER
    catalog: Catalog = CATALOG  # the catalog the intent sees (the setup sees CATALOG)
    fresh: bool = False  # start from a player at version 0 instead of the kit


def equip(item_id: int, slot: str) -> EquipItem:
    return EquipItem(rid=1, item_id=item_id, slot=slot)  # type: ignore[arg-type]


def unequip(slot: str, compartment: str = BP, index: int | None = None) -> UnequipItem:
    return UnequipItem(rid=1, slot=slot, compartment=compartment, index=index)  # type: ignore[arg-type]


def move(item_id: int, compartment: str, index: int) -> MoveItem:
    return MoveItem(rid=1, item_id=item_id, compartment=compartment, index=index)


def split(item_id: int, qty: int, compartment: str, index: int) -> SplitStack:
    return SplitStack(rid=1, item_id=item_id, qty=qty, compartment=compartment, index=index)


def merge(item_id: int, into: int) -> MergeStacks:
    return MergeStacks(rid=1, item_id=item_id, into_item_id=into)


def sort(compartment: str) -> SortCompartment:
    return SortCompartment(rid=1, compartment=compartment)


def destroy(item_id: int, qty: int | None = None) -> DestroyItem:
    return DestroyItem(rid=1, item_id=item_id, qty=qty)


def use(item_id: int) -> UseItem:
    return UseItem(rid=1, item_id=item_id)


def bp(index: int) -> Loc:
    return (BP, index)


def at(compartment: str, index: int) -> Loc:
    return (compartment, index)


def eq(slot: str) -> Loc:
    return ("equipment", slot)


def moved(reason: MoveReason, *moves: tuple[int, Loc, Loc]) -> ItemsMoved:
    return ItemsMoved(reason=reason, moves=[Move(*m) for m in moves])


def created(
    item_id: int,
    template: str,
    dst: Loc,
    *,
    qty: int = 1,
    key: str | None = None,
    charges: int | None = None,
    bound: bool = False,
) -> ItemCreated:
    item = ItemInstance(id=item_id, template=template, qty=qty, charges=charges, bound=bound)
    return ItemCreated(item=item, dst=dst, grant_key=key)


def cooldown(key: str, tick: int) -> CooldownStarted:
    return CooldownStarted(key=key, ready_at_ms=ms(tick))


def need(required: int, current: int) -> dict[str, int]:
    return {"required": required, "current": current}


# Everything in the bank goes to lost_and_found (a designer removed the bank).
LOSE_BANK = Reconcile(without_compartment("bank"))
# Carrying 37,000 g at capacity 20,000 g: overloaded (the girdle's strength let them lift it).
OVERLOAD = (equip(GIRDLE, "waist"), grant("ore", 25), unequip("waist"))


# --- equip_item --------------------------------------------------------------------------

EQUIP_CASES = [
    Case(
        "into an empty slot",
        (),
        equip(CAP, "head"),
        [moved("equip", (CAP, bp(0), eq("head")))],
    ),
    Case(
        "a template with two slots fits the second",
        (),
        equip(RING_B, "ring2"),
        [moved("equip", (RING_B, bp(4), eq("ring2")))],
    ),
    Case(
        "into an occupied slot swaps, in one effect",
        (equip(RING_A, "ring1"),),
        equip(RING_B, "ring1"),
        [moved("swap", (RING_B, bp(4), eq("ring1")), (RING_A, eq("ring1"), bp(4)))],
    ),
    Case(
        "from one slot to another: the occupant takes the slot it left",
        (equip(RING_A, "ring1"), equip(RING_B, "ring2")),
        equip(RING_A, "ring2"),
        [moved("swap", (RING_A, eq("ring1"), eq("ring2")), (RING_B, eq("ring2"), eq("ring1")))],
    ),
    Case(
        "starts the slot's cooldown on a tick boundary (120 ms -> 3 ticks)",
        (),
        equip(DAGGER, "main_hand"),
        [moved("equip", (DAGGER, bp(6), eq("main_hand"))), cooldown("equip:main_hand", LATER + 3)],
    ),
    Case(
        "a two-hander displaces both hands in one effect and cools both down",
        (equip(SWORD, "main_hand"), equip(SHIELD, "off_hand")),
        equip(GREATSWORD, "main_hand"),
        [
            moved(
                "swap",
                (GREATSWORD, bp(7), eq("main_hand")),
                (SWORD, eq("main_hand"), bp(7)),
                (SHIELD, eq("off_hand"), bp(5)),
            ),
            cooldown("equip:main_hand", LATER + 40),
            cooldown("equip:off_hand", LATER + 40),
        ],
    ),
    Case(
        "off_hand equip displaces a two-hander",
        (equip(GREATSWORD, "main_hand"),),
        equip(SHIELD, "off_hand"),
        [moved("swap", (SHIELD, bp(8), eq("off_hand")), (GREATSWORD, eq("main_hand"), bp(8)))],
    ),
    Case(
        "a one-hander into main_hand displaces a two-hander",
        (equip(GREATSWORD, "main_hand"),),
        equip(SWORD, "main_hand"),
        [
            moved("swap", (SWORD, bp(5), eq("main_hand")), (GREATSWORD, eq("main_hand"), bp(5))),
            cooldown("equip:main_hand", LATER + 20),
        ],
    ),
    Case(
        "the displaced item takes the first free backpack cell if it may not go back",
        (equip(DAGGER, "main_hand"), move(SWORD, "bank", 0), LOSE_BANK),
        equip(SWORD, "main_hand"),
        [
            moved("swap", (SWORD, at(LAF, 0), eq("main_hand")), (DAGGER, eq("main_hand"), bp(5))),
            cooldown("equip:main_hand", LATER + 20),
        ],
    ),
    Case(
        "a displaced item goes back to the satchel when it fits its weight limit",
        (move(DAGGER, "satchel", 0), equip(SWORD, "main_hand")),
        equip(DAGGER, "main_hand"),
        [
            moved(
                "swap",
                (DAGGER, at("satchel", 0), eq("main_hand")),
                (SWORD, eq("main_hand"), at("satchel", 0)),
            ),
            cooldown("equip:main_hand", LATER + 3),
        ],
    ),
    Case(
        "a displaced item too heavy for the satchel goes to the backpack instead",
        (move(SWORD, "satchel", 0), equip(GREATSWORD, "main_hand")),
        equip(SWORD, "main_hand"),
        [
            moved(
                "swap",
                (SWORD, at("satchel", 0), eq("main_hand")),
                (GREATSWORD, eq("main_hand"), bp(5)),
            ),
            cooldown("equip:main_hand", LATER + 20),
        ],
    ),
    Case(
        "bind on equip: bound after the move",
        (),
        equip(GIRDLE, "waist"),
        [moved("equip", (GIRDLE, bp(2), eq("waist"))), ItemBound(item_id=GIRDLE)],
    ),
    Case(
        "an item already bound is not bound again",
        (equip(GIRDLE, "waist"), unequip("waist")),
        equip(GIRDLE, "waist"),
        [moved("equip", (GIRDLE, bp(2), eq("waist")))],
    ),
    Case(
        "from the bank",
        (move(CAP, "bank", 0),),
        equip(CAP, "head"),
        [moved("equip", (CAP, at("bank", 0), eq("head")))],
    ),
    Case(
        "an overloaded player may swap in lighter gear from the bank",
        (move(DAGGER, "bank", 0), equip(SWORD, "main_hand"), *OVERLOAD),
        equip(DAGGER, "main_hand"),
        [
            moved(
                "swap",
                (DAGGER, at("bank", 0), eq("main_hand")),
                (SWORD, eq("main_hand"), at("bank", 0)),
            ),
            cooldown("equip:main_hand", LATER + 3),
        ],
    ),
    Case(
        "requirements met once XP gives the level and the skill",
        (GainXp("swords", 200),),
        equip(HELM, "head"),
        [moved("equip", (HELM, bp(1), eq("head")))],
    ),
    Case(
        "equip again exactly when the cooldown ends",
        (equip(SWORD, "main_hand"),),
        equip(DAGGER, "main_hand"),
        [
            moved("swap", (DAGGER, bp(6), eq("main_hand")), (SWORD, eq("main_hand"), bp(6))),
            cooldown("equip:main_hand", SETUP + 23),
        ],
        tick=SETUP + 20,
    ),
    # errors
    Case(
        "an item the player does not own",
        (),
        equip(UNOWNED, "head"),
        Raises(ItemNotOwnedError, {"item_id": UNOWNED}),
    ),
    Case(
        "the template does not fit the slot",
        (),
        equip(CAP, "chest"),
        Raises(SlotIncompatibleError, {"item_id": CAP, "slot": "chest", "allowed_slots": ["head"]}),
    ),
    Case(
        "a two-hander only goes to main_hand",
        (),
        equip(GREATSWORD, "off_hand"),
        Raises(SlotIncompatibleError, {"slot": "off_hand", "allowed_slots": ["main_hand"]}),
    ),
    Case(
        "an item with no slot at all",
        (),
        equip(POTION, "head"),
        Raises(SlotIncompatibleError, {"item_id": POTION, "allowed_slots": []}),
    ),
    Case(
        "already in that slot",
        (equip(CAP, "head"),),
        equip(CAP, "head"),
        Raises(ConflictError, {"item_id": CAP, "slot": "head"}),
    ),
    Case(
        "its template is no longer in the catalog",
        (),
        equip(CAP, "head"),
        Raises(ConflictError, {"item_id": CAP, "template": "cap"}),
        catalog=without_template("cap"),
    ),
    Case(
        "an item that is nowhere (a broken state, made with a bogus effect) is refused",
        (created(500, "cap", bp(0)),),  # overwrites the cap's cell
        equip(CAP, "head"),
        Raises(ConflictError, {"item_id": CAP}),
    ),
    Case(
        "level and skill missing: both named, with required and current",
        (),
        equip(HELM, "head"),
        Raises(
            RequirementsNotMetError,
            {
                "item_id": HELM,
                "template": "helm",
                "missing": {"level": need(2, 1), "skills": {"swords": need(3, 1)}},
            },
        ),
    ),
    Case(
        "only the skill missing: only the skill named",
        (GainXp("alchemy", 100),),
        equip(HELM, "head"),
        Raises(RequirementsNotMetError, {"missing": {"skills": {"swords": need(3, 1)}}}),
    ),
    Case(
        "the slot's equip cooldown: ready_in_ms and retry_after_ms",
        (equip(SWORD, "main_hand"),),
        equip(DAGGER, "main_hand"),
        Raises(
            CooldownActiveError,
            {
                "group": "equip:main_hand",
                "ready_in_ms": 750,
                "retry_after_ms": 750,
                "ready_at_ms": ms(SETUP + 20),
            },
        ),
        tick=SETUP + 5,
    ),
    Case(
        "a two-hander checks the off_hand cooldown too",
        (equip(DAGGER, "off_hand"),),
        equip(GREATSWORD, "main_hand"),
        Raises(CooldownActiveError, {"group": "equip:off_hand", "ready_in_ms": 100}),
        tick=SETUP + 1,
    ),
    Case(
        "moving an item out of a slot on cooldown (to its other slot)",
        (equip(SWORD, "main_hand"),),
        equip(SWORD, "off_hand"),
        Raises(CooldownActiveError, {"group": "equip:main_hand", "ready_in_ms": 750}),
        tick=SETUP + 5,
    ),
    Case(
        "a two-hander displacing both hands with no free cell for the second",
        (equip(SWORD, "main_hand"), equip(SHIELD, "off_hand"), grant("cap", 6, BP)),
        equip(GREATSWORD, "main_hand"),
        Raises(InventoryFullError, {"compartment": BP}),
    ),
    Case(
        "a displaced item would overfill a weight-limited backpack",
        (move(SWORD, "satchel", 0), equip(GREATSWORD, "main_hand")),
        equip(SWORD, "main_hand"),
        Raises(ConflictError, {"compartment": BP, "weight": 9_600, "max_weight": 9_000}),
        catalog=with_compartment(BP, max_weight=9_000),
    ),
    Case(
        "equipping from the bank would overload",
        (move(SHIELD, "bank", 0), grant("ore", 20)),
        equip(SHIELD, "off_hand"),
        Raises(
            OverloadedError,
            {"carried_weight": 32_000, "carry_capacity": 20_000, "overloaded_above": 30_000},
        ),
    ),
]

# --- unequip_item ------------------------------------------------------------------------

UNEQUIP_CASES = [
    Case(
        "to the first free backpack cell",
        (equip(CAP, "head"),),
        unequip("head"),
        [moved("unequip", (CAP, eq("head"), bp(0)))],
    ),
    Case(
        "to a chosen cell",
        (equip(CAP, "head"),),
        unequip("head", BP, 13),
        [moved("unequip", (CAP, eq("head"), bp(13)))],
    ),
    Case(
        "into the bank",
        (equip(CAP, "head"),),
        unequip("head", "bank"),
        [moved("unequip", (CAP, eq("head"), at("bank", 0)))],
    ),
    Case(
        "a two-hander leaves main_hand",
        (equip(GREATSWORD, "main_hand"),),
        unequip("main_hand"),
        [moved("unequip", (GREATSWORD, eq("main_hand"), bp(7)))],
    ),
    Case(
        "nothing in the slot",
        (),
        unequip("head"),
        Raises(NotFoundError, {"slot": "head"}),
    ),
    Case(
        "the slot's equip cooldown",
        (equip(SWORD, "main_hand"),),
        unequip("main_hand"),
        Raises(CooldownActiveError, {"group": "equip:main_hand", "retry_after_ms": 750}),
        tick=SETUP + 5,
    ),
    Case(
        "an unknown compartment",
        (equip(CAP, "head"),),
        unequip("head", "pocket"),
        Raises(NotFoundError, {"compartment": "pocket"}),
    ),
    Case(
        "the equipment is not a compartment",
        (equip(CAP, "head"),),
        unequip("head", "equipment"),
        Raises(NotFoundError, {"compartment": "equipment"}),
    ),
    Case(
        "an index past the end",
        (equip(CAP, "head"),),
        unequip("head", BP, 16),
        Raises(BadRequestError, {"compartment": BP, "index": 16, "size": 16}),
    ),
    Case(
        "a negative index (only past the decoder)",
        (equip(CAP, "head"),),
        unequip("head", BP, -1),
        Raises(BadRequestError, {"index": -1}),
    ),
    Case(
        "an occupied cell",
        (equip(CAP, "head"),),
        unequip("head", BP, 1),
        Raises(ConflictError, {"compartment": BP, "index": 1, "occupant": HELM}),
    ),
    Case(
        "the belt takes only consumables",
        (equip(CAP, "head"),),
        unequip("head", "belt"),
        Raises(
            ConflictError, {"compartment": "belt", "accepts": ["consumable"], "category": "armor"}
        ),
    ),
    Case(
        "the quest compartment takes only quest items",
        (equip(CAP, "head"),),
        unequip("head", "quest", 1),
        Raises(ConflictError, {"compartment": "quest", "accepts": ["quest"]}),
    ),
    Case(
        "players cannot put anything into lost_and_found",
        (equip(CAP, "head"),),
        unequip("head", LAF, 0),
        Raises(ConflictError, {"compartment": LAF}),
    ),
    Case(
        "no free cell",
        (equip(CAP, "head"), grant("cap", 5, BP)),
        unequip("head"),
        Raises(InventoryFullError, {"compartment": BP}),
    ),
    Case(
        "over the satchel's weight limit",
        (move(SWORD, "satchel", 0), equip(SHIELD, "off_hand")),
        unequip("off_hand", "satchel"),
        Raises(ConflictError, {"compartment": "satchel", "weight": 3_500, "max_weight": 3_000}),
    ),
]

# --- move_item ---------------------------------------------------------------------------

MOVE_CASES = [
    Case(
        "to an empty cell",
        (),
        move(CAP, BP, 12),
        [moved("move", (CAP, bp(0), bp(12)))],
    ),
    Case(
        "onto an occupied cell swaps, in one effect",
        (),
        move(CAP, BP, 1),
        [moved("swap", (CAP, bp(0), bp(1)), (HELM, bp(1), bp(0)))],
    ),
    Case(
        "two stacks of a template swap: a move never merges",
        (),
        move(POTION, "belt", 0),
        [moved("swap", (POTION, bp(9), at("belt", 0)), (BELT_POTION, at("belt", 0), bp(9)))],
    ),
    Case(
        "onto its own cell: nothing",
        (),
        move(CAP, BP, 0),
        [],
    ),
    Case(
        "into the bank",
        (),
        move(CAP, "bank", 3),
        [moved("move", (CAP, bp(0), at("bank", 3)))],
    ),
    Case(
        "out of lost_and_found",
        (move(CAP, "bank", 0), LOSE_BANK),
        move(CAP, BP, 12),
        [moved("move", (CAP, at(LAF, 0), bp(12)))],
    ),
    Case(
        "an overloaded player may still rearrange what they carry",
        OVERLOAD,
        move(CAP, BP, 13),
        [moved("move", (CAP, bp(0), bp(13)))],
    ),
    Case(
        "within a full satchel: its weight does not change",
        (grant("ore", 3, "satchel"),),
        move(NEW, "satchel", 2),
        [moved("move", (NEW, at("satchel", 0), at("satchel", 2)))],
    ),
    Case(
        "an item the player does not own",
        (),
        move(UNOWNED, BP, 12),
        Raises(ItemNotOwnedError, {"item_id": UNOWNED}),
    ),
    Case(
        "an equipped item",
        (equip(CAP, "head"),),
        move(CAP, BP, 12),
        Raises(ConflictError, {"item_id": CAP, "slot": "head"}),
    ),
    Case(
        "an unknown compartment",
        (),
        move(CAP, "pocket", 0),
        Raises(NotFoundError, {"compartment": "pocket"}),
    ),
    Case(
        "an index past the end",
        (),
        move(CAP, "belt", 2),
        Raises(BadRequestError, {"compartment": "belt", "index": 2, "size": 2}),
    ),
    Case(
        "a negative index (only past the decoder)",
        (),
        move(CAP, BP, -1),
        Raises(BadRequestError, {"index": -1}),
    ),
    Case(
        "the belt refuses a non-consumable",
        (),
        move(CAP, "belt", 0),
        Raises(
            ConflictError, {"compartment": "belt", "accepts": ["consumable"], "category": "armor"}
        ),
    ),
    Case(
        "a swap the other item cannot make (the cap into the belt)",
        (),
        move(BELT_POTION, BP, 0),
        Raises(ConflictError, {"compartment": "belt", "category": "armor"}),
    ),
    Case(
        "the quest compartment refuses a non-quest item",
        (),
        move(CAP, "quest", 1),
        Raises(ConflictError, {"compartment": "quest", "category": "armor"}),
    ),
    Case(
        "players cannot put anything into lost_and_found",
        (),
        move(CAP, LAF, 0),
        Raises(ConflictError, {"compartment": LAF}),
    ),
    Case(
        "nor rearrange it",
        (move(CAP, "bank", 0), LOSE_BANK),
        move(CAP, LAF, 1),
        Raises(ConflictError, {"compartment": LAF}),
    ),
    Case(
        "over the satchel's weight limit",
        (),
        move(GREATSWORD, "satchel", 0),
        Raises(ConflictError, {"compartment": "satchel", "weight": 4_000, "max_weight": 3_000}),
    ),
    Case(
        "over the satchel's weight limit on a swap",
        (move(SWORD, "satchel", 0), move(DAGGER, "satchel", 1)),
        move(GREATSWORD, "satchel", 0),
        Raises(ConflictError, {"compartment": "satchel", "weight": 4_500}),
    ),
    Case(
        "taking it out of the bank would overload",
        (move(SHIELD, "bank", 0), grant("ore", 20)),
        move(SHIELD, BP, 12),
        Raises(OverloadedError, {"carried_weight": 32_000, "overloaded_above": 30_000}),
    ),
]

# --- split_stack -------------------------------------------------------------------------

SPLIT_CASES = [
    Case(
        "into an empty cell: a new item with a fresh id",
        (),
        split(POTION, 1, BP, 12),
        [StackChanged(item_id=POTION, qty=2), created(NEW, "potion", bp(12))],
    ),
    Case(
        "into another compartment",
        (),
        split(POTION, 2, "bank", 0),
        [StackChanged(item_id=POTION, qty=1), created(NEW, "potion", at("bank", 0), qty=2)],
    ),
    Case(
        "within a full satchel: its weight does not change",
        (grant("ore", 3, "satchel"),),
        split(NEW, 1, "satchel", 1),
        [StackChanged(item_id=NEW, qty=2), created(NEW2, "ore", at("satchel", 1))],
    ),
    Case(
        "a bound stack splits into bound stacks",
        (grant("badge", 10),),
        split(NEW, 4, BP, 13),
        [StackChanged(item_id=NEW, qty=6), created(NEW2, "badge", bp(13), qty=4, bound=True)],
    ),
    Case(
        "an item the player does not own",
        (),
        split(UNOWNED, 1, BP, 12),
        Raises(ItemNotOwnedError, {"item_id": UNOWNED}),
    ),
    Case(
        "an equipped item",
        (equip(CAP, "head"),),
        split(CAP, 1, BP, 12),
        Raises(ConflictError, {"item_id": CAP}),
    ),
    Case(
        "the whole stack",
        (),
        split(POTION, 3, BP, 12),
        Raises(BadRequestError, {"item_id": POTION, "qty": 3}),
    ),
    Case(
        "more than the stack",
        (),
        split(POTION, 4, BP, 12),
        Raises(BadRequestError, {"item_id": POTION, "qty": 3}),
    ),
    Case(
        "an unknown compartment",
        (),
        split(POTION, 1, "pocket", 0),
        Raises(NotFoundError, {"compartment": "pocket"}),
    ),
    Case(
        "an index past the end",
        (),
        split(POTION, 1, BP, 16),
        Raises(BadRequestError, {"index": 16, "size": 16}),
    ),
    Case(
        "an occupied cell",
        (),
        split(POTION, 1, BP, 0),
        Raises(ConflictError, {"compartment": BP, "index": 0, "occupant": CAP}),
    ),
    Case(
        "a compartment that does not take the category",
        (),
        split(POTION, 1, "quest", 1),
        Raises(ConflictError, {"compartment": "quest", "category": "consumable"}),
    ),
    Case(
        "players cannot put anything into lost_and_found",
        (),
        split(POTION, 1, LAF, 0),
        Raises(ConflictError, {"compartment": LAF}),
    ),
    Case(
        "its template is no longer in the catalog",
        (grant("ore", 10),),
        split(NEW, 5, BP, 13),
        Raises(ConflictError, {"item_id": NEW, "template": "ore"}),
        catalog=without_template("ore"),
    ),
    Case(
        "over the satchel's weight limit",
        (grant("ore", 5),),
        split(NEW, 4, "satchel", 0),
        Raises(ConflictError, {"compartment": "satchel", "weight": 4_000}),
    ),
    Case(
        "out of the bank, too heavy to carry",
        (grant("ore", 50, "bank"),),
        split(NEW, 19, BP, 12),
        Raises(OverloadedError, {"carried_weight": 31_000}),
    ),
]

# --- merge_stacks ------------------------------------------------------------------------

MERGE_CASES = [
    Case(
        "all of it fits: the source is merged away",
        (grant("potion", 2),),
        merge(NEW, POTION),
        [
            StackChanged(item_id=POTION, qty=5),
            ItemDestroyed(item_id=NEW, src=bp(12), reason="merged"),
        ],
    ),
    Case(
        "part of it fits: the rest stays",
        (grant("potion", 4),),
        merge(NEW, POTION),
        [StackChanged(item_id=POTION, qty=5), StackChanged(item_id=NEW, qty=2)],
    ),
    Case(
        "across compartments",
        (),
        merge(BELT_POTION, POTION),
        [
            StackChanged(item_id=POTION, qty=5),
            ItemDestroyed(item_id=BELT_POTION, src=at("belt", 0), reason="merged"),
        ],
    ),
    Case(
        "out of lost_and_found onto a carried stack",
        (grant("ore", 5, "bank"), LOSE_BANK, grant("ore", 5)),
        merge(NEW, NEW2),
        [
            StackChanged(item_id=NEW2, qty=10),
            ItemDestroyed(item_id=NEW, src=at(LAF, 0), reason="merged"),
        ],
    ),
    Case(
        "within a full satchel: its weight does not change",
        (grant("ore", 2, "satchel"), grant("ore", 1, "satchel")),
        merge(NEW2, NEW),
        [
            StackChanged(item_id=NEW, qty=3),
            ItemDestroyed(item_id=NEW2, src=at("satchel", 1), reason="merged"),
        ],
    ),
    Case(
        "an item the player does not own",
        (),
        merge(UNOWNED, POTION),
        Raises(ItemNotOwnedError, {"item_id": UNOWNED}),
    ),
    Case(
        "into an item the player does not own",
        (),
        merge(POTION, UNOWNED),
        Raises(ItemNotOwnedError, {"item_id": UNOWNED}),
    ),
    Case(
        "a stack into itself",
        (),
        merge(POTION, POTION),
        Raises(BadRequestError, {"item_id": POTION}),
    ),
    Case(
        "an equipped item",
        (equip(CAP, "head"),),
        merge(CAP, HELM),
        Raises(ConflictError, {"item_id": CAP, "slot": "head"}),
    ),
    Case(
        "into an equipped item",
        (equip(CAP, "head"),),
        merge(HELM, CAP),
        Raises(ConflictError, {"item_id": CAP, "slot": "head"}),
    ),
    Case(
        "different templates",
        (),
        merge(POTION, BIG_POTION),
        Raises(ConflictError, {"template": "potion", "into_template": "big_potion"}),
    ),
    Case(
        "bound and unbound never merge",
        (grant("girdle"), equip(GIRDLE, "waist"), unequip("waist")),
        merge(NEW, GIRDLE),
        Raises(ConflictError, {"item_id": NEW}),
    ),
    Case(
        "players cannot put anything into lost_and_found, merging neither",
        (grant("ore", 5, "bank"), LOSE_BANK, grant("ore", 5)),
        merge(NEW2, NEW),
        Raises(ConflictError, {"compartment": LAF}),
    ),
    Case(
        "its template is no longer in the catalog",
        (grant("ore", 5), grant("ore", 5)),
        merge(NEW, NEW2),
        Raises(ConflictError, {"template": "ore"}),
        catalog=without_template("ore"),
    ),
    Case(
        "the target stack is full",
        (grant("potion", 5),),
        merge(POTION, NEW),
        Raises(ConflictError, {"item_id": NEW, "max_stack": 5}),
    ),
    Case(
        "over the satchel's weight limit",
        (grant("ore", 2, "satchel"), grant("ore", 2)),
        merge(NEW2, NEW),
        Raises(ConflictError, {"compartment": "satchel", "weight": 4_000, "max_weight": 3_000}),
    ),
    Case(
        "out of the bank, too heavy to carry",
        (grant("ore", 20, "bank"), grant("ore", 10)),
        merge(NEW, NEW2),
        Raises(OverloadedError, {"carried_weight": 42_000}),
    ),
]

# --- sort_compartment --------------------------------------------------------------------

SORT_CASES = [
    Case(
        "the backpack: by category, then template, then id, compacted to the front",
        (),
        sort(BP),
        [
            moved(
                "sort",
                (DAGGER, bp(6), bp(0)),
                (GREATSWORD, bp(7), bp(1)),
                (SWORD, bp(5), bp(2)),
                (SHIELD, bp(8), bp(3)),
                (CAP, bp(0), bp(4)),
                (GIRDLE, bp(2), bp(5)),
                (HELM, bp(1), bp(6)),
                (RING_A, bp(3), bp(7)),
                (RING_B, bp(4), bp(8)),
                (ELIXIR, bp(10), bp(9)),
                (POTION, bp(9), bp(10)),
            )
        ],
    ),
    Case(
        "the belt: by template",
        (),
        sort("belt"),
        [
            moved(
                "sort",
                (BIG_POTION, at("belt", 1), at("belt", 0)),
                (BELT_POTION, at("belt", 0), at("belt", 1)),
            )
        ],
    ),
    Case(
        "gaps close and larger stacks come first",
        (grant("potion", 2, "bank"), grant("potion", 5, "bank"), move(NEW, "bank", 5)),
        sort("bank"),
        [moved("sort", (NEW2, at("bank", 1), at("bank", 0)), (NEW, at("bank", 5), at("bank", 1)))],
    ),
    Case(
        "sorting twice changes nothing",
        (sort(BP),),
        sort(BP),
        [],
    ),
    Case(
        "an unknown compartment",
        (),
        sort("pocket"),
        Raises(NotFoundError, {"compartment": "pocket"}),
    ),
    Case(
        "the equipment is not a compartment",
        (),
        sort("equipment"),
        Raises(NotFoundError, {"compartment": "equipment"}),
    ),
]

# --- destroy_item ------------------------------------------------------------------------

DESTROY_CASES = [
    Case("a whole item", (), destroy(CAP), [ItemDestroyed(item_id=CAP, src=bp(0))]),
    Case("part of a stack", (), destroy(POTION, 2), [StackChanged(item_id=POTION, qty=1)]),
    Case("exactly the stack", (), destroy(POTION, 3), [ItemDestroyed(item_id=POTION, src=bp(9))]),
    Case(
        "an item whose template is gone",
        (),
        destroy(CAP),
        [ItemDestroyed(item_id=CAP, src=bp(0))],
        catalog=without_template("cap"),
    ),
    Case(
        "out of lost_and_found",
        (move(CAP, "bank", 0), LOSE_BANK),
        destroy(CAP),
        [ItemDestroyed(item_id=CAP, src=at(LAF, 0))],
    ),
    Case(
        "an item the player does not own",
        (),
        destroy(UNOWNED),
        Raises(ItemNotOwnedError, {"item_id": UNOWNED}),
    ),
    Case(
        "an equipped item",
        (equip(CAP, "head"),),
        destroy(CAP),
        Raises(ConflictError, {"item_id": CAP, "slot": "head"}),
    ),
    Case(
        "a quest item",
        (),
        destroy(RELIC),
        Raises(ForbiddenError, {"item_id": RELIC}),
    ),
    Case(
        "more than the stack",
        (),
        destroy(POTION, 4),
        Raises(BadRequestError, {"item_id": POTION, "qty": 3}),
    ),
]

# --- use_item ----------------------------------------------------------------------------

USE_CASES = [
    Case(
        "a heal up to max health (raised by a ring), XP with a level-up, the group cooldown",
        (equip(RING_A, "ring1"),),
        use(POTION),
        [
            StackChanged(item_id=POTION, qty=2),
            HealthChanged(health=110),
            XpGained(skill="alchemy", amount=10, total=10),
            SkillLeveledUp(skill="alchemy", level=2),
            cooldown("healing", LATER + 200),
        ],
    ),
    Case(
        "a heal at full health still uses the item",
        (),
        use(POTION),
        [
            StackChanged(item_id=POTION, qty=2),
            HealthChanged(health=100),
            XpGained(skill="alchemy", amount=10, total=10),
            SkillLeveledUp(skill="alchemy", level=2),
            cooldown("healing", LATER + 200),
        ],
    ),
    Case(
        "the last of a stack is used up",
        (use(BELT_POTION),),
        use(BELT_POTION),
        [
            ItemDestroyed(item_id=BELT_POTION, src=at("belt", 0), reason="used_up"),
            HealthChanged(health=100),
            XpGained(skill="alchemy", amount=10, total=20),
            cooldown("healing", LATER + 200),
        ],
    ),
    Case(
        "usable again exactly when the cooldown ends",
        (use(POTION),),
        use(POTION),
        [
            StackChanged(item_id=POTION, qty=1),
            HealthChanged(health=100),
            XpGained(skill="alchemy", amount=10, total=20),
            cooldown("healing", SETUP + 400),
        ],
        tick=SETUP + 200,
    ),
    Case(
        "a skill requirement met",
        (GainXp("alchemy", 10),),
        use(BIG_POTION),
        [
            ItemDestroyed(item_id=BIG_POTION, src=at("belt", 1), reason="used_up"),
            HealthChanged(health=100),
            XpGained(skill="alchemy", amount=25, total=35),
            SkillLeveledUp(skill="alchemy", level=3),
            cooldown("healing", LATER + 200),
        ],
    ),
    Case(
        "a buff, with its expiry",
        (GainXp("swords", 100),),
        use(ELIXIR),
        [
            StackChanged(item_id=ELIXIR, qty=1),
            ActiveEffectStarted(
                effect=ActiveEffect(
                    source="elixir", stats={"strength": 10}, expires_at_ms=ms(LATER) + 60_000
                )
            ),
            cooldown("item:elixir", LATER + 100),
        ],
    ),
    Case(
        "a charge; XP two skill levels up gives one level-up effect; the character levels",
        (),
        use(TOME),
        [
            ChargesChanged(item_id=TOME, charges=2),
            XpGained(skill="swords", amount=250, total=250),
            SkillLeveledUp(skill="swords", level=3),
            PlayerLeveledUp(level=2),
            cooldown("item:tome", LATER + 20),
        ],
    ),
    Case(
        "the last charge destroys the item",
        (use(TOME), Wait(100), use(TOME)),
        use(TOME),
        [
            ItemDestroyed(item_id=TOME, src=bp(11), reason="used_up"),
            XpGained(skill="swords", amount=250, total=750),
            SkillLeveledUp(skill="swords", level=8),
            PlayerLeveledUp(level=4),
            cooldown("item:tome", LATER + 20),
        ],
    ),
    Case(
        "an item the player does not own",
        (),
        use(UNOWNED),
        Raises(ItemNotOwnedError, {"item_id": UNOWNED}),
    ),
    Case(
        "an item without a use",
        (),
        use(CAP),
        Raises(ConflictError, {"item_id": CAP, "template": "cap"}),
    ),
    Case(
        "an item in the bank",
        (move(POTION, "bank", 0),),
        use(POTION),
        Raises(ConflictError, {"item_id": POTION, "compartment": "bank"}),
    ),
    Case(
        "an item in lost_and_found",
        (move(POTION, "bank", 0), LOSE_BANK),
        use(POTION),
        Raises(ConflictError, {"item_id": POTION, "compartment": LAF}),
    ),
    Case(
        "its template is no longer in the catalog",
        (),
        use(POTION),
        Raises(ConflictError, {"item_id": POTION, "template": "potion"}),
        catalog=without_template("potion"),
    ),
    Case(
        "a skill too low: named with required and current",
        (),
        use(BIG_POTION),
        Raises(
            RequirementsNotMetError,
            {
                "item_id": BIG_POTION,
                "template": "big_potion",
                "missing": {"skills": {"alchemy": need(2, 1)}},
            },
        ),
    ),
    Case(
        "the character level too low",
        (),
        use(ELIXIR),
        Raises(RequirementsNotMetError, {"missing": {"level": need(2, 1)}}),
    ),
    Case(
        "its own cooldown: ready_in_ms and retry_after_ms",
        (GainXp("swords", 100), use(ELIXIR)),
        use(ELIXIR),
        Raises(
            CooldownActiveError,
            {
                "group": "item:elixir",
                "ready_in_ms": 4_950,
                "retry_after_ms": 4_950,
                "ready_at_ms": ms(SETUP + 100),
            },
        ),
        tick=SETUP + 1,
    ),
    Case(
        "a shared group: a potion blocks the other template too",
        (GainXp("alchemy", 10), use(POTION)),
        use(BIG_POTION),
        Raises(CooldownActiveError, {"group": "healing", "ready_in_ms": 8_000}),
        tick=SETUP + 40,
    ),
]

# --- grant_item --------------------------------------------------------------------------

GRANT_CASES = [
    Case(
        "into the first compartment that takes it; recorded with the version after it",
        (),
        grant("ore", 5, key="grant-ore-5"),
        [
            created(NEW, "ore", bp(12), qty=5, key="grant-ore-5"),
            GrantRecorded(key="grant-ore-5", version=KIT_VERSION + 2),
        ],
    ),
    Case(
        "split into stacks of max_stack",
        (),
        grant("potion", 12, key="grant-potions"),
        [
            created(NEW, "potion", bp(12), qty=5, key="grant-potions"),
            created(NEW2, "potion", bp(13), qty=5, key="grant-potions"),
            created(NEW3, "potion", bp(14), qty=2, key="grant-potions"),
            GrantRecorded(key="grant-potions", version=KIT_VERSION + 4),
        ],
    ),
    Case(
        "bound on pickup, with full charges",
        (),
        grant("tome", key="grant-tome"),
        [
            created(NEW, "tome", bp(12), key="grant-tome", charges=3, bound=True),
            GrantRecorded(key="grant-tome", version=KIT_VERSION + 2),
        ],
    ),
    Case(
        "into a named compartment, the bank, however heavy",
        (),
        grant("ore", 50, "bank", key="grant-bank"),
        [
            created(NEW, "ore", at("bank", 0), qty=50, key="grant-bank"),
            GrantRecorded(key="grant-bank", version=KIT_VERSION + 2),
        ],
    ),
    Case(
        "backpack full: the next carried compartment that takes it",
        (grant("cap", 4, BP),),
        grant("relic", key="grant-relic"),
        [
            created(NEW + 4, "relic", at("quest", 1), key="grant-relic"),
            GrantRecorded(key="grant-relic", version=KIT_VERSION + 5 + 2),
        ],
    ),
    Case(
        "exactly at the overload limit",
        (),
        grant("ore", 18, key="grant-heavy"),
        [
            created(NEW, "ore", bp(12), qty=18, key="grant-heavy"),
            GrantRecorded(key="grant-heavy", version=KIT_VERSION + 2),
        ],
    ),
    Case(
        "a replayed key changes nothing",
        (grant("ore", 5, key="grant-once"),),
        grant("ore", 5, key="grant-once"),
        [],
    ),
    Case(
        "a replayed key with another payload is still a replay",
        (grant("ore", 5, key="grant-once"),),
        grant("cap", 1, key="grant-once"),
        [],
    ),
    Case(
        "an unknown template",
        (),
        grant("unobtainium"),
        Raises(NotFoundError, {"template": "unobtainium"}),
    ),
    Case(
        "an unknown compartment",
        (),
        grant("ore", 1, "pocket"),
        Raises(NotFoundError, {"compartment": "pocket"}),
    ),
    Case(
        "a compartment that does not take the category",
        (),
        grant("ore", 1, "belt"),
        Raises(ConflictError, {"compartment": "belt"}),
    ),
    Case(
        "too many stacks for one grant",
        (),
        grant("relic", 65, "bank"),
        Raises(BadRequestError, {"stacks": 65, "max_stack": 1}),
    ),
    Case(
        "not enough free cells for every stack",
        (),
        grant("cap", 5, BP),
        Raises(InventoryFullError, {"compartment": BP}),
    ),
    Case(
        "no carried compartment with room",
        (grant("cap", 4, BP), grant("cap", 3, "satchel")),
        grant("cap"),
        Raises(InventoryFullError, {"compartment": BP}),
    ),
    Case(
        "over the satchel's weight limit",
        (),
        grant("ore", 4, "satchel"),
        Raises(ConflictError, {"compartment": "satchel", "weight": 4_000, "max_weight": 3_000}),
    ),
    Case(
        "a grant that would overload",
        (),
        grant("ore", 19),
        Raises(
            OverloadedError,
            {"carried_weight": 31_000, "carry_capacity": 20_000, "overloaded_above": 30_000},
        ),
    ),
    Case(
        "an overloaded player picks up nothing",
        OVERLOAD,
        grant("badge"),
        Raises(OverloadedError, {"carried_weight": 37_010, "carry_capacity": 20_000}),
    ),
]

# --- grant_starter_kit -------------------------------------------------------------------

KIT_EFFECTS: list[AnyEffect] = [
    CompartmentResized(compartment=BP, size=16),
    CompartmentResized(compartment="belt", size=2),
    CompartmentResized(compartment="quest", size=2),
    CompartmentResized(compartment="satchel", size=3),
    CompartmentResized(compartment="bank", size=8),
    CompartmentResized(compartment=LAF, size=2),
    created(CAP, "cap", bp(0)),
    created(HELM, "helm", bp(1)),
    created(GIRDLE, "girdle", bp(2)),
    created(RING_A, "ring", bp(3)),
    created(RING_B, "ring", bp(4)),
    created(SWORD, "sword", bp(5)),
    created(DAGGER, "dagger", bp(6)),
    created(GREATSWORD, "greatsword", bp(7)),
    created(SHIELD, "shield", bp(8)),
    created(POTION, "potion", bp(9), qty=3),
    created(ELIXIR, "elixir", bp(10), qty=2),
    created(TOME, "tome", bp(11), charges=3, bound=True),
    created(BELT_POTION, "potion", at("belt", 0), qty=2),
    created(BIG_POTION, "big_potion", at("belt", 1)),
    created(RELIC, "relic", at("quest", 0)),
    HealthChanged(health=100),
]

KIT_CASES = [
    Case(
        "compartments, then the kit in order, then full health",
        (),
        StarterKit(),
        KIT_EFFECTS,
        fresh=True,
    ),
    Case(
        "only for a new player",
        (),
        StarterKit(),
        Raises(ConflictError),
    ),
    Case(
        "too few ids",
        (),
        StarterKit(KIT_IDS[:-1]),
        Raises(ConflictError, {"needed": 15}),
        fresh=True,
    ),
    Case(
        "ids used twice",
        (),
        StarterKit((101,) * 15),
        Raises(ConflictError),
        fresh=True,
    ),
    Case(
        "a kit that does not fit (a catalog parse_templates would refuse)",
        (),
        StarterKit(),
        Raises(InventoryFullError, {"compartment": "belt"}),
        catalog=with_compartment("belt", slots=1),
        fresh=True,
    ),
]

# --- reconcile ---------------------------------------------------------------------------

RECONCILE_CASES = [
    Case(
        "a catalog that matches: nothing",
        (equip(CAP, "head"),),
        Reconcile(CATALOG),
        [],
    ),
    Case(
        "template removed: the equipped item goes to lost_and_found",
        (equip(CAP, "head"),),
        Reconcile(without_template("cap")),
        [moved("lost_and_found", (CAP, eq("head"), at(LAF, 0)))],
    ),
    Case(
        "template removed: a stored item goes too",
        (),
        Reconcile(without_template("tome")),
        [moved("lost_and_found", (TOME, bp(11), at(LAF, 0)))],
    ),
    Case(
        "template's slot changed while equipped",
        (equip(CAP, "head"),),
        Reconcile(with_template("cap", slots=("neck",))),
        [moved("lost_and_found", (CAP, eq("head"), at(LAF, 0)))],
    ),
    Case(
        "template became two-handed: the off_hand item leaves",
        (equip(SWORD, "main_hand"), equip(SHIELD, "off_hand")),
        Reconcile(with_template("sword", slots=("main_hand",), two_handed=True)),
        [moved("lost_and_found", (SHIELD, eq("off_hand"), at(LAF, 0)))],
    ),
    Case(
        "compartment shrunk: items beyond its end move",
        (),
        Reconcile(with_compartment(BP, slots=11)),
        [moved("lost_and_found", (TOME, bp(11), at(LAF, 0)))],
    ),
    Case(
        "compartment removed: its items move",
        (move(CAP, "bank", 2),),
        Reconcile(without_compartment("bank")),
        [moved("lost_and_found", (CAP, at("bank", 2), at(LAF, 0)))],
    ),
    Case(
        "compartment no longer takes a category",
        (),
        Reconcile(with_compartment("belt", accepts=("quest",))),
        [
            moved(
                "lost_and_found",
                (BELT_POTION, at("belt", 0), at(LAF, 0)),
                (BIG_POTION, at("belt", 1), at(LAF, 1)),
            )
        ],
    ),
    Case(
        "lost_and_found grows when full: nothing is deleted",
        (),
        Reconcile(with_compartment(BP, slots=9)),
        [
            CompartmentResized(compartment=LAF, size=3),
            moved(
                "lost_and_found",
                (POTION, bp(9), at(LAF, 0)),
                (ELIXIR, bp(10), at(LAF, 1)),
                (TOME, bp(11), at(LAF, 2)),
            ),
        ],
    ),
    Case(
        "lost_and_found already in use grows by what is missing",
        (move(CAP, "bank", 0), LOSE_BANK),
        Reconcile(with_compartment("belt", accepts=("quest",))),
        [
            CompartmentResized(compartment=LAF, size=3),
            moved(
                "lost_and_found",
                (BELT_POTION, at("belt", 0), at(LAF, 1)),
                (BIG_POTION, at("belt", 1), at(LAF, 2)),
            ),
        ],
    ),
    Case(
        "a new compartment is created",
        (),
        Reconcile(with_compartment("keyring", slots=4)),
        [CompartmentResized(compartment="keyring", size=4)],
    ),
    Case(
        "a grown compartment grows",
        (),
        Reconcile(with_compartment("bank", slots=12)),
        [CompartmentResized(compartment="bank", size=12)],
    ),
    Case(
        "items in lost_and_found stay there whatever their template",
        (move(CAP, "bank", 0), LOSE_BANK),
        Reconcile(without_template("cap")),
        [],
    ),
]

# --- XP (gain_xp, used by use_item and any action that grants XP) ------------------------

XP_CASES = [
    Case(
        "XP within a level",
        (),
        GainXp("alchemy", 5),
        [XpGained(skill="alchemy", amount=5, total=5)],
    ),
    Case(
        "several skill levels at once: one level-up effect with the final level",
        (),
        GainXp("alchemy", 70),
        [XpGained(skill="alchemy", amount=70, total=70), SkillLeveledUp(skill="alchemy", level=4)],
    ),
    Case(
        "the character level follows total XP over all skills",
        (GainXp("alchemy", 60),),
        GainXp("swords", 50),
        [XpGained(skill="swords", amount=50, total=50), PlayerLeveledUp(level=2)],
    ),
    Case(
        "levels are capped at the curves' max levels",
        (),
        GainXp("swords", 10**6),
        [
            XpGained(skill="swords", amount=10**6, total=10**6),
            SkillLeveledUp(skill="swords", level=10),
            PlayerLeveledUp(level=10),
        ],
    ),
    Case(
        "at the cap, more XP changes no level",
        (GainXp("swords", 10**6),),
        GainXp("swords", 1),
        [XpGained(skill="swords", amount=1, total=10**6 + 1)],
    ),
]

ALL_CASES = {
    "equip_item": EQUIP_CASES,
    "unequip_item": UNEQUIP_CASES,
    "move_item": MOVE_CASES,
    "split_stack": SPLIT_CASES,
    "merge_stacks": MERGE_CASES,
    "sort_compartment": SORT_CASES,
    "destroy_item": DESTROY_CASES,
    "use_item": USE_CASES,
    "grant_item": GRANT_CASES,
    "grant_starter_kit": KIT_CASES,
    "reconcile": RECONCILE_CASES,
    "gain_xp": XP_CASES,
}
ROWS = [
    pytest.param(case, id=f"{rule}: {case.description}")
    for rule, cases in ALL_CASES.items()
    for case in cases
]


def prepare(setup: tuple[Step | Wait | AnyEffect, ...], fresh: bool = False) -> PlayerState:
    """The player after ``setup``, played from tick ``SETUP``. Returns it."""
    player = new_player(PLAYER_ID, "tester") if fresh else starter()
    tick = SETUP
    for step in setup:
        if isinstance(step, Wait):
            tick += step.ticks
        else:
            play(player, [step], tick)
    return player


@pytest.mark.parametrize("case", ROWS)
def test_rule(case: Case) -> None:
    player = prepare(case.setup, case.fresh)
    before = encode_state(player)
    if isinstance(case.expect, Raises):
        with pytest.raises(GearhallError) as caught:
            decide(player, case.intent, case.tick, case.catalog)
        error = caught.value
        assert type(error) is case.expect.error, error.message
        assert {k: error.details.get(k) for k in case.expect.details} == case.expect.details
        assert encode_state(player) == before, "the rule mutated the state"
        return
    effects = decide(player, case.intent, case.tick, case.catalog)
    assert effects == case.expect
    assert encode_state(player) == before, "the rule mutated the state"
    apply_all(player, effects)
    # States are checked against the catalog they live under: after a reconcile, the new
    # one; rows that decide under an edited catalog without reconciling are not checked.
    checked = case.intent.catalog if isinstance(case.intent, Reconcile) else case.catalog
    if checked is CATALOG or isinstance(case.intent, Reconcile):
        check_invariants(player, checked)


@pytest.mark.parametrize("case", [c for c in RECONCILE_CASES if c.expect])
def test_reconcile_deletes_nothing_and_is_done_once(case: Case) -> None:
    assert isinstance(case.intent, Reconcile)
    player = prepare(case.setup, case.fresh)
    items = dict(player.items)
    apply_all(player, decide(player, case.intent, LATER))
    assert player.items == items
    assert decide(player, case.intent, LATER) == []


def test_every_rule_has_rows() -> None:
    """Each registered intent appears in a table (new rules need rows)."""
    tested = {type(case.intent) for cases in ALL_CASES.values() for case in cases}
    assert set(RULES) <= tested


# --- stats and encumbrance ---------------------------------------------------------------


@dataclass(frozen=True)
class StatsCase:
    description: str
    setup: tuple[Step | Wait, ...]
    expect: dict[str, object]  # fields of Stats; "strength" is values["strength"]
    tick: int = LATER


STATS_CASES = [
    StatsCase(
        "the kit: normal",
        (),
        {
            "carried_weight": 12_000,
            "carry_capacity": 20_000,
            "encumbrance": "normal",
            "movement_speed": 100,
            "strength": 10,
        },
    ),
    StatsCase(
        "exactly at capacity: still normal",
        (grant("ore", 8),),
        {"carried_weight": 20_000, "encumbrance": "normal", "movement_speed": 100},
    ),
    StatsCase(
        "above capacity: burdened and slower",
        (grant("ore", 9),),
        {"carried_weight": 21_000, "encumbrance": "burdened", "movement_speed": 75},
    ),
    StatsCase(
        "exactly at the overload limit: still burdened",
        (grant("ore", 18),),
        {"carried_weight": 30_000, "encumbrance": "burdened", "movement_speed": 75},
    ),
    StatsCase(
        "strength lost (the girdle taken off) leaves the load overloaded",
        OVERLOAD,
        {
            "carried_weight": 37_000,
            "carry_capacity": 20_000,
            "encumbrance": "overloaded",
            "movement_speed": 25,
        },
    ),
    StatsCase(
        "equipment adds its stats, and strength adds capacity",
        (equip(SWORD, "main_hand"),),
        {"strength": 12, "carry_capacity": 22_000, "carried_weight": 12_000},
    ),
    StatsCase(
        "a buff counts while it lasts",
        (GainXp("swords", 100), use(ELIXIR)),
        {"strength": 20, "carry_capacity": 30_000, "valid_until_ms": ms(SETUP) + 60_000},
        tick=SETUP + 1_199,
    ),
    StatsCase(
        "and not from the millisecond it expires",
        (GainXp("swords", 100), use(ELIXIR)),
        {"strength": 10, "carry_capacity": 20_000},
        tick=SETUP + 1_200,
    ),
    StatsCase(
        "the bank is not carried",
        (move(GREATSWORD, "bank", 0),),
        {"carried_weight": 8_000},
    ),
    StatsCase(
        "lost_and_found is not carried",
        (move(GREATSWORD, "bank", 0), LOSE_BANK),
        {"carried_weight": 8_000},
    ),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.description) for c in STATS_CASES])
def test_stats(case: StatsCase) -> None:
    player = prepare(case.setup)
    stats = compute_stats(player, CATALOG, ms(case.tick))
    got = {**msgspec.structs.asdict(stats), "strength": stats.values.get("strength")}
    assert {k: got[k] for k in case.expect} == case.expect


def test_stats_cache_follows_effects_and_buff_expiry() -> None:
    player = prepare((GainXp("swords", 100), use(ELIXIR)))
    cache = StatsCache(CATALOG)
    assert cache.get(player, ms(SETUP + 1)).values["strength"] == 20
    # The buff runs out with no effect: the cache must notice by time alone.
    assert cache.get(player, ms(SETUP + 1_200)).values["strength"] == 10
    # An effect changes the version: recomputed.
    play(player, [equip(SWORD, "main_hand")], SETUP + 1_200)
    assert cache.get(player, ms(SETUP + 1_201)).values["strength"] == 12
    assert cache.get(player, ms(SETUP + 1_201)) == compute_stats(player, CATALOG, ms(SETUP + 1_201))
    cache.forget(PLAYER_ID)
    assert cache.get(player, ms(SETUP + 1_201)).values["strength"] == 12


def test_grant_without_compartment_goes_where_every_stack_fits() -> None:
    # Backpack (first in catalog order) keeps 1 free cell; a 2-stack grant skips it for
    # the satchel, the next carried compartment that takes consumables and has 2 free cells.
    player = starter()
    play(player, [grant("potion", 5 * 3, compartment=BP)], 0)
    cells = player.compartments[BP]
    assert sum(cell is None for cell in cells) == 1
    effects = decide(player, grant("potion", 10), 0)
    created = [e for e in effects if isinstance(e, ItemCreated)]
    assert [c.dst[0] for c in created] == ["satchel", "satchel"]
    # One stack still fits the backpack's last cell: first in catalog order wins.
    effects = decide(player, grant("potion", 5), 0)
    assert [e.dst for e in effects if isinstance(e, ItemCreated)] == [(BP, 15)]
