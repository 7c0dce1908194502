"""The game model over real sockets: every operation end to end in both encodings, stats and
encumbrance, cooldowns and their ``player.cooldown_ready`` pushes, admin grants, level-ups,
restarts — and a client-side ``protocol.mirror.Mirror`` that ends byte-identical to the server.

Numbers from the shipped catalog (``sim/data/templates.toml``): base strength 10, so carry
capacity 30,000 g (burdened above it, overloaded above 45,000 g); the starter kit weighs
9,670 g. Tests that need short cooldowns or buffs run an ``App`` with a catalog tuned from the
shipped one (:func:`tuned`), given to the ``App`` directly.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from typing import Any

import msgspec
import pytest

from protocol.messages import AnyServerMessage, CooldownReady, PlayerDelta, SessionWelcome
from protocol.mirror import Mirror, encode_state
from protocol.model import AnyEffect, PlayerState
from server.app import App
from server.config import Settings
from sim.templates import DEFAULT_TEMPLATES, Catalog, parse_templates
from tests.support.client import JSON, MSGPACK, Client
from tests.support.http import http_get
from tests.support.serving import serving

DEADLINE_S = 10.0
ENCODINGS = [(JSON, MSGPACK), (MSGPACK, JSON)]
ENCODING_IDS = ["json+msgpack", "msgpack+json"]

# Starter kit: backpack cells 0..8 in this order; the belt's cell 0 holds 3 healing potions.
KIT = (
    "cloth_cap",
    "iron_helm",
    "leather_vest",
    "copper_ring",
    "copper_ring2",
    "short_sword",
    "buckler",
    "bread",
    "training_manual",
)
KIT_WEIGHT = 9_670
BASE_STATS = {"strength": 10, "agility": 10, "stamina": 10, "armor": 0, "max_health": 100}


# --- helpers -------------------------------------------------------------------------------


def tuned(**templates: dict[str, str]) -> Catalog:
    """The shipped catalog with some template fields replaced (values are TOML text), parsed
    and validated like any catalog file."""
    text = DEFAULT_TEMPLATES.read_text(encoding="utf-8")
    head, *blocks = text.split("[[template]]\n")
    pending = dict(templates)
    for position, block in enumerate(blocks):
        found = re.match(r'id = "([a-z0-9_]+)"\n', block)
        assert found, block
        text = block
        for key, value in pending.pop(found[1], {}).items():
            text, count = re.subn(rf"^{key} = .*$", f"{key} = {value}", text, count=1, flags=re.M)
            assert count == 1, f"template {found[1]} has no `{key}` line to tune"
        blocks[position] = text
    assert not pending, f"no such templates: {sorted(pending)}"
    return parse_templates(head + "".join(f"[[template]]\n{b}" for b in blocks), "tuned.toml")


def ws_url(app: App) -> str:
    return f"ws://127.0.0.1:{app.port}/"


def typed(msg: dict[str, Any]) -> AnyServerMessage:
    """A server message as the protocol's Struct: checks its shape in either encoding."""
    converted: AnyServerMessage = msgspec.convert(msg, AnyServerMessage, str_keys=True)
    return converted


def effects_of(reply: dict[str, Any]) -> list[AnyEffect]:
    return [msgspec.convert(e, AnyEffect) for e in reply["effects"]]


def assert_error(reply: dict[str, Any], code: str) -> dict[str, Any]:
    assert reply["t"] == "error", reply
    assert reply["code"] == code, reply
    details: dict[str, Any] = reply["details"]
    return details


async def metric(port: int, name: str) -> float | None:
    status, text = await http_get(port, "/metrics")
    assert status == 200
    found = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(found[1]) if found else None


