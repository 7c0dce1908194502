"""Workloads of the load generator: what each client sends next.

A plan makes the next request frame of one client (``frame(rid)``). Plans that need
something from a reply (the id of a stack they split off) say so with ``observes`` and get
each of their replies through ``observe(rid, frame)``; the others cost the generator
nothing per reply. Every plan is valid in a closed loop for a new player holding the
untouched starter kit (``sim/data/templates.toml``: backpack cells 0..8 = cloth_cap,
iron_helm, leather_vest, copper_ring x2, short_sword, buckler, bread x5, training_manual;
cells 9..23 free), so a healthy run has no error replies; in an open loop a plan that is
still waiting for a reply it depends on sends a read (``player.get_stats``) instead.

- ``ping``: ping.
- ``equip``: equip ``cloth_cap`` to ``head``, unequip ``head`` (to the first free cell: the
  one it left), move ``leather_vest`` between its cell and cell 12. No cooldowns involved.
- ``stack``: split 1 bread off the stack to cell 23, sort the backpack (which moves the new
  stack next to the old one), merge it back. ``use_item`` itself is cooldown-bound (bread
  1 s, potions 30 s) and consumes what it uses, so a closed loop of it would measure
  ``cooldown_active`` errors; the rule's cost is measured in-process instead
  (``benchmarks/model_bench.py``).
- ``mixed``: the two interleaved, plus one ``player.get_stats`` read per 7 requests.
"""

from __future__ import annotations

from typing import Literal, Protocol

import msgspec

from protocol.messages import (
    EquipItem,
    GetStats,
    MergeStacks,
    MoveItem,
    Ping,
    SortCompartment,
    SplitStack,
    UnequipItem,
)
from tools.wsprobe.client import FrameCodec, Message, ProbeError

Workload = Literal["ping", "equip", "stack", "mixed"]
WORKLOADS: tuple[Workload, ...] = ("ping", "equip", "stack", "mixed")

VEST_OTHER_CELL = 12
SPLIT_CELL = 23


class Plan(Protocol):
    observes: bool

    def frame(self, rid: int) -> bytes: ...

    def observe(self, rid: int, frame: bytes) -> None: ...


class _NewItem(msgspec.Struct):
    id: int


class _Effect(msgspec.Struct):
    e: str
    item: _NewItem | None = None


class _Reply(msgspec.Struct):
    """The part of a reply the stack plan reads; everything else is skipped."""

    t: str
    effects: list[_Effect] = []


class _Kit:
    """Item ids and free cells of the untouched starter kit, read from a welcome."""

    def __init__(self, welcome: Message) -> None:
        state = welcome.get("state")
        if not isinstance(state, dict):
            raise ProbeError("welcome carries no state (was the player resumed?)")
        items = state.get("items")
        compartments = state.get("compartments")
        equipment = state.get("equipment")
        backpack = compartments.get("backpack") if isinstance(compartments, dict) else None
        if not isinstance(items, dict) or not isinstance(backpack, list):
            raise ProbeError("welcome state has no items or no backpack")
        templates: dict[int, object] = {
            int(str(k)): v.get("template") for k, v in items.items() if isinstance(v, dict)
        }
        self.cells: dict[int, int] = {
            item: index for index, item in enumerate(backpack) if item is not None
        }
        self.free: set[int] = {index for index, item in enumerate(backpack) if item is None}
        self.head: object = equipment.get("head") if isinstance(equipment, dict) else None
        self.templates = templates

    def first(self, template: str) -> int:
        found = next((i for i in sorted(self.cells) if self.templates.get(i) == template), None)
        if found is None:
            raise ProbeError(f"player has no {template} in the backpack: not the starter kit")
        return found

    def require_free(self, *cells: int) -> None:
        if not set(cells) <= self.free:
            raise ProbeError(f"backpack cells {cells} are not all free: not the starter kit")


class PingPlan:
    __slots__ = ("_encode", "observes")

    def __init__(self, codec: FrameCodec) -> None:
        self._encode = codec.encode
        self.observes = False

    def frame(self, rid: int) -> bytes:
        return self._encode(Ping(rid=rid))

    def observe(self, rid: int, frame: bytes) -> None:
        return None


