"""The exported JSON Schema and AsyncAPI documents say what the Structs say.

``jsonschema`` is not a dependency, so real encoded messages are checked with a small
validator for exactly the keywords msgspec emits; it refuses any keyword it does not know,
so a schema that grows one makes these tests fail instead of passing unchecked.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
from collections.abc import Iterator

import msgspec
import pytest

from protocol import SUBPROTOCOL_JSON, SUBPROTOCOL_MSGPACK
from protocol import accounts as acc
from protocol.base import tag_of
from protocol.errors import ErrorCode
from protocol.messages import (
    CLIENT_MESSAGES,
    SERVER_MESSAGES,
    CooldownReady,
    DestroyItem,
    EffectsReply,
    EquipItem,
    ErrorReply,
    GetStats,
    GrantItem,
    GrantItemReply,
    MergeStacks,
    MoveItem,
    Ping,
    PlayerDelta,
    Pong,
    SessionHello,
    SessionWelcome,
    SortCompartment,
    SplitStack,
    StatsReply,
    UnequipItem,
    UseItem,
)
from protocol.model import (
    EFFECT_TYPES,
    ActiveEffect,
    ActiveEffectStarted,
    ChargesChanged,
    CompartmentResized,
    CooldownStarted,
    GrantRecorded,
    HealthChanged,
    ItemBound,
    ItemCreated,
    ItemDestroyed,
    ItemInstance,
    ItemsMoved,
    Move,
    PlayerLeveledUp,
    PlayerState,
    SkillLeveledUp,
    StackChanged,
    XpGained,
)
from protocol.schema import asyncapi, json_schema, render, server_version
from tests.protocol.test_codec import VALID

# --- a validator for the keywords msgspec emits ------------------------------------------

_ANNOTATIONS = {"title", "description", "default", "discriminator", "$schema", "$id", "$defs"}
_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "boolean": (bool,),
    "null": (type(None),),
}


def resolve(doc: dict[str, object], ref: str) -> object:
    """The node a local JSON pointer ``#/a/b`` names in ``doc``; KeyError when none."""
    assert ref.startswith("#/"), ref
    node: object = doc
    for part in ref[2:].split("/"):
        assert isinstance(node, dict), ref
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def errors(doc: dict[str, object], schema: object, value: object, at: str = "$") -> list[str]:
    """Why ``value`` does not match ``schema``; empty when it does."""
    assert isinstance(schema, dict), schema
    unknown = set(schema) - _ANNOTATIONS - {
        "$ref", "type", "enum", "anyOf", "oneOf", "properties", "required",
        "additionalProperties", "items", "prefixItems", "minItems", "maxItems", "minimum",
        "maximum", "minLength", "maxLength", "pattern",
    }  # fmt: skip
    assert not unknown, f"validator does not know {unknown}"
    found: list[str] = []
    if "$ref" in schema:
        found += errors(doc, resolve(doc, str(schema["$ref"])), value, at)
    if "type" in schema:
        kind = str(schema["type"])
        if not isinstance(value, _TYPES[kind]) or (kind == "integer" and isinstance(value, bool)):
            return [f"{at}: expected {kind}, got {value!r:.40}"]
    if "enum" in schema and value not in schema["enum"]:
        found.append(f"{at}: {value!r} not in {schema['enum']}")
    for keyword, exactly_one in (("anyOf", False), ("oneOf", True)):
        if keyword in schema:
            branches = schema[keyword]
            assert isinstance(branches, list)
            matches = sum(not errors(doc, branch, value, at) for branch in branches)
            if matches == 0 or (exactly_one and matches != 1):
                found.append(f"{at}: {matches} branches of {keyword} match")
    if isinstance(value, int) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            found.append(f"{at}: {value} < minimum")
        if "maximum" in schema and value > schema["maximum"]:
            found.append(f"{at}: {value} > maximum")
    if isinstance(value, str):
        if "minLength" in schema and len(value) < schema["minLength"]:
            found.append(f"{at}: shorter than minLength")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            found.append(f"{at}: longer than maxLength")
        if "pattern" in schema and not re.search(str(schema["pattern"]), value):
            found.append(f"{at}: does not match pattern")
    if isinstance(value, list):
        if "minItems" in schema and len(value) < schema["minItems"]:
            found.append(f"{at}: fewer than minItems")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            found.append(f"{at}: more than maxItems")
        prefix = schema.get("prefixItems", [])
        assert isinstance(prefix, list)
        for i, (item, item_schema) in enumerate(zip(value, prefix, strict=False)):
            found += errors(doc, item_schema, item, f"{at}[{i}]")
        rest = schema.get("items", True)
        for i, item in enumerate(value[len(prefix) :], start=len(prefix)):
            if rest is False:
                found.append(f"{at}[{i}]: no items allowed past prefixItems")
            elif isinstance(rest, dict):
                found += errors(doc, rest, item, f"{at}[{i}]")
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        assert isinstance(properties, dict)
        required = schema.get("required", [])
        assert isinstance(required, list)
        found += [f"{at}: missing {name}" for name in required if name not in value]
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            if key in properties:
                found += errors(doc, properties[key], item, f"{at}.{key}")
            elif extra is False:
                found.append(f"{at}: unexpected {key}")
            elif isinstance(extra, dict):
                found += errors(doc, extra, item, f"{at}.{key}")
    return found