class Seat:
    """One session of a player with a client-side mirror: its welcome's state, then every
    effects reply it gets and every ``player.delta`` pushed to it, applied in order."""

    def __init__(self, client: Client, welcome: dict[str, Any]) -> None:
        self.client = client
        self.welcome = welcome
        hello = typed(welcome)
        assert isinstance(hello, SessionWelcome) and hello.state is not None, welcome
        self.mirror = Mirror(hello.state)
        self.deltas: list[dict[str, Any]] = []
        self.ready: list[dict[str, Any]] = []  # player.cooldown_ready pushes, in order

    @classmethod
    async def open(
        cls, url: str, name: str, subprotocol: str = JSON, *, admin: bool = False
    ) -> Seat:
        client = await Client.open(url, subprotocol)
        token = f"dev-admin:{name}" if admin else f"dev:{name}"
        welcome = await client.request("session.hello", token=token)
        assert welcome["t"] == "session.welcome", welcome
        assert welcome["resumed"] is False
        return cls(client, welcome)

    @property
    def state(self) -> PlayerState:
        return self.mirror.state

    @property
    def version(self) -> int:
        return self.mirror.state.version

    def cells(self, compartment: str = "backpack") -> list[int | None]:
        return self.mirror.state.compartments[compartment]

    def kit(self, name: str) -> int:
        item_id = self.welcome["state"]["compartments"]["backpack"][KIT.index(name)]
        assert isinstance(item_id, int)
        return item_id

    async def request(self, t: str, **fields: Any) -> dict[str, Any]:
        """Send, and apply the reply's effects to the mirror (it must continue it)."""
        async with asyncio.timeout(DEADLINE_S):
            reply = await self.client.request(t, **fields)
        typed(reply)
        if reply["t"] == "effects":
            before = self.version
            assert self.mirror.apply_effects(reply["version"], effects_of(reply)), (
                f"reply v{reply['version']} with {len(reply['effects'])} effects does not "
                f"continue the mirror at v{before}"
            )
        return reply

    async def ok(self, t: str, **fields: Any) -> list[dict[str, Any]]:
        """A request that must change state; its effects (as dicts)."""
        before = self.version
        reply = await self.request(t, **fields)
        assert reply["t"] == "effects", reply
        assert reply["effects"], reply
        assert reply["version"] == before + len(reply["effects"])
        effects: list[dict[str, Any]] = reply["effects"]
        return effects

    async def next_push(self) -> dict[str, Any]:
        """The next push (deltas are applied to the mirror, cooldown_ready recorded)."""
        if self.client.pushes.empty():
            async with asyncio.timeout(DEADLINE_S):
                msg = self.client.decode(await self.client.ws.recv())
            assert "rid" not in msg, f"a reply nobody asked for: {msg}"
        else:
            msg = self.client.pushes.get_nowait()
        push = typed(msg)
        if isinstance(push, PlayerDelta):
            assert self.mirror.apply_effects(push.seq, push.effects), (
                f"delta seq {push.seq} with {len(push.effects)} effects does not continue "
                f"the mirror at v{self.version}"
            )
            self.deltas.append(msg)
        else:
            assert isinstance(push, CooldownReady), msg
            assert push.seq == self.version, (msg, self.version)
            self.ready.append(msg)
        return msg

    async def catch_up(self, version: int) -> None:
        while self.version < version:
            await self.next_push()
        assert self.version == version

    async def expect_ready(self) -> dict[str, Any]:
        """The next ``player.cooldown_ready`` push (deltas before it are applied)."""
        seen = len(self.ready)
        while len(self.ready) == seen:
            await self.next_push()
        return self.ready[-1]

    async def no_ready_pending(self) -> None:
        """A ping round trip: anything a tick queued earlier arrives before the pong."""
        seen = len(self.ready)
        assert (await self.request("ping"))["t"] == "pong"
        while not self.client.pushes.empty():
            await self.next_push()
        assert self.ready[seen:] == [], f"unexpected cooldown_ready pushes {self.ready[seen:]}"

    async def close(self) -> None:
        await self.client.close()


async def fresh_state(url: str, name: str, subprotocol: str = JSON) -> PlayerState:
    seat = await Seat.open(url, name, subprotocol)
    await seat.close()
    return seat.state


async def assert_mirrors_server(url: str, name: str, *seats: Seat) -> None:
    """Every seat's mirror is byte-identical (``encode_state``) to a new hello's state."""
    for subprotocol in (JSON, MSGPACK):
        server = encode_state(await fresh_state(url, name, subprotocol))
        for seat in seats:
            assert encode_state(seat.state) == server, (
                f"mirror v{seat.version} differs from the server's state\n"
                f"mirror: {seat.state}\nserver: {msgspec.msgpack.decode(server)}"
            )


