"""``protocol/mirror.py``: what each effect does to a state, and the client ``Mirror``.

One table row per effect shape: a start state, the effect, and the state expected after it,
written out in full (not computed), compared as ``encode_state`` bytes so dict order and
field values both count.
"""

from __future__ import annotations

from typing import NamedTuple

import msgspec
import pytest

from protocol.messages import AnyServerMessage, EffectsReply, PlayerDelta
from protocol.mirror import Mirror, apply, apply_all, decode_state, encode_state
from protocol.model import (
    EFFECT_TYPES,
    GRANT_KEYS_KEPT,
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
    Move,
    PlayerLeveledUp,
    PlayerState,
    SkillLeveledUp,
    StackChanged,
    XpGained,
)

SWORD = ItemInstance(id=1, template="short_sword")
BREAD = ItemInstance(id=2, template="bread", qty=5)
MANUAL = ItemInstance(id=3, template="training_manual", charges=3, bound=True)
RING = ItemInstance(id=4, template="copper_ring")
MIGHT = ActiveEffect(source="elixir_of_might", stats={"strength": 5}, expires_at_ms=9_000)
SPEED = ActiveEffect(source="haste", stats={"agility": 2}, expires_at_ms=8_000)


def start() -> PlayerState:
    """A player at version 10: sword, bread and manual in the backpack, a ring on ring1."""
    return PlayerState(
        player_id=7,
        name="ada",
        version=10,
        items={1: SWORD, 2: BREAD, 3: MANUAL, 4: RING},
        compartments={"backpack": [1, 2, None, 3], "belt": [None, None]},
        equipment={"ring1": 4},
        cooldowns={"healing_potion": 5_000},
        skills={"alchemy": 40},
        skill_levels={"alchemy": 1},
        level=1,
        health=50,
        active_effects={"elixir_of_might": MIGHT, "haste": SPEED},
        grants={"grant-0001": 7},
    )


def after(**fields: object) -> PlayerState:
    """The start state one version later, with ``fields`` replaced."""
    return msgspec.structs.replace(start(), version=11, **fields)


class Case(NamedTuple):
    effect: AnyEffect
    expected: PlayerState


