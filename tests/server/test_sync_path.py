"""Requests with a sync handler (``server.dispatch.SyncHandler``: ping and the player
intents) are handled without a coroutine on picows, right in the frame callback, and their
reply goes out from the journal's commit callback; every other request goes through the
pump task. On ``websockets`` the same handlers run behind a future. Whatever the path, a
connection's requests are handled one at a time, in order: these pipeline a mix of both
kinds of request without waiting for replies, in both durability modes, and check that
every reply comes back, in order, each acknowledging a state that is already durable.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import asyncpg
import pytest

from protocol.base import Request, ServerMessage
from protocol.messages import Ping, Pong
from server.app import App
from server.config import Settings
from server.dispatch import Dispatcher, Registration, requires_sync
from server.domains.accounts.rules import Permission
from server.metrics import Metrics
from tests.support.client import Client
from tests.support.serving import serving

DEADLINE_S = 20.0


def _kit(welcome: dict[str, Any]) -> tuple[int, int, int]:
    """The cap, the vest and the bread of the starter kit."""
    items = welcome["state"]["items"]

    def first(template: str) -> int:
        return min(int(i) for i, item in items.items() if item["template"] == template)

    return first("cloth_cap"), first("leather_vest"), first("bread")


def _burst(cap: int, vest: int, bread: int, rounds: int) -> list[dict[str, Any]]:
    """A split first (the pump: it creates an item), then rounds of equip, ping, move,
    stats (the pump), unequip, move back, ping: every one valid when run in order."""
    requests: list[dict[str, Any]] = [
        {"t": "inventory.split_stack", "item_id": bread, "qty": 1, "compartment": "backpack",
         "index": 23},
    ]  # fmt: skip
    for _ in range(rounds):
        requests += [
            {"t": "inventory.equip_item", "item_id": cap, "slot": "head"},
            {"t": "ping"},
            {"t": "inventory.move_item", "item_id": vest, "compartment": "backpack", "index": 12},
            {"t": "player.get_stats"},
            {"t": "inventory.unequip_item", "slot": "head"},
            {"t": "inventory.move_item", "item_id": vest, "compartment": "backpack", "index": 13},
            {"t": "ping"},
        ]
    return requests


async def _journaled_version(dsn: str, name: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        version = await conn.fetchval(
            "SELECT max(j.version) FROM journal j JOIN players p ON p.id = j.player_id "
            "WHERE p.name = $1",
            name,
        )
    finally:
        await conn.close()
    return int(version or 0)


@pytest.mark.parametrize("durability", ["durable", "write-behind"])
async def test_pipelined_requests_are_answered_in_order_on_either_path(
    make_settings: Callable[..., Settings], dsn: str, durability: str
) -> None:
    settings = make_settings(
        durability=durability, rate_limit_per_s=1e6, rate_limit_burst=1_000_000
    )
    async with serving(settings) as app:
        client = await Client.open(f"ws://127.0.0.1:{app.port}/")
        try:
            welcome = await client.hello("pipeline")
            cap, vest, bread = _kit(welcome)
            requests = _burst(cap, vest, bread, rounds=20)
            first_rid = 100
            for rid, request in enumerate(requests, start=first_rid):
                await client.send_raw(client.encode({**request, "rid": rid}))
            replies = []
            async with asyncio.timeout(DEADLINE_S):
                while len(replies) < len(requests):
                    replies.append(await client.recv())
        finally:
            await client.close()
        assert [r["rid"] for r in replies] == list(range(first_rid, first_rid + len(requests)))
        assert [r for r in replies if r["t"] == "error"] == []
        # One version per effect, in request order: each reply saw exactly the ones before.
        versions = [r["version"] for r in replies if r["t"] == "effects"]
        assert len(versions) == 1 + 4 * 20
        assert versions == sorted(set(versions))
        if durability == "durable":  # acknowledged means durable
            assert await _journaled_version(dsn, "pipeline") >= versions[-1]
        assert app.in_flight == 0


async def test_a_client_gone_with_a_request_in_flight_leaves_nothing_in_flight(
    app: App, url: str
) -> None:
    client = await Client.open(url)
    welcome = await client.hello("leaver")
    cap, _, _ = _kit(welcome)
    for rid in range(1, 51):  # equip/unequip, not waiting for any reply
        request = (
            {"t": "inventory.equip_item", "item_id": cap, "slot": "head"}
            if rid % 2
            else {"t": "inventory.unequip_item", "slot": "head"}
        )
        await client.send_raw(client.encode({**request, "rid": rid}))
    (session,) = app.sessions
    writer = session._writer
    assert writer is not None
    client.ws.transport.abort()
    await asyncio.wait([writer])  # cancelled once the server has finished the session
    await app.journal.flush()  # the commits of the requests it was handling, and their replies
    assert app.in_flight == 0
    # The server still serves: a new connection of the same player gets the durable state.
    again = await Client.open(url)
    try:
        welcome = await again.hello("leaver")
        assert welcome["t"] == "session.welcome"
        assert (await again.request("ping"))["t"] == "pong"
    finally:
        await again.close()


# --- the dispatcher's two ways of running a sync handler ---------------------------------------


class _Session:
    permissions = frozenset({Permission.SESSION})
    principal = object()


def _later(
    calls: list[Callable[[ServerMessage], None]],
) -> Callable[[Any, Request, Callable[[ServerMessage], None]], None]:
    def handler(session: Any, msg: Request, done: Callable[[ServerMessage], None]) -> None:
        calls.append(done)

    return handler


def _dispatcher(registration: Registration) -> Dispatcher:
    return Dispatcher({Ping: registration}, Metrics())


def test_a_registration_has_exactly_one_kind_of_handler() -> None:
    with pytest.raises(ValueError, match="either a handler or a sync handler"):
        _dispatcher(Registration(None, Permission.SESSION))


async def test_a_sync_handler_answering_later_is_awaited_on_the_coroutine_path() -> None:
    def answer_soon(session: Any, msg: Request, done: Callable[[ServerMessage], None]) -> None:
        asyncio.get_running_loop().call_soon(done, Pong(rid=msg.rid, tick=3))

    dispatcher = _dispatcher(requires_sync(Permission.SESSION, answer_soon))
    assert await dispatcher.dispatch(_Session(), Ping(rid=7)) == Pong(rid=7, tick=3)  # type: ignore[arg-type]


def test_a_sync_handler_answering_later_calls_done_once_with_the_reply() -> None:
    calls: list[Callable[[ServerMessage], None]] = []
    got: list[ServerMessage] = []
    dispatcher = _dispatcher(requires_sync(Permission.SESSION, _later(calls)))
    assert dispatcher.dispatch_sync(_Session(), Ping(rid=7), got.append) is None  # type: ignore[arg-type]
    assert got == []
    calls[0](Pong(rid=7, tick=3))
    assert got == [Pong(rid=7, tick=3)]


def test_a_sync_handler_that_raises_is_an_error_reply_at_once() -> None:
    def refuse(session: Any, msg: Request, done: Callable[[ServerMessage], None]) -> None:
        raise PermissionError("boom")

    dispatcher = _dispatcher(requires_sync(Permission.SESSION, refuse))
    got: list[ServerMessage] = []
    reply = dispatcher.dispatch_sync(_Session(), Ping(rid=9), got.append)  # type: ignore[arg-type]
    assert reply is not None and reply.code == "internal" and reply.rid == 9  # type: ignore[attr-defined]
    assert got == []


def test_a_sync_handler_without_the_permission_is_refused() -> None:
    calls: list[Callable[[ServerMessage], None]] = []
    dispatcher = _dispatcher(requires_sync(Permission.SESSION, _later(calls)))

    class Nobody:
        permissions: frozenset[Permission] = frozenset()
        principal = None

    reply = dispatcher.dispatch_sync(Nobody(), Ping(rid=1), lambda r: None)  # type: ignore[arg-type]
    assert reply is not None and reply.code == "unauthenticated"  # type: ignore[attr-defined]
    assert calls == []
