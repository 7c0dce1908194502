"""Table-driven tests for the inventory rules: one row per behaviour, outputs only.

Every row starts from a player holding the test kit (``support.py``: cap, helm, vest, two
rings, sword, buckler, bread in backpack cells 0..7), plays ``setup`` at tick ``SETUP_TICK``,
then decides ``intent`` at ``tick`` and compares the effects or the error (class, code and
details). Every row also checks the rule left the state byte-identical.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from protocol.errors import (
    BadRequestError,
    ConflictError,
    CooldownActiveError,
    GearhallError,
    InventoryFullError,
    ItemNotOwnedError,
    NotFoundError,
    SlotIncompatibleError,
)
from protocol.messages import EquipItem, MoveItem, Request, UnequipItem
from protocol.model import (
    AnyEffect,
    CooldownStarted,
    ItemCreated,
    ItemEquipped,
    ItemInstance,
    ItemMoved,
    ItemUnequipped,
    PlayerState,
)
from sim.apply import apply_all
from sim.rules import RuleContext, equip_item, grant_starter_kit, ticks_for_ms, unequip_item
from sim.state import encode_state, new_player
from sim.templates import Catalog, parse_templates
from tests.sim.support import (
    BACKPACK_SIZE,
    BREAD,
    BUCKLER,
    CAP,
    CATALOG,
    HELM,
    KIT_IDS,
    RING_A,
    RING_B,
    SWORD,
    TICK_MS,
    UNOWNED,
    VEST,
    ctx,
    decide,
    play,
    starter,
)

BP = "backpack"
SETUP_TICK = 1000
LATER = 5000  # long after every setup cooldown
SWORD_READY = SETUP_TICK + 20  # 1000 ms at 50 ms per tick


@dataclass(frozen=True)
class Raises:
    error: type[GearhallError]
    details: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class Case:
    description: str
    setup: tuple[Request | AnyEffect, ...]
    intent: Request
    expect: list[AnyEffect] | Raises
    tick: int = LATER


def equip(item_id: int, slot: str) -> EquipItem:
    return EquipItem(rid=1, item_id=item_id, slot=slot)  # type: ignore[arg-type]


def unequip(slot: str, compartment: str = BP, index: int | None = None) -> UnequipItem:
    return UnequipItem(rid=1, slot=slot, compartment=compartment, index=index)  # type: ignore[arg-type]


def move(item_id: int, index: int, compartment: str = BP) -> MoveItem:
    return MoveItem(rid=1, item_id=item_id, compartment=compartment, index=index)


# After equipping the cap, the free cells are 0 and 8..23; these fill them all.
FILL_BACKPACK: tuple[AnyEffect, ...] = tuple(
    ItemCreated(item=ItemInstance(id=200 + i, template="bread"), compartment=BP, index=i)
    for i in (0, *range(8, BACKPACK_SIZE))
)

EQUIP_CASES = [
    Case(
        "equip into an empty slot",
        (),
        equip(CAP, "head"),
        [ItemEquipped(item_id=CAP, slot="head", compartment=BP, index=0)],
    ),
    Case(
        "a two-slot template fits its second slot",
        (),
        equip(RING_B, "ring2"),
        [ItemEquipped(item_id=RING_B, slot="ring2", compartment=BP, index=4)],
    ),
    Case(
        "the effect names the cell the item is in now",
        (move(VEST, 17),),
        equip(VEST, "chest"),
        [ItemEquipped(item_id=VEST, slot="chest", compartment=BP, index=17)],
    ),
    Case(
        "template does not fit the slot",
        (),
        equip(CAP, "chest"),
        Raises(SlotIncompatibleError, {"item_id": CAP, "slot": "chest", "allowed_slots": ["head"]}),
    ),
    Case(
        "a two-slot template lists both allowed slots",
        (),
        equip(SWORD, "head"),
        Raises(SlotIncompatibleError, {"allowed_slots": ["main_hand", "off_hand"]}),
    ),
    Case(
        "an unequippable template allows no slot",
        (),
        equip(BREAD, "main_hand"),
        Raises(SlotIncompatibleError, {"item_id": BREAD, "allowed_slots": []}),
    ),
    Case(
        "item not owned",
        (),
        equip(UNOWNED, "head"),
        Raises(ItemNotOwnedError, {"item_id": UNOWNED}),
    ),
    Case(
        "occupied slot swaps in one effect",
        (equip(CAP, "head"),),
        equip(HELM, "head"),
        [ItemEquipped(item_id=HELM, slot="head", compartment=BP, index=1, displaced=CAP)],
    ),
    Case(
        "the displaced ring takes the cell the new ring left",
        (equip(RING_A, "ring1"),),
        equip(RING_B, "ring1"),
        [ItemEquipped(item_id=RING_B, slot="ring1", compartment=BP, index=4, displaced=RING_A)],
    ),
    Case(
        "already equipped in the same slot",
        (equip(CAP, "head"),),
        equip(CAP, "head"),
        Raises(ConflictError, {"item_id": CAP, "slot": "head"}),
    ),
    Case(
        "already equipped in another slot: no slot-to-slot move",
        (equip(RING_A, "ring1"),),
        equip(RING_A, "ring2"),
        Raises(ConflictError, {"item_id": RING_A, "slot": "ring1"}),
    ),
    Case(
        "a cooldown template starts the slot's cooldown",
        (),
        equip(SWORD, "main_hand"),
        [
            ItemEquipped(item_id=SWORD, slot="main_hand", compartment=BP, index=5),
            CooldownStarted(group="equip:main_hand", ready_at_ms=(LATER + 20) * TICK_MS),
        ],
    ),
    Case(
        "a cooldown is rounded up to whole ticks (120 ms -> 3 ticks)",
        (),
        equip(BUCKLER, "off_hand"),
        [
            ItemEquipped(item_id=BUCKLER, slot="off_hand", compartment=BP, index=6),
            CooldownStarted(group="equip:off_hand", ready_at_ms=(LATER + 3) * TICK_MS),
        ],
    ),
    Case(
        "cooldown blocks equip into the slot",
        (equip(SWORD, "off_hand"),),
        equip(BUCKLER, "off_hand"),
        Raises(
            CooldownActiveError,
            {
                "group": "equip:off_hand",
                "retry_after_ms": 19 * TICK_MS,
                "ready_at_ms": SWORD_READY * TICK_MS,
            },
        ),
        tick=SETUP_TICK + 1,
    ),
    Case(
        "cooldown still active one tick before ready_at_ms",
        (equip(SWORD, "off_hand"),),
        equip(BUCKLER, "off_hand"),
        Raises(
            CooldownActiveError, {"retry_after_ms": TICK_MS, "ready_at_ms": SWORD_READY * TICK_MS}
        ),
        tick=SWORD_READY - 1,
    ),
    Case(
        "cooldown expires exactly at ready_at_ms (and the swap restarts it)",
        (equip(SWORD, "off_hand"),),
        equip(BUCKLER, "off_hand"),
        [
            ItemEquipped(
                item_id=BUCKLER, slot="off_hand", compartment=BP, index=6, displaced=SWORD
            ),
            CooldownStarted(group="equip:off_hand", ready_at_ms=(SWORD_READY + 3) * TICK_MS),
        ],
        tick=SWORD_READY,
    ),
    Case(
        "a cooldown belongs to its slot only",
        (equip(SWORD, "main_hand"),),
        equip(BUCKLER, "off_hand"),
        [
            ItemEquipped(item_id=BUCKLER, slot="off_hand", compartment=BP, index=6),
            CooldownStarted(group="equip:off_hand", ready_at_ms=(SETUP_TICK + 1 + 3) * TICK_MS),
        ],
        tick=SETUP_TICK + 1,
    ),
]

UNEQUIP_CASES = [
    Case(
        "unequip into the first free cell",
        (equip(CAP, "head"), move(HELM, 0)),  # cell 0 refilled, cell 1 now the first free
        unequip("head"),
        [ItemUnequipped(item_id=CAP, slot="head", compartment=BP, index=1)],
    ),
    Case(
        "unequip into an explicit free cell",
        (equip(CAP, "head"),),
        unequip("head", index=20),
        [ItemUnequipped(item_id=CAP, slot="head", compartment=BP, index=20)],
    ),
    Case(
        "unequip into an occupied cell",
        (equip(CAP, "head"),),
        unequip("head", index=1),
        Raises(ConflictError, {"compartment": BP, "index": 1, "occupant": HELM}),
    ),
    Case(
        "unequip with a full backpack",
        (equip(CAP, "head"), *FILL_BACKPACK),
        unequip("head"),
        Raises(InventoryFullError, {"compartment": BP}),
    ),
    Case(
        "unequip with a full backpack into an explicit cell is a cell conflict",
        (equip(CAP, "head"), *FILL_BACKPACK),
        unequip("head", index=23),
        Raises(ConflictError, {"index": 23, "occupant": 223}),
    ),
    Case(
        "index one past the end",
        (equip(CAP, "head"),),
        unequip("head", index=BACKPACK_SIZE),
        Raises(BadRequestError, {"compartment": BP, "index": BACKPACK_SIZE, "size": BACKPACK_SIZE}),
    ),
    Case(
        "negative index",
        (equip(CAP, "head"),),
        unequip("head", index=-1),
        Raises(BadRequestError, {"index": -1, "size": BACKPACK_SIZE}),
    ),
    Case(
        "unknown compartment",
        (equip(CAP, "head"),),
        unequip("head", compartment="bank"),
        Raises(NotFoundError, {"compartment": "bank"}),
    ),
    Case(
        "nothing equipped in the slot",
        (),
        unequip("head"),
        Raises(NotFoundError, {"slot": "head"}),
    ),
    Case(
        "the slot's cooldown blocks unequip",
        (equip(SWORD, "main_hand"),),
        unequip("main_hand"),
        Raises(
            CooldownActiveError,
            {
                "group": "equip:main_hand",
                "retry_after_ms": 15 * TICK_MS,
                "ready_at_ms": SWORD_READY * TICK_MS,
            },
        ),
        tick=SETUP_TICK + 5,
    ),
    Case(
        "unequip allowed exactly at ready_at_ms",
        (equip(SWORD, "main_hand"),),
        unequip("main_hand"),
        [ItemUnequipped(item_id=SWORD, slot="main_hand", compartment=BP, index=5)],
        tick=SWORD_READY,
    ),
]

MOVE_CASES = [
    Case(
        "move to an empty cell",
        (),
        move(CAP, 10),
        [ItemMoved(item_id=CAP, from_compartment=BP, from_index=0, to_compartment=BP, to_index=10)],
    ),
    Case(
        "move onto an occupied cell swaps",
        (),
        move(CAP, 1),
        [
            ItemMoved(
                item_id=CAP,
                from_compartment=BP,
                from_index=0,
                to_compartment=BP,
                to_index=1,
                displaced=HELM,
            )
        ],
    ),
    Case("move onto its own cell is a no-op", (), move(HELM, 1), []),
    Case("item not owned", (), move(UNOWNED, 10), Raises(ItemNotOwnedError, {"item_id": UNOWNED})),
    Case(
        "an equipped item cannot be moved",
        (equip(CAP, "head"),),
        move(CAP, 10),
        Raises(ConflictError, {"item_id": CAP, "slot": "head"}),
    ),
    Case(
        "into the cell an equipped item left",
        (equip(CAP, "head"),),
        move(HELM, 0),
        [ItemMoved(item_id=HELM, from_compartment=BP, from_index=1, to_compartment=BP, to_index=0)],
    ),
    Case(
        "index one past the end",
        (),
        move(CAP, BACKPACK_SIZE),
        Raises(BadRequestError, {"compartment": BP, "index": BACKPACK_SIZE, "size": BACKPACK_SIZE}),
    ),
    Case("negative index", (), move(CAP, -1), Raises(BadRequestError, {"index": -1})),
    Case(
        "unknown compartment",
        (),
        move(CAP, 0, compartment="bank"),
        Raises(NotFoundError, {"compartment": "bank"}),
    ),
    Case(
        "moves ignore equip cooldowns",
        (equip(SWORD, "main_hand"),),
        move(BUCKLER, 23),
        [
            ItemMoved(
                item_id=BUCKLER, from_compartment=BP, from_index=6, to_compartment=BP, to_index=23
            )
        ],
        tick=SETUP_TICK + 1,
    ),
]


def _check(player: PlayerState, case: Case) -> None:
    before = encode_state(player)
    if isinstance(case.expect, Raises):
        with pytest.raises(GearhallError) as info:
            decide(player, case.intent, case.tick)
        error = info.value
        assert type(error) is case.expect.error
        assert error.code == case.expect.error.code
        got = {key: error.details.get(key, "<missing>") for key in case.expect.details}
        assert got == case.expect.details
    else:
        assert decide(player, case.intent, case.tick) == case.expect
    assert encode_state(player) == before, "a rule changed the state"


@pytest.mark.parametrize("case", EQUIP_CASES, ids=lambda c: c.description)
def test_equip_item(case: Case) -> None:
    _check(play(starter(), case.setup, SETUP_TICK), case)


@pytest.mark.parametrize("case", UNEQUIP_CASES, ids=lambda c: c.description)
def test_unequip_item(case: Case) -> None:
    _check(play(starter(), case.setup, SETUP_TICK), case)


@pytest.mark.parametrize("case", MOVE_CASES, ids=lambda c: c.description)
def test_move_item(case: Case) -> None:
    _check(play(starter(), case.setup, SETUP_TICK), case)


# --- what the effects do once applied -----------------------------------------------------


def _layout(player: PlayerState) -> tuple[dict[str, int], dict[int, int]]:
    cells = {i: item for i, item in enumerate(player.compartments[BP]) if item is not None}
    return dict(player.equipment), cells


def test_swap_applies_atomically() -> None:
    player = play(starter(), (equip(CAP, "head"),), SETUP_TICK)
    version = player.version
    effects = decide(player, equip(HELM, "head"), LATER)
    apply_all(player, effects)
    equipment, cells = _layout(player)
    assert equipment == {"head": HELM}
    assert cells == {1: CAP, 2: VEST, 3: RING_A, 4: RING_B, 5: SWORD, 6: BUCKLER, 7: BREAD}
    assert player.version == version + 1


def test_equip_then_unequip_round_trips_to_the_same_bytes_except_version() -> None:
    player = starter()
    kit_only = encode_state(starter())
    play(player, (equip(VEST, "chest"), unequip("chest", index=2)), LATER)
    assert player.version == len(KIT_IDS) + 2
    player.version = len(KIT_IDS)
    assert encode_state(player) == kit_only


def test_retry_after_ms_uses_the_context_tick_length() -> None:
    player = starter()
    context = RuleContext(tick=100, tick_ms=20, catalog=CATALOG)
    apply_all(player, equip_item(player, equip(SWORD, "main_hand"), context))
    assert player.cooldowns == {"equip:main_hand": (100 + ticks_for_ms(1000, 20)) * 20}
    later = RuleContext(tick=110, tick_ms=20, catalog=CATALOG)
    with pytest.raises(CooldownActiveError) as info:
        unequip_item(player, unequip("main_hand"), later)
    assert info.value.details == {
        "group": "equip:main_hand",
        "retry_after_ms": 40 * 20,
        "ready_at_ms": 150 * 20,
    }


@pytest.mark.parametrize(
    ("ms", "tick_ms", "ticks"),
    [(0, 50, 0), (1, 50, 1), (50, 50, 1), (51, 50, 2), (1000, 50, 20), (120, 50, 3)],
)
def test_ticks_for_ms_rounds_up(ms: int, tick_ms: int, ticks: int) -> None:
    assert ticks_for_ms(ms, tick_ms) == ticks


# --- starter kit --------------------------------------------------------------------------

OVERFULL_KIT: Catalog = parse_templates(
    'schema_version = 1\n[[template]]\nid = "pebble"\nname = "Pebble"\ncategory = "junk"\n'
    "[starter_kit]\nitems = [" + ", ".join(['{ template = "pebble" }'] * 25) + "]\n",
    "overfull.toml",
)
EMPTY_KIT: Catalog = parse_templates("schema_version = 1\n", "empty.toml")

KIT_EFFECTS: list[AnyEffect] = [
    ItemCreated(item=ItemInstance(id=item_id, template=template, qty=qty), compartment=BP, index=i)
    for i, (item_id, template, qty) in enumerate(
        [
            (CAP, "cap", 1),
            (HELM, "helm", 1),
            (VEST, "vest", 1),
            (RING_A, "ring", 1),
            (RING_B, "ring", 1),
            (SWORD, "sword", 1),
            (BUCKLER, "buckler", 1),
            (BREAD, "bread", 5),
        ]
    )
]


@dataclass(frozen=True)
class KitCase:
    description: str
    player: PlayerState
    item_ids: tuple[int, ...]
    expect: list[AnyEffect] | Raises
    catalog: Catalog = CATALOG


KIT_CASES = [
    KitCase(
        "a new player gets the kit in backpack order", new_player(1, "p"), KIT_IDS, KIT_EFFECTS
    ),
    KitCase(
        "extra ids are left unused",
        new_player(1, "p"),
        (*KIT_IDS, 500, 501),
        KIT_EFFECTS,
    ),
    KitCase("an empty kit grants nothing", new_player(1, "p"), (), [], EMPTY_KIT),
    KitCase(
        "only at version 0",
        starter(),
        tuple(range(300, 308)),
        Raises(ConflictError),
    ),
    KitCase(
        "too few ids",
        new_player(1, "p"),
        KIT_IDS[:-1],
        Raises(ConflictError, {"needed": len(KIT_IDS)}),
    ),
    KitCase(
        "a kit larger than the backpack",
        new_player(1, "p"),
        tuple(range(300, 325)),
        Raises(InventoryFullError, {"compartment": BP}),
        OVERFULL_KIT,
    ),
]


@pytest.mark.parametrize("case", KIT_CASES, ids=lambda c: c.description)
def test_grant_starter_kit(case: KitCase) -> None:
    before = encode_state(case.player)
    context = ctx(0, case.catalog)
    if isinstance(case.expect, Raises):
        with pytest.raises(GearhallError) as info:
            grant_starter_kit(case.player, context, case.item_ids)
        assert type(info.value) is case.expect.error
        got = {key: info.value.details.get(key, "<missing>") for key in case.expect.details}
        assert got == case.expect.details
    else:
        assert grant_starter_kit(case.player, context, case.item_ids) == case.expect
    assert encode_state(case.player) == before


def test_starter_kit_applied() -> None:
    player = starter()
    assert player.version == len(KIT_IDS)
    assert player.compartments[BP] == [*KIT_IDS, *[None] * (BACKPACK_SIZE - len(KIT_IDS))]
    assert player.equipment == {}
    assert player.items[BREAD] == ItemInstance(id=BREAD, template="bread", qty=5)