CASES: dict[str, Case] = {
    "items_moved_to_empty_cell": Case(
        ItemsMoved(reason="move", moves=[Move(1, ("backpack", 0), ("backpack", 2))]),
        after(compartments={"backpack": [None, 2, 1, 3], "belt": [None, None]}),
    ),
    "items_moved_across_compartments": Case(
        ItemsMoved(reason="move", moves=[Move(2, ("backpack", 1), ("belt", 1))]),
        after(compartments={"backpack": [1, None, None, 3], "belt": [None, 2]}),
    ),
    "items_moved_swap_is_atomic": Case(
        # Every src is vacated before any dst is filled: the second move's clear must not
        # remove the item the first move just placed.
        ItemsMoved(
            reason="swap",
            moves=[
                Move(1, ("backpack", 0), ("backpack", 1)),
                Move(2, ("backpack", 1), ("backpack", 0)),
            ],
        ),
        after(compartments={"backpack": [2, 1, None, 3], "belt": [None, None]}),
    ),
    "items_moved_rotation_of_three": Case(
        ItemsMoved(
            reason="sort",
            moves=[
                Move(1, ("backpack", 0), ("backpack", 1)),
                Move(2, ("backpack", 1), ("backpack", 3)),
                Move(3, ("backpack", 3), ("backpack", 0)),
            ],
        ),
        after(compartments={"backpack": [3, 1, None, 2], "belt": [None, None]}),
    ),
    "items_moved_equip": Case(
        ItemsMoved(reason="equip", moves=[Move(1, ("backpack", 0), ("equipment", "main_hand"))]),
        after(
            compartments={"backpack": [None, 2, None, 3], "belt": [None, None]},
            equipment={"ring1": 4, "main_hand": 1},
        ),
    ),
    "items_moved_unequip": Case(
        ItemsMoved(reason="unequip", moves=[Move(4, ("equipment", "ring1"), ("backpack", 2))]),
        after(compartments={"backpack": [1, 2, 4, 3], "belt": [None, None]}, equipment={}),
    ),
    "items_moved_slot_to_slot": Case(
        ItemsMoved(reason="equip", moves=[Move(4, ("equipment", "ring1"), ("equipment", "ring2"))]),
        after(equipment={"ring2": 4}),
    ),
    "items_moved_equip_swap": Case(
        ItemsMoved(
            reason="swap",
            moves=[
                Move(1, ("backpack", 0), ("equipment", "ring1")),
                Move(4, ("equipment", "ring1"), ("backpack", 0)),
            ],
        ),
        after(
            compartments={"backpack": [4, 2, None, 3], "belt": [None, None]},
            equipment={"ring1": 1},
        ),
    ),
    "item_created_in_cell": Case(
        ItemCreated(item=ItemInstance(id=9, template="bread", qty=2), dst=("belt", 1)),
        after(
            items={
                1: SWORD,
                2: BREAD,
                3: MANUAL,
                4: RING,
                9: ItemInstance(id=9, template="bread", qty=2),
            },
            compartments={"backpack": [1, 2, None, 3], "belt": [None, 9]},
        ),
    ),
    "item_created_with_grant_key": Case(
        # The key is for observers; the grant itself is recorded by GrantRecorded.
        ItemCreated(
            item=ItemInstance(id=9, template="cap"), dst=("backpack", 2), grant_key="g-000001"
        ),
        after(
            items={1: SWORD, 2: BREAD, 3: MANUAL, 4: RING, 9: ItemInstance(id=9, template="cap")},
            compartments={"backpack": [1, 2, 9, 3], "belt": [None, None]},
        ),
    ),
    "item_destroyed_in_cell": Case(
        ItemDestroyed(item_id=2, src=("backpack", 1), reason="used_up"),
        after(
            items={1: SWORD, 3: MANUAL, 4: RING},
            compartments={"backpack": [1, None, None, 3], "belt": [None, None]},
        ),
    ),
    "item_destroyed_in_slot": Case(
        ItemDestroyed(item_id=4, src=("equipment", "ring1")),
        after(items={1: SWORD, 2: BREAD, 3: MANUAL}, equipment={}),
    ),
    "stack_changed": Case(
        StackChanged(item_id=2, qty=3),
        after(items={1: SWORD, 2: ItemInstance(id=2, template="bread", qty=3), 3: MANUAL, 4: RING}),
    ),
    "charges_changed": Case(
        ChargesChanged(item_id=3, charges=2),
        after(
            items={
                1: SWORD,
                2: BREAD,
                3: ItemInstance(id=3, template="training_manual", charges=2, bound=True),
                4: RING,
            }
        ),
    ),
    "item_bound": Case(
        ItemBound(item_id=1),
        after(
            items={
                1: ItemInstance(id=1, template="short_sword", bound=True),
                2: BREAD,
                3: MANUAL,
                4: RING,
            }
        ),
    ),
    "compartment_resized_grows": Case(
        CompartmentResized(compartment="backpack", size=6),
        after(compartments={"backpack": [1, 2, None, 3, None, None], "belt": [None, None]}),
    ),
    "compartment_resized_creates": Case(
        CompartmentResized(compartment="bank", size=3),
        after(compartments={"backpack": [1, 2, None, 3], "belt": [None, None], "bank": [None] * 3}),
    ),
    "compartment_resized_never_shrinks": Case(
        CompartmentResized(compartment="backpack", size=1),
        after(),
    ),
    "cooldown_started_new_key": Case(
        CooldownStarted(key="equip:main_hand", ready_at_ms=6_000),
        after(cooldowns={"healing_potion": 5_000, "equip:main_hand": 6_000}),
    ),
    "cooldown_started_replaces_deadline": Case(
        CooldownStarted(key="healing_potion", ready_at_ms=7_000),
        after(cooldowns={"healing_potion": 7_000}),
    ),
    "health_changed": Case(HealthChanged(health=90), after(health=90)),
    "active_effect_started_new_source": Case(
        ActiveEffectStarted(
            effect=ActiveEffect(source="ward", stats={"armor": 3}, expires_at_ms=1)
        ),
        after(
            active_effects={
                "elixir_of_might": MIGHT,
                "haste": SPEED,
                "ward": ActiveEffect(source="ward", stats={"armor": 3}, expires_at_ms=1),
            }
        ),
    ),
    "active_effect_started_replaces_and_goes_last": Case(
        ActiveEffectStarted(
            effect=ActiveEffect(
                source="elixir_of_might", stats={"strength": 5}, expires_at_ms=20_000
            )
        ),
        after(
            active_effects={
                "haste": SPEED,
                "elixir_of_might": ActiveEffect(
                    source="elixir_of_might", stats={"strength": 5}, expires_at_ms=20_000
                ),
            }
        ),
    ),
    "xp_gained_sets_the_total": Case(
        # ``total`` is authoritative: the mirror never adds ``amount`` itself.
        XpGained(skill="alchemy", amount=5, total=60),
        after(skills={"alchemy": 60}),
    ),
    "xp_gained_new_skill": Case(
        XpGained(skill="swordsmanship", amount=150, total=150),
        after(skills={"alchemy": 40, "swordsmanship": 150}),
    ),
    "skill_leveled_up": Case(
        SkillLeveledUp(skill="swordsmanship", level=3),
        after(skill_levels={"alchemy": 1, "swordsmanship": 3}),
    ),
    "player_leveled_up": Case(PlayerLeveledUp(level=2), after(level=2)),
    "grant_recorded": Case(
        GrantRecorded(key="grant-0002", version=11),
        after(grants={"grant-0001": 7, "grant-0002": 11}),
    ),
}