# --- real messages -------------------------------------------------------------------------

STATE = PlayerState(
    player_id=7,
    name="Ada",
    version=42,
    items={
        1: ItemInstance(id=1, template="short_sword"),
        2: ItemInstance(id=2, template="bread", qty=9),
        3: ItemInstance(id=3, template="training_manual", charges=2, bound=True),
    },
    compartments={"backpack": [None, 2, None], "belt": [None], "bank": [3]},
    equipment={"main_hand": 1},
    cooldowns={"healing_potion": 1_700_000_030_000, "equip:main_hand": 1_700_000_001_000},
    skills={"alchemy": 60},
    skill_levels={"alchemy": 2},
    level=1,
    health=80,
    active_effects={
        "elixir_of_might": ActiveEffect(
            source="elixir_of_might", stats={"strength": 5}, expires_at_ms=1_700_000_060_000
        )
    },
    grants={"order-123:line-1": 40},
)
EFFECTS = [
    ItemsMoved(reason="swap", moves=[
        Move(1, ("backpack", 0), ("equipment", "main_hand")),
        Move(4, ("equipment", "main_hand"), ("backpack", 0)),
    ]),
    ItemCreated(item=ItemInstance(id=5, template="bread", qty=2), dst=("backpack", 2),
                grant_key="order-123:line-1"),
    ItemDestroyed(item_id=2, src=("backpack", 1), reason="merged"),
    StackChanged(item_id=5, qty=11),
    ChargesChanged(item_id=3, charges=1),
    ItemBound(item_id=1),
    CompartmentResized(compartment="lost_and_found", size=40),
    CooldownStarted(key="item:bread", ready_at_ms=1_700_000_001_000),
    HealthChanged(health=90),
    ActiveEffectStarted(effect=ActiveEffect(source="elixir_of_might", stats={"strength": 5},
                                            expires_at_ms=1_700_000_060_000)),
    XpGained(skill="alchemy", amount=5, total=65),
    SkillLeveledUp(skill="alchemy", level=3),
    PlayerLeveledUp(level=2),
    GrantRecorded(key="order-123:line-1", version=44),
]  # fmt: skip
MESSAGES: list[msgspec.Struct] = [
    SessionHello(rid=0, token="x" * 4096),
    SessionHello(rid=2**53, token="t", resume=0),
    Ping(rid=1),
    EquipItem(rid=2, item_id=2**53, slot="trinket2"),
    UnequipItem(rid=3, slot="head"),
    UnequipItem(rid=3, slot="off_hand", compartment="b" * 32, index=1023),
    MoveItem(rid=4, item_id=1, compartment="backpack", index=0),
    SplitStack(rid=5, item_id=2, qty=1, compartment="belt", index=0),
    SplitStack(rid=5, item_id=2, qty=1_000_000, compartment="b", index=1023),
    MergeStacks(rid=6, item_id=2, into_item_id=5),
    SortCompartment(rid=7, compartment="backpack"),
    DestroyItem(rid=8, item_id=2),
    DestroyItem(rid=8, item_id=2, qty=3),
    UseItem(rid=9, item_id=3),
    GetStats(rid=10),
    GrantItem(rid=11, player_id=7, template="bread", idempotency_key="k" * 8),
    GrantItem(rid=11, player_id=2**53, template="t" * 64, qty=1_000_000, compartment="bank",
              idempotency_key="k" * 128),
    SessionWelcome(rid=0, protocol_version=1, server_version="0.1.0", tick_hz=20, tick=5,
                   player_id=7, version=42, resumed=False, state=STATE),
    SessionWelcome(rid=0, protocol_version=1, server_version="0.1.0", tick_hz=20, tick=5,
                   player_id=7, version=56, resumed=True, effects=EFFECTS),
    Pong(rid=1, tick=99),
    EffectsReply(rid=2, version=56, effects=EFFECTS),
    EffectsReply(rid=2, version=42, effects=[]),
    StatsReply(rid=10, stats={"strength": 15, "armor": 3}, carried_weight=4200,
               carry_capacity=35000, encumbrance="normal", movement_speed=100, health=90,
               level=2, version=56),
    GrantItemReply(rid=11, player_id=7, version=44, item_ids=[5], replayed=False),
    GrantItemReply(rid=11, player_id=7, version=44, item_ids=[], replayed=True),
    PlayerDelta(seq=56, effects=EFFECTS),
    CooldownReady(seq=56, key="healing_potion", ready_at_ms=1_700_000_030_000),
    ErrorReply(rid=None, code=ErrorCode.BAD_REQUEST, message="bad", details={"reason": "x"}),
    ErrorReply(rid=5, code=ErrorCode.COOLDOWN_ACTIVE, message="cooldown 'healing_potion'",
               details={"ready_in_ms": 250, "nested": [1, {"a": None}], "ok": True}),
    *VALID.values(),  # every client message, from the codec tests
    acc.Tokens(rid=1, account_id=3, session_id=9, access_token="gha_x", refresh_token="ghr_y",
               expires_in=900),
    acc.OidcAuthorize(rid=1, url="https://issuer.example/authorize?x=1", state="s" * 43),
    acc.Sessions(rid=1, sessions=[acc.SessionInfo(session_id=9, method="password", ip="10.0.0.1",
                 user_agent="game/1.0", created_at_ms=1, last_used_at_ms=2, current=True)]),
    acc.Done(rid=1, count=3),
    acc.MfaEnrolment(rid=1, secret="JBSWY3DPEHPK3PXP",
                     otpauth_uri="otpauth://totp/Gearhall:ana?secret=JBSWY3DPEHPK3PXP"),
    acc.MfaRecoveryCodes(rid=1, codes=["abcd-efgh-ijkl"]),
    acc.Profile(rid=1, account_id=3, player_id=4, email="ana@example.com", display_name="Ana",
                locale="en", avatar_url=None, notification_prefs=acc.NotificationPrefs(),
                roles=["player"], mfa_enabled=False, guest=False),
    acc.AccountView(rid=1, account_id=3, player_id=4, email="a***@e***.com", display_name=None,
                    roles=["player"], banned=False, ban_reason=None, mfa_enabled=True,
                    created_at_ms=5, last_login_ip="10.0.0.x", pii_masked=True),
    acc.AuditPage(rid=1, entries=[acc.AuditEntry(id=8, at_ms=1, action="login",
                  actor_account_id=3, actor_api_key_id=None, target_account_id=3, ip="10.0.0.1",
                  details={"method": "password"})], next_before_id=8),
    acc.ApiKeyCreated(rid=1, key_id=2, key="ghk_z", permissions=["items.grant"]),
    acc.ApiKeys(rid=1, keys=[acc.ApiKeyInfo(key_id=2, name="shop", permissions=["items.grant"],
                created_at_ms=1, last_used_at_ms=None, revoked=False)]),
]  # fmt: skip


