"""Every client request as a command-line operation, built from the protocol's Structs.

The table below only chooses short names (``equip`` -> ``inventory.equip_item``); the fields,
their types, defaults and constraints come from ``msgspec.structs.fields`` of the request
Struct itself, so a field added to ``protocol/messages.py`` is callable at once, and a new
request is callable by its full tag (``wsprobe call URL inventory.new_thing k=v``) before it
gets a short name.

Arguments are ``field=value`` (or plain values, filling the fields in declared order). A
value is read as JSON when it parses (``3``, ``null``, ``true``) and as text otherwise, then
converted to the field's type; the whole request is validated locally with the Struct, so a
typo is reported before anything is sent (``wsprobe send`` sends raw JSON, invalid or not).

References, resolved against the welcome's state once the session is open:

- ``@me`` — the player's own id (for ``admin.grant_item``'s ``player_id``);
- ``@<template>`` — the id of the player's item of that template with the lowest id;
  ``@<template>.<n>`` — the n-th lowest (0-based), e.g. ``@bread.1`` for a second stack.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import msgspec

from protocol.base import Request, tag_of
from protocol.messages import CLIENT_MESSAGES, SessionHello

# Short name -> request type. Registration is explicit; ``hello`` is what every command
# does first (``wsprobe state`` shows its welcome), so it has no operation of its own.
SHORT_NAMES: dict[str, str] = {
    "ping": "ping",
    "equip": "inventory.equip_item",
    "unequip": "inventory.unequip_item",
    "move": "inventory.move_item",
    "split": "inventory.split_stack",
    "merge": "inventory.merge_stacks",
    "sort": "inventory.sort_compartment",
    "destroy": "inventory.destroy_item",
    "use": "inventory.use_item",
    "stats": "player.get_stats",
    "grant": "admin.grant_item",
}

_REF = re.compile(r"^@(?P<template>[a-z][a-z0-9_]*)(?:\.(?P<n>\d+))?$")


class OperationError(ValueError):
    """The user's arguments do not make a valid request (nothing was sent)."""


@dataclass(frozen=True, slots=True)
class Field:
    name: str
    type: object
    required: bool
    default: object

    def describe(self) -> str:
        text = f"{self.name}: {type_name(self.type)}"
        if not self.required:
            text += f" = {msgspec.json.encode(self.default).decode()}"
        return text


@dataclass(frozen=True, slots=True)
class Operation:
    name: str
    """The short name, or the full tag for a request without one."""
    tag: str
    request: type[Request]
    fields: tuple[Field, ...]

    @property
    def summary(self) -> str:
        doc = (self.request.__doc__ or "").strip()
        return " ".join(doc.split("\n\n", 1)[0].split())


def _operation(name: str, request: type[Request]) -> Operation:
    fields = tuple(
        Field(
            f.encode_name,
            f.type,
            f.required,
            None if f.default is msgspec.NODEFAULT else f.default,
        )
        for f in msgspec.structs.fields(request)
        if f.name != "rid"
    )
    return Operation(name, tag_of(request), request, fields)


def _build() -> dict[str, Operation]:
    by_tag = {tag_of(cls): cls for cls in CLIENT_MESSAGES if cls is not SessionHello}
    unknown = set(SHORT_NAMES.values()) - set(by_tag)
    if unknown:  # a renamed request: fail loudly rather than offer a dead command
        raise RuntimeError(f"wsprobe short names for unknown tags: {sorted(unknown)}")
    named = {tag: short for short, tag in SHORT_NAMES.items()}
    return {
        named.get(tag, tag): _operation(named.get(tag, tag), cls) for tag, cls in by_tag.items()
    }


OPERATIONS: dict[str, Operation] = _build()
_BY_TAG = {op.tag: op for op in OPERATIONS.values()}


def find(name: str) -> Operation:
    """The operation for a short name or a full tag.

    Raises:
        OperationError: neither.
    """
    op = OPERATIONS.get(name) or _BY_TAG.get(name)
    if op is None:
        raise OperationError(f"unknown operation {name!r}; one of: {', '.join(OPERATIONS)}")
    return op


_HELLO = _operation(tag_of(SessionHello), SessionHello)


def find_message(name: str) -> Operation | None:
    """Any client message by short name or full tag, ``session.hello`` included (what
    ``wsprobe send`` may send); None for a tag this wsprobe does not know."""
    if name == _HELLO.tag:
        return _HELLO
    return OPERATIONS.get(name) or _BY_TAG.get(name)


