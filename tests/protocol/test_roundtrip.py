"""Every wire type survives both encodings unchanged.

``hypothesis.strategies.from_type`` builds msgspec Structs from their ``__init__`` but
ignores ``msgspec.Meta`` inside ``Annotated`` (it draws ``index=72660697599`` for a
``CompartmentIndex``), so almost every value it draws is one the decoder rightly refuses.
The strategies here are derived instead from ``msgspec.inspect.type_info``, the same
description the decoder enforces: ranges, lengths, ``Literal`` slots, tags and optional
fields all come from the Structs, and a field type nobody taught this module fails loudly.
"""

from __future__ import annotations

from functools import cache

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import SUBPROTOCOLS
from protocol.codec import CODECS
from protocol.messages import CLIENT_MESSAGES, SERVER_MESSAGES, AnyServerMessage
from protocol.model import (
    EFFECT_TYPES,
    ActiveEffect,
    AnyEffect,
    ItemInstance,
    ItemsMoved,
    Move,
    PlayerState,
)

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
# Collections are kept short: the properties are about shapes and bounds, not sizes.
MAX_COLLECTION = 4

# Values of an ``object`` field (``ErrorReply.details``): what JSON and MessagePack both
# carry back unchanged. Ints stay within int64 and floats are finite (NaN != NaN, and JSON
# has no infinity); finite floats round-trip exactly in both encodings.
JSON_VALUES: st.SearchStrategy[object] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(INT64_MIN, INT64_MAX)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=16),
    lambda children: (
        st.lists(children, max_size=MAX_COLLECTION)
        | st.dictionaries(st.text(max_size=8), children, max_size=MAX_COLLECTION)
    ),
    max_leaves=12,
)


def _int_strategy(t: msgspec.inspect.IntType) -> st.SearchStrategy[object]:
    if t.multiple_of is not None:
        raise NotImplementedError(f"no strategy for {t!r}")
    low = t.ge if t.ge is not None else (t.gt + 1 if t.gt is not None else INT64_MIN)
    high = t.le if t.le is not None else (t.lt - 1 if t.lt is not None else INT64_MAX)
    return st.integers(max(low, INT64_MIN), min(high, INT64_MAX))


def strategy_for(t: msgspec.inspect.Type) -> st.SearchStrategy[object]:
    """Values of the msgspec type ``t`` that its decoder accepts."""
    if isinstance(t, msgspec.inspect.IntType):
        return _int_strategy(t)
    if isinstance(t, msgspec.inspect.BoolType):
        return st.booleans()
    if isinstance(t, msgspec.inspect.NoneType):
        return st.none()
    if isinstance(t, msgspec.inspect.StrType):
        if t.pattern is not None:
            low, high = t.min_length or 0, t.max_length or 10_000
            return st.from_regex(t.pattern, fullmatch=True).filter(lambda s: low <= len(s) <= high)
        return st.text(min_size=t.min_length or 0, max_size=t.max_length)
    if isinstance(t, msgspec.inspect.LiteralType):
        return st.sampled_from(t.values)
    if isinstance(t, msgspec.inspect.EnumType):
        return st.sampled_from(list(t.cls))
    if isinstance(t, msgspec.inspect.UnionType):
        return st.one_of([strategy_for(member) for member in t.types])
    if isinstance(t, msgspec.inspect.TupleType):  # a fixed-length tuple, such as ``Loc``
        return st.tuples(*(strategy_for(item) for item in t.item_types))
    if isinstance(t, msgspec.inspect.ListType):
        return st.lists(
            strategy_for(t.item_type),
            min_size=t.min_length or 0,
            max_size=min(t.max_length or MAX_COLLECTION, MAX_COLLECTION),
        )
    if isinstance(t, msgspec.inspect.DictType):
        return st.dictionaries(
            strategy_for(t.key_type),
            strategy_for(t.value_type),
            min_size=t.min_length or 0,
            max_size=min(t.max_length or MAX_COLLECTION, MAX_COLLECTION),
        )
    if isinstance(t, msgspec.inspect.StructType):
        return struct_strategy(t.cls)
    if isinstance(t, msgspec.inspect.AnyType) or (
        isinstance(t, msgspec.inspect.CustomType) and t.cls is object
    ):
        return JSON_VALUES
    raise NotImplementedError(f"no strategy for {t!r}")


@cache
def struct_strategy(cls: type[msgspec.Struct]) -> st.SearchStrategy[msgspec.Struct]:
    """Instances of ``cls``; fields with defaults are sometimes left out."""
    info = msgspec.inspect.type_info(cls)
    assert isinstance(info, msgspec.inspect.StructType)
    required = {f.name: strategy_for(f.type) for f in info.fields if f.required}
    optional = {f.name: strategy_for(f.type) for f in info.fields if not f.required}
    return st.fixed_dictionaries(required, optional=optional).map(lambda kw: cls(**kw))