def _wire(msg: msgspec.Struct) -> object:
    # What a client reads from a JSON frame.
    return json.loads(msgspec.json.encode(msg))


def test_examples_cover_every_message_and_effect() -> None:
    assert {type(m) for m in MESSAGES} == set(CLIENT_MESSAGES) | set(SERVER_MESSAGES)
    assert {type(e) for e in EFFECTS} == set(EFFECT_TYPES)


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: type(m).__name__)
def test_encoded_message_validates_against_json_schema(msg: msgspec.Struct) -> None:
    doc = json_schema()

    assert errors(doc, doc, _wire(msg)) == []


def _wire_dict(value: msgspec.Struct) -> dict[str, object]:
    wire = _wire(value)
    assert isinstance(wire, dict)
    return wire


def _effect_wire(effect: msgspec.Struct) -> dict[str, object]:
    return _wire_dict(effect)


def _mutated(msg: msgspec.Struct, **changes: object) -> object:
    wire = _wire(msg)
    assert isinstance(wire, dict)
    return {**wire, **changes}


REJECTED = {
    "unknown_tag": _mutated(Ping(rid=1), t="nope"),
    "request_unknown_field": _mutated(Ping(rid=1), extra=1),
    "rid_negative": _mutated(Ping(rid=1), rid=-1),
    "rid_too_big": _mutated(Ping(rid=1), rid=2**53 + 1),
    "rid_bool": _mutated(Ping(rid=1), rid=True),
    "token_empty": _mutated(SessionHello(rid=1, token="t"), token=""),
    "token_too_long": _mutated(SessionHello(rid=1, token="t"), token="x" * 4097),
    "slot_unknown": _mutated(EquipItem(rid=1, item_id=1, slot="head"), slot="tail"),
    "item_id_zero": _mutated(EquipItem(rid=1, item_id=1, slot="head"), item_id=0),
    "index_too_big": _mutated(UnequipItem(rid=1, slot="head"), index=1024),
    "compartment_too_long": _mutated(UnequipItem(rid=1, slot="head"), compartment="b" * 33),
    "missing_field": {"t": "inventory.move_item", "rid": 1, "item_id": 1, "index": 0},
    "error_code_unknown": _mutated(
        ErrorReply(rid=1, code=ErrorCode.INTERNAL, message="m"), code="oops"
    ),
    "effect_unknown": _mutated(PlayerDelta(seq=1, effects=[]), effects=[{"e": "nope"}]),
    "split_qty_zero": _mutated(
        SplitStack(rid=1, item_id=1, qty=1, compartment="belt", index=0), qty=0
    ),
    "grant_key_too_short": _mutated(
        GrantItem(rid=1, player_id=1, template="bread", idempotency_key="k" * 8),
        idempotency_key="k" * 7,
    ),
    "grant_player_zero": _mutated(
        GrantItem(rid=1, player_id=1, template="bread", idempotency_key="k" * 8), player_id=0
    ),
    "destroy_qty_zero": _mutated(DestroyItem(rid=1, item_id=1), qty=0),
    "get_stats_unknown_field": _mutated(GetStats(rid=1), player_id=2),
    "loc_with_three_parts": _mutated(
        PlayerDelta(seq=1, effects=[]),
        effects=[{**_effect_wire(EFFECTS[1]), "dst": ["backpack", 2, 0]}],
    ),
    "loc_index_float": _mutated(
        PlayerDelta(seq=1, effects=[]),
        effects=[{**_effect_wire(EFFECTS[1]), "dst": ["backpack", 2.5]}],
    ),
    "move_too_short": _mutated(
        PlayerDelta(seq=1, effects=[]),
        effects=[{"e": "items_moved", "reason": "move", "moves": [[1, ["backpack", 0]]]}],
    ),
    "move_reason_unknown": _mutated(
        PlayerDelta(seq=1, effects=[]),
        effects=[{"e": "items_moved", "reason": "teleport", "moves": []}],
    ),
    "welcome_state_item_id_zero": _mutated(
        SessionWelcome(
            rid=0,
            protocol_version=1,
            server_version="0.1.0",
            tick_hz=20,
            tick=5,
            player_id=7,
            version=42,
            resumed=False,
            state=STATE,
        ),
        state={**_wire_dict(STATE), "items": {"0": {"id": 0, "template": "x"}}},
    ),
    "not_an_object": [1, 2],
}


