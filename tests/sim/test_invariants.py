"""Random intent sequences through the rule-then-apply loop, with invariants after each step.

Not a state machine: each example plays one session. It starts from the test kit scattered
by the rules (some items equipped, some moved to other compartments), then draws steps one
at a time, aimed at the current state: ids it owns plus one it does not, any slot, any
compartment including unknown ones, free and occupied cells and indexes just outside,
quantities around the stack sizes, grants that overload or replay a key, and catalog edits
that ``reconcile`` answers by filling lost_and_found. Time moves on between steps.

After every step: the rule either raised a ``GearhallError`` (any other exception fails
the test) or returned effects, and in both cases left the state byte-identical; the
effects are deterministic; the version counts every effect applied; ``check_invariants``
(``support.py``: one place per item, compatible slots, two-handers, stack and charge
limits, what compartments accept and weigh, levels, nothing to reconcile) holds; cached
stats equal stats computed from scratch. At the end, the recorded effects, through the
wire codec and replayed onto a new player, give the same bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.errors import ERROR_CLASSES, GearhallError
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
from protocol.model import EQUIP_SLOTS, EQUIPMENT, AnyEffect, EquipSlot, PlayerState
from sim.apply import apply_all
from sim.common import locate
from sim.state import encode_state, new_player
from sim.stats import StatsCache, compute_stats
from sim.templates import ItemTemplate
from tests.sim.support import (
    CATALOG,
    TICK_MS,
    UNOWNED,
    Reconcile,
    StarterKit,
    Step,
    check_invariants,
    decide,
    grant,
    starter,
    with_compartment,
    with_template,
    without_compartment,
    without_template,
)

_T = TypeVar("_T")
START_TICK = 1_000
COMPARTMENTS = [*CATALOG.compartments, "equipment", "nowhere"]
TEMPLATES = sorted(CATALOG.templates)
GRANT_KEYS = [f"grant-key-{n}" for n in range(6)]  # few, so replays happen
KINDS = (
    "equip", "unequip", "move", "split", "merge", "sort", "destroy", "use", "grant", "reconcile",
)  # fmt: skip
# Catalog edits whose reconcile leaves a state that is still consistent with CATALOG, so the
# session goes on with items in lost_and_found.
EDITS = (
    without_compartment("bank"),
    with_compartment("backpack", slots=6),
    without_template("sword"),
    with_template("ring", slots=("ring2",)),
    with_compartment("belt", accepts=("quest",)),
)
# Ticks between two steps: often none (cooldowns bite), sometimes past every cooldown.
GAPS = (0, 0, 1, 3, 20, 100, 250, 1500)
_effects_codec = msgspec.msgpack.Decoder(list[AnyEffect])


def _compartment_of(player: PlayerState, item_id: int) -> str | None:
    loc = locate(player, item_id)
    return loc[0] if loc else None


def _pick(data: st.DataObject, likely: list[_T], anything: list[_T], label: str) -> _T:
    """Three times in four a value from ``likely`` (when there is one), else anything."""
    pool = likely if likely and data.draw(st.integers(0, 3), label="bias") else anything
    return data.draw(st.sampled_from(pool), label=label)


class _Draw:
    """Draws intent fields aimed at one state: each choice mixes a likely-valid value (an
    item the intent suits, one of its slots, an occupied slot, a free cell, a quantity the
    stack has) with anything at all, including unknown ids, slots and compartments."""

    def __init__(self, data: st.DataObject, player: PlayerState) -> None:
        self.data = data
        self.player = player
        self.owned = sorted(player.items)

    def template(self, item_id: int) -> ItemTemplate | None:
        item = self.player.items.get(item_id)
        return CATALOG.get(item.template) if item else None

    def item(self, suits: Callable[[int], bool] = lambda item_id: True) -> int:
        likely = [i for i in self.owned if suits(i)]
        return _pick(self.data, likely, [*self.owned, UNOWNED], "item")

    def slot(self, likely: Iterable[str]) -> EquipSlot:
        return _pick(self.data, list(likely), list(EQUIP_SLOTS), "slot")  # type: ignore[arg-type]

    def place(self) -> tuple[str, int]:
        where = _pick(self.data, list(CATALOG.compartments), COMPARTMENTS, "where")
        cells = self.player.compartments.get(where, [])
        free = [i for i, cell in enumerate(cells) if cell is None]
        # A free cell half the time, an occupied one (swaps) or one just outside otherwise.
        if free and self.data.draw(st.booleans(), label="free cell"):
            return where, self.data.draw(st.sampled_from(free), label="index")
        return where, _pick(self.data, list(range(len(cells))), [-1, len(cells)], "index")

    def qty(self, item_id: int) -> int:
        item = self.player.items.get(item_id)
        stack = item.qty if item else 1
        return _pick(self.data, list(range(1, stack)), list(range(1, 7)), "qty")


def _draw_step(data: st.DataObject, player: PlayerState, kinds: list[str]) -> Step:
    """One intent aimed at ``player``'s current state."""
    draw = _Draw(data, player)
    kind = data.draw(st.sampled_from(kinds), label="kind")
    if kind == "equip":
        # Half the time from a compartment other than the backpack (the bank, the
        # satchel...): the rarer paths, where a displaced item goes back to that place.
        away = data.draw(st.booleans(), label="away")
        item_id = draw.item(
            lambda i: (
                bool(CATALOG.templates[player.items[i].template].slots)
                and (not away or _compartment_of(player, i) not in ("backpack", EQUIPMENT))
            )
        )
        tpl = draw.template(item_id)
        return EquipItem(rid=1, item_id=item_id, slot=draw.slot(tpl.slots if tpl else ()))
    if kind == "unequip":
        slot = draw.slot(player.equipment)
        where, index = draw.place()
        any_index = data.draw(st.none() | st.just(index), label="unequip index")
        return UnequipItem(rid=1, slot=slot, compartment=where, index=any_index)
    if kind == "move":
        item_id = draw.item()
        where, index = draw.place()
        return MoveItem(rid=1, item_id=item_id, compartment=where, index=index)
    if kind == "split":
        item_id = draw.item(lambda i: player.items[i].qty > 1)
        qty = draw.qty(item_id)
        where, index = draw.place()
        return SplitStack(rid=1, item_id=item_id, qty=qty, compartment=where, index=index)
    if kind == "merge":
        item_id = draw.item(lambda i: CATALOG.templates[player.items[i].template].max_stack > 1)
        tpl = draw.template(item_id)
        into = draw.item(
            lambda i: i != item_id and tpl is not None and player.items[i].template == tpl.id
        )
        return MergeStacks(rid=1, item_id=item_id, into_item_id=into)
    if kind == "reconcile":
        return Reconcile(data.draw(st.sampled_from(EDITS), label="catalog edit"))
    if kind == "sort":
        return SortCompartment(rid=1, compartment=draw.place()[0])
    if kind == "destroy":
        item_id = draw.item()
        qty = data.draw(st.none() | st.just(draw.qty(item_id)), label="destroy qty")
        return DestroyItem(rid=1, item_id=item_id, qty=qty)
    if kind == "use":
        return UseItem(
            rid=1,
            item_id=draw.item(lambda i: bool(CATALOG.templates[player.items[i].template].use)),
        )
    return grant(
        data.draw(st.sampled_from(TEMPLATES), label="template"),
        qty=data.draw(st.sampled_from([1, 2, 5, 12, 25, 60]), label="grant qty"),
        compartment=data.draw(st.none() | st.just(draw.place()[0]), label="grant compartment"),
        key=data.draw(st.sampled_from(GRANT_KEYS), label="grant key"),
    )


