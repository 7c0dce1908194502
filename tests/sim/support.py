"""Shared fixtures for the sim tests: a catalog the tests own, a step runner, invariants.

The catalog is the tests' own (not ``sim/data/templates.toml``) so a designer editing the
shipped data cannot silently change what these tests check. States are only ever built the
way the server builds them: ``new_player`` + ``grant_starter_kit``, then rules (intents,
grants, reconcile, XP) whose effects are applied with ``sim.apply``.

Numbers worth knowing (see the TOML below):

- The kit weighs exactly 12,000 g. Capacity is 10,000 g + 1,000 g per strength point:
  20,000 g at base strength 10, so burdened above 20,000 g and overloaded above 30,000 g.
  Ore weighs 1,000 g a unit.
- Kit ids are 101..115; the backpack kit fills cells 0..11 (16 cells), the belt 0..1 (full),
  the quest compartment 0. Items the rules create get ids from ``FIRST_NEW_ID`` on.
- One tick is 50 ms.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterable

import msgspec

from protocol.base import Request
from protocol.messages import GrantItem
from protocol.model import EQUIP_SLOTS, EQUIPMENT, LOST_AND_FOUND, AnyEffect, PlayerState
from sim.apply import apply_all
from sim.rules import RULES, RuleContext, gain_xp, grant_starter_kit, reconcile
from sim.state import new_player
from sim.stats import compartment_weight
from sim.templates import Catalog, CompartmentSpec, ItemTemplate, level_for, parse_templates

TICK_MS = 50
PLAYER_ID = 1

TEMPLATES_TOML = """
schema_version = 2

[player]
base_stats = { strength = 10, stamina = 10, armor = 0, max_health = 100 }
carry_capacity_base = 10000
carry_capacity_per_strength = 1000
movement_speed = 100
burdened_above_pct = 100
overloaded_above_pct = 150
burdened_speed_pct = 75
overloaded_speed_pct = 25

[progression]   # character level from total XP: 0, 100, 300, 700, 1500, ... (max 10)
xp_base = 100
xp_growth = 2.0
max_level = 10

[[skill]]       # 0, 10, 30, 70, 150 (max 5)
id = "alchemy"
name = "Alchemy"
curve = { xp_base = 10, xp_growth = 2.0, max_level = 5 }

[[skill]]       # 100 XP a level: 0, 100, 200, ..., 900 (max 10)
id = "swords"
name = "Swords"
curve = { xp_base = 100, xp_growth = 1.0, max_level = 10 }

[compartments.backpack]
slots = 16
[compartments.belt]
slots = 2
accepts = ["consumable"]
[compartments.quest]
slots = 2
accepts = ["quest"]
[compartments.satchel]
slots = 3
max_weight = 3000
[compartments.bank]
slots = 8
carried = false
[compartments.lost_and_found]
slots = 2
carried = false
player_can_place = false

[[template]]
id = "cap"
name = "Cap"
category = "armor"
slots = ["head"]
stats = { armor = 1 }
weight = 200

[[template]]
id = "helm"
name = "Knight's Helm"
category = "armor"
slots = ["head"]
stats = { armor = 3 }
weight = 1500
requires = { level = 2, skills = { swords = 3 } }

[[template]]
id = "girdle"
name = "Girdle of Might"
category = "armor"
slots = ["waist"]
stats = { strength = 5 }
weight = 500
bind = "on_equip"

[[template]]
id = "ring"
name = "Ring"
category = "jewelry"
slots = ["ring1", "ring2"]
stats = { max_health = 10 }
weight = 50

[[template]]
id = "sword"
name = "Sword"
category = "weapon"
slots = ["main_hand", "off_hand"]
stats = { strength = 2 }
weight = 1500
equip_cooldown_ms = 1000   # 20 ticks

[[template]]
id = "dagger"
name = "Dagger"
category = "weapon"
slots = ["main_hand", "off_hand"]
weight = 500
equip_cooldown_ms = 120    # 2.4 ticks: rounds up to 3

[[template]]
id = "greatsword"
name = "Greatsword"
category = "weapon"
slots = ["main_hand"]
two_handed = true
stats = { strength = 4 }
weight = 4000
equip_cooldown_ms = 2000   # 40 ticks, on both hands

[[template]]
id = "shield"
name = "Shield"
category = "shield"
slots = ["off_hand"]
stats = { armor = 2 }
weight = 2000

[[template]]
id = "potion"
name = "Potion"
category = "consumable"
weight = 100
max_stack = 5
use = { kind = "heal", amount = 30, xp = { skill = "alchemy", amount = 10 } }
cooldown_group = "healing"
use_cooldown_ms = 10000    # 200 ticks