def loose_request(tag: str, args: Sequence[str]) -> dict[str, object]:
    """A request for a tag this wsprobe does not know (a newer server's) from ``key=value``
    arguments: values are JSON when they parse, text otherwise; nothing is validated.

    Raises:
        OperationError: an argument is not ``key=value``.
    """
    msg: dict[str, object] = {"t": tag}
    for arg in args:
        name, eq, text = arg.partition("=")
        if not eq or not name:
            raise OperationError(f"{tag} is not a known message: give its fields as key=value")
        try:
            msg[name] = msgspec.json.decode(text)
        except msgspec.DecodeError:
            msg[name] = text
    return msg


def type_name(tp: object) -> str:
    """A short human rendering of a field type: ``int``, ``head|neck|...``, ``str|null``."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return type_name(typing.get_args(tp)[0])
    if origin is typing.Literal:
        return "|".join(str(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return "|".join(type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def parse_args(op: Operation, args: Sequence[str]) -> dict[str, str]:
    """``field=value`` and positional values -> raw text per field name.

    Raises:
        OperationError: an unknown field, a field given twice, or too many values.
    """
    names = [f.name for f in op.fields]
    raw: dict[str, str] = {}
    position = 0
    for arg in args:
        name, eq, value = arg.partition("=")
        if eq and name in names:
            if name in raw:
                raise OperationError(f"{op.name}: field {name!r} given twice")
            raw[name] = value
            continue
        if eq and re.fullmatch(r"[a-z_][a-z0-9_]*", name):
            raise OperationError(f"{op.name}: no field {name!r}; fields: {', '.join(names)}")
        while position < len(names) and names[position] in raw:
            position += 1
        if position >= len(names):
            raise OperationError(f"{op.name}: too many values (fields: {', '.join(names)})")
        raw[names[position]] = arg
        position += 1
    return raw


def resolve_refs(
    raw: Mapping[str, str], state: Mapping[str, object] | None, player_id: object
) -> dict[str, str]:
    """Replace ``@me`` and ``@<template>[.<n>]`` values with ids from the welcome.

    Raises:
        OperationError: a reference names nothing the player holds.
    """
    out = dict(raw)
    for name, value in raw.items():
        if value == "@me":
            out[name] = str(player_id)
            continue
        match = _REF.match(value)
        if match is None:
            continue
        template, n = match["template"], int(match["n"] or 0)
        items = state.get("items") if state else None
        ids = sorted(
            int(str(key))
            for key, item in (items.items() if isinstance(items, dict) else ())
            if isinstance(item, dict) and item.get("template") == template
        )
        if n >= len(ids):
            have = f"{len(ids)} of them" if ids else "none"
            raise OperationError(f"{name}={value}: the player holds {have}")
        out[name] = str(ids[n])
    return out


def _value(field: Field, text: str) -> object:
    # JSON first (numbers, null, booleans), else the text itself: ``slot=head`` needs no
    # quotes, and ``compartment=null`` is None, not the string "null".
    try:
        return msgspec.convert(msgspec.json.decode(text), field.type, strict=False)
    except (msgspec.DecodeError, msgspec.ValidationError):
        pass
    try:
        return msgspec.convert(text, field.type, strict=False)
    except msgspec.ValidationError as exc:
        raise OperationError(f"{field.name}={text}: {exc}") from None


def build_request(op: Operation, raw: Mapping[str, str]) -> dict[str, object]:
    """The request as a wire mapping (without ``rid``), validated by its Struct.

    Raises:
        OperationError: a value of the wrong type, out of range, or a required field missing.
    """
    fields = {f.name: f for f in op.fields}
    values: dict[str, object] = {name: _value(fields[name], text) for name, text in raw.items()}
    try:
        request = msgspec.convert({**values, "rid": 0}, op.request)
    except msgspec.ValidationError as exc:
        raise OperationError(f"{op.name}: {exc}") from None
    wire = msgspec.to_builtins(request)
    assert isinstance(wire, dict)
    del wire["rid"]  # the client numbers its requests
    return wire


def describe() -> str:
    """All operations, their tags and fields: what ``wsprobe ops`` prints."""
    lines = []
    for op in OPERATIONS.values():
        fields = ", ".join(f.describe() for f in op.fields) or "no fields"
        lines.append(f"{op.name:8} {op.tag:28} {fields}")
        if op.summary:
            lines.append(f"{'':8} {op.summary}")
    return "\n".join(lines)
