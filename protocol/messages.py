"""Client requests, server replies and pushes.

Conventions (DESIGN.md §6): the tag ``t`` is namespaced (``inventory.equip_item``); every
request has a client-chosen ``rid`` that its reply echoes; pushes carry no ``rid`` but a
sequence. Requests forbid unknown fields so a typo is an error, not a silent no-op; replies
and pushes allow them so old clients survive new fields. New fields always get defaults.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from protocol.errors import ErrorCode
from protocol.model import AnyEffect, EquipSlot, PlayerState
from protocol.types import CompartmentIndex, RequestId, Token, WireItemId

CompartmentField = Annotated[str, msgspec.Meta(min_length=1, max_length=32)]


class Request(msgspec.Struct, frozen=True, kw_only=True, tag_field="t", forbid_unknown_fields=True):
    """Base of every client message."""

    rid: RequestId


class ServerMessage(msgspec.Struct, frozen=True, kw_only=True, tag_field="t", omit_defaults=False):
    """Base of every server message."""


class Reply(ServerMessage, frozen=True, kw_only=True):
    rid: RequestId


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


class EffectsReply(Reply, tag="effects", frozen=True):
    """Reply to a state-changing request: the effects it produced, already durable, and the
    player's version after them."""

    version: int
    effects: list[AnyEffect]


# --- pushes and errors ---------------------------------------------------------------------


class PlayerDelta(ServerMessage, tag="player.delta", frozen=True):
    """Effects another session of the same player caused. ``seq`` is the player version
    after the last effect, so a client applies it only if ``seq - len(effects)`` equals the
    version it holds and resumes from ``seq`` after a reconnect."""

    seq: int
    effects: list[AnyEffect]


class ErrorReply(ServerMessage, tag="error", frozen=True):
    """Every failure. ``rid`` is null when the frame was unreadable."""

    rid: int | None
    code: ErrorCode
    message: str
    details: dict[str, object] = msgspec.field(default_factory=dict)


ClientMessage = SessionHello | Ping | EquipItem | UnequipItem | MoveItem
CLIENT_MESSAGES: tuple[type[Request], ...] = ClientMessage.__args__

AnyServerMessage = SessionWelcome | Pong | EffectsReply | PlayerDelta | ErrorReply
SERVER_MESSAGES: tuple[type[ServerMessage], ...] = AnyServerMessage.__args__


def tag_of(cls: type[msgspec.Struct]) -> str:
    """The wire tag of a message class."""
    tag = cls.__struct_config__.tag
    assert isinstance(tag, str)
    return tag
