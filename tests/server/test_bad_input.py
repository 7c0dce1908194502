"""Bad input from one client gets an error reply (or, for abuse, a close) and never stops
the server from serving everyone else (DESIGN.md §6).

Every test here keeps a second, well-behaved client connected and checks that it still
gets ``pong`` after the bad client did its worst.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from server.app import App
from server.config import Settings
from tests.support.client import JSON, MSGPACK, Client
from tests.support.http import http_get
from tests.support.serving import serving

ERROR_KEYS = {"t", "rid", "code", "message", "details"}
DEADLINE_S = 10.0


# --- helpers -------------------------------------------------------------------------------


def ws_url(app: App) -> str:
    return f"ws://127.0.0.1:{app.port}/"


async def hello_client(url: str, name: str, subprotocol: str = JSON) -> Client:
    client = await Client.open(url, subprotocol)
    welcome = await client.hello(name)
    assert welcome["t"] == "session.welcome", welcome
    return client


async def assert_serving(client: Client) -> None:
    """The (other) client still gets answers."""
    async with asyncio.timeout(5):
        pong = await client.request("ping")
    assert pong["t"] == "pong"
    assert isinstance(pong["tick"], int)


def assert_error(reply: dict[str, Any], code: str, rid: int | None) -> None:
    """An error reply of exactly the documented shape."""
    assert set(reply) == ERROR_KEYS, reply
    assert reply["t"] == "error"
    assert reply["code"] == code, reply
    assert reply["rid"] == rid, reply
    assert isinstance(reply["message"], str) and reply["message"]
    assert isinstance(reply["details"], dict)


async def next_message(client: Client) -> dict[str, Any]:
    """The next frame as a dict, reply or push, bounded in time."""
    async with asyncio.timeout(5):
        return client.decode(await client.ws.recv())


async def closed_with(client: Client) -> tuple[int | None, list[dict[str, Any]]]:
    """Read until the server closes; the close code it sent and what arrived before."""
    received: list[dict[str, Any]] = []
    with pytest.raises(ConnectionClosed) as info:
        async with asyncio.timeout(DEADLINE_S):
            while True:
                received.append(client.decode(await client.ws.recv()))
    rcvd = info.value.rcvd
    return (rcvd.code if rcvd is not None else None), received


async def metric(port: int, name: str, **labels: str) -> float | None:
    """One sample scraped from GET /metrics over HTTP, or None if absent."""
    status, text = await http_get(port, "/metrics")
    assert status == 200
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return None


def text_frame(payload: bytes) -> bytes:
    """A masked client text frame (a zero mask key leaves the payload as is)."""
    assert len(payload) < 126
    return bytes([0x81, 0x80 | len(payload)]) + b"\0\0\0\0" + payload


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture
async def bystander(url: str) -> AsyncIterator[Client]:
    client = await hello_client(url, "bystander")
    yield client
    await client.close()


# --- undecodable frames --------------------------------------------------------------------


# (case, message, rid the error must echo). Encoded in the client's subprotocol.
INVALID_MESSAGES: list[tuple[str, Any, int | None]] = [
    ("unknown tag", {"t": "inventory.teleport", "rid": 21}, 21),
    (
        "item_id is a string",
        {"t": "inventory.equip_item", "rid": 22, "item_id": "sword", "slot": "head"},
        22,
    ),
    (
        "slot outside the enum",
        {"t": "inventory.equip_item", "rid": 23, "item_id": 1, "slot": "tail"},
        23,
    ),
    (
        "negative index",
        {
            "t": "inventory.move_item",
            "rid": 24,
            "item_id": 1,
            "compartment": "backpack",
            "index": -1,
        },
        24,
    ),
    ("token is a number", {"t": "session.hello", "rid": 25, "token": 7}, 25),
    ("rid is a string", {"t": "ping", "rid": "26"}, None),
    ("rid out of range", {"t": "ping", "rid": 2**53 + 1}, None),
    ("missing item_id", {"t": "inventory.equip_item", "rid": 27, "slot": "head"}, 27),
    ("missing rid", {"t": "ping"}, None),
    ("missing tag", {"rid": 28}, 28),
    ("unknown field", {"t": "ping", "rid": 29, "please": True}, 29),
    (
        "unknown field on equip",
        {"t": "inventory.equip_item", "rid": 30, "item_id": 1, "slot": "head", "force": 1},
        30,
    ),
    (
        "split of zero",
        {
            "t": "inventory.split_stack",
            "rid": 32,
            "item_id": 1,
            "qty": 0,
            "compartment": "backpack",
            "index": 0,
        },
        32,
    ),
    (
        "idempotency key too short",
        {
            "t": "admin.grant_item",
            "rid": 33,
            "player_id": 1,
            "template": "bread",
            "idempotency_key": "short",
        },
        33,
    ),
    (
        "grant without idempotency key",
        {"t": "admin.grant_item", "rid": 34, "player_id": 1, "template": "bread"},
        34,
    ),
    (
        "grant to player 0",
        {
            "t": "admin.grant_item",
            "rid": 35,
            "player_id": 0,
            "template": "bread",
            "idempotency_key": "key-00000001",
        },
        35,
    ),
    (
        "empty compartment name",
        {"t": "inventory.sort_compartment", "rid": 36, "compartment": ""},
        36,
    ),
    ("negative destroy", {"t": "inventory.destroy_item", "rid": 37, "item_id": 1, "qty": -1}, 37),
    ("unknown field on use", {"t": "inventory.use_item", "rid": 38, "item_id": 1, "all": 1}, 38),
    (
        "merge into item 0",
        {"t": "inventory.merge_stacks", "rid": 39, "item_id": 1, "into_item_id": 0},
        39,
    ),
    ("stats of someone else", {"t": "player.get_stats", "rid": 40, "player_id": 2}, 40),
    ("not a map", [1, 2, 3], None),
    ("a bare string", "ping", None),
]

MALFORMED_FRAMES: dict[str, list[tuple[str, bytes | str]]] = {
    JSON: [
        ("truncated JSON", '{"t": "ping", "rid": 1'),
        ("trailing comma", '{"t": "ping", "rid": 2,}'),
        ("not JSON", "hello?"),
        ("empty frame", ""),
    ],
    MSGPACK: [
        ("reserved byte 0xc1", b"\xc1"),
        ("truncated map", msgspec.msgpack.encode({"t": "ping", "rid": 3})[:-1]),
        ("trailing garbage", msgspec.msgpack.encode({"t": "ping", "rid": 4}) + b"\x00"),
        ("empty frame", b""),
    ],
}


@pytest.mark.parametrize("subprotocol", [JSON, MSGPACK])
async def test_invalid_messages_get_bad_request_with_rid(
    url: str, bystander: Client, subprotocol: str
) -> None:
    client = await hello_client(url, "typos", subprotocol)
    for case, message, rid in INVALID_MESSAGES:
        await client.send_raw(client.encode(message))
        reply = await next_message(client)
        assert reply.get("code") == "bad_request", (case, reply)
        assert_error(reply, "bad_request", rid)
        assert isinstance(reply["details"].get("reason"), str), (case, reply)
    # Nothing above closed the connection or broke the session.
    await assert_serving(client)
    await assert_serving(bystander)
    await client.close()


@pytest.mark.parametrize("subprotocol", [JSON, MSGPACK])
async def test_malformed_frames_get_bad_request_with_null_rid(
    url: str, bystander: Client, subprotocol: str
) -> None:
    client = await hello_client(url, "garbler", subprotocol)
    for case, frame in MALFORMED_FRAMES[subprotocol]:
        await client.send_raw(frame)
        reply = await next_message(client)
        assert reply.get("code") == "bad_request", (case, reply)
        assert_error(reply, "bad_request", None)
    await assert_serving(client)
    await assert_serving(bystander)
    await client.close()


async def test_invalid_utf8_in_binary_frame_on_json(url: str, bystander: Client) -> None:
    client = await hello_client(url, "mojibake", JSON)
    await client.send_raw(b"\xff\xfe\xfd\xfc")  # bytes -> a binary frame
    assert_error(await next_message(client), "bad_request", None)  # the reply is a text frame
    # Invalid UTF-8 inside a string of an otherwise readable message: rid is recoverable.
    await client.send_raw(b'{"t":"session.hello","rid":31,"token":"dev:\xff"}')
    assert_error(await next_message(client), "bad_request", 31)
    assert client.ws.close_code is None
    await assert_serving(client)
    await assert_serving(bystander)
    await client.close()


def _nested_json(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def _nested_msgpack(depth: int) -> bytes:
    return b"\x91" * depth + b"\x90"  # fixarray(1) ... fixarray(0)


DEPTH = 100_000
# (case, frame, rid a successful recovery would echo)
DEEP_FRAMES: dict[str, list[tuple[str, bytes, int | None]]] = {
    JSON: [
        ("unknown field", b'{"t":"ping","rid":41,"junk":' + _nested_json(DEPTH) + b"}", 41),
        ("unknown field first", b'{"junk":' + _nested_json(DEPTH) + b',"t":"ping","rid":42}', 42),
        (
            "known field",
            b'{"t":"session.hello","rid":43,"token":' + _nested_json(DEPTH) + b"}",
            43,
        ),
        ("whole frame", _nested_json(DEPTH), None),
    ],
    MSGPACK: [
        ("unknown field", b"\x83\xa1t\xa4ping\xa3rid\x2c\xa4junk" + _nested_msgpack(DEPTH), 44),
        (
            "unknown field first",
            b"\x83\xa4junk" + _nested_msgpack(DEPTH) + b"\xa1t\xa4ping\xa3rid\x2d",
            45,
        ),
        (
            "known field",
            b"\x83\xa1t\xadsession.hello\xa3rid\x2e\xa5token" + _nested_msgpack(DEPTH),
            46,
        ),
        ("whole frame", _nested_msgpack(DEPTH), None),
    ],
}


@pytest.mark.parametrize("subprotocol", [JSON, MSGPACK])
async def test_deeply_nested_values_get_bad_request(
    make_settings: Callable[..., Settings], subprotocol: str
) -> None:
    async with serving(make_settings(max_frame_bytes=1 << 20)) as app:
        bystander = await hello_client(ws_url(app), "bystander")
        client = await hello_client(ws_url(app), "nester", subprotocol)
        for case, frame, rid in DEEP_FRAMES[subprotocol]:
            await client.send_raw(frame if subprotocol == MSGPACK else frame.decode())
            reply = await next_message(client)
            assert reply.get("code") == "bad_request", (case, reply)
            # Echoing the rid is best effort here: it may sit beside the nesting.
            assert_error(reply, "bad_request", reply["rid"])
            assert reply["rid"] in (None, rid), (case, reply)
        await assert_serving(client)
        await assert_serving(bystander)
        await client.close()
        await bystander.close()


async def test_error_reply_shape_in_both_encodings(url: str) -> None:
    for subprotocol in (JSON, MSGPACK):
        client = await Client.open(url, subprotocol)
        reply = await client.request("inventory.unequip_item", rid=7, slot="head")
        assert_error(reply, "unauthenticated", 7)
        assert reply["details"] == {}
        await client.close()


# --- frame size ----------------------------------------------------------------------------


async def test_oversized_frame_closes_1009(app: App, url: str, bystander: Client) -> None:
    limit = app.settings.max_frame_bytes
    for subprotocol in (JSON, MSGPACK):
        client = await hello_client(url, "big", subprotocol)
        # Just under the limit: an ordinary bad request, the connection stays.
        near = client.encode({"t": "ping", "rid": 51, "pad": "x" * (limit - 100)})
        assert len(near) <= limit
        await client.send_raw(near)
        assert_error(await next_message(client), "bad_request", 51)
        # Over the limit: closed with 1009, no reply.
        over = client.encode({"t": "ping", "rid": 52, "pad": "x" * (limit + 1)})
        await client.send_raw(over)
        code, received = await closed_with(client)
        assert code == 1009, (subprotocol, code)
        assert client.ws.close_code == 1009
        assert received == []
    await assert_serving(bystander)


# --- session rules -------------------------------------------------------------------------


async def test_request_before_hello_is_unauthenticated(url: str, bystander: Client) -> None:
    client = await Client.open(url)
    assert_error(await client.request("ping", rid=61), "unauthenticated", 61)
    reply = await client.request("inventory.equip_item", rid=62, item_id=1, slot="head")
    assert_error(reply, "unauthenticated", 62)
    # Still open, and hello works afterwards.
    welcome = await client.hello("late")
    assert welcome["t"] == "session.welcome"
    await assert_serving(client)
    await assert_serving(bystander)
    await client.close()


async def test_hello_twice_is_conflict(url: str, bystander: Client) -> None:
    client = await Client.open(url)
    first = await client.hello("twice")
    again = await client.request("session.hello", rid=71, token="dev:twice")
    assert_error(again, "conflict", 71)
    other = await client.request("session.hello", rid=72, token="dev:someone_else")
    assert_error(other, "conflict", 72)
    # The first session is intact: same player, still answering.
    await assert_serving(client)
    item = first["state"]["compartments"]["backpack"][0]
    reply = await client.request("inventory.equip_item", item_id=item, slot="head")
    assert reply["t"] == "effects"
    assert reply["version"] == first["version"] + 1
    await assert_serving(bystander)
    await client.close()


# --- rate limit ----------------------------------------------------------------------------


RATE_LIMIT = {"rate_limit_per_s": 0.1, "rate_limit_burst": 5}  # ~no refill during a test


async def test_flood_gets_rate_limited(make_settings: Callable[..., Settings]) -> None:
    async with serving(make_settings(**RATE_LIMIT)) as app:
        bystander = await hello_client(ws_url(app), "bystander")  # its own bucket
        client = await hello_client(ws_url(app), "flooder")  # 1 of 5 tokens
        rids = list(range(100, 107))
        for rid in rids:  # pipelined: 4 fit the bucket, 3 are refused
            await client.send_raw(client.encode({"t": "ping", "rid": rid}))
        replies = [await next_message(client) for _ in rids]
        assert [r["rid"] for r in replies] == rids
        assert [r["t"] for r in replies[:4]] == ["pong"] * 4
        for refused in replies[4:]:
            assert_error(refused, "rate_limited", refused["rid"])
            retry = refused["details"]["retry_after_ms"]
            assert isinstance(retry, int) and retry > 0
        # Refusals below a burst's worth do not close the connection.
        assert client.ws.close_code is None
        await assert_serving(bystander)
        refused_total = await metric(app.port, "gearhall_rate_limited_messages_total")
        assert refused_total == 3
        await client.close()
        await bystander.close()


async def test_sustained_flood_closes_1008(make_settings: Callable[..., Settings]) -> None:
    async with serving(make_settings(**RATE_LIMIT)) as app:
        bystander = await hello_client(ws_url(app), "bystander")
        client = await hello_client(ws_url(app), "abuser")
        for rid in range(200, 230):
            await client.send_raw(client.encode({"t": "ping", "rid": rid}))
        code, received = await closed_with(client)
        assert code == 1008
        kinds = [r.get("code", r["t"]) for r in received]
        assert set(kinds) <= {"pong", "rate_limited"}, kinds
        assert kinds.count("pong") <= 4
        assert kinds.count("rate_limited") <= 5  # a burst's worth, then the close
        await assert_serving(bystander)
        await bystander.close()


# --- slow consumers ------------------------------------------------------------------------


async def _raw_websocket(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A hand-made WebSocket connection with a tiny receive buffer, handshake done."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: {JSON}\r\n\r\n"
        ).encode()
    )
    async with asyncio.timeout(5):
        head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 "), head
    return reader, writer


async def test_client_that_never_reads_is_aborted(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(
        outbound_queue_max=64,
        write_timeout_s=0.5,
        rate_limit_per_s=1e6,
        rate_limit_burst=10**6,
    )
    async with serving(settings) as app:
        bystander = await hello_client(ws_url(app), "bystander")
        ticks_before = await metric(app.port, "gearhall_tick_duration_seconds_count")
        reader, writer = await _raw_websocket(app.port)
        writer.write(text_frame(b'{"t":"session.hello","rid":1,"token":"dev:deaf"}'))
        pings = b"".join(text_frame(b'{"t":"ping","rid":%d}' % (i + 2)) for i in range(1000))
        # Send pings (never reading a reply) until the server gives up on this client.
        deadline = time.monotonic() + DEADLINE_S
        while not await metric(app.port, "gearhall_slow_consumer_aborts_total"):
            assert time.monotonic() < deadline, "never-reading client was not aborted"
            try:
                writer.write(pings)
                await writer.drain()
            except ConnectionError:  # the server dropped us; the metric says why
                continue
        # The connection is gone: reading what was delivered ends in EOF or a reset.
        with contextlib.suppress(ConnectionError):
            async with asyncio.timeout(DEADLINE_S):
                while await reader.read(1 << 16):
                    pass
        writer.close()
        assert await metric(app.port, "gearhall_slow_consumer_aborts_total") == 1
        # Only the bystander is left, and it and the tick keep going.
        deadline = time.monotonic() + DEADLINE_S
        while await metric(app.port, "gearhall_connections") != 1:
            assert time.monotonic() < deadline, "aborted connection still counted"
            await asyncio.sleep(0)
        await assert_serving(bystander)
        assert ticks_before is not None
        deadline = time.monotonic() + DEADLINE_S
        while (await metric(app.port, "gearhall_tick_duration_seconds_count") or 0) <= ticks_before:
            assert time.monotonic() < deadline, "the tick stopped"
            await asyncio.sleep(0)
        await bystander.close()


async def test_client_that_pipelines_and_reads_is_not_aborted(
    make_settings: Callable[..., Settings],
) -> None:
    """Backlog a reading client causes by pipelining is not a slow consumer: it reads."""
    settings = make_settings(outbound_queue_max=32, rate_limit_per_s=1e6, rate_limit_burst=10**6)
    async with serving(settings) as app:
        client = await hello_client(ws_url(app), "pipeliner")
        rids = list(range(1000, 1200))
        for rid in rids:
            await client.send_raw(client.encode({"t": "ping", "rid": rid}))
        replies = [await next_message(client) for _ in rids]
        assert [r["rid"] for r in replies] == rids
        assert {r["t"] for r in replies} == {"pong"}
        assert await metric(app.port, "gearhall_slow_consumer_aborts_total") == 0
        await client.close()


# --- handshake -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "offered", [None, ["gearhall.v2.json"], ["json"], ["gearhall.v1.xml", "chat"]]
)
async def test_missing_or_unknown_subprotocol_is_400(
    url: str, bystander: Client, offered: list[str] | None
) -> None:
    with pytest.raises(InvalidStatus) as info:
        await connect(url, subprotocols=offered)  # type: ignore[arg-type]
    assert info.value.response.status_code == 400
    await assert_serving(bystander)


async def test_known_subprotocols_are_negotiated(url: str) -> None:
    for subprotocol in (JSON, MSGPACK):
        ws = await connect(url, subprotocols=["chat", subprotocol])  # type: ignore[list-item]
        assert ws.subprotocol == subprotocol
        await ws.close()
