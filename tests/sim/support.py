"""Shared fixtures for the sim tests: a small catalog the tests own, and a rule runner.

The catalog is the tests' own (not ``sim/data/templates.toml``) so a designer editing the
shipped data cannot silently change what these tests check.
"""

from __future__ import annotations

from collections.abc import Iterable

from protocol.messages import Request
from protocol.model import AnyEffect, PlayerState
from sim.apply import apply_all
from sim.rules import RULES, RuleContext, grant_starter_kit
from sim.state import new_player
from sim.templates import Catalog, parse_templates

TICK_MS = 50

TEMPLATES_TOML = """
schema_version = 1

[[template]]
id = "cap"
name = "Cap"
category = "armor"
slots = ["head"]

[[template]]
id = "helm"
name = "Helm"
category = "armor"
slots = ["head"]

[[template]]
id = "vest"
name = "Vest"
category = "armor"
slots = ["chest"]

[[template]]
id = "ring"
name = "Ring"
category = "jewelry"
slots = ["ring1", "ring2"]

[[template]]
id = "sword"
name = "Sword"
category = "weapon"
slots = ["main_hand", "off_hand"]
equip_cooldown_ms = 1000   # 20 ticks of 50 ms

[[template]]
id = "buckler"
name = "Buckler"
category = "shield"
slots = ["off_hand"]
equip_cooldown_ms = 120    # 2.4 ticks: rounds up to 3

[[template]]
id = "bread"
name = "Bread"
category = "consumable"
max_stack = 20

[starter_kit]
items = [
  { template = "cap" },
  { template = "helm" },
  { template = "vest" },
  { template = "ring" },
  { template = "ring" },
  { template = "sword" },
  { template = "buckler" },
  { template = "bread", qty = 5 },
]
"""

CATALOG: Catalog = parse_templates(TEMPLATES_TOML, "tests/sim/support.py")

# Kit item ids; the kit fills backpack cells 0..7 in this order.
CAP, HELM, VEST, RING_A, RING_B, SWORD, BUCKLER, BREAD = range(101, 109)
KIT_IDS = (CAP, HELM, VEST, RING_A, RING_B, SWORD, BUCKLER, BREAD)
BACKPACK_SIZE = 24
UNOWNED = 999


def ctx(tick: int, catalog: Catalog = CATALOG) -> RuleContext:
    return RuleContext(tick=tick, tick_ms=TICK_MS, catalog=catalog)


def decide(player: PlayerState, intent: Request, tick: int) -> list[AnyEffect]:
    """Run the rule registered for ``intent`` (the server's dispatch, minus the I/O)."""
    return RULES[type(intent)](player, intent, ctx(tick))  # type: ignore[arg-type]


def starter(player_id: int = 1, catalog: Catalog = CATALOG) -> PlayerState:
    """A new player who has just received the starter kit (ids 101, 102, ...)."""
    player = new_player(player_id, f"p{player_id}")
    ids = range(101, 101 + len(catalog.starter_kit))
    return apply_all(player, grant_starter_kit(player, ctx(0, catalog), ids))


def play(player: PlayerState, steps: Iterable[Request | AnyEffect], tick: int) -> PlayerState:
    """Bring ``player`` to a state: intents go through their rule, effects are applied as-is."""
    for step in steps:
        effects = decide(player, step, tick) if isinstance(step, Request) else [step]
        apply_all(player, effects)
    return player