class EquipPlan:
    """equip cap -> head, unequip head, move vest to the other cell; repeat."""

    __slots__ = ("_cap", "_cells", "_encode", "_step", "_vest", "observes")

    def __init__(self, codec: FrameCodec, kit: _Kit) -> None:
        if kit.head is not None:
            raise ProbeError("the player already wears something on its head")
        kit.require_free(VEST_OTHER_CELL)
        self._encode = codec.encode
        self._cap = kit.first("cloth_cap")
        self._vest = kit.first("leather_vest")
        self._cells = (VEST_OTHER_CELL, kit.cells[self._vest])
        self._step = 0
        self.observes = False

    def frame(self, rid: int) -> bytes:
        step = self._step
        self._step = (step + 1) % 6
        if step % 3 == 0:
            return self._encode(EquipItem(rid=rid, item_id=self._cap, slot="head"))
        if step % 3 == 1:
            return self._encode(UnequipItem(rid=rid, slot="head"))
        target = self._cells[0] if step == 2 else self._cells[1]
        return self._encode(
            MoveItem(rid=rid, item_id=self._vest, compartment="backpack", index=target)
        )

    def observe(self, rid: int, frame: bytes) -> None:
        return None


class StackPlan:
    """split 1 bread -> cell 23, sort the backpack, merge the new stack back; repeat.

    The new stack's id comes from the split's reply. A split is sent only when no split
    stack exists or is on its way, a merge only when one exists and no merge is on its way;
    otherwise (open loop, reply not back yet) the step is a stats read.
    """

    __slots__ = (
        "_bread",
        "_decode",
        "_encode",
        "_merge_rid",
        "_new",
        "_split_rid",
        "_step",
        "observes",
    )

    def __init__(self, codec: FrameCodec, kit: _Kit) -> None:
        kit.require_free(SPLIT_CELL)
        self._encode = codec.encode
        self._decode = (
            msgspec.json.Decoder(_Reply).decode
            if codec.text
            else msgspec.msgpack.Decoder(_Reply).decode
        )
        self._bread = kit.first("bread")
        self._new: int | None = None
        self._split_rid: int | None = None
        self._merge_rid: int | None = None
        self._step = 0
        self.observes = True

    def frame(self, rid: int) -> bytes:
        step = self._step
        self._step = (step + 1) % 3
        if step == 0 and self._new is None and self._split_rid is None:
            self._split_rid = rid
            return self._encode(
                SplitStack(
                    rid=rid, item_id=self._bread, qty=1, compartment="backpack", index=SPLIT_CELL
                )
            )
        if step == 1:
            return self._encode(SortCompartment(rid=rid, compartment="backpack"))
        if step == 2 and self._new is not None and self._merge_rid is None:
            self._merge_rid = rid
            return self._encode(MergeStacks(rid=rid, item_id=self._new, into_item_id=self._bread))
        return self._encode(GetStats(rid=rid))

    def observe(self, rid: int, frame: bytes) -> None:
        if rid == self._split_rid:
            self._split_rid = None
            reply = self._decode(frame)
            created = [e.item.id for e in reply.effects if e.item is not None]
            if reply.t == "effects" and created:
                self._new = created[0]
        elif rid == self._merge_rid:
            self._merge_rid = None
            if self._decode(frame).t == "effects":
                self._new = None  # merged away (bread stacks hold 20: it always fits)


class MixedPlan:
    """equip, stack, equip, stack, equip, stack steps, then one stats read; repeat."""

    __slots__ = ("_encode", "_equip", "_stack", "_step", "observes")

    def __init__(self, codec: FrameCodec, kit: _Kit) -> None:
        self._encode = codec.encode
        self._equip = EquipPlan(codec, kit)
        self._stack = StackPlan(codec, kit)
        self._step = 0
        self.observes = True

    def frame(self, rid: int) -> bytes:
        step = self._step
        self._step = (step + 1) % 7
        if step == 6:
            return self._encode(GetStats(rid=rid))
        return self._equip.frame(rid) if step % 2 == 0 else self._stack.frame(rid)

    def observe(self, rid: int, frame: bytes) -> None:
        self._stack.observe(rid, frame)


def make_plan(workload: Workload, codec: FrameCodec, welcome: Message) -> Plan:
    """The plan for one client, from its welcome.

    Raises:
        ProbeError: the player does not hold what the workload needs.
    """
    if workload == "ping":
        return PingPlan(codec)
    kit = _Kit(welcome)
    if workload == "equip":
        return EquipPlan(codec, kit)
    if workload == "stack":
        return StackPlan(codec, kit)
    return MixedPlan(codec, kit)
