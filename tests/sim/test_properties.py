"""Property tests: random sessions through the rule-then-apply loop.

A session is a list of steps: intents (equip / unequip / move with ids that may not be owned,
any slot, unknown compartments, out-of-range and negative indexes), clock advances, and
grants (an ``ItemCreated`` into the first free cell, as a server-side grant would emit, so
that full backpacks happen). Each intent goes through its rule: the rule either raises a
``GearhallError`` and the state is unchanged, or returns effects that are applied.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import msgspec
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from protocol.errors import GearhallError, ItemNotOwnedError, SlotIncompatibleError
from protocol.messages import EquipItem, MoveItem, Request, UnequipItem
from protocol.model import (
    EQUIP_SLOTS,
    AnyEffect,
    ItemCreated,
    ItemEquipped,
    ItemInstance,
    PlayerState,
)
from sim.apply import apply, apply_all
from sim.rules import grant_starter_kit
from sim.state import decode_state, encode_state, first_free, new_player
from tests.sim.support import BACKPACK_SIZE, CATALOG, KIT_IDS, UNOWNED, ctx, decide

PROPERTY_SETTINGS = settings(
    max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
REPLAY_SETTINGS = settings(
    max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

START_TICK = 10_000
GRANT_IDS = tuple(range(1000, 1040))  # ids the grant step hands out, in order


@dataclass(frozen=True)
class Advance:
    ticks: int


@dataclass(frozen=True)
class Grant:
    template: str
    count: int


@dataclass(frozen=True)
class Pick:
    """An intent aimed at the current state, so that successes are common too.

    ``kind`` is equip / unequip / move; ``n`` picks an owned item (or an occupied slot for
    unequip) and ``m`` one of the slots its template fits; ``index`` is the target cell.
    """

    kind: str
    n: int
    m: int
    index: int | None


Step = Request | Advance | Grant | Pick

item_ids = st.sampled_from([*KIT_IDS, *GRANT_IDS, UNOWNED])
# Half the draws use a slot some test template fits, so equips succeed often enough.
slots = st.one_of(
    st.sampled_from(["head", "chest", "ring1", "ring2", "main_hand", "off_hand"]),
    st.sampled_from(EQUIP_SLOTS),
)
compartments = st.sampled_from(["backpack"] * 6 + ["bank"])
indexes = st.integers(-2, BACKPACK_SIZE + 1)

steps: st.SearchStrategy[Step] = st.one_of(
    st.builds(EquipItem, rid=st.just(1), item_id=item_ids, slot=slots),
    st.builds(
        UnequipItem,
        rid=st.just(1),
        slot=slots,
        compartment=compartments,
        index=st.none() | indexes,
    ),
    st.builds(MoveItem, rid=st.just(1), item_id=item_ids, compartment=compartments, index=indexes),
    st.builds(Advance, st.integers(0, 30)),
    st.builds(Grant, st.sampled_from(sorted(CATALOG.templates)), st.integers(1, 24)),
    st.builds(
        Pick,
        st.sampled_from(["equip", "equip", "unequip", "move"]),
        st.integers(0, 40),
        st.integers(0, 3),
        st.none() | st.integers(0, BACKPACK_SIZE - 1),
    ),
)
sessions = st.lists(steps, max_size=60)


@dataclass
class Session:
    """What a session produced: the live state, every effect, and a snapshot per version."""

    player: PlayerState
    effects: list[AnyEffect] = field(default_factory=list)
    snapshots: list[bytes] = field(default_factory=list)  # snapshots[v]: state at version v

    def apply(self, effects: list[AnyEffect]) -> None:
        for effect in effects:
            apply(self.player, effect)
            self.effects.append(effect)
            self.snapshots.append(encode_state(self.player))


def check_invariants(player: PlayerState, effects_applied: int) -> None:
    places = Counter(cell for cells in player.compartments.values() for cell in cells)
    places.update(player.equipment.values())
    del places[None]
    assert set(places) == set(player.items), "an owned item is nowhere, or a stranger is somewhere"
    assert all(count == 1 for count in places.values()), f"an item is in two places: {places}"
    for slot, item_id in player.equipment.items():
        template = CATALOG.templates[player.items[item_id].template]
        assert slot in template.slots, f"{template.id} equipped in {slot}"
    assert {name: len(cells) for name, cells in player.compartments.items()} == {
        "backpack": BACKPACK_SIZE
    }
    assert player.version == effects_applied


def check_outcome(before: PlayerState, after: PlayerState, intent: Request) -> None:
    """What a successful intent must have achieved, read from the state after it."""
    if isinstance(intent, EquipItem):
        assert after.equipment[intent.slot] == intent.item_id
    elif isinstance(intent, UnequipItem):
        item_id = before.equipment[intent.slot]
        assert intent.slot not in after.equipment
        cells = after.compartments[intent.compartment]
        if intent.index is None:
            assert cells.index(item_id) == first_free(before.compartments[intent.compartment])
        else:
            assert cells[intent.index] == item_id
    elif isinstance(intent, MoveItem):
        assert after.compartments[intent.compartment][intent.index] == intent.item_id


def aim(pick: Pick, player: PlayerState) -> Request:
    owned = sorted(player.items)
    item_id = owned[pick.n % len(owned)] if owned else UNOWNED
    if pick.kind == "equip":
        allowed = CATALOG.templates[player.items[item_id].template].slots if owned else ()
        slot = allowed[pick.m % len(allowed)] if allowed else "head"
        return EquipItem(rid=1, item_id=item_id, slot=slot)
    if pick.kind == "unequip":
        occupied = list(player.equipment)
        held = occupied[pick.n % len(occupied)] if occupied else "head"
        return UnequipItem(rid=1, slot=held, index=pick.index)  # type: ignore[arg-type]
    return MoveItem(rid=1, item_id=item_id, compartment="backpack", index=pick.index or 0)


def run_session(session_steps: list[Step]) -> Session:
    player = new_player(1, "p1")
    session = Session(player=player, snapshots=[encode_state(player)])
    session.apply(grant_starter_kit(player, ctx(0), KIT_IDS))
    tick = START_TICK
    grant_ids = iter(GRANT_IDS)
    for step in session_steps:
        check_invariants(player, len(session.effects))
        if isinstance(step, Advance):
            tick += step.ticks
            continue
        if isinstance(step, Grant):
            for _ in range(step.count):
                index = first_free(player.compartments["backpack"])
                item_id = next(grant_ids, None)
                if index is None or item_id is None:
                    break
                item = ItemInstance(id=item_id, template=step.template)
                session.apply([ItemCreated(item=item, compartment="backpack", index=index)])
            continue
        intent = aim(step, player) if isinstance(step, Pick) else step
        before = encode_state(player)
        try:
            effects = decide(player, intent, tick)
        except GearhallError as exc:
            event(f"{type(intent).__name__}: {type(exc).__name__}")
            assert encode_state(player) == before, "a failing rule changed the state"
            if isinstance(intent, EquipItem | MoveItem) and intent.item_id not in player.items:
                assert isinstance(exc, ItemNotOwnedError)
            continue
        assert encode_state(player) == before, "a rule changed the state"
        if isinstance(intent, EquipItem):
            template = CATALOG.templates[player.items[intent.item_id].template]
            assert intent.slot in template.slots, "equipped into a slot the template does not fit"
        event(f"{type(intent).__name__}: {len(effects)} effects")
        session.apply(effects)
        check_outcome(decode_state(before), player, intent)
    check_invariants(player, len(session.effects))
    return session


@PROPERTY_SETTINGS
@given(sessions)
def test_random_sessions_keep_the_invariants(session_steps: list[Step]) -> None:
    run_session(session_steps)


@pytest.mark.parametrize("template", sorted(CATALOG.templates))
@pytest.mark.parametrize("slot", EQUIP_SLOTS)
def test_equip_outside_the_template_slots_is_refused(slot: str, template: str) -> None:
    session = run_session([])
    item_id = next(i for i, item in session.player.items.items() if item.template == template)
    intent = EquipItem(rid=1, item_id=item_id, slot=slot)  # type: ignore[arg-type]
    allowed = CATALOG.templates[template].slots
    if slot in allowed:
        effects = decide(session.player, intent, START_TICK)
        assert isinstance(effects[0], ItemEquipped)
    else:
        try:
            decide(session.player, intent, START_TICK)
        except SlotIncompatibleError as exc:
            assert exc.details["allowed_slots"] == list(allowed)
        else:
            raise AssertionError(f"{template} equipped into {slot}")


# --- replay -------------------------------------------------------------------------------

_effect_encoder = msgspec.msgpack.Encoder()
_effect_decoder = msgspec.msgpack.Decoder(AnyEffect)


def through_the_journal(effects: list[AnyEffect]) -> list[AnyEffect]:
    """Each effect encoded and decoded on its own, as journal rows are."""
    decoded = [_effect_decoder.decode(_effect_encoder.encode(effect)) for effect in effects]
    assert decoded == effects
    return decoded


@REPLAY_SETTINGS
@given(sessions, st.data())
def test_same_snapshot_and_same_effects_give_identical_bytes(
    session_steps: list[Step], data: st.DataObject
) -> None:
    session = run_session(session_steps)
    live = encode_state(session.player)
    journal = through_the_journal(session.effects)

    # (a) from a new player, checking every intermediate version against the live snapshot
    replayed = new_player(1, "p1")
    assert encode_state(replayed) == session.snapshots[0]
    for version, effect in enumerate(journal, start=1):
        apply(replayed, effect)
        assert encode_state(replayed) == session.snapshots[version]
    assert encode_state(replayed) == live

    # (b) from a snapshot taken at a random version, plus the effects after it
    at = data.draw(st.integers(0, len(journal)), label="snapshot version")
    restored = apply_all(decode_state(session.snapshots[at]), journal[at:])
    assert restored.version == session.player.version
    assert encode_state(restored) == live