# Where the message's own definition finds each fault (the top level only says that no
# branch of ``oneOf`` matched), so a frame refused for some other reason does not pass.
REJECTED_AT = {
    "unknown_tag": "$: 0 branches of oneOf",
    "request_unknown_field": "$: unexpected extra",
    "rid_negative": "$.rid: -1 < minimum",
    "rid_too_big": "$.rid: 9007199254740993 > maximum",
    "rid_bool": "$.rid: expected integer",
    "token_empty": "$.token: shorter than minLength",
    "token_too_long": "$.token: longer than maxLength",
    "slot_unknown": "$.slot: 'tail' not in",
    "item_id_zero": "$.item_id: 0 < minimum",
    "index_too_big": "$.index: 0 branches of anyOf",
    "compartment_too_long": "$.compartment: longer than maxLength",
    "missing_field": "$: missing compartment",
    "error_code_unknown": "$.code: 'oops' not in",
    "effect_unknown": "$.effects[0]: 0 branches of anyOf",
    "split_qty_zero": "$.qty: 0 < minimum",
    "grant_key_too_short": "$.idempotency_key: shorter than minLength",
    "grant_player_zero": "$.player_id: 0 < minimum",
    "destroy_qty_zero": "$.qty: 0 branches of anyOf",
    "get_stats_unknown_field": "$: unexpected player_id",
    "loc_with_three_parts": "$.effects[0]: 0 branches of anyOf",
    "loc_index_float": "$.effects[0]: 0 branches of anyOf",
    "move_too_short": "$.effects[0]: 0 branches of anyOf",
    "move_reason_unknown": "$.effects[0]: 0 branches of anyOf",
    "welcome_state_item_id_zero": "$.state: 0 branches of anyOf",
    "not_an_object": "$: 0 branches of oneOf",
}
_BY_TAG = {tag_of(cls): cls for cls in CLIENT_MESSAGES + SERVER_MESSAGES}


