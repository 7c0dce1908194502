"""Client requests, server replies and pushes.

Conventions (DESIGN.md §6): the tag ``t`` is namespaced (``inventory.equip_item``); every
request has a client-chosen ``rid`` that its reply echoes; pushes carry no ``rid`` but a
sequence. Requests forbid unknown fields so a typo is an error, not a silent no-op; replies
and pushes allow them so old clients survive new fields. New fields always get defaults.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from protocol import accounts as acc
from protocol.base import Reply, Request, ServerMessage
from protocol.errors import ErrorCode
from protocol.model import AnyEffect, Encumbrance, EquipSlot, PlayerState
from protocol.types import CompartmentIndex, Token, WireItemId

CompartmentField = Annotated[str, msgspec.Meta(min_length=1, max_length=32)]


# --- session -------------------------------------------------------------------------------


class SessionHello(Request, tag="session.hello", frozen=True):
    """First message on every connection. ``resume`` is the last player version the client
    saw; with it the server sends only the effects missed since, when it still has them."""

    token: Token
    resume: Annotated[int, msgspec.Meta(ge=0)] | None = None


class SessionWelcome(Reply, tag="session.welcome", frozen=True):
    """Reply to ``session.hello``.

    Exactly one of ``state`` (full state) and ``effects`` (the effects after ``resume``, in
    order) is set: ``resumed`` tells which. ``version`` is the player's version after them.
    """

    protocol_version: int
    server_version: str
    tick_hz: int
    tick: int
    player_id: int
    version: int
    resumed: bool
    state: PlayerState | None = None
    effects: list[AnyEffect] | None = None


class Ping(Request, tag="ping", frozen=True):
    """Answered at any time after hello; touches neither the simulation nor the journal."""


class Pong(Reply, tag="pong", frozen=True):
    tick: int


# --- inventory -----------------------------------------------------------------------------


class EquipItem(Request, tag="inventory.equip_item", frozen=True):
    """Equip an item from a compartment into ``slot``; an occupied slot swaps atomically."""

    item_id: WireItemId
    slot: EquipSlot


class UnequipItem(Request, tag="inventory.unequip_item", frozen=True):
    """Move the item in ``slot`` to a compartment; ``index`` None means the first free cell."""

    slot: EquipSlot
    compartment: CompartmentField = "backpack"
    index: CompartmentIndex | None = None


class MoveItem(Request, tag="inventory.move_item", frozen=True):
    """Move an item to a compartment cell; an occupied cell swaps."""

    item_id: WireItemId
    compartment: CompartmentField
    index: CompartmentIndex


Qty = Annotated[int, msgspec.Meta(ge=1, le=1_000_000)]
IdempotencyKey = Annotated[str, msgspec.Meta(min_length=8, max_length=128)]


class SplitStack(Request, tag="inventory.split_stack", frozen=True):
    """Take ``qty`` off a stack into a new stack at an empty cell."""

    item_id: WireItemId
    qty: Qty
    compartment: CompartmentField
    index: CompartmentIndex


class MergeStacks(Request, tag="inventory.merge_stacks", frozen=True):
    """Move as much of ``item_id``'s stack as fits onto ``into_item_id`` (same template)."""

    item_id: WireItemId
    into_item_id: WireItemId


class SortCompartment(Request, tag="inventory.sort_compartment", frozen=True):
    """Compact and order a compartment: by category, template, then larger stacks first."""

    compartment: CompartmentField


class DestroyItem(Request, tag="inventory.destroy_item", frozen=True):
    """Destroy an item, or ``qty`` of its stack (all of it when ``qty`` is null)."""

    item_id: WireItemId
    qty: Qty | None = None


class UseItem(Request, tag="inventory.use_item", frozen=True):
    """Use an item: consumes a charge or one of the stack and applies its use effect."""

    item_id: WireItemId


class GetStats(Request, tag="player.get_stats", frozen=True):
    """The player's computed stats, weight, encumbrance and speed."""


class GrantItem(Request, tag="admin.grant_item", frozen=True, kw_only=True):
    """Admin/service: give ``qty`` of ``template`` to a player. Idempotent by key: a replay
    changes nothing and answers with the version of the first grant."""

    player_id: Annotated[int, msgspec.Meta(ge=1)]
    template: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    qty: Qty = 1
    compartment: CompartmentField | None = None
    idempotency_key: IdempotencyKey


class EffectsReply(Reply, tag="effects", frozen=True):
    """Reply to a state-changing request: the effects it produced, already durable, and the
    player's version after them."""

    version: int
    effects: list[AnyEffect]


class StatsReply(Reply, tag="player.stats", frozen=True):
    stats: dict[str, int]
    carried_weight: int
    carry_capacity: int
    encumbrance: Encumbrance
    movement_speed: int
    health: int
    level: int
    version: int


class GrantItemReply(Reply, tag="admin.grant_item_reply", frozen=True):
    """``version`` is the target player's version after the grant; ``replayed`` is true
    when this key was already granted (nothing changed). The grant's effects reach every
    session of the target — the granting one too, if it is the target — as ``player.delta``."""

    player_id: int
    version: int
    item_ids: list[int]
    replayed: bool


# --- pushes and errors ---------------------------------------------------------------------


class PlayerDelta(ServerMessage, tag="player.delta", frozen=True):
    """Effects another session of the same player caused. ``seq`` is the player version
    after the last effect, so a client applies it only if ``seq - len(effects)`` equals the
    version it holds and resumes from ``seq`` after a reconnect."""

    seq: int
    effects: list[AnyEffect]


class CooldownReady(ServerMessage, tag="player.cooldown_ready", frozen=True):
    """A cooldown that was running is over. Informational: the state already holds the
    deadline, so this changes nothing; ``seq`` is the player's current version."""

    seq: int
    key: str
    ready_at_ms: int


class ErrorReply(ServerMessage, tag="error", frozen=True):
    """Every failure. ``rid`` is null when the frame was unreadable."""

    rid: int | None
    code: ErrorCode
    message: str
    details: dict[str, object] = msgspec.field(default_factory=dict)


ClientMessage = (
    SessionHello
    | Ping
    | EquipItem
    | UnequipItem
    | MoveItem
    | SplitStack
    | MergeStacks
    | SortCompartment
    | DestroyItem
    | UseItem
    | GetStats
    | GrantItem
    | acc.ClientAccountsMessage
)
CLIENT_MESSAGES: tuple[type[Request], ...] = ClientMessage.__args__

AnyServerMessage = (
    SessionWelcome
    | Pong
    | EffectsReply
    | StatsReply
    | GrantItemReply
    | PlayerDelta
    | CooldownReady
    | ErrorReply
    | acc.ServerAccountsMessage
)
SERVER_MESSAGES: tuple[type[ServerMessage], ...] = AnyServerMessage.__args__