async def wait_until_server_ms(app: App, at_ms: int) -> None:
    """Wait until the server's clock reaches ``at_ms``. Time passing has no event to wait on,
    so this polls the clock (one tick at a time) until a deadline."""
    deadline = time.monotonic() + DEADLINE_S
    while app.tick() * app.driver.tick_ms < at_ms:
        assert time.monotonic() < deadline, "the server clock never got there"
        await asyncio.sleep(app.driver.tick_ms / 1000)


def move(item_id: int, src: tuple[str, int | str], dst: tuple[str, int | str]) -> list[Any]:
    return [item_id, list(src), list(dst)]


def items_moved(reason: str, *moves: list[Any]) -> dict[str, Any]:
    return {"e": "items_moved", "reason": reason, "moves": list(moves)}


# --- every operation, both encodings, a second session mirroring ---------------------------


@pytest.mark.parametrize(("mine", "other"), ENCODINGS, ids=ENCODING_IDS)
async def test_every_operation_end_to_end(url: str, mine: str, other: str) -> None:
    """One session does everything; another session of the same player (the other encoding)
    receives each change as a ``player.delta`` with exactly the reply's effects; both mirrors
    end byte-identical to the server's state."""
    a = await Seat.open(url, "hero", mine)
    b = await Seat.open(url, "hero", other)
    assert b.version == a.version
    cap, helm, vest = a.kit("cloth_cap"), a.kit("iron_helm"), a.kit("leather_vest")
    ring, ring2, sword = a.kit("copper_ring"), a.kit("copper_ring2"), a.kit("short_sword")
    buckler, bread, manual = a.kit("buckler"), a.kit("bread"), a.kit("training_manual")
    potion = a.cells("belt")[0]
    assert potion is not None and a.state.items[potion].template == "healing_potion"

    async def act(t: str, **fields: Any) -> list[dict[str, Any]]:
        effects = await a.ok(t, **fields)
        await b.catch_up(a.version)
        assert b.deltas[-1] == {"t": "player.delta", "seq": a.version, "effects": effects}
        return effects

    # equip, swap, unequip
    assert await act("inventory.equip_item", item_id=cap, slot="head") == [
        items_moved("equip", move(cap, ("backpack", 0), ("equipment", "head")))
    ]
    await act("inventory.equip_item", item_id=vest, slot="chest")
    await act("inventory.equip_item", item_id=ring, slot="ring1")
    assert await act("inventory.equip_item", item_id=ring2, slot="ring1") == [
        items_moved(
            "swap",
            move(ring2, ("backpack", 4), ("equipment", "ring1")),
            move(ring, ("equipment", "ring1"), ("backpack", 4)),
        )
    ]
    details = assert_error(
        await a.request("inventory.unequip_item", slot="ring1", compartment="belt"), "conflict"
    )
    assert details["accepts"] == ["consumable"]
    assert await act("inventory.unequip_item", slot="ring1", index=20) == [
        items_moved("unequip", move(ring2, ("equipment", "ring1"), ("backpack", 20)))
    ]
    details = assert_error(
        await a.request("inventory.equip_item", item_id=helm, slot="head"), "requirements_not_met"
    )
    assert details["missing"] == {"level": {"required": 2, "current": 1}}
    moved, cooldown = await act("inventory.equip_item", item_id=sword, slot="main_hand")
    assert moved["moves"] == [move(sword, ("backpack", 5), ("equipment", "main_hand"))]
    assert cooldown["e"] == "cooldown_started" and cooldown["key"] == "equip:main_hand"
    assert cooldown["ready_at_ms"] % (1000 // a.welcome["tick_hz"]) == 0

    # move and swap, across compartments; the belt takes consumables only
    await act("inventory.move_item", item_id=bread, compartment="backpack", index=10)
    assert await act("inventory.move_item", item_id=manual, compartment="backpack", index=10) == [
        items_moved(
            "swap",
            move(manual, ("backpack", 8), ("backpack", 10)),
            move(bread, ("backpack", 10), ("backpack", 8)),
        )
    ]
    await act("inventory.move_item", item_id=bread, compartment="belt", index=1)
    details = assert_error(
        await a.request("inventory.move_item", item_id=helm, compartment="belt", index=2),
        "conflict",
    )
    assert details["category"] == "armor"

    # split and merge
    stack_changed, created = await act(
        "inventory.split_stack", item_id=bread, qty=2, compartment="backpack", index=11
    )
    assert stack_changed == {"e": "stack_changed", "item_id": bread, "qty": 3}
    new_bread = created["item"]["id"]
    assert new_bread not in a.welcome["state"]["items"] and new_bread not in (potion, bread)
    assert created == {
        "e": "item_created",
        "item": {"id": new_bread, "template": "bread", "qty": 2, "charges": None, "bound": False},
        "dst": ["backpack", 11],
        "grant_key": None,
    }
    details = assert_error(
        await a.request(
            "inventory.split_stack", item_id=bread, qty=3, compartment="backpack", index=12
        ),
        "bad_request",
    )
    assert details["qty"] == 3
    assert await act("inventory.merge_stacks", item_id=new_bread, into_item_id=bread) == [
        {"e": "stack_changed", "item_id": bread, "qty": 5},
        {"e": "item_destroyed", "item_id": new_bread, "src": ["backpack", 11], "reason": "merged"},
    ]
    details = assert_error(
        await a.request("inventory.merge_stacks", item_id=potion, into_item_id=bread), "conflict"
    )
    assert details["into_template"] == "bread"

    # sort: category (weapon, shield, armor, jewelry, consumable...), template, bigger first
    (sorted_,) = await act("inventory.sort_compartment", compartment="backpack")
    assert sorted_["reason"] == "sort"
    assert a.cells() == [buckler, helm, ring, ring2, manual] + [None] * 19
    reply = await a.request("inventory.sort_compartment", compartment="backpack")
    assert reply == {"t": "effects", "rid": reply["rid"], "version": a.version, "effects": []}
    await act("inventory.sort_compartment", compartment="belt")
    assert a.cells("belt") == [bread, potion, None, None]  # "bread" < "healing_potion"

    # use: a potion (stack, heal, XP, shared cooldown), the manual (charges, XP, level-up)
    effects = await act("inventory.use_item", item_id=potion)
    ready_at = effects[-1]["ready_at_ms"]
    assert effects == [
        {"e": "stack_changed", "item_id": potion, "qty": 2},
        {"e": "health_changed", "health": 100},  # already at full health: still used
        {"e": "xp_gained", "skill": "alchemy", "amount": 5, "total": 5},
        {"e": "cooldown_started", "key": "healing_potion", "ready_at_ms": ready_at},
    ]
    details = assert_error(await a.request("inventory.use_item", item_id=potion), "cooldown_active")
    assert details["group"] == "healing_potion"
    assert details["ready_at_ms"] == ready_at
    assert 0 < details["ready_in_ms"] <= 30_000
    effects = await act("inventory.use_item", item_id=manual)
    assert effects[:3] == [
        {"e": "charges_changed", "item_id": manual, "charges": 2},
        {"e": "xp_gained", "skill": "swordsmanship", "amount": 150, "total": 150},
        {"e": "skill_leveled_up", "skill": "swordsmanship", "level": 2},
    ]
    assert effects[3]["key"] == "item:training_manual" and len(effects) == 4
    details = assert_error(await a.request("inventory.use_item", item_id=helm), "conflict")
    assert details["template"] == "iron_helm"

    # destroy: part of a stack, a whole one; never what is equipped
    assert await act("inventory.destroy_item", item_id=bread, qty=2) == [
        {"e": "stack_changed", "item_id": bread, "qty": 3}
    ]
    assert await act("inventory.destroy_item", item_id=bread) == [
        {"e": "item_destroyed", "item_id": bread, "src": ["belt", 0], "reason": "destroyed"}
    ]
    details = assert_error(await a.request("inventory.destroy_item", item_id=cap), "conflict")
    assert details["slot"] == "head"

    # stats of what is worn: cap + vest armor, sword strength (capacity follows strength)
    stats = await a.request("player.get_stats")
    assert stats == {
        "t": "player.stats",
        "rid": stats["rid"],
        "stats": BASE_STATS | {"armor": 4, "strength": 12},
        "carried_weight": KIT_WEIGHT - 500 - 250,  # the bread and one potion are gone
        "carry_capacity": 32_000,
        "encumbrance": "normal",
        "movement_speed": 100,
        "health": 100,
        "level": 1,
        "version": a.version,
    }
    await assert_mirrors_server(url, "hero", a, b)
    await a.close()
    await b.close()


# --- stats, buffs and encumbrance ----------------------------------------------------------


async def test_stats_follow_equipment_buffs_and_weight(
    make_settings: Callable[..., Settings],
) -> None:
    catalog = tuned(
        elixir_of_might={
            "use": '{ kind = "buff", stats = { strength = 5 }, duration_ms = 1500 }',
            "use_cooldown_ms": "100",
        }
    )
    async with serving(make_settings(), catalog) as app:
        url = ws_url(app)
        # An admin granting to themself: the grant reply carries no effects, so the
        # granting session gets them as a delta like any other session of the target.
        a = await Seat.open(url, "strongman", admin=True)
        me = a.welcome["player_id"]

        async def stats() -> dict[str, Any]:
            reply = await a.request("player.get_stats")
            assert reply["t"] == "player.stats", reply
            assert reply["version"] == a.version
            return reply

        async def grant(template: str, qty: int, key: str, **fields: Any) -> dict[str, Any]:
            reply = await a.request(
                "admin.grant_item",
                player_id=me,
                template=template,
                qty=qty,
                idempotency_key=key,
                **fields,
            )
            if reply["t"] == "admin.grant_item_reply":
                await a.catch_up(reply["version"])
            return reply

        first = await stats()
        assert first["stats"] == BASE_STATS
        assert (first["carried_weight"], first["carry_capacity"]) == (KIT_WEIGHT, 30_000)
        assert (first["encumbrance"], first["movement_speed"]) == ("normal", 100)
        assert (first["health"], first["level"]) == (100, 1)

        await a.ok("inventory.equip_item", item_id=a.kit("cloth_cap"), slot="head")
        await a.ok("inventory.equip_item", item_id=a.kit("leather_vest"), slot="chest")
        await a.ok("inventory.equip_item", item_id=a.kit("copper_ring"), slot="ring2")
        worn = await stats()
        assert worn["stats"] == BASE_STATS | {"armor": 4, "stamina": 11}
        assert worn["carried_weight"] == KIT_WEIGHT  # worn still counts as carried

        reply = await grant("elixir_of_might", 1, "elixir-0001")
        (elixir,) = reply["item_ids"]
        # 21 ore: 9,670 + 300 + 21,000 = 30,970 g > 30,000 g
        await grant("iron_ore", 21, "ore-000001")
        burdened = await stats()
        assert burdened["carried_weight"] == 30_970
        assert (burdened["encumbrance"], burdened["movement_speed"]) == ("burdened", 75)

        # Overloaded is refused: 16 more ore would be 46,970 g > 45,000 g.
        before = a.version
        details = assert_error(await grant("iron_ore", 16, "ore-000002"), "overloaded")
        assert details == {
            "carried_weight": 46_970,
            "carry_capacity": 30_000,
            "overloaded_above": 45_000,
        }
        # The bank is not carried: the same grant goes there.
        reply = await grant("iron_ore", 16, "ore-000003", compartment="bank")
        assert reply["version"] == before + 2
        (banked,) = reply["item_ids"]
        assert (await stats())["carried_weight"] == 30_970

        effects = await a.ok("inventory.use_item", item_id=elixir)
        assert effects[0] == {
            "e": "item_destroyed",
            "item_id": elixir,
            "src": effects[0]["src"],
            "reason": "used_up",
        }
        buff = effects[1]
        assert buff["e"] == "active_effect_started"
        assert buff["effect"]["source"] == "elixir_of_might"
        assert buff["effect"]["stats"] == {"strength": 5}
        strong = await stats()
        assert strong["stats"]["strength"] == 15
        assert strong["carry_capacity"] == 35_000
        assert strong["carried_weight"] == 30_670
        assert strong["encumbrance"] == "normal"
        # Stronger, the player may carry 20 more ore (50,670 g <= 52,500 g)...
        await grant("iron_ore", 20, "ore-000004")
        assert (await stats())["encumbrance"] == "burdened"
        # ...and is overloaded when the buff runs out. Nothing announces that: poll.
        deadline = time.monotonic() + DEADLINE_S
        while (current := await stats())["encumbrance"] != "overloaded":
            assert time.monotonic() < deadline, f"the buff never ran out: {current}"
            await asyncio.sleep(0.05)
        assert app.tick() * app.driver.tick_ms >= buff["effect"]["expires_at_ms"]
        assert current["stats"]["strength"] == 10
        assert (current["carry_capacity"], current["movement_speed"]) == (30_000, 25)
        # An overloaded player picks up nothing: not even their own ore from the bank.
        free = a.cells().index(None)
        details = assert_error(
            await a.request(
                "inventory.move_item", item_id=banked, compartment="backpack", index=free
            ),
            "overloaded",
        )
        assert details["carried_weight"] == 50_670 + 16_000
        await assert_mirrors_server(url, "strongman", a)
        await a.close()


# --- cooldowns -----------------------------------------------------------------------------

FAST_POTIONS = tuned(healing_potion={"use_cooldown_ms": "300"})


async def test_cooldown_ready_is_pushed_when_a_potion_cooldown_ends(
    make_settings: Callable[..., Settings],
) -> None:
    async with serving(make_settings(), FAST_POTIONS) as app:
        url = ws_url(app)
        a = await Seat.open(url, "drinker", JSON)
        a2 = await Seat.open(url, "drinker", MSGPACK)
        stranger = await Seat.open(url, "sober")
        potion = a.cells("belt")[0]
        effects = await a.ok("inventory.use_item", item_id=potion)
        ready_at = effects[-1]["ready_at_ms"]
        assert effects[-1] == {
            "e": "cooldown_started",
            "key": "healing_potion",
            "ready_at_ms": ready_at,
        }
        assert_error(await a.request("inventory.use_item", item_id=potion), "cooldown_active")
        for seat in (a, a2):
            push = await seat.expect_ready()
            assert push == {
                "t": "player.cooldown_ready",
                "seq": a.version,
                "key": "healing_potion",
                "ready_at_ms": ready_at,
            }
        assert app.tick() * app.driver.tick_ms >= ready_at, "announced before it was over"
        await stranger.no_ready_pending()
        # Ready means ready: the next use works, and its cooldown is announced in turn.
        effects = await a.ok("inventory.use_item", item_id=potion)
        again = effects[-1]["ready_at_ms"]
        assert again >= ready_at + 300
        push = await a.expect_ready()
        assert (push["key"], push["ready_at_ms"]) == ("healing_potion", again)
        await a.no_ready_pending()  # exactly one announcement per cooldown
        await stranger.no_ready_pending()
        for seat in (a, a2, stranger):
            await seat.close()


class HeldTickApp(App):
    """An App whose tick can be held back, so a request can reach the server after a
    cooldown's deadline and before the tick that would announce it (a real, if narrow, race
    made deterministic)."""

    held = False

    def _on_tick(self, tick: int) -> None:
        if not self.held:
            super()._on_tick(tick)


async def test_cooldown_ready_is_not_sent_for_a_cooldown_restarted_before_the_tick(
    make_settings: Callable[..., Settings],
) -> None:
    app = HeldTickApp(make_settings(), catalog=FAST_POTIONS)
    await app.start()
    try:
        a = await Seat.open(ws_url(app), "quaffer")
        potion = a.cells("belt")[0]
        first = (await a.ok("inventory.use_item", item_id=potion))[-1]["ready_at_ms"]
        app.held = True
        await wait_until_server_ms(app, first)
        # Over, but not announced yet: using again restarts the cooldown.
        second = (await a.ok("inventory.use_item", item_id=potion))[-1]["ready_at_ms"]
        assert second > first
        app.held = False
        push = await a.expect_ready()
        assert (push["key"], push["ready_at_ms"]) == ("healing_potion", second), (
            "the restarted cooldown's first deadline was announced"
        )
        await a.no_ready_pending()
        await a.close()
    finally:
        await app.stop()


async def test_cooldown_ready_is_sent_once_for_a_player_evicted_and_loaded_again(
    make_settings: Callable[..., Settings],
) -> None:
    catalog = tuned(healing_potion={"use_cooldown_ms": "3000"})
    async with serving(make_settings(evict_after_s=0), catalog) as app:
        url = ws_url(app)
        a = await Seat.open(url, "wanderer")
        potion = a.cells("belt")[0]
        ready_at = (await a.ok("inventory.use_item", item_id=potion))[-1]["ready_at_ms"]
        await a.close()
        deadline = time.monotonic() + DEADLINE_S
        while await metric(app.port, "gearhall_players_loaded") != 0:  # no event for this
            assert time.monotonic() < deadline, "the player was never evicted"
            await asyncio.sleep(0.05)
        back = await Seat.open(url, "wanderer")  # loads it again, cooldown still running
        assert app.tick() * app.driver.tick_ms < ready_at, "too slow: the cooldown ended"
        assert back.state.cooldowns["healing_potion"] == ready_at
        push = await back.expect_ready()
        assert push["ready_at_ms"] == ready_at
        await back.no_ready_pending()
        await back.close()


async def test_cooldowns_survive_a_restart(make_settings: Callable[..., Settings]) -> None:
    """Deadlines are stored, not countdowns: after a restart the potion (30 s) is still
    cooling down, and the bread (tuned to 3 s) is announced ready by the new server."""
    catalog = tuned(bread={"use_cooldown_ms": "3000"})
    settings = make_settings()
    async with serving(settings, catalog) as app:
        a = await Seat.open(ws_url(app), "survivor")
        potion, bread = a.cells("belt")[0], a.kit("bread")
        potion_ready = (await a.ok("inventory.use_item", item_id=potion))[-1]["ready_at_ms"]
        bread_ready = (await a.ok("inventory.use_item", item_id=bread))[-1]["ready_at_ms"]
        await a.close()
    async with serving(settings, catalog) as app:
        a = await Seat.open(ws_url(app), "survivor")
        assert a.state.cooldowns == {"healing_potion": potion_ready, "item:bread": bread_ready}
        details = assert_error(
            await a.request("inventory.use_item", item_id=potion), "cooldown_active"
        )
        assert details["ready_at_ms"] == potion_ready
        assert 0 < details["ready_in_ms"] <= 30_000
        details = assert_error(
            await a.request("inventory.use_item", item_id=bread), "cooldown_active"
        )
        assert details["ready_at_ms"] == bread_ready and details["ready_in_ms"] > 0
        push = await a.expect_ready()
        assert (push["key"], push["ready_at_ms"]) == ("item:bread", bread_ready)
        await a.ok("inventory.use_item", item_id=bread)
        await a.close()


# --- skills and levels ---------------------------------------------------------------------


@pytest.mark.parametrize(("mine", "other"), ENCODINGS, ids=ENCODING_IDS)
async def test_level_ups_are_effects_in_replies_and_deltas(
    make_settings: Callable[..., Settings], mine: str, other: str
) -> None:
    catalog = tuned(training_manual={"use_cooldown_ms": "100"})
    async with serving(make_settings(), catalog) as app:
        url = ws_url(app)
        a = await Seat.open(url, "student", mine)
        b = await Seat.open(url, "student", other)
        manual, helm = a.kit("training_manual"), a.kit("iron_helm")

        async def read() -> list[dict[str, Any]]:
            effects = await a.ok("inventory.use_item", item_id=manual)
            await b.catch_up(a.version)
            assert b.deltas[-1]["effects"] == effects
            return effects

        effects = await read()
        assert {"e": "skill_leveled_up", "skill": "swordsmanship", "level": 2} in effects
        assert not [e for e in effects if e["e"] == "player_leveled_up"]
        assert_error(await a.request("inventory.equip_item", item_id=helm, slot="head"),
                     "requirements_not_met")  # fmt: skip
        await a.expect_ready()  # the manual's cooldown: an event, no sleeping
        effects = await read()
        assert effects[:4] == [
            {"e": "charges_changed", "item_id": manual, "charges": 1},
            {"e": "xp_gained", "skill": "swordsmanship", "amount": 150, "total": 300},
            {"e": "skill_leveled_up", "skill": "swordsmanship", "level": 3},
            {"e": "player_leveled_up", "level": 2},
        ]
        assert (await a.request("player.get_stats"))["level"] == 2
        # Level 2 meets the iron helm's requirement.
        await a.ok("inventory.equip_item", item_id=helm, slot="head")
        await b.catch_up(a.version)
        await a.expect_ready()
        effects = await read()  # the last charge: the manual falls apart, no level-up
        assert [e["e"] for e in effects] == ["item_destroyed", "xp_gained", "cooldown_started"]
        assert effects[0]["reason"] == "used_up"
        assert (b.state.level, b.state.skill_levels) == (2, {"swordsmanship": 3})
        await assert_mirrors_server(url, "student", a, b)
        await a.close()
        await b.close()


# --- admin grants --------------------------------------------------------------------------


async def test_admin_grant_item(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    async with serving(settings) as app:
        url = ws_url(app)
        target = await Seat.open(url, "lucky")
        target_id, kit_version = target.welcome["player_id"], target.version
        await target.close()
        pleb = await Seat.open(url, "pleb")
        reply = await pleb.request(
            "admin.grant_item",
            rid=77,
            player_id=target_id,
            template="bread",
            idempotency_key="pleb-grant-1",
        )
        assert_error(reply, "forbidden")
        assert reply["rid"] == 77
        await pleb.close()
        boss = await Seat.open(url, "boss", admin=True)
        reply = await boss.request(
            "admin.grant_item", player_id=999_999, template="bread", idempotency_key="nobody-1"
        )
        assert assert_error(reply, "not_found")["player_id"] == 999_999
        reply = await boss.request(
            "admin.grant_item", player_id=target_id, template="dragon", idempotency_key="dragon-1"
        )
        assert assert_error(reply, "not_found")["template"] == "dragon"
        await boss.close()

    # A new server: the target is offline and not loaded. The grant loads it.
    async with serving(settings) as app:
        url = ws_url(app)
        boss = await Seat.open(url, "boss", MSGPACK, admin=True)
        assert await metric(app.port, "gearhall_players_loaded") == 1  # the boss alone
        grant = {
            "player_id": target_id,
            "template": "bread",
            "qty": 25,  # max stack 20: two stacks
            "idempotency_key": "gift-0001",
        }
        first = await boss.request("admin.grant_item", **grant)
        assert first == {
            "t": "admin.grant_item_reply",
            "rid": first["rid"],
            "player_id": target_id,
            "version": kit_version + 3,  # two item_created and a grant_recorded
            "item_ids": first["item_ids"],
            "replayed": False,
        }
        assert len(set(first["item_ids"])) == 2
        assert await metric(app.port, "gearhall_players_loaded") == 2
        replay = await boss.request("admin.grant_item", **grant | {"qty": 1})
        assert replay == first | {"rid": replay["rid"], "item_ids": [], "replayed": True}
        await boss.close()

    # Durable: a third server shows the grant to the target's hello, and still knows the key.
    async with serving(settings) as app:
        url = ws_url(app)
        boss = await Seat.open(url, "boss", admin=True)
        replay = await boss.request("admin.grant_item", **grant)
        assert replay == first | {"rid": replay["rid"], "item_ids": [], "replayed": True}
        t1 = await Seat.open(url, "lucky", JSON)
        t2 = await Seat.open(url, "lucky", MSGPACK)
        assert t1.version == kit_version + 3, "the replays granted something"
        stacks = {i: t1.state.items[i] for i in first["item_ids"]}
        assert sorted((s.template, s.qty) for s in stacks.values()) == [("bread", 5), ("bread", 20)]
        assert all(i in t1.cells() for i in stacks)
        assert t1.state.grants == {"gift-0001": kit_version + 3}

        # The target's connected sessions receive the next grant as a delta.
        reply = await boss.request(
            "admin.grant_item",
            player_id=target_id,
            template="healing_potion",
            qty=2,
            compartment="belt",
            idempotency_key="gift-0002",
        )
        assert reply["t"] == "admin.grant_item_reply" and reply["replayed"] is False
        (potion,) = reply["item_ids"]
        for seat in (t1, t2):
            await seat.catch_up(reply["version"])
            (delta,) = seat.deltas
            created, recorded = delta["effects"]
            assert delta["seq"] == reply["version"]
            assert created["item"]["id"] == potion
            assert created["dst"][0] == "belt" and created["grant_key"] == "gift-0002"
            assert recorded == {"e": "grant_recorded", "key": "gift-0002", "version": delta["seq"]}
        assert boss.deltas == [], "the admin got another player's delta"
        await assert_mirrors_server(url, "lucky", t1, t2)
        for seat in (boss, t1, t2):
            await seat.close()