def _own_errors(doc: dict[str, object], frame: object) -> list[str]:
    """Errors against the definition of the frame's own tag (the whole document if none)."""
    if isinstance(frame, dict) and frame.get("t") in _BY_TAG:
        return errors(doc, {"$ref": f"#/$defs/{_BY_TAG[frame['t']].__name__}"}, frame)
    return errors(doc, doc, frame)


def test_every_rejected_frame_says_where() -> None:
    assert set(REJECTED_AT) == set(REJECTED)


@pytest.mark.parametrize(("name", "frame"), REJECTED.items(), ids=REJECTED.keys())
def test_invalid_frame_does_not_validate(name: str, frame: object) -> None:
    doc = json_schema()

    assert errors(doc, doc, frame) != []
    found = _own_errors(doc, frame)
    assert any(error.startswith(REJECTED_AT[name]) for error in found), found


# Effects with one fault each, checked against the effect's own definition.
EFFECT_REJECTED: dict[str, tuple[type[msgspec.Struct], dict[str, object], str]] = {
    "loc_with_three_parts": (
        ItemCreated, {**_effect_wire(EFFECTS[1]), "dst": ["backpack", 2, 0]},
        "$.dst: more than maxItems",
    ),
    "loc_with_one_part": (
        ItemCreated, {**_effect_wire(EFFECTS[1]), "dst": ["backpack"]},
        "$.dst: fewer than minItems",
    ),
    "loc_index_float": (
        ItemDestroyed, {**_effect_wire(EFFECTS[2]), "src": ["backpack", 2.5]},
        "$.src[1]: 0 branches of anyOf",
    ),
    "loc_compartment_not_str": (
        ItemDestroyed, {**_effect_wire(EFFECTS[2]), "src": [3, 2]},
        "$.src[0]: expected string",
    ),
    "move_too_short": (
        ItemsMoved, {"e": "items_moved", "reason": "move", "moves": [[1, ["backpack", 0]]]},
        "$.moves[0]: fewer than minItems",
    ),
    "move_item_id_zero": (
        ItemsMoved,
        {"e": "items_moved", "reason": "move", "moves": [[0, ["a", 0], ["b", 1]]]},
        "$.moves[0][0]: 0 < minimum",
    ),
    "move_reason_unknown": (
        ItemsMoved, {"e": "items_moved", "reason": "teleport", "moves": []},
        "$.reason: 'teleport' not in",
    ),
    "destroy_reason_unknown": (
        ItemDestroyed, {**_effect_wire(EFFECTS[2]), "reason": "stolen"},
        "$.reason: 'stolen' not in",
    ),
    "buff_without_expiry": (
        ActiveEffectStarted, {"e": "active_effect_started", "effect": {"source": "x", "stats": {}}},
        "$.effect: missing expires_at_ms",
    ),
}  # fmt: skip


