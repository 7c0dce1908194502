"""``tools/wsprobe/script_format``: reading and checking scripts, variables, writing TOML; and
the pure helpers of the runner (raw frames, message normalisation)."""

from __future__ import annotations

import math
import tomllib
from pathlib import Path

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tools.wsprobe.script_format import (
    PUSH_TAGS,
    ScriptError,
    UndefinedVariableError,
    parse_script,
    parse_var,
    references,
    substitute,
    toml_expressible,
    toml_value,
)
from tools.wsprobe.script_run import normalize, raw_frame

PATH = Path("demo.toml")
HEAD = """\
[vars]
who = "alice"
[sessions.alice]
token = "dev:${who}"
[sessions.gm]
token = "dev-admin:gm"
"""


def test_a_full_script_reads_as_written() -> None:
    script = parse_script(
        HEAD
        + """
[[step]]
send = "equip"
body = { item_id = "@cloth_cap", slot = "head" }
expect = { t = "effects", effects = [{ e = "items_moved" }] }
capture = { v = "version" }

[[step]]
session = "gm"
send = "admin.grant_item"
body = { player_id = "${v}", template = "bread", idempotency_key = "k-${who}-0001" }
expect_error = "forbidden"
timeout = 2
note = "not an admin"

[[step]]
wait_push = "player.cooldown_ready"
""",
        PATH,
    )
    assert script.url is None
    assert script.vars == {"who": "alice"}
    assert [s.token for s in script.sessions.values()] == ["dev:${who}", "dev-admin:gm"]
    first, second, third = script.steps
    assert (first.number, first.line, first.session, first.action) == (1, 8, "alice", "send")
    assert first.target == "inventory.equip_item"
    assert first.body == {"item_id": "@cloth_cap", "slot": "head"}
    assert first.capture == {"v": "version"}
    assert (second.session, second.target, second.expect_error) == (
        "gm",
        "admin.grant_item",
        "forbidden",
    )
    assert (second.timeout, second.note, second.line) == (2.0, "not an admin", 14)
    assert (third.action, third.target, third.session, third.expect) == (
        "wait_push",
        "player.cooldown_ready",
        "alice",
        None,
    )


def test_push_tags_are_the_protocol_pushes() -> None:
    assert set(PUSH_TAGS) == {"player.delta", "player.cooldown_ready"}


# (the script after HEAD, words the error must contain)
INVALID: list[tuple[str, list[str]]] = [
    (
        '[[step]]\nsend = "ping"\nexpct = { t = "pong" }\n',
        ["step 1 (line 7)", "'expct'", "'expect'"],
    ),
    (
        '[[step]]\nsend = "ping"\nsession = "bob"\n',
        ["step 1", "unknown session 'bob'", "alice, gm"],
    ),
    ('[[step]]\nsend = "ping"\nexpect = { v = "${nope}" }\n', ["step 1", "${nope}", "--var nope="]),
    (
        '[[step]]\nsend = "ping"\nexpect = { v = "${late}" }\n[[step]]\nsend = "ping"\n'
        'capture = { late = "tick" }\n',
        ["step 1", "undefined variable ${late}"],
    ),
    (
        '[[step]]\nsend = "equip"\nbody = { item = 1 }\n',
        ["step 1", "no field 'item'", "item_id, slot"],
    ),
    ('[[step]]\nsend = "teleport"\n', ["step 1", "unknown operation 'teleport'"]),
    ('[[step]]\nsend = "session.hello"\n', ["step 1", "hello = true"]),
    ("[[step]]\nbody = {}\n", ["step 1", "exactly one of send, raw, hello"]),
    ('[[step]]\nsend = "ping"\nraw = "{}"\n', ["step 1", "it has send, raw"]),
    ('[[step]]\nraw = "{}"\nbody = {}\n', ["step 1", "unknown key 'body'", "a raw step takes"]),
    ('[[step]]\nwait_push = "player.dleta"\n', ["step 1", "'player.dleta' is not a push"]),
    ('[[step]]\nwait_push = "player.delta"\nexpect_error = "x"\n', ["unknown key 'expect_error'"]),
    ('[[step]]\nsend = "ping"\nexpect = {}\nexpect_error = "x"\n', ["not both"]),
    ('[[step]]\nsend = "ping"\ntimeout = 0\n', ["timeout must be a positive number"]),
    ('[[step]]\nsend = "ping"\ntimeout = true\n', ["timeout must be a positive number"]),
    ('[[step]]\nsend = "ping"\ncapture = { v = "effects[" }\n', ["capture.v: bad JMESPath"]),
    ('[[step]]\nsend = "ping"\ncapture = { "a b" = "tick" }\n', ["'a b' is not a variable name"]),
    ('[[step]]\nsend = "ping"\nexpect = { at = 1979-05-27 }\n', ["expect.at", "date/time"]),
    (
        '[[step]]\nsend = "ping"\n[[step]]\nhello = true\n',
        ["step 2 (line 9)", "hello step must be"],
    ),
    ('[[step]]\nhello = "yes"\n', ["hello must be true"]),
    ("[[steps]]\nsend = 'ping'\n", ["unknown key 'steps' (did you mean 'step'?)"]),
    ("[sessions.x]\ntokn = 'a'\n", ["[sessions.x]", "unknown key 'tokn'"]),
    ("[sessions.x]\ntoken = 3\n", ["[sessions.x]", "token must be a non-empty string"]),
    ("[[step]]\nsend = 'ping'\n[[step]\n", ["not valid TOML", "line 9"]),
]


@pytest.mark.parametrize(("tail", "words"), INVALID)
def test_invalid_scripts_name_the_file_step_and_key(tail: str, words: list[str]) -> None:
    with pytest.raises(ScriptError) as caught:
        parse_script(HEAD + tail, PATH)
    message = str(caught.value)
    assert message.startswith("demo.toml: "), message
    for word in words:
        assert word in message, message


