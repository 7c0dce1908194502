"""The decode boundary: every unreadable frame becomes a ``FrameDecodeError``, with the ``rid``
when one can still be read, and the error codes it and its siblings carry are a closed set.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import SUBPROTOCOL_JSON, SUBPROTOCOL_MSGPACK, SUBPROTOCOLS
from protocol import accounts as acc
from protocol.base import Request, tag_of
from protocol.codec import CODECS, Codec, FrameDecodeError
from protocol.errors import ERROR_CLASSES, BadRequestError, ErrorCode, GearhallError
from protocol.messages import (
    CLIENT_MESSAGES,
    AnyServerMessage,
    DestroyItem,
    EquipItem,
    ErrorReply,
    GetStats,
    GrantItem,
    MergeStacks,
    MoveItem,
    Ping,
    SessionHello,
    SortCompartment,
    SplitStack,
    UnequipItem,
    UseItem,
)

JSON = SUBPROTOCOL_JSON
MSGPACK = SUBPROTOCOL_MSGPACK
DEPTH = 100_000


def mp(value: object) -> bytes:
    return msgspec.msgpack.encode(value)


class Bad(NamedTuple):
    subprotocol: str
    frame: bytes | str
    rid: int | None
    reason: str  # a substring of ``details["reason"]``


BAD_FRAMES: dict[str, Bad] = {
    # Not JSON / not MessagePack at all.
    "json_truncated": Bad(JSON, b'{"t":"ping","rid":1', None, "truncated"),
    "json_missing_comma": Bad(JSON, b'{"t":"ping" "rid":1}', None, "JSON is malformed"),
    "json_trailing_garbage": Bad(JSON, b'{"t":"ping","rid":1}x', None, "trailing characters"),
    "json_empty": Bad(JSON, b"", None, "truncated"),
    "json_empty_text": Bad(JSON, "", None, "truncated"),
    "msgpack_invalid_opcode": Bad(MSGPACK, b"\xc1", None, "MessagePack data is malformed"),
    "msgpack_truncated_map": Bad(MSGPACK, b"\x82" + mp("t") + mp("ping"), None, "truncated"),
    "msgpack_empty": Bad(MSGPACK, b"", None, "truncated"),
    # A text frame on the binary subprotocol: its UTF-8 bytes are not a MessagePack map.
    "msgpack_text_frame": Bad(MSGPACK, '{"t":"ping","rid":1}', None, "Expected `object`"),
    # Well-formed but not a message.
    "json_top_level_int": Bad(JSON, b"7", None, "Expected `object`, got `int`"),
    "json_top_level_null": Bad(JSON, b"null", None, "Expected `object`, got `null`"),
    "msgpack_top_level_array": Bad(MSGPACK, mp([1, 2]), None, "Expected `object`, got `array`"),
    # Nesting: rejected at the top before any recursion...
    "json_deep_array": Bad(JSON, b"[" * DEPTH, None, "Expected `object`"),
    "msgpack_deep_array": Bad(MSGPACK, b"\x91" * DEPTH + b"\x90", None, "Expected `object`"),
    # ...or skipped while looking for the tag, which recurses once per level.
    "json_deep_before_tag": Bad(
        JSON,
        b'{"a":' + b"[" * DEPTH + b"]" * DEPTH + b',"t":"ping","rid":7}',
        None,
        "nesting depth",
    ),
    "json_deep_unterminated": Bad(JSON, b'{"rid":7,"a":' + b"[" * DEPTH, None, "nesting depth"),
    "json_deep_objects_text": Bad(JSON, '{"a":' * DEPTH + "1" + "}" * DEPTH, None, "nesting depth"),
    "msgpack_deep_before_tag": Bad(
        MSGPACK,
        b"\x83" + mp("a") + b"\x91" * DEPTH + b"\x90" + mp("t") + mp("ping") + mp("rid") + mp(7),
        None,
        "nesting depth",
    ),
    "msgpack_deep_maps": Bad(MSGPACK, (b"\x81" + mp("a")) * DEPTH + b"\xc0", None, "nesting depth"),
    # The tag: unknown, missing, wrong type.
    "json_unknown_tag": Bad(JSON, b'{"t":"nope","rid":7}', 7, "Invalid value 'nope' - at `$.t`"),
    "msgpack_unknown_tag": Bad(MSGPACK, mp({"t": "nope", "rid": 7}), 7, "Invalid value 'nope'"),
    "json_missing_tag": Bad(JSON, b'{"rid":4}', 4, "missing required field `t`"),
    "json_tag_not_str": Bad(JSON, b'{"t":5,"rid":2}', 2, "Expected `str` - at `$.t`"),
    # rid recovery stops where reading the rid itself fails.
    "json_unknown_tag_deep_tail": Bad(
        JSON, b'{"t":"nope","rid":7,"a":' + b"[" * DEPTH, None, "Invalid value 'nope'"
    ),
    "json_missing_rid": Bad(JSON, b'{"t":"ping"}', None, "missing required field `rid`"),
    "json_rid_str": Bad(JSON, b'{"t":"ping","rid":"7"}', None, "Expected `int`, got `str`"),
    "json_rid_bool": Bad(JSON, b'{"t":"ping","rid":true}', None, "Expected `int`, got `bool`"),
    "json_rid_float": Bad(JSON, b'{"t":"ping","rid":1.5}', None, "Expected `int`, got `float`"),
    # Fields.
    "json_wrong_field_type": Bad(
        JSON,
        b'{"t":"inventory.equip_item","rid":5,"item_id":"x","slot":"head"}',
        5,
        "Expected `int`, got `str` - at `$.item_id`",
    ),
    "json_unknown_slot": Bad(
        JSON,
        b'{"t":"inventory.equip_item","rid":5,"item_id":3,"slot":"tail"}',
        5,
        "Invalid enum value 'tail' - at `$.slot`",
    ),
    "msgpack_wrong_field_type": Bad(
        MSGPACK,
        mp({"t": "inventory.equip_item", "rid": 5, "item_id": 3, "slot": 7}),
        5,
        "Expected `str`, got `int` - at `$.slot`",
    ),
    "json_missing_field": Bad(
        JSON,
        b'{"t":"inventory.move_item","rid":9,"item_id":1,"index":0}',
        9,
        "missing required field `compartment`",
    ),
    "msgpack_missing_field": Bad(
        MSGPACK,
        mp({"t": "inventory.equip_item", "rid": 6, "item_id": 3}),
        6,
        "missing required field `slot`",
    ),
    "json_split_qty_zero": Bad(
        JSON,
        b'{"t":"inventory.split_stack","rid":8,"item_id":1,"qty":0,"compartment":"bag","index":0}',
        8,
        "Expected `int` >= 1 - at `$.qty`",
    ),
    "msgpack_grant_without_key": Bad(
        MSGPACK,
        mp({"t": "admin.grant_item", "rid": 4, "player_id": 1, "template": "bread"}),
        4,
        "missing required field `idempotency_key`",
    ),
    "json_destroy_qty_str": Bad(
        JSON,
        b'{"t":"inventory.destroy_item","rid":2,"item_id":1,"qty":"all"}',
        2,
        "Expected `int | null`, got `str` - at `$.qty`",
    ),
    "json_get_stats_with_field": Bad(
        JSON, b'{"t":"player.get_stats","rid":3,"player_id":9}', 3, "unknown field `player_id`"
    ),
    "json_unknown_field": Bad(JSON, b'{"t":"ping","rid":3,"extra":1}', 3, "unknown field `extra`"),
    "msgpack_unknown_field": Bad(
        MSGPACK, mp({"t": "ping", "rid": 3, "extra": 1}), 3, "unknown field `extra`"
    ),
}

# Invalid UTF-8 inside strings: msgspec raises UnicodeDecodeError, not DecodeError.
UNICODE_FRAMES = [
    pytest.param(
        Bad(JSON, b'{"t":"session.hello","rid":3,"token":"\xff"}', 3, "utf-8"),
        id="json_invalid_utf8_in_bytes",
    ),
    pytest.param(
        Bad(
            MSGPACK,
            b"\x83" + mp("t") + mp("session.hello") + mp("rid") + mp(3) + mp("token") + b"\xa1\xff",
            3,
            "utf-8",
        ),
        id="msgpack_invalid_utf8_str",
    ),
    pytest.param(
        Bad(JSON, '{"t":"session.hello","rid":3,"token":"\ud800"}', 3, "utf-8"),
        id="json_lone_surrogate_in_text",
    ),
]


def _decode_failure(subprotocol: str, frame: bytes | str) -> FrameDecodeError:
    with pytest.raises(FrameDecodeError) as info:
        CODECS[subprotocol].decode(frame)
    return info.value


@pytest.mark.parametrize("case", BAD_FRAMES.values(), ids=BAD_FRAMES.keys())
def test_bad_frame_raises_decode_failure(case: Bad) -> None:
    exc = _decode_failure(case.subprotocol, case.frame)

    assert exc.rid == case.rid
    assert case.reason in str(exc.details["reason"])
    assert exc.code is ErrorCode.BAD_REQUEST


@pytest.mark.parametrize("case", UNICODE_FRAMES)
def test_bad_frame_that_escapes_today(case: Bad) -> None:
    exc = _decode_failure(case.subprotocol, case.frame)

    assert exc.rid == case.rid


@pytest.mark.parametrize("subprotocol", SUBPROTOCOLS)
def test_decode_failure_becomes_an_error_reply_both_encodings_carry(subprotocol: str) -> None:
    codec = CODECS[subprotocol]
    exc = _decode_failure(subprotocol, codec.encode({"t": "nope", "rid": 7}))
    reply = ErrorReply(rid=exc.rid, code=exc.code, message=exc.message, details=exc.details)
    decoder = msgspec.msgpack.Decoder if codec.binary else msgspec.json.Decoder

    decoded = decoder(AnyServerMessage).decode(codec.encode(reply))

    assert decoded == reply
    assert isinstance(decoded, ErrorReply)
    assert decoded.rid == 7
    assert decoded.code is ErrorCode.BAD_REQUEST


# --- constraints -------------------------------------------------------------------------

VALID: dict[type[Request], Request] = {
    SessionHello: SessionHello(rid=1, token="t", resume=3),
    Ping: Ping(rid=2),
    EquipItem: EquipItem(rid=3, item_id=10, slot="head"),
    UnequipItem: UnequipItem(rid=4, slot="ring1", compartment="backpack", index=5),
    MoveItem: MoveItem(rid=5, item_id=11, compartment="backpack", index=0),
    SplitStack: SplitStack(rid=6, item_id=12, qty=3, compartment="belt", index=1),
    MergeStacks: MergeStacks(rid=7, item_id=12, into_item_id=13),
    SortCompartment: SortCompartment(rid=8, compartment="bank"),
    DestroyItem: DestroyItem(rid=9, item_id=14, qty=2),
    UseItem: UseItem(rid=10, item_id=15),
    GetStats: GetStats(rid=11),
    GrantItem: GrantItem(
        rid=12,
        player_id=7,
        template="healing_potion",
        qty=25,
        compartment="belt",
        idempotency_key="order-123:line-1",
    ),
    acc.Register: acc.Register(rid=13, email="ana@example.com", password="pw", display_name="Ana"),
    acc.Login: acc.Login(rid=14, email="ana@example.com", password="pw", totp="123456"),
    acc.DeviceLogin: acc.DeviceLogin(rid=15, device_id="d" * 32),
    acc.Refresh: acc.Refresh(rid=16, refresh_token="ghr_" + "x" * 43),
    acc.OidcStart: acc.OidcStart(rid=17, redirect_uri="https://game.example/cb"),
    acc.OidcFinish: acc.OidcFinish(rid=18, code="abc", state="s" * 43),
    acc.Logout: acc.Logout(rid=19),
    acc.LogoutAll: acc.LogoutAll(rid=20),
    acc.ChangePassword: acc.ChangePassword(rid=21, old_password="a", new_password="b"),
    acc.LinkEmail: acc.LinkEmail(rid=22, email="ana@example.com", password="pw"),
    acc.ListSessions: acc.ListSessions(rid=23),
    acc.RevokeSession: acc.RevokeSession(rid=24, session_id=5),
    acc.MfaEnroll: acc.MfaEnroll(rid=25),
    acc.MfaConfirm: acc.MfaConfirm(rid=26, code="123456"),
    acc.MfaDisable: acc.MfaDisable(rid=27, password="pw", recovery_code="abcd-efgh-ijkl"),
    acc.GetProfile: acc.GetProfile(rid=28),
    acc.UpdateProfile: acc.UpdateProfile(
        rid=29, locale="pt-BR", notification_prefs=acc.NotificationPrefs(push=True)
    ),
    acc.GrantRole: acc.GrantRole(rid=30, account_id=3, role=acc.Role.SELLER),
    acc.RevokeRole: acc.RevokeRole(rid=31, account_id=3, role=acc.Role.SELLER),
    acc.Ban: acc.Ban(rid=32, account_id=3, reason="cheating"),
    acc.Unban: acc.Unban(rid=33, account_id=3),
    acc.ViewAccount: acc.ViewAccount(rid=34, account_id=3, reveal_pii=True),
    acc.AuditQuery: acc.AuditQuery(rid=35, action="login", before_id=100, limit=20),
    acc.CreateApiKey: acc.CreateApiKey(rid=36, name="shop", permissions=["items.grant"]),
    acc.ListApiKeys: acc.ListApiKeys(rid=37),
    acc.RevokeApiKey: acc.RevokeApiKey(rid=38, key_id=2),
}


def test_every_client_message_has_a_valid_example() -> None:
    assert set(VALID) == set(CLIENT_MESSAGES)


@pytest.mark.parametrize("subprotocol", SUBPROTOCOLS)
@pytest.mark.parametrize("msg", VALID.values(), ids=lambda m: type(m).__name__)
def test_valid_example_decodes(subprotocol: str, msg: Request) -> None:
    codec = CODECS[subprotocol]

    assert codec.decode(codec.encode(msg)) == msg


def _violations(t: msgspec.inspect.Type) -> list[object]:
    """Values just outside what ``t`` accepts, for the constraints it declares."""
    if isinstance(t, msgspec.inspect.UnionType):
        return [v for member in t.types for v in _violations(member)]
    if isinstance(t, msgspec.inspect.IntType):
        out: list[object] = []
        if t.ge is not None:
            out.append(t.ge - 1)
        if t.le is not None:
            out.append(t.le + 1)
        return out
    if isinstance(t, msgspec.inspect.StrType):
        out = []
        if t.min_length:
            out.append("x" * (t.min_length - 1))
        if t.max_length is not None:
            out.append("x" * (t.max_length + 1))
        return out
    if isinstance(t, msgspec.inspect.LiteralType):
        return ["not-" + "-".join(map(str, t.values))]
    return []


def _constraint_cases() -> list[tuple[str, Request]]:
    cases = []
    for cls, valid in VALID.items():
        info = msgspec.inspect.type_info(cls)
        assert isinstance(info, msgspec.inspect.StructType)
        for field in info.fields:
            for bad in _violations(field.type):
                # Structs do not validate on construction; only the decoder does.
                bad_msg = msgspec.structs.replace(valid, **{field.name: bad})
                cases.append((field.encode_name, bad_msg))
    return cases


CONSTRAINT_CASES = _constraint_cases()


def test_every_client_message_has_a_constrained_field() -> None:
    assert {type(msg) for _, msg in CONSTRAINT_CASES} == set(CLIENT_MESSAGES)


@pytest.mark.parametrize("subprotocol", SUBPROTOCOLS)
@pytest.mark.parametrize(
    ("field", "msg"),
    CONSTRAINT_CASES,
    ids=[f"{type(m).__name__}.{f}={getattr(m, f)!r:.20}" for f, m in CONSTRAINT_CASES],
)
def test_out_of_range_field_is_refused(subprotocol: str, field: str, msg: Request) -> None:
    codec = CODECS[subprotocol]

    exc = _decode_failure(subprotocol, codec.encode(msg))

    assert f"`$.{field}`" in str(exc.details["reason"])
    if field != "rid":
        assert exc.rid == msg.rid


# --- no frame escapes as anything but FrameDecodeError --------------------------------------

# Valid-UTF-8 values of any shape, encoded: the decoder must answer every one of them.
_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.text(max_size=8)
    | st.sampled_from(["ping", "session.hello", "inventory.move_item", "backpack", "head"])
    | st.sampled_from([tag_of(cls) for cls in CLIENT_MESSAGES]),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(["t", "rid", "token", "item_id", "slot", "qty", "compartment", "x"]),
            children,
            max_size=5,
        )
    ),
    max_leaves=10,
)


def _decode_or_failure(codec: Codec, frame: bytes | str) -> None:
    try:
        msg = codec.decode(frame)
    except FrameDecodeError as exc:
        assert exc.rid is None or isinstance(exc.rid, int)
        assert isinstance(exc.details["reason"], str)
    else:
        assert isinstance(msg, CLIENT_MESSAGES)


@pytest.mark.parametrize("subprotocol", SUBPROTOCOLS)
@given(value=_VALUES)
def test_any_encoded_value_decodes_or_fails_cleanly(subprotocol: str, value: object) -> None:
    codec = CODECS[subprotocol]

    _decode_or_failure(codec, codec.encode(value))


@given(text=st.text())
def test_any_text_frame_decodes_or_fails_cleanly(text: str) -> None:
    _decode_or_failure(CODECS[JSON], text)


def test_unknown_subprotocol_is_refused() -> None:
    with pytest.raises(ValueError, match=r"gearhall\.v2\.json"):
        Codec("gearhall.v2.json")


# --- error codes -------------------------------------------------------------------------


def _all_error_classes() -> list[type[GearhallError]]:
    seen: list[type[GearhallError]] = []
    pending: list[type[GearhallError]] = [GearhallError]
    while pending:
        cls = pending.pop()
        if cls not in seen:
            seen.append(cls)
            pending.extend(cls.__subclasses__())
    return seen


def test_every_error_code_has_exactly_one_declaring_class() -> None:
    declaring: dict[ErrorCode, list[type[GearhallError]]] = {}
    for cls in _all_error_classes():
        if "code" in cls.__dict__:
            declaring.setdefault(cls.__dict__["code"], []).append(cls)

    assert set(declaring) == set(ErrorCode)
    assert {code: classes for code, classes in declaring.items() if len(classes) != 1} == {}
    assert {code: classes[0] for code, classes in declaring.items()} == ERROR_CLASSES


def test_every_error_class_inherits_its_code_from_the_declaring_class() -> None:
    for cls in _all_error_classes()[1:]:
        assert ERROR_CLASSES[cls.code] in cls.__mro__, cls


def test_decode_failure_is_a_bad_request() -> None:
    assert issubclass(FrameDecodeError, BadRequestError)
    assert FrameDecodeError.code is ErrorCode.BAD_REQUEST


@pytest.mark.parametrize("code", list(ErrorCode), ids=str)
def test_error_code_is_lower_snake_case(code: ErrorCode) -> None:
    assert re.fullmatch(r"[a-z]+(_[a-z]+)*", code.value)
    assert code.name.lower() == code.value
