"""Random intent sequences through the pure rules, with every invariant checked after each step.

The machine plays one player on the shipped catalog (``sim/data/templates.toml``), from a new
player and the starter kit, the way ``server/hub.py`` drives the rules: a ``RuleContext``
with the current tick and the next fresh item id, the rule's effects applied in order, each
effect journaled as MessagePack bytes. Beside it run what the issue asks to stay equal to
the live state at every version: snapshots taken at random points plus the journal after
them, and a client ``Mirror`` fed only the JSON frames a client would receive.

Choices are biased towards moves that can succeed (an item's own slots, free cells, stacks
of the same template), with a share of arbitrary ones so every error path is walked too;
the run then checks that every intent both succeeded and failed at least once, so a
machine that only ever produced errors cannot pass.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import TypeVar

import msgspec
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    rule,
    run_state_machine_as_test,
)

from protocol import SUBPROTOCOL_JSON
from protocol.base import Request
from protocol.codec import CODECS
from protocol.errors import GearhallError
from protocol.messages import (
    AnyServerMessage,
    DestroyItem,
    EffectsReply,
    EquipItem,
    GrantItem,
    MergeStacks,
    MoveItem,
    PlayerDelta,
    SessionWelcome,
    SortCompartment,
    SplitStack,
    UnequipItem,
    UseItem,
)
from protocol.mirror import Mirror, decode_state, encode_state
from protocol.model import (
    EQUIP_SLOTS,
    GRANT_KEYS_KEPT,
    AnyEffect,
    CooldownStarted,
    GrantRecorded,
    ItemCreated,
    PlayerState,
)
from sim.apply import apply
from sim.rules import RULES, RuleContext, grant_starter_kit
from sim.state import new_player
from sim.stats import StatsCache, compute_stats
from sim.templates import level_for, load_templates

CATALOG = load_templates()
TICK_MS = 50
START_TICK = 1_000_000
PLAYER_ID = 7

COMPARTMENTS = tuple(CATALOG.compartments)
TEMPLATES = tuple(CATALOG.templates)
STARTER_KIT_SIZE = len(CATALOG.starter_kit)
# Intents whose rule may answer "nothing to do" (no effects, no version bump) without error:
# a move onto the item's own cell, sorting a sorted compartment, replaying a grant key.
NO_OP_ALLOWED = {MoveItem, SortCompartment, GrantItem}

SETTINGS = settings(
    max_examples=400,
    stateful_step_count=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

_intent_codec = CODECS[SUBPROTOCOL_JSON]
_journal_encoder = msgspec.msgpack.Encoder()
_journal_decoder = msgspec.msgpack.Decoder(AnyEffect)
_wire_encoder = msgspec.json.Encoder()
_wire_decoder = msgspec.json.Decoder(AnyServerMessage)

T = TypeVar("T")

# What the run did, per intent type: "ok", "no-op" or the error code. Reset by the test.
OUTCOMES: Counter[tuple[str, str]] = Counter()

choice = st.integers(0, 10_000)  # an index into whatever the step picks from, mod its length
aim = st.sampled_from(["fit", "fit", "fit", "any"])  # biased towards moves that can succeed


def _pick(seq: Sequence[T], n: int) -> T | None:
    return seq[n % len(seq)] if seq else None


class PlayerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tick = START_TICK
        self.next_item_id = 1
        self.ever_created: set[int] = set()
        self.journal: list[bytes] = []  # journal[v] made version v + 1
        self.granted: dict[str, int] = {}  # idempotency key -> version after the grant
        self.keys: list[str] = []
        self.rid = 0
        self.player = new_player(PLAYER_ID, "ada")
        self.snapshots: list[bytes] = [encode_state(self.player)]
        ids = range(self.next_item_id, self.next_item_id + STARTER_KIT_SIZE)
        kit = grant_starter_kit(self.player, self.context(), ids)
        self._note_created(kit, ids.start)
        self._commit(kit)
        # The client starts from the welcome's full state, as received over the socket.
        welcome = self._over_the_wire(
            SessionWelcome(
                rid=0,
                protocol_version=1,
                server_version="test",
                tick_hz=1000 // TICK_MS,
                tick=self.tick,
                player_id=PLAYER_ID,
                version=self.player.version,
                resumed=False,
                state=self.player,
            )
        )
        assert isinstance(welcome, SessionWelcome)
        assert welcome.state is not None
        self.mirror = Mirror(welcome.state)
        self.stats_cache = StatsCache(CATALOG)

    # --- driving the rules like the hub -------------------------------------------------

    def context(self) -> RuleContext:
        return RuleContext(
            tick=self.tick, tick_ms=TICK_MS, catalog=CATALOG, next_item_id=self.next_item_id
        )

    @property
    def now_ms(self) -> int:
        return self.tick * TICK_MS

    def _over_the_wire(self, msg: msgspec.Struct) -> object:
        return _wire_decoder.decode(_wire_encoder.encode(msg))

    def _note_created(self, effects: list[AnyEffect], first_fresh: int) -> None:
        for effect in effects:
            if isinstance(effect, ItemCreated):
                item_id = effect.item.id
                # Fresh: from the reserved run, never used before by anyone (ids are global).
                assert item_id >= first_fresh, effect
                assert item_id not in self.ever_created, effect
                self.ever_created.add(item_id)
                self.next_item_id = max(self.next_item_id, item_id + 1)

    def _commit(self, effects: list[AnyEffect]) -> None:
        for effect in effects:
            apply(self.player, effect)
            self.journal.append(_journal_encoder.encode(effect))
            if isinstance(effect, GrantRecorded):
                # The recorded version is the version after the whole grant, this effect
                # included: it is the last effect of a grant.
                assert effect.version == self.player.version, effect
            if isinstance(effect, CooldownStarted):
                assert effect.ready_at_ms > self.now_ms, effect
                assert effect.ready_at_ms % TICK_MS == 0, effect

    def run(self, intent: Request) -> list[AnyEffect] | None:
        """Decide, apply, journal and reply, checking what must hold around one intent."""
        # Only what the wire accepts reaches a rule.
        decoded = _intent_codec.decode(_intent_codec.encode(intent))
        assert decoded == intent
        kind = type(intent).__name__
        before = encode_state(self.player)
        version = self.player.version
        ctx = self.context()
        try:
            effects = RULES[type(intent)](self.player, intent, ctx)
        except GearhallError as exc:
            OUTCOMES[kind, str(exc.code)] += 1
            assert encode_state(self.player) == before, f"{kind} raised but changed the state"
            return None
        assert encode_state(self.player) == before, f"{kind} mutated the state itself"
        OUTCOMES[kind, "ok" if effects else "no-op"] += 1
        if not effects:
            assert type(intent) in NO_OP_ALLOWED, f"{kind} succeeded without any effect"
        self._note_created(effects, ctx.next_item_id)
        equipped = dict(self.player.equipment)
        cooldowns = dict(self.player.cooldowns)
        held = self._taken_only_out_of()
        self._commit(effects)
        assert self.player.version == version + len(effects)
        if not isinstance(intent, GrantItem):  # grants are the admin's, not the player's
            self._check_player_rules(equipped, cooldowns, held)
        self.rid += 1
        batch: msgspec.Struct
        if isinstance(intent, GrantItem):
            # An admin's grant reaches the player's own session as a push.
            batch = PlayerDelta(seq=self.player.version, effects=effects)
        else:
            batch = EffectsReply(rid=self.rid, version=self.player.version, effects=effects)
        received = self._over_the_wire(batch)
        if isinstance(received, PlayerDelta):
            assert self.mirror.apply_effects(received.seq, received.effects)
        else:
            assert isinstance(received, EffectsReply)
            assert self.mirror.apply_effects(received.version, received.effects)
        return effects

    def _taken_only_out_of(self) -> dict[int, int]:
        """Quantities in compartments players cannot put into (lost_and_found)."""
        return {
            cell: self.player.items[cell].qty
            for name, cells in self.player.compartments.items()
            if not CATALOG.compartments[name].player_can_place
            for cell in cells
            if cell is not None
        }

    def _check_player_rules(
        self, equipped: dict[str, int], cooldowns: dict[str, int], held: dict[int, int]
    ) -> None:
        """What a player's own intent may never do, whichever rule ran."""
        # An equip cooldown blocks equip and unequip in its slot: no intent changes what a
        # slot holds while that slot's cooldown runs.
        for slot in sorted({*equipped, *self.player.equipment}):
            if equipped.get(slot) != self.player.equipment.get(slot):
                ready_at = cooldowns.get(f"equip:{slot}", 0)
                assert ready_at <= self.now_ms, (
                    f"{slot} changed from {equipped.get(slot)} to "
                    f"{self.player.equipment.get(slot)} during its equip cooldown"
                )
        # Items only leave lost_and_found: none arrive, no stack there grows.
        for item_id, qty in self._taken_only_out_of().items():
            assert qty <= held.get(item_id, 0), f"item {item_id} put into lost_and_found"

    # --- what the player can see ----------------------------------------------------------

    def owned_ids(self) -> list[int]:
        return sorted(self.player.items)

    def stored_ids(self) -> list[int]:
        return sorted(cell for cells in self.player.compartments.values() for cell in cells if cell)

    def item_or_ghost(self, n: int, candidates: list[int]) -> int:
        # One draw in 25 names an id the player does not own (never created, or destroyed).
        if n % 25 == 24 or not candidates:
            gone = sorted(self.ever_created - set(self.player.items))
            return gone[n % len(gone)] if gone and n % 2 else self.next_item_id + 1000
        found = _pick(candidates, n)
        assert found is not None
        return found

    def compartment(self, n: int) -> str:
        # Mostly real compartments; sometimes one that does not exist.
        return "pocket" if n % 17 == 0 else COMPARTMENTS[n % len(COMPARTMENTS)]

    def cell(self, compartment: str, n: int, want_free: bool) -> int:
        cells = self.player.compartments.get(compartment, [])
        free = [i for i, cell in enumerate(cells) if cell is None]
        if want_free and free:
            return free[n % len(free)]
        return n % (len(cells) + 3)  # sometimes just outside

    # --- rules ------------------------------------------------------------------------------

    @rule(n=choice, m=choice, how=st.sampled_from(["fit", "fit", "two_handed", "any"]))
    def equip(self, n: int, m: int, how: str) -> None:
        # "fit": what a player would try, an item whose requirements they meet (equipped ones
        # too: into their other slot); "two_handed" prefers a two-hander, the equip that
        # displaces both hands.
        equippable = [
            i
            for i in self.owned_ids()
            if CATALOG.templates[self.player.items[i].template].slots and self._meets(i)
        ]
        if how == "two_handed":
            how = "fit"
            two_handed = [
                i for i in equippable if CATALOG.templates[self.player.items[i].template].two_handed
            ]
            equippable = two_handed or equippable
        item_id = self.item_or_ghost(n, equippable if how == "fit" else self.owned_ids())
        item = self.player.items.get(item_id)
        fits = CATALOG.templates[item.template].slots if item is not None else ()
        slot = _pick(fits, m) if how == "fit" and fits else EQUIP_SLOTS[m % len(EQUIP_SLOTS)]
        assert slot is not None
        self.run(EquipItem(rid=1, item_id=item_id, slot=slot))

    def _meets(self, item_id: int) -> bool:
        return self._meets_template(self.player.items[item_id].template)

    def _meets_template(self, template: str) -> bool:
        requires = CATALOG.templates[template].requires
        return self.player.level >= requires.level and all(
            self.player.skill_levels.get(skill, 1) >= level
            for skill, level in requires.skills.items()
        )

    @rule(n=choice, m=choice, how=aim, first_free=st.booleans())
    def unequip(self, n: int, m: int, how: str, first_free: bool) -> None:
        occupied = list(self.player.equipment)
        slot = (_pick(occupied, n) if how == "fit" else None) or EQUIP_SLOTS[n % len(EQUIP_SLOTS)]
        compartment = "backpack" if how == "fit" else self.compartment(m)
        index = None if first_free else self.cell(compartment, m, how == "fit")
        self.run(UnequipItem(rid=1, slot=slot, compartment=compartment, index=index))

    @rule(n=choice, m=choice, k=choice, how=aim)
    def move(self, n: int, m: int, k: int, how: str) -> None:
        item_id = self.item_or_ghost(n, self.stored_ids() if how == "fit" else self.owned_ids())
        compartment = self.compartment(m)
        self.run(
            MoveItem(
                rid=1,
                item_id=item_id,
                compartment=compartment,
                index=self.cell(compartment, k, False),
            )
        )

    @rule(n=choice, m=choice, k=choice, how=aim)
    def split(self, n: int, m: int, k: int, how: str) -> None:
        stacks = [i for i in self.owned_ids() if self.player.items[i].qty > 1]
        item_id = self.item_or_ghost(n, stacks if how == "fit" else self.owned_ids())
        item = self.player.items.get(item_id)
        have = item.qty if item is not None else 1
        qty = 1 + k % (have if how == "fit" and have > 1 else have + 1)
        compartment = "backpack" if how == "fit" else self.compartment(m)
        index = self.cell(compartment, m, how == "fit")
        self.run(SplitStack(rid=1, item_id=item_id, qty=qty, compartment=compartment, index=index))

    @rule(n=choice, m=choice, how=aim)
    def merge(self, n: int, m: int, how: str) -> None:
        owned = self.owned_ids()
        by_template: dict[str, list[int]] = {}
        for i in owned:
            by_template.setdefault(self.player.items[i].template, []).append(i)
        groups = [ids for ids in by_template.values() if len(ids) > 1]
        group = _pick(groups, m) if how == "fit" else None
        if group is None:
            self.run(
                MergeStacks(
                    rid=1,
                    item_id=self.item_or_ghost(n, owned),
                    into_item_id=self.item_or_ghost(m, owned),
                )
            )
            return
        # Two different stacks of one template, wherever they are (bank, belt, lost_and_found).
        item_id = group[n % len(group)]
        into = group[(n + 1 + m % (len(group) - 1)) % len(group)]
        self.run(MergeStacks(rid=1, item_id=item_id, into_item_id=into))

    @rule(n=choice)
    def sort(self, n: int) -> None:
        self.run(SortCompartment(rid=1, compartment=self.compartment(n)))

    @rule(n=choice, k=choice, whole=st.booleans())
    def destroy(self, n: int, k: int, whole: bool) -> None:
        item_id = self.item_or_ghost(n, self.owned_ids())
        item = self.player.items.get(item_id)
        qty = None if whole else 1 + k % ((item.qty if item else 1) + 1)
        self.run(DestroyItem(rid=1, item_id=item_id, qty=qty))

    @rule(n=choice, how=st.sampled_from(["fit", "fit", "train", "any"]))
    def use(self, n: int, how: str) -> None:
        usable = [
            i for i in self.owned_ids() if CATALOG.templates[self.player.items[i].template].use
        ]
        if how == "train":  # items that give XP: the way to skill requirements (greatsword)
            usable = [i for i in usable if self._gives_xp(i)] or usable
        if how in ("fit", "train"):  # carried and off cooldown, when there is such an item
            ready = [i for i in usable if self._ready_to_use(i)]
            self.run(UseItem(rid=1, item_id=self.item_or_ghost(n, ready or usable)))
        else:
            self.run(UseItem(rid=1, item_id=self.item_or_ghost(n, self.owned_ids())))

    def _gives_xp(self, item_id: int) -> bool:
        use = CATALOG.templates[self.player.items[item_id].template].use
        return use is not None and use.xp is not None

    def _ready_to_use(self, item_id: int) -> bool:
        tpl = CATALOG.templates[self.player.items[item_id].template]
        where = next(name for name, cells in self.player.compartments.items() if item_id in cells)
        return (
            CATALOG.compartments[where].carried
            and self.player.cooldowns.get(tpl.cooldown_key, 0) <= self.now_ms
        )

    @rule(
        n=choice,
        qty=st.one_of(st.integers(1, 3), st.integers(1, 12), st.integers(1, 200)),
        m=choice,
        aimed=st.booleans(),
        replay=st.integers(0, 3),
        novel=st.booleans(),
    )
    def grant(self, *, n: int, qty: int, m: int, aimed: bool, replay: int, novel: bool) -> None:
        # "novel": something the player has none of and could use (how a greatsword arrives
        # once swordsmanship allows it), else any template, or one that does not exist.
        have = {item.template for item in self.player.items.values()}
        wanted = [t for t in TEMPLATES if t not in have and self._meets_template(t)]
        if novel and wanted:
            template = wanted[n % len(wanted)]
        else:
            template = "unobtainium" if n % 29 == 0 else TEMPLATES[n % len(TEMPLATES)]
        compartment = self.compartment(m) if aimed else None
        if replay == 0 and self.keys:
            key = self.keys[m % len(self.keys)]
        else:
            key = f"grant-{len(self.keys):06d}"
            self.keys.append(key)
        replayed = key in self.player.grants  # older keys are forgotten: they grant again
        effects = self.run(
            GrantItem(
                rid=1,
                player_id=PLAYER_ID,
                template=template,
                qty=qty,
                compartment=compartment,
                idempotency_key=key,
            )
        )
        if effects is None:
            return
        if replayed:
            # A replay changes nothing; the server answers with the recorded version.
            assert effects == []
            assert self.player.grants[key] == self.granted[key]
        else:
            assert effects
            assert all(e.grant_key == key for e in effects if isinstance(e, ItemCreated))
            self.granted[key] = self.player.version

    @rule(ticks=st.one_of(st.integers(1, 60), st.sampled_from([100, 600, 1200, 2000])))
    def advance_time(self, ticks: int) -> None:
        self.tick += ticks

    @rule()
    def take_snapshot(self) -> None:
        self.snapshots.append(encode_state(self.player))
        if len(self.snapshots) > 4:  # keep version 0 and the three newest
            del self.snapshots[1]

    # --- invariants, after every step -------------------------------------------------------

    @invariant()
    def each_item_is_in_exactly_one_place(self) -> None:
        seen: Counter[int] = Counter()
        for name, cells in self.player.compartments.items():
            for index, cell in enumerate(cells):
                if cell is not None:
                    assert cell in self.player.items, f"{name}/{index} holds unowned {cell}"
                    seen[cell] += 1
        for slot, item_id in self.player.equipment.items():
            assert item_id in self.player.items, f"{slot} holds unowned {item_id}"
            seen[item_id] += 1
        assert seen == Counter(list(self.player.items)), "items lost or in two places"
        for item_id, item in self.player.items.items():
            assert item.id == item_id

    @invariant()
    def no_place_holds_an_incompatible_item(self) -> None:
        player = self.player
        for slot, item_id in player.equipment.items():
            tpl = CATALOG.templates[player.items[item_id].template]
            assert slot in tpl.slots, f"{tpl.id} in {slot}"
        main = player.equipment.get("main_hand")
        if main is not None and CATALOG.templates[player.items[main].template].two_handed:
            assert "off_hand" not in player.equipment, "off_hand beside a two-hander"
        assert list(player.compartments) == list(CATALOG.compartments)
        for name, cells in player.compartments.items():
            spec = CATALOG.compartments[name]
            assert len(cells) == spec.slots, name
            if spec.max_weight is not None:
                grams = sum(
                    CATALOG.templates[player.items[cell].template].weight * player.items[cell].qty
                    for cell in cells
                    if cell is not None
                )
                assert grams <= spec.max_weight, f"{name} holds {grams} g"
            for cell in cells:
                if cell is not None and spec.accepts:
                    category = CATALOG.templates[player.items[cell].template].category
                    assert category in spec.accepts, f"{category} in {name}"

    @invariant()
    def stacks_and_charges_within_limits(self) -> None:
        for item in self.player.items.values():
            tpl = CATALOG.templates[item.template]
            assert 1 <= item.qty <= tpl.max_stack, item
            if tpl.charges is None:
                assert item.charges is None, item
            else:
                assert item.charges is not None and 1 <= item.charges <= tpl.charges, item
            assert item.bound or tpl.bind != "on_pickup", item

    @invariant()
    def weights_stats_and_levels_match_a_recomputation(self) -> None:
        player, now = self.player, self.now_ms
        fresh = compute_stats(player, CATALOG, now)
        assert self.stats_cache.get(player, now) == fresh, "stats cache is stale"

        def weight(item_id: int) -> int:
            item = player.items[item_id]
            return CATALOG.templates[item.template].weight * item.qty

        carried = sum(weight(i) for i in player.equipment.values()) + sum(
            weight(cell)
            for name, cells in player.compartments.items()
            if CATALOG.compartments[name].carried
            for cell in cells
            if cell is not None
        )
        values = dict(CATALOG.player.base_stats)
        for item_id in player.equipment.values():
            for stat, delta in CATALOG.templates[player.items[item_id].template].stats.items():
                values[stat] = values.get(stat, 0) + delta
        for buff in player.active_effects.values():
            if now < buff.expires_at_ms:
                for stat, delta in buff.stats.items():
                    values[stat] = values.get(stat, 0) + delta
        spec = CATALOG.player
        capacity = spec.carry_capacity_base + max(0, values["strength"]) * (
            spec.carry_capacity_per_strength
        )
        if carried * 100 > capacity * spec.overloaded_above_pct:
            encumbrance, speed = "overloaded", spec.overloaded_speed_pct
        elif carried * 100 > capacity * spec.burdened_above_pct:
            encumbrance, speed = "burdened", spec.burdened_speed_pct
        else:
            encumbrance, speed = "normal", 100
        assert fresh.values == values
        assert (fresh.carried_weight, fresh.carry_capacity) == (carried, capacity)
        assert fresh.encumbrance == encumbrance
        assert fresh.movement_speed == spec.movement_speed * speed // 100

        for skill in CATALOG.skills:
            xp = player.skills.get(skill, 0)
            level = level_for(xp, CATALOG.skill_thresholds(skill))
            assert player.skill_levels.get(skill, 1) == level, skill
        assert player.level == level_for(sum(player.skills.values()), CATALOG.level_thresholds())

    @invariant()
    def version_counts_the_journal(self) -> None:
        assert self.player.version == len(self.journal)
        assert len(self.player.grants) <= GRANT_KEYS_KEPT
        for key, version in self.player.grants.items():
            assert self.granted[key] == version

    @invariant()
    def snapshot_plus_journal_replays_to_the_live_state(self) -> None:
        live = encode_state(self.player)
        for snapshot in self.snapshots:
            state: PlayerState = decode_state(snapshot)
            for raw in self.journal[state.version :]:
                apply(state, _journal_decoder.decode(raw))
            assert encode_state(state) == live, f"replay from version {state.version} differs"

    @invariant()
    def client_mirror_equals_the_server(self) -> None:
        assert self.mirror.encoded() == encode_state(self.player)


def test_random_intent_sequences_keep_every_invariant() -> None:
    OUTCOMES.clear()

    run_state_machine_as_test(PlayerMachine, settings=SETTINGS)

    # The run exercised both sides of every intent: a success and an error.
    kinds = {kind for kind, _ in OUTCOMES}
    assert kinds == {cls.__name__ for cls in RULES}
    for kind in kinds:
        assert OUTCOMES[kind, "ok"] > 0, f"{kind} never succeeded: {OUTCOMES}"
        assert any(outcome not in ("ok", "no-op") for k, outcome in OUTCOMES if k == kind), (
            f"{kind} never failed"
        )