def _name(cls: type) -> str:
    return cls.__name__


@pytest.mark.parametrize("subprotocol", SUBPROTOCOLS)
@pytest.mark.parametrize("cls", CLIENT_MESSAGES, ids=_name)
@given(data=st.data())
def test_client_message_round_trips_through_codec(
    subprotocol: str, cls: type[msgspec.Struct], data: st.DataObject
) -> None:
    codec = CODECS[subprotocol]
    msg = data.draw(struct_strategy(cls))
    frame = codec.encode(msg)

    decoded = codec.decode(frame)

    assert type(decoded) is cls
    assert decoded == msg
    # Equality is loose about bool/int/float; the bytes are not.
    assert codec.encode(decoded) == frame
    if not codec.binary:
        # A text frame arrives as str.
        assert codec.decode(frame.decode()) == msg


@pytest.mark.parametrize("subprotocol", SUBPROTOCOLS)
@pytest.mark.parametrize("cls", SERVER_MESSAGES, ids=_name)
@given(data=st.data())
def test_server_message_round_trips_through_codec(
    subprotocol: str, cls: type[msgspec.Struct], data: st.DataObject
) -> None:
    codec = CODECS[subprotocol]
    msg = data.draw(struct_strategy(cls))
    frame = codec.encode(msg)
    decoder = msgspec.msgpack.Decoder if codec.binary else msgspec.json.Decoder

    decoded = decoder(AnyServerMessage).decode(frame)

    assert type(decoded) is cls
    assert decoded == msg
    assert codec.encode(decoded) == frame


@pytest.mark.parametrize("encoding", ["json", "msgpack"])
@pytest.mark.parametrize("cls", EFFECT_TYPES, ids=_name)
@given(data=st.data())
def test_effect_round_trips_as_tagged_union(
    encoding: str, cls: type[msgspec.Struct], data: st.DataObject
) -> None:
    module = msgspec.json if encoding == "json" else msgspec.msgpack
    effect = data.draw(struct_strategy(cls))
    raw = module.encode(effect)

    decoded = module.decode(raw, type=AnyEffect)

    assert type(decoded) is cls
    assert decoded == effect
    assert module.encode(decoded) == raw


@pytest.mark.parametrize("encoding", ["json", "msgpack"])
@pytest.mark.parametrize("cls", [PlayerState, ItemInstance, ActiveEffect, Move], ids=_name)
@given(data=st.data())
def test_model_struct_round_trips(
    encoding: str, cls: type[msgspec.Struct], data: st.DataObject
) -> None:
    module = msgspec.json if encoding == "json" else msgspec.msgpack
    value = data.draw(struct_strategy(cls))
    raw = module.encode(value)

    decoded = module.decode(raw, type=cls)

    assert decoded == value
    assert module.encode(decoded) == raw


@pytest.mark.parametrize("encoding", ["json", "msgpack"])
@given(moves=st.lists(struct_strategy(Move), min_size=1, max_size=MAX_COLLECTION))
def test_locations_come_back_as_tuples_with_their_key_type(
    encoding: str, moves: list[Move]
) -> None:
    # ``Loc`` is ``tuple[str, int | str]``: a compartment index must come back an int and a
    # slot name a str (never "3" for 3), or a mirror would place items under the wrong key.
    module = msgspec.json if encoding == "json" else msgspec.msgpack
    effect = ItemsMoved(reason="move", moves=moves)

    decoded = module.decode(module.encode(effect), type=AnyEffect)

    assert isinstance(decoded, ItemsMoved)
    for sent, got in zip(effect.moves, decoded.moves, strict=True):
        for loc_sent, loc_got in ((sent.src, got.src), (sent.dst, got.dst)):
            assert type(loc_got) is tuple
            assert loc_got == loc_sent
            assert type(loc_got[1]) is type(loc_sent[1])


def test_move_is_a_three_element_array_on_the_wire() -> None:
    move = Move(812, ("backpack", 3), ("equipment", "head"))

    assert msgspec.json.encode(move) == b'[812,["backpack",3],["equipment","head"]]'
    assert msgspec.json.decode(b'[812,["backpack",3],["equipment","head"]]', type=Move) == move


@pytest.mark.parametrize("encoding", ["json", "msgpack"])
@given(state=struct_strategy(PlayerState))
def test_player_state_round_trips(encoding: str, state: PlayerState) -> None:
    module = msgspec.json if encoding == "json" else msgspec.msgpack
    raw = module.encode(state)

    decoded = module.decode(raw, type=PlayerState)

    # JSON turns the int keys of ``items`` into strings; they must come back as ints.
    assert decoded == state
    assert all(type(key) is int for key in decoded.items)
    assert module.encode(decoded) == raw