@pytest.mark.parametrize(
    ("cls", "wire", "where"), EFFECT_REJECTED.values(), ids=EFFECT_REJECTED.keys()
)
def test_invalid_effect_does_not_validate(
    cls: type[msgspec.Struct], wire: dict[str, object], where: str
) -> None:
    doc = json_schema()

    found = errors(doc, {"$ref": f"#/$defs/{cls.__name__}"}, wire)

    assert any(error.startswith(where) for error in found), found
    # The decoder agrees with the schema: the same JSON is refused there too.
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(msgspec.json.encode(wire), type=cls)


@pytest.mark.parametrize("effect", EFFECTS, ids=lambda e: type(e).__name__)
def test_every_effect_validates_against_its_own_definition(effect: msgspec.Struct) -> None:
    doc = json_schema()

    assert errors(doc, {"$ref": f"#/$defs/{type(effect).__name__}"}, _wire(effect)) == []


def test_reply_accepts_unknown_fields_request_does_not() -> None:
    # DESIGN §6: requests forbid unknown fields, replies do not.
    doc = json_schema()
    defs = doc["$defs"]
    assert isinstance(defs, dict)

    for cls in CLIENT_MESSAGES:
        assert defs[cls.__name__]["additionalProperties"] is False, cls
    for cls in SERVER_MESSAGES:
        assert "additionalProperties" not in defs[cls.__name__], cls
    assert errors(doc, doc, _mutated(Pong(rid=1, tick=2), added_later=1)) == []


# --- structure -----------------------------------------------------------------------------