def test_every_effect_type_has_a_case() -> None:
    assert {type(case.effect) for case in CASES.values()} == set(EFFECT_TYPES)


@pytest.mark.parametrize(("effect", "expected"), CASES.values(), ids=CASES.keys())
def test_apply_does_what_the_effect_says(effect: AnyEffect, expected: PlayerState) -> None:
    state = start()

    result = apply(state, effect)

    assert result is state  # in place
    assert encode_state(state) == encode_state(expected)


@pytest.mark.parametrize(("effect", "expected"), CASES.values(), ids=CASES.keys())
def test_apply_after_a_round_trip_through_the_journal_and_the_wire(
    effect: AnyEffect, expected: PlayerState
) -> None:
    # The journal stores MessagePack, clients get JSON; either must apply the same way.
    journal = msgspec.msgpack.decode(msgspec.msgpack.encode(effect), type=AnyEffect)
    wire = msgspec.json.decode(msgspec.json.encode(effect), type=AnyEffect)

    for decoded in (journal, wire):
        assert encode_state(apply(start(), decoded)) == encode_state(expected)


def test_apply_all_applies_in_order_and_counts_versions() -> None:
    effects: list[AnyEffect] = [
        ItemsMoved(reason="move", moves=[Move(2, ("backpack", 1), ("backpack", 2))]),
        StackChanged(item_id=2, qty=4),
        ItemDestroyed(item_id=2, src=("backpack", 2), reason="destroyed"),
    ]

    state = apply_all(start(), effects)

    assert state.version == 13
    assert 2 not in state.items
    assert state.compartments["backpack"] == [1, None, None, 3]


def test_state_codec_round_trips_byte_identical() -> None:
    raw = encode_state(start())

    assert encode_state(decode_state(raw)) == raw
    assert decode_state(raw) == start()


# --- GrantRecorded keeps only the newest keys ---------------------------------------------


def _with_grants(count: int) -> PlayerState:
    state = start()
    state.grants = {f"grant-{n:04d}": n + 1 for n in range(count)}
    return state


def test_grant_recorded_forgets_the_oldest_key_beyond_the_limit() -> None:
    state = _with_grants(GRANT_KEYS_KEPT)

    apply(state, GrantRecorded(key="grant-newest", version=999))

    assert len(state.grants) == GRANT_KEYS_KEPT
    assert "grant-0000" not in state.grants
    assert next(iter(state.grants)) == "grant-0001"
    assert list(state.grants)[-1] == "grant-newest"
    assert state.grants["grant-newest"] == 999


def test_grant_recorded_keeps_every_key_up_to_the_limit() -> None:
    state = _with_grants(GRANT_KEYS_KEPT - 1)

    apply(state, GrantRecorded(key="grant-newest", version=999))

    assert len(state.grants) == GRANT_KEYS_KEPT
    assert next(iter(state.grants)) == "grant-0000"


def test_grant_recorded_many_times_keeps_the_newest_in_order() -> None:
    state = _with_grants(0)
    for n in range(GRANT_KEYS_KEPT + 10):
        apply(state, GrantRecorded(key=f"k-{n:04d}", version=n))

    assert list(state.grants) == [f"k-{n:04d}" for n in range(10, GRANT_KEYS_KEPT + 10)]


# --- CompartmentResized only grows --------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "cells"),
    [
        (0, [1, 2, None, 3]),
        (1, [1, 2, None, 3]),
        (3, [1, 2, None, 3]),
        (4, [1, 2, None, 3]),
        (5, [1, 2, None, 3, None]),
        (9, [1, 2, None, 3, None, None, None, None, None]),
    ],
)
def test_compartment_resized_only_grows(size: int, cells: list[int | None]) -> None:
    state = start()

    apply(state, CompartmentResized(compartment="backpack", size=size))

    assert state.compartments["backpack"] == cells
    assert state.version == 11  # a no-op resize is still an effect: it counts


# --- Mirror -------------------------------------------------------------------------------

