"""Players with ~60 items for the model benchmarks, built with the pure rules.

``build_player`` makes one the way the server would have: the starter kit, equips, admin
grants into every compartment and item uses (for cooldowns), each through the real rule and
applied with the real ``apply``, so its state, effects and snapshot are the real ones.
``ModelPopulation`` is the population ``benchmarks.tick_bench`` runs with these players.
"""

from __future__ import annotations

import random

import msgspec

from benchmarks.tick_bench import TICK_MS
from protocol.base import Request
from protocol.messages import EquipItem, GrantItem, MoveItem, UseItem
from protocol.mirror import apply_all
from protocol.model import AnyEffect, EquipSlot, ItemCreated, PlayerState
from sim import rules
from sim.rules import Rule, RuleContext
from sim.state import new_player
from sim.templates import Catalog

IDS_PER_PLAYER = 1_000_000  # item ids: player p owns [p * 1e6, (p + 1) * 1e6)
VEST_CELLS = (2, 20)  # the leather vest moves between these backpack cells
SPLIT_CELL = 23
POTION_COOLDOWN_TICKS = 30_000 // TICK_MS

EQUIPPED: tuple[tuple[str, EquipSlot], ...] = (
    ("short_sword", "main_hand"),
    ("buckler", "off_hand"),
    ("copper_ring", "ring1"),
    ("copper_ring", "ring2"),
)
# (compartment, template, qty): 50 items on top of the 10 of the starter kit. Items that do
# not stack become one item each; 500 iron ore are 10 stacks of 50.
GRANTS: tuple[tuple[str, str, int], ...] = (
    ("backpack", "copper_ring", 3),
    ("backpack", "cloth_cap", 1),
    ("backpack", "bread", 60),
    ("backpack", "elixir_of_might", 5),
    ("backpack", "greater_healing_potion", 10),
    ("backpack", "belt_of_giants", 1),
    ("backpack", "short_sword", 1),
    ("belt", "healing_potion", 20),
    ("belt", "training_manual", 1),
    ("quest", "old_key", 3),
    ("bank", "iron_ore", 500),
    ("bank", "greatsword", 3),
    ("bank", "iron_helm", 5),
    ("bank", "leather_vest", 5),
    ("bank", "buckler", 5),
    ("bank", "copper_ring", 3),
    ("bank", "bread", 40),
)


def first_item(state: PlayerState, template: str, compartment: str | None = None) -> int:
    for name, cells in state.compartments.items():
        if compartment is not None and name != compartment:
            continue
        for cell in cells:
            if cell is not None and state.items[cell].template == template:
                return cell
    raise LookupError(f"player {state.player_id} has no {template} in {compartment}")


def build_player(
    player_id: int, catalog: Catalog, tick: int, potion_ready_tick: int | None = None
) -> PlayerState:
    """A player with ~60 items, made by the pure rules.

    Starter kit; short sword, buckler and both copper rings equipped; ``GRANTS`` granted
    (backpack 16 of 24 cells used, belt 4/4, quest 3/16, bank 33/48; 27.7 kg carried, 37 kg
    capacity with the sword and the elixir's buff: normal encumbrance). A healing potion
    used so that its group cooldown
    ends at ``potion_ready_tick`` (default: long ago), and an elixir of might used so that
    its cooldown and buff run beyond ``tick + 10,000``.
    """
    state = new_player(player_id, f"p{player_id}")
    next_id = player_id * IDS_PER_PLAYER + 1
    long_ago = RuleContext(tick=tick - 100_000, tick_ms=TICK_MS, catalog=catalog)

    def run(rule: Rule, intent: Request, ctx: RuleContext = long_ago) -> list[AnyEffect]:
        nonlocal next_id
        effects = rule(state, intent, msgspec.structs.replace(ctx, next_item_id=next_id))
        created = [e.item.id for e in effects if isinstance(e, ItemCreated)]
        next_id = max([next_id - 1, *created]) + 1
        apply_all(state, effects)
        return effects

    kit = rules.grant_starter_kit(state, long_ago, range(next_id, next_id + 10))
    apply_all(state, kit)
    next_id += len(catalog.starter_kit)
    for template, slot in EQUIPPED:
        run(rules.equip_item, EquipItem(rid=0, item_id=first_item(state, template), slot=slot))
    for n, (compartment, template, qty) in enumerate(GRANTS):
        grant = GrantItem(
            rid=0,
            player_id=player_id,
            template=template,
            qty=qty,
            compartment=compartment,
            idempotency_key=f"bench-{player_id}-{n:03d}",
        )
        run(rules.grant_item, grant)
    ready = potion_ready_tick if potion_ready_tick is not None else tick - 50_000
    used_at = RuleContext(tick=ready - POTION_COOLDOWN_TICKS, tick_ms=TICK_MS, catalog=catalog)
    run(
        rules.use_item, UseItem(rid=0, item_id=first_item(state, "healing_potion", "belt")), used_at
    )
    later = RuleContext(tick=tick + 10_000, tick_ms=TICK_MS, catalog=catalog)
    run(rules.use_item, UseItem(rid=0, item_id=first_item(state, "elixir_of_might")), later)
    return state


# --- tick ----------------------------------------------------------------------------------


class ModelPopulation:
    """``tick_bench`` population: 60-item players. An op uses bread (``use_fraction`` of
    the ops, when the player's bread cooldown is over) or moves the leather vest."""

    def __init__(self, run_ticks: int, use_fraction: float, seed: int = 2) -> None:
        self.name = f"60-item players, {use_fraction:.0%} of ops use bread"
        self._run_ticks = run_ticks
        self._use_fraction = use_fraction
        self._rng = random.Random(seed)
        self._bread: dict[int, list[int]] = {}
        self._vest: dict[int, int] = {}

    def build(self, player_id: int, catalog: Catalog, tick: int) -> PlayerState:
        ready = tick + 1 + self._rng.randrange(self._run_ticks)
        state = build_player(player_id, catalog, tick, potion_ready_tick=ready)
        self._bread[player_id] = [
            c for c in state.compartments["backpack"]
            if c is not None and state.items[c].template == "bread"
        ]  # fmt: skip
        self._vest[player_id] = first_item(state, "leather_vest", "backpack")
        return state

    def op(self, state: PlayerState, now_ms: int) -> tuple[Request, Rule]:
        pid = state.player_id
        use = self._rng.random() < self._use_fraction
        if use and state.cooldowns.get("item:bread", 0) <= now_ms:
            bread = [b for b in self._bread[pid] if b in state.items]
            self._bread[pid] = bread
            if bread:
                return UseItem(rid=0, item_id=bread[0]), rules.use_item
        cells = state.compartments["backpack"]
        target = VEST_CELLS[1] if cells[VEST_CELLS[1]] is None else VEST_CELLS[0]
        intent = MoveItem(rid=0, item_id=self._vest[pid], compartment="backpack", index=target)
        return intent, rules.move_item