def _walk(node: object) -> Iterator[tuple[str, object]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield key, value
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def _refs(doc: dict[str, object]) -> list[str]:
    refs = [str(value) for key, value in _walk(doc) if key == "$ref"]
    for key, value in _walk(doc):
        if key == "discriminator" and isinstance(value, dict):
            refs += [str(target) for target in value["mapping"].values()]
    return refs


def _union_members(schema: object) -> set[str]:
    assert isinstance(schema, dict)
    return {str(branch["$ref"]).rsplit("/", 1)[1] for branch in schema["anyOf"]}


def test_json_schema_names_every_tag_once_per_side() -> None:
    defs = json_schema()["$defs"]
    assert isinstance(defs, dict)

    assert _union_members(defs["ClientMessage"]) == {c.__name__ for c in CLIENT_MESSAGES}
    assert _union_members(defs["ServerMessage"]) == {c.__name__ for c in SERVER_MESSAGES}
    for cls in CLIENT_MESSAGES + SERVER_MESSAGES:
        assert defs[cls.__name__]["properties"]["t"] == {"enum": [tag_of(cls)]}
        assert "t" in defs[cls.__name__]["required"]
    assert defs["ClientMessage"]["discriminator"]["mapping"] == {
        tag_of(c): f"#/$defs/{c.__name__}" for c in CLIENT_MESSAGES
    }
    assert defs["ServerMessage"]["discriminator"]["mapping"] == {
        tag_of(c): f"#/$defs/{c.__name__}" for c in SERVER_MESSAGES
    }


def test_client_and_server_tags_are_disjoint() -> None:
    # The top level is oneOf client/server: a tag on both sides would match twice.
    assert not {tag_of(c) for c in CLIENT_MESSAGES} & {tag_of(c) for c in SERVER_MESSAGES}


def test_json_schema_top_level_is_one_of_client_or_server() -> None:
    doc = json_schema()

    assert doc["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert doc["oneOf"] == [{"$ref": "#/$defs/ClientMessage"}, {"$ref": "#/$defs/ServerMessage"}]


def test_error_code_enum_is_complete_and_documented() -> None:
    defs = json_schema()["$defs"]
    assert isinstance(defs, dict)
    error_code = defs["ErrorCode"]

    assert sorted(error_code["enum"]) == sorted(code.value for code in ErrorCode)
    for code in ErrorCode:
        assert re.search(rf"^- `{code.value}`: \S", error_code["description"], re.M), code
    assert defs["ErrorReply"]["properties"]["code"] == {"$ref": "#/$defs/ErrorCode"}


@pytest.mark.parametrize("build", [json_schema, asyncapi], ids=["jsonschema", "asyncapi"])
def test_every_ref_resolves_inside_the_document(build: object) -> None:
    assert callable(build)
    doc = build()
    refs = _refs(doc)

    assert refs
    for ref in refs:
        assert isinstance(resolve(doc, ref), dict), ref


class _AnyText:
    """Equal to any non-empty string: for prose the test does not pin down."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and bool(other)

    __hash__ = None  # type: ignore[assignment]


ANY_TEXT = _AnyText()


def test_asyncapi_header_server_and_channel() -> None:
    doc = asyncapi()

    assert doc["asyncapi"] == "3.0.0"
    assert doc["info"]["version"] == importlib.metadata.version("gearhall")
    assert doc["servers"] == {
        "local": {"host": "127.0.0.1:8765", "protocol": "ws", "description": ANY_TEXT}
    }
    (channel,) = doc["channels"].values()
    assert channel["address"] == "/"
    header = channel["bindings"]["ws"]["headers"]["properties"]["Sec-WebSocket-Protocol"]
    assert sorted(header["enum"]) == sorted([SUBPROTOCOL_JSON, SUBPROTOCOL_MSGPACK])
    for text in (doc["info"]["description"], channel["description"]):
        assert SUBPROTOCOL_JSON in text
        assert SUBPROTOCOL_MSGPACK in text


def test_asyncapi_every_message_is_used_by_one_operation_in_its_direction() -> None:
    doc = asyncapi()
    components = doc["components"]["messages"]
    channel_id, channel = next(iter(doc["channels"].items()))

    used: dict[str, str] = {}
    for operation in doc["operations"].values():
        assert operation["channel"] == {"$ref": f"#/channels/{channel_id}"}
        for message in operation["messages"]:
            # AsyncAPI 3: an operation's messages are a subset of its channel's.
            prefix = f"#/channels/{channel_id}/messages/"
            assert message["$ref"].startswith(prefix)
            name = message["$ref"].removeprefix(prefix)
            assert name not in used
            used[name] = operation["action"]

    assert set(used) == set(components) == set(channel["messages"])
    assert used == {
        **{c.__name__: "receive" for c in CLIENT_MESSAGES},
        **{c.__name__: "send" for c in SERVER_MESSAGES},
    }


def test_asyncapi_payloads_are_the_struct_schemas() -> None:
    doc = asyncapi()
    schemas = doc["components"]["schemas"]
    defs = json_schema()["$defs"]
    assert isinstance(defs, dict)

    for cls in CLIENT_MESSAGES + SERVER_MESSAGES:
        message = doc["components"]["messages"][cls.__name__]
        assert message["name"] == tag_of(cls)
        assert message["payload"] == {"$ref": f"#/components/schemas/{cls.__name__}"}
        assert schemas[cls.__name__]["properties"]["t"] == {"enum": [tag_of(cls)]}
        assert set(schemas[cls.__name__]["properties"]) == set(defs[cls.__name__]["properties"])
        assert ("correlationId" in message) == ("rid" in cls.__struct_fields__)
    assert "ErrorCode" in schemas


def test_asyncapi_schemas_use_component_refs_and_no_openapi_discriminator() -> None:
    text = render("asyncapi")

    assert "#/$defs/" not in text
    # AsyncAPI's Schema Object takes a property name there, not OpenAPI's object.
    assert [k for k, v in _walk(json.loads(text)) if k == "discriminator"] == []


@pytest.mark.parametrize("fmt", ["jsonschema", "asyncapi"])
def test_render_is_deterministic_json_of_the_document(fmt: str) -> None:
    first = render(fmt)

    assert render(fmt) == first
    builder = json_schema if fmt == "jsonschema" else asyncapi
    assert json.loads(first) == json.loads(json.dumps(builder()))
    assert first.endswith("}\n")


def test_render_refuses_unknown_format() -> None:
    with pytest.raises(ValueError, match="yaml"):
        render("yaml")


def test_server_version_falls_back_when_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_installed(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)

    assert server_version() == "0.0.0"
    assert asyncapi()["info"]["version"] == "0.0.0"
