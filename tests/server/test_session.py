"""Sessions over real sockets: resume, pushes between sessions of one player, inventory
errors as the client sees them, HTTP endpoints and authentication."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from server.app import App
from server.config import Settings
from tests.support.client import JSON, MSGPACK, Client
from tests.support.http import http_get
from tests.support.serving import serving

ERROR_KEYS = {"t", "rid", "code", "message", "details"}
DEADLINE_S = 10.0

# Starter kit order (sim/data/templates.toml): backpack cells 0..8; the belt holds potions.
CLOTH_CAP, IRON_HELM, LEATHER_VEST, COPPER_RING = 0, 1, 2, 3
SHORT_SWORD, BUCKLER, BREAD, TRAINING_MANUAL = 5, 6, 7, 8


# --- helpers -------------------------------------------------------------------------------


def ws_url(app: App) -> str:
    return f"ws://127.0.0.1:{app.port}/"


async def hello_client(
    url: str, name: str, subprotocol: str = JSON, resume: int | None = None
) -> tuple[Client, dict[str, Any]]:
    client = await Client.open(url, subprotocol)
    welcome = await client.hello(name, resume=resume)
    assert welcome["t"] == "session.welcome", welcome
    return client, welcome


def backpack(welcome: dict[str, Any]) -> list[int | None]:
    cells: list[int | None] = welcome["state"]["compartments"]["backpack"]
    return cells


def assert_error(reply: dict[str, Any], code: str, rid: int | None = None) -> dict[str, Any]:
    assert set(reply) == ERROR_KEYS, reply
    assert reply["t"] == "error"
    assert reply["code"] == code, reply
    if rid is not None:
        assert reply["rid"] == rid
    details: dict[str, Any] = reply["details"]
    return details


def samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, float(sample.value)))
    return found


async def force_snapshot(app: App, player_id: int) -> None:
    """Snapshot the player at its current version (a tick may already have one in flight)."""
    live = app.hub.players[player_id]
    deadline = time.monotonic() + DEADLINE_S
    while live.snapshot_version != live.state.version:
        assert time.monotonic() < deadline, "snapshot never caught up"
        app.hub.snapshot_all()
        await app.hub.drain_snapshots()
        await asyncio.sleep(0)


# --- ticks ---------------------------------------------------------------------------------


async def test_a_due_tick_starts_from_the_request_path(
    make_settings: Callable[..., Settings],
) -> None:
    """Under load the event loop runs its timers late, so a message that arrives after a
    tick's deadline starts the tick itself (sim/driver.py). With the driver's own timer
    stopped, ticks advance only that way."""
    async with serving(make_settings(tick_hz=1000)) as app:
        client, _ = await hello_client(ws_url(app), "ticker")
        app.driver.stop()
        assert app._driver_task is not None
        await app._driver_task  # the timer loop has ended
        before = app.driver.current
        while time.monotonic() < app.driver.due:  # at most 1 ms; the loop runs nothing
            pass
        assert app.driver.current == before  # nothing ticks by itself any more
        reply = await client.request("ping")
        assert reply["t"] == "pong", reply
        assert app.driver.current > before
        await client.close()


# --- resume --------------------------------------------------------------------------------


@pytest.mark.parametrize("resume_buffer", [256, 0], ids=["from-memory", "from-journal"])
async def test_resume_gets_exactly_the_missed_effects(
    make_settings: Callable[..., Settings], resume_buffer: int
) -> None:
    async with serving(make_settings(resume_buffer=resume_buffer)) as app:
        a, welcome = await hello_client(ws_url(app), "resumer")
        seen = welcome["version"]
        await a.close()
        # Another session of the same player changes things while A is away.
        b, b_welcome = await hello_client(ws_url(app), "resumer", MSGPACK)
        assert b_welcome["version"] == seen
        cells = backpack(b_welcome)
        missed: list[dict[str, Any]] = []
        for t, fields in [
            ("inventory.equip_item", {"item_id": cells[CLOTH_CAP], "slot": "head"}),
            (
                "inventory.move_item",
                {"item_id": cells[BREAD], "compartment": "backpack", "index": 20},
            ),
            ("inventory.equip_item", {"item_id": cells[LEATHER_VEST], "slot": "chest"}),
        ]:
            reply = await b.request(t, **fields)
            assert reply["t"] == "effects", reply
            missed.extend(reply["effects"])
            last = reply["version"]
        assert last == seen + len(missed)
        a2, resumed = await hello_client(ws_url(app), "resumer", resume=seen)
        assert resumed["resumed"] is True
        assert resumed["state"] is None
        assert resumed["version"] == last
        assert resumed["effects"] == missed  # JSON and msgpack decode to the same dicts
        # Resuming at the current version: nothing missed, still a resume.
        a3, current = await hello_client(ws_url(app), "resumer", resume=last)
        assert current["resumed"] is True
        assert current["effects"] == []
        assert current["version"] == last
        for client in (a2, a3, b):
            await client.close()


async def test_resume_from_a_wrapped_buffer_gets_exactly_the_missed_effects(
    make_settings: Callable[..., Settings],
) -> None:
    """The resume buffer holds only bytes and finds versions by position (the newest is the
    durable version): once it has wrapped, a resume inside it must still get exactly the
    effects after its version, and one just older than it must come from the journal."""
    async with serving(make_settings(resume_buffer=4)) as app:
        a, welcome = await hello_client(ws_url(app), "wrapper")
        cells = backpack(welcome)
        versions, effects = [welcome["version"]], []
        for index, target in [(CLOTH_CAP, 10), (IRON_HELM, 11), (BREAD, 12), (BUCKLER, 13)]:
            reply = await a.request(
                "inventory.move_item", item_id=cells[index], compartment="backpack", index=target
            )
            assert reply["t"] == "effects", reply
            assert len(reply["effects"]) == 1, reply  # one version per move
            effects.extend(reply["effects"])
            versions.append(reply["version"])
        live = app.hub.players[welcome["player_id"]]
        # Wrapped: the starter kit's effects are gone; the four moves fill it.
        assert len(live.recent) == 4
        assert live.durable_version - len(live.recent) == versions[0]
        for k, seen in enumerate(versions):
            other, resumed = await hello_client(ws_url(app), "wrapper", resume=seen)
            assert resumed["resumed"] is True
            assert resumed["effects"] == effects[k:], seen
            await other.close()
        # One older than the buffer holds: from the journal, still exact.
        b, fallback = await hello_client(ws_url(app), "wrapper", resume=versions[0] - 1)
        assert fallback["resumed"] is True
        assert len(fallback["effects"]) == len(effects) + 1
        assert fallback["effects"][1:] == effects
        for client in (a, b):
            await client.close()


async def test_resume_older_than_buffer_and_journal_gets_full_state(
    make_settings: Callable[..., Settings], dsn: str
) -> None:
    settings = make_settings(resume_buffer=2, journal_keep_versions=0, snapshot_interval_s=0.05)
    async with serving(settings) as app:
        a, welcome = await hello_client(ws_url(app), "forgotten")
        seen = welcome["version"]
        await a.close()
        b, _ = await hello_client(ws_url(app), "forgotten")
        cells = backpack(welcome)
        for index, target in [(CLOTH_CAP, 10), (IRON_HELM, 11), (BREAD, 12), (BUCKLER, 13)]:
            reply = await b.request(
                "inventory.move_item", item_id=cells[index], compartment="backpack", index=target
            )
            assert reply["t"] == "effects", reply
        last = reply["version"]
        await force_snapshot(app, welcome["player_id"])
        conn = await asyncpg.connect(dsn)
        try:
            kept = await conn.fetchval(
                "SELECT count(*) FROM journal WHERE player_id = $1", welcome["player_id"]
            )
        finally:
            await conn.close()
        assert kept == 0  # pruned: the missed effects exist nowhere any more
        fresh, full = await hello_client(ws_url(app), "forgotten")
        a2, fallback = await hello_client(ws_url(app), "forgotten", resume=seen)
        assert fallback["resumed"] is False
        assert fallback["effects"] is None
        assert fallback["version"] == last
        assert fallback["state"] == full["state"]
        assert fallback["state"]["version"] == last
        assert backpack(fallback)[10:14] == [
            cells[i] for i in (CLOTH_CAP, IRON_HELM, BREAD, BUCKLER)
        ]
        for client in (a2, b, fresh):
            await client.close()


async def test_resume_from_the_future_gets_full_state(url: str) -> None:
    a, welcome = await hello_client(url, "timetraveller")
    await a.close()
    b, future = await hello_client(url, "timetraveller", resume=welcome["version"] + 100)
    assert future["resumed"] is False
    assert future["effects"] is None
    assert future["version"] == welcome["version"]
    assert future["state"] == welcome["state"]
    await b.close()


# --- pushes between sessions ---------------------------------------------------------------


async def test_change_on_one_session_is_pushed_to_the_other(url: str) -> None:
    a, a_welcome = await hello_client(url, "twin")
    b, b_welcome = await hello_client(url, "twin", MSGPACK)
    stranger, _ = await hello_client(url, "stranger")
    assert b_welcome["version"] == a_welcome["version"]
    ring = backpack(a_welcome)[COPPER_RING]
    reply = await a.request("inventory.equip_item", item_id=ring, slot="ring1")
    assert reply["t"] == "effects"
    async with asyncio.timeout(5):
        push = b.decode(await b.ws.recv())
    assert push == {"t": "player.delta", "seq": reply["version"], "effects": reply["effects"]}
    assert push["seq"] - len(push["effects"]) == b_welcome["version"]
    # The same tick flush that reached B would have queued A's copy before this pong.
    assert (await a.request("ping"))["t"] == "pong"
    assert a.pushes.empty(), "the origin session received its own delta"
    assert (await stranger.request("ping"))["t"] == "pong"
    assert stranger.pushes.empty(), "another player received the delta"
    # And the other way round.
    reply = await b.request("inventory.unequip_item", slot="ring1")
    assert reply["t"] == "effects"
    async with asyncio.timeout(5):
        push = a.decode(await a.ws.recv())
    assert push == {"t": "player.delta", "seq": reply["version"], "effects": reply["effects"]}
    for client in (a, b, stranger):
        await client.close()


# --- inventory errors as the client sees them ----------------------------------------------


async def test_equip_errors_reach_the_client(url: str) -> None:
    client, welcome = await hello_client(url, "clumsy")
    other, other_welcome = await hello_client(url, "bystander")
    cells = backpack(welcome)

    details = assert_error(
        await client.request("inventory.equip_item", rid=1, item_id=999_999_999, slot="head"),
        "not_found",
        rid=1,
    )
    assert details["item_id"] == 999_999_999
    # Someone else's item is as good as no item.
    theirs = backpack(other_welcome)[CLOTH_CAP]
    details = assert_error(
        await client.request("inventory.equip_item", rid=2, item_id=theirs, slot="head"),
        "not_found",
        rid=2,
    )
    assert details["item_id"] == theirs

    details = assert_error(
        await client.request("inventory.equip_item", rid=3, item_id=cells[CLOTH_CAP], slot="chest"),
        "conflict",
        rid=3,
    )
    assert details["allowed_slots"] == ["head"]
    assert details["slot"] == "chest"
    details = assert_error(
        await client.request("inventory.equip_item", item_id=cells[COPPER_RING], slot="neck"),
        "conflict",
    )
    assert details["allowed_slots"] == ["ring1", "ring2"]

    # The short sword starts a 1 s cooldown on its slot.
    reply = await client.request(
        "inventory.equip_item", item_id=cells[SHORT_SWORD], slot="main_hand"
    )
    assert reply["t"] == "effects", reply
    sword = cells[SHORT_SWORD]
    moved, cooldown = reply["effects"]
    assert moved == {
        "e": "items_moved",
        "reason": "equip",
        "moves": [[sword, ["backpack", SHORT_SWORD], ["equipment", "main_hand"]]],
    }
    assert cooldown["e"] == "cooldown_started"
    assert cooldown["key"] == "equip:main_hand"
    version = reply["version"]
    # Equipping it again is refused because it is already equipped (sim/rules.py edge case).
    details = assert_error(
        await client.request("inventory.equip_item", item_id=cells[SHORT_SWORD], slot="main_hand"),
        "conflict",
    )
    assert details["slot"] == "main_hand"
    # Taking it off again is what the cooldown blocks.
    details = assert_error(
        await client.request("inventory.unequip_item", rid=4, slot="main_hand"),
        "cooldown_active",
        rid=4,
    )
    assert details["group"] == "equip:main_hand"
    assert 0 < details["retry_after_ms"] <= 1000 + 1000 // welcome["tick_hz"]
    assert details["ready_in_ms"] == details["retry_after_ms"]
    assert details["ready_at_ms"] == cooldown["ready_at_ms"]

    # The iron helm needs character level 2; the details say what is missing.
    details = assert_error(
        await client.request("inventory.equip_item", rid=5, item_id=cells[IRON_HELM], slot="head"),
        "requirements_not_met",
        rid=5,
    )
    assert details["missing"] == {"level": {"required": 2, "current": 1}}
    assert details["template"] == "iron_helm"

    # No error changed anything: the next change is exactly one version on.
    reply = await client.request("inventory.equip_item", item_id=cells[CLOTH_CAP], slot="head")
    assert reply["version"] == version + 1
    await client.close()
    await other.close()


async def test_equip_into_a_slot_on_cooldown_is_refused(url: str) -> None:
    client, welcome = await hello_client(url, "duelist")
    cells = backpack(welcome)
    reply = await client.request(
        "inventory.equip_item", item_id=cells[SHORT_SWORD], slot="off_hand"
    )
    assert reply["t"] == "effects", reply
    details = assert_error(
        await client.request(
            "inventory.equip_item", rid=9, item_id=cells[BUCKLER], slot="off_hand"
        ),
        "cooldown_active",
        rid=9,
    )
    assert details["group"] == "equip:off_hand"
    assert details["retry_after_ms"] > 0
    # Other slots are not affected by that cooldown.
    reply = await client.request("inventory.equip_item", item_id=cells[CLOTH_CAP], slot="head")
    assert reply["t"] == "effects"
    await client.close()


async def test_unequip_and_move_errors_reach_the_client(url: str) -> None:
    client, welcome = await hello_client(url, "mover")
    cells = backpack(welcome)
    details = assert_error(await client.request("inventory.unequip_item", slot="feet"), "not_found")
    assert details["slot"] == "feet"

    reply = await client.request("inventory.equip_item", item_id=cells[CLOTH_CAP], slot="head")
    assert reply["t"] == "effects"
    version = reply["version"]
    details = assert_error(
        await client.request("inventory.unequip_item", slot="head", index=IRON_HELM), "conflict"
    )
    assert details["index"] == IRON_HELM
    assert details["occupant"] == cells[IRON_HELM]
    details = assert_error(
        await client.request("inventory.unequip_item", slot="head", compartment="vault"),
        "not_found",
    )
    assert details["compartment"] == "vault"

    details = assert_error(
        await client.request(
            "inventory.move_item", item_id=999_999_999, compartment="backpack", index=3
        ),
        "not_found",
    )
    assert details["item_id"] == 999_999_999
    details = assert_error(
        await client.request(
            "inventory.move_item", item_id=cells[CLOTH_CAP], compartment="backpack", index=9
        ),
        "conflict",
    )
    assert details["slot"] == "head"
    details = assert_error(
        await client.request(
            "inventory.move_item", item_id=cells[BREAD], compartment="backpack", index=24
        ),
        "bad_request",
    )
    assert details["size"] == 24
    details = assert_error(
        await client.request(
            "inventory.move_item", item_id=cells[BREAD], compartment="vault", index=0
        ),
        "not_found",
    )
    assert details["compartment"] == "vault"

    reply = await client.request(
        "inventory.move_item", item_id=cells[BREAD], compartment="backpack", index=23
    )
    assert reply["t"] == "effects"
    assert reply["version"] == version + 1
    await client.close()


# --- HTTP ----------------------------------------------------------------------------------


async def test_http_endpoints(app: App, url: str) -> None:
    client, welcome = await hello_client(url, "observer")  # journals the starter kit
    assert (await client.request("ping"))["t"] == "pong"

    assert await http_get(app.port, "/healthz") == (200, "ok\n")
    assert await http_get(app.port, "/healthz?probe=1") == (200, "ok\n")
    assert await http_get(app.port, "/readyz") == (200, "ready\n")
    status, _ = await http_get(app.port, "/nope")
    assert status == 404

    deadline = time.monotonic() + DEADLINE_S
    while True:
        status, text = await http_get(app.port, "/metrics")
        assert status == 200
        found = samples(text)
        ticks = found.get("gearhall_tick_duration_seconds_count", [({}, 0.0)])[0][1]
        if ticks > 0:
            break
        assert time.monotonic() < deadline, "no tick observed"
        await asyncio.sleep(0)
    assert found["gearhall_connections"] == [({}, 1.0)]
    # Every tick that ran also says how late it started.
    lateness = found["gearhall_tick_lateness_seconds_count"][0][1]
    assert lateness >= ticks > 0
    assert ({"tag": "ping"}, 1.0) in found["gearhall_request_duration_seconds_count"]
    assert found["gearhall_journal_batch_rows_count"][0][1] >= 1
    # the starter kit: one journal row per effect
    assert found["gearhall_journal_batch_rows_sum"][0][1] >= welcome["version"]
    (in_use,) = found["gearhall_db_pool_connections_in_use"]
    assert in_use[0] == {}
    assert 0 <= in_use[1] <= app.settings.db_pool_size
    await client.close()


# --- authentication ------------------------------------------------------------------------


async def test_dev_auth_off_refuses_hello(make_settings: Callable[..., Settings]) -> None:
    async with serving(make_settings(dev_auth=False)) as app:
        client = await Client.open(ws_url(app))
        reply = await client.request("session.hello", rid=5, token="dev:alice")
        assert_error(reply, "unauthenticated", rid=5)
        # Still no session.
        assert_error(await client.request("ping", rid=6), "unauthenticated", rid=6)
        await client.close()


BAD_TOKENS = ["dev:", "dev", "prod:alice", "dev:bad name", "dev:" + "a" * 65, "dev:ümlaut", "alice"]


async def test_bad_dev_token_is_unauthenticated(url: str, dsn: str) -> None:
    client = await Client.open(url)
    for rid, token in enumerate(BAD_TOKENS, start=10):
        reply = await client.request("session.hello", rid=rid, token=token)
        assert reply.get("code") == "unauthenticated", (token, reply)
        assert_error(reply, "unauthenticated", rid)
    assert_error(await client.request("ping", rid=9), "unauthenticated", 9)
    await client.close()
    conn = await asyncpg.connect(dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM players") == 0
    finally:
        await conn.close()


async def test_loaded_players_are_moved_out_of_the_collectors_sight(
    make_settings: Callable[..., Settings],
) -> None:
    """After a login, a tick freezes what is alive (hub._freeze_loaded), so the player's
    objects are not traversed by later collections; the session still works afterwards."""
    import gc

    async with serving(make_settings(gc_freeze_loaded_s=0.01)) as app:
        before = gc.get_freeze_count()
        client, welcome = await hello_client(ws_url(app), "frozen")
        # The login is done: the next tick freezes (the driver's, or this one, run here).
        app.hub.on_tick(app.tick())
        assert gc.get_freeze_count() > before
        cells = backpack(welcome)
        reply = await client.request("inventory.equip_item", item_id=cells[CLOTH_CAP], slot="head")
        assert reply["t"] == "effects", reply
        await client.close()
