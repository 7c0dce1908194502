"""The bases every message derives from, in a module of their own so that each domain's
messages (``protocol/accounts.py``...) and the unions in ``protocol/messages.py`` can share
them without a cycle."""

from __future__ import annotations

import msgspec

from protocol.types import RequestId


class Request(msgspec.Struct, frozen=True, kw_only=True, tag_field="t", forbid_unknown_fields=True):
    """Base of every client message."""

    rid: RequestId


class ServerMessage(msgspec.Struct, frozen=True, kw_only=True, tag_field="t", omit_defaults=False):
    """Base of every server message."""


class Reply(ServerMessage, frozen=True, kw_only=True):
    rid: RequestId


def tag_of(cls: type[msgspec.Struct]) -> str:
    """The wire tag of a message class."""
    tag = cls.__struct_config__.tag
    assert isinstance(tag, str)
    return tag