BATCH: list[AnyEffect] = [
    HealthChanged(health=60),
    ItemsMoved(reason="move", moves=[Move(1, ("backpack", 0), ("backpack", 2))]),
]


@pytest.mark.parametrize(
    ("version_after", "outcome"),
    [
        (12, "applied"),  # 10 + 2: continues the mirrored version
        (13, "held"),  # starts past the mirror: waits for the batch before it
        (2**53, "held"),
        (11, "refused"),  # overlaps what the mirror already holds
        (10, "refused"),
    ],
)
def test_mirror_applies_holds_or_refuses_a_batch(version_after: int, outcome: str) -> None:
    mirror = Mirror(start())
    before = mirror.encoded()

    assert mirror.apply_effects(version_after, BATCH) is (outcome != "refused")

    if outcome == "applied":
        assert mirror.encoded() == encode_state(apply_all(start(), BATCH))
        assert mirror.state.version == version_after
        assert mirror.pending == 0
    else:
        assert mirror.encoded() == before
        assert mirror.pending == (1 if outcome == "held" else 0)


def test_mirror_applies_a_held_batch_once_the_gap_closes() -> None:
    # A reply (versions 13-14) overtakes a delta (versions 11-12) from another session.
    first, second = BATCH, BATCH[::-1]
    expected = encode_state(apply_all(apply_all(start(), first), second))
    mirror = Mirror(start())

    assert mirror.apply_effects(14, second) is True
    assert mirror.pending == 1
    assert mirror.state.version == 10
    assert mirror.apply_effects(12, first) is True

    assert mirror.pending == 0
    assert mirror.state.version == 14
    assert mirror.encoded() == expected


def test_mirror_refuses_a_duplicate_held_batch_and_bounds_what_it_holds() -> None:
    mirror = Mirror(start())
    assert mirror.apply_effects(14, BATCH) is True
    assert mirror.apply_effects(14, BATCH) is False
    for n in range(Mirror.MAX_PENDING - 1):
        assert mirror.apply_effects(20 + 2 * n, BATCH) is True
    assert mirror.pending == Mirror.MAX_PENDING
    assert mirror.apply_effects(1000, BATCH) is False
    assert mirror.state.version == 10


def test_mirror_applies_an_empty_batch_at_its_version() -> None:
    mirror = Mirror(start())

    assert mirror.apply_effects(10, []) is True
    assert mirror.pending == 0
    assert mirror.encoded() == encode_state(start())


def test_mirror_fed_json_frames_matches_the_server() -> None:
    """A client decoding replies and pushes from JSON frames ends byte-identical."""
    server = start()
    welcome_state = msgspec.json.decode(msgspec.json.encode(server), type=PlayerState)
    mirror = Mirror(welcome_state)
    decoder = msgspec.json.Decoder(AnyServerMessage)
    batches: list[list[AnyEffect]] = [
        [
            ItemCreated(item=ItemInstance(id=9, template="bread", qty=2), dst=("belt", 1)),
            GrantRecorded(key="grant-0002", version=12),
        ],
        [StackChanged(item_id=9, qty=4), StackChanged(item_id=2, qty=1)],
        [
            ItemsMoved(
                reason="swap",
                moves=[
                    Move(1, ("backpack", 0), ("equipment", "ring1")),
                    Move(4, ("equipment", "ring1"), ("backpack", 0)),
                ],
            ),
            ItemBound(item_id=1),
        ],
        [
            ChargesChanged(item_id=3, charges=2),
            XpGained(skill="swordsmanship", amount=150, total=150),
            SkillLeveledUp(skill="swordsmanship", level=2),
            PlayerLeveledUp(level=2),
            CooldownStarted(key="item:training_manual", ready_at_ms=6_000),
        ],
        [
            ItemDestroyed(item_id=2, src=("backpack", 1), reason="used_up"),
            HealthChanged(health=60),
            CooldownStarted(key="healing_potion", ready_at_ms=9_000),
        ],
        [ActiveEffectStarted(effect=MIGHT), CompartmentResized(compartment="bank", size=2)],
        [],
    ]
    for n, batch in enumerate(batches):
        for effect in batch:
            apply(server, effect)
        frame: EffectsReply | PlayerDelta
        if n % 2:
            frame = EffectsReply(rid=n, version=server.version, effects=batch)
        else:
            frame = PlayerDelta(seq=server.version, effects=batch)
        received = decoder.decode(msgspec.json.encode(frame))
        if isinstance(received, PlayerDelta):
            assert mirror.apply_effects(received.seq, received.effects)
        else:
            assert isinstance(received, EffectsReply)
            assert mirror.apply_effects(received.version, received.effects)

        assert mirror.encoded() == encode_state(server)