def _scatter(data: st.DataObject, player: PlayerState, tick: int) -> list[AnyEffect]:
    """Start from a varied state: some kit items are equipped or moved to other
    compartments (through the rules; refused steps are skipped). Returns the effects."""
    effects: list[AnyEffect] = []
    chosen = data.draw(st.lists(st.sampled_from(sorted(player.items)), max_size=10), "scatter")
    for item_id in chosen:
        tpl = CATALOG.templates[player.items[item_id].template]
        where = data.draw(st.sampled_from([*tpl.slots, *CATALOG.compartments]), label="to")
        cells = player.compartments.get(where, [])
        step: Step = (
            EquipItem(rid=1, item_id=item_id, slot=where)  # type: ignore[arg-type]
            if where in tpl.slots
            else MoveItem(rid=1, item_id=item_id, compartment=where, index=cells.index(None))
            if None in cells
            else SortCompartment(rid=1, compartment=where)
        )
        tick += 100  # past the equip cooldowns of the step before
        try:
            done = decide(player, step, tick)
        except GearhallError:
            continue
        apply_all(player, done)
        effects.extend(done)
    return effects


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    data=st.data(),
    steps=st.integers(1, 40),
    # Swarm testing: each session uses a few kinds of step, so that rarer interactions
    # (say, moves into the satchel followed by equips) are dense in some sessions.
    kinds=st.lists(st.sampled_from(KINDS), min_size=2, max_size=5, unique=True),
)
def test_random_sessions_keep_every_invariant(
    data: st.DataObject, steps: int, kinds: list[str]
) -> None:
    player = starter()
    recorded: list[AnyEffect] = decide(new_player(player.player_id, player.name), StarterKit(), 0)
    cache = StatsCache(CATALOG)
    tick = START_TICK
    recorded.extend(_scatter(data, player, tick))
    check_invariants(player)
    tick += 10_000
    for _ in range(steps):
        tick += data.draw(st.sampled_from(GAPS), label="gap")
        step = _draw_step(data, player, kinds)
        before = encode_state(player)
        try:
            effects = decide(player, step, tick)
        except GearhallError as exc:
            assert type(exc).code in ERROR_CLASSES, f"{type(exc).__name__} has no code"
            effects = []
        assert encode_state(player) == before, f"{step} changed the state"
        if effects:
            assert decide(player, step, tick) == effects, f"{step} is not deterministic"
            apply_all(player, effects)
            recorded.extend(effects)
        assert player.version == len(recorded), "version counts the effects applied"
        check_invariants(player)
        now_ms = tick * TICK_MS
        assert cache.get(player, now_ms) == compute_stats(player, CATALOG, now_ms)

    # The effects as a client receives them rebuild the same state, byte for byte.
    wire = _effects_codec.decode(msgspec.msgpack.encode(recorded))
    replica = apply_all(new_player(player.player_id, player.name), wire)
    assert encode_state(replica) == encode_state(player)