[[template]]
id = "big_potion"
name = "Big Potion"
category = "consumable"
weight = 200
max_stack = 5
use = { kind = "heal", amount = 60, xp = { skill = "alchemy", amount = 25 } }
cooldown_group = "healing"
use_cooldown_ms = 10000
requires = { skills = { alchemy = 2 } }

[[template]]
id = "elixir"
name = "Elixir of Strength"
category = "consumable"
weight = 100
max_stack = 3
use = { kind = "buff", stats = { strength = 10 }, duration_ms = 60000 }
use_cooldown_ms = 5000     # 100 ticks
requires = { level = 2 }

[[template]]
id = "tome"
name = "Tome of Swords"
category = "consumable"
weight = 300
charges = 3
use = { kind = "xp", xp = { skill = "swords", amount = 250 } }
use_cooldown_ms = 1000
tradeable = false
bind = "on_pickup"

[[template]]
id = "ore"
name = "Iron Ore"
category = "material"
weight = 1000
max_stack = 50

[[template]]
id = "badge"
name = "Badge of Honour"
category = "material"
weight = 10
max_stack = 20
tradeable = false
bind = "on_pickup"

[[template]]
id = "relic"
name = "Relic"
category = "quest"
weight = 500
tradeable = false

[starter_kit]
items = [
  { template = "cap" },
  { template = "helm" },
  { template = "girdle" },
  { template = "ring" },
  { template = "ring" },
  { template = "sword" },
  { template = "dagger" },
  { template = "greatsword" },
  { template = "shield" },
  { template = "potion", qty = 3 },
  { template = "elixir", qty = 2 },
  { template = "tome" },
  { template = "potion", qty = 2, compartment = "belt" },
  { template = "big_potion", compartment = "belt" },
  { template = "relic", compartment = "quest" },
]
"""

CATALOG: Catalog = parse_templates(TEMPLATES_TOML, "tests/sim/support.py")

# Kit item ids, in kit order.
(
    CAP, HELM, GIRDLE, RING_A, RING_B, SWORD, DAGGER, GREATSWORD, SHIELD, POTION, ELIXIR, TOME,
    BELT_POTION, BIG_POTION, RELIC,
) = KIT_IDS = tuple(range(101, 116))  # fmt: skip
KIT_WEIGHT = 12_000
KIT_VERSION = 22  # 6 compartments + 15 items + health
FIRST_NEW_ID = 1001
UNOWNED = 999
BACKPACK = "backpack"


# --- steps that are not client intents ---------------------------------------------------


class Reconcile(msgspec.Struct, frozen=True):
    """Run ``reconcile`` against ``catalog`` (what the server does when a player loads)."""

    catalog: Catalog


class StarterKit(msgspec.Struct, frozen=True):
    ids: tuple[int, ...] = KIT_IDS


class GainXp(msgspec.Struct, frozen=True):
    """XP from an action (``sim.rules.gain_xp``), as the driver of that action would add."""

    skill: str
    amount: int


Step = Request | Reconcile | StarterKit | GainXp


def ctx(tick: int, catalog: Catalog = CATALOG, next_item_id: int = FIRST_NEW_ID) -> RuleContext:
    return RuleContext(tick=tick, tick_ms=TICK_MS, catalog=catalog, next_item_id=next_item_id)


def next_id(player: PlayerState) -> int:
    """A fresh id for this player (the hub hands out globally fresh ones)."""
    return max([FIRST_NEW_ID - 1, *player.items]) + 1


def decide(
    player: PlayerState, step: Step, tick: int, catalog: Catalog = CATALOG
) -> list[AnyEffect]:
    """Run the rule for ``step`` (the server's dispatch, minus the I/O)."""
    context = ctx(tick, catalog, next_id(player))
    if isinstance(step, Reconcile):
        return reconcile(player, ctx(tick, step.catalog))
    if isinstance(step, StarterKit):
        return grant_starter_kit(player, context, step.ids)
    if isinstance(step, GainXp):
        return gain_xp(player, context, step.skill, step.amount)
    return RULES[type(step)](player, step, context)


def play(
    player: PlayerState,
    steps: Iterable[Step | AnyEffect],
    tick: int,
    catalog: Catalog = CATALOG,
) -> PlayerState:
    """Bring ``player`` to a state: steps go through their rule and their effects are
    applied. A bare effect is applied as-is; only guard tests for broken states use that."""
    for step in steps:
        effects = decide(player, step, tick, catalog) if isinstance(step, Step) else [step]
        apply_all(player, effects)
    return player


def starter(catalog: Catalog = CATALOG) -> PlayerState:
    """A new player who has just received the starter kit (ids 101..115)."""
    return play(new_player(PLAYER_ID, "tester"), [StarterKit()], 0, catalog)


_keys = itertools.count(1)


def grant(
    template: str, qty: int = 1, compartment: str | None = None, key: str | None = None
) -> GrantItem:
    """A grant intent; without ``key`` a new idempotency key each time."""
    return GrantItem(
        rid=1,
        player_id=PLAYER_ID,
        template=template,
        qty=qty,
        compartment=compartment,
        idempotency_key=key or f"grant-key-{next(_keys)}",
    )


# --- catalog variants (what a designer's edit would load) -------------------------------


def without_template(template: str, catalog: Catalog = CATALOG) -> Catalog:
    templates = {k: v for k, v in catalog.templates.items() if k != template}
    return msgspec.structs.replace(catalog, templates=templates)


def with_template(template: str, catalog: Catalog = CATALOG, **changes: object) -> Catalog:
    changed: ItemTemplate = msgspec.structs.replace(catalog.templates[template], **changes)
    return msgspec.structs.replace(catalog, templates={**catalog.templates, template: changed})


def with_compartment(name: str, catalog: Catalog = CATALOG, **changes: object) -> Catalog:
    """``name`` changed (or added at the end when new)."""
    old = catalog.compartments.get(name)
    if old is None:
        spec = msgspec.convert(changes, CompartmentSpec)
    else:
        spec = msgspec.structs.replace(old, **changes)
    return msgspec.structs.replace(catalog, compartments={**catalog.compartments, name: spec})


def without_compartment(name: str, catalog: Catalog = CATALOG) -> Catalog:
    compartments = {k: v for k, v in catalog.compartments.items() if k != name}
    return msgspec.structs.replace(catalog, compartments=compartments)


# --- invariants --------------------------------------------------------------------------


def check_invariants(player: PlayerState, catalog: Catalog = CATALOG) -> None:
    """Everything that must hold of a state the rules built against ``catalog`` (and, after
    a catalog change, reconciled). Raises AssertionError naming the first broken one."""
    places: Counter[int] = Counter()
    for name, cells in player.compartments.items():
        spec = catalog.compartments.get(name)
        if spec is not None:
            assert len(cells) >= spec.slots, f"{name} has {len(cells)} < {spec.slots} cells"
        for index, cell in enumerate(cells):
            if cell is None:
                continue
            places[cell] += 1
            assert cell in player.items, f"{name}/{index} holds unknown item {cell}"
            if name == LOST_AND_FOUND:
                continue  # anything may wait there, whatever its template
            tpl = catalog.get(player.items[cell].template)
            assert tpl is not None, f"item {cell} without template outside lost_and_found"
            assert spec is not None, f"item {cell} in compartment {name} the catalog lacks"
            assert index < spec.slots, f"item {cell} beyond the end of {name}"
            assert not spec.accepts or tpl.category in spec.accepts, f"{name} holds {tpl.id}"
        if spec is not None and spec.max_weight is not None:
            weight = compartment_weight(player, catalog, name)
            assert weight <= spec.max_weight, f"{name} holds {weight} g > {spec.max_weight}"
    for slot, item_id in player.equipment.items():
        places[item_id] += 1
        assert slot in EQUIP_SLOTS, f"unknown slot {slot}"
        assert item_id in player.items, f"{slot} holds unknown item {item_id}"
        item = player.items[item_id]
        tpl = catalog.get(item.template)
        assert tpl is not None, f"item {item_id} without template equipped"
        assert slot in tpl.slots, f"{tpl.id} in {slot}"
        assert tpl.bind != "on_equip" or item.bound, f"equipped {tpl.id} is not bound"
    main = player.equipment.get("main_hand")
    if main is not None:
        main_tpl = catalog.get(player.items[main].template)
        assert not (main_tpl and main_tpl.two_handed and "off_hand" in player.equipment), (
            "off_hand holds an item beside a two-hander"
        )
    assert places == Counter(dict.fromkeys(player.items, 1)), f"items not in one place: {places}"
    for item in player.items.values():
        tpl = catalog.get(item.template)
        if tpl is None:
            continue
        assert 1 <= item.qty <= tpl.max_stack, f"item {item.id}: qty {item.qty}"
        if tpl.charges is None:
            assert item.charges is None, f"item {item.id} has charges"
        else:
            assert item.charges is not None and 1 <= item.charges <= tpl.charges
        assert tpl.bind != "on_pickup" or item.bound, f"{tpl.id} {item.id} is not bound"
    for skill, xp in player.skills.items():
        level = level_for(xp, catalog.skill_thresholds(skill))
        assert player.skill_levels.get(skill, 1) == level, f"{skill}: {xp} XP"
    total = sum(player.skills.values())
    assert player.level == level_for(total, catalog.level_thresholds()), "character level"
    for key, ready_at_ms in player.cooldowns.items():
        assert ready_at_ms % TICK_MS == 0, f"cooldown {key} not on a tick boundary"
    assert EQUIPMENT not in player.compartments
    assert reconcile(player, ctx(0, catalog)) == [], "a consistent state needs no reconcile"
