"""What each load client sends next: one small plan per kind of request, mixed by weight.

A mix (``--mix equip:50,move:30,ping:20``) names kinds and integer weights. Every client
holds one plan per kind in the mix and picks the kind of each request from a fixed cycle
built by smooth weighted round-robin (:func:`wrr_cycle`): every ``sum(weights) / gcd``
requests contain each kind exactly ``weight / gcd`` times, spread out rather than in runs,
and the same mix always gives the same cycle. Client ``i`` starts ``i`` steps into the
cycle, so clients do not all send the same kind at the same moment.

Kinds (each valid in a closed and an open loop, alone or mixed, for a new player holding the
untouched starter kit — ``sim/data/templates.toml``: backpack cells 0..8 = cloth_cap,
iron_helm, leather_vest, copper_ring x2, short_sword, buckler, bread x5, training_manual;
cells 9..23 free — so a healthy run has no error replies):

- ``ping``: ping (no simulation, no journal: the transport's ceiling).
- ``equip``: equip ``cloth_cap`` to ``head``, then unequip ``head`` to the first free cell;
  alternating. No cooldown applies to the head slot.
- ``move``: move ``leather_vest`` to cell 12, then 13, alternating.
- ``stack``: split 1 bread off the stack into cell 23, then merge it back.
- ``sort``: sort the backpack.
- ``stats``: ``player.get_stats`` (a read).

Why the kinds cannot trip over each other. ``sort`` compacts the backpack to its front, and
the backpack never holds more than 10 items (the kit's 9 and one split stack), so sorting
only ever fills cells 0..9; ``unequip`` takes the first free cell, which is below 10 for the
same reason. So cells 12 and 13 are only ever the vest's, cell 23 only ever the split
stack's: every move and every split lands in a free cell whatever the other kinds did, and
a move never turns into a swap. (Moving the vest back to "its own" cell 2 would not be safe:
after a sort another item may sit there.) In an open loop a client sends without waiting,
but the server handles one connection's requests in order, so an alternating plan (equip,
unequip) stays valid; a plan that needs something from a reply — the id of the stack
``stack`` split off — gets its replies through ``observe(rid, frame)`` and, while that reply
is still outstanding, sends a read (``player.get_stats``) instead, counted as its own kind.

An error reply (e.g. ``rate_limited``) does not derail a plan for long: every step names an
absolute target (equip into ``head``, move to cell 12), so after one failed step the next
cycle is valid again.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Literal, Protocol, get_args

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

Kind = Literal["ping", "equip", "move", "stack", "sort", "stats"]
KINDS: tuple[Kind, ...] = get_args(Kind)
Mix = dict[Kind, int]
"""Kind -> weight, in the order given."""

DEFAULT_MIX = "ping:100"
MOVE_CELLS = (12, 13)
SPLIT_CELL = 23
MAX_CYCLE = 10_000

_ITEM = re.compile(r"^\s*([a-z_]+)\s*(?::\s*(\S+?)\s*)?$")


class MixError(ValueError):
    """A ``--mix`` the user wrote cannot be used; the message says what is wrong."""


def parse_mix(text: str) -> Mix:
    """``"equip:50,move:30,ping:20"`` -> ``{"equip": 50, "move": 30, "ping": 20}``.

    A kind without a weight weighs 1.

    Raises:
        MixError: empty, an unknown kind, a kind twice, or a weight that is not a positive
            integer.
    """
    mix: Mix = {}
    if not text.strip():
        raise MixError(f"empty mix; write kind:weight pairs, e.g. {DEFAULT_MIX}")
    for item in text.split(","):
        m = _ITEM.match(item)
        if m is None:
            raise MixError(f"{item.strip()!r} is not kind:weight (e.g. equip:50)")
        name, weight_text = m.group(1), m.group(2)
        kind = next((k for k in KINDS if k == name), None)
        if kind is None:
            raise MixError(f"unknown kind {name!r}; kinds: {', '.join(KINDS)}")
        if kind in mix:
            raise MixError(f"{kind!r} appears twice in the mix")
        try:
            weight = 1 if weight_text is None else int(weight_text)
        except ValueError:
            raise MixError(f"weight of {kind!r} is not an integer: {weight_text!r}") from None
        if weight < 1:
            raise MixError(f"weight of {kind!r} must be at least 1, not {weight}")
        mix[kind] = weight
    if sum(mix.values()) // math.gcd(*mix.values()) > MAX_CYCLE:
        raise MixError(f"weights too fine-grained: reduce them (the cycle exceeds {MAX_CYCLE})")
    return mix


def format_mix(mix: Mix) -> str:
    return ",".join(f"{kind}:{weight}" for kind, weight in mix.items())


def wrr_cycle(weights: Sequence[int]) -> list[int]:
    """One period of smooth weighted round-robin over ``weights`` (indices into them).

    Weights are divided by their gcd first, so the period is as short as the proportions
    allow. Each step adds every weight to its index's credit, picks the largest credit
    (the first on a tie) and takes the total off it (nginx's algorithm): index ``i`` comes
    exactly ``weights[i] / gcd`` times per period, never in a long run.
    """
    g = math.gcd(*weights)
    reduced = [w // g for w in weights]
    total = sum(reduced)
    credit = [0] * len(reduced)
    cycle: list[int] = []
    for _ in range(total):
        for i, w in enumerate(reduced):
            credit[i] += w
        pick = max(range(len(credit)), key=credit.__getitem__)
        credit[pick] -= total
        cycle.append(pick)
    return cycle


class KindPlan(Protocol):
    """The requests of one kind for one client."""

    observes: bool
    """Whether :meth:`observe` must see this client's replies."""

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
    """Item ids, quantities and free cells of the untouched starter kit, from a welcome."""

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
        self.templates: dict[int, object] = {
            int(str(k)): v.get("template") for k, v in items.items() if isinstance(v, dict)
        }
        self.qty: dict[int, object] = {
            int(str(k)): v.get("qty") for k, v in items.items() if isinstance(v, dict)
        }
        self.cells: dict[int, int] = {
            item: index for index, item in enumerate(backpack) if isinstance(item, int)
        }
        self.free: set[int] = {index for index, item in enumerate(backpack) if item is None}
        self.head: object = equipment.get("head") if isinstance(equipment, dict) else None

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


class StatsPlan:
    __slots__ = ("_encode", "observes")

    def __init__(self, codec: FrameCodec) -> None:
        self._encode = codec.encode
        self.observes = False

    def frame(self, rid: int) -> bytes:
        return self._encode(GetStats(rid=rid))

    def observe(self, rid: int, frame: bytes) -> None:
        return None


class SortPlan:
    __slots__ = ("_encode", "observes")

    def __init__(self, codec: FrameCodec) -> None:
        self._encode = codec.encode
        self.observes = False

    def frame(self, rid: int) -> bytes:
        return self._encode(SortCompartment(rid=rid, compartment="backpack"))

    def observe(self, rid: int, frame: bytes) -> None:
        return None


class EquipPlan:
    """equip cap -> head, unequip head (first free cell); repeat."""

    __slots__ = ("_cap", "_encode", "_equip_next", "observes")

    def __init__(self, codec: FrameCodec, kit: _Kit) -> None:
        if kit.head is not None:
            raise ProbeError("the player already wears something on its head")
        self._encode = codec.encode
        self._cap = kit.first("cloth_cap")
        self._equip_next = True
        self.observes = False

    def frame(self, rid: int) -> bytes:
        equip = self._equip_next
        self._equip_next = not equip
        if equip:
            return self._encode(EquipItem(rid=rid, item_id=self._cap, slot="head"))
        return self._encode(UnequipItem(rid=rid, slot="head"))

    def observe(self, rid: int, frame: bytes) -> None:
        return None


class MovePlan:
    """move the vest to cell 12, then 13; repeat (both free whatever else runs)."""

    __slots__ = ("_encode", "_frames", "_step", "_vest", "observes")

    def __init__(self, codec: FrameCodec, kit: _Kit) -> None:
        kit.require_free(*MOVE_CELLS)
        self._encode = codec.encode
        self._vest = kit.first("leather_vest")
        self._step = 0
        self.observes = False

    def frame(self, rid: int) -> bytes:
        cell = MOVE_CELLS[self._step]
        self._step ^= 1
        return self._encode(
            MoveItem(rid=rid, item_id=self._vest, compartment="backpack", index=cell)
        )

    def observe(self, rid: int, frame: bytes) -> None:
        return None


class StackPlan:
    """split 1 bread -> cell 23, merge the new stack back; repeat.

    The new stack's id comes from the split's reply. A split is sent only when no split
    stack exists or is on its way, a merge only when one exists and no merge is on its way;
    otherwise (open loop, the reply is not back yet) the request is a stats read.
    """

    __slots__ = ("_bread", "_decode", "_encode", "_merge_rid", "_new", "_split_rid", "observes")

    def __init__(self, codec: FrameCodec, kit: _Kit) -> None:
        kit.require_free(SPLIT_CELL)
        self._encode = codec.encode
        self._decode = (
            msgspec.json.Decoder(_Reply).decode
            if codec.text
            else msgspec.msgpack.Decoder(_Reply).decode
        )
        self._bread = kit.first("bread")
        qty = kit.qty.get(self._bread)
        if not isinstance(qty, int) or qty < 2:
            raise ProbeError("the bread stack holds fewer than 2: not the starter kit")
        self._new: int | None = None
        self._split_rid: int | None = None
        self._merge_rid: int | None = None
        self.observes = True

    def frame(self, rid: int) -> bytes:
        if self._new is None and self._split_rid is None:
            self._split_rid = rid
            return self._encode(
                SplitStack(
                    rid=rid, item_id=self._bread, qty=1, compartment="backpack", index=SPLIT_CELL
                )
            )
        if self._new is not None and self._merge_rid is None:
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
                self._new = None  # merged away (bread stacks hold 20: one always fits back)


class MixPlan:
    """One client's requests: the kind from the mix's cycle, the frame from that kind's plan."""

    __slots__ = ("_cycle", "_observers", "_plans", "_pos", "observes")

    def __init__(self, plans: Sequence[KindPlan], cycle: Sequence[int], phase: int) -> None:
        self._plans = tuple(plans)
        self._cycle = tuple(cycle)
        self._pos = phase % len(self._cycle)
        self._observers = tuple(p for p in self._plans if p.observes)
        self.observes = bool(self._observers)

    def next(self, rid: int) -> tuple[int, bytes]:
        """The kind (index into the mix) and the frame of the request with ``rid``."""
        pos = self._pos
        self._pos = pos + 1 if pos + 1 < len(self._cycle) else 0
        kind = self._cycle[pos]
        return kind, self._plans[kind].frame(rid)

    def observe(self, rid: int, frame: bytes) -> None:
        for plan in self._observers:
            plan.observe(rid, frame)


def _kind_plan(kind: Kind, codec: FrameCodec, kit: _Kit | None) -> KindPlan:
    if kind == "ping":
        return PingPlan(codec)
    if kind == "stats":
        return StatsPlan(codec)
    if kind == "sort":
        return SortPlan(codec)
    assert kit is not None
    if kind == "equip":
        return EquipPlan(codec, kit)
    if kind == "move":
        return MovePlan(codec, kit)
    return StackPlan(codec, kit)


def make_plan(mix: Mix, codec: FrameCodec, welcome: Message, client: int) -> MixPlan:
    """The plan of load client number ``client``, from its welcome.

    Raises:
        ProbeError: the player does not hold what a kind in the mix needs.
    """
    needs_kit = any(kind in ("equip", "move", "stack") for kind in mix)
    kit = _Kit(welcome) if needs_kit else None
    plans = [_kind_plan(kind, codec, kit) for kind in mix]
    return MixPlan(plans, wrr_cycle(list(mix.values())), client)