def test_steps_are_tables() -> None:
    with pytest.raises(ScriptError, match=r"write each step as a \[\[step\]\] table"):
        parse_script("step = 3\n" + HEAD, PATH)


def test_steps_need_a_session() -> None:
    with pytest.raises(ScriptError, match="no sessions"):
        parse_script('[[step]]\nsend = "ping"\n', PATH)


def test_a_url_variable_must_come_from_vars_or_the_command_line() -> None:
    with pytest.raises(ScriptError, match=r"url: undefined variable \$\{port\}"):
        parse_script('url = "ws://127.0.0.1:${port}/"\n' + HEAD, PATH)
    script = parse_script('url = "ws://127.0.0.1:${port}/"\n' + HEAD, PATH, cli_vars=["port"])
    assert script.url == "ws://127.0.0.1:${port}/"


def test_command_line_variables_count_as_defined() -> None:
    tail = '[[step]]\nsend = "ping"\nexpect = { v = "${given}" }\n'
    parse_script(HEAD + tail, PATH, cli_vars=["given"])


# --- variables -------------------------------------------------------------------------------

VARS = {"n": 17, "name": "bob", "flag": True, "ids": [1, 2], "ratio": 0.5}


@pytest.mark.parametrize(
    ("value", "result"),
    [
        ("${n}", 17),
        ("${ids}", [1, 2]),
        ("${flag}", True),
        ("v${n}", "v17"),
        ("${name}-${n}-${flag}-${ids}-${ratio}", "bob-17-true-[1,2]-0.5"),
        ("$${n} costs $5", "${n} costs $5"),
        ("$${n}${n}", "${n}17"),
        ({"a": ["${n}", {"b": "x${name}"}], "c": 3}, {"a": [17, {"b": "xbob"}], "c": 3}),
        ("no variables", "no variables"),
        (4.5, 4.5),
    ],
)
def test_substitute(value: object, result: object) -> None:
    assert substitute(value, VARS) == result


def test_substitute_an_undefined_variable() -> None:
    with pytest.raises(UndefinedVariableError) as caught:
        substitute({"a": ["ok ${n}", "${missing}"]}, VARS)
    assert caught.value.name == "missing"


def test_references() -> None:
    value = {"a": ["${x}", {"b": "${y}-$${z}"}], "c": "${x}"}
    assert list(references(value)) == ["x", "y", "x"]


@pytest.mark.parametrize(
    ("text", "defaults", "result"),
    [
        ("who=bob", {"who": "alice"}, ("who", "bob")),
        ("n=16", {"n": 1}, ("n", 16)),
        ("n=16", {}, ("n", "16")),
        ("r=0.25", {"r": 1.0}, ("r", 0.25)),
        ("f=false", {"f": True}, ("f", False)),
        ("s=a=b", {}, ("s", "a=b")),
        ("s=", {}, ("s", "")),
    ],
)
def test_parse_var(text: str, defaults: dict[str, object], result: tuple[str, object]) -> None:
    assert parse_var(text, defaults) == result


@pytest.mark.parametrize(
    ("text", "defaults"),
    [("novalue", {}), ("1x=2", {}), ("n=many", {"n": 1}), ("f=yes", {"f": False})],
)
def test_parse_var_refuses(text: str, defaults: dict[str, object]) -> None:
    with pytest.raises(ScriptError, match="--var"):
        parse_var(text, defaults)


# --- writing -----------------------------------------------------------------------------------

scalars = (
    st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text()
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(values)
def test_toml_value_reads_back_as_written(value: object) -> None:
    assert tomllib.loads(f"v = {toml_value(value)}\n")["v"] == value


def test_toml_value_writes_steps_as_people_do() -> None:
    body = {"item_id": "@cloth_cap", "slot": "head", "qty": 2, "odd key": [1.5, True]}
    assert toml_value(body) == (
        '{ item_id = "@cloth_cap", slot = "head", qty = 2, "odd key" = [1.5, true] }'
    )
    assert toml_value({}) == "{}"
    assert toml_value(math.inf) == "inf"
    assert math.isnan(tomllib.loads(f"v = {toml_value(math.nan)}")["v"])


def test_toml_has_no_null() -> None:
    assert not toml_expressible({"a": [1, None]})
    assert toml_expressible({"a": [1, "null"]})
    with pytest.raises(TypeError):
        toml_value(None)


# --- raw frames and normalisation ----------------------------------------------------------


def test_raw_frames() -> None:
    text = '{"t": "ping", "rid": 7}'
    assert raw_frame(text, "json") == (text.encode(), 7)
    assert raw_frame(text, "msgpack") == (msgspec.msgpack.encode({"t": "ping", "rid": 7}), 7)
    assert raw_frame('{"t": "ping", "rid": 1', "json") == (b'{"t": "ping", "rid": 1', None)
    assert raw_frame('{"t": "ping", "rid": 1', "msgpack") == (b'{"t": "ping", "rid": 1', None)
    assert raw_frame("[1, 2]", "msgpack") == (msgspec.msgpack.encode([1, 2]), None)
    assert raw_frame('{"rid": true}', "json")[1] is None
    assert raw_frame('{"rid": "7"}', "json")[1] is None


def test_normalize_shows_msgpack_messages_as_json_would() -> None:
    wire = msgspec.msgpack.decode(
        msgspec.msgpack.encode({"t": "x", "items": {1000: {"id": 1000}}, "blob": b"\x00\x01"})
    )
    assert normalize(wire) == {"t": "x", "items": {"1000": {"id": 1000}}, "blob": "AAE="}
