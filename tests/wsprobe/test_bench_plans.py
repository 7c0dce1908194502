"""The bench's request plans (``tools/wsprobe/plans.py``) against a real server: every kind,
mixed with every other, stays valid for a fresh player in a closed loop and with requests
pipelined (what an open loop does) — no error replies, and every move and split lands in a
free cell (a move onto an occupied cell would be answered, as a swap, which is another
operation than the one the kind means to measure)."""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator, Callable

import pytest

from server.app import App
from server.config import Settings
from tools.wsprobe.client import Encoding, FrameCodec, Message, ProbeClient, ProbeError
from tools.wsprobe.plans import MOVE_CELLS, SPLIT_CELL, MixPlan, make_plan, parse_mix

EVERY_KIND = "equip:1,move:1,stack:1,sort:1,stats:1,ping:1"
REQUESTS = 240


@pytest.fixture
async def url_unlimited(make_settings: Callable[..., Settings]) -> AsyncIterator[str]:
    server = App(make_settings(rate_limit_per_s=1_000_000.0, rate_limit_burst=1_000_000))
    await server.start()
    yield f"ws://127.0.0.1:{server.port}/"
    await server.stop()


async def _player(url: str, encoding: Encoding, name: str, mix: str) -> tuple[ProbeClient, MixPlan]:
    client = await ProbeClient.connect(url, encoding)
    welcome = await client.hello(f"dev:{name}")
    return client, make_plan(parse_mix(mix), client.codec, welcome, client=3)


def _check(reply: Message, kinds: collections.Counter[str]) -> None:
    assert reply.get("t") != "error", reply
    effects = reply.get("effects")
    for effect in effects if isinstance(effects, list) else []:
        kinds[effect["e"]] += 1
        if effect["e"] == "items_moved":
            assert effect["reason"] != "swap", reply


async def _closed(client: ProbeClient, plan: MixPlan) -> collections.Counter[str]:
    effects: collections.Counter[str] = collections.Counter()
    for _ in range(REQUESTS):
        rid = client.next_rid()
        _, frame = plan.next(rid)
        await client.send_frame(frame)
        reply = await client.reply(rid)
        plan.observe(rid, client.codec.encode(reply))
        _check(reply, effects)
    return effects


async def _pipelined(client: ProbeClient, plan: MixPlan, depth: int) -> collections.Counter[str]:
    """Keep ``depth`` requests outstanding; each reply lets the next request go."""
    effects: collections.Counter[str] = collections.Counter()
    codec = FrameCodec(client.codec.encoding)
    sent = answered = 0
    while answered < REQUESTS:
        while sent < REQUESTS and sent - answered < depth:
            rid = client.next_rid()
            _, frame = plan.next(rid)
            await client.send_frame(frame)
            sent += 1
        raw = await client.recv_frame()
        reply = codec.decode(raw)
        if "rid" not in reply:
            continue  # a push
        answered += 1
        rid = reply["rid"]
        assert isinstance(rid, int)
        plan.observe(rid, raw)
        _check(reply, effects)
    return effects


@pytest.mark.parametrize("encoding", ["json", "msgpack"])
async def test_every_kind_mixed_in_a_closed_loop_never_errs_or_swaps(
    url_unlimited: str, encoding: Encoding
) -> None:
    client, plan = await _player(url_unlimited, encoding, f"plans-closed-{encoding}", EVERY_KIND)
    async with client:
        effects = await _closed(client, plan)
    # Everything the kinds do happened, many times over.
    assert effects["items_moved"] >= REQUESTS // 6 * 2  # equip, unequip, move (sort: some)
    assert effects["item_created"] >= REQUESTS // 6 // 2 - 1  # splits
    assert effects["item_destroyed"] >= REQUESTS // 6 // 2 - 1  # merged back


@pytest.mark.parametrize("depth", [4, 16])
async def test_every_kind_mixed_with_requests_pipelined_never_errs_or_swaps(
    url_unlimited: str, depth: int
) -> None:
    client, plan = await _player(url_unlimited, "msgpack", f"plans-open-{depth}", EVERY_KIND)
    async with client:
        effects = await _pipelined(client, plan, depth)
    assert effects["items_moved"] >= REQUESTS // 6 * 2
    assert effects["item_created"] >= 1  # the split still happens between the reads


async def test_sorting_between_moves_and_unequips_keeps_their_cells_free(
    url_unlimited: str,
) -> None:
    """The heaviest interference: sort after every other request."""
    mix = "sort:3,move:1,equip:1,stack:1"
    client, plan = await _player(url_unlimited, "json", "plans-sorted", mix)
    async with client:
        await _closed(client, plan)
        rid = client.next_rid()
        await client.send_frame(plan.next(rid)[1])
        await client.reply(rid)
    async with await ProbeClient.connect(url_unlimited) as again:
        state = (await again.hello("dev:plans-sorted"))["state"]
    assert isinstance(state, dict)
    backpack = state["compartments"]["backpack"]
    # What the kinds rely on still holds at the end: at most 10 items, cell 12 or 13 only
    # ever the vest, cell 23 only ever the split stack.
    assert sum(cell is not None for cell in backpack) <= 10
    for cell in MOVE_CELLS:
        if backpack[cell] is not None:
            assert state["items"][str(backpack[cell])]["template"] == "leather_vest"
    if backpack[SPLIT_CELL] is not None:
        assert state["items"][str(backpack[SPLIT_CELL])]["template"] == "bread"


def _welcome(**changes: object) -> Message:
    backpack: list[object] = [1, 2, 3, 4, 5, 6, 7, 8, 9] + [None] * 15
    templates = ["cloth_cap", "iron_helm", "leather_vest", "copper_ring", "copper_ring",
                 "short_sword", "buckler", "bread", "training_manual"]  # fmt: skip
    items = {str(i + 1): {"template": t, "qty": 5 if t == "bread" else 1}
             for i, t in enumerate(templates)}  # fmt: skip
    state: dict[str, object] = {
        "items": items,
        "compartments": {"backpack": backpack},
        "equipment": {},
    }
    for key, value in changes.items():
        if key == "cell":
            index, item = value  # type: ignore[misc]
            backpack[index] = item
        else:
            state[key] = value
    return {"t": "session.welcome", "state": state}


@pytest.mark.parametrize(
    ("mix", "welcome", "says"),
    [
        ("equip:1", _welcome(equipment={"head": 2}), "already wears"),
        ("move:1", _welcome(cell=(12, 9)), "not all free"),
        ("stack:1", _welcome(cell=(SPLIT_CELL, 9)), "not all free"),
        ("equip:1", {"t": "session.welcome"}, "no state"),
        ("stack:1", _welcome(cell=(7, None)), "no bread"),
    ],
)
def test_a_plan_refuses_a_player_that_is_not_a_fresh_starter_kit(
    mix: str, welcome: Message, says: str
) -> None:
    with pytest.raises(ProbeError, match=says):
        make_plan(parse_mix(mix), FrameCodec("json"), welcome, client=0)


def test_read_only_kinds_need_no_kit() -> None:
    plan = make_plan(parse_mix("ping:2,stats:1,sort:1"), FrameCodec("json"), {}, client=0)
    assert [plan.next(rid)[0] for rid in range(1, 9)] == [0, 1, 2, 0, 0, 1, 2, 0]
    assert not plan.observes
